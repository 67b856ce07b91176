"""KFAC and KFAC* (METHODS.md §4) against brute-force computations, float64."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401  (float64)
from pinnopt.nets import MLP
from pinnopt.optim import make_method
from pinnopt.optim import kfac as K
from pinnopt.optim.gramian import flatten, jacobian_matrix
from pinnopt.optim.kfac_blocks import KroneckerFactors, invert
from pinnopt.problems import make_problem
from pinnopt.residuals import Jet, Objective, ResidualGroup
from pinnopt.taylor import Derivatives


# ---------------------------------------------------------------------------------------------
# Brute force, independent of the Taylor-mode pass: nested autodiff of an MLP whose layer
# outputs receive polynomial perturbations p_s with prescribed value, gradient and weighted
# second derivative at the point (the jet after a layer depends on nothing else).


def _perturbation(x, x0, t, num_dirs, weights):
    """p(x) = t_0 + Σ_i t_i (x−x0)_i + t_L · ½ Σ_i c_i (x−x0)_i² / Σ c² (axis directions)."""
    dx = x - x0
    p = t[0]
    if num_dirs:
        p = p + dx[:num_dirs] @ t[1 : 1 + num_dirs]
    if weights is not None:
        q = 0.5 * jnp.sum(weights * dx**2) / jnp.sum(weights**2)
        p = p + q * t[-1]
    return p


def brute_force_slots(net, params, x0, derivs):
    """Per layer: slot inputs ``a (S, in+1)`` and the functions needed for ``g``."""
    k = derivs.num_directions
    weights = None if derivs.second is None else jnp.asarray(derivs.second)

    def hidden(x, layer):
        h = x
        for i in range(layer):
            h = net.act.f(h @ params[i]["W"].T + params[i]["b"])
        return h

    slots = []
    for layer in range(len(params)):
        z = hidden(x0, layer)
        rows = [jnp.append(z, 1.0)]
        if k:
            jac = jax.jacfwd(hidden)(x0, layer)  # (in, d)
            rows += [jnp.append(jac[:, i], 0.0) for i in range(k)]
        if weights is not None:
            hess = jax.hessian(hidden)(x0, layer)  # (in, d, d)
            rows.append(jnp.append(jnp.einsum("i,hii->h", weights, hess), 0.0))
        slots.append(jnp.stack(rows))
    return slots


def brute_force_backprops(net, params, x0, derivs, fn):
    """Per layer ``g (c, S, out)``: ∂ residual / ∂ (layer output slot), by nested autodiff."""
    k = derivs.num_directions
    weights = None if derivs.second is None else jnp.asarray(derivs.second)
    slots = derivs.num_slots

    def u(x, ts):
        h = x
        for i, layer in enumerate(params):
            h = h @ layer["W"].T + layer["b"] + _perturbation(x, x0, ts[i], k, weights)
            if i < len(params) - 1:
                h = net.act.f(h)
        return h

    def residual(ts):
        value = u(x0, ts)
        grad = jax.jacfwd(u)(x0, ts).T[:k]  # (k, m), axis directions
        second = None
        if weights is not None:
            hess = jax.hessian(u)(x0, ts)  # (m, d, d)
            second = jnp.einsum("i,mii->m", weights, hess)
        return jnp.atleast_1d(fn(x0, Jet(value, grad, second)))

    zeros = [jnp.zeros((slots, layer["W"].shape[0])) for layer in params]
    return jax.jacrev(residual)(zeros)


def brute_force_terms(objective, params, batch):
    """``{term: [(A, B) per layer]}`` and, per (group, layer), the Jacobian rows
    ``vec(Σ_s g_s a_sᵀ)`` (column-major) of every residual component."""
    groups = [g for g in objective.groups if g.weight > 0]
    terms, rows = {}, {}
    for name, interior in (("interior", True), ("value", False)):
        members = [g for g in groups if (g.derivs.num_slots > 1) == interior]
        if not members:
            continue
        total = sum(g.weight for g in members)
        a_sum = [0.0] * len(params)
        b_sum = [0.0] * len(params)
        for g in members:
            x = batch[g.name]
            n, s = x.shape[0], g.derivs.num_slots

            @jax.jit
            @jax.vmap
            def per_point(x0, g=g):
                return (brute_force_slots(objective.net, params, x0, g.derivs),
                        brute_force_backprops(objective.net, params, x0, g.derivs, g.fn))

            slots, grads = per_point(x)  # per layer (N, S, in+1) and (N, c, S, out)
            for layer, (a, gb) in enumerate(zip(slots, grads)):
                gb = np.sqrt(g.weight / n) * gb
                a_sum[layer] = a_sum[layer] + g.weight / (total * n * s) * jnp.einsum(
                    "nsi,nsj->ij", a, a)
                b_sum[layer] = b_sum[layer] + jnp.einsum("ncso,ncsp->op", gb, gb)
                rows[(g.name, layer)] = np.asarray(
                    jnp.einsum("nsi,ncso->ncio", a, gb)).reshape(n * gb.shape[1], -1)
        terms[name] = [KroneckerFactors(a, b) for a, b in zip(a_sum, b_sum)]
    return terms, rows


# ---------------------------------------------------------------------------------------------
# Problems


def _with_groups(problem, groups):
    return dataclasses.replace(problem, groups=tuple(groups))


def small_poisson(n_interior=4, n_boundary=3):
    return make_problem("poisson", dim=2, n_interior=n_interior, n_boundary=n_boundary)


def weighted_heat():
    problem = make_problem("heat", dim=1, n_interior=3, n_boundary=2, n_initial=3)
    weights = {"interior": 2.0, "boundary": 0.5, "initial": 3.0}
    return _with_groups(problem, [dataclasses.replace(g, weight=weights[g.name])
                                  for g in problem.groups])


def vector_residuals():
    """Nonlinear two-component interior residual and value groups with 2 and 1 components."""
    base = small_poisson(3, 2)
    interior, boundary = base.groups

    def pde(x, u):
        return jnp.stack([u.second[0] + u.value[0] ** 3, u.grad[0, 0] * u.value[0] - x[1]])

    def two(x, u):
        return jnp.stack([u.value[0] - x[0], jnp.sin(u.value[0])])

    groups = [
        dataclasses.replace(interior, fn=pde, weight=1.5),
        dataclasses.replace(boundary, fn=two, weight=0.7),
        dataclasses.replace(boundary, name="data", n=2, weight=2.0, role="data"),
    ]
    return _with_groups(base, groups)


PROBLEMS = {
    "poisson": (small_poisson, (2, 5, 4, 1)),
    "heat": (weighted_heat, (2, 4, 3, 1)),
    "vector": (vector_residuals, (2, 4, 1)),
}


@functools.lru_cache(maxsize=None)
def setup(name, seed=0):
    make, sizes = PROBLEMS[name]
    problem = make()
    net = MLP(sizes, "tanh")
    objective = Objective(problem, net)
    params = net.init(jax.random.PRNGKey(seed))
    batch = jax.jit(objective.sample)(jax.random.PRNGKey(seed + 1))
    return objective, params, batch


def dense_jacobian(objective, params, batch):
    return np.asarray(jax.jit(functools.partial(jacobian_matrix, objective))(params, batch))


def value_and_grad(objective, params, batch):
    return jax.jit(jax.value_and_grad(objective.loss))(params, batch)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-300))


# ---------------------------------------------------------------------------------------------
# Factors, gradient and Jacobian products


@pytest.mark.parametrize("name", ["heat", "vector"])
def test_factors_gradient_and_products_match_brute_force(name):
    objective, params, batch = setup(name)
    stats = jax.jit(lambda p: K.curvature_pass(objective, p, batch))(params)
    terms = K.kronecker_terms(objective, stats, batch)
    expected, rows = brute_force_terms(objective, params, batch)
    assert sorted(terms) == sorted(expected)
    for term in expected:
        for got, want in zip(terms[term], expected[term]):
            assert rel_err(got.a, want.a) < 1e-12
            assert rel_err(got.b, want.b) < 1e-12

    # The slot decomposition reproduces the dense Jacobian of the scaled residual, layer by
    # layer: each layer's columns of J, reordered to the column-major vec of [W, b].
    jac = dense_jacobian(objective, params, batch)
    offsets = np.cumsum([0] + [lp["W"].size + lp["b"].size for lp in params])
    start = 0
    for g in objective.groups:
        block_rows = rows[(g.name, 0)].shape[0]
        block = jac[start : start + block_rows]
        start += block_rows
        for layer, lp in enumerate(params):
            out, inp = lp["W"].shape
            # Flat order of the parameter pytree: W (row-major) then b (dict keys sorted).
            cols = block[:, offsets[layer] : offsets[layer + 1]]
            w_cols, b_cols = cols[:, : out * inp].reshape(-1, out, inp), cols[:, out * inp :]
            vec = np.concatenate([w_cols.transpose(0, 2, 1).reshape(-1, out * inp), b_cols], 1)
            assert rel_err(rows[(g.name, layer)], vec) < 1e-10
    assert start == jac.shape[0]

    # Loss, gradient and Jacobian–vector products from the same pass.
    loss, grads = K.loss_and_gradient(stats)
    want_loss, want_grads = value_and_grad(objective, params, batch)
    assert rel_err(loss, want_loss) < 1e-13
    assert rel_err(flatten(K.to_params(grads))[0], flatten(want_grads)[0]) < 1e-12
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    directions = [[jax.random.normal(jax.random.fold_in(k, i), m.shape)
                   for i, m in enumerate(K.to_matrices(params))] for k in keys]
    products = np.asarray(K.jacobian_products(stats, directions))
    for v, jv in zip(directions, products):
        dense = jac @ np.asarray(flatten(K.to_params(v))[0])
        # Same entries in another order, plus zeros where components were padded.
        padded = np.concatenate([dense, np.zeros(jv.size - dense.size)])
        assert rel_err(np.sort(jv), np.sort(padded)) < 1e-11


# ---------------------------------------------------------------------------------------------
# Exactness in the degenerate case and the Kronecker-sum inverse


def single_point_problem():
    """One value-only residual u(x) − f(x) at one point (S = 1, N = 1), weight 3."""
    base = small_poisson(1, 1)
    group = dataclasses.replace(base.groups[1], n=1, weight=3.0)
    return _with_groups(base, [group])


@pytest.mark.parametrize("sizes", [(2, 1), (2, 6, 1)])
def test_single_point_value_residual_is_exact(sizes):
    objective = Objective(single_point_problem(), MLP(sizes, "tanh"))
    params = objective.net.init(jax.random.PRNGKey(3))
    batch = objective.sample(jax.random.PRNGKey(4))
    stats = K.curvature_pass(objective, params, batch)
    (factors,) = K.kronecker_terms(objective, stats, batch).values()
    jac = dense_jacobian(objective, params, batch)
    gram = jac.T @ jac
    # Last layer's block of G (its W and b columns in the flat order), reordered to vec([W, b]).
    last = params[-1]
    out, inp = last["W"].shape
    lo = sum(l["W"].size + l["b"].size for l in params[:-1])
    perm = np.concatenate([lo + np.arange(out * inp).reshape(out, inp).T.ravel(),
                           lo + out * inp + np.arange(out)])
    block = gram[np.ix_(perm, perm)]
    assert rel_err(np.kron(factors[-1].a, factors[-1].b), block) < 1e-12

    # The KFAC step on that layer is the Gauss–Newton step −G⁺∇L (λ → 0).
    loss, grads = K.loss_and_gradient(stats)
    inverse = invert(factors[-1], None, 1e-9)
    step = K.natural_direction([inverse], [grads[-1]])[0]
    vec_grad = np.concatenate([np.asarray(grads[-1][:, :-1]).T.ravel(), grads[-1][:, -1]])
    gn = -np.linalg.pinv(block, rcond=1e-12) @ vec_grad
    assert rel_err(np.concatenate([np.asarray(step[:, :-1]).T.ravel(), step[:, -1]]), gn) < 1e-6


def random_spd(key, n):
    m = jax.random.normal(key, (n, n))
    return m @ m.T / n + 0.1 * jnp.eye(n)


def test_kronecker_sum_inverse_matches_dense():
    keys = jax.random.split(jax.random.PRNGKey(11), 5)
    a1, a2 = random_spd(keys[0], 4), random_spd(keys[1], 4)
    b1, b2 = random_spd(keys[2], 3), random_spd(keys[3], 3)
    v = jax.random.normal(keys[4], (3, 4))
    lam = 0.3
    eye_a, eye_b = np.eye(4), np.eye(3)
    vec = np.asarray(v).ravel(order="F")  # column-major vec of the (out, in+1) matrix

    dense = np.kron(a1 + lam * eye_a, b1 + lam * eye_b) + np.kron(a2 + lam * eye_a, b2 + lam * eye_b)
    got = invert(KroneckerFactors(a1, b1), KroneckerFactors(a2, b2), lam).apply(v)
    assert rel_err(np.asarray(got).ravel(order="F"), np.linalg.solve(dense, vec)) < 1e-12

    single = np.kron(a1 + lam * eye_a, b1 + lam * eye_b)
    got = invert(KroneckerFactors(a1, b1), None, lam).apply(v)
    assert rel_err(np.asarray(got).ravel(order="F"), np.linalg.solve(single, vec)) < 1e-12


# ---------------------------------------------------------------------------------------------
# The optimisers


def _dense_quadratic(objective, params, batch, direction, previous, damping):
    jac = dense_jacobian(objective, params, batch)
    gram = jac.T @ jac + damping * np.eye(jac.shape[1])
    grad = np.asarray(flatten(value_and_grad(objective, params, batch)[1])[0])
    d = np.asarray(flatten(K.to_params(direction))[0])
    p = np.asarray(flatten(K.to_params(previous))[0])
    return gram, grad, d, p


def test_kfac_star_steps_solve_the_quadratic_model():
    objective, params0, batch = setup("heat")
    damping = 1e-6
    method = make_method("kfac-star", objective, damping=damping, ema=0.7)
    state0 = method.init(params0)
    params1, state1, info1 = method.step(params0, state0, batch, None)
    params2, state2, info2 = method.step(params1, state1, batch, None)

    # First step: δ = 0, the 1×1 model along Δ.
    grads0 = K.loss_and_gradient(K.curvature_pass(objective, params0, batch))[1]
    direction0 = K.natural_direction(state1.inverses, grads0)
    gram, grad, d, _ = _dense_quadratic(objective, params0, batch, direction0, direction0, damping)
    alpha = -(grad @ d) / (d @ gram @ d)
    assert abs(float(info1["momentum"])) == 0.0
    assert rel_err(info1["step_size"], alpha) < 1e-9
    moved = flatten(params1)[0] - flatten(params0)[0]
    assert rel_err(moved, alpha * d) < 1e-9

    # Second step: the 2×2 system in the plane of Δ and the previous step δ.
    grads1 = K.loss_and_gradient(K.curvature_pass(objective, params1, batch))[1]
    direction1 = K.natural_direction(state2.inverses, grads1)
    previous = list(state1.previous)
    gram, grad, d, p = _dense_quadratic(objective, params1, batch, direction1, previous, damping)
    system = np.array([[d @ gram @ d, d @ gram @ p], [d @ gram @ p, p @ gram @ p]])
    alpha, mu = np.linalg.solve(system, -np.array([grad @ d, grad @ p]))
    assert abs(mu) > 1e-3  # a genuine 2×2 solve, not the 1×1 fallback
    assert rel_err(info2["step_size"], alpha) < 1e-8
    assert rel_err(info2["momentum"], mu) < 1e-8
    moved = flatten(params2)[0] - flatten(params1)[0]
    assert rel_err(moved, alpha * d + mu * p) < 1e-8
    assert float(objective.loss(params2, batch)) < float(objective.loss(params0, batch))


def test_kfac_state_follows_ema_and_momentum():
    objective, params, batch = setup("poisson")
    beta, mu = 0.6, 0.4
    method = make_method("kfac", objective, ema=beta, momentum=mu, damping=1e-8)
    state = method.init(params)
    new_params, state1, info = method.step(params, state, batch, None)
    stats = K.curvature_pass(objective, params, batch)
    fresh = K.kronecker_terms(objective, stats, batch)
    for term_state, term in zip(state1.factors, ("interior", "value")):
        for got, new in zip(term_state, fresh[term]):
            assert rel_err(got.a, beta * np.eye(got.a.shape[0]) + (1 - beta) * new.a) < 1e-13
            assert rel_err(got.b, beta * np.eye(got.b.shape[0]) + (1 - beta) * new.b) < 1e-13
    # m = 0·μ + Δ on the first step, and the parameters moved by α m with α from the grid.
    alpha = float(info["step_size"])
    assert alpha in [2.0**-k for k in range(31)]
    moved = flatten(new_params)[0] - flatten(params)[0]
    assert rel_err(moved, alpha * flatten(K.to_params(list(state1.previous)))[0]) < 1e-12
    assert float(objective.loss(new_params, batch)) < float(info["loss"])

    # Intervals: with update_interval=2 the second step keeps the factors of the first.
    method = make_method("kfac", objective, update_interval=2, inverse_interval=2)
    s1 = method.step(params, method.init(params), batch, None)[1]
    s2 = method.step(new_params, s1, batch, None)[1]
    assert all(np.array_equal(x, y) for x, y in
               zip(jax.tree_util.tree_leaves(s1.factors), jax.tree_util.tree_leaves(s2.factors)))
    s3 = method.step(new_params, s2, batch, None)[1]
    assert not np.array_equal(s3.factors[0][0].a, s2.factors[0][0].a)


def test_unsupported_groups_and_settings_raise():
    objective, _, _ = setup("poisson")
    broken = _with_groups(objective.problem, [dataclasses.replace(objective.groups[0], fn=None)])
    with pytest.raises(ValueError, match="per-point residual"):
        make_method("kfac", Objective(broken, objective.net))
    with pytest.raises(ValueError, match="ema"):
        make_method("kfac-star", objective, ema=1.0)
    with pytest.raises(ValueError, match="momentum"):
        make_method("kfac", objective, momentum=1.5)


def test_kfac_star_trains_poisson_2d():
    """~80 steps of KFAC* on the [KFAC] 2d Poisson problem (2-64-1, 900/120 points)."""
    problem = make_problem("poisson", dim=2)
    net = MLP((2, 64, 1), "tanh")
    objective = Objective(problem, net)
    params = net.init(jax.random.PRNGKey(0))
    batch = objective.sample(jax.random.PRNGKey(1))
    x = problem.eval_points()
    reference = problem.reference(x)
    method = make_method("kfac-star", objective)
    step = jax.jit(method.step)
    state = method.init(params)
    error0 = float(objective.errors(params, x, reference)["rms_u"])
    for _ in range(80):
        params, state, info = step(params, state, batch, None)
    error = float(objective.errors(params, x, reference)["rms_u"])
    assert error < error0 / 100
