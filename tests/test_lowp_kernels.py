"""The reduced-precision products (fastlstm._lowp, src_c/lowp.c) against their NumPy oracle
(fastlstm/backends/oracle/lowp.py), in every variant this CPU runs: int8 exactly, bf16 to
float32 accumulation-order error."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import seed_of
from fastlstm import _gates, _lowp
from fastlstm.backends.oracle import lowp as O

INT8, BF16 = _lowp.INT8, _lowp.BF16
KINDS = [INT8, BF16]
CASES = [(kind, level) for kind in KINDS for level in range(4)]


def _ids(case):
    kind, level = case
    return f"{'int8' if kind == INT8 else 'bf16'}-L{level}"


@pytest.fixture(autouse=True)
def _automatic_levels():
    yield
    _lowp.force_level(-1)
    _gates.force_isa_level(-1)


def run_level(kind, level):
    """Cap the variant at `level`; skip where this CPU lacks it."""
    if level > _lowp.best_level(kind):
        pytest.skip(f"level {level} not on this CPU")
    _lowp.force_level(level)
    assert _lowp.level(kind) == level


class Weight:
    """A random weight [K, N] packed for `kind`, with what the oracle needs."""

    def __init__(self, kind, K, N, rng, zero_cols=()):
        W = rng.standard_normal((K, N)).astype(np.float32)
        W[:, list(zero_cols)] = 0
        self.kind, self.K, self.N = kind, K, N
        if kind == INT8:
            self.Wq, self.scale = O.quantize_weight_int8(W)
            self.packed, self.comp = _lowp.pack(self.Wq)
            self.wabs = np.abs(self.Wq.astype(np.float64)) * self.scale
        else:
            self.bits = O.bf16_bits(W)
            self.scale = None
            self.packed, self.comp = _lowp.pack(self.bits)
            self.wabs = np.abs(O.bits_to_float(self.bits).astype(np.float64))

    def run(self, a, **kw):
        return _lowp.gemm(a, self.packed, self.scale, self.comp, self.kind, self.K, self.N,
                          **kw)

    def expected(self, a, bias=None, C=None):
        if self.kind == INT8:
            return O.int8_gemm(a, self.Wq, self.scale, bias=bias, C=C)
        return O.bf16_gemm(a, self.bits, bias=bias, C=C)

    def check(self, got, a, bias=None, C=None, cols=slice(None)):
        """got (the columns `cols`) against the oracle: int8 exactly, bf16 within the bound
        of float32 summation in any order, (K + 3) u sum|a w| (+ |C| + |bias|)."""
        want = self.expected(a, bias, C)[:, cols]
        got = np.asarray(got)
        assert got.shape == want.shape
        if self.kind == INT8:
            np.testing.assert_array_equal(got, want)
            return
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        fin = np.isfinite(want)
        np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
        ab = np.abs(O.bf16_round(a).astype(np.float64))
        ab[~np.isfinite(ab)] = 0
        bound = ab @ self.wabs
        if C is not None:
            bound = bound + np.abs(C)
        if bias is not None:
            bound = bound + np.abs(bias)
        tol = (self.K + 3) * 2.0 ** -24 * bound[:, cols] + 1e-37
        with np.errstate(invalid="ignore"):
            err = np.abs(got.astype(np.float64) - want)
        bad = fin & ~(err <= tol)
        assert not bad.any(), (f"bf16: {bad.sum()} values beyond the accumulation bound, "
                               f"worst {np.max(err[fin] - tol[fin])}")


def one_case(kind, M, K, N, rng, beta=0, with_bias=False, lda_pad=0, ldc_pad=0,
             j0=0, j1=None, zero_rows=(), nan_rows=(), inf_rows=(), weight=None):
    """One product with the options given, checked against the oracle; columns outside
    [j0, j1) must keep their values."""
    w = weight or Weight(kind, K, N, rng, zero_cols=[0] if N > 2 and K else ())
    big = rng.standard_normal((M, K + lda_pad)).astype(np.float32)
    a = big[:, :K]
    for r in zero_rows:
        a[r] = 0
    for r in nan_rows:
        a[r, K // 2] = np.nan
    for r in inf_rows:
        a[r, K // 3] = -np.inf
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    outbig = rng.standard_normal((M, N + ldc_pad)).astype(np.float32)
    out = outbig[:, :N]
    before = out.copy()
    padding = outbig[:, N:].copy()
    j1 = N if j1 is None else j1
    got = w.run(a, bias=bias, out=out, beta=beta, j0=j0, j1=j1)
    assert got is out
    cols = slice(j0, j1)
    w.check(out[:, cols], a, bias=bias, C=before if beta else None, cols=cols)
    np.testing.assert_array_equal(out[:, :j0], before[:, :j0])
    np.testing.assert_array_equal(out[:, j1:], before[:, j1:])
    np.testing.assert_array_equal(outbig[:, N:], padding)
    return out


MS = [1, 2, 3, 4, 5, 17, 64, 257]
KS = [1, 3, 4, 5, 16, 63, 64, 130, 512]
NS = [1, 15, 16, 17, 48, 100, 512]


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_shape_grid(case):
    """Every (M, K, N) of the grid, each with options drawn from a fixed seed: beta, bias,
    strided A and C, a column range."""
    kind, level = case
    run_level(kind, level)
    rng = np.random.default_rng(seed_of("grid", kind, level))
    for M, K, N in itertools.product(MS, KS, NS):
        j0 = 16 * int(rng.integers(0, (N - 1) // 16 + 1)) if rng.random() < 0.3 else 0
        j1 = int(rng.integers(j0, N + 1)) if rng.random() < 0.3 else N
        one_case(kind, M, K, N, rng, beta=int(rng.integers(0, 2)),
                 with_bias=bool(rng.integers(0, 2)), lda_pad=int(rng.integers(0, 3)) * 7,
                 ldc_pad=int(rng.integers(0, 3)) * 5, j0=j0, j1=j1)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("beta", [0, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_special_rows(case, beta, with_bias):
    """Zero rows, NaN rows and Inf rows among ordinary ones: zeros give bias (+C), a row with
    NaN or Inf gives NaN (int8); bf16 propagates them as float32 does."""
    kind, level = case
    run_level(kind, level)
    rng = np.random.default_rng(seed_of("special", kind, level, beta, with_bias))
    for M, K, N in [(7, 64, 48), (13, 130, 100), (5, 3, 17)]:
        out = one_case(kind, M, K, N, rng, beta=beta, with_bias=with_bias,
                       zero_rows=[0, 4], nan_rows=[1], inf_rows=[3])
        assert np.isnan(out[1]).all()
        if kind == INT8:
            assert np.isnan(out[3]).all()
        assert np.isfinite(out[[0, 2, 4]]).all()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_column_ranges(case):
    """Sub-ranges j0:j1 (j0 a multiple of 16) leave the other columns untouched."""
    kind, level = case
    run_level(kind, level)
    rng = np.random.default_rng(seed_of("cols", kind, level))
    w = Weight(kind, 70, 100, rng)
    for j0, j1 in [(0, 0), (0, 1), (0, 16), (16, 17), (16, 100), (32, 95), (96, 100),
                   (80, 80), (48, 64), (0, 100)]:
        for M in (1, 3, 8):
            one_case(kind, M, 70, 100, rng, beta=1, with_bias=True, j0=j0, j1=j1,
                     weight=w)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_tiny_and_extreme_rows(case):
    """Rows with tiny amax (127/amax overflows: a zero row for int8), denormals (zeros for
    bf16), rounding ties, and values near the float32 range."""
    kind, level = case
    run_level(kind, level)
    rng = np.random.default_rng(seed_of("tiny", kind, level))
    K, N = 40, 33
    w = Weight(kind, K, N, rng)
    a = rng.standard_normal((6, K)).astype(np.float32)
    a[0] *= np.float32(1e-38)                       # tiny: int8 zero row; bf16 mostly zeros
    a[1] = np.float32(3e-39) * np.sign(a[1])        # all denormal
    a[2] = np.arange(K, dtype=np.float32) - 20.5    # ties after scaling
    a[2, 0] = 127
    a[3] *= np.float32(1e36)                        # large, finite
    a[4, ::2] = np.float32(1e-40)                   # some denormals among normal values
    a[5] = np.float32(3.4e38) * np.sign(a[5])    # finite; past the largest bf16 -> Inf
    out = w.run(a)
    w.check(out, a)
    if kind == INT8:
        np.testing.assert_array_equal(out[0], 0)
    else:
        np.testing.assert_array_equal(out[1], 0)


@pytest.mark.parametrize("kind", KINDS)
def test_variants_agree(kind):
    """Every variant this CPU has gives the same int8 numbers (bf16: within the bound)."""
    rng = np.random.default_rng(seed_of("agree", kind))
    w = Weight(kind, 257, 90, rng)
    a = rng.standard_normal((11, 257)).astype(np.float32)
    outs = []
    for level in range(_lowp.best_level(kind) + 1):
        _lowp.force_level(level)
        outs.append(w.run(a))
        w.check(outs[-1], a)
    if kind == INT8:
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_k_zero_and_empty(case):
    kind, level = case
    run_level(kind, level)
    rng = np.random.default_rng(0)
    w = Weight(kind, 0, 20, rng)
    bias = rng.standard_normal(20).astype(np.float32)
    a = np.zeros((3, 0), np.float32)
    np.testing.assert_array_equal(w.run(a), np.zeros((3, 20), np.float32))
    np.testing.assert_array_equal(w.run(a, bias=bias), np.broadcast_to(bias, (3, 20)))
    c = np.ones((3, 20), np.float32)
    w.run(a, bias=bias, out=c, beta=1)
    np.testing.assert_array_equal(c, (1 + bias)[None].repeat(3, 0))
    w2 = Weight(kind, 5, 0, rng)
    assert w2.run(np.ones((4, 5), np.float32)).shape == (4, 0)
    w3 = Weight(kind, 5, 7, rng)
    assert w3.run(np.ones((0, 5), np.float32)).shape == (0, 7)


def test_long_rows_heap_buffer():
    """K beyond the stack buffer's rows (a heap buffer) still matches, in every variant."""
    rng = np.random.default_rng(5)
    for kind in KINDS:
        w = Weight(kind, 40000, 20, rng)
        a = rng.standard_normal((7, 40000)).astype(np.float32)
        for level in range(_lowp.best_level(kind) + 1):
            _lowp.force_level(level)
            w.check(w.run(a), a)


