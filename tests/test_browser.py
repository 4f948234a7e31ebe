"""The live panels in a real browser: JupyterLab 4 + Debian's Chromium driven by Playwright.

One JupyterLab server and one Chromium serve every test here (module scope). Each test writes
a small panel-only notebook (the product notebooks themselves run top to bottom under nbval;
re-running them here would only repeat that work), runs it in the browser, and checks what only
a browser can show: the nglview canvases render, the plots redraw while a run goes on, the run
buttons act, a slider change reaches the running simulation without recompiling, the
free-energy map grows with the hills, the gradient chart follows a slider and an optimizer
step, the training panel redraws and stops and resumes, and the water toggle works. Screenshots go to ``test-artifacts/``. Skipped only when
/usr/bin/chromium or the playwright package is missing. Waits are polls with a generous hang
guard, never performance checks.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LabServer,
    browser_marks,
    js_image,
    number_in,
    run_all_cells,
    shutdown_kernels,
    text_of,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = browser_marks()

JS_CANVASES = """() => Array.from(document.querySelectorAll('.wb-ngl canvas'))
  .map(c => [c.width, c.height])"""
JS_PLOT = js_image("wb-plot")
JS_FES = js_image("wb-free-energy")
JS_GRADIENT = js_image("wb-gradient-plot")


@pytest.fixture(scope="module")
def lab_browser(tmp_path_factory):
    """(lab, browser): one JupyterLab server and one headless Chromium for the module."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    root = tmp_path_factory.mktemp("lab") / "root"
    root.mkdir()
    with LabServer(root, ARTIFACTS / "browser-jupyterlab.log") as lab, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield lab, browser
        finally:
            browser.close()


@pytest.fixture
def page(lab_browser, request):
    """A fresh page (1600 x 1100) with ``page.errors`` collecting uncaught page errors; on
    teardown the page's errors are written to test-artifacts/ and every kernel is shut down."""
    lab, browser = lab_browser
    pg = browser.new_page(viewport={"width": 1600, "height": 1100})
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.lab = lab
    yield pg
    name = request.node.name.removeprefix("test_")
    (ARTIFACTS / f"browser-{name}-page-errors.txt").write_text("\n".join(pg.errors))
    pg.close()
    shutdown_kernels(lab)


def run_notebook(page, name: str, *cells: str) -> None:
    """Write ``cells`` (code) as notebook ``name`` under the server's root and run it all."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, page.lab.root / name)
    run_all_cells(page, page.lab, name)
    page.evaluate("""() => { if (!window.jupyterapp.shell.leftCollapsed)
        window.jupyterapp.commands.execute('application:toggle-left-area'); }""")


def set_readout(page, slider, value: str) -> None:
    """Type ``value`` into a slider's readout box (what a user does for an exact value)."""
    slider.locator(".widget-readout").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def status(page) -> str:
    return text_of(page, ".wb-status-text")


def frames(page) -> int:
    return number_in(text_of(page, ".wb-frames"), "frames") or 0


def compiles(page) -> int | None:
    return number_in(text_of(page, ".wb-compile-count"), "compiles")


LJ_LIVE = """
import workbench as wb
from workbench.panels import Workbench
from workbench.session import Session

system = wb.lj_fluid(256, density=0.8442, cutoff=2.5, skin=0.3, truncation="shift")
session = Session(system, "langevin", dict(dt=0.005, kT=1.0, gamma=1.0), report_interval=10,
                  units="reduced", seed=0)
view = Workbench(session)
session.start(None)   # until Stop
view
"""


