"""Independent runs on dask.distributed: umbrella windows on a LocalCluster of two worker
processes on 127.0.0.1 return exactly what the same tasks return in this process, in order;
a failing task is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.potentials.base import FunctionPotential
from workbench.sampling import cv
from workbench.sampling import distributed as dist
from workbench.sampling import umbrella as us

from test_metadynamics import BARRIER, KT, double_well


def _tasks():
    pot = FunctionPotential(double_well)
    return [dict(potential=pot, params={"h": jnp.asarray(BARRIER)}, cvs=(cv.Position(0, 0),),
                 center=[c], k=300.0, settings=dict(dt=0.01, kT=KT, gamma=5.0),
                 positions=np.array([[c, 0.0, 0.0]]), steps=2000, stride=10, seed=i)
            for i, c in enumerate(np.linspace(-1.2, 1.2, 4))]


def test_umbrella_windows_on_a_local_cluster_equal_local_runs():
    tasks = _tasks()
    remote = dist.run_independent(us.sample_window, tasks, n_workers=2, timeout=600)
    # the workers compute in JAX's default float32; the test session runs in float64
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        local = [us.sample_window(t) for t in tasks]
    finally:
        jax.config.update("jax_enable_x64", old)
    assert len(remote) == 4
    for r, here, t in zip(remote, local, tasks):
        assert r.shape == (200, 1)
        np.testing.assert_array_equal(r, here)
        assert abs(r.mean() - t["center"][0]) < 0.3  # each window stays near its centre


def test_a_failing_task_is_named():
    with pytest.raises(RuntimeError, match="task 1 failed"):
        dist.run_independent(_fails_by_value(), [0, 1], n_workers=1, timeout=300)
    assert dist.run_independent(abs, []) == []


def _fails_by_value():
    """A task function the workers can unpickle without importing this test module."""
    def fn(task):
        if task == 1:
            raise ValueError("bad window 1")
        return task
    return fn
