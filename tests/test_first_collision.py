"""The first-collision split of transport (float64): E₁, f_u solves its equation, ρ_u against
adaptive quadrature, the blend, ⟨g⟩ = 0 and ρ > 0 with the split, the split's place in the
micro–macro and vanilla residuals, the remainder's residuals on the reference solver's
solution, and a run through the CLI."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.special import exp1 as scipy_exp1

import pinnopt  # noqa: F401
from pinnopt.cli import main
from pinnopt.problems import make_problem
from pinnopt.problems.first_collision import (
    blend,
    exp1,
    uncollided,
    uncollided_density,
)
from pinnopt.problems.kinetic import partials
from pinnopt.problems.transport import MicroMacroModel
from pinnopt.reference.transport import solve_transport
from pinnopt.taylor import Derivatives, Jet

# XLA's backend optimisation costs more compilation time than these one-off calls save.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TINY = dict(n_interior=4, n_boundary=4, n_initial=4, nv=8, reference_nx=20, reference_nv=8)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PINNOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# -- E₁, f_u, ρ_u, s(ε) ----------------------------------------------------------------------

def test_exp1_matches_scipy_and_its_derivative():
    z = np.concatenate([np.logspace(-14, math.log10(2.0), 200), np.linspace(2.0, 700.0, 400)])
    got = np.asarray(jax.jit(exp1)(jnp.asarray(z)))
    np.testing.assert_allclose(got, scipy_exp1(z), rtol=1e-13, atol=0)
    slope = np.asarray(jax.vmap(jax.grad(exp1))(jnp.asarray([0.3, 2.0, 2.5, 40.0])))
    np.testing.assert_allclose(slope, -np.exp(-np.array([0.3, 2.0, 2.5, 40.0]))
                               / np.array([0.3, 2.0, 2.5, 40.0]), rtol=1e-15)
    assert float(exp1(0.0)) == np.inf and float(exp1(1e8)) == 0.0


def _f_u(row):
    return uncollided(row[0], row[1], row[2], row[3])


@jax.jit
def _transport_residual(rows):
    """ε ∂_t f_u + v ∂_x f_u + f_u/ε, relative to f_u/ε, at rows (t, x, v, eps)."""
    def one(row):
        f, f_t = jax.jvp(_f_u, (row,), (jnp.array([1.0, 0, 0, 0]),))
        _, f_x = jax.jvp(_f_u, (row,), (jnp.array([0, 1.0, 0, 0]),))
        eps, v = row[3], row[2]
        return (eps * f_t + v * f_x + f / eps) / (f / eps), f
    return jax.vmap(one)(rows)


@settings(max_examples=40, deadline=None)
@given(t=st.floats(1e-3, 1.0), x=st.floats(0.0, 1.0), v=st.floats(1e-3, 1.0),
       log_eps=st.floats(-3.0, 0.0))
def test_uncollided_solves_its_equation(t, x, v, log_eps):
    eps = 10.0**log_eps
    front = v * t / eps
    if abs(x - front) < 1e-9 * max(1.0, front):
        return  # on the front itself f_u jumps
    relative, f = (float(a[0]) for a in _transport_residual(jnp.array([[t, x, v, eps]])))
    if x < front and f > 0:  # behind the front (f underflows for x ≫ εv)
        assert abs(relative) < 1e-14
    else:
        assert f == 0.0
    # inflow f_u(t, 0, v > 0) = 1, no particles with v ≤ 0, zero initial data
    assert float(uncollided(t, 0.0, v, eps)) == 1.0
    assert float(uncollided(t, x, -v, eps)) == 0.0 and float(uncollided(0.0, x, v, eps)) == 0.0


@pytest.mark.parametrize("t, x, eps", [
    (0.1, 0.0, 1.0), (0.1, 0.03, 1.0), (0.1, 0.0999, 1.0), (0.1, 0.2, 1.0), (1.0, 0.5, 1.0),
    (1.0, 0.999, 1.0), (0.05, 0.3, 0.1), (0.1, 1e-3, 1e-2), (0.1, 0.05, 0.3), (1e-4, 1e-5, 1.0),
    (0.1, 1e-9, 1e-8), (0.1, 0.5, 1e-4),
])
def test_uncollided_density_matches_adaptive_quadrature(t, x, eps):
    """ρ_u = ½ ∫ f_u dv (scipy.integrate.quad, split at the slowest arrived velocity)."""
    got = float(jax.jit(uncollided_density)(t, x, eps))
    a = min(1.0, x * eps / t)
    quadrature = 0.0
    if a < 1.0:
        quadrature = 0.5 * quad(lambda v: math.exp(-x / (eps * v)), a, 1.0, epsabs=1e-13,
                                epsrel=1e-12, limit=500)[0]
    assert abs(got - quadrature) <= 1e-10 * max(1.0, quadrature)
    assert got >= 0.0


def test_density_at_the_wall_and_beyond_the_front():
    rho = jax.jit(uncollided_density)
    assert float(rho(0.3, 0.0, 1.0)) == 0.5  # half the velocities come in with f = 1
    assert float(rho(0.1, 0.1000001, 1.0)) == 0.0 and float(rho(0.0, 0.2, 1.0)) == 0.0


def test_blend_is_zero_below_one_above_and_smooth():
    eps = jnp.logspace(-4, 0, 81)
    s = np.asarray(blend(eps))
    assert np.all(s[np.asarray(eps) <= 1e-2] == 0.0) and np.all(s[np.asarray(eps) >= 1e-1] == 1.0)
    assert np.all(np.diff(s) >= 0) and 0 < s[(np.abs(np.asarray(eps) - 10**-1.5)).argmin()] < 1
    ds = jax.vmap(jax.grad(blend))
    d2s = jax.vmap(jax.grad(jax.grad(blend)))
    ends = jnp.array([1e-2 * (1 + 1e-9), 1e-1 * (1 - 1e-9)])
    assert np.all(np.abs(np.asarray(ds(ends))) < 1e-6)
    assert np.all(np.abs(np.asarray(d2s(ends))) < 1e-3)


# -- the split in the transport model --------------------------------------------------------

def split_models(loss="apnn", **options):
    """The split model and the unsplit one (same networks and parameters)."""
    split = make_problem("transport", loss=loss, split="first-collision", **TINY, **options)
    plain = make_problem("transport", loss=loss, **TINY, **options)
    net = "5-5/6-6" if loss == "apnn" else "6-6"
    model, base = split.model(net, "tanh"), plain.model(net, "tanh")
    return split, model, base, model.init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def range_models():
    return split_models(eps_range=[1e-4, 1.0])


@pytest.fixture(scope="module")
def probe(range_models):
    """Jitted: the largest node average of g_n's value and ∂_t, ∂_x slots, their largest
    entry, ρ and s ρ_u at one row."""
    _, model, _, _ = range_models

    def fn(params, X):
        g = model.g_jet(params, X, partials("tx"))
        _, w = model.quadrature(X.dtype)
        means = jnp.concatenate([g.value @ w, (g.grad @ w).ravel()])
        scale = jnp.maximum(jnp.max(jnp.abs(g.value)), jnp.max(jnp.abs(g.grad)))
        return jnp.max(jnp.abs(means)), scale, model.apply(params, X)[0, 0], model.split.density(X)[0, 0]

    return jax.jit(fn, compiler_options=FAST_COMPILE)


@settings(max_examples=25, deadline=None)
@given(t=st.floats(0.0, 0.1), x=st.floats(0.0, 1.0), log_eps=st.floats(-4.0, 0.0),
       shift=st.floats(-12.0, 3.0))
def test_split_keeps_mean_zero_and_rho_positive(range_models, probe, t, x, log_eps, shift):
    """⟨g_n⟩ = 0 at the nodes to round-off; the split's micro part s (f_u − ρ_u)/ε has exact
    average 0 (ρ_u is f_u's exact average: the quadrature tests); ρ = ρ_n + s ρ_u > 0 and
    ≥ s ρ_u even where the ρ net's output is far below zero."""
    _, _, _, params = range_models
    low = dict(params, rho=[*params["rho"][:-1],
                            {**params["rho"][-1], "b": params["rho"][-1]["b"] + shift}])
    mean, scale, rho, s_rho_u = (float(a) for a in probe(low, jnp.array([[t, x, 0.3, 10.0**log_eps]])))
    assert mean <= 1e-15 * scale * 8
    assert rho > 0.0 and rho >= s_rho_u


def test_split_enters_only_the_macro_source_and_the_total_f(range_models):
    """Same networks, split vs no split: micro identical; macro differs by −s ρ_u/ε²; f at the
    nodes (boundary, initial) by s f_u; the fields by (s ρ_u, s (f_u − ρ_u)/ε, s f_u); with
    s = 0 (ε ≤ 1e-2) every residual is the unsplit one (the AP loss is untouched there)."""
    problem, model, base, params = range_models
    eps = jnp.array([1.0, 0.3, 0.05, 1e-2, 1e-3, 1e-4])
    X = jnp.stack([jnp.linspace(0.01, 0.1, 6), jnp.array([0.0, 0.01, 0.004, 0.1, 0.2, 0.5]),
                   jnp.full(6, 0.4), eps], axis=1)
    v, _ = model.quadrature(jnp.float64)
    s = blend(eps)[:, None]
    f_u = uncollided(X[:, :1], X[:, 1:2], v[None, :], X[:, 3:4])
    rho_u = uncollided_density(X[:, :1], X[:, 1:2], X[:, 3:4])
    assert float(jnp.min(rho_u[:3])) > 1e-4  # the split is active at these points

    def residuals(m):
        return jax.jit(lambda p, X: (m.micro(p, X), m.macro(p, X), m.f_nodes(p, X),
                                     m.apply(p, X)), compiler_options=FAST_COMPILE)(params, X)

    micro, macro, f, fields = residuals(model)
    micro0, macro0, f0, fields0 = residuals(base)
    np.testing.assert_array_equal(micro, micro0)
    np.testing.assert_allclose(macro, macro0 - s * rho_u / X[:, 3:4] ** 2, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(f, f0 + s * f_u, rtol=1e-14, atol=1e-15)
    f_u_row = uncollided(X[:, 0], X[:, 1], X[:, 2], X[:, 3])[:, None]
    split_fields = jnp.concatenate([s * rho_u, s * (f_u_row - rho_u) / X[:, 3:4], s * f_u_row], 1)
    np.testing.assert_allclose(fields, fields0 + split_fields, rtol=1e-13, atol=1e-14)
    off = np.asarray(eps) <= 1e-2
    for a, b in ((macro, macro0), (f, f0), (fields, fields0)):
        np.testing.assert_array_equal(np.asarray(a)[off], np.asarray(b)[off])


def test_vanilla_split_adds_the_source_to_the_collision_term():
    _, model, base, params = split_models(loss="vanilla", eps=0.5)
    X = jnp.array([[0.05, 0.02, 0.1, 0.5], [0.1, 0.3, -0.2, 0.5]])
    _, w = model.quadrature(jnp.float64)
    got = jax.jit(model.kinetic, compiler_options=FAST_COMPILE)(params, X)
    want = base.kinetic(params, X) - jnp.sqrt(w) * uncollided_density(X[:, :1], X[:, 1:2], 0.5) / 0.5
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)


def test_split_jet_matches_autodiff_of_apply(range_models):
    """The total fields' jet (networks' Taylor pass + the split's jet) against jacfwd/hessian
    of ``apply`` along random directions, away from the fronts of f_u."""
    _, model, _, params = range_models
    X = jnp.array([[0.06, 0.02, 0.7, 1.0], [0.08, 0.3, 0.5, 0.5], [0.05, 0.004, 0.9, 0.03],
                   [0.02, 0.5, -0.4, 0.2]])
    key_d, key_c = jax.random.split(jax.random.PRNGKey(5))
    directions = np.asarray(jax.random.normal(key_d, (3, 4)))
    weights = np.asarray(jax.random.normal(key_c, (3,)))
    derivs = Derivatives(tuple(map(tuple, directions)), tuple(weights))

    def u(z):
        return model.apply(params, z[None])[0]

    def brute_force(z):
        grad = directions @ jax.jacfwd(u)(z).T
        second = jnp.einsum("k,ki,mij,kj->m", weights, directions, jax.hessian(u)(z), directions)
        return u(z), grad, second

    out = jax.jit(lambda p, X: model.jet(p, X, derivs), compiler_options=FAST_COMPILE)(params, X)
    brute = jax.jit(jax.vmap(brute_force), compiler_options=FAST_COMPILE)(X)
    for got, want in zip(out, brute):
        scale = np.max(np.abs(np.asarray(want).reshape(-1, 3)), axis=0)
        assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= 1e-10 * scale)


