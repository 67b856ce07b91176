"""The Taylor-mode pass against nested autodiff (jax.jacfwd / jax.hessian), float64."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinnopt  # noqa: F401  (float64)
from pinnopt.nets import ACTIVATIONS, MLP
from pinnopt.taylor import (
    Derivatives,
    concatenate,
    coordinates,
    elementwise,
    jet,
    linear,
    product,
    propagate,
)

NETS = [(1, 6, 1), (2, 8, 1), (3, 16, 16, 2), (5, 7, 9, 7, 1), (10, 12, 3)]


def brute_force(net, params, x, directions, weights):
    """Value, directional derivatives and Σ c_i v_iᵀ H v_i by nested autodiff, per point."""

    def u(z):
        return net.apply(params, z[None])[0]

    def one(z):
        jac = jax.jacfwd(u)(z)                      # (m, d)
        hess = jax.hessian(u)(z)                    # (m, d, d)
        grad = directions @ jac.T                   # (k, m)
        second = jnp.einsum("k,ki,mij,kj->m", weights, directions, hess, directions)
        return u(z), grad, second

    return jax.vmap(one)(x)


def rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-300))


@pytest.mark.parametrize("sizes,activation", list(itertools.product(NETS, sorted(ACTIVATIONS))))
def test_jet_matches_nested_autodiff(sizes, activation):
    net = MLP(sizes, activation)
    key = jax.random.PRNGKey(hash((sizes, activation)) % 2**31)
    kp, kx, kd, kw = jax.random.split(key, 4)
    params = net.init(kp)
    d = sizes[0]
    x = jax.random.normal(kx, (7, d))
    k = d + 1  # more directions than coordinates, not axis-aligned
    directions = jax.random.normal(kd, (k, d))
    weights = jax.random.normal(kw, (k,))
    derivs = Derivatives(tuple(map(tuple, np.asarray(directions))), tuple(np.asarray(weights)))
    out, _ = jax.jit(lambda p, z: jet(net, p, z, derivs))(params, x)
    value, grad, second = brute_force(net, params, x, directions, weights)
    assert rel_err(out.value, value) < 1e-10
    assert rel_err(out.grad, grad) < 1e-10
    assert rel_err(out.second, second) < 1e-10


def test_composed_jets_match_nested_autodiff():
    """The pass from the jet of a nonlinear input map, then a product and a linear map:
    u(x) = x₀ · net([sin x, x₀ x₁]) + 2 x₁, against nested autodiff."""
    net = MLP((4, 6, 2), "tanh")
    params = net.init(jax.random.PRNGKey(11))
    kx, kd, kw = jax.random.split(jax.random.PRNGKey(12), 3)
    x = jax.random.normal(kx, (5, 3))
    directions, weights = jax.random.normal(kd, (4, 3)), jax.random.normal(kw, (4,))
    derivs = Derivatives(tuple(map(tuple, np.asarray(directions))), tuple(np.asarray(weights)))

    def composed(z):
        point = coordinates(z, derivs)
        first = linear(lambda a: a[..., :1], point)
        second = linear(lambda a: a[..., 1:2], point)
        inputs = concatenate([elementwise(point, ACTIVATIONS["sin"], derivs),
                              product(first, second, derivs)])
        out, _ = propagate(net, params, inputs, derivs)
        return linear(lambda a, b: a + 2.0 * b, product(first, out, derivs), second)

    def u(z):
        h = net.apply(params, jnp.concatenate([jnp.sin(z), z[:1] * z[1:2]])[None])[0]
        return z[0] * h + 2.0 * z[1]

    def brute(z):
        grad = directions @ jax.jacfwd(u)(z).T
        second = jnp.einsum("k,ki,mij,kj->m", weights, directions, jax.hessian(u)(z), directions)
        return u(z), grad, second

    out = jax.jit(composed)(x)
    value, grad, second = jax.vmap(brute)(x)
    assert rel_err(out.value, value) < 1e-12
    assert rel_err(out.grad, grad) < 1e-12
    assert rel_err(out.second, second) < 1e-11


def test_laplacian_and_partial_laplacian():
    net = MLP((4, 20, 20, 1), "tanh")
    params = net.init(jax.random.PRNGKey(3))
    x = jax.random.uniform(jax.random.PRNGKey(4), (5, 4))

    def u(z):
        return net.apply(params, z[None])[0, 0]

    hess = jax.vmap(jax.hessian(u))(x)
    full, _ = jet(net, params, x, Derivatives.laplacian(4))
    spatial, _ = jet(net, params, x, Derivatives.laplacian(4, coords=(1, 2, 3)))
    assert rel_err(full.second[:, 0], jnp.trace(hess, axis1=1, axis2=2)) < 1e-10
    assert rel_err(spatial.second[:, 0], jnp.trace(hess[:, 1:, 1:], axis1=1, axis2=2)) < 1e-10
    grads = jax.vmap(jax.grad(u))(x)
    assert rel_err(full.grad[:, :, 0], grads) < 1e-10


def test_value_only_and_gradient_only():
    net = MLP((3, 10, 2), "silu")
    params = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    out, inputs = jet(net, params, x, Derivatives.value())
    assert out.grad.shape == (6, 0, 2) and out.second is None
    assert rel_err(out.value, net.apply(params, x)) < 1e-14
    assert [a.shape for a in inputs] == [(6, 1, 3), (6, 1, 10)]
    out, inputs = jet(net, params, x, Derivatives.gradient(3))
    assert out.second is None and [a.shape for a in inputs] == [(6, 4, 3), (6, 4, 10)]


def test_parameter_gradient_of_laplacian_matches_nested_autodiff():
    net = MLP((2, 9, 9, 1), "sin")
    params = net.init(jax.random.PRNGKey(5))
    x = jax.random.normal(jax.random.PRNGKey(6), (8, 2))

    def taylor(p):
        return jnp.sum(jet(net, p, x, Derivatives.laplacian(2))[0].second ** 2)

    def nested(p):
        def u(z):
            return net.apply(p, z[None])[0, 0]

        return jnp.sum(jax.vmap(lambda z: jnp.trace(jax.hessian(u)(z)))(x) ** 2)

    g1, g2 = jax.grad(taylor)(params), jax.grad(nested)(params)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        assert rel_err(a, b) < 1e-9


def test_layer_inputs_are_the_slots_of_each_layer():
    """Layer l's stacked inputs: hidden value, its directional derivatives, its Laplacian."""
    net = MLP((3, 6, 5, 1), "tanh")
    params = net.init(jax.random.PRNGKey(7))
    x = jax.random.normal(jax.random.PRNGKey(8), (4, 3))
    _, inputs = jet(net, params, x, Derivatives.laplacian(3))

    def hidden(z):  # input of the last layer, one point
        h = z
        for layer in params[:-1]:
            h = jnp.tanh(layer["W"] @ h + layer["b"])
        return h

    value = jax.vmap(hidden)(x)
    jac = jax.vmap(jax.jacfwd(hidden))(x)          # (N, 5, 3)
    lap = jax.vmap(lambda z: jnp.trace(jax.hessian(hidden)(z), axis1=1, axis2=2))(x)
    last = inputs[-1]                              # (N, 1 + 3 + 1, 5)
    assert last.shape == (4, 5, 5)
    assert rel_err(last[:, 0], value) < 1e-12
    assert rel_err(last[:, 1:4], jnp.swapaxes(jac, 1, 2)) < 1e-12
    assert rel_err(last[:, 4], lap) < 1e-10
    assert rel_err(inputs[0][:, 0], x) == 0.0


def test_taps_gradient_is_backpropagated_error_per_slot():
    """d(Σ_n r_n)/d(tap of the last layer) = ∂r/∂(output slot): for r = Δu − u, (−1, 0.., 1)."""
    net = MLP((2, 7, 1), "tanh")
    params = net.init(jax.random.PRNGKey(9))
    x = jax.random.normal(jax.random.PRNGKey(10), (3, 2))
    derivs = Derivatives.laplacian(2)
    taps = [jnp.zeros((3, derivs.num_slots, w)) for w in net.sizes[1:]]

    def total(t):
        out, _ = jet(net, params, x, derivs, taps=t)
        return jnp.sum(out.second[:, 0] - out.value[:, 0])

    g = jax.grad(total)(taps)
    np.testing.assert_allclose(np.asarray(g[-1][:, :, 0]), np.tile([-1.0, 0.0, 0.0, 1.0], (3, 1)))
    assert g[0].shape == (3, 4, 7) and float(jnp.max(jnp.abs(g[0]))) > 0
