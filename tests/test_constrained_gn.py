"""Gauss–Newton inner methods in constrained training (docs/methods.md §3, §6; issue 17).

For fixed duals the Lagrangian is ½‖s‖² plus a constant, with s the stacked least-squares
residual of :class:`pinnopt.optim.constrained.ShiftedResiduals`. Checked here in float64 against
brute force: s and the constant against ``Lagrangian.loss``; the view's per-point Jacobian
against ``jax.jacfwd`` of s built by hand; an ENGD / SPRING step inside alm, capu and lagrange
against the dense solution of the damped normal equations with the same line search; KFAC's
loss, gradient and Jacobian products on the view; the constrained minimiser of the quadratic
problem of tests/test_constrained.py reached with ``alm(inner=engd())``; the refusals.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pinnopt.geometry import Box
from pinnopt.methods import adam, alm, capu, engd, lagrange, sequence, spring
from pinnopt.nets import MLP
from pinnopt.optim import constrained as C
from pinnopt.optim import make_method
from pinnopt.optim.gauss_newton import residual_and_jacobian
from pinnopt.optim.kfac import curvature_pass, jacobian_products, loss_and_gradient
from pinnopt.optim.linesearch import grid_line_search
from pinnopt.problems import Problem
from pinnopt.residuals import Objective, ResidualGroup
from pinnopt.taylor import Derivatives
from test_constrained import (FIT, PIN, fixed, flat, kkt_solution, pin_value, quadratic_problem,
                              target)

SIDE = np.array([[0.3, 0.0], [0.6, 1.0], [1.0, 0.5]])
LAPLACE = Derivatives(directions=((1.0, 0.0), (0.0, 1.0)), second=(1.0, 1.0))


def mixed_problem():
    """A nonlinear problem with every kind of group: a second-order PDE group and a data group
    (the objective, weights ≠ 1), a two-component boundary constraint and an initial one."""
    groups = (
        ResidualGroup("fit", fixed(FIT), len(FIT),
                      lambda x, u: u.second[0] + u.value[0] - target(x), LAPLACE, 0.7, "pde"),
        ResidualGroup("data", fixed(FIT[:3]), 3, lambda x, u: u.value[0] - 1.0,
                      weight=1.3, role="data"),
        ResidualGroup("pin", fixed(PIN), len(PIN),
                      lambda x, u: jnp.stack([u.value[0] - pin_value(x), 0.5 * u.value[0] + x[0]]),
                      role="boundary"),
        ResidualGroup("side", fixed(SIDE), len(SIDE), lambda x, u: u.value[0] - x[1],
                      role="initial"),
    )
    return Problem("constrained-mixed", Box.cube(2), ("x1", "x2"), ("u",), groups,
                   solution=lambda x: x[:, :1], n_eval=8, nets={"small": (3,)},
                   default_net="small")


@pytest.fixture(scope="module")
def mixed():
    objective = Objective(mixed_problem(), MLP((2, 3, 1)))
    batch = objective.sample(jax.random.PRNGKey(0))
    params = objective.net.init(jax.random.PRNGKey(1))
    return objective, batch, params


CONSTRAINED = ("pin", "side")


def random_duals(kind: str, positive: bool, seed: int = 3) -> C.Duals:
    """Multipliers per constraint point and a penalty: ``"scalar"``, ``"pointwise"``, ``"none"``."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    shapes = {"pin": (2, 2), "side": (3, 1)}
    lam = {n: jax.random.normal(k, s) for (n, s), k in zip(shapes.items(), keys[:2])}
    if positive:
        lam = {n: jnp.abs(v) + 0.1 for n, v in lam.items()}
    if kind == "none":
        return C.Duals(lam, None)
    if kind == "scalar":
        return C.Duals(lam, jnp.asarray(2.5))
    mu = {n: jnp.exp(jax.random.normal(k, s)) for (n, s), k in zip(shapes.items(), keys[2:])}
    return C.Duals(lam, mu)


