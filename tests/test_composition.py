"""Methods as values: composition from Python, TOML and the command line gives the same runs as
the older names did; malformed compositions get one line and exit code 2, touching no file."""

import json
import os

import optax
import pytest

from pinnopt.cli import build_parser, describe_methods, main
from pinnopt.config import ConfigError, RunConfig
from pinnopt.methods import (adam, alm, engd, hrgrad, lagrange, lbfgs, multitask, sequence, sgd,
                             sum_)
from pinnopt.optim import configured_value
from test_method_histories import DATA, run_history

ALM = DATA["cases"]["alm-helmholtz"]
ADAM_LBFGS = DATA["cases"]["adam-lbfgs-poisson"]
HRGRAD = DATA["cases"]["hrgrad-poisson"]
PYTORCH_LBFGS = dict(memory=100, max_linesearch_steps=25)


def base(recorded: dict) -> dict:
    """The recorded run's settings other than its method."""
    return {k: v for k, v in recorded["config"].items() if k not in ("method", "hparams")}


def losses(config: RunConfig) -> list[float]:
    return [row["loss"] for row in run_history(config.to_dict())]


def cli_config(args: list[str]) -> RunConfig:
    from pinnopt.cli import _config_from_args

    return _config_from_args(build_parser().parse_args(["train", *args]))


def test_alm_with_inner_lbfgs_from_python_toml_and_cli_repeats_the_recorded_alm(tmp_path):
    settings = base(ALM)
    python = RunConfig(**settings, method=alm(inner=lbfgs(**PYTORCH_LBFGS), inner_steps=3))
    toml = tmp_path / "run.toml"
    toml.write_text(
        'problem = "helmholtz"\nnet = "2-8-1"\nsteps = 6\neval_ratio = 1.01\nplots = false\n'
        'problem_options = { n_interior = 64, n_boundary = 16 }\n'
        '[method]\nname = "alm"\ninner_steps = 3\n'
        '[method.inner]\nname = "lbfgs"\nmemory = 100\nmax_linesearch_steps = 25\n')
    from_toml = RunConfig.from_toml(toml)
    from_toml.time_budget = None
    from_cli = cli_config([
        "--problem", "helmholtz", "--problem-opt", "n_interior=64", "--problem-opt",
        "n_boundary=16", "--net", "2-8-1", "--steps", "6", "--eval-ratio", "1.01",
        "--method", "alm", "--opt", "inner=lbfgs", "--opt", "inner.memory=100",
        "--opt", "inner.max_linesearch_steps=25", "--opt", "inner_steps=3", "--no-plots"])
    from_cli.time_budget = None
    assert python.method_value == from_toml.method_value == from_cli.method_value
    for config in (python, from_toml, from_cli):
        assert losses(config) == pytest.approx(ALM["loss"], rel=1e-9)


def test_naming_the_default_inner_method_keeps_its_settings():
    assert alm(inner="lbfgs")["inner"] == lbfgs(**PYTORCH_LBFGS) == alm()["inner"]
    assert alm(inner={"memory": 7})["inner"] == lbfgs(memory=7, max_linesearch_steps=25)
    assert alm(inner="adam")["inner"] == adam()


def test_sequence_of_adam_and_lbfgs_repeats_the_recorded_adam_lbfgs():
    value = sequence((adam(lr=1e-3), 3), (lbfgs(**PYTORCH_LBFGS), None))
    assert configured_value("adam-lbfgs", {"switch_step": 3}) == value
    assert losses(RunConfig(**base(ADAM_LBFGS), method=value)) == pytest.approx(
        ADAM_LBFGS["loss"], rel=1e-9)


def test_multitask_with_hrgrad_repeats_the_recorded_hrgrad():
    value = multitask(aggregator=hrgrad(kappa=0.3), optimizer=adam(lr=1e-2))
    assert configured_value("hrgrad", {"kappa": 0.3, "lr": 1e-2}) == value
    assert losses(RunConfig(**base(HRGRAD), method=value)) == pytest.approx(
        HRGRAD["loss"], rel=1e-9)


def test_a_raw_optax_optimizer_fits_but_cannot_be_written_to_a_run_config():
    value = multitask(aggregator=hrgrad(kappa=0.3), optimizer=optax.adam(1e-2))
    with pytest.raises(ConfigError, match="raw optax transformation"):
        RunConfig(**base(HRGRAD), method=value)


def test_composed_methods_round_trip_through_config_json(tmp_path):
    value = lagrange(inner=sequence((sgd(lr=1e-2), 10), (lbfgs(memory=5), None)), dual_lr=0.5)
    config = RunConfig(problem="helmholtz", method=value)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    again = RunConfig.from_dict(json.loads(path.read_text()))
    assert again.method == "lagrange" and again.method_value == value


