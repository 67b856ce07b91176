"""The problem definition: domain, fields, residual groups, solution, evaluation set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp

from pinnopt.geometry import Box, Sampler
from pinnopt.residuals import ResidualGroup

EVAL_KEY = 20240521
"""Seed of the held-out evaluation points: fixed, independent of the training seed."""


@dataclass(frozen=True)
class Problem:
    """A PDE problem as data.

    ``coords`` names the input coordinates (time first for evolution problems), ``fields`` the
    network outputs. ``solution(x (N, dim)) -> (N, len(fields))`` is the exact or reference
    solution used for the error metrics on ``n_eval`` held-out points drawn by
    ``eval_sampler``. ``resample`` redraws the training points every step. ``nets`` maps preset
    names to hidden widths; ``default_net`` is one of them.

    A reference that covers only some fields or points (e.g. measured centre-line data) names
    the fields it scores in ``reference_fields`` (default: all) and returns NaN where it has no
    value; errors then use only the finite entries. ``error_groups`` adds errors of several
    fields taken together, e.g. ``{"velocity": ("u", "v")}``.

    ``model``, when set, replaces the plain MLP: ``model(net_spec, activation)`` returns a
    :class:`pinnopt.models.Model` (``init``, ``apply``, ``num_params``, ``describe()``,
    ``jet``), for problems with several networks or input encodings. Methods that need the
    MLP's per-layer taps (KFAC) reject models without ``supports_taps``.

    ``metrics``, when set, adds problem-specific errors: ``metrics(x, u, reference) -> dict``
    of scalars from the evaluation points ``x``, the predictions ``u (N, len(fields))`` and the
    reference there (e.g. errors per value of a parameter coordinate). It is called inside the
    jitted evaluation, so it must be traceable (static shapes; masks rather than indexing).
    """

    name: str
    domain: Box
    coords: tuple[str, ...]
    fields: tuple[str, ...]
    groups: tuple[ResidualGroup, ...]
    solution: Callable[[jax.Array], jax.Array] | None = None
    eval_sampler: Sampler | None = None
    n_eval: int = 10_000
    resample: bool = False
    nets: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"small": (64,)})
    default_net: str = "small"
    description: str = ""
    model: Callable[[str, str], object] | None = None
    reference_fields: tuple[str, ...] | None = None
    error_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    metrics: Callable[[jax.Array, jax.Array, jax.Array], dict[str, jax.Array]] | None = None

    def __post_init__(self):
        if len(self.coords) != self.domain.dim:
            raise ValueError(
                f"problem {self.name!r}: {len(self.coords)} coordinate names for a "
                f"{self.domain.dim}-dimensional domain"
            )
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"problem {self.name!r}: residual group names repeat: {names}")
        if self.default_net not in self.nets:
            raise ValueError(f"problem {self.name!r}: default net {self.default_net!r} not a preset")
        named = set(self.reference_fields or ()).union(*self.error_groups.values())
        if not named <= set(self.fields):
            raise ValueError(f"problem {self.name!r}: reference fields {sorted(named - set(self.fields))} "
                             f"are not among its fields {self.fields}")

    @property
    def scored_fields(self) -> tuple[str, ...]:
        """The fields the reference solution covers (errors are reported for these)."""
        return self.fields if self.reference_fields is None else self.reference_fields

    @property
    def dim(self) -> int:
        return self.domain.dim

    def eval_points(self) -> jax.Array:
        """The fixed held-out evaluation set, ``(n_eval, dim)``."""
        sampler = self.eval_sampler or self.domain.interior()
        return sampler(jax.random.PRNGKey(EVAL_KEY), self.n_eval)

    def reference(self, x: jax.Array) -> jax.Array:
        if self.solution is None:
            raise ValueError(f"problem {self.name!r} has no reference solution")
        return jnp.asarray(self.solution(x)).reshape(x.shape[0], len(self.fields))
