"""Summarise a benchmark suite whose runs repeat over seeds (names ending in ``-s<seed>``).

    python benchmarks/summarise_seeds.py benchmarks/results/failure-modes-seeds [metric ...]

Reads ``results.csv`` of the suite and writes ``summary.md`` beside it: per run name without
its seed suffix, the seeds found, the mean steps and ms per step, and for every metric
(default ``rel_l2_u``) the mean ± standard deviation over seeds (population std, numpy's
default), the smallest and the largest value.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SEED = re.compile(r"^(.*)-s(\d+)$")


def summarise(root: Path, metrics: list[str]) -> str:
    rows = list(csv.DictReader((root / "results.csv").open()))
    runs: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        match = SEED.match(row["name"])
        if not match:
            continue
        runs[match.group(1)].append({**row, "seed": int(match.group(2))})
    header = ["run", "method", "seeds", "steps", "ms/step"]
    for metric in metrics:
        header += [f"{metric} (mean ± std)", "min", "max"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in runs.items():
        cells = [name, group[0]["method"], ",".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"])),
                 f"{np.mean([float(r['steps']) for r in group]):.0f}",
                 f"{np.mean([float(r['ms_per_step']) for r in group if r['ms_per_step']]):.1f}"]
        for metric in metrics:
            values = np.array([float(r[metric]) for r in group if r.get(metric)])
            if values.size == 0:
                cells += ["–", "–", "–"]
                continue
            cells += [f"{values.mean():.3e} ± {values.std():.1e}", f"{values.min():.3e}",
                      f"{values.max():.3e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    root = Path(argv[0])
    metrics = argv[1:] or ["rel_l2_u"]
    table = summarise(root, metrics)
    (root / "summary.md").write_text(f"# {root.name}: mean over seeds\n\n{table}")
    print(table, end="")


if __name__ == "__main__":
    main(sys.argv[1:])