def test_quantize_rows_match_oracle():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((9, 37)).astype(np.float32)
    a[0] = 0
    a[1, 3] = np.nan
    a[2, 5] = np.inf
    a[3] *= np.float32(1e-38)
    a[4] = np.arange(37, dtype=np.float32) - 18.5
    a[4, 0] = 127                                   # inv = 1: q = rint(a), ties to even
    a[5] = np.float32(3e38) * np.sign(a[5])
    a[6, :] = np.float32(1e-45)
    q, sa = _lowp.quantize_rows_int8(a)
    qo, sao = O.quantize_rows_int8(a)
    np.testing.assert_array_equal(q, qo)
    np.testing.assert_array_equal(sa, sao)
    assert np.isnan(sa[1]) and np.isnan(sa[2]) and sa[0] == 0 and sa[3] == 0 and sa[6] == 0
    np.testing.assert_array_equal(q[4, 1:5], [-18, -16, -16, -14])    # -17.5 -> -18 ...
    # N-D rows in the oracle
    q3, sa3 = O.quantize_rows_int8(a.reshape(3, 3, 37))
    np.testing.assert_array_equal(q3.reshape(9, 37), qo)


def test_bf16_rounding_matches_oracle():
    vals = np.array([0.0, -0.0, 1.0, -1.0, 1.00390625, 1.01171875, 1.0039063, 3.0e38,
                     3.4e38, -3.4e38, np.inf, -np.inf, np.nan, 1e-39, -1e-39,
                     1.1754944e-38, 1.1754942e-38, 65504.0, 1e-45],
                    dtype=np.float32)
    rng = np.random.default_rng(2)
    vals = np.concatenate([vals, rng.standard_normal(1000).astype(np.float32) * 1e3,
                           rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32)
                           .view(np.float32)])
    got = _lowp.round_bf16(vals)
    want = O.bf16_bits(vals)
    np.testing.assert_array_equal(got, want)
    assert O.bf16_bits(np.float32(1.00390625)) == 0x3F80     # tie -> even (down)
    assert O.bf16_bits(np.float32(1.01171875)) == 0x3F82     # tie -> even (up)
    assert O.bf16_bits(np.float32(1e-39)) == 0x0000
    assert O.bf16_bits(np.float32(-1e-39)) == 0x8000
    assert O.bf16_bits(np.float32(3.4e38)) == 0x7F80      # past the largest bf16: Inf
    assert np.isnan(O.bf16_round(np.float32(np.nan)))


