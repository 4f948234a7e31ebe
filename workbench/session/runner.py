"""The session's runner: a background thread that advances the simulation chunk after chunk.

JAX releases the GIL while compiled code runs, so the kernel stays responsive. Start, pause,
resume and stop take effect at the next chunk boundary; parameter changes made meanwhile are
handed to the simulation there (:meth:`Session._apply_pending`), and every chunk records the
values it used. The runner shares the session's lock and condition variable.
"""

from __future__ import annotations

import math
import threading
import time

__all__ = ["Runner"]


class Runner:
    """Thread control for one :class:`~workbench.session.Session`."""

    def __init__(self, session):
        self.session = session
        self.thread: threading.Thread | None = None
        self.pause_requested = self.stop_requested = False
        self.target: int | None = None  # chunk count at which the run ends by itself

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    # ---------------------------------------------------------------- control
    def start(self, n_chunks: int | None = None, n_steps: int | None = None) -> None:
        s = self.session
        if n_steps is not None:
            n_chunks = math.ceil(n_steps / s.steps_per_chunk)
        if n_chunks is not None and n_chunks < 0:
            raise ValueError(f"n_chunks must be >= 0, got {n_chunks}")
        with s._lock:
            done = s._history.chunks_done
            self.target = None if n_chunks is None else done + int(n_chunks)
            self.pause_requested = self.stop_requested = False
            if s.error is not None:
                s.error, s.error_message = None, ""
            if self.alive:
                s._cond.notify_all()
                return
            self.thread = threading.Thread(target=self._run, name="workbench-runner",
                                           daemon=True)
            s._status = "running"
            self.thread.start()
        s._notify("status", "running")

    def pause(self, wait: bool = False) -> None:
        s = self.session
        with s._lock:
            if not self.alive:
                return
            self.pause_requested = True
            if wait and threading.current_thread() is not self.thread:
                while self.alive and s._status == "running":
                    s._cond.wait(0.1)

    def resume(self) -> None:
        s = self.session
        with s._lock:
            if not self.alive:
                return
            self.pause_requested = False
            s._cond.notify_all()

    def stop(self, wait: bool = True) -> None:
        s = self.session
        with s._lock:
            thread = self.thread
            if thread is None or not thread.is_alive():
                return
            self.stop_requested = True
            s._cond.notify_all()
        if wait and thread is not threading.current_thread():
            thread.join()

    def wait(self, timeout: float | None = None) -> bool:
        thread = self.thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def wait_frames(self, n_frames: int, timeout: float | None = None) -> bool:
        s = self.session
        deadline = None if timeout is None else time.monotonic() + timeout
        with s._lock:
            while s._history.frames_total < n_frames and self.alive:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                s._cond.wait(0.05 if left is None else min(left, 0.05))
            return s._history.frames_total >= n_frames

    # ---------------------------------------------------------------- the thread
    def _next_action(self):
        """Bookkeeping at a chunk boundary (under the lock): what to do next, and the values
        the next chunk will use."""
        s = self.session
        if self.stop_requested:
            return "stopped", None
        if self.pause_requested:
            if s._status != "paused":
                s._status = "paused"
                s._cond.notify_all()
                return "notify-paused", None
            s._cond.wait()
            return "wait", None
        if self.target is not None and s._history.chunks_done >= self.target:
            return "finished", None
        resumed = s._status != "running"
        s._status = "running"
        s._apply_pending()
        return ("resumed" if resumed else "run"), (s.param_values(), s.settings)

    def _run(self) -> None:
        s = self.session
        sim = s.simulation
        while True:
            with s._lock:
                action, used = self._next_action()
            if action in ("stopped", "finished"):
                s._set_status(action)
                return
            if action == "notify-paused":
                s._notify("status", "paused")
            if used is None:
                continue
            if action == "resumed":
                s._notify("status", "running")
            t0 = time.perf_counter()
            try:
                frame, failure = sim.advance(), None
            except Exception as e:  # noqa: BLE001 - any failure ends the run, shown to the user
                frame, failure = getattr(e, "frames", None), e
            seconds = time.perf_counter() - t0
            if frame is not None and len(frame.positions):
                s._notify("frames", s._append(frame, *used, seconds))
            if failure is not None:
                s._fail(failure)
                return
