"""Live gradients over a session (workbench.session.gradients) and the gradient panel, without a
browser: a particle in a tilted double well whose tilt c is fitted to a target <x>, by
reweighting (an EnsembleObjective with re-sampling) and by quadrature (exact, differentiable);
the gradient follows set_params, steps move the session's parameter, the method switches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.dynamics import integrators as integ
from workbench.gradients import fit as ft
from workbench.panels import GradientPanel
from workbench.potentials.base import FunctionPotential
from workbench.session import GradientSession, Session
from workbench.systems import System

from test_free_energy_gradients import KT, tilted_well

WELL = FunctionPotential(tilted_well)
X = np.linspace(-3.0, 3.0, 4001)


def mean_x(c, h=5.0):
    """Exact <x> at tilt c (quadrature, differentiable in c)."""
    u = h * (jnp.asarray(X) ** 2 - 1.0) ** 2 + c * jnp.asarray(X)
    w = jnp.exp(-(u - jnp.min(u)) / KT)
    return jnp.sum(w * jnp.asarray(X)) / jnp.sum(w)


TARGET = float(mean_x(1.0))


def loss_at(c):
    return float((mean_x(c) - TARGET) ** 2)


def dloss(c):
    return float(jax.grad(lambda c: (mean_x(c) - TARGET) ** 2)(c))


def _session():
    system = System(potential=WELL, params={"h": jnp.asarray(5.0), "c": jnp.asarray(0.0)},
                    positions=np.array([[-1.0, 0.0, 0.0]]), masses=np.ones(1), space=WELL.space)
    return Session(system, "langevin", dict(dt=0.01, kT=KT, gamma=5.0), report_interval=50,
                   frames_per_chunk=2, seed=0)


def _objectives():
    lang = integ.langevin(WELL)
    settings = lang.settings(dt=0.01, kT=KT, gamma=5.0)
    sampler = ft.batch_sampler(lang, settings, np.array([[-1.0, 0.0, 0.0]]), copies=64,
                               n_frames=12800, stride=20, masses=np.ones(1), equilibrate=20)
    reweight = ft.EnsembleObjective(
        sampler, {"x": lambda r, p, a, b: r[0, 0]},
        lambda av, p: (av["x"] - TARGET) ** 2, WELL, KT, min_ess=0.5)
    return {"reweight": reweight,
            "quadrature": lambda p: (mean_x(p["c"], p["h"]) - TARGET) ** 2}


def test_gradient_follows_the_session_and_steps_move_it():
    session = _session()
    grads = GradientSession(session, _objectives(), optimizer=__import__("optax").adam(0.1),
                            trainable=["c"])
    panel = GradientPanel(grads, labels={"c": "tilt c"})
    try:
        panel.refresh(timeout=120)
        r = grads.last
        assert r.method == "reweight" and r.params["c"] == pytest.approx(0.0)
        assert list(r.gradient) == ["c"]  # the trainable one is shown
        assert r.metrics["ess_fraction"] == pytest.approx(1.0) and r.resampled
        assert r.gradient["c"] == pytest.approx(dloss(0.0), rel=0.15)
        assert panel.plot.value[:4] == b"\x89PNG" and "loss" in panel.label.value
        # a slider (set_params) moves: a new gradient at the new value, by reweighting
        session.set_params(c=0.4)
        panel.refresh(timeout=120)
        assert grads.last.params["c"] == pytest.approx(0.4)
        assert grads.last.gradient["c"] == pytest.approx(dloss(0.4), rel=0.15)
        # the method dropdown: quadrature, the same loss exactly
        panel.method.value = "quadrature"
        panel.refresh(timeout=60)
        assert grads.last.method == "quadrature"
        assert grads.last.loss == pytest.approx(loss_at(0.4), rel=1e-5)
        # one step: the session's parameter moves downhill, the loss curve has one point
        before = float(session.next_params["c"])
        panel.step_button.click()
        panel.refresh(timeout=60)
        assert len(grads.history) == 1
        assert float(session.next_params["c"]) == pytest.approx(before + 0.1, rel=1e-5)
        assert grads.last.params["c"] == pytest.approx(float(session.next_params["c"]))
        assert float(session.next_params["h"]) == 5.0  # not trainable: held
        # run, then stop: steps toward c = 1
        panel.run_button.click()
        import time
        deadline = time.monotonic() + 120
        while len(grads.history) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        panel.stop_button.click()
        panel.refresh(timeout=60)
        assert len(grads.history) >= 20
        # adam at 0.1 per step covers most of the way in 20 steps (more may have run)
        assert abs(float(session.next_params["c"]) - 1.0) < 0.3 * abs(before - 1.0)
        assert grads.history[-1][1] < 0.1 * grads.history[0][1]
    finally:
        panel.close()
        grads.close()
        session.stop()


def test_bad_method_and_names_are_errors():
    session = _session()
    with pytest.raises(KeyError, match="trainable"):
        GradientSession(session, _objectives(), trainable=["epsilon"], auto=False)
    grads = GradientSession(session, {"quadrature": _objectives()["quadrature"]}, auto=False)
    try:
        with pytest.raises(ValueError, match="unknown method"):
            grads.set_method("backprop")
    finally:
        grads.close()
        session.stop()
