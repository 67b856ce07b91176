"""Every command and Python snippet of the README runs as written (with small budgets), so the
README cannot drift from the code again.

Commands run in order in one fresh directory, as a new user would type them after the quick
start: ``pinnopt train`` runs get ``--steps 2 --time none`` appended (later flags win), a
``--resume`` gets two more steps, benchmark suites are listed with ``--dry-run`` (running them
is tested in test_bench.py) from the repository root, where suites live. The TOML block is the
``run.toml`` that ``--config run.toml`` reads. Python blocks run in one namespace with every
``RunConfig`` cut to two steps.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import pinnopt
from pinnopt.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    """The ``pinnopt`` and ``python3 -c`` command lines of the bash blocks, in order."""
    out = []
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.splitlines():
            line = re.split(r"\s{2,}#", line)[0].strip()
            last = line.split("&&")[-1].strip()
            if last.startswith(".venv/bin/pinnopt"):
                out.append(last.removeprefix(".venv/bin/"))
            elif last.startswith(("pinnopt ", "python3 -c")) or last == "pinnopt":
                out.append(last)
    return out


def test_the_readme_has_the_blocks_this_test_expects():
    langs = [lang for lang, _ in BLOCKS]
    assert langs.count("toml") == 1 and langs.count("python") >= 3
    assert commands()[0] == "pinnopt train" and any("--resume" in c for c in commands())


@pytest.fixture
def short_runs(monkeypatch):
    """Every RunConfig built from here on is cut to two steps without plots."""
    validate = pinnopt.RunConfig.validate

    def short(self):
        validate(self)
        self.steps, self.time_budget, self.plots = min(self.steps, 2), None, False

    monkeypatch.setattr(pinnopt.RunConfig, "validate", short)


def test_every_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(next(body for lang, body in BLOCKS if lang == "toml"))
    for line in commands():
        args = shlex.split(line)
        if args[0] == "python3":
            subprocess.run([sys.executable, *args[1:]], check=True, cwd=tmp_path, timeout=60)
            continue
        args = args[1:] or ["train"]
        if args[0] == "train":
            extra = ["--steps", "4"] if "--resume" in args else ["--steps", "2", "--time", "none"]
            args += [*extra, "--no-progress", "--no-plots"]
        elif args[0] == "bench":
            monkeypatch.chdir(ROOT)
            if args[1] != "taylor-speed":
                args = [a for a in args if a != "--quick"] + ["--dry-run"]
            args += ["--out", str(tmp_path / "bench" / args[1])]
        code = main(args)
        monkeypatch.chdir(tmp_path)
        err = capsys.readouterr().err
        assert code == 0, f"{line!r} exited {code}: {err}"
    assert (tmp_path / "values.npy").exists()


def test_every_python_snippet_runs(tmp_path, monkeypatch, short_runs):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for lang, body in BLOCKS:
        if lang == "python":
            exec(compile(body, "README.md", "exec"), namespace)
    assert namespace["values"].shape == (50, 1)
    assert (tmp_path / "runs" / "mine" / "summary.json").exists()
