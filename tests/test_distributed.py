"""Data parallelism (``pinnopt.distributed``): the same parameters on 1, 2 and 4 devices.

This pytest process has initialised JAX with one CPU device, so the multi-device runs happen
in one subprocess with four host devices (``tests/distributed_worker.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pinnopt import cli, distributed
from pinnopt.config import ConfigError, RunConfig
from pinnopt.train import Trainer

WORKER = Path(__file__).with_name("distributed_worker.py")
CASES = ["adam", "lbfgs", "engd-full", "engd-woodbury", "hessian-free", "kfac", "kfac-star",
         "hrgrad", "alm"]
# float64: the sums over points run in another order on several devices; a few steps keep the
# differences at a few ulps of the parameters.
RTOL = 1e-10


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_same_parameters_on_1_2_and_4_devices(results, case):
    runs = results["params"][case]
    assert "1" in runs and "4" in runs
    reference = np.asarray(runs["1"])
    for devices, flat in runs.items():
        scale = np.max(np.abs(reference))
        np.testing.assert_allclose(np.asarray(flat), reference, rtol=0, atol=RTOL * scale,
                                   err_msg=f"{case} on {devices} devices")
        if devices != "1":
            assert results["batch_devices"][f"{case}-{devices}"] == int(devices)


def test_two_device_runs_cover_first_order_kfac_and_constrained(results):
    for case in ("adam", "kfac", "alm"):
        assert "2" in results["params"][case]


def test_pointwise_multipliers_are_split_with_their_points(results):
    assert results["alm_multiplier_spec"] == "PartitionSpec('points',)" or \
        results["alm_multiplier_spec"] == "P('points',)"
    assert results["alm_multiplier_shape"] == [24, 1]


def test_uneven_batch_is_refused_with_a_clear_error(results):
    message = results["uneven_error"]
    assert message is not None
    assert "'interior' has 50 points" in message and "4 devices" in message
    assert "\n" not in message


def test_more_devices_than_available_is_refused(results):
    message = results["too_many_error"]
    assert message is not None and "devices=8" in message and "only 4" in message


def test_devices_setting_is_validated():
    with pytest.raises(ConfigError, match="devices=0 must be at least 1"):
        RunConfig(devices=0)
    with pytest.raises(ConfigError, match="devices"):
        RunConfig.from_dict({"devices": "two"})


def test_devices_from_toml_and_cli(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("devices = 2\n")
    assert RunConfig.from_toml(path).devices == 2
    args = cli.build_parser().parse_args(["train", "--devices", "3"])
    assert cli._config_from_args(args).devices == 3


def test_cli_reports_too_many_devices(tmp_path, capsys):
    code = cli.main(["train", "--devices", "2", "--steps", "1", "--no-progress", "--no-plots",
                     "--out", str(tmp_path / "run")])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "devices=2 but only 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_one_device_takes_the_plain_path():
    config = RunConfig(problem_options={"n_interior": 50, "n_boundary": 10}, net="2-4-1",
                       steps=1, plots=False)
    trainer = Trainer(config, "unused", progress=False)
    assert trainer.parallel is None
    assert distributed.is_main_process()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MULTI_PROCESS_RUN = ["train", "--problem", "poisson", "--problem-opt", "n_interior=48",
                     "--problem-opt", "n_boundary=24", "--net", "2-8-1", "--method", "alm",
                     "--opt", "inner_steps=2", "--steps", "3", "--no-progress", "--no-plots"]


def test_two_processes_on_loopback_agree_with_one(tmp_path):
    """Two processes with two CPU devices each (``jax.distributed``, a local coordinator,
    gloo collectives) train into one run directory; the result matches one device."""
    from pinnopt.train import load_state, read_history

    port = _free_port()
    procs = []
    for index in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAX_PLATFORMS": "cpu", "PINNOPT_COORDINATOR": f"127.0.0.1:{port}",
               "PINNOPT_NUM_PROCESSES": "2", "PINNOPT_PROCESS_ID": str(index)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pinnopt", *MULTI_PROCESS_RUN, "--out", str(tmp_path / "multi")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    assert "completed" in outputs[0] and "completed" not in outputs[1]  # process 0 logs

    assert cli.main([*MULTI_PROCESS_RUN, "--out", str(tmp_path / "single")]) == 0
    multi, _ = load_state(tmp_path / "multi")
    single, _ = load_state(tmp_path / "single")
    assert multi["step"] == single["step"] == 3
    for a, b in zip(jax_leaves(multi), jax_leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    rows_multi, rows_single = read_history(tmp_path / "multi"), read_history(tmp_path / "single")
    assert [r["step"] for r in rows_multi] == [r["step"] for r in rows_single]  # no duplicates
    np.testing.assert_allclose([r["loss"] for r in rows_multi], [r["loss"] for r in rows_single],
                               rtol=1e-10)
    metadata = json.loads((tmp_path / "multi" / "metadata.json").read_text())
    assert metadata["processes"] == 2 and metadata["devices"] == 4


def jax_leaves(state):
    """Parameters and multipliers of a checkpointed alm state, as numpy arrays."""
    import jax

    return [np.asarray(leaf) for leaf in
            jax.tree_util.tree_leaves((state["params"], state["method_state"].multipliers))]
