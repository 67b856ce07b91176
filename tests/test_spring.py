"""SPRING and randomised-subspace Levenberg–Marquardt against dense numpy linear algebra on
explicit Jacobians (float64, tiny nets), and through the trainer (decrease, exact resume)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401  (float64)
from pinnopt.config import RunConfig
from pinnopt.methods import engd, spring, subspace_lm
from pinnopt.nets import MLP
from pinnopt.optim import METHODS
from pinnopt.optim.gauss_newton import EngdState, residual_and_jacobian
from pinnopt.optim.gramian import flatten
from pinnopt.optim.spring import (
    SpringState,
    SubspaceState,
    count_sketch,
    lm_damping,
    nystrom,
    nystrom_preconditioner,
    preconditioned_cg,
    random_subspace,
)
from pinnopt.problems import make_problem
from pinnopt.residuals import Objective
from pinnopt.train import load_state, read_history, resume, train

# (n_interior, n_boundary): N = 20 < D = 33 (net 2-8-1) and N = 56 > D.
FEW, MANY = (12, 8), (40, 16)
KEY = jax.random.PRNGKey(7)


@functools.lru_cache(maxsize=None)
def setup(points):
    net = MLP((2, 8, 1))
    objective = Objective(make_problem("poisson", dim=2, n_interior=points[0],
                                       n_boundary=points[1]), net)
    params = net.init(jax.random.PRNGKey(0))
    batch = jax.jit(objective.sample)(jax.random.PRNGKey(1))
    return objective, params, batch


@functools.lru_cache(maxsize=None)
def explicit(points):
    """``(θ flat, r, J)`` as numpy arrays, ``J`` by forward-mode autodiff of the stacked
    residual (independent of :func:`residual_and_jacobian`)."""
    objective, params, batch = setup(points)
    flat, unravel = flatten(params)
    fn = jax.jit(lambda f: objective.residual_vector(unravel(f), batch))
    jac = jax.jit(jax.jacfwd(lambda f: objective.residual_vector(unravel(f), batch)))
    return np.asarray(flat), np.asarray(fn(flat)), np.asarray(jac(flat))


def loss_at(points, flat):
    objective, params, batch = setup(points)
    unravel = flatten(params)[1]
    return float(jax.jit(lambda f: objective.loss(unravel(f), batch))(jnp.asarray(flat)))


def jitted_step(value, points):
    method = value.build(setup(points)[0])
    return method, jax.jit(method.step)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def flat_of(params):
    return np.asarray(flatten(params)[0])


# ---------------------------------------------------------------------------------------------
# SPRING


def test_spring_without_momentum_is_the_engd_woodbury_step():
    objective, params, batch = setup(FEW)
    _, sp = jitted_step(spring(momentum=0.0, damping=1e-6), FEW)
    _, en = jitted_step(engd(variant="woodbury", damping=1e-6, solver="eigh"), FEW)
    sp_params, sp_state, sp_info = sp(params, SpringState(jnp.zeros(33), jnp.asarray(1e-6)),
                                      batch, KEY)
    en_params, _, en_info = en(params, EngdState(jnp.asarray(1e-6)), batch, KEY)
    assert float(sp_info["step_size"]) == float(en_info["step_size"]) > 0
    assert float(sp_info["loss"]) == float(en_info["loss"])
    theta = flat_of(params)
    assert rel(flat_of(sp_params) - theta, flat_of(en_params) - theta) < 1e-12
    # The stored φ is the step direction: θ_new = θ − α φ.
    assert rel(flat_of(sp_params) - theta, -float(sp_info["step_size"]) * sp_state.phi) < 1e-12


@pytest.mark.parametrize("points", [FEW, MANY], ids=["N<D", "N>D"])
@pytest.mark.parametrize("rule,solver", [("line-search", "cholesky"), ("fixed", "cholesky"),
                                         ("fixed", "svd")])
def test_spring_direction_is_the_closed_form_with_momentum(points, rule, solver):
    lam, mu, lr = 1e-4, 0.83, 0.05
    _, params, batch = setup(points)
    theta, r, jac = explicit(points)
    previous = np.random.default_rng(0).normal(size=theta.size) * 0.1
    value = spring(momentum=mu, damping=lam, solver=solver, step_rule=rule, lr=lr)
    _, step = jitted_step(value, points)
    new, state, info = step(params, SpringState(jnp.asarray(previous), jnp.asarray(lam)), batch,
                            KEY)
    # φ_k = μφ_{k−1} + Jᵀ(JJᵀ + λI)⁻¹(r − μJφ_{k−1})   (docs/methods.md §10)
    expected = mu * previous + jac.T @ np.linalg.solve(jac @ jac.T + lam * np.eye(r.size),
                                                       r - mu * jac @ previous)
    # ... the minimiser of ‖Jφ − r‖² + λ‖φ − μφ_{k−1}‖² (normal equations in D×D form).
    normal = np.linalg.solve(jac.T @ jac + lam * np.eye(theta.size),
                             jac.T @ r + lam * mu * previous)
    assert rel(expected, normal) < 1e-8
    alpha = float(info["step_size"])
    if rule == "fixed":
        assert alpha == lr
    assert alpha > 0
    assert rel(state.phi, expected) < 1e-9
    assert rel(flat_of(new) - theta, -alpha * expected) < 1e-9
    assert float(info["loss"]) == pytest.approx(0.5 * r @ r, rel=1e-13)


def test_spring_resets_momentum_when_the_line_search_refuses():
    # A previous φ so large that no step along −φ_k lowers the loss: α = 0 and φ stored as 0.
    _, params, batch = setup(FEW)
    theta, _, jac = explicit(FEW)
    null = np.linalg.svd(jac)[2][-1]  # a direction J does not see: (I − J⁺J) keeps it
    _, step = jitted_step(spring(momentum=0.9, damping=0.0, line_search_candidates=3), FEW)
    new, state, info = step(params, SpringState(jnp.asarray(1e4 * null), jnp.asarray(0.0)),
                            batch, KEY)
    assert float(info["step_size"]) == 0.0
    np.testing.assert_array_equal(flat_of(new), theta)
    assert not np.any(np.asarray(state.phi))


def test_cg_solver_matches_the_dense_solver():
    lam, mu = 1e-3, 0.5
    _, params, batch = setup(MANY)
    theta = explicit(MANY)[0]
    previous = jnp.asarray(np.random.default_rng(1).normal(size=theta.size) * 0.1)
    start = SpringState(previous, jnp.asarray(lam))
    results = {}
    for solver in ("cholesky", "cg"):
        _, step = jitted_step(spring(momentum=mu, damping=lam, solver=solver, cg_tol=1e-14,
                                     cg_iters=500, preconditioner_rank=8), MANY)
        results[solver] = step(params, start, batch, KEY)
    (dense_params, dense_state, dense_info), (cg_params, cg_state, cg_info) = (
        results["cholesky"], results["cg"])
    assert rel(cg_state.phi, dense_state.phi) < 1e-8
    assert float(cg_info["cg_residual"]) < 1e-12
    assert 0 < int(cg_info["cg_iterations"]) < 500
    assert float(cg_info["step_size"]) == float(dense_info["step_size"])
    assert rel(flat_of(cg_params) - theta, flat_of(dense_params) - theta) < 1e-8


def test_nystrom_preconditioner_cuts_cg_iterations_on_an_ill_conditioned_system():
    # N = 56 > D = 33: JJᵀ has 23 zero eigenvalues and a spread of the rest; λ = 1e-7.
    lam = 1e-7
    _, params, batch = setup(MANY)
    r, jac = explicit(MANY)[1:]
    exact = np.linalg.solve(jac @ jac.T + lam * np.eye(r.size), r)
    iterations = {}
    for rank in (0, 24):
        _, step = jitted_step(spring(momentum=0.0, damping=lam, solver="cg", cg_tol=1e-10,
                                     cg_iters=5000, preconditioner_rank=rank), MANY)
        _, state, info = step(params, SpringState(jnp.zeros(jac.shape[1]), jnp.asarray(lam)),
                              batch, KEY)
        iterations[rank] = int(info["cg_iterations"])
        assert float(info["cg_residual"]) < 1e-9
        assert rel(state.phi, jac.T @ exact) < 1e-6
    assert iterations[24] < iterations[0] / 3, iterations


def test_preconditioned_cg_and_nystrom_against_numpy():
    rng = np.random.default_rng(2)
    n, rank = 30, 6
    factor = rng.normal(size=(n, rank)) * np.logspace(0, -3, rank)
    matrix = factor @ factor.T  # PSD, rank 6
    # A rank-k Nyström approximation of a rank-k matrix is the matrix itself.
    approx = nystrom(lambda x: jnp.asarray(matrix) @ x, n, rank, KEY, jnp.float64)
    u, lam_hat = map(np.asarray, approx)
    assert rel(u @ np.diag(lam_hat) @ u.T, matrix) < 1e-8
    assert rel(np.sort(lam_hat), np.sort(np.linalg.eigvalsh(matrix))[-rank:]) < 1e-8
    # The preconditioner is the formula P⁻¹ = (λ̂_k + λ) U (Λ̂ + λI)⁻¹ Uᵀ + I − UUᵀ.
    lam = 1e-4
    apply = nystrom_preconditioner(approx, lam)
    dense = (lam_hat[-1] + lam) * u @ np.diag(1 / (lam_hat + lam)) @ u.T + np.eye(n) - u @ u.T
    v = rng.normal(size=n)
    assert rel(apply(jnp.asarray(v)), dense @ v) < 1e-12
    # With it, CG on A + λI converges in a couple of iterations (the spectrum is two points).
    rhs = jnp.asarray(rng.normal(size=n))
    system = lambda x: jnp.asarray(matrix) @ x + lam * x  # noqa: E731
    exact = np.linalg.solve(matrix + lam * np.eye(n), np.asarray(rhs))
    plain = preconditioned_cg(system, rhs, lambda x: x, 1000, 1e-12)
    pre = preconditioned_cg(system, rhs, apply, 1000, 1e-12)
    assert rel(plain.solution, exact) < 1e-8 and rel(pre.solution, exact) < 1e-8
    assert int(pre.iterations) <= 3 < int(plain.iterations)
    capped = preconditioned_cg(system, rhs, lambda x: x, 2, 0.0)
    assert int(capped.iterations) == 2
    assert float(capped.residual) == pytest.approx(
        np.linalg.norm(np.asarray(rhs) - np.asarray(system(capped.solution)))
        / np.linalg.norm(rhs), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Randomised-subspace Levenberg–Marquardt


@pytest.mark.parametrize("kind", ["dct", "gaussian"])
def test_random_subspace_is_scaled_right(kind):
    d = 33
    full = np.asarray(random_subspace(KEY, d, d, kind, jnp.float64))
    if kind == "dct":
        np.testing.assert_allclose(full.T @ full, np.eye(d), atol=1e-13)  # orthogonal at k = D
        part = np.asarray(random_subspace(KEY, d, 5, kind, jnp.float64))
        np.testing.assert_allclose(part.T @ part, d / 5 * np.eye(5), atol=1e-12)
    # E[PPᵀ] = I: the average over many draws of a thin P.
    draws = [np.asarray(random_subspace(jax.random.fold_in(KEY, i), d, 4, kind, jnp.float64))
             for i in range(400)]
    mean = sum(p @ p.T for p in draws) / len(draws)
    assert np.abs(mean - np.eye(d)).max() < 0.35
    assert np.abs(np.diag(mean).mean() - 1) < 0.05


def test_count_sketch_is_a_sparse_sign_matrix():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 4)), rng.normal(size=20)
    sa, sb = count_sketch(KEY, 6, jnp.asarray(a), jnp.asarray(b))
    # Recover S column by column from sketches of unit vectors: one ±1 per column.
    s = np.stack([np.asarray(count_sketch(KEY, 6, jnp.zeros((20, 1)), jnp.eye(20)[i])[1])
                  for i in range(20)], axis=1)
    assert s.shape == (6, 20)
    assert np.all(np.sum(s != 0, axis=0) == 1) and np.all(np.abs(s[s != 0]) == 1)
    np.testing.assert_allclose(np.asarray(sa), s @ a, atol=1e-14)
    np.testing.assert_allclose(np.asarray(sb), s @ b, atol=1e-14)


def test_full_subspace_without_sketch_is_the_damped_gauss_newton_step():
    lam = 1.0
    _, params, batch = setup(MANY)
    theta, r, jac = explicit(MANY)
    value = subspace_lm(subspace_dim=1000, damping=lam, accept_ratio=0.0)  # k = min(1000, D)
    _, step = jitted_step(value, MANY)
    new, state, info = step(params, SubspaceState(jnp.asarray(lam)), batch, KEY)
    expected = -np.linalg.solve(jac.T @ jac + lam * np.eye(theta.size), jac.T @ r)
    assert float(info["step_size"]) == 1.0  # accepted
    assert rel(flat_of(new) - theta, expected) < 1e-10
    # ρ and the rule by hand: an accepted step with ρ > 3/4 divides λ by `shrink` (3).
    predicted = 0.5 * r @ r - 0.5 * np.sum((r + jac @ expected) ** 2)
    rho = (0.5 * r @ r - loss_at(MANY, theta + expected)) / predicted
    assert float(info["predicted"]) == pytest.approx(predicted, rel=1e-10)
    assert float(info["rho"]) == pytest.approx(rho, rel=1e-8)
    assert rho > 0.75
    assert float(state.damping) == pytest.approx(lam / 3, rel=1e-14)


def test_rejected_step_keeps_the_parameters_and_grows_the_damping():
    lam = 1e-8
    _, params, batch = setup(MANY)
    theta, r, jac = explicit(MANY)
    value = subspace_lm(subspace_dim=1000, damping=lam, damping_min=1e-12, grow=4.0)
    _, step = jitted_step(value, MANY)
    new, state, info = step(params, SubspaceState(jnp.asarray(lam)), batch, KEY)
    # The nearly undamped Gauss–Newton step from a random net overshoots: ρ < accept_ratio.
    delta = -np.linalg.solve(jac.T @ jac + lam * np.eye(theta.size), jac.T @ r)
    predicted = 0.5 * r @ r - 0.5 * np.sum((r + jac @ delta) ** 2)
    rho = (0.5 * r @ r - loss_at(MANY, theta + delta)) / predicted
    assert rho < 1e-4
    assert float(info["rho"]) == pytest.approx(rho, rel=1e-5)
    assert float(info["step_size"]) == 0.0
    np.testing.assert_array_equal(flat_of(new), theta)
    assert float(state.damping) == pytest.approx(4 * lam, rel=1e-14)


def test_lm_damping_rule():
    lam = jnp.asarray(1e-3)
    for rho, expected in [(-2.0, 4e-3), (0.1, 4e-3), (0.2499, 4e-3), (0.25, 1e-3), (0.75, 1e-3),
                          (0.7501, 1e-3 / 3), (2.0, 1e-3 / 3), (np.nan, 4e-3), (-np.inf, 4e-3)]:
        got = float(lm_damping(lam, jnp.asarray(rho), 4.0, 3.0, 1e-12, 1e8))
        assert got == pytest.approx(expected, rel=1e-14), rho
    assert float(lm_damping(lam, jnp.asarray(-1.0), 4.0, 3.0, 1e-12, 2e-3)) == 2e-3
    assert float(lm_damping(lam, jnp.asarray(1.0), 4.0, 3.0, 5e-4, 1.0)) == 5e-4


def test_sketched_subspace_step_solves_the_sketched_problem():
    lam, k, m = 1e-2, 10, 30
    _, params, batch = setup(MANY)
    theta, r, jac = explicit(MANY)
    value = subspace_lm(subspace_dim=k, sketch_rows=m, damping=lam, accept_ratio=0.0)
    _, step = jitted_step(value, MANY)
    new, _, info = step(params, SubspaceState(jnp.asarray(lam)), batch, KEY)
    subspace_key, sketch_key = jax.random.split(KEY)
    p = np.asarray(random_subspace(subspace_key, theta.size, k, "dct", jnp.float64))
    sa, sb = map(np.asarray, count_sketch(sketch_key, m, jnp.asarray(jac @ p), jnp.asarray(r)))
    z = np.linalg.solve(sa.T @ sa + lam * np.eye(k), -sa.T @ sb)
    model = jac @ p @ z
    assert float(info["predicted"]) == pytest.approx(-(r @ model + 0.5 * model @ model),
                                                     rel=1e-9)
    if float(info["step_size"]) == 1.0:
        assert rel(flat_of(new) - theta, p @ z) < 1e-9


def test_jvp_products_and_float32_phase_agree_with_the_explicit_float64_step():
    lam = 1.0
    _, params, batch = setup(MANY)
    start = SubspaceState(jnp.asarray(lam))
    runs = {}
    for name, kw in [("explicit", dict(jacobian="explicit")), ("jvp", dict(jacobian="jvp")),
                     ("f32", dict(float32_until=1e-30))]:
        _, step = jitted_step(subspace_lm(subspace_dim=12, damping=lam, **kw), MANY)
        runs[name] = step(params, start, batch, KEY)
    theta = flat_of(params)
    ref = flat_of(runs["explicit"][0]) - theta
    assert float(runs["explicit"][2]["step_size"]) == 1.0
    assert rel(flat_of(runs["jvp"][0]) - theta, ref) < 1e-10
    assert float(runs["f32"][2]["float32"]) == 1.0
    assert float(runs["f32"][2]["loss"]) == float(runs["explicit"][2]["loss"])  # float64 loss
    assert 0 < rel(flat_of(runs["f32"][0]) - theta, ref) < 1e-4
    # Below the threshold the float64 branch runs: the same step as without the setting.
    _, step = jitted_step(subspace_lm(subspace_dim=12, damping=lam, float32_until=1e30), MANY)
    new, _, info = step(params, start, batch, KEY)
    assert float(info["float32"]) == 0.0
    assert rel(flat_of(new) - theta, ref) < 1e-12


def test_settings_are_validated_and_listed():
    assert {"damping", "momentum", "step_rule", "lr", "solver", "cg_iters", "cg_tol",
            "preconditioner_rank"} <= set(METHODS["spring"].hparams)
    assert {"subspace_dim", "subspace", "sketch_rows", "damping", "accept_ratio",
            "float32_until"} <= set(METHODS["subspace-lm"].hparams)
    objective = setup(FEW)[0]
    for value, needle in [(dict(momentum=1.0), "momentum"), (dict(solver="lu"), "solver"),
                          (dict(solver="cg", damping=0.0), "damping > 0"),
                          (dict(step_rule="armijo"), "step_rule")]:
        with pytest.raises(ValueError, match=needle):
            spring(**value).build(objective)
    for value, needle in [(dict(subspace_dim=0), "subspace_dim"),
                          (dict(sketch_rows=-1), "sketch"),
                          (dict(damping=1e-20), "damping_min"),
                          (dict(subspace="haar"), "subspace")]:
        with pytest.raises(ValueError, match=needle):
            subspace_lm(**value).build(objective)
    method = subspace_lm().build(objective)
    _, params, batch = setup(FEW)
    with pytest.raises(ValueError, match="key"):
        method.step(params, method.init(params), batch, None)


# ---------------------------------------------------------------------------------------------
# Through the trainer


def quiet(msg):
    pass


def tiny(method, steps, **hparams):
    return RunConfig(method=method, hparams=hparams, net="2-8-1", steps=steps, time_budget=None,
                     problem_options={"n_interior": 64, "n_boundary": 16}, plots=False,
                     checkpoint_every=0.0)


@pytest.mark.parametrize("method,hparams", [
    ("spring", {"damping": 1e-3}),
    ("spring", {"solver": "cg", "damping": 1e-3, "preconditioner_rank": 16}),
    ("subspace-lm", {"subspace_dim": 16, "sketch_rows": 48}),
], ids=["spring", "spring-cg", "subspace-lm"])
def test_trains_tiny_poisson_and_resumes_exactly(tmp_path, method, hparams):
    full = train(tiny(method, 12, **hparams), tmp_path / "full", progress=False, log=quiet)
    history = read_history(tmp_path / "full")
    losses = [row["loss"] for row in history]
    assert history[-1]["step"] == 12
    assert losses[-1] < 0.5 * losses[0]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # a fixed batch: never up
    train(tiny(method, 4, **hparams), tmp_path / "part", progress=False, log=quiet)
    part = resume(tmp_path / "part", steps=12, progress=False, log=quiet)
    assert part["steps"] == 12 and part["final"]["loss"] == full["final"]["loss"]
    a, _ = load_state(tmp_path / "full")
    b, _ = load_state(tmp_path / "part")
    assert a["step"] == b["step"] == 12
    pairs = zip(jax.tree_util.tree_leaves((a["params"], a["method_state"])),
                jax.tree_util.tree_leaves((b["params"], b["method_state"])))
    for x, y in pairs:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
