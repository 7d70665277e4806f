"""fastlstm.dask: scoring dask arrays and dataframes equals model.predict (skipped without
Dask)."""
import contextlib
import threading

import numpy as np
import pytest

import fastlstm as fl

da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")
distributed = pytest.importorskip("distributed")
fd = pytest.importorskip("fastlstm.dask")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as c:
        yield c


def _model(units=16, outputs=3, features=8, return_sequences=False, dtype="float32"):
    model = fl.Sequential([fl.layers.LSTM(units, return_sequences=return_sequences, dtype=dtype),
                           fl.layers.Dense(outputs, dtype=dtype)])
    model.build((None, None, features))
    return model


def _x(n=700, t=20, f=8, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, t, f)).astype(dtype)


def test_predict_on_a_local_cluster_equals_model_predict_bit_for_bit(cluster):
    model, x = _model(64, 1), _x(700, 30)
    with fd.limited_threads(1):         # as many kernel threads as each task
        expected = model.predict(x)
    xd = da.from_array(x, chunks=(100, 7, 5))         # N not a multiple of 32; T, F split
    fd._models.clear()
    with distributed.Client(cluster):
        y = fd.predict(model, xd)
        assert all(c % 32 == 0 for c in y.chunks[0][:-1]) and y.chunks[1] == (1,)
        got = y.compute()
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    # The model was rebuilt once per worker thread, not once per task.
    assert 1 <= len(fd._models) <= 2 < len(y.chunks[0])
    assert fl.get_num_threads() == fl.threads._cores()    # restored after the tasks


def test_predict_through_a_scheduler_address(cluster):
    model, x = _model(return_sequences=True, dtype="float64"), _x(200, 9, 8, np.float64)
    with distributed.Client(cluster.scheduler_address):
        got = fd.predict(model, da.from_array(x, chunks=64), batch_size=16).compute()
    with fd.limited_threads(1):
        np.testing.assert_array_equal(got, model.predict(x, batch_size=16))
    assert got.shape == (200, 9, 3)


def test_predict_a_functional_model(cluster):
    inp = fl.Input((None, 8), name="frames")
    seq = fl.layers.LSTM(16, return_sequences=True)(inp)
    pooled = fl.layers.GlobalAveragePooling1D()(fl.layers.Add()([seq, fl.layers.Dense(16)(inp)]))
    model = fl.Model(inp, fl.layers.Dense(2)(pooled))
    x = _x(130, 12)
    with fd.limited_threads(1):
        expected = model.predict(x)
    with distributed.Client(cluster):
        got = fd.predict(model, da.from_array(x, chunks=64)).compute()
    np.testing.assert_array_equal(got, expected)


def test_predict_with_dask_local_schedulers():
    model, x = _model(), _x(150)
    y = fd.predict(model, da.from_array(x, chunks=64), threads_per_task=2)
    with fd.limited_threads(2):
        expected = model.predict(x)
    np.testing.assert_array_equal(y.compute(scheduler="threads"), expected)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), expected)


def test_limited_threads_is_shared_by_concurrent_tasks():
    before = fl.get_num_threads()
    inside = []
    gate = threading.Barrier(2)

    def task():
        with fd.limited_threads(1):
            gate.wait()
            inside.append(fl.get_num_threads())
            gate.wait()

    threads = [threading.Thread(target=task) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside == [1, 1] and fl.get_num_threads() == before


def test_predict_bad_arguments():
    model = _model()
    with pytest.raises(TypeError, match="x: expected a dask.array"):
        fd.predict(model, _x(4))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, None, 8\)"):
        fd.predict(model, da.zeros((4, 5, 3), chunks=2))
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        fd.predict(model, da.zeros((4, 5, 8), chunks=2), batch_size=0)
    with pytest.raises(TypeError, match="threads_per_task: expected a positive integer"):
        fd.predict(model, da.zeros((4, 5, 8), chunks=2), threads_per_task=1.5)
    with pytest.raises(TypeError, match=r"model: expected a fastlstm model \(fl.Sequential or fl.Model"):
        fd.predict(fl.layers.LSTM(3), da.zeros((4, 5, 8), chunks=2))
    a, b = fl.Input((None, 8)), fl.Input((None, 8))
    two = fl.Model([a, b], fl.layers.Add()([fl.layers.LSTM(3)(a), fl.layers.LSTM(3)(b)]))
    with pytest.raises(ValueError, match="2 inputs and 1 outputs; Dask scoring takes a model with one"):
        fd.predict(two, da.zeros((4, 5, 8), chunks=2))
    with pytest.raises(ValueError, match="not built yet"):
        fd.predict(fl.Sequential([fl.layers.LSTM(3)]), da.zeros((4, 5, 8), chunks=2))