def reference_residual(objective, batch, duals, form, scale, split=True):
    """The stacked least-squares residual s(θ), by hand from the groups' plain residuals."""

    def s(params):
        parts = []
        for g in objective.groups:
            r = g.residual(objective.net, params, batch[g.name])
            if g.name in CONSTRAINED:
                lam = duals.multipliers[g.name]
                if duals.penalty is None:
                    parts.append(jnp.sqrt(2 * lam) * r)
                    continue
                mu = duals.penalty[g.name] if isinstance(duals.penalty, dict) else duals.penalty
                mu = jnp.broadcast_to(mu, r.shape)
                if form == "squared" and split:
                    parts.append(jnp.concatenate([jnp.sqrt(2 * lam) * r, jnp.sqrt(mu) * r**2],
                                                 axis=1))
                else:
                    c = r**2 if form == "squared" else r
                    parts.append(jnp.sqrt(mu) * (c + lam / mu))
            else:
                w = g.weight / (r.shape[0] if scale == "mean" else 1)
                parts.append(jnp.sqrt(2 * w) * r)
        return jnp.concatenate([p.ravel() for p in parts])

    return s


def constant(duals, form, split=True):
    """K = L − ½‖s‖²: −Σ λ²/(2μ) for the shifted forms, 0 for the split one and without μ."""
    if duals.penalty is None or (form == "squared" and split):
        return 0.0
    total = 0.0
    for name, lam in duals.multipliers.items():
        mu = duals.penalty[name] if isinstance(duals.penalty, dict) else duals.penalty
        total += float(jnp.sum(lam**2 / (2 * mu)))
    return -total


def needs_positive(form, penalty, split=True):
    """Where √(2λ) appears, the identity holds for λ ≥ 0 only (the methods keep λ ≥ 0 there)."""
    return penalty == "none" or (form == "squared" and split)


CASES = [  # (form, objective_scale, penalty kind, split squared form)
    ("squared", "sum", "scalar", True),
    ("squared", "sum", "scalar", False),
    ("linear", "mean", "scalar", True),
    ("squared", "mean", "pointwise", True),
    ("squared", "mean", "pointwise", False),
    ("linear", "sum", "pointwise", True),
    ("squared", "sum", "none", True),
]


def make_view(objective, form, scale, penalty, split):
    lagrangian = C.Lagrangian(objective, ("boundary", "initial"), form, scale)
    return lagrangian, C.ShiftedResiduals(lagrangian, penalised=penalty != "none", split=split)


@pytest.mark.parametrize("form,scale,penalty,split", CASES)
def test_least_squares_residual_is_the_lagrangian_up_to_its_constant(mixed, form, scale, penalty,
                                                                     split):
    objective, batch, _ = mixed
    lagrangian, view = make_view(objective, form, scale, penalty, split)
    for seed in range(3):
        params = objective.net.init(jax.random.PRNGKey(10 + seed))
        duals = random_duals(penalty, needs_positive(form, penalty, split), seed=seed)
        expected = reference_residual(objective, batch, duals, form, scale, split)(params)
        vbatch = view.batch(batch, duals)
        s = view.residual_vector(params, vbatch)
        np.testing.assert_allclose(s, expected, rtol=1e-13, atol=1e-14)
        value = float(lagrangian.loss(params, (batch, duals)))
        k = constant(duals, form, split)
        np.testing.assert_allclose(float(view.loss(params, vbatch)) + k, value, rtol=1e-12)
        np.testing.assert_allclose(float(view.constant(duals)), k, rtol=1e-13)