def test_denormal_bf16_weights_are_zeros():
    """Denormal bf16 bit patterns in W are packed as zeros of the same sign."""
    rng = np.random.default_rng(3)
    bits = O.bf16_bits(rng.standard_normal((10, 20)).astype(np.float32))
    bits[::3, ::2] = 0x0005                      # denormal bf16
    bits[1, 1] = 0x8003
    packed, comp = _lowp.pack(bits)
    assert comp is None
    a = rng.standard_normal((3, 10)).astype(np.float32)
    for level in range(_lowp.best_level(BF16) + 1):
        _lowp.force_level(level)
        got = _lowp.gemm(a, packed, None, None, BF16, 10, 20)
        want = O.bf16_matmul(a, bits)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pack_layout_and_comp():
    rng = np.random.default_rng(4)
    Wq = rng.integers(-127, 128, (6, 19)).astype(np.int8)
    packed, comp = _lowp.pack(Wq)
    assert packed.ctypes.data % 64 == 0 and packed.dtype == np.uint8
    assert packed.size == _lowp.packed_bytes(INT8, 6, 19) == 2 * 2 * 64
    np.testing.assert_array_equal(comp, 128 * Wq.astype(np.int64).sum(0))
    p = packed.view(np.int8).reshape(2, 2, 16, 4)            # block, group, column, k
    np.testing.assert_array_equal(p[0, 0, 3], Wq[0:4, 3])
    np.testing.assert_array_equal(p[1, 1, 2, :2], Wq[4:6, 18])
    assert (p[1, :, 3:] == 0).all() and (p[:, 1, :, 2:] == 0).all()
    bits = O.bf16_bits(rng.standard_normal((3, 17)).astype(np.float32))
    packed, _ = _lowp.pack(bits)
    assert packed.size == _lowp.packed_bytes(BF16, 3, 17) == 2 * 2 * 64
    p = packed.view(np.uint16).reshape(2, 2, 16, 2)
    np.testing.assert_array_equal(p[0, 1, 5, 0], bits[2, 5])
    assert p[0, 1, 5, 1] == 0 and (p[1, :, 1:] == 0).all()


