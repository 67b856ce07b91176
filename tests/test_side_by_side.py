"""benchmarks/side_by_side.py: without a checkout of the [KFAC] authors' code, or without torch,
it says so in one line and exits 0; its seconds-per-step estimate and log parsing."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "side_by_side.py"


def run(*args, **kwargs):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, cwd=kwargs.get("cwd", REPO))


def load():
    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("side_by_side", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_without_a_checkout_it_skips_with_one_line(tmp_path):
    done = run("--checkout", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert done.stdout.startswith("side_by_side: skipped: no checkout of the [KFAC] authors' code")
    assert not (tmp_path / "out").exists()


def test_without_torch_it_skips_with_one_line(tmp_path):
    checkout = tmp_path / "kfac-pinns-experiments"
    (checkout / "kfac_pinns_exp").mkdir(parents=True)
    (checkout / "kfac_pinns_exp" / "train.py").write_text("raise SystemExit('not to be run')\n")
    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text("#!/bin/sh\nexit 1\n")  # any "import torch" probe fails
    no_torch.chmod(0o755)
    done = run("--checkout", str(checkout), "--python", str(no_torch),
               "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert "skipped" in done.stdout and "cannot import torch" in done.stdout
    assert not (tmp_path / "out").exists()


def test_seconds_per_step_is_the_slope_over_the_second_half():
    module = load()
    # Start-up makes the first steps slow; the second half runs at 2 ms a step.
    log = [(0, 0.0), (1, 3.0), (2, 3.1), (100, 4.0), (1000, 5.0), (2000, 7.0), (3000, 9.0)]
    per_step, steps = module.slope(log)
    assert per_step == pytest.approx(2e-3) and steps == 2000
    assert module.slope([(0, 0.0)]) == (None, 0)


def test_their_log_lines_are_read():
    module = load()
    text = ("Running on device cpu in dtype torch.float64.\n"
            "Step: 0000000, Loss: 1.0, L2 Error: 0.5, Interior: 1.0, Boundary: 0.1, Time: 0.0s\n"
            "Step: 0000012, Loss: 0.5, L2 Error: 0.4, Interior: 0.4, Boundary: 0.1, Time: 1.5s\n")
    assert module.authors_log(text) == ([(0, 0.0), (12, 1.5)], "cpu")


def test_the_fastest_repeat_by_wall_clock_or_by_cpu_time():
    module = load()
    busy = module.Timing(4e-3, 100, 0.5, None)   # 4 ms a step with half of the core: 2 ms
    quiet = module.Timing(3e-3, 100, 1.0, None)
    short = module.Timing(None, 0, 1.0, None)
    assert module.fastest([busy, quiet, short]) is quiet
    assert module.fastest([busy, quiet, short], cpu=True) is busy
    assert busy.cpu_per_step == pytest.approx(2e-3)
    assert module.fastest([short]) is None
