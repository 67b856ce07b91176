"""Tests of the gradient-conflict aggregators (docs/methods.md §7, docs/multitask.md).

Property tests draw ``m = 2..8`` task gradients in ``D = m..40`` dimensions. To compile each
aggregator once, a drawn set is embedded in a fixed ``(M_MAX, D_MAX) = (8, 40)`` matrix: zero
columns change no inner product, and zero rows are tasks at their minimum, which ConFIG, HRGrad
and PCGrad ignore exactly (tested on unpadded inputs below); MGDA, whose hull would gain the
origin, is padded with repeats of the drawn rows instead, which leave the hull unchanged.
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
from pinnopt.optim.base import AGGREGATORS, resolve

M_MAX, D_MAX = 8, 40
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hrgrad_geometry(grads, kappa):
    """Anchor, conflict levels and rotated unit gradients, as HRGrad builds them."""
    units, active = agg.unit_rows(grads)
    anchor, _ = agg.harmonised_anchor(units, active)
    conflict = agg.conflict_levels(units)
    return units, anchor, conflict, agg.rotate_toward(units, anchor, kappa * conflict)


# Jitted once, on (M_MAX, D_MAX) inputs; kappa is traced so that every κ shares a compilation.
CONFIG = jax.jit(agg.config)
HRGRAD = jax.jit(agg.hrgrad)
GEOMETRY = jax.jit(hrgrad_geometry)
MGDA = jax.jit(lambda g: (agg.mgda(g)[0], *agg.min_norm_weights(g @ g.T)))
PCGRAD = jax.jit(lambda g, key: (agg.pcgrad(g, key)[0], *agg.pcgrad_projections(g, key)))


def embed(g):
    """(m, D) -> (M_MAX, D_MAX) float64, padded with zeros."""
    out = np.zeros((M_MAX, D_MAX))
    out[: g.shape[0], : g.shape[1]] = g
    return jnp.asarray(out)


def config_np(g):
    return np.asarray(CONFIG(embed(g))[0])[: g.shape[1]]


def hrgrad_np(g, kappa=0.5):
    update, info = HRGRAD(embed(g), kappa)
    return np.asarray(update)[: g.shape[1]], info


@st.composite
def gradient_sets(draw, min_m=2, max_m=M_MAX, agreeing=False):
    """(m, D) float64 task gradients, m = min_m..max_m, D = m..D_MAX.

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
    return g * 10.0 ** rng.uniform(-2, 2, size=(m, 1))


def units_of(g):
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def cosines(g, u):
    return (g @ u) / (np.linalg.norm(g, axis=1) * np.linalg.norm(u))


def well_conditioned(g, limit=1e6):
    """The unit gradients are (numerically comfortably) linearly independent."""
    return np.linalg.cond(units_of(g)) < limit


def numpy_config(g, units=None):
    """ConFIG from a dense numpy pseudo-inverse: g_u = U(pinv(Ĝ) 1), (Σ g_iᵀ g_u) g_u."""
    units = units_of(g) if units is None else units
    x = np.linalg.pinv(units) @ np.ones(g.shape[0])
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
    update, info = CONFIG(embed(g))
    cos = cosines(g, np.asarray(update)[: g.shape[1]])
    assert np.all(cos > 0)
    np.testing.assert_allclose(cos, cos[0], rtol=1e-8)
    np.testing.assert_allclose(info["cosine"], cos[0], rtol=1e-8)


@SETTINGS
@given(gradient_sets())
def test_config_matches_dense_pseudo_inverse(g):
    assume(well_conditioned(g))
    np.testing.assert_allclose(config_np(g), numpy_config(g), rtol=1e-8, atol=1e-10 * np.abs(g).max())


def test_config_fixed_examples():
    # Orthogonal tasks: g_u = (1, 1)/√2, length (1 + 2)/√2.
    np.testing.assert_allclose(config_np(np.array([[1.0, 0.0], [0.0, 2.0]])), [1.5, 1.5], rtol=1e-14)
    # Exactly opposed tasks (Σ ĝ_i = 0): no preferred direction, the update is zero, not noise.
    np.testing.assert_array_equal(config_np(np.array([[1.0, 0.0], [-3.0, 0.0]])), [0.0, 0.0])


