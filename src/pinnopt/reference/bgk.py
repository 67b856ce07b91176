"""IMEX discrete-velocity reference solver for the BGK equation in the Euler scaling.

Problem (docs/methods.md §8), on x ∈ [−0.5, 0.5], v ∈ [−vmax, vmax] (vmax = 10), t ∈ [0, 0.1]:

    ε (∂_t f + v ∂_x f) = M[ρ,u,T] − f,     M = ρ / sqrt(2πT) · exp(−(v − u)²/(2T)),
    ρ = ⟨f⟩,  ρu = ⟨v f⟩,  E = ½⟨v² f⟩ = ½ρu² + ½ρT,      ⟨·⟩ = ∫ dv,

with f(0) = M[ρ₀, u₀, T₀] for the tanh(20x) blend of (1.5, 0, 1.5) and (0.625, 0, 0.75)
(:func:`initial_state`). As ε → 0, (ρ, ρu, E) solve the 1D Euler equations with γ = 3
(:mod:`pinnopt.reference.euler`).

Velocity: nv Gauss–Legendre nodes on [−vmax, vmax]; ⟨·⟩ is the quadrature sum. The
Maxwellians of this problem have T ≤ 1.5, so their moments are integrated to round-off
(``tests/test_reference_bgk.py`` checks it).

Space: nx finite-volume cells; each discrete velocity is advected with the upwind flux of a
MUSCL reconstruction (van Leer limiter), second order where the solution is smooth.
Boundary: two ghost cells on each side hold the Maxwellian of the initial data at the ghost
centres, i.e. Dirichlet/inflow data M[ρ₀,u₀,T₀](±0.5). Up to t = 0.1 no wave of the Euler
limit reaches the walls (the fastest, the left rarefaction head at speed √(3·1.5) ≈ 2.1,
travels ≈ 0.2) and the state there stays the initial one; for large ε only particles with
v > 5 reach the walls from the centre, a fraction ½ erfc(5/√3) ≈ 2e-5 of them at T = 1.5.
(Measured, nx = 100: mass and energy change by ≤ 1.1e-6 over t ∈ [0, 0.1] for ε ≤ 1e-2.)

Time: ARS(2,2,2) IMEX Runge–Kutta (Ascher, Ruuth & Spiteri 1997), explicit transport,
implicit relaxation, γ = 1 − 1/√2, δ = 1 − 1/(2γ):

    f⁽²⁾ = fⁿ + Δt γ T(fⁿ) + Δt γ R(f⁽²⁾)
    fⁿ⁺¹ = fⁿ + Δt [δ T(fⁿ) + (1 − δ) T(f⁽²⁾)] + Δt [(1 − γ) R(f⁽²⁾) + γ R(fⁿ⁺¹)]

with T(f) = −v ∂_x f and R(f) = (M[f] − f)/ε. Each implicit stage f = f̃ + h (M[f] − f)/ε is
solved in closed form: R conserves ρ, ρu and E, so M[f] = M[moments of f̃] and
f = (ε f̃ + h M)/(ε + h). Nothing divides by ε alone, the scheme is stiffly accurate (the last
stage is the new step), and as ε → 0 it becomes a second-order explicit Runge–Kutta
kinetic scheme for the Euler equations: Δt is limited only by the transport CFL,
Δt = cfl · Δx / max|v|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MomentFields",
    "BGKSolution",
    "initial_state",
    "maxwellian",
    "moments",
    "velocity_quadrature",
    "van_leer_slopes",
    "solve_bgk",
]

STATE_LEFT = (1.5, 0.0, 1.5)  # (ρ, u, T) for x < 0
STATE_RIGHT = (0.625, 0.0, 0.75)  # (ρ, u, T) for x > 0
X_LEFT, X_RIGHT = -0.5, 0.5


def initial_state(x: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ρ, u, T) at t = 0: q(x) = q_L + (q_R − q_L)(1 + tanh(20x))/2, each of the shape of x."""
    blend = 0.5 * (1.0 + np.tanh(20.0 * np.asarray(x, dtype=float)))
    rho, u, T = (ql + (qr - ql) * blend for ql, qr in zip(STATE_LEFT, STATE_RIGHT))
    return rho, u, T


def maxwellian(rho: np.ndarray, u: np.ndarray, T: np.ndarray, v: np.ndarray) -> np.ndarray:
    """M[ρ,u,T](v) = ρ/sqrt(2πT) exp(−(v−u)²/(2T)); moments of shape (n,), v (nv,) -> (n, nv)."""
    rho, u, T = (np.asarray(q, dtype=float)[..., None] for q in (rho, u, T))
    return rho / np.sqrt(2.0 * np.pi * T) * np.exp(-((v - u) ** 2) / (2.0 * T))


def moments(
    f: np.ndarray, v: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ρ, u, T) of f (n, nv): ρ = ⟨f⟩, u = ⟨v f⟩/ρ, T = ⟨v² f⟩/ρ − u² (each (n,))."""
    rho = f @ weights
    u = (f @ (weights * v)) / rho
    T = (f @ (weights * v**2)) / rho - u**2
    return rho, u, T


def velocity_quadrature(nv: int, vmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes (nv,) on [−vmax, vmax] and weights (nv,) for ⟨·⟩ = ∫ · dv."""
    v, w = np.polynomial.legendre.leggauss(nv)
    return vmax * v, vmax * w


def van_leer_slopes(q: np.ndarray) -> np.ndarray:
    """Limited slopes (per cell) of q (n, ...) along axis 0 for cells 1..n−2: (n−2, ...).

    van Leer: 2ab/(a + b) if the one-sided differences a, b have the same sign, else 0.
    """
    a, b = np.diff(q, axis=0)[:-1], np.diff(q, axis=0)[1:]
    ab = a * b
    slope = np.zeros_like(ab)
    same = ab > 0
    slope[same] = 2.0 * ab[same] / (a[same] + b[same])
    return slope