def test_split_options_are_checked():
    with pytest.raises(ValueError, match="split"):
        make_problem("transport", eps=1.0, split="uncollided", **TINY)
    with pytest.raises(ValueError, match="split_blend"):
        make_problem("transport", eps=1.0, split="first-collision", split_blend=[0.1, 0.01], **TINY)
    problem = make_problem("transport", eps=1.0, split="first-collision", split_blend=[0.5, 2.0],
                           **TINY)
    assert problem.model("4/4", "tanh").split.weight(jnp.array(1.0)) == pytest.approx(0.5)
    assert "first-collision" in problem.description


# -- the remainder's residuals on the reference solver's solution ----------------------------

EPS_REF, T_REF, NV_REF = 1.0, 0.3, 16


def reference_remainder(nx):
    """f_c = f − f_u of :func:`solve_transport` (s = 1) at three consecutive time steps around
    T, on its cell centres and velocity nodes: (x, weights, Δt, [f_c(T − Δt), f_c(T),
    f_c(T + Δt)])."""
    dt = 0.5 / nx
    steps = round(T_REF / dt)
    remainders = []
    for n in (steps - 1, steps, steps + 1):
        sol = solve_transport(EPS_REF, n * dt, nx=nx, nv=NV_REF, dt=dt)
        f_u = uncollided(n * dt, sol.x[:, None], sol.v[None, :], EPS_REF)
        remainders.append(sol.f - np.asarray(f_u))
    return sol.x, sol.v, sol.weights, dt, remainders


