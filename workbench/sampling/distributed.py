"""Independent runs on a dask.distributed cluster: umbrella windows, parameter sweeps,
metadynamics walkers with their own bias, seeds of a repeat.

Runs that must exchange information every few steps (replica exchange, shared-bias walkers) are a
batch axis inside one compiled program instead (:mod:`workbench.sampling.replica`); runs that
never talk are separate tasks here. :func:`run_independent` submits ``fn(task)`` for every task to

* a ``dask.distributed.LocalCluster`` of worker processes on 127.0.0.1 (the default, started and
  stopped around the call), or
* any running scheduler, by address (``scheduler="tcp://host:8786"``), to scale out to a
  cluster; or an existing ``dask.distributed.Client``.

``fn`` and the tasks travel by cloudpickle, so closures (potentials built from lambdas, say) work;
results come back in task order. Each worker process imports JAX once and keeps its compiled
programs between tasks: give a worker several tasks of the same shape, not one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["run_independent", "local_cluster"]


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, **kwargs):
    """A ``LocalCluster`` of worker *processes* on 127.0.0.1 (no dashboard; memory limits off).
    Each worker runs one task at a time unless ``threads_per_worker`` > 1."""
    from distributed import LocalCluster

    opts = dict(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                host="127.0.0.1", dashboard_address=None, memory_limit=0)
    opts.update(kwargs)
    return LocalCluster(**opts)


def run_independent(fn: Callable[[Any], Any], tasks: Sequence[Any], *, scheduler=None,
                    n_workers: int = 2, threads_per_worker: int = 1,
                    timeout: float | None = None) -> list:
    """``[fn(t) for t in tasks]``, computed on a dask.distributed cluster.

    scheduler: None (a local cluster of ``n_workers`` processes for this call), an address
    string of a running scheduler, or a ``distributed.Client``. timeout: seconds to wait for all
    results (None: no limit). A task that raises re-raises here, naming its index."""
    from distributed import Client

    tasks = list(tasks)
    if not tasks:
        return []
    own_cluster = None
    if scheduler is None:
        own_cluster = local_cluster(n_workers, threads_per_worker)
        client = Client(own_cluster)
    elif isinstance(scheduler, str):
        client = Client(scheduler)
    else:
        client = scheduler
    try:
        futures = [client.submit(fn, t, pure=False, key=f"workbench-task-{i}-{id(tasks)}")
                   for i, t in enumerate(tasks)]
        out = []
        for i, fut in enumerate(futures):
            try:
                out.append(fut.result(timeout=timeout))
            except Exception as exc:  # noqa: BLE001 - re-raised with the task's index
                raise RuntimeError(f"independent task {i} failed: {exc!r}") from exc
        return out
    finally:
        if client is not scheduler:
            client.close()
        if own_cluster is not None:
            own_cluster.close()