@dataclass(frozen=True)
class MomentFields:
    """Macroscopic fields on a uniform grid of [−0.5, 0.5].

    Attributes:
        x: (nx,) cell centres.
        t: (n_save,) saved times.
        rho, u, T: (n_save, nx) density, velocity and temperature at the saved times.
    """

    x: np.ndarray
    t: np.ndarray
    rho: np.ndarray
    u: np.ndarray
    T: np.ndarray

    def moments_at(
        self, x_query: np.ndarray | Sequence[float] | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ρ, u, T) at the final time at points of [−0.5, 0.5], each of the shape of x_query.

        Piecewise-linear through the cell centres and the wall values (the boundary data).
        """
        xq = np.asarray(x_query, dtype=float)
        nodes = np.concatenate(([X_LEFT], self.x, [X_RIGHT]))
        walls = initial_state(np.array([X_LEFT, X_RIGHT]))
        return tuple(
            np.interp(xq, nodes, np.concatenate(([wall[0]], q[-1], [wall[1]])))
            for q, wall in zip((self.rho, self.u, self.T), walls)
        )


@dataclass(frozen=True)
class BGKSolution(MomentFields):
    """Discrete-velocity BGK solution; adds to :class:`MomentFields`:

    Attributes:
        eps: the Knudsen number ε.
        v: (nv,) velocity nodes, ascending.
        weights: (nv,) quadrature weights for ⟨·⟩ = ∫ dv.
        f: (nx, nv) distribution at the final time.
    """

    eps: float
    v: np.ndarray
    weights: np.ndarray
    f: np.ndarray


def solve_bgk(
    eps: float,
    t_final: float = 0.1,
    nx: int = 400,
    nv: int = 64,
    vmax: float = 10.0,
    cfl: float = 0.5,
    save_times: Sequence[float] | None = None,
) -> BGKSolution:
    """Solve ε(∂_t f + v ∂_x f) = M[f] − f on [0, t_final] (see the module docstring).

    Args:
        eps: Knudsen number ε > 0 (any value; ε → 0 is the Euler limit).
        t_final: final time.
        nx: number of cells on [−0.5, 0.5].
        nv: number of Gauss–Legendre velocity nodes on [−vmax, vmax].
        vmax: velocity cut-off.
        cfl: Δt = cfl · Δx / max|v_k|; steps are shortened to land on the save times.
        save_times: times in [0, t_final] at which (ρ, u, T) are stored (default [t_final]).

    Returns:
        BGKSolution with (ρ, u, T) of shape (len(save_times), nx) and f (nx, nv) at t_final.
    """
    if eps <= 0 or t_final <= 0:
        raise ValueError("eps and t_final must be positive")
    save = np.sort(np.array([t_final] if save_times is None else save_times, dtype=float))
    if save[0] < 0 or save[-1] > t_final * (1 + 1e-12):
        raise ValueError("save_times must lie in [0, t_final]")

    v, w = velocity_quadrature(nv, vmax)
    dx = (X_RIGHT - X_LEFT) / nx
    x = X_LEFT + (np.arange(nx) + 0.5) * dx
    ghosts_left = maxwellian(*initial_state(X_LEFT - dx * np.array([1.5, 0.5])), v)
    ghosts_right = maxwellian(*initial_state(X_RIGHT + dx * np.array([0.5, 1.5])), v)
    v_plus, v_minus = np.maximum(v, 0.0), np.minimum(v, 0.0)

    def transport(f: np.ndarray) -> np.ndarray:
        """−v ∂_x f: upwind flux of the MUSCL face values, (nx, nv)."""
        ext = np.concatenate([ghosts_left, f, ghosts_right])  # (nx + 4, nv)
        slope = van_leer_slopes(ext)  # ext cells 1 .. nx + 2
        left = ext[1:-2] + 0.5 * slope[:-1]  # value left of faces 0..nx
        right = ext[2:-1] - 0.5 * slope[1:]  # value right of faces 0..nx
        flux = v_plus * left + v_minus * right
        return -(flux[1:] - flux[:-1]) / dx

    def relax(f_tilde: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
        """Solve f = f̃ + h R(f): returns f and R(f) = (M − f̃)/(ε + h)."""
        M = maxwellian(*moments(f_tilde, v, w), v)
        R = (M - f_tilde) / (eps + h)
        return f_tilde + h * R, R

    gamma = 1.0 - 1.0 / np.sqrt(2.0)
    delta = 1.0 - 1.0 / (2.0 * gamma)

    def step(f: np.ndarray, dt: float) -> np.ndarray:
        T1 = transport(f)
        f2, R2 = relax(f + dt * gamma * T1, dt * gamma)
        T2 = transport(f2)
        f3, _ = relax(f + dt * (delta * T1 + (1.0 - delta) * T2) + dt * (1.0 - gamma) * R2,
                      dt * gamma)
        return f3

    dt_max = cfl * dx / np.abs(v).max()
    f = maxwellian(*initial_state(x), v)
    t = 0.0
    saved = []
    for t_save in save:
        while t < t_save - 1e-14 * t_final:
            dt = min(dt_max, t_save - t)
            f = step(f, dt)
            t += dt
        saved.append(moments(f, v, w))
    rho, u, T = (np.array(q) for q in zip(*saved))

    return BGKSolution(x=x, t=save, rho=rho, u=u, T=T, eps=float(eps), v=v, weights=w, f=f)
