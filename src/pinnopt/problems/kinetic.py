"""Shared pieces of the kinetic problems (``transport``, ``bgk``; docs/methods.md §8).

- the ε encoding: ε is a point coordinate (its raw value); a model computes features of it
  (``eps_features``: log10 ε normalised to [−1, 1] over [ε_min, ε_max], ε/ε_max, (ε/ε_max)²)
  and conditions its member networks on them (``eps_conditioning``): ``input`` concatenates
  the features, optionally passed through a small embedding network (a latent code), to the
  other inputs; ``film`` scales and shifts every hidden layer's pre-activation per point by the
  outputs of a small conditioning network of the features (FiLM);
- :class:`PhaseSpaceModel`, the base of the kinetic models: network inputs and their jets,
  jets of member networks at every velocity node. The models are :class:`pinnopt.models.Model`
  s: every derivative, of the residuals and of ``jet``, comes from the Taylor-mode pass of
  their member MLPs (:func:`pinnopt.taylor.propagate`) composed with the jets of the input
  encoding, the positivity maps and the velocity averages;
- per-point sampling of ε (log-uniform, or stratified by decade);
- residual groups evaluated by a whole model rather than pointwise on one MLP's jet
  (velocity averages need every quadrature node of a point);
- reference solutions computed once and cached on disk;
- relative L2 errors per evaluated ε value.

Point layout of both kinetic problems: every residual group and the evaluation set use rows
``(t, x, v, eps)``. Velocity averages and velocity-dependent residuals are taken at the
problem's Gauss–Legendre nodes, so the ``v`` column is unused in training (it is drawn
uniformly and kept so that every row has the same coordinates); ``predict`` uses it for the
distribution ``f`` at that velocity. ``eps`` holds the raw ε; a fixed-ε problem fills the
column with that value.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.nets import MLP, Params
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import (
    Activation,
    Derivatives,
    Jet,
    concatenate,
    constant,
    coordinates,
    elementwise,
    Modulation,
    linear,
    product,
    propagate,
)

EPS_SAMPLING = ("log-uniform", "decades", "values")
EPS_FEATURES = ("log", "eps", "eps2")
"""Features of ε a model may be conditioned on: the normalised log10 ε, ε/ε_max, (ε/ε_max)²."""
EPS_CONDITIONING = ("input", "film")
EMBED_HIDDEN = 16
"""Hidden width of the ε embedding network ``features -> 16 -> latent``."""
FILM_HIDDEN = 16
"""Hidden width of a FiLM conditioning network ``features -> 16 -> 2 · (hidden units)``."""
FILM_INIT_SCALE = 0.1
"""The conditioning network's last layer starts at this fraction of the usual initial weights,
with zero bias, so that every scale starts near 1 and every shift near 0."""


# -- ε: range, encoding, sampling ----------------------------------------------------------

def eps_tag(eps: float) -> str:
    """The suffix of per-ε metric names: ``eps1e-04``, ``eps1e+00``."""
    return f"eps{eps:.0e}"


@dataclass(frozen=True)
class EpsRange:
    """Knudsen numbers ``[lo, hi]``; ``lo == hi`` is a fixed-ε problem."""

    lo: float
    hi: float

    def __post_init__(self):
        if not (0 < self.lo <= self.hi) or not math.isfinite(self.hi):
            raise ValueError(f"eps range must satisfy 0 < eps_min <= eps_max, got [{self.lo}, {self.hi}]")

    @property
    def fixed(self) -> bool:
        return self.lo == self.hi

    @property
    def decades(self) -> float:
        return math.log10(self.hi) - math.log10(self.lo)

    def contains(self, eps: float) -> bool:
        return self.lo * (1 - 1e-9) <= eps <= self.hi * (1 + 1e-9)

    def encode(self, eps: Jet, derivs: Derivatives) -> Jet:
        """The jet of log10 ε mapped affinely from [log10 lo, log10 hi] onto [−1, 1] (0 when
        fixed), from the jet of ε ``(N, 1)``."""
        if self.fixed:
            return linear(jnp.zeros_like, eps)
        return rescale(elementwise(eps, LOG10, derivs), math.log10(self.lo), math.log10(self.hi))

    def values(self) -> tuple[float, ...]:
        """The powers of ten in the range, with its ends: the ``values`` sampling's set."""
        lo, hi = math.log10(self.lo), math.log10(self.hi)
        powers = [10.0**k for k in range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1)]
        out = sorted({self.lo, self.hi, *[p for p in powers if self.contains(p)]})
        return tuple(v for i, v in enumerate(out) if i == 0 or v / out[i - 1] > 1 + 1e-9)

    def sample(self, key: jax.Array, n: int, method: str) -> jax.Array:
        """``n`` values of ε: ``log-uniform`` on the range; ``decades``: log-uniform within
        ``ceil(decades)`` equal strata of log10 ε, point i in stratum ``i mod strata`` (every
        decade gets the same number of points); ``values``: point i takes the i-th (mod count)
        of :meth:`values` (a fixed set of ε, as for one task per ε value)."""
        if self.fixed:
            return jnp.full((n,), self.lo)
        if method == "values":
            return jnp.asarray(self.values())[jnp.arange(n) % len(self.values())]
        u = jax.random.uniform(key, (n,), dtype=jnp.float64)
        if method == "decades":
            strata = max(1, math.ceil(self.decades - 1e-9))
            u = (jnp.arange(n) % strata + u) / strata
        return 10.0 ** (math.log10(self.lo) + self.decades * u)


