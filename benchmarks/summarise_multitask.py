"""Summarise the `multitask` benchmark suite across seeds.

    python benchmarks/summarise_multitask.py [benchmarks/results/multitask]

Reads every run of the suite (``runs/<name>/config.json``, ``summary.json`` and
``history.jsonl``; the same final numbers as ``results.csv``, which a suite cut short has not
written yet) and writes ``summary.md`` beside them: per problem and configuration (run name without its seed), the relative
L2 error of ρ at each evaluated ε (mean ± standard deviation across seeds), the worst-ε error
(the largest over ε in each run; mean ± std and the worst run), steps done, and the conflict
statistics of the task gradients averaged over the logged steps of training
(``method_cos_min``, ``method_conflict_fraction``, ``method_update_cos_min``), with their
values at the last logged step. Problems that score more fields (BGK: u and T) get one more
table per field with the same per-ε and worst-ε columns.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

PER_EPS = re.compile(r"^rel_l2_(.+)_eps(.+)$")
CONFLICT = ("cos_min", "conflict_fraction", "update_cos_min")
ORDER = ("sum", "pcgrad", "mgda", "config", "mconfig", "hrgrad", "adam")


def load_runs(root: Path) -> list[dict]:
    runs = []
    for run_dir in sorted((root / "runs").iterdir()):
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        config = json.loads((run_dir / "config.json").read_text())
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()
                   if line.strip()]
        per_eps = defaultdict(dict)  # field -> {ε: error}
        for k, v in summary["final"].items():
            if m := PER_EPS.match(k):
                per_eps[m.group(1)][float(m.group(2))] = v
        trained = [r for r in history if r["step"] > 0]
        conflict = {k: (float(np.mean([r[f"method_{k}"] for r in trained])),
                        trained[-1][f"method_{k}"])
                    for k in CONFLICT if trained and f"method_{k}" in trained[0]}
        runs.append({"name": run_dir.name, "problem": config["problem"],
                     "method": config["method"], "seed": config["seed"],
                     "status": summary["status"], "steps": summary["steps"],
                     "train_time": summary["train_time"], "per_eps": dict(per_eps),
                     "conflict": conflict})
    return runs


def mean_std(values) -> str:
    values = np.asarray(values, float)
    if values.size == 0:
        return ""
    if values.size == 1:
        return f"{values[0]:.2e}"
    return f"{values.mean():.2e} ± {values.std(ddof=1):.1e}"


FIELD_ORDER = ("rho", "u", "T")


def table(problem: str, runs: list[dict]) -> list[str]:
    """The ρ table of ``problem`` (with the conflict columns), then one per further scored
    field (per-ε and worst-ε errors only)."""
    # One row per configuration: the run name without its seed suffix (several configurations
    # of one method, e.g. T = 0.1 and T = 1 in the all-eps suite, stay apart).
    by_config = defaultdict(list)
    for r in runs:
        by_config[re.sub(r"-s\d+$", "", r["name"])].append(r)
    rank = lambda m: ORDER.index(m) if m in ORDER else len(ORDER)  # noqa: E731
    configs = sorted(by_config, key=lambda c: (rank(by_config[c][0]["method"]), c))
    fields = sorted({f for r in runs for f in r["per_eps"]},
                    key=lambda f: FIELD_ORDER.index(f) if f in FIELD_ORDER else len(FIELD_ORDER))
    lines = [f"### {problem}", ""]
    for field in fields:
        conflict = field == fields[0]
        eps_values = sorted({e for r in runs for e in r["per_eps"].get(field, {})}, reverse=True)
        head = (["run", "method", "seeds", "steps"] + [f"ε={e:g}" for e in eps_values]
                + ["worst ε (mean ± std)", "worst run"]
                + (["cos_min", "conflict frac.", "min cos(update, g_i)"] if conflict else []))
        if len(fields) > 1:
            lines += [f"rel. L2 of {field}:", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for config in configs:
            group = sorted(by_config[config], key=lambda r: r["seed"])
            errors = [r["per_eps"].get(field, {}) for r in group]
            worst = [max(e.values()) for e in errors if e]  # over each run's own ε
            cells = [config, group[0]["method"], ",".join(str(r["seed"]) for r in group),
                     f"{np.mean([r['steps'] for r in group]):.0f}"]
            cells += [mean_std([e[eps] for e in errors if eps in e]) for eps in eps_values]
            cells += [mean_std(worst) if worst else "", f"{max(worst):.2e}" if worst else ""]
            for key in CONFLICT if conflict else ():
                values = np.array([r["conflict"][key] for r in group if key in r["conflict"]])
                cells.append(f"{values[:, 0].mean():+.2f} / {values[:, 1].mean():+.2f}"
                             if values.size else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    not_completed = [f"{r['name']} ({r['status']})" for r in runs if r["status"] != "completed"]
    if not_completed:
        lines += ["Not completed: " + ", ".join(not_completed), ""]
    return lines


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "benchmarks/results/multitask")
    runs = load_runs(root)
    if not runs:
        print(f"no finished runs under {root}/runs", file=sys.stderr)
        return 1
    lines = [f"# multitask suite: relative L2 error at t = T per ε, across seeds ({root})", "",
             "Conflict columns, as `mean / final` (mean over the logged training steps, then the",
             "last logged step; both averaged over seeds): the smallest pairwise cosine between",
             "task gradients, the fraction of task pairs with a negative cosine, and the smallest",
             "cosine between the update and a task gradient.", ""]
    for problem in sorted({r["problem"] for r in runs}, key=lambda p: p != "transport"):
        lines += table(problem, [r for r in runs if r["problem"] == problem])
    machine = root / "machine.json"
    if machine.exists():
        m = json.loads(machine.read_text())
        lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['device']}, jax {m['jax']}, "
                     f"load average {m.get('load_average_1min') or float('nan'):.2f} at the start.")
    text = "\n".join(lines) + "\n"
    (root / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
