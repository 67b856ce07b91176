"""The ε representation of the kinetic models (float64): features of ε (``eps_features``)
and their conditioning of the networks (``eps_conditioning``: input columns or FiLM).

The jets of conditioned models against nested autodiff of ``apply`` (derivatives in t and x,
where FiLM's scales and shifts are per-point constants of the Taylor pass, and along random
directions that move ε too); ⟨g⟩ = 0 and ρ > 0 for every feature set and both conditionings
(hypothesis); FiLM with unit scales and zero shifts is the unconditioned network; the
options' one-line errors; a FiLM run stopped and resumed equals the uninterrupted run."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pinnopt  # noqa: F401  (float64)
from pinnopt.cli import main
from pinnopt.config import RunConfig
from pinnopt.nets import MLP
from pinnopt.problems import make_problem
from pinnopt.problems.kinetic import FILM_HIDDEN, partials
from pinnopt.taylor import Derivatives, Jet, coordinates, propagate
from pinnopt.train import load_state, read_history, resume, train

# Most checks run op by op (no jit): on these tiny networks a compilation per model costs
# seconds, while the primitives' kernels are shared by all models. The nested-autodiff
# references are compiled (op by op they cost more), without XLA's backend optimisation.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TINY = {
    "transport": dict(n_interior=3, n_boundary=2, n_initial=3, nv=4, eval_eps=[1.0],
                      reference_nx=20, reference_nv=8),
    "bgk": dict(n_interior=3, n_boundary=2, n_initial=2, nv=6, eval_eps=[1.0], reference_nx=20,
                reference_nv=16),
}
FEATURE_SETS = [",".join(c) for n in (1, 2, 3) for c in itertools.combinations(("log", "eps", "eps2"), n)]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PINNOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def perturbed_film(params):
    """The conditioning networks' last layers moved far from their start (scales ≠ 1,
    shifts ≠ 0), so that FiLM is exercised, not the near-identity of the initialisation."""
    if "film" not in params:
        return params
    film = {name: [*layers[:-1], {"W": 20.0 * layers[-1]["W"] + 0.3, "b": layers[-1]["b"] - 0.2}]
            for name, layers in params["film"].items()}
    return dict(params, film=film)


@functools.lru_cache(maxsize=None)
def setup(name, net, eps_range=(1e-3, 1.0), **options):
    """Problem, model and (perturbed) parameters; shared, never mutated."""
    problem = make_problem(name, eps_range=list(eps_range), **TINY[name], **options)
    model = problem.model(net, "tanh")
    params = perturbed_film(model.init(jax.random.PRNGKey(0)))
    return problem, model, params


# -- jets against nested autodiff -------------------------------------------------------------

JET_CASES = {
    "transport-apnn-film": ("transport", "5-4/6", dict(eps_features="log,eps,eps2",
                                                       eps_conditioning="film", rho_sharpness=3.0)),
    "transport-vanilla-input-embed": ("transport", "6-5", dict(loss="vanilla", eps_embedding=2,
                                                                eps_features="log,eps,eps2")),
}


@pytest.mark.parametrize("case", sorted(JET_CASES))
def test_conditioned_jet_matches_nested_autodiff(case):
    """Value, ∂_t, ∂_x and 0.7 ∂²_t − 1.3 ∂²_x (the training path: FiLM's scale and shift
    constant per point), then the same along 3 random directions of (t, x, v, ε) (FiLM by the
    product rule), of every field against jacfwd / hessian of ``apply`` at 5 points."""
    name, net, options = JET_CASES[case]
    problem, model, params = setup(name, net, **options)
    key_x, key_d, key_c = jax.random.split(jax.random.PRNGKey(1), 3)
    lo, hi = (np.asarray(a) for a in (problem.domain.lo, problem.domain.hi))
    u = jax.random.uniform(key_x, (5, 4))
    X = (lo + u * (hi - lo)).at[:, 3].set(lo[3] * (hi[3] / lo[3]) ** u[:, 3])

    def f(z, params=params):
        return model.apply(params, z[None])[0]

    tx = (np.eye(4)[:2], np.array([0.7, -1.3]))
    random = (np.asarray(jax.random.normal(key_d, (3, 4))), np.asarray(jax.random.normal(key_c, (3,))))
    requests = [Derivatives(tuple(map(tuple, d)), tuple(w)) for d, w in (tx, random)]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def both(params, X):  # one compilation: the reference and both jets
        reference = jax.vmap(lambda z: (f(z), jax.jacfwd(f)(z), jax.hessian(f)(z)))(X)
        return reference, [model.jet(params, X, derivs) for derivs in requests]

    (value, jac, hess), jets = both(params, X)
    for (directions, weights), out in zip((tx, random), jets):
        want = (value, jnp.einsum("kd,nmd->nkm", directions, jac),
                jnp.einsum("k,kd,nmde,ke->nm", weights, directions, hess, directions))
        for got, expected in zip(out, want):
            got, expected = np.asarray(got), np.asarray(expected)
            scale = np.max(np.abs(expected.reshape(-1, expected.shape[-1])), axis=0)  # per field
            assert np.all(np.abs(got - expected) <= 1e-10 * scale), (got - expected) / scale


# -- ⟨g⟩ = 0 and ρ > 0 with every feature set and both conditionings --------------------------

@functools.lru_cache(maxsize=None)
def probe(features, conditioning):
    """``(params, X) -> (largest |node average| of g's value, ∂_t, ∂_x slots, their largest
    entry, ρ at the rows)`` of an APNN transport model over [1e-8, 1]."""
    _, model, params = setup("transport", "4/5", eps_range=(1e-8, 1.0), eps_features=features,
                             eps_conditioning=conditioning, rho_sharpness=2.0)

    def fn(params, X):
        g = model.g_jet(params, X, partials("tx"))
        _, w = model.quadrature(X.dtype)
        means = jnp.concatenate([(g.value @ w).ravel(), (g.grad @ w).ravel()])
        scale = jnp.maximum(jnp.max(jnp.abs(g.value)), jnp.max(jnp.abs(g.grad)))
        return jnp.max(jnp.abs(means)), scale, model.rho_jet(params, X, partials("")).value

    return params, fn


@pytest.mark.parametrize("conditioning", ["input", "film"])
@pytest.mark.parametrize("features", FEATURE_SETS)
@settings(max_examples=6, deadline=None)
@given(t=st.floats(0.0, 0.1), x=st.floats(0.0, 1.0), log_eps=st.floats(-8.0, 0.0),
       shift=st.floats(-12.0, 3.0))
def test_g_keeps_zero_mean_and_rho_stays_positive(features, conditioning, t, x, log_eps, shift):
    """g = ĝ − ⟨ĝ⟩ has zero velocity average at the nodes in every slot, to round-off, and
    ρ = softplus(βρ̂)/β > 0 even where the ρ net's output is far below zero: the ε
    representation changes the networks, not the maps that guarantee both."""
    params, fn = probe(features, conditioning)
    low = dict(params, rho=[*params["rho"][:-1],
                            {**params["rho"][-1], "b": params["rho"][-1]["b"] + shift}])
    X = jnp.array([[t, x, 0.3, 10.0**log_eps], [0.1 - t, 1.0 - x, -0.6, 10.0**(-8.0 - log_eps)]])
    mean, scale, rho = fn(low, X)
    assert float(mean) <= 1e-15 * float(scale) * 8
    assert float(jnp.min(rho)) > 0.0


# -- FiLM with unit scales and zero shifts is the unconditioned network -----------------------

def test_film_with_unit_scale_and_zero_shift_is_the_plain_pass():
    """In the Taylor pass: scales 1 and shifts 0 give the pass without FiLM, bit for bit."""
    net = MLP((3, 6, 5, 2), "tanh")
    params = net.init(jax.random.PRNGKey(0))
    X = jax.random.uniform(jax.random.PRNGKey(1), (4, 3))
    derivs = Derivatives.laplacian(3)
    film = [(jnp.ones((4, h)), jnp.zeros((4, h))) for h in (6, 5)]
    plain, _ = propagate(net, params, coordinates(X, derivs), derivs)
    modulated, _ = propagate(net, params, coordinates(X, derivs), derivs, film=film)
    as_jets = [(Jet(s, jnp.zeros((4, 3, s.shape[1])), jnp.zeros_like(s)),
                Jet(b, jnp.zeros((4, 3, b.shape[1])), jnp.zeros_like(b))) for s, b in film]
    by_product, _ = propagate(net, params, coordinates(X, derivs), derivs, film=as_jets)
    for a, b, c in zip(plain, modulated, by_product):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="one \\(scale, shift\\) per hidden layer"):
        propagate(net, params, coordinates(X, derivs), derivs, film=film[:1])


@pytest.mark.parametrize("name,net", [("transport", "5-4/6"), ("bgk", "5/4")])
def test_identity_film_equals_the_unconditioned_networks(name, net):
    """Conditioning nets whose last layer is zero (scales exactly 1, shifts 0): the FiLM model
    equals the input-conditioned model on the same member weights with a zero weight on the
    ε input column, i.e. the networks without ε. At initialisation the scales are within
    0.5 of 1 and the shifts within 0.5 of 0."""
    _, film_model, _ = setup(name, net, eps_features="log,eps", eps_conditioning="film")
    _, input_model, _ = setup(name, net)
    params = film_model.init(jax.random.PRNGKey(3))
    X = jnp.array([[0.05, 0.3, 0.2, 0.01], [0.02, 0.7, -0.5, 0.3], [0.09, 0.1, 0.9, 1e-3]])
    if name == "bgk":
        X = X.at[:, 1].add(-0.5).at[:, 2].multiply(10.0)
    mods = film_model.film(film_model.members["g" if name == "transport" else "f"], params,
                           "g" if name == "transport" else "f", X, partials("tx"))
    assert len(mods) == len(film_model.members["g" if name == "transport" else "f"].sizes) - 2
    for scale, shift in mods:
        assert float(jnp.max(jnp.abs(scale - 1.0))) < 0.5 and float(jnp.max(jnp.abs(shift))) < 0.5
    identity = dict(params, film={k: [*layers[:-1], jax.tree_util.tree_map(jnp.zeros_like, layers[-1])]
                                  for k, layers in params["film"].items()})
    # the same members with one more input column (the ε code) whose weights are zero
    plain = {k: [{"W": jnp.concatenate([layers[0]["W"], jnp.zeros_like(layers[0]["W"][:, :1])], 1),
                  "b": layers[0]["b"]}, *layers[1:]]
             for k, layers in params.items() if k != "film"}
    np.testing.assert_allclose(film_model.apply(identity, X), input_model.apply(plain, X),
                               rtol=1e-14, atol=1e-15)
    assert not np.allclose(film_model.apply(perturbed_film(params), X), film_model.apply(identity, X))
    assert film_model.num_params == input_model.num_params - sum(
        layers[0]["W"].shape[0] for layers in plain.values()) + sum(
        (len(film_model.encoding.features) + 1) * FILM_HIDDEN
        + (FILM_HIDDEN + 1) * 2 * sum(m.sizes[1:-1]) for m in film_model.members.values())


# -- options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,message", [
    (dict(eps_features="log,foo"), "transport: eps_features 'foo' unknown; choose a comma list out of log, eps, eps2"),
    (dict(eps_features=""), "transport: eps_features is empty"),
    (dict(eps_features=" , "), "transport: eps_features is empty"),
    (dict(eps_features="eps,eps"), "transport: eps_features lists a feature twice: eps,eps"),
    (dict(eps_conditioning="concat"), "transport: eps_conditioning 'concat' unknown; choose from input, film"),
    (dict(eps_conditioning="film", eps_embedding=4), "transport: eps_embedding applies to eps_conditioning=input"),
])
def test_bad_options_give_one_line_errors(options, message):
    with pytest.raises(ValueError) as error:
        make_problem("transport", eps_range=[1e-4, 1.0], **TINY["transport"], **options)
    assert "\n" not in str(error.value) and str(error.value).startswith(message)
    with pytest.raises(ValueError, match="^bgk: eps_features 'ε' unknown"):
        make_problem("bgk", eps_features="ε", **TINY["bgk"])


def test_options_from_python_lists_and_the_command_line(capsys):
    from_list = make_problem("transport", eps_range=[1e-4, 1.0], eps_features=["log", "eps2"],
                             eps_conditioning="film", **TINY["transport"])
    assert from_list.model("4/4", "tanh").encoding.features == ("log", "eps2")
    fixed = make_problem("transport", eps=0.1, eps_features="eps", eps_conditioning="film",
                         **TINY["transport"]).model("4/4", "tanh")
    assert fixed.encoding.width == 0 and not fixed.encoding.film  # a fixed ε has no ε input
    code = main(["train", "--problem", "transport", "--problem-opt", "eps_features=log,bad",
                 "--steps", "1", "--no-progress", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "eps_features 'bad' unknown" in err


# -- checkpoints -------------------------------------------------------------------------------------

def test_film_run_stopped_and_resumed_equals_the_uninterrupted_run(tmp_path):
    """6 Adam steps in one run, and 3 steps then a resume from the checkpoint to 6: the same
    parameters (conditioning network included) and Adam moments, bit for bit. The vanilla
    loss: one member network, the cheapest trainer to compile."""
    options = dict(TINY["transport"], eps_range=[1e-6, 1.0], eps_features="log,eps,eps2",
                   eps_conditioning="film", loss="vanilla", n_eval_x=8)

    def config(steps):
        return RunConfig(problem="transport", problem_options=options, net="4", method="adam",
                         steps=steps, time_budget=None, plots=False, checkpoint_every=0.0)

    quiet = lambda message: None  # noqa: E731
    full = train(config(6), tmp_path / "full", progress=False, log=quiet)
    train(config(3), tmp_path / "part", progress=False, log=quiet)
    part = resume(tmp_path / "part", steps=6, progress=False, log=quiet)
    assert part["steps"] == full["steps"] == 6 and part["final"]["loss"] == full["final"]["loss"]
    a, _ = load_state(tmp_path / "full")
    b, _ = load_state(tmp_path / "part")
    assert set(b["params"]["film"]) == {"f"}
    for x, y in zip(jax.tree_util.tree_leaves((a["params"], a["method_state"])),
                    jax.tree_util.tree_leaves((b["params"], b["method_state"])), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert math.isfinite(read_history(tmp_path / "part")[-1]["rel_l2_rho_eps1e+00"])
