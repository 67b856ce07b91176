"""Multi-task training (pinnopt.optim.multitask): task losses, task gradients, ε splits, methods.

A toy problem with an "eps" coordinate keeps compilation cheap: ``u(x, ε)`` with
``∂_x u = cos x`` inside and ``u = 0`` at ``x = 0``, ε ∈ [1e-4, 1] drawn log-uniformly.
"""

from __future__ import annotations

import math

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pinnopt  # noqa: F401  (float64)
from pinnopt.config import ConfigError, RunConfig
from pinnopt.geometry import Box
from pinnopt.nets import MLP
from pinnopt.optim import METHODS, make_method
from pinnopt.optim import multitask as mt
from pinnopt.problems import PROBLEMS, Problem, make_problem, register_problem
from pinnopt.residuals import Objective, ResidualGroup
from pinnopt.taylor import Derivatives
from pinnopt.train import load_state, read_history, resume, train

TOY = "multitask-toy"
EPS_MIN = 1e-4
AGGREGATOR_METHODS = ("sum", "pcgrad", "mgda", "config", "mconfig", "hrgrad")


def log_uniform_eps(key, n):
    return 10.0 ** jax.random.uniform(key, (n,), minval=math.log10(EPS_MIN), maxval=0.0)


def toy_problem(n_interior: int = 24, n_boundary: int = 8, eps_values: str = "") -> Problem:
    """``∂_x u = cos x`` on x ∈ [0, 1], ``u(0) = 0``, with a passive coordinate ε.

    ``eps_values``: comma-separated fixed ε values (stratified sampling) instead of log-uniform.
    """
    box = Box((0.0, EPS_MIN), (1.0, 1.0))
    if eps_values:
        values = jnp.asarray([float(v) for v in eps_values.split(",")])

        def draw_eps(key, n):
            return values[jnp.arange(n) % values.size]
    else:
        draw_eps = log_uniform_eps

    def interior(key, n):
        kx, ke = jax.random.split(key)
        return jnp.stack([jax.random.uniform(kx, (n,)), draw_eps(ke, n)], axis=1)

    def boundary(key, n):
        return jnp.stack([jnp.zeros(n), draw_eps(key, n)], axis=1)

    groups = (
        ResidualGroup("interior", interior, n_interior,
                      lambda x, u: u.grad[0, 0] - jnp.cos(x[0]),
                      Derivatives(directions=((1.0, 0.0),)), role="pde"),
        ResidualGroup("boundary", boundary, n_boundary, lambda x, u: u.value[0],
                      weight=10.0, role="boundary"),
    )
    return Problem(TOY, box, ("x", "eps"), ("u",), groups,
                   solution=lambda x: jnp.sin(x[:, :1]), n_eval=64, resample=True,
                   nets={"small": (6,)})


@pytest.fixture(scope="module")
def registered_toy():
    register_problem(TOY, toy_problem)
    yield TOY
    PROBLEMS.pop(TOY, None)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for this module's trainer runs: a resumed run compiles
    the same step function again, and every method's runs share one evaluation function."""
    from jax._src import compilation_cache as cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    for name, value in zip(names, (str(tmp_path_factory.mktemp("jax-cache")), 0.0, 0)):
        jax.config.update(name, value)
    cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cache.reset_cache()


def toy_objective(**options):
    problem = toy_problem(**options)
    return Objective(problem, MLP((2, 6, 1)))


def setup(seed=0, **options):
    objective = toy_objective(**options)
    params = objective.net.init(jax.random.PRNGKey(seed))
    batch = objective.sample(jax.random.PRNGKey(seed + 1))
    return objective, params, batch


# ---------------------------------------------------------------------------------------------
# Task losses and gradients


