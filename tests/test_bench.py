"""Benchmark suites: tables, figures, resumption, ``include`` of other suites, ``seeds`` lists,
parallel runs (``jobs``) and the recorded suites' run names."""

import csv
import json
import os
import shutil
import types
from pathlib import Path

import pytest

from pinnopt import bench
from pinnopt.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SUITES = sorted(p.stem for p in (REPO / "benchmarks" / "suites").glob("*.toml"))
UNRECORDED = {"kfac-gpu"}  # needs a GPU; recorded when a task is lent one

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
    assert machine["device_kind"] == "cpu" and machine["jaxlib"]
    assert "gpu_driver" not in machine and "cuda" not in machine  # GPU fields: only on a GPU


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
    # A call with nothing to train keeps the machine record of the call that trained.
    marker = {**json.loads((out / "machine.json").read_text()), "load_average_1min": -1.0}
    (out / "machine.json").write_text(json.dumps(marker))
    bench.run_suite("base", progress=False)
    assert (out / "runs" / "g-adam" / "history.jsonl").read_text() == history
    assert json.loads((out / "machine.json").read_text()) == marker
    write(tmp_path, "base", '[defaults]\nsteps = 4\n' + RUN.format(name="g-adam", method="adam"))
    bench.run_suite("base", progress=False)
    assert rows(out)[0]["steps"] == "4"
    assert json.loads((out / "machine.json").read_text())["load_average_1min"] >= 0  # rewritten


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


SEEDED = """
[defaults]
steps = 5
[[runs]]
name = "a"
group = "g"
problem = "poisson"
problem_options = { dim = 2, n_interior = 16, n_boundary = 8 }
net = "2-4-1"
method = "adam"
seeds = [0, 1]
[[runs]]
name = "b"
problem = "poisson"
problem_options = { dim = 2, n_interior = 16, n_boundary = 8 }
net = "2-4-1"
method = "sgd"
seed = 3
"""


def test_seeds_expand_into_one_run_per_seed_ordered_seed_by_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "seeded", SEEDED.replace("seeds = [0, 1]", "seeds = [4, 0, 7]"))
    _, runs = bench.load_suite(bench.find_suite("seeded"))
    assert [(r.name, r.group, r.config.seed) for r in runs] == [
        ("a-s4", "g-s4", 4), ("b", "b", 3), ("a-s0", "g-s0", 0), ("a-s7", "g-s7", 7)]
    assert {r.config.method for r in runs[::2]} == {"adam"}


@pytest.mark.parametrize("seeds", ["[]", "[0, 0]", '"0, 1"', "[-1]", "[1.5]", "[true]",
                                   "[0]\nseed = 1"])
def test_a_malformed_seeds_list_is_a_one_line_error(tmp_path, monkeypatch, seeds):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "bad", SEEDED.replace("seeds = [0, 1]", f"seeds = {seeds}"))
    with pytest.raises(ConfigError, match="suite run 'a': ") as err:
        bench.load_suite(bench.find_suite("bad"))
    assert "\n" not in str(err.value)


def test_seed_runs_must_not_clash_with_other_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "clash", SEEDED.replace('name = "b"', 'name = "a-s1"'))
    with pytest.raises(ConfigError, match="'a-s1' twice"):
        bench.load_suite(bench.find_suite("clash"))


def untimed(run_dir):
    """A run's history without its wall-clock times."""
    return [{k: v for k, v in row.items() if k != "time"}
            for row in bench.read_history(run_dir)]


TIMING = ("train_time_s", "ms_per_step")


