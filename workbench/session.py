"""A live simulation session: the plain-Python controller behind the widget panels.

A :class:`Session` holds a system, its parameters and integrator settings, a
:class:`~workbench.simulate.Simulation`, the frames and thermodynamics produced so far, and a
*runner*: a background thread that calls :meth:`Simulation.advance` chunk after chunk, so the
kernel stays responsive (JAX releases the GIL while compiled code runs).

Two kinds of change, as everywhere in workbench:

* numeric - :meth:`Session.set_params` and :meth:`Session.set_settings` (epsilon, sigma, kT, dt,
  gamma, ...): stored as arrays of fixed dtype and shape and applied at the next chunk boundary,
  never recompiling;
* structural - :meth:`Session.rebuild` (a new system or atom count, another integrator, another
  chunk length): builds a new Simulation, which compiles once (visible in :attr:`compile_count`).

Start, pause, resume, stop and reset act within one chunk. Every chunk leaves a
:class:`ChunkRecord` saying which parameter values it used. Observers (plain callables, see
:meth:`Session.observe`) hear about new frames, status changes, parameter changes and errors;
they run on the runner thread, so they should be quick. No widget library is imported here.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import io as wio
from .simulate import LOG_COLUMNS, BlowupError, Simulation, _same_structure

__all__ = ["EVENTS", "UNITS", "ChunkRecord", "FrameBatch", "ParamSpec", "Session"]

EVENTS = ("frames", "status", "params", "error")
"""Observer events: ``frames`` (a :class:`FrameBatch`), ``status`` (the new status string),
``params`` (dict of pending values just requested) and ``error`` (the exception)."""

# Physical dimension of the usual parameter and setting names, and their units per unit system.
_DIMENSIONS = {
    "epsilon": "energy", "sigma": "length", "D": "energy", "alpha": "1/length", "r0": "length",
    "kT": "energy", "dt": "time", "gamma": "1/time", "tau": "time",
}
UNITS = {
    "molecular": {"energy": "kJ/mol", "length": "nm", "time": "ps", "1/length": "1/nm",
                  "1/time": "1/ps"},
    "reduced": {"energy": "ε", "length": "σ", "time": "τ", "1/length": "1/σ", "1/time": "1/τ"},
}
"""Unit labels for the two unit systems workbench uses (OpenMM's and reduced LJ units)."""

_log = logging.getLogger(__name__)
_SESSIONS: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class ChunkRecord:
    """What one chunk did: its index (since the last reset or rebuild), the steps it covered,
    the parameter and setting values it used (flat name -> float), its wall time (s) and the
    compile count after it."""

    index: int
    first_step: int
    last_step: int
    n_frames: int
    params: dict[str, float]
    settings: dict[str, float]
    seconds: float
    compile_count: int


@dataclass(frozen=True)
class FrameBatch:
    """Frames of one chunk as delivered to ``frames`` observers: positions (F, N, 3) nm,
    thermodynamics (F,) arrays, the index of the first frame in the session's history and the
    chunk's :class:`ChunkRecord`."""

    positions: np.ndarray
    thermo: dict[str, np.ndarray]
    first_frame: int
    record: ChunkRecord


@dataclass(frozen=True)
class ParamSpec:
    """A numeric knob: flat ``name`` (e.g. ``"epsilon"``, ``"lj.sigma"``, ``"epsilon[1]"``),
    ``group`` (``"params"`` or ``"settings"``), current ``value`` and ``unit`` label."""

    name: str
    group: str
    value: float
    unit: str = ""


@dataclass
class _Leaf:
    path: tuple
    shape: tuple
    dtype: Any
    names: list[str] = field(default_factory=list)


class Session:
    """Live controller of one simulation.

    system: a :class:`~workbench.systems.System` (or any object with ``potential``, ``params``,
      ``positions`` (N, 3), ``masses`` and ``space``; ``mdtraj_topology()`` is used if present).
    integrator: a name in :data:`workbench.simulate.INTEGRATORS` or an Integrator.
    settings: the integrator's numeric settings, e.g. ``dict(dt=0.005, kT=1.0, gamma=1.0)``.
    seed: PRNG seed (velocities, noise). positions / velocities: start state (N, 3), default the
      system's positions and Maxwell-Boltzmann velocities.
    report_interval, frames_per_chunk: steps per frame and frames per compiled chunk
      (structural; a chunk is ``report_interval * frames_per_chunk`` steps). Keep chunks short
      (tens of milliseconds) so controls and slider changes act quickly.
    max_frames: frames kept for replay and export (older ones are dropped; the thermodynamics
      history keeps every frame). units: ``"molecular"`` or ``"reduced"`` (labels only).
    """

    def __init__(self, system, integrator="langevin", settings: dict | None = None, *,
                 seed: int = 0, positions=None, velocities=None, report_interval: int = 10,
                 frames_per_chunk: int = 1, max_frames: int = 5000, max_records: int = 10_000,
                 units: str = "molecular", blowup_force: float = 1e8):
        if units not in UNITS:
            raise ValueError(f"units must be one of {sorted(UNITS)}, got {units!r}")
        if settings is None:
            raise TypeError("settings are required, e.g. dict(dt=0.005, kT=1.0, gamma=1.0)")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.units = units
        self.max_frames = int(max_frames)
        self.max_records = int(max_records)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._observers: dict[str, list[Callable]] = {e: [] for e in EVENTS}
        self._thread: threading.Thread | None = None
        self._pause_requested = self._stop_requested = False
        self._previous_compiles = 0
        self._config = {
            "integrator": integrator, "settings": dict(settings), "seed": seed,
            "report_interval": report_interval, "frames_per_chunk": frames_per_chunk,
            "blowup_force": blowup_force,
        }
        self._install(system, self._make_simulation(self._config, system, positions, velocities))
        _SESSIONS.add(self)

    # ================================================================ construction
    @staticmethod
    def _make_simulation(config: dict, system, positions, velocities) -> Simulation:
        start = system.positions if positions is None else positions
        return Simulation(
            system.potential, system.params, config["integrator"], config["settings"], start,
            masses=system.masses, seed=config["seed"], velocities=velocities,
            report_interval=config["report_interval"],
            frames_per_chunk=config["frames_per_chunk"], blowup_force=config["blowup_force"],
        )

    def _install(self, system, simulation: Simulation) -> None:
        """Make ``simulation`` the session's (call under the lock, or before any thread)."""
        self.system, self.simulation = system, simulation
        self._leaves = _describe(simulation.params)
        self._initial_state = simulation.state
        self._pending_params = None  # a full params pytree, already cast
        self._pending_settings: dict[str, float] = {}
        self._clear_history()
        self._status = "idle"

    def _clear_history(self) -> None:
        self._frames: deque = deque(maxlen=self.max_frames)
        self._frames_total = 0
        self._thermo = {k: _Column() for k in [*LOG_COLUMNS, "chunk"]}
        self._records: deque[ChunkRecord] = deque(maxlen=self.max_records)
        self._chunks_done = 0
        self._target: int | None = None
        self._time = 0.0
        self._last_step = int(self.simulation.state.step)
        self._rate = 0.0
        self.error: BaseException | None = None
        self.error_message = ""

    # ================================================================ read-only views
    @property
    def status(self) -> str:
        """One of ``idle``, ``running``, ``paused``, ``stopped``, ``finished``, ``error``."""
        return self._status

    @property
    def running(self) -> bool:
        """True while the runner thread is alive (running or paused)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def n_atoms(self) -> int:
        return self.simulation.n_atoms

    @property
    def steps_per_chunk(self) -> int:
        """Steps per compiled chunk (structural)."""
        return self.simulation.steps_per_chunk

    @property
    def compile_count(self) -> int:
        """Compilations of the chunk function over this session's life (rebuilds included)."""
        return self._previous_compiles + self.simulation.compile_count

    @property
    def chunks_done(self) -> int:
        return self._chunks_done

    @property
    def target_chunks(self) -> int | None:
        """Chunk count at which the current run stops by itself (None: runs until stopped)."""
        return self._target

    @property
    def step(self) -> int:
        """Current MD step of the simulation state."""
        return self._last_step

    @property
    def steps_per_second(self) -> float:
        """Recent throughput of the runner (steps of dynamics per wall-clock second)."""
        return self._rate

    @property
    def n_frames(self) -> int:
        """Frames kept for replay and export (at most ``max_frames``)."""
        return len(self._frames)

    @property
    def frames_total(self) -> int:
        """Frames produced since the last reset or rebuild (kept or dropped)."""
        return self._frames_total

    @property
    def records(self) -> list[ChunkRecord]:
        """One :class:`ChunkRecord` per chunk since the last reset or rebuild (the newest
        ``max_records``)."""
        with self._lock:
            return list(self._records)

    @property
    def last_record(self) -> ChunkRecord | None:
        """The newest :class:`ChunkRecord`, or None before the first chunk."""
        with self._lock:
            return self._records[-1] if self._records else None

    @property
    def params(self):
        """The parameter pytree the simulation uses now (pending changes not included)."""
        return self.simulation.params

    @property
    def settings(self) -> dict[str, float]:
        """The integrator settings in use now, name -> float."""
        s = self.simulation.settings
        return {f: float(getattr(s, f)) for f in s.__dataclass_fields__}

    @property
    def box(self) -> np.ndarray | None:
        """(3, 3) box vectors in nm, or None in free space."""
        space = getattr(self.system, "space", None)
        if space is None or not space.periodic:
            return None
        return np.asarray(space.box, dtype=float)

    def param_values(self) -> dict[str, float]:
        """Applied potential parameters as flat name -> float."""
        return _flat_values(self._leaves, self.simulation.params)

    def pending(self) -> dict[str, float]:
        """Requested changes not yet applied (they apply at the next chunk boundary)."""
        with self._lock:
            out = {}
            if self._pending_params is not None:
                new = _flat_values(self._leaves, self._pending_params)
                old = self.param_values()
                out.update({k: v for k, v in new.items() if v != old[k]})
            out.update(self._pending_settings)
            return out

    def param_specs(self) -> list[ParamSpec]:
        """Every numeric knob (potential parameters, then integrator settings), with the values
        that will be in use at the next chunk and unit labels."""
        with self._lock:
            tree = self._pending_params if self._pending_params is not None else self.params
            values = _flat_values(self._leaves, tree)
            settings = {**self.settings, **self._pending_settings}
        labels = UNITS[self.units]
        out = [ParamSpec(k, "params", v, labels.get(_DIMENSIONS.get(_base(k), ""), ""))
               for k, v in values.items()]
        out += [ParamSpec(k, "settings", v, labels.get(_DIMENSIONS.get(k, ""), ""))
                for k, v in settings.items()]
        return out

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Kept frames ``[start:stop]`` as one array (T, N, 3), nm, unwrapped."""
        with self._lock:
            kept = list(self._frames)[start:stop]
        if not kept:
            return np.zeros((0, self.n_atoms, 3), np.float32)
        return np.stack(kept)

    def frame(self, index: int = -1) -> np.ndarray:
        """One kept frame (N, 3), nm; the start structure when nothing has run yet."""
        with self._lock:
            if not self._frames:
                return np.asarray(self.simulation.state.positions)
            return self._frames[index]

    def thermo(self, columns=None, every: int = 1) -> dict[str, np.ndarray]:
        """Thermodynamics of every frame since the last reset or rebuild (copies): step,
        time, potential, kinetic, total, conserved (kJ/mol), temperature (kT), pressure
        (kJ/mol/nm^3), chunk. ``time`` accumulates each chunk's own dt. ``columns`` picks
        some; ``every`` takes every k-th row (cheap thinning for plots)."""
        names = list(self._thermo) if columns is None else list(columns)
        with self._lock:
            return {k: self._thermo[k].values[::every].copy() for k in names}

    def wrapped(self, positions) -> np.ndarray:
        """Positions (..., 3) nm mapped into the primary cell, for display."""
        r = np.asarray(positions, dtype=float)
        box = self.box
        if box is None:
            return r
        s = r @ np.linalg.inv(box)
        return (s - np.floor(s)) @ box

    def topology(self):
        """An mdtraj topology of the system (one residue per atom when the system has none)."""
        if hasattr(self.system, "mdtraj_topology"):
            return self.system.mdtraj_topology()
        from .systems import placeholder_topology

        return placeholder_topology(self.n_atoms)

    # ================================================================ observers
    def observe(self, callback: Callable[[Any], None], event: str = "frames") -> Callable[[], None]:
        """Call ``callback(payload)`` on ``event`` (see :data:`EVENTS`). Returns a function
        that removes the observer. Callbacks run on the runner thread (or the caller's, for
        status changes made there); exceptions in them are caught and ignored."""
        if event not in self._observers:
            raise ValueError(f"unknown event {event!r}; choose one of {EVENTS}")
        self._observers[event].append(callback)

        def remove():
            if callback in self._observers[event]:
                self._observers[event].remove(callback)

        return remove

    def _notify(self, event: str, payload) -> None:
        for cb in list(self._observers[event]):
            try:
                cb(payload)
            except Exception:  # noqa: BLE001 - an observer must never kill the runner
                _log.exception("workbench session observer %r failed on %r", cb, event)

    def _set_status(self, status: str) -> None:
        with self._lock:
            if status == self._status:
                return
            self._status = status
            self._cond.notify_all()
        self._notify("status", status)

    # ================================================================ numeric changes
    def set_params(self, params=None, **values: float) -> None:
        """Change potential parameters without recompiling; applied at the next chunk boundary
        (at once when no run is going). Pass a whole pytree of the same structure, or flat
        names from :meth:`param_values`, e.g. ``set_params(epsilon=1.2)``. A name of a
        per-type array without an index (``epsilon``) sets every type. Values are cast to the
        stored dtype and shape here, so a bad value raises in the caller."""
        with self._lock:
            base = self._pending_params if self._pending_params is not None else self.params
            if params is not None:
                base = _same_structure(self.params, params, "params")
            if values:
                base = _with_values(self._leaves, base, values)
            self._pending_params = base
            self._apply_if_idle()
        self._notify("params", dict(values) if values else {"params": params})

    def set_settings(self, **values: float) -> None:
        """Change integrator settings (dt, kT, gamma, tau, ...) without recompiling; applied
        at the next chunk boundary (at once when no run is going)."""
        with self._lock:
            merged = {**self.settings, **self._pending_settings}
            unknown = set(values) - set(merged)
            if unknown:
                raise TypeError(f"unknown settings {sorted(unknown)}; known: {sorted(merged)}")
            merged.update({k: float(v) for k, v in values.items()})
            self.simulation.integrator.settings(**merged)  # validates (positive, finite)
            self._pending_settings.update({k: float(v) for k, v in values.items()})
            self._apply_if_idle()
        self._notify("params", dict(values))

    def _apply_if_idle(self) -> None:
        if not self.running:
            self._apply_pending()

    def _apply_pending(self) -> None:
        """Hand pending values to the simulation (caller holds the lock)."""
        if self._pending_params is not None:
            self.simulation.set_params(self._pending_params)
            self._pending_params = None
        if self._pending_settings:
            self.simulation.set_settings(**self._pending_settings)
            self._pending_settings = {}

    # ================================================================ structural changes
    def rebuild(self, system=None, *, integrator=None, settings: dict | None = None,
                positions=None, velocities=None, seed: int | None = None,
                report_interval: int | None = None, frames_per_chunk: int | None = None) -> None:
        """Structural change: stop the run, build a new Simulation (new system or atom count,
        integrator, chunk length) and clear the history. The next chunk compiles once more.
        Without a new ``system``, the run continues from the current positions and velocities
        with the current parameter values; a new system brings its own."""
        self.stop()
        config = dict(self._config)
        if integrator is not None:
            config["integrator"] = integrator
            if settings is None:
                raise TypeError("a new integrator needs its settings, e.g. dict(dt=..., kT=...)")
        if settings is not None:
            config["settings"] = dict(settings)
        else:
            config["settings"] = {**self.settings, **self._pending_settings}
        for k, v in (("seed", seed), ("report_interval", report_interval),
                     ("frames_per_chunk", frames_per_chunk)):
            if v is not None:
                config[k] = v
        carried = None
        if system is None:
            system = self.system
            if positions is None and self._frames_total:  # continue from the current state
                positions = np.asarray(self.simulation.state.positions)
                if velocities is None:
                    velocities = np.asarray(self.simulation.state.velocities)
            carried = self._pending_params if self._pending_params is not None else self.params
        simulation = self._make_simulation(config, system, positions, velocities)  # compiles
        if carried is not None:
            simulation.set_params(carried)
        with self._lock:
            self._previous_compiles += self.simulation.compile_count
            self._config = config
            self._install(system, simulation)
        self._notify("status", "rebuilt")
        self._notify("status", self._status)

    # ================================================================ the runner
    def start(self, n_chunks: int | None = None, *, n_steps: int | None = None) -> None:
        """Run in the background for ``n_chunks`` more chunks (or enough chunks to cover
        ``n_steps``; neither: until :meth:`stop`). Resumes a paused run. Returns at once."""
        if n_steps is not None:
            n_chunks = math.ceil(n_steps / self.steps_per_chunk)
        if n_chunks is not None and n_chunks < 0:
            raise ValueError(f"n_chunks must be >= 0, got {n_chunks}")
        with self._lock:
            self._target = None if n_chunks is None else self._chunks_done + int(n_chunks)
            self._pause_requested = False
            self._stop_requested = False
            if self.error is not None:
                self.error, self.error_message = None, ""
            if self.running:
                self._cond.notify_all()
                return
            self._thread = threading.Thread(target=self._run, name="workbench-runner",
                                            daemon=True)
            self._status = "running"
            self._thread.start()
        self._notify("status", "running")

    def pause(self, wait: bool = False) -> None:
        """Pause after the current chunk; :meth:`resume` (or :meth:`start`) continues.
        With ``wait``, return once the runner has paused."""
        with self._lock:
            if not self.running:
                return
            self._pause_requested = True
            if wait and threading.current_thread() is not self._thread:
                while self.running and self._status == "running":
                    self._cond.wait(0.1)

    def resume(self) -> None:
        """Continue a paused run (same target as before)."""
        with self._lock:
            if not self.running:
                return
            self._pause_requested = False
            self._cond.notify_all()

    def stop(self, wait: bool = True) -> None:
        """End the run after the current chunk (frames so far are kept; :meth:`start`
        continues from here). With ``wait``, return once the runner thread has ended."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                return
            self._stop_requested = True
            self._cond.notify_all()
        if wait and thread is not threading.current_thread():
            thread.join()

    def reset(self) -> None:
        """Stop, return to the start structure and velocities (step 0) and clear the history.
        Parameter and setting values stay as they are now; nothing recompiles."""
        self.stop()
        with self._lock:
            self._apply_pending()
            self.simulation.state = self._initial_state
            self._clear_history()
            self._status = "idle"
        self._notify("status", "reset")
        self._notify("status", "idle")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the runner thread ends (finished, stopped or error). Returns False if
        ``timeout`` (s) passed first. A paused run does not end by itself."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def wait_frames(self, n_frames: int, timeout: float | None = None) -> bool:
        """Block until ``frames_total >= n_frames`` or the run ends (or ``timeout`` s pass).
        Returns True if the frames are there. A bounded wait for analysis cells while the
        live run keeps going."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._frames_total < n_frames and self.running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.05 if left is None else min(left, 0.05))
            return self._frames_total >= n_frames

    def run_blocking(self, n_chunks: int | None = None, *, n_steps: int | None = None
                     ) -> dict[str, np.ndarray]:
        """Run ``n_chunks`` chunks (or ``n_steps`` steps) and wait for them (for scripts and
        batch-run notebooks). Raises the run's error, if any; frames so far are kept.
        Returns :meth:`thermo`."""
        if n_chunks is None and n_steps is None:
            raise TypeError("run_blocking needs n_chunks or n_steps (it must end by itself)")
        self.start(n_chunks, n_steps=n_steps)
        try:
            self.wait()
        except KeyboardInterrupt:  # interrupting the cell stops the run (within one chunk)
            self.stop()
            raise
        if self.error is not None:
            raise self.error
        return self.thermo()

    def _next_action(self):
        """Runner bookkeeping at a chunk boundary (under the lock): what to do next, and the
        values the next chunk will use."""
        if self._stop_requested:
            return "stopped", None
        if self._pause_requested:
            if self._status != "paused":
                self._status = "paused"
                self._cond.notify_all()
                return "notify-paused", None
            self._cond.wait()
            return "wait", None
        if self._target is not None and self._chunks_done >= self._target:
            return "finished", None
        resumed = self._status != "running"
        self._status = "running"
        self._apply_pending()
        return ("resumed" if resumed else "run"), (self.param_values(), self.settings)

    def _run(self) -> None:
        sim = self.simulation
        while True:
            with self._lock:
                action, used = self._next_action()
            if action in ("stopped", "finished"):
                self._set_status(action)
                return
            if action == "notify-paused":
                self._notify("status", "paused")
            if used is None:
                continue
            if action == "resumed":
                self._notify("status", "running")
            t0 = time.perf_counter()
            try:
                frame, failure = sim.advance(), None
            except Exception as e:  # noqa: BLE001 - any failure ends the run, shown to the user
                frame, failure = getattr(e, "frames", None), e
            seconds = time.perf_counter() - t0
            if frame is not None and len(frame.positions):
                self._notify("frames", self._append(frame, *used, seconds))
            if failure is not None:
                self._fail(failure)
                return

    def _append(self, frame, used_params, used_settings, seconds) -> FrameBatch:
        pos = np.asarray(frame.positions)
        steps = np.asarray(frame.thermo["step"]).astype(np.int64)
        dt = used_settings.get("dt", float(self.simulation.settings.dt))
        with self._lock:
            first = self._frames_total
            times = self._time + (steps - self._last_step) * dt
            record = ChunkRecord(
                index=self._chunks_done, first_step=self._last_step + 1,
                last_step=int(steps[-1]), n_frames=len(pos), params=used_params,
                settings=used_settings, seconds=seconds,
                compile_count=self.compile_count,
            )
            n_steps = int(steps[-1]) - self._last_step
            self._time, self._last_step = float(times[-1]), int(steps[-1])
            for r in pos:
                self._frames.append(r)
            self._frames_total += len(pos)
            thermo = {k: np.asarray(v) for k, v in frame.thermo.items()}
            thermo["time"] = times
            thermo["chunk"] = np.full(len(pos), self._chunks_done)
            for k, column in self._thermo.items():
                column.extend(thermo[k])
            self._records.append(record)
            self._chunks_done += 1
            self._cond.notify_all()
            rate = n_steps / max(seconds, 1e-9)
            self._rate = rate if self._rate == 0.0 else 0.7 * self._rate + 0.3 * rate
        return FrameBatch(pos, thermo, first, record)

    def _fail(self, exc: BaseException) -> None:
        if hasattr(exc, "frames") and hasattr(exc, "step"):
            exc = BlowupError(str(exc), exc.step, exc.atoms)
        message = str(exc) if isinstance(exc, BlowupError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.error, self.error_message = exc, message
        self._notify("error", exc)
        self._set_status("error")

    # ================================================================ export
    def export(self, path: str, log: str | None = "auto") -> tuple[str, str | None]:
        """Write the kept frames to ``path`` (.dcd with a .pdb topology beside it, or .h5 with
        the topology inside) and the thermodynamics of every frame to a CSV log (``"auto"``:
        same name with .csv; None: no log). Safe while running (a snapshot is written).
        Returns (trajectory path, log path)."""
        with self._lock:
            frames = self.frames()
            thermo = self.thermo()
        if len(frames) == 0:
            raise ValueError("nothing to export yet: run the simulation first")
        path = os.fspath(path)
        times = thermo["time"][-len(frames):]
        with wio.TrajectoryWriter(path, self.topology(), self.box) as writer:
            writer.write(frames, times)
        log_path = None
        if log is not None:
            log_path = os.path.splitext(path)[0] + ".csv" if log == "auto" else os.fspath(log)
            logger = wio.ThermoLog(log_path, LOG_COLUMNS)
            try:
                logger.write(thermo)
            finally:
                logger.close()
        return path, log_path

    def __repr__(self) -> str:
        return (f"Session({self.n_atoms} atoms, {self.simulation.integrator.name}, "
                f"status={self._status}, step={self._last_step}, frames={self._frames_total}, "
                f"compiles={self.compile_count})")


class _Column:
    """A growing float64 array (amortized doubling)."""

    def __init__(self):
        self._data, self._n = np.empty(256), 0

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._n]

    def extend(self, new) -> None:
        new = np.asarray(new, dtype=float).reshape(-1)
        if self._n + len(new) > len(self._data):
            grown = np.empty(max(2 * len(self._data), self._n + len(new)))
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : self._n + len(new)] = new
        self._n += len(new)


# ==================================================================== pytree helpers
def _describe(params) -> list[_Leaf]:
    """Flat names for every scalar inside the params pytree."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.asarray(leaf)
        base = ".".join(_key_name(k) for k in path) or "param"
        if arr.size == 1:
            names = [base]
        else:
            names = [f"{base}[{','.join(map(str, ix))}]" for ix in np.ndindex(arr.shape)]
        out.append(_Leaf(path, arr.shape, jnp.asarray(leaf).dtype, names))
    return out


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _base(name: str) -> str:
    return name.split("[")[0].split(".")[-1]


def _flat_values(leaves: list[_Leaf], tree) -> dict[str, float]:
    out = {}
    for spec, leaf in zip(leaves, jax.tree_util.tree_leaves(tree)):
        flat = np.asarray(leaf, dtype=float).reshape(-1)
        out.update({n: float(v) for n, v in zip(spec.names, flat)})
    return out


def _with_values(leaves: list[_Leaf], tree, values: dict[str, float]):
    """A copy of ``tree`` with flat-named values replaced (cast to each leaf's dtype)."""
    flat, treedef = jax.tree_util.tree_flatten(tree)
    arrays = [np.array(x, dtype=float) for x in flat]
    known = {}
    for i, spec in enumerate(leaves):
        for j, n in enumerate(spec.names):
            known[n] = (i, j)
        base = spec.names[0].split("[")[0]
        if len(spec.names) > 1:
            known.setdefault(base, (i, None))
    unknown = set(values) - set(known)
    if unknown:
        raise KeyError(f"unknown parameters {sorted(unknown)}; known: {sorted(known)}")
    for name, v in values.items():
        v = float(v)
        if not np.isfinite(v):
            raise ValueError(f"parameter {name} must be finite, got {v}")
        i, j = known[name]
        if j is None:
            arrays[i][...] = v
        else:
            arrays[i].reshape(-1)[j] = v
    out = [jnp.asarray(a, dtype=spec.dtype) for a, spec in zip(arrays, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


@atexit.register
def _stop_all() -> None:
    """Stop every running session at interpreter exit (each within one chunk)."""
    for s in list(_SESSIONS):
        s.stop(wait=False)
    for s in list(_SESSIONS):
        t = s._thread
        if t is not None and t.is_alive():
            t.join(timeout=10.0)
