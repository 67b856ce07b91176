"""The ``pinnopt`` command line.

    pinnopt train [--config FILE.toml] [--problem NAME] [--dim N] [--method NAME] ...
    pinnopt train --resume RUN [--steps N] [--time S]
    pinnopt list [problems|methods]
    pinnopt report RUN
    pinnopt predict RUN --points FILE.npy [--out FILE.npy]
    pinnopt bench SUITE [--quick] [--jobs N] [--dry-run]
    pinnopt diagnose gradient-noise --problem NAME [--formulation F[,F]] [--out DIR] ...

train, report and predict take ``--plugin MODULE``: a module imported first, which registers
custom problems (or methods); a run records the modules it needs and imports them again.

Bad input gets one line on stderr and exit code 2; a diverged run exits with 3; a run stopped
by SIGINT (Ctrl-C) exits with 130 and one stopped by SIGTERM with 143 (128 + the signal's
number, as a shell reports a process killed by it), resumable either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

from pinnopt.precision import uses_float64

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


class _Defaults:
    """RunConfig's defaults, read from the dataclass without importing JAX for ``--help``."""

    def __getattr__(self, name: str):
        from dataclasses import fields

        from pinnopt.config import RunConfig

        return {f.name: f.default for f in fields(RunConfig)}[name]


DEFAULTS = _Defaults()


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def _literal(text: str) -> Any:
    """A command-line value as a TOML literal (1e-3, 5, true, "x"), or the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _literal(value.strip())
    return out


NO_TIME_LIMIT = "none"


def _time_budget(text: str) -> float | str:
    """``--time``: seconds, or ``none`` for no time limit."""
    if text.strip().lower() == NO_TIME_LIMIT:
        return NO_TIME_LIMIT
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None


def _chunk_steps(text: str) -> int | str:
    """``--chunk-steps``: a number of steps, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps or 'auto', got {text!r}") from None


def _plugin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", metavar="MODULE",
                        help="import MODULE first, for the problems or methods it registers "
                             "(repeatable; a run records it for --resume, report and predict)")


