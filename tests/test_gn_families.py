"""One Gauss–Newton step on each problem family equals the dense step from explicit Jacobians
(float64, tiny nets): a multi-output flux system (Stokes, velocity–vorticity–pressure), a
periodic pair constraint (convection), an interface (composite heat) and the kinetic
micro–macro losses (transport; BGK's groups are built the same way). The reference Jacobian
is ``jax.jacfwd`` of the whole stacked residual vector, so it also checks that each family's
residual of one point depends on that point only (which the per-point Jacobian of
``residual_and_jacobian`` assumes)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401  (float64)
from pinnopt.config import RunConfig
from pinnopt.methods import alm, engd
from pinnopt.optim import constrained as C
from pinnopt.optim import make_method
from pinnopt.optim.gramian import flatten
from pinnopt.optim.gauss_newton import residual_and_jacobian
from pinnopt.problems import make_problem
from pinnopt.train import build

FAMILIES = {
    "stokes-first-order": ("stokes", {"formulation": "first-order", "n_interior": 6,
                                      "n_boundary": 5}, None),
    "convection-periodic": ("convection", {"n_interior": 6, "n_initial": 4, "n_periodic": 4},
                            None),
    "composite-heat-interface": ("composite_heat", {"formulation": "first-order",
                                                    "n_interior": 6, "n_boundary": 4,
                                                    "n_initial": 4}, None),
    "transport-apnn": ("transport", {"n_interior": 5, "n_boundary": 3, "n_initial": 4, "nv": 4,
                                     "eps_range": [1e-4, 1.0], "reference_nx": 20,
                                     "reference_nv": 8, "resample": False}, "4/4"),
}


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PINNOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@functools.lru_cache(maxsize=None)
def family_setup(family):
    """Objective, random parameters and points of a family (shared, never mutated)."""
    name, options, net = FAMILIES[family]
    if net is None:  # a plain MLP with two hidden layers of 4
        problem = make_problem(name, **options)
        net = f"{problem.dim}-4-4-{len(problem.fields)}"
    setup = build(RunConfig(problem=name, problem_options=options, net=net, method="adam"))
    objective = setup.objective
    return objective, setup.net.init(jax.random.PRNGKey(3)), objective.sample(jax.random.PRNGKey(4))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_engd_step_is_the_dense_gauss_newton_step(family):
    objective, params, batch = family_setup(family)
    flat, unravel = flatten(params)
    damping = 1e-3

    @jax.jit
    def compute(flat):
        r, jac = residual_and_jacobian(objective, unravel(flat), batch)
        dense_r = objective.residual_vector(unravel(flat), batch)
        dense_j = jax.jacfwd(lambda f: objective.residual_vector(unravel(f), batch))(flat)
        return r, jac, dense_r, dense_j

    r, jac, dense_r, dense_j = (np.asarray(a) for a in compute(flat))
    assert dense_j.shape[0] > 1 and np.abs(dense_j).max() > 0
    np.testing.assert_allclose(r, dense_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jac, dense_j, rtol=1e-10, atol=1e-10 * np.abs(dense_j).max())

    # The damped Gauss-Newton direction from the dense Jacobian, and the step ENGD takes
    # (divided by the step size its line search chose): full (D x D) and sample-space.
    d = flat.shape[0]
    expected = -np.linalg.solve(dense_j.T @ dense_j + damping * np.eye(d), dense_j.T @ dense_r)
    for variant, solver in (("full", "cholesky"), ("woodbury", "svd")):
        method = make_method("engd", objective, variant=variant, solver=solver, damping=damping)
        state = method.init(params)
        new, _, info = jax.jit(method.step)(params, state, batch, jax.random.PRNGKey(0))
        alpha = float(info["step_size"])
        assert alpha > 0, (variant, solver)
        step = np.asarray(flatten(new)[0] - flat) / alpha
        np.testing.assert_allclose(step, expected, rtol=1e-7,
                                   atol=1e-9 * np.abs(expected).max(), err_msg=variant + solver)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_augmented_lagrangian_least_squares_view_on_every_family(family):
    """Inside ``alm`` a Gauss–Newton method sees ``L(θ; λ, μ) = ½‖s‖²`` (squared form, split
    rows): on every family, including groups that are not pointwise on one network's jet
    (periodic pairs, kinetic models), ``½‖s‖²`` equals the Lagrangian and the per-point
    Jacobian of ``s`` equals ``jax.jacfwd`` of it; one ``alm(inner=engd)`` outer step lowers L."""
    objective, params, batch = family_setup(family)
    roles = tuple(sorted({g.role for g in objective.groups} - {"pde"}))
    lagrangian = C.Lagrangian(objective, roles, "squared", "sum")
    view = C.ShiftedResiduals(lagrangian, penalised=True)
    shapes = lagrangian.constraint_shapes()
    keys = jax.random.split(jax.random.PRNGKey(5), len(shapes))
    duals = C.Duals({n: jnp.abs(jax.random.normal(k, s)) + 0.1
                     for (n, s), k in zip(shapes.items(), keys)}, jnp.asarray(3.0))
    shifted = view.batch(batch, duals)
    flat, unravel = flatten(params)

    @jax.jit
    def compute(flat):
        p = unravel(flat)
        r, jac = residual_and_jacobian(view, p, shifted)
        dense_j = jax.jacfwd(lambda f: view.residual_vector(unravel(f), shifted))(flat)
        return r, jac, dense_j, lagrangian.loss(p, (batch, duals))

    r, jac, dense_j, loss = (np.asarray(a) for a in compute(flat))
    np.testing.assert_allclose(0.5 * np.sum(r**2), loss, rtol=1e-12)
    np.testing.assert_allclose(jac, dense_j, rtol=1e-10, atol=1e-10 * np.abs(dense_j).max())

    method = alm(inner=engd(damping=1e-3), inner_steps=2, constraints=",".join(roles)
                 ).build(objective)
    state = method.init(params)
    new, _, info = jax.jit(method.step)(params, state, batch, jax.random.PRNGKey(0))
    before = float(info["loss"])
    after = float(jax.jit(lagrangian.loss)(new, (batch, C.Duals(state.multipliers, state.mu))))
    assert np.isfinite(before) and after < before


def _row_task_reference(objective, params, batch, eps_lo_decade, m):
    """Every stacked-residual row's ε-decade task, worked out independently of the method: a
    group's rows are its points times its components, each point's task the decade of its
    ε column."""
    shapes = jax.eval_shape(objective.group_residuals, params, batch)
    tasks = []
    for g in objective.groups:
        eps = np.asarray(batch[g.name])[:, 3]
        decade = np.clip(np.floor(np.log10(eps) + 1e-9).astype(int) - eps_lo_decade, 0, m - 1)
        tasks.append(np.repeat(decade, shapes[g.name].shape[1]))
    return np.concatenate(tasks)


@pytest.mark.parametrize("variant", ["full", "woodbury"])
def test_multitask_engd_combines_the_dense_per_task_gauss_newton_directions(variant):
    """Transport over ε ∈ [1e-4, 1] with one task per ε decade: the direction that
    ``multitask-engd`` steps along is PCGrad of ``d_i = (JᵀJ + λI)⁻¹ Jᵀ r_i`` built from the
    dense ``jax.jacfwd`` Jacobian with the rows of the other tasks zeroed; with the plain sum
    it is ENGD's step on the whole loss."""
    from pinnopt.optim import aggregators
    from pinnopt.methods import multitask_engd, pcgrad, sum_

    objective, params, batch = family_setup("transport-apnn")
    flat, unravel = flatten(params)
    damping, m = 1e-3, 4
    dense_r = np.asarray(objective.residual_vector(params, batch))
    dense_j = np.asarray(jax.jit(jax.jacfwd(
        lambda f: objective.residual_vector(unravel(f), batch)))(flat))
    tasks = _row_task_reference(objective, params, batch, -4, m)
    assert len(set(tasks.tolist())) == m  # every decade has rows
    masked = dense_r[:, None] * (tasks[:, None] == np.arange(m))
    gram = dense_j.T @ dense_j + damping * np.eye(flat.shape[0])
    directions = np.linalg.solve(gram, dense_j.T @ masked).T
    key = jax.random.PRNGKey(0)
    for agg, expected in ((pcgrad(), np.asarray(aggregators.pcgrad(jnp.asarray(directions), key)[0])),
                          (sum_(), directions.sum(axis=0))):
        value = multitask_engd(aggregator=agg, damping=damping, adapt_damping=False,
                               variant=variant, tasks="eps-decades")
        method = value.build(objective)
        new, _, info = jax.jit(method.step)(params, method.init(params), batch, key)
        alpha = float(info["step_size"])
        assert alpha > 0
        step = -np.asarray(flatten(new)[0] - flat) / alpha
        np.testing.assert_allclose(step, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max(),
                                   err_msg=f"{variant} {value}")
        np.testing.assert_allclose(
            [float(info[f"task_loss_eps1e{k}"]) for k in range(-4, 0)],
            0.5 * np.sum(masked**2, axis=0), rtol=1e-12)
        raw = aggregators.conflict_stats(jnp.asarray((dense_j.T @ masked).T))
        np.testing.assert_allclose(float(info["grad_cos_min"]), float(raw["cos_min"]), rtol=1e-8)
        natural = aggregators.conflict_stats(jnp.asarray(directions))
        np.testing.assert_allclose(float(info["cos_min"]), float(natural["cos_min"]), rtol=1e-7)
    # The sum is ENGD's direction on the whole loss (Σ_i r_i = r).
    np.testing.assert_allclose(directions.sum(axis=0),
                               np.linalg.solve(gram, dense_j.T @ dense_r), rtol=1e-8,
                               atol=1e-12 * np.abs(directions).max())


def test_multitask_engd_refuses_one_task_aggregators():
    from pinnopt.methods import mconfig, multitask_engd

    objective, _, _ = family_setup("transport-apnn")
    with pytest.raises(ValueError, match="one task's gradient per step"):
        multitask_engd(aggregator=mconfig()).build(objective)