def untimed_rows(table):
    """A results table without its timing columns."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in table]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_jobs_give_the_results_of_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "seeded", SEEDED)
    serial = bench.run_suite("seeded", progress=False, out=tmp_path / "serial")
    parallel = bench.run_suite("seeded", progress=False, out=tmp_path / "parallel", jobs=2)
    assert untimed_rows(rows(parallel)) == untimed_rows(rows(serial))
    assert [r["name"] for r in rows(parallel)] == ["a-s0", "b", "a-s1"]
    for name in ("a-s0", "a-s1", "b"):
        assert untimed(parallel / "runs" / name) == untimed(serial / "runs" / name)
        log = (parallel / "runs" / f"{name}.log").read_text()
        assert log.startswith(f"--- training {name} on core ") and "completed" in log
    lines = capsys.readouterr().out.splitlines()
    finished = [line for line in lines if "completed: 5 steps" in line]
    assert len(finished) == 3 and all(line.startswith("[") for line in finished)
    assert all("rel_l2_u" in line and "rms_u" not in line for line in finished)
    assert (parallel / "error_vs_time_g-s0.png").exists()
    assert (parallel / "error_vs_time_b.png").exists()


def test_a_partial_suite_trains_only_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "seeded", SEEDED)
    out = bench.run_suite("seeded", progress=False)
    before = {name: untimed(out / "runs" / name) for name in ("a-s0", "a-s1", "b")}
    kept = (out / "runs" / "b" / "history.jsonl").stat().st_mtime_ns
    # As a kill leaves it: a-s1 never started, a-s0 stopped after its last checkpoint.
    shutil.rmtree(out / "runs" / "a-s1")
    summary = json.loads((out / "runs" / "a-s0" / "summary.json").read_text())
    summary["status"] = "interrupted"
    (out / "runs" / "a-s0" / "summary.json").write_text(json.dumps(summary))
    _, runs = bench.load_suite(bench.find_suite("seeded"))
    for run in runs:
        run.config.plots = False
    assert bench.plan(out, "seeded", runs) == [bench.RESUME, bench.KEEP, bench.TRAIN]
    capsys.readouterr()
    bench.run_suite("seeded", progress=False, dry_run=True)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"2 of 3 runs would train, in {Path('benchmarks', 'results', 'seeded')}"
    bench.run_suite("seeded", progress=False)
    assert (out / "runs" / "b" / "history.jsonl").stat().st_mtime_ns == kept
    assert {name: untimed(out / "runs" / name) for name in before} == before
    assert {r["status"] for r in rows(out)} == {"completed"}


@pytest.mark.parametrize("suite", sorted(set(SUITES) - UNRECORDED))
def test_recorded_suites_expand_to_the_runs_of_their_results(suite, monkeypatch):
    monkeypatch.chdir(REPO)
    recorded = {r["name"]: r for r in rows(REPO / "benchmarks" / "results" / suite)}
    _, runs = bench.load_suite(bench.find_suite(suite))
    assert sorted(r.name for r in runs) == sorted(recorded)
    for run in runs:
        row = recorded[run.name]
        assert (run.group, run.config.problem, run.config.method) == (
            row["group"], row["problem"], row["method"])
        assert json.loads(row["hparams"]) == run.config.hparams


def test_more_jobs_than_cores_is_a_one_line_error():
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=f"--jobs {cores + 1}, but this process may use only"):
        bench._cores(cores + 1)
    with pytest.raises(ConfigError, match="at least 1"):
        bench._cores(0)


def test_unrecorded_suites_exist_and_have_no_results_yet():
    assert UNRECORDED <= set(SUITES)
    assert not any((REPO / "benchmarks" / "results" / s / "results.csv").exists()
                   for s in UNRECORDED), "recorded now: take it out of UNRECORDED"


QUICK_OVERRIDES = """
[quick]
steps = 2
problem_options = { n_interior = 12 }

[[runs]]
name = "a"
problem = "poisson"
problem_options = { dim = 2, n_interior = 16, n_boundary = 8 }
net = "2-4-1"
method = "subspace-lm"
hparams = { subspace_dim = 9, damping = 1e-2 }
quick = { problem_options = { n_boundary = 4 }, hparams = { subspace_dim = 3 }, steps = 1 }