@pytest.mark.parametrize("tasks", ["groups", "roles", "eps-decades", "groups+eps-decades"])
def test_task_losses_partition_the_loss(tasks):
    objective, params, batch = setup()
    split = mt.make_task_split(objective, tasks)
    losses = jax.jit(lambda p, b: mt.task_losses(objective, split, p, b))(params, batch)
    assert losses.shape == (split.m,)
    assert split.m == {"groups": 2, "roles": 2, "eps-decades": 4, "groups+eps-decades": 8}[tasks]
    np.testing.assert_allclose(float(jnp.sum(losses)), float(objective.loss(params, batch)),
                               rtol=1e-13)
    if tasks == "groups":
        groups = objective.group_losses(params, batch)
        np.testing.assert_allclose(np.asarray(losses),
                                   [float(groups["interior"]), float(groups["boundary"])],
                                   rtol=1e-13)


def test_task_gradients_equal_separate_gradients_of_each_task_loss():
    objective, params, batch = setup()
    split = mt.make_task_split(objective, "groups+eps-decades")
    losses, grads = jax.jit(
        lambda p, b: mt.task_gradients(objective, split, p, b)[:2])(params, batch)
    flat, _ = ravel_pytree(params)
    assert grads.shape == (split.m, flat.size)

    @jax.jit
    def separate_gradient(p, b, i):  # one task loss, differentiated on its own
        return ravel_pytree(jax.grad(lambda q: mt.task_losses(objective, split, q, b)[i])(p))[0]

    for i in range(split.m):
        np.testing.assert_allclose(np.asarray(grads[i]),
                                   np.asarray(separate_gradient(params, batch, i)),
                                   rtol=1e-12, atol=1e-15)
    total = jax.jit(lambda p, b: ravel_pytree(jax.grad(objective.loss)(p, b))[0])(params, batch)
    np.testing.assert_allclose(np.asarray(jnp.sum(grads, axis=0)), np.asarray(total),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("tasks", ["groups", "roles", "eps-values", "groups+eps-values"])
def test_blocked_task_gradients_equal_the_jacobian(tasks):
    """Stratified ε (point i takes value i mod 3): each task's gradient from its own points."""
    objective, params, batch = setup(eps_values="1e-4,0.01,1", n_interior=24, n_boundary=6)
    split = mt.make_task_split(objective, tasks)
    layout = mt.task_layout(objective, split)
    expected_stride = 1 if tasks in ("groups", "roles") else 3
    assert layout is not None and set(layout.strides.values()) == {expected_stride}
    blocked = jax.jit(lambda p, b: mt.task_gradients(objective, split, p, b, layout)[:2])
    jacobian = jax.jit(lambda p, b: mt.task_gradients(objective, split, p, b)[:2])
    # The second batch breaks the layout (rows shuffled): the step falls back to the Jacobian.
    order = jax.random.permutation(jax.random.PRNGKey(5), 24)
    shuffled = {**batch, "interior": batch["interior"][order]}
    assert bool(layout.holds(split, batch)) and (layout.static or not bool(layout.holds(split, shuffled)))
    for b in (batch, shuffled):
        (l1, g1), (l2, g2) = blocked(params, b), jacobian(params, b)
        np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-12, atol=1e-15)
        assert float(jnp.min(jnp.abs(l1))) > 0  # every task has points


@pytest.mark.parametrize("n_boundary", [4, 2])
def test_blocked_task_gradients_with_uneven_strata(n_boundary):
    """4 (or 2) boundary points over 3 strata: the leftover points are blocks of their own."""
    objective, params, batch = setup(eps_values="1e-4,0.01,1", n_interior=25, n_boundary=n_boundary)
    split = mt.make_task_split(objective, "groups+eps-values")
    layout = mt.task_layout(objective, split)
    assert layout is not None and layout.strides == {"interior": 3, "boundary": 3}
    (l1, g1), (l2, g2) = (jax.jit(lambda p, b, lay=lay: mt.task_gradients(objective, split, p, b, lay)[:2])(
        params, batch) for lay in (layout, None))
    np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-12, atol=1e-15)
    assert (np.asarray(l1) > 0).sum() == 3 + min(n_boundary, 3)


