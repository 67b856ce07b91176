"""Taylor-mode ("forward Laplacian") pass of an MLP: value, directional derivatives and a
weighted sum of second directional derivatives in one forward sweep (METHODS.md §2).

The pass propagates, per point, a stack of ``S`` slots through every layer:

    slot 0         value               z
    slots 1..k     directional derivs  ∂_{v_i} z  (one per direction v_i)
    slot k+1       second-order term   Σ_i c_i ∂²_{v_i} z   (only if requested)

A linear layer acts on every slot with the same weights (the bias only on the value slot);
an elementwise σ maps the slots by the chain rule

    z ← σ(z),   ∂_i z ← σ'(z) ∂_i z,   L ← σ'(z) L + σ''(z) Σ_i c_i (∂_i z)².

With ``v_i = e_i`` and ``c_i = 1`` the last slot is the Laplacian; ``c = (0, 1, ..., 1)`` with time
first gives the spatial Laplacian of the heat equation; ``c_i = ±1`` a wave operator.
Because every slot passes through the same weights, each linear layer is a weight-shared
layer with ``S`` inputs per point: the pass returns those stacked inputs, and accepts additive
"taps" on the stacked outputs whose gradient is the backpropagated output error per slot.
That is exactly what KFAC for PINNs (METHODS.md §4) consumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.nets import MLP, Params


@dataclass(frozen=True)
class Derivatives:
    """Which derivatives a residual needs.

    ``directions``: ``k`` input directions (rows), giving ``∂_{v_i} u``.
    ``second``: weights ``c_i`` of the second-order term ``Σ_i c_i ∂²_{v_i} u``, or ``None``
    when the residual is first order. Kept as tuples so that the object is hashable.
    """

    directions: tuple[tuple[float, ...], ...] = ()
    second: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.second is not None and len(self.second) != len(self.directions):
            raise ValueError("one second-order weight per direction is needed")

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    @property
    def num_slots(self) -> int:
        """Slots per point: value, one per direction, and the second-order term if any."""
        return 1 + self.num_directions + (self.second is not None)

    @staticmethod
    def value() -> "Derivatives":
        return Derivatives()

    @staticmethod
    def gradient(dim: int) -> "Derivatives":
        return Derivatives(directions=_eye(dim))

    @staticmethod
    def laplacian(dim: int, coords: Sequence[int] | None = None) -> "Derivatives":
        """Gradient in every coordinate and the Laplacian over ``coords`` (default: all)."""
        coords = range(dim) if coords is None else coords
        weights = tuple(1.0 if i in set(coords) else 0.0 for i in range(dim))
        return Derivatives(directions=_eye(dim), second=weights)

    @staticmethod
    def weighted(dim: int, weights: Sequence[float]) -> "Derivatives":
        """Gradient in every coordinate and ``Σ_i weights[i] ∂²_i u``."""
        return Derivatives(directions=_eye(dim), second=tuple(float(w) for w in weights))


def _eye(dim: int) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(1.0 if i == j else 0.0 for j in range(dim)) for i in range(dim))


class Jet(NamedTuple):
    """Network outputs and their derivatives.

    Batched: ``value (N, m)``, ``grad (N, k, m)``, ``second (N, m)``; for one point the
    leading ``N`` is absent. ``grad`` has ``k = 0`` columns and ``second`` is ``None`` when
    not requested.
    """

    value: jax.Array
    grad: jax.Array
    second: jax.Array | None


def jet(
    net: MLP,
    params: Params,
    x: jax.Array,
    derivs: Derivatives,
    taps: Sequence[jax.Array] | None = None,
) -> tuple[Jet, list[jax.Array]]:
    """One Taylor-mode forward pass at points ``x (N, d)``.

    Returns the :class:`Jet` and, per linear layer, its stacked inputs ``(N, S, fan_in)``
    (slot order as in the module docstring; the bias input, 1 for the value slot and 0 for
    the others, is not included). ``taps``, if given, is one array ``(N, S, fan_out)`` per
    layer added to that layer's stacked outputs; differentiating a function of the result
    with respect to the taps at zero gives the per-slot output gradients.
    """
    n, d = x.shape
    if d != net.in_dim:
        raise ValueError(f"points have {d} coordinates, the net takes {net.in_dim}")
    k = derivs.num_directions
    has_second = derivs.second is not None
    # The slots are carried as separate arrays (value (N, h), directional (N, k, h), second
    # (N, h)) rather than one stacked array: that avoids a concatenation and a scatter per
    # layer in the forward and backward pass. Stacked views are built only for the layer
    # inputs, and vanish under jit when unused.
    value = x
    grad = jnp.broadcast_to(jnp.asarray(np.asarray(derivs.directions), x.dtype), (n, k, d)) if k else None
    second = jnp.zeros((n, d), x.dtype) if has_second else None
    weights = jnp.asarray(derivs.second, dtype=x.dtype) if has_second else None

    act = net.act
    layer_inputs = []
    last = len(params) - 1
    for i, layer in enumerate(params):
        layer_inputs.append(_stack(value, grad, second))
        w = layer["W"]
        value = value @ w.T + layer["b"]
        if k:
            grad = grad @ w.T
        if has_second:
            second = second @ w.T
        if taps is not None:
            value = value + taps[i][:, 0]
            if k:
                grad = grad + taps[i][:, 1 : 1 + k]
            if has_second:
                second = second + taps[i][:, -1]
        if i == last:
            break
        s1 = act.df(value)
        if has_second:
            curvature = jnp.einsum("k,nkh->nh", weights, grad**2)
            second = s1 * second + act.d2f(value) * curvature
        if k:
            grad = s1[:, None, :] * grad
        value = act.f(value)

    out = Jet(
        value=value,
        grad=grad if k else jnp.zeros((n, 0, value.shape[-1]), x.dtype),
        second=second,
    )
    return out, layer_inputs


def _stack(value, grad, second) -> jax.Array:
    """Slots stacked as ``(N, S, width)``."""
    parts = [value[:, None]]
    if grad is not None:
        parts.append(grad)
    if second is not None:
        parts.append(second[:, None])
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def tap_shapes(net: MLP, n: int, derivs: Derivatives) -> list[tuple[int, int, int]]:
    """Shapes of the taps :func:`jet` accepts for ``n`` points."""
    return [(n, derivs.num_slots, fan_out) for fan_out in net.sizes[1:]]
