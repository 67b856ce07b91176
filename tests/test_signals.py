"""Stopping a run: Ctrl-C and SIGTERM in a long step, the announcement of long steps, and runs
that stopped before their first checkpoint (killed while compiling or in the first step)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinnopt.cli import main
from pinnopt.config import RunConfig
from pinnopt.train import RunError, load_state, read_history, resume, train
from pinnopt.training import loop
from pinnopt.training.rundir import has_checkpoint

# A CLI run with a method whose steps do SLOW_ITERS idle 256 × 256 matrix products (read from
# the environment when the step is traced): a long step made of XLA work, as a large ENGD step
# is, and fast again in the process that resumes the run.
SLOW_RUN = '''
import os, sys
import jax, jax.numpy as jnp
from pinnopt.cli import main
from pinnopt.optim.base import Method, method

@method("test-slow", "gradient descent with SLOW_ITERS idle matrix products a step")
def slow(objective, *, lr: float = 1e-3):
    iters = int(os.environ.get("SLOW_ITERS", "0"))

    def step(params, state, batch, key):
        loss, grads = jax.value_and_grad(objective.loss)(params, batch)
        busy = jax.lax.fori_loop(0, iters, lambda i, a: jnp.tanh(a @ a), jnp.eye(256) * 0.5)
        new = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return new, state, {"loss": loss + 0.0 * busy[0, 0]}

    return Method(lambda params: {}, step)

sys.exit(main(sys.argv[1:]))
'''

ARGS = ["--method", "test-slow", "--net", "2-8-1", "--time", "none", "--no-plots",
        "--problem-opt", "n_interior=16", "--problem-opt", "n_boundary=4"]


def quiet(message):
    pass


def slow_cli(tmp_path: Path, args: list[str], iters: int) -> subprocess.Popen:
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SLOW_ITERS": str(iters)}
    return subprocess.Popen([sys.executable, str(script), "train", *args, "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_row(proc: subprocess.Popen, run: Path, since: float) -> None:
    """Until the process started at ``since`` has written its row of step 0: its loop
    listens for signals, and step 0 is next."""
    history = run / "history.jsonl"
    deadline = time.time() + 240
    while not (history.exists() and history.stat().st_mtime >= since):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)


def test_ctrl_c_twice_stops_at_once_once_after_the_step_with_exit_130_and_the_run_resumes(
        tmp_path):
    """A first step of some 10^6 matrix products (minutes): a second SIGINT ends the process
    in seconds with no checkpoint yet, and --resume starts the run from step 0. In that
    resumed run, with steps of about a second, one SIGINT stops it after the step, with a
    checkpoint and exit code 130, and a last --resume finishes it."""
    run = tmp_path / "run"
    since = time.time()
    proc = slow_cli(tmp_path, [*ARGS, "--steps", "4", "--out", str(run)], iters=10**6)
    wait_for_first_row(proc, run, since)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 30
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT: stopping after the steps in progress; Ctrl-C again to stop now" in out
    assert "stopped at once by a second SIGINT, in step 0; no checkpoint yet" in err
    assert not has_checkpoint(run) and not (run / "summary.json").exists()

    since = time.time()
    proc = slow_cli(tmp_path, ["--resume", str(run)], iters=2000)
    wait_for_first_row(proc, run, since)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "has no checkpoint (the run stopped before its first one): starting it from step 0" \
        in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert has_checkpoint(run) and read_history(run)[-1]["step"] == summary["steps"] < 4

    proc = slow_cli(tmp_path, ["--resume", str(run)], iters=0)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert [r["step"] for r in read_history(run)] == [0, 1, 2, 3, 4]


def tiny(**kw):
    base = dict(method="adam", net="2-8-1", problem_options={"n_interior": 32, "n_boundary": 8},
                steps=6, time_budget=None, plots=False, checkpoint_every=0.0)
    base.update(kw)
    return RunConfig(**base)


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_a_run_without_a_checkpoint_names_the_way_out_and_resumes_from_step_0(tmp_path, capsys):
    """What a kill before the first checkpoint leaves (config.json, metadata, some rows):
    rerunning, predicting and resuming say what to do, and --resume trains it from step 0
    into the same history as an uninterrupted run."""
    run = tmp_path / "killed"
    train(tiny(), run, progress=False, log=quiet)
    uninterrupted = read_history(run)
    for path in run.glob("checkpoint.*"):
        path.unlink()
    (run / "summary.json").unlink()
    (run / "checkpoint.npz.tmp").write_bytes(b"torn")  # a kill during the first write

    code = main(["train", "--method", "adam", "--net", "2-8-1", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "stopped before its first checkpoint" in err
    assert f"pinnopt train --resume {run} starts it from step 0" in err and "--overwrite" in err
    with pytest.raises(RunError, match=f"has no checkpoint yet.*--resume {run} starts it from"):
        load_state(run)

    logs = []
    summary = resume(run, progress=False, log=logs.append)
    assert any("starting it from step 0 with its saved settings" in m for m in logs)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert without_time(read_history(run)) == without_time(uninterrupted)


def test_a_long_step_is_announced_with_its_estimated_cost(tmp_path, monkeypatch):
    logs = []
    train(tiny(), tmp_path / "quiet", progress=False, log=logs.append)
    assert not any("each step" in m or "took" in m for m in logs)

    monkeypatch.setattr(loop, "ANNOUNCE_SECONDS", 0.0)
    logs.clear()
    train(tiny(), tmp_path / "loud", progress=False, log=logs.append)
    announced = [m for m in logs if m.startswith("each step: ~")]
    assert len(announced) == 1, logs
    assert "FLOP" in announced[0] and "per step on this machine" in announced[0]
    assert "Ctrl-C stops after the current step, twice stops at once" in announced[0]
    assert any(m.startswith("step 0 took ") for m in logs)
    assert loop.flop_rate("float64") > 1e6