def test_no_layout_without_a_fixed_pattern():
    objective = toy_objective()  # ε log-uniform: any point can be in any decade
    assert mt.task_layout(objective, mt.make_task_split(objective, "eps-decades")) is None


def test_empty_task_has_zero_loss_and_gradient():
    objective, params, batch = setup()
    batch = {name: points.at[:, 1].set(0.5) for name, points in batch.items()}  # all in [0.1, 1)
    split = mt.make_task_split(objective, "eps-decades")
    losses, grads = jax.jit(
        lambda p, b: mt.task_gradients(objective, split, p, b)[:2])(params, batch)
    assert np.all(np.asarray(losses[:3]) == 0) and np.all(np.asarray(grads[:3]) == 0)
    assert float(losses[3]) > 0


def test_eps_decades_assign_points_to_their_decade():
    objective = toy_objective()
    split = mt.make_task_split(objective, "eps-decades")
    assert split.labels == ("eps1e-4", "eps1e-3", "eps1e-2", "eps1e-1")
    eps = jnp.asarray([1e-4, 2e-4, 9.99e-4, 1e-3, 5e-3, 1e-2, 0.05, 0.1, 0.7, 1.0, 1e-5])
    expected = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 0]  # ε = 1 and values outside the range clip
    batch = {"interior": jnp.stack([jnp.full(eps.size, 0.3), eps], axis=1),
             "boundary": jnp.stack([jnp.zeros(2), jnp.asarray([3e-2, 1e-4])], axis=1)}
    tasks = split.assign(batch)
    assert np.asarray(tasks["interior"]).tolist() == expected
    assert np.asarray(tasks["boundary"]).tolist() == [2, 0]
    combined = mt.make_task_split(objective, "groups+eps-decades").assign(batch)
    assert np.asarray(combined["interior"]).tolist() == expected
    assert np.asarray(combined["boundary"]).tolist() == [4 + 2, 4 + 0]


def test_eps_values_are_read_from_stratified_points():
    objective = toy_objective(eps_values="1e-4,0.01,1")
    split = mt.make_task_split(objective, "eps-values")
    assert split.m == 3 and split.labels == ("eps0.0001", "eps0.01", "eps1")
    batch = {"interior": jnp.asarray([[0.2, 1.0], [0.2, 1e-4], [0.3, 0.01]]),
             "boundary": jnp.asarray([[0.0, 0.01]])}
    tasks = split.assign(batch)
    assert np.asarray(tasks["interior"]).tolist() == [2, 0, 1]
    assert np.asarray(tasks["boundary"]).tolist() == [1]
    with pytest.raises(ValueError, match="few fixed positive values"):
        mt.make_task_split(toy_objective(), "eps-values")


def test_roles_merge_groups_of_the_same_role():
    problem = make_problem("heat", dim=1, n_interior=8, n_boundary=4, n_initial=4)
    objective = Objective(problem, MLP((2, 4, 1)))
    assert mt.make_task_split(objective, "roles").labels == ("pde", "boundary", "initial")


# ---------------------------------------------------------------------------------------------
# Methods


def test_every_aggregator_is_a_registered_method_with_its_hyperparameters():
    for name in AGGREGATOR_METHODS:
        spec = METHODS[name]
        assert spec.hparams["tasks"] == "groups" and "lr" in spec.hparams
    assert METHODS["hrgrad"].hparams["kappa"] == 0.5
    assert METHODS["mconfig"].hparams["optimizer"] == "sgd"