def test_config_ignores_a_zero_gradient_and_never_makes_nan():
    # Unpadded shapes on purpose: the padding used elsewhere relies on exactly this.
    g = np.random.default_rng(1).normal(size=(3, 6))
    with_zero = np.vstack([g[:1], np.zeros(6), g[1:]])
    config = jax.jit(agg.config)
    np.testing.assert_allclose(config(jnp.asarray(with_zero))[0], numpy_config(g), rtol=1e-12)
    update, info = config(jnp.zeros((4, 6)))
    np.testing.assert_array_equal(update, np.zeros(6))
    assert all(np.isfinite(v) for v in info.values())


# ---------------------------------------------------------------------------------------------
# HRGrad (reconstruction)


@SETTINGS
@given(gradient_sets())
def test_hrgrad_with_kappa_zero_is_config(g):
    update, info = hrgrad_np(g, 0.0)
    np.testing.assert_allclose(update, config_np(g), rtol=1e-12, atol=1e-14 * np.abs(g).max())
    assert info["kappa_used"] == 0.0


@SETTINGS
@given(gradient_sets(agreeing=True))
def test_hrgrad_without_conflict_is_config(g):
    update, info = hrgrad_np(g, 0.5)
    assert info["max_conflict"] == 0.0
    np.testing.assert_allclose(update, config_np(g), rtol=1e-12, atol=1e-14 * np.abs(g).max())


@SETTINGS
@given(gradient_sets(), st.sampled_from([0.25, 0.5, 1.0]))
def test_hrgrad_never_opposes_a_task(g, kappa):
    assume(well_conditioned(g))
    update, info = hrgrad_np(g, kappa)
    assert np.all(np.isfinite(update))
    assert np.all(cosines(g, update) > 0)
    assert info["kappa_used"] == kappa * 0.5 ** info["halvings"] or info["fell_back"]


@SETTINGS
@given(gradient_sets(), st.randoms(use_true_random=False))
def test_hrgrad_is_invariant_to_task_order(g, random):
    order = list(range(g.shape[0]))
    random.shuffle(order)
    update, _ = hrgrad_np(g)
    permuted, _ = hrgrad_np(g[order])
    np.testing.assert_allclose(permuted, update, rtol=1e-7, atol=1e-9 * np.abs(g).max())


@SETTINGS
@given(gradient_sets(), st.floats(1e-3, 1e3))
def test_hrgrad_is_linear_in_a_common_scale(g, scale):
    update, _ = hrgrad_np(g)
    scaled, _ = hrgrad_np(scale * g)
    np.testing.assert_allclose(scaled, scale * update, rtol=1e-7, atol=1e-9 * scale * np.abs(g).max())


@SETTINGS
@given(gradient_sets(), st.sampled_from([0.5, 1.0]))
def test_hrgrad_has_equal_cosines_with_the_rotated_gradients(g, kappa):
    assume(well_conditioned(g))
    update, info = hrgrad_np(g, kappa)
    *_, rotated = GEOMETRY(embed(g), info["kappa_used"])
    rotated = np.asarray(rotated)[: g.shape[0], : g.shape[1]]
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=1), 1.0, rtol=1e-12)
    cos = rotated @ update / np.linalg.norm(update)
    np.testing.assert_allclose(cos, cos[0], rtol=1e-7)


@SETTINGS
@given(gradient_sets(), st.sampled_from([0.5, 1.0]))
def test_hrgrad_rotation_geometry(g, kappa):
    """r_i lies in span{ĝ_i, d*}, at angle κ c_i φ_i from ĝ_i and (1 − κ c_i) φ_i from d*."""
    m, d = g.shape
    units, anchor, conflict, rotated = (np.asarray(a) for a in GEOMETRY(embed(g), kappa))
    units, rotated, conflict, anchor = units[:m, :d], rotated[:m, :d], conflict[:m], anchor[:d]
    np.testing.assert_allclose(conflict, np.clip(-np.min(units @ units.T, axis=1), 0, 1), atol=1e-14)
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
    update, info = hrgrad_np(g, 0.5)
    assert info["max_conflict"] > 0.3 and info["halvings"] == 0
    assert np.linalg.norm(update - numpy_config(g)) > 1e-3 * np.linalg.norm(update)
    assert np.all(g @ update > 0)


