"""Methods as values: typed settings read from signatures, composition by value, one registry.

A *method* bound to what it optimises is a pure ``init`` / ``step`` pair over explicit state,
like an optax ``GradientTransformation`` but owning the whole update (Gauss–Newton methods
need residuals, line searches need the loss)::

    state = method.init(params)
    params, state, info = method.step(params, state, batch, key)

``info`` is a dict of scalars, at least ``loss`` (the loss at the incoming parameters on
``batch``). ``step`` is jit-compiled by the trainer, so it must be traceable.

Before it is bound, a method is a *value*: :class:`MethodValue`, a registered definition and
its settings. Every definition is a builder function whose keyword-only parameters, with
their annotations and defaults, ARE its settings; nothing else lists them::

    @method("engd", summary="...", needs=("residuals",))
    def engd(objective, *, damping: float = 1e-10, variant: Literal["auto", "full"] = "auto"):
        ...

    engd(damping=1e-8)                      # a MethodValue; engd() has the defaults
    engd(damping=1e-8).build(objective)     # a Method

Settings whose annotation is :data:`InnerMethod`, :data:`Aggregator` or :data:`Optimizer` take
other values, so methods compose by value (``alm(inner=engd())``,
``multitask(aggregator=hrgrad(kappa=0.5), optimizer=adam(lr=1e-3))``). Everywhere a value is
accepted, so is its name (that method with its defaults; when the name is that of the
setting's default, the default value itself, e.g. ``inner="lbfgs"`` in ``alm`` is alm's
L-BFGS with memory 100) and a table ``{"name": ..., **settings}`` (a table without a name
modifies the default), which is how TOML files and ``--opt inner.damping=1e-8`` spell them.

A slot says what it *provides* to the method put in it (``loss``: a loss function;
``residuals``: the residual vector and its per-point residual functions; ``groups``: the
residual groups by role), and a method says what it *needs*; one that does not fit is refused
with a one-line error naming why. Where what a slot provides depends on the holder's other
settings (``lagrange`` with ``form="linear"`` has no residual form), the holder's ``check``
refuses the combination, also with one line, when the value is made.

*Aliases* keep old names working: ``adam-lbfgs`` and the multi-task names (``hrgrad``,
``pcgrad``, ...) take the flat settings they always took and expand to the composed value.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Annotated, Callable, Literal, Mapping, NamedTuple

import jax
import optax

from pinnopt.nets import Params
from pinnopt.settings import coerce as coerce_typed
from pinnopt.residuals import Batch, Objective

NEEDS = ("loss", "residuals", "groups")
"""What a method may need of what it optimises: a loss function, the residual vector (and its
Jacobian products), the residual groups (roles, points: task splits, constraints)."""


class Method(NamedTuple):
    init: Callable[[Params], Any]
    step: Callable[[Params, Any, Batch, jax.Array], tuple[Params, Any, dict[str, jax.Array]]]


@dataclass(frozen=True)
class Slot:
    """Annotation metadata of a setting that holds another value.

    ``namespace``: ``"method"`` or ``"aggregator"``; ``provides``: what the holder gives the
    method in the slot (a method needing more does not fit); ``transform``: the slot takes a
    gradient transformation (a method with an optax transform, or a raw optax one).
    """

    namespace: str
    provides: frozenset[str] = frozenset(NEEDS)
    transform: bool = False


InnerMethod = Annotated[Any, Slot("method", frozenset({"loss", "residuals"}))]
"""A method optimising a loss handed to it, or a stacked residual whose ½‖·‖² is that loss up
to a constant (the augmented Lagrangian's inner method)."""
ANY_METHOD_SLOT = Slot("method")
AnyMethod = Annotated[Any, ANY_METHOD_SLOT]
"""A method optimising the holder's own objective (a phase of a sequence)."""
Aggregator = Annotated[Any, Slot("aggregator")]
"""A multi-task gradient aggregator."""
Optimizer = Annotated[Any, Slot("method", frozenset(), transform=True)]
"""A gradient transformation: ``adam(...)``, ``sgd(...)`` or a raw ``optax.GradientTransformation``."""


# ---------------------------------------------------------------------------------------------
# Settings read from a builder's signature


@dataclass(frozen=True)
class Setting:
    """One keyword-only parameter of a builder: name, kind and default.

    ``kind`` is ``bool``, ``int``, ``float``, ``str`` (with ``choices`` for a ``Literal``), a
    :class:`Slot`, or ``"phases"`` (the phases of :func:`sequence`)."""

    name: str
    kind: Any
    default: Any
    choices: tuple[str, ...] | None = None

    def type_name(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        if isinstance(self.kind, Slot):
            if self.kind.transform:
                return "optimizer"
            fits = "" if self.kind.provides == frozenset(NEEDS) else f" on a {'/'.join(sorted(self.kind.provides))}"
            return f"{self.kind.namespace}{fits}"
        if self.kind == "phases":
            return "phases"
        return self.kind.__name__

    def describe(self) -> str:
        default = "(required)" if self.default is inspect.Parameter.empty else repr(self.default)
        return f"{self.name}: {self.type_name()} = {default}"


def _setting(name: str, hint: Any, default: Any) -> Setting:
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        slot = next((m for m in meta if isinstance(m, Slot)), None)
        if slot is not None:
            return Setting(name, slot, default)
        hint = base
    if typing.get_origin(hint) is Literal:
        return Setting(name, str, default, tuple(typing.get_args(hint)))
    if hint in (bool, int, float, str):
        return Setting(name, hint, default)
    if name == "phases":
        return Setting(name, "phases", default)
    raise TypeError(f"setting {name!r}: unsupported annotation {hint!r}")


def read_settings(builder: Callable, skip_first: bool) -> dict[str, Setting]:
    """The keyword-only parameters of ``builder`` as settings (annotations resolved)."""
    hints = typing.get_type_hints(builder, include_extras=True)
    params = list(inspect.signature(builder).parameters.values())
    if skip_first:
        params = params[1:]
    out = {}
    for p in params:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{builder.__name__}: setting {p.name!r} must be keyword-only")
        out[p.name] = _setting(p.name, hints[p.name], p.default)
    return out


# ---------------------------------------------------------------------------------------------
# Definitions and values


@dataclass(frozen=True)
class Definition:
    """A registered method, alias or aggregator.

    ``build(target, **settings)`` makes the bound object (a :class:`Method` on an objective, an
    aggregator's functions, or, for an alias, the expanded :class:`MethodValue` from flat
    settings). ``safer(value)`` is the value to retry with after a divergence (more damping, a
    smaller step) or ``None``. ``transform(**settings)``, for gradient methods, is their optax
    transformation. ``legacy(settings)`` rewrites settings of an older spelling.
    ``check(settings)`` (every setting, explicit over default) returns why a combination of
    settings is refused, in one line, or ``None``.
    """

    name: str
    namespace: str
    build: Callable[..., Any]
    summary: str
    settings: dict[str, Setting]
    needs: frozenset[str] = frozenset({"loss"})
    safer: Callable[["MethodValue"], "MethodValue | None"] | None = None
    transform: Callable[..., optax.GradientTransformation] | None = None
    legacy: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    alias: bool = False
    check: Callable[[Mapping[str, Any]], str | None] | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        """Every setting's default (the flat settings of an alias)."""
        return {k: s.default for k, s in self.settings.items()}

    def __call__(self, *args, **settings) -> "MethodValue":
        if args:
            if self.settings.keys() != {"phases"}:
                raise TypeError(f"{self.name}() takes keyword settings only")
            settings = {"phases": args, **settings}
        return make_value(self, settings)


@dataclass(frozen=True, eq=False)
class MethodValue:
    """A definition with settings: the explicit ones (``explicit``) over the defaults."""

    definition: Definition
    explicit: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting, explicit over default."""
        return {**self.definition.hparams, **self.explicit}

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    @property
    def needs(self) -> frozenset[str]:
        needs = set(self.definition.needs)
        for key, setting in self.definition.settings.items():
            value = self.settings[key]
            if setting.kind == "phases":
                for phase, _ in value:
                    needs |= phase.needs
            elif setting.kind == ANY_METHOD_SLOT and isinstance(value, MethodValue):
                needs |= value.needs  # it optimises our objective: it needs what we provide
        return frozenset(needs)

    def replace(self, **changes) -> "MethodValue":
        return make_value(self.definition, {**self.explicit, **changes})

    def build(self, target: Any) -> Any:
        """The bound method (or aggregator) for ``target``."""
        return self.definition.build(target, **self.settings)

    def transform(self) -> optax.GradientTransformation:
        if self.definition.transform is None:
            raise ValueError(f"{self.name} is not a gradient transformation")
        return self.definition.transform(**self.settings)

    def safer(self) -> "MethodValue | None":
        rule = self.definition.safer
        return rule(self) if rule is not None else None

    def tree(self) -> dict[str, Any]:
        """``{"name": ..., **explicit settings}``, nested values as trees (JSON/TOML-ready)."""
        return {"name": self.name, **{k: to_tree(v) for k, v in self.explicit.items()}}

    def walk(self, prefix: str = ""):
        """``(dotted key, value)`` of every scalar setting, through nested values."""
        for key, value in self.settings.items():
            path = f"{prefix}{key}"
            if isinstance(value, MethodValue):
                yield from value.walk(path + ".")
            elif key == "phases":
                for i, (phase, _) in enumerate(value):
                    yield from phase.walk(f"{path}.{i}.method.")
            else:
                yield path, value

    def __eq__(self, other) -> bool:
        """Same method, same settings (explicit or by default)."""
        return (isinstance(other, MethodValue) and self.definition is other.definition
                and self.settings == other.settings)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        if "phases" in self.explicit:
            inner = ", ".join(f"({p!r}, {n!r})" for p, n in self.explicit["phases"])
            return f"{_py_name(self.name)}({inner})"
        args = ", ".join(f"{k}={v!r}" for k, v in self.explicit.items())
        return f"{_py_name(self.name)}({args})"


def _py_name(name: str) -> str:
    return name.replace("-", "_")


def to_tree(value: Any) -> Any:
    if isinstance(value, MethodValue):
        return value.tree()
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):  # phases
        return [{"method": to_tree(p), **({"steps": n} if n is not None else {})}
                for p, n in value]
    if isinstance(value, optax.GradientTransformation):
        raise ValueError("a raw optax transformation cannot be written to a run configuration; "
                         "use optimizer=adam(...) or sgd(...)")
    return value


# ---------------------------------------------------------------------------------------------
# The registry


REGISTRY: dict[str, dict[str, Definition]] = {"method": {}, "aggregator": {}}
METHODS = REGISTRY["method"]
"""Every name ``--method`` accepts: methods and aliases."""
AGGREGATORS = REGISTRY["aggregator"]


def method(name: str, summary: str, *, needs: tuple[str, ...] = ("loss",),
           safer: Callable[[MethodValue], MethodValue | None] | None = None,
           legacy: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
           namespace: str = "method", transform: bool = False,
           check: Callable[[Mapping[str, Any]], str | None] | None = None
           ) -> Callable[[Callable], Definition]:
    """Register a builder ``fn(target, *, settings...)`` as a definition; returns the
    definition, which called with settings gives a :class:`MethodValue`. ``check``: see
    :class:`Definition`.

    With ``transform=True`` the builder returns an optax transformation of its settings alone
    (no target); the method applies it to the loss gradient, and it fits :data:`Optimizer`.
    """

    def register(builder: Callable) -> Definition:
        settings = read_settings(builder, skip_first=namespace == "method" and not transform)
        if namespace != "method":  # aggregators: built from their settings alone
            build = lambda target, **kw: builder(**kw)  # noqa: E731
        elif transform:  # a gradient transformation applied to the loss gradient
            build = lambda objective, **kw: gradient_method(objective, builder(**kw))  # noqa: E731
        else:
            build = builder
        definition = Definition(name, namespace, build, summary, settings, frozenset(needs),
                                safer, builder if transform else None, legacy, check=check)
        REGISTRY[namespace][name] = definition
        return definition

    return register


def alias(name: str, summary: str) -> Callable[[Callable], Definition]:
    """Register an old name: ``fn(*, flat settings...) -> MethodValue``."""

    def register(builder: Callable) -> Definition:
        definition = Definition(name, "method", lambda target, **kw: builder(**kw), summary,
                                read_settings(builder, skip_first=False), alias=True)
        METHODS[name] = definition
        return definition

    return register


def gradient_method(objective: Objective, transform: optax.GradientTransformation) -> Method:
    """Any optax transformation applied to the loss gradient."""

    def init(params):
        return transform.init(params)

    def step(params, state, batch, key):
        loss, grads = jax.value_and_grad(objective.loss)(params, batch)
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state, {"loss": loss}

    return Method(init, step)


# ---------------------------------------------------------------------------------------------
# Building values from Python objects, names and tables


def lookup(name: str, namespace: str = "method") -> Definition:
    table = REGISTRY[namespace]
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown {namespace} {name!r}; choose from {', '.join(sorted(table))}")
    return table[name]


def make_value(definition: Definition, settings: Mapping[str, Any], where: str = "") -> MethodValue:
    """A validated value of ``definition``; ``where`` prefixes messages (``alm: inner.``)."""
    where = where or f"{definition.name}: "
    if definition.legacy is not None:
        settings = definition.legacy(dict(settings))
    missing = [k for k, s in definition.settings.items()
               if s.default is inspect.Parameter.empty and k not in settings]
    if missing:
        raise ValueError(f"{where}missing setting {', '.join(missing)}")
    explicit = {}
    for key, raw in settings.items():
        if key not in definition.settings:
            accepted = ", ".join(definition.settings) or "none"
            raise ValueError(f"{where.rstrip(': .')} has no setting {key!r}; accepted: {accepted}")
        explicit[key] = coerce(definition.settings[key], raw, where)
    if definition.check is not None:
        refused = definition.check({**definition.hparams, **explicit})
        if refused:
            raise ValueError(f"{where}{refused}")
    if definition.alias:
        expanded = definition.build(None, **{**definition.hparams, **explicit})
        return _AliasValue(expanded.definition, expanded.explicit, definition, explicit)
    return MethodValue(definition, explicit)


@dataclass(frozen=True, eq=False, repr=False)
class _AliasValue(MethodValue):
    """The expansion of an alias, remembering the alias and its flat settings (for messages
    and for writing the configuration back as it was given)."""

    alias_of: Definition | None = None
    alias_settings: Mapping[str, Any] = field(default_factory=dict)


def resolve(spec: Any, namespace: str = "method", default: MethodValue | None = None,
            where: str = "") -> MethodValue:
    """A value from a :class:`MethodValue`, a name or a table ``{"name": ..., **settings}``."""
    if isinstance(spec, MethodValue):
        if spec.definition.namespace != namespace:
            raise ValueError(f"{where}{spec.name} is a {spec.definition.namespace}, not a {namespace}")
        return spec
    if isinstance(spec, str):
        if default is not None and spec == default.name:
            return default
        return make_value(lookup(spec, namespace), {}, f"{where}{spec}: ")
    if isinstance(spec, Mapping):
        table = dict(spec)
        name = table.pop("name", None)
        if name is None and default is None:
            raise ValueError(f"{where}a {namespace} table needs a name")
        if name is None or (default is not None and name == default.name):
            return make_value(default.definition, {**default.explicit, **table},
                              f"{where}{default.name}: ")
        return make_value(lookup(name, namespace), table, f"{where}{name}: ")
    raise ValueError(f"{where}expected a {namespace} (a name, a table or a value), got {spec!r}")


def coerce(setting: Setting, value: Any, where: str = "") -> Any:
    """``value`` converted to the setting's kind; ``ValueError`` with one line if it is not one."""
    kind, key = setting.kind, setting.name
    if isinstance(kind, Slot):
        return _coerce_slot(setting, value, where)
    if kind == "phases":
        return _coerce_phases(value, f"{where}phases")
    value = coerce_typed(kind, value, f"{where}{key}")
    if setting.choices and value not in setting.choices:
        raise ValueError(f"{where}{key}={value!r} not one of {', '.join(setting.choices)}")
    return value


def _coerce_slot(setting: Setting, value: Any, where: str) -> Any:
    slot, key = setting.kind, setting.name
    if slot.transform and isinstance(value, optax.GradientTransformation):
        return value
    default = setting.default if isinstance(setting.default, MethodValue) else None
    inner = resolve(value, slot.namespace, default, f"{where}{key}=")
    if slot.transform:
        if inner.definition.transform is None:
            raise ValueError(f"{where}{key}={inner.name} does not fit: the {key} applies a "
                             f"direction as if it were the gradient, so it must be a gradient "
                             f"transformation ({', '.join(_transform_names())}) or an optax one")
        return inner
    missing = inner.needs - slot.provides
    if slot.namespace == "method" and missing:
        fit = [n for n, d in METHODS.items() if not d.alias and d.needs <= slot.provides]
        raise ValueError(f"{where}{key}={inner.name} does not fit: it needs "
                         f"{' and '.join(sorted(missing))}, but the {key} method gets only a "
                         f"{'/'.join(sorted(slot.provides))}; methods that fit: {', '.join(fit)}")
    return inner


def _transform_names() -> list[str]:
    return [n for n, d in METHODS.items() if d.transform is not None]


def _coerce_phases(value: Any, where: str) -> tuple[tuple[MethodValue, int | None], ...]:
    if isinstance(value, Mapping) and all(str(k).isdigit() for k in value):
        value = [value[k] for k in sorted(value, key=lambda k: int(k))]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: give a list of phases, each (method, steps)")
    phases = []
    for i, phase in enumerate(value):
        if isinstance(phase, Mapping):
            extra = set(phase) - {"method", "steps"}
            if extra or "method" not in phase:
                raise ValueError(f"{where}.{i}: a phase is a table with 'method' and 'steps'")
            spec, steps = phase["method"], phase.get("steps")
        elif isinstance(phase, (list, tuple)) and len(phase) == 2:
            spec, steps = phase
        else:
            raise ValueError(f"{where}.{i}: a phase is (method, steps), got {phase!r}")
        last = i == len(value) - 1
        if steps is None and not last:
            raise ValueError(f"{where}.{i}: only the last phase may run without a step count")
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"{where}.{i}.steps={steps!r} must be a non-negative integer")
            if last:
                steps = None  # the last phase runs to the end of the run
        phases.append((resolve(spec, "method", None, f"{where}.{i}.method="), steps))
    return tuple(phases)


def unflatten(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested tables: ``{"inner": "engd", "inner.damping": 1e-8}`` becomes
    ``{"inner": {"name": "engd", "damping": 1e-8}}`` (a plain value beside dotted keys is the
    table's name)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else _as_table(child)
                node[part] = child
            node = child
        last = parts[-1]
        if isinstance(node.get(last), dict) and not isinstance(value, dict):
            node[last]["name"] = value
        else:
            node[last] = value
    return out


def _as_table(value: Any) -> dict[str, Any]:
    if isinstance(value, MethodValue):
        return value.tree()
    return {"name": value}


def make_method(spec: str | MethodValue, objective: Any, **settings) -> Method:
    """Build a method for ``objective`` from a name (or value) and settings (dotted keys
    allowed); unknown names or bad settings raise ``ValueError``."""
    value = spec if isinstance(spec, MethodValue) else lookup(spec)
    if isinstance(value, Definition):
        value = make_value(value, unflatten(settings))
    elif settings:
        value = value.replace(**unflatten(settings))
    return value.build(objective)


def configured_value(name: str, hparams: Mapping[str, Any]) -> MethodValue:
    """The value a run configuration's ``method`` and ``hparams`` describe."""
    return make_value(lookup(name), unflatten(hparams))


def as_config(value: MethodValue) -> tuple[str, dict[str, Any]]:
    """``(method, hparams)`` to store for ``value``: an alias as it was given, else its tree."""
    if isinstance(value, _AliasValue) and value.alias_of is not None:
        return value.alias_of.name, {k: to_tree(v) for k, v in value.alias_settings.items()}
    tree = value.tree()
    return tree.pop("name"), tree


# ---------------------------------------------------------------------------------------------
# Safer settings after a divergence


def halve(key: str) -> Callable[[MethodValue], MethodValue]:
    """A ``safer`` rule: halve one setting (a learning rate)."""
    return lambda v: v.replace(**{key: v[key] / 2})


def more_damping(key: str = "damping", factor: float = 10.0, floor: float = 1e-10):
    """A ``safer`` rule: multiply the damping (at least up to ``floor``)."""
    return lambda v: v.replace(**{key: max(v[key] * factor, floor)})


def safer_inner(key: str) -> Callable[[MethodValue], MethodValue | None]:
    """A ``safer`` rule of a wrapper: the safer version of the value in setting ``key``."""

    def rule(value: MethodValue) -> MethodValue | None:
        inner = value[key]
        safer = inner.safer() if isinstance(inner, MethodValue) else None
        return value.replace(**{key: safer}) if safer is not None else None

    return rule
