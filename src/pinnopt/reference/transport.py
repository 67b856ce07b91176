"""Asymptotic-preserving reference solver for linear transport in the diffusive scaling.

Problem (docs/methods.md §8), on x ∈ [0, 1], v ∈ [−1, 1]:

    ε ∂_t f + v ∂_x f = (ρ − f)/ε,        ρ = ⟨f⟩ = ½ ∫_{−1}^{1} f dv,
    f(t, 0, v > 0) = 1,   f(t, 1, v < 0) = 0,   f(0, x, v) = 0.

As ε → 0, ρ solves ∂_t ρ = ⅓ ∂_xx ρ with ρ(t,0) = 1, ρ(t,1) = 0, ρ(0,x) = 0
(:func:`diffusion_limit_rho`).

Method: discrete ordinates in v (Gauss–Legendre, nv even, so the nodes come in pairs ±v_k)
and the even–odd parity decomposition, for v_k > 0,

    r_k = (f(v_k) + f(−v_k))/2,      j_k = (f(v_k) − f(−v_k))/(2ε),

which turns the kinetic equation into

    ∂_t r_k + v_k ∂_x j_k = (ρ − r_k)/ε²,      ε² ∂_t j_k + v_k ∂_x r_k = −j_k,

with ρ = Σ_k w_k r_k (w_k: the Gauss–Legendre weights of the positive nodes, Σ_k w_k = 1).
Solving this system directly is ill-conditioned for tiny ε (the diffusion is carried by
O(ε²) terms that round-off erases), so the even part is split into its mean and the rest,
r_k = ρ + s_k with Σ_k w_k s_k = 0, and the unknowns are (ρ, s, j):

    macro:  ∂_t ρ + Σ_k w_k v_k ∂_x j_k = 0
    even:   ε² ∂_t s_k + ε² (v_k ∂_x j_k − Σ_l w_l v_l ∂_x j_l) = −s_k
    odd:    ε² ∂_t j_k + v_k ∂_x (ρ + s_k) = −j_k

Every coefficient stays O(1) as ε → 0, where the equations become s = 0, j_k = −v_k ∂_x ρ and
∂_t ρ = Σ_k w_k v_k² ∂_xx ρ = ⅓ ∂_xx ρ: the scheme is asymptotic preserving, with no
upwinding anywhere (so no O(Δx/ε) numerical diffusion).

Space: staggered grid, ρ and s at the nx cell centres, j at the nx + 1 faces (boundaries
included); all derivatives are centred two-point differences (second order). The inflow
data enter at the boundary faces: f(0, v_k) = r + εj = 1 gives the boundary value
r = 1 − ε j_0,k, and f(1, −v_k) = r − εj = 0 gives r = ε j_nx,k; the face derivative of r then
uses that value and the adjacent centre, half a cell away. In the limit these become the
Dirichlet data ρ = 1 and ρ = 0; for ε > 0 the ε j terms carry the O(ε) boundary-layer shift.

Uncollided particles: the data are incompatible at the corner (t, x) = (0, 0) (f(0) = 0 but
f = 1 flows in), so the particles that have not collided yet,

    f_u = exp(−x/(εv)) for 0 < x < v t/ε (v > 0),   0 otherwise,

end in a front that runs in at speed v/ε and decays as exp(−t/ε²). For large ε (ε = 1:
amplitude e^{−1} at T = 1) its jump in x, at a different place for every v_k, would put jumps
of size O(w_k) in the discrete-ordinates ρ and ruin grid convergence. While the front is
still alive at the final time (T ≤ 4ε², amplitude ≥ e^{−4}) it is therefore split off
exactly (first-collision source): f = f_u + f_c, where the collided part f_c has zero
inflow and initial data and solves

    ε ∂_t f_c + v ∂_x f_c = (⟨f_c⟩ − f_c)/ε + ρ_u/ε,        ρ_u = ⟨f_u⟩ (exact integral in v),

and ρ = ⟨f_c⟩ + ρ_u. The source enters only the macro equation; with the cumulative
first-collision density P(t,x) = ε⁻² ∫₀ᵗ ρ_u ds, the unknown ρ̂ = ⟨f_c⟩ − P obeys the
source-free macro equation, so the source's mass is accounted for exactly and its fast time
scale ε² reaches the scheme only through ∂_x P in the odd equation. ρ_u and P have closed
forms in the exponential integral E₁ (:func:`_uncollided`). Averaging f_u exactly rather
than with the nv nodes means that the reported ρ approximates the velocity average of the
PDE, not of the discrete-ordinates model, whose ρ carries the O(w_k e^{−T/ε²}) jumps. The
split has a price: on the wall f_c jumps at v = 0 from 0 (inflow) to the outgoing collided
density, a bigger jump than that of f once collisions dominate, and the nv-node quadrature of
that jump is the main error within about 0.05ε of x = 0. Comparing nv = 30 with nv = 120 (see
docs/reference_solvers.md), the split is the more accurate choice for T/ε² ≲ 3 and the plain
scheme for T/ε² ≳ 5, hence the threshold 4. With ε² ≥ T/4 the layers of width ε are
resolved by any sensible grid.

Time: the semi-discrete system M y' = A y + b is linear with constant coefficients, so it is
integrated fully implicitly with BDF2 (one backward-Euler start step), with the two system
matrices factorised once. BDF2 is L-stable, so the step is not limited by ε: the stiff
relaxation is damped and the ε → 0 limit is the BDF2 step of the discrete heat equation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from scipy.special import exp1

__all__ = ["TransportSolution", "solve_transport", "diffusion_limit_rho", "velocity_quadrature"]


@dataclass(frozen=True)
class TransportSolution:
    """Discrete-ordinates solution of the diffusive-scaling transport problem.

    Attributes:
        eps: the Knudsen number ε.
        x: (nx,) cell centres in (0, 1), where ρ and f are given.
        v: (nv,) Gauss–Legendre velocity nodes in (−1, 1), ascending.
        weights: (nv,) quadrature weights for the average ⟨·⟩ = ½∫dv (they sum to 1).
        t: (n_save,) saved times.
        rho: (n_save, nx) density at the saved times and cell centres.
        f: (nx, nv) distribution at the final time, at the velocity nodes. When the
            uncollided part was split off, ρ averages that part exactly, so ρ differs from
            f @ weights by the nv-node quadrature error of the uncollided front.
        rho_boundary: (2,) density ⟨f⟩ at x = 0 and x = 1 at the final time.
    """

    eps: float
    x: np.ndarray
    v: np.ndarray
    weights: np.ndarray
    t: np.ndarray
    rho: np.ndarray
    f: np.ndarray
    rho_boundary: np.ndarray

    def rho_at(self, x_query: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """Density at the final time at arbitrary points of [0, 1], shape of ``x_query``.

        Piecewise-linear interpolation through the cell centres and the two boundary
        values (second order, like the scheme).
        """
        nodes = np.concatenate(([0.0], self.x, [1.0]))
        values = np.concatenate(([self.rho_boundary[0]], self.rho[-1], [self.rho_boundary[1]]))
        return np.interp(np.asarray(x_query, dtype=float), nodes, values)


def velocity_quadrature(nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes (nv,) on [−1, 1] and weights (nv,) for ⟨·⟩ = ½∫_{−1}^{1} · dv."""
    v, w = np.polynomial.legendre.leggauss(nv)
    return v, w / 2.0


