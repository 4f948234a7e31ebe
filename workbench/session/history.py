"""What a session has produced: frames, thermodynamics, chunk records, and their export.

:class:`History` keeps the newest ``max_frames`` frames (for replay and export), every frame's
thermodynamics (growing columns, nothing dropped) and one :class:`ChunkRecord` per chunk saying
which parameter values it used. It is not thread-safe by itself: the session calls it under its
lock.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

import numpy as np

from .. import io as wio
from ..simulate import LOG_COLUMNS

__all__ = ["ChunkRecord", "FrameBatch", "History", "export"]


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


class Column:
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


class History:
    """Frames (the newest ``max_frames``), thermodynamics of every frame, chunk records (the
    newest ``max_records``), the simulated time and a smoothed step rate. ``start_step``: the
    step of the state the history starts from."""

    def __init__(self, max_frames: int, max_records: int, start_step: int,
                 columns: list[str] | None = None):
        self.frames: deque = deque(maxlen=max_frames)
        self.frames_total = 0
        self.columns = {k: Column() for k in [*(columns or LOG_COLUMNS), "chunk"]}
        self.records: deque[ChunkRecord] = deque(maxlen=max_records)
        self.chunks_done = 0
        self.time = 0.0
        self.last_step = int(start_step)
        self.rate = 0.0

    def append(self, frame, used_params: dict, used_settings: dict, seconds: float,
               compile_count: int, dt: float) -> FrameBatch:
        """Record one chunk's :class:`~workbench.simulate.Chunk` and return its batch."""
        pos = np.asarray(frame.positions)
        steps = np.asarray(frame.thermo["step"]).astype(np.int64)
        first = self.frames_total
        times = self.time + (steps - self.last_step) * dt
        record = ChunkRecord(
            index=self.chunks_done, first_step=self.last_step + 1, last_step=int(steps[-1]),
            n_frames=len(pos), params=used_params, settings=used_settings, seconds=seconds,
            compile_count=compile_count,
        )
        n_steps = int(steps[-1]) - self.last_step
        self.time, self.last_step = float(times[-1]), int(steps[-1])
        for r in pos:
            self.frames.append(r)
        self.frames_total += len(pos)
        thermo = {k: np.asarray(v) for k, v in frame.thermo.items()}
        thermo["time"] = times
        thermo["chunk"] = np.full(len(pos), self.chunks_done)
        for k, column in self.columns.items():
            column.extend(thermo[k])
        self.records.append(record)
        self.chunks_done += 1
        rate = n_steps / max(seconds, 1e-9)
        self.rate = rate if self.rate == 0.0 else 0.7 * self.rate + 0.3 * rate
        return FrameBatch(pos, thermo, first, record)

    def frame_array(self, n_atoms: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Kept frames ``[start:stop]`` as one array (T, N, 3)."""
        kept = list(self.frames)[start:stop]
        if not kept:
            return np.zeros((0, n_atoms, 3), np.float32)
        return np.stack(kept)

    def thermo(self, columns=None, every: int = 1) -> dict[str, np.ndarray]:
        """Copies of the thermodynamics columns (every ``every``-th row)."""
        names = list(self.columns) if columns is None else list(columns)
        return {k: self.columns[k].values[::every].copy() for k in names}


def export(path: str, frames: np.ndarray, thermo: dict, topology, box,
           log: str | None = "auto") -> tuple[str, str | None]:
    """Write ``frames`` (T, N, 3) nm to ``path`` (.dcd with a .pdb topology beside it, or .h5
    with the topology inside) and ``thermo`` to a CSV log (``"auto"``: same name with .csv;
    None: no log). Returns (trajectory path, log path)."""
    if len(frames) == 0:
        raise ValueError("nothing to export yet: run the simulation first")
    path = os.fspath(path)
    times = thermo["time"][-len(frames):]
    with wio.TrajectoryWriter(path, topology, box) as writer:
        writer.write(frames, times)
    log_path = None
    if log is not None:
        log_path = os.path.splitext(path)[0] + ".csv" if log == "auto" else os.fspath(log)
        logger = wio.ThermoLog(log_path, [c for c in thermo if c != "chunk"])
        try:
            logger.write(thermo)
        finally:
            logger.close()
    return path, log_path
