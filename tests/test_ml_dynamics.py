"""The trained ethanol model (data/ml/ethanol-painn.npz, made by tools/train_ml_models.py from
PBE/def2-SVP data) in use: NVE conserves energy, long Langevin runs stay intact, and the
samplers and gradients take it like any other system."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import Simulation, data_file
from workbench.ml import Model
from workbench.ml.data import load
from workbench.units import BOLTZMANN

jax.config.update("jax_enable_x64", True)

KT = BOLTZMANN * 300.0
BONDS = [(0, 1), (1, 2), (0, 3), (0, 4), (0, 5), (5, 6), (5, 7), (5, 8)]  # ethanol's, by index


@pytest.fixture(scope="module")
def ethanol():
    model = Model.load(data_file("ml/ethanol-painn.npz")).astype(jnp.float64)
    data = load(data_file("ml/ethanol.npz"))
    return model.system(data.atomic_numbers, data.positions[0], name="ethanol"), data


def test_nve_with_half_femtosecond_steps_conserves_energy(ethanol):
    system, _ = ethanol
    warm = Simulation(system, "langevin", dict(dt=0.0005, kT=KT, gamma=5.0), seed=0,
                      report_interval=500, frames_per_chunk=4)
    warm.run(2000, progress=False)  # 1 ps at 300 K first
    sim = Simulation(system, "velocity_verlet", dict(dt=0.0005),
                     positions=np.asarray(warm.state.positions),
                     velocities=np.asarray(warm.state.velocities), report_interval=200,
                     frames_per_chunk=50)
    log = sim.run(40_000, progress=False)  # 20 ps
    t, e = log["time"], log["total"]
    slope = np.polyfit(t - t[0], e, 1)[0]
    assert abs(slope) < 0.01 * KT, f"drift {slope / KT:.4f} kT/ps"
    assert np.std(e) < 0.5 * KT


@pytest.mark.slow
def test_hundred_picoseconds_of_langevin_at_300_K_keep_the_molecule_intact(ethanol):
    """100 ps with 1 fs steps (no constraints: the O-H stretch has a 9 fs period)."""
    system, _ = ethanol
    sim = Simulation(system, "langevin", dict(dt=0.001, kT=KT, gamma=1.0), seed=3,
                     report_interval=500, frames_per_chunk=20)
    frames = []
    sim.run(100_000, progress=False, reporters=[lambda chunk: frames.append(chunk.positions)])
    r = np.concatenate(frames)
    assert len(r) == 200
    lengths = np.stack([np.linalg.norm(r[:, i] - r[:, j], axis=-1) for i, j in BONDS])
    assert lengths.max() < 0.2 and lengths.min() > 0.08  # nm: every bond intact
    temperature = np.mean(sim.run(10_000, progress=False)["temperature"])
    assert 250 < temperature < 350


def test_metadynamics_and_implicit_gradients_take_the_model(ethanol):
    from workbench.gradients import gradient
    from workbench.sampling import cv
    from workbench.sampling.metadynamics import metadynamics

    system, _ = ethanol
    torsion = cv.Dihedral(5, 0, 1, 2)  # C-C-O-H
    meta = metadynamics(system, torsion, sigma=0.3, height=1.0, pace=50)
    sim = Simulation(system, meta, dict(dt=0.0005, kT=KT, gamma=1.0), seed=0,
                     report_interval=50, frames_per_chunk=4)
    log = sim.run(400, progress=False)
    assert np.all(np.isfinite(log["potential"]))
    # the O-H bond length of the minimum, differentiated through the minimizer with respect to
    # the network's weights, against a central difference along the gradient's direction
    def oh(r, params, aux=None, box=None):
        return jnp.linalg.norm(r[2] - r[1])

    from workbench.gradients.implicit import minimizer

    g = gradient(oh, system, "implicit")
    gw, w = g.gradient["weights"], system.params["weights"]
    name = max(gw, key=lambda n: float(jnp.sum(jnp.abs(gw[n]))))
    d = gw[name] / jnp.linalg.norm(gw[name])
    solve = jax.jit(minimizer(system.potential))
    x0, aux = jnp.asarray(system.positions), system.potential.allocate(system.positions)

    def value(s):
        p = dict(system.params, weights=dict(w, **{name: w[name] + s * d}))
        return float(oh(solve(x0, p, aux, None)[0], p))

    h = 1e-4
    fd = (value(h) - value(-h)) / (2 * h)
    assert float(jnp.sum(gw[name] * d)) == pytest.approx(fd, rel=1e-3, abs=1e-8)


def test_a_session_runs_the_model_and_names_its_parameters(ethanol):
    from workbench.session import Session

    system, _ = ethanol
    session = Session(system, "langevin", dict(dt=0.0005, kT=KT, gamma=1.0), seed=0,
                      report_interval=20, frames_per_chunk=2)
    try:
        session.start(2)
        assert session.wait(timeout=300)
        assert session.frames().shape[1:] == (9, 3)
        specs = {s.name: s for s in session.param_specs()}
        assert specs["shift[0]"].unit == "kJ/mol"
        assert any(name.startswith("weights.") for name in specs)
    finally:
        session.stop()