def test_live_workbench(page):
    """The LJ workbench: canvas, plot, live frames and points, pause/resume, slider without
    recompiling (typed and by keyboard), stop."""
    run_notebook(page, "lj_live.ipynb", LJ_LIVE)
    # 1. the nglview canvas renders (not "Click to show javascript error"), and the plot
    (w, h), = wait_until(lambda: page.evaluate(JS_CANVASES), "the nglview canvas")
    assert w > 0 and h > 0
    assert "javascript error" not in text_of(page, ".wb-ngl").lower()
    wait_until(lambda: page.evaluate(JS_PLOT), "the thermodynamics plot image")
    wait_until(lambda: frames(page), "frames")
    view = page.locator(".wb-workbench").first
    view.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "browser-01-rendered.png"))
    wait_until(lambda: "running" in status(page), "a running run")

    # 2. new frames reach the view and new points reach the plot while it runs
    frames0 = frames(page)
    points0 = number_in(text_of(page, ".wb-points"), "plotted points")
    src0 = page.evaluate(JS_PLOT)
    wait_until(lambda: frames(page) > frames0, "the frame counter to grow")
    wait_until(lambda: number_in(text_of(page, ".wb-points"), "plotted points") > points0,
               "the plot to receive new points")
    wait_until(lambda: page.evaluate(JS_PLOT) not in (None, src0), "a redrawn plot image")
    page.locator(".wb-ngl").first.screenshot(path=str(ARTIFACTS / "browser-ngl-view.png"))

    # 3. pause and resume from the buttons
    page.locator(".wb-pause").first.click()
    wait_until(lambda: "paused" in status(page), "paused")
    paused_at = frames(page)
    time.sleep(1.5)  # nothing may arrive while paused
    assert frames(page) == paused_at
    page.locator(".wb-start").first.click()
    wait_until(lambda: "running" in status(page), "resumed")

    # 4. a slider change reaches the running simulation, without recompiling
    compiles0 = compiles(page)
    assert compiles0 is not None
    set_readout(page, page.locator(".wb-slider-epsilon").first, "1.15")
    wait_until(lambda: "epsilon=1.15" in text_of(page, ".wb-applied-values"),
               "a chunk that used epsilon = 1.15")
    assert "running" in status(page)
    assert compiles(page) == compiles0
    # ... and with the arrow keys on the slider handle
    page.locator(".wb-slider-epsilon .noUi-handle").first.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    wait_until(lambda: "epsilon=1.2" in text_of(page, ".wb-applied-values"),
               "a chunk that used epsilon = 1.2 (five steps of 0.01)")
    assert compiles(page) == compiles0
    view.screenshot(path=str(ARTIFACTS / "browser-02-slider.png"))

    # 5. stop from the button; the view stays on the newest frame (no replay)
    page.locator(".wb-stop").first.click()
    wait_until(lambda: "stopped" in status(page), "stopped")
    time.sleep(1.0)  # give stale slider echoes (if any) time to arrive
    assert "showing frame" not in text_of(page, ".wb-plot-points")
    page.screenshot(path=str(ARTIFACTS / "browser-03-stopped.png"))
    assert not page.errors, page.errors


MOLECULE = """
import workbench as wb
from workbench import units
from workbench.forcefield import openmm as ff
from workbench.panels import Workbench
from workbench.session import Session

kT = units.kT_from_kelvin(300.0)
system = ff.load(wb.systems.data_file("alanine-dipeptide-vacuum.pdb"),
                 ["amber14-all.xml", "implicit/obc2.xml"], constraints="HBonds")
types = system.find_types("PeriodicTorsionForce", "k", "C-CX-N-C")
name, label = next((k, v) for k, v in types.items() if v.endswith("n=2"))
session = Session(system, "langevin", dict(dt=0.002, kT=kT, gamma=5.0), report_interval=50,
                  seed=1)
Workbench(session, parameter_options=dict(include=[name, "kT", "gamma"],
                                          labels={name: "phi k (" + label + ")"}))
""", """
session.start(None)
water = ff.load(wb.systems.data_file("alanine-dipeptide-water.pdb"),
                ["amber14-all.xml", "amber14/tip3p.xml"], nonbonded_method="PME", cutoff=1.0,
                constraints="HBonds")
wet = Session(water, "langevin", dict(dt=0.002, kT=kT, gamma=1.0), report_interval=25, seed=2)
Workbench(wet, parameter_options=dict(include=["kT", "gamma"]))   # not run: the view is enough
"""


