"""Command line: bad input gets one line and exit code 2, and never touches an existing run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pinnopt.cli import main

SMALL = ["--problem-opt", "n_interior=64", "--problem-opt", "n_boundary=16", "--net", "2-8-1",
         "--no-progress", "--no-plots"]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", "--method", "adam", "--steps", "5", "--out", str(out), *SMALL]) == 0
    return out


BAD = [
    (["train", "--problem", "nope"], "problem='nope' is unknown"),
    (["train", "--method", "nope"], "method='nope' is unknown"),
    (["train", "--net", "3-64-1"], "needs 2 inputs"),
    (["train", "--net", "huge-ish"], "neither a preset"),
    (["train", "--steps", "-1"], "steps=-1 must be at least 0"),
    (["train", "--time", "-5"], "time_budget=-5.0 must be positive"),
    (["train", "--method", "adam", "--lr", "-1"], "learning rate must be positive"),
    (["train", "--method", "adam", "--opt", "nonsense=1"], "has no setting 'nonsense'"),
    (["train", "--method", "adam", "--opt", "b1=abc"], "not a valid float"),
    (["train", "--opt", "novalue"], "KEY=VALUE"),
    (["train", "--dim", "0"], "positive integer"),
    (["train", "--problem-opt", "colour=red"], "no option 'colour'"),
    (["train", "--dtype", "float16"], "dtype='float16' is unknown"),
    (["train", "--activation", "relu6"], "activation='relu6' is unknown"),
    (["train", "--steps", "ten"], "invalid int value"),
    (["train", "--config", "/nonexistent.toml"], "does not exist"),
    (["train", "--resume", "/"], "not a pinnopt run"),
    (["predict", "/", "--points", "x.npy"], "not a pinnopt run"),
    (["bench", "no-such-suite"], "unknown suite"),
    (["frobnicate"], "invalid choice"),
    (["train", "--problem-opt", "n_interior=1.5"], "n_interior=1.5 is not a valid int"),
    (["train", "--problem", "heat", "--problem-opt", "n_interior=1.5"],
     "problem 'heat': n_interior=1.5 is not a valid int"),
    (["train", "--problem-opt", "n_interior=abc"], "n_interior='abc' is not a valid int"),
    (["train", "--problem-opt", "resample=maybe"], "resample='maybe' is not a valid bool"),
    (["train", "--problem", "transport", "--problem-opt", "eps_range=[1e-3]"], "eps_range"),
    (["train", "--time", "soon"], "expected seconds or 'none'"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_gives_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnopt: error:"), err
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_config_files(tmp_path, capsys):
    cases = {
        "syntax.toml": ("problem = [", "not valid TOML"),
        "unknown.toml": ("colour = 'red'", "unknown setting 'colour'"),
        "types.toml": ("steps = 'many'", "steps='many' must be an integer"),
        "table.toml": ("hparams = 3", "hparams must be a table"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        code, _, err = run_cli(["train", "--config", str(path)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    code, _, err = run_cli(["train", "--config", str(binary)], capsys)
    assert code == 2 and "cannot be read" in err


def test_existing_run_is_never_overwritten(finished_run, capsys):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()}
    code, _, err = run_cli(["train", "--steps", "3", "--out", str(finished_run), *SMALL], capsys)
    assert code == 2 and "already exists" in err
    after = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()}
    assert before == after


def test_config_file_and_flags(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "adam"\nsteps = 3\nhparams = { lr = 0.01 }\n'
                   'problem_options = { n_interior = 32, n_boundary = 8 }\nnet = "2-8-1"\n')
    out = tmp_path / "r"
    assert main(["train", "--config", str(cfg), "--seed", "4", "--out", str(out),
                 "--no-progress", "--no-plots"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["hparams"] == {"lr": 0.01} and config["seed"] == 4 and config["steps"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["status"] == "completed"


def test_predict_checks_shape_and_writes_values(finished_run, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 3)))
    code, _, err = run_cli(["predict", str(finished_run), "--points", str(bad)], capsys)
    assert code == 2 and "shape (N, 2)" in err
    garbage = tmp_path / "garbage.npy"
    garbage.write_text("not numpy")
    code, _, err = run_cli(["predict", str(finished_run), "--points", str(garbage)], capsys)
    assert code == 2 and "not a readable .npy" in err
    pts = tmp_path / "pts.npy"
    x = np.random.default_rng(0).random((10, 2))
    np.save(pts, x)
    out = tmp_path / "pred.npy"
    assert main(["predict", str(finished_run), "--points", str(pts), "--out", str(out)]) == 0
    values = np.load(out)
    assert values.shape == (10, 1)
    from pinnopt.training.rundir import load_config, load_state
    from pinnopt.training.setup import build, fresh_state

    setup = build(load_config(finished_run))
    params = load_state(finished_run, fresh_state(setup))[0]["params"]
    np.testing.assert_allclose(values, np.asarray(setup.net.apply(params, x)), rtol=1e-13)


def test_report_and_list(finished_run, capsys):
    code, out, _ = run_cli(["report", str(finished_run)], capsys)
    assert code == 0 and "status: completed" in out and "jax" in out
    assert (finished_run / "plots" / "history.png").exists()
    assert (finished_run / "plots" / "field_u.png").exists()
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and "poisson" in out and "adam" in out and "lbfgs" in out


def test_console_script_runs_without_traceback(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "pinnopt", "train", "--method", "nope"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("text,expected", [("False", False), ("no", False), ("true", True),
                                           ("yes", True)])
def test_boolean_problem_options_mean_what_they_say(text, expected):
    from pinnopt.cli import _config_from_args, build_parser

    for problem in ("poisson", "helmholtz", "transport"):
        args = build_parser().parse_args(
            ["train", "--problem", problem, "--problem-opt", f"resample={text}"])
        config = _config_from_args(args)
        assert config.problem_options["resample"] is expected
        assert config.build_problem().resample is expected


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    code, _, err = run_cli(["train", "--out", str(target), *SMALL], capsys)
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


def test_time_none_switches_the_time_budget_off_and_help_shows_defaults(tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, _ = run_cli(["train", "--method", "adam", "--steps", "3", "--time", "none",
                               "--out", str(out), *SMALL], capsys)
    assert code == 0 and "3 steps or no time limit" in stdout
    assert json.loads((out / "config.json").read_text())["time_budget"] is None
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default 100000)" in text and "default 60" in text and "'none'" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("pinnopt 0.")


def test_a_closed_pipe_is_one_line_not_a_traceback(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(f"{sys.executable} -m pinnopt list | head -1", shell=True,
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 1, proc.stderr
