"""Kinetic problems (transport, BGK): the APNN residuals on manufactured fields, ⟨g⟩ = 0, the
ε encoding and sampling, per-ε metrics, the reference cache, and runs through the trainer,
the CLI and ``predict``."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401  (float64)
from pinnopt.cli import main
from pinnopt.config import RunConfig
from pinnopt.problems import make_problem
from pinnopt.problems.bgk import BGKModel
from pinnopt.problems.kinetic import (
    EpsEncoding,
    EpsRange,
    cached_reference,
    partials,
    per_eps_metrics,
)
from pinnopt.problems.transport import MicroMacroModel, VanillaModel
from pinnopt.reference.transport import solve_transport
from pinnopt.taylor import Jet, coordinates
from pinnopt.train import build

# Tiny settings: small nets, few nodes and points, coarse reference grids.
TINY_TRANSPORT = dict(n_interior=16, n_boundary=8, n_initial=16, nv=8, reference_nx=20,
                      reference_nv=8)
TINY_BGK = dict(n_interior=8, n_boundary=4, n_initial=8, nv=16, reference_nx=20, reference_nv=16)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PINNOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def model_of(problem, net="8-8/8-8", activation="tanh"):
    return problem.model(net, activation)


def exact_jet(fn, X, derivs):
    """The jet of ``fn: row (4,) -> (m,)`` at rows ``X`` along ``derivs`` by autodiff."""
    directions = jnp.asarray(np.asarray(derivs.directions, dtype=float).reshape(-1, 4))
    value = jax.vmap(fn)(X)
    grad = jnp.einsum("kd,nmd->nkm", directions, jax.vmap(jax.jacfwd(fn))(X))
    second = None
    if derivs.second is not None:
        second = jnp.einsum("k,kd,nmde,ke->nm", jnp.asarray(derivs.second), directions,
                            jax.vmap(jax.hessian(fn))(X), directions)
    return Jet(value, grad, second)


def rows(n, t, x, eps, seed=0):
    """(t, x, v, eps) rows with random v."""
    v = jax.random.uniform(jax.random.PRNGKey(seed), (n,), minval=-1.0, maxval=1.0)
    return jnp.stack([jnp.broadcast_to(t, (n,)), jnp.broadcast_to(x, (n,)), v,
                      jnp.broadcast_to(eps, (n,))], axis=1)


# -- the ε encoding and sampling --------------------------------------------------------------

def test_eps_encoding_maps_range_onto_unit_interval():
    rng = EpsRange(1e-8, 1.0)
    values = partials("")
    eps = coordinates(jnp.array([[1e-8], [1e-4], [1.0], [1e-6]]), values)
    z = rng.encode(eps, values).value[:, 0]
    np.testing.assert_allclose(z, [-1.0, 0.0, 1.0, -0.5], atol=1e-14)
    assert EpsEncoding(rng).width == 1
    assert EpsEncoding(EpsRange(0.1, 0.1)).width == 0  # fixed ε: no input
    embed = EpsEncoding(rng, latent=4)
    params = embed.init(jax.random.PRNGKey(0))
    assert embed.width == 4 and embed(params, jnp.array([1e-3, 1.0])).shape == (2, 4)


@pytest.mark.parametrize("method", ["log-uniform", "decades", "values"])
def test_eps_samples_lie_in_range(method):
    rng = EpsRange(1e-8, 1.0)
    eps = np.asarray(rng.sample(jax.random.PRNGKey(1), 800, method))
    assert eps.min() >= 1e-8 * (1 - 1e-12) and eps.max() <= 1.0 + 1e-12
    counts = np.histogram(np.log10(eps), bins=8, range=(-8, 0))[0]
    if method == "decades":
        assert np.all(counts == 100)
    if method == "values":
        assert set(np.round(np.log10(eps)).astype(int)) == set(range(-8, 1))


def test_every_group_carries_the_eps_column():
    problem = make_problem("transport", eps_range=[1e-6, 1.0], **TINY_TRANSPORT)
    assert problem.coords == ("t", "x", "v", "eps")
    for i, group in enumerate(problem.groups):
        x = group.sampler(jax.random.PRNGKey(i), 32)
        assert x.shape == (32, 4) and bool(jnp.all(problem.domain.contains(x)))
        assert float(x[:, 3].min()) >= 1e-6 * (1 - 1e-12) and float(x[:, 3].max()) <= 1.0
    walls = dict((g.name, g) for g in problem.groups)["boundary"].sampler(jax.random.PRNGKey(0), 6)
    np.testing.assert_array_equal(walls[:, 1], [0, 1, 0, 1, 0, 1])
    fixed = make_problem("transport", eps=1e-8, **TINY_TRANSPORT)
    assert bool(jnp.all(fixed.groups[0].sampler(jax.random.PRNGKey(0), 8)[:, 3] == 1e-8))


def test_transport_boundary_and_initial_weights():
    weights = lambda problem: {g.name: g.weight for g in problem.groups}  # noqa: E731
    assert weights(make_problem("transport", eps=1e-8, **TINY_TRANSPORT)) == {
        "micro": 1.0, "macro": 1.0, "boundary": 10.0, "initial": 10.0}
    problem = make_problem("transport", eps=1e-8, boundary_weight=100.0, initial_weight=2,
                           **TINY_TRANSPORT)
    assert weights(problem) == {"micro": 1.0, "macro": 1.0, "boundary": 100.0, "initial": 2.0}
    vanilla = make_problem("transport", eps=1.0, loss="vanilla", boundary_weight=30.0,
                           **TINY_TRANSPORT)
    assert weights(vanilla) == {"kinetic": 1.0, "boundary": 30.0, "initial": 10.0}
    for bad in (0.0, -1.0, True):  # a string "10" is read as 10 by make_problem's typed options
        with pytest.raises(ValueError, match="boundary_weight"):
            make_problem("transport", eps=1e-8, boundary_weight=bad, **TINY_TRANSPORT)


# -- transport: ⟨g⟩ = 0 and the APNN residuals on manufactured fields -------------------------

def test_g_has_zero_velocity_average_exactly():
    problem = make_problem("transport", eps_range=[1e-8, 1.0], **TINY_TRANSPORT)
    model = model_of(problem)
    params = model.init(jax.random.PRNGKey(3))
    v, w = model.quadrature(jnp.float64)
    # g through apply at 5 points × every node (the point's v column set to the node)
    X = jnp.repeat(rows(5, 0.03, 0.4, 1e-3), len(v), axis=0).at[:, 2].set(jnp.tile(v, 5))
    g = jax.jit(model.apply)(params, X)[:, 1].reshape(5, len(v))
    assert float(jnp.max(jnp.abs(g @ w))) < 1e-15 * float(jnp.max(jnp.abs(g))) * len(v) + 1e-16


# ρ = 1 + ½ sin(πx) e^{−t},  ĝ = e^v sin(x + t) + v x t  (⟨g⟩ = 0 once ⟨ĝ⟩ is removed).
def exact_rho(t, x):
    return 1.0 + 0.5 * jnp.sin(jnp.pi * x) * jnp.exp(-t)


def exact_g_hat(t, x, v):
    return jnp.exp(v) * jnp.sin(x + t) + v * x * t


class ManufacturedModel(MicroMacroModel):
    """The micro–macro model with ρ and ĝ replaced by the exact functions above."""

    def rho_jet(self, params, X, derivs):
        return exact_jet(lambda row: exact_rho(row[0], row[1])[None], X, derivs)

    def g_hat_jet(self, params, X, derivs):
        v, _ = self.quadrature(X.dtype)
        return exact_jet(lambda row: exact_g_hat(row[0], row[1], v), X, derivs)


def analytic_micro_macro(t, x, v, eps):
    """The residuals of the manufactured pair in closed form (⟨e^v⟩ = sinh 1,
    ⟨v e^v⟩ = 1/e, ⟨v²⟩ = 1/3)."""
    s, s_t, s_x = np.sin(x + t), np.cos(x + t), np.cos(x + t)
    a, a_t, a_x = x * t, x, t
    centred = np.exp(v) - np.sinh(1.0)
    g, g_t, g_x = centred * s + v * a, centred * s_t + v * a_t, centred * s_x + v * a_x
    mean_v_gx = s_x / np.e + a_x / 3.0
    rho_t = -0.5 * np.sin(np.pi * x) * np.exp(-t)
    rho_x = 0.5 * np.pi * np.cos(np.pi * x) * np.exp(-t)
    micro = eps**2 * g_t + eps * (v * g_x - mean_v_gx) + v * rho_x + g
    macro = rho_t + mean_v_gx
    return micro, macro, g


@pytest.mark.parametrize("eps", [1.0, 1e-2, 1e-8])
def test_apnn_residuals_match_the_manufactured_pair(eps):
    problem = make_problem("transport", eps=eps, nv=30, reference_nx=20, reference_nv=8)
    real = model_of(problem)
    model = ManufacturedModel(**{f: getattr(real, f) for f in
                                 ("encoding", "t_final", "x_range", "v_scale", "nodes", "weights",
                                  "rho_net", "g_net")})
    groups = {name: jax.jit(lambda X, g=g: g.residual(model, None, X))
              for name, g in ((g.name, g) for g in problem.groups)}
    X = jnp.concatenate([rows(4, t, x, eps) for t, x in [(0.02, 0.3), (0.07, 0.81)]])
    v, w = (np.asarray(a) for a in model.quadrature(jnp.float64))
    micro = np.asarray(groups["micro"](X)) / np.sqrt(w)
    macro = np.asarray(groups["macro"](X))[:, 0]
    t, x = np.asarray(X[:, :1]), np.asarray(X[:, 1:2])
    micro_exact, macro_exact, g = analytic_micro_macro(t, x, v, eps)
    # Gauss–Legendre with 30 nodes integrates e^v to round-off: the residuals agree to it,
    # i.e. they vanish once the manufactured sources are subtracted.
    np.testing.assert_allclose(micro, micro_exact, atol=1e-12)
    np.testing.assert_allclose(macro, macro_exact[:, 0], atol=1e-12)
    # boundary and initial residuals of f = ρ + εg against the inflow / zero data
    f = np.asarray(exact_rho(t, x)) + eps * g
    initial = np.asarray(groups["initial"](X)) / np.sqrt(w)
    np.testing.assert_allclose(initial, f, atol=1e-12)
    walls = X.at[:, 1].set(jnp.where(jnp.arange(X.shape[0]) % 2 == 0, 0.0, 1.0))
    half = len(v) // 2
    boundary = np.asarray(groups["boundary"](walls)) / np.sqrt(2 * w[half:])
    tw, xw = np.asarray(walls[:, :1]), np.asarray(walls[:, 1:2])
    _, _, g_w = analytic_micro_macro(tw, xw, v, eps)
    f_w = np.asarray(exact_rho(tw, xw)) + eps * g_w
    expected = np.where(xw == 0.0, f_w[:, half:] - 1.0, f_w[:, :half][:, ::-1])
    np.testing.assert_allclose(boundary, expected, atol=1e-12)


def test_vanilla_kinetic_residual_matches_autodiff_of_apply():
    """The vanilla kinetic residual from the f network's jet at the nodes agrees with autodiff
    of ``apply``'s f at the nodes (the model's jet itself: ``tests/test_models.py``)."""
    vanilla = make_problem("transport", eps=0.3, loss="vanilla", **TINY_TRANSPORT)
    vm = model_of(vanilla, net="8-8")
    assert isinstance(vm, VanillaModel)
    vp = vm.init(jax.random.PRNGKey(1))
    v, w = vm.quadrature(jnp.float64)
    Xv = rows(2, 0.05, 0.6, 0.3)

    @jax.jit
    def expected(vp, Xv):
        Xn = jnp.repeat(Xv, len(v), axis=0).at[:, 2].set(jnp.tile(v, Xv.shape[0]))
        f = vm.apply(vp, Xn)[:, 2].reshape(-1, len(v))
        df = jax.vmap(jax.grad(lambda z: vm.apply(vp, z[None])[0, 2]))(Xn).reshape(-1, len(v), 4)
        return jnp.sqrt(w) * (0.3 * df[..., 0] + v * df[..., 1] - ((f @ w)[:, None] - f) / 0.3)

    np.testing.assert_allclose(jax.jit(vm.kinetic)(vp, Xv), expected(vp, Xv), rtol=1e-10, atol=1e-13)


# -- BGK: residuals on a Maxwellian f -----------------------------------------------------------

def exact_macro(t, x):
    return (1.0 + 0.2 * jnp.cos(2 * x + t), 0.3 * jnp.sin(x - t), 1.0 + 0.1 * jnp.sin(3 * x) * jnp.exp(t))


class MaxwellianModel(BGKModel):
    """f = M[ρ,u,T] for the smooth (ρ, u, T) above."""

    def macro_jet(self, params, X, derivs):
        return exact_jet(lambda row: jnp.stack(exact_macro(row[0], row[1])), X, derivs)

    def f_jet(self, params, X, derivs):
        v, _ = self.quadrature(X.dtype)

        def m(row):
            rho, u, T = exact_macro(row[0], row[1])
            return rho / jnp.sqrt(2 * jnp.pi * T) * jnp.exp(-((v - u) ** 2) / (2 * T))

        return exact_jet(m, X, derivs)


def test_bgk_residuals_on_a_maxwellian():
    problem = make_problem("bgk", eps=1e-2, nv=64, reference_nx=20, reference_nv=16)
    real = model_of(problem)
    model = MaxwellianModel(**{f: getattr(real, f) for f in
                               ("encoding", "t_final", "x_range", "v_scale", "nodes", "weights",
                                "f_net", "macro_net")})
    groups = {name: jax.jit(lambda X, g=g: g.residual(model, None, X))
              for name, g in ((g.name, g) for g in problem.groups)}
    X = jnp.array([[0.03, -0.2, 0.0, 1e-2], [0.08, 0.35, 0.0, 1e-2]])
    # moments of a Maxwellian are exact on 64 nodes to ~1e-11
    assert float(jnp.max(jnp.abs(groups["moments"](X)))) < 1e-10
    # conservation = the Euler (γ = 3) residual of (ρ, u, T): ∂_t U + ∂_x F(U)
    def euler(t, x):
        def U(t, x):
            rho, u, T = exact_macro(t, x)
            return jnp.stack([rho, rho * u, 0.5 * rho * (u**2 + T)])

        def F(t, x):
            rho, u, T = exact_macro(t, x)
            return jnp.stack([rho * u, rho * (u**2 + T), 0.5 * rho * (u**3 + 3 * u * T)])

        return jax.jacfwd(U, 0)(t, x) + jax.jacfwd(F, 1)(t, x)

    expected = jax.jit(jax.vmap(euler))(X[:, 0], X[:, 1])
    np.testing.assert_allclose(groups["conservation"](X), expected, atol=1e-10)
    # kinetic = ε (∂_t M + v ∂_x M) since M − f = 0
    f = jax.jit(lambda X: model.f_jet(None, X, partials("tx")))(X)
    v, w = model.quadrature(jnp.float64)
    kinetic = groups["kinetic"](X) / jnp.sqrt(w / jnp.sum(w))
    np.testing.assert_allclose(kinetic, 1e-2 * (f.grad[:, 0] + v * f.grad[:, 1]), atol=1e-12)


# -- metrics, references, cache -------------------------------------------------------------------

def test_per_eps_metrics_split_by_the_eps_coordinate():
    metrics = per_eps_metrics([1.0, 1e-4], ("rho", "g"), ("rho",))
    x = jnp.array([[0.1, 0.0, 0.0, 1.0], [0.1, 0.5, 0.0, 1.0], [0.1, 0.0, 0.0, 1e-4],
                   [0.1, 0.5, 0.0, 1e-4]])
    ref = jnp.array([[1.0, jnp.nan], [2.0, jnp.nan], [1.0, jnp.nan], [2.0, jnp.nan]])
    u = ref.at[:2, 0].multiply(1.1).at[2:, 0].multiply(1.01).at[:, 1].set(0.0)
    out = jax.jit(metrics)(x, u, ref)
    assert set(out) == {"rel_l2_rho_eps1e+00", "rel_l2_rho_eps1e-04"}
    np.testing.assert_allclose(out["rel_l2_rho_eps1e+00"], 0.1, rtol=1e-12)
    np.testing.assert_allclose(out["rel_l2_rho_eps1e-04"], 0.01, rtol=1e-12)


def test_reference_cache_returns_identical_arrays():
    calls = []

    def compute():
        calls.append(1)
        sol = solve_transport(0.1, 0.05, nx=20, nv=8)
        return {"x": sol.x, "rho": sol.rho[-1]}

    first = cached_reference(solve_transport, {"eps": 0.1, "nx": 20}, compute)
    second = cached_reference(solve_transport, {"eps": 0.1, "nx": 20}, compute)
    assert len(calls) == 1
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    other = cached_reference(solve_transport, {"eps": 0.2, "nx": 20}, compute)
    assert len(calls) == 2 and set(other) == {"x", "rho"}


def test_eval_reference_per_eps():
    problem = make_problem("transport", eps_range=[1e-8, 1.0], **TINY_TRANSPORT)
    x = problem.eval_points()
    ref = np.asarray(problem.reference(x))
    assert x.shape == (7 * 100, 4) and sorted(set(np.asarray(x[:, 3]).tolist())) == sorted(
        [1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8])
    assert np.all(np.isfinite(ref[:, 0])) and np.all(np.isnan(ref[:, 1:]))
    assert np.all((ref[:, 0] >= -1e-12) & (ref[:, 0] <= 1 + 1e-12))
    assert abs(ref[600, 0] - 1.0) < 1e-3  # ε = 1e-8, x = 0: the wall density tends to 1
    with pytest.raises(ValueError, match="not both"):
        make_problem("transport", eps=1.0, eps_range=[1e-3, 1.0])
    with pytest.raises(ValueError, match="even"):
        make_problem("transport", nv=7, **{k: v for k, v in TINY_TRANSPORT.items() if k != "nv"})


# -- end to end -------------------------------------------------------------------------------------

def test_bgk_loss_gradient_and_per_eps_errors():
    """BGK through the trainer's setup (the end-to-end training path is the transport test's)."""
    setup = build(RunConfig(problem="bgk", problem_options=TINY_BGK, net="8/8", method="adam"))
    params = setup.net.init(jax.random.PRNGKey(0))
    batch = setup.objective.sample(jax.random.PRNGKey(1))

    @jax.jit
    def run(params, batch):
        loss, grad = jax.value_and_grad(setup.objective.loss)(params, batch)
        return loss, grad, setup.objective.errors(params, setup.eval_points, setup.eval_reference)

    loss, grad, errors = run(params, batch)
    assert math.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad))
    for field in ("rho", "u", "T"):
        for tag in ("eps1e+00", "eps1e-01", "eps1e-02", "eps1e-03"):
            assert math.isfinite(float(errors[f"rel_l2_{field}_{tag}"]))


def test_transport_cli_train_report_predict(tmp_path, capsys):
    out = tmp_path / "run"
    opts = [f"--problem-opt={k}={v}" for k, v in TINY_TRANSPORT.items()]
    code = main(["train", "--problem", "transport", *opts, "--problem-opt", "eps_range=[1e-8, 1.0]",
                 "--net", "8/8", "--method", "adam", "--steps", "2", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    final = json.loads((out / "summary.json").read_text())["final"]
    for tag in ("1e+00", "1e-01", "1e-02", "1e-03", "1e-04", "1e-06", "1e-08"):
        assert math.isfinite(final[f"rel_l2_rho_eps{tag}"])
    assert (out / "plots" / "profiles_eps.png").exists()
    points = np.array([[0.1, 0.5, 0.3, 1e-8], [0.05, 0.2, -0.7, 1.0]])
    np.save(tmp_path / "points.npy", points)
    assert main(["predict", str(out), "--points", str(tmp_path / "points.npy")]) == 0
    values = np.load(out / "predictions.npy")
    assert values.shape == (2, 3) and np.all(np.isfinite(values))
    # f = ρ + εg with ε taken from the points
    np.testing.assert_allclose(values[:, 2], values[:, 0] + points[:, 3] * values[:, 1], rtol=1e-12)