def grid_jet(snapshots, dt, dx, derivs):
    """The jet of a grid function at the interior cell centres at time T: central
    differences in t (consecutive steps) and x, along ``derivs``' directions in (t, x, ...)."""
    before, now, after = snapshots
    d_t = (after - before)[1:-1] / (2 * dt)
    d_x = (now[2:] - now[:-2]) / (2 * dx)
    grad = np.stack([d[0] * d_t + d[1] * d_x for d in derivs.directions], axis=1)
    return Jet(jnp.asarray(now[1:-1]), jnp.asarray(grad.reshape(len(now) - 2, -1, now.shape[1])),
               None)


def remainder_residuals(nx):
    """The micro and macro residuals (micro: RMS over the nodes) of the split model with its
    networks replaced by the reference remainder ρ_n = ⟨f_c⟩, ĝ = (f_c − ρ_n)/ε, and the
    split's source s ρ_u/ε², at the interior cell centres at t = T."""
    x, v, w, dt, f_c = reference_remainder(nx)
    rho_n = [(f @ w)[:, None] for f in f_c]
    g_n = [(f - r) / EPS_REF for f, r in zip(f_c, rho_n)]
    problem = make_problem("transport", eps=EPS_REF, T=T_REF, nv=NV_REF, reference_nx=20,
                           reference_nv=8, split="first-collision")
    real = problem.model("4/4", "tanh")

    class Reference(MicroMacroModel):
        def rho_jet(self, params, X, derivs):
            return grid_jet(rho_n, dt, 1.0 / nx, derivs)

        def g_hat_jet(self, params, X, derivs):
            return grid_jet(g_n, dt, 1.0 / nx, derivs)

    model = Reference(**{f: getattr(real, f) for f in (
        "encoding", "t_final", "x_range", "v_scale", "nodes", "weights", "rho_net", "g_net",
        "split")})
    np.testing.assert_allclose(np.asarray(model.nodes), v, rtol=0, atol=1e-14)
    X = jnp.stack([jnp.full(nx - 2, T_REF), jnp.asarray(x[1:-1]), jnp.zeros(nx - 2),
                   jnp.full(nx - 2, EPS_REF)], axis=1)
    micro = np.sqrt(np.mean(np.asarray(model.micro(None, X)) ** 2 / w, axis=1))
    source = np.asarray(model.split.density(X))[:, 0] / EPS_REF**2
    return micro, np.asarray(model.macro(None, X))[:, 0], source


