"""Tests for the asymptotic-preserving transport reference solver (coarse grids, ~3 s)."""

import numpy as np
import pytest

from pinnopt.reference.transport import diffusion_limit_rho, solve_transport, velocity_quadrature


def _upwind_discrete_ordinates(eps: float, t_final: float, nx: int, nv: int):
    """Independent check for the kinetic regime: explicit first-order upwind discrete ordinates
    with explicit collisions (fine for ε = 1, useless for small ε), step Δt = εΔx."""
    v, w = np.polynomial.legendre.leggauss(nv)
    w = w / 2.0
    dx = 1.0 / nx
    n_steps = int(round(t_final / (eps * dx)))
    dt = t_final / n_steps
    incoming_left = (v > 0).astype(float)
    f = np.zeros((nx, nv))
    for _ in range(n_steps):
        rho = f @ w
        ext = np.concatenate([incoming_left[None], f, np.zeros((1, nv))])
        df = np.where(v > 0, ext[1:-1] - ext[:-2], ext[2:] - ext[1:-1])
        f = f - dt / eps * v * df / dx + dt / eps**2 * (rho[:, None] - f)
    return (np.arange(nx) + 0.5) * dx, f @ w


def test_velocity_quadrature_is_exact_for_polynomials():
    nv = 30
    v, w = velocity_quadrature(nv)
    assert np.all(np.diff(v) > 0) and np.allclose(v, -v[::-1])
    for k in range(2 * nv):  # ½∫v^k dv = 1/(k+1) for even k, 0 for odd k
        exact = 1.0 / (k + 1) if k % 2 == 0 else 0.0
        assert w @ v**k == pytest.approx(exact, abs=1e-14)


def test_diffusion_series_solves_the_limit_problem():
    x = np.linspace(0.0, 1.0, 201)
    assert diffusion_limit_rho(0.05, np.array([0.0, 1.0])) == pytest.approx([1.0, 0.0], abs=1e-12)
    assert np.allclose(diffusion_limit_rho(10.0, x), 1.0 - x, atol=1e-12)
    # ∂_t ρ = ⅓ ∂_xx ρ by centred differences at t = 0.1
    h, k = x[1] - x[0], 1e-5
    rho = diffusion_limit_rho(0.1, x)
    rho_t = (diffusion_limit_rho(0.1 + k, x) - diffusion_limit_rho(0.1 - k, x)) / (2 * k)
    rho_xx = (rho[2:] - 2 * rho[1:-1] + rho[:-2]) / h**2
    assert np.max(np.abs(rho_t[1:-1] - rho_xx / 3.0)) < 1e-3
    # t and x broadcast
    assert diffusion_limit_rho(np.array([[0.1], [0.2]]), x).shape == (2, x.size)


def test_tiny_eps_matches_diffusion_limit_at_second_order():
    x = np.linspace(0.0, 1.0, 101)
    exact = diffusion_limit_rho(0.1, x)
    errors = []
    for nx in (50, 100):
        sol = solve_transport(1e-8, 0.1, nx=nx)
        errors.append(np.sqrt(np.mean((sol.rho_at(x) - exact) ** 2)))
    assert errors[1] < 2e-4  # measured 1.16e-4
    assert errors[0] / errors[1] > 3.5  # measured 5.2: second order
    assert sol.rho_boundary == pytest.approx([1.0, 0.0], abs=1e-7)


def test_distance_to_diffusion_limit_is_first_order_in_eps():
    x = np.linspace(0.0, 1.0, 101)
    exact = diffusion_limit_rho(0.1, x)
    gap = {
        eps: np.sqrt(np.mean((solve_transport(eps, 0.1, nx=200).rho_at(x) - exact) ** 2))
        for eps in (1e-2, 1e-3)
    }
    assert gap[1e-2] == pytest.approx(1.04e-2, rel=0.05)  # the O(ε) boundary-layer shift
    assert 8.0 < gap[1e-2] / gap[1e-3] < 11.0


def test_kinetic_regime_matches_independent_upwind_solver():
    # ε = 1: no stiffness, so plain explicit upwinding is a valid (first-order) reference
    x, rho_upwind = _upwind_discrete_ordinates(1.0, 0.25, nx=400, nv=60)
    rho = solve_transport(1.0, 0.25, nx=100).rho_at(x)
    assert np.mean(np.abs(rho - rho_upwind)) < 1.5e-3  # measured 3.5e-4
    assert np.max(rho) > 0.5  # and the comparison is not between two near-zero fields


def test_grid_convergence_at_eps_one():
    ref = solve_transport(1.0, 0.25, nx=400)
    errors = [
        np.mean(np.abs((s := solve_transport(1.0, 0.25, nx=nx)).rho[-1] - ref.rho_at(s.x)))
        for nx in (25, 50, 100)
    ]
    orders = np.log2(np.array(errors[:-1]) / errors[1:])
    assert errors[-1] < 5e-5  # measured 3.1e-5
    assert np.all(orders > 0.7)  # measured 1.25, 0.83 (kinks along x = v_k t/ε, see the docs)


def test_uncollided_split_is_exact_bookkeeping():
    # by T = 1 the front of ε = 0.2 has decayed (e^{−25}); with or without splitting off the
    # uncollided particles the two formulations must then agree up to discretisation and the
    # nv-node quadrature on the wall. A wrong first-collision density P would shift the mass
    # by up to the front's whole mass ε/4 = 0.05.
    a = solve_transport(0.2, 1.0, nx=100, split_uncollided=True)
    b = solve_transport(0.2, 1.0, nx=100, split_uncollided=False)
    gap = a.rho[-1] - b.rho[-1]
    assert abs(gap.mean()) < 5e-4  # measured 1.6e-4
    assert np.max(np.abs(gap[a.x > 0.1])) < 5e-4  # measured 2.3e-4; 3.8e-3 on the wall


@pytest.mark.parametrize("eps", [1.0, 1e-2, 1e-8])
def test_density_obeys_maximum_principle(eps):
    sol = solve_transport(eps, 0.1, nx=50, save_times=[0.0, 0.05, 0.1])
    assert sol.rho.shape == (3, 50) and sol.f.shape == (50, 30)
    assert np.all(sol.rho[0] == 0.0)
    assert np.all(sol.rho[1:] > 0.0) and np.all(sol.rho <= 1.0)
    if eps < 1.0:  # no uncollided split: f and ρ are consistent through the quadrature
        assert np.allclose(sol.f @ sol.weights, sol.rho[-1], atol=1e-12)


def test_saved_times_match_separate_runs():
    sol = solve_transport(1e-2, 0.1, nx=40, dt=0.01, save_times=[0.05, 0.1])
    alone = solve_transport(1e-2, 0.05, nx=40, dt=0.01)
    assert np.allclose(sol.rho[0], alone.rho[-1], atol=1e-13)
