"""Reporters for :meth:`workbench.simulate.Simulation.run`, in OpenMM's manner: each states
what it needs and how often, and the driver hands it just that.

A reporter has ``every`` (reported frames between its reports: 1 takes every frame the
simulation reports, 10 every tenth) and ``needs`` (a subset of :data:`NEEDS`), and methods
``open(simulation)`` (before the first chunk), ``report(simulation, chunk)`` (after each
compiled chunk, with a :class:`~workbench.simulate.Chunk` holding only the frames it asked for:
never empty) and ``close()`` (always called, also after an error or an interrupt, so files hold
everything written so far). Plain callables ``f(chunk)`` still work: they get every frame.

Built in: :class:`TrajectoryReporter` (DCD or HDF5), :class:`LogReporter` (CSV
thermodynamics), :class:`CheckpointReporter` (npz state) and :class:`PrintReporter`
(a line of text, as OpenMM's StateDataReporter).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import io as wio

__all__ = ["NEEDS", "Reporter", "BaseReporter", "TrajectoryReporter", "LogReporter",
           "CheckpointReporter", "PrintReporter", "select"]

NEEDS = frozenset({"positions", "boxes", "thermo", "state"})
"""What a reporter may ask for: frame positions, frame boxes, thermodynamics rows, or the
simulation's state after the chunk (checkpoints)."""


@runtime_checkable
class Reporter(Protocol):
    every: int
    needs: frozenset

    def open(self, simulation) -> None: ...

    def report(self, simulation, chunk) -> None: ...

    def close(self) -> None: ...


class BaseReporter:
    """Defaults for the reporter contract: ``every`` frames (an integer >= 1), nothing to open
    or close."""

    needs: frozenset = frozenset({"thermo"})

    def __init__(self, every: int = 1):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"{type(self).__name__}: every must be an integer >= 1 (reported "
                             f"frames between reports), got {every!r}")
        self.every = int(every)
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"{type(self).__name__} needs unknown items {sorted(unknown)}")

    def open(self, simulation) -> None:
        pass

    def report(self, simulation, chunk) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def select(chunk, first_frame: int, every: int):
    """The frames of ``chunk`` whose running index (``first_frame`` for its first) is a
    multiple of ``every``, as a new chunk, or None when there are none."""
    n = len(chunk.positions)
    idx = np.arange(first_frame, first_frame + n)
    keep = (idx + 1) % every == 0
    if not keep.any():
        return None
    boxes = None if chunk.boxes is None else chunk.boxes[keep]
    return type(chunk)(chunk.positions[keep], {k: np.asarray(v)[keep]
                                               for k, v in chunk.thermo.items()}, boxes)


class TrajectoryReporter(BaseReporter):
    """Frames to ``path`` (.dcd with a .pdb topology beside it, or .h5), flushed per chunk;
    ``append`` continues an existing file."""

    needs = frozenset({"positions", "boxes", "thermo"})

    def __init__(self, path: str, every: int = 1, *, append: bool = False):
        super().__init__(every)
        self.path, self.append, self._writer = str(path), append, None

    def open(self, simulation) -> None:
        top = simulation.topology
        if top is None:
            top = simulation.system.mdtraj_topology()
        box = np.asarray(simulation.state.box) if simulation.potential.space.periodic else None
        self._writer = wio.TrajectoryWriter(self.path, top, box, append=self.append)

    def report(self, simulation, chunk) -> None:
        self._writer.write(chunk.positions, chunk.thermo["time"], chunk.boxes)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LogReporter(BaseReporter):
    """Thermodynamics rows (the simulation's :attr:`~workbench.simulate.Simulation.log_columns`)
    to a CSV file, flushed per chunk."""

    def __init__(self, path: str, every: int = 1, *, append: bool = False):
        super().__init__(every)
        self.path, self.append, self._log = str(path), append, None

    def open(self, simulation) -> None:
        self._log = wio.ThermoLog(self.path, simulation.log_columns, append=self.append)

    def report(self, simulation, chunk) -> None:
        self._log.write(chunk.thermo)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class CheckpointReporter(BaseReporter):
    """The full state to ``path`` (.npz, atomic) after a chunk that holds every ``every``-th
    frame (None: only at the end), and once more when the run ends, however it ends (the state
    is the last good one: a chunk that blew up changed nothing)."""

    needs = frozenset({"state"})

    def __init__(self, path: str, every: int | None = None):
        super().__init__(1 if every is None else every)
        self.only_at_end = every is None
        self.path, self._simulation = str(path), None

    def open(self, simulation) -> None:
        self._simulation = simulation

    def report(self, simulation, chunk) -> None:
        if not self.only_at_end:
            simulation.save_checkpoint(self.path)

    def close(self) -> None:
        if self._simulation is not None:
            self._simulation.save_checkpoint(self.path)
            self._simulation = None


class PrintReporter(BaseReporter):
    """One line per reported frame to ``stream`` (default stdout): step, time, energies,
    temperature (K in molecular units, else kT) and pressure."""

    def __init__(self, every: int = 1, stream: Any = None):
        super().__init__(every)
        self.stream = stream

    def open(self, simulation) -> None:
        self._molecular = simulation.units == "molecular"
        t = "T (K)" if self._molecular else "kT"
        p = "P (bar)" if self._molecular else "P"
        print(f"{'step':>10} {'time':>10} {'potential':>14} {'total':>14} {t:>10} {p:>10}",
              file=self.stream or sys.stdout, flush=True)

    def report(self, simulation, chunk) -> None:
        th = chunk.thermo
        temp = th["temperature"] if self._molecular else th["kT"]
        pres = th["pressure_bar"] if self._molecular else th["pressure"]
        for i in range(len(chunk.positions)):
            print(f"{int(th['step'][i]):>10d} {th['time'][i]:>10.4g} {th['potential'][i]:>14.6g} "
                  f"{th['total'][i]:>14.6g} {temp[i]:>10.4g} {pres[i]:>10.4g}",
                  file=self.stream or sys.stdout, flush=True)
