"""pinnopt: train physics-informed neural networks to high accuracy."""

from pinnopt._version import __version__  # noqa: F401

from pinnopt import methods
from pinnopt.config import ConfigError, RunConfig
from pinnopt.geometry import Box
from pinnopt.models import Model
from pinnopt.nets import MLP
from pinnopt.optim import METHODS, MethodValue, make_method
from pinnopt.problems import PROBLEMS, Problem, make_problem, register_problem
from pinnopt.residuals import Objective, ResidualGroup
from pinnopt.taylor import Derivatives, Jet, jet
from pinnopt.train import RunError, resume, train
from pinnopt.trained import TrainedModel, load, predict

from pinnopt.precision import float64

__all__ = [
    "Box", "ConfigError", "Derivatives", "Jet", "METHODS", "MLP", "MethodValue", "Model", "Objective",
    "PROBLEMS", "Problem", "ResidualGroup", "RunConfig", "RunError", "TrainedModel", "float64",
    "jet", "load", "make_method", "make_problem", "methods", "predict", "register_problem",
    "resume", "train",
]
