"""Seconds per step of pinnopt and of the [KFAC] authors' code, side by side.

    python benchmarks/side_by_side.py --checkout PATH [--python TORCH_PYTHON] [--seconds 15]
        [--configs poisson2d-D257 ...] [--methods adam engd kfac kfac-star] [--core N]
        [--repeats R] [--out benchmarks/results/side-by-side]

PATH is a checkout of the authors' repository (kfac-pinns-experiments, the code behind
[KFAC]); TORCH_PYTHON a Python that can import torch, einops, backpack-for-pytorch, matplotlib
and tueplots (torch is no dependency of pinnopt: give it its own environment). Their
``kfac_pinns_exp/train.py`` is run as their run records run it (``--num_seconds``), and pinnopt
trains the same configuration (problem, net, points, redraws, hyper-parameters: the authors'
best runs) through :func:`pinnopt.train.train`, each in a fresh process, one run at a time, on
whatever device each finds (torch: CUDA if available; JAX: its default device). With ``--core``
every run is pinned to that core (``taskset``) with one thread (OMP/MKL/OpenBLAS, and XLA's CPU
flags), for a CPU comparison on a shared machine; with ``--repeats R`` each side runs R times,
alternating which goes first, and each side's fastest run is kept.

Seconds per step: both programs log (step, time) pairs on a geometric schedule; the figure is
the slope over the second half of the run, (t_last − t_mid)/(step_last − step_mid), with mid the
first log at or after half the last logged time, so that start-up, compilation and warm-up are
left out on both sides. pinnopt's times are training time (its evaluations excluded); the
authors' are wall-clock time since their loop started, which includes their own evaluations
(the error on 10·N_Ω points at each log, about seven logs per half run).

Writes ``side_by_side.md`` and ``side_by_side.csv`` (one row per configuration and method:
both seconds per step and their ratio) and ``machine.json`` (:func:`pinnopt.machine.machine`)
to ``--out``; each run's output goes to ``--out/runs/`` (not kept in git).

When there is no checkout or the Python cannot import torch, prints one line saying so and exits
with status 0 (nothing to compare, not an error).

Their ``train.py`` imports ``wandb`` and ``hessianfree.optimizer`` (the latter installable only
from a git repository) at module level, though neither is used by these runs (``--wandb`` is not
given; no Hessian-free runs). When the torch Python lacks them, empty stand-in modules of those
names are put on its path for the run; nothing that is timed touches them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("benchmarks") / "results" / "side-by-side"
TRAIN = Path("kfac_pinns_exp") / "train.py"
NEEDED = ("torch", "einops", "backpack", "matplotlib", "tueplots")


@dataclass
class Method:
    """One optimiser on both sides: the authors' flags and pinnopt's method and settings;
    ``batch_frequency`` is how often both redraw the points (0: never, as the problem's own)."""

    authors: list[str]
    pinnopt: str
    hparams: dict
    batch_frequency: int = 0


@dataclass
class Config:
    """A problem, net and point set on both sides, and the methods compared on it."""

    description: str
    params: int
    authors: list[str]
    pinnopt: dict
    methods: dict[str, Method] = field(default_factory=dict)


def _kfac(damping: float, ema: float, momentum: float, every: int) -> Method:
    return Method(["--optimizer=KFAC", f"--KFAC_damping={damping!r}", f"--KFAC_ema_factor={ema!r}",
                   "--KFAC_initialize_to_identity", f"--KFAC_momentum={momentum!r}"],
                  "kfac", {"damping": damping, "ema": ema, "momentum": momentum}, every)


def _kfac_star(damping: float, ema: float, every: int) -> Method:
    return Method(["--optimizer=KFAC", f"--KFAC_damping={damping!r}", f"--KFAC_ema_factor={ema!r}",
                   "--KFAC_initialize_to_identity", "--KFAC_lr=auto"],
                  "kfac-star", {"damping": damping, "ema": ema}, every)


def _adam(lr: float, every: int) -> Method:
    return Method(["--optimizer=Adam", f"--Adam_lr={lr!r}"], "adam", {"lr": lr}, every)


def _engd(damping: float, ema: float, every: int) -> Method:
    # Their ENGD forms the full D x D Gramian (kept as an EMA; pinnopt has no EMA): pinnopt's
    # variant "full" is the same solve. (pinnopt's default, "auto", is "woodbury" when N < D.)
    return Method(["--optimizer=ENGD", "--ENGD_approximation=full", f"--ENGD_damping={damping!r}",
                   f"--ENGD_ema_factor={ema!r}", "--ENGD_initialize_to_identity"],
                  "engd", {"variant": "full", "damping": damping}, every)


# The authors' best runs (their run records, kfac-pinns-experiments exp09, exp28, exp16, exp19):
# points, redraws (Adam and ENGD every step, KFAC and KFAC* every 100 steps) and settings.
_MEDIUM, _LARGE = "mlp-tanh-64-64-48-48", "mlp-tanh-256-256-128-128"
CONFIGS = {
    "poisson2d-D257": Config(
        "2d Poisson, 2-64-1, 900/120 fixed points", 257,
        ["--equation=poisson", "--dim_Omega=2", "--boundary_condition=sin_product",
         "--model=mlp-tanh-64", "--N_Omega=900", "--N_dOmega=120"],
        {"problem": "poisson", "problem_options": {"dim": 2}, "net": "small"},
        {"adam": _adam(0.0016923389183852923, 0),
         "engd": _engd(1e-10, 0.3, 0),
         "kfac": _kfac(1.5440986717145857e-12, 0.4496490467123582, 0.5117574706015794, 0),
         "kfac-star": _kfac_star(1.2156399458704562e-10, 0.9263313896660544, 0)}),
    "heat4d-D10065": Config(
        "4+1d heat, 5-64-64-48-48-1, 3000 + 250 + 250 points", 10065,
        ["--equation=heat", "--dim_Omega=4", "--boundary_condition=sin_sum", f"--model={_MEDIUM}",
         "--N_Omega=3000", "--N_dOmega=500"],
        {"problem": "heat", "net": "medium",
         "problem_options": {"dim": 4, "n_interior": 3000, "n_boundary": 250, "n_initial": 250}},
        {"adam": _adam(0.0007801747845089487, 1),
         "engd": _engd(1e-08, 0.0, 1),
         "kfac": _kfac(4.1433851990863016e-14, 0.9821413734433126, 0.7660303007808635, 100),
         "kfac-star": _kfac_star(1.9557401442459742e-10, 0.9821777833065596, 100)}),
    "poisson5d-D10065": Config(
        "5d Poisson, 5-64-64-48-48-1, 3000/500 points", 10065,
        ["--equation=poisson", "--dim_Omega=5", "--boundary_condition=cos_sum",
         f"--model={_MEDIUM}", "--N_Omega=3000", "--N_dOmega=500"],
        {"problem": "poisson", "net": "medium",
         "problem_options": {"dim": 5, "n_interior": 3000, "n_boundary": 500}},
        {"adam": _adam(0.0006999994109377504, 1),
         "engd": _engd(1e-08, 0.3, 1),
         "kfac": _kfac(1.1830625683913777e-12, 0.9588846460155456, 0.9058899733143752, 100),
         "kfac-star": _kfac_star(2.829461134060679e-10, 0.9001392666203442, 100)}),
    "poisson5d-D116865": Config(
        "5d Poisson, 5-256-256-128-128-1, 3000/500 points", 116865,
        ["--equation=poisson", "--dim_Omega=5", "--boundary_condition=cos_sum",
         f"--model={_LARGE}", "--N_Omega=3000", "--N_dOmega=500"],
        {"problem": "poisson", "net": "large",
         "problem_options": {"dim": 5, "n_interior": 3000, "n_boundary": 500}},
        # No ENGD: the full Gramian is 116,865² (109 GB); the authors ran none either.
        {"adam": _adam(0.0005416375724357235, 1),
         "kfac": _kfac(1.84421264097478e-11, 0.9307849381331968, 0.75285589273037, 100),
         "kfac-star": _kfac_star(2.1836050966878087e-12, 0.9563992286181549, 100)}),
}
DEFAULT_CONFIGS = ("poisson2d-D257",)
DEFAULT_METHODS = ("adam", "engd", "kfac", "kfac-star")

_LOG = re.compile(r"^Step: (\d+),.* Time: ([\d.]+)s")
_DEVICE = re.compile(r"^Running on device (\S+) in dtype")

# Run in a fresh process: one pinnopt training run from a JSON configuration.
_PINNOPT_RUN = """
import json, sys
from pinnopt.config import RunConfig
from pinnopt.train import train
train(RunConfig.from_dict(json.loads(sys.argv[1])), out=sys.argv[2], progress=False,
      overwrite=True)
"""


def skip_reason(checkout: Path | None, python: str) -> str | None:
    """Why there is nothing to compare (no checkout, or ``python`` cannot import torch)."""
    if checkout is None or not (checkout / TRAIN).is_file():
        where = "none given" if checkout is None else f"none at {checkout}"
        return (f"no checkout of the [KFAC] authors' code (kfac-pinns-experiments, {TRAIN}): "
                f"{where}; pass --checkout PATH")
    try:
        probe = subprocess.run([python, "-c", "import torch"], capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        return f"cannot run {python} ({err}); pass --python with a Python that has torch"
    if probe.returncode != 0:
        return (f"{python} cannot import torch (no dependency of pinnopt); install it in a "
                f"separate environment and pass --python PATH")
    return None


def missing_modules(python: str) -> list[str]:
    """The authors' other run-time needs (``NEEDED``) that ``python`` cannot import."""
    code = ("import importlib.util as u, sys; "
            "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))")
    out = subprocess.run([python, "-c", code, *NEEDED], capture_output=True, text=True)
    return out.stdout.split()


def stand_ins(python: str, folder: Path) -> Path:
    """A folder with empty ``wandb`` and ``hessianfree.optimizer`` modules for whichever of the
    two ``python`` lacks (imported by their ``train.py``, unused by these runs)."""
    code = ("import importlib.util as u; print(u.find_spec('wandb') is None, "
            "u.find_spec('hessianfree') is None or "
            "u.find_spec('hessianfree.optimizer') is None)")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.split()
    folder.mkdir(parents=True, exist_ok=True)
    if out and out[0] == "True":
        (folder / "wandb.py").write_text('"""Stand-in: wandb is not used without --wandb."""\n')
    if len(out) > 1 and out[1] == "True":
        (folder / "hessianfree").mkdir(exist_ok=True)
        (folder / "hessianfree" / "__init__.py").write_text("")
        (folder / "hessianfree" / "optimizer.py").write_text(
            '"""Stand-in: no Hessian-free runs here."""\n\n\nclass HessianFree:\n    pass\n')
    return folder


def slope(points: list[tuple[int, float]]) -> tuple[float | None, int]:
    """Seconds per step over the second half of a run's ``(step, time)`` log, and the steps it
    spans; ``None`` when the log is too short."""
    if len(points) < 2:
        return None, 0
    last_step, last_time = points[-1]
    mid = next((p for p in points if p[1] >= 0.5 * last_time and p[0] < last_step), None)
    if mid is None or last_time <= mid[1]:
        return None, 0
    return (last_time - mid[1]) / (last_step - mid[0]), last_step - mid[0]


class Timing(NamedTuple):
    """One run: seconds per step (None: too few logs), the steps that figure spans, the share
    of a core the process got (CPU time / wall time) and the device it reported."""

    per_step: float | None
    steps: int
    share: float
    device: str | None

    @property
    def cpu_per_step(self) -> float | None:
        """Seconds per step scaled by the run's share of its core: what the step costs in CPU
        time, about what an idle core would take (single-threaded, pinned runs only)."""
        return None if self.per_step is None else self.per_step * min(self.share, 1.0)


def fastest(timings: list[Timing], cpu: bool = False) -> Timing | None:
    """The repeat with the fewest seconds per step (wall-clock, or CPU time with ``cpu``)."""
    measured = [t for t in timings if t.per_step is not None]
    key = (lambda t: t.cpu_per_step) if cpu else (lambda t: t.per_step)
    return min(measured, key=key) if measured else None


def _each(timings: list[Timing]) -> str:
    """Every repeat's ms per step and core share, in run order (``;``-separated, for the csv)."""
    return ";".join("" if t.per_step is None else f"{1e3 * t.per_step:.4g}@{t.share:.2f}"
                    for t in timings)


def authors_log(text: str) -> tuple[list[tuple[int, float]], str | None]:
    """The ``(step, seconds)`` pairs and the device of one of their runs' output."""
    points, device = [], None
    for line in text.splitlines():
        if match := _LOG.match(line):
            points.append((int(match.group(1)), float(match.group(2))))
        elif match := _DEVICE.match(line):
            device = match.group(1)
    return points, device


def pinnopt_log(run_dir: Path) -> list[tuple[int, float]]:
    """The ``(step, training seconds)`` pairs of a pinnopt run's history."""
    points = []
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            points.append((int(row["step"]), float(row["time"])))
    return points


def _environment(core: int | None) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment of a run: pinned to ``core`` with one thread each."""
    env = dict(os.environ)
    if core is None:
        return [], env
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = "1"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                        "intra_op_parallelism_threads=1").strip()
    return ["taskset", "-c", str(core)], env


def execute(command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
            ) -> float:
    """Run ``command`` with its output in ``log``; the share of a core it got: its CPU time
    (user + system, all threads) over its wall-clock time. Raises when it fails."""
    with open(log, "w") as fh:
        fh.write(" ".join(command) + "\n")
        fh.flush()
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{Path(command[-1]).name if cwd else 'pinnopt'} run failed "
                           f"(exit {process.returncode}); see {log}")
    return (usage.ru_utime + usage.ru_stime) / wall


def run_authors(checkout: Path, python: str, config: Config, method: Method, seconds: float,
                log: Path, shims: Path, core: int | None) -> Timing:
    prefix, env = _environment(core)
    env["PYTHONPATH"] = os.pathsep.join([str(shims), str(checkout)]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    command = [*prefix, python, str(checkout / TRAIN), *config.authors, *method.authors,
               f"--batch_frequency={method.batch_frequency}", f"--num_seconds={seconds}"]
    share = execute(command, log, env, cwd=checkout / TRAIN.parent)
    points, device = authors_log(log.read_text())
    return Timing(*slope(points), share, device)


def run_pinnopt(config: Config, method: Method, seconds: float, run_dir: Path, log: Path,
                core: int | None) -> Timing:
    prefix, env = _environment(core)
    settings = {**config.pinnopt, "method": method.pinnopt, "hparams": method.hparams,
                "steps": 10**8, "time_budget": seconds, "dtype": "float64", "seed": 0,
                "plots": False, "checkpoint_every": 10**6}
    if method.batch_frequency:
        settings["problem_options"] = {**settings["problem_options"], "resample": True}
        settings["resample_every"] = method.batch_frequency
    else:
        settings["problem_options"] = {**settings["problem_options"], "resample": False}
    command = [*prefix, sys.executable, "-c", _PINNOPT_RUN, json.dumps(settings), str(run_dir)]
    share = execute(command, log, env)
    return Timing(*slope(pinnopt_log(run_dir)), share, None)


def _compared(timings: dict[str, list[Timing]], cpu: bool) -> dict:
    """Each side's fastest repeat (wall-clock or CPU time) and the ratio, as table columns."""
    ours, theirs = fastest(timings["pinnopt"], cpu), fastest(timings["authors"], cpu)

    def per_step(t):
        return None if t is None else (t.cpu_per_step if cpu else t.per_step)

    our_s, their_s = per_step(ours), per_step(theirs)
    prefix = "cpu_" if cpu else ""
    columns = {f"{prefix}pinnopt_ms": None if our_s is None else round(1e3 * our_s, 4),
               f"{prefix}authors_ms": None if their_s is None else round(1e3 * their_s, 4),
               f"{prefix}ratio": round(their_s / our_s, 3) if our_s and their_s else None}
    if not cpu:
        columns.update({"pinnopt_steps": ours.steps if ours else 0,
                        "authors_steps": theirs.steps if theirs else 0})
    return columns


def write_table(out: Path, rows: list[dict], seconds: float, core: int | None) -> None:
    with open(out / "side_by_side.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    machine = json.loads((out / "machine.json").read_text())

    def ms(value):
        return "–" if value in (None, "") else f"{value:.3g}"

    def ratio(value):
        return "–" if value in (None, "") else f"{value:.2f}×"

    pinned = core is not None
    head = ("| configuration | D | method | pinnopt ms/step | authors' ms/step | ratio "
            "(authors / pinnopt) |")
    if pinned:
        head += " pinnopt CPU ms/step | authors' CPU ms/step | ratio (CPU time) |"
    head += " steps timed (pinnopt / authors) |"
    lines = ["# Seconds per step: pinnopt and the [KFAC] authors' code", "", head,
             "|" + "---|" * (10 if pinned else 7)]
    for r in rows:
        cells = [r["config"], f"{r['D']:,}", r["method"], ms(r["pinnopt_ms"]),
                 ms(r["authors_ms"]), ratio(r["ratio"])]
        if pinned:
            cells += [ms(r["cpu_pinnopt_ms"]), ms(r["cpu_authors_ms"]), ratio(r["cpu_ratio"])]
        cells.append(f"{r['pinnopt_steps']} / {r['authors_steps']}")
        lines.append("| " + " | ".join(cells) + " |")
    where = (f"pinned to core {core} with one thread each (taskset; OMP/MKL/OpenBLAS and XLA "
             f"CPU flags)" if pinned else "not pinned")
    devices = sorted({r["authors_device"] for r in rows if r["authors_device"]})
    repeats = rows[0]["repeats"]
    each = (f"{repeats} runs per side, alternating which goes first, each side's fastest kept"
            if repeats > 1 else "one run per side")
    lines += ["", f"{seconds:g} s of training per run, {each}, one run at a time, {where}; "
              "float64. Milliseconds per step are the slope of each program's logged (step, "
              "time) pairs over the second half of its run; pinnopt's time is training time, "
              "the authors' wall-clock time including their evaluations at each log."
              + (" CPU ms/step: the same slope times the share of the core the process got "
                 "over its whole run (its CPU time / wall time), an estimate of an idle core's "
                 "figure on a machine shared with other work." if pinned else ""),
              "",
              f"Machine: {machine['cpu']}, {machine['cores']} cores; pinnopt (jax "
              f"{machine['jax']}) on {machine['device']}, the authors' code (torch "
              f"{rows[0].get('torch', '?')}) on {', '.join(devices) or '?'}; load average "
              f"{machine['load_average_1min']:.2f} at the start. Every run's figure and core "
              f"share: side_by_side.csv (`*_ms_each`: ms/step@share, in run order)."]
    (out / "side_by_side.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=os.environ.get("KFAC_PINNS_CHECKOUT"),
                        help="checkout of kfac-pinns-experiments (default: $KFAC_PINNS_CHECKOUT)")
    parser.add_argument("--python", default=os.environ.get("KFAC_PINNS_PYTHON", sys.executable),
                        help="a Python with torch for their code (default: $KFAC_PINNS_PYTHON "
                             "or this one)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="training seconds per run (default 15)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=DEFAULT_CONFIGS)
    parser.add_argument("--methods", nargs="+", choices=DEFAULT_METHODS, default=DEFAULT_METHODS)
    parser.add_argument("--core", type=int, help="pin every run to this core, one thread")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side and method, alternating which side goes first; the "
                             "table keeps each side's fastest (default 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    checkout = Path(args.checkout).resolve() if args.checkout else None

    reason = skip_reason(checkout, args.python)
    if reason:
        print(f"side_by_side: skipped: {reason}")
        return 0
    missing = missing_modules(args.python)
    if missing:
        print(f"side_by_side: {args.python} lacks {', '.join(missing)}, which their code imports "
              f"(pip install einops backpack-for-pytorch matplotlib tueplots)")
        return 2
    if args.core is not None and shutil.which("taskset") is None:
        print("side_by_side: --core needs taskset (util-linux)")
        return 2

    from pinnopt.machine import machine  # only now: the skip needs no JAX

    out = args.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "machine.json").write_text(json.dumps(machine(), indent=2))
    torch_version = subprocess.run([args.python, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shims = stand_ins(args.python, Path(tmp) / "stand-ins")
        for name in args.configs:
            config = CONFIGS[name]
            for method_name in args.methods:
                method = config.methods.get(method_name)
                if method is None:
                    print(f"[{name}] {method_name}: not compared on this configuration")
                    continue
                tag = f"{name}-{method_name}"
                timings: dict[str, list[Timing]] = {"authors": [], "pinnopt": []}
                for repeat in range(args.repeats):
                    # ABBA order: neither side always runs first on a machine whose load drifts.
                    for side in ("authors", "pinnopt")[:: 1 if repeat % 2 == 0 else -1]:
                        run_tag = f"{tag}-{side}" + (f"-{repeat + 1}" if args.repeats > 1 else "")
                        if side == "authors":
                            timing = run_authors(checkout, args.python, config, method,
                                                 args.seconds, out / "runs" / f"{run_tag}.log",
                                                 shims, args.core)
                        else:
                            timing = run_pinnopt(config, method, args.seconds,
                                                 out / "runs" / run_tag,
                                                 out / "runs" / f"{run_tag}.log", args.core)
                        timings[side].append(timing)
                row = {"config": name, "D": config.params, "method": method_name}
                row.update(_compared(timings, cpu=False))
                if args.core is not None:
                    row.update(_compared(timings, cpu=True))
                row.update({"pinnopt_ms_each": _each(timings["pinnopt"]),
                            "authors_ms_each": _each(timings["authors"]),
                            "seconds": args.seconds, "repeats": args.repeats,
                            "authors_device": timings["authors"][0].device,
                            "torch": torch_version, "batch_frequency": method.batch_frequency})
                rows.append(row)
                print(f"[{tag}] pinnopt {row['pinnopt_ms']} ms/step, authors "
                      f"{row['authors_ms']} ms/step, ratio {row['ratio']}", flush=True)
    if not rows:
        print("side_by_side: nothing compared")
        return 0
    write_table(out, rows, args.seconds, args.core)
    print(f"table in {out / 'side_by_side.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