def parse_eps(name: str, eps, eps_range) -> EpsRange:
    """The problem's ε range from its ``eps`` (fixed) or ``eps_range`` options."""
    if eps is not None and eps_range is not None:
        raise ValueError(f"{name}: give eps (one fixed value) or eps_range, not both")
    if eps is not None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{name}: eps must be a positive number, got {eps!r}")
        return EpsRange(float(eps), float(eps))
    if (not isinstance(eps_range, (list, tuple)) or len(eps_range) != 2
            or any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in eps_range)):
        raise ValueError(f"{name}: eps_range must be two numbers [eps_min, eps_max], got {eps_range!r}")
    lo, hi = (float(e) for e in eps_range)
    if not (0 < lo < hi):
        raise ValueError(f"{name}: eps_range needs 0 < eps_min < eps_max, got {eps_range!r}")
    return EpsRange(lo, hi)


def parse_eps_features(name: str, features) -> tuple[str, ...]:
    """``eps_features``: a comma list (or a list) of distinct names out of :data:`EPS_FEATURES`."""
    items = features.split(",") if isinstance(features, str) else features
    if not isinstance(items, (list, tuple)) or not all(isinstance(f, str) for f in items):
        raise ValueError(f"{name}: eps_features must be a comma list out of "
                         f"{', '.join(EPS_FEATURES)}, got {features!r}")
    items = tuple(f.strip() for f in items if f.strip())
    if not items:
        raise ValueError(f"{name}: eps_features is empty; give a comma list out of "
                         f"{', '.join(EPS_FEATURES)}, e.g. 'log,eps'")
    unknown = [f for f in items if f not in EPS_FEATURES]
    if unknown:
        raise ValueError(f"{name}: eps_features {unknown[0]!r} unknown; choose a comma list out of "
                         f"{', '.join(EPS_FEATURES)}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name}: eps_features lists a feature twice: {','.join(items)}")
    return items


def parse_encoding(name: str, eps: EpsRange, embedding, features, conditioning) -> "EpsEncoding":
    """The ε encoding of a kinetic problem from its ``eps_embedding``, ``eps_features`` and
    ``eps_conditioning`` options, with one-line errors naming the problem."""
    if conditioning not in EPS_CONDITIONING:
        raise ValueError(f"{name}: eps_conditioning {conditioning!r} unknown; choose from "
                         f"{', '.join(EPS_CONDITIONING)}")
    if isinstance(embedding, bool) or not isinstance(embedding, int) or embedding < 0:
        raise ValueError(f"{name}: eps_embedding must be a non-negative integer, got {embedding!r}")
    if conditioning == "film" and embedding:
        raise ValueError(f"{name}: eps_embedding applies to eps_conditioning=input; film has its "
                         f"own conditioning network (set eps_embedding=0)")
    return EpsEncoding(eps, embedding, features=parse_eps_features(name, features),
                       conditioning=conditioning)


