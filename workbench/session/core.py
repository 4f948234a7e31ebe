"""The :class:`Session` facade: one object that the panels and notebooks talk to.

It holds a system and its :class:`~workbench.simulate.Simulation`, takes numeric changes
(:meth:`set_params`, :meth:`set_settings`: applied at the next chunk, never recompiling) and
structural ones (:meth:`rebuild`: compiles once), and delegates the rest: the background thread
to :class:`~.runner.Runner`, frames and thermodynamics to :class:`~.history.History`, flat
parameter names and units to :mod:`.params`. Observers (plain callables, :meth:`observe`) hear
about new frames, status changes, parameter changes and errors; they run on the runner thread.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..simulate import BlowupError, Simulation, _same_structure
from ..system import System
from . import history as hist
from . import params as pn
from .observers import Observers
from .runner import Runner

__all__ = ["EVENTS", "Session"]

EVENTS = ("frames", "status", "params", "error")
"""Observer events: ``frames`` (a :class:`FrameBatch`), ``status`` (the new status string),
``params`` (dict of pending values just requested) and ``error`` (the exception)."""

_log = logging.getLogger("workbench.session")
SESSIONS: weakref.WeakSet = weakref.WeakSet()


class Session:
    """Live controller of one simulation.

    system: a :class:`~workbench.system.System` (a
      :class:`~workbench.forcefield.openmm.ForceFieldSystem` is one): potential, params,
      positions, masses, constraints, topology and units are read from it.
    integrator: a name in :data:`workbench.simulate.INTEGRATORS` or an Integrator.
    settings: the integrator's numeric settings, e.g. ``dict(dt=0.005, kT=1.0, gamma=1.0)``.
    seed: PRNG seed (velocities, noise). positions / velocities: start state (N, 3), default the
      system's positions and Maxwell-Boltzmann velocities.
    report_interval, frames_per_chunk: steps per frame and frames per compiled chunk
      (structural; a chunk is ``report_interval * frames_per_chunk`` steps). Keep chunks short
      (tens of milliseconds) so controls and slider changes act quickly.
    max_frames: frames kept for replay and export (older ones are dropped; the thermodynamics
      history keeps every frame). units: ``"molecular"`` or ``"reduced"`` for the labels
      (default: the system's).
    """

    def __init__(self, system, integrator="langevin", settings: dict | None = None, *,
                 seed: int = 0, positions=None, velocities=None, report_interval: int = 10,
                 frames_per_chunk: int = 1, max_frames: int = 5000, max_records: int = 10_000,
                 units: str | None = None, blowup_force: float = 1e8):
        if not isinstance(system, System):
            raise TypeError(f"Session needs a workbench.System (potential, params, masses, "
                            f"constraints, ...), got {type(system).__name__}: build one with "
                            "workbench.System(potential, params, positions, masses) or load "
                            "one (workbench.forcefield.load, workbench.lj_fluid)")
        units = system.units if units is None else units
        if units not in pn.UNIT_SYSTEMS:
            raise ValueError(f"units must be one of {list(pn.UNIT_SYSTEMS)}, got {units!r}")
        if settings is None:
            raise TypeError("settings are required, e.g. dict(dt=0.005, kT=1.0, gamma=1.0)")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.units = units
        self.max_frames, self.max_records = int(max_frames), int(max_records)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._observers = Observers(EVENTS, _log)
        self._runner = Runner(self)
        self._previous_compiles = 0
        self._config = {
            "integrator": integrator, "settings": dict(settings), "seed": seed,
            "report_interval": report_interval, "frames_per_chunk": frames_per_chunk,
            "blowup_force": blowup_force,
        }
        self._install(system, self._make_simulation(self._config, system, positions, velocities))
        SESSIONS.add(self)

    # ================================================================ construction
    @staticmethod
    def _make_simulation(config: dict, system, positions, velocities) -> Simulation:
        start = system.positions if positions is None else positions
        return Simulation(
            system, config["integrator"], config["settings"], positions=start,
            seed=config["seed"], velocities=velocities,
            report_interval=config["report_interval"],
            frames_per_chunk=config["frames_per_chunk"], blowup_force=config["blowup_force"],
        )

    def _install(self, system, simulation: Simulation) -> None:
        """Make ``simulation`` the session's (call under the lock, or before any thread)."""
        self.system, self.simulation = system, simulation
        self._molecule_index: np.ndarray | None | bool = False  # not computed yet
        self._leaves = pn.describe(simulation.params)
        self._param_units = system.potential.param_units()
        self._initial_state = simulation.state
        self._pending_params = None  # a full params pytree, already cast
        self._pending_settings: dict[str, float] = {}
        self._clear_history()
        self._status = "idle"

    def _clear_history(self) -> None:
        self._history = hist.History(self.max_frames, self.max_records,
                                     int(self.simulation.state.step),
                                     self.simulation.log_columns)
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
        return self._runner.alive

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
        return self._history.chunks_done

    @property
    def target_chunks(self) -> int | None:
        """Chunk count at which the current run stops by itself (None: runs until stopped)."""
        return self._runner.target

    @property
    def step(self) -> int:
        """Current MD step of the simulation state."""
        return self._history.last_step

    @property
    def steps_per_second(self) -> float:
        """Recent throughput of the runner (steps of dynamics per wall-clock second)."""
        return self._history.rate

    @property
    def n_frames(self) -> int:
        """Frames kept for replay and export (at most ``max_frames``)."""
        return len(self._history.frames)

    @property
    def frames_total(self) -> int:
        """Frames produced since the last reset or rebuild (kept or dropped)."""
        return self._history.frames_total

    @property
    def records(self) -> list[hist.ChunkRecord]:
        """One :class:`ChunkRecord` per chunk since the last reset or rebuild (the newest
        ``max_records``)."""
        with self._lock:
            return list(self._history.records)

    @property
    def last_record(self) -> hist.ChunkRecord | None:
        """The newest :class:`ChunkRecord`, or None before the first chunk."""
        with self._lock:
            return self._history.records[-1] if self._history.records else None

    @property
    def params(self):
        """The parameter pytree the simulation uses now (pending changes not included)."""
        return self.simulation.params

    @property
    def next_params(self):
        """The parameter pytree the next chunk will use: pending changes included."""
        with self._lock:
            return self._pending_params if self._pending_params is not None else self.params

    @property
    def settings(self) -> dict[str, float]:
        """The integrator settings in use now, name -> float."""
        s = self.simulation.settings
        return {f: float(getattr(s, f)) for f in s.__dataclass_fields__}

    @property
    def box(self) -> np.ndarray | None:
        """(3, 3) box vectors in nm of the current state, or None in free space."""
        if not self.system.space.periodic:
            return None
        return np.asarray(self.simulation.state.box, dtype=float)

    def param_values(self) -> dict[str, float]:
        """Every scalar parameter in use now, by flat name (``epsilon``, ``lj.sigma[1]``)."""
        return pn.flat_values(self._leaves, self.simulation.params)

    def pending(self) -> dict[str, float]:
        """Values requested but not yet applied (they apply at the next chunk boundary)."""
        with self._lock:
            out = {}
            if self._pending_params is not None:
                new = pn.flat_values(self._leaves, self._pending_params)
                old = self.param_values()
                out.update({k: v for k, v in new.items() if v != old[k]})
            out.update(self._pending_settings)
            return out

    def param_specs(self) -> list[pn.ParamSpec]:
        """Every numeric knob (potential parameters, then integrator settings), with the values
        that will be in use at the next chunk and unit labels."""
        with self._lock:
            tree = self._pending_params if self._pending_params is not None else self.params
            values = pn.flat_values(self._leaves, tree)
            settings = {**self.settings, **self._pending_settings}
        out = [pn.ParamSpec(k, "params", v, pn.unit_label(k, "params", self._param_units,
                                                         self.units))
               for k, v in values.items()]
        out += [pn.ParamSpec(k, "settings", v, pn.unit_label(k, "settings", {}, self.units))
                for k, v in settings.items()]
        return out

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Kept frames ``[start:stop]`` as one array (T, N, 3), nm, unwrapped."""
        with self._lock:
            return self._history.frame_array(self.n_atoms, start, stop)

    def frame(self, index: int = -1) -> np.ndarray:
        """One kept frame (N, 3), nm; the start structure when nothing has run yet."""
        with self._lock:
            if not self._history.frames:
                return np.asarray(self.simulation.state.positions)
            return self._history.frames[index]

    def thermo(self, columns=None, every: int = 1) -> dict[str, np.ndarray]:
        """Thermodynamics of every frame since the last reset or rebuild (copies): step,
        time, potential, kinetic, total, conserved (kJ/mol), kT (kJ/mol, or reduced),
        pressure (kJ/mol/nm^3), chunk. ``time`` accumulates each chunk's own dt. ``columns``
        picks some; ``every`` takes every k-th row (cheap thinning for plots)."""
        with self._lock:
            return self._history.thermo(columns, every)

    def wrapped(self, positions) -> np.ndarray:
        """Positions (..., 3) nm mapped into the primary cell, for display: whole molecules
        (bonded groups from the topology) are shifted by the image of their centre, so they
        stay whole; single atoms are wrapped one by one."""
        r = np.asarray(positions, dtype=float)
        box = self.box
        if box is None:
            return r
        inv = np.linalg.inv(box)
        groups = self._molecules()
        if groups is None:
            s = r @ inv
            return (s - np.floor(s)) @ box
        if r.ndim == 3:
            return np.stack([self.wrapped(f) for f in r])
        centre = np.stack([np.bincount(groups, r[:, a]) for a in range(3)], -1)
        centre /= np.bincount(groups)[:, None]
        return r - (np.floor(centre @ inv) @ box)[groups]

    def _molecules(self) -> np.ndarray | None:
        """(N,) molecule index of each atom from the topology's bonds, or None without bonds."""
        if self._molecule_index is False:
            top = self.topology()
            index = None
            if top.n_bonds:
                index = np.empty(self.n_atoms, np.int64)
                for k, mol in enumerate(top.find_molecules()):
                    index[[a.index for a in mol]] = k
            self._molecule_index = index
        return self._molecule_index

    def topology(self):
        """An mdtraj topology of the system (one residue per atom when the system has none)."""
        return self.system.mdtraj_topology()

    # ================================================================ observers
    def observe(self, callback: Callable[[Any], None], event: str = "frames") -> Callable[[], None]:
        """Call ``callback(payload)`` on ``event`` (see :data:`EVENTS`). Returns a function
        that removes the observer."""
        return self._observers.add(callback, event)

    def _notify(self, event: str, payload) -> None:
        self._observers.notify(event, payload)

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
                base = pn.with_values(self._leaves, base, values)
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
            if positions is None and self._history.frames_total:  # continue from here
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
        self._runner.start(n_chunks, n_steps)

    def pause(self, wait: bool = False) -> None:
        """Pause after the current chunk; :meth:`resume` (or :meth:`start`) continues.
        With ``wait``, return once the runner has paused."""
        self._runner.pause(wait)

    def resume(self) -> None:
        """Continue a paused run (same target as before)."""
        self._runner.resume()

    def stop(self, wait: bool = True) -> None:
        """End the run after the current chunk (frames so far are kept; :meth:`start`
        continues from here). With ``wait``, return once the runner thread has ended."""
        self._runner.stop(wait)

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
        return self._runner.wait(timeout)

    def wait_frames(self, n_frames: int, timeout: float | None = None) -> bool:
        """Block until ``frames_total >= n_frames`` or the run ends (or ``timeout`` s pass).
        Returns True if the frames are there. A bounded wait for analysis cells while the
        live run keeps going."""
        return self._runner.wait_frames(n_frames, timeout)

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

    def _append(self, frame, used_params, used_settings, seconds) -> hist.FrameBatch:
        dt = used_settings.get("dt", self.simulation.time_per_step)
        with self._lock:
            batch = self._history.append(frame, used_params, used_settings, seconds,
                                         self.compile_count, dt)
            self._cond.notify_all()
        return batch

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, BlowupError):
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
        return hist.export(path, frames, thermo, self.topology(), self.box, log)

    def __repr__(self) -> str:
        return (f"Session({self.n_atoms} atoms, {self.simulation.integrator.name}, "
                f"status={self._status}, step={self.step}, frames={self.frames_total}, "
                f"compiles={self.compile_count})")
