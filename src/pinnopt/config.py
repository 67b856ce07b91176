"""Run configuration: one validated record that the CLI, TOML files and Python all build.

Every invalid setting raises :class:`ConfigError` with a one-line message naming the setting,
the value and what is accepted.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pinnopt.nets import ACTIVATIONS, MLP, parse_net
from pinnopt.optim import METHODS, MethodValue, configured_value
from pinnopt.optim.base import as_config, to_tree
from pinnopt.problems import PROBLEMS, Problem, check_options, default_method, make_problem

DTYPES = ("float64", "float32")


class ConfigError(ValueError):
    """A setting is invalid; the message is one line for the user."""


@dataclass
class RunConfig:
    """Everything that defines a training run.

    ``problem_options`` are passed to the problem factory (e.g. ``{"dim": 5}``); ``net`` is a
    preset of the problem, ``"LxW"`` (L hidden layers of width W) or full sizes ``"2-64-1"``
    (``None``: the problem's default);
    ``method`` is a name, a table ``{"name": ..., **settings}`` or a value such as
    ``alm(inner=adam())`` (``None``: the problem's default method, ``pinnopt list problems``),
    ``hparams`` the method's settings (kept as given: a nested table for a method in a method). Training stops at ``steps`` or after
    ``time_budget`` seconds of training time (evaluation excluded), whichever comes first.
    Evaluations happen at steps 0, 1 and then every time the step grows by ``eval_ratio``;
    checkpoints at evaluations at least ``checkpoint_every`` seconds apart, and at the end.
    Problems that redraw their training points (``resample``) draw them every
    ``resample_every`` steps (1: every step; the batch of step s is that of step
    s − s mod k, so a resumed run sees the same points).
    ``devices`` is the number of devices the collocation points are split over (data
    parallelism, ``docs/distributed.md``); ``None`` uses every device.
    A step that produces NaN or Inf is rolled back; with ``on_divergence = "retry"`` it is
    redone with the method's safer settings (up to ``max_retries`` times), else the run stops.
    ``tensorboard`` also writes every history row to a TensorBoard log in the run directory's
    ``tensorboard/`` (needs the ``tensorboard`` extra: ``pip install 'pinnopt[tensorboard]'``).
    ``chunk_steps``: the steps between evaluations run as compiled chunks of at most this
    many steps, and the budgets and stop signals are looked at between chunks (``"auto"``:
    the power of two that makes a chunk last about 0.1 s; 1: one step per call). The trained
    numbers do not depend on it (docs/architecture.md).
    """

    problem: str = "poisson"
    problem_options: dict[str, Any] = field(default_factory=dict)
    net: str | None = None
    activation: str = "tanh"
    method: str | dict[str, Any] | MethodValue | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    steps: int = 100_000
    time_budget: float | None = 60.0
    seed: int = 0
    dtype: str = "float64"
    eval_ratio: float = 1.1
    checkpoint_every: float = 30.0
    plots: bool = True
    tensorboard: bool = False
    on_divergence: str = "retry"
    max_retries: int = 3
    devices: int | None = None
    resample_every: int = 1
    chunk_steps: int | str = "auto"

    def __post_init__(self):
        self.validate()

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        if self.problem not in PROBLEMS:
            raise ConfigError(
                f"problem={self.problem!r} is unknown; choose from {', '.join(sorted(PROBLEMS))}"
            )
        if not isinstance(self.problem_options, dict):
            raise ConfigError(f"problem_options must be a table, got {self.problem_options!r}")
        try:
            self.problem_options = check_options(self.problem, self.problem_options)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self._canonical_method()
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation={self.activation!r} is unknown; choose from {', '.join(ACTIVATIONS)}"
            )
        _check_int("steps", self.steps, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.time_budget is not None:
            _check_number("time_budget", self.time_budget, positive=True)
        _check_number("eval_ratio", self.eval_ratio)
        if self.eval_ratio <= 1.0:
            raise ConfigError(f"eval_ratio={self.eval_ratio!r} must be greater than 1")
        _check_number("checkpoint_every", self.checkpoint_every)
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every!r} must be >= 0 seconds")
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"tensorboard={self.tensorboard!r} must be true or false")
        if self.on_divergence not in ("retry", "stop"):
            raise ConfigError(f"on_divergence={self.on_divergence!r} must be 'retry' or 'stop'")
        _check_int("max_retries", self.max_retries, minimum=0)
        _check_int("resample_every", self.resample_every, minimum=1)
        if self.chunk_steps != "auto":
            if isinstance(self.chunk_steps, str):
                raise ConfigError(f"chunk_steps={self.chunk_steps!r} must be 'auto' or an integer")
            _check_int("chunk_steps", self.chunk_steps, minimum=1)
        if self.devices is not None:
            _check_int("devices", self.devices, minimum=1)
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is unknown; choose from {', '.join(DTYPES)}")
        if self.net is not None and not isinstance(self.net, str):
            raise ConfigError(f"net={self.net!r} must be a preset name, LxW such as 3x20, "
                              "or sizes like '2-64-1'")

    def _canonical_method(self) -> None:
        """``method`` as a name and ``hparams`` as its settings (nested tables for methods in
        methods), whether given as a name and settings, a table with a name, or a value."""
        if not isinstance(self.hparams, dict):
            raise ConfigError(f"hparams must be a table of settings, got {self.hparams!r}")
        try:
            method, hparams = self._method_and_settings()
            value = configured_value(method, {k: to_tree(v) for k, v in hparams.items()})
            self.method, self.hparams = as_config(value)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def _method_and_settings(self) -> tuple[str, dict[str, Any]]:
        method, hparams = self.method, dict(self.hparams)
        if method is None:
            method = default_method(self.problem)
        if isinstance(method, MethodValue):
            method, given = as_config(method)
            hparams = {**given, **hparams}
        elif isinstance(method, dict):
            table = dict(method)
            method = table.pop("name", None)
            if not isinstance(method, str):
                raise ValueError("a [method] table needs name = \"<method>\"")
            hparams = {**table, **hparams}
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(
                f"method={method!r} is unknown; choose from {', '.join(sorted(METHODS))}")
        return method, hparams

    @property
    def method_value(self) -> MethodValue:
        """The method this configuration describes, as a value."""
        return configured_value(self.method, self.hparams)

    # -- building ----------------------------------------------------------------------------
    def build_problem(self) -> Problem:
        try:
            return make_problem(self.problem, **self.problem_options)
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None

    def build_net(self, problem: Problem) -> MLP:
        """The problem's network: an :class:`MLP` from the net spec, or the problem's own
        model (``problem.model``, e.g. several networks with an input encoding)."""
        spec = self.net if self.net is not None else problem.default_net
        try:
            if problem.model is not None:
                return problem.model(spec, self.activation)
            sizes = parse_net(spec, problem.dim, len(problem.fields), problem.nets)
            return MLP(sizes, self.activation)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError("a run configuration must be a table of settings")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}; accepted: {', '.join(sorted(known))}")
        for key in ("problem_options", "hparams"):
            if key in data and not isinstance(data[key], dict):
                raise ConfigError(f"{key} must be a table of settings, got {data[key]!r}")
        for key in ("problem", "method", "activation", "dtype"):
            if key == "method" and isinstance(data.get(key), dict):
                continue  # a [method] table: its name and settings, checked with the method
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"{key}={data[key]!r} must be a string")
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
        return cls.from_dict(data)


def _check_number(name: str, value: Any, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{name}={value!r} must be positive")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if value < minimum:
        raise ConfigError(f"{name}={value!r} must be at least {minimum}")
