"""Notebook 03 (alanine dipeptide) in a real browser: JupyterLab 4 + Debian's Chromium.

Runs a copy of ``notebooks/03_alanine_dipeptide.ipynb`` with smaller knobs and checks what only
a browser shows: the molecular nglview views render (no "javascript error"), the force-field
torsion slider is labelled with its type and moves the running simulation without a
recompile, and the water toggle of the solvated view hides and shows the solvent without page
errors. Screenshots go to ``test-artifacts/``.
"""

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
NOTEBOOK = ROOT / "notebooks" / "03_alanine_dipeptide.ipynb"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
]

JS_CANVASES = """() => Array.from(document.querySelectorAll('.wb-ngl canvas'))
  .map(c => [c.width, c.height])"""


def _small_copy(root: Path) -> Path:
    """The notebook with shorter runs (the browser checks need frames, not statistics)."""
    root.mkdir(parents=True, exist_ok=True)
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if "IMPLICIT_STEPS =" in src:
            src = (src.replace("IMPLICIT_STEPS = 5000", "IMPLICIT_STEPS = 500")
                   .replace("LIVE_CHUNKS = 40", "LIVE_CHUNKS = 100000")
                   .replace("WATER_STEPS = 150", "WATER_STEPS = 50"))
            cell["source"] = src
        if "session.wait(timeout=120)" in src:  # don't wait for the (long) live run to end
            cell["source"] = src.replace("session.wait(timeout=120)",
                                         "session.wait_frames(session.frames_total + 5, 60)")
    dst = root / NOTEBOOK.name
    dst.write_text(json.dumps(nb))
    return dst


_text = text_of


def test_molecule_workbench_in_jupyterlab(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    nb = _small_copy(tmp_path / "root")
    page_errors: list[str] = []
    with LabServer(nb.parent, ARTIFACTS / "browser-molecule-jupyterlab.log") as lab, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(lab.url(f"lab/tree/{nb.name}"))
            wait_until(lambda: page.evaluate(JS_KERNEL_STATUS) == "idle", "an idle kernel")
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            wait_until(lambda: page.evaluate(JS_ALL_CELLS_RAN)
                       and page.evaluate(JS_KERNEL_STATUS) == "idle", "all cells to run")
            # 1. both molecular views render (implicit solvent, then the water box)
            canvases = wait_until(lambda: (c := page.evaluate(JS_CANVASES)) and len(c) >= 2
                                  and c, "two nglview canvases")
            assert all(w > 0 and h > 0 for w, h in canvases)
            assert "javascript error" not in _text(page, ".wb-ngl").lower()
            first = page.locator(".wb-workbench").first
            first.scroll_into_view_if_needed()
            first.screenshot(path=str(ARTIFACTS / "browser-molecule-implicit.png"))

            # 2. the torsion-type slider: labelled with its type, no recompile when moved
            slider = page.locator(".wb-parameter-panel .widget-slider").first
            assert "phi k" in slider.inner_text()
            wait_until(lambda: "running" in _text(page, ".wb-status-text"), "the live run")
            compiles0 = number_in(_text(page, ".wb-compile-count"), "compiles")
            readout = slider.locator(".widget-readout").first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("0")
            page.keyboard.press("Enter")
            wait_until(lambda: "PeriodicTorsionForce.k[5]=0" in _text(page, ".wb-applied-values"),
                       "a chunk that used the new torsion barrier")
            assert number_in(_text(page, ".wb-compile-count"), "compiles") == compiles0
            page.locator(".wb-stop").first.click()

            # 3. the water toggle of the solvated view
            wet = page.locator(".wb-workbench").nth(1)
            wet.scroll_into_view_if_needed()
            wet.screenshot(path=str(ARTIFACTS / "browser-molecule-water.png"))
            toggle = wet.locator(".wb-water-toggle input").first
            toggle.uncheck()
            page.wait_for_timeout(1500)  # let NGL redraw (a screenshot, not a check)
            wet.screenshot(path=str(ARTIFACTS / "browser-molecule-no-water.png"))
            toggle.check()
            assert toggle.is_checked()
            assert not page_errors, page_errors
        finally:
            (ARTIFACTS / "browser-molecule-page-errors.txt").write_text("\n".join(page_errors))
            browser.close()
