"""Widget panels without a browser: set a widget value or click a button, assert the session
and the widget models. (What only a browser can show is in test_browser.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="the lab extra is not installed")
pytest.importorskip("nglview", reason="the lab extra is not installed")
pytest.importorskip("matplotlib", reason="the lab extra is not installed")

import workbench as wb
from workbench.panels import ParameterPanel, SimulationPanel, Workbench
from workbench.panels.parameters import default_range
from workbench.session import Session


def make_session(**kw) -> Session:
    system = wb.lj_fluid(108, density=0.8442, cutoff=2.0, skin=0.3, truncation="shift")
    kw.setdefault("report_interval", 5)
    return Session(system, "langevin", {"dt": 0.004, "kT": 1.0, "gamma": 1.0}, seed=2,
                   units="reduced", **kw)


@pytest.fixture(scope="module")
def bench():
    """One session and its Workbench, shared (the chunk compiles once); reset per test."""
    w = Workbench(make_session())
    yield w
    w.session.stop()
    w.close()


@pytest.fixture
def wbv(bench):
    s = bench.session
    s.reset()
    s.set_params(epsilon=1.0, sigma=1.0)
    s.set_settings(dt=0.004, kT=1.0, gamma=1.0)
    bench.refresh()
    return bench


def test_sliders_come_from_the_parameter_pytree(wbv):
    sliders = wbv.parameters.sliders
    assert list(sliders) == ["epsilon", "sigma", "dt", "kT", "gamma"]
    eps = sliders["epsilon"]
    assert eps.value == 1.0 and eps.min < 1.0 < eps.max
    # the start value sits on the slider's step grid (a browser would snap it otherwise)
    for s in sliders.values():
        k = (s.value - s.min) / s.step
        assert abs(k - round(k)) < 1e-6
    units = [row.children[1].value for row in wbv.parameters.slider_box.children]
    assert units == ["<small>ε</small>", "<small>σ</small>", "<small>τ</small>",
                     "<small>ε</small>", "<small>1/τ</small>"]


def test_slider_change_reaches_the_next_chunk_without_recompiling(wbv):
    s = wbv.session
    s.run_blocking(2)
    compiles = s.compile_count
    s.start(10_000)
    s.wait_frames(s.frames_total + 2)
    s.pause(wait=True)
    done = s.chunks_done
    wbv.parameters.set_value("epsilon", 1.25)  # as a user moving the slider
    wbv.parameters.sliders["kT"].value = 1.5
    assert s.pending() == {"epsilon": pytest.approx(1.25), "kT": pytest.approx(1.5)}
    wbv.parameters.refresh()
    assert "epsilon=1.25" in wbv.parameters.pending.value
    s.resume()
    s.wait_frames(s.frames_total + 2)
    s.stop()
    record = s.records[done]
    assert record.params["epsilon"] == pytest.approx(1.25)
    assert record.settings["kT"] == pytest.approx(1.5)
    assert s.records[done - 1].params["epsilon"] == 1.0
    assert s.compile_count == compiles
    wbv.refresh()
    assert "epsilon=1.25" in wbv.parameters.applied.value
    assert f"compiles: {compiles}" in wbv.parameters.compiles.value
    assert wbv.parameters.pending.value == ""


def test_sliders_follow_changes_made_from_code(wbv):
    wbv.session.set_params(epsilon=1.7)
    wbv.session.set_settings(dt=0.005)
    wbv.parameters.refresh()
    assert wbv.parameters.sliders["epsilon"].value == pytest.approx(1.7)
    assert wbv.parameters.sliders["dt"].value == pytest.approx(0.005)


def test_buttons_start_pause_resume_stop_reset(wbv):
    s, c = wbv.session, wbv.simulation.controls
    c.chunks_per_start = 10_000
    c.start_button.click()
    assert s.status == "running"
    s.wait_frames(2)
    c.pause_button.click()
    s.pause(wait=True)
    c.refresh()
    assert s.status == "paused" and c.start_button.description == "Resume"
    assert not c.start_button.disabled and c.pause_button.disabled
    n = s.frames_total
    c.start_button.click()  # resume
    s.wait_frames(n + 1)
    assert s.frames_total > n
    c.stop_button.click()
    s.wait()
    wbv.refresh()
    assert s.status == "stopped" and "stopped" in c.status.value
    assert c.stop_button.disabled
    c.reset_button.click()
    assert s.status == "idle" and s.frames_total == 0


def test_view_is_updated_in_place_and_plots_are_drawn(wbv):
    s, p = wbv.session, wbv.simulation
    loads = sum(m["methodName"] == "loadFile" for m in p.view._ngl_msg_archive)
    before = p.view_updates
    s.run_blocking(6)
    p.refresh()
    assert p.view_updates > before
    expected = s.wrapped(s.frame(-1)) * 10.0  # angstrom
    np.testing.assert_allclose(p.view._coordinates_dict[0], expected, rtol=1e-5)
    assert sum(m["methodName"] == "loadFile" for m in p.view._ngl_msg_archive) == loads
    assert p.plot.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotted points: 6" in p.plot_label.value
    assert "frames: 6" in p.controls.status.value
    assert "finished" in p.controls.status.value
    assert p.frame_slider.max == 5 and p.frame_slider.value == 5
    assert p.controls.progress.value == 1.0


def test_frame_slider_replays_kept_frames(wbv):
    s, p = wbv.session, wbv.simulation
    s.run_blocking(5)
    p.refresh()
    p.show_frame(2)
    np.testing.assert_allclose(p.view._coordinates_dict[0], s.wrapped(s.frame(2)) * 10.0,
                               rtol=1e-5)
    p.refresh()
    assert "showing frame 2" in p.plot_label.value


def test_injected_blowup_shows_in_the_error_label_and_keeps_frames(wbv):
    s, p = wbv.session, wbv.simulation
    s.run_blocking(3)
    s.set_params(epsilon=1e9)  # far beyond any slider: a parameter pushed out of range
    s.start(5)
    s.wait()
    p.refresh()
    assert s.status == "error"
    err = p.controls.error.value
    assert "blew up at step" in err and "Frames before step" in err
    assert "Traceback" not in err
    assert s.frames_total == 3 and p.frame_slider.max == 2
    assert "error" in p.controls.status.value
    assert not p.controls.start_button.disabled
    s.set_params(epsilon=1.0)
    s.reset()
    p.refresh()
    assert p.controls.error.value == ""


def test_blowup_from_a_slider_with_a_wide_range():
    s = make_session()
    panel = ParameterPanel(s, ranges={"dt": (0.001, 5.0)})
    sim = SimulationPanel(s)
    s.run_blocking(2)
    panel.set_value("dt", 5.0)
    s.start(20)
    s.wait()
    sim.refresh()
    assert s.status == "error"
    assert "blew up" in sim.controls.error.value
    assert s.frames_total >= 2
    panel.close()
    sim.close()


def test_export_button_and_method(wbv, tmp_path):
    md = pytest.importorskip("mdtraj")
    s, p = wbv.session, wbv.simulation
    s.run_blocking(3)
    p.export_path.value = str(tmp_path / "live.h5")
    p.export_button.click()
    assert "wrote" in p.export_label.value and "live.csv" in p.export_label.value
    assert md.load(str(tmp_path / "live.h5")).n_frames == 3
    assert len(np.genfromtxt(tmp_path / "live.csv", delimiter=",", names=True)) == 3
    traj, _ = wbv.export(str(tmp_path / "method.dcd"))
    assert md.load(traj, top=str(tmp_path / "method.pdb")).n_frames == 3
    p.export_path.value = str(tmp_path / "bad.txt")
    p.export_button.click()
    assert "export failed" in p.export_label.value


def test_panels_work_alone_and_follow_a_rebuild():
    s = make_session()
    params = ParameterPanel(s)
    sim = SimulationPanel(s)
    s.run_blocking(1)
    sim.refresh()
    params.refresh()
    assert sim.view_updates >= 1 and "compiles: 1" in params.compiles.value
    first_view = sim.view
    s.rebuild(wb.lj_fluid(256, cutoff=2.5, skin=0.3), integrator="verlet",
              settings={"dt": 0.003})
    sim.refresh()
    params.refresh()
    assert sim.view is not first_view  # new atom count: new structure
    assert list(params.sliders) == ["epsilon", "sigma", "dt"]
    s.run_blocking(1)
    params.refresh()
    assert "compiles: 2" in params.compiles.value
    params.close()
    sim.close()


def test_default_ranges_put_the_value_on_the_grid():
    for name, value in [("epsilon", 1.0), ("kT", 1.44), ("dt", 0.005), ("gamma", 0.5),
                        ("tau", 0.1), ("other", -2.0), ("zero", 0.0)]:
        lo, hi, step = default_range(name, value)
        assert lo <= value <= hi
        k = (value - lo) / step
        assert abs(k - round(k)) < 1e-6, (name, lo, step)


def test_bench_panels_runs_and_reports(tmp_path, capsys):
    from workbench.cli import bench_module

    bench_panels = bench_module("panels")

    out = tmp_path / "panels.json"
    assert bench_panels.main(["--atoms", "216", "--trials", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "time to first frame" in printed and "slider -> first frame" in printed
    figures = json.loads(out.read_text())
    assert figures["atoms"] == 216 and figures["lattice"] == "simple cubic"
    assert figures["recompiles_during_slider_changes"] == 0
    for key in ("time_to_first_frame_s", "slider_to_frame_ms_median", "slider_to_view_ms_max"):
        assert figures[key] > 0
