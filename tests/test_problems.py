"""Problem definitions: exact solutions solve them; samplers put points where they belong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401
from pinnopt.problems import PROBLEMS, make_problem
from pinnopt.problems.poisson import _norm_squared_rms, _pairs_rms
from pinnopt.taylor import Jet

CASES = [
    ("poisson", {"dim": 1, "solution": "sin-product"}),
    ("poisson", {"dim": 2}),
    ("poisson", {"dim": 3, "solution": "sin-product"}),
    ("poisson", {"dim": 5}),
    ("poisson", {"dim": 10}),
    ("poisson", {"dim": 100}),
    ("heat", {"dim": 1}),
    ("heat", {"dim": 4}),
]


def exact_jet(problem, group, x):
    """The jet of the exact solution by nested autodiff, in the group's derivative spec."""

    def u(z):
        return problem.reference(z[None])[0]

    directions = jnp.asarray(np.asarray(group.derivs.directions)).reshape(-1, problem.dim)
    value = u(x)
    grad = directions @ jax.jacfwd(u)(x).T
    second = None
    if group.derivs.second is not None:
        hess = jax.hessian(u)(x)
        weights = jnp.asarray(group.derivs.second)
        second = jnp.einsum("k,ki,mij,kj->m", weights, directions, hess, directions)
    return Jet(value, grad, second)


@pytest.mark.parametrize("name,options", CASES)
def test_exact_solution_makes_every_residual_vanish(name, options):
    problem = make_problem(name, **options)
    for i, group in enumerate(problem.groups):
        x = group.sampler(jax.random.PRNGKey(i), 16)
        r = jax.vmap(lambda z: group.fn(z, exact_jet(problem, group, z)))(x)
        scale = 1.0 + float(jnp.max(jnp.abs(problem.reference(x))))
        assert float(jnp.max(jnp.abs(r))) < 1e-10 * scale * problem.dim, (name, group.name)


@pytest.mark.parametrize("name,options", CASES)
def test_points_lie_in_their_regions(name, options):
    problem = make_problem(name, **options)
    box = problem.domain
    for group in problem.groups:
        x = group.sampler(jax.random.PRNGKey(0), 64)
        assert x.shape == (64, problem.dim)
        assert bool(jnp.all(box.contains(x)))
        lo, hi = jnp.asarray(box.lo), jnp.asarray(box.hi)
        on_face = jnp.isclose(x, lo) | jnp.isclose(x, hi)
        if group.role == "boundary":
            spatial = slice(1, None) if name == "heat" else slice(None)
            assert bool(jnp.all(jnp.any(on_face[:, spatial], axis=1)))
        elif group.role == "initial":
            assert bool(jnp.all(x[:, 0] == 0.0))
        else:
            assert not bool(jnp.any(on_face))


def test_sobol_sampling_is_reproducible_and_balanced():
    problem = make_problem("poisson", dim=2, sampling="sobol")
    interior = problem.groups[0]
    a = interior.sampler(jax.random.PRNGKey(1), 256)
    b = interior.sampler(jax.random.PRNGKey(1), 256)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A scrambled Sobol set of 2^8 points has exactly 64 points in each quarter of the square.
    counts = np.histogram2d(np.asarray(a[:, 0]), np.asarray(a[:, 1]), bins=2, range=[[0, 1], [0, 1]])[0]
    assert (counts == 64).all()


def test_normalising_constants_match_monte_carlo():
    x = np.random.default_rng(0).random((400_000, 10))
    pairs = np.sum(x[:, 0::2] * x[:, 1::2], axis=1)
    assert abs(np.sqrt(np.mean(pairs**2)) - _pairs_rms(10)) < 5e-3
    assert abs(_pairs_rms(10) - 1.34) < 5e-3 and abs(_norm_squared_rms(100) - 33.47) < 5e-3


def test_kfac_nets_have_the_papers_parameter_counts():
    from pinnopt.nets import MLP, parse_net

    expected = {("poisson", 2, "small"): 257, ("poisson", 2, "medium"): 9873,
                ("heat", 4, "small"): 449, ("heat", 4, "medium"): 10065,
                ("poisson", 5, "large"): 116865, ("poisson", 10, "large"): 118145,
                ("poisson", 100, "huge"): 1325057}
    for (name, dim, net), count in expected.items():
        problem = make_problem(name, dim=dim)
        assert MLP(parse_net(net, problem.dim, 1, problem.nets)).num_params == count


def test_net_depth_by_width_shorthand():
    from pinnopt.nets import parse_net

    assert parse_net("3x20", 2, 1) == (2, 20, 20, 20, 1)
    assert parse_net(" 1x7 ", 3, 2) == (3, 7, 2)
    # a preset of the same name wins, and means the same for the shipped ones
    assert parse_net("3x30", 2, 1, {"3x30": (30, 30, 30)}) == parse_net("3x30", 2, 1)
    with pytest.raises(ValueError, match="at least 1"):
        parse_net("0x20", 2, 1)
    with pytest.raises(ValueError, match="LxW"):
        parse_net("3y20", 2, 1)


def test_bad_problem_options_are_rejected():
    with pytest.raises(ValueError, match="unknown problem"):
        make_problem("nope")
    with pytest.raises(ValueError, match="no option"):
        make_problem("poisson", size=3)
    with pytest.raises(ValueError, match="positive integer"):
        make_problem("heat", dim=0)
    with pytest.raises(ValueError, match="unknown solution"):
        make_problem("poisson", solution="x")
    assert set(PROBLEMS) >= {"poisson", "heat"}
