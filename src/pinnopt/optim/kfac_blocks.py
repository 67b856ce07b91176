"""Kronecker-factored curvature blocks of one linear layer, and their inverses (docs/methods.md §4).

A linear layer with weights ``V = [W, b]`` of shape ``(out, in+1)`` sees, per point ``n``, ``S``
stacked inputs ``a_{n,s} ∈ R^{in+1}`` (bias entry 1 in the value slot, 0 in the derivative
slots) and receives per-slot output gradients ``g_{n,s} ∈ R^{out}`` of the scaled residual.
Its Jacobian row is exactly ``J_n = Σ_s a_{n,s} ⊗ g_{n,s}`` in the column-major convention
``vec(V)`` (``vec(g aᵀ) = a ⊗ g``), and the layer's block of ``G = Σ_n J_nᵀ J_n`` is
approximated by Kronecker products ``A ⊗ B`` (``A`` on the input side, ``B`` on the output
side), so that ``(A ⊗ B) vec(V) = vec(B V Aᵀ)``.

This module holds only the blocks: statistics of one batch, the moving average, and the exact
inverse of a damped sum of (at most) two Kronecker products. :mod:`pinnopt.optim.kfac` turns
them into optimisers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class KroneckerFactors(NamedTuple):
    """One Kronecker term ``A ⊗ B`` of a layer: ``a (in+1, in+1)``, ``b (out, out)``."""

    a: Array
    b: Array


def identity_factors(fan_in: int, fan_out: int, dtype) -> KroneckerFactors:
    """Identity factors, the starting point of the moving average."""
    return KroneckerFactors(jnp.eye(fan_in + 1, dtype=dtype), jnp.eye(fan_out, dtype=dtype))


def augment_inputs(inputs: Array) -> Array:
    """Append the bias input to stacked layer inputs ``(N, S, in)`` -> ``(N, S, in+1)``.

    The bias acts on the value slot (slot 0) only: its input is 1 there and 0 in every
    derivative slot.
    """
    n, s, _ = inputs.shape
    bias = jnp.zeros((n, s, 1), inputs.dtype).at[:, 0].set(1.0)
    return jnp.concatenate([inputs, bias], axis=-1)


def batch_factors(inputs: Array, backprops: Array, input_weights: Array) -> KroneckerFactors:
    """The Kronecker factors of one batch.

    ``inputs (N, S, in+1)`` are augmented layer inputs, ``backprops (c, N, S, out)`` the
    per-slot output gradients of the ``c`` components of the scaled residual, and
    ``input_weights (N,)`` the weight of each point in the input factor:

        A = Σ_{n,s} input_weights[n] a_{n,s} a_{n,s}ᵀ,     B = Σ_{k,n,s} g_{k,n,s} g_{k,n,s}ᵀ.

    Slots that receive no gradient enter ``B`` as zeros and ``A`` like any other slot.
    """
    flat_inputs = inputs.reshape(-1, inputs.shape[-1])
    weighted = (inputs * input_weights[:, None, None]).reshape(flat_inputs.shape)
    flat_grads = backprops.reshape(-1, backprops.shape[-1])
    return KroneckerFactors(weighted.T @ flat_inputs, flat_grads.T @ flat_grads)


def moving_average(old: KroneckerFactors, new: KroneckerFactors, beta: float | Array
                   ) -> KroneckerFactors:
    """``F ← β F + (1 − β) F_new`` for both factors."""
    return KroneckerFactors(*(beta * o + (1.0 - beta) * n for o, n in zip(old, new)))


class KroneckerSumInverse(NamedTuple):
    """``(Ã₁ ⊗ B̃₁ + Ã₂ ⊗ B̃₂)⁻¹`` in factored form (Martens & Grosse 2015, appendix B).

    ``k_a`` and ``k_b`` satisfy ``K_Aᵀ Ã₁ K_A = I``, ``K_Aᵀ Ã₂ K_A = diag(s_a)`` (same for B),
    so that

        (Ã₁ ⊗ B̃₁ + Ã₂ ⊗ B̃₂)⁻¹ vec(V) = vec( K_B [ (K_Bᵀ V K_A) ⊘ (s_b s_aᵀ + 1) ] K_Aᵀ ).

    A single Kronecker product is the case ``s_a = s_b = 0``, ``K = F̃^{-1/2}``.
    """

    k_a: Array
    k_b: Array
    s_a: Array
    s_b: Array

    def apply(self, v: Array) -> Array:
        """The inverse applied to a layer's matrix ``v (out, in+1)``."""
        projected = self.k_b.T @ v @ self.k_a
        scaled = projected / (jnp.outer(self.s_b, self.s_a) + 1.0)
        return self.k_b @ scaled @ self.k_a.T


