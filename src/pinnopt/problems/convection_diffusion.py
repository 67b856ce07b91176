"""Convection-dominated convection–diffusion in 1d, a benchmark of [FLUX] (docs/methods.md §6).

    α u_xx + v u_x = 0 on (0,1),   v = 1, α = 1e-6 by default,
    u* = e^{−vx/α} / (1 − e^{−v/α}) − 1/2,

so u*(0) = 1/(1 − e^{−v/α}) − 1/2 and u*(1) = 1/(e^{v/α} − 1) − 1/2, i.e. ±1/2 to round-off
for α = 1e-6: a boundary layer of width α/v at x = 0 (at x = 1 if v < 0). The exact solution
is evaluated in a form that cannot overflow (exp of a non-positive argument over expm1).

Standard form: one output ``u``, residual ``α u_xx + v u_x``.
First-order form, as in the authors' notebook: a scaled flux σ = −α u_x as second output
(σ* = v (u* + 1/2) stays O(1), while u_x reaches v/α),

    objective    v u_x − σ_x        (= α u_xx + v u_x when σ = −α u_x; role "pde")
    constraint   σ + α u_x = 0      (role "constraint")
    boundary     u = u* at x = 0, 1 (role "boundary").

Defaults follow the authors' notebook: a 1-20-20-20-20-m tanh net, 2048 equispaced
collocation points on [0,1] (``sampling="grid"``), the two end points, and the error on 128
equispaced points.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.geometry import Box, Sampler
from pinnopt.problems.base import Problem
from pinnopt.problems.forms import check_counts, check_formulation, fixed_points, grid
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives

NETS = {"4x20": (20, 20, 20, 20), "4x50": (50, 50, 50, 50)}
SAMPLING = ("grid", "uniform", "sobol")


def shifted_exact(x: jax.Array, alpha: float, v: float) -> jax.Array:
    """u* + 1/2 = e^{−sx} / (1 − e^{−s}), s = v/α, without overflow for any s ≠ 0."""
    s = v / alpha
    if s > 0:
        return jnp.exp(-s * x) / -jnp.expm1(-s)
    # Multiply through by e^{s} (< 1): e^{s(1−x)} / (e^{s} − 1).
    return jnp.exp(s * (1.0 - x)) / jnp.expm1(s)


def _interior(box: Box, sampling: str) -> Sampler:
    if sampling == "grid":
        return lambda key, n: jnp.linspace(box.lo[0], box.hi[0], n)[:, None]
    return box.interior(sampling)


def convection_diffusion(
    formulation: str = "standard",
    alpha: float = 1e-6,
    v: float = 1.0,
    n_interior: int = 2048,
    sampling: str = "grid",
    resample: bool = False,
) -> Problem:
    """α u_xx + v u_x = 0 on (0,1) with u* = e^{−vx/α}/(1 − e^{−v/α}) − 1/2."""
    check_formulation("convection_diffusion", formulation)
    check_counts("convection_diffusion", n_interior=n_interior)
    for name, value in (("alpha", alpha), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"convection_diffusion: {name} must be a finite number, got {value!r}")
    if alpha <= 0 or v == 0:
        raise ValueError(f"convection_diffusion: needs alpha > 0 and v != 0, got alpha={alpha}, v={v}")
    if sampling not in SAMPLING:
        raise ValueError(f"convection_diffusion: unknown sampling {sampling!r}; choose from {', '.join(SAMPLING)}")
    alpha, v = float(alpha), float(v)
    box = Box((0.0,), (1.0,))

    def exact(x):
        return shifted_exact(x[..., 0], alpha, v) - 0.5

    def exact_flux(x):
        # σ* = −α u*_x = α s (u* + 1/2) = v (u* + 1/2).
        return v * shifted_exact(x[..., 0], alpha, v)

    boundary = ResidualGroup(
        "boundary", fixed_points(np.array([[0.0], [1.0]])), 2,
        lambda x, u: u.value[0] - exact(x), role="boundary",
    )
    interior = _interior(box, sampling)
    if formulation == "standard":
        fields = ("u",)
        groups = (
            ResidualGroup(
                "interior", interior, n_interior,
                lambda x, u: alpha * u.second[0] + v * u.grad[0, 0],
                Derivatives.laplacian(1), role="pde",
            ),
            boundary,
        )

        def solution(x):
            return exact(x)[:, None]
    else:
        fields = ("u", "sigma")
        gradient = Derivatives.gradient(1)
        groups = (
            ResidualGroup(
                "interior", interior, n_interior,
                lambda x, u: v * u.grad[0, 0] - u.grad[0, 1],
                gradient, role="pde",
            ),
            ResidualGroup(
                "flux", interior, n_interior,
                lambda x, u: u.value[1] + alpha * u.grad[0, 0],
                gradient, role="constraint",
            ),
            boundary,
        )

        def solution(x):
            return jnp.stack([exact(x), exact_flux(x)], axis=1)

    return Problem(
        name="convection_diffusion",
        domain=box,
        coords=("x",),
        fields=fields,
        groups=groups,
        solution=solution,
        eval_sampler=grid(box, 128),
        n_eval=128,
        resample=resample and sampling != "grid",
        nets=NETS,
        default_net="4x20",
        description=f"{alpha:g} u_xx + {v:g} u_x = 0 on (0,1), boundary layer ({formulation})",
    )
