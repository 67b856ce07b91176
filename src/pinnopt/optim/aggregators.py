"""Gradient-conflict aggregators: one update direction from ``m`` task gradients (docs/methods.md §7).

Every aggregator reads a task-gradient matrix ``grads`` of shape ``(m, D)`` whose row ``i`` is
the flattened gradient ``g_i = ∇L_i`` of task ``i``, and returns ``(update, info)``: an update
of shape ``(D,)`` in the same sense as a gradient (the caller steps ``θ ← θ − lr · update``,
or hands ``update`` to an optax optimiser as the gradient), and a dict of scalar diagnostics.
All functions are pure and ``jax.jit``-compatible; ``m`` and ``D`` are static.

Notation: ``ĝ_i = U(g_i) = g_i / ‖g_i‖`` (zero when ``‖g_i‖ ≤ eps``, so a task already at its
minimum contributes nothing and never produces a NaN), ``Ĝ`` the matrix of rows ``ĝ_i``.

    sum      Σ_i g_i
    pcgrad   Σ_i g_i^PC, g_i projected onto the normal plane of every g_j it conflicts with
    mgda     argmin { ‖d‖ : d ∈ conv{g_i} }
    config   (Σ_i g_iᵀ g_u) g_u,   g_u = U(Ĝ⁺ 1)                     (equal cosine to every g_i)
    mconfig  ConFIG of per-task momenta, one momentum refreshed per step (stateful)
    hrgrad   ConFIG of unit gradients rotated toward a harmonised anchor (a reconstruction)

:mod:`pinnopt.optim.multitask` makes each of them a value (``hrgrad(kappa=0.5)``) with one
calling convention. docs/multitask.md has the maths.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Info = dict[str, Array]


# ---------------------------------------------------------------------------------------------
# Shared linear algebra


def _norm_floor(dtype) -> float:
    """Default norm below which a gradient counts as zero: √tiny, far below any real gradient."""
    return float(jnp.finfo(dtype).tiny) ** 0.5


def unit_rows(grads: Array, eps: float | None = None) -> tuple[Array, Array]:
    """Row-normalise ``grads`` (m, D).

    Returns ``(units (m, D), active (m,) bool)`` with ``units[i] = g_i / ‖g_i‖`` where
    ``‖g_i‖ > eps`` (``active``) and ``0`` otherwise.
    """
    eps = _norm_floor(grads.dtype) if eps is None else eps
    norms = jnp.linalg.norm(grads, axis=1)
    active = norms > eps
    units = grads / jnp.where(active, norms, 1.0)[:, None]
    return jnp.where(active[:, None], units, 0.0), active


def _unit(v: Array) -> Array:
    """``v / ‖v‖``, or zero for a (numerically) zero vector."""
    norm = jnp.linalg.norm(v)
    nonzero = norm > _norm_floor(v.dtype)
    return jnp.where(nonzero, v / jnp.where(nonzero, norm, 1.0), 0.0)


def min_norm_solve(a: Array, b: Array) -> Array:
    """The minimum-norm least-squares solution ``x = a⁺ b`` of ``a x = b``, ``a`` (m, D), ``b`` (m,).

    A thin QR factorisation ``aᵀ = Q R`` (``Q`` (D, k) with orthonormal columns, ``k = min(m, D)``)
    gives ``a = Rᵀ Qᵀ`` and hence ``a⁺ = Q (Rᵀ)⁺``; the small pseudo-inverse comes from an SVD
    of ``Rᵀ`` (m, k) with singular values below ``10·m·ε_mach·σ_max`` treated as zero. This costs
    ``O(m² D)`` like a Gram matrix, without squaring the condition number.
    """
    m = a.shape[0]
    q, r = jnp.linalg.qr(a.T)
    u, s, vt = jnp.linalg.svd(r.T, full_matrices=False)
    cutoff = 10.0 * m * jnp.finfo(a.dtype).eps * s[0]
    kept = s > cutoff
    s_inv = jnp.where(kept, 1.0 / jnp.where(kept, s, 1.0), 0.0)
    return q @ (vt.T @ (s_inv * (u.T @ b)))


def min_norm_weights(
    gram: Array,
    active: Array | None = None,
    *,
    rel_tol: float | None = None,
    max_iter: int | None = None,
) -> tuple[Array, Info]:
    """Weights ``w`` on the simplex minimising ``wᵀ K w`` (the min-norm point of a convex hull).

    ``gram`` is ``K = P Pᵀ`` (m, m) for points ``p_i`` (rows of ``P``); ``d = Pᵀ w`` is then the
    point of ``conv{p_i : active_i}`` closest to the origin. Points with ``active_i = False`` are
    left out (weight 0). Solved exactly (up to round-off) by Wolfe's algorithm (1976):

    * keep a "corral" ``S`` of affinely independent points and convex weights ``λ`` on it;
    * major cycle: with ``x = Σ λ_i p_i`` take ``j = argmin_i p_iᵀx``; stop when
      ``‖x‖² − p_jᵀx ≤ rel_tol · max_i ‖p_i‖²`` (the KKT conditions), else add ``j`` to ``S``;
    * minor cycle: ``α`` = affine min-norm weights on ``S`` (``K_SS α = μ 1``, ``1ᵀα = 1``); if
      ``α > 0`` accept ``λ = α``, else move ``λ`` toward ``α`` until a weight vanishes and drop it.

    At the solution ``p_iᵀ d ≥ ‖d‖²`` for every active ``i``, with equality where ``w_i > 0``.
    Returns ``(w (m,), info)`` with ``iterations`` and ``kkt_gap = ‖d‖² − min_i p_iᵀ d``.
    """
    m = gram.shape[0]
    dtype = gram.dtype
    active = jnp.ones(m, bool) if active is None else active
    rel_tol = 1e3 * float(jnp.finfo(dtype).eps) if rel_tol is None else rel_tol
    max_iter = 20 * m + 20 if max_iter is None else max_iter
    diag = jnp.diag(gram)
    scale = jnp.max(jnp.where(active, diag, 0.0))
    tol = rel_tol * scale
    index = jnp.arange(m)

    # The bordered system below mixes K's entries with ones: solve it with K scaled to a unit
    # largest diagonal, or task gradients of very different sizes leave it so unbalanced that
    # the pseudo-inverse's cutoff breaks 1ᵀα = 1.
    unit_gram = gram / jnp.where(scale > 0, scale, 1.0)

    def affine_minimiser(corral):
        # Bordered KKT system [[K_SS, 1], [1ᵀ, 0]] [α; ν] = [0; 1]; rows outside S pin α_i = 0.
        inside = corral[:, None] & corral[None, :]
        k = jnp.where(inside, unit_gram, 0.0) + jnp.diag(jnp.where(corral, 0.0, 1.0))
        ones = corral.astype(dtype)
        bordered = jnp.block([[k, ones[:, None]], [ones[None, :], jnp.zeros((1, 1), dtype)]])
        rhs = jnp.zeros(m + 1, dtype).at[m].set(1.0)
        alpha = jnp.where(corral, (jnp.linalg.pinv(bordered, hermitian=True) @ rhs)[:m], 0.0)
        # Affine weights sum to one exactly; remove the solve's round-off from that sum.
        total = jnp.sum(alpha)
        return alpha / jnp.where(total != 0, total, 1.0)

    def body(state):
        it, lam, corral, _ = state
        alpha = affine_minimiser(corral)
        interior = jnp.all(jnp.where(corral, alpha > 0, True))

        # Minor cycle: largest step from λ toward α keeping λ ≥ 0; drop the weight that hits 0.
        ratio = jnp.where(corral & (alpha <= 0), lam / jnp.where(corral, lam - alpha, 1.0), jnp.inf)
        leaving = jnp.argmin(ratio)
        lam_minor = lam + ratio[leaving] * (alpha - lam)
        corral_minor = corral & (lam_minor > 0) & (index != leaving)
        lam_minor = jnp.where(corral_minor, lam_minor, 0.0)
        lam_minor = lam_minor / jnp.maximum(jnp.sum(lam_minor), jnp.finfo(dtype).tiny)

        # Major cycle: KKT check at x = Σ α_i p_i, else bring in the most violating point.
        products = gram @ alpha
        entering = jnp.argmin(jnp.where(active, products, jnp.inf))
        optimal = (alpha @ products - products[entering] <= tol) | corral[entering]
        corral_major = corral.at[entering].set(True)

        lam = jnp.where(interior, alpha, lam_minor)
        corral = jnp.where(interior, jnp.where(optimal, corral, corral_major), corral_minor)
        return it + 1, lam, corral, interior & optimal

    def not_done(state):
        it, _, _, done = state
        return (~done) & (it < max_iter)

    start = jnp.argmin(jnp.where(active, diag, jnp.inf))
    any_active = jnp.any(active)
    corral0 = (index == start) & any_active
    init = (jnp.zeros((), jnp.int32), corral0.astype(dtype), corral0, ~any_active)
    iterations, weights, _, _ = lax.while_loop(not_done, body, init)
    products = gram @ weights
    gap = weights @ products - jnp.min(jnp.where(active, products, jnp.inf))
    return weights, {"iterations": iterations, "kkt_gap": jnp.where(any_active, gap, 0.0)}


# ---------------------------------------------------------------------------------------------
# Stateless aggregators


def sum_aggregate(grads: Array) -> tuple[Array, Info]:
    """Plain sum ``Σ_i g_i`` of the task gradients ``grads`` (m, D) -> ``(D,)``."""
    update = jnp.sum(grads, axis=0)
    return update, {"update_norm": jnp.linalg.norm(update)}


def pcgrad_projections(grads: Array, key: Array) -> tuple[Array, Array]:
    """PCGrad's projected gradients ``g_i^PC`` (m, D) and the number of projections made.

    For each task ``i`` (with its own random order of ``j``): start from ``g_i^PC = g_i`` and, for
    every ``j`` with ``g_i^PCᵀ g_j < 0``, set ``g_i^PC ← g_i^PC − (g_i^PCᵀ g_j / ‖g_j‖²) g_j``.
    Every ``g_i^PC`` stays in the span of the ``g_j``, so the loop runs on coefficient vectors
    ``g_i^PC = Σ_k a_k g_k`` against the Gram matrix (``g_i^PCᵀ g_j = (aᵀK)_j``): ``O(m² D)``
    for the Gram matrix and the final product, ``O(m³)`` for the projections.
    """
    m = grads.shape[0]
    gram = grads @ grads.T
    sq_norms = jnp.diag(gram)
    orders = jax.vmap(lambda k: jax.random.permutation(k, m))(jax.random.split(key, m))

    def project(i, order):
        def step(carry, j):
            coeff, count = carry
            dot = coeff @ gram[:, j]
            conflict = dot < 0  # implies ‖g_j‖ > 0
            shift = jnp.where(conflict, dot / jnp.where(conflict, sq_norms[j], 1.0), 0.0)
            return (coeff.at[j].add(-shift), count + conflict), None

        start = (jax.nn.one_hot(i, m, dtype=grads.dtype), jnp.zeros((), jnp.int32))
        (coeff, count), _ = lax.scan(step, start, order)
        return coeff, count

    coeffs, counts = jax.vmap(project)(jnp.arange(m), orders)
    return coeffs @ grads, jnp.sum(counts)


def pcgrad(grads: Array, key: Array) -> tuple[Array, Info]:
    """PCGrad (Yu et al. 2020): ``Σ_i g_i^PC`` with :func:`pcgrad_projections`; ``key`` a PRNG key
    drawing the task orders of this step. ``grads`` (m, D) -> ``(D,)``."""
    projected, count = pcgrad_projections(grads, key)
    update = jnp.sum(projected, axis=0)
    return update, {"update_norm": jnp.linalg.norm(update), "projections": count}


def mgda(grads: Array) -> tuple[Array, Info]:
    """MGDA (Désidéri 2012; Sener & Koltun 2018): the min-norm point of ``conv{g_i}``.

    ``d = Σ_i w_i g_i`` with ``w = argmin_{w ∈ Δ} wᵀ (G Gᵀ) w`` from :func:`min_norm_weights`;
    ``g_iᵀ d ≥ ‖d‖²`` for every task, so ``−d`` decreases every loss (or ``d = 0``: the point is
    Pareto-stationary). ``grads`` (m, D) -> ``(D,)``.
    """
    weights, info = min_norm_weights(grads @ grads.T)
    update = weights @ grads
    return update, {"update_norm": jnp.linalg.norm(update), **info}


def config_direction(units: Array) -> Array:
    """ConFIG's unit direction ``g_u = U(Ĝ⁺ 1)`` for unit (or zero) rows ``units`` (m, D) -> ``(D,)``.

    ``Ĝ⁺ 1`` is the minimum-norm least-squares solution of ``Ĝ x = 1``: when the nonzero rows
    are linearly independent, ``ĝ_iᵀ g_u`` is the same positive number for every nonzero row.
    ``Ĝ x`` is the projection of ``1`` onto the range of ``Ĝ``; when it vanishes (``Σ_i ĝ_i = 0``,
    e.g. two exactly opposed tasks) no direction is preferred and ``g_u = 0`` rather than the
    unit vector of round-off noise. "Vanishes" means ``‖Ĝ x‖ ≤ √(m ε_mach)``.
    """
    m = units.shape[0]
    solution = min_norm_solve(units, jnp.ones(m, units.dtype))
    defined = jnp.linalg.norm(units @ solution) > jnp.sqrt(m * jnp.finfo(units.dtype).eps)
    return jnp.where(defined, _unit(solution), 0.0)


def config(grads: Array, *, eps: float | None = None) -> tuple[Array, Info]:
    """ConFIG (Liu et al. 2024): ``update = (Σ_i g_iᵀ g_u) g_u``, ``g_u`` = :func:`config_direction`.

    The direction has equal cosine with every task gradient; its length is the sum of the
    projections of the gradients on it, which shrinks as the conflict grows. ``grads`` (m, D)
    -> ``(D,)``; ``eps``: gradient norm below which a task counts as converged (zero).
    """
    units, _ = unit_rows(grads, eps)
    direction = config_direction(units)
    length = jnp.sum(grads, axis=0) @ direction
    return length * direction, {"update_norm": jnp.abs(length), "cosine": jnp.max(units @ direction)}


# ---------------------------------------------------------------------------------------------
# HRGrad (reconstruction, docs/methods.md §7)


def conflict_levels(units: Array) -> Array:
    """``c_i = max(0, −min_j cos(g_i, g_j)) ∈ [0, 1]`` from unit rows ``units`` (m, D) -> ``(m,)``."""
    return jnp.clip(-jnp.min(units @ units.T, axis=1), 0.0, 1.0)


def harmonised_anchor(units: Array, active: Array) -> tuple[Array, Array]:
    """The anchor ``d*`` of HRGrad and whether it fell back to the ConFIG direction.

    ``d* = U(min-norm point of conv{ĝ_i : active})``, which has ``ĝ_iᵀ d* ≥ ‖p‖ > 0`` for every
    active task; when that point is (numerically) zero the tasks are Pareto-stationary and
    ``d*`` is the ConFIG direction of the unit gradients instead. Zero rows are left out, so a
    converged task does not pin the min-norm point to the origin.
    """
    weights, _ = min_norm_weights(units @ units.T, active)
    point = weights @ units
    norm = jnp.linalg.norm(point)
    stationary = norm <= 10.0 * jnp.sqrt(1e3 * jnp.finfo(units.dtype).eps)
    anchor = jnp.where(stationary, config_direction(units), point / jnp.where(stationary, 1.0, norm))
    return anchor, stationary


def rotate_toward(units: Array, anchor: Array, angles_fraction: Array) -> Array:
    """Rotate each unit row ``ĝ_i`` toward the unit ``anchor`` by ``angles_fraction[i] · ∠(ĝ_i, d*)``.

    In the plane ``span{ĝ_i, d*}`` with orthonormal basis ``ĝ_i``, ``e_i = U(d* − (ĝ_iᵀd*) ĝ_i)``:
    ``r_i = cos θ_i ĝ_i + sin θ_i e_i`` with ``θ_i = angles_fraction[i] · atan2(‖d* − (ĝ_iᵀd*) ĝ_i‖,
    ĝ_iᵀd*)``; unit length is kept, a zero row stays zero when its fraction is zero.
    """
    cos_phi = units @ anchor
    perp = anchor[None, :] - cos_phi[:, None] * units
    sin_phi = jnp.linalg.norm(perp, axis=1)
    theta = angles_fraction * jnp.arctan2(sin_phi, cos_phi)
    has_plane = sin_phi > _norm_floor(units.dtype)
    e = jnp.where(has_plane[:, None], perp / jnp.where(has_plane, sin_phi, 1.0)[:, None], 0.0)
    return jnp.cos(theta)[:, None] * units + jnp.sin(theta)[:, None] * e


def hrgrad(
    grads: Array,
    kappa: float | Array = 0.5,
    max_halvings: int = 4,
    *,
    eps: float | None = None,
) -> tuple[Array, Info]:
    """HRGrad as RECONSTRUCTED in docs/methods.md §7 from the abstract (not the authors' code).

    1. conflict levels ``c_i = max(0, −min_j cos(g_i, g_j))``;
    2. anchor ``d*`` = :func:`harmonised_anchor` (unit min-norm point of ``conv{ĝ_i}``, or the
       ConFIG direction when that point is zero);
    3. ``r_i`` = ``ĝ_i`` rotated toward ``d*`` by ``κ c_i ∠(ĝ_i, d*)`` (:func:`rotate_toward`);
    4. ``g_u = U(R⁺ 1)``, ``update = (Σ_i g_iᵀ g_u) g_u`` with the ORIGINAL gradients;
    5. while some active ``g_iᵀ update ≤ 0``: ``κ ← κ/2`` (at most ``max_halvings`` times), then
       ``κ = 0``, which is ConFIG.

    With ``κ = 0`` or no conflicting pair every ``θ_i = 0`` and the result is ConFIG exactly.
    ``grads`` (m, D) -> ``(D,)``. ``info``: ``kappa_used``, ``halvings`` (attempts rejected),
    ``fell_back`` (ended at ``κ = 0`` after rejections), ``anchor_from_config``, ``max_conflict``.
    """
    units, active = unit_rows(grads, eps)
    conflict = conflict_levels(units)
    anchor, anchor_from_config = harmonised_anchor(units, active)
    total = jnp.sum(grads, axis=0)
    kappa = jnp.asarray(kappa, grads.dtype)

    def attempt(k):
        # Attempt k uses κ/2^k; the attempt after max_halvings halvings is ConFIG (κ = 0).
        kappa_k = jnp.where(k <= max_halvings, kappa * 0.5 ** k.astype(grads.dtype), 0.0)
        direction = config_direction(rotate_toward(units, anchor, kappa_k * conflict))
        update = (total @ direction) * direction
        descent_for_all = jnp.all(jnp.where(active, grads @ update > 0, True))
        return update, descent_for_all, kappa_k

    def rejected(state):
        k, _, ok, _ = state
        return (~ok) & (k <= max_halvings)

    def retry(state):
        k = state[0] + 1
        return (k, *attempt(k))

    # Start from a rejected dummy at k = -1 so that attempt() is traced once, inside the loop.
    start = (jnp.asarray(-1, jnp.int32), jnp.zeros_like(total), jnp.asarray(False), kappa)
    k, update, _, kappa_used = lax.while_loop(rejected, retry, start)
    info = {
        "update_norm": jnp.linalg.norm(update),
        "kappa_used": kappa_used,
        "halvings": k,
        "fell_back": k > max_halvings,
        "anchor_from_config": anchor_from_config,
        "max_conflict": jnp.max(conflict),
    }
    return update, info


# ---------------------------------------------------------------------------------------------
# M-ConFIG (stateful)


class MConfigState(NamedTuple):
    """State of M-ConFIG for ``m`` tasks and ``D`` parameters.

    ``momenta`` (m, D): per-task first moments; ``task_counts`` (m,): updates each has had;
    ``calls`` (): update calls so far (the round-robin position); ``steps`` (): ConFIG steps
    taken since every task was seen once; ``pseudo_momentum`` (D,) and ``second_moment`` (D,):
    the Adam-style second-moment estimate of the ConFIG output.
    """

    momenta: Array
    task_counts: Array
    calls: Array
    steps: Array
    pseudo_momentum: Array
    second_moment: Array


def mconfig_init(m: int, D: int, dtype=jnp.float64) -> MConfigState:
    """Zero M-ConFIG state for ``m`` tasks and ``D`` parameters."""
    zero_int = jnp.zeros((), jnp.int32)
    return MConfigState(
        momenta=jnp.zeros((m, D), dtype),
        task_counts=jnp.zeros(m, jnp.int32),
        calls=zero_int,
        steps=zero_int,
        pseudo_momentum=jnp.zeros(D, dtype),
        second_moment=jnp.zeros(D, dtype),
    )


def mconfig_next_task(state: MConfigState) -> Array:
    """Index of the task whose gradient the next :func:`mconfig_update` call expects (round robin)."""
    return state.calls % state.momenta.shape[0]


def mconfig_update(
    grads: Array,
    state: MConfigState,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    normalise: bool = True,
) -> tuple[Array, MConfigState, Info]:
    """One M-ConFIG step (the momentum variant of Liu et al. 2024, rebuilt from its description).

    ``grads``: the gradient ``(D,)`` of task ``i = mconfig_next_task(state)`` alone (the point of
    M-ConFIG: one backward pass per step), or all task gradients ``(m, D)`` to refresh every
    momentum. Then, with ``t_i`` the number of updates of momentum ``i`` and ``t`` the number
    of ConFIG steps since every task has been seen once:

        m_i ← β₁ m_i + (1 − β₁) g_i,      m̂_i = m_i / (1 − β₁^{t_i}),      g_c = ConFIG(m̂_1..m̂_m)

    With ``normalise`` (the paper's variant) ``g_c`` is further divided by an Adam-style RMS:
    ``g_c`` is read as a bias-corrected first moment, the gradient that would have produced it
    is recovered, ``ĝ = (g_c(1 − β₁^t) − β₁ M) / (1 − β₁)``, ``M ← g_c(1 − β₁^t)``, and
    ``s ← β₂ s + (1 − β₂) ĝ²``, ``update = g_c / (√(s / (1 − β₂^t)) + eps)``. That update is
    already Adam-scaled: feed it to plain SGD. With ``normalise=False`` the update is ``g_c``,
    for any optax optimiser. The update is zero until every task has been seen once.
    ``normalise`` is a Python bool (static under ``jax.jit``); the other hyperparameters may be
    traced. Returns ``(update (D,), new_state, info)``.
    """
    m = state.momenta.shape[0]
    dtype = state.momenta.dtype
    if grads.ndim == 1:
        task = mconfig_next_task(state)
        refreshed = jnp.arange(m) == task
        grads = jnp.broadcast_to(grads, state.momenta.shape)
    else:
        task = jnp.asarray(-1, jnp.int32)
        refreshed = jnp.ones(m, bool)
    momenta = jnp.where(refreshed[:, None], beta1 * state.momenta + (1 - beta1) * grads, state.momenta)
    counts = state.task_counts + refreshed.astype(jnp.int32)
    ready = jnp.all(counts > 0)
    steps = state.steps + ready.astype(jnp.int32)

    bias = 1.0 - beta1 ** counts.astype(dtype)
    corrected = momenta / jnp.where(counts > 0, bias, 1.0)[:, None]
    direction, config_info = config(corrected)

    pseudo_momentum, second_moment = state.pseudo_momentum, state.second_moment
    if normalise:
        t = jnp.maximum(steps, 1).astype(dtype)
        new_pseudo_momentum = direction * (1.0 - beta1**t)
        pseudo_grad = (new_pseudo_momentum - beta1 * pseudo_momentum) / (1.0 - beta1)
        new_second_moment = beta2 * second_moment + (1.0 - beta2) * pseudo_grad**2
        direction = direction / (jnp.sqrt(new_second_moment / (1.0 - beta2**t)) + eps)
        pseudo_momentum = jnp.where(ready, new_pseudo_momentum, pseudo_momentum)
        second_moment = jnp.where(ready, new_second_moment, second_moment)

    update = jnp.where(ready, direction, 0.0)
    new_state = MConfigState(momenta, counts, state.calls + 1, steps, pseudo_momentum, second_moment)
    info = {
        "update_norm": jnp.linalg.norm(update),
        "task": task,
        "ready": ready,
        "cosine": config_info["cosine"],
    }
    return update, new_state, info


# ---------------------------------------------------------------------------------------------
# Diagnostics


def conflict_stats(grads: Array) -> Info:
    """Pairwise conflict between task gradients ``grads`` (m, D).

    Over the pairs ``i < j`` of ``cos_ij = ĝ_iᵀ ĝ_j`` (0 for a zero gradient): ``cos_min``, the
    fraction ``conflict_fraction`` of pairs with ``cos_ij < 0``, and ``cos_mean``. With a single
    task there is no pair: ``cos_min = cos_mean = 1``, ``conflict_fraction = 0``.
    """
    m = grads.shape[0]
    if m < 2:
        one = jnp.ones((), grads.dtype)
        return {"cos_min": one, "conflict_fraction": 0.0 * one, "cos_mean": one}
    units, _ = unit_rows(grads)
    cos = (units @ units.T)[jnp.triu_indices(m, 1)]
    return {
        "cos_min": jnp.min(cos),
        "conflict_fraction": jnp.mean((cos < 0).astype(grads.dtype)),
        "cos_mean": jnp.mean(cos),
    }
