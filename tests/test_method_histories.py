"""Regression: the training histories of a spread of methods and problems stay what they were.

``tests/data/method_histories.json`` holds the losses (and errors) of the first six steps of
each case, recorded by ``tests/data/record_method_histories.py`` on the code before methods
became composable values and the kinetic models moved onto the common model interface (its
``recorded_at`` names that commit). Every case is rebuilt here from its recorded run
configuration, which is in the old flat form (``method = "alm"``, ``inner_*`` settings), so
this also checks that old configurations keep their meaning.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from pinnopt.config import RunConfig
from pinnopt.training import loop
from pinnopt.training.batches import StepBatches
from pinnopt.training.setup import build, fresh_state

DATA = json.loads((Path(__file__).parent / "data" / "method_histories.json").read_text())


def run_history(config: dict) -> list[dict]:
    setup = build(RunConfig.from_dict(config))
    batches = StepBatches(setup.objective, setup.config.seed, setup.config.resample_every)
    sink = loop.MemorySink()
    loop.run(setup, fresh_state(setup), batches, sink, log=lambda m: None)
    return sink.rows


@pytest.mark.parametrize("case", sorted(DATA["cases"]))
def test_history_is_unchanged(case):
    recorded = DATA["cases"][case]
    history = run_history(recorded["config"])
    np.testing.assert_allclose([r["loss"] for r in history], recorded["loss"], rtol=1e-9)
    for key, values in recorded.get("errors", {}).items():
        np.testing.assert_allclose([r[key] for r in history], values, rtol=1e-8, err_msg=key)
