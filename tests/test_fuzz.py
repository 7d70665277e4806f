"""Fuzzing: mutated model files and odd arguments of the public layer calls end in a result or a
documented exception (docs/security.md), never in a crash, a hang or a memory spike.

Each input runs in a worker process (tests/fuzz_worker.py) whose address space is capped, so
that a segfault, a hang (no answer within ``FASTLSTM_FUZZ_TIMEOUT`` seconds) or an allocation
of the size a hostile header declares is seen from here and reported with the input. The
worker's peak resident size per input must stay under ``FASTLSTM_FUZZ_PEAK_MB``. A layer call
that returns is run again on the NumPy oracle, and the two results must agree.

The files mutated are the small valid ones in tests/fuzz_seeds/ (made by its make_seeds.py):
``.npz`` model files, ``.onnx``, legacy ``.h5`` and ``.keras``. Mutations: bytes (flips,
truncation, cut or repeated ranges), zip headers (sizes, methods, names), ``.npy`` headers
(shape, dtype), members replaced, dropped or added, the JSON description (fields replaced,
deleted, nested), HDF5 datasets (shape, dtype, values, links) and attributes, ONNX tensors,
attributes, operators and opsets.

In the normal test run each test draws a few dozen inputs with a fixed seed. A longer run:

    FASTLSTM_FUZZ_EXAMPLES=20000 pytest -m fuzz --hypothesis-seed=N tests/test_fuzz.py

(any ``FASTLSTM_FUZZ_EXAMPLES`` turns the fixed seed off, so ``--hypothesis-seed`` picks the
inputs; without it each run draws new ones). Inputs that fail are also written to
``FASTLSTM_FUZZ_FINDINGS`` (a folder) when it is set.
"""
from __future__ import annotations

import collections
import copy
import io
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.fuzz

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "fuzz_seeds")
ROOT = os.path.dirname(HERE)

LONG_EXAMPLES = int(os.environ.get("FASTLSTM_FUZZ_EXAMPLES") or 0)
TIMEOUT = float(os.environ.get("FASTLSTM_FUZZ_TIMEOUT") or 60)
PEAK_BYTES = int(float(os.environ.get("FASTLSTM_FUZZ_PEAK_MB") or 300) * 2**20)
FINDINGS = os.environ.get("FASTLSTM_FUZZ_FINDINGS")

# Exceptions a loader may raise (docs/security.md) and a layer call may raise (DESIGN.md).
LOAD_ALLOWED = ("ValueError", "FileNotFoundError", "ImportError")
CALL_ALLOWED = ("ValueError", "TypeError")


def fuzz_settings(examples):
    """``examples`` with a fixed seed in the normal run; FASTLSTM_FUZZ_EXAMPLES with the
    seed of ``--hypothesis-seed`` (or a new one) in a long run."""
    common = dict(deadline=None, database=None, print_blob=True,
                  suppress_health_check=list(HealthCheck))
    if LONG_EXAMPLES:
        return settings(max_examples=LONG_EXAMPLES, derandomize=False, **common)
    return settings(max_examples=examples, derandomize=True, **common)


# ------------------------------------------------------------------------------ the worker

