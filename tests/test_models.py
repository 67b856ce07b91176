"""The model interface (float64): the kinetic models' jets against nested autodiff of their
``apply``, ⟨g⟩ = 0 and ρ > 0, ENGD steps on the kinetic losses against dense Gauss–Newton
steps from explicit Jacobians, and KFAC's refusal of models without taps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import pinnopt  # noqa: F401  (float64)
from pinnopt.models import Model
from pinnopt.nets import MLP
from pinnopt.optim import make_method
from pinnopt.problems import make_problem
from pinnopt.problems.kinetic import PhaseSpaceModel
from pinnopt.residuals import Objective
from pinnopt.taylor import Derivatives

TINY_TRANSPORT = dict(n_interior=3, n_boundary=2, n_initial=3, nv=4, eval_eps=[1.0],
                      reference_nx=20, reference_nv=8)
TINY_BGK = dict(n_interior=3, n_boundary=2, n_initial=2, nv=6, eval_eps=[1.0], reference_nx=20,
                reference_nv=16)

# (problem, options, net spec): every model kind, with and without the embedding network.
CASES = {
    "transport-apnn-embed": ("transport", (("eps_range", (1e-3, 1.0)), ("eps_embedding", 2),
                                           ("rho_sharpness", 3.0)), "5-4/6"),
    "transport-apnn-fixed": ("transport", (("eps", 0.1),), "5/4-4"),
    "transport-vanilla": ("transport", (("eps_range", (1e-3, 1.0)), ("loss", "vanilla")), "6-5"),
    "bgk-embed": ("bgk", (("eps_range", (1e-2, 1.0)), ("eps_embedding", 2)), "5/4"),
}


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PINNOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@functools.lru_cache(maxsize=None)
def setup(case):
    """Objective, model and random parameters of a case (shared, never mutated)."""
    name, options, net = CASES[case]
    tiny = TINY_TRANSPORT if name == "transport" else TINY_BGK
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options}
    problem = make_problem(name, **tiny, **options)
    model = problem.model(net, "tanh")
    params = jax.jit(model.init)(jax.random.PRNGKey(0))  # one compilation, not one per layer
    return problem, Objective(problem, model), params


def random_points(problem, n, key):
    """Rows ``(t, x, v, eps)`` uniform in the box, ε log-uniform over its range."""
    lo, hi = (np.asarray(a) for a in (problem.domain.lo, problem.domain.hi))
    u = jax.random.uniform(key, (n, 4))
    X = lo + u * (hi - lo)
    return X.at[:, 3].set(lo[3] * (hi[3] / lo[3]) ** u[:, 3])


def test_models_implement_the_interface():
    for case in CASES:
        _, objective, _ = setup(case)
        assert isinstance(objective.net, Model) and isinstance(objective.net, PhaseSpaceModel)
        assert objective.net.supports_taps is False
    assert isinstance(MLP((2, 3, 1)), Model) and MLP((2, 3, 1)).supports_taps is True


@pytest.mark.parametrize("case", sorted(CASES))
def test_kinetic_jet_matches_nested_autodiff(case):
    """Value, derivatives along 5 random directions of (t, x, v, eps) and Σ c_i ∂²_i of every
    field against jacfwd / hessian of ``apply`` at one point."""
    problem, objective, params = setup(case)
    model = objective.net
    kx, kd, kc = jax.random.split(jax.random.PRNGKey(1), 3)
    X = random_points(problem, 5, kx)
    directions = np.asarray(jax.random.normal(kd, (5, 4)))
    weights = np.asarray(jax.random.normal(kc, (5,)))
    derivs = Derivatives(tuple(map(tuple, directions)), tuple(weights))

    def u(z):
        return model.apply(params, z[None])[0]

    def brute_force(z):
        grad = directions @ jax.jacfwd(u)(z).T                       # (k, m)
        second = jnp.einsum("k,ki,mij,kj->m", weights, directions, jax.hessian(u)(z), directions)
        return u(z), grad, second

    out = jax.jit(lambda p, X: model.jet(p, X, derivs))(params, X)
    value, grad, second = jax.jit(jax.vmap(brute_force))(X)
    fields = value.shape[1]
    assert out.value.shape == (5, fields) and out.grad.shape == (5, 5, fields)
    for got, want in ((out.value, value), (out.grad, grad), (out.second, second)):
        got, want = np.asarray(got), np.asarray(want)
        scale = np.max(np.abs(want.reshape(-1, fields)), axis=0)  # per field
        assert np.all(np.abs(got - want) <= 1e-10 * scale), (got - want) / scale
    np.testing.assert_array_equal(model.apply(params, X), model.jet(params, X, Derivatives()).value)


def test_g_has_zero_velocity_average_and_rho_is_positive():
    """⟨g⟩ = 0 for every slot of g's jet at the nodes, to round-off; ρ > 0 even where ρ̂ is
    far below zero (softplus(βρ̂)/β, β = 3)."""
    problem, objective, params = setup("transport-apnn-embed")
    model = objective.net
    X = random_points(problem, 6, jax.random.PRNGKey(2))
    derivs = Derivatives.weighted(4, (1.0, -2.0, 0.5, 3.0))
    g = model.g_jet(params, X, derivs)
    _, w = model.quadrature(jnp.float64)
    for slot in (g.value, g.grad, g.second):
        assert float(jnp.max(jnp.abs(slot @ w))) <= 1e-15 * float(jnp.max(jnp.abs(slot))) * 8
    low = dict(params, rho=[*params["rho"][:-1],
                            {**params["rho"][-1], "b": params["rho"][-1]["b"] - 10.0}])
    rho = model.apply(low, X)[:, 0]
    assert float(jnp.min(rho)) > 0 and float(jnp.max(rho)) < 1e-9


# The steps and references below run once each: XLA's backend optimisation costs more
# compilation time than it saves.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def dense_problem(case):
    """Batch, stacked scaled residual ``r (N,)``, its Jacobian ``J (N, D)`` by jacfwd over the
    raveled parameters, and the jitted loss of a flat parameter vector (numpy where dense)."""
    _, objective, params = setup(case)
    batch = jax.jit(objective.sample)(jax.random.PRNGKey(3))
    flat, unravel = ravel_pytree(params)

    def residual(f):
        return objective.residual_vector(unravel(f), batch)

    r, jac = jax.jit(lambda f: (residual(f), jax.jacfwd(residual)(f)),
                     compiler_options=FAST_COMPILE)(flat)
    loss = jax.jit(lambda f: 0.5 * jnp.sum(residual(f) ** 2), compiler_options=FAST_COMPILE)
    return batch, np.asarray(r), np.asarray(jac), loss


def gauss_newton_step(case, damping, blocks=None):
    """Δ = −(JᵀJ + λI)⁻¹ Jᵀ r (with ``blocks``, sizes in ravel order, only the diagonal blocks
    of JᵀJ) and the grid line search's α = argmin_{2^-k, k < 31} L(θ + αΔ) (0 without
    decrease)."""
    _, objective, params = setup(case)
    _, r, jac, loss = dense_problem(case)
    gramian = jac.T @ jac
    if blocks is not None:
        owner = np.searchsorted(np.cumsum(blocks), np.arange(jac.shape[1]), side="right")
        gramian = np.where(owner[:, None] == owner[None, :], gramian, 0.0)
    direction = -np.linalg.solve(gramian + damping * np.eye(jac.shape[1]), jac.T @ r)
    flat = np.asarray(ravel_pytree(params)[0])
    alphas = 2.0 ** -np.arange(31)
    losses = [float(loss(flat + a * direction)) for a in alphas]
    best = int(np.argmin(losses))
    return direction, (alphas[best] if losses[best] < 0.5 * r @ r else 0.0)


def member_blocks(model, params):
    """[W, b] sizes of every layer of every member network, in ravel order (sorted keys)."""
    nets = {"rho": "rho_net", "g": "g_net", "f": "f_net", "macro": "macro_net"}
    out = []
    for key in sorted(params):
        net = model.encoding.embed_net if key == "embed" else getattr(model, nets[key])
        out += [(a + 1) * b for a, b in zip(net.sizes[:-1], net.sizes[1:])]
    return out


@pytest.mark.parametrize("case,variant", [
    ("transport-apnn-embed", "full"), ("transport-apnn-embed", "woodbury"),
    ("transport-apnn-embed", "layer"), ("bgk-embed", "full"), ("bgk-embed", "woodbury"),
    ("bgk-embed", "layer")])
def test_engd_step_is_the_dense_gauss_newton_step(case, variant):
    """One ENGD step = θ + αΔ with Δ the damped Gauss–Newton direction from the explicit
    Jacobian (block-diagonal per member-network layer for ``layer``) and α the grid line
    search's step along it."""
    _, objective, params = setup(case)
    batch, r, _, _ = dense_problem(case)
    damping = 1e-4
    method = make_method("engd", objective, damping=damping, variant=variant)
    step = jax.jit(method.step, compiler_options=FAST_COMPILE)
    new, _, info = step(params, method.init(params), batch, jax.random.PRNGKey(4))

    blocks = member_blocks(objective.net, params) if variant == "layer" else None
    direction, alpha = gauss_newton_step(case, damping, blocks)
    assert alpha > 0 and float(info["step_size"]) == alpha
    np.testing.assert_allclose(float(info["loss"]), 0.5 * r @ r, rtol=1e-13)
    taken = np.asarray(ravel_pytree(new)[0] - ravel_pytree(params)[0])
    assert np.linalg.norm(taken - alpha * direction) <= 1e-7 * np.linalg.norm(alpha * direction)


def test_kfac_refuses_a_model_without_taps():
    _, objective, _ = setup("transport-apnn-fixed")
    with pytest.raises(ValueError) as error:
        make_method("kfac", objective)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("KFAC supports only models with per-layer taps (the plain MLP")
    assert "MicroMacroModel (rho 2-5-1 + g 3-4-4-1, eps=0.1) has none" in message
