"""Multilayer perceptrons as plain pytrees, and their activations.

A network is described by an :class:`MLP` (static: layer sizes and activation) and its
parameters, a list of ``{"W": (out, in), "b": (out,)}`` dictionaries, one per linear layer.
Keeping parameters as a bare pytree lets every optimiser (optax, Gauss–Newton, KFAC) treat
them uniformly, and lets KFAC address one layer's ``[W, b]`` block directly. The MLP is a
:class:`pinnopt.models.Model`, the only one with per-layer taps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from pinnopt import taylor
from pinnopt.taylor import Activation

Params = list[dict[str, jax.Array]]


def _tanh() -> Activation:
    def df(z):
        t = jnp.tanh(z)
        return 1.0 - t * t

    def d2f(z):
        t = jnp.tanh(z)
        return -2.0 * t * (1.0 - t * t)

    return Activation(jnp.tanh, df, d2f)


def _sin() -> Activation:
    return Activation(jnp.sin, jnp.cos, lambda z: -jnp.sin(z))


def _softplus() -> Activation:
    def d2f(z):
        s = jax.nn.sigmoid(z)
        return s * (1.0 - s)

    return Activation(jax.nn.softplus, jax.nn.sigmoid, d2f)


def _silu() -> Activation:
    def df(z):
        s = jax.nn.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))

    def d2f(z):
        s = jax.nn.sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))

    return Activation(jax.nn.silu, df, d2f)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": _tanh(),
    "sin": _sin(),
    "softplus": _softplus(),
    "silu": _silu(),
}


@dataclass(frozen=True)
class MLP:
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]``, activation between layers.

    The last layer is linear. ``init`` follows PyTorch's default (uniform in
    ``±1/sqrt(fan_in)`` for weights and biases), the initialisation of [KFAC]'s experiments.
    """

    sizes: tuple[int, ...]
    activation: str = "tanh"
    supports_taps: ClassVar[bool] = True

    def __post_init__(self):
        if len(self.sizes) < 2 or any(int(s) < 1 for s in self.sizes):
            raise ValueError(f"net sizes must be at least two positive integers, got {self.sizes}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"
            )

    @property
    def in_dim(self) -> int:
        return self.sizes[0]

    @property
    def out_dim(self) -> int:
        return self.sizes[-1]

    @property
    def num_params(self) -> int:
        return sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def act(self) -> Activation:
        return ACTIVATIONS[self.activation]

    def describe(self) -> str:
        return "-".join(map(str, self.sizes))

    def init(self, key: jax.Array, dtype=jnp.float64) -> Params:
        params = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            key, kw, kb = jax.random.split(key, 3)
            bound = 1.0 / jnp.sqrt(fan_in)
            params.append(
                {
                    "W": jax.random.uniform(kw, (fan_out, fan_in), dtype, -bound, bound),
                    "b": jax.random.uniform(kb, (fan_out,), dtype, -bound, bound),
                }
            )
        return params

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """Network value at points ``x`` of shape ``(N, in_dim)``; returns ``(N, out_dim)``."""
        h = x
        for i, layer in enumerate(params):
            h = h @ layer["W"].T + layer["b"]
            if i < len(params) - 1:
                h = self.act.f(h)
        return h

    def jet(self, params: Params, x: jax.Array, derivs: taylor.Derivatives) -> taylor.Jet:
        """Outputs and derivatives at ``x (N, in_dim)`` (one Taylor-mode pass, without the
        layer inputs of :func:`pinnopt.taylor.jet`)."""
        return taylor.jet(self, params, x, derivs)[0]


def parse_net(spec: str | tuple[int, ...] | list[int], in_dim: int, out_dim: int,
              presets: dict[str, tuple[int, ...]] | None = None) -> tuple[int, ...]:
    """Turn a net description into full layer sizes ``(in_dim, hidden..., out_dim)``.

    Accepted: a preset name of the problem (e.g. ``"small"``), ``"LxW"`` for L hidden layers
    of width W (``"3x20"`` is ``in-20-20-20-out``), or the full sizes written out,
    ``"2-64-64-48-48-1"``, whose ends must equal the problem's input and output dimensions.
    """
    presets = presets or {}
    if isinstance(spec, str):
        name = spec.strip()
        if name in presets:
            return (in_dim, *presets[name], out_dim)
        shape = re.fullmatch(r"(\d+)x(\d+)", name)
        if shape:
            depth, width = int(shape[1]), int(shape[2])
            if depth < 1 or width < 1:
                raise ValueError(f"net {spec!r}: depth and width must be at least 1")
            return (in_dim, *(width,) * depth, out_dim)
        try:
            sizes = tuple(int(p) for p in name.split("-"))
        except ValueError:
            accepted = ", ".join(presets) or "none"
            raise ValueError(
                f"net {spec!r} is neither a preset ({accepted}), nor 'LxW' (L hidden layers of "
                f"width W, e.g. '3x20'), nor sizes like '{in_dim}-64-{out_dim}'"
            ) from None
    else:
        sizes = tuple(int(w) for w in spec)
    if len(sizes) < 2 or any(w < 1 for w in sizes):
        raise ValueError(f"net {spec!r}: sizes must be at least two positive integers")
    if sizes[0] != in_dim or sizes[-1] != out_dim:
        raise ValueError(
            f"net {spec!r} maps {sizes[0]} -> {sizes[-1]}, but this problem needs "
            f"{in_dim} inputs and {out_dim} outputs (e.g. '{in_dim}-64-{out_dim}')"
        )
    return sizes
