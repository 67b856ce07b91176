"""Taylor-mode ("forward Laplacian") pass of an MLP: value, directional derivatives and a
weighted sum of second directional derivatives in one forward sweep (docs/methods.md §2).

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
That is exactly what KFAC for PINNs (docs/methods.md §4) consumes.

The pass starts from the jet of its inputs: for an MLP on the raw points that is the identity
(:func:`coordinates`: value x, directional derivatives v_i, second-order term 0), but it can be
the jet of any input map. With the jets of elementwise functions (:func:`elementwise`),
products (:func:`product`) and linear maps (:func:`linear`), models built from several MLPs
(input encodings, positivity maps, velocity averages) get their derivatives from the same
pass, slot by slot, with no second derivative system.

FiLM conditioning (:func:`modulate`): every hidden layer's pre-activation may be scaled and
shifted per point, z ← γ ⊙ z + β, by quantities computed elsewhere (the kinetic models' ε
conditioning network). Where γ and β do not depend on the differentiated coordinates they are
per-point constants: the value slot gets γ z + β and every other slot γ times itself; where
they do, their jets enter by the product rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

LayerParams = Sequence[dict[str, jax.Array]]
"""One ``{"W": (out, in), "b": (out,)}`` per linear layer (:data:`pinnopt.nets.Params`)."""


class Activation(NamedTuple):
    """An elementwise nonlinearity with its first two derivatives (all ``z -> same shape``):
    what the pass needs of every activation, and :func:`elementwise` of any map."""

    f: Callable[[jax.Array], jax.Array]
    df: Callable[[jax.Array], jax.Array]
    d2f: Callable[[jax.Array], jax.Array]


class Network(Protocol):
    """What the pass needs of a network (:class:`pinnopt.nets.MLP`): its layer sizes
    ``(in_dim, ..., out_dim)`` and the activation between layers."""

    @property
    def sizes(self) -> tuple[int, ...]: ...

    @property
    def in_dim(self) -> int: ...

    @property
    def act(self) -> Activation: ...


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
    """Outputs and their derivatives along the ``k`` directions of a :class:`Derivatives`.

    Batched: ``value (N, m)``, ``grad (N, k, m)`` (``∂_{v_i}`` of every output), ``second
    (N, m)`` (``Σ_i c_i ∂²_{v_i}``); for one point the leading ``N`` is absent. ``grad`` has
    ``k = 0`` rows when no direction is requested and ``second`` is ``None`` when the
    second-order term is not. A jet is a pytree: :func:`linear` maps every slot at once.
    """

    value: jax.Array
    grad: jax.Array
    second: jax.Array | None


def coordinates(x: jax.Array, derivs: Derivatives) -> Jet:
    """The jet of the identity at points ``x (N, d)``: value ``x``, ``grad`` the directions
    ``(N, k, d)``, ``second`` zero (``None`` unless requested)."""
    n, d = x.shape
    if any(len(v) != d for v in derivs.directions):
        raise ValueError(
            f"every direction needs the points' {d} coordinates, got {derivs.directions}")
    directions = jnp.asarray(np.asarray(derivs.directions, dtype=float).reshape(-1, d), x.dtype)
    second = jnp.zeros((n, d), x.dtype) if derivs.second is not None else None
    return Jet(x, jnp.broadcast_to(directions, (n, derivs.num_directions, d)), second)


def constant(value: jax.Array, derivs: Derivatives) -> Jet:
    """The jet of a quantity ``(N, m)`` that does not depend on the coordinates."""
    n, m = value.shape
    second = jnp.zeros_like(value) if derivs.second is not None else None
    return Jet(value, jnp.zeros((n, derivs.num_directions, m), value.dtype), second)


def _weights(derivs: Derivatives, dtype) -> jax.Array:
    return jnp.asarray(derivs.second, dtype=dtype)


def elementwise(u: Jet, fn: Activation, derivs: Derivatives) -> Jet:
    """The jet of ``σ(u)`` for an elementwise ``σ`` with derivatives ``fn = (σ, σ', σ'')``:

        σ(u),   σ'(u) ∂_i u,   σ'(u) Σ_i c_i ∂²_i u + σ''(u) Σ_i c_i (∂_i u)².
    """
    slope = fn.df(u.value)
    second = None
    if u.second is not None:
        curvature = jnp.einsum("k,...kh->...h", _weights(derivs, u.value.dtype), u.grad**2)
        second = slope * u.second + fn.d2f(u.value) * curvature
    return Jet(fn.f(u.value), slope[..., None, :] * u.grad, second)


def product(a: Jet, b: Jet, derivs: Derivatives) -> Jet:
    """The jet of the elementwise product ``a·b`` (broadcast over outputs):

        ∂_i(ab) = ∂_i a b + a ∂_i b,   Σ_i c_i ∂²_i(ab) = L_a b + 2 Σ_i c_i ∂_i a ∂_i b + a L_b.
    """
    grad = a.grad * b.value[..., None, :] + a.value[..., None, :] * b.grad
    second = None
    if derivs.second is not None:
        cross = jnp.einsum("k,...kh->...h", _weights(derivs, a.value.dtype), a.grad * b.grad)
        second = a.second * b.value + 2.0 * cross + a.value * b.second
    return Jet(a.value * b.value, grad, second)


def linear(fn: Callable[..., jax.Array], *jets: Jet) -> Jet:
    """The jet of ``fn(*jets)`` for ``fn`` linear in its arguments (sums, differences,
    contractions, selections of outputs): ``fn`` applied slot by slot. ``fn`` acts on the
    last (output) axis and broadcasts over the leading ones (``(N,)`` or ``(N, k)``)."""
    return jax.tree_util.tree_map(fn, *jets)


def concatenate(jets: Sequence[Jet]) -> Jet:
    """Jets side by side: the outputs of all ``jets`` in order."""
    return linear(lambda *a: jnp.concatenate(a, axis=-1), *jets)


Modulation = tuple[jax.Array | Jet, jax.Array | Jet]
"""FiLM ``(scale, shift)`` of one hidden layer, ``(N, width)`` each: plain arrays for
per-point constants, or jets along the pass's directions (:func:`modulate`)."""


def modulate(u: Jet, scale: jax.Array | Jet, shift: jax.Array | Jet, derivs: Derivatives) -> Jet:
    """The jet of ``scale ⊙ u + shift`` (FiLM). Arrays are per-point constants:

        γ u + β,   γ ∂_i u,   γ Σ_i c_i ∂²_i u;

    jets (quantities that vary along the directions) go through :func:`product`."""
    if isinstance(scale, Jet):
        scaled = product(scale, u, derivs)
    else:
        scaled = Jet(scale * u.value, scale[..., None, :] * u.grad,
                     None if u.second is None else scale * u.second)
    if isinstance(shift, Jet):
        return linear(jnp.add, scaled, shift)
    return scaled._replace(value=scaled.value + shift)


def propagate(
    net: Network,
    params: LayerParams,
    inputs: Jet,
    derivs: Derivatives,
    taps: Sequence[jax.Array] | None = None,
    film: Sequence[Modulation] | None = None,
) -> tuple[Jet, list[jax.Array]]:
    """The Taylor-mode pass of ``net`` from the jet of its inputs, ``inputs.value (N, in_dim)``.

    Returns the output :class:`Jet` and, per linear layer, its stacked inputs ``(N, S,
    fan_in)`` (slot order as in the module docstring; the bias input, 1 for the value slot and
    0 for the others, is not included). ``taps``, if given, is one array ``(N, S, fan_out)``
    per layer added to that layer's stacked outputs; differentiating a function of the result
    with respect to the taps at zero gives the per-slot output gradients. ``film``, if given,
    is one ``(scale, shift)`` per hidden layer: that layer's pre-activation z = W h + b becomes
    scale ⊙ z + shift before the activation (:func:`modulate`).
    """
    if film is not None and len(film) != len(params) - 1:
        raise ValueError(f"film needs one (scale, shift) per hidden layer ({len(params) - 1}), "
                         f"got {len(film)}")
    if inputs.value.shape[-1] != net.in_dim:
        raise ValueError(
            f"points have {inputs.value.shape[-1]} coordinates, the net takes {net.in_dim}")
    k = derivs.num_directions
    # The slots are carried as separate arrays (value (N, h), directional (N, k, h), second
    # (N, h)) rather than one stacked array: that avoids a concatenation and a scatter per
    # layer in the forward and backward pass. Stacked views are built only for the layer
    # inputs, and vanish under jit when unused.
    out = inputs
    layer_inputs = []
    last = len(params) - 1
    for i, layer in enumerate(params):
        layer_inputs.append(_stack(out))
        out = linear(lambda a: a @ layer["W"].T, out)
        value = out.value + layer["b"]
        if taps is not None:
            out = Jet(value + taps[i][:, 0], out.grad + taps[i][:, 1 : 1 + k],
                      None if out.second is None else out.second + taps[i][:, -1])
        else:
            out = out._replace(value=value)
        if i < last:
            if film is not None:
                out = modulate(out, *film[i], derivs)
            out = elementwise(out, net.act, derivs)
    return out, layer_inputs


def jet(
    net: Network,
    params: LayerParams,
    x: jax.Array,
    derivs: Derivatives,
    taps: Sequence[jax.Array] | None = None,
) -> tuple[Jet, list[jax.Array]]:
    """One Taylor-mode pass of ``net`` at points ``x (N, d)``: :func:`propagate` from
    :func:`coordinates`. Returns the :class:`Jet` and the stacked layer inputs."""
    return propagate(net, params, coordinates(x, derivs), derivs, taps)


def _stack(u: Jet) -> jax.Array:
    """Slots stacked as ``(N, S, width)``."""
    parts = [u.value[:, None], u.grad]
    if u.second is not None:
        parts.append(u.second[:, None])
    return jnp.concatenate(parts, axis=1)
