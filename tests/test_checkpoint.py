"""Checkpoints: the .npz format round trip, no unpickling, corruption fallback, template
checks, old pickle checkpoints, and resuming an old run."""

import hashlib
import json
import pickle
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pinnopt import checkpoint
from pinnopt.config import RunConfig
from pinnopt.train import load_state, read_history, resume, train


class Inner(NamedTuple):
    weights: jax.Array
    count: jax.Array


class Outer(NamedTuple):
    inner: Inner
    history: tuple
    scale: float


def make_state(width: int = 3, dtype=jnp.float64, own_tuples: bool = True) -> dict:
    """A state like the trainer's: Python scalars, params, optax states and (``own_tuples``)
    NamedTuples of this module, which an old-format checkpoint cannot hold (its reader accepts
    the classes of pinnopt and optax only)."""
    params = {"w": jnp.arange(2 * width, dtype=dtype).reshape(2, width) / 7,
              "b": jnp.full((width,), 0.1, jnp.float32)}
    grads = jax.tree_util.tree_map(lambda p: p * 0.5 + 1, params)
    adam = optax.adam(1e-3)
    adam_state = adam.update(grads, adam.init(params), params)[1]
    lbfgs = optax.lbfgs()
    lbfgs_state = lbfgs.init(params)
    outer = Outer(Inner(jnp.ones((2, 2)) / 3, jnp.array(4, jnp.int32)),
                  (jnp.array([1.5, -2.0]), jnp.array(True)), 0.25)
    method_state = (adam_state, lbfgs_state, outer) if own_tuples else (adam_state, lbfgs_state)
    return {"step": 12, "train_time": 3.141592653589793, "next_eval": 13, "flag": True,
            "params": params, "method_state": method_state}


def assert_same(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, jax.Array):
            assert isinstance(y, jax.Array) and x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert type(x) is type(y) and x == y


def old_format_bytes(state, protocol=pickle.HIGHEST_PROTOCOL) -> bytes:
    """What the first checkpoint format's ``save`` wrote (kept here as the fixture)."""
    as_numpy = jax.tree_util.tree_map(
        lambda a: np.asarray(a) if isinstance(a, jax.Array) else a, state)
    payload = pickle.dumps(as_numpy, protocol=protocol)
    return checkpoint.LEGACY_MAGIC + hashlib.sha256(payload).digest() + payload


def test_round_trip_keeps_structure_types_dtypes_and_bits(tmp_path):
    state = make_state()
    checkpoint.save(tmp_path / "c.npz", state)
    loaded, warning = checkpoint.load(tmp_path / "c.npz", make_state())
    assert warning is None
    assert_same(state, loaded)
    assert isinstance(loaded["method_state"][2], Outer)
    assert loaded["params"]["w"].dtype == jnp.float64 and loaded["params"]["b"].dtype == jnp.float32


def test_the_file_is_a_plain_npz_with_a_json_description(tmp_path):
    checkpoint.save(tmp_path / "c.npz", make_state())
    with np.load(tmp_path / "c.npz", allow_pickle=False) as archive:
        description = json.loads(archive["state.json"])
        scalars = {e["path"]: e["value"] for e in description["leaves"] if "value" in e}
        arrays = [e for e in description["leaves"] if "member" in e]
        assert scalars == {"['step']": 12, "['train_time']": 3.141592653589793,
                           "['next_eval']": 13, "['flag']": True,
                           "['method_state'][2].scale": 0.25}
        w = next(e for e in arrays if e["path"] == "['params']['w']")
        assert w["shape"] == [2, 3] and w["dtype"] == "float64"
        np.testing.assert_array_equal(archive[w["member"].removesuffix(".npy")],
                                      np.asarray(make_state()["params"]["w"]))


def test_equal_states_give_equal_files(tmp_path):
    checkpoint.save(tmp_path / "a.npz", make_state())
    checkpoint.save(tmp_path / "b.npz", make_state())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_loading_never_unpickles(tmp_path, monkeypatch):
    checkpoint.save(tmp_path / "c.npz", make_state())

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded, _ = checkpoint.load(tmp_path / "c.npz", make_state())
    assert_same(make_state(), loaded)


def test_object_leaves_are_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"\['name'\]"):
        checkpoint.save(tmp_path / "c.npz", {"name": "adam", "x": jnp.ones(2)})


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    path = tmp_path / "c.npz"
    older = make_state()
    checkpoint.save(path, older)
    checkpoint.save(path, {**older, "step": 20})
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        del data[len(data) // 3:]
    else:
        data[:] = b"not a checkpoint at all"
    path.write_bytes(bytes(data))
    loaded, warning = checkpoint.load(path, make_state())
    assert "corrupted" in warning and "c.npz.prev" in warning and "\n" not in warning
    assert loaded["step"] == 12


def test_a_flipped_byte_is_reported_as_a_checksum_mismatch(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, make_state())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"corrupted \(checksum mismatch\); no previous checkpoint"):
        checkpoint.load(path, make_state())


def test_no_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
        checkpoint.load(tmp_path / "c.npz", make_state())


