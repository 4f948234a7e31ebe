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

from . import parallel

__all__ = ["jit", "CPU_OPTIONS", "zero_cotangents"]

CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_cpu_prefer_vector_width": 512}


def jit(fn: Callable, **kwargs: Any):
    """``jax.jit(fn, **kwargs)``, with :data:`CPU_OPTIONS` when JAX computes on the CPU.

    Compiler options are only allowed on a top-level jit, so a call made inside someone else's
    trace (a user's ``jit``, ``grad`` or ``vmap`` around a workbench function) goes to a plain
    ``jax.jit`` of the same function instead: composable in any nesting."""
    if jax.default_backend() != "cpu":
        return jax.jit(fn, **kwargs)
    options = {**CPU_OPTIONS, **kwargs.pop("compiler_options", {})}
    return _Jitted(fn, options, kwargs)


class _Jitted:
    """A jitted function with CPU options at top level and a plain one inside traces.

    What a trace produces depends on the active device mesh (:func:`workbench.parallel.use`
    decides whether block loops are split over devices), which ``jax.jit``'s cache does not
    see (nor does its trace cache); so there is one top-level ``jax.jit`` per mesh, of a
    function that traces under that mesh. Without this, a program traced outside
    ``use(mesh)`` (an ahead-of-time ``lower()``, say) was silently reused inside it: measured
    1.5x slower PME steps and 4x slower steps of a 22-atom system."""

    def __init__(self, fn, options, kwargs):
        self._fn, self._options, self._kwargs = fn, options, kwargs
        self._tops: dict[Any, Any] = {}
        self._nested = jax.jit(fn, **kwargs)
        functools.update_wrapper(self, fn)

    @property
    def _top(self):
        mesh = parallel.active_mesh()
        if mesh not in self._tops:
            fn = self._fn

            # A fresh function object per mesh: JAX's trace cache is keyed by the function,
            # so this also keeps jaxprs traced under one mesh from being reused under another.
            @functools.wraps(fn)
            def under_mesh(*args, **kwargs):
                with parallel.use(mesh):
                    return fn(*args, **kwargs)

            self._tops[mesh] = jax.jit(under_mesh, compiler_options=self._options,
                                       **self._kwargs)
        return self._tops[mesh]

    def __call__(self, *args, **kwargs):
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return self._nested(*args, **kwargs)
        return self._top(*args, **kwargs)

    def _cache_size(self) -> int:
        """Compiled programs at top level, over all meshes (the count the no-recompile tests
        read)."""
        return sum(f._cache_size() for f in self._tops.values())

    def lower(self, *args, **kwargs):
        return self._top.lower(*args, **kwargs)


def zero_cotangents(tree):
    """Zero cotangents for a pytree, as a ``custom_vjp`` backward rule returns them for inputs
    it does not differentiate: float0 for integer leaves (neighbor tables), zeros otherwise."""
    import numpy as np
    import jax.numpy as jnp

    return jax.tree_util.tree_map(
        lambda x: np.zeros(jnp.shape(x), jax.dtypes.float0)
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact) else jnp.zeros_like(x), tree)
