"""Atom blocks spread over CPU cores.

XLA runs one compiled loop on one CPU thread, and the pair kernels and the list builds are loops
over blocks of atoms (:data:`workbench.neighbors.BLOCK`), so on its own a simulation uses one core.
JAX can expose the host's cores as several CPU *devices*; :func:`block_map` then splits the blocks
between them with ``shard_map`` (each device runs its share of the loop, the positions are shared).
Measured on the project's 2-core machine: force evaluation and list builds about 2x faster.

* :func:`configure` asks JAX for one CPU device per usable core (at most 8). It must run before
  JAX starts its backends. It is the user's choice: ``import workbench`` changes nothing in JAX
  unless ``WORKBENCH_CPU_DEVICES`` is set (``auto``: one device per core; a number: that many),
  which ``workbench lab``, ``workbench bench`` and ``dev.py test`` do for their processes (and
  the notebook kernels they start). In your own script call ``workbench.parallel.configure()``
  before any JAX computation. If you set ``jax_num_cpu_devices`` yourself, your value is kept.
* Block parallelism is opt-in per trace: code traced inside ``with use(mesh):`` (the
  :class:`~workbench.simulate.Simulation` driver does this) splits its block loops; everywhere
  else the loops run on one device, so plain ``jax.jit(energy)`` behaves as usual.
* Neighbor tables have a row count that divides evenly among the devices (:func:`row_multiple`),
  so lists built anywhere can be used under a mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

__all__ = [
    "ENV", "configure", "configure_from_env", "device_count", "default_mesh", "use", "active_mesh", "block_map",
    "shard_rows", "place",
]

ENV = "WORKBENCH_CPU_DEVICES"
AXIS = "blocks"
MAX_DEVICES = 8

_active: contextvars.ContextVar = contextvars.ContextVar("workbench_mesh", default=None)
_mesh_cache: dict[int, Any] = {}


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_from_env() -> int:
    """:func:`configure` if ``WORKBENCH_CPU_DEVICES`` asks for it (``auto`` or a number), else
    nothing (what ``import workbench`` does). Returns the number of devices requested (0: none)."""
    env = os.environ.get(ENV, "").strip().lower()
    if not env:
        return 0
    return configure(None if env == "auto" else _env_devices(env))


def _env_devices(env: str) -> int:
    try:
        return int(env)
    except ValueError:
        raise ValueError(f"{ENV} must be 'auto' or a positive integer, got {env!r}") from None


def configure(n_devices: int | None = None) -> int:
    """Ask JAX for ``n_devices`` CPU devices (default: ``$WORKBENCH_CPU_DEVICES``, else one per
    usable core, at most 8). Does nothing once JAX's backends are running or when the user has
    set ``jax_num_cpu_devices``. Returns the number requested (0 when nothing was changed)."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized() or jax.config.jax_num_cpu_devices > 0:
        return 0
    if n_devices is None:
        env = os.environ.get(ENV, "").strip().lower()
        if env and env != "auto":
            n_devices = _env_devices(env)
        else:
            n_devices = min(_usable_cores(), MAX_DEVICES)
    if n_devices < 1:
        raise ValueError(f"need at least one CPU device, got {n_devices}")
    if n_devices == 1:
        return 0
    jax.config.update("jax_num_cpu_devices", int(n_devices))
    return int(n_devices)


def device_count() -> int:
    """Devices that block loops are split over: the CPU devices when JAX computes on the CPU,
    else 1 (on a GPU one device already runs the blocks in parallel)."""
    if jax.default_backend() != "cpu":
        return 1
    return len(jax.devices())


def default_mesh():
    """A 1-D mesh over :func:`device_count` devices, or None when there is only one."""
    n = device_count()
    if n < 2:
        return None
    if n not in _mesh_cache:
        _mesh_cache[n] = jax.sharding.Mesh(np.array(jax.devices()[:n]), (AXIS,))
    return _mesh_cache[n]


@contextlib.contextmanager
def use(mesh) -> Iterator[None]:
    """Within this block, code that is *traced* splits its block loops over ``mesh`` (None: one
    device). Only tracing reads it: call a jitted function under the same mesh every time."""
    token = _active.set(mesh)
    try:
        yield
    finally:
        _active.reset(token)


def active_mesh():
    """The mesh set by :func:`use`, or None."""
    return _active.get()


def block_map(fn: Callable[[Any, Any], Any], shared: Any, blocked: Any) -> Any:
    """``lax.map(lambda b: fn(shared, b), blocked)``, with the blocks split evenly over the active
    mesh's devices when there is one (and their number divides the block count).

    shared: pytree every block reads (replicated); blocked: pytree of arrays with a leading
    axis of blocks. Returns the stacked per-block outputs (leading axis = blocks)."""
    mesh = active_mesh()
    n_blocks = jax.tree_util.tree_leaves(blocked)[0].shape[0]

    def run(shared, blocked):
        return jax.lax.map(lambda b: fn(shared, b), blocked)

    if mesh is None or mesh.size < 2 or n_blocks % mesh.size:
        return run(shared, blocked)
    spec = jax.sharding.PartitionSpec
    return jax.shard_map(
        run, mesh=mesh, in_specs=(spec(), spec(AXIS)), out_specs=spec(AXIS), check_vma=False
    )(shared, blocked)


def _sharding(mesh, rows: bool):
    spec = jax.sharding.PartitionSpec(AXIS) if rows else jax.sharding.PartitionSpec()
    return jax.sharding.NamedSharding(mesh, spec)


def shard_rows(x):
    """Inside a trace under :func:`use`: ask XLA to keep ``x`` split by rows over the devices
    (neighbor tables: each device keeps the rows of its own blocks). Else ``x`` unchanged."""
    mesh = active_mesh()
    if mesh is None or x.shape[0] % mesh.size:
        return x
    return jax.lax.with_sharding_constraint(x, _sharding(mesh, True))


def place(tree, mesh, row_sharded: Callable[[Any], bool] = lambda leaf: False):
    """Host side: put every array leaf of ``tree`` on ``mesh``, replicated, except the leaves for
    which ``row_sharded(leaf)`` is true, which are split by rows. No-op when ``mesh`` is None."""
    if mesh is None:
        return tree

    def put(x):
        if not isinstance(x, jax.Array | np.ndarray):
            return x
        rows = bool(row_sharded(x)) and x.ndim > 0 and x.shape[0] % mesh.size == 0
        return jax.device_put(x, _sharding(mesh, rows))

    return jax.tree_util.tree_map(put, tree)
