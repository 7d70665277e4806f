"""The interfaces the compiled kernels share across languages stay single-sourced: the
activation kinds (one header, read by C, CUDA and Python) and the list of per-ISA gate
kernels (one X-macro header, from which Cython's declarations are generated)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import activations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src_c")
CUDA = os.path.join(ROOT, "fastlstm", "backends", "cuda")


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_activation_codes_come_from_the_shared_header():
    kinds = activations._kinds()
    assert kinds == {"TANH": 0, "SIGMOID": 1, "HARD_SIGMOID": 2, "RELU": 3, "LINEAR": 4,
                     "SOFTSIGN": 5}
    for kind, code in kinds.items():
        assert getattr(activations, kind) == code
    by_name = {a.name: a.code for a in (activations.get(n) for n in activations.NAMES)}
    assert by_name == {"tanh": kinds["TANH"], "sigmoid": kinds["SIGMOID"],
                       "hard_sigmoid": kinds["HARD_SIGMOID"], "relu": kinds["RELU"],
                       "linear": kinds["LINEAR"], "softsign": kinds["SOFTSIGN"]}


@pytest.mark.parametrize("path", [("src_c", "gates.h"),
                                  ("fastlstm", "backends", "cuda", "rnn_kernels.cu")])
def test_c_and_cuda_include_the_header_and_define_no_codes_of_their_own(path):
    text = read(*path)
    assert '#include "fl_activations.h"' in text
    assert not re.search(r"#define FL_(TANH|SIGMOID|HARD_SIGMOID|RELU|LINEAR|SOFTSIGN)\b", text)
    assert not re.search(r"\bFL_TANH\s*=", text)


def test_compiled_kernels_agree_with_the_codes():
    """Each code runs, in the compiled kernel, the activation Python gives it."""
    from fastlstm import _gates
    z = np.linspace(-3, 3, 41)
    for name in activations.NAMES:
        act = activations.get(name)
        out = z.copy()
        _gates.activation_forward(out, act)
        np.testing.assert_allclose(out, act(z), rtol=1e-12, atol=1e-12, err_msg=name)


def test_generated_gate_kernel_declarations_are_up_to_date():
    r = subprocess.run([sys.executable, os.path.join(SRC, "generate_gate_kernels.py"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_listed_gate_kernel_has_one_body_per_isa_and_is_not_declared_by_hand():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "gate_kernel_list", os.path.join(SRC, "generate_gate_kernels.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    names = [n for n, _, _ in gen.kernels(read("src_c", "gate_kernels.h"))]
    assert len(names) == len(set(names)) >= 17
    bodies = "".join(read("src_c", f) for f in ("gates_impl.h", "gru_impl.h",
                                                "simple_rnn_impl.h", "matmul_impl.h",
                                                "layer_norm_impl.h"))
    handwritten = read("src_c", "gates.h") + read("src_c", "gates.c") + read("src_c",
                                                                              "gates.pxd")
    for name in names:
        assert len(re.findall(rf"static void FN\({name}\)\(", bodies)) == 1, name
        assert not re.search(rf"\b{name}(_f|_d|##S)\b", handwritten), name


@pytest.mark.parametrize("n", [0, -1, 1025, 100_000, 2**31, 2**64, True, 2.0, "2", None])
def test_set_num_threads_rejects_what_is_not_a_sane_thread_count(n):
    before = fl.get_num_threads()
    for setter in (fl.set_num_threads, fl.set_loop_threads):
        with pytest.raises(ValueError, match="number of threads from 1 to"):
            setter(n)
    assert fl.get_num_threads() == before


def test_thread_count_travels_with_each_call():
    """The kernels keep no thread state: the count set is the one every call passes down."""
    from fastlstm import _gru, _lstm, _simple_rnn, _step
    from fastlstm.threads import kernel_settings
    before = fl.get_num_threads()
    try:
        fl.set_loop_threads(1)
        assert kernel_settings().threads == 1
        assert [m.get_threads() for m in (_lstm, _gru, _simple_rnn)] == [1, 1, 1]
        assert not hasattr(_step, "get_threads") or _step.get_threads() == 1
    finally:
        fl.set_loop_threads(before)
