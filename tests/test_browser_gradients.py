"""The gradient panel in a real browser: notebook 06 (tuning a Lennard-Jones model to a target
g(r) and pressure) in JupyterLab + Debian's Chromium driven by Playwright. Checks that the
gradient chart renders inside the composed Workbench view next to the sliders, that moving a
slider redraws the gradient at the new value, and that "step" takes an optimizer step (the
step count and the slider move). Screenshots go to ``test-artifacts/``. Waits are polls with a
hang guard, never timing checks."""

from __future__ import annotations

import json
from pathlib import Path

from browser_helpers import (
    browser_marks,
    js_image,
    lab_page,
    number_in,
    run_all_cells,
    text_of,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_tune_lj_to_target.ipynb"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = browser_marks()

JS_PLOT = js_image("wb-gradient-plot")


def _small_copy(root: Path) -> Path:
    """The notebook up to the live view (the fit after it is the nbval run's job), with a long
    live run so the session keeps going while the test clicks."""
    root.mkdir(parents=True, exist_ok=True)
    nb = json.loads(NOTEBOOK.read_text())
    cells = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        cells.append(cell)
        if "view = Workbench(" in src:
            cell["source"] = src.replace("session.start(20)", "session.start(100000)")
            break
    nb["cells"] = cells
    dst = root / NOTEBOOK.name
    dst.write_text(json.dumps(nb))
    return dst


def test_gradient_panel_in_jupyterlab(tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    nb = _small_copy(tmp_path / "root")
    errors: list[str] = []
    try:
        with lab_page(nb.parent, ARTIFACTS / "browser-gradients-jupyterlab.log",
                      height=1200) as (lab, page, errors):
            run_all_cells(page, lab, nb.name)
            view = page.locator(".wb-workbench").first
            first = wait_until(lambda: page.evaluate(JS_PLOT), "the gradient chart")
            assert view.locator("img.wb-gradient-plot").count() == 1
            wait_until(lambda: "loss" in text_of(page, ".wb-gradient-label"), "a gradient")
            # a slider moves (keyboard on the sigma slider's handle): a new gradient is drawn
            handle = view.locator(".wb-slider-sigma .noUi-handle").first
            handle.focus()
            for _ in range(5):
                page.keyboard.press("ArrowLeft")
            wait_until(lambda: page.evaluate(JS_PLOT) != first, "a redrawn gradient")
            # one optimizer step: the step count goes up
            steps0 = number_in(text_of(page, ".wb-gradient-label"), "steps") or 0
            page.locator(".wb-gradient-step").first.click()
            wait_until(lambda: (number_in(text_of(page, ".wb-gradient-label"), "steps") or 0)
                       > steps0, "an optimizer step")
            view.scroll_into_view_if_needed()
            view.screenshot(path=str(ARTIFACTS / "browser-gradients.png"))
            page.locator(".wb-stop").first.click()
            assert not errors, errors
    finally:
        (ARTIFACTS / "browser-gradients-page-errors.txt").write_text("\n".join(errors))
