"""A live simulation session: the plain-Python controller behind the widget panels.

A :class:`Session` holds a system, its parameters and integrator settings, a
:class:`~workbench.simulate.Simulation`, the frames and thermodynamics produced so far, and a
*runner*: a background thread that calls :meth:`Simulation.advance` chunk after chunk, so the
kernel stays responsive (JAX releases the GIL while compiled code runs).

Two kinds of change, as everywhere in workbench:

* numeric - :meth:`Session.set_params` and :meth:`Session.set_settings` (epsilon, sigma, kT, dt,
  gamma, a torsion type's barrier, ...): stored as arrays of fixed dtype and shape and applied
  at the next chunk boundary, never recompiling;
* structural - :meth:`Session.rebuild` (a new system or atom count, another integrator, another
  chunk length): builds a new Simulation, which compiles once (visible in :attr:`compile_count`).

Start, pause, resume, stop and reset act within one chunk. Every chunk leaves a
:class:`ChunkRecord` saying which parameter values it used. No widget library is imported here.

The package: :mod:`.core` (the :class:`Session` facade), :mod:`.runner` (the background thread),
:mod:`.history` (frames, thermodynamics, records, export), :mod:`.params` (flat names, units),
:mod:`.gradients` (live gradients and optimizer steps that follow the session's parameters),
:mod:`.training` (a neural potential's training in a worker thread).
"""

from __future__ import annotations

import atexit

from ..units import LABELS as UNITS
from .core import EVENTS, SESSIONS, Session
from .gradients import GradientResult, GradientSession
from .history import ChunkRecord, FrameBatch
from .params import ParamSpec
from .training import TrainingSession

__all__ = ["EVENTS", "UNITS", "ChunkRecord", "FrameBatch", "GradientResult", "GradientSession",
           "ParamSpec", "Session", "TrainingSession"]


@atexit.register
def _stop_all() -> None:
    """Stop every running session at interpreter exit (each within one chunk)."""
    for s in list(SESSIONS):
        s.stop(wait=False)
    for s in list(SESSIONS):
        t = s._runner.thread
        if t is not None and t.is_alive():
            t.join(timeout=10.0)
