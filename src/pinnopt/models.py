"""The model interface: what residuals and methods may ask of a network.

A *model* maps points ``x (N, d)`` to fields ``(N, m)`` with parameters held in a pytree. The
plain MLP (:class:`pinnopt.nets.MLP`) is one; the kinetic problems' models (several MLPs, an
ε encoding, positivity maps and velocity averages; :mod:`pinnopt.problems.kinetic`) are others.
Every model computes its derivatives with the Taylor-mode pass of :mod:`pinnopt.taylor`.

What methods need of it:

- first-order, L-BFGS, Hessian-free and ENGD use only the loss, the stacked residual and its
  Jacobian products, so they train any model (ENGD's ``layer`` variant takes one block per
  linear layer of every member network);
- KFAC also needs per-layer taps on the Taylor-mode pass (``supports_taps``): only the plain
  MLP offers them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from pinnopt.taylor import Derivatives, Jet


@runtime_checkable
class Model(Protocol):
    """A network, or a composite of networks, on points ``x (N, d)`` with ``m`` fields.

    ``supports_taps``: whether ``pinnopt.taylor.jet(model, params, x, derivs, taps)`` applies,
    i.e. the parameters are one ``{"W": (out, in), "b": (out,)}`` per linear layer of
    ``model.sizes`` and the layer inputs and output taps of the pass are KFAC's curvature
    statistics. Only :class:`pinnopt.nets.MLP` sets it.
    """

    supports_taps: bool

    @property
    def num_params(self) -> int:
        """Number of trainable scalars ``D``."""

    def describe(self) -> str:
        """A one-line description (layer sizes, encodings) for logs and summaries."""

    def init(self, key: jax.Array, dtype: Any = ...) -> Any:
        """Fresh parameters (a pytree of arrays of ``dtype``)."""

    def apply(self, params: Any, x: jax.Array) -> jax.Array:
        """The fields at points ``x (N, d)``: ``(N, m)``."""

    def jet(self, params: Any, x: jax.Array, derivs: Derivatives) -> Jet:
        """The fields and their derivatives along ``derivs`` (directions in the ``d`` point
        coordinates): ``value (N, m)``, ``grad (N, k, m)``, ``second (N, m)`` or ``None``."""
