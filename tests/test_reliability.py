"""Reliability: injected faults, fuzzed configuration and CLI input, broken problem definitions."""

import json
import string

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinnopt.cli import main
from pinnopt.config import ConfigError, RunConfig
from pinnopt.geometry import Box
from pinnopt.problems import Problem, register_problem
from pinnopt.residuals import ResidualGroup
from pinnopt.train import CHECKPOINT, load_state, read_history, train

from faults import register_faulty

TINY = {"n_interior": 32, "n_boundary": 8}


faulty = register_faulty("test-faulty", lr=1e-3, fail_at_step=3, poison_params=True)


def quiet(msg):
    pass


def tiny(**kw):
    base = dict(net="2-8-1", problem_options=dict(TINY), steps=10, time_budget=None, plots=False,
                checkpoint_every=0.0)
    base.update(kw)
    return RunConfig(**base)


def test_nan_in_curvature_state_is_rolled_back_and_retried_with_more_damping(tmp_path):
    logs = []
    s = train(tiny(method="test-faulty", hparams={"damping": 1e-5}), tmp_path / "r",
              progress=False, log=logs.append)
    assert s["status"] == "completed" and s["steps"] == 10
    retries = [m for m in logs if "retrying" in m]
    assert len(retries) == 2 and "step 3" in retries[0]       # 1e-5 -> 1e-4 -> 1e-3
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["hparams"]["damping"] == pytest.approx(1e-3)
    state, _ = load_state(tmp_path / "r")
    assert bool(jnp.isfinite(state["method_state"]["factor"]))
    assert all(np.isfinite(r["loss"]) for r in read_history(tmp_path / "r"))


def test_fault_with_stop_policy_keeps_the_last_good_state(tmp_path):
    s = train(tiny(method="test-faulty", hparams={"damping": 1e-5}, on_divergence="stop"),
              tmp_path / "r", progress=False, log=quiet)
    assert s["status"] == "diverged" and "step 3" in s["message"]
    state, _ = load_state(tmp_path / "r")
    assert state["step"] == 3 and bool(jnp.isfinite(state["method_state"]["factor"]))


def test_retries_are_bounded(tmp_path):
    cfg = tiny(method="test-faulty", hparams={"damping": 1e-9}, max_retries=2)
    s = train(cfg, tmp_path / "r", progress=False, log=quiet)
    assert s["status"] == "diverged" and "after 2 retries" in s["message"]


def test_broken_problem_definitions_get_clear_errors(tmp_path):
    box = Box.cube(2)
    good = ResidualGroup("interior", box.interior(), 16, lambda x, u: u.value[0])
    cases = {
        "outside": (ResidualGroup("b", lambda k, n: 2.0 + box.interior()(k, n), 8,
                                  lambda x, u: u.value[0]), "outside the domain"),
        "shape": (ResidualGroup("b", lambda k, n: box.interior()(k, n)[:, :1], 8,
                                lambda x, u: u.value[0]), "shape"),
        "nan": (ResidualGroup("b", box.interior(), 8, lambda x, u: jnp.log(-1.0 - u.value[0] ** 2)),
                "not finite"),
    }
    for name, (bad, message) in cases.items():
        problem = Problem(name=f"broken-{name}", domain=box, coords=("x", "y"), fields=("u",),
                          groups=(good, bad), solution=lambda x: x[:, :1])
        register_problem(f"broken-{name}", lambda p=problem: p)
        with pytest.raises(ConfigError, match=message):
            train(tiny(method="adam", problem=f"broken-{name}", problem_options={}),
                  tmp_path / name, progress=False, log=quiet)
        assert not (tmp_path / name / CHECKPOINT).exists()
    nosol = Problem(name="nosol", domain=box, coords=("x", "y"), fields=("u",), groups=(good,))
    register_problem("nosol", lambda: nosol)
    with pytest.raises(ConfigError, match="no reference solution"):
        train(tiny(method="adam", problem="nosol", problem_options={}), tmp_path / "nosol",
              progress=False, log=quiet)


