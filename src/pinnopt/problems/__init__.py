"""Problem registry: ``make_problem(name, **options)``.

Problems are registered by name with :func:`register_problem`, or provided by installed
distributions through the entry-point group :data:`ENTRY_POINTS` (looked up when a name is
not registered; see :mod:`pinnopt.plugins`)."""

from __future__ import annotations

from importlib import metadata
from typing import Any, Callable

from pinnopt.problems.base import Problem
from pinnopt.settings import coerce, signature_types, type_name
from pinnopt.problems.bgk import bgk
from pinnopt.problems.cavity import cavity
from pinnopt.problems.composite_heat import composite_heat
from pinnopt.problems.convection import convection
from pinnopt.problems.convection_diffusion import convection_diffusion
from pinnopt.problems.heat import heat
from pinnopt.problems.helmholtz import helmholtz
from pinnopt.problems.klein_gordon import klein_gordon
from pinnopt.problems.poisson import poisson
from pinnopt.problems.stokes import stokes
from pinnopt.problems.transport import transport

ENTRY_POINTS = "pinnopt.problems"
"""The entry-point group of problems that installed distributions provide: each entry point
is named after its problem and points at the factory (``my-problem = "pkg.mod:factory"``)."""


class _Registry(dict):
    """Problem factories by name. A name it does not hold is looked up among the entry points
    of :data:`ENTRY_POINTS` (importing only that entry point's module) and registered if one
    has it; an entry point that fails to load raises ``ValueError`` naming it."""

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and _from_entry_point(name))

    def __missing__(self, name: str) -> Callable[..., Problem]:
        if isinstance(name, str) and _from_entry_point(name):
            return super().__getitem__(name)
        raise KeyError(name)


def _from_entry_point(name: str) -> bool:
    """Register problem ``name`` from its entry point; whether there is one."""
    for entry in metadata.entry_points(group=ENTRY_POINTS, name=name):
        try:
            factory = entry.load()
        except Exception as err:  # a plugin's module: report whatever it raised, on one line
            raise ValueError(f"problem {name!r}: entry point {entry.value!r} of group "
                             f"{ENTRY_POINTS} cannot be loaded ({type(err).__name__}: {err})"
                             ) from None
        register_problem(name, factory)
        return True
    return False


PROBLEMS: dict[str, Callable[..., Problem]] = _Registry({
    "poisson": poisson,
    "heat": heat,
    "helmholtz": helmholtz,
    "klein_gordon": klein_gordon,
    "convection": convection,
    "convection_diffusion": convection_diffusion,
    "composite_heat": composite_heat,
    "stokes": stokes,
    "cavity": cavity,
    "transport": transport,
    "bgk": bgk,
})


DEFAULT_METHOD = "lbfgs"
DEFAULT_METHODS: dict[str, str] = {
    # ENGD reaches RMS 6e-8 on the default 2d Poisson problem in a minute of one CPU core,
    # where L-BFGS stops near 4e-5 (docs/engd.md): the quick start should show that.
    "poisson": "engd",
}
"""The method a run of each problem uses when none is named (a name: problems never import
methods); problems not listed use :data:`DEFAULT_METHOD`."""


def register_problem(name: str, factory: Callable[..., Problem],
                     default_method: str | None = None) -> None:
    """Make a problem factory available by name (to RunConfig, the CLI and benchmark suites),
    optionally with the method its runs use when none is named."""
    if not callable(factory):
        raise ValueError(f"problem {name!r}: the factory must be callable")
    PROBLEMS[name] = factory
    if default_method is not None:
        DEFAULT_METHODS[name] = default_method


def default_method(name: str) -> str:
    """The method runs of problem ``name`` use when none is named."""
    return DEFAULT_METHODS.get(name, DEFAULT_METHOD)


def problem_options(name: str) -> dict[str, object]:
    """The options a problem factory accepts, with their defaults."""
    return {key: default for key, (_, default) in signature_types(PROBLEMS[name]).items()}


def problem_option_types(name: str) -> dict[str, str]:
    """The annotated type of each option, as text (``int | None``)."""
    return {key: type_name(hint) for key, (hint, _) in signature_types(PROBLEMS[name]).items()}


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` converted to the types the factory's signature annotates; an unknown
    option or a value of the wrong type raises ``ValueError`` with one line."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {', '.join(sorted(PROBLEMS))}")
    accepted = signature_types(PROBLEMS[name])
    out = {}
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(
                f"problem {name!r} has no option {key!r}; accepted: {', '.join(accepted)}")
        out[key] = coerce(accepted[key][0], value, f"problem {name!r}: {key}")
    return out


def make_problem(name: str, **options) -> Problem:
    """Build a registered problem; unknown names or options raise ``ValueError``."""
    options = check_options(name, options)
    return PROBLEMS[name](**options)


__all__ = ["DEFAULT_METHODS", "PROBLEMS", "Problem", "default_method", "make_problem", "problem_options", "register_problem",
           "poisson", "heat", "transport", "bgk", "helmholtz", "klein_gordon", "convection",
           "convection_diffusion", "composite_heat", "stokes", "cavity"]
