"""Benchmark suites: tables, figures, resumption and ``include`` of other suites."""

import csv
import json

import pytest

from pinnopt import bench
from pinnopt.config import ConfigError

RUN = """
[[runs]]
name = "{name}"
group = "g"
problem = "poisson"
problem_options = {{ dim = 2, n_interior = 16, n_boundary = 8 }}
net = "2-4-1"
method = "{method}"
"""


def write(tmp_path, name, body):
    (tmp_path / "benchmarks" / "suites").mkdir(parents=True, exist_ok=True)
    (tmp_path / "benchmarks" / "suites" / f"{name}.toml").write_text(body)


def rows(path):
    with open(path / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_include_copies_completed_runs_and_adds_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "base", '[defaults]\nsteps = 3\n' + RUN.format(name="g-adam", method="adam"))
    write(tmp_path, "ext", 'include = "base"\n[defaults]\nsteps = 3\n'
          + RUN.format(name="g-sgd", method="sgd"))
    base = bench.run_suite("base", progress=False)
    ext = bench.run_suite("ext", progress=False)
    assert [r["name"] for r in rows(ext)] == ["g-adam", "g-sgd"]
    copied, original = ext / "runs" / "g-adam", base / "runs" / "g-adam"
    assert (copied / "history.jsonl").read_text() == (original / "history.jsonl").read_text()
    assert (ext / "error_vs_time_g.png").exists()
    machine = json.loads((ext / "machine.json").read_text())
    assert 1 <= machine["cores_used"] <= machine["cores"]


def test_include_retrains_when_the_configuration_differs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "base", '[defaults]\nsteps = 3\n' + RUN.format(name="g-adam", method="adam"))
    bench.run_suite("base", progress=False)
    # The same run name with 4 steps in the extending suite's view of it: not the same run.
    write(tmp_path, "base", '[defaults]\nsteps = 4\n' + RUN.format(name="g-adam", method="adam"))
    write(tmp_path, "ext", 'include = ["base"]\n')
    ext = bench.run_suite("ext", progress=False)
    assert rows(ext)[0]["steps"] == "4"


def test_a_completed_run_is_kept_until_the_suite_changes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "base", '[defaults]\nsteps = 3\n' + RUN.format(name="g-adam", method="adam"))
    out = bench.run_suite("base", progress=False)
    history = (out / "runs" / "g-adam" / "history.jsonl").read_text()
    bench.run_suite("base", progress=False)
    assert (out / "runs" / "g-adam" / "history.jsonl").read_text() == history
    write(tmp_path, "base", '[defaults]\nsteps = 4\n' + RUN.format(name="g-adam", method="adam"))
    bench.run_suite("base", progress=False)
    assert rows(out)[0]["steps"] == "4"


def test_a_run_whose_retry_changed_its_hparams_is_still_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "base", '[defaults]\nsteps = 3\n' + RUN.format(name="g-adam", method="adam"))
    out = bench.run_suite("base", progress=False)
    run = out / "runs" / "g-adam"
    # What the trainer writes after a divergence retry: the safer settings in config.json.
    config = json.loads((run / "config.json").read_text())
    config["hparams"] = {"lr": 5e-4}
    (run / "config.json").write_text(json.dumps(config))
    history = (run / "history.jsonl").read_text()
    bench.run_suite("base", progress=False)
    assert (run / "history.jsonl").read_text() == history


def test_bad_includes_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "loop", 'include = "loop"\n')
    with pytest.raises(ConfigError, match="includes itself"):
        bench.load_suite(bench.find_suite("loop"))
    write(tmp_path, "bad", 'include = 3\n')
    with pytest.raises(ConfigError, match="include must be"):
        bench.load_suite(bench.find_suite("bad"))
    write(tmp_path, "missing", 'include = "nowhere"\n')
    with pytest.raises(ConfigError, match="unknown suite 'nowhere'"):
        bench.load_suite(bench.find_suite("missing"))
