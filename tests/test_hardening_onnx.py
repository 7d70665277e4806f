"""Hostile ONNX graphs: from_onnx folds constants only below a size bound, reads no external
data, and reports malformed operators as ``ConversionError`` (docs/security.md)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fastlstm import limits
from fastlstm.convert import ConversionError, from_onnx

onnx = pytest.importorskip("onnx")


def onnx_model(nodes, initializers, output="out", out_type=None):
    """A graph whose first output ``output`` is computed by ``nodes`` from constants."""
    h = onnx.helper
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3])],
        [h.make_tensor_value_info(output, out_type or onnx.TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.asarray(v), k)
                     for k, v in initializers.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_onnx_constant_of_shape_above_the_bound_is_refused_before_allocation():
    h = onnx.helper
    model = onnx_model([h.make_node("ConstantOfShape", ["shape"], ["big"]),
                        h.make_node("Add", ["x", "big"], ["out"])],
                       {"shape": np.array([2**40, 2**20], np.int64)})
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r"ConstantOfShape.*more than the limit"):
            from_onnx(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_onnx_expand_above_the_bound_is_refused_before_allocation(monkeypatch):
    h = onnx.helper
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 2**20)
    model = onnx_model([h.make_node("Expand", ["one", "shape"], ["big"]),
                        h.make_node("Add", ["x", "big"], ["out"])],
                       {"one": np.ones(1, np.float32), "shape": np.array([1024, 1024], np.int64)})
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r"Expand.*more than the limit"):
            from_onnx(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@pytest.mark.parametrize("case", ["gather_out_of_range", "cast_unknown_type",
                                  "concat_without_axis"])
def test_onnx_malformed_constant_ops_are_conversion_errors(case):
    h = onnx.helper
    if case == "gather_out_of_range":
        nodes = [h.make_node("Gather", ["table", "idx"], ["c"], axis=0)]
        inits = {"table": np.zeros((3, 2), np.float32), "idx": np.array([7], np.int64)}
    elif case == "cast_unknown_type":
        nodes = [h.make_node("Cast", ["table"], ["c"], to=9999)]
        inits = {"table": np.zeros((3, 2), np.float32)}
    else:
        nodes = [h.make_node("Concat", ["table", "table"], ["c"])]
        inits = {"table": np.zeros((3, 2), np.float32)}
    model = onnx_model(nodes + [h.make_node("Add", ["x", "c"], ["out"])], inits)
    with pytest.raises(ConversionError, match=r"node .*(Gather|Cast|Concat)"):
        from_onnx(model)


def test_onnx_external_data_is_refused(tmp_path):
    """An initializer may keep its bytes in another file; from_onnx reads none."""
    h = onnx.helper
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(6, dtype=np.float32).tobytes())
    model = onnx_model([h.make_node("Add", ["x", "w"], ["out"])],
                       {"w": np.zeros(3, np.float32)})
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "secret.bin"), ("offset", "0"), ("length", "12")):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ConversionError, match="external"):
        from_onnx(path)