@dataclass(frozen=True)
class EpsEncoding:
    """How a model sees ε: nothing for a fixed ε; else the ``features`` of ε
    (:data:`EPS_FEATURES`, in the order given) and the way they condition the networks.

    ``conditioning="input"``: the features (``latent = 0``), or a latent code of width
    ``latent`` from the embedding network ``features -> 16 -> latent`` applied to them, are
    extra input columns of every member network.
    ``conditioning="film"``: no input columns; each member network has a conditioning network
    ``features -> 16 -> 2 · Σ hidden widths`` whose outputs (1 + a, b) scale and shift every
    hidden layer's pre-activation per point, z ← (1 + a) ⊙ z + b (:func:`pinnopt.taylor.modulate`).
    """

    range: EpsRange
    latent: int = 0
    activation: str = "tanh"
    features: tuple[str, ...] = ("log",)
    conditioning: str = "input"

    def __post_init__(self):
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 0:
            raise ValueError(f"eps_embedding must be a non-negative integer, got {self.latent!r}")
        if (not self.features or len(set(self.features)) != len(self.features)
                or any(f not in EPS_FEATURES for f in self.features)):
            raise ValueError(f"eps features must be distinct names out of {', '.join(EPS_FEATURES)}, "
                             f"got {self.features!r}")
        if self.conditioning not in EPS_CONDITIONING:
            raise ValueError(f"eps conditioning {self.conditioning!r} unknown; choose from "
                             f"{', '.join(EPS_CONDITIONING)}")
        if self.film and self.latent:
            raise ValueError("eps_embedding applies to eps_conditioning=input, not film")

    @property
    def film(self) -> bool:
        """Whether the networks are FiLM-conditioned on ε (never for a fixed ε)."""
        return self.conditioning == "film" and not self.range.fixed

    @property
    def width(self) -> int:
        """Input columns the encoding adds to every member network."""
        if self.range.fixed or self.film:
            return 0
        return self.latent or len(self.features)

    @property
    def embed_net(self) -> MLP | None:
        if self.range.fixed or self.film or not self.latent:
            return None
        return MLP((len(self.features), EMBED_HIDDEN, self.latent), self.activation)

    def film_net(self, net: MLP) -> MLP | None:
        """The conditioning network of member ``net`` (``None`` without FiLM): one scale and
        one shift per hidden unit, layer after layer."""
        if not self.film:
            return None
        return MLP((len(self.features), FILM_HIDDEN, 2 * sum(net.sizes[1:-1])), self.activation)

    def num_params(self, members: dict[str, MLP]) -> int:
        """Parameters of the embedding or conditioning networks of a model with ``members``."""
        nets = [self.embed_net] + [self.film_net(net) for net in members.values()]
        return sum(n.num_params for n in nets if n is not None)

    def describe(self) -> str:
        if self.range.fixed:
            return f"eps={self.range.lo:g}"
        features = ",".join(self.features)
        if self.film:
            code = f"FiLM on {features}, conditioning nets {len(self.features)}-{FILM_HIDDEN}-2H"
        elif self.latent:
            code = f"embed {len(self.features)}-{EMBED_HIDDEN}-{self.latent}"
            code += "" if self.features == ("log",) else f" of {features}"
        else:
            code = "log10-eps input" if self.features == ("log",) else f"eps features {features} input"
        return f"eps in [{self.range.lo:g}, {self.range.hi:g}] ({code})"

    def init(self, key: jax.Array, dtype=jnp.float64) -> Params:
        return self.embed_net.init(key, dtype) if self.embed_net else []

    def init_film(self, key: jax.Array, members: dict[str, MLP], dtype=jnp.float64
                  ) -> dict[str, Params]:
        """Conditioning networks of the ``members``, last layer scaled by
        :data:`FILM_INIT_SCALE` with zero bias (scales ≈ 1, shifts ≈ 0 at the start)."""
        out = {}
        for k, (name, net) in zip(jax.random.split(key, len(members)), sorted(members.items())):
            *hidden, last = self.film_net(net).init(k, dtype)
            out[name] = [*hidden, {"W": FILM_INIT_SCALE * last["W"], "b": jnp.zeros_like(last["b"])}]
        return out

    def features_jet(self, eps: Jet, derivs: Derivatives) -> Jet:
        """The jet of the features ``(N, len(features))`` from the jet of ε ``(N, 1)``."""
        scaled = linear(lambda a: a / self.range.hi, eps)
        columns = {"log": lambda: self.range.encode(eps, derivs),
                   "eps": lambda: scaled,
                   "eps2": lambda: product(scaled, scaled, derivs)}
        jets = [columns[f]() for f in self.features]
        return jets[0] if len(jets) == 1 else concatenate(jets)

    def jet(self, params: Params, eps: Jet, derivs: Derivatives) -> Jet:
        """The jet of the input columns ``(N, width)`` from the jet of ε ``(N, 1)``."""
        if self.width == 0:
            return linear(lambda a: a[..., :0], eps)
        code = self.features_jet(eps, derivs)
        return propagate(self.embed_net, params, code, derivs)[0] if self.embed_net else code

    def modulations(self, params: Params, net: MLP, eps: Jet, derivs: Derivatives,
                    constant: bool) -> list[Modulation]:
        """FiLM ``(scale, shift)`` of each hidden layer of member ``net``, ``(N, width)`` each,
        from the jet of ε ``(N, 1)`` and the member's conditioning parameters. ``constant``
        (no direction of ``derivs`` moves ε): plain arrays, per-point constants of the pass;
        else jets."""
        film_net = self.film_net(net)
        if constant:
            values = Derivatives.value()
            features = self.features_jet(constant_jet(eps.value), values)
            out = propagate(film_net, params, features, values)[0].value

            def part(lo: int, hi: int, unit: bool = False) -> jax.Array:
                return out[:, lo:hi] + (1.0 if unit else 0.0)
        else:
            jet = propagate(film_net, params, self.features_jet(eps, derivs), derivs)[0]

            def part(lo: int, hi: int, unit: bool = False) -> Jet:
                piece = linear(lambda z: z[..., lo:hi], jet)
                return piece._replace(value=piece.value + 1.0) if unit else piece
        mods, start = [], 0
        for width in net.sizes[1:-1]:
            mods.append((part(start, start + width, unit=True),
                         part(start + width, start + 2 * width)))
            start += 2 * width
        return mods

    def __call__(self, params: Params, eps: jax.Array) -> jax.Array:
        """Input columns ``(N, width)`` for ε values ``(N,)``."""
        values = Derivatives.value()
        return self.jet(params, coordinates(eps[:, None], values), values).value