def test_older_flat_settings_keep_their_meaning():
    assert configured_value("alm", {"inner": "adam", "inner_lr": 1e-2})["inner"] == adam(lr=1e-2)
    # inner_lr never applied to L-BFGS; inner_memory did.
    old = configured_value("capu", {"inner_lr": 1e-2, "inner_memory": 50})
    assert old["inner"] == lbfgs(memory=50, max_linesearch_steps=25)
    mconfig = configured_value("mconfig", {"lr": 1e-2})
    assert mconfig["optimizer"] == sgd(lr=1e-2, momentum=0.0)


@pytest.mark.parametrize("make,message", [
    (lambda: lagrange(form="linear", inner=engd()), "inner=engd does not fit: it needs residuals"),
    (lambda: alm(inner=sequence((adam(), 2), ("multitask", None))), "does not fit"),
    (lambda: alm(inner="alm"), "inner=alm does not fit: it needs groups"),
    (lambda: multitask(optimizer=lbfgs()), "optimizer=lbfgs does not fit"),
    (lambda: multitask(aggregator="adam"), "unknown aggregator 'adam'"),
    (lambda: multitask(aggregator=sum_(), optimizer=adam(lr="fast")), "not a valid float"),
    (lambda: sequence((adam(), None), (lbfgs(), None)), "only the last phase"),
    (lambda: alm(inner={"name": "lbfgs", "colour": 1}), "has no setting 'colour'"),
])
def test_malformed_compositions_are_refused_in_python(make, message):
    with pytest.raises(ValueError, match=message):
        make()


MALFORMED = [
    (["--method", "alm", "--opt", "inner=nope"], "unknown method 'nope'"),
    (["--method", "alm", "--opt", "inner.memory=abc"], "inner=lbfgs: memory='abc' is not a valid int"),
    (["--method", "alm", "--opt", "inner=alm"], "inner=alm does not fit"),
    (["--method", "multitask", "--opt", "aggregator=hrgrad", "--opt", "aggregator.kappa=2"],
     "kappa must be in [0, 1]"),
]


@pytest.mark.parametrize("args,message", MALFORMED)
def test_malformed_compositions_on_the_command_line_touch_no_run(args, message, capsys, tmp_path):
    existing = tmp_path / "existing"
    assert main(["train", "--method", "adam", "--steps", "2", "--out", str(existing),
                 "--problem", "helmholtz", "--net", "2-8-1", "--problem-opt", "n_interior=32",
                 "--problem-opt", "n_boundary=8", "--no-progress", "--no-plots"]) == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in existing.iterdir()}
    capsys.readouterr()
    for out in (existing, tmp_path / "new"):
        code = main(["train", "--problem", "helmholtz", "--net", "2-8-1", "--out", str(out),
                     "--overwrite", "--no-progress", "--no-plots", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "new").exists()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in existing.iterdir()} == before


def test_a_malformed_method_table_in_toml_is_one_line(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('problem = "helmholtz"\n[method]\nname = "alm"\n[method.inner]\nname = "multitask"\n')
    with pytest.raises(ConfigError, match="inner=multitask does not fit") as err:
        RunConfig.from_toml(toml)
    assert "\n" not in str(err.value)


def test_safer_settings_reach_inside_compositions():
    assert engd(damping=1e-12).safer() == engd(damping=1e-10)
    assert alm(inner=adam(lr=1e-2)).safer() == alm(inner=adam(lr=5e-3))
    seq = sequence((adam(lr=1e-2), 5), (lbfgs(), None))
    assert seq.safer() == sequence((adam(lr=5e-3), 5), (lbfgs(), None))
    assert lbfgs().safer() is None and alm().safer() is None


def test_list_methods_reads_the_signatures():
    text = describe_methods()
    assert "damping: float = 1e-10" in text and "variant: auto|full|layer|woodbury" in text
    assert "inner: method on a loss/residuals = lbfgs(memory=100, max_linesearch_steps=25)" in text
    assert "adam-lbfgs" in text and "kappa: float = 0.5" in text


def test_each_problem_has_a_default_method(monkeypatch):
    from pinnopt import problems

    assert RunConfig().method == "engd" and RunConfig(problem="helmholtz").method == "lbfgs"
    assert RunConfig(hparams={"damping": 1e-8}).method_value == engd(damping=1e-8)
    monkeypatch.setattr(problems, "PROBLEMS", dict(problems.PROBLEMS))
    monkeypatch.setattr(problems, "DEFAULT_METHODS", dict(problems.DEFAULT_METHODS))
    problems.register_problem("poisson-for-adam", lambda: None, default_method="adam")
    assert problems.default_method("poisson-for-adam") == "adam"