def test_a_training_loss_of_exactly_zero_stops_the_run_and_says_why(tmp_path):
    # Residuals that vanish at every training point whatever the network (as when saturated
    # tanh units fit fixed points exactly): the gradient is zero, so the run must stop with
    # status "stalled" instead of spending its budget, and the errors must still be reported.
    box = Box.cube(2)
    flat = ResidualGroup("interior", box.interior(), 16, lambda x, u: u.value[0] - u.value[0])
    problem = Problem(name="zero-loss", domain=box, coords=("x", "y"), fields=("u",),
                      groups=(flat,), solution=lambda x: 1.0 + x[:, :1])
    register_problem("zero-loss", lambda: problem)
    logs = []
    s = train(tiny(method="adam", problem="zero-loss", problem_options={}, steps=50),
              tmp_path / "z", progress=False, log=logs.append)
    assert s["status"] == "stalled" and s["steps"] == 1
    assert "exactly 0" in s["message"] and "step 0" in s["message"]
    assert s["final"]["step"] == 1 and s["final"]["loss"] == 0.0
    assert s["final"]["rel_l2_u"] > 0.1            # the error is still measured and reported
    assert any(m.startswith("stalled: the training loss is exactly 0") for m in logs)
    state, _ = load_state(tmp_path / "z")
    assert state["step"] == 1


# -- fuzzing ------------------------------------------------------------------------------
values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True),
                   st.text(string.printable, max_size=12),
                   st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(string.ascii_lowercase, max_size=6),
                                   st.integers() | st.text(max_size=4), max_size=3))
keys = st.sampled_from(["problem", "problem_options", "net", "activation", "method", "hparams",
                        "steps", "time_budget", "seed", "dtype", "eval_ratio",
                        "checkpoint_every", "plots", "on_divergence", "max_retries", "colour"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_any_config_table_is_accepted_or_gets_a_config_error(data):
    try:
        config = RunConfig.from_dict(data)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
        return
    try:
        problem = config.build_problem()
        config.build_net(problem)
    except ConfigError as err:
        assert "\n" not in str(err)


FLAGS = ["--problem", "--dim", "--net", "--method", "--lr", "--opt", "--steps", "--time",
         "--seed", "--dtype", "--eval-ratio", "--checkpoint-every", "--problem-opt",
         "--activation", "--config", "--on-divergence"]
WORDS = ["poisson", "heat", "adam", "lbfgs", "sgd", "2", "-1", "0", "1e-3", "nan", "inf",
         "lr=1", "b1=x", "=", "n_interior=3", "dim=-2", "float16", "2-8-1", "3-8-1", "tanh",
         "", "small", "--", "stop", "retry", "/nonexistent.toml"]


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", "--method", "adam", "--steps", "2", "--net", "2-8-1", "--no-progress",
                 "--no-plots", "--problem-opt", "n_interior=16", "--problem-opt",
                 "n_boundary=4", "--out", str(out)]) == 0
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(FLAGS) | st.sampled_from(WORDS), max_size=8))
def test_fuzzed_train_flags_never_traceback_nor_touch_an_existing_run(argv, existing_run, capsys):
    before = {p.name: p.read_bytes() for p in existing_run.iterdir() if p.is_file()}
    code = main(["train", *argv, "--out", str(existing_run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2                              # invalid input, or the run already exists
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnopt: error:"), err
    after = {p.name: p.read_bytes() for p in existing_run.iterdir() if p.is_file()}
    assert before == after


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
       kind=st.sampled_from(["f8", "f4", "i4", "U3", "c16", "nan"]))
def test_fuzzed_points_files(shape, kind, existing_run, tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("pts") / "p.npy"
    if kind == "nan":
        arr = np.full(shape, np.nan)
    else:
        arr = np.zeros(shape, dtype=kind)
    np.save(path, arr)
    code = main(["predict", str(existing_run), "--points", str(path),
                 "--out", str(path.with_name("out.npy"))])
    err = capsys.readouterr().err
    # An empty (0, 2) array holds no NaN: it is as valid as an empty float array.
    finite = kind in ("f8", "f4", "i4") or (kind == "nan" and arr.size == 0)
    ok = finite and len(shape) == 2 and shape[1] == 2
    assert code == (0 if ok else 2), (shape, kind, err)
    if not ok:
        assert len(err.strip().splitlines()) == 1 and err.startswith("pinnopt: error:")


def test_float32_warns_about_unresolvable_damping(tmp_path):
    logs = []
    train(tiny(method="test-faulty", hparams={"damping": 1e-8, "fail_below": 0.0}, dtype="float32"),
          tmp_path / "f32", progress=False, log=logs.append)
    assert any("below what float32 resolves" in m for m in logs)
    logs.clear()
    train(tiny(method="test-faulty", hparams={"damping": 1e-8, "fail_below": 0.0}),
          tmp_path / "f64", progress=False, log=logs.append)
    assert not any("float32 resolves" in m for m in logs), logs