def build_parser() -> argparse.ArgumentParser:
    from pinnopt._version import __version__

    parser = _Parser(prog="pinnopt", description="Train physics-informed neural networks to high accuracy.")
    parser.add_argument("--version", action="version", version=f"pinnopt {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    tr = sub.add_parser("train", help="train a problem (default: 2d Poisson)")
    tr.add_argument("--config", help="TOML file with run settings (flags override it)")
    tr.add_argument("--problem", help="problem name (see `pinnopt list problems`)")
    tr.add_argument("--dim", type=int, help="problem dimension (spatial dimension for heat)")
    tr.add_argument("--problem-opt", action="append", metavar="KEY=VALUE",
                    help="other problem option, e.g. n_interior=2000 (repeatable)")
    tr.add_argument("--net", help="net preset of the problem, LxW (3x20: three hidden layers "
                    "of width 20) or sizes like 2-64-64-1")
    tr.add_argument("--activation", help="tanh, sin, softplus or silu")
    tr.add_argument("--method", help="optimiser (see `pinnopt list methods`; default: the "
                                     "problem's, e.g. engd for poisson, see `pinnopt list problems`)")
    tr.add_argument("--lr", type=float, help="learning rate (methods that have one)")
    tr.add_argument("--opt", action="append", metavar="KEY=VALUE",
                    help="method hyper-parameter, e.g. damping=1e-10 (repeatable)")
    tr.add_argument("--steps", type=int, help=f"step budget (default {DEFAULTS.steps})")
    tr.add_argument("--time", type=_time_budget, dest="time_budget", metavar="SECONDS|none",
                    help=f"training-time budget in seconds, or 'none' for no time limit (default "
                         f"{DEFAULTS.time_budget:g}; training stops at --steps or --time, "
                         f"whichever comes first)")
    tr.add_argument("--seed", type=int, help=f"random seed (default {DEFAULTS.seed})")
    tr.add_argument("--dtype", help=f"float64 or float32 (default {DEFAULTS.dtype})")
    tr.add_argument("--eval-ratio", type=float,
                    help=f"geometric evaluation schedule factor (default {DEFAULTS.eval_ratio})")
    tr.add_argument("--checkpoint-every", type=float,
                    help=f"seconds between checkpoints (default {DEFAULTS.checkpoint_every:g})")
    tr.add_argument("--on-divergence", choices=("retry", "stop"),
                    help="after NaN/Inf: retry the step with safer settings (default) or stop")
    tr.add_argument("--resample-every", type=int, metavar="K",
                    help="redraw the training points every K steps (problems that redraw; 1)")
    tr.add_argument("--chunk-steps", type=_chunk_steps, metavar="K|auto",
                    help="run at most K steps per compiled call between evaluations (default "
                         "auto: calls of about 0.1 s; 1: one step per call)")
    tr.add_argument("--devices", type=int,
                    help="split the points over N devices (default: all; docs/distributed.md)")
    tr.add_argument("--out", help="run directory (default runs/<problem>-<method>-seed<seed>)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    tr.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its checkpoint")
    tr.add_argument("--no-progress", action="store_true",
                    help="no progress display (a bar on a terminal; otherwise, as in a log "
                         "file, one line every 30 s)")
    tr.add_argument("--no-plots", action="store_true", help="do not write figures at the end")
    tr.add_argument("--tensorboard", action="store_true",
                    help="also log the history rows to RUN/tensorboard/ (needs "
                         "pip install 'pinnopt[tensorboard]')")
    _plugin_flag(tr)

    ls = sub.add_parser("list", help="list problems and methods")
    ls.add_argument("what", nargs="?", choices=("problems", "methods"), default=None)

    rp = sub.add_parser("report", help="figures and summary of a run")
    rp.add_argument("run")
    _plugin_flag(rp)

    pr = sub.add_parser("predict", help="evaluate a trained run at given points")
    pr.add_argument("run")
    pr.add_argument("--points", required=True, help=".npy file with an (N, dim) array")
    pr.add_argument("--out", help="output .npy file (default RUN/predictions.npy)")
    _plugin_flag(pr)

    be = sub.add_parser("bench", help="run a benchmark suite")
    be.add_argument("suite", help="suite name under benchmarks/suites, a suite .toml, or taylor-speed")
    be.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    be.add_argument("--out", help="results directory (default benchmarks/results/<suite>)")
    be.add_argument("--no-progress", action="store_true")
    be.add_argument("--jobs", type=int, default=1,
                    help="runs trained at a time, each in its own process pinned to one core "
                         "(output in runs/<name>.log; default 1: one after the other)")
    be.add_argument("--dry-run", action="store_true",
                    help="list what would be done with each run (kept, copied, trained) and stop")

    dg = sub.add_parser("diagnose", help="diagnostics of a problem's training signal")
    dg.add_argument("what", choices=("gradient-noise",),
                    help="gradient-noise: SNR of the loss gradient per residual group")
    dg.add_argument("--problem", required=True, help="problem name (see `pinnopt list problems`)")
    dg.add_argument("--formulation", help="comma-separated, e.g. standard,first-order (default: all)")
    dg.add_argument("--problem-opt", action="append", metavar="KEY=VALUE",
                    help="problem option, e.g. n_interior=2000 (repeatable)")
    dg.add_argument("--net", help="net preset of the problem (or sizes, one formulation only)")
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--steps", help="Adam steps at which to measure, e.g. 0,100 (default)")
    dg.add_argument("--batches", type=int, help="re-drawn batches per SNR estimate (16)")
    dg.add_argument("--eps", help="output-layer perturbation sizes, e.g. 1e-3,1e-2,1e-1")
    dg.add_argument("--draws", type=int, help="random perturbations per size (8)")
    dg.add_argument("--out", help="output directory (default runs/diagnose-<problem>-seed<seed>)")
    return parser


def _config_from_args(args) -> "RunConfig":
    from pinnopt.config import RunConfig

    data: dict[str, Any] = {}
    if args.config:
        data = RunConfig.from_toml(args.config).to_dict()
    # Options and hyper-parameters from a config file belong to its problem and method.
    if args.problem is not None and args.problem != data.get("problem"):
        data["problem_options"] = {}
    if args.method is not None and args.method != data.get("method"):
        data["hparams"] = {}
    for key in ("problem", "net", "activation", "method", "steps", "time_budget", "seed",
                "dtype", "eval_ratio", "checkpoint_every", "on_divergence", "devices",
                "resample_every", "chunk_steps"):
        value = getattr(args, key)
        if value is not None:
            data[key] = None if value == NO_TIME_LIMIT else value
    options = dict(data.get("problem_options", {}))
    if args.dim is not None:
        options["dim"] = args.dim
    options.update(_key_values(args.problem_opt, "--problem-opt"))
    data["problem_options"] = options
    hparams = dict(data.get("hparams", {}))
    if args.lr is not None:
        hparams["lr"] = args.lr
    hparams.update(_key_values(args.opt, "--opt"))
    data["hparams"] = hparams
    if args.no_plots:
        data["plots"] = False
    if args.tensorboard:
        data["tensorboard"] = True
    return RunConfig.from_dict(data)


def cmd_train(args) -> int:
    from pinnopt.train import resume, train

    progress = not args.no_progress
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in ("config", "problem", "dim", "net", "method",
                 "lr", "opt", "seed", "dtype", "out") if getattr(args, k) not in (None, [])]
        if given:
            raise UsageError(f"--resume continues a run as configured; drop {', '.join(given)}")
        summary = resume(args.resume, steps=args.steps, time_budget=args.time_budget,
                         progress=progress, devices=args.devices,
                         tensorboard=True if args.tensorboard else None)
    else:
        config = _config_from_args(args)
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
            raise UsageError(f"--out {args.out} is a file, not a run directory; choose another --out")
        time = ("no time limit" if config.time_budget is None
                else f"{config.time_budget:g} s of training time")
        print(f"budget: {config.steps} steps or {time}, whichever comes first "
              f"(--steps, --time SECONDS|none)")
        summary = train(config, out=args.out, progress=progress, overwrite=args.overwrite)
    if summary["status"] == "diverged":
        return EXIT_DIVERGED
    return EXIT_SIGNAL.get(summary.get("signal"), 0) if summary["status"] == "interrupted" else 0


