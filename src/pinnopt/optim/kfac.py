"""KFAC and KFAC* for PINN losses (docs/methods.md §4; Dangel, Müller & Zeinhofer, NeurIPS 2024).

The Gramian ``G = JᵀJ`` of the stacked scaled residual (``L = ½‖r‖²``, residual group ``g``
scaled by ``sqrt(w_g/N_g)``) is approximated, per linear layer ``V = [W, b]`` (out × (in+1)),
by at most two Kronecker products (column-major ``vec``, see :mod:`.kfac_blocks`):

    G_layer ≈ A_Ω ⊗ B_Ω + A_∂ ⊗ B_∂.

One Taylor-mode pass with zero "taps" on every layer's stacked outputs gives, per point ``n``
and slot ``s`` (value, one per direction, the second-order term), the layer inputs
``a_{n,s} = [input; 1 or 0]`` and, by one backward pass of the scaled residual with respect to
the taps, the output gradients ``g_{n,s}``. The Jacobian row of point ``n`` is then exactly
``J_n = Σ_s a_{n,s} ⊗ g_{n,s}``; from the same quantities come the loss, the gradient
``∇L = Σ_n r_n J_nᵀ`` and exact Jacobian–vector products ``J_n vec(Δ) = Σ_s g_{n,s}ᵀ Δ a_{n,s}``,
so a step needs one forward and one backward pass (per residual component).

Terms. Groups whose points carry derivatives (``derivs`` has directions) form the interior
term ``Ω``, value-only groups (boundary, initial, data) the term ``∂``. For a term with groups
``g``, weights ``w_g``, ``N_g`` points, ``S_g`` slots and ``W = Σ_g w_g``:

    A = Σ_g (w_g / W) · 1/(N_g S_g) Σ_{n,s} a_{n,s} a_{n,s}ᵀ,
    B = Σ_g Σ_{n,s} g̃_{n,s} g̃_{n,s}ᵀ,   g̃ = ∂(sqrt(w_g/N_g) r_n)/∂(output slot s).

For one group this is [KFAC]'s ``w_g · (1/(NS) Σ a aᵀ) ⊗ (1/N Σ g gᵀ)`` (weight-sharing
"expand" factors for the interior, classic KFAC for ``S = 1``); several groups of one kind
(heat: boundary and initial) are pooled as one set of points, each point weighted by its loss
weight ``w_g/N_g``. A ``c``-component residual counts as ``c`` residuals at the same inputs
(its components add to ``B``). The slot decomposition is exact for any residual that is a
pointwise function of the jet; the Kronecker factorisation is an approximation, exact only
in degenerate cases (one point and ``S = 1``). For residuals nonlinear in the jet, ``g``
depends on the current parameters like any Gauss–Newton matrix.

Per step: factors ``F ← β F + (1−β) F_batch`` (initialised to ``I``, refreshed every
``update_interval`` steps), inverse of the damped sum (``λI`` added to every factor, or with
``trace_norm`` the π split ``(A + π√λ I) ⊗ (B + √λ/π I)`` per term; refreshed every
``inverse_interval`` steps), natural direction ``Δ = −(G_KFAC)⁻¹ ∇L``; then

- ``kfac``: momentum ``m ← μ m + Δ`` and the grid line search of §3 along ``m``;
- ``kfac-star``: ``(α, μ)`` minimising the quadratic model with the exact Gramian in the plane
  of ``Δ`` and the previous step ``δ`` (Martens & Grosse 2015, §7), ``δ ← αΔ + μδ``. When
  ``δ = 0`` (first step) the 2×2 system is singular and the 1×1 model along ``Δ`` is solved.
  The model's damping ``λ_M`` is adapted (step rejection, Nielsen's rule) and can be floored
  apart from the factors' ``λ`` (``model_damping``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.nets import MLP, Params
from pinnopt.optim.base import Method, method, more_damping
from pinnopt.optim.kfac_blocks import (
    KroneckerFactors,
    KroneckerSumInverse,
    augment_inputs,
    batch_factors,
    identity_factors,
    invert,
    moving_average,
)
from pinnopt.optim.linesearch import apply_step, grid_line_search
from pinnopt.residuals import Batch, Objective, ResidualGroup
from pinnopt.taylor import Derivatives, jet

Array = jax.Array
Matrices = list[Array]
"""One ``(out, in+1)`` matrix ``[W, b]`` per linear layer."""


# ---------------------------------------------------------------------------------------------
# Which groups share a Taylor-mode pass and which Kronecker term


@dataclass(frozen=True)
class _Pass:
    """Groups evaluated in one Taylor-mode pass (they request the same derivatives)."""

    derivs: Derivatives
    groups: tuple[ResidualGroup, ...]


@dataclass(frozen=True)
class _Term:
    """One Kronecker term: the passes that feed it and its total loss weight ``W``."""

    name: str
    passes: tuple[int, ...]
    weight: float


def _plan(objective: Objective) -> tuple[tuple[_Pass, ...], tuple[_Term, ...]]:
    model = objective.net
    if not getattr(model, "supports_taps", False):
        raise ValueError(
            f"KFAC supports only models with per-layer taps (the plain MLP, pinnopt.nets.MLP); "
            f"{type(model).__name__} ({model.describe()}) has none: use engd, hessian-free or "
            "a first-order method")
    by_derivs: dict[Derivatives, list[ResidualGroup]] = {}
    for group in objective.groups:
        if not callable(getattr(group, "fn", None)) or not isinstance(group.derivs, Derivatives):
            raise ValueError(
                f"KFAC cannot handle group {group.name!r}: it needs a per-point residual "
                "fn(x, jet) of the Taylor-mode outputs"
            )
        if group.weight > 0:
            by_derivs.setdefault(group.derivs, []).append(group)
    if not by_derivs:
        raise ValueError("KFAC: every residual group has weight 0, there is nothing to fit")
    passes = tuple(_Pass(d, tuple(gs)) for d, gs in by_derivs.items())
    terms = []
    for name, is_interior in (("interior", True), ("value", False)):
        members = tuple(i for i, p in enumerate(passes) if (p.derivs.num_slots > 1) == is_interior)
        if members:
            weight = sum(g.weight for i in members for g in passes[i].groups)
            terms.append(_Term(name, members, weight))
    return passes, tuple(terms)


# ---------------------------------------------------------------------------------------------
# The curvature pass


class PassStats(NamedTuple):
    """What one Taylor-mode pass over ``N`` points with ``S`` slots yields.

    ``residual (c, N)``: scaled residual components; per layer, ``inputs (N, S, in+1)``
    (augmented with the bias input) and ``backprops (c, N, S, out)``, the gradient of each
    scaled residual component with respect to the layer's output slots.
    """

    residual: Array
    inputs: list[Array]
    backprops: list[Array]


def _network_points(group: ResidualGroup, x: Array) -> Array:
    """The columns of a group's points the network sees: all of them, unless the group carries
    per-point data after the coordinates and says so with ``points(x)`` (the constrained
    methods' residual view puts each point's multiplier and penalty there)."""
    points = getattr(group, "points", None)
    return x if points is None else points(x)


def _run_pass(net: MLP, params: Params, spec: _Pass, batch: Batch) -> PassStats:
    xs = [batch[g.name] for g in spec.groups]
    coords = [_network_points(g, xi) for g, xi in zip(spec.groups, xs)]
    x = jnp.concatenate(coords) if len(coords) > 1 else coords[0]
    counts = [xi.shape[0] for xi in xs]
    n, slots = x.shape[0], spec.derivs.num_slots

    def scaled_residual(taps):
        out, inputs = jet(net, params, x, spec.derivs, taps)
        parts, start = [], 0
        for group, xi, count in zip(spec.groups, xs, counts):
            rows = out if len(xs) == 1 else jax.tree_util.tree_map(
                lambda t: t[start : start + count], out)
            r = jax.vmap(group.fn)(xi, rows).reshape(count, -1)
            parts.append(math.sqrt(group.weight / count) * r)
            start += count
        width = max(r.shape[1] for r in parts)
        parts = [jnp.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in parts]
        return (jnp.concatenate(parts) if len(parts) > 1 else parts[0]), inputs

    taps = [jnp.zeros((n, slots, fan_out), x.dtype) for fan_out in net.sizes[1:]]
    residual, pullback, inputs = jax.vjp(scaled_residual, taps, has_aux=True)
    c = residual.shape[1]
    # Point n's residual depends only on point n's taps, so pulling back component k of all
    # points at once gives every point's own per-slot output gradients.
    cotangents = jnp.broadcast_to(jnp.eye(c, dtype=x.dtype)[:, None, :], (c, n, c))
    (backprops,) = jax.vmap(pullback)(cotangents)
    return PassStats(residual.T, [augment_inputs(a) for a in inputs], list(backprops))


def curvature_pass(objective: Objective, params: Params, batch: Batch) -> list[PassStats]:
    """Residuals, layer inputs and output gradients of every pass (see :class:`PassStats`)."""
    passes, _ = _plan(objective)
    return [_run_pass(objective.net, params, p, batch) for p in passes]


def loss_and_gradient(stats: list[PassStats]) -> tuple[Array, Matrices]:
    """``L = ½‖r‖²`` and ``∇L = Σ_n r_n J_nᵀ`` as one ``(out, in+1)`` matrix per layer."""
    loss = 0.5 * sum(jnp.sum(s.residual**2) for s in stats)
    grads = []
    for layer in range(len(stats[0].inputs)):
        total = 0.0
        for s in stats:
            a, g = s.inputs[layer], s.backprops[layer]
            # Σ_k r_{k,n} g_{k,n,s}: the per-slot error of the loss, then one matrix product.
            error = jnp.sum(s.residual[:, :, None, None] * g, axis=0)
            total = total + error.reshape(-1, g.shape[-1]).T @ a.reshape(-1, a.shape[-1])
        grads.append(total)
    return loss, grads


def jacobian_products(stats: list[PassStats], directions: list[Matrices]) -> Array:
    """``J v`` for each direction ``v`` (per-layer matrices), shape ``(len(directions), Σ N c)``.

    Exact: ``J_n vec(V) = Σ_{layers} Σ_s g_{n,s}ᵀ V a_{n,s}`` (the residual order differs from
    :meth:`Objective.residual_vector`, which does not matter for norms and inner products).
    """
    m = len(directions)
    out = []
    for s in stats:
        c, n = s.residual.shape
        total = jnp.zeros((m, c, n), s.residual.dtype)
        for layer, (a, g) in enumerate(zip(s.inputs, s.backprops)):
            fan_out = g.shape[-1]
            # All directions' slot outputs V a_{n,s} in one matrix product, (N, S, m, out).
            stacked = jnp.concatenate([d[layer] for d in directions])
            outputs = (a.reshape(-1, a.shape[-1]) @ stacked.T).reshape(n, -1, m, fan_out)
            # Elementwise product and sum rather than a dot batched over points, which XLA
            # runs as N tiny products.
            total = total + jnp.sum(g[:, :, :, None, :] * outputs[None], axis=(2, 4)
                                    ).transpose(2, 0, 1)
        out.append(total.reshape(m, -1))
    return jnp.concatenate(out, axis=1)


def _batch_terms(passes: tuple[_Pass, ...], terms: tuple[_Term, ...], stats: list[PassStats],
                 batch: Batch) -> tuple[tuple[KroneckerFactors, ...], ...]:
    out = []
    for term in terms:
        per_layer = None
        for i in term.passes:
            spec, s = passes[i], stats[i]
            # Input-factor weight of a point of group g: (w_g / W) / (N_g S).
            weights = jnp.asarray(np.concatenate([
                np.full(batch[g.name].shape[0],
                        g.weight / (term.weight * batch[g.name].shape[0] * spec.derivs.num_slots))
                for g in spec.groups
            ]), s.residual.dtype)
            factors = [batch_factors(a, g, weights) for a, g in zip(s.inputs, s.backprops)]
            per_layer = factors if per_layer is None else [
                KroneckerFactors(old.a + new.a, old.b + new.b)
                for old, new in zip(per_layer, factors)
            ]
        out.append(tuple(per_layer))
    return tuple(out)


def kronecker_terms(objective: Objective, stats: list[PassStats], batch: Batch
                    ) -> dict[str, tuple[KroneckerFactors, ...]]:
    """This batch's factors ``{term: per-layer (A, B)}``, terms ``interior`` and/or ``value``.

    The layer's Gramian block is approximated by ``Σ_term A ⊗ B`` (undamped).
    """
    passes, terms = _plan(objective)
    return dict(zip((t.name for t in terms), _batch_terms(passes, terms, stats, batch)))


# ---------------------------------------------------------------------------------------------
# The optimisers


class KFACState(NamedTuple):
    """State of ``kfac`` and ``kfac-star``.

    ``step``: steps taken; ``factors``: per term (interior, value), per layer, the moving
    averages ``(A, B)``; ``inverses``: per layer, the factored inverse of the damped sum;
    ``previous``: per layer ``(out, in+1)``, the momentum buffer ``m`` (kfac) or the previous
    step ``δ`` (kfac-star).
    """

    step: Array
    factors: tuple[tuple[KroneckerFactors, ...], ...]
    inverses: tuple[KroneckerSumInverse, ...]
    previous: tuple[Array, ...]


def to_params(matrices: Matrices) -> Params:
    return [{"W": m[:, :-1], "b": m[:, -1]} for m in matrices]


def _dot(u: Matrices, v: Matrices) -> Array:
    return sum(jnp.vdot(a, b) for a, b in zip(u, v))


def _check(damping: float, ema: float, update_interval: int, inverse_interval: int) -> None:
    if not damping >= 0:
        raise ValueError(f"KFAC: damping must be non-negative, got {damping}")
    if not 0 <= ema < 1:
        raise ValueError(f"KFAC: ema must be in [0, 1), got {ema}")
    if update_interval < 1 or inverse_interval < 1:
        raise ValueError(
            f"KFAC: update_interval and inverse_interval must be at least 1, got "
            f"{update_interval} and {inverse_interval}"
        )


class _Curvature:
    """The shared part of both methods: state, factor and inverse refresh, natural direction."""

    def __init__(self, objective: Objective, damping: float, ema: float,
                 update_interval: int, inverse_interval: int, trace_norm: bool = False):
        _check(damping, ema, update_interval, inverse_interval)
        self.objective = objective
        self.passes, self.terms = _plan(objective)
        self.damping, self.ema, self.trace_norm = damping, ema, trace_norm
        self.update_interval, self.inverse_interval = update_interval, inverse_interval

    def init(self, params: Params) -> KFACState:
        dtype = params[0]["W"].dtype
        shapes = [layer["W"].shape for layer in params]
        factors = tuple(
            tuple(identity_factors(fan_in, fan_out, dtype) for fan_out, fan_in in shapes)
            for _ in self.terms
        )
        inverses = tuple(
            KroneckerSumInverse(jnp.eye(fan_in + 1, dtype=dtype), jnp.eye(fan_out, dtype=dtype),
                                jnp.zeros(fan_in + 1, dtype), jnp.zeros(fan_out, dtype))
            for fan_out, fan_in in shapes
        )
        previous = tuple(jnp.zeros((fan_out, fan_in + 1), dtype) for fan_out, fan_in in shapes)
        return KFACState(jnp.zeros((), jnp.int32), factors, inverses, previous)

    def refresh(self, state: KFACState, stats: list[PassStats], batch: Batch):
        """Moving-average factors and inverses for this step (each on its own interval)."""

        def update_factors(factors):
            new = _batch_terms(self.passes, self.terms, stats, batch)
            return tuple(
                tuple(moving_average(o, n, self.ema) for o, n in zip(old_term, new_term))
                for old_term, new_term in zip(factors, new)
            )

        def update_inverses(factors):
            second = factors[1] if len(factors) > 1 else (None,) * len(factors[0])
            return tuple(invert(f1, f2, self.damping, self.trace_norm)
                         for f1, f2 in zip(factors[0], second))

        factors, inverses = state.factors, state.inverses
        if self.update_interval == 1:
            factors = update_factors(factors)
        else:
            factors = jax.lax.cond(state.step % self.update_interval == 0, update_factors,
                                   lambda f: f, factors)
        if self.inverse_interval == 1:
            inverses = update_inverses(factors)
        else:
            inverses = jax.lax.cond(state.step % self.inverse_interval == 0, update_inverses,
                                    lambda f: state.inverses, factors)
        return factors, inverses

    def evaluate(self, params: Params, batch: Batch) -> list[PassStats]:
        return [_run_pass(self.objective.net, params, p, batch) for p in self.passes]


def natural_direction(inverses: tuple[KroneckerSumInverse, ...], grads: Matrices) -> Matrices:
    """``Δ = −(G_KFAC)⁻¹ ∇L``, layer by layer."""
    return [-inv.apply(g) for inv, g in zip(inverses, grads)]


@method("kfac",
        "KFAC for PINN losses (interior + boundary Kronecker sums), momentum and grid line search",
        needs=("residuals",), safer=more_damping())
def kfac(objective: Objective, *, damping: float = 1.5e-12, ema: float = 0.45,
         momentum: float = 0.51, update_interval: int = 1, inverse_interval: int = 1,
         trace_norm: bool = False) -> Method:
    """KFAC with heavy-ball momentum on the natural direction and the grid line search."""
    if not 0 <= momentum < 1:
        raise ValueError(f"KFAC: momentum must be in [0, 1), got {momentum}")
    curvature = _Curvature(objective, damping, ema, update_interval, inverse_interval,
                           trace_norm)

    def step(params, state, batch, key):
        stats = curvature.evaluate(params, batch)
        loss, grads = loss_and_gradient(stats)
        factors, inverses = curvature.refresh(state, stats, batch)
        direction = natural_direction(inverses, grads)
        velocity = [momentum * m + d for m, d in zip(state.previous, direction)]
        velocity_params = to_params(velocity)
        alpha, _ = grid_line_search(lambda p: objective.loss(p, batch), params,
                                    velocity_params, loss)
        new_state = KFACState(state.step + 1, factors, inverses, tuple(velocity))
        return apply_step(params, velocity_params, alpha), new_state, {
            "loss": loss, "step_size": alpha}

    return Method(curvature.init, step)


class QuadraticModelStep(NamedTuple):
    """``(α, μ)`` of a KFAC* step and the change ``½ uᵀGu + ∇Lᵀu`` the undamped Gauss–Newton
    model predicts for ``u = αΔ + μδ`` (negative for a descent step)."""

    alpha: Array
    mu: Array
    predicted: Array
    curvature: Array
    """``uᵀGu / ‖u‖²``, the Rayleigh quotient of ``G`` along the step."""


def quadratic_model_step(jd: Array, jp: Array, direction: Matrices, previous: Matrices,
                         grads: Matrices, damping: float | Array) -> QuadraticModelStep:
    """``(α, μ)`` minimising ``½ uᵀ(G + λI)u + ∇Lᵀu`` over ``u = αΔ + μδ``.

    ``jd = JΔ`` and ``jp = Jδ``. Solves the 2×2 system of docs/methods.md §4; when it is singular
    (``δ = 0`` on the first step, or ``δ ∥ Δ``) the 1×1 model along ``Δ`` gives ``α`` and
    ``μ = 0``; a zero direction gives ``α = 0``.
    """
    g11, g12, g22 = jnp.vdot(jd, jd), jnp.vdot(jd, jp), jnp.vdot(jp, jp)
    a11 = g11 + damping * _dot(direction, direction)
    a12 = g12 + damping * _dot(direction, previous)
    a22 = g22 + damping * _dot(previous, previous)
    b1, b2 = _dot(grads, direction), _dot(grads, previous)
    det = a11 * a22 - a12**2
    tiny = jnp.finfo(a11.dtype).tiny
    regular = det > 1e3 * jnp.finfo(a11.dtype).eps * a11 * a22
    safe_det = jnp.where(regular, det, 1.0)
    alpha2 = (a12 * b2 - a22 * b1) / safe_det
    mu2 = (a12 * b1 - a11 * b2) / safe_det
    alpha1 = jnp.where(a11 > tiny, -b1 / jnp.where(a11 > tiny, a11, 1.0), 0.0)
    alpha, mu = jnp.where(regular, alpha2, alpha1), jnp.where(regular, mu2, 0.0)
    uu = _plane_form(alpha, mu, _dot(direction, direction), _dot(direction, previous),
                     _dot(previous, previous))
    curvature = _plane_form(alpha, mu, g11, g12, g22) / jnp.where(uu > 0, uu, 1.0)
    return QuadraticModelStep(alpha, mu, model_change(alpha, mu, g11, g12, g22, b1, b2),
                              curvature)


def _plane_form(alpha, mu, m11, m12, m22) -> Array:
    """``uᵀMu`` for ``u = αΔ + μδ`` from the entries of ``M`` in the plane of ``(Δ, δ)``."""
    return alpha**2 * m11 + 2 * alpha * mu * m12 + mu**2 * m22


def model_change(alpha, mu, g11, g12, g22, b1, b2) -> Array:
    """``½ uᵀGu + ∇Lᵀu`` for ``u = αΔ + μδ`` from the 2×2 Gramian entries and ``∇Lᵀ(Δ, δ)``."""
    return 0.5 * _plane_form(alpha, mu, g11, g12, g22) + alpha * b1 + mu * b2


class KFACStarState(NamedTuple):
    """State of ``kfac-star``: as :class:`KFACState` (``previous`` is the last step ``δ``),
    plus the damping ``λ_M`` of the quadratic model and its growth factor ``ν`` after
    rejected steps (Levenberg–Marquardt adaptation, see :func:`adapt_model_damping`)."""

    step: Array
    factors: tuple[tuple[KroneckerFactors, ...], ...]
    inverses: tuple[KroneckerSumInverse, ...]
    previous: tuple[Array, ...]
    model_damping: Array
    growth: Array


_MAX_MODEL_DAMPING = 1e10


def adapt_model_damping(damping: Array, growth: Array, rho: Array, accepted: Array,
                        curvature: Array, floor: float) -> tuple[Array, Array]:
    """Levenberg–Marquardt update of the quadratic model's damping ``λ_M`` (Nielsen 1999).

    ``ρ = (L(θ+u) − L(θ)) / (M(u) − M(0))`` is the reduction ratio of the step ``u`` on its
    batch (``M``: the undamped Gauss–Newton model). After an accepted step
    ``λ_M ← λ_M · max(1/3, 1 − (2ρ − 1)³)`` (down by up to 3 when the model is good, up by up
    to 2 when ``ρ`` is small) and ``ν ← 2``. After a rejected step (the loss did not decrease
    or is not finite) ``λ_M ← max(ν λ_M, uᵀGu/‖u‖²)`` and ``ν ← 2ν``: a damping far below
    the curvature along the step changes nothing, so the first rejection jumps to the
    Rayleigh quotient ``curvature = uᵀGu/‖u‖²`` (which about halves a step along ``Δ``) and
    further ones grow geometrically. ``λ_M`` stays in ``[floor, 1e10]``.
    """
    factor = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * jnp.clip(rho, 0.0, 1.0) - 1.0) ** 3)
    rejected = jnp.maximum(damping * growth, jnp.where(jnp.isfinite(curvature), curvature, 0.0))
    new = jnp.where(accepted, damping * factor, rejected)
    new_growth = jnp.where(accepted, 2.0, 2.0 * growth)
    return jnp.clip(new, floor, _MAX_MODEL_DAMPING), new_growth


@method("kfac-star",
        "KFAC* : KFAC direction with learning rate and momentum from the exact quadratic model",
        needs=("residuals",), safer=more_damping())
def kfac_star(objective: Objective, *, damping: float = 1.2e-10, ema: float = 0.926,
              update_interval: int = 1, inverse_interval: int = 1, trace_norm: bool = False,
              initial_lr: float = 1e-6, adapt_damping: bool = True,
              model_damping: float = -1.0) -> Method:
    """KFAC* : learning rate and momentum from the exact 2×2 quadratic model, no line search.

    With ``adapt_damping`` (the default) every step is checked: the loss at ``θ + u`` on the
    step's batch (one extra forward pass) gives the reduction ratio ``ρ``; a step that does
    not decrease the loss is rejected (``θ`` kept, ``δ ← 0``) and the model's damping ``λ_M``
    follows :func:`adapt_model_damping`, starting at and never below ``damping`` (the factors
    keep ``damping``). Without it, every step is taken and ``λ_M = damping`` ([KFAC]'s rule).
    ``model_damping >= 0`` decouples the two: it is then the floor and starting value of
    ``λ_M`` (and ``λ_M`` itself without ``adapt_damping``), ``damping`` only the factors'.
    """
    if not initial_lr >= 0:
        raise ValueError(f"KFAC*: initial_lr must be non-negative, got {initial_lr}")
    curvature = _Curvature(objective, damping, ema, update_interval, inverse_interval,
                           trace_norm)
    base = curvature.init
    floor = damping if model_damping < 0 else model_damping

    def init(params):
        state = base(params)
        dtype = params[0]["W"].dtype
        return KFACStarState(*state, jnp.asarray(floor, dtype), jnp.asarray(2.0, dtype))

    def step(params, state, batch, key):
        stats = curvature.evaluate(params, batch)
        loss, grads = loss_and_gradient(stats)
        factors, inverses = curvature.refresh(state, stats, batch)
        direction = natural_direction(inverses, grads)
        previous = list(state.previous)
        jd, jp = jacobian_products(stats, [direction, previous])
        alpha, mu, predicted, rayleigh = quadratic_model_step(jd, jp, direction, previous, grads,
                                                    state.model_damping)
        if initial_lr > 0:
            first = state.step == 0
            alpha, mu = jnp.where(first, initial_lr, alpha), jnp.where(first, 0.0, mu)
            predicted = jnp.where(first, model_change(
                alpha, 0.0, jnp.vdot(jd, jd), 0.0, 0.0, _dot(grads, direction), 0.0), predicted)
        update = [alpha * d + mu * p for d, p in zip(direction, previous)]
        trial = [
            {"W": layer["W"] + u[:, :-1], "b": layer["b"] + u[:, -1]}
            for layer, u in zip(params, update)
        ]
        info = {"loss": loss, "step_size": alpha, "momentum": mu}
        model_damping, growth = state.model_damping, state.growth
        if adapt_damping:
            trial_loss = objective.loss(trial, batch)
            accepted = jnp.isfinite(trial_loss) & (trial_loss <= loss)
            rho = (trial_loss - loss) / jnp.where(predicted < 0, predicted, -jnp.inf)
            model_damping, growth = adapt_model_damping(model_damping, growth, rho, accepted,
                                                        rayleigh, floor)
            trial = jax.tree_util.tree_map(lambda t, p: jnp.where(accepted, t, p), trial, params)
            update = [jnp.where(accepted, u, 0.0) for u in update]
            info.update(rho=rho, accepted=accepted.astype(loss.dtype),
                        model_damping=state.model_damping)
        new_state = KFACStarState(state.step + 1, factors, inverses, tuple(update),
                                  model_damping, growth)
        return trial, new_state, info

    return Method(init, step)