@pytest.mark.parametrize("form,scale,penalty,split", CASES)
def test_per_point_jacobian_of_the_view_is_the_dense_one(mixed, form, scale, penalty, split):
    objective, batch, params = mixed
    _, view = make_view(objective, form, scale, penalty, split)
    duals = random_duals(penalty, needs_positive(form, penalty, split))
    theta, unravel = ravel_pytree(params)
    s = reference_residual(objective, batch, duals, form, scale, split)
    dense = jax.jacfwd(lambda f: s(unravel(f)))(theta)
    residual, jac = residual_and_jacobian(view, params, view.batch(batch, duals))
    np.testing.assert_allclose(residual, s(params), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(jac, dense, rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# One Gauss–Newton step inside the outer loop against the dense normal equations

DAMPING = 1e-6

STEPS = [  # (method, its settings, inner method, duals kind)
    ("alm", {"form": "squared"}, {"name": "engd", "variant": "full", "solver": "cholesky"},
     "scalar"),
    ("alm", {"form": "linear", "objective_scale": "mean"},
     {"name": "engd", "variant": "woodbury"}, "scalar"),
    ("alm", {"form": "squared"}, {"name": "spring", "momentum": 0.0}, "scalar"),
    ("capu", {"form": "squared", "objective_scale": "mean"},
     {"name": "engd", "variant": "full"}, "pointwise"),
    ("capu", {"form": "linear"}, {"name": "engd", "variant": "full"}, "pointwise"),
    ("lagrange", {"form": "squared"}, {"name": "engd", "variant": "full"}, "none"),
]


@pytest.mark.parametrize("name,settings,inner,penalty", STEPS)
def test_gauss_newton_step_solves_the_shifted_normal_equations(mixed, name, settings, inner,
                                                               penalty):
    objective, batch, params = mixed
    form, scale = settings["form"], settings.get("objective_scale", "sum")
    method = make_method(name, objective, inner={**inner, "damping": DAMPING}, inner_steps=1,
                         constraints="boundary,initial", **settings)
    duals = random_duals(penalty, needs_positive(form, penalty))
    state = method.init(params)._replace(multipliers=duals.multipliers)
    if penalty == "scalar":
        state = state._replace(mu=duals.penalty)
    elif penalty == "pointwise":
        state = state._replace(mu=duals.penalty)
    new_params, _, info = jax.jit(method.step)(params, state, batch, jax.random.PRNGKey(0))

    s = reference_residual(objective, batch, duals, form, scale)
    theta, unravel = ravel_pytree(params)
    jac = jax.jacfwd(lambda f: s(unravel(f)))(theta)
    r = s(params)
    direction = -np.linalg.solve(jac.T @ jac + DAMPING * np.eye(theta.size), jac.T @ r)
    loss0 = 0.5 * jnp.sum(r**2)
    alpha, _ = grid_line_search(lambda p: 0.5 * jnp.sum(s(p) ** 2), params,
                                unravel(jnp.asarray(direction)), loss0, 31)
    assert float(alpha) > 0
    expected = theta + float(alpha) * direction
    got, _ = ravel_pytree(new_params)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    # The loss reported is L at the incoming parameters: ½‖s‖² plus the constant.
    lagrangian = C.Lagrangian(objective, ("boundary", "initial"), form, scale)
    np.testing.assert_allclose(float(info["loss"]),
                               float(lagrangian.loss(params, (batch, duals))), rtol=1e-12)
    np.testing.assert_allclose(float(info["loss"]), float(loss0) + constant(duals, form),
                               rtol=1e-12)


@pytest.mark.parametrize("form,scale,penalty,split", CASES[:3] + CASES[5:])
def test_kfac_curvature_pass_sees_the_least_squares_residual(mixed, form, scale, penalty, split):
    """KFAC's Taylor-mode pass on the view (the network gets the coordinates only): loss,
    gradient and Jacobian–vector products of the shifted residual, exactly."""
    objective, batch, params = mixed
    _, view = make_view(objective, form, scale, penalty, split)
    duals = random_duals(penalty, needs_positive(form, penalty, split))
    s = reference_residual(objective, batch, duals, form, scale, split)
    stats = curvature_pass(view, params, view.batch(batch, duals))
    loss, grads = loss_and_gradient(stats)
    expected_loss, expected_grad = jax.value_and_grad(lambda p: 0.5 * jnp.sum(s(p) ** 2))(params)
    np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-12)
    for m, layer in zip(grads, expected_grad):
        np.testing.assert_allclose(m[:, :-1], layer["W"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m[:, -1], layer["b"], rtol=1e-10, atol=1e-12)
    v = [jnp.cos(jnp.arange(p["W"].size + p["b"].size, dtype=jnp.float64)).reshape(
        p["W"].shape[0], -1) for p in params]
    tree = [{"W": m[:, :-1], "b": m[:, -1]} for m in v]
    _, jv = jax.jvp(s, (params,), (tree,))
    (jv_kfac,) = jacobian_products(stats, [v])
    np.testing.assert_allclose(jnp.linalg.norm(jv_kfac), jnp.linalg.norm(jv), rtol=1e-11)
    np.testing.assert_allclose(jv_kfac @ jv_kfac, jv @ jv, rtol=1e-11)


def test_kfac_star_and_subspace_lm_run_inside_alm_and_lower_the_lagrangian(mixed):
    objective, batch, params = mixed
    lagrangian = C.Lagrangian(objective, ("boundary", "initial"), "squared", "sum")
    for inner in ({"name": "kfac-star"}, {"name": "subspace-lm", "subspace_dim": 8},
                  {"name": "hessian-free"}):
        method = make_method("alm", objective, inner=inner, inner_steps=5,
                             constraints="boundary,initial")
        state = method.init(params)
        p, state, info = jax.jit(method.step)(params, state, batch, jax.random.PRNGKey(0))
        duals = C.Duals(method.init(params).multipliers, jnp.asarray(1.0))
        before = float(lagrangian.loss(params, (batch, duals)))
        np.testing.assert_allclose(float(info["loss"]), before, rtol=1e-12)
        assert float(lagrangian.loss(p, (batch, duals))) < before, inner["name"]


# ---------------------------------------------------------------------------------------------
# The outer loop reaches the constrained minimiser


@pytest.fixture(scope="module")
def quadratic():
    objective = Objective(quadratic_problem(), MLP((2, 1)))
    return objective, objective.sample(jax.random.PRNGKey(0)), objective.net.init(
        jax.random.PRNGKey(1))


@pytest.mark.parametrize("name,hparams,steps,tol", [
    ("alm", {"form": "linear"}, 20, 1e-8),
    ("capu", {"form": "linear", "eta": 1.0}, 40, 1e-8),
    ("alm", {"form": "squared"}, 25, 1e-2),      # C = r² ≥ 0: λ → ∞, θ* approached
])
def test_alm_with_engd_reaches_the_constrained_minimiser(quadratic, name, hparams, steps, tol):
    objective, batch, params = quadratic
    theta_star, nu_star = kkt_solution()
    start = np.abs(flat(params) - theta_star).max()
    method = make_method(name, objective, inner={"name": "engd", "variant": "full"},
                         inner_steps=2, **hparams)
    state, step = method.init(params), jax.jit(method.step)
    for k in range(steps):
        params, state, info = step(params, state, batch, jax.random.PRNGKey(k))
    assert np.abs(flat(params) - theta_star).max() < tol < start
    if hparams["form"] == "linear":
        np.testing.assert_allclose(np.asarray(state.multipliers["pin"]).ravel(), nu_star,
                                   atol=1e-5)
        assert float(info["constraint_norm"]) < 1e-7


# ---------------------------------------------------------------------------------------------
# What the inner slot accepts and refuses


def test_gauss_newton_methods_fit_the_inner_slot():
    assert alm(inner=engd())["inner"] == engd()
    assert capu(inner=spring(momentum=0.0))["inner"] == spring(momentum=0.0)
    assert lagrange(inner=engd())["inner"] == engd()
    assert alm(inner=sequence((adam(), 2), (engd(), None)))["inner"].name == "sequence"
    assert alm(form="linear", inner=engd())["form"] == "linear"
    with pytest.raises(ValueError, match="inner=alm does not fit: it needs groups"):
        alm(inner="alm")


def test_linear_lagrange_refuses_a_gauss_newton_inner_method(quadratic):
    objective, _, _ = quadratic
    attempts = [
        lambda: lagrange(form="linear", inner=engd()),
        lambda: lagrange(inner=engd()).replace(form="linear"),
        lambda: lagrange(form="linear", inner=sequence((adam(), 2), (engd(), None))),
        lambda: make_method("lagrange", objective, form="linear", inner="spring"),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match="does not fit: it needs residuals, but with "
                                             "form='linear' and no penalty") as err:
            attempt()
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not a sum of squares"):
        C.ShiftedResiduals(C.Lagrangian(objective, ("boundary",), "linear", "sum"),
                           penalised=False)
    # loss-based inner methods still fit there
    assert lagrange(form="linear", inner=adam())["inner"] == adam()
