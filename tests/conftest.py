"""Test-wide settings.

JAX computes in 64 bits throughout the tests.

Hypothesis draws its examples from a fixed seed (``derandomize``), so every run of the suite,
CI's included, checks the same examples and a failure reproduces. To search new examples, run
``HYPOTHESIS_PROFILE=explore python -m pytest`` (random draws, the failures it finds are kept in
``.hypothesis/`` and replayed).
"""

import os

import jax
from hypothesis import settings

# The tests check derivatives, Gramians and Kronecker factors against brute force in float64;
# importing pinnopt does not switch JAX to 64 bits (runs do, for their own duration).
jax.config.update("jax_enable_x64", True)

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