class Worker:
    """tests/fuzz_worker.py, restarted after a crash or a hang."""

    def __init__(self):
        self.proc = None
        self.count = 0
        self.outcomes = collections.Counter()   # (request, outcome or exception type)

    def start(self):
        env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fuzz_worker.py")], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = self._answer(120)
        assert ready and ready.get("ready"), f"fuzz worker did not start: {self._stderr()}"
        self.measures_peak = ready["peak_reset"]    # /proc/self/clear_refs is writable

    def _stderr(self):
        try:
            return self.proc.stderr.read()[-4000:] if self.proc.poll() is not None else ""
        except (OSError, ValueError):
            return ""

    def _answer(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                f.close()
            self.proc = None

    def request(self, req):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.count += 1
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        t0 = time.monotonic()
        answer = self._answer(TIMEOUT)
        if answer is not None:
            what = req.get("loader") or req["op"]
            self.outcomes[what, answer.get("type") or answer["outcome"]] += 1
            return answer
        try:                        # end of output: the worker is exiting; else it hangs
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.stop()
            return {"outcome": "hang", "message": f"no answer after {time.monotonic() - t0:.0f} s"}
        err = self._stderr()
        self.stop()
        return {"outcome": "crash", "message": f"worker exited with {code}: {err}"}


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.stop()
    print(f"\nfuzz: {w.count} inputs run in the worker; outcomes: "
          + ", ".join(f"{a} {b}: {n}" for (a, b), n in sorted(w.outcomes.items())))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def record(data, name, answer):
    if FINDINGS and data is not None:
        os.makedirs(FINDINGS, exist_ok=True)
        stamp = f"{time.time():.6f}".replace(".", "")
        with open(os.path.join(FINDINGS, f"{stamp}-{name}"), "wb") as f:
            f.write(data)
        with open(os.path.join(FINDINGS, f"{stamp}-{name}.json"), "w") as f:
            json.dump(answer, f, indent=1)


def judge(answer, allowed, what, data=None, name="input"):
    """Assert that one answer of the worker is within the contract."""
    ok = answer["outcome"] == "ok" and not answer.get("problem")
    if answer["outcome"] == "raised":
        ok = any(b in allowed for b in answer["bases"])
    peak = answer.get("peak_rss", 0)
    if ok and peak > PEAK_BYTES:
        ok = False
        answer = dict(answer, outcome="memory", message=f"peak resident size +{peak >> 20} MiB")
    if not ok:
        record(data, name, answer)
    assert ok, (f"{what}: {answer['outcome']}: {answer.get('type', '')} "
                f"{answer.get('problem') or answer.get('message', '')}\n"
                f"{answer.get('traceback', '')}")


# ---------------------------------------------------------------------- generic mutations

def _seed(name):
    with open(os.path.join(SEEDS, name), "rb") as f:
        return f.read()


@st.composite
def byte_mutation(draw, data):
    """Flips, truncation, a cut range or a repeated range of ``data``."""
    kind = draw(st.sampled_from(["flip", "truncate", "cut", "repeat", "overwrite"]))
    n = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, n - 1))]
    a = draw(st.integers(0, n - 1))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = (a + draw(st.integers(0, n - 1))) % n if draw(st.booleans()) else a
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    b = min(n, a + draw(st.integers(1, 64)))
    if kind == "cut":
        return data[:a] + data[b:]
    if kind == "repeat":
        return data[:b] + data[a:b] * draw(st.integers(1, 4)) + data[b:]
    value = draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff",
                                  b"\xff\xff\xff\x7f\xff\xff\xff\x7f", b"\x80\x00\x00\x00"]))
    return data[:a] + value[:n - a] + data[a + len(value):]


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, 1, -1, 2, 3, 7, 4000, 32768, 2**31 - 1, 2**31, 2**32 + 3, 2**63, -2**63,
                     10**30]),
    st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(["LSTM", "GRU", "SimpleRNN", "Bidirectional", "Dense", "Embedding",
                     "Masking", "Dropout", "RNN", "LSTMCell", "Sequential", "RecurrentLayer",
                     "Layer", "float16", "float64", "int32", "bfloat16", "mixed_bfloat16",
                     "complex64", "object", "relu", "tanh", "softmax", "hard_sigmoid", "exp",
                     "glorot_uniform", "orthogonal", "zeros", "l2", "Adam", "SGD", "mse",
                     "__import__", "os.system", "../../etc/passwd", "/etc/passwd", "nan", "",
                     "layers/0/kernel", "optimizer/momentum/0", "concat", "ave", "mul", "sum",
                     "channels_first", "fastlstm", "keras"]))

JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def _json_paths(obj, max_depth=40):
    """Paths into a JSON value (containers included), down to ``max_depth`` (a value that
    an earlier mutation nested a thousand levels deep is not walked to the bottom)."""
    stack = [((), obj)]
    while stack:
        path, value = stack.pop()
        yield path
        if len(path) >= max_depth:
            continue
        items = value.items() if isinstance(value, dict) else \
            enumerate(value) if isinstance(value, list) else ()
        stack.extend((path + (k,), v) for k, v in reversed(list(items)))


