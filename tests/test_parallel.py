"""Block loops split over CPU devices (workbench.parallel) give the same numbers as one device."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import neighbors as nl
from workbench import parallel

MESH = parallel.default_mesh()
needs_devices = pytest.mark.skipif(MESH is None, reason="only one CPU device")


def test_import_configures_devices_only_when_asked():
    """``import workbench`` leaves JAX alone unless WORKBENCH_CPU_DEVICES asks for devices
    ("auto": one per usable core; a number: that many); a bad value is a clear error."""
    code = "import workbench, jax; print(len(jax.devices()))"
    plain = {k: v for k, v in os.environ.items() if k != "WORKBENCH_CPU_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], env=plain, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    auto = dict(plain, WORKBENCH_CPU_DEVICES="auto")
    out = subprocess.run([sys.executable, "-c", code], env=auto, capture_output=True, text=True)
    assert out.stdout.strip() == str(min(parallel._usable_cores(), parallel.MAX_DEVICES))
    env = dict(os.environ, WORKBENCH_CPU_DEVICES="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
    env["WORKBENCH_CPU_DEVICES"] = "two"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "WORKBENCH_CPU_DEVICES must be 'auto' or a positive integer" in out.stderr
    # JAX already running: configure() leaves it alone
    code = "import jax; jax.numpy.ones(1); import workbench; print(len(jax.devices()))"
    env["WORKBENCH_CPU_DEVICES"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


@needs_devices
def test_block_map_matches_lax_map():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64,)))

    def fn(shared, b):
        (v,) = shared
        block = jax.lax.dynamic_slice_in_dim(v, b * 8, 8)
        return jnp.sin(block) * b, jnp.sum(block)

    ref = jax.lax.map(lambda b: fn((x,), b), jnp.arange(8))
    with parallel.use(MESH):
        got = jax.jit(lambda v: parallel.block_map(fn, (v,), jnp.arange(8)))(x)
        odd = jax.jit(lambda v: parallel.block_map(fn, (v,), jnp.arange(7)))(x)  # one device
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(odd[0]), np.asarray(ref[0][:7]))


@needs_devices
def test_pair_forces_and_build_on_devices_equal_one_device():
    system = wb.lj_fluid(864, 0.8442, cutoff=2.5, skin=0.3, truncation="force_shift")
    pot, params = system.potential, system.params
    rng = np.random.default_rng(1)
    r = jnp.asarray(system.positions + rng.normal(scale=0.05, size=system.positions.shape))
    for method in ("cells", "all_pairs"):  # both compiled builds
        aux = nl.allocate(pot.space, r, 2.5, 0.3, method=method)
        assert (aux.grid is not None) == (method == "cells")
        assert aux.idx.shape[0] % (nl.BLOCK * MESH.size) == 0
        ref_ev, _ = jax.jit(pot.evaluate)(r, params, aux)
        ref_list = jax.jit(nl.rebuild)(pot.space, r, aux)
        with parallel.use(MESH):
            ev, _ = jax.jit(pot.evaluate)(r, params, aux)
            f, _ = jax.jit(pot.forces)(r, params, aux)
            built = jax.jit(nl.rebuild)(pot.space, r, aux)
        np.testing.assert_allclose(float(ev.energy), float(ref_ev.energy), rtol=1e-12)
        # same sums per atom; the two programs may round differently in the last bit
        np.testing.assert_allclose(np.asarray(ev.forces), np.asarray(ref_ev.forces), atol=1e-12)
        np.testing.assert_allclose(np.asarray(f), np.asarray(ref_ev.forces), atol=1e-12)
        np.testing.assert_array_equal(np.asarray(built.idx), np.asarray(ref_list.idx))


@needs_devices
def test_simulation_on_devices_equals_one_device():
    """The driver splits its blocks over the devices; switching that off (mesh None) gives the
    same trajectory, and the energies filled in at the frames equal a fresh evaluation."""
    system = wb.lj_fluid(500, 0.8442, cutoff=2.5, skin=0.3, truncation="force_shift")

    def run(mesh):
        sim = wb.Simulation(system.potential, system.params, "langevin",
                            dict(dt=0.005, kT=1.2, gamma=1.0), system.positions,
                            masses=system.masses, seed=3, report_interval=20)
        assert sim.mesh is MESH
        sim.mesh = mesh
        frames = [sim.advance() for _ in range(3)]
        return sim, frames

    sim_d, frames_d = run(MESH)
    sim_1, frames_1 = run(None)
    for a, b in zip(frames_d, frames_1):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-9)
        np.testing.assert_allclose(a.thermo["potential"], b.thermo["potential"], rtol=1e-10)
    pot = system.potential
    ev, _ = jax.jit(pot.evaluate)(sim_d.state.positions, system.params, sim_d.state.aux)
    np.testing.assert_allclose(float(sim_d.state.potential_energy), float(ev.energy), rtol=1e-10)
    assert np.isfinite(frames_d[-1].thermo["total"]).all()

