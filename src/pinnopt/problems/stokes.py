"""Stokes flow with a manufactured solution, a benchmark of [FLUX] (docs/methods.md §6).

    −Δ(u, v) + ∇p = f,   u_x + v_y = 0   in [0,1]²,   (u, v) = (u*, v*) on the boundary,
    u* = x²(1−x)²(4y³−6y²+2y),  v* = −y²(1−y)²(4x³−6x²+2x),  p* = x² − y².

f = −Δ(u*, v*) + ∇p* is computed from the exact solution by automatic differentiation (no
algebra to get wrong). The pressure is fixed by p = p* on the top wall, as in the authors'
notebook (otherwise only its gradient is determined).

Standard form: outputs ``(u, v, p)``; groups ``momentum`` (−Δu + p_x − f₁, −Δv + p_y − f₂)
and ``continuity`` (u_x + v_y), both role "pde".
Velocity–vorticity–pressure (first-order) form: outputs ``(u, v, omega, p)`` with
ω = v_x − u_y; for a divergence-free velocity −Δ(u, v) = (ω_y, −ω_x), so

    objective    (ω_y + p_x − f₁, −ω_x + p_y − f₂)     (role "pde")
    constraints  u_x + v_y = 0,  ω − (v_x − u_y) = 0    (role "constraint"),

plus the velocity boundary condition and the pressure on the top wall (role "boundary").
Errors are per field and for the velocity (u, v) together, the metric of the benchmark.
Defaults follow the authors' notebook: a 2-50-50-50-50-m tanh net, 2048 interior points and
512 per wall from scrambled Sobol sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pinnopt.geometry import Box
from pinnopt.problems.base import Problem
from pinnopt.problems.forms import check_counts, check_formulation
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives

NETS = {"4x50": (50, 50, 50, 50), "3x30": (30, 30, 30)}


def velocity(z):
    """(u*, v*) at one point ``z = (x, y)``."""
    x, y = z[..., 0], z[..., 1]
    u = x**2 * (1 - x) ** 2 * (4 * y**3 - 6 * y**2 + 2 * y)
    v = -(y**2) * (1 - y) ** 2 * (4 * x**3 - 6 * x**2 + 2 * x)
    return jnp.stack([u, v], axis=-1)


def pressure(z):
    return z[..., 0] ** 2 - z[..., 1] ** 2


def vorticity(z):
    """ω* = v*_x − u*_y (the tests check it against autodiff of the velocity)."""
    x, y = z[..., 0], z[..., 1]
    v_x = -(y**2) * (1 - y) ** 2 * (12 * x**2 - 12 * x + 2)
    u_y = x**2 * (1 - x) ** 2 * (12 * y**2 - 12 * y + 2)
    return v_x - u_y


def source(z):
    """f = −Δ(u*, v*) + ∇p* at one point, shape ``(2,)``."""
    laplacian = jnp.trace(jax.hessian(velocity)(z), axis1=1, axis2=2)
    return -laplacian + jax.grad(pressure)(z)


def exact_fields(z, with_vorticity: bool):
    """The exact fields at points ``z (N, 2)`` in the order of the formulation's outputs."""
    uv = velocity(z)
    p = pressure(z)[:, None]
    if not with_vorticity:
        return jnp.concatenate([uv, p], axis=1)
    return jnp.concatenate([uv, vorticity(z)[:, None], p], axis=1)


def stokes(
    formulation: str = "standard",
    n_interior: int = 2048,
    n_boundary: int = 2048,
    n_pressure: int = 512,
    sampling: str = "sobol",
    resample: bool = False,
) -> Problem:
    """Stokes flow in the unit square with u* = x²(1−x)²(4y³−6y²+2y), ..., p* = x² − y²."""
    check_formulation("stokes", formulation)
    check_counts("stokes", n_interior=n_interior, n_boundary=n_boundary, n_pressure=n_pressure)
    box = Box.cube(2)
    p_index = 2 if formulation == "standard" else 3
    walls = (
        ResidualGroup(
            "boundary", box.boundary(method=sampling), n_boundary,
            lambda z, u: u.value[:2] - velocity(z), role="boundary",
        ),
        ResidualGroup(
            "pressure", box.slice(1, 1.0, method=sampling), n_pressure,
            lambda z, u: u.value[p_index] - pressure(z), role="boundary",
        ),
    )
    if formulation == "standard":
        fields = ("u", "v", "p")
        laplacian = Derivatives.laplacian(2)
        groups = (
            ResidualGroup(
                "momentum", box.interior(sampling), n_interior,
                lambda z, u: -u.second[:2] + u.grad[:, 2] - source(z),
                laplacian, role="pde",
            ),
            ResidualGroup(
                "continuity", box.interior(sampling), n_interior,
                lambda z, u: u.grad[0, 0] + u.grad[1, 1],
                Derivatives.gradient(2), role="pde",
            ),
        )
    else:
        fields = ("u", "v", "omega", "p")
        gradient = Derivatives.gradient(2)

        def momentum(z, u):
            w_x, w_y = u.grad[0, 2], u.grad[1, 2]
            p_x, p_y = u.grad[0, 3], u.grad[1, 3]
            return jnp.stack([w_y + p_x, -w_x + p_y]) - source(z)

        groups = (
            ResidualGroup("momentum", box.interior(sampling), n_interior, momentum,
                          gradient, role="pde"),
            ResidualGroup(
                "continuity", box.interior(sampling), n_interior,
                lambda z, u: u.grad[0, 0] + u.grad[1, 1],
                gradient, role="constraint",
            ),
            ResidualGroup(
                "vorticity", box.interior(sampling), n_interior,
                lambda z, u: u.value[2] - (u.grad[0, 1] - u.grad[1, 0]),
                gradient, role="constraint",
            ),
        )
    with_vorticity = formulation != "standard"
    return Problem(
        name="stokes",
        domain=box,
        coords=("x", "y"),
        fields=fields,
        groups=groups + walls,
        solution=lambda z: exact_fields(z, with_vorticity),
        resample=resample,
        nets=NETS,
        default_net="4x50",
        description=f"Stokes flow in [0,1]², manufactured solution ({formulation})",
        error_groups={"velocity": ("u", "v")},
    )