@st.composite
def json_mutation(draw, doc):
    """``doc`` with a few fields replaced, deleted, nested or duplicated."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_json_paths(doc))
        path = paths[draw(st.integers(0, len(paths) - 1))]
        if not path:
            doc = draw(JSON_VALUES) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "nest",
                                       "duplicate", "numeric"]))
        if action == "delete":
            del parent[key]
        elif action == "nest":
            v = parent[key]
            for _ in range(draw(st.sampled_from([1, 2, 50, 150, 1000]))):
                v = [v] if draw(st.booleans()) else {"config": v, "class_name": "Bidirectional"}
            parent[key] = v
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, parent[key])          # shared: JSON writes it twice
        elif action == "numeric" and isinstance(parent[key], (int, float)) \
                and not isinstance(parent[key], bool):
            parent[key] = parent[key] * draw(st.sampled_from([-1, 0, 2, 1000, 1e9, 0.5]))
        else:
            parent[key] = draw(JSON_VALUES)
    return doc


def _dumps(doc):
    try:
        return json.dumps(doc).encode()
    except (ValueError, TypeError, RecursionError):
        return json.dumps(None).encode()


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


NPY_DESCRS = ["<f4", "<f8", ">f4", "<f2", "<i8", "|u1", "|b1", "<c8", "|O", "<U3", "|S4",
              "|V8", "[('a', '<f4')]", "[('a', '<f4', (2,))]", "<M8[s]", "x", "<f16"]


@st.composite
def npy_header_mutation(draw, raw):
    """A ``.npy`` member whose header says another shape, dtype or order than its data."""
    magic_len = 10 if raw[6] == 1 else 12
    hlen = struct.unpack("<H" if raw[6] == 1 else "<I", raw[8:magic_len])[0]
    header = raw[magic_len:magic_len + hlen].decode("latin1")
    body = raw[magic_len + hlen:]
    try:
        d = eval(header, {"__builtins__": {}})      # the seed's own header: a literal dict
    except Exception:
        return raw
    what = draw(st.sampled_from(["shape", "descr", "fortran_order", "text"]))
    if what == "shape":
        d["shape"] = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 16, 2**20, 2**31,
                                                          2**40, 2**62]),
                                         max_size=4)))
    elif what == "descr":
        d["descr"] = draw(st.sampled_from(NPY_DESCRS))
        if d["descr"].startswith("["):
            d["descr"] = eval(d["descr"])
    elif what == "fortran_order":
        d["fortran_order"] = not d["fortran_order"]
    if what == "text":
        text = draw(st.sampled_from(["{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                                     "{'descr': '<f4', 'shape': (3,)}", "()", "{", "None",
                                     "{'descr': '<f4', 'fortran_order': False, 'shape': (1e3,)}",
                                     "[" * 200]))
    else:
        text = repr(d)
    text = text + " " * ((-(len(text) + 11)) % 64) + "\n"
    head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) if len(text) < 65536 else \
        b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text))
    return head + text.encode("latin1") + body


def _patch_zip_header(data, draw):
    """Change one field of one local or central zip header."""
    sigs = []
    for sig, fields in ((b"PK\x03\x04", [(8, "H"), (14, "I"), (18, "I"), (22, "I"), (26, "H"),
                                         (28, "H")]),
                        (b"PK\x01\x02", [(10, "H"), (16, "I"), (20, "I"), (24, "I"), (28, "H"),
                                         (30, "H"), (42, "I")]),
                        (b"PK\x05\x06", [(8, "H"), (10, "H"), (12, "I"), (16, "I")])):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            sigs.append((i, fields))
            start = i + 4
    if not sigs:
        return data
    pos, fields = sigs[draw(st.integers(0, len(sigs) - 1))]
    off, fmt = fields[draw(st.integers(0, len(fields) - 1))]
    size = struct.calcsize("<" + fmt)
    limit = 2**(8 * size) - 1
    value = draw(st.sampled_from([0, 1, 8, 12, 14, 93, 99, 0xFFFF, limit, limit // 2,
                                  2**16 + 1])) & limit
    out = bytearray(data)
    if pos + off + size <= len(out):
        out[pos + off:pos + off + size] = struct.pack("<" + fmt, value)
    return bytes(out)


def _zip_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _write_zip(members, method=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, raw in members:
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), raw, compress_type=method)
    return buf.getvalue()


ZIP_METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                               zipfile.ZIP_LZMA])


# --------------------------------------------------------------------------- .npz mutations

NPZ_SEEDS = ["lstm_gru.npz", "bidir_rnn.npz", "quantized_int8.npz", "quantized_bf16.npz"]
DOC_MEMBER = "fastlstm.json.npy"


@st.composite
def npz_files(draw):
    data = _seed(draw(st.sampled_from(NPZ_SEEDS)))
    members = _zip_members(data)
    names = [n for n, _ in members]
    kind = draw(st.sampled_from(["doc", "doc", "doc", "npy_header", "replace", "drop", "add",
                                 "rename", "method", "zip_header", "bytes"]))
    if kind == "bytes":
        return draw(byte_mutation(data))
    if kind == "zip_header":
        return _patch_zip_header(data, draw)
    members = dict(members)
    if kind == "doc":
        raw = members[DOC_MEMBER]
        doc = json.loads(np.load(io.BytesIO(raw)).tobytes())
        members[DOC_MEMBER] = _npy(np.frombuffer(_dumps(draw(json_mutation(doc))), np.uint8))
    else:
        name = draw(st.sampled_from(names))
        if kind == "npy_header":
            members[name] = draw(npy_header_mutation(members[name]))
        elif kind == "replace":
            shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
            dtype = draw(st.sampled_from(["<f4", "<f8", ">f8", "<f2", "<i4", "|b1", "<c8",
                                          "|u1", "<U2", "|i1", "<u2", ">u2"]))
            arr = np.zeros(shape, dtype)
            if arr.dtype.kind == "f" and arr.size:
                arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, 1e30, -0.0, 1.0]))
            members[name] = _npy(arr)
        elif kind == "drop":
            del members[name]
        elif kind == "add":
            members[draw(st.sampled_from(["extra.npy", "layers/9/kernel.npy", "../x.npy",
                                          name + ".npy", "fastlstm.json"]))] = members[name]
        elif kind == "rename":
            members[draw(st.sampled_from(["x.npy", name[:-4], name.upper()]))] = \
                members.pop(name)
    return _write_zip(list(members.items()),
                      draw(ZIP_METHODS) if kind == "method" else zipfile.ZIP_STORED)


@fuzz_settings(60)
@given(data=npz_files())
def test_fuzz_load_model(worker, scratch, data):
    path = scratch / "model.npz"
    path.write_bytes(data)
    judge(worker.request({"op": "load", "loader": "npz", "path": str(path)}),
          LOAD_ALLOWED, "load_model", data, "model.npz")


# --------------------------------------------------------------------------- .onnx mutations

ONNX_SEEDS = ["lstm.onnx", "gru.onnx"]


@st.composite
def onnx_files(draw):
    onnx = pytest.importorskip("onnx")
    data = _seed(draw(st.sampled_from(ONNX_SEEDS)))
    kind = draw(st.sampled_from(["initializer", "initializer", "attribute", "attribute",
                                 "op_type", "inputs", "graph_io", "opset", "add_node",
                                 "bytes"]))
    if kind == "bytes":
        return draw(byte_mutation(data))
    m = onnx.load_from_string(data)
    g = m.graph
    if kind == "initializer":
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        what = draw(st.sampled_from(["dims", "data_type", "raw", "external", "values"]))
        if what == "dims":
            dims = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 12, -1, 2**31, 2**40]),
                                 max_size=4))
            del t.dims[:]
            t.dims.extend(dims)
        elif what == "data_type":
            t.data_type = draw(st.sampled_from([0, 2, 3, 6, 7, 8, 9, 10, 11, 14, 16, 17, 9999]))
        elif what == "raw":
            raw = t.raw_data
            t.raw_data = raw[:draw(st.integers(0, max(0, len(raw) - 1)))] \
                if draw(st.booleans()) else raw + b"\0" * 8
        elif what == "external":
            t.data_location = onnx.TensorProto.EXTERNAL
            e = t.external_data.add()
            e.key, e.value = "location", draw(st.sampled_from(["/etc/passwd", "../x", "w.bin"]))
        else:
            arr = onnx.numpy_helper.to_array(t).copy()
            if arr.size and arr.dtype.kind == "f":
                arr.flat[draw(st.integers(0, arr.size - 1))] = draw(
                    st.sampled_from([np.nan, np.inf, -1e30, 0.0]))
            elif arr.size and arr.dtype.kind in "iu":
                arr.flat[draw(st.integers(0, arr.size - 1))] = draw(
                    st.sampled_from([0, -1, 2**31 - 1, -2**31, 10**6]))
            t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    elif kind == "attribute":
        nodes = [n for n in g.node if len(n.attribute)]
        if nodes:
            node = nodes[draw(st.integers(0, len(nodes) - 1))]
            a = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
            if draw(st.integers(0, 4)) == 0:
                node.attribute.remove(a)
            elif a.type == onnx.AttributeProto.INT:
                a.i = draw(st.sampled_from([0, 1, 2, -1, 3, 17, 2**31, 2**62, -2**63]))
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = draw(st.floats(width=32))
            elif a.type == onnx.AttributeProto.STRING:
                a.s = draw(st.sampled_from([b"forward", b"reverse", b"bidirectional", b"",
                                            b"Relu", b"Sigmoid", b"HardSigmoid", b"Elu",
                                            b"\xff\xfe"]))
            elif a.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
                vals = draw(st.lists(st.integers(-3, 5), max_size=5))
                field = a.ints if a.type == onnx.AttributeProto.INTS else a.floats
                del field[:]
                field.extend(vals)
            elif a.type == onnx.AttributeProto.STRINGS:
                del a.strings[:]
                a.strings.extend(draw(st.lists(st.sampled_from(
                    [b"Tanh", b"Sigmoid", b"Relu", b"Affine", b"ThresholdedRelu", b""]),
                    max_size=7)))
            else:
                a.type = draw(st.integers(0, 12))
    elif kind == "op_type":
        node = g.node[draw(st.integers(0, len(g.node) - 1))]
        node.op_type = draw(st.sampled_from(["LSTM", "GRU", "RNN", "Transpose", "Squeeze",
                                             "Unsqueeze", "Reshape", "Gather", "Concat", "Cast",
                                             "Identity", "MatMul", "Add", "Gemm", "Relu",
                                             "ConstantOfShape", "Expand", "Shape", "Slice",
                                             "Loop", "Custom"]))
        if draw(st.booleans()):
            node.domain = draw(st.sampled_from(["", "ai.onnx.ml", "com.microsoft", "x"]))
    elif kind == "inputs":
        node = g.node[draw(st.integers(0, len(g.node) - 1))]
        names = [t.name for t in g.initializer] + [n for nd in g.node for n in nd.output] + [""]
        ins = list(node.input)
        action = draw(st.sampled_from(["drop", "swap", "rename", "cycle"]))
        if action == "drop" and ins:
            ins.pop(draw(st.integers(0, len(ins) - 1)))
        elif action == "swap" and ins:
            ins[draw(st.integers(0, len(ins) - 1))] = draw(st.sampled_from(names))
        elif action == "rename":
            ins.append(draw(st.sampled_from(names + ["nowhere"])))
        elif action == "cycle" and ins and node.output:
            ins[0] = node.output[0]
        del node.input[:]
        node.input.extend(ins)
    elif kind == "graph_io":
        vi = (g.input if draw(st.booleans()) or not len(g.output) else g.output)[0]
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            d = dims[draw(st.integers(0, len(dims) - 1))]
            if draw(st.booleans()):
                d.dim_value = draw(st.sampled_from([0, 1, 7, 2**40]))
            else:
                d.dim_param = draw(st.sampled_from(["N", "", "x" * 40]))
        if draw(st.booleans()):
            vi.type.tensor_type.elem_type = draw(st.sampled_from([0, 1, 10, 11, 16, 9999]))
    elif kind == "opset":
        m.opset_import[0].version = draw(st.sampled_from([0, 1, 7, 13, 14, 22, 999]))
        if draw(st.booleans()):
            m.ir_version = draw(st.sampled_from([0, 3, 99]))
    else:
        helper = onnx.helper
        first = g.node[0].input[0] if len(g.node[0].input) else "input"
        op = draw(st.sampled_from(["ConstantOfShape", "Expand", "Gather", "Cast", "Concat",
                                   "Add", "Mul"]))
        dims = draw(st.lists(st.sampled_from([1, 2, 3, 2**16, 2**31]), min_size=1,
                             max_size=3))
        shape_const = helper.make_tensor("fz_shape", onnx.TensorProto.INT64, [len(dims)], dims)
        g.initializer.append(shape_const)
        node = helper.make_node(op, ["fz_shape", first][:1 if op in ("ConstantOfShape", "Cast")
                                                     else 2], ["fz_out"],
                                **({"to": draw(st.sampled_from([1, 7, 9999]))}
                                   if op == "Cast" else {}))
        g.node.insert(0, node)
        consumer = g.node[draw(st.integers(1, len(g.node) - 1))]
        if len(consumer.input):
            consumer.input[draw(st.integers(0, len(consumer.input) - 1))] = "fz_out"
    return m.SerializeToString()


@fuzz_settings(60)
@given(data=onnx_files())
def test_fuzz_from_onnx(worker, scratch, data):
    path = scratch / "model.onnx"
    path.write_bytes(data)
    judge(worker.request({"op": "load", "loader": "onnx", "path": str(path)}),
          LOAD_ALLOWED, "from_onnx", data, "model.onnx")


# ------------------------------------------------------------------- .h5 / .keras mutations

def _h5_mutate(h5py, path, draw):
    """Change one dataset, attribute, link or group of the HDF5 file at ``path`` in place
    (a change that h5py refuses, as a group where a dataset is, leaves the file as it is)."""
    try:
        with h5py.File(path, "r+") as f:
            _h5_mutate_open(h5py, f, path, draw)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError):
        pass


def _h5_mutate_open(h5py, f, path, draw):
    dsets, groups = [], []
    f.visititems(lambda n, o: (dsets if isinstance(o, h5py.Dataset) else groups).append(n))
    kind = draw(st.sampled_from(["dataset", "dataset", "values", "attr", "delete", "link",
                                 "group"]))
    # never read what an earlier mutation declared huge: the generator runs unbounded
    dsets = [n for n in dsets if f[n].size is None or f[n].size <= 2**20]
    if kind in ("dataset", "values", "delete", "link") and dsets:
        name = draw(st.sampled_from(sorted(dsets)))
        if kind == "values":
            d = f[name]
            if d.size and d.dtype.kind == "f":
                arr = d[()]
                arr.flat[draw(st.integers(0, arr.size - 1))] = draw(
                    st.sampled_from([np.nan, np.inf, 1e30]))
                d[...] = arr
            return
        old = f[name][()]
        del f[name]
        if kind == "delete":
            return
        if kind == "link":
            how = draw(st.sampled_from(["soft", "external", "hard"]))
            other = draw(st.sampled_from(sorted(dsets)))
            if how == "soft":
                f[name] = h5py.SoftLink("/" + other if other != name else "/nowhere")
            elif how == "external":
                f[name] = h5py.ExternalLink(draw(st.sampled_from(
                    ["/etc/passwd", "other.h5", path])), "/" + other)
            elif other != name:
                f[name] = f[other]
            return
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3))) \
            if draw(st.booleans()) else np.shape(old)
        dtype = draw(st.sampled_from(["<f4", "<f8", ">f4", "<f2", "<i4", "|u1", "|b1",
                                      "<c8", "|S3"]))
        store = draw(st.sampled_from(["plain", "chunked", "gzip", "external", "huge"]))
        if store == "huge":
            f.create_dataset(name, shape=(2**31,), dtype="<f4", chunks=(1024,))
        elif store == "external":
            ext = os.path.join(os.path.dirname(path), "secret.bin")
            with open(ext, "wb") as e:
                e.write(bytes(range(256)) * 4)
            f.create_dataset(name, shape=shape, dtype=dtype,
                             external=[(ext, 0, h5py.h5f.UNLIMITED)])
        else:
            kw = {"chunks": True} if store == "chunked" and all(shape) and shape else {}
            if store == "gzip" and all(shape) and shape:
                kw = {"compression": "gzip"}
            f.create_dataset(name, data=np.zeros(shape, dtype), **kw)
    elif kind == "group" and groups:
        name = draw(st.sampled_from(sorted(groups)))
        if draw(st.booleans()):
            del f[name]
        else:
            f[name].require_group(draw(st.sampled_from(["vars", "0", "cell", "x"])))
    else:
        obj = f[draw(st.sampled_from(sorted(groups)))] if groups and draw(st.booleans()) \
            else f
        keys = sorted(obj.attrs.keys())
        if keys:
            key = draw(st.sampled_from(keys))
            val = obj.attrs[key]
            if isinstance(val, bytes):
                val = val.decode("utf-8", "replace")
            if isinstance(val, str) and val[:1] in "{[":
                new = _dumps(draw(json_mutation(json.loads(val)))).decode()
                obj.attrs[key] = new if draw(st.booleans()) else new.encode()
            else:
                obj.attrs[key] = draw(st.sampled_from(
                    ["", "2.0.0", "3.0", b"\xff", np.arange(3), 7, "[1, 2]"]))


@st.composite
def h5_files(draw):
    h5py = pytest.importorskip("h5py")
    data = _seed("gru_rnn.h5")
    if draw(st.integers(0, 4)) == 0:
        return draw(byte_mutation(data))
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "m.h5")
        with open(path, "wb") as f:
            f.write(data)
        for _ in range(draw(st.integers(1, 2))):
            _h5_mutate(h5py, path, draw)
        with open(path, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp)


@st.composite
def keras_files(draw):
    h5py = pytest.importorskip("h5py")
    data = _seed("lstm.keras")
    kind = draw(st.sampled_from(["config", "config", "config", "metadata", "weights", "weights",
                                 "members", "method", "zip_header", "bytes"]))
    if kind == "bytes":
        return draw(byte_mutation(data))
    if kind == "zip_header":
        return _patch_zip_header(data, draw)
    members = dict(_zip_members(data))
    if kind in ("config", "metadata"):
        name = kind + ".json"
        members[name] = _dumps(draw(json_mutation(json.loads(members[name]))))
    elif kind == "weights":
        tmp = tempfile.mkdtemp()
        try:
            path = os.path.join(tmp, "model.weights.h5")
            with open(path, "wb") as f:
                f.write(members["model.weights.h5"])
            _h5_mutate(h5py, path, draw)
            with open(path, "rb") as f:
                members["model.weights.h5"] = f.read()
        finally:
            shutil.rmtree(tmp)
        if draw(st.integers(0, 3)) == 0:
            members["model.weights.h5"] = draw(byte_mutation(members["model.weights.h5"]))
    elif kind == "members":
        name = draw(st.sampled_from(sorted(members)))
        if draw(st.booleans()):
            del members[name]
        else:
            members[draw(st.sampled_from(["assets/x", "config.json", "../model.weights.h5"]))] \
                = members[name]
    return _write_zip(list(members.items()),
                      draw(ZIP_METHODS) if kind == "method" else zipfile.ZIP_DEFLATED)


@fuzz_settings(40)
@given(data=h5_files())
def test_fuzz_from_keras_h5(worker, scratch, data):
    path = scratch / "model.h5"
    path.write_bytes(data)
    judge(worker.request({"op": "load", "loader": "keras", "path": str(path)}),
          LOAD_ALLOWED, "from_keras", data, "model.h5")


@fuzz_settings(40)
@given(data=keras_files())
def test_fuzz_from_keras_archive(worker, scratch, data):
    path = scratch / "model.keras"
    path.write_bytes(data)
    judge(worker.request({"op": "load", "loader": "keras", "path": str(path)}),
          LOAD_ALLOWED, "from_keras", data, "model.keras")


# ---------------------------------------------------------------------- public layer calls

FLOAT_DTYPES = ["float32", "float64"]
ARG_DTYPES = ["float32", "float32", "float64", "float16", "int32", "int64", "uint8", "bool",
              "complex64", "object", "<U2"]
LAYOUTS = ["c", "c", "f", "reversed", "strided", "broadcast", "unaligned", "readonly", "list"]


@st.composite
def arrays(draw, shape, dtypes=ARG_DTYPES, values=("normal",)):
    """The JSON description of one argument array (fuzz_worker._array): mostly ``shape``."""
    if draw(st.integers(0, 5)) == 0:
        shape = draw(st.lists(st.integers(0, 5), max_size=4))
    if draw(st.integers(0, 30)) == 0:
        return {"kind": "scalar", "value": draw(st.sampled_from([0, 1.5, "x", None, True]))}
    return {"shape": list(shape), "dtype": draw(st.sampled_from(dtypes)),
            "values": draw(st.sampled_from(values)), "layout": draw(st.sampled_from(LAYOUTS))}


@st.composite
def layer_calls(draw):
    layer = draw(st.sampled_from(["LSTM", "GRU", "SimpleRNN", "Bidirectional"]))
    inner = draw(st.sampled_from(["LSTM", "GRU", "SimpleRNN"])) if layer == "Bidirectional" \
        else layer
    units = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    opts = {"dtype": dtype, "return_sequences": draw(st.booleans()),
            "return_state": draw(st.booleans()), "go_backwards": draw(st.booleans()),
            "activation": draw(st.sampled_from(["tanh", "relu", "linear", "sigmoid",
                                                "hard_sigmoid"])),
            "use_bias": draw(st.booleans())}
    if inner == "LSTM":
        opts["use_peepholes"] = draw(st.booleans())
        opts["coupled_input_forget"] = draw(st.booleans())
    if inner == "GRU":
        opts["reset_after"] = draw(st.booleans())
    methods = ["call", "call", "forward_train"] + (["step", "step"] if layer != "Bidirectional"
                                                   else [])
    method = draw(st.sampled_from(methods))
    B, T, I = draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.integers(0, 4))
    if draw(st.integers(0, 4)):                      # mostly non-empty
        B, T, I = max(B, 1), max(T, 1), max(I, 1)
    values = draw(st.sampled_from(["normal", "normal", "normal", "special", "bool"]))
    x_dtypes = [dtype] * 6 + ARG_DTYPES
    x = draw(arrays([B, I] if method == "step" else [B, T, I], x_dtypes, (values,)))
    n_states = (2 if inner == "LSTM" else 1) * (2 if layer == "Bidirectional" else 1)
    mask = None
    if method != "step" and draw(st.booleans()):
        mask = draw(arrays([B, T], ["bool", "bool", "bool", "int32", "float32", "uint8"],
                           ("bool",)))
    state = None
    if draw(st.booleans()):
        count = n_states if draw(st.integers(0, 4)) else draw(st.integers(0, 5))
        state = {"kind": "list", "items": [draw(arrays([B, units], [dtype] * 6 + ARG_DTYPES))
                                           for _ in range(count)]}
        if draw(st.integers(0, 20)) == 0:
            state = draw(arrays([B, units]))
    prebuild = None
    if draw(st.integers(0, 5)) == 0:
        prebuild = [draw(st.sampled_from([None, B])), draw(st.sampled_from([None, T])),
                    draw(st.sampled_from([I, I + 1, 0]))]
    merge = draw(st.sampled_from(["concat", "sum", "ave", "mul", None])) \
        if layer == "Bidirectional" else None
    return {"layer": layer, "inner": inner, "units": units, "options": opts, "method": method,
            "x": x, "mask": mask, "initial_state": state, "prebuild": prebuild,
            "merge_mode": merge, "steps": draw(st.integers(1, 3)),
            "training": draw(st.sampled_from([False, False, True, 0, "yes"])),
            "compare": values == "normal" and merge is not None,
            "seed": draw(st.integers(0, 2**32 - 1))}


@fuzz_settings(120)
@given(spec=layer_calls())
def test_fuzz_layer_calls(worker, spec):
    judge(worker.request({"op": "call", "spec": spec}), CALL_ALLOWED,
          f"{spec['layer']}.{spec['method']}", json.dumps(spec).encode(), "call.json")


def test_fuzz_worker_reports_crash_hang_and_memory(worker):
    """The harness itself: a crash, an out-of-contract exception and a large allocation are
    reported, not passed."""
    ok = worker.request({"op": "load", "loader": "npz", "path": os.path.join(SEEDS,
                                                                            "lstm_gru.npz")})
    assert ok["outcome"] == "ok", ok
    missing = worker.request({"op": "load", "loader": "npz", "path": "/nonexistent.npz"})
    assert missing["outcome"] == "raised" and "FileNotFoundError" in missing["bases"]
    bad = worker.request({"op": "load", "loader": "nope", "path": "x"})
    assert bad["outcome"] == "raised" and bad["type"] == "KeyError"
    with pytest.raises(AssertionError):
        judge(bad, LOAD_ALLOWED, "harness")
    big = worker.request({"op": "selftest", "what": "alloc", "bytes": PEAK_BYTES + 2**26})
    if worker.measures_peak:          # else only the address-space cap bounds memory
        assert big["outcome"] == "ok" and big["peak_rss"] > PEAK_BYTES, big
        with pytest.raises(AssertionError, match="memory"):
            judge(big, LOAD_ALLOWED, "harness")
    capped = worker.request({"op": "selftest", "what": "alloc", "bytes": 2**40})
    assert capped["outcome"] == "raised" and capped["type"] == "MemoryError", capped
    crash = worker.request({"op": "selftest", "what": "abort"})
    assert crash["outcome"] == "crash", crash
    assert worker.request({"op": "load", "loader": "npz", "path": os.path.join(
        SEEDS, "lstm_gru.npz")})["outcome"] == "ok"           # restarted
