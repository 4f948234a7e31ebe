"""The host-side driver: trajectory and log files (read back with mdtraj and csv), interruption
and blow-up handling, neighbor-list overflow recovery without lost steps, checkpoints, the
no-recompile contract of set_params, input errors and the float32 default path.
Reduced Lennard-Jones units; float64 unless stated."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace

import jax.numpy as jnp
import mdtraj as md
import numpy as np
import pytest

import workbench as wb
from workbench import neighbors as nl
from workbench import space as spaces
from workbench.potentials import FunctionPotential, PairPotential, Sum
from workbench.simulate import LOG_COLUMNS, BlowupError, Simulation

REPORT, FPC = 10, 4  # report interval and frames per chunk: 40 steps per chunk


@pytest.fixture(scope="module")
def fluid():
    """256-atom LJ fluid, density 0.8442 (box 6.35), rc 2.5, skin 0.3."""
    return wb.lj_fluid(n_atoms=256, density=0.8442)


def make_sim(system, integrator="langevin", seed=0, **kw):
    settings = {
        "langevin": {"dt": 0.005, "kT": 1.0, "gamma": 1.0},
        "nose_hoover_chain": {"dt": 0.005, "kT": 1.0, "tau": 0.5},
        "velocity_verlet": {"dt": 0.005},
    }[integrator]
    kw.setdefault("report_interval", REPORT)
    kw.setdefault("frames_per_chunk", FPC)
    return Simulation(
        system.potential,
        system.params,
        integrator,
        settings,
        system.positions,
        masses=system.masses,
        seed=seed,
        topology=system.mdtraj_topology(),
        **kw,
    )


class Collector:
    """Reporter that keeps every frame it is given."""

    def __init__(self):
        self.positions, self.steps = [], []

    def __call__(self, frame):
        self.positions.append(np.array(frame.positions))
        self.steps.append(np.array(frame.thermo["step"]))

    @property
    def all_positions(self):
        return np.concatenate(self.positions) if self.positions else np.zeros((0, 0, 3))


def load(path):
    if path.endswith(".dcd"):
        return md.load(path, top=path[:-4] + ".pdb")
    return md.load(path)


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("ext", [".dcd", ".h5"])
def test_trajectory_files_hold_the_reported_frames(fluid, tmp_path, ext):
    sim = make_sim(fluid)
    got = Collector()
    path = str(tmp_path / f"traj{ext}")
    sim.run(160, trajectory=path, progress=False, reporters=[got])
    traj = load(path)
    assert traj.n_frames == 16 and traj.n_atoms == 256
    np.testing.assert_allclose(traj.xyz, got.all_positions, rtol=0, atol=2e-5)
    box = (256 / 0.8442) ** (1 / 3)
    np.testing.assert_allclose(traj.unitcell_lengths, np.full((16, 3), box), rtol=1e-5)
    np.testing.assert_allclose(traj.unitcell_angles, 90.0)
    if ext == ".dcd":
        assert os.path.exists(str(tmp_path / "traj.pdb"))
        pdb = md.load(str(tmp_path / "traj.pdb"))
        np.testing.assert_allclose(
            pdb.xyz[0], got.all_positions[0], atol=2e-3
        )  # PDB: 3 decimals in A
    else:
        np.testing.assert_allclose(traj.time, 0.005 * REPORT * np.arange(1, 17), rtol=1e-6)
    # The last frame is the simulation's current state.
    np.testing.assert_allclose(got.all_positions[-1], np.asarray(sim.state.positions))


def test_thermo_log_rows(fluid, tmp_path):
    sim = make_sim(fluid)
    got = Collector()
    log = str(tmp_path / "thermo.csv")
    out = sim.run(120, log=log, progress=False, reporters=[got])
    with open(log, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == LOG_COLUMNS
    assert len(rows) == 1 + 12
    table = np.array(rows[1:], dtype=float)
    assert set(out) == set(LOG_COLUMNS)
    for j, c in enumerate(LOG_COLUMNS):
        assert out[c].shape == (12,)
        np.testing.assert_allclose(table[:, j], out[c], rtol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(out["step"], REPORT * np.arange(1, 13))
    np.testing.assert_allclose(out["time"], 0.005 * out["step"])
    np.testing.assert_allclose(out["total"], out["potential"] + out["kinetic"], rtol=1e-12)
    np.testing.assert_allclose(out["kT"], 2 * out["kinetic"] / (3 * 256), rtol=1e-12)
    assert np.all(np.isnan(out["conserved"]))  # Langevin conserves nothing
    # The logged potential is the energy of the written frame (independent evaluation).
    pot = fluid.potential
    for k in (0, 11):
        r = got.all_positions[k]
        e = float(pot.energy(jnp.asarray(r), fluid.params, pot.allocate(r)))
        assert out["potential"][k] == pytest.approx(e, rel=1e-10)
    # Pressure: (2 KE + tr W) / 3V at the last frame, from the current state.
    st = sim.state
    w = pot.virial(st.positions, fluid.params, st.aux)
    p = (2 * out["kinetic"][-1] + float(jnp.trace(w))) / (3 * float(fluid.space.volume))
    assert out["pressure"][-1] == pytest.approx(p, rel=1e-10)


def test_interrupt_keeps_every_written_frame(fluid, tmp_path):
    """A reporter raising mid-run (as Ctrl-C would) leaves all frames so far in every file."""
    sim = make_sim(fluid)
    got = Collector()

    def interrupt(frame):
        if len(got.positions) == 3:
            raise KeyboardInterrupt

    paths = {ext: str(tmp_path / f"t{ext}") for ext in (".dcd", ".h5")}
    log = str(tmp_path / "t.csv")
    for path in paths.values():
        got.positions.clear()
        sim = make_sim(fluid)
        with pytest.raises(KeyboardInterrupt):
            sim.run(400, trajectory=path, log=log, progress=False, reporters=[got, interrupt])
        traj = load(path)
        assert traj.n_frames == 3 * FPC
        np.testing.assert_allclose(traj.xyz, got.all_positions, atol=2e-5)
        with open(log, newline="") as fh:
            assert len(list(csv.reader(fh))) == 1 + 3 * FPC


# ----------------------------------------------------------------------------- blow-ups
@pytest.mark.parametrize("distance", [0.1, 0.01])
def test_blowup_from_overlapping_start_names_the_atoms(fluid, tmp_path, distance):
    """Atoms 3 and 7 start ``distance`` apart: the run must stop with a BlowupError at the start
    (step <= 1) that names atoms 3 and 7, in its message and in ``.atoms``."""
    positions = fluid.positions.copy()
    positions[7] = positions[3] + np.array([distance, 0.0, 0.0])
    system = replace(fluid, positions=positions)
    path = str(tmp_path / "b.dcd")
    with pytest.raises(BlowupError) as info:
        sim = make_sim(system, "velocity_verlet")
        sim.run(200, trajectory=path, progress=False)
    e = info.value
    print(f"distance {distance}: {e}")
    assert e.step <= 1
    assert 3 in e.atoms and 7 in e.atoms
    assert f"step {e.step}" in str(e)
    assert "3" in str(e) and "7" in str(e)


def test_blowup_mid_run_keeps_frames_before_it(fluid, tmp_path):
    """After two good chunks a reporter sets dt = 0.5 (a "huge time step"): BlowupError names the
    first bad step (inside the third chunk) and atoms; every frame before it is in the file;
    the state stays at the last good chunk."""
    sim = make_sim(fluid)
    got = Collector()

    def kick(frame):
        if len(got.positions) == 2:
            sim.set_settings(dt=0.5)

    path = str(tmp_path / "b.h5")
    with pytest.raises(BlowupError) as info:
        sim.run(400, trajectory=path, progress=False, reporters=[got, kick])
    e = info.value
    print(e)
    chunk = REPORT * FPC
    assert 2 * chunk < e.step <= 3 * chunk
    assert f"step {e.step}" in str(e)
    assert len(e.atoms) > 0 and all(0 <= a < 256 for a in e.atoms)
    assert str(e.atoms[:20])[1:-1] in str(e)
    steps = np.concatenate(got.steps)
    assert np.all(steps < e.step)
    assert len(steps) == 2 * FPC + (e.step - 1 - 2 * chunk) // REPORT
    traj = load(path)
    assert traj.n_frames == len(steps)
    np.testing.assert_allclose(traj.xyz, got.all_positions, atol=2e-5)
    assert int(sim.state.step) == 2 * chunk
    assert np.all(np.isfinite(np.asarray(sim.state.positions)))


# ----------------------------------------------------------------------------- overflow
def trapped_cluster():
    """108 LJ atoms on an open fcc lattice (lattice constant 3, 12 neighbors within rc + skin)
    in a 12^3 box, pulled into a dense droplet by a harmonic trap at the box centre."""
    L = 12.0
    space = spaces.periodic(L)
    pair = PairPotential("lennard_jones", space, 2.5, truncation="force_shift", skin=0.3)
    centre = jnp.full((1, 3), L / 2)
    trap = FunctionPotential(lambda r, p: 0.5 * p["k"] * jnp.sum((r - centre) ** 2))
    potential = Sum({"lj": pair, "trap": trap})
    params = {"lj": pair.init_params(), "trap": {"k": jnp.asarray(5.0)}}
    start = wb.fcc_lattice(3, 3.0) + 3.0
    return potential, params, start, space


def make_trapped_sim(potential, params, start):
    return Simulation(
        potential,
        params,
        "brownian",
        {"dt": 0.002, "kT": 1.0, "gamma": 10.0},
        start,
        seed=3,
        report_interval=50,
        frames_per_chunk=2,
    )


@pytest.mark.slow
def test_neighbor_overflow_recovery_loses_no_step(tmp_path):
    """Compression overflows the list several times; the driver regrows it and recomputes the
    chunk, so the trajectory equals a run that had a big enough list from the start. A checkpoint
    written after regrowth restores the grown list into a fresh (small-capacity) simulation."""
    potential, params, start, space = trapped_cluster()
    sim = make_trapped_sim(potential, params, start)
    k0 = sim.state.aux.capacity
    r0 = np.linalg.norm(start - 6.0, axis=1).max()
    got = Collector()
    out = sim.run(400, progress=False, reporters=[got])
    grown = sim.state.aux
    pos = got.all_positions
    radius = np.linalg.norm(pos[-1] - 6.0, axis=1).max()
    print(
        f"regrowths {sim.regrowths}, capacity {k0} -> {grown.capacity}, cell capacity "
        f"{grown.cell_capacity}, max count {int(grown.max_count)}, radius {r0:.2f} -> "
        f"{radius:.2f}"
    )
    assert sim.regrowths > 0
    assert int(grown.max_count) > k0 and grown.capacity >= int(grown.max_count)
    assert not bool(grown.overflow)
    assert radius < r0 - 1.0

    big = nl.allocate(space, pos[-1], 2.5, 0.3, capacity_factor=1.5)
    big = nl.rebuild(space, jnp.asarray(start), big)
    ref = make_trapped_sim(potential, params, start)
    ref.state = replace(ref.state, aux=big)  # one list shared by the terms
    ref_got = Collector()
    ref_out = ref.run(400, progress=False, reporters=[ref_got])
    assert ref.regrowths == 0
    np.testing.assert_allclose(pos, ref_got.all_positions, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["potential"], ref_out["potential"], rtol=1e-9)

    ckpt = str(tmp_path / "grown.npz")
    sim.save_checkpoint(ckpt)
    fresh = make_trapped_sim(potential, params, start)
    fresh.load_checkpoint(ckpt)
    assert fresh.state.aux.capacity == grown.capacity
    assert fresh.state.aux.cell_capacity == grown.cell_capacity
    a, b = Collector(), Collector()
    sim.run(100, progress=False, reporters=[a])
    fresh.run(100, progress=False, reporters=[b])
    np.testing.assert_array_equal(a.all_positions, b.all_positions)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("integrator", ["langevin", "nose_hoover_chain"])
def test_checkpoint_resume_equals_uninterrupted_run(fluid, tmp_path, integrator):
    full = make_sim(fluid, integrator, seed=4)
    whole, whole_out = Collector(), None
    whole_out = full.run(240, progress=False, reporters=[whole])

    first = make_sim(fluid, integrator, seed=4)
    ckpt = str(tmp_path / "state.npz")
    first.run(120, progress=False, checkpoint=ckpt, checkpoint_every=1)
    resumed = make_sim(fluid, integrator, seed=99)  # different seed: the checkpoint decides
    resumed.load_checkpoint(ckpt)
    assert int(resumed.state.step) == 120
    rest = Collector()
    rest_out = resumed.run(120, progress=False, reporters=[rest])
    np.testing.assert_array_equal(rest.all_positions, whole.all_positions[12:])
    for k in ("potential", "kinetic", "conserved", "step"):
        np.testing.assert_array_equal(rest_out[k], whole_out[k][12:])

    other = make_sim(fluid, "velocity_verlet" if integrator == "langevin" else "langevin")
    with pytest.raises(ValueError, match="checkpoint"):
        other.load_checkpoint(ckpt)


# ----------------------------------------------------------------------------- knobs
def test_set_params_and_settings_do_not_recompile(fluid):
    sim = make_sim(fluid)
    sim.advance()
    count = sim.compile_count
    assert count >= 1
    pot = fluid.potential
    for eps in (0.8, 1.1, 1.4):
        sim.set_params(pot.init_params(epsilon=eps))
        frame = sim.advance()
        r = frame.positions[-1]
        ref = float(pot.energy(jnp.asarray(r), pot.init_params(epsilon=eps), pot.allocate(r)))
        assert frame.thermo["potential"][-1] == pytest.approx(ref, rel=1e-10)
    # Arrays of another type or dtype are cast to the stored dtype and shape: no recompile.
    sim.set_params({"sigma": np.array([1.0]), "epsilon": np.array([1.2], dtype=np.float32)})
    sim.advance()
    for kT in (0.9, 1.3):
        sim.set_settings(kT=kT)
        sim.advance()
    assert sim.compile_count == count
    assert float(sim.settings.kT) == 1.3 and float(sim.settings.gamma) == 1.0
    with pytest.raises(ValueError, match="shape"):
        sim.set_params(pot.init_params(epsilon=1.0) | {"epsilon": jnp.ones(2)})
    with pytest.raises(ValueError, match="structure"):
        sim.set_params({"epsilon": jnp.ones(1)})
    with pytest.raises(TypeError, match="unknown settings"):
        sim.set_settings(temperature=1.0)


def test_same_seed_same_run_different_seed_differs(fluid):
    a = make_sim(fluid, seed=5).run(80, progress=False)
    b = make_sim(fluid, seed=5).run(80, progress=False)
    c = make_sim(fluid, seed=6).run(80, progress=False)
    np.testing.assert_array_equal(a["potential"], b["potential"])
    assert np.abs(a["potential"] - c["potential"]).max() > 1e-6


def test_bad_run_arguments_raise(fluid):
    sim = make_sim(fluid)
    with pytest.raises(ValueError, match=r"n_steps must be a non-negative integer"):
        sim.run(-5, progress=False)
    with pytest.raises(ValueError, match=r"n_steps must be a non-negative integer"):
        sim.run(12.5, progress=False)
    with pytest.raises(ValueError, match="unknown integrator"):
        Simulation(fluid.potential, fluid.params, "leapfrog", {"dt": 0.005}, fluid.positions)
    with pytest.raises(TypeError, match="missing"):
        Simulation(fluid.potential, fluid.params, "langevin", {"dt": 0.005}, fluid.positions)
    with pytest.raises(ValueError, match="masses"):
        Simulation(
            fluid.potential, fluid.params, "verlet", {"dt": 0.005}, fluid.positions, masses=-1.0
        )
    with pytest.raises(ValueError, match="report_interval"):
        make_sim(fluid, report_interval=0)


FLOAT32_SCRIPT = r"""
import json
import jax
import numpy as np
import workbench as wb
from workbench.simulate import Simulation