def diffusion_limit_rho(
    t: float | np.ndarray, x: float | np.ndarray, n_terms: int = 200
) -> np.ndarray:
    """ε → 0 density, ρ(t,x) = (1 − x) − Σ_{n=1}^{n_terms} (2/(nπ)) sin(nπx) exp(−n²π²t/3).

    ``t`` and ``x`` broadcast against each other; the result has the broadcast shape.
    The truncation error is below exp(−n_terms² π² t/3); at t = 0 the series converges
    only slowly (the initial data are incompatible with the boundary value at x = 0).
    """
    t, x = np.broadcast_arrays(np.asarray(t, dtype=float), np.asarray(x, dtype=float))
    n = np.arange(1, n_terms + 1)
    k = n * np.pi
    terms = (2.0 / k) * np.sin(k * x[..., None]) * np.exp(-(k**2) * t[..., None] / 3.0)
    return (1.0 - x) - terms.sum(axis=-1)


def _assemble(
    eps: float, nx: int, vp: np.ndarray, wp: np.ndarray
) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Semi-discrete system M y' = A y + b on the staggered grid.

    Unknown layout, interleaved by position to keep the matrix banded: for each cell i the
    block [j_i,1..K, ρ_i, s_i,1..K] (j at the left face of cell i), then the last face's
    j_nx,1..K; K = nv/2 positive velocities. Returns (A, b, diag(M), index arrays).
    """
    K = vp.size
    dx = 1.0 / nx
    block = 2 * K + 1
    n = nx * block + K
    face = np.arange(nx + 1)[:, None] * block + np.arange(K)[None, :]  # (nx+1, K)
    rho = np.arange(nx) * block + K  # (nx,)
    s = rho[:, None] + 1 + np.arange(K)[None, :]  # (nx, K)

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []

    def add(r: np.ndarray, c: np.ndarray, val: np.ndarray | float) -> None:
        r, c, val = np.broadcast_arrays(r, c, np.asarray(val, dtype=float))
        rows.append(r.ravel())
        cols.append(c.ravel())
        vals.append(val.ravel())

    # macro: ρ_i' = −Σ_l w_l v_l (j_{i+1,l} − j_{i,l})/Δx
    add(rho[:, None], face[1:], -wp * vp / dx)
    add(rho[:, None], face[:-1], wp * vp / dx)

    # even: ε² s_ik' = −ε² [v_k (j_{i+1,k} − j_{i,k}) − Σ_l w_l v_l (j_{i+1,l} − j_{i,l})]/Δx − s_ik
    e2 = eps**2
    add(s, face[1:], -e2 * vp / dx)
    add(s, face[:-1], e2 * vp / dx)
    add(s[:, :, None], face[1:, None, :], e2 * wp * vp / dx)  # (nx, K, K): the mean flux
    add(s[:, :, None], face[:-1, None, :], -e2 * wp * vp / dx)
    add(s, s, -1.0)

    # odd, interior faces 1..nx−1: ε² j' = −v_k (r_i − r_{i−1})/Δx − j, with r = ρ + s
    jf = face[1:-1]
    for sign, cell in ((-1.0, slice(1, None)), (1.0, slice(None, -1))):
        add(jf, rho[cell, None], sign * vp / dx)
        add(jf, s[cell], sign * vp / dx)
    add(face, face, -1.0)

    # odd, boundary faces: half-cell differences to the boundary values of r,
    # r = 1 − ε j_0 at x = 0 and r = ε j_nx at x = 1 (the inflow conditions)
    h = 2.0 / dx
    add(face[0], rho[0], -vp * h)
    add(face[0], s[0], -vp * h)
    add(face[0], face[0], -eps * vp * h)
    add(face[-1], rho[-1], vp * h)
    add(face[-1], s[-1], vp * h)
    add(face[-1], face[-1], -eps * vp * h)
    b = np.zeros(n)
    b[face[0]] = vp * h

    A = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    mass = np.full(n, e2)
    mass[rho] = 1.0
    return A, b, mass, {"face": face, "rho": rho, "s": s}


def _uncollided(eps: float, t: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uncollided density ρ_u and cumulative first-collision density P at time t ≥ 0, x > 0.

    With a = x/ε, τ = t/ε² and v₁ = min(1, a/τ) (the slowest velocity that has reached x):

        ρ_u = ½ ∫_{v₁}^1 e^{−a/v} dv = ½ [G(1) − G(v₁)],     G(v) = v e^{−a/v} − a E₁(a/v),
        P = ε⁻² ∫₀ᵗ ρ_u ds = ½ ∫_{v₁}^1 e^{−a/v} (τ − a/v) dv
          = ½ [τ (G(1) − G(v₁)) − a (E₁(a) − E₁(a/v₁))].

    Returns two arrays of the shape of x.
    """
    a = x / eps
    v1 = np.ones_like(x) if t == 0 else np.minimum(1.0, eps * x / t)

    def G(v: np.ndarray | float) -> np.ndarray:
        return v * np.exp(-a / v) - a * exp1(a / v)

    dG = G(1.0) - G(v1)
    return 0.5 * dG, 0.5 * (t / eps**2 * dG - a * (exp1(a) - exp1(a / v1)))


