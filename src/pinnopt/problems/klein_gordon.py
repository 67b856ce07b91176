"""Nonlinear Klein–Gordon equation, a benchmark of [FLUX] (docs/methods.md §6).

    u_tt − u_xx + u³ = f,   (t, x) ∈ [0,1]²,   u* = x cos(5πt) + (xt)³,

with initial u and u_t and boundary values (x = 0, 1) from u*. Coordinates are ``(t, x)``
(time first); u_tt − u_xx is the second-order term Σ c_i ∂²_i u with c = (1, −1).

Standard form: one output ``u``; groups ``interior`` (u_tt − u_xx + u³ − f), ``initial``
(u − u*, u_t − u*_t at t = 0) and ``boundary``.
First-order form: outputs ``(u, p, q)`` with p = u_t, q = u_x,

    objective    p_t − q_x + u³ − f                (role "pde")
    constraint   (p − u_t, q − u_x) = 0            (role "constraint")
    initial      (u − u*, p − u*_t) at t = 0       (role "initial")
    boundary     u − u* at x = 0, 1                (role "boundary").
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
OMEGA = 5.0 * math.pi


def exact(z):
    t, x = z[..., 0], z[..., 1]
    return x * jnp.cos(OMEGA * t) + (x * t) ** 3


def exact_derivatives(z):
    """(u*_t, u*_x), shape ``(..., 2)``."""
    t, x = z[..., 0], z[..., 1]
    u_t = -OMEGA * x * jnp.sin(OMEGA * t) + 3.0 * x**3 * t**2
    u_x = jnp.cos(OMEGA * t) + 3.0 * x**2 * t**3
    return jnp.stack([u_t, u_x], axis=-1)


def source(z):
    t, x = z[..., 0], z[..., 1]
    u_tt = -(OMEGA**2) * x * jnp.cos(OMEGA * t) + 6.0 * x**3 * t
    u_xx = 6.0 * x * t**3
    return u_tt - u_xx + exact(z) ** 3


def klein_gordon(
    formulation: str = "standard",
    n_interior: int = 2000,
    n_boundary: int = 200,
    n_initial: int = 200,
    sampling: str = "sobol",
    resample: bool = False,
) -> Problem:
    """u_tt − u_xx + u³ = f on [0,1]² with u* = x cos(5πt) + (xt)³."""
    check_formulation("klein_gordon", formulation)
    check_counts("klein_gordon", n_interior=n_interior, n_boundary=n_boundary, n_initial=n_initial)
    box = Box.cube(2)
    gradient = Derivatives.gradient(2)
    boundary = ResidualGroup(
        "boundary", box.boundary(coords=(1,), method=sampling), n_boundary,
        lambda z, u: u.value[0] - exact(z), role="boundary",
    )
    initial_points = box.slice(0, 0.0, method=sampling)
    if formulation == "standard":
        fields = ("u",)
        groups = (
            ResidualGroup(
                "interior", box.interior(sampling), n_interior,
                lambda z, u: u.second[0] + u.value[0] ** 3 - source(z),
                Derivatives.weighted(2, (1.0, -1.0)), role="pde",
            ),
            ResidualGroup(
                "initial", initial_points, n_initial,
                lambda z, u: jnp.stack([u.value[0] - exact(z),
                                        u.grad[0, 0] - exact_derivatives(z)[0]]),
                gradient, role="initial",
            ),
            boundary,
        )

        def solution(z):
            return exact(z)[:, None]
    else:
        fields = ("u", "p", "q")
        groups = (
            ResidualGroup(
                "interior", box.interior(sampling), n_interior,
                lambda z, u: u.grad[0, 1] - u.grad[1, 2] + u.value[0] ** 3 - source(z),
                gradient, role="pde",
            ),
            ResidualGroup(
                "derivatives", box.interior(sampling), n_interior,
                lambda z, u: u.value[1:] - u.grad[:, 0],
                gradient, role="constraint",
            ),
            ResidualGroup(
                "initial", initial_points, n_initial,
                lambda z, u: jnp.stack([u.value[0] - exact(z),
                                        u.value[1] - exact_derivatives(z)[0]]),
                role="initial",
            ),
            boundary,
        )

        def solution(z):
            return jnp.concatenate([exact(z)[:, None], exact_derivatives(z)], axis=1)

    return Problem(
        name="klein_gordon",
        domain=box,
        coords=("t", "x"),
        fields=fields,
        groups=groups,
        solution=solution,
        resample=resample,
        nets=NETS,
        default_net="4x50",
        description=f"u_tt - u_xx + u³ = f on [0,1]², u* = x cos(5πt) + (xt)³ ({formulation})",
    )
