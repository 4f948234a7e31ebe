"""Test configuration: float64 everywhere (gradient and reference comparisons), implicit rank
promotion an error (library broadcasts are written out), seeded draws."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# one CPU device per core, as `dev.py test` and `workbench lab` ask (import workbench alone does
# not); notebook kernels started by nbval inherit it
os.environ.setdefault("WORKBENCH_CPU_DEVICES", "auto")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Float64 for the test, and the previous flag back afterwards (pymbar, for one, switches
    JAX to 64-bit globally when it runs)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)
