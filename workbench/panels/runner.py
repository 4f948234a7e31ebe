"""Run controls and throttled refreshing for live panels.

* :class:`LiveUpdater` - one background thread per panel that coalesces session events and
  refreshes widgets at most ``rate`` times per second, always finishing with a trailing update,
  so the browser is never flooded and the simulation never waits for drawing.
* :class:`RunControls` - Start / Pause / Stop / Reset buttons, a progress bar, a status line
  (step, frames, steps per second, compile count) and an error label for a
  :class:`~workbench.session.Session`.

The simulation itself runs in the session's runner thread; nothing here does physics.
"""

from __future__ import annotations

import atexit
import html
import logging
import threading
import time
import weakref
from collections.abc import Callable

import ipywidgets as widgets

__all__ = ["LiveUpdater", "RunControls", "button", "status_html"]

_log = logging.getLogger(__name__)
_UPDATERS: weakref.WeakSet = weakref.WeakSet()


def button(description: str, icon: str, css_class: str, width: str = "90px",
           **options) -> widgets.Button:
    """A panel button with the CSS class the browser tests find it by."""
    b = widgets.Button(description=description, icon=icon, layout=widgets.Layout(width=width),
                       **options)
    b.add_class(css_class)
    return b


class LiveUpdater:
    """Call ``refresh()`` from a background thread after :meth:`poke`, at most ``rate`` times
    per second. ``refresh`` may return True to ask for another pass (e.g. a part it skipped to
    respect its own slower rate). Errors in ``refresh`` are logged, never raised."""

    def __init__(self, refresh: Callable[[], bool | None], rate: float = 8.0, name: str = "panel"):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._refresh, self.interval = refresh, 1.0 / rate
        self._event = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"workbench-{name}-updater",
                                        daemon=True)
        self._thread.start()
        _UPDATERS.add(self)

    def poke(self) -> None:
        """Ask for a refresh soon (cheap; call it from any thread)."""
        self._idle.clear()
        self._event.set()

    def refresh_now(self) -> None:
        """Refresh in the calling thread (serialized with the background thread)."""
        with self._lock:
            self._call()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no refresh is pending or running. Returns False on timeout."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread (after the refresh in progress, waiting up to ``timeout`` s)."""
        self._closed = True
        self._event.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _call(self) -> bool:
        try:
            return bool(self._refresh())
        except Exception:  # noqa: BLE001 - a drawing error must not stop later updates
            _log.exception("workbench panel refresh failed")
            return False

    def _loop(self) -> None:
        while True:
            self._event.wait()
            if self._closed:
                return
            self._event.clear()
            t0 = time.perf_counter()
            with self._lock:
                again = self._call()
            if again:
                self._event.set()
            if not self._event.is_set():
                self._idle.set()
            time.sleep(max(0.0, self.interval - (time.perf_counter() - t0)))


@atexit.register
def _close_all() -> None:
    """Let refreshes in progress finish before the interpreter exits (a thread left inside
    native drawing or JAX code while the runtime shuts down can abort the process)."""
    for updater in list(_UPDATERS):
        updater.close()


def status_html(session) -> str:
    """The one-line run status shown by the panels (DOM classes let a browser test read it)."""
    rate = session.steps_per_second
    parts = [
        f'<span class="wb-status-text">{session.status}</span>',
        f'<span class="wb-step">step {session.step:,}</span>',
        f'<span class="wb-frames">frames: {session.frames_total}</span>',
        f'<span class="wb-rate">{rate:,.0f} steps/s</span>',
        f'<span class="wb-compiles">compiles: {session.compile_count}</span>',
    ]
    return " &middot; ".join(parts)


class RunControls(widgets.VBox):
    """Start / Pause / Stop / Reset, progress, status line and error label for ``session``.

    chunks_per_start: chunks the Start button runs (None: until Stop). ``refresh()`` redraws
    from the session state; panels call it from their :class:`LiveUpdater`.
    """

    def __init__(self, session, chunks_per_start: int | None = None, **kwargs):
        self.session = session
        self.chunks_per_start = chunks_per_start
        self._action_error = ""
        lay = widgets.Layout(width="92px")
        self.start_button = widgets.Button(description="Start", icon="play", layout=lay,
                                           button_style="success")
        self.pause_button = widgets.Button(description="Pause", icon="pause", layout=lay)
        self.stop_button = widgets.Button(description="Stop", icon="stop", layout=lay,
                                          button_style="warning")
        self.reset_button = widgets.Button(description="Reset", icon="undo", layout=lay)
        for b, cls in ((self.start_button, "wb-start"), (self.pause_button, "wb-pause"),
                       (self.stop_button, "wb-stop"), (self.reset_button, "wb-reset")):
            b.add_class(cls)
        self.start_button.on_click(lambda _: self._guard(self._on_start))
        self.pause_button.on_click(lambda _: self._guard(session.pause))
        self.stop_button.on_click(lambda _: self._guard(lambda: session.stop(wait=False)))
        self.reset_button.on_click(lambda _: self._guard(session.reset))
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="",
                                              layout=widgets.Layout(width="160px"))
        self.progress_label = widgets.HTML()
        self.status = widgets.HTML()
        self.status.add_class("wb-status")
        self.error = widgets.HTML(layout=widgets.Layout(max_width="760px"))
        self.error.add_class("wb-error")
        buttons = widgets.HBox([self.start_button, self.pause_button, self.stop_button,
                                self.reset_button, self.progress, self.progress_label])
        super().__init__([buttons, self.status, self.error], **kwargs)
        self.refresh()

    def _on_start(self) -> None:
        if self.session.status == "paused":
            self.session.resume()
        else:
            self.session.start(self.chunks_per_start)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
            self._action_error = ""
        except Exception as e:  # noqa: BLE001 - show the problem in the panel, not a traceback
            self._action_error = f"{type(e).__name__}: {e}"
        self.refresh()

    def show_error(self, message: str) -> None:
        """Show ``message`` in the error label (empty string clears it)."""
        if not message:
            self.error.value = ""
            return
        self.error.value = (
            '<div style="color:#b00020;white-space:pre-wrap;font-family:monospace;'
            'border-left:3px solid #b00020;padding-left:6px">'
            f"<b>Run stopped.</b> {html.escape(message)}</div>"
        )

    def refresh(self) -> None:
        """Update buttons, progress, status and error from the session."""
        s = self.session
        status = s.status
        with self.hold_sync():
            self.start_button.description = "Resume" if status == "paused" else "Start"
            self.start_button.disabled = status == "running"
            self.pause_button.disabled = status != "running"
            self.stop_button.disabled = status not in ("running", "paused")
            target = s.target_chunks
            if target:
                self.progress.value = min(1.0, s.chunks_done / target)
                self.progress_label.value = f"chunk {s.chunks_done}/{target}"
            else:
                self.progress.value = 1.0 if status == "running" else 0.0
                self.progress_label.value = f"chunk {s.chunks_done}"
            self.progress.bar_style = {"error": "danger", "finished": "success"}.get(status, "")
            self.status.value = status_html(s)
            self.show_error(s.error_message if status == "error" else self._action_error)
