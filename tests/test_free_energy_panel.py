"""The free-energy panel over a live metadynamics session (no browser: the widgets' state)."""

import jax.numpy as jnp
import numpy as np
import pytest

from workbench.panels import FreeEnergyPanel, Workbench
from workbench.potentials.base import FunctionPotential
from workbench.sampling import cv
from workbench.sampling import metadynamics as md
from workbench.session import Session
from workbench.systems import System

from test_metadynamics import BARRIER, KT, double_well, exact_double_well


def _session(sampler):
    system = System(potential=FunctionPotential(double_well), params={"h": jnp.asarray(BARRIER)},
                    positions=np.array([[-1.0, 0.0, 0.0]]), masses=np.ones(1),
                    space=FunctionPotential(double_well).space)
    return Session(system, sampler, dict(dt=0.01, kT=KT, gamma=5.0), report_interval=100,
                   frames_per_chunk=2, seed=0)


def test_panel_follows_the_bias_and_the_cv():
    sampler = md.metadynamics(FunctionPotential(double_well), cv.Position(0, 0), sigma=0.1,
                              height=0.5, bias_factor=10.0, pace=20, lower=-2.5, upper=2.5,
                              bins=250)
    session = _session(sampler)
    x = sampler.bias.grid.axes()[0]
    panel = FreeEnergyPanel(session, reference=exact_double_well(x), f_max=6 * KT)
    try:
        session.run_blocking(5)
        panel.refresh(timeout=30)
        assert len(panel.cv_series) == 10  # 5 chunks x 2 frames
        np.testing.assert_allclose(panel.cv_series[-1, 0], session.frame(-1)[0, 0], rtol=1e-6)
        assert "hills: 50 " in panel.label.value
        png1 = panel.plot.value
        assert png1[:4] == b"\x89PNG"
        axes, f = panel.free_energy()
        assert f.min() == 0.0 and f.max() > 0.0
        session.run_blocking(5)
        panel.refresh(timeout=30)
        assert "hills: 100 " in panel.label.value and panel.plot.value != png1
        view = Workbench(session, panels=[panel])
        assert panel in view.children
        view.refresh(timeout=30)
        view.close()
    finally:
        session.stop()


def test_panel_draws_two_cvs_and_rejects_plain_md():
    sampler = md.metadynamics(FunctionPotential(double_well),
                              [cv.Position(0, 0), cv.Position(0, 1)], sigma=0.1, height=0.5,
                              pace=20, lower=[-2.0, -1.0], upper=[2.0, 1.0], bins=[80, 40])
    session = _session(sampler)
    panel = FreeEnergyPanel(session)
    try:
        session.run_blocking(2)
        panel.refresh(timeout=30)
        assert panel.cv_series.shape == (4, 2)
        assert panel.plot.value[:4] == b"\x89PNG"
    finally:
        panel.close()
        session.stop()
    with pytest.raises(TypeError, match="metadynamics sampler"):
        FreeEnergyPanel(_session("langevin"))