def solve_transport(
    eps: float,
    t_final: float,
    nx: int = 200,
    nv: int = 30,
    dt: float | None = None,
    save_times: Sequence[float] | None = None,
    split_uncollided: bool | None = None,
) -> TransportSolution:
    """Solve ε ∂_t f + v ∂_x f = (ρ − f)/ε on [0, t_final] (see the module docstring).

    Args:
        eps: Knudsen number ε > 0; any value from 1 down to 1e-8 and below.
        t_final: final time T > 0.
        nx: number of cells on [0, 1] (ρ lives at the nx cell centres).
        nv: number of Gauss–Legendre velocity nodes; must be even.
        dt: time step; default Δx/2. It is then shrunk so that T is an integer number of
            steps. Stability does not depend on dt or ε (BDF2 is L-stable).
        save_times: times in [0, T] at which ρ is stored (default: [T]). Values between
            steps are linearly interpolated in time, an O(dt²) error like the scheme's.
        split_uncollided: split off the uncollided particles (module docstring); default:
            when T ≤ 4ε² and dt ≤ ε², i.e. when their front is still alive at T and is
            resolved in time. (Without the split, ρ at save times t with t/ε² ≲ 3 carries
            O(w_k e^{−t/ε²}) discrete-ordinates jumps.)

    Returns:
        TransportSolution with ρ of shape (len(save_times), nx) and f (nx, nv) at T.
    """
    if nv % 2:
        raise ValueError("nv must be even so that the velocity nodes pair up as ±v_k")
    if eps <= 0 or t_final <= 0:
        raise ValueError("eps and t_final must be positive")
    save = np.array([t_final] if save_times is None else save_times, dtype=float)
    if save.min() < 0 or save.max() > t_final * (1 + 1e-12):
        raise ValueError("save_times must lie in [0, t_final]")

    v, w = velocity_quadrature(nv)
    K = nv // 2
    vp, wp = v[K:], 2.0 * w[K:]  # positive nodes; ρ = Σ_k wp_k r_k with Σ wp = 1
    dx = 1.0 / nx
    n_steps = int(np.ceil(t_final / (0.5 * dx if dt is None else dt) - 1e-12))
    dt = t_final / n_steps
    if split_uncollided is None:
        split_uncollided = t_final <= 4.0 * eps**2 and dt <= eps**2
    split = split_uncollided
    xc = (np.arange(nx) + 0.5) * dx

    A, b, mass, idx = _assemble(eps, nx, vp, wp)
    rho_idx, s_idx, face_idx = idx["rho"], idx["s"], idx["face"]
    M = sp.diags(mass, format="csc")
    # Backward Euler start: (M − Δt A) y¹ = M y⁰ + Δt b(t₁);
    # BDF2: (3/2 M − Δt A) yⁿ⁺¹ = M (2 yⁿ − ½ yⁿ⁻¹) + Δt b(tⁿ⁺¹).
    lu_be = splu((M - dt * A).tocsc())
    lu_bdf2 = splu((1.5 * M - dt * A).tocsc())

    y = np.zeros(A.shape[0])  # f(0) = 0 (and f_c(0) = 0): ρ = s = j = 0
    if split:
        # the unknown is ρ̂ = ⟨f_c⟩ − P; the odd equation sees ⟨f_c⟩ = ρ̂ + P, and f_c has
        # zero inflow, so the inflow vector b is dropped
        A_rho = A[:, rho_idx]

        def forcing(t: float) -> np.ndarray:
            return A_rho @ _uncollided(eps, t, xc)[1]

        def density(y: np.ndarray, t: float) -> np.ndarray:
            rho_u, P = _uncollided(eps, t, xc)
            return y[rho_idx] + P + rho_u

    else:

        def forcing(t: float) -> np.ndarray:
            return b

        def density(y: np.ndarray, t: float) -> np.ndarray:
            return y[rho_idx]

    y_prev = y
    y = lu_be.solve(mass * y_prev + dt * forcing(dt))
    history = [density(y_prev, 0.0), density(y, dt)]
    for n in range(2, n_steps + 1):
        y, y_prev = lu_bdf2.solve(mass * (2.0 * y - 0.5 * y_prev) + dt * forcing(n * dt)), y
        history.append(density(y, n * dt))
    times = dt * np.arange(n_steps + 1)
    history = np.asarray(history)  # (n_steps + 1, nx)
    rho_saved = np.stack([np.interp(save, times, history[:, i]) for i in range(nx)], axis=1)

    # f at the final time: f(±v_k) = r_k ± ε j_k, with j averaged from the faces to the
    # centres, plus f_u = exp(−x/(εv)) on x < vT/ε for v > 0 when it was split off;
    # ⟨f⟩ at the walls from the boundary values of r
    j = y[face_idx]
    r = y[rho_idx][:, None] + y[s_idx]
    if split:
        r += _uncollided(eps, t_final, xc)[1][:, None]
        rho_boundary = np.array([0.5 - eps * wp @ j[0], eps * wp @ j[-1]])
        rho_boundary[1] += _uncollided(eps, t_final, np.array([1.0]))[0][0]
    else:
        rho_boundary = np.array([1.0 - eps * wp @ j[0], eps * wp @ j[-1]])
    j_c = 0.5 * (j[1:] + j[:-1])
    f = np.concatenate([(r - eps * j_c)[:, ::-1], r + eps * j_c], axis=1)
    if split:
        f[:, K:] += np.exp(-xc[:, None] / (eps * vp)) * (xc[:, None] < vp * t_final / eps)

    return TransportSolution(
        eps=float(eps),
        x=xc,
        v=v,
        weights=w,
        t=save,
        rho=rho_saved,
        f=f,
        rho_boundary=rho_boundary,
    )