@pytest.mark.parametrize("template, where, message", [
    # Flattening sorts dict keys: the optimiser's moments come before the parameters.
    (make_state(width=4), "['method_state'][0][0].mu['b']",
     "the file holds float32[3], the run expects float32[4]"),
    (make_state(dtype=jnp.float32), "['method_state'][0][0].mu['w']",
     "the file holds float64[2, 3], the run expects float32[2, 3]"),
    ({**make_state(), "step": 0.0}, "['step']", "the file holds int, the run expects float"),
    ({**make_state(), "extra": jnp.zeros(1)}, None, "holds 33 leaves but this run's state has 34"),
])
def test_a_template_mismatch_is_a_one_line_error_naming_it(tmp_path, template, where, message):
    checkpoint.save(tmp_path / "c.npz", make_state())
    checkpoint.save(tmp_path / "c.npz", make_state())  # a .prev is there, and is not used
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(tmp_path / "c.npz", template)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert where is None or f"at {where}:" in text


def test_old_pickle_checkpoints_still_load(tmp_path):
    state = make_state(own_tuples=False)
    (tmp_path / "checkpoint.pkl").write_bytes(old_format_bytes(state))
    loaded, warning = checkpoint.load(tmp_path / "checkpoint.npz", make_state(own_tuples=False))
    assert warning is None
    assert_same(state, loaded)
    assert type(loaded["method_state"][0][0]) is optax.ScaleByAdamState


def test_old_checkpoints_written_under_numpy_1_load(tmp_path, monkeypatch):
    """numpy 2 pickles arrays with numpy._core.numeric._frombuffer, numpy 1 with
    numpy.core.numeric._frombuffer; the reader maps either to the installed numpy."""
    frombuffer = np.asarray(1.0).__reduce_ex__(5)[0]
    assert frombuffer.__module__ == "numpy._core.numeric"
    monkeypatch.setattr(frombuffer, "__module__", "numpy.core.numeric")  # as numpy 1 names it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2's numpy.core shim
        raw = old_format_bytes(make_state(own_tuples=False))
    assert b"numpy.core.numeric" in raw and b"numpy._core" not in raw
    monkeypatch.undo()
    (tmp_path / "checkpoint.pkl").write_bytes(raw)
    loaded, _ = checkpoint.load(tmp_path / "checkpoint.npz", make_state(own_tuples=False))
    assert_same(make_state(own_tuples=False), loaded)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_old_checkpoints_cannot_run_code(tmp_path, capsys):
    payload = pickle.dumps({"step": Payload()})
    (tmp_path / "checkpoint.pkl").write_bytes(
        checkpoint.LEGACY_MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"old-format checkpoint that cannot be read .*builtins\.print"):
        checkpoint.load(tmp_path / "checkpoint.npz", {"step": 0})
    assert "pickled code ran" not in capsys.readouterr().out


def test_the_newest_format_is_preferred_and_old_files_are_the_last_fallback(tmp_path):
    template = make_state(own_tuples=False)
    (tmp_path / "checkpoint.pkl").write_bytes(old_format_bytes({**template, "step": 1}))
    checkpoint.save(tmp_path / "checkpoint.npz", {**template, "step": 2})
    assert checkpoint.load(tmp_path / "checkpoint.npz", template)[0]["step"] == 2
    (tmp_path / "checkpoint.npz").write_bytes(b"torn")
    loaded, warning = checkpoint.load(tmp_path / "checkpoint.npz", template)
    assert loaded["step"] == 1 and "checkpoint.pkl" in warning
    checkpoint.remove(tmp_path / "checkpoint.npz")
    assert list(tmp_path.iterdir()) == []


def quiet(message):
    pass


def tiny_config(steps):
    return RunConfig(method="adam", net="2-8-1", problem_options={"n_interior": 64, "n_boundary": 16},
                     steps=steps, time_budget=None, plots=False, checkpoint_every=0.0)


def test_a_run_with_an_old_checkpoint_resumes_bit_identically(tmp_path):
    """Convert a run's checkpoint to the old format, resume it, compare with one long run."""
    train(tiny_config(20), tmp_path / "ref", progress=False, log=quiet)
    train(tiny_config(10), tmp_path / "old", progress=False, log=quiet)
    state, _ = load_state(tmp_path / "old")
    checkpoint.remove(tmp_path / "old" / "checkpoint.npz")
    (tmp_path / "old" / "checkpoint.pkl").write_bytes(old_format_bytes(state))
    summary = resume(tmp_path / "old", steps=20, progress=False, log=quiet)
    assert summary["status"] == "completed" and summary["steps"] == 20
    without_time = [[{k: v for k, v in row.items() if k != "time"} for row in read_history(run)]
                    for run in (tmp_path / "old", tmp_path / "ref")]
    assert without_time[0] == without_time[1]
    a, _ = load_state(tmp_path / "old")
    b, _ = load_state(tmp_path / "ref")
    assert_same(a["params"], b["params"])
    assert_same(a["method_state"], b["method_state"])
