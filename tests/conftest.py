"""Test configuration: float64 everywhere (gradient and reference comparisons), seeded draws."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