def test_hrgrad_halves_kappa_when_a_task_would_be_opposed():
    # A drawn example where rotating by κ = 1, 1/2, 1/4 makes some g_iᵀ update ≤ 0 and κ = 1/8
    # does not.
    rng = np.random.default_rng(391)
    m, d = 3, 3
    assert (rng.integers(2, 9), rng.integers(m, 41)) == (m, d)  # the draw that found it
    g = rng.normal(size=(m, d)) * 10 ** rng.uniform(-2, 2, size=(m, 1))
    update, info = hrgrad_np(g, 1.0)
    assert info["halvings"] == 3 and info["kappa_used"] == 0.125 and not info["fell_back"]
    assert np.all(g @ update > 0)
    for kappa in (1.0, 0.5, 0.25, 0.125):
        *_, rotated = GEOMETRY(embed(g), kappa)
        candidate = numpy_config(g, np.asarray(rotated)[:m, :d])
        assert (np.min(g @ candidate) > 0) == (kappa == 0.125)
    np.testing.assert_allclose(update, candidate, rtol=1e-10)


def test_hrgrad_falls_back_to_config():
    # Three gradients in the plane (m > D): no direction has a positive dot with all three.
    g = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.9]])
    update, info = hrgrad_np(g, 0.5)
    assert info["fell_back"] and info["kappa_used"] == 0.0
    np.testing.assert_allclose(update, config_np(g), rtol=1e-12)


def test_hrgrad_anchor_falls_back_to_config_direction_when_stationary():
    # e1 and -e1 put the origin in the hull of the unit gradients; the ConFIG direction of
    # {e1, -e1, e2, e3} is (0, 1, 1)/√2 and the rotated set keeps it, so update = (0, 1, 1).
    g = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    units, anchor, conflict, _ = (np.asarray(a) for a in GEOMETRY(embed(g), 0.5))
    np.testing.assert_allclose(anchor[:3], [0, 2**-0.5, 2**-0.5], atol=1e-12)
    np.testing.assert_allclose(conflict[:4], [1, 1, 0, 0])
    update, info = hrgrad_np(g, 0.5)
    assert info["anchor_from_config"]
    np.testing.assert_allclose(update, [0, 1, 1], atol=1e-12)


def test_hrgrad_ignores_zero_gradients_and_never_makes_nan():
    # Unpadded shapes on purpose: the padding used elsewhere relies on exactly this.
    g = np.random.default_rng(4).normal(size=(4, 10))
    with_zero = jnp.asarray(np.vstack([g[:2], np.zeros(10), g[2:]]))
    hrgrad = jax.jit(agg.hrgrad)
    np.testing.assert_allclose(hrgrad(with_zero)[0], hrgrad_np(g)[0], rtol=1e-10)
    update, info = hrgrad(jnp.zeros((5, 10)))
    np.testing.assert_array_equal(update, np.zeros(10))
    assert all(np.isfinite(v) for v in info.values())


# ---------------------------------------------------------------------------------------------
# MGDA


def mgda_np(g):
    """MGDA on g repeated to M_MAX rows (same hull): update, weights, info."""
    repeated = np.zeros((M_MAX, D_MAX))
    repeated[:, : g.shape[1]] = g[np.arange(M_MAX) % g.shape[0]]
    update, weights, info = MGDA(jnp.asarray(repeated))
    return np.asarray(update)[: g.shape[1]], np.asarray(weights), info, repeated[:, : g.shape[1]]


@SETTINGS
@given(gradient_sets())
def test_mgda_satisfies_the_min_norm_kkt_conditions(g):
    update, weights, info, rows = mgda_np(g)
    assert np.all(weights >= 0) and np.isclose(weights.sum(), 1.0, rtol=1e-12)
    d = weights @ rows
    np.testing.assert_allclose(update, d, rtol=1e-12, atol=1e-14 * np.abs(g).max())
    tol = 1e-10 * np.max(np.sum(g * g, axis=1))
    products = rows @ d
    assert np.all(products >= d @ d - tol)
    support = weights > 1e-9
    np.testing.assert_allclose(products[support], d @ d, atol=tol)
    assert info["kkt_gap"] <= tol


def test_mgda_fixed_examples():
    np.testing.assert_allclose(mgda_np(np.array([[1.0, 0.0], [0.0, 1.0]]))[0], [0.5, 0.5], rtol=1e-14)
    # The hull segment from (2, 1) to (1, 0) is closest to the origin at its end (1, 0).
    np.testing.assert_allclose(mgda_np(np.array([[2.0, 1.0], [1.0, 0.0]]))[0], [1.0, 0.0], atol=1e-14)
    # The origin lies inside the hull: Pareto-stationary, d = 0.
    g = np.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    np.testing.assert_allclose(mgda_np(g)[0], [0.0, 0.0], atol=1e-14)