def describe_methods() -> str:
    """Every method, alias and aggregator with its settings (name: type = default), read from
    the builders' signatures."""
    from pinnopt.optim import AGGREGATORS, METHODS

    def block(definitions, title):
        lines = [title]
        for name in sorted(definitions):
            d = definitions[name]
            lines.append(f"  {name:<14} {d.summary}")
            lines.extend(f"  {'':<14}   {s.describe()}" for s in d.settings.values())
        return lines

    methods = {n: d for n, d in METHODS.items() if not d.alias}
    aliases = {n: d for n, d in METHODS.items() if d.alias}
    lines = block(methods, "methods (settings: type = default; compose with --opt inner=NAME "
                           "--opt inner.KEY=VALUE):")
    lines += block(aliases, "older names (flat settings, expanded to the methods above):")
    lines += block(AGGREGATORS, "aggregators (for multitask: --opt aggregator=NAME):")
    return "\n".join(lines)


def cmd_list(args) -> int:
    from pinnopt.problems import PROBLEMS, default_method, problem_option_types, problem_options

    if args.what in (None, "problems"):
        print("problems (default method; options: type = default):")
        for name in sorted(PROBLEMS):
            types = problem_option_types(name)
            opts = ", ".join(f"{k}: {types[k]} = {v!r}" for k, v in problem_options(name).items())
            print(f"  {name:<14} method {default_method(name)}; {opts}")
    if args.what in (None, "methods"):
        print(describe_methods())
    return 0


def cmd_report(args) -> int:
    from pinnopt import report

    print(report.describe(args.run))
    for path in report.plot_run(args.run):
        print(f"wrote {path}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from pinnopt.train import load_config
    from pinnopt.trained import load

    load_config(args.run)  # a clear error first if RUN is not a run
    try:
        points = np.load(args.points, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"points file {args.points!r} does not exist") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"points file {args.points!r} is not a readable .npy array: {err}") from None
    values = load(args.run).predict(points)
    out = Path(args.out) if args.out else Path(args.run) / "predictions.npy"
    np.save(out, values)
    print(f"wrote {values.shape} values to {out}")
    return 0


def cmd_bench(args) -> int:
    from pinnopt import bench

    bench.run_suite(args.suite, quick=args.quick, out=args.out, progress=not args.no_progress,
                    jobs=args.jobs, dry_run=args.dry_run)
    return 0


def _number_list(text: str | None, flag: str, kind):
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} expects comma-separated numbers, got {text!r}")
    return values


def cmd_diagnose(args) -> int:
    from dataclasses import replace

    from pinnopt import diagnose

    settings = diagnose.NoiseSettings()
    changes = {"steps": _number_list(args.steps, "--steps", int),
               "eps": _number_list(args.eps, "--eps", float), "batches": args.batches,
               "draws": args.draws}
    settings = replace(settings, **{k: v for k, v in changes.items() if v is not None})
    forms = [f.strip() for f in args.formulation.split(",")] if args.formulation else None
    out = Path(args.out) if args.out else Path("runs") / f"diagnose-{args.problem}-seed{args.seed}"
    results = diagnose.gradient_noise(args.problem, forms, _key_values(args.problem_opt, "--problem-opt"),
                                      net=args.net, seed=args.seed, settings=settings, out=out)
    print(diagnose.summary(results))
    print(f"wrote {out / diagnose.JSON_NAME} and {out / diagnose.FIGURE_NAME}")
    return 0


COMMANDS = {"train": cmd_train, "list": cmd_list, "report": cmd_report,
            "predict": cmd_predict, "bench": cmd_bench, "diagnose": cmd_diagnose}


@uses_float64
def main(argv: Sequence[str] | None = None) -> int:
    from pinnopt.checkpoint import CheckpointError
    from pinnopt.config import ConfigError
    from pinnopt.train import RunError
    from pinnopt.training.loop import StepAborted

    parser = build_parser()
    try:
        from pinnopt import distributed

        distributed.initialize()  # before anything uses JAX; a no-op outside multi-process runs
        args = parser.parse_args(argv)
        if args.command is None:
            args = parser.parse_args(["train", *(argv or [])])
        for module in getattr(args, "plugin", None) or ():
            from pinnopt.plugins import import_plugin

            import_plugin(module)  # before the config names what it registers
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, RunError, CheckpointError, ValueError) as err:
        print(f"pinnopt: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except StepAborted as err:
        # A second stop signal left XLA computing (or compiling) the step in its own threads,
        # and the interpreter's exit would wait for it: leave at once; the checkpoint on disk
        # is complete and the files are closed.
        print(f"pinnopt: {err}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_SIGNAL[err.signal_name])
    except KeyboardInterrupt:
        print("pinnopt: interrupted", file=sys.stderr)
        return EXIT_SIGNAL["SIGINT"]
    except BrokenPipeError:
        # The reader went away (``pinnopt list | head``): nothing more can be shown. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("pinnopt: error: output closed before it was all written (broken pipe)",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