def test_molecule_workbench(page):
    """Alanine dipeptide: both molecular views render, the force-field torsion slider is
    labelled with its type and moves the running simulation without a recompile, and the water
    toggle of the solvated view hides and shows the solvent without page errors."""
    run_notebook(page, "molecule.ipynb", *MOLECULE)
    canvases = wait_until(lambda: (c := page.evaluate(JS_CANVASES)) and len(c) >= 2 and c,
                          "two nglview canvases")
    assert all(w > 0 and h > 0 for w, h in canvases)
    assert "javascript error" not in text_of(page, ".wb-ngl").lower()
    first = page.locator(".wb-workbench").first
    first.scroll_into_view_if_needed()
    first.screenshot(path=str(ARTIFACTS / "browser-molecule-implicit.png"))

    slider = first.locator(".wb-parameter-panel .widget-slider").first
    assert "phi k" in slider.inner_text()
    wait_until(lambda: "running" in status(page) and frames(page), "the live run")
    compiles0 = compiles(page)
    set_readout(page, slider, "0")
    wait_until(lambda: re.search(r"PeriodicTorsionForce\.k\[\d+\]=0\b",
                                 text_of(page, ".wb-applied-values")),
               "a chunk that used the new torsion barrier")
    assert compiles(page) == compiles0
    page.locator(".wb-stop").first.click()
    wait_until(lambda: "stopped" in status(page), "stopped")

    wet = page.locator(".wb-workbench").nth(1)
    wet.scroll_into_view_if_needed()
    wet.screenshot(path=str(ARTIFACTS / "browser-molecule-water.png"))
    toggle = wet.locator(".wb-water-toggle input").first
    assert toggle.is_visible() and toggle.is_checked()
    toggle.uncheck()
    page.wait_for_timeout(1500)  # let NGL redraw (for the screenshot, not a check)
    wet.screenshot(path=str(ARTIFACTS / "browser-molecule-no-water.png"))
    toggle.check()
    assert toggle.is_checked()
    assert not page.errors, page.errors


FREE_ENERGY = """
import workbench as wb
from workbench import units
from workbench.forcefield import openmm as ff
from workbench.panels import FreeEnergyPanel, Workbench
from workbench.sampling import cv
from workbench.sampling import metadynamics as metad
from workbench.session import Session

system = ff.load(wb.systems.data_file("alanine-dipeptide-vacuum.pdb"), ["amber14-all.xml"],
                 nonbonded_method="NoCutoff", constraints="HBonds")
sampler = metad.metadynamics(system.potential, cv.backbone_torsions(system.topology, 1),
                             sigma=0.35, height=1.2, bias_factor=6.0, pace=50, bins=72,
                             constraints=system.constraints())
session = Session(system, sampler, dict(dt=0.002, kT=units.kT_from_kelvin(300.0), gamma=1.0),
                  report_interval=50, frames_per_chunk=4, seed=0)
panel = FreeEnergyPanel(session, f_max=40.0)
view = Workbench(session, panels=[panel], parameter_options=dict(include=["kT", "gamma"]))
session.start(None)
view
"""


def test_free_energy_panel(page):
    """Metadynamics: the free-energy map renders inside the composed view, next to the
    molecule, and grows (more hills, a new image) while the run goes on."""
    run_notebook(page, "free_energy.ipynb", FREE_ENERGY)
    first = wait_until(lambda: page.evaluate(JS_FES), "the free-energy image")
    view = page.locator(".wb-workbench").first
    assert view.locator("img.wb-free-energy").count() == 1
    assert view.locator(".wb-ngl canvas").count() >= 1
    hills = lambda: number_in(text_of(page, ".wb-free-energy-label"), "hills") or 0  # noqa: E731
    hills0 = hills()
    wait_until(lambda: hills() > hills0, "more hills")
    wait_until(lambda: page.evaluate(JS_FES) != first, "a redrawn map")
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(ARTIFACTS / "browser-free-energy.png"))
    page.locator(".wb-stop").first.click()
    assert not page.errors, page.errors