def test_sum_with_adam_is_plain_adam_on_the_total_loss():
    objective, params, batch = setup()
    hp = {"lr": 3e-2, "schedule": "exponential", "decay_rate": 0.5, "decay_steps": 3}
    plain = make_method("adam", objective, **hp)
    summed = make_method("sum", objective, tasks="groups+eps-decades", **hp)

    def run(method):
        step = jax.jit(method.step)
        p, state, out = params, method.init(params), []
        for k in range(4):
            p, state, info = step(p, state, batch, jax.random.PRNGKey(k))
            out.append(float(info["loss"]))
        return p, out

    p_plain, loss_plain = run(plain)
    p_sum, loss_sum = run(summed)
    np.testing.assert_allclose(loss_sum, loss_plain, rtol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(p_sum), jax.tree_util.tree_leaves(p_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-14)


def trainer_config(toy, method, tasks, steps):
    return RunConfig(problem=toy, method=method, net="small", steps=steps, time_budget=None,
                     plots=False, checkpoint_every=0.0, eval_ratio=1.5,
                     hparams={"tasks": tasks, "lr": 1e-2})


def assert_diagnostics_logged(run_dir, tasks):
    row = read_history(run_dir)[-1]
    labels = mt.make_task_split(toy_objective(), tasks).labels
    for key in ("cos_min", "cos_mean", "conflict_fraction", "update_cos_min",
                *(f"task_loss_{label}" for label in labels),
                *(f"task_rate_{label}" for label in labels)):
        assert np.isfinite(row[f"method_{key}"]), key
    task_sum = sum(row[f"method_task_loss_{label}"] for label in labels)
    assert task_sum > 0


@pytest.mark.parametrize("method,tasks", [
    ("pcgrad", "groups"),               # draws its task orders from the step key
    ("mconfig", "groups"),              # stateful aggregator, plain SGD
    ("hrgrad", "groups+eps-decades"),   # the method the ε tasks are for, with eight tasks
])
def test_method_resumes_exactly_and_logs_diagnostics(method, tasks, registered_toy,
                                                     compilation_cache, tmp_path):
    """k trainer steps, checkpoint, resume to 2k == 2k uninterrupted steps."""
    k = 3
    quiet = dict(progress=False, log=lambda _: None)
    full = train(trainer_config(registered_toy, method, tasks, 2 * k), tmp_path / "full", **quiet)
    train(trainer_config(registered_toy, method, tasks, k), tmp_path / "part", **quiet)
    part = resume(tmp_path / "part", steps=2 * k, **quiet)
    assert part["steps"] == full["steps"] == 2 * k
    a, _ = load_state(tmp_path / "part")
    b, _ = load_state(tmp_path / "full")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        if isinstance(x, jax.Array):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert_diagnostics_logged(tmp_path / "full", tasks)
    if method == "hrgrad":
        # Rows at steps s and s + 1 carry the task losses of steps s − 1 and s, and the rate
        # of step s is their relative decrease.
        rows = {r["step"]: r for r in read_history(tmp_path / "full")}
        before, after = rows[2], rows[3]
        for key in ("interior_eps1e-2", "boundary_eps1e-4"):
            old, new = before[f"method_task_loss_{key}"], after[f"method_task_loss_{key}"]
            np.testing.assert_allclose(after[f"method_task_rate_{key}"], (old - new) / old)
        assert rows[1]["method_task_rate_interior_eps1e-2"] == 0.0  # no previous step
        # HRGrad's update never opposes a task gradient.
        assert all(r["method_update_cos_min"] >= 0 for r in rows.values() if r["step"] > 0)


@pytest.mark.parametrize("method", ["sum", "mgda", "config"])
def test_method_trains_and_checkpoints(method, registered_toy, compilation_cache, tmp_path):
    """A few trainer steps; the state has the structure of HRGrad's (Adam state, no aggregator
    state, previous task losses), whose exact resume is tested above."""
    summary = train(trainer_config(registered_toy, method, "groups", 4), tmp_path / "run",
                    progress=False, log=lambda _: None)
    assert summary["status"] == "completed" and summary["steps"] == 4
    state, _ = load_state(tmp_path / "run")
    assert isinstance(state["method_state"], mt.MultitaskState)
    assert state["method_state"].aggregator == ()
    assert_diagnostics_logged(tmp_path / "run", "groups")


# ---------------------------------------------------------------------------------------------
# Bad settings


def test_eps_tasks_need_an_eps_coordinate():
    problem = make_problem("poisson", dim=2, n_interior=8, n_boundary=4)
    objective = Objective(problem, MLP((2, 4, 1)))
    with pytest.raises(ValueError, match="no 'eps' coordinate") as err:
        make_method("hrgrad", objective, tasks="eps-decades")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("hparams,match", [
    ({"tasks": "decades"}, "tasks='decades' not one of"),
    ({"optimizer": "lbfgs"}, "optimizer='lbfgs' not one of"),
    ({"kappa": 1.5}, "kappa must be in"),
    ({"kappa": "big"}, "not a valid float"),
    ({"max_halvings": -1}, "max_halvings"),
    ({"lr": -1.0}, "learning rate must be positive"),
    ({"aggregator": "sum"}, "has no setting 'aggregator'"),
])
def test_bad_settings_give_clear_errors(hparams, match):
    objective = toy_objective()
    with pytest.raises(ValueError, match=match):
        make_method("hrgrad", objective, **hparams)


def test_bad_setting_through_the_run_config(registered_toy):
    with pytest.raises(ConfigError, match="beta1"):
        RunConfig(problem=registered_toy, method="pcgrad", hparams={"beta1": 0.5})


def test_report_draws_conflict_over_training(tmp_path):
    from pinnopt import report

    history = [{"step": s, "time": 0.1 * s, "loss": 1.0 / (s + 1),
                "method_cos_min": -0.5 + 0.1 * s, "method_cos_mean": 0.2,
                "method_conflict_fraction": 0.5, "method_update_cos_min": 0.3,
                "method_task_loss_eps1e-2": 1.0 / (s + 1), "method_task_loss_eps1e-1": 0.0}
               for s in range(5)]
    (path,) = report.plot_conflict(history, tmp_path, "toy")
    assert path.name == "conflict.png" and path.stat().st_size > 0
    assert report.plot_conflict([{"step": 0, "time": 0.0, "loss": 1.0}], tmp_path, "toy") == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-8, 1e4)), min_size=1, max_size=9))