# ---------------------------------------------------------------------------------------------
# PCGrad


@SETTINGS
@given(gradient_sets(min_m=2, max_m=2), st.integers(0, 2**31 - 1))
def test_pcgrad_two_tasks_closed_form(g, seed):
    g1, g2 = g
    update, projected, count = PCGRAD(embed(g), jax.random.key(seed))
    p1, p2 = np.asarray(projected)[:2, : g.shape[1]]
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
    np.testing.assert_allclose(np.asarray(update)[: g.shape[1]], expected, rtol=1e-10, atol=1e-12 * np.abs(g).max())


def test_pcgrad_fixed_example():
    # g1ᵀg2 = -1: p1 = g1 + g2/2 = (0.5, 0.5), p2 = g2 + g1 = (0, 1).
    update, _, count = PCGRAD(embed(np.array([[1.0, 0.0], [-1.0, 1.0]])), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(update)[:2], [0.5, 1.5], rtol=1e-14)
    assert count == 2


def test_pcgrad_matches_a_direct_loop_in_the_drawn_orders():
    g = np.asarray(embed(np.random.default_rng(7).normal(size=(5, 8)) + 0.3))
    key = jax.random.key(3)
    orders = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, M_MAX))(jax.random.split(key, M_MAX)))
    expected = np.zeros(D_MAX)
    for i in range(M_MAX):
        p = g[i].copy()
        for j in orders[i]:
            if p @ g[j] < 0:
                p -= (p @ g[j]) / (g[j] @ g[j]) * g[j]
        expected += p
    update, _, count = PCGRAD(jnp.asarray(g), key)
    assert count > 0
    np.testing.assert_allclose(update, expected, rtol=1e-12)
    # The orders matter for three or more tasks: another key gives another update here.
    assert not np.allclose(PCGRAD(jnp.asarray(g), jax.random.key(4))[0], update)


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
    np.testing.assert_allclose(update, config_np(np.asarray(g)), rtol=1e-12)
    assert int(agg.mconfig_next_task(state)) == 0
    np.testing.assert_array_equal(state.task_counts, [1, 1, 1])


def test_mconfig_second_moment_scaling_and_all_task_mode():
    g = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)))
    # All gradients at once: ready on the first call; the first Adam-style step is g_c/(|g_c|+eps).
    step = jax.jit(agg.mconfig_update)
    update, state, info = step(g, agg.mconfig_init(4, 5))
    g_c = config_np(np.asarray(g))
    np.testing.assert_allclose(update, g_c / (np.abs(g_c) + 1e-8), rtol=1e-12)
    assert info["ready"] and int(state.steps) == 1
    # A second call with the same gradients: momenta unchanged after bias correction.
    update, state, _ = step(g, state)
    np.testing.assert_allclose(update, g_c / (np.abs(g_c) + 1e-8), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_registry_uniform_convention_and_zero_gradients(name):
    fns = AGGREGATORS[name]().build(None)

    def call(grads, state):
        # An aggregator that takes one task's gradient per step gets that row only.
        given = grads if fns.one_task is None else grads[fns.one_task(state)]
        return fns.aggregate(given, state, jax.random.key(0))

    fn = jax.jit(call)
    g = np.random.default_rng(5).normal(size=(3, 7))
    g[1] = 0.0  # a task at its minimum
    state = fns.init(3, 7, jnp.float64)
    for _ in range(3):
        update, state, info = fn(jnp.asarray(g), state)
        assert update.shape == (7,) and np.all(np.isfinite(update))
        assert all(np.ndim(v) == 0 and np.isfinite(v) for v in info.values())
    update, _, _ = fn(jnp.zeros((3, 7)), fns.init(3, 7, jnp.float64))
    assert np.all(np.isfinite(update))
    assert jax.tree.structure(state) == jax.tree.structure(fns.init(3, 7, jnp.float64))


def test_aggregator_names_are_their_own_namespace():
    with pytest.raises(ValueError, match="unknown aggregator 'adam'"):
        resolve("adam", "aggregator")
