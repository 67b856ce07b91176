"""Every method and aggregator as a value factory, for composing methods in Python::

    from pinnopt.methods import alm, engd, lbfgs, multitask, hrgrad, adam, sequence

    alm(inner=lbfgs(memory=100), inner_steps=10)
    multitask(aggregator=hrgrad(kappa=0.5), optimizer=adam(lr=1e-3), tasks="eps-decades")
    sequence((adam(lr=1e-3), 5000), (lbfgs(), None))

Each factory's settings, types and defaults are its signature (``pinnopt list methods``
prints them). The aggregator ``sum`` is ``sum_`` here, so that it does not hide Python's
``sum``. Old names such as ``adam-lbfgs`` and ``hrgrad`` as a method remain selectable by
name (``RunConfig(method="adam-lbfgs")``, ``--method hrgrad``).
"""

from pinnopt.optim.causal import causal
from pinnopt.optim.combine import average, sequence
from pinnopt.optim.constrained import alm, capu, lagrange
from pinnopt.optim.first_order import adam, lbfgs, sgd
from pinnopt.optim.gauss_newton import engd, hessian_free
from pinnopt.optim.kfac import kfac, kfac_star
from pinnopt.optim.multitask import config, hrgrad, mconfig, mgda, multitask, pcgrad, sum_
from pinnopt.optim.multitask_gn import multitask_engd
from pinnopt.optim.spring import spring, subspace_lm

__all__ = ["adam", "alm", "average", "capu", "causal", "config", "engd", "hessian_free", "hrgrad", "kfac",
           "kfac_star", "lagrange", "lbfgs", "mconfig", "mgda", "multitask", "multitask_engd", "pcgrad",
           "sequence", "sgd", "spring", "subspace_lm", "sum_"]