[[runs]]
name = "b"
problem = "poisson"
problem_options = { dim = 2, n_interior = 16, n_boundary = 8 }
net = "2-4-1"
method = "adam"
"""


def test_quick_tables_are_merged_into_the_runs_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "q", QUICK_OVERRIDES)
    _, (a, b) = bench.load_suite(bench.find_suite("q"))
    assert a.config.problem_options == {"dim": 2, "n_interior": 16, "n_boundary": 8}
    assert (a.config.hparams["subspace_dim"], a.config.steps) == (9, 100_000)
    _, (a, b) = bench.load_suite(bench.find_suite("q"), quick=True)
    # The suite's [quick], then the run's own quick; tables merged key by key.
    assert a.config.problem_options == {"dim": 2, "n_interior": 12, "n_boundary": 4}
    assert (a.config.hparams["subspace_dim"], a.config.hparams["damping"]) == (3, 1e-2)
    assert (a.config.steps, b.config.steps) == (1, 2)
    assert b.config.problem_options == {"dim": 2, "n_interior": 12, "n_boundary": 8}


def test_a_run_quick_that_is_not_a_table_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "bad", RUN.format(name="a", method="adam") + "quick = 3\n")
    with pytest.raises(ConfigError, match="suite run 'a': quick must be a table"):
        bench.load_suite(bench.find_suite("bad"))


KFAC_GPU_ROWS = {  # group: (problem, dim, parameters, methods)
    "poisson2d-D257": ("poisson", 2, 257, 6),
    "poisson2d-D9873": ("poisson", 2, 9873, 6),
    "heat4d-D10065": ("heat", 4, 10065, 6),
    "poisson5d-D10065": ("poisson", 5, 10065, 6),
    "poisson5d-D116865": ("poisson", 5, 116865, 6),
    "poisson10d-D118145": ("poisson", 10, 118145, 6),
    "poisson100d-D1325057": ("poisson", 100, 1325057, 5),  # no engd: J alone is 24 GB
}
KFAC_GPU_METHODS = ["adam", "engd", "kfac", "kfac-star", "spring", "subspace-lm"]


def test_the_kfac_gpu_suite_covers_every_kfac_row_with_every_method(monkeypatch):
    monkeypatch.chdir(REPO)
    _, runs = bench.load_suite(bench.find_suite("kfac-gpu"))
    groups: dict[str, list[bench.SuiteRun]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    assert list(groups) == list(KFAC_GPU_ROWS)
    for group, (problem, dim, params, count) in KFAC_GPU_ROWS.items():
        members = groups[group]
        assert [r.config.method for r in members] == [
            m for m in KFAC_GPU_METHODS if not (dim == 100 and m == "engd")][:count]
        assert all(r.name == f"{group}-{r.config.method}" for r in members)
        for run in members:
            config = run.config
            assert (config.problem, config.problem_options["dim"]) == (problem, dim)
            assert config.build_net(config.build_problem()).num_params == params
            assert config.dtype == "float64"
            if config.method == "engd":
                assert config.hparams["variant"] == "auto"
            # The authors' redraws: Adam and ENGD every step, the methods with state every 100.
            every = 16 if dim == 100 else 1 if config.method in ("adam", "engd") or dim == 2 else 100
            assert config.resample_every == every
    # Ten minutes on one GPU: timing runs stop at 300 steps or 5 s; one 30 s accuracy run for
    # each of issue 19's GPU target rows.
    accuracy = {r.name: r.config.time_budget for r in runs if r.config.steps > 300}
    assert accuracy == {"heat4d-D10065-spring": 30.0, "poisson5d-D10065-spring": 30.0,
                        "poisson5d-D116865-kfac-star": 30.0, "poisson10d-D118145-kfac-star": 30.0,
                        "poisson100d-D1325057-kfac-star": 30.0}
    assert {(r.config.steps, r.config.time_budget) for r in runs if r.name not in accuracy} == {
        (300, 5.0)}
    heat = groups["heat4d-D10065"][0].config.problem_options
    assert (heat["n_interior"], heat["n_boundary"], heat["n_initial"]) == (3000, 250, 250)


def test_the_kfac_gpu_suite_shrinks_its_points_in_quick_mode(monkeypatch):
    monkeypatch.chdir(REPO)
    _, runs = bench.load_suite(bench.find_suite("kfac-gpu"), quick=True)
    assert len(runs) == sum(row[3] for row in KFAC_GPU_ROWS.values())
    for run in runs:
        options = run.config.problem_options
        assert (run.config.steps, run.config.time_budget) == (3, 1.0)
        limit = 8 if options["dim"] == 100 else 60
        assert options["n_interior"] <= limit and options["n_boundary"] <= 30


def test_the_cuda_versions_jax_loaded_are_recorded_as_dotted_versions(monkeypatch):
    from jax._src import lib

    from pinnopt import machine

    fake = types.SimpleNamespace(cuda_runtime_get_version=lambda: 12080,
                                 cudnn_get_version=lambda: 91900)
    monkeypatch.setattr(lib, "cuda_versions", fake, raising=False)
    found = machine.jax_cuda_versions()
    assert (found["cuda_runtime"], found["cudnn"]) == ("12.8", "9.19.0")
    monkeypatch.setattr(lib, "cuda_versions", None, raising=False)  # no CUDA plugin
    assert not {"cuda_runtime", "cudnn"} & set(machine.jax_cuda_versions())
