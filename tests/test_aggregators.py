"""Tests of the gradient-conflict aggregators (METHODS.md §7, docs/multitask.md).

Property tests draw ``m = 2..8`` task gradients in ``D = m..40`` dimensions. Every aggregator
depends on the gradients only through inner products, so a set drawn in ``D`` dimensions is
embedded in ``D_MAX = 40`` by zero padding: the maths is unchanged and each function compiles
once per ``m`` instead of once per ``(m, D)``, which keeps the suite fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pinnopt  # noqa: F401  (float64)
from pinnopt.optim import aggregators as agg

D_MAX = 40
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Jitted once; kappa is traced so that κ = 0 and κ > 0 share one compilation per shape.
CONFIG = jax.jit(agg.config)
HRGRAD = jax.jit(agg.hrgrad)
ROTATED = jax.jit(agg.hrgrad_rotated)
MIN_NORM = jax.jit(lambda g: agg.min_norm_weights(g @ g.T))
PCGRAD_PROJECTIONS = jax.jit(agg.pcgrad_projections)


def anchor_and_conflict(grads):
    units, active = agg.unit_rows(grads)
    anchor, _ = agg.harmonised_anchor(units, active)
    return units, anchor, agg.conflict_levels(units)


ANCHOR = jax.jit(anchor_and_conflict)


@st.composite
def gradient_sets(draw, min_m=2, max_m=8, agreeing=False):
    """(m, D_MAX) float64 task gradients: m = min_m..max_m, D = m..40 nonzero columns.

    Rows are Gaussian plus a shared component of random sign and weight (from strong conflict
    to near agreement), with per-task scales over four decades. ``agreeing``: entries ≥ 0, so
    no pair conflicts.
    """
    m = draw(st.integers(min_m, max_m))
    d = draw(st.integers(m, D_MAX))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shared = draw(st.floats(-1.0, 2.0))
    g = rng.normal(size=(m, d)) + shared * rng.normal(size=d)
    if agreeing:
        g = np.abs(g)
    g *= 10.0 ** rng.uniform(-2, 2, size=(m, 1))
    return np.pad(g, ((0, 0), (0, D_MAX - d)))


def units_of(g):
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def cosines(g, u):
    return (g @ u) / (np.linalg.norm(g, axis=1) * np.linalg.norm(u))


def well_conditioned(g, limit=1e6):
    """The unit gradients are (numerically comfortably) linearly independent."""
    return np.linalg.cond(units_of(g)) < limit


def numpy_config(g):
    """ConFIG from a dense numpy pseudo-inverse: g_u = U(pinv(Ĝ) 1), (Σ g_iᵀ g_u) g_u."""
    x = np.linalg.pinv(units_of(g)) @ np.ones(g.shape[0])
    g_u = x / np.linalg.norm(x)
    return (g.sum(axis=0) @ g_u) * g_u


# ---------------------------------------------------------------------------------------------
# sum, conflict_stats


def test_sum_is_the_exact_sum():
    g = np.arange(12.0).reshape(3, 4) - 5.0
    update, _ = agg.sum_aggregate(jnp.asarray(g))
    np.testing.assert_array_equal(update, g.sum(axis=0))


def test_conflict_stats_on_a_hand_made_example():
    # cos(g1,g2) = 0, cos(g1,g3) = -1, cos(g1,g4) = 0 (zero gradient), cos(g2,g3) = 0,
    # cos(g2,g4) = 0, cos(g3,g4) = 0; and cos(g1, g5) = 1/√2, cos(g2,g5) = 1/√2, cos(g3,g5) = -1/√2
    g = jnp.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    stats = agg.conflict_stats(g)
    s = 1 / np.sqrt(2)
    pairs = [0, -1, 0, s, 0, 0, s, 0, -s, 0]
    assert np.isclose(stats["cos_min"], -1.0)
    assert np.isclose(stats["conflict_fraction"], 2 / 10)
    assert np.isclose(stats["cos_mean"], np.mean(pairs))
    single = agg.conflict_stats(g[:1])
    assert single["conflict_fraction"] == 0 and single["cos_min"] == 1


# ---------------------------------------------------------------------------------------------
# ConFIG


@SETTINGS
@given(gradient_sets())
def test_config_has_equal_positive_cosines_with_every_task(g):
    assume(well_conditioned(g))
    update, info = CONFIG(jnp.asarray(g))
    cos = cosines(g, np.asarray(update))
    assert np.all(cos > 0)
    np.testing.assert_allclose(cos, cos[0], rtol=1e-8)
    np.testing.assert_allclose(info["cosine"], cos[0], rtol=1e-8)


@SETTINGS
@given(gradient_sets())
def test_config_matches_dense_pseudo_inverse(g):
    assume(well_conditioned(g))
    update, _ = CONFIG(jnp.asarray(g))
    np.testing.assert_allclose(update, numpy_config(g), rtol=1e-8, atol=1e-10 * np.abs(g).max())


def test_config_fixed_examples():
    # Orthogonal tasks: g_u = (1, 1)/√2, length (1 + 2)/√2.
    update, _ = agg.config(jnp.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(update, [1.5, 1.5], rtol=1e-14)
    # Exactly opposed tasks are Pareto-stationary: the min-norm solution of Ĝx = 1 is x = 0.
    update, _ = agg.config(jnp.array([[1.0, 0.0], [-3.0, 0.0]]))
    np.testing.assert_array_equal(update, [0.0, 0.0])


def test_config_ignores_a_zero_gradient_and_never_makes_nan():
    g = np.random.default_rng(1).normal(size=(3, 6))
    with_zero = np.vstack([g, np.zeros(6)])
    np.testing.assert_allclose(agg.config(jnp.asarray(with_zero))[0], numpy_config(g), rtol=1e-12)
    update, info = agg.config(jnp.zeros((3, 6)))
    np.testing.assert_array_equal(update, np.zeros(6))
    assert all(np.isfinite(v) for v in info.values())


# ---------------------------------------------------------------------------------------------
# HRGrad (reconstruction)


@SETTINGS
@given(gradient_sets())
def test_hrgrad_with_kappa_zero_is_config(g):
    update, info = HRGRAD(jnp.asarray(g), 0.0)
    np.testing.assert_allclose(update, CONFIG(jnp.asarray(g))[0], rtol=1e-12, atol=1e-14 * np.abs(g).max())
    assert info["kappa_used"] == 0.0


@SETTINGS
@given(gradient_sets(agreeing=True))
def test_hrgrad_without_conflict_is_config(g):
    update, info = HRGRAD(jnp.asarray(g), 0.5)
    assert info["max_conflict"] == 0.0
    np.testing.assert_allclose(update, CONFIG(jnp.asarray(g))[0], rtol=1e-12, atol=1e-14 * np.abs(g).max())


@SETTINGS
@given(gradient_sets(), st.sampled_from([0.25, 0.5, 1.0]))
def test_hrgrad_never_opposes_a_task(g, kappa):
    assume(well_conditioned(g))
    update, info = HRGRAD(jnp.asarray(g), kappa)
    assert np.all(np.isfinite(update))
    assert np.all(cosines(g, np.asarray(update)) > 0)
    assert info["kappa_used"] == kappa * 0.5 ** info["halvings"] or info["fell_back"]


@SETTINGS
@given(gradient_sets(), st.randoms(use_true_random=False))
def test_hrgrad_is_invariant_to_task_order(g, random):
    order = list(range(g.shape[0]))
    random.shuffle(order)
    update, _ = HRGRAD(jnp.asarray(g), 0.5)
    permuted, _ = HRGRAD(jnp.asarray(g[order]), 0.5)
    np.testing.assert_allclose(permuted, update, rtol=1e-7, atol=1e-9 * np.abs(g).max())


@SETTINGS
@given(gradient_sets(), st.floats(1e-3, 1e3))
def test_hrgrad_is_linear_in_a_common_scale(g, scale):
    update, _ = HRGRAD(jnp.asarray(g), 0.5)
    scaled, _ = HRGRAD(jnp.asarray(scale * g), 0.5)
    np.testing.assert_allclose(scaled, scale * np.asarray(update), rtol=1e-7, atol=1e-9 * scale * np.abs(g).max())


@SETTINGS
@given(gradient_sets(), st.sampled_from([0.5, 1.0]))
def test_hrgrad_has_equal_cosines_with_the_rotated_gradients(g, kappa):
    assume(well_conditioned(g))
    update, info = HRGRAD(jnp.asarray(g), kappa)
    rotated = np.asarray(ROTATED(jnp.asarray(g), info["kappa_used"]))
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=1), 1.0, rtol=1e-12)
    cos = rotated @ np.asarray(update) / np.linalg.norm(update)
    np.testing.assert_allclose(cos, cos[0], rtol=1e-7)


@SETTINGS
@given(gradient_sets(), st.sampled_from([0.5, 1.0]))
def test_hrgrad_rotation_geometry(g, kappa):
    """r_i lies in span{ĝ_i, d*}, at angle κ c_i φ_i from ĝ_i and (1 − κ c_i) φ_i from d*."""
    units, anchor, conflict = (np.asarray(a) for a in ANCHOR(jnp.asarray(g)))
    rotated = np.asarray(ROTATED(jnp.asarray(g), kappa))
    assert np.all(units @ anchor > 0)  # the anchor is harmonised
    angle = lambda a, b: np.arccos(np.clip(np.sum(a * b, axis=-1), -1, 1))  # noqa: E731
    phi = angle(units, anchor[None, :])
    np.testing.assert_allclose(angle(units, rotated), kappa * conflict * phi, atol=1e-6)
    np.testing.assert_allclose(angle(rotated, anchor[None, :]), (1 - kappa * conflict) * phi, atol=1e-6)
    for u, r in zip(units, rotated):
        basis = np.linalg.qr(np.stack([u, anchor], axis=1))[0]
        np.testing.assert_allclose(basis @ (basis.T @ r), r, atol=1e-10)


def test_hrgrad_differs_from_config_under_conflict():
    # Guards the "is ConFIG" tests above against an HRGrad that never rotates.
    g = np.random.default_rng(4).normal(size=(4, 10))
    update, info = agg.hrgrad(jnp.asarray(g), 0.5)
    assert info["max_conflict"] > 0.3 and info["halvings"] == 0
    assert np.linalg.norm(update - numpy_config(g)) > 1e-3 * np.linalg.norm(update)
    assert np.all(g @ np.asarray(update) > 0)


def test_hrgrad_halves_kappa_when_a_task_would_be_opposed():
    # A drawn example where rotating by κ = 1 makes some g_iᵀ update ≤ 0 and κ = 1/8 does not.
    rng = np.random.default_rng(391)
    m = rng.integers(2, 9)
    d = rng.integers(m, 41)
    g = jnp.asarray(rng.normal(size=(m, d)) * 10 ** rng.uniform(-2, 2, size=(m, 1)))
    update, info = agg.hrgrad(g, 1.0)
    assert info["halvings"] == 3 and info["kappa_used"] == 0.125 and not info["fell_back"]
    assert np.all(g @ update > 0)
    for rejected in (1.0, 0.5, 0.25):
        direction = agg.config_direction(agg.hrgrad_rotated(g, rejected))
        assert np.min(g @ ((jnp.sum(g, axis=0) @ direction) * direction)) <= 0
    direction = agg.config_direction(agg.hrgrad_rotated(g, 0.125))
    np.testing.assert_allclose(update, (jnp.sum(g, axis=0) @ direction) * direction, rtol=1e-12)


def test_hrgrad_falls_back_to_config():
    # Three gradients in the plane (m > D): no direction has a positive dot with all three.
    g = jnp.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.9]])
    update, info = agg.hrgrad(g, 0.5)
    assert info["fell_back"] and info["kappa_used"] == 0.0
    np.testing.assert_allclose(update, agg.config(g)[0], rtol=1e-12)


def test_hrgrad_ignores_zero_gradients_and_never_makes_nan():
    g = np.random.default_rng(4).normal(size=(4, 10))
    with_zero = jnp.asarray(np.vstack([g[:2], np.zeros(10), g[2:]]))
    np.testing.assert_allclose(agg.hrgrad(with_zero)[0], agg.hrgrad(jnp.asarray(g))[0], rtol=1e-10)
    update, info = agg.hrgrad(jnp.zeros((3, 5)))
    np.testing.assert_array_equal(update, np.zeros(5))
    assert all(np.isfinite(v) for v in info.values())


# ---------------------------------------------------------------------------------------------
# MGDA


@SETTINGS
@given(gradient_sets())
def test_mgda_satisfies_the_min_norm_kkt_conditions(g):
    weights, info = (jax.tree.map(np.asarray, x) for x in MIN_NORM(jnp.asarray(g)))
    assert np.all(weights >= 0) and np.isclose(weights.sum(), 1.0, rtol=1e-12)
    d = weights @ g
    tol = 1e-10 * np.max(np.sum(g * g, axis=1))
    products = g @ d
    assert np.all(products >= d @ d - tol)
    support = weights > 1e-9
    np.testing.assert_allclose(products[support], d @ d, atol=tol)
    assert info["kkt_gap"] <= tol
    np.testing.assert_allclose(agg.mgda(jnp.asarray(g))[0], d, rtol=1e-10, atol=1e-12 * np.abs(g).max())


def test_mgda_fixed_examples():
    update, _ = agg.mgda(jnp.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(update, [0.5, 0.5], rtol=1e-14)
    # The hull segment from (1, 0) to (2, 1) is closest to the origin at its end (1, 0).
    update, _ = agg.mgda(jnp.array([[2.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_allclose(update, [1.0, 0.0], atol=1e-14)
    # The origin lies inside the hull: Pareto-stationary, d = 0.
    update, _ = agg.mgda(jnp.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]]))
    np.testing.assert_allclose(update, [0.0, 0.0], atol=1e-14)


# ---------------------------------------------------------------------------------------------
# PCGrad


@SETTINGS
@given(gradient_sets(min_m=2, max_m=2), st.integers(0, 2**31 - 1))
def test_pcgrad_two_tasks_closed_form(g, seed):
    g1, g2 = g
    projected, count = PCGRAD_PROJECTIONS(jnp.asarray(g), jax.random.key(seed))
    p1, p2 = np.asarray(projected)
    scale = np.linalg.norm(g1) * np.linalg.norm(g2)
    dot = g1 @ g2
    if dot < 0:
        expected = g1 + g2 - dot * (g1 / (g1 @ g1) + g2 / (g2 @ g2))
        assert count == 2
        assert abs(p1 @ g2) <= 1e-12 * scale and abs(p2 @ g1) <= 1e-12 * scale
        assert p1 @ p2 >= -1e-12 * scale
    else:
        expected = g1 + g2
        assert count == 0
    update, _ = agg.pcgrad(jnp.asarray(g), jax.random.key(seed))
    np.testing.assert_allclose(update, expected, rtol=1e-10, atol=1e-12 * np.abs(g).max())


def test_pcgrad_fixed_example():
    # g1ᵀg2 = -1: p1 = g1 + g2/2 = (0.5, 0.5), p2 = g2 + g1 = (0, 1).
    update, info = agg.pcgrad(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), jax.random.key(0))
    np.testing.assert_allclose(update, [0.5, 1.5], rtol=1e-14)
    assert info["projections"] == 2


def test_pcgrad_matches_a_direct_loop_in_the_drawn_orders():
    g = np.random.default_rng(7).normal(size=(5, 8)) + np.array([0.3] * 8)
    key = jax.random.key(3)
    orders = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, 5))(jax.random.split(key, 5)))
    expected = np.zeros(8)
    for i in range(5):
        p = g[i].copy()
        for j in orders[i]:
            if p @ g[j] < 0:
                p -= (p @ g[j]) / (g[j] @ g[j]) * g[j]
        expected += p
    update, info = agg.pcgrad(jnp.asarray(g), key)
    assert info["projections"] > 0
    np.testing.assert_allclose(update, expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# M-ConFIG


def test_mconfig_round_robin_warm_up_then_config_of_momenta():
    g = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6)))
    step = jax.jit(lambda grad, state: agg.mconfig_update(grad, state, normalise=False))
    state = agg.mconfig_init(3, 6)
    for t in range(3):
        task = int(agg.mconfig_next_task(state))
        assert task == t
        update, state, info = step(g[task], state)
        assert bool(info["ready"]) == (t == 2)
        if t < 2:
            np.testing.assert_array_equal(update, np.zeros(6))
    # Each momentum has seen one constant gradient: bias-corrected it IS that gradient.
    np.testing.assert_allclose(update, agg.config(g)[0], rtol=1e-12)
    assert int(agg.mconfig_next_task(state)) == 0
    np.testing.assert_array_equal(state.task_counts, [1, 1, 1])


def test_mconfig_second_moment_scaling_and_all_task_mode():
    g = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)))
    # All gradients at once: ready on the first call; the first Adam-style step is g_c/(|g_c|+eps).
    update, state, info = agg.mconfig_update(g, agg.mconfig_init(4, 5))
    g_c = np.asarray(agg.config(g)[0])
    np.testing.assert_allclose(update, g_c / (np.abs(g_c) + 1e-8), rtol=1e-12)
    assert info["ready"] and int(state.steps) == 1
    # A second call with the same gradients: momenta unchanged after bias correction.
    update, state, _ = agg.mconfig_update(g, state)
    np.testing.assert_allclose(update, g_c / (np.abs(g_c) + 1e-8), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", sorted(agg.AGGREGATORS))
def test_registry_uniform_convention_and_zero_gradients(name):
    fn = jax.jit(agg.AGGREGATORS[name])
    g = np.random.default_rng(5).normal(size=(3, 7))
    g[1] = 0.0  # a task at its minimum
    state = agg.init_state(name, 3, 7)
    for _ in range(3):
        update, state, info = fn(jnp.asarray(g), state, jax.random.key(0))
        assert update.shape == (7,) and np.all(np.isfinite(update))
        assert all(np.ndim(v) == 0 and np.isfinite(v) for v in info.values())
    update, _, _ = fn(jnp.zeros((3, 7)), agg.init_state(name, 3, 7), jax.random.key(0))
    assert np.all(np.isfinite(update))
    assert jax.tree.structure(state) == jax.tree.structure(agg.init_state(name, 3, 7))


def test_init_state_rejects_unknown_names():
    with pytest.raises(KeyError):
        agg.init_state("adam", 2, 3)