GRADIENTS = """
import jax.numpy as jnp
import numpy as np
import optax

import workbench as wb
from workbench.gradients import fit as ft
from workbench.gradients import reweight as rw
from workbench.observables import pair_histogram
from workbench.panels import GradientPanel, Workbench
from workbench.session import GradientSession, Session
from workbench.simulate import Simulation

kT = 1.5
fluid = wb.lj_fluid(n_atoms=108, density=0.8, cutoff=2.2, skin=0.3, truncation="switch",
                    r_switch=1.8)
pot = fluid.potential
start = fluid.replace(params={"epsilon": jnp.asarray([0.85], jnp.float32),
                              "sigma": jnp.asarray([1.05], jnp.float32)})
observables = {"g": pair_histogram(pot.space, np.linspace(0.8, 2.4, 17)),
               "P": rw.virial_pressure(pot, kT)}
sim = Simulation(start, "langevin", dict(dt=0.005, kT=kT, gamma=1.0), seed=2,
                 report_interval=20, frames_per_chunk=20)
sample = ft.simulation_sampler(sim, 40, equilibrate=1)
target_g = jnp.ones(16)


def loss(av, p):
    return jnp.sum((av["g"] - target_g) ** 2) + 0.5 * (av["P"] - 1.0) ** 2


objective = ft.EnsembleObjective(sample, observables, loss, pot, kT,
                                 pot.allocate(fluid.positions), min_ess=0.6)
session = Session(start, "langevin", dict(dt=0.005, kT=kT, gamma=1.0), report_interval=20,
                  frames_per_chunk=5, units="reduced")
grads = GradientSession(session, {"reweight": objective}, optimizer=optax.adam(0.01))
view = Workbench(session, panels=[GradientPanel(grads)],
                 parameter_options=dict(include=["epsilon", "sigma"],
                                        ranges={"epsilon": (0.5, 1.5), "sigma": (0.9, 1.1)}))
session.start(None)
view
"""


def test_gradient_panel(page):
    """The gradient chart renders inside the composed view next to the sliders, a slider move
    redraws it at the new value, and "step" takes an optimizer step."""
    run_notebook(page, "gradients.ipynb", GRADIENTS)
    view = page.locator(".wb-workbench").first
    first = wait_until(lambda: page.evaluate(JS_GRADIENT), "the gradient chart")
    assert view.locator("img.wb-gradient-plot").count() == 1
    wait_until(lambda: "loss" in text_of(page, ".wb-gradient-label"), "a gradient")
    view.locator(".wb-slider-sigma .noUi-handle").first.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    wait_until(lambda: page.evaluate(JS_GRADIENT) != first, "a redrawn gradient")
    steps = lambda: number_in(text_of(page, ".wb-gradient-label"), "steps") or 0  # noqa: E731
    steps0 = steps()
    page.locator(".wb-gradient-step").first.click()
    wait_until(lambda: steps() > steps0, "an optimizer step")
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(ARTIFACTS / "browser-gradients.png"))
    page.locator(".wb-stop").first.click()
    assert not page.errors, page.errors


JS_TRAINING = js_image("wb-train-plot")

TRAINING = """
import jax.numpy as jnp

import workbench as wb
from workbench.ml import Model
from workbench.ml.data import load
from workbench.ml.train import fit_shift_scale
from workbench.panels import TrainingPanel
from workbench.session import TrainingSession

data = load(wb.data_file("ml/ethanol.npz"))
train_set, valid_set, _ = data.split(20, 10, seed=0)
model = fit_shift_scale(Model.create("painn", ("H", "C", "O"), cutoff=0.5, dtype=jnp.float32,
                                     features=8, layers=1, n_rbf=4), train_set)
training = TrainingSession(model, train_set, valid_set, steps=100000, batch_size=5)
panel = TrainingPanel(training)
training.start()
panel
"""


def test_training_panel(page):
    """The training plot renders and redraws as steps go, stop stops the run (status and a
    fixed step count), train resumes it."""
    run_notebook(page, "training.ipynb", TRAINING)
    panel = page.locator(".wb-train-panel").first
    steps = lambda: number_in(text_of(page, ".wb-train-label"), "step") or 0  # noqa: E731
    wait_until(lambda: steps() > 0 and "valid force MAE" in text_of(page, ".wb-train-label"),
               "training steps and a validation")
    first = wait_until(lambda: page.evaluate(JS_TRAINING), "the training plot")
    wait_until(lambda: page.evaluate(JS_TRAINING) != first, "a redrawn training plot")
    page.locator(".wb-train-stop").first.click()
    wait_until(lambda: "stopped" in text_of(page, ".wb-train-label"), "the stopped status")
    stopped_at = steps()
    page.locator(".wb-train-start").first.click()
    wait_until(lambda: steps() > stopped_at, "training resumed")
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(ARTIFACTS / "browser-training.png"))
    page.locator(".wb-train-stop").first.click()
    wait_until(lambda: "stopped" in text_of(page, ".wb-train-label"), "stopped again")
    assert not page.errors, page.errors
