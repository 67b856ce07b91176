"""Plugins: modules that register problems (or methods) with pinnopt.

A custom problem becomes available by name in two ways:

* an entry point in the group ``pinnopt.problems`` of an installed distribution, named after
  the problem and pointing at its factory (``my-problem = "my_package.problems:factory"``):
  looked up, and its module imported, the first time a name is not a registered problem
  (:data:`pinnopt.problems.PROBLEMS`);
* a plugin module that calls :func:`pinnopt.register_problem` when it is imported:
  ``--plugin MODULE`` on the command line, :func:`import_plugin` in Python.

A run records the modules its problem and method came from (``plugins`` in its
metadata.json, :func:`required`), and reading the run (``--resume``, ``report``, ``predict``,
:func:`pinnopt.load`) imports them first (:func:`import_recorded`), so a run of a custom
problem is resumed, reported and evaluated in a new process like any other.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Iterable

from pinnopt.config import RunConfig
from pinnopt.optim import METHODS
from pinnopt.problems import PROBLEMS

_providers: dict[tuple[str, str], str] = {}
"""``(kind, name) -> module`` for the problems and methods a plugin module registered when
:func:`import_plugin` imported it (kind ``"problem"`` or ``"method"``)."""


class PluginError(ValueError):
    """A plugin module cannot be imported; the message is one line that names it."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def import_plugin(module: str, needed_by: str | None = None) -> None:
    """Import the plugin ``module`` (a dotted name on ``sys.path``) and note the problems and
    methods it registers. ``needed_by`` names what needs it, for the error message; a module
    that cannot be imported, or fails while importing, raises :class:`PluginError`."""
    if module in sys.modules:
        return
    problems, methods = set(PROBLEMS), set(METHODS)
    try:
        importlib.import_module(module)
    except Exception as err:  # a user's module: report whatever it raised, on one line
        reason = f"{needed_by} needs the plugin module" if needed_by else "plugin module"
        raise PluginError(f"{reason} {module!r}, which cannot be imported ({_one_line(err)}); "
                          f"install it or put its directory on PYTHONPATH") from None
    for name in set(PROBLEMS) - problems:
        _providers[("problem", name)] = module
    for name in set(METHODS) - methods:
        _providers[("method", name)] = module


def required(config: RunConfig) -> list[str]:
    """The plugin modules a run of ``config`` needs in a new process: the module that
    registered its problem or its method when imported by :func:`import_plugin`, and for a
    problem registered by other code, the module its factory is defined in (unless that is
    pinnopt itself or ``__main__``, which another process cannot import)."""
    modules = []
    problem = _providers.get(("problem", config.problem))
    if problem is None:
        problem = getattr(PROBLEMS[config.problem], "__module__", None)
        if problem is not None and (problem == "__main__" or problem.split(".")[0] == "pinnopt"):
            problem = None
    for module in (problem, _providers.get(("method", config.method))):
        if module is not None and module not in modules:
            modules.append(module)
    return modules


def import_recorded(modules: Iterable[str], run_dir: str | Path) -> None:
    """Import the plugin modules the run in ``run_dir`` recorded (:func:`required`)."""
    for module in modules:
        import_plugin(module, needed_by=f"the run {run_dir}")
