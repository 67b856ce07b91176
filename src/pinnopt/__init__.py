"""pinnopt: train physics-informed neural networks to high accuracy."""

import jax

# Accuracy studies need float64; float32 remains available per run (``dtype="float32"``).
jax.config.update("jax_enable_x64", True)

from pinnopt._version import __version__  # noqa: E402, F401

from pinnopt.config import ConfigError, RunConfig  # noqa: E402
from pinnopt.geometry import Box  # noqa: E402
from pinnopt.nets import MLP  # noqa: E402
from pinnopt import methods  # noqa: E402
from pinnopt.optim import METHODS, MethodValue, make_method  # noqa: E402
from pinnopt.problems import PROBLEMS, Problem, make_problem, register_problem  # noqa: E402
from pinnopt.report import predict  # noqa: E402
from pinnopt.residuals import Objective, ResidualGroup  # noqa: E402
from pinnopt.taylor import Derivatives, Jet, jet  # noqa: E402
from pinnopt.train import RunError, resume, train  # noqa: E402

__all__ = [
    "Box", "ConfigError", "Derivatives", "Jet", "METHODS", "MLP", "MethodValue", "methods", "Objective", "PROBLEMS",
    "Problem", "ResidualGroup", "RunConfig", "RunError", "jet", "make_method", "make_problem",
    "predict", "register_problem", "resume", "train",
]