assert not jax.config.jax_enable_x64
s = wb.lj_fluid(n_atoms=256, density=0.8442)
frames = []
sim = Simulation(s.potential, s.params, "langevin", dict(dt=0.005, kT=1.0, gamma=1.0),
                 s.positions, report_interval=10, frames_per_chunk=2)
out = sim.run(40, progress=False, reporters=[frames.append])
st = sim.state
print(json.dumps({
    "positions": str(st.positions.dtype), "velocities": str(st.velocities.dtype),
    "forces": str(st.forces.dtype), "energy": str(st.potential_energy.dtype),
    "masses": str(st.masses.dtype), "dt": str(sim.settings.dt.dtype),
    "epsilon": str(s.params["epsilon"].dtype), "frame": str(frames[0].positions.dtype),
    "thermo": sorted({str(v.dtype) for k, v in frames[0].thermo.items()
                      if k not in ("step", "time")}),
    "finite": bool(np.all(np.isfinite(out["potential"]))), "n": len(out["step"]),
    "temperature": float(out["kT"][-1]),
}))
"""


def test_float32_default_path():
    """Without x64 (the package default) a simulation runs entirely in float32."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", FLOAT32_SCRIPT],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in ("positions", "velocities", "forces", "energy", "masses", "dt", "epsilon", "frame"):
        assert info[k] == "float32", (k, info[k])
    assert info["thermo"] == ["float32"]
    assert info["finite"] and info["n"] == 4
    assert 0.3 < info["temperature"] < 3.0
