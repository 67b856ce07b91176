"""The trainer: budgets, schedule, kill-and-resume, NaN guard, reproducibility, float32."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pinnopt.config import RunConfig
from pinnopt.train import CHECKPOINT, build, load_state, next_eval_step, read_history, resume, train
from pinnopt.training import loop
from pinnopt.training.batches import StepBatches, batch_for_step
from pinnopt.training.setup import fresh_state

TINY = {"n_interior": 64, "n_boundary": 16}


def quiet(msg):
    pass


def tiny_config(**kw):
    base = dict(method="adam", net="2-8-1", problem_options=dict(TINY), steps=20,
                time_budget=None, plots=False, checkpoint_every=0.0)
    base.update(kw)
    return RunConfig(**base)


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_eval_schedule_is_geometric():
    steps, s = [0], 0
    while s < 100:
        s = next_eval_step(s, 1.1)
        steps.append(s)
    assert steps[:12] == list(range(12)) or steps[:11] == list(range(11))
    ratios = [b / a for a, b in zip(steps[20:], steps[21:])]
    assert all(1.0 < r < 1.25 for r in ratios)


def test_same_seed_same_history_and_params(tmp_path):
    a = train(tiny_config(), tmp_path / "a", progress=False, log=quiet)
    b = train(tiny_config(), tmp_path / "b", progress=False, log=quiet)
    c = train(tiny_config(seed=1), tmp_path / "c", progress=False, log=quiet)
    ha, hb, hc = (read_history(tmp_path / n) for n in "abc")
    assert without_time(ha) == without_time(hb)
    assert without_time(ha) != without_time(hc)
    pa, _ = load_state(tmp_path / "a")
    pb, _ = load_state(tmp_path / "b")
    for x, y in zip(jax.tree_util.tree_leaves(pa["params"]), jax.tree_util.tree_leaves(pb["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a["steps"] == 20 and ha[-1]["step"] == 20


def test_budget_extension_by_resume_continues_the_same_trajectory(tmp_path):
    """Training 30 steps equals 12 steps then a resume to 30 (L-BFGS state included)."""
    full = train(tiny_config(method="lbfgs", steps=30), tmp_path / "full", progress=False, log=quiet)
    train(tiny_config(method="lbfgs", steps=12), tmp_path / "part", progress=False, log=quiet)
    part = resume(tmp_path / "part", steps=30, progress=False, log=quiet)
    assert part["final"]["loss"] == full["final"]["loss"]
    assert part["steps"] == full["steps"] == 30


def test_time_budget_stops_the_run(tmp_path):
    s = train(tiny_config(steps=10**9, time_budget=0.5), tmp_path / "t", progress=False, log=quiet)
    assert s["status"] == "completed" and "time budget" in s["message"]
    assert 0.5 <= s["train_time"] < 5.0


def test_the_time_budget_counts_the_drawing_of_points():
    """A batch function that takes 50 ms per call: each of the 5 steps trains 50 ms longer."""
    setup = build(tiny_config(steps=5))
    fixed = batch_for_step(setup.objective, setup.config.seed, 0, 1)
    calls = []

    def slow_batches(step):
        if calls:
            time.sleep(0.05)
        calls.append(step)
        return fixed

    outcome = loop.run(setup, fresh_state(setup), slow_batches, loop.MemorySink(), log=quiet)
    assert outcome.state["step"] == 5 and len(calls) == 7
    assert outcome.state["train_time"] >= 5 * 0.05


def test_nan_guard_stops_and_keeps_last_good_state(tmp_path):
    cfg = tiny_config(method="sgd", hparams={"lr": 1e30, "momentum": 0.0}, steps=50)
    s = train(cfg, tmp_path / "nan", progress=False, log=quiet)
    assert s["status"] == "diverged" and "non-finite" in s["message"]
    state, _ = load_state(tmp_path / "nan")
    leaves = jax.tree_util.tree_leaves(state["params"])
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert state["step"] == s["steps"] < 50


def test_float32_run(tmp_path):
    s = train(tiny_config(dtype="float32"), tmp_path / "f32", progress=False, log=quiet)
    state, _ = load_state(tmp_path / "f32")
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(state["params"]))
    assert np.isfinite(s["final"]["loss"])


def test_corrupted_checkpoint_falls_back_to_previous(tmp_path):
    train(tiny_config(steps=10), tmp_path / "c", progress=False, log=quiet)
    path = tmp_path / "c" / CHECKPOINT
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    state, warning = load_state(tmp_path / "c")
    assert warning and "checksum" in warning
    assert state["step"] < 10


def _cli(*args):
    return [sys.executable, "-m", "pinnopt", "train", *args, "--no-progress", "--no-plots"]


RUN = ["--method", "adam", "--net", "2-8-1", "--steps", "1500", "--eval-ratio", "1.05",
       "--checkpoint-every", "0", "--problem-opt", "n_interior=64", "--problem-opt", "n_boundary=16"]


def test_sigkill_then_resume_gives_the_uninterrupted_history(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ref = subprocess.run(_cli(*RUN, "--out", str(tmp_path / "ref")), env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cli(*RUN, "--out", str(tmp_path / "killed")), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "killed" / "history.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and history.read_text().count("\n") >= 45:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    res = subprocess.run(_cli("--resume", str(tmp_path / "killed")), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert without_time(read_history(tmp_path / "killed")) == without_time(read_history(tmp_path / "ref"))
    a, _ = load_state(tmp_path / "killed")
    b, _ = load_state(tmp_path / "ref")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        if isinstance(x, (np.ndarray, jax.Array)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 1500


def test_sigterm_writes_a_checkpoint_and_exits_with_143(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [a if a != "1500" else "1000000" for a in RUN]
    proc = subprocess.Popen(_cli(*args, "--out", str(tmp_path / "term")), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = tmp_path / "term" / "history.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (history.exists() and history.read_text().count("\n") >= 30):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopping after the steps in progress; SIGTERM again (or Ctrl-C) to stop now" in out
    summary = json.loads((tmp_path / "term" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["message"]
    assert summary["signal"] == "SIGTERM"
    state, _ = load_state(tmp_path / "term")
    assert state["step"] == summary["steps"] > 0
    assert read_history(tmp_path / "term")[-1]["step"] == summary["steps"]


def test_adam_lowers_the_poisson_error_by_two_orders_of_magnitude(tmp_path):
    """2d Poisson, 2-64-1 tanh net, Adam with an exponentially decaying learning rate."""
    steps = 15_000
    cfg = RunConfig(method="adam", net="2-64-1", steps=steps, time_budget=None, plots=False,
                    hparams={"lr": 5e-3, "schedule": "exponential", "decay_rate": 0.01,
                             "decay_steps": steps},
                    problem_options={"n_interior": 128, "n_boundary": 32}, eval_ratio=2.0)
    train(cfg, tmp_path / "adam", progress=False, log=quiet)
    history = read_history(tmp_path / "adam")
    assert history[-1]["step"] == steps
    assert history[-1]["rms_u"] < history[0]["rms_u"] / 100


def test_resample_every_keeps_each_draw_for_k_steps_and_resumes_on_the_same_points(tmp_path):
    """resample_every = 4: steps 0-3 share a draw, step 4 gets a new one; the draw depends
    only on the step, so a run stopped mid-draw (step 6) and resumed to 10 equals 10 steps."""
    opts = dict(TINY, resample=True)
    cfg = tiny_config(problem_options=opts, resample_every=4, steps=10)
    objective = build(cfg).objective

    def points(step, every=4):
        return np.asarray(batch_for_step(objective, cfg.seed, step, every)["interior"])

    x = [points(s) for s in range(9)]
    for s in (1, 2, 3):
        np.testing.assert_array_equal(x[s], x[0])
    np.testing.assert_array_equal(x[5], x[4])
    assert not np.array_equal(x[4], x[3]) and not np.array_equal(x[8], x[4])
    np.testing.assert_array_equal(points(4, every=1), x[4])
    assert not np.array_equal(points(5, every=1), x[5])
    # The loop's memo of the latest draw gives the same points, in any order of steps.
    memo = StepBatches(objective, cfg.seed, 4)
    for s in (8, 0, 3, 5, 8, 1):
        np.testing.assert_array_equal(np.asarray(memo(s)["interior"]), x[s])

    full = train(cfg, tmp_path / "full", progress=False, log=quiet)
    train(tiny_config(problem_options=opts, resample_every=4, steps=6), tmp_path / "part",
          progress=False, log=quiet)
    part = resume(tmp_path / "part", steps=10, progress=False, log=quiet)
    assert part["steps"] == full["steps"] == 10
    assert part["final"]["loss"] == full["final"]["loss"]
    other = train(tiny_config(problem_options=opts, steps=10), tmp_path / "k1", progress=False,
                  log=quiet)
    assert other["final"]["loss"] != full["final"]["loss"]


@pytest.mark.parametrize("kw, needle", [
    (dict(resample_every=0), "resample_every=0 must be at least 1"),
    (dict(resample_every=2.5), "resample_every=2.5 must be an integer"),
])
def test_resample_every_rejects_bad_values(kw, needle):
    from pinnopt.config import ConfigError

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        tiny_config(**kw)


def test_resample_every_on_a_fixed_batch_problem_is_an_error(tmp_path):
    from pinnopt.config import ConfigError

    with pytest.raises(ConfigError, match="resample_every=3 needs a problem that redraws"):
        train(tiny_config(resample_every=3), tmp_path / "fixed", progress=False, log=quiet)
