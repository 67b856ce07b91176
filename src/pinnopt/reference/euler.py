"""Finite-volume solver for the 1D Euler equations, the ε → 0 limit of the BGK problem.

With one velocity dimension the BGK moments close, as ε → 0, to the Euler equations with
γ = 3:

    ∂_t ρ + ∂_x (ρu) = 0
    ∂_t (ρu) + ∂_x (ρu² + p) = 0,          p = ρT,
    ∂_t E + ∂_x ((E + p) u) = 0,            E = ½ρu² + ½ρT = ½ρu² + p/(γ − 1),

sound speed c = sqrt(γp/ρ) = sqrt(3T). Same domain, initial data and Dirichlet boundary data as
:mod:`pinnopt.reference.bgk`.

Scheme: MUSCL reconstruction of the primitive variables (ρ, u, p) with the van Leer limiter,
HLL flux with Davis wave-speed bounds S_L = min(u_L − c_L, u_R − c_R),
S_R = max(u_L + c_L, u_R + c_R), and Heun's SSP-RK2 in time with Δt = cfl · Δx / max(|u| + c)
recomputed every step. Second order for smooth flows, first order at the shock and contact
that this problem develops by t = 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pinnopt.reference.bgk import X_LEFT, X_RIGHT, MomentFields, initial_state, van_leer_slopes

__all__ = ["GAMMA", "EulerSolution", "solve_euler"]

GAMMA = 3.0


@dataclass(frozen=True)
class EulerSolution(MomentFields):
    """Euler solution: x (nx,), t (n_save,), rho, u, T (n_save, nx), and ``moments_at``."""


def _conserved(rho: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(ρ, ρu, E) stacked on the last axis, (..., 3)."""
    return np.stack([rho, rho * u, 0.5 * rho * u**2 + p / (GAMMA - 1.0)], axis=-1)


def _primitive(U: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ρ, u, p) from U (..., 3)."""
    rho = U[..., 0]
    u = U[..., 1] / rho
    p = (GAMMA - 1.0) * (U[..., 2] - 0.5 * rho * u**2)
    return rho, u, p


def _flux(rho: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Physical flux (ρu, ρu² + p, (E + p)u), (..., 3)."""
    E = 0.5 * rho * u**2 + p / (GAMMA - 1.0)
    return np.stack([rho * u, rho * u**2 + p, (E + p) * u], axis=-1)


def _hll(W_left: tuple[np.ndarray, ...], W_right: tuple[np.ndarray, ...]) -> np.ndarray:
    """HLL flux between primitive states W = (ρ, u, p) on either side of each face."""
    c_left = np.sqrt(GAMMA * W_left[2] / W_left[0])
    c_right = np.sqrt(GAMMA * W_right[2] / W_right[0])
    s_left = np.minimum(W_left[1] - c_left, W_right[1] - c_right)[..., None]
    s_right = np.maximum(W_left[1] + c_left, W_right[1] + c_right)[..., None]
    F_left, F_right = _flux(*W_left), _flux(*W_right)
    U_left, U_right = _conserved(*W_left), _conserved(*W_right)
    F_star = (s_right * F_left - s_left * F_right + s_left * s_right * (U_right - U_left)) / (
        s_right - s_left
    )
    return np.where(s_left >= 0, F_left, np.where(s_right <= 0, F_right, F_star))


def solve_euler(
    t_final: float = 0.1,
    nx: int = 400,
    cfl: float = 0.4,
    save_times: Sequence[float] | None = None,
) -> EulerSolution:
    """Solve the γ = 3 Euler equations for the BGK benchmark's initial and boundary data.

    Args:
        t_final: final time.
        nx: number of cells on [−0.5, 0.5].
        cfl: Courant number with respect to max(|u| + c).
        save_times: times in [0, t_final] at which (ρ, u, T) are stored (default [t_final]).

    Returns:
        EulerSolution with (ρ, u, T) of shape (len(save_times), nx).
    """
    save = np.sort(np.array([t_final] if save_times is None else save_times, dtype=float))
    if save[0] < 0 or save[-1] > t_final * (1 + 1e-12):
        raise ValueError("save_times must lie in [0, t_final]")

    dx = (X_RIGHT - X_LEFT) / nx
    x = X_LEFT + (np.arange(nx) + 0.5) * dx

    def state(xs: np.ndarray) -> np.ndarray:
        rho, u, T = initial_state(xs)
        return _conserved(rho, u, rho * T)

    ghosts_left = state(X_LEFT - dx * np.array([1.5, 0.5]))
    ghosts_right = state(X_RIGHT + dx * np.array([0.5, 1.5]))

    def rhs(U: np.ndarray) -> np.ndarray:
        """−∂_x F(U) with MUSCL-reconstructed primitive variables and the HLL flux, (nx, 3)."""
        W = np.stack(_primitive(np.concatenate([ghosts_left, U, ghosts_right])), axis=-1)
        slope = van_leer_slopes(W)  # ext cells 1 .. nx + 2
        W_left = W[1:-2] + 0.5 * slope[:-1]
        W_right = W[2:-1] - 0.5 * slope[1:]
        F = _hll(tuple(W_left.T), tuple(W_right.T))
        return -(F[1:] - F[:-1]) / dx

    def max_speed(U: np.ndarray) -> float:
        rho, u, p = _primitive(U)
        return float(np.max(np.abs(u) + np.sqrt(GAMMA * p / rho)))

    U = state(x)
    t = 0.0
    saved = []
    for t_save in save:
        while t < t_save - 1e-14 * t_final:
            dt = min(cfl * dx / max_speed(U), t_save - t)
            U1 = U + dt * rhs(U)
            U = 0.5 * (U + U1 + dt * rhs(U1))
            t += dt
        rho, u, p = _primitive(U)
        saved.append((rho, u, p / rho))
    rho, u, T = (np.array(q) for q in zip(*saved))
    return EulerSolution(x=x, t=save, rho=rho, u=u, T=T)
