"""Benchmark suites: named sets of run configurations, their results table and figures.

A suite is a TOML file ``benchmarks/suites/<name>.toml``::

    description = "..."
    [defaults]          # RunConfig settings shared by every run
    time_budget = 300
    [quick]             # overrides for ``--quick`` (CI-sized smoke runs)
    time_budget = 3
    [[runs]]
    name = "poisson2d-D257-adam"
    group = "poisson2d-D257"     # runs of a group share an error-vs-time figure
    problem = "poisson"
    problem_options = { dim = 2 }
    method = "adam"
    hparams = { lr = 1e-3 }

Results go to ``benchmarks/results/<suite>`` (``<suite>-quick`` for quick runs): one run
directory per configuration, ``results.md`` and ``results.csv`` (final errors, seconds per step,
steps done), ``error_vs_time_<group>.png`` and ``machine.json``. A run that already completed
is not repeated, and an interrupted one is resumed, so a killed suite continues where it was;
a run whose recorded settings differ from the suite's (the suite was edited) is trained again.

A suite may extend others with ``include = ["other-suite"]``: the other suite's runs (with
its own defaults) come first, and a run that already completed in the other suite's results
with an identical configuration is copied from there instead of being trained again (so
``kfac`` extends ``kfac-first-order`` without re-running the first-order baselines).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import tomllib
from pathlib import Path
from typing import Any

from pinnopt.train import CHECKPOINT, read_history, resume, train
from pinnopt.config import ConfigError, RunConfig

SUITES_DIR = Path("benchmarks") / "suites"
RESULTS_DIR = Path("benchmarks") / "results"
BUILTIN = ("taylor-speed",)
REQUESTED = "suite_config.json"
"""The settings the suite asked for, kept beside the run: ``config.json`` can differ from them
when a divergence retry switched to safer hyper-parameters."""


def find_suite(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml":
        if not path.exists():
            raise ConfigError(f"suite file {name!r} does not exist")
        return path
    candidate = SUITES_DIR / f"{name}.toml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in SUITES_DIR.glob("*.toml")) if SUITES_DIR.exists() else []
    raise ConfigError(
        f"unknown suite {name!r}; known: {', '.join(known + list(BUILTIN)) or 'none'} "
        f"(suites are read from ./{SUITES_DIR}, run from the repository root)"
    )


def load_suite(path: Path, quick: bool = False, _seen: tuple[str, ...] = ()
               ) -> tuple[dict[str, Any], list[tuple[str, str, RunConfig, str]]]:
    """The suite's data and its runs as ``(name, group, config, suite)``; ``suite`` is the
    stem of the suite file that defines the run (another one for included runs)."""
    if path.stem in _seen:
        raise ConfigError(f"suite {str(path)!r} includes itself (through {' -> '.join(_seen)})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"suite {str(path)!r} is not valid TOML: {err}") from None
    defaults = dict(data.get("defaults", {}))
    if quick:
        defaults.update(data.get("quick", {}))
    includes = data.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"suite {str(path)!r}: include must be a suite name or a list of them")
    configs = []
    for other in includes:
        configs += load_suite(find_suite(other), quick, _seen + (path.stem,))[1]
    names = {c[0] for c in configs}
    if len(names) < len(configs):
        raise ConfigError(f"suite {str(path)!r}: included suites share run names")
    runs = data.get("runs", [] if includes else None)
    if not isinstance(runs, list) or not (runs or configs):
        raise ConfigError(f"suite {str(path)!r} has no [[runs]]")
    for entry in runs:
        entry = dict(entry)
        name = entry.pop("name", None)
        if not name or name in names:
            raise ConfigError(f"suite {str(path)!r}: every run needs a unique name (got {name!r})")
        names.add(name)
        group = entry.pop("group", name)
        settings = {**defaults, **entry}
        if quick:
            settings.update(data.get("quick", {}))
        try:
            configs.append((name, group, RunConfig.from_dict(settings), path.stem))
        except ConfigError as err:
            raise ConfigError(f"suite run {name!r}: {err}") from None
    return data, configs


def machine() -> dict[str, Any]:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Cores this process may run on (fewer than "cores" when pinned with taskset).
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other processes on a shared machine distort timings: record how busy it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_suite(name: str, quick: bool = False, out: str | Path | None = None,
              progress: bool = True) -> Path:
    """Run every configuration of a suite and write its table and figures; returns the directory."""
    if name == "taylor-speed":
        from pinnopt import speed

        return speed.run(quick=quick, out=out)
    path = find_suite(name)
    data, configs = load_suite(path, quick)
    out = Path(out) if out else RESULTS_DIR / (path.stem + ("-quick" if quick else ""))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "machine.json").write_text(json.dumps(machine(), indent=2))
    rows = []
    for run_name, group, config, origin in configs:
        run_dir = out / "runs" / run_name
        summary_path = run_dir / "summary.json"
        config.plots = False
        if origin != path.stem and not run_dir.exists():
            _copy_if_same(RESULTS_DIR / (origin + ("-quick" if quick else "")) / "runs" / run_name,
                          run_dir, config)
        if run_dir.exists() and not _same_config(run_dir, config):
            print(f"[{run_name}] settings changed since the recorded run: trained again")
            summary = train(config, out=run_dir, progress=progress, overwrite=True)
        elif summary_path.exists() and json.loads(summary_path.read_text())["status"] != "interrupted":
            summary = json.loads(summary_path.read_text())
            print(f"[{run_name}] done before: kept")
        elif (run_dir / CHECKPOINT).exists():
            summary = resume(run_dir, progress=progress)
        else:
            summary = train(config, out=run_dir, progress=progress, overwrite=True)
        (run_dir / REQUESTED).write_text(json.dumps(config.to_dict(), indent=2))
        rows.append(_row(run_name, group, config, summary))
    write_table(out, data.get("description", path.stem), rows)
    plot_groups(out, rows)
    print(f"results in {out}/results.md")
    return out


def _same_config(run_dir: Path, config: RunConfig) -> bool:
    """Whether the run in ``run_dir`` was set up with ``config`` (figures aside)."""
    recorded = run_dir / REQUESTED
    if not recorded.exists():
        recorded = run_dir / "config.json"
    try:
        done = RunConfig.from_dict(json.loads(recorded.read_text()))
    except (OSError, ValueError, ConfigError):
        return False
    done.plots = False
    return done == config


def _copy_if_same(source: Path, target: Path, config: RunConfig) -> None:
    """Copy a completed run of an included suite when it was trained with ``config``."""
    try:
        summary = json.loads((source / "summary.json").read_text())
    except (OSError, ValueError):
        return
    if summary.get("status") != "interrupted" and _same_config(source, config):
        shutil.copytree(source, target)
        print(f"[{target.name}] copied from {source.parent.parent}")


def _row(name: str, group: str, config: RunConfig, summary: dict[str, Any]) -> dict[str, Any]:
    final = summary["final"]
    row = {
        "name": name, "group": group, "problem": config.problem,
        "dim": config.problem_options.get("dim", ""), "method": config.method,
        "D": summary["num_params"], "status": summary["status"], "steps": summary["steps"],
        "train_time_s": round(summary["train_time"], 2),
        "ms_per_step": round(1e3 * summary["seconds_per_step"], 3) if summary["seconds_per_step"] else "",
        "loss": final.get("loss", ""),
    }
    row.update({k: v for k, v in final.items() if k.startswith(("rms_", "rel_l2_"))})
    row["hparams"] = json.dumps(config.hparams, sort_keys=True)
    return row


def write_table(out: Path, description: str, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(v):
        return f"{v:.3e}" if isinstance(v, float) and k not in ("train_time_s", "ms_per_step") else str(v)

    lines = [f"# {description}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            cells.append(fmt(r.get(k, "")))
        lines.append("| " + " | ".join(cells) + " |")
    m = json.loads((out / "machine.json").read_text())
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['device']}, jax {m['jax']}, "
                  f"load average {m['load_average_1min']:.2f} when the suite started"
                  + (f", pinned to {m['cores_used']} of the cores." if m.get("cores_used")
                     and m["cores_used"] < m["cores"] else ".")]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot_groups(out: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for group, members in groups.items():
        fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
        for r in members:
            history = read_history(out / "runs" / r["name"])
            key = next((k for k in history[0] if k.startswith("rms_")), None) if history else None
            if key is None:
                continue
            ts = [max(h["time"], 1e-4) for h in history]
            label = r["name"].removeprefix(group).strip("-") or r["method"]
            ax.loglog(ts, [h[key] for h in history], label=f"{label} ({key})")
        ax.set_xlabel("training time [s]")
        ax.set_ylabel("RMS error")
        ax.set_title(f"{group} (D = {members[0]['D']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.savefig(out / f"error_vs_time_{group}.png", dpi=110)
        plt.close(fig)
