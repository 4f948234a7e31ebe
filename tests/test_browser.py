"""The live workbench in a real browser: JupyterLab 4 + Debian's Chromium driven by Playwright.

Opens a temporary copy of ``notebooks/01_lj_fluid_live.ipynb``, runs all cells, and checks
what only a browser can show: the nglview canvas, the plots, live updates while the run goes,
the run buttons, and a slider change reaching the running simulation without recompiling.
Screenshots go to ``test-artifacts/``. Skipped only when /usr/bin/chromium or the playwright
package is missing. Waits are polls with a generous hang guard, never performance checks.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    JS_ALL_CELLS_RAN,
    JS_KERNEL_STATUS,
    LabServer,
    copy_notebook,
    number_in,
    text_of,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_lj_fluid_live.ipynb"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
]

JS_CANVAS = """() => {
  const c = document.querySelector('.wb-ngl canvas');
  return c ? [c.width, c.height] : null;
}"""
JS_PLOT = """() => {
  const img = document.querySelector('img.wb-plot');
  return img && img.complete && img.naturalWidth > 0 ? img.src : null;
}"""


_text = text_of


def test_live_workbench_in_jupyterlab(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    root = tmp_path / "root"
    nb = copy_notebook(NOTEBOOK, root)
    page_errors: list[str] = []

    with LabServer(root, ARTIFACTS / "browser-jupyterlab.log") as lab, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(lab.url(f"lab/tree/{nb.name}"))
            wait_until(lambda: page.evaluate(JS_KERNEL_STATUS) == "idle", "an idle kernel")
            page.evaluate("""() => { if (!window.jupyterapp.shell.leftCollapsed)
                window.jupyterapp.commands.execute('application:toggle-left-area'); }""")
            # run all cells; do not await the command's promise (it may wait on dialogs)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # 1. the nglview canvas renders (not "Click to show javascript error")
            width, height = wait_until(lambda: page.evaluate(JS_CANVAS), "the nglview canvas")
            assert width > 0 and height > 0
            ngl_text = _text(page, ".wb-ngl")
            assert "javascript error" not in ngl_text.lower()
            # 2. the plots render
            wait_until(lambda: page.evaluate(JS_PLOT), "the thermodynamics plot image")
            wait_until(lambda: number_in(_text(page, ".wb-frames"), "frames"), "frames")
            page.locator(".wb-workbench").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-01-rendered.png"))

            # let the notebook finish: a busy kernel would queue widget messages
            wait_until(lambda: page.evaluate(JS_ALL_CELLS_RAN)
                       and page.evaluate(JS_KERNEL_STATUS) == "idle", "all cells to run")
            page.locator(".wb-workbench").first.scroll_into_view_if_needed()
            if "running" not in _text(page, ".wb-status-text"):
                page.locator(".wb-start").first.click()  # the live run already ended: go on
            wait_until(lambda: "running" in _text(page, ".wb-status-text"), "a running run")

            # 3. new frames reach the view and new points reach the plot while it runs
            frames0 = number_in(_text(page, ".wb-frames"), "frames")
            points0 = number_in(_text(page, ".wb-points"), "plotted points")
            src0 = page.evaluate(JS_PLOT)
            wait_until(lambda: number_in(_text(page, ".wb-frames"), "frames") > frames0,
                       "the frame counter to grow")
            wait_until(lambda: number_in(_text(page, ".wb-points"), "plotted points") > points0,
                       "the plot to receive new points")
            wait_until(lambda: page.evaluate(JS_PLOT) not in (None, src0),
                       "a redrawn plot image")
            page.locator(".wb-ngl").first.screenshot(path=str(ARTIFACTS / "browser-ngl-view.png"))

            # 4. pause and resume from the buttons
            page.locator(".wb-pause").first.click()
            wait_until(lambda: "paused" in _text(page, ".wb-status-text"), "paused")
            paused_at = number_in(_text(page, ".wb-frames"), "frames")
            time.sleep(1.5)
            assert number_in(_text(page, ".wb-frames"), "frames") == paused_at
            page.locator(".wb-start").first.click()
            wait_until(lambda: "running" in _text(page, ".wb-status-text"), "resumed")

            # 5. a slider change reaches the running simulation, without recompiling
            compiles0 = number_in(_text(page, ".wb-compile-count"), "compiles")
            assert compiles0 is not None
            readout = page.locator(".wb-slider-epsilon .widget-readout").first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("1.15")
            page.keyboard.press("Enter")
            wait_until(lambda: "epsilon=1.15" in _text(page, ".wb-applied-values"),
                       "a chunk that used epsilon = 1.15")
            assert "running" in _text(page, ".wb-status-text")
            assert number_in(_text(page, ".wb-compile-count"), "compiles") == compiles0
            # ... and with the arrow keys on the slider handle
            handle = page.locator(".wb-slider-epsilon .noUi-handle").first
            handle.focus()
            for _ in range(5):
                page.keyboard.press("ArrowRight")
            wait_until(lambda: "epsilon=1.2" in _text(page, ".wb-applied-values"),
                       "a chunk that used epsilon = 1.2 (five steps of 0.01)")
            assert number_in(_text(page, ".wb-compile-count"), "compiles") == compiles0
            page.locator(".wb-workbench").first.screenshot(
                path=str(ARTIFACTS / "browser-02-slider.png"))

            # 6. stop from the button
            page.locator(".wb-stop").first.click()
            wait_until(lambda: "stopped" in _text(page, ".wb-status-text"), "stopped")
            time.sleep(1.0)  # give stale slider echoes (if any) time to arrive
            page.locator(".wb-workbench").first.scroll_into_view_if_needed()
            # the view stays on the newest frame: no replay triggered by the live updates
            assert "showing frame" not in _text(page, ".wb-plot-points")
            page.screenshot(path=str(ARTIFACTS / "browser-03-stopped.png"))
        finally:
            (ARTIFACTS / "browser-page-errors.txt").write_text("\n".join(page_errors))
            browser.close()
