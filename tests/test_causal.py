"""Causal time weighting around any method (pinnopt.optim.causal), float64, tiny nets: the slice
weights against a loop written out by hand, one causal Gauss–Newton step against the dense
damped step on √W r from ``jax.jacfwd``, ε = 0 as the wrapped method itself, the refusals, and
a run through the trainer that resumes exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pinnopt  # noqa: F401  (float64)
from pinnopt.config import RunConfig
from pinnopt.methods import adam, causal, engd
from pinnopt.optim.causal import slice_weights
from pinnopt.optim.gramian import flatten
from pinnopt.train import build, load_state, read_history, resume, train

OPTIONS = {"n_interior": 24, "n_initial": 6, "n_periodic": 5}


@functools.lru_cache(maxsize=None)
def convection():
    """Periodic convection (coordinates t, x; groups interior/initial/periodic), 2-6-6-1 net."""
    setup = build(RunConfig(problem="convection", problem_options=OPTIONS, net="2-6-6-1",
                            method="adam"))
    objective = setup.objective
    return objective, setup.net.init(jax.random.PRNGKey(0)), objective.sample(jax.random.PRNGKey(1))


def weights_by_hand(objective, params, batch, slices, epsilon):
    """W per interior point, from loops over slices (the interior group is the only "pde")."""
    group = next(g for g in objective.groups if g.role == "pde")
    x = np.asarray(batch[group.name])
    r = np.asarray(group.residual(objective.net, params, batch[group.name])).reshape(len(x), -1)
    t = x[:, 0]  # t ∈ [0, 1]
    k = np.minimum((t * slices).astype(int), slices - 1)
    losses = [group.weight * np.mean(np.sum(r[k == j] ** 2, axis=1)) if np.any(k == j) else 0.0
              for j in range(slices)]
    w = np.array([np.exp(-epsilon * sum(losses[:j])) for j in range(slices)])
    return w[k], w


@settings(max_examples=10, deadline=None)
@given(slices=st.integers(1, 12), epsilon=st.floats(0.0, 3.0), seed=st.integers(0, 2**16))
def test_slice_weights_are_the_exponential_of_the_earlier_slice_losses(slices, epsilon, seed):
    objective, _, batch = convection()
    params = objective.net.init(jax.random.PRNGKey(seed))
    residuals = objective.group_residuals(params, batch)
    per_point, w = slice_weights(objective, residuals, batch, ("interior",), 0, (0.0, 1.0),
                                 slices, epsilon)
    expected_points, expected = weights_by_hand(objective, params, batch, slices, epsilon)
    np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(per_point["interior"], expected_points, rtol=1e-12, atol=1e-300)
    assert w[0] == 1.0 and np.all(np.diff(np.asarray(w)) <= 0)  # causality: never increasing


def test_one_causal_gauss_newton_step_is_the_dense_step_on_the_weighted_residual():
    objective, params, batch = convection()
    slices, epsilon, damping = 4, 0.05, 1e-4
    point_w, _ = weights_by_hand(objective, params, batch, slices, epsilon)
    assert 0.0 < point_w.min() < 0.999  # the weights really weight
    flat, unravel = flatten(params)
    scales = objective.scales(batch)

    def weighted(f):
        parts = []
        for g in objective.groups:
            r = scales[g.name] * g.residual(objective.net, unravel(f), batch[g.name]).reshape(
                batch[g.name].shape[0], -1)
            if g.role == "pde":
                r = jnp.sqrt(jnp.asarray(point_w))[:, None] * r
            parts.append(r.ravel())
        return jnp.concatenate(parts)

    jac = np.asarray(jax.jacfwd(weighted)(flat))
    r = np.asarray(weighted(flat))
    direction = -np.linalg.solve(jac.T @ jac + damping * np.eye(flat.size), jac.T @ r)
    method = causal(inner=engd(variant="full", solver="cholesky", damping=damping),
                    slices=slices, epsilon=epsilon).build(objective)
    new, _, info = jax.jit(method.step)(params, method.init(params), batch, jax.random.PRNGKey(0))
    alpha = float(info["step_size"])
    assert alpha > 0
    np.testing.assert_allclose(np.asarray(flatten(new)[0] - flat) / alpha, direction,
                               rtol=1e-7, atol=1e-9 * np.abs(direction).max())
    np.testing.assert_allclose(float(info["causal_loss"]), 0.5 * np.sum(r**2), rtol=1e-12)
    np.testing.assert_allclose(float(info["loss"]), float(objective.loss(params, batch)),
                               rtol=1e-12)


def test_without_weighting_it_is_the_wrapped_method():
    objective, params, batch = convection()
    plain = adam(lr=1e-2).build(objective)
    wrapped = causal(inner=adam(lr=1e-2), epsilon=0.0).build(objective)
    a, sa, _ = jax.jit(plain.step)(params, plain.init(params), batch, jax.random.PRNGKey(0))
    b, sb, info = jax.jit(wrapped.step)(params, wrapped.init(params), batch,
                                        jax.random.PRNGKey(0))
    assert float(info["causal_min_weight"]) == 1.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-15)


def test_refusals_are_one_line():
    objective, _, _ = convection()
    for value, needle in [(dict(slices=0), "slices"), (dict(epsilon=-1.0), "epsilon"),
                          (dict(time="s"), "no coordinate 's'"), (dict(roles="pde,bogus"), "roles"),
                          (dict(roles="data"), "no residual group")]:
        with pytest.raises(ValueError, match=needle) as err:
            causal(**value).build(objective)
        assert "\n" not in str(err.value)
    poisson = build(RunConfig(problem="poisson", net="2-4-1", method="adam")).objective
    with pytest.raises(ValueError, match="no coordinate 't'"):
        causal().build(poisson)


def quiet(msg):
    pass


def tiny(steps):
    return RunConfig(problem="convection", problem_options=OPTIONS, net="2-6-6-1",
                     method="causal", hparams={"inner": {"name": "engd", "damping": 1e-3},
                                               "slices": 4},
                     steps=steps, time_budget=None, plots=False, checkpoint_every=0.0)


def test_trains_and_resumes_exactly(tmp_path):
    full = train(tiny(8), tmp_path / "full", progress=False, log=quiet)
    history = read_history(tmp_path / "full")
    assert history[-1]["step"] == 8 and history[-1]["loss"] < history[0]["loss"]
    assert "method_causal_min_weight" in history[-1]
    train(tiny(3), tmp_path / "part", progress=False, log=quiet)
    part = resume(tmp_path / "part", steps=8, progress=False, log=quiet)
    assert part["final"]["loss"] == full["final"]["loss"]
    a, _ = load_state(tmp_path / "full")
    b, _ = load_state(tmp_path / "part")
    for x, y in zip(jax.tree_util.tree_leaves((a["params"], a["method_state"])),
                    jax.tree_util.tree_leaves((b["params"], b["method_state"]))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
