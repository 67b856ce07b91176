"""Heat conduction through a composite wall, a benchmark of [FLUX] (docs/methods.md §6).

    u_t = ∂x(k u_x) + f,   x ∈ [−1,1], t ∈ [0,2],   k = 1 (x < 0), 3π (x ≥ 0),
    u* = t sin(3πx) (x < 0),  t x (x ≥ 0).

The source follows from u* on each side: f = sin(3πx) + 9π² t sin(3πx) for x < 0 and f = x
for x ≥ 0. At the interface u* is continuous (0 on both sides) and so is the flux:
k u*_x = 3πt cos(0) = 3πt on the left, 3π · t on the right. u*_x itself jumps (3πt vs t),
which a smooth network can only approximate; the flux σ = −k u_x is continuous, which is
why the first-order form carries it as an output. Initial and boundary data come from u*
(u* = 0 at t = 0; u*(t,−1) = 0, u*(t,1) = t). Coordinates are ``(t, x)``.

Standard form: one output ``u``, residual u_t − k u_xx − f (k is constant on each side).
First-order form: outputs ``(u, sigma)`` with σ = −k u_x,

    objective    u_t + σ_x − f     (role "pde")
    constraint   σ + k u_x = 0     (role "constraint"),

and errors are reported for u and for the flux σ.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from pinnopt.geometry import Box
from pinnopt.problems.base import Problem
from pinnopt.problems.forms import check_counts, check_formulation
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives

NETS = {"4x50": (50, 50, 50, 50), "3x30": (30, 30, 30)}
PI = math.pi
K_RIGHT = 3.0 * PI


def conductivity(x):
    return jnp.where(x < 0.0, 1.0, K_RIGHT)


def exact(z):
    t, x = z[..., 0], z[..., 1]
    return jnp.where(x < 0.0, t * jnp.sin(3.0 * PI * x), t * x)


def exact_flux(z):
    """σ* = −k u*_x: −3πt cos(3πx) for x < 0, −3πt for x ≥ 0."""
    t, x = z[..., 0], z[..., 1]
    return jnp.where(x < 0.0, -3.0 * PI * t * jnp.cos(3.0 * PI * x), -K_RIGHT * t)


def source(z):
    t, x = z[..., 0], z[..., 1]
    left = jnp.sin(3.0 * PI * x) * (1.0 + 9.0 * PI**2 * t)
    return jnp.where(x < 0.0, left, x)


def composite_heat(
    formulation: str = "standard",
    n_interior: int = 2000,
    n_boundary: int = 200,
    n_initial: int = 200,
    sampling: str = "sobol",
    resample: bool = False,
) -> Problem:
    """u_t = ∂x(k u_x) + f on [0,2] × [−1,1] with k = 1 | 3π and a piecewise exact solution."""
    check_formulation("composite_heat", formulation)
    check_counts("composite_heat", n_interior=n_interior, n_boundary=n_boundary, n_initial=n_initial)
    box = Box((0.0, -1.0), (2.0, 1.0))
    data = (
        ResidualGroup(
            "boundary", box.boundary(coords=(1,), method=sampling), n_boundary,
            lambda z, u: u.value[0] - exact(z), role="boundary",
        ),
        ResidualGroup(
            "initial", box.slice(0, 0.0, method=sampling), n_initial,
            lambda z, u: u.value[0] - exact(z), role="initial",
        ),
    )
    if formulation == "standard":
        fields = ("u",)
        pde = (
            ResidualGroup(
                "interior", box.interior(sampling), n_interior,
                lambda z, u: u.grad[0, 0] - conductivity(z[1]) * u.second[0] - source(z),
                Derivatives.laplacian(2, coords=(1,)), role="pde",
            ),
        )

        def solution(z):
            return exact(z)[:, None]
    else:
        fields = ("u", "sigma")
        gradient = Derivatives.gradient(2)
        pde = (
            ResidualGroup(
                "interior", box.interior(sampling), n_interior,
                lambda z, u: u.grad[0, 0] + u.grad[1, 1] - source(z),
                gradient, role="pde",
            ),
            ResidualGroup(
                "flux", box.interior(sampling), n_interior,
                lambda z, u: u.value[1] + conductivity(z[1]) * u.grad[1, 0],
                gradient, role="constraint",
            ),
        )

        def solution(z):
            return jnp.stack([exact(z), exact_flux(z)], axis=1)

    return Problem(
        name="composite_heat",
        domain=box,
        coords=("t", "x"),
        fields=fields,
        groups=pde + data,
        solution=solution,
        resample=resample,
        nets=NETS,
        default_net="4x50",
        description=f"u_t = (k u_x)_x + f, k = 1 | 3π, composite wall ({formulation})",
    )