def test_levels_and_caps():
    for kind in KINDS:
        best = _lowp.best_level(kind)
        assert _lowp.level(kind) == best
        assert isinstance(_lowp.level_name(kind), str)
        _gates.force_isa_level(1)
        assert _lowp.level(kind) == min(best, 1)
        _gates.force_isa_level(0)
        assert _lowp.level(kind) == 0 and _lowp.level_name(kind) == "c"
        _gates.force_isa_level(-1)
        _lowp.force_level(2)
        assert _lowp.level(kind) == min(best, 2)
        _lowp.force_level(-1)
        assert _lowp.level(kind) == best
    # every extension that links the kernels takes the cap
    import importlib
    for name in ("_lstm", "_gru", "_simple_rnn", "_step", "_lowp"):
        assert hasattr(importlib.import_module("fastlstm." + name), "force_lowp_level_here")


def test_bad_arguments():
    rng = np.random.default_rng(6)
    w = Weight(INT8, 8, 20, rng)
    b = Weight(BF16, 8, 20, rng)
    a = rng.standard_normal((3, 8)).astype(np.float32)

    def g(**kw):
        args = dict(a=a, packed=w.packed, scale=w.scale, comp=w.comp, kind=INT8, K=8, N=20)
        args.update(kw)
        return _lowp.gemm(**args)

    with pytest.raises(TypeError, match="a:"):
        g(a=a.astype(np.float64))
    with pytest.raises(TypeError, match="a:"):
        g(a=a.tolist())
    with pytest.raises(ValueError, match="a:"):
        g(a=a[:, :7])
    with pytest.raises(ValueError, match="a:"):
        g(a=np.zeros((3, 16), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="a:"):
        g(a=a[None])
    with pytest.raises(ValueError, match="kind"):
        g(kind=3)
    with pytest.raises(ValueError, match="packed"):
        g(packed=w.packed[:-1])
    with pytest.raises(ValueError, match="packed"):
        big = np.zeros(w.packed.size + 64, np.uint8)
        g(packed=big[1:w.packed.size + 1])
    with pytest.raises(TypeError, match="packed"):
        g(packed=w.packed.view(np.int8))
    with pytest.raises(ValueError, match="a:"):
        g(K=9)
    with pytest.raises(ValueError, match="packed"):
        g(a=np.zeros((3, 9), np.float32), K=9)
    with pytest.raises(TypeError, match="scale"):
        g(scale=None)
    with pytest.raises(ValueError, match="scale"):
        g(scale=w.scale[:5])
    with pytest.raises(TypeError, match="comp"):
        g(comp=None)
    with pytest.raises(TypeError, match="comp"):
        g(comp=w.comp.astype(np.int64))
    with pytest.raises(ValueError, match="bias"):
        g(bias=np.zeros(19, np.float32))
    with pytest.raises(TypeError, match="bias"):
        g(bias=np.zeros(20))
    with pytest.raises(ValueError, match="j0"):
        g(j0=8)
    with pytest.raises(ValueError, match="j0"):
        g(j0=32)
    with pytest.raises(ValueError, match="j1"):
        g(j0=16, j1=10)
    with pytest.raises(ValueError, match="j1"):
        g(j1=21)
    with pytest.raises(ValueError, match="beta"):
        g(beta=2)
    with pytest.raises(ValueError, match="out"):
        g(beta=1)
    with pytest.raises(ValueError, match="out"):
        g(out=np.zeros((2, 20), np.float32))
    with pytest.raises(ValueError, match="out"):
        g(out=np.zeros((3, 21), np.float32))
    with pytest.raises(TypeError, match="out"):
        g(out=np.zeros((3, 20)))
    with pytest.raises(ValueError, match="out"):
        ro = np.zeros((3, 20), np.float32)
        ro.flags.writeable = False
        g(out=ro)
    with pytest.raises(ValueError, match="out"):
        buf = np.zeros((3, 40), np.float32)
        g(a=buf[:, 12:20], out=buf[:, 15:35])
    with pytest.raises(ValueError, match="K"):
        g(K=_lowp.MAX_INT8_K + 1)
    with pytest.raises(ValueError, match="scale"):
        _lowp.gemm(a, b.packed, w.scale, None, BF16, 8, 20)
    with pytest.raises(ValueError, match="comp"):
        _lowp.gemm(a, b.packed, None, w.comp, BF16, 8, 20)
    with pytest.raises(TypeError, match="values"):
        _lowp.pack(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="values"):
        _lowp.pack(np.zeros(3, np.int8))
    with pytest.raises(TypeError, match="values"):
        _lowp.pack([[1, 2]])
    with pytest.raises(ValueError, match="kind"):
        _lowp.packed_bytes(0, 3, 3)
    with pytest.raises(ValueError, match="a:"):
        raw = np.zeros(3 * 8 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(3, 8)
        g(a=raw)
    # what is accepted: strided rows of a and out, out of another array's rows
    out = np.zeros((3, 30), np.float32)[:, :20]
    g(a=np.zeros((3, 11), np.float32)[:, 2:10], out=out)


def test_deliberately_wrong_oracle_is_caught():
    """The checks can fail: an oracle off by one rounding (truncated bf16, q one step off)
    does not pass them."""
    rng = np.random.default_rng(7)
    w = Weight(INT8, 64, 32, rng)
    a = rng.standard_normal((4, 64)).astype(np.float32)
    got = w.run(a)
    got[1, 3] = np.nextafter(got[1, 3], np.float32(np.inf))
    with pytest.raises(AssertionError):
        w.check(got, a)
    wb = Weight(BF16, 64, 32, rng)
    truncated = (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    got = (truncated @ O.bits_to_float(wb.bits)).astype(np.float32)
    with pytest.raises(AssertionError):
        wb.check(got, a)


@settings(max_examples=60)
@given(kind=st.sampled_from(KINDS), level=st.integers(0, 3), M=st.integers(1, 40),
       K=st.integers(1, 300), N=st.integers(1, 90), beta=st.integers(0, 1),
       with_bias=st.booleans(), lda_pad=st.integers(0, 9), ldc_pad=st.integers(0, 9),
       j0_block=st.integers(0, 5), j1_frac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_property_random_shapes(kind, level, M, K, N, beta, with_bias, lda_pad, ldc_pad,
                                j0_block, j1_frac, seed):
    level = min(level, _lowp.best_level(kind))
    _lowp.force_level(level)
    try:
        rng = np.random.default_rng(seed)
        j0 = min(16 * j0_block, 16 * ((N - 1) // 16))
        j1 = j0 + int(round(j1_frac * (N - j0)))
        one_case(kind, M, K, N, rng, beta=beta, with_bias=with_bias, lda_pad=lda_pad,
                 ldc_pad=ldc_pad, j0=j0, j1=j1,
                 nan_rows=[M // 2] if seed % 5 == 0 else (),
                 zero_rows=[0] if seed % 7 == 0 else ())
    finally:
        _lowp.force_level(-1)


def test_oracle_takes_nd_rows():
    """The oracle's products take A [..., K] and return float32 [..., N], row by row the
    same as the kernel's."""
    rng = np.random.default_rng(8)
    A = rng.standard_normal((2, 3, 20)).astype(np.float32)
    for kind in KINDS:
        w = Weight(kind, 20, 9, rng)
        nd = (O.int8_matmul(A, w.Wq, w.scale) if kind == INT8
              else O.bf16_matmul(A, w.bits))
        assert nd.shape == (2, 3, 9) and nd.dtype == np.float32
        flat = w.run(np.ascontiguousarray(A.reshape(6, 20)))
        w.check(flat, A.reshape(6, 20))
        w.check(nd.reshape(6, 9), A.reshape(6, 20))


@pytest.mark.skipif(not _lowp.packed_level_ok(), reason="needs the AVX512_BF16 variant")
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_grads_packed_matches_the_transposed_path(threads):
    """mixed_bfloat16's weight gradients from x packed as it lies (weight_grads_packed) give
    the bits of the transposed path (weight_grads): odd row counts, widths that are not
    multiples of 16, slices shallower than the rows, several inputs at once."""
    rng = np.random.default_rng(seed_of("weight-grads-packed", threads))
    for TB, widths, N, depth in [(7, [5], 33, 4), (101, [17, 3], 50, 24), (64, [16, 48], 16, 64),
                                 (1, [9], 20, 2), (333, [130], 70, 2048)]:
        xs = [rng.standard_normal((TB, k)).astype(np.float32) for k in widths]
        dz = rng.standard_normal((TB, N)).astype(np.float32)
        want = _lowp.weight_grads([np.ascontiguousarray(x.T) for x in xs],
                                  [np.empty((k, N), np.float32) for k in widths], dz, depth,
                                  threads)
        got = _lowp.weight_grads_packed([_lowp.pack_float_bf16(x) for x in xs],
                                        [np.empty((k, N), np.float32) for k in widths], dz,
                                        depth, threads)
        for x, w, g in zip(xs, want, got):
            np.testing.assert_array_equal(g, w)
            exact = O.bf16_round(x).astype(np.float64).T @ O.bf16_round(dz).astype(np.float64)
            np.testing.assert_allclose(w, exact, rtol=0, atol=1e-5 * np.abs(exact).max() * TB)
