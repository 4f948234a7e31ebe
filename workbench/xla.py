"""``jit`` with the XLA options this project measured to be best on CPU.

XLA's newer CPU fusion emitters (the default in JAX 0.10) compile the neighbor-list build about
twice as slowly as the classic emitters, and its code runs no faster: measured on the 2-core
machine, the cell build compiles in 0.57 s instead of 1.04 s, and a Lennard-Jones step at 4000
atoms takes 2.5 ms instead of 3.2 ms. The option is passed per compiled function, so nothing
else in the user's process changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["jit", "CPU_OPTIONS"]

CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def jit(fn: Callable, **kwargs: Any):
    """``jax.jit(fn, **kwargs)``, with :data:`CPU_OPTIONS` when JAX computes on the CPU.

    Compiler options are only allowed on a top-level jit, so a call made inside someone else's
    trace (a user's ``jit``, ``grad`` or ``vmap`` around a workbench function) goes to a plain
    ``jax.jit`` of the same function instead: composable in any nesting."""
    if jax.default_backend() != "cpu":
        return jax.jit(fn, **kwargs)
    options = {**CPU_OPTIONS, **kwargs.pop("compiler_options", {})}
    return _Jitted(jax.jit(fn, compiler_options=options, **kwargs), jax.jit(fn, **kwargs))


class _Jitted:
    """A jitted function with CPU options at top level and a plain one inside traces."""

    def __init__(self, top, nested):
        self._top, self._nested = top, nested
        functools.update_wrapper(self, top)

    def __call__(self, *args, **kwargs):
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return self._nested(*args, **kwargs)
        return self._top(*args, **kwargs)

    def _cache_size(self) -> int:
        """Compiled programs at top level (the count the no-recompile tests read)."""
        return self._top._cache_size()

    def lower(self, *args, **kwargs):
        return self._top.lower(*args, **kwargs)
