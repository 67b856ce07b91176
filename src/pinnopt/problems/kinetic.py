"""Shared pieces of the kinetic problems (``transport``, ``bgk``; METHODS.md §8).

- the ε encoding: ε is a point coordinate (its raw value); a model turns it into network
  inputs, log10 ε normalised to [−1, 1] over [ε_min, ε_max], optionally passed through a small
  embedding network whose output (a latent code) is concatenated to the other inputs;
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
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.nets import MLP, Params
from pinnopt.residuals import ResidualGroup

EPS_SAMPLING = ("log-uniform", "decades", "values")
EMBED_HIDDEN = 16
"""Hidden width of the ε embedding network ``1 -> 16 -> latent``."""


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

    def encode(self, eps: jax.Array) -> jax.Array:
        """log10 ε mapped affinely from [log10 lo, log10 hi] onto [−1, 1] (0 when fixed)."""
        if self.fixed:
            return jnp.zeros_like(eps)
        return 2.0 * (jnp.log10(eps) - math.log10(self.lo)) / self.decades - 1.0

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


@dataclass(frozen=True)
class EpsEncoding:
    """ε as network inputs: no column for a fixed ε; else the normalised log10 ε
    (``latent = 0``) or a latent code of width ``latent`` from the embedding network
    ``1 -> 16 -> latent`` applied to it."""

    range: EpsRange
    latent: int = 0
    activation: str = "tanh"

    def __post_init__(self):
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 0:
            raise ValueError(f"eps_embedding must be a non-negative integer, got {self.latent!r}")

    @property
    def width(self) -> int:
        if self.range.fixed:
            return 0
        return self.latent or 1

    @property
    def embed_net(self) -> MLP | None:
        if self.range.fixed or not self.latent:
            return None
        return MLP((1, EMBED_HIDDEN, self.latent), self.activation)

    @property
    def num_params(self) -> int:
        return self.embed_net.num_params if self.embed_net else 0

    def describe(self) -> str:
        if self.range.fixed:
            return f"eps={self.range.lo:g}"
        code = f"embed 1-{EMBED_HIDDEN}-{self.latent}" if self.latent else "log10-eps input"
        return f"eps in [{self.range.lo:g}, {self.range.hi:g}] ({code})"

    def init(self, key: jax.Array, dtype=jnp.float64) -> Params:
        return self.embed_net.init(key, dtype) if self.embed_net else []

    def __call__(self, params: Params, eps: jax.Array) -> jax.Array:
        """Input columns ``(N, width)`` for ε values ``(N,)``."""
        if self.range.fixed:
            return jnp.zeros((eps.shape[0], 0), eps.dtype)
        z = self.range.encode(eps)[:, None]
        return self.embed_net.apply(params, z) if self.embed_net else z


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


def value_and_grads(net: MLP, params: Params, inputs: jax.Array, cols: Sequence[int]
                    ) -> tuple[jax.Array, jax.Array]:
    """Network value ``(N, m)`` and its derivatives along input columns ``cols``,
    ``(N, len(cols), m)``.

    One forward-mode pass (``jax.jvp``) per direction: for these shapes (tens of thousands of
    rows, a few narrow layers) separate passes ran about twice as fast on a CPU as one
    Taylor-mode pass carrying the stacked slots (``pinnopt.taylor.jet``), and only first
    derivatives are needed.
    """
    def apply(z):
        return net.apply(params, z)

    value, grads = None, []
    for c in cols:
        direction = jnp.zeros_like(inputs).at[:, c].set(1.0)
        value, tangent = jax.jvp(apply, (inputs,), (direction,))
        grads.append(tangent)
    if value is None:
        value = apply(inputs)
    return value, jnp.stack(grads, axis=1) if grads else jnp.zeros((inputs.shape[0], 0, net.out_dim), inputs.dtype)


def gauss_legendre(nv: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of ∫_lo^hi dv."""
    if isinstance(nv, bool) or not isinstance(nv, int) or nv < 2 or nv % 2:
        raise ValueError(f"nv must be an even integer >= 2 (velocity nodes pair as ±v), got {nv!r}")
    v, w = np.polynomial.legendre.leggauss(nv)
    half = 0.5 * (hi - lo)
    return lo + half * (v + 1.0), half * w


@dataclass(frozen=True)
class PhaseSpaceModel:
    """Inputs, velocity quadrature and derivatives shared by the kinetic models.

    Network inputs are ``(t̃, x̃[, ṽ], code)``: t and x mapped affinely onto [−1, 1],
    ṽ = v / v_scale, and the ε encoding's columns. ``weights`` are the quadrature weights of
    the problem's velocity average ⟨·⟩ at ``nodes``.
    """

    encoding: EpsEncoding
    t_final: float
    x_range: tuple[float, float]
    v_scale: float
    nodes: tuple[float, ...]
    weights: tuple[float, ...]

    def quadrature(self, dtype) -> tuple[jax.Array, jax.Array]:
        """Velocity nodes v_k and weights w_k, ``(nv,)`` each, in ``dtype``."""
        return jnp.asarray(self.nodes, dtype), jnp.asarray(self.weights, dtype)

    def scale(self, dtype) -> jax.Array:
        """d(t̃, x̃)/d(t, x): input-space derivatives times this are ∂_t, ∂_x."""
        lo, hi = self.x_range
        return jnp.array([2.0 / self.t_final, 2.0 / (hi - lo)], dtype)

    def inputs(self, params: dict, X: jax.Array, v: jax.Array | None = None) -> jax.Array:
        """Network inputs at rows ``X = (t, x, v, eps)``; with ``v`` given, ṽ is included."""
        lo, hi = self.x_range
        cols = [2.0 * X[:, :1] / self.t_final - 1.0, 2.0 * (X[:, 1:2] - lo) / (hi - lo) - 1.0]
        if v is not None:
            cols.append(v[:, None] / self.v_scale)
        cols.append(self.encoding(params.get("embed", []), X[:, 3]))
        return jnp.concatenate(cols, axis=1)

    def at_nodes(self, params: dict, X: jax.Array) -> jax.Array:
        """``(N·nv, in_dim)`` inputs: every row of ``X`` at every velocity node (row-major)."""
        nv = len(self.nodes)
        v = jnp.tile(self.quadrature(X.dtype)[0], X.shape[0])
        return self.inputs(params, jnp.repeat(X, nv, axis=0), v)

    def derivatives(self, net: MLP, params: Params, inputs: jax.Array, derivs: str):
        """Network values ``(M, m)`` and, for each of ``t``, ``x`` named in ``derivs``, their
        derivatives in the physical coordinate ``(M, m)`` (None for those not named)."""
        cols = [i for i, c in enumerate("tx") if c in derivs]
        value, grad = value_and_grads(net, params, inputs, cols)
        scale = self.scale(inputs.dtype)
        d = {"tx"[c]: grad[:, j] * scale[c] for j, c in enumerate(cols)}
        return value, d.get("t"), d.get("x")

    def init_encoding(self, params: dict, key: jax.Array, dtype) -> dict:
        if self.encoding.embed_net is not None:
            params["embed"] = self.encoding.init(key, dtype)
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
