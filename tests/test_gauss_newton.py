"""ENGD and Hessian-free against dense linear algebra built from explicit Jacobians (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401  (float64)
from pinnopt.nets import MLP
from pinnopt.optim import METHODS, make_method
from pinnopt.optim.gauss_newton import (
    EngdState,
    HessianFreeState,
    conjugate_gradient,
    damped_solve,
    engd_direction,
    layer_sizes,
    martens_damping,
    pinv_solve,
    residual_and_jacobian,
    resolve_variant,
)
from pinnopt.optim.gramian import flatten
from pinnopt.optim.linesearch import grid_line_search
from pinnopt.problems import make_problem
from pinnopt.residuals import Objective

# (problem, options, net sizes): small nets and few points, so dense references are cheap.
CASES = [
    ("poisson", {"dim": 2, "n_interior": 7, "n_boundary": 5}, (2, 5, 1)),
    ("poisson", {"dim": 2, "n_interior": 9, "n_boundary": 6}, (2, 4, 4, 1)),
    ("heat", {"dim": 1, "n_interior": 8, "n_boundary": 4, "n_initial": 3}, (2, 5, 1)),
    ("heat", {"dim": 2, "n_interior": 10, "n_boundary": 6, "n_initial": 5}, (3, 4, 4, 1)),
]


def setup(case, seed=0):
    name, options, sizes = case
    net = MLP(sizes)
    objective = Objective(make_problem(name, **options), net)
    params = net.init(jax.random.PRNGKey(seed))
    batch = objective.sample(jax.random.PRNGKey(seed + 1))
    return objective, params, batch


def dense_reference(objective, params, batch):
    """``r`` and ``J`` from forward-mode autodiff of each residual group separately."""
    flat, unravel = flatten(params)
    scales = objective.scales(batch)
    rs, js = [], []
    for group in objective.groups:
        def group_residual(f, group=group):
            res = group.residual(objective.net, unravel(f), batch[group.name])
            return scales[group.name] * res.ravel()

        rs.append(group_residual(flat))
        js.append(jax.jacfwd(group_residual)(flat))
    return np.asarray(jnp.concatenate(rs)), np.asarray(jnp.concatenate(js))


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1]['dim']}-{c[2]}")
def test_jacobian_and_gramian_match_explicit_jacobians(case):
    objective, params, batch = setup(case)
    r_ref, j_ref = dense_reference(objective, params, batch)
    r, jac = jax.jit(lambda p: residual_and_jacobian(objective, p, batch))(params)
    assert jac.shape == (r_ref.size, MLP(case[2]).num_params)
    assert rel(r, r_ref) < 1e-12
    assert rel(jac, j_ref) < 1e-12
    assert rel(jac.T @ jac, j_ref.T @ j_ref) < 1e-10
    assert rel(jac.T @ r, flatten(jax.grad(objective.loss)(params, batch))[0]) < 1e-10


@pytest.mark.parametrize("case", CASES[:3:2], ids=["poisson", "heat"])
@pytest.mark.parametrize("damping", [1e-3, 1e-8])
def test_full_direction_is_the_damped_gauss_newton_step(case, damping):
    objective, params, batch = setup(case)
    r_ref, j_ref = dense_reference(objective, params, batch)
    r, jac = residual_and_jacobian(objective, params, batch)
    expected = -np.linalg.solve(j_ref.T @ j_ref + damping * np.eye(j_ref.shape[1]), j_ref.T @ r_ref)
    for solver in ("cholesky", "eigh"):
        direction, _ = engd_direction(jac, r, damping, "full", solver, layer_sizes(params))
        assert rel(direction, expected) < 1e-7, solver


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1]['dim']}-{c[2]}")
def test_woodbury_equals_full_when_fewer_residuals_than_parameters(case):
    name, options, _ = case
    objective, params, batch = setup((name, options, (options["dim"] + (name == "heat"), 8, 8, 1)))
    r, jac = residual_and_jacobian(objective, params, batch)
    n, d = jac.shape
    assert n < d and resolve_variant("auto", n, d) == "woodbury"
    sizes = layer_sizes(params)
    full, _ = engd_direction(jac, r, 1e-3, "full", "cholesky", sizes)
    woodbury, _ = engd_direction(jac, r, 1e-3, "woodbury", "cholesky", sizes)
    assert rel(woodbury, full) < 1e-9
    # Without damping both are the minimum-norm least-squares step −J⁺r (pseudo-inverses).
    full0, _ = engd_direction(jac, r, 0.0, "full", "eigh", sizes)
    wood0, _ = engd_direction(jac, r, 0.0, "woodbury", "eigh", sizes)
    assert rel(wood0, -np.linalg.pinv(np.asarray(jac)) @ np.asarray(r)) < 1e-6
    assert rel(full0, wood0) < 1e-6


@pytest.mark.parametrize("case", CASES[1::2], ids=["poisson", "heat"])
def test_layer_variant_is_the_block_diagonal_solve(case):
    objective, params, batch = setup(case)
    r_ref, j_ref = dense_reference(objective, params, batch)
    gram, grad = j_ref.T @ j_ref, j_ref.T @ r_ref
    damping = 1e-6
    blocks = np.zeros_like(gram)
    start = 0
    for layer in params:  # [W, b] of each linear layer, in flatten order
        size = layer["W"].size + layer["b"].size
        blocks[start:start + size, start:start + size] = gram[start:start + size, start:start + size]
        start += size
    assert start == gram.shape[0] and len(layer_sizes(params)) == len(params) >= 3
    expected = -np.linalg.solve(blocks + damping * np.eye(len(grad)), grad)
    r, jac = residual_and_jacobian(objective, params, batch)
    direction, _ = engd_direction(jac, r, damping, "layer", "cholesky", layer_sizes(params))
    assert rel(direction, expected) < 1e-7
    full, _ = engd_direction(jac, r, damping, "full", "cholesky", layer_sizes(params))
    assert rel(direction, full) > 1e-3  # the off-diagonal blocks matter: not the full step


def test_cholesky_falls_back_to_the_pseudo_inverse():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 6))
    singular = jnp.asarray(a.T @ a)          # rank 3 of 6: the factorisation fails
    rhs = jnp.asarray(a.T @ rng.normal(size=3))  # in the range
    solution, fallback = damped_solve(singular, rhs, 0.0, "cholesky")
    assert float(fallback) == 1.0
    np.testing.assert_allclose(solution, np.linalg.pinv(np.asarray(singular)) @ rhs, rtol=1e-8)
    spd = singular + jnp.eye(6)
    solution, fallback = damped_solve(spd, rhs, 0.5, "cholesky")
    assert float(fallback) == 0.0
    np.testing.assert_allclose(solution, np.linalg.solve(spd + 0.5 * np.eye(6), rhs), rtol=1e-10)
    np.testing.assert_allclose(pinv_solve(spd, rhs, 0.5), solution, rtol=1e-10)


def test_line_search_gives_zero_step_for_an_ascent_direction():
    objective, params, batch = setup(CASES[0])
    loss_fn = lambda p: objective.loss(p, batch)  # noqa: E731
    loss0 = loss_fn(params)
    grad = jax.grad(loss_fn)(params)
    alpha, loss = grid_line_search(loss_fn, params, grad, loss0)
    assert float(alpha) == 0.0 and float(loss) == float(loss0)
    descent = jax.tree_util.tree_map(lambda g: -g, grad)
    alpha, loss = grid_line_search(loss_fn, params, descent, loss0)
    assert 0 < float(alpha) <= 1 and float(loss) < float(loss0)


def test_engd_step_follows_the_direction_and_line_search():
    objective, params, batch = setup(CASES[2])
    method = make_method("engd", objective, variant="full", damping=1e-6)
    state = method.init(params)
    new, state2, info = jax.jit(method.step)(params, state, batch, jax.random.PRNGKey(0))
    assert isinstance(state2, EngdState) and float(state2.damping) == 1e-6
    r, jac = residual_and_jacobian(objective, params, batch)
    direction, _ = engd_direction(jac, r, 1e-6, "full", "cholesky", layer_sizes(params))
    moved = flatten(new)[0] - flatten(params)[0]
    assert 0 < float(info["step_size"]) <= 1
    assert rel(moved, float(info["step_size"]) * direction) < 1e-8
    assert float(info["loss"]) == pytest.approx(float(objective.loss(params, batch)), rel=1e-12)
    assert float(objective.loss(new, batch)) < float(info["loss"])


def test_hessian_free_with_enough_cg_iterations_matches_engd():
    objective, params, batch = setup(CASES[1])
    damping = 1e-4
    hf = make_method("hessian-free", objective, damping=damping, cg_iters=2000, cg_tol=1e-14,
                     adapt_damping=False, warm_start=False)
    engd = make_method("engd", objective, variant="full", damping=damping)
    key = jax.random.PRNGKey(0)
    hf_params, hf_state, hf_info = jax.jit(hf.step)(params, hf.init(params), batch, key)
    en_params, _, en_info = jax.jit(engd.step)(params, engd.init(params), batch, key)
    r, jac = residual_and_jacobian(objective, params, batch)
    direction, _ = engd_direction(jac, r, damping, "full", "cholesky", layer_sizes(params))
    assert rel(hf_state.direction, direction) < 1e-6
    assert float(hf_info["step_size"]) == float(en_info["step_size"]) > 0
    flat0 = flatten(params)[0]
    assert rel(flatten(hf_params)[0] - flat0, flatten(en_params)[0] - flat0) < 1e-6
    assert float(hf_state.damping) == damping  # no adaptation asked for


def test_conjugate_gradient_warm_start_and_limits():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 12))
    matrix = jnp.asarray(a @ a.T + 0.1 * np.eye(12))
    rhs = jnp.asarray(rng.normal(size=12))
    exact = np.linalg.solve(matrix, rhs)
    solved = conjugate_gradient(lambda v: matrix @ v, rhs, jnp.zeros(12), 200, 1e-13)
    assert rel(solved.solution, exact) < 1e-9 and 0 < int(solved.iterations) < 200
    warm = conjugate_gradient(lambda v: matrix @ v, rhs, jnp.asarray(exact), 200, 1e-10)
    assert int(warm.iterations) == 0  # already solved: no product beyond the residual
    capped = conjugate_gradient(lambda v: matrix @ v, rhs, jnp.zeros(12), 3, 0.0)
    assert int(capped.iterations) == 3 and rel(capped.solution, exact) > 1e-6


def test_martens_damping_rule():
    lam = jnp.asarray(2.0)
    for rho, factor in [(-5.0, 1.5), (0.1, 1.5), (0.2499, 1.5), (0.25, 1.0), (0.5, 1.0),
                        (0.75, 1.0), (0.7501, 2 / 3), (1.0, 2 / 3), (3.0, 2 / 3),
                        (np.nan, 1.5), (np.inf, 1.5), (-np.inf, 1.5)]:
        assert float(martens_damping(lam, jnp.asarray(rho))) == pytest.approx(2.0 * factor), rho


def hf_step(objective, params, batch, damping):
    method = make_method("hessian-free", objective, damping=damping, cg_iters=500, cg_tol=1e-12,
                         adapt_damping=True, warm_start=False)
    return jax.jit(method.step)(params, method.init(params), batch, jax.random.PRNGKey(0))


def test_damping_shrinks_when_the_quadratic_model_is_exact():
    # No hidden layer: u = Wx + b is linear in θ, so L is exactly the Gauss–Newton model, ρ = 1.
    objective, params, batch = setup(("poisson", {"dim": 2, "n_interior": 7, "n_boundary": 5}, (2, 1)))
    _, state, info = hf_step(objective, params, batch, 0.3)
    assert float(info["rho"]) == pytest.approx(1.0, abs=1e-8)
    assert float(state.damping) == pytest.approx(0.3 * 2 / 3, rel=1e-14)


def test_damping_grows_when_the_step_overshoots():
    # A nearly undamped Gauss–Newton step from a random tanh net overshoots badly (ρ < 0).
    objective, params, batch = setup(CASES[1])
    damping = 1e-10
    _, state, info = hf_step(objective, params, batch, damping)
    p = state.direction
    flat, unravel = flatten(params)
    r, jac = residual_and_jacobian(objective, params, batch)
    predicted = (jac.T @ r) @ p + 0.5 * jnp.sum((jac @ p) ** 2)
    actual = objective.loss(unravel(flat + p), batch) - objective.loss(params, batch)
    assert float(info["rho"]) == pytest.approx(float(actual / predicted), rel=1e-6)
    assert float(info["rho"]) < 0.25
    assert float(state.damping) == pytest.approx(damping * 1.5, rel=1e-14)


def test_engd_adaptive_damping_follows_the_rule():
    objective, params, batch = setup(CASES[1])
    method = make_method("engd", objective, variant="full", damping=1e-10, adapt_damping=True)
    step = jax.jit(method.step)
    state = method.init(params)
    for _ in range(3):
        params, new_state, info = step(params, state, batch, jax.random.PRNGKey(0))
        expected = float(martens_damping(state.damping, info["rho"]))
        assert float(new_state.damping) == pytest.approx(expected, rel=1e-14)
        state = new_state
    assert float(state.damping) != 1e-10


def test_hessian_free_warm_start_and_state_is_a_pytree_of_arrays():
    objective, params, batch = setup(CASES[2])
    method = make_method("hessian-free", objective, damping=1e-3, cg_iters=30, cg_tol=1e-6)
    step = jax.jit(method.step)
    state = method.init(params)
    assert isinstance(state, HessianFreeState)
    losses = []
    for _ in range(5):
        params, state, info = step(params, state, batch, jax.random.PRNGKey(0))
        losses.append(float(info["loss"]))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(state))
    assert losses[-1] < losses[0]
    assert float(jnp.linalg.norm(state.direction)) > 0
    # The warm start begins CG at the previous p, which is already a good start on a fixed batch.
    cold = make_method("hessian-free", objective, damping=1e-3, cg_iters=30, cg_tol=1e-6,
                       warm_start=False)
    _, _, warm_info = step(params, state, batch, jax.random.PRNGKey(0))
    _, _, cold_info = jax.jit(cold.step)(params, state, batch, jax.random.PRNGKey(0))
    assert int(warm_info["cg_iterations"]) <= int(cold_info["cg_iterations"])


def test_memory_guard_raises_a_clear_error():
    objective, params, batch = setup(CASES[0])
    key = jax.random.PRNGKey(0)
    method = make_method("engd", objective, variant="full", max_memory_gb=1e-9)
    with pytest.raises(ValueError) as err:
        jax.jit(method.step)(params, method.init(params), batch, key)
    message = str(err.value)
    assert "\n" not in message
    d, n = MLP(CASES[0][2]).num_params, 12
    for part in (f"D = {d}", f"N = {n}", "GB", "max_memory_gb = 1e-09"):
        assert part in message
    # With room for it the same step compiles (tracing is where the guard sits).
    method = make_method("engd", objective, variant="full", max_memory_gb=1.0)
    jax.jit(method.step).lower(params, method.init(params), batch, key)


def test_registered_hyperparameters_are_validated():
    assert {"variant", "damping", "solver", "max_memory_gb", "line_search_candidates",
            "adapt_damping"} <= set(METHODS["engd"].hparams)
    assert {"damping", "cg_iters", "cg_tol", "adapt_damping", "warm_start"} <= set(
        METHODS["hessian-free"].hparams)
    objective, _, _ = setup(CASES[0])
    with pytest.raises(ValueError, match="variant"):
        make_method("engd", objective, variant="diagonal")
    with pytest.raises(ValueError, match="damping"):
        make_method("hessian-free", objective, damping=-1.0)


def test_engd_solves_2d_poisson_to_below_1e_3_rms():
    # Default settings (pseudo-inverse, no damping), net 2-64-1, 900 interior and 120 boundary
    # points. Measured: RMS 6e-7 after 30 steps (2e-4 after 24), so 1e-3 leaves a wide margin.
    problem = make_problem("poisson", dim=2)
    net = MLP((2, 64, 1))
    objective = Objective(problem, net)
    params = net.init(jax.random.PRNGKey(0))
    batch = objective.sample(jax.random.PRNGKey(1))
    method = make_method("engd", objective)
    step = jax.jit(method.step)
    state = method.init(params)
    for _ in range(30):
        params, state, info = step(params, state, batch, None)
    x = problem.eval_points()
    rms = float(objective.errors(params, x, problem.reference(x))["rms_u"])
    assert rms < 1e-3, rms