def test_inverse_loss_weights_equalise_the_task_losses(values):
    losses = jnp.asarray(values)
    weights = np.asarray(mt.inverse_loss_weights(losses))
    active = np.asarray(values) > 0
    assert np.all(weights[~active] == 0)
    if active.any():
        mean = np.mean(np.asarray(values)[active])
        np.testing.assert_allclose(weights[active] * np.asarray(values)[active], mean, rtol=1e-12)


def test_inverse_loss_weighted_sum_is_the_weighted_gradient():
    """``task_weights="inverse-loss"`` with the plain sum and SGD steps along
    ``Σ_i (mean L / L_i) ∇L_i``, from the separately computed task gradients."""
    objective, params, batch = setup()
    split = mt.make_task_split(objective, "groups+eps-decades")
    flat, unravel = ravel_pytree(params)
    losses = mt.task_losses(objective, split, params, batch)
    grads = jax.jacrev(lambda f: mt.task_losses(objective, split, unravel(f), batch))(flat)
    weights = np.asarray(mt.inverse_loss_weights(losses))
    assert weights.max() > 2 * weights[weights > 0].min()  # the weights are not all alike
    expected = flat - 0.1 * (weights @ np.asarray(grads))
    method = make_method("sum", objective, tasks="groups+eps-decades", optimizer="sgd", lr=0.1,
                         task_weights="inverse-loss")
    new, _, _ = jax.jit(method.step)(params, method.init(params), batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(ravel_pytree(new)[0]), expected, rtol=1e-10,
                               atol=1e-12)
