"""What a run shows and logs besides its history: progress when stderr is not a terminal, and
the optional TensorBoard log."""

import json
import struct
import sys
from pathlib import Path

import pytest

from pinnopt.cli import main
from pinnopt.config import RunConfig
from pinnopt.train import RunError, read_history, resume, train
from pinnopt.training import loop

SMALL = ["--method", "adam", "--net", "2-8-1", "--steps", "12", "--time", "none", "--no-plots",
         "--checkpoint-every", "0", "--problem-opt", "n_interior=32", "--problem-opt",
         "n_boundary=8"]


def quiet(message):
    pass


def tiny(**kw):
    base = dict(method="adam", net="2-8-1", problem_options={"n_interior": 32, "n_boundary": 8},
                steps=12, time_budget=None, plots=False, checkpoint_every=0.0)
    base.update(kw)
    return RunConfig(**base)


def test_without_a_terminal_progress_is_a_plain_line_every_interval_not_a_bar(
        tmp_path, capsys, monkeypatch):
    """Under pytest stderr is not a terminal, as in a log file: no tqdm redraws (carriage
    returns), but a line at most every PROGRESS_EVERY seconds; none with --no-progress."""
    assert main(["train", *SMALL, "--out", str(tmp_path / "default")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "step 12 of" not in err  # 30 s between lines: none in this run

    monkeypatch.setattr(loop, "PROGRESS_EVERY", 0.0)  # a line at every step boundary
    assert main(["train", *SMALL, "--out", str(tmp_path / "every")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    progress = [line for line in lines if line.startswith("poisson/adam: step ")]
    assert len(progress) == 12, lines
    assert progress[-1].startswith("poisson/adam: step 12 of 12, 0 s trained, ")
    assert "steps/s; loss " in progress[-1] and progress[-1].endswith("at step 11")
    assert ", rel_l2_u " in progress[-1] and "rms_u" not in progress[-1]  # what targets use

    assert main(["train", *SMALL, "--no-progress", "--out", str(tmp_path / "none")]) == 0
    assert "poisson/adam: step" not in capsys.readouterr().err


def read_events(log_dir: Path) -> list:
    """The events of every TensorBoard event file in ``log_dir``: records of a little-endian
    length, its CRC, the serialised Event and its CRC."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    events = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
            i += 12 + length + 4
    return events


def test_tensorboard_log_holds_every_number_of_every_history_row(tmp_path):
    pytest.importorskip("tensorboardX")
    run = tmp_path / "tb"
    assert main(["train", *SMALL, "--no-progress", "--tensorboard", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["tensorboard"] is True
    history = read_history(run)
    scalars = {(v.tag, e.step): v.simple_value
               for e in read_events(run / "tensorboard") for v in e.summary.value}
    expected = {(k, row["step"]): v for row in history for k, v in row.items() if k != "step"}
    assert {"loss", "loss_interior", "rms_u", "time"} <= {tag for tag, _ in expected}
    assert scalars.keys() == expected.keys()
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6), key  # stored as float32

    # A resumed run's redone rows replace the old ones: the log restarts after the checkpoint.
    resume(run, steps=15, progress=False, log=quiet)
    events = read_events(run / "tensorboard")
    assert max(e.step for e in events) == 15
    assert any(e.session_log.status == e.session_log.START and e.step == 13 for e in events)


def test_tensorboard_without_the_extra_is_one_clear_error_before_any_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX fails
    with pytest.raises(RunError, match=r"needs the tensorboardX package: pip install "
                                       r"'pinnopt\[tensorboard\]'"):
        train(tiny(tensorboard=True), tmp_path / "r", progress=False, log=quiet)
    assert not (tmp_path / "r").exists()
