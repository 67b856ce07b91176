"""Custom problems from plugins: ``--plugin MODULE`` and the ``pinnopt.problems`` entry points.

A run of a plugin's problem records the module (metadata.json ``plugins``), so that resuming,
reporting and evaluating it in a new process imports the module again without being told.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pinnopt as po
from pinnopt.cli import main
from pinnopt.problems import ENTRY_POINTS, PROBLEMS

PLUGIN = textwrap.dedent('''
    """A plugin: a small Poisson problem registered as 'plug-poisson'."""
    import jax.numpy as jnp

    import pinnopt as po


    def plug_poisson():
        box = po.Box.cube(2)
        return po.Problem(
            name="plug-poisson", domain=box, coords=("x", "y"), fields=("u",),
            groups=(
                po.ResidualGroup(
                    "interior", box.interior(), 16,
                    lambda x, u: u.second[0] + 2 * jnp.pi**2 * jnp.prod(jnp.sin(jnp.pi * x)),
                    po.Derivatives.laplacian(2)),
                po.ResidualGroup("boundary", box.boundary(), 8, lambda x, u: u.value[0],
                                 role="boundary"),
            ),
            solution=lambda x: jnp.prod(jnp.sin(jnp.pi * x), axis=-1, keepdims=True),
            n_eval=64,
        )


    po.register_problem("plug-poisson", plug_poisson)
''')


def pinnopt_cli(args: list[str], cwd, pythonpath) -> subprocess.CompletedProcess:
    """``pinnopt ARGS`` in a new process, with ``pythonpath`` (or nothing) on PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "pinnopt", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    (root / "myplug.py").write_text(PLUGIN)
    return root


def test_plugin_problem_trains_resumes_reports_and_predicts_in_new_processes(plugin_dir,
                                                                              tmp_path):
    run = tmp_path / "run"
    train = pinnopt_cli(["train", "--plugin", "myplug", "--problem", "plug-poisson", "--net",
                         "2-8-1", "--method", "adam", "--steps", "3", "--time", "none", "--out",
                         str(run), "--no-progress", "--no-plots"], tmp_path, plugin_dir)
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads((run / "metadata.json").read_text())["plugins"] == ["myplug"]
    # New processes, no --plugin: the run names the module it needs.
    resume = pinnopt_cli(["train", "--resume", str(run), "--steps", "5", "--no-progress"],
                         tmp_path, plugin_dir)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 5
    report = pinnopt_cli(["report", str(run)], tmp_path, plugin_dir)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (run / "plots" / "history.png").exists() and (run / "plots" / "field_u.png").exists()
    points = tmp_path / "points.npy"
    np.save(points, np.full((4, 2), 0.5))
    predict = pinnopt_cli(["predict", str(run), "--points", str(points), "--out",
                           str(tmp_path / "values.npy")], tmp_path, plugin_dir)
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert np.load(tmp_path / "values.npy").shape == (4, 1)
    # Without the module on the path: one line that names it, exit 2.
    missing = pinnopt_cli(["predict", str(run), "--points", str(points)], tmp_path, None)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "'myplug'" in missing.stderr, missing.stderr


def test_a_plugin_that_cannot_be_imported_is_one_line(capsys):
    assert main(["train", "--plugin", "pinnopt_no_such_plugin", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'pinnopt_no_such_plugin'" in err


def test_entry_point_problems_load_when_their_name_is_asked_for(tmp_path, monkeypatch):
    (tmp_path / "ep_toy.py").write_text(PLUGIN.replace('po.register_problem("plug-poisson", '
                                                       'plug_poisson)', ""))
    info = tmp_path / "ep_toy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-toy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINTS}]\nep-toy = ep_toy:plug_poisson\nep-broken = ep_toy:missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "ep-toy" not in dict(PROBLEMS) and "ep_toy" not in sys.modules
        config = po.RunConfig(problem="ep-toy", method="adam")
        assert "ep-toy" in dict(PROBLEMS) and config.build_problem().name == "plug-poisson"
        with pytest.raises(ValueError, match="ep_toy:missing"):
            po.make_problem("ep-broken")
        assert "nothing-registered" not in PROBLEMS
    finally:
        PROBLEMS.pop("ep-toy", None)
        sys.modules.pop("ep_toy", None)
