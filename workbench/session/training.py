"""A live training run of a neural potential: :func:`workbench.ml.train.train` in a worker
thread, its progress kept for panels, stop and resume.

:meth:`TrainingSession.start` trains in the background (JAX releases the GIL while compiled code
runs, so the notebook stays responsive); :meth:`stop` ends the run after the current step and
writes the checkpoint; :meth:`start` again resumes from it with the same mini-batches, so a
stopped-and-resumed run ends with the weights of an uninterrupted one. Events for observers:
``"step"`` (every optimizer step), ``"validation"`` (every evaluation) and ``"status"``. No
widget library is imported here.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading

import numpy as np

from .observers import Observers

__all__ = ["TrainingSession", "TRAINING_EVENTS"]

TRAINING_EVENTS = ("step", "validation", "status")
_log = logging.getLogger(__name__)


class TrainingSession:
    """model: the model to train (shift and scale set, e.g. by
    :func:`~workbench.ml.train.fit_shift_scale`); train_data, valid_data: datasets; steps:
    optimizer steps in all; directory: where the checkpoint and the best model go (default: a
    new temporary directory); options: further keywords of :func:`~workbench.ml.train.train`.

    Attributes read by panels: ``history`` (per step: "step", "loss", "energy_mae",
    "force_mae" of the batch), ``validation`` (per evaluation: "step", "energy_mae",
    "force_mae"), ``last_validation`` (the latest :func:`~workbench.ml.train.evaluate` result,
    with the predicted forces), ``best`` (the model with the lowest validation force MAE so
    far), ``status`` ("idle", "training", "stopped", "done", "error"), ``error``."""

    def __init__(self, model, train_data, valid_data, *, steps: int = 1000,
                 directory: str | None = None, **options):
        if valid_data is None:
            raise ValueError("a training session needs validation data (its panel shows it)")
        self.model, self.best = model, model
        self.train_data, self.valid_data, self.steps = train_data, valid_data, int(steps)
        self.directory = directory or tempfile.mkdtemp(prefix="workbench-train-")
        self.checkpoint = os.path.join(self.directory, "fit.npz")
        self.best_path = os.path.join(self.directory, "best.npz")
        self.options = options
        self.history = {"step": [], "loss": [], "energy_mae": [], "force_mae": []}
        self.validation = {"step": [], "energy_mae": [], "force_mae": []}
        self.last_validation = None
        self.status, self.error, self.result = "idle", None, None
        self._observers = Observers(TRAINING_EVENTS, _log)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def observe(self, callback, event: str):
        """Call ``callback(self)`` on ``event`` (one of :data:`TRAINING_EVENTS`), from the
        worker thread; returns a remover."""
        return self._observers.add(callback, event)

    @property
    def step(self) -> int:
        with self._lock:
            return self.history["step"][-1] if self.history["step"] else 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Train in the background (resuming from the checkpoint after a stop)."""
        if self.running:
            return
        self._stop.clear()
        self._set_status("training")
        self._thread = threading.Thread(target=self._run, name="workbench-training", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop after the current step (checkpoint written)."""
        self._stop.set()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker to finish; False if it is still running after ``timeout``."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.running

    # ------------------------------------------------------------------ worker
    def _set_status(self, status: str) -> None:
        self.status = status
        self._observers.notify("status", self)

    def _callback(self, step, model, info) -> bool:
        with self._lock:
            for k in ("loss", "energy_mae", "force_mae"):
                self.history[k].append(info[k])
            self.history["step"].append(step)
            valid = info.get("valid")
            if valid is not None:
                self.validation["step"].append(step)
                self.validation["energy_mae"].append(valid["energy_mae"])
                self.validation["force_mae"].append(valid["force_mae"])
                self.last_validation = valid
                if valid["force_mae"] <= min(self.validation["force_mae"]):
                    self.best = model
        self._observers.notify("step", self)
        if valid is not None:
            self._observers.notify("validation", self)
        return self._stop.is_set()

    def _run(self) -> None:
        from ..ml.train import train

        try:
            result = train(self.model, self.train_data, self.valid_data, steps=self.steps,
                           checkpoint=self.checkpoint, best=self.best_path, progress=False,
                           callback=self._callback, **self.options)
            self.result = result
            self.best = result.model
            done = result.steps >= self.steps or result.stopped_early
            self._set_status("done" if done else "stopped")
        except Exception as e:  # noqa: BLE001 - shown in the panel, never lost
            self.error = e
            _log.exception("training failed")
            self._set_status("error")

    def force_errors_by_element(self) -> dict[int, float]:
        """{atomic number: validation force MAE (kJ/mol/nm)} of the latest evaluation."""
        v = self.last_validation
        return {} if v is None else dict(v["force_mae_by_element"])

    def parity(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference, predicted) validation force components of the latest evaluation."""
        v = self.last_validation
        if v is None:
            return np.zeros(0), np.zeros(0)
        return self.valid_data.forces.ravel(), np.asarray(v["forces"]).ravel()