def test_remainder_residuals_vanish_on_the_reference_solution():
    """ε = 1, T = 0.3 (s = 1): the reference's collided part f_c = f − f_u, differenced on its
    grid, satisfies the remainder's micro and macro equations up to the reference's own
    discretisation error: well below the source s ρ_u/ε² the macro equation balances, and
    shrinking under grid refinement (measured: RMS micro 4.4e-3 → 2.8e-3 → 1.7e-3 and macro
    1.6e-3 → 1.0e-3 → 6e-4 for nx = 100, 200, 400 at ε = 1, T = 0.5: about order 0.7, the
    collided density's kink at the front x = t/ε limits it). Without the source (no split)
    the macro residual would be the source itself."""
    rms = lambda a: float(np.sqrt(np.mean(a**2)))  # noqa: E731
    micro_1, macro_1, _ = remainder_residuals(100)
    micro_2, macro_2, source = remainder_residuals(200)
    assert rms(source) > 0.1
    assert rms(micro_2) < 0.03 * rms(source) and rms(macro_2) < 0.02 * rms(source)
    assert rms(micro_2) < 0.8 * rms(micro_1) and rms(macro_2) < 0.8 * rms(macro_1)
    assert abs(rms(macro_2 + source) - rms(source)) < 0.05 * rms(source)


# -- through the CLI ---------------------------------------------------------------------------

def test_cli_trains_with_the_split(tmp_path):
    out = tmp_path / "run"
    opts = [f"--problem-opt={k}={v}" for k, v in TINY.items()]
    code = main(["train", "--problem", "transport", *opts, "--problem-opt", "split=first-collision",
                 "--problem-opt", "eps=1", "--problem-opt", "T=0.1", "--net", "4/4", "--method", "adam",
                 "--steps", "2", "--out", str(out), "--no-progress", "--no-plots"])
    assert code == 0
    final = json.loads((out / "summary.json").read_text())["final"]
    assert math.isfinite(final["rel_l2_rho_eps1e+00"])
