"""Helpers for the real-browser test: a throwaway JupyterLab server and polling utilities.

The server runs on 127.0.0.1 with a random token on a free port, in a temporary root directory,
with every Jupyter/IPython config, data, runtime and settings directory pointed into that
temporary directory (the virtual environment's lab extensions and kernel are still found,
because they live under ``sys.prefix``). The deadlines below only stop a broken run from
hanging forever; they are generous and never used as performance checks.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Self

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HANG_GUARD_S = 600.0  # a broken run fails after this long instead of hanging


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], what: str, deadline_s: float = HANG_GUARD_S,
               poll_s: float = 0.5):
    """Poll ``condition`` until it returns something truthy; return that value. Raises
    AssertionError naming ``what`` if the hang guard runs out."""
    end = time.monotonic() + deadline_s
    last_error = None
    while time.monotonic() < end:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - the page may be mid-update; try again
            last_error = e
        time.sleep(poll_s)
    raise AssertionError(f"gave up waiting for {what}" + (f" (last error: {last_error})"
                                                          if last_error else ""))


class LabServer:
    """A JupyterLab server over ``root`` (a temporary directory), isolated from the user's
    Jupyter configuration. Use as a context manager; the server is stopped on exit."""

    def __init__(self, root: Path, log_path: Path):
        self.root, self.log_path = Path(root), Path(log_path)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def env(self) -> dict[str, str]:
        home = self.root.parent / "jupyter-home"
        env = dict(os.environ)
        for key in list(env):
            if key.startswith(("JUPYTER", "JPY_")):
                del env[key]
        dirs = {
            "JUPYTER_CONFIG_DIR": home / "config",
            "JUPYTER_DATA_DIR": home / "data",
            "JUPYTER_RUNTIME_DIR": home / "runtime",
            "JUPYTERLAB_SETTINGS_DIR": home / "lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": home / "lab-workspaces",
            "IPYTHONDIR": home / "ipython",
            "MPLCONFIGDIR": home / "matplotlib",
        }
        for key, path in dirs.items():
            path.mkdir(parents=True, exist_ok=True)
            env[key] = str(path)
        # no "get Jupyter news?" toast over the page
        labconfig = dirs["JUPYTER_CONFIG_DIR"] / "labconfig"
        labconfig.mkdir(exist_ok=True)
        (labconfig / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        env["PYTHONHASHSEED"] = "0"
        return env

    def start(self) -> Self:
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
            ("--LabApp.check_for_updates_class="
             "jupyterlab.handlers.announcements.NeverCheckForUpdate"),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, "the JupyterLab server to answer")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early; see {self.log_path}")
        try:
            with urllib.request.urlopen(self.url("api/status"), timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its kernels
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        # One browser test at a time across pytest-xdist workers (each runs JupyterLab, a
        # kernel and Chromium; two at once starve each other on two cores): an exclusive lock
        # on a file, held until the server stops. Blocks; no polling.
        lock = Path(tempfile.gettempdir()) / "workbench-browser-tests.lock"
        self._lock = open(lock, "w")  # noqa: SIM115 - closed in _unlock()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            return self.start()
        except BaseException:
            self._unlock()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def number_in(text: str, label: str) -> int | None:
    """The integer after ``label:`` in ``text`` (``frames: 1,234`` -> 1234), or None."""
    m = re.search(re.escape(label) + r":?\s*([\d,]+)", text or "")
    return int(m.group(1).replace(",", "")) if m else None


JS_KERNEL_STATUS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.status : null;
}"""
"""Status of the current notebook's kernel ('idle', 'busy', ...) or null."""

JS_ALL_CELLS_RAN = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  const code = nb.widgets.filter(c => c.model.type === 'code');
  return code.length > 0 && code.every(c => c.model.executionCount !== null);
}"""
"""True once every code cell of the current notebook has an execution count."""


def text_of(page, selector: str) -> str:
    """Inner text of the first element matching ``selector`` ('' if none)."""
    loc = page.locator(selector)
    return loc.first.inner_text() if loc.count() else ""


def browser_marks():
    """The pytest marks of a browser test: ``browser``, skipped where Chromium is missing."""
    import pytest

    return [pytest.mark.browser,
            pytest.mark.skipif(not Path(CHROMIUM).exists(),
                               reason=f"{CHROMIUM} not installed (apt-get install chromium)")]


def js_image(css_class: str) -> str:
    """JS returning a signature of the first loaded ``img.css_class`` (its src's length and
    tail, so a redraw changes it), or null while there is none."""
    return ("() => { const img = document.querySelector('img." + css_class + "'); "
            "return img && img.complete && img.naturalWidth > 0 ? "
            "img.src.length + ':' + img.src.slice(-64) : null; }")


def shutdown_kernels(lab: LabServer) -> None:
    """Shut down every kernel of ``lab`` (its REST API), so the next test starts on idle cores."""
    with urllib.request.urlopen(lab.url("api/kernels"), timeout=30) as r:
        kernels = json.load(r)
    for k in kernels:
        req = urllib.request.Request(lab.url(f"api/kernels/{k['id']}"), method="DELETE")
        with urllib.request.urlopen(req, timeout=60):
            pass


def run_all_cells(page, lab, notebook: str) -> None:
    """Open ``notebook`` (a name under the server's root) and run every cell, waiting until all
    have run and the kernel is idle."""
    page.goto(lab.url(f"lab/tree/{notebook}"))
    wait_until(lambda: page.evaluate(JS_KERNEL_STATUS) == "idle", "an idle kernel")
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    wait_until(lambda: page.evaluate(JS_ALL_CELLS_RAN)
               and page.evaluate(JS_KERNEL_STATUS) == "idle", "all cells to run")
