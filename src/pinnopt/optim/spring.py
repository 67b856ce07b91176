"""Sample-space Gauss–Newton with SPRING momentum, and randomised-subspace Levenberg–Marquardt
(docs/methods.md §10).

Both work, like ENGD (:mod:`pinnopt.optim.gauss_newton`), on the stacked scaled residual
``r(θ) ∈ R^N`` with ``L = ½‖r‖²`` and its Jacobian ``J ∈ R^{N×D}``.

``spring``: the damped Gauss–Newton step in sample space (ENGD-W) with SPRING momentum,

    φ_k = argmin_φ ‖Jφ − r‖² + λ‖φ − μφ_{k−1}‖² = μφ_{k−1} + Jᵀ(JJᵀ + λI)⁻¹(r − μJφ_{k−1}),
    θ ← θ − α φ_k,

with α from the grid line search along −φ_k or a fixed η. The N×N system is solved densely
(``eigh``/``cholesky``, as ``engd(variant="woodbury")``) or by preconditioned conjugate
gradients (``cg``) with matrix-free products ``J v`` (JVP) and ``Jᵀ u`` (VJP), so that
neither ``JJᵀ`` nor ``J`` is formed; the preconditioner is a randomised rank-``k`` Nyström
approximation of ``JJᵀ`` (:func:`nystrom`).

``subspace-lm``: each step draws a random subspace ``P ∈ R^{D×k}`` and, optionally, a row
sketch ``S ∈ R^{m×N}``, solves the damped, sketched Gauss–Newton model in the subspace,

    z = argmin_z ‖S(r + JPz)‖² + λ‖z‖²,      Δ = P z,

and accepts ``θ + Δ`` when the ratio of actual to predicted decrease is large enough; ``λ``
follows the Levenberg–Marquardt rule (:func:`lm_damping`).

Why the CG loop is written here rather than taken from lineax: lineax 0.1.1 works with this
project's jax (checked: its preconditioned CG on a 20×20 system, float64, inside ``jit``), but
it brings equinox, jaxtyping and wadler_lindig as dependencies and supplies only the loop;
the Nyström preconditioner, the stopping rule and the reported residual are ours either way,
and each iteration's cost is one JVP and one VJP of the residual, which lineax would not
change. The loop is :func:`preconditioned_cg`, about 30 lines.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pinnopt.nets import Params
from pinnopt.optim.base import Method, method, more_damping
from pinnopt.optim.gauss_newton import (
    damped_solve,
    engd_memory_bytes,
    layer_sizes,
    residual_and_jacobian,
    svd_least_squares,
)
from pinnopt.optim.gramian import flatten
from pinnopt.optim.linesearch import apply_step, grid_line_search
from pinnopt.residuals import Batch, Objective


# ---------------------------------------------------------------------------------------------
# Matrix-free Jacobian products


def residual_products(objective: Objective, params: Params, batch: Batch
                      ) -> tuple[jax.Array, Callable[[jax.Array], jax.Array],
                                 Callable[[jax.Array], jax.Array]]:
    """The stacked scaled residual ``r (N,)`` and the linear maps ``v ↦ J v`` (``(D,) → (N,)``)
    and ``u ↦ Jᵀ u`` (``(N,) → (D,)``) at ``params``, on flat parameter vectors.

    One linearisation of the residual serves both (the VJP is the transpose of the JVP), so
    a product costs about one forward (JVP) or backward (VJP) pass; ``J`` is never formed.
    """
    flat, unravel = flatten(params)
    residual, jvp = jax.linearize(lambda f: objective.residual_vector(unravel(f), batch), flat)
    transpose = jax.linear_transpose(jvp, flat)
    return residual, jvp, lambda u: transpose(u)[0]


# ---------------------------------------------------------------------------------------------
# Preconditioned conjugate gradients and the Nyström preconditioner


class PCGResult(NamedTuple):
    solution: jax.Array   # x (n,)
    iterations: jax.Array  # products with A taken in the loop
    residual: jax.Array   # ‖b − A x‖ / ‖b‖, recomputed at the end


def preconditioned_cg(operator: Callable[[jax.Array], jax.Array], rhs: jax.Array,
                      preconditioner: Callable[[jax.Array], jax.Array], max_iterations: int,
                      tol: float) -> PCGResult:
    """Preconditioned conjugate gradients for ``A x = b`` (``A`` symmetric positive definite,
    ``M⁻¹ ≈ A⁻¹`` symmetric positive definite), from ``x = 0``.

    Iterates ``x ← x + a p``, ``g ← g − a A p`` with ``a = gᵀy / pᵀAp``, ``y = M⁻¹ g``,
    ``p ← y + (g_newᵀ y_new / gᵀ y) p`` until ``‖g‖ ≤ tol · ‖b‖`` or ``max_iterations``
    products; ``g`` is the recursively updated residual ``b − A x``. The reported relative
    residual is recomputed from ``x`` with one more product.
    """
    tiny = jnp.finfo(rhs.dtype).tiny
    rhs_norm = jnp.linalg.norm(rhs)
    threshold = tol * rhs_norm
    precond = preconditioner(rhs)
    carry = (jnp.zeros_like(rhs), rhs, precond, rhs @ precond, jnp.zeros((), jnp.int32))

    def keep_going(carry):
        _, g, _, _, it = carry
        return (it < max_iterations) & (jnp.linalg.norm(g) > threshold)

    def body(carry):
        x, g, p, gy, it = carry
        product = operator(p)
        a = gy / jnp.maximum(p @ product, tiny)
        x = x + a * p
        g = g - a * product
        y = preconditioner(g)
        new_gy = g @ y
        p = y + (new_gy / jnp.maximum(gy, tiny)) * p
        return x, g, p, new_gy, it + 1

    x, _, _, _, iterations = lax.while_loop(keep_going, body, carry)
    residual = jnp.linalg.norm(rhs - operator(x)) / jnp.maximum(rhs_norm, tiny)
    return PCGResult(x, iterations, residual)


class Nystrom(NamedTuple):
    basis: jax.Array        # U (n, k), orthonormal columns
    eigenvalues: jax.Array  # Λ̂ (k,), descending, ≥ 0: A ≈ U diag(Λ̂) Uᵀ


def nystrom(product: Callable[[jax.Array], jax.Array], n: int, rank: int, key: jax.Array,
            dtype) -> Nystrom:
    """Randomised rank-``k`` Nyström approximation ([NYS]) ``Â = (AΩ)(ΩᵀAΩ)⁻¹(AΩ)ᵀ`` of a
    symmetric positive semi-definite ``A (n, n)`` given as ``product: X (n, k) ↦ A X``.

    ``Ω (n, k)``: orthonormalised Gaussian columns from ``key``. For stability the
    factorisation is of the shifted ``A + νI`` with ``ν = √n · ε · ‖AΩ‖_F``: with
    ``Y = (A + νI)Ω``, ``ΩᵀY = CCᵀ`` (Cholesky) and ``B = Y C⁻ᵀ``, ``Â + νI ≈ BBᵀ``; the SVD
    ``B = U Σ Vᵀ`` gives ``Λ̂ = max(Σ² − ν, 0)``. If round-off still breaks the Cholesky
    factor, the result is ``U = 0, Λ̂ = 0`` (the preconditioner becomes the identity).
    """
    omega, _ = jnp.linalg.qr(jax.random.normal(key, (n, rank), dtype))
    y = product(omega)
    shift = math.sqrt(n) * jnp.finfo(dtype).eps * jnp.linalg.norm(y)
    y = y + shift * omega
    core = omega.T @ y
    factor = jnp.linalg.cholesky(0.5 * (core + core.T))
    b = jax.scipy.linalg.solve_triangular(factor, y.T, lower=True).T
    u, s, _ = jnp.linalg.svd(b, full_matrices=False)
    eigenvalues = jnp.maximum(s**2 - shift, 0.0)
    ok = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(eigenvalues))
    return Nystrom(jnp.where(ok, u, 0.0), jnp.where(ok, eigenvalues, 0.0))


def nystrom_preconditioner(approx: Nystrom, damping: jax.Array | float
                           ) -> Callable[[jax.Array], jax.Array]:
    """``v ↦ P⁻¹ v`` for ``A + λI`` from ``A ≈ U diag(Λ̂) Uᵀ``:

        P⁻¹ = (λ̂_k + λ) U (Λ̂ + λI)⁻¹ Uᵀ + (I − UUᵀ),

    ``λ̂_k`` the smallest kept eigenvalue. Where ``Â`` is exact, ``P⁻¹(A + λI)`` is
    ``λ̂_k + λ`` on span(U) and ``A + λI`` itself on the complement, whose eigenvalues are at
    most about ``λ̂_k + λ``; so the preconditioned spectrum lies in about
    ``[λ, λ̂_k + λ]`` and CG's iteration count follows ``√((λ̂_k + λ)/λ)`` instead of
    ``√((λ_max + λ)/λ)``.
    """
    u, lam_hat = approx
    scale = lam_hat[-1] + damping

    def apply(v):
        coefficients = u.T @ v
        return u @ (coefficients * (scale / (lam_hat + damping) - 1.0)) + v

    return apply


# ---------------------------------------------------------------------------------------------
# SPRING


class SpringState(NamedTuple):
    phi: jax.Array      # φ_{k−1}, flat (D,); 0 at the start and after a refused line search
    damping: jax.Array  # λ (constant; in the state so that one compilation serves every λ)


@method("spring",
        "sample-space Gauss–Newton (ENGD-W) with SPRING momentum: dense or Nyström-CG solve, "
        "line search or fixed step", needs=("residuals",), safer=more_damping())
def spring(objective: Objective, *, damping: float = 1e-8, momentum: float = 0.5,
           step_rule: Literal["line-search", "fixed"] = "line-search", lr: float = 0.1,
           solver: Literal["eigh", "cholesky", "svd", "cg"] = "eigh", cg_iters: int = 200,
           cg_tol: float = 1e-10, preconditioner_rank: int = 64, max_memory_gb: float = 4.0,
           line_search_candidates: int = 31) -> Method:
    """SPRING ([SPRING], for PINNs [ENGD-W]; docs/methods.md §10):

        φ_k = μ φ_{k−1} + Jᵀ (JJᵀ + λI)⁻¹ (r − μ J φ_{k−1}),      θ ← θ − α φ_k,

    the minimiser of ``‖Jφ − r‖² + λ‖φ − μφ_{k−1}‖²``: the Gauss–Newton step, pulled towards
    the previous one by ``λ``. With ``μ = 0`` it is ``engd(variant="woodbury")``'s step.
    Shapes: ``r (N,)``, ``J (N, D)``, ``φ (D,)``, the system ``N × N``.

    Settings:

    - ``damping`` λ (absolute, for ``L = ½‖r‖²``). Besides regularising the N×N system it sets
      how strongly φ_k is pulled towards μφ_{k−1}: as λ → 0 the momentum survives only in the
      null space of ``J``, ``φ_k → J⁺r + μ(I − J⁺J)φ_{k−1}``.
    - ``momentum`` μ ∈ [0, 1). Default 0.5, not [ENGD-W]'s 0.83 (which goes with their fixed,
      tuned η on 5d Poisson): with the default line search on 2d Poisson, μ = 0.5 left the
      random start in fewer steps (RMS 2.2e-5 at step 30 against 0.44) and the two were
      level from about step 250 on (docs/engd.md, Measurements).
    - ``step_rule``: ``line-search`` (default): α from the grid line search along −φ_k on the
      step's batch, which needs no tuning and survives the random start, where the
      undamped Gauss–Newton step is far too long; ``fixed``: α = ``lr`` (η), SPRING's form.
      When the line search finds no decrease (α = 0) the stored φ_k is reset to 0, so the
      next step is the plain ENGD-W step instead of a repeat of the refused one.
    - ``solver``: ``eigh`` (pseudo-inverse of ``JJᵀ + λI``, as engd's default) or
      ``cholesky`` (with the eigh fallback) on the formed N×N matrix; ``svd``: the thin SVD
      of ``J`` itself (:func:`~pinnopt.optim.gauss_newton.svd_least_squares`), which does not
      square ``J``'s condition number and so keeps converging where the N×N pseudo-inverse
      stalls (about 3× the cost of ``eigh``); or ``cg``: conjugate
      gradients on ``(JJᵀ + λI) x = r − μJφ_{k−1}`` with products ``JJᵀu = J(Jᵀu)`` (a VJP and
      a JVP), preconditioned by a rank-``preconditioner_rank`` Nyström approximation of
      ``JJᵀ`` (random from the step's key; 0: no preconditioner), at most ``cg_iters``
      iterations, stopping at relative residual ``cg_tol``. CG needs λ well above round-off
      (JJᵀ is singular when N > D); it is for problems whose N×N matrix or J does not fit.
    - ``max_memory_gb``: the dense solvers' memory estimate (``engd_memory_bytes``, woodbury)
      above which the step raises a one-line ``ValueError`` when traced.

    State: :class:`SpringState`. Info: ``loss``, ``step_size`` (α), ``damping``; dense:
    ``pseudo_inverse``; cg: ``cg_iterations``, ``cg_residual`` (relative, ``‖b − Ax‖/‖b‖``).
    """
    if not damping >= 0:
        raise ValueError(f"spring: damping must be non-negative, got {damping}")
    if not 0 <= momentum < 1:
        raise ValueError(f"spring: momentum must be in [0, 1), got {momentum}")
    if not lr > 0:
        raise ValueError(f"spring: lr must be positive, got {lr}")
    if cg_iters < 1:
        raise ValueError(f"spring: cg_iters must be at least 1, got {cg_iters}")
    if not cg_tol >= 0:
        raise ValueError(f"spring: cg_tol must be non-negative, got {cg_tol}")
    if preconditioner_rank < 0:
        raise ValueError(f"spring: preconditioner_rank must be >= 0, got {preconditioner_rank}")
    if solver == "cg" and not damping > 0:
        raise ValueError("spring: solver 'cg' needs damping > 0 (JJᵀ is singular when N > D)")
    if not max_memory_gb > 0:
        raise ValueError(f"spring: max_memory_gb must be positive, got {max_memory_gb}")
    if line_search_candidates < 1:
        raise ValueError(
            f"spring: line_search_candidates must be at least 1, got {line_search_candidates}")

    def init(params):
        flat, _ = flatten(params)
        return SpringState(jnp.zeros_like(flat), jnp.asarray(damping, flat.dtype))

    def dense_phi(params, batch, previous, lam):
        flat, _ = flatten(params)
        n = jax.eval_shape(objective.residual_vector, params, batch).shape[0]
        needed = engd_memory_bytes("woodbury", n, layer_sizes(params), flat.dtype.itemsize)
        if needed > max_memory_gb * 1e9:
            raise ValueError(
                f"spring ({solver}): D = {flat.size} parameters and N = {n} residuals need "
                f"about {needed / 1e9:.3g} GB, over max_memory_gb = {max_memory_gb:g}; use "
                f"fewer points or solver 'cg'")
        residual, jac = residual_and_jacobian(objective, params, batch)
        rhs = residual - momentum * (jac @ previous) if momentum else residual
        if solver == "svd":
            phi, fallback = svd_least_squares(jac, rhs, lam), jnp.ones((), jac.dtype)
        else:
            coefficients, fallback = damped_solve(jac @ jac.T, rhs, lam, solver)
            phi = jac.T @ coefficients
        if momentum:
            phi = phi + momentum * previous
        return residual, phi, {"pseudo_inverse": fallback}

    def cg_phi(params, batch, previous, lam, key):
        residual, jvp, vjp = residual_products(objective, params, batch)
        rhs = residual - momentum * jvp(previous) if momentum else residual

        def operator(u):
            return jvp(vjp(u)) + lam * u

        n = residual.size
        rank = min(preconditioner_rank, n)
        if rank > 0:
            if key is None:
                raise ValueError("spring: the Nyström preconditioner needs the step's key")
            gram = jax.vmap(lambda u: jvp(vjp(u)), in_axes=1, out_axes=1)
            precond = nystrom_preconditioner(nystrom(gram, n, rank, key, residual.dtype), lam)
        else:
            precond = lambda u: u  # noqa: E731
        cg = preconditioned_cg(operator, rhs, precond, cg_iters, cg_tol)
        phi = vjp(cg.solution)
        if momentum:
            phi = phi + momentum * previous
        return residual, phi, {"cg_iterations": cg.iterations, "cg_residual": cg.residual}

    def step(params, state, batch, key):
        _, unravel = flatten(params)
        lam = state.damping
        if solver == "cg":
            residual, phi, extra = cg_phi(params, batch, state.phi, lam, key)
        else:
            residual, phi, extra = dense_phi(params, batch, state.phi, lam)
        loss = 0.5 * jnp.sum(residual**2)
        direction = unravel(-phi)
        if step_rule == "line-search":
            loss_fn = lambda p: objective.loss(p, batch)  # noqa: E731
            alpha, _ = grid_line_search(loss_fn, params, direction, loss, line_search_candidates)
            phi = jnp.where(alpha > 0, phi, 0.0)
        else:
            alpha = jnp.asarray(lr, loss.dtype)
        info = {"loss": loss, "step_size": alpha, "damping": lam, **extra}
        return apply_step(params, direction, alpha), SpringState(phi, lam), info

    return Method(init, step)


# ---------------------------------------------------------------------------------------------
# Randomised-subspace Levenberg–Marquardt


def random_subspace(key: jax.Array, d: int, k: int, kind: str, dtype) -> jax.Array:
    """A random ``P (D, k)`` with ``E[PPᵀ] = I``.

    ``dct``: a subsampled randomised DCT, ``P = √(D/k) · diag(s) · Fᵀ[:, I]`` with ``s`` random
    signs, ``F`` the orthonormal DCT-II matrix (``F[i, n] = c_i cos(π i (2n+1) / 2D)``,
    ``c_0 = √(1/D)``, ``c_i = √(2/D)``) and ``I`` ``k`` distinct random frequencies. Its columns
    are orthogonal, each of norm ``√(D/k)``, so at ``k = D`` it is an orthogonal matrix; the
    signs spread any fixed direction evenly over the frequencies.
    ``gaussian``: independent ``N(0, 1/k)`` entries.
    """
    sign_key, pick_key = jax.random.split(key)
    if kind == "gaussian":
        return jax.random.normal(key, (d, k), dtype) / math.sqrt(k)
    signs = jax.random.rademacher(sign_key, (d,), dtype)
    freqs = jax.random.permutation(pick_key, d)[:k].astype(dtype)
    n = jnp.arange(d, dtype=dtype)
    cosines = jnp.cos(jnp.pi * freqs[None, :] * (2 * n[:, None] + 1) / (2 * d))
    norms = jnp.where(freqs == 0, math.sqrt(1.0 / d), math.sqrt(2.0 / d))
    return math.sqrt(d / k) * signs[:, None] * cosines * norms[None, :]


def count_sketch(key: jax.Array, m: int, matrix: jax.Array, vector: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """``(S A, S b)`` for a count-sketch ``S ∈ R^{m×N}``: row ``i`` of ``A (N, k)`` and entry
    ``i`` of ``b (N,)`` are added, with a random sign ``s_i``, into row ``h(i)`` (uniform in
    ``0 .. m−1``). ``E[SᵀS] = I``; each column of ``S`` has one non-zero."""
    bucket_key, sign_key = jax.random.split(key)
    n = vector.shape[0]
    buckets = jax.random.randint(bucket_key, (n,), 0, m)
    signs = jax.random.rademacher(sign_key, (n,), vector.dtype)
    sketched = jax.ops.segment_sum(signs[:, None] * matrix, buckets, num_segments=m)
    return sketched, jax.ops.segment_sum(signs * vector, buckets, num_segments=m)


def lm_damping(damping: jax.Array, ratio: jax.Array, grow: float, shrink: float,
               low: float, high: float) -> jax.Array:
    """The Levenberg–Marquardt rule: ``λ·grow`` if ``ρ < 1/4`` (a non-finite ρ counts as such;
    every rejected step is one), ``λ/shrink`` if ``ρ > 3/4``, else ``λ``; clipped to
    ``[low, high]``."""
    bad = ~jnp.isfinite(ratio) | (ratio < 0.25)
    good = jnp.isfinite(ratio) & (ratio > 0.75)
    new = jnp.where(bad, damping * grow, jnp.where(good, damping / shrink, damping))
    return jnp.clip(new, low, high)


def subspace_memory_bytes(explicit: bool, n: int, d: int, k: int, m: int, itemsize: int) -> int:
    """Estimated peak bytes of one subspace step: ``J`` and its pieces (2·N·D, explicit only),
    ``P`` (D·k), ``JP`` and its sketch (N·k + m·k), the k×k system with factor and
    eigendecomposition fallback (3·k²)."""
    return itemsize * ((2 * n * d if explicit else 0) + d * k + (n + m) * k + 3 * k * k)


class SubspaceState(NamedTuple):
    damping: jax.Array  # λ for the next step


@method("subspace-lm",
        "randomised-subspace Gauss–Newton / Levenberg–Marquardt: random DCT subspace, optional "
        "count-sketch, ratio test, LM damping", needs=("residuals",), safer=more_damping())
def subspace_lm(objective: Objective, *, subspace_dim: int = 128,
                subspace: Literal["dct", "gaussian"] = "dct", sketch_rows: int = 0,
                damping: float = 1e-3, damping_min: float = 1e-12, damping_max: float = 1e8,
                grow: float = 4.0, shrink: float = 3.0, accept_ratio: float = 1e-4,
                solver: Literal["cholesky", "eigh"] = "cholesky",
                jacobian: Literal["auto", "explicit", "jvp"] = "auto",
                float32_until: float = 0.0, max_memory_gb: float = 4.0) -> Method:
    """Randomised-subspace Levenberg–Marquardt ([RSGN], [DSGNAR]; docs/methods.md §10).

    Each step, from the step's key (so runs are reproducible and resume exactly):

    1. draw ``P ∈ R^{D×k}`` (:func:`random_subspace`, ``k = min(subspace_dim, D)``) and, if
       ``sketch_rows = m > 0``, a count-sketch ``S ∈ R^{m×N}`` (:func:`count_sketch`; else
       ``S = I``);
    2. form ``JP (N, k)``: ``J @ P`` from the explicit Jacobian, or ``k`` JVPs (``jacobian``;
       ``auto`` takes the explicit ``J`` when the memory estimate fits ``max_memory_gb``);
    3. solve ``(AᵀA + λI) z = −Aᵀb`` with ``A = SJP (m, k)``, ``b = Sr`` — the minimiser of
       ``‖S(r + JPz)‖² + λ‖z‖²`` — by ``solver`` (:func:`damped_solve`); ``Δ = Pz``;
    4. ``ρ = (L(θ) − L(θ + Δ)) / pred`` with the decrease the (unsketched, undamped)
       Gauss–Newton model predicts, ``pred = ½‖r‖² − ½‖r + JPz‖²``;
    5. accept ``θ + Δ`` iff ``pred > 0``, ``L(θ + Δ)`` is finite and ``ρ > accept_ratio``; then
       ``λ`` by :func:`lm_damping` (grow on ρ < 1/4 or rejection, shrink on ρ > 3/4, kept in
       ``[damping_min, damping_max]``).

    ``damping`` is the initial λ. ``subspace``: ``dct`` (default) has orthogonal columns of
    equal norm, so ``λ‖z‖² = (k/D)·λ‖Δ‖²`` exactly and a full subspace (``k = D``) gives the
    exact damped Gauss–Newton step ``−(JᵀJ + λI)⁻¹Jᵀr``, and it costs ``O(Dk)`` cosines;
    ``gaussian`` columns are only nearly orthogonal (worse conditioned for ``k`` near ``D``).

    ``float32_until > 0``: while the loss at the incoming parameters is above it, the
    residual, ``JP`` and the k×k solve run in float32 (parameters and points cast); the loss,
    the trial loss, ρ and the update stay in float64. Both precisions are compiled
    (``lax.cond``), so a run switches to float64 by itself once the loss falls below the
    threshold. (This is the "float32 early, float64 to finish" recipe of [DSGNAR] for the
    model's linear algebra; a whole float32 phase, parameters included, is a
    ``sequence(...)`` of runs, which the trainer does not offer within one run, since a run
    has one dtype.)

    State: :class:`SubspaceState`. Info: ``loss``, ``step_size`` (1 accepted, 0 rejected),
    ``damping`` (the λ used), ``rho``, ``predicted``, ``pseudo_inverse``, and ``float32``
    (1 in the float32 phase) with ``float32_until``.
    """
    if subspace_dim < 1:
        raise ValueError(f"subspace-lm: subspace_dim must be at least 1, got {subspace_dim}")
    if sketch_rows < 0:
        raise ValueError(f"subspace-lm: sketch_rows must be >= 0 (0: no sketch), got {sketch_rows}")
    if not 0 < damping_min <= damping <= damping_max:
        raise ValueError(f"subspace-lm: need 0 < damping_min <= damping <= damping_max, got "
                         f"{damping_min}, {damping}, {damping_max}")
    if not (grow > 1 and shrink > 1):
        raise ValueError(f"subspace-lm: grow and shrink must exceed 1, got {grow}, {shrink}")
    if not 0 <= accept_ratio < 0.25:
        raise ValueError(f"subspace-lm: accept_ratio must be in [0, 0.25), got {accept_ratio}")
    if not float32_until >= 0:
        raise ValueError(f"subspace-lm: float32_until must be >= 0, got {float32_until}")
    if not max_memory_gb > 0:
        raise ValueError(f"subspace-lm: max_memory_gb must be positive, got {max_memory_gb}")

    def init(params):
        flat, _ = flatten(params)
        return SubspaceState(jnp.asarray(damping, flat.dtype))

    def model_solve(params, batch, basis, sketch_key, lam, explicit):
        """``z (k,)``, ``r (N,)``, ``JPz (N,)`` and the fallback flag, in the inputs' dtype."""
        if explicit:
            residual, jac = residual_and_jacobian(objective, params, batch)
            jp = jac @ basis
        else:
            residual, jvp, _ = residual_products(objective, params, batch)
            jp = jax.vmap(jvp, in_axes=1, out_axes=1)(basis)
        a, b = (jp, residual) if not sketch_rows else count_sketch(sketch_key, sketch_rows, jp,
                                                                   residual)
        z, fallback = damped_solve(a.T @ a, -(a.T @ b), lam.astype(a.dtype), solver)
        return z, residual, jp @ z, fallback

    def step(params, state, batch, key):
        if key is None:
            raise ValueError("subspace-lm draws its subspace from the step's key; got key=None")
        flat, unravel = flatten(params)
        dtype = flat.dtype
        d = flat.size
        k = min(subspace_dim, d)
        n = jax.eval_shape(objective.residual_vector, params, batch).shape[0]
        itemsize = dtype.itemsize
        fits = subspace_memory_bytes(True, n, d, k, sketch_rows, itemsize) <= max_memory_gb * 1e9
        explicit = jacobian == "explicit" or (jacobian == "auto" and fits)
        needed = subspace_memory_bytes(explicit, n, d, k, sketch_rows, itemsize)
        if needed > max_memory_gb * 1e9:
            raise ValueError(
                f"subspace-lm ({'explicit J' if explicit else 'JVPs'}): D = {d}, N = {n}, "
                f"k = {k} need about {needed / 1e9:.3g} GB, over max_memory_gb = "
                f"{max_memory_gb:g}; use a smaller subspace_dim, fewer points or jacobian 'jvp'")
        subspace_key, sketch_key = jax.random.split(key)
        basis = random_subspace(subspace_key, d, k, subspace, dtype)
        lam = state.damping
        loss_fn = lambda p: objective.loss(p, batch)  # noqa: E731
        extra = {}

        def solve64(_):
            z, residual, model, fallback = model_solve(params, batch, basis, sketch_key, lam,
                                                       explicit)
            return z, residual, model, fallback

        if float32_until > 0:
            low = jnp.float32
            cast = lambda tree: jax.tree_util.tree_map(lambda x: x.astype(low), tree)  # noqa: E731

            def solve32(_):
                out = model_solve(cast(params), cast(batch), basis.astype(low), sketch_key, lam,
                                  explicit)
                return tuple(x.astype(dtype) for x in out)

            loss = loss_fn(params)
            phase32 = loss > float32_until
            z, residual, model, fallback = lax.cond(phase32, solve32, solve64, None)
            extra["float32"] = phase32.astype(dtype)
        else:
            z, residual, model, fallback = solve64(None)
            loss = 0.5 * jnp.sum(residual**2)
        delta = basis @ z
        predicted = -(residual @ model + 0.5 * jnp.sum(model**2))
        trial = apply_step(params, unravel(delta), 1.0)
        trial_loss = loss_fn(trial)
        rho = (loss - trial_loss) / predicted
        accepted = (predicted > 0) & jnp.isfinite(trial_loss) & (rho > accept_ratio)
        rho_rule = jnp.where(accepted, rho, -jnp.inf)
        new_lam = lm_damping(lam, rho_rule, grow, shrink, damping_min, damping_max)
        new_params = jax.tree_util.tree_map(lambda t, p: jnp.where(accepted, t, p), trial, params)
        info = {"loss": loss, "step_size": accepted.astype(dtype), "damping": lam, "rho": rho,
                "predicted": predicted, "pseudo_inverse": fallback, **extra}
        return new_params, SubspaceState(new_lam), info

    return Method(init, step)
