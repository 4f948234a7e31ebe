"""The gradient panel in a real browser: notebook 06 (tuning a Lennard-Jones model to a target
g(r) and pressure) in JupyterLab + Debian's Chromium driven by Playwright. Checks that the
gradient chart renders inside the composed Workbench view next to the sliders, that moving a
slider redraws the gradient at the new value, and that "step" takes an optimizer step (the
step count and the slider move). Screenshots go to ``test-artifacts/``. Waits are polls with a
hang guard, never timing checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    JS_ALL_CELLS_RAN,
    JS_KERNEL_STATUS,
    LabServer,
    number_in,
    text_of,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_tune_lj_to_target.ipynb"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
]

JS_PLOT = """() => {
  const img = document.querySelector('img.wb-gradient-plot');
  return img && img.complete && img.naturalWidth > 0 ? img.src.length + ':' + img.src.slice(-64)
                                                     : null;
}"""


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
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    nb = _small_copy(tmp_path / "root")
    page_errors: list[str] = []
    with LabServer(nb.parent, ARTIFACTS / "browser-gradients-jupyterlab.log") as lab, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(lab.url(f"lab/tree/{nb.name}"))
            wait_until(lambda: page.evaluate(JS_KERNEL_STATUS) == "idle", "an idle kernel")
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            wait_until(lambda: page.evaluate(JS_ALL_CELLS_RAN)
                       and page.evaluate(JS_KERNEL_STATUS) == "idle", "all cells to run")
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
            assert not page_errors, page_errors
        finally:
            (ARTIFACTS / "browser-gradients-page-errors.txt").write_text("\n".join(page_errors))
            browser.close()
