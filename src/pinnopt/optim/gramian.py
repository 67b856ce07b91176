"""Gramian–vector products and flat views of the parameters (docs/methods.md §3–5).

With the stacked scaled residual ``r(θ) ∈ R^N`` (``L = ½‖r‖²``) and its Jacobian ``J``:

    G v = Jᵀ (J v)      (a JVP followed by a VJP; G is never formed)
    ∇L  = Jᵀ r
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.flatten_util import ravel_pytree

from pinnopt.nets import Params
from pinnopt.residuals import Batch, Objective


def flatten(params: Params) -> tuple[jax.Array, Callable[[jax.Array], Params]]:
    """Parameters as one vector, and the function that undoes it."""
    return ravel_pytree(params)


def gramian_vector_product(objective: Objective, params: Params, batch: Batch
                           ) -> Callable[[Params], Params]:
    """``v ↦ G v = Jᵀ J v`` at ``params`` (pytree in, pytree out), linearising once."""

    def residual(p):
        return objective.residual_vector(p, batch)

    _, jvp = jax.linearize(residual, params)
    _, vjp_fn = jax.vjp(residual, params)

    def gvp(v: Params) -> Params:
        return vjp_fn(jvp(v))[0]

    return gvp


def jacobian_matrix(objective: Objective, params: Params, batch: Batch) -> jax.Array:
    """The dense Jacobian ``J`` of the stacked scaled residual, ``(N, D)``."""
    flat, unravel = flatten(params)
    return jax.jacrev(lambda f: objective.residual_vector(unravel(f), batch))(flat)
