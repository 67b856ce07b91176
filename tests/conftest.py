"""Test-wide settings.

Hypothesis draws its examples from a fixed seed (``derandomize``), so every run of the suite,
CI's included, checks the same examples and a failure reproduces. To search new examples, run
``HYPOTHESIS_PROFILE=explore python -m pytest`` (random draws, the failures it finds are kept in
``.hypothesis/`` and replayed).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