def _eigh_inverse_root(matrix: Array) -> Array:
    """``K = U diag(e)^{-1/2}`` from ``M = U diag(e) Uᵀ``, eigenvalues floored at
    ``ε_mach · max(e)`` so that round-off cannot produce a zero or negative one."""
    e, u = jnp.linalg.eigh(matrix)
    floor = jnp.finfo(matrix.dtype).eps * jnp.max(jnp.abs(e))
    return u * jax.lax.rsqrt(jnp.maximum(e, floor))[None, :]


def _inverse_root(matrix: Array) -> Array:
    """An inverse square root ``K`` with ``Kᵀ M K = I`` of an SPD matrix ``M``.

    ``K = L^{-T}`` from the Cholesky factor ``M = L Lᵀ`` (an order of magnitude cheaper than an
    eigendecomposition on CPU); if round-off makes ``M`` numerically indefinite (tiny damping
    on a badly scaled factor), the eigendecomposition with floored eigenvalues is used instead.
    """
    chol = jnp.linalg.cholesky(matrix)
    eye = jnp.eye(matrix.shape[0], dtype=matrix.dtype)
    return jax.lax.cond(
        jnp.all(jnp.isfinite(chol)),
        lambda: jax.scipy.linalg.solve_triangular(chol, eye, lower=True, trans="T"),
        lambda: _eigh_inverse_root(matrix),
    )


def _joint_diagonaliser(first: Array, second: Array) -> tuple[Array, Array]:
    """``(K, s)`` with ``Kᵀ first K = I`` and ``Kᵀ second K = diag(s)`` (both SPD)."""
    root = _inverse_root(first)
    inner = root.T @ second @ root
    s, e = jnp.linalg.eigh(0.5 * (inner + inner.T))
    return root @ e, jnp.maximum(s, 0.0)


def damped(factors: KroneckerFactors, damping: float | Array, trace_norm: bool = False
           ) -> KroneckerFactors:
    """``(A + λI, B + λI)``, or with ``trace_norm`` the split of Martens & Grosse (2015, §6.3)
    ``(A + π√λ I, B + √λ/π I)``, ``π = sqrt((tr A / dim A) / (tr B / dim B))``, whose product
    ``A ⊗ B + λI + √λ(π I ⊗ B + A ⊗ I/π)`` carries a damping of order ``λ`` relative to the
    factors' own scale instead of ``λ`` added to each factor."""
    if trace_norm:
        mean_a = jnp.trace(factors.a) / factors.a.shape[0]
        mean_b = jnp.trace(factors.b) / factors.b.shape[0]
        tiny = jnp.finfo(factors.a.dtype).tiny
        pi = jnp.sqrt(jnp.maximum(mean_a, tiny) / jnp.maximum(mean_b, tiny))
        root = jnp.sqrt(damping)
        amounts = (pi * root, root / pi)
    else:
        amounts = (damping, damping)
    return KroneckerFactors(*(f + lam * jnp.eye(f.shape[0], dtype=f.dtype)
                              for f, lam in zip(factors, amounts)))


def invert(first: KroneckerFactors, second: KroneckerFactors | None, damping: float | Array,
           trace_norm: bool = False) -> KroneckerSumInverse:
    """Factored inverse of ``Ã₁ ⊗ B̃₁ (+ Ã₂ ⊗ B̃₂)``, with ``λI`` added to every factor (or,
    with ``trace_norm``, each term damped by the π split of :func:`damped`)."""
    first = damped(first, damping, trace_norm)
    if second is None:
        k_a, k_b = _inverse_root(first.a), _inverse_root(first.b)
        return KroneckerSumInverse(
            k_a, k_b, jnp.zeros(k_a.shape[0], k_a.dtype), jnp.zeros(k_b.shape[0], k_b.dtype)
        )
    second = damped(second, damping, trace_norm)
    k_a, s_a = _joint_diagonaliser(first.a, second.a)
    k_b, s_b = _joint_diagonaliser(first.b, second.b)
    return KroneckerSumInverse(k_a, k_b, s_a, s_b)
