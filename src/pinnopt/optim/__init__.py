"""Optimisers as values (:mod:`pinnopt.optim.base`), each also selectable by name."""

from pinnopt.optim import first_order  # noqa: F401  (sgd, adam, lbfgs)
from pinnopt.optim import gauss_newton  # noqa: F401  (engd, hessian-free)
from pinnopt.optim import spring  # noqa: F401  (spring, subspace-lm)
from pinnopt.optim import kfac  # noqa: F401  (kfac, kfac-star)
from pinnopt.optim import constrained  # noqa: F401  (alm, lagrange, capu)
from pinnopt.optim import causal  # noqa: F401  (causal)
from pinnopt.optim import combine  # noqa: F401  (sequence, adam-lbfgs)
from pinnopt.optim import multitask  # noqa: F401  (multitask, aggregators, their old names)
from pinnopt.optim import multitask_gn  # noqa: F401  (multitask-engd)
from pinnopt.optim.base import (
    AGGREGATORS,
    METHODS,
    Definition,
    Method,
    MethodValue,
    configured_value,
    make_method,
    resolve,
)

__all__ = ["AGGREGATORS", "METHODS", "Definition", "Method", "MethodValue",
           "configured_value", "make_method", "resolve"]
