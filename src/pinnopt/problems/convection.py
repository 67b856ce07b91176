"""Periodic convection, the failure case of Krishnapriyan et al. (NeurIPS 2021) used by [FLUX]
(docs/methods.md §6).

    u_t + β u_x = 0,   t ∈ [0,1],  x ∈ [0,2π] periodic,   u(0,x) = sin x,
    u* = sin(x − βt),   β = 40 by default.

The equation is first order already, so there is one formulation. Groups: ``interior``
(role "pde"), ``initial`` (u − sin x at t = 0) and ``periodic``, the paired residual
u(t,0) − u(t,2π) (role "boundary"), which is not pointwise: :class:`PeriodicPairs` evaluates
the network at both ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from pinnopt.geometry import Box
from pinnopt.nets import MLP, Params
from pinnopt.problems.base import Problem
from pinnopt.problems.forms import check_counts
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives, Jet

NETS = {"4x50": (50, 50, 50, 50), "3x30": (30, 30, 30)}
TWO_PI = 2.0 * math.pi


def _not_pointwise(x: jax.Array, u: Jet) -> jax.Array:
    raise NotImplementedError(
        "a periodic pair residual needs the network at both ends; call group.residual(...)"
    )


@dataclass(frozen=True)
class PeriodicPairs(ResidualGroup):
    """Residual ``u(x) − u(x + period·e_coord)`` of every network output, at points ``x`` on
    the face ``x_coord = lo`` drawn by ``sampler``.

    The residual couples two points, so ``fn`` is not used: methods that need per-point
    residual functions (KFAC) cannot treat this group; everything built on
    :meth:`residual` (the loss, Gauss–Newton, constrained methods) can.
    """

    fn: object = _not_pointwise
    coord: int = 1
    period: float = TWO_PI

    def residual(self, net: MLP, params: Params, x: jax.Array) -> jax.Array:
        shift = jnp.zeros(x.shape[1], x.dtype).at[self.coord].set(self.period)
        return net.apply(params, x) - net.apply(params, x + shift)


def convection(
    beta: float = 40.0,
    n_interior: int = 2000,
    n_initial: int = 256,
    n_periodic: int = 256,
    sampling: str = "sobol",
    resample: bool = False,
) -> Problem:
    """u_t + β u_x = 0 on [0,1] × [0,2π) periodic, u(0,x) = sin x."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"convection: beta must be a finite number, got {beta!r}")
    check_counts("convection", n_interior=n_interior, n_initial=n_initial, n_periodic=n_periodic)
    beta = float(beta)
    box = Box((0.0, 0.0), (1.0, TWO_PI))

    def exact(z):
        return jnp.sin(z[..., 1] - beta * z[..., 0])

    groups = (
        ResidualGroup(
            "interior", box.interior(sampling), n_interior,
            lambda z, u: u.grad[0, 0] + beta * u.grad[1, 0],
            Derivatives.gradient(2), role="pde",
        ),
        ResidualGroup(
            "initial", box.slice(0, 0.0, method=sampling), n_initial,
            lambda z, u: u.value[0] - jnp.sin(z[1]), role="initial",
        ),
        PeriodicPairs(
            "periodic", box.slice(1, 0.0, method=sampling), n_periodic, role="boundary",
        ),
    )
    return Problem(
        name="convection",
        domain=box,
        coords=("t", "x"),
        fields=("u",),
        groups=groups,
        solution=lambda z: exact(z)[:, None],
        resample=resample,
        nets=NETS,
        default_net="4x50",
        description=f"u_t + {beta:g} u_x = 0, x periodic on [0,2π], u0 = sin x",
    )