def constant_jet(value: jax.Array) -> Jet:
    """The value-only jet of ``value (N, m)`` (no directions, no second-order term)."""
    return Jet(value, jnp.zeros((value.shape[0], 0, value.shape[1]), value.dtype), None)


# -- networks, nets specs --------------------------------------------------------------------

def parse_widths(spec: str, presets: dict[str, tuple[tuple[int, ...], ...]], count: int,
                 names: str) -> tuple[tuple[int, ...], ...]:
    """Hidden widths of ``count`` networks: a preset name, or ``"64-64/128-128"`` (one
    ``-``-separated list per network, separated by ``/``, in the order ``names``)."""
    spec = spec.strip()
    if spec in presets:
        return presets[spec]
    parts = spec.split("/")
    try:
        widths = tuple(tuple(int(w) for w in p.split("-")) for p in parts)
    except ValueError:
        widths = ()
    if len(widths) != count or any(not w or min(w) < 1 for w in widths):
        raise ValueError(
            f"net {spec!r} is neither a preset ({', '.join(presets)}) nor {count} lists of "
            f"hidden widths separated by '/' ({names}), e.g. "
            f"'{'/'.join(['64-64'] * count)}'"
        )
    return widths


def gauss_legendre(nv: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of ∫_lo^hi dv."""
    if isinstance(nv, bool) or not isinstance(nv, int) or nv < 2 or nv % 2:
        raise ValueError(f"nv must be an even integer >= 2 (velocity nodes pair as ±v), got {nv!r}")
    v, w = np.polynomial.legendre.leggauss(nv)
    half = 0.5 * (hi - lo)
    return lo + half * (v + 1.0), half * w


def rescale(u: Jet, lo: float, hi: float) -> Jet:
    """The jet of ``u`` mapped affinely from [lo, hi] onto [−1, 1]."""
    width = hi - lo
    return Jet(2.0 * (u.value - lo) / width - 1.0, 2.0 * u.grad / width,
               None if u.second is None else 2.0 * u.second / width)


def column(u: Jet, j: int) -> Jet:
    """Output ``j`` of a jet, kept as a column: ``value (N, 1)``, ``grad (N, k, 1)``."""
    return linear(lambda a: a[..., j:j + 1], u)


def partials(coords: str) -> Derivatives:
    """First derivatives along the named coordinates of a ``(t, x, v, eps)`` row, in the order
    given: ``partials("tx")`` asks for ∂_t and ∂_x, ``partials("")`` for values only."""
    return Derivatives(tuple(tuple(1.0 if c == name else 0.0 for c in ("t", "x", "v", "eps"))
                             for name in coords))


LOG10 = Activation(jnp.log10, lambda e: 1.0 / (e * math.log(10.0)),
                   lambda e: -1.0 / (e * e * math.log(10.0)))
RECIPROCAL = Activation(lambda e: 1.0 / e, lambda e: -1.0 / e**2, lambda e: 2.0 / e**3)
EXP = Activation(jnp.exp, jnp.exp, jnp.exp)


@dataclass(frozen=True)
class PhaseSpaceModel:
    """Inputs, velocity quadrature and member-network jets shared by the kinetic models.

    Network inputs are ``(t̃, x̃[, ṽ], code)``: t and x mapped affinely onto [−1, 1],
    ṽ = v / v_scale, and the ε encoding's columns (none with FiLM, whose scales and shifts
    enter every hidden layer of every member instead). ``weights`` are the quadrature weights
    of the problem's velocity average ⟨·⟩ at ``nodes``. Derivatives are requested along
    directions in the raw point coordinates ``(t, x, v, eps)`` (:func:`partials` for the
    residuals' ∂_t, ∂_x); at the velocity nodes ṽ is fixed, so a direction's v component
    does not reach the networks there. Parameters: one entry per member network (by
    :attr:`members`' names), ``"embed"`` for the embedding network and ``"film"`` (one
    conditioning network per member name) where the encoding has them.
    """

    encoding: EpsEncoding
    t_final: float
    x_range: tuple[float, float]
    v_scale: float
    nodes: tuple[float, ...]
    weights: tuple[float, ...]
    supports_taps: ClassVar[bool] = False  # several networks: no single layer structure

    @property
    def members(self) -> dict[str, MLP]:
        """The member networks by parameter name (``{"rho": ..., "g": ...}``)."""
        raise NotImplementedError

    @property
    def num_params(self) -> int:
        return (sum(net.num_params for net in self.members.values())
                + self.encoding.num_params(self.members))

    def quadrature(self, dtype) -> tuple[jax.Array, jax.Array]:
        """Velocity nodes v_k and weights w_k, ``(nv,)`` each, in ``dtype``."""
        return jnp.asarray(self.nodes, dtype), jnp.asarray(self.weights, dtype)

    def encoded(self, params: dict, X: jax.Array, derivs: Derivatives) -> tuple[Jet, Jet, Jet]:
        """Jets of the input columns at rows ``X = (t, x, v, eps)`` ``(N, 4)``: ``(t̃, x̃)``
        ``(N, 2)``, ``ṽ`` ``(N, 1)`` and the ε code ``(N, width)``."""
        point = coordinates(X, derivs)
        lo, hi = self.x_range
        space_time = concatenate([rescale(column(point, 0), 0.0, self.t_final),
                                  rescale(column(point, 1), lo, hi)])
        velocity = linear(lambda a: a / self.v_scale, column(point, 2))
        code = self.encoding.jet(params.get("embed", []), column(point, 3), derivs)
        return space_time, velocity, code

    def inputs(self, params: dict, X: jax.Array, derivs: Derivatives, velocity: bool) -> Jet:
        """Jet of the network inputs at the rows, ``(N, 2 [+ 1] + width)``; ``velocity``
        includes ṽ of the row's own v."""
        space_time, v, code = self.encoded(params, X, derivs)
        return concatenate([space_time, v, code] if velocity else [space_time, code])

    def at_nodes(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """Jet of the ``(N·nv, 3 + width)`` inputs of every row at every velocity node
        (row-major); ṽ = v_k / v_scale there is a constant."""
        nv = len(self.nodes)
        space_time, _, code = self.encoded(params, X, derivs)
        repeat = lambda u: linear(lambda a: jnp.repeat(a, nv, axis=0), u)  # noqa: E731
        v = jnp.tile(self.quadrature(X.dtype)[0], X.shape[0])[:, None] / self.v_scale
        return concatenate([repeat(space_time), constant(v, derivs), repeat(code)])

    def film(self, net: MLP, params: dict, name: str, X: jax.Array, derivs: Derivatives
             ) -> list[Modulation] | None:
        """FiLM ``(scale, shift)`` of member ``name``'s hidden layers at the rows, ``(N,
        width)`` each, or ``None`` without FiLM. ε is not a coordinate the residuals
        differentiate: when no direction of ``derivs`` has an ε component the scales and
        shifts are per-point constants of the pass (arrays); otherwise jets."""
        if not self.encoding.film:
            return None
        constant = all(d[3] == 0.0 for d in derivs.directions)
        return self.encoding.modulations(params["film"][name], net,
                                         column(coordinates(X, derivs), 3), derivs, constant)

    def point_jet(self, net: MLP, params: dict, name: str, X: jax.Array, derivs: Derivatives,
                  velocity: bool) -> Jet:
        """Member network ``name`` (``net``, parameters ``params[name]``) at the rows,
        ``value (N, m)``; ``velocity``: on the rows' own v (the networks of f)."""
        return propagate(net, params[name], self.inputs(params, X, derivs, velocity), derivs,
                         film=self.film(net, params, name, X, derivs))[0]

    def node_jet(self, net: MLP, params: dict, name: str, X: jax.Array, derivs: Derivatives
                 ) -> Jet:
        """One-output member network ``name`` at every row and velocity node, one output per
        node: ``value (N, nv)``, ``grad (N, k, nv)``, ``second (N, nv)``. FiLM's scales and
        shifts are computed once per row and repeated over the nodes."""
        nv = len(self.nodes)
        film = self.film(net, params, name, X, derivs)
        if film is not None:
            repeat = lambda u: (linear(lambda a: jnp.repeat(a, nv, axis=0), u)  # noqa: E731
                                if isinstance(u, Jet) else jnp.repeat(u, nv, axis=0))
            film = [(repeat(scale), repeat(shift)) for scale, shift in film]
        out, _ = propagate(net, params[name], self.at_nodes(params, X, derivs), derivs, film=film)
        n, k = X.shape[0], derivs.num_directions
        return Jet(out.value.reshape(n, nv), jnp.swapaxes(out.grad.reshape(n, nv, k), 1, 2),
                   None if out.second is None else out.second.reshape(n, nv))

    def average(self, u: Jet) -> Jet:
        """The jet of the velocity average ⟨u⟩ = Σ_k w_k u_k of a per-node jet, ``(N, 1)``."""
        w = self.quadrature(u.value.dtype)[1]
        return linear(lambda a: (a @ w)[..., None], u)

    def init_encoding(self, params: dict, key: jax.Array, dtype) -> dict:
        """Adds the embedding or the conditioning networks' parameters (from ``key``)."""
        if self.encoding.embed_net is not None:
            params["embed"] = self.encoding.init(key, dtype)
        if self.encoding.film:
            params["film"] = self.encoding.init_film(key, self.members, dtype)
        return params


# -- residual groups evaluated by a whole model ---------------------------------------------

def _not_pointwise(x, u):
    raise TypeError("this residual group is evaluated by its model (velocity averages over "
                    "quadrature nodes), not pointwise on one network's jet")


@dataclass(frozen=True)
class ModelResidualGroup(ResidualGroup):
    """A residual group that is not pointwise on one MLP: ``batch_fn(model, params, x)``
    returns the residuals ``(N, c)`` at points ``x (N, dim)``, one row per point."""

    batch_fn: Callable[[object, Params, jax.Array], jax.Array] | None = None

    def residual(self, net, params: Params, x: jax.Array) -> jax.Array:
        r = self.batch_fn(net, params, x)
        return r.reshape(x.shape[0], -1)


def model_group(name: str, sampler, n: int, batch_fn, weight: float, role: str) -> ModelResidualGroup:
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"group {name!r}: the number of points must be an integer, got {n!r}")
    return ModelResidualGroup(name, sampler, n, _not_pointwise, weight=weight, role=role,
                              batch_fn=batch_fn)


def kinetic_sampler(t_range: tuple[float, float], x_range: tuple[float, float],
                    v_range: tuple[float, float], eps: EpsRange, eps_sampling: str,
                    t: float | None = None, x_sides: bool = False):
    """Sampler of ``(t, x, v, eps)`` rows: uniform in t (or fixed ``t``), in x (or, with
    ``x_sides``, half on each wall: point i on the left wall for even i), in v; ε per
    ``eps_sampling``."""
    if eps_sampling not in EPS_SAMPLING:
        raise ValueError(f"eps_sampling {eps_sampling!r} unknown; choose from {', '.join(EPS_SAMPLING)}")

    def sample(key: jax.Array, n: int) -> jax.Array:
        k_txv, k_eps = jax.random.split(key)
        lo = jnp.array([t_range[0], x_range[0], v_range[0]])
        hi = jnp.array([t_range[1], x_range[1], v_range[1]])
        u = lo + jax.random.uniform(k_txv, (n, 3), dtype=jnp.float64) * (hi - lo)
        if t is not None:
            u = u.at[:, 0].set(t)
        if x_sides:
            u = u.at[:, 1].set(jnp.where(jnp.arange(n) % 2 == 0, x_range[0], x_range[1]))
        return jnp.concatenate([u, eps.sample(k_eps, n, eps_sampling)[:, None]], axis=1)

    return sample


# -- evaluation: fixed points per ε and per-ε errors -------------------------------------------

def eval_grid(eps_values: Sequence[float], t_final: float, x_range: tuple[float, float],
              n_x: int) -> np.ndarray:
    """``len(eps_values) * n_x`` rows ``(T, x, 0, eps)``: ``n_x`` equispaced x per ε, in blocks."""
    x = np.linspace(x_range[0], x_range[1], n_x)
    rows = [np.stack([np.full(n_x, t_final), x, np.zeros(n_x), np.full(n_x, e)], axis=1)
            for e in eps_values]
    return np.concatenate(rows, axis=0)


def per_eps_metrics(eps_values: Sequence[float], fields: Sequence[str],
                    scored: Sequence[str]) -> Callable[[jax.Array, jax.Array, jax.Array], dict]:
    """``metrics(x, u, reference)``: relative L2 error ``rel_l2_<field>_eps<ε>`` of every
    scored field over the evaluation rows whose ε coordinate equals each evaluated value.
    Jittable (masks, no data-dependent shapes)."""
    index = {f: i for i, f in enumerate(fields)}
    eps_values = tuple(float(e) for e in eps_values)

    def metrics(x, u, reference):
        out = {}
        for e in eps_values:
            mask = jnp.abs(x[:, 3] / e - 1.0) < 1e-9
            for f in scored:
                i = index[f]
                ref = jnp.where(mask, reference[:, i], 0.0)
                diff = jnp.where(mask, u[:, i] - reference[:, i], 0.0)
                out[f"rel_l2_{f}_{eps_tag(e)}"] = jnp.sqrt(jnp.sum(diff**2) / jnp.sum(ref**2))
        return out

    return metrics


# -- reference cache --------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$PINNOPT_CACHE``, default ``~/.cache/pinnopt``."""
    return Path(os.environ.get("PINNOPT_CACHE", "~/.cache/pinnopt")).expanduser()


def cached_reference(solver: Callable, settings: dict, compute: Callable[[], dict[str, np.ndarray]]
                     ) -> dict[str, np.ndarray]:
    """Arrays of a reference solve, cached in :func:`cache_dir`.

    The key hashes the solver's name, its module's source (so an edited solver recomputes)
    and ``settings``. Files are written atomically; an unreadable file is recomputed.
    """
    source = inspect.getsource(inspect.getmodule(solver))
    key = hashlib.sha256(json.dumps(
        {"solver": f"{solver.__module__}.{solver.__name__}", "settings": settings,
         "source": hashlib.sha256(source.encode()).hexdigest()}, sort_keys=True
    ).encode()).hexdigest()[:20]
    path = cache_dir() / f"{solver.__name__}-{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError):
            pass
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the solve next time
    return arrays
