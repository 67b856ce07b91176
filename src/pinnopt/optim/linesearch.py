"""The grid line search of [ENGD] and [KFAC] (docs/methods.md §3).

    α = argmin over {2^-k : k = 0..K} of L(θ + α Δ)  on the current batch,
    α = 0 when no candidate decreases the loss.

The candidates are evaluated one after another inside the compiled step (``jax.lax.map``):
on a CPU this measured 3-5x faster per step than one ``vmap`` over all candidates, whose
batched forward pass is 31 times larger than the step's own and spills out of cache.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pinnopt.nets import Params


def grid_line_search(
    loss_fn: Callable[[Params], jax.Array],
    params: Params,
    direction: Params,
    loss0: jax.Array,
    num_candidates: int = 31,
) -> tuple[jax.Array, jax.Array]:
    """Best step ``α`` among ``2^-k, k < num_candidates`` and the loss there.

    Returns ``(α, L(θ + αΔ))``; ``(0, loss0)`` when no candidate is below ``loss0``
    (non-finite candidate losses count as no decrease).
    """
    alphas = 2.0 ** -jnp.arange(num_candidates, dtype=loss0.dtype)

    def trial(alpha):
        return loss_fn(jax.tree_util.tree_map(lambda p, d: p + alpha * d, params, direction))

    losses = jax.lax.map(trial, alphas)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    best = jnp.argmin(losses)
    improved = losses[best] < loss0
    alpha = jnp.where(improved, alphas[best], 0.0)
    return alpha, jnp.where(improved, losses[best], loss0)


def apply_step(params: Params, direction: Params, alpha: jax.Array) -> Params:
    return jax.tree_util.tree_map(lambda p, d: p + alpha * d, params, direction)
