"""The free-energy panel in a real browser: notebook 04 (metadynamics of alanine dipeptide) in
JupyterLab + Debian's Chromium driven by Playwright. Checks that the free-energy map renders and
grows (more hills, a new image) while the live run goes on, inside the composed Workbench view.
Screenshots go to ``test-artifacts/``. Waits are polls with a hang guard, never timing checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LabServer,
    browser_marks,
    js_image,
    number_in,
    run_all_cells,
    text_of,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_metadynamics_alanine_dipeptide.ipynb"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = browser_marks()

JS_FES = js_image("wb-free-energy")


def _small_copy(root: Path) -> Path:
    """The notebook with a short blocking run and a long live run (checks need hills, not
    convergence), and no wait for the live run's end."""
    root.mkdir(parents=True, exist_ok=True)
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        src = (src.replace("BLOCKING_STEPS = 150_000", "BLOCKING_STEPS = 2_000")
               .replace("LIVE_CHUNKS = 30", "LIVE_CHUNKS = 100000")
               .replace("session.wait(timeout=300)",
                        "session.wait_frames(session.frames_total + 8, 60)"))
        cell["source"] = src
    dst = root / NOTEBOOK.name
    dst.write_text(json.dumps(nb))
    return dst


def test_free_energy_panel_in_jupyterlab(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    nb = _small_copy(tmp_path / "root")
    page_errors: list[str] = []
    with LabServer(nb.parent, ARTIFACTS / "browser-free-energy-jupyterlab.log") as lab, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            run_all_cells(page, lab, nb.name)
            # the map renders inside the composed view, next to the molecule
            first = wait_until(lambda: page.evaluate(JS_FES), "the free-energy image")
            view = page.locator(".wb-workbench").first
            assert view.locator("img.wb-free-energy").count() == 1
            assert view.locator(".wb-ngl canvas").count() >= 1
            hills0 = number_in(text_of(page, ".wb-free-energy-label"), "hills")
            if "running" not in text_of(page, ".wb-status-text"):
                page.locator(".wb-start").first.click()  # the live run already ended: go on
            # ... and grows while the run goes on
            wait_until(lambda: number_in(text_of(page, ".wb-free-energy-label"), "hills")
                       > hills0, "more hills")
            wait_until(lambda: page.evaluate(JS_FES) != first, "a redrawn map")
            view.scroll_into_view_if_needed()
            view.screenshot(path=str(ARTIFACTS / "browser-free-energy.png"))
            page.locator(".wb-stop").first.click()
            assert not page_errors, page_errors
        finally:
            (ARTIFACTS / "browser-free-energy-page-errors.txt").write_text("\n".join(page_errors))
            browser.close()
