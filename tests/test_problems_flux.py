"""The problems of docs/methods.md §6 in standard and first-order form: exact solutions (with exact
auxiliary fields) make every residual and constraint vanish; points lie in their regions; the
Ghia et al. (1982) cavity data and the partial-reference errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401
from pinnopt.nets import MLP
from pinnopt.problems import make_problem
from pinnopt.problems.cavity import ghia_re100, reference_points
from pinnopt.problems.convection import PeriodicPairs
from pinnopt.problems.convection_diffusion import shifted_exact
from pinnopt.residuals import Objective
from pinnopt.taylor import Jet

FLUX_PROBLEMS = ("helmholtz", "klein_gordon", "convection_diffusion", "composite_heat", "stokes")
CASES = [(name, {"formulation": f}) for name in FLUX_PROBLEMS for f in ("standard", "first-order")]
CASES += [
    ("convection", {}),
    # A mild boundary layer, where the residual terms are O(1), checks the algebra itself.
    ("convection_diffusion", {"formulation": "standard", "alpha": 0.05}),
    ("convection_diffusion", {"formulation": "first-order", "alpha": 0.05, "v": -2.0}),
]
ALL = CASES + [("cavity", {"formulation": "standard"}), ("cavity", {"formulation": "first-order"})]


def exact_jet(fields, derivs, x):
    """The jet of ``fields(x (dim,)) -> (m,)`` in the derivative spec, by nested autodiff."""
    directions = jnp.asarray(np.asarray(derivs.directions)).reshape(-1, x.shape[0])
    grad = directions @ jax.jacfwd(fields)(x).T  # (k, m)
    second = None
    if derivs.second is not None:
        hess = jax.hessian(fields)(x)  # (m, d, d)
        weights = jnp.asarray(derivs.second)
        second = jnp.einsum("k,ki,mij,kj->m", weights, directions, hess, directions)
    return Jet(fields(x), grad, second)


class ExactNet:
    """Stands in for a network that outputs the exact fields."""

    def __init__(self, problem):
        self.problem = problem

    def apply(self, params, x):
        return self.problem.reference(x)


def residual_and_size(problem, group, x):
    """The group's residual ``(N, c)`` for the exact fields, and per point the size of the
    largest term of the jet (round-off in the residual is relative to it)."""
    if isinstance(group, PeriodicPairs):
        r = group.residual(ExactNet(problem), None, x)
        return r, jnp.max(jnp.abs(problem.reference(x)), axis=1)

    def fields(z):
        return problem.reference(z[None])[0]

    def one(z):
        jet = exact_jet(fields, group.derivs, z)
        size = jnp.max(jnp.concatenate([jnp.abs(a).ravel() for a in jet if a is not None]))
        return jnp.atleast_1d(group.fn(z, jet)), size

    return jax.jit(jax.vmap(one))(x)


@pytest.mark.parametrize("name,options", CASES)
def test_exact_fields_make_every_residual_and_constraint_vanish(name, options):
    problem = make_problem(name, **options)
    assert problem.reference(problem.eval_points()).shape == (problem.n_eval, len(problem.fields))
    for i, group in enumerate(problem.groups):
        x = group.sampler(jax.random.PRNGKey(i), 16)
        r, size = residual_and_size(problem, group, x)
        assert r.shape[0] == 16
        # Round-off relative to the size of the terms (up to |u_xx| ~ 1e12 in the α = 1e-6 layer).
        bound = 1e-12 * (1.0 + size)[:, None]
        assert bool(jnp.all(jnp.abs(r) < bound)), (name, options, group.name, float(jnp.max(jnp.abs(r))))


def test_residuals_detect_a_wrong_solution():
    # The check above is not vacuous: perturbing the exact fields breaks the residuals.
    problem = make_problem("helmholtz", formulation="first-order")
    wrong = make_problem("helmholtz", formulation="first-order")
    object.__setattr__(wrong, "solution",
                       lambda z: problem.solution(z) + 0.01 * jnp.sin(3.0 * z[:, :1]))
    for group in problem.groups[:2]:
        r, _ = residual_and_size(wrong, group, group.sampler(jax.random.PRNGKey(0), 8))
        assert float(jnp.max(jnp.abs(r))) > 1e-3


def test_convection_diffusion_layer_is_resolved_without_overflow():
    for alpha in (1e-6, 1e-9, 1e-300):
        u0 = shifted_exact(jnp.array([0.0, 1.0]), alpha, 1.0) - 0.5
        np.testing.assert_allclose(np.asarray(u0), [0.5, -0.5], atol=1e-12)
        # v < 0: the same formula, layer at x = 1: u*(0) = 1/(1 − e^{v/α}) − 1/2 → −1/2,
        # u*(1) = 1/(e^{v/α} − 1) − 1/2 → −3/2.
        left = shifted_exact(jnp.array([0.0, 1.0]), alpha, -1.0) - 0.5
        np.testing.assert_allclose(np.asarray(left), [-0.5, -1.5], atol=1e-12)
    # Inside the α = 1e-6 layer the two terms are each ~1e6 and cancel to round-off.
    problem = make_problem("convection_diffusion", alpha=1e-6)
    group = problem.groups[0]
    x = jnp.linspace(0.0, 2e-5, 41)[:, None]
    r, size = residual_and_size(problem, group, x)
    assert bool(jnp.all(jnp.isfinite(r))) and float(jnp.max(jnp.abs(r))) < 1e-6
    assert float(jnp.max(size)) > 1e11  # u_xx ~ (v/α)² at x = 0: the terms are big
    # The boundary values implied by the formula: 1/(1 − e^{−1}) − 1/2 and 1/(e − 1) − 1/2.
    mild = make_problem("convection_diffusion", alpha=1.0).reference(jnp.array([[0.0], [1.0]]))
    np.testing.assert_allclose(np.asarray(mild[:, 0]),
                               [1 / (1 - np.exp(-1)) - 0.5, 1 / (np.e - 1) - 0.5], rtol=1e-14)


def test_composite_heat_interface_is_continuous_in_u_and_flux():
    t = jnp.linspace(0.0, 2.0, 5)
    for side in (-1e-12, 0.0):
        z = jnp.stack([t, jnp.full_like(t, side)], axis=1)
        ref = make_problem("composite_heat", formulation="first-order").reference(z)
        np.testing.assert_allclose(np.asarray(ref[:, 0]), 0.0, atol=1e-10)
        np.testing.assert_allclose(np.asarray(ref[:, 1]), -3 * np.pi * np.asarray(t), rtol=1e-10)


@pytest.mark.parametrize("name,options", ALL)
def test_points_lie_in_their_regions(name, options):
    problem = make_problem(name, **options)
    box = problem.domain
    lo, hi = jnp.asarray(box.lo), jnp.asarray(box.hi)
    for group in problem.groups:
        x = group.sampler(jax.random.PRNGKey(3), 64)
        assert x.shape == (64, problem.dim)
        assert bool(jnp.all(box.contains(x))), (name, group.name)
        on_face = jnp.isclose(x, lo) | jnp.isclose(x, hi)
        if isinstance(group, PeriodicPairs):
            assert bool(jnp.all(x[:, group.coord] == box.lo[group.coord]))
        elif group.role == "initial":
            assert bool(jnp.all(x[:, 0] == 0.0))
        elif group.role == "boundary":
            assert bool(jnp.all(jnp.any(on_face, axis=1))), (name, group.name)
        elif problem.dim > 1:
            assert not bool(jnp.any(on_face)), (name, group.name)
    names = {g.name: g for g in problem.groups}
    if name in ("klein_gordon", "composite_heat"):  # spatial walls only, never t = 0 or t = T
        x = names["boundary"].sampler(jax.random.PRNGKey(4), 64)
        assert bool(jnp.all(jnp.isclose(x[:, 1], lo[1]) | jnp.isclose(x[:, 1], hi[1])))
    if name == "stokes":
        assert bool(jnp.all(names["pressure"].sampler(jax.random.PRNGKey(5), 16)[:, 1] == 1.0))
    if name == "cavity":
        assert bool(jnp.all(names["lid"].sampler(jax.random.PRNGKey(6), 16)[:, 1] == 1.0))
        walls = names["walls"].sampler(jax.random.PRNGKey(7), 300)
        assert not bool(jnp.any(walls[:, 1] == 1.0))
        assert bool(jnp.all((walls[:, 0] == 0) | (walls[:, 0] == 1) | (walls[:, 1] == 0)))
        for side in ((walls[:, 0] == 0), (walls[:, 0] == 1), (walls[:, 1] == 0)):
            assert int(jnp.sum(side)) > 50  # every wall gets its share


def test_roles_mark_objective_and_constraints():
    roles = {g.name: g.role for g in make_problem("stokes", formulation="first-order").groups}
    assert roles == {"momentum": "pde", "continuity": "constraint", "vorticity": "constraint",
                     "boundary": "boundary", "pressure": "boundary"}
    for name in FLUX_PROBLEMS:
        standard = make_problem(name, formulation="standard")
        first = make_problem(name, formulation="first-order")
        assert not any(g.role == "constraint" for g in standard.groups)
        assert any(g.role == "constraint" for g in first.groups)
        # First-order forms need first derivatives only.
        assert all(g.derivs.second is None for g in first.groups), name
        assert len(first.fields) > len(standard.fields) and first.fields[0] == "u"


def test_ghia_data_has_17_plus_17_points_in_the_box():
    table = ghia_re100()
    assert table["u"].shape == (17, 3) and table["v"].shape == (17, 3)
    assert np.all(table["u"][:, 0] == 0.5) and np.all(table["v"][:, 1] == 0.5)
    for rows in table.values():
        assert np.all((rows[:, :2] >= 0) & (rows[:, :2] <= 1))
    # Wall values: the lid drags u = 1 at y = 1; no slip at the other ends.
    u_at = dict(zip(table["u"][:, 1], table["u"][:, 2]))
    v_at = dict(zip(table["v"][:, 0], table["v"][:, 2]))
    assert u_at[1.0] == 1.0 and u_at[0.0] == 0.0 and v_at[0.0] == 0.0 and v_at[1.0] == 0.0
    assert min(u_at.values()) == -0.21090 and min(v_at.values()) == -0.24533
    points, values = reference_points()
    assert points.shape == (33, 2)  # the centre (0.5, 0.5) lies on both lines
    centre = np.all(points == 0.5, axis=1)
    np.testing.assert_array_equal(values[centre], [[-0.20581, 0.05454]])


def test_cavity_errors_use_only_the_tabulated_values():
    problem = make_problem("cavity", formulation="first-order")
    x = problem.eval_points()
    ref = problem.reference(x)
    assert x.shape == (33, 2) and ref.shape == (33, 4)
    assert int(jnp.sum(jnp.isfinite(ref[:, 0]))) == 17 and int(jnp.sum(jnp.isfinite(ref[:, 1]))) == 17
    assert not bool(jnp.any(jnp.isfinite(ref[:, 2:])))

    class Shifted:  # predicts the table plus 0.01 in u and v, garbage elsewhere
        def apply(self, params, z):
            r = problem.reference(z)
            return jnp.where(jnp.isfinite(r), r, 7.0) + jnp.array([0.01, 0.01, 0.0, 0.0])

    errors = Objective(problem, Shifted()).errors(None, x, ref)
    assert set(errors) == {"rms_u", "rel_l2_u", "rms_v", "rel_l2_v", "rms_velocity", "rel_l2_velocity"}
    for key in ("rms_u", "rms_v", "rms_velocity"):
        assert abs(float(errors[key]) - 0.01) < 1e-12
    u_ref = np.asarray(ghia_re100()["u"][:, 2])
    assert abs(float(errors["rel_l2_u"]) - 0.01 * np.sqrt(17) / np.linalg.norm(u_ref)) < 1e-12


def test_cavity_forms_agree_on_a_divergence_free_field():
    # For a divergence-free velocity with ω = v_x − u_y, the vorticity form of the momentum
    # residual equals the standard one (−Δu = curl ω); the constraints vanish.
    standard = make_problem("cavity", formulation="standard")
    first = make_problem("cavity", formulation="first-order")
    pi = np.pi

    def uvwp(z):
        # Stream function ψ = sin(πx) sin(2πy): u = ψ_y, v = −ψ_x, ω = −Δψ; any pressure.
        x, y = z[0], z[1]
        u = 2 * pi * jnp.sin(pi * x) * jnp.cos(2 * pi * y)
        v = -pi * jnp.cos(pi * x) * jnp.sin(2 * pi * y)
        omega = 5 * pi**2 * jnp.sin(pi * x) * jnp.sin(2 * pi * y)
        return jnp.stack([u, v, omega, x**2 * y])

    def uvp(z):
        return uvwp(z)[jnp.array([0, 1, 3])]

    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 2))
    g_std = {g.name: g for g in standard.groups}
    g_first = {g.name: g for g in first.groups}

    @jax.jit
    @jax.vmap
    def residuals(z):
        def at(fields, group):
            return group.fn(z, exact_jet(fields, group.derivs, z))

        return (at(uvp, g_std["momentum"]), at(uvwp, g_first["momentum"]),
                at(uvwp, g_first["continuity"]), at(uvwp, g_first["vorticity"]))

    m_std, m_first, continuity, vorticity = residuals(x)
    assert float(jnp.max(jnp.abs(m_std))) > 1e-2  # not trivially zero
    np.testing.assert_allclose(np.asarray(m_first), np.asarray(m_std), atol=1e-12)
    assert float(jnp.max(jnp.abs(continuity))) < 1e-12 and float(jnp.max(jnp.abs(vorticity))) < 1e-12
    # and the lid / wall residuals vanish for the exact boundary values.
    lid = g_first["lid"].fn(jnp.array([0.3, 1.0]), Jet(jnp.array([1.0, 0.0, 5.0, 2.0]), None, None))
    np.testing.assert_array_equal(np.asarray(lid), [0.0, 0.0])


def test_loss_evaluates_on_a_network():
    # Through Objective, the periodic pairs (not pointwise) evaluate the network at both ends.
    for name, options in (("convection", {}),):
        problem = make_problem(name, **options)
        net = MLP((problem.dim, 8, len(problem.fields)))
        objective = Objective(problem, net)
        batch = {g.name: g.sampler(jax.random.PRNGKey(0), 8) for g in problem.groups}
        losses = jax.jit(objective.group_losses)(net.init(jax.random.PRNGKey(1)), batch)
        assert set(losses) == {g.name for g in problem.groups}
        assert all(np.isfinite(float(v)) and float(v) > 0 for v in losses.values()), name


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="unknown formulation"):
        make_problem("helmholtz", formulation="flux")
    with pytest.raises(ValueError, match="no option"):
        make_problem("convection", formulation="first-order")
    with pytest.raises(ValueError, match="positive integer"):
        make_problem("stokes", n_interior=0)
    with pytest.raises(ValueError, match="alpha > 0"):
        make_problem("convection_diffusion", alpha=0.0)
    with pytest.raises(ValueError, match="unknown sampling"):
        make_problem("convection_diffusion", sampling="random")
    with pytest.raises(ValueError, match="beta"):
        make_problem("convection", beta="fast")
