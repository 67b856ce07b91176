"""Optimisers, all selectable by name through :func:`make_method`."""

from pinnopt.optim import constrained  # noqa: F401  (registers alm, lagrange, capu, adam-lbfgs)
from pinnopt.optim import first_order  # noqa: F401  (registers sgd, adam, lbfgs)
from pinnopt.optim import gauss_newton  # noqa: F401  (registers engd, hessian-free)
from pinnopt.optim import kfac  # noqa: F401  (registers kfac, kfac-star)
from pinnopt.optim import multitask  # noqa: F401  (registers sum, pcgrad, mgda, config, mconfig, hrgrad)
from pinnopt.optim.base import METHODS, Method, MethodSpec, coerce_hparam, make_method, register

__all__ = ["METHODS", "Method", "MethodSpec", "coerce_hparam", "make_method", "register"]
