"""pinnopt: train physics-informed neural networks to high accuracy."""

import jax

# Accuracy studies need float64; float32 remains available per run (``dtype="float32"``).
jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
