"""Tests for the IMEX BGK reference solver and its Euler limit (coarse grids, ~3 s)."""

import numpy as np
import pytest

from pinnopt.reference.bgk import (
    initial_state,
    maxwellian,
    moments,
    solve_bgk,
    velocity_quadrature,
)
from pinnopt.reference.euler import solve_euler

# momentum enters through the walls at the rate p_L − p_R (the fluxes ρu and (E + p)u vanish)
PRESSURE_JUMP = 1.5 * 1.5 - 0.625 * 0.75


def _totals(sol, dx):
    """(mass, momentum, energy) at each saved time."""
    rho, u, T = sol.rho, sol.u, sol.T
    return np.stack([rho, rho * u, 0.5 * rho * (u**2 + T)]).sum(axis=-1) * dx


def test_maxwellian_moments_are_exact_on_the_velocity_grid():
    v, w = velocity_quadrature(64, 10.0)
    assert w.sum() == pytest.approx(20.0, rel=1e-14)
    states = np.array([[1.5, 0.0, 1.5], [0.625, 0.0, 0.75], [1.0, 0.8, 0.4], [0.3, -0.5, 1.5]])
    # (states of this problem: T ≤ 1.5, |u| < 1; the cut-off at |v| = 10 is then 7σ away)
    got = np.array(moments(maxwellian(*states.T, v), v, w)).T
    assert np.allclose(got, states, rtol=1e-11, atol=1e-12)
    # and the grid matters: 16 nodes cannot resolve T = 0.4
    v16, w16 = velocity_quadrature(16, 10.0)
    assert abs(moments(maxwellian(*states[2:3].T, v16), v16, w16)[2][0] - 0.4) > 1e-4


def test_initial_state_blend():
    rho, u, T = initial_state(np.array([-0.5, 0.0, 0.5]))
    assert rho == pytest.approx([1.5, 0.5 * (1.5 + 0.625), 0.625], abs=1e-8)
    assert np.all(u == 0.0)
    assert T == pytest.approx([1.5, 1.125, 0.75], abs=1e-8)


@pytest.mark.parametrize("eps", [1e-2, 1e-5])
def test_bgk_conserves_and_stays_positive(eps):
    nx = 100
    sol = solve_bgk(eps, nx=nx, save_times=[0.0, 0.1])
    # the saved t = 0 moments are those of the initial data (Maxwellian moments exact)
    assert np.allclose(np.array([sol.rho[0], sol.u[0], sol.T[0]]), initial_state(sol.x), atol=1e-12)
    mass, momentum, energy = _totals(sol, 1.0 / nx)
    assert abs(mass[1] - mass[0]) < 2e-6  # measured 3e-7 (ε=1e-2), 5e-8 (ε=1e-5)
    assert abs(energy[1] - energy[0]) < 5e-6  # measured 1e-6, 1e-7
    assert momentum[1] - momentum[0] == pytest.approx(PRESSURE_JUMP * 0.1, abs=5e-6)
    assert sol.f.min() > -1e-14 and sol.rho.min() > 0 and sol.T.min() > 0


def test_euler_conserves():
    nx = 100
    sol = solve_euler(nx=nx, save_times=[0.0, 0.1])
    mass, momentum, energy = _totals(sol, 1.0 / nx)
    assert abs(mass[1] - mass[0]) < 1e-6 and abs(energy[1] - energy[0]) < 1e-6
    assert momentum[1] - momentum[0] == pytest.approx(PRESSURE_JUMP * 0.1, abs=1e-6)
    assert sol.rho.min() > 0 and sol.T.min() > 0


def test_bgk_second_order_at_eps_1e_2():
    # successive refinements; fine cells averaged pairwise onto the coarse ones
    sols = [solve_bgk(1e-2, nx=nx) for nx in (50, 100, 200)]
    diffs = [
        np.mean(np.abs(coarse.rho[-1] - fine.rho[-1].reshape(-1, 2).mean(axis=1)))
        for coarse, fine in zip(sols[:-1], sols[1:])
    ]
    assert np.log2(diffs[0] / diffs[1]) > 1.7  # measured 1.96


def test_bgk_approaches_euler_as_eps_vanishes():
    euler = solve_euler(nx=800)
    gap = {}
    for eps in (1e-1, 1e-5):
        sol = solve_bgk(eps, nx=100)
        gap[eps] = np.mean(np.abs(sol.rho[-1] - euler.moments_at(sol.x)[0]))
    assert gap[1e-5] < 2e-3  # measured 9.6e-4, the nx = 100 discretisation error
    assert gap[1e-1] > 10 * gap[1e-5]  # measured 1.6e-2


def test_moments_at_interpolates_final_time():
    sol = solve_bgk(1e-3, nx=40, save_times=[0.05, 0.1])
    rho, u, T = sol.moments_at(sol.x)
    assert np.allclose(rho, sol.rho[-1]) and np.allclose(u, sol.u[-1]) and np.allclose(T, sol.T[-1])
    walls = sol.moments_at([-0.5, 0.5])
    assert walls[0] == pytest.approx([1.5, 0.625], abs=1e-8)
    assert sol.rho.shape == (2, 40) and sol.f.shape == (40, 64)
