"""``average``: an exponential moving average of another method's iterates. The inner method
follows its own trajectory; the run sees the average, computed by the documented rule; a run
stopped and resumed gives the same bits; compositions that do not fit are refused."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pinnopt.config import RunConfig
from pinnopt.methods import adam, alm, average, engd, sgd
from pinnopt.optim.combine import average_weight
from pinnopt.precision import float64
from pinnopt.train import load_state, resume, train
from pinnopt.training.batches import batch_for_step, step_keys
from pinnopt.training.setup import build, fresh_state


def tiny(method, steps=8, **kw) -> RunConfig:
    return RunConfig(method=method, net="2-8-1", steps=steps, time_budget=None, plots=False,
                     problem_options={"n_interior": 64, "n_boundary": 16}, checkpoint_every=0.0,
                     resample_every=1, **kw)


def trajectory(config: RunConfig, steps: int):
    """The parameters after each step, stepping the bound method by hand on the run's batches."""
    setup = build(config)
    start = fresh_state(setup)
    params, state = start["params"], start["method_state"]
    step = jax.jit(setup.method.step)
    out = []
    for s in range(steps):
        batch = batch_for_step(setup.objective, config.seed, s, config.resample_every)
        params, state, _ = step(params, state, batch, step_keys(config.seed, s)[1])
        out.append(jax.tree_util.tree_map(np.asarray, params))
    return out


def flat(params) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


@pytest.mark.parametrize("decay,start", [(0.9, 0), (0.5, 3)])
def test_the_run_sees_the_documented_average_of_the_inner_iterates(decay, start):
    """Redrawn points every step: the inner method alone gives θ_1..θ_n; ``average`` gives
    θ̄_k = θ̄_{k-1} + (1 - d_k)(θ_k - θ̄_{k-1}), d_k = min(decay, (1+n)/(10+n)), n = k - start."""
    with float64():
        inner = trajectory(tiny(sgd(lr=1e-2, momentum=0.9)), 8)
        averaged = trajectory(tiny(average(inner=sgd(lr=1e-2, momentum=0.9), decay=decay,
                                           start=start)), 8)
        theta0 = flat(fresh_state(build(tiny(sgd())))["params"])
    expected, mean = [], theta0
    for k, theta in enumerate(inner):
        n = k - start
        w = 1.0 if k < start else 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        mean = mean + w * (flat(theta) - mean)
        expected.append(mean)
    for got, want in zip(averaged, expected, strict=True):
        np.testing.assert_allclose(flat(got), want, rtol=1e-12, atol=1e-14)
    # the average is not the iterate once averaging has started
    assert not np.allclose(flat(averaged[-1]), flat(inner[-1]), rtol=1e-6)


def test_decay_zero_is_the_inner_method():
    with float64():
        inner = trajectory(tiny(engd(damping=1e-6)), 4)
        averaged = trajectory(tiny(average(inner=engd(damping=1e-6), decay=0.0)), 4)
    for a, b in zip(inner, averaged, strict=True):
        np.testing.assert_array_equal(flat(a), flat(b))


@settings(max_examples=30, deadline=None)
@given(decay=st.floats(0.0, 0.999), start=st.integers(0, 50), count=st.integers(0, 10_000))
def test_weights_are_in_unit_interval_and_one_before_start(decay, start, count):
    with float64():
        w = float(average_weight(np.int32(count), decay, start))
    assert 0.0 < w <= 1.0
    if count < start:
        assert w == 1.0
    else:
        assert w == pytest.approx(1.0 - min(decay, (1 + count - start) / (10 + count - start)))


@settings(max_examples=5, deadline=None)
@given(decay=st.floats(0.0, 0.999), start=st.integers(0, 3))
def test_an_iterate_that_does_not_move_is_averaged_exactly(decay, start):
    """sgd with lr = 1e-300 returns its parameters (the update underflows): their average
    is those bits, with no drift."""
    with float64():
        steps = trajectory(tiny(average(inner=sgd(lr=1e-300), decay=decay, start=start)), 5)
        theta0 = flat(fresh_state(build(tiny(sgd())))["params"])
    for theta in steps:
        np.testing.assert_array_equal(flat(theta), theta0)


def test_a_stopped_and_resumed_run_gives_the_same_bits(tmp_path):
    method = average(inner=engd(damping=1e-6, adapt_damping=True), decay=0.8)
    quiet = lambda m: None  # noqa: E731
    with float64():
        train(tiny(method, 10), tmp_path / "full", progress=False, log=quiet)
        train(tiny(method, 4), tmp_path / "part", progress=False, log=quiet)
        resume(tmp_path / "part", steps=10, progress=False, log=quiet)
    a, _ = load_state(tmp_path / "full")
    b, _ = load_state(tmp_path / "part")
    assert a["step"] == b["step"] == 10
    for x, y in zip(jax.tree_util.tree_leaves((a["params"], a["method_state"])),
                    jax.tree_util.tree_leaves((b["params"], b["method_state"])), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the saved parameters are the average, the method state holds the inner iterate
    assert not np.array_equal(flat(a["params"]), flat(a["method_state"].iterate))


def test_compositions_fit_by_what_the_inner_method_needs():
    assert average(inner=adam()).needs == frozenset({"loss"})
    assert "residuals" in average(inner=engd()).needs
    alm(inner=average(inner=engd()))  # Gauss-Newton on the shifted residual, averaged
    with pytest.raises(ValueError, match="inner=average does not fit: it needs groups"):
        alm(inner=average(inner=alm()))
    with pytest.raises(ValueError, match="decay must be in"):
        average(decay=1.0)


def test_selectable_from_the_command_line():
    from pinnopt.cli import _config_from_args, build_parser

    args = build_parser().parse_args([
        "train", "--method", "average", "--opt", "decay=0.95", "--opt", "inner=engd",
        "--opt", "inner.damping=1e-6"])
    assert _config_from_args(args).method_value == average(inner=engd(damping=1e-6), decay=0.95)
