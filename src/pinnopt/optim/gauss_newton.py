"""Gauss–Newton methods: energy natural gradient (ENGD) and Hessian-free (docs/methods.md §3, §5).

Both work on the stacked scaled residual ``r(θ) ∈ R^N`` with ``L = ½‖r‖²`` and its Jacobian
``J ∈ R^{N×D}``, whose Gramian ``G = JᵀJ`` is the Gauss–Newton matrix of ``L`` (and, for a
linear PDE operator, the energy Gramian of [ENGD]). With ``∇L = Jᵀr``:

    ENGD          Δ = −(G + λI)⁺ ∇L                       (G formed, factorised)
    Hessian-free  (G + λI) p = −∇L by conjugate gradients  (G never formed: G v = Jᵀ(J v))

and then ``θ ← θ + αΔ`` with the grid line search ``α ∈ {2^-k}`` (α = 0 if nothing decreases).

ENGD variants (static, chosen when the step is traced):

    full      the D×D system; Cholesky of G + λI, or an eigendecomposition pseudo-inverse
    layer     G restricted to its diagonal blocks, one per linear layer [W, b]
    woodbury  the N×N system in sample space: Δ = −Jᵀ (JJᵀ + λI)⁺ r, cheaper when N < D
    auto      woodbury when N < D, else full

``J`` is built group by group from per-point gradients (``vmap`` of a reverse-mode Jacobian
of one point's residual), which costs a few forward passes; reverse mode over the stacked
residual would cost N of them.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pinnopt.nets import Params
from pinnopt.optim.base import Method, method, more_damping
from pinnopt.optim.gramian import flatten, gramian_vector_product
from pinnopt.optim.linesearch import apply_step, grid_line_search
from pinnopt.residuals import Batch, Objective

VARIANTS = ("auto", "full", "layer", "woodbury")
Variant = Literal["auto", "full", "layer", "woodbury"]
SOLVERS = ("cholesky", "eigh")


# ---------------------------------------------------------------------------------------------
# The Jacobian and the damped solves


def residual_and_jacobian(objective: Objective, params: Params, batch: Batch
                          ) -> tuple[jax.Array, jax.Array]:
    """The stacked scaled residual ``r (N,)`` and its Jacobian ``J (N, D)``.

    Rows follow :meth:`Objective.residual_vector` (groups in order, points, then components);
    columns follow :func:`flatten` of ``params``. Each point's residual depends only on that
    point, so ``J`` is a ``vmap`` over points of one point's Jacobian.
    """
    scales = objective.scales(batch)
    residuals, rows = [], []
    for group in objective.groups:
        scale = scales[group.name]

        def point_residual(p, x, group=group, scale=scale):
            r = scale * group.residual(objective.net, p, x[None]).ravel()
            return r, r

        jac, r = jax.vmap(jax.jacrev(point_residual, has_aux=True), in_axes=(None, 0))(
            params, batch[group.name])
        n, c = r.shape
        leaves = jax.tree_util.tree_leaves(jac)  # (n, c, *leaf shape), in flatten's order
        rows.append(jnp.concatenate([leaf.reshape(n * c, -1) for leaf in leaves], axis=1))
        residuals.append(r.ravel())
    return jnp.concatenate(residuals), jnp.concatenate(rows, axis=0)


def layer_sizes(params: Params) -> list[int]:
    """Entries of each linear layer's ``[W, b]`` block, in :func:`flatten` order.

    A block is the leaves of one innermost container (a layer ``{"W", "b"}``), so a model of
    several networks (``{"g": [...], "rho": [...]}``) gives the layers of each in turn.
    """
    sizes: dict[tuple, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        sizes[path[:-1]] = sizes.get(path[:-1], 0) + leaf.size
    return list(sizes.values())


def pinv_solve(matrix: jax.Array, rhs: jax.Array, damping: jax.Array | float) -> jax.Array:
    """``(M + λI)⁺ b`` for symmetric positive semi-definite ``M (n, n)``, ``b (n,)`` or ``(n, k)``.

    From ``M = V diag(e) Vᵀ``: eigenvalues ``e_i + λ`` at or below ``n · ε_mach · max_i(e_i + λ)``
    count as zero (the cutoff of ``numpy.linalg.lstsq``, which [ENGD] uses), so directions
    that round-off cannot resolve are left out rather than amplified.
    """
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    shifted = eigenvalues + damping
    cutoff = matrix.shape[0] * jnp.finfo(matrix.dtype).eps * jnp.max(shifted)
    kept = shifted > cutoff
    if rhs.ndim == 2:  # several right-hand sides as columns
        kept, shifted = kept[:, None], shifted[:, None]
    coefficients = jnp.where(kept, (vectors.T @ rhs) / jnp.where(kept, shifted, 1.0), 0.0)
    return vectors @ coefficients


def svd_least_squares(jac: jax.Array, residual: jax.Array, damping: jax.Array | float
                      ) -> jax.Array:
    """``Jᵀ(JJᵀ + λI)⁺ r = (JᵀJ + λI)⁺ Jᵀ r`` (flat, ``(D,)``) from the thin SVD of
    ``J (N, D) = U diag(σ) Vᵀ`` itself: ``V diag(σ / (σ² + λ)) Uᵀ r``.

    The SVD is taken as a QR factorisation of the tall one of ``J``, ``Jᵀ`` followed by the
    SVD of the small square ``R`` (on this CPU, for N = 1,020 and D = 9,873, 1.6 s against
    6.0 s for LAPACK's SVD of the wide ``J``, and 0.57 s for forming ``JJᵀ`` with ``eigh``).
    Singular values at or below ``max(N, D) · ε_mach · σ_max`` count as zero (``lstsq``'s
    cutoff). Unlike a solve with ``JJᵀ`` or ``JᵀJ``, which squares the condition number and
    so loses every direction with ``σ² ≤ n·ε·σ_max²``, this resolves singular values down to
    about ``ε·σ_max``: the directions the squared system drops are the ones that hold the
    residual once the loss is small (docs/engd.md, "Why the Woodbury step stalled").
    """
    n, d = jac.shape
    if n <= d:
        q, upper = jnp.linalg.qr(jac.T)          # Jᵀ = Q R, Q (D, N)
        w, sigma, zt = jnp.linalg.svd(upper)     # R = W Σ Zᵀ  ⇒  J = Z Σ (QW)ᵀ
        left_t_r = zt @ residual                 # Uᵀ r with U = Z
        right = lambda c: q @ (w @ c)            # noqa: E731  V c with V = Q W
    else:
        q, upper = jnp.linalg.qr(jac)            # J = Q R, Q (N, D)
        w, sigma, zt = jnp.linalg.svd(upper)     # ⇒ J = (QW) Σ Zᵀ
        left_t_r = w.T @ (q.T @ residual)
        right = lambda c: zt.T @ c               # noqa: E731
    cutoff = max(n, d) * jnp.finfo(jac.dtype).eps * jnp.max(sigma)
    kept = sigma > cutoff
    gain = jnp.where(kept, sigma / jnp.where(kept, sigma**2 + damping, 1.0), 0.0)
    return right(gain * left_t_r)


def damped_solve(matrix: jax.Array, rhs: jax.Array, damping: jax.Array | float, solver: str
                 ) -> tuple[jax.Array, jax.Array]:
    """``(M + λI)⁻¹ b`` for symmetric PSD ``M``; returns the solution and 1.0 where the
    pseudo-inverse was used (else 0.0).

    ``solver="cholesky"``: Cholesky of ``M + λI``; when round-off makes it fail (the factor has
    non-finite entries, i.e. ``M + λI`` is not numerically positive definite) the
    :func:`pinv_solve` pseudo-inverse is used instead.
    ``solver="eigh"``: always the pseudo-inverse.
    """
    if solver == "eigh":
        return pinv_solve(matrix, rhs, damping), jnp.ones((), matrix.dtype)
    damped = matrix + damping * jnp.eye(matrix.shape[0], dtype=matrix.dtype)
    factor = jnp.linalg.cholesky(damped)
    ok = jnp.all(jnp.isfinite(factor))
    solution = lax.cond(
        ok,
        lambda: jax.scipy.linalg.cho_solve((factor, True), rhs),
        lambda: pinv_solve(matrix, rhs, damping),
    )
    return solution, 1.0 - ok.astype(matrix.dtype)


def engd_memory_bytes(variant: str, n: int, sizes: list[int], itemsize: int) -> int:
    """Estimated peak bytes of one ENGD step: ``J`` and its per-group pieces (2·N·D), plus the
    system matrix, its factor and an eigendecomposition fallback (3·K² per K×K system)."""
    d = sum(sizes)
    systems = {"full": [d], "layer": sizes, "woodbury": [n]}[variant]
    return itemsize * (2 * n * d + 3 * sum(k * k for k in systems))


def too_large_message(variant: str, n: int, sizes: list[int], itemsize: int,
                      max_memory_gb: float, name: str = "engd",
                      offered: tuple[str, ...] = ("woodbury", "layer", "full")) -> str:
    """Why a step of method ``name`` does not fit, and what does: the other ``offered``
    variants whose estimate fits in ``max_memory_gb``, else the matrix-free methods."""
    d = sum(sizes)
    needed = engd_memory_bytes(variant, n, sizes, itemsize)
    fits = [f"variant={v} (~{engd_memory_bytes(v, n, sizes, itemsize) / 1e9:.2g} GB)"
            for v in offered if v != variant
            and engd_memory_bytes(v, n, sizes, itemsize) <= max_memory_gb * 1e9]
    way_out = (f"use {' or '.join(fits)}, " if fits else
               "no ENGD variant fits (the Jacobian alone is N x D); ")
    return (f"{name} ({variant}): D = {d} parameters and N = {n} residuals need about "
            f"{needed / 1e9:.3g} GB, over max_memory_gb = {max_memory_gb:g}; {way_out}"
            f"or fewer points, a larger max_memory_gb if the machine has it, or a matrix-free "
            f"method (hessian-free, kfac-star)")


def resolve_variant(variant: str, n: int, d: int) -> str:
    """``auto`` becomes ``woodbury`` for fewer residuals than parameters (N < D), else ``full``."""
    if variant == "auto":
        return "woodbury" if n < d else "full"
    return variant


def checked_variant(objective: Objective, params: Params, batch: Batch, variant: str,
                    max_memory_gb: float, name: str = "engd",
                    offered: tuple[str, ...] = ("woodbury", "layer", "full")) -> str:
    """``variant`` resolved for this batch (:func:`resolve_variant`); raises the
    :func:`too_large_message` ``ValueError`` when the step's estimated memory exceeds
    ``max_memory_gb`` (shapes only: evaluated when the step is traced)."""
    flat, _ = flatten(params)
    sizes = layer_sizes(params)
    n = jax.eval_shape(objective.residual_vector, params, batch).shape[0]
    resolved = resolve_variant(variant, n, flat.size)
    if engd_memory_bytes(resolved, n, sizes, flat.dtype.itemsize) > max_memory_gb * 1e9:
        raise ValueError(too_large_message(resolved, n, sizes, flat.dtype.itemsize,
                                           max_memory_gb, name, offered))
    return resolved


def engd_direction(jac: jax.Array, residual: jax.Array, damping: jax.Array | float,
                   variant: str, solver: str, sizes: list[int]) -> tuple[jax.Array, jax.Array]:
    """The ENGD direction ``Δ = −(JᵀJ + λI)⁻¹ Jᵀ r`` (flat, ``(D,)``) of a resolved ``variant``
    from ``J (N, D)`` and ``r (N,)``, and 1.0 where a solve used the pseudo-inverse."""
    if solver == "svd" and variant != "layer":
        # Woodbury and full are the same step; the SVD of J needs neither JJᵀ nor JᵀJ.
        return -svd_least_squares(jac, residual, damping), jnp.ones((), jac.dtype)
    if variant == "woodbury":
        # (JᵀJ + λI)⁻¹ Jᵀ = Jᵀ (JJᵀ + λI)⁻¹: the same step from an N×N system.
        coefficients, fallback = damped_solve(jac @ jac.T, residual, damping, solver)
        return -(jac.T @ coefficients), fallback
    gradient = jac.T @ residual
    if variant == "full":
        solution, fallback = damped_solve(jac.T @ jac, gradient, damping, solver)
        return -solution, fallback
    pieces, fallbacks, start = [], [], 0
    for size in sizes:
        block = jac[:, start:start + size]
        if solver == "svd":
            solution = svd_least_squares(block, residual, damping)
            fallback = jnp.ones((), jac.dtype)
        else:
            solution, fallback = damped_solve(block.T @ block, gradient[start:start + size],
                                              damping, solver)
        pieces.append(-solution)
        fallbacks.append(fallback)
        start += size
    return jnp.concatenate(pieces), jnp.max(jnp.stack(fallbacks))


# ---------------------------------------------------------------------------------------------
# ENGD


class EngdState(NamedTuple):
    damping: jax.Array  # the current λ (constant unless ``adapt_damping``)


@method("engd", "energy natural gradient (Gauss–Newton, dense Gramian) with a grid line search",
        needs=("residuals",), safer=more_damping())
def engd(objective: Objective, *, variant: Variant = "auto", damping: float = 1e-10,
         solver: Literal["cholesky", "eigh", "svd"] = "eigh", adapt_damping: bool = False,
         min_damping: float = 0.0, max_memory_gb: float = 4.0,
         line_search_candidates: int = 31) -> Method:
    """Energy natural gradient / Gauss–Newton with a grid line search ([ENGD], docs/methods.md §3).

    ``damping`` is the absolute ``λ`` added to ``G`` (for the scaled loss ``L = ½‖r‖²``, so the
    values tuned in [KFAC], 0 to 1e-8, carry over). With ``adapt_damping`` (an extension, off
    by default) ``λ`` follows Martens' rule (:func:`martens_damping`) on the reduction ratio of
    the full step, ``ρ = (L(θ + Δ) − L(θ)) / (∇LᵀΔ + ½‖JΔ‖²)``, as in Hessian-free, and never
    falls below ``min_damping``: with points redrawn every step, ρ measures the fit to one batch,
    and a floor keeps λ from falling so far that a step fits that batch at the others' expense.
    ``max_memory_gb`` bounds the estimated memory of ``J`` and the system
    (:func:`engd_memory_bytes`); a larger problem raises a ``ValueError`` when the step is
    traced instead of running out of memory.
    State: :class:`EngdState`. Info: ``loss``, ``step_size`` (α), ``damping`` (the λ used),
    ``pseudo_inverse`` (1 when the pseudo-inverse was used: ``solver="eigh"``, or a Cholesky
    factorisation failed), and ``rho`` with ``adapt_damping``.
    """
    if not damping >= 0:
        raise ValueError(f"engd: damping must be non-negative, got {damping}")
    if not min_damping >= 0:
        raise ValueError(f"engd: min_damping must be non-negative, got {min_damping}")
    if not max_memory_gb > 0:
        raise ValueError(f"engd: max_memory_gb must be positive, got {max_memory_gb}")
    if line_search_candidates < 1:
        raise ValueError(
            f"engd: line_search_candidates must be at least 1, got {line_search_candidates}")

    def init(params):
        flat, _ = flatten(params)
        return EngdState(jnp.asarray(damping, flat.dtype))

    def step(params, state, batch, key):
        flat, unravel = flatten(params)
        sizes = layer_sizes(params)
        resolved = checked_variant(objective, params, batch, variant, max_memory_gb)
        loss_fn = lambda p: objective.loss(p, batch)  # noqa: E731
        residual, jac = residual_and_jacobian(objective, params, batch)
        loss = 0.5 * jnp.sum(residual**2)
        lam = state.damping
        flat_direction, fallback = engd_direction(jac, residual, lam, resolved, solver, sizes)
        direction = unravel(flat_direction)
        alpha, _ = grid_line_search(loss_fn, params, direction, loss, line_search_candidates)
        info = {"loss": loss, "step_size": alpha, "damping": lam, "pseudo_inverse": fallback}
        if adapt_damping:
            model_step = jac @ flat_direction
            predicted = (residual @ model_step) + 0.5 * jnp.sum(model_step**2)
            info["rho"] = (loss_fn(apply_step(params, direction, 1.0)) - loss) / predicted
            state = EngdState(martens_damping(lam, info["rho"], min_damping))
        return apply_step(params, direction, alpha), state, info

    return Method(init, step)


# ---------------------------------------------------------------------------------------------
# Hessian-free


class CGResult(NamedTuple):
    solution: jax.Array
    iterations: jax.Array
    residual_norm: jax.Array


def conjugate_gradient(operator: Callable[[jax.Array], jax.Array], rhs: jax.Array,
                       start: jax.Array, max_iterations: int, tol: float) -> CGResult:
    """Conjugate gradients for ``A x = b`` with ``A`` symmetric positive definite, from ``start``.

    Stops when ``‖b − A x‖ ≤ tol · ‖b‖`` or after ``max_iterations`` products with ``A``.
    """
    threshold = tol * jnp.linalg.norm(rhs)
    residual = rhs - operator(start)
    norm_sq = residual @ residual
    tiny = jnp.finfo(rhs.dtype).tiny

    def keep_going(carry):
        _, _, _, norm_sq, it = carry
        return (it < max_iterations) & (jnp.sqrt(norm_sq) > threshold)

    def body(carry):
        x, residual, search, norm_sq, it = carry
        product = operator(search)
        alpha = norm_sq / jnp.maximum(search @ product, tiny)
        x = x + alpha * search
        residual = residual - alpha * product
        new_norm_sq = residual @ residual
        search = residual + (new_norm_sq / jnp.maximum(norm_sq, tiny)) * search
        return x, residual, search, new_norm_sq, it + 1

    carry = (start, residual, residual, norm_sq, jnp.zeros((), jnp.int32))
    x, _, _, norm_sq, iterations = lax.while_loop(keep_going, body, carry)
    return CGResult(x, iterations, jnp.sqrt(norm_sq))


def martens_damping(damping: jax.Array, ratio: jax.Array, floor: float = 0.0) -> jax.Array:
    """Martens' (2010) rule: ``λ·3/2`` if ``ρ < 1/4``, ``λ·2/3`` if ``ρ > 3/4``, else ``λ``.

    A non-finite ``ρ`` counts as ``ρ < 1/4``. ``λ`` is kept at least ``max(floor, 1e-30)`` so
    that it can grow again after a long run of good steps.
    """
    bad = ~jnp.isfinite(ratio) | (ratio < 0.25)
    good = jnp.isfinite(ratio) & (ratio > 0.75)
    new = jnp.where(bad, damping * 1.5, jnp.where(good, damping * (2.0 / 3.0), damping))
    return jnp.maximum(new, max(floor, 1e-30))


class HessianFreeState(NamedTuple):
    direction: jax.Array  # the previous CG solution p, flat (D,)
    damping: jax.Array    # the current λ


@method("hessian-free",
        "Hessian-free: Gauss–Newton by conjugate gradients, Martens damping, grid line search",
        needs=("residuals",), safer=more_damping())
def hessian_free(objective: Objective, *, damping: float = 1e-6, cg_iters: int = 100,
                 cg_tol: float = 1e-10, adapt_damping: bool = True, warm_start: bool = True,
                 line_search_candidates: int = 31) -> Method:
    """Hessian-free (Gauss–Newton–CG) with Martens' damping and the grid line search (§5).

    Each step solves ``(G + λI) p = −∇L`` by :func:`conjugate_gradient` with Gramian–vector
    products ``G v = Jᵀ(J v)`` (:func:`gramian_vector_product`), starting from the previous
    ``p`` (``warm_start``; from 0 when the previous ``p`` does not lower the damped quadratic
    model). The reduction ratio at the CG solution

        ρ = (L(θ + p) − L(θ)) / (∇Lᵀp + ½ pᵀGp)        (the undamped Gauss–Newton model)

    adapts ``λ`` (:func:`martens_damping`) when ``adapt_damping``; the step is then ``α p`` with
    the grid line search. State: :class:`HessianFreeState`. Info: ``loss``, ``step_size``,
    ``damping`` (the λ used), ``rho``, ``cg_iterations``, ``cg_residual`` (relative).
    """
    if not damping >= 0:
        raise ValueError(f"hessian-free: damping must be non-negative, got {damping}")
    if cg_iters < 1:
        raise ValueError(f"hessian-free: cg_iters must be at least 1, got {cg_iters}")
    if not cg_tol >= 0:
        raise ValueError(f"hessian-free: cg_tol must be non-negative, got {cg_tol}")
    if line_search_candidates < 1:
        raise ValueError(
            f"hessian-free: line_search_candidates must be at least 1, "
            f"got {line_search_candidates}")

    def init(params):
        flat, _ = flatten(params)
        return HessianFreeState(jnp.zeros_like(flat), jnp.asarray(damping, flat.dtype))

    def step(params, state, batch, key):
        flat, unravel = flatten(params)
        loss_fn = lambda p: objective.loss(p, batch)  # noqa: E731
        loss, grad_tree = jax.value_and_grad(loss_fn)(params)
        gradient, _ = flatten(grad_tree)
        gvp_tree = gramian_vector_product(objective, params, batch)

        def gramian(v):
            return flatten(gvp_tree(unravel(v)))[0]

        lam = state.damping

        def damped(v):
            return gramian(v) + lam * v

        start = jnp.zeros_like(flat)
        if warm_start:
            previous = state.direction
            model = 0.5 * previous @ damped(previous) + gradient @ previous
            start = jnp.where(model < 0, previous, start)
        cg = conjugate_gradient(damped, -gradient, start, cg_iters, cg_tol)
        p = cg.solution

        predicted = gradient @ p + 0.5 * p @ gramian(p)
        actual = loss_fn(apply_step(params, unravel(p), 1.0)) - loss
        rho = actual / predicted
        new_damping = martens_damping(lam, rho) if adapt_damping else lam

        direction = unravel(p)
        alpha, _ = grid_line_search(loss_fn, params, direction, loss, line_search_candidates)
        info = {
            "loss": loss,
            "step_size": alpha,
            "damping": lam,
            "rho": rho,
            "cg_iterations": cg.iterations,
            "cg_residual": cg.residual_norm / jnp.maximum(jnp.linalg.norm(gradient),
                                                          jnp.finfo(flat.dtype).tiny),
        }
        return apply_step(params, direction, alpha), HessianFreeState(p, new_damping), info

    return Method(init, step)

