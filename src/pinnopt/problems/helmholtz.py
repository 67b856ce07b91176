"""Helmholtz equation on [−1,1]², a benchmark of [FLUX] (docs/methods.md §6).

    Δu + u = f  in [−1,1]²,   u = 0 on the boundary,
    u* = sin(πx) sin(4πy),   f = (1 − 17π²) u*.

Standard form: one output ``u``, residual ``Δu + u − f``.
First-order form: outputs ``(u, sx, sy)`` with σ = ∇u,

    objective    ∂x sx + ∂y sy + u − f          (role "pde")
    constraint   (sx − u_x, sy − u_y) = 0        (role "constraint")
    boundary     u = 0                           (role "boundary").

Defaults follow the authors' notebook: a 2-30-30-30-1 tanh net, 500 interior and 256
boundary points (64 per face) from scrambled Sobol sequences, kept fixed; the error is
measured on a 64×64 grid.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from pinnopt.geometry import Box
from pinnopt.problems.base import Problem
from pinnopt.problems.forms import check_counts, check_formulation, grid
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives

NETS = {"3x30": (30, 30, 30), "4x50": (50, 50, 50, 50)}
PI = math.pi


def exact(x):
    return jnp.sin(PI * x[..., 0]) * jnp.sin(4.0 * PI * x[..., 1])


def exact_flux(x):
    """σ* = ∇u*, shape ``(..., 2)``."""
    sx = PI * jnp.cos(PI * x[..., 0]) * jnp.sin(4.0 * PI * x[..., 1])
    sy = 4.0 * PI * jnp.sin(PI * x[..., 0]) * jnp.cos(4.0 * PI * x[..., 1])
    return jnp.stack([sx, sy], axis=-1)


def source(x):
    return (1.0 - 17.0 * PI**2) * exact(x)


def helmholtz(
    formulation: str = "standard",
    n_interior: int = 500,
    n_boundary: int = 256,
    sampling: str = "sobol",
    resample: bool = False,
) -> Problem:
    """Δu + u = f on [−1,1]² with u* = sin(πx) sin(4πy), in standard or first-order form."""
    check_formulation("helmholtz", formulation)
    check_counts("helmholtz", n_interior=n_interior, n_boundary=n_boundary)
    box = Box.cube(2, -1.0, 1.0)
    boundary = ResidualGroup(
        "boundary", box.boundary(method=sampling), n_boundary,
        lambda x, u: u.value[0] - exact(x), role="boundary",
    )
    if formulation == "standard":
        fields = ("u",)
        groups = (
            ResidualGroup(
                "interior", box.interior(sampling), n_interior,
                lambda x, u: u.second[0] + u.value[0] - source(x),
                Derivatives.laplacian(2), role="pde",
            ),
            boundary,
        )

        def solution(x):
            return exact(x)[:, None]
    else:
        fields = ("u", "sx", "sy")
        gradient = Derivatives.gradient(2)
        groups = (
            ResidualGroup(
                "interior", box.interior(sampling), n_interior,
                # grad[i, j] = ∂_i of output j.
                lambda x, u: u.grad[0, 1] + u.grad[1, 2] + u.value[0] - source(x),
                gradient, role="pde",
            ),
            ResidualGroup(
                "flux", box.interior(sampling), n_interior,
                lambda x, u: u.value[1:] - u.grad[:, 0],
                gradient, role="constraint",
            ),
            boundary,
        )

        def solution(x):
            return jnp.concatenate([exact(x)[:, None], exact_flux(x)], axis=1)

    return Problem(
        name="helmholtz",
        domain=box,
        coords=("x", "y"),
        fields=fields,
        groups=groups,
        solution=solution,
        eval_sampler=grid(box, 64),
        n_eval=64**2,
        resample=resample,
        nets=NETS,
        default_net="3x30",
        description=f"Δu + u = f on [-1,1]², u* = sin(πx) sin(4πy) ({formulation})",
    )