def test_model_bytes_round_trip_and_bad_bytes():
    model, x = _model(), _x(10)
    data = fd.model_to_bytes(model)
    np.testing.assert_array_equal(fd.model_from_bytes(data).predict(x), model.predict(x))
    with pytest.raises(ValueError, match="not a fastlstm model file"):
        fd.model_from_bytes(b"\x80\x04not a model")
    with pytest.raises(TypeError, match="data: expected the bytes"):
        fd.model_from_bytes("model.npz")


def _no_client():
    return contextlib.nullcontext()


def _long_frame(groups=9, features=3):
    rng = np.random.default_rng(1)
    rows = []
    for g in range(groups):
        for t in range(5 + g % 3):              # groups of 5, 6 and 7 steps
            rows.append((f"sensor{g}", t, *rng.standard_normal(features)))
    frame = pd.DataFrame(rows, columns=["sensor", "time", "a", "b", "c"])
    return frame.sample(frac=1.0, random_state=0)    # rows arrive in any order


def test_predict_groups_one_sequence_per_group(cluster):
    model, frame = _model(8, 2, 3), _long_frame()
    with distributed.Client(cluster):
        out = fd.predict_groups(model, dd.from_pandas(frame, npartitions=3), by="sensor",
                                columns=["a", "b", "c"], order_by="time").compute()
    assert sorted(out.index) == sorted(frame["sensor"].unique())
    assert list(out.columns) == ["output_0", "output_1"]
    for key, group in frame.groupby("sensor"):
        seq = group.sort_values("time")[["a", "b", "c"]].to_numpy(np.float32)[None]
        np.testing.assert_allclose(out.loc[key].to_numpy(), model.predict(seq)[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 3, None])
def test_predict_windows_over_a_time_column(stride, cluster):
    model = _model(8, 2, 3)
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.standard_normal((50, 3)), columns=["a", "b", "c"],
                         index=pd.Index(np.arange(50) * 10, name="time"))
    with distributed.Client(cluster) if stride == 3 else _no_client():
        out = fd.predict_windows(model, dd.from_pandas(frame, npartitions=4), ["a", "b", "c"],
                                 window=4, stride=stride).compute()
    values = frame.to_numpy(np.float32)
    starts = range(0, 50 - 4 + 1, stride or 4)
    expected = model.predict(np.stack([values[s:s + 4] for s in starts]))
    assert out.index.tolist() == [frame.index[s + 3] for s in starts]   # the windows' ends
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_predict_windows_within_groups():
    model, frame = _model(8, 2, 3), _long_frame()
    out = fd.predict_windows(model, dd.from_pandas(frame, npartitions=2), ["a", "b", "c"],
                             window=3, stride=2, by="sensor", order_by="time").compute()
    assert list(out.columns) == ["sensor", "time", "output_0", "output_1"]
    for key, group in frame.groupby("sensor"):
        values = group.sort_values("time")[["a", "b", "c"]].to_numpy(np.float32)
        starts = range(0, len(values) - 3 + 1, 2)
        mine = out[out["sensor"] == key].sort_values("time")
        assert mine["time"].tolist() == [s + 2 for s in starts]
        np.testing.assert_allclose(mine[["output_0", "output_1"]].to_numpy(),
                                   model.predict(np.stack([values[s:s + 3] for s in starts])),
                                   rtol=1e-5, atol=1e-6)


def test_dataframe_bad_arguments():
    model, frame = _model(8, 2, 3), dd.from_pandas(_long_frame(), npartitions=2)
    with pytest.raises(ValueError, match=r"columns: .*\['d'\] not found"):
        fd.predict_groups(model, frame, by="sensor", columns=["a", "b", "d"])
    with pytest.raises(ValueError, match="by: expected a column"):
        fd.predict_groups(model, frame, by="device", columns=["a", "b", "c"])
    with pytest.raises(TypeError, match="df: expected a dask.dataframe.DataFrame"):
        fd.predict_groups(model, _long_frame(), by="sensor", columns=["a", "b", "c"])
    with pytest.raises(ValueError, match="window: expected a positive integer"):
        fd.predict_windows(model, frame, ["a", "b", "c"], window=0)
    with pytest.raises(ValueError, match="one output vector per sequence"):
        fd.predict_groups(_model(8, 2, 3, return_sequences=True), frame, by="sensor",
                          columns=["a", "b", "c"])
