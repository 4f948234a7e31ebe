"""The live session: numeric changes at chunk boundaries without recompiling, run control,
blow-up reporting, reset, rebuild, export, observers. Headless; no widget library needed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import workbench as wb
from workbench.session import ChunkRecord, FrameBatch, Session
from workbench.session.params import describe as _describe
from workbench.session.params import with_values as _with_values
from workbench.simulate import BlowupError


def small_system():
    return wb.lj_fluid(108, density=0.8442, cutoff=2.0, skin=0.3, truncation="shift")


def make_session(**kw) -> Session:
    kw.setdefault("report_interval", 5)
    kw.setdefault("units", "reduced")
    return Session(small_system(), "langevin", {"dt": 0.004, "kT": 1.0, "gamma": 1.0}, seed=1, **kw)


@pytest.fixture(scope="module")
def session():
    """One compiled session shared by the tests below; each starts from reset()."""
    s = make_session()
    yield s
    s.stop()


@pytest.fixture
def fresh(session):
    session.reset()
    session.set_params(epsilon=1.0, sigma=1.0)
    session.set_settings(dt=0.004, kT=1.0, gamma=1.0)
    return session


def test_core_imports_no_widget_library():
    code = ("import sys, workbench, workbench.session, workbench.simulate; "
            "bad = [m for m in ('ipywidgets', 'nglview', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_run_blocking_records_every_chunk(fresh):
    thermo = fresh.run_blocking(4)
    assert fresh.status == "finished"
    assert fresh.chunks_done == 4 and fresh.frames_total == 4
    assert len(thermo["step"]) == 4 and list(thermo["step"]) == [5, 10, 15, 20]
    np.testing.assert_allclose(thermo["time"], thermo["step"] * 0.004)
    assert fresh.frames().shape == (4, 108, 3)
    records = fresh.records
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert records[0].first_step == 1 and records[-1].last_step == 20
    assert records[0].params == {"epsilon": 1.0, "sigma": 1.0}
    assert records[0].settings["kT"] == pytest.approx(1.0)


def test_set_params_applies_at_next_chunk_without_recompiling(fresh):
    fresh.run_blocking(2)  # compiled
    compiles = fresh.compile_count
    fresh.start(10_000)
    fresh.wait_frames(fresh.frames_total + 2)
    fresh.pause(wait=True)
    done = fresh.chunks_done
    fresh.set_params(epsilon=1.3)
    assert fresh.pending() == {"epsilon": pytest.approx(1.3)}
    assert fresh.records[-1].params["epsilon"] == 1.0  # not applied mid-run
    fresh.resume()
    fresh.wait_frames(fresh.frames_total + 2)
    fresh.stop()
    records = fresh.records
    assert all(r.params["epsilon"] == 1.0 for r in records[:done])
    assert records[done].params["epsilon"] == pytest.approx(1.3)  # the very next chunk
    assert all(r.params["epsilon"] == pytest.approx(1.3) for r in records[done:])
    assert fresh.pending() == {}
    assert fresh.compile_count == compiles
    assert all(r.compile_count == compiles for r in records)


def test_changes_while_running_reach_one_of_the_next_two_chunks(fresh):
    fresh.run_blocking(1)
    compiles = fresh.compile_count
    fresh.start(10_000)
    fresh.wait_frames(3)
    values = [0.9, 1.1, 1.2]
    for v in values:
        before = fresh.chunks_done
        fresh.set_params(epsilon=v)
        fresh.set_settings(kT=v)
        fresh.wait_frames(fresh.frames_total + 3)
        first = next(r for r in fresh.records if r.params["epsilon"] == pytest.approx(v))
        assert first.index <= before + 1  # the chunk running at the change, then this one
        assert first.settings["kT"] == pytest.approx(v)
    fresh.stop()
    assert fresh.status == "stopped"
    assert fresh.compile_count == compiles


def test_bad_values_raise_in_the_caller(fresh):
    with pytest.raises(KeyError, match="epsilonn"):
        fresh.set_params(epsilonn=1.0)
    with pytest.raises(ValueError, match="finite"):
        fresh.set_params(epsilon=float("nan"))
    with pytest.raises(ValueError, match="positive"):
        fresh.set_settings(dt=-0.001)
    with pytest.raises(TypeError, match="unknown settings"):
        fresh.set_settings(tau=1.0)
    assert fresh.pending() == {}


def test_pause_resume_stop_and_continue(fresh):
    fresh.start(10_000)
    fresh.wait_frames(2)
    fresh.pause(wait=True)
    assert fresh.status == "paused" and fresh.running
    n = fresh.frames_total
    assert not fresh.wait(timeout=0.5)  # a paused run does not end by itself
    assert fresh.frames_total == n
    fresh.resume()
    fresh.wait_frames(n + 2)
    fresh.stop()
    assert fresh.status == "stopped" and not fresh.running
    assert fresh.frames_total >= n + 2
    step = fresh.step
    fresh.run_blocking(2)  # start continues from where it stopped
    assert fresh.thermo()["step"][-1] == step + 10
    assert np.all(np.diff(fresh.thermo()["step"]) == 5)


def test_time_accumulates_each_chunks_dt(fresh):
    fresh.run_blocking(2)
    fresh.set_settings(dt=0.002)
    thermo = fresh.run_blocking(2)
    np.testing.assert_allclose(thermo["time"], [0.02, 0.04, 0.05, 0.06])


def test_blowup_is_reported_and_frames_so_far_are_kept(fresh):
    errors, statuses = [], []
    off_e = fresh.observe(errors.append, "error")
    off_s = fresh.observe(statuses.append, "status")
    try:
        fresh.run_blocking(3)
        kept = fresh.frames().copy()
        fresh.set_params(epsilon=1e9)
        with pytest.raises(BlowupError, match="blew up at step 16"):
            fresh.run_blocking(3)
    finally:
        off_e()
        off_s()
    assert fresh.status == "error" and statuses[-1] == "error"
    assert isinstance(errors[0], BlowupError) and errors[0].step == 16
    assert "blew up" in fresh.error_message and "Traceback" not in fresh.error_message
    assert fresh.frames_total == 3
    np.testing.assert_array_equal(fresh.frames(), kept)
    # back to sane values: start clears the error and continues
    fresh.set_params(epsilon=1.0)
    fresh.reset()
    fresh.run_blocking(1)
    assert fresh.status == "finished" and fresh.error is None


def test_overlapping_atoms_blow_up_with_the_atoms_named():
    system = small_system()
    positions = np.array(system.positions)
    positions[1] = positions[0] + 1e-3  # nearly on top: huge forces
    with pytest.raises(BlowupError) as info:  # at the start structure, or in the first chunk
        s = Session(system, "verlet", {"dt": 0.004}, positions=positions, report_interval=5)
        s.run_blocking(2)
    assert {0, 1} <= set(info.value.atoms)
    assert "overlapping atoms" in str(info.value)


def test_reset_gives_the_same_trajectory_without_recompiling(fresh):
    fresh.run_blocking(3)
    first = fresh.frames().copy()
    compiles = fresh.compile_count
    fresh.reset()
    assert fresh.status == "idle" and fresh.frames_total == 0 and fresh.step == 0
    assert fresh.records == []
    fresh.run_blocking(3)
    np.testing.assert_array_equal(fresh.frames(), first)  # seeded: same noise, same path
    assert fresh.compile_count == compiles


def test_observers_get_frames_and_can_be_removed(fresh):
    batches = []

    def broken(_):
        raise RuntimeError("an observer bug must not stop the run")

    off = fresh.observe(batches.append, "frames")
    off_broken = fresh.observe(broken, "frames")
    fresh.run_blocking(2)
    off()
    off_broken()
    fresh.run_blocking(1)
    assert len(batches) == 2
    assert isinstance(batches[0], FrameBatch) and isinstance(batches[0].record, ChunkRecord)
    assert batches[1].first_frame == 1 and batches[1].positions.shape == (1, 108, 3)
    with pytest.raises(ValueError, match="unknown event"):
        fresh.observe(print, "nope")


def test_max_frames_keeps_the_newest(fresh):
    s = make_session(max_frames=3)
    s.run_blocking(5)
    assert s.n_frames == 3 and s.frames_total == 5
    assert len(s.thermo()["step"]) == 5
    np.testing.assert_array_equal(s.frame(-1), s.frames()[-1])


def test_rebuild_changes_structure_and_compiles_visibly():
    s = make_session()
    s.run_blocking(1)
    assert s.compile_count == 1
    statuses = []
    s.observe(statuses.append, "status")
    s.set_params(epsilon=1.1)
    s.rebuild(wb.lj_fluid(256, cutoff=2.5, skin=0.3))
    assert "rebuilt" in statuses
    assert s.n_atoms == 256 and s.frames_total == 0 and s.status == "idle"
    assert s.param_values()["epsilon"] == 1.0  # a new system brings its own parameters
    s.run_blocking(1)
    assert s.compile_count == 2
    s.set_params(epsilon=1.2)
    s.rebuild(integrator="verlet", settings={"dt": 0.003})  # same system: values carry over
    assert s.simulation.integrator.name == "velocity_verlet"
    assert s.param_values()["epsilon"] == pytest.approx(1.2)
    assert [p.name for p in s.param_specs()] == ["epsilon", "sigma", "dt"]
    s.run_blocking(1)
    assert s.compile_count == 3


def test_export_writes_readable_files(fresh, tmp_path):
    md = pytest.importorskip("mdtraj")
    fresh.run_blocking(4)
    h5, csv = fresh.export(tmp_path / "run.h5")
    traj = md.load(h5)
    assert traj.n_frames == 4 and traj.n_atoms == 108
    np.testing.assert_allclose(traj.xyz, fresh.frames(), atol=1e-5)
    assert traj.unitcell_vectors is not None
    dcd, _ = fresh.export(str(tmp_path / "run.dcd"), log=None)
    traj2 = md.load(dcd, top=str(tmp_path / "run.pdb"))
    np.testing.assert_allclose(traj2.xyz, fresh.frames(), atol=1e-4)
    rows = np.genfromtxt(csv, delimiter=",", names=True)
    assert len(rows) == 4
    np.testing.assert_allclose(rows["step"], [5, 10, 15, 20])
    with pytest.raises(ValueError, match="format"):
        fresh.export(tmp_path / "run.xyz")


def test_export_before_running_says_so():
    s = make_session()
    with pytest.raises(ValueError, match="nothing to export"):
        s.export("never.h5")


def test_param_names_for_per_type_arrays():
    params = {"epsilon": np.array([1.0, 2.0]), "sigma": np.array([1.0])}
    leaves = _describe(params)
    names = [n for leaf in leaves for n in leaf.names]
    assert names == ["epsilon[0]", "epsilon[1]", "sigma"]
    new = _with_values(leaves, params, {"epsilon[1]": 3.0, "sigma": 0.9})
    np.testing.assert_allclose(new["epsilon"], [1.0, 3.0])
    np.testing.assert_allclose(new["sigma"], [0.9])
    both = _with_values(leaves, params, {"epsilon": 0.5})
    np.testing.assert_allclose(both["epsilon"], [0.5, 0.5])
    assert new["epsilon"].dtype == np.asarray(params["epsilon"]).dtype


def test_settings_are_required_and_units_checked():
    with pytest.raises(TypeError, match="settings are required"):
        Session(small_system(), "langevin")
    with pytest.raises(ValueError, match="units"):
        Session(small_system(), "verlet", {"dt": 0.004}, units="imperial")
