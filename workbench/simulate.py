"""The host-side simulation driver.

:class:`Simulation` holds a potential, an integrator, parameters and a state, and runs jitted
*chunks*: ``frames_per_chunk`` frames of ``report_interval`` steps each, compiled once. Between
chunks it

* checks neighbor-list overflow and, if one happened, grows the list and recomputes the chunk
  from its start (no step is lost, and the user never sees it);
* checks for blow-ups (non-finite or huge forces) and raises :class:`BlowupError` naming the first
  bad step and atoms, after writing every good frame;
* appends frames to the trajectory file, rows to the thermodynamics log, calls reporters,
  advances a tqdm progress bar and writes checkpoints.

Numeric knobs (``params``, ``settings``) are traced: :meth:`set_params` never recompiles.
Same seed, same trajectory.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import io as wio
from . import neighbors as nl
from . import observables, parallel, xla
from . import reporters as rep
from .space import box_volume
from .dynamics import integrators as integ
from .dynamics.registry import CONSTRAINED, INTEGRATORS  # the one name table
from .potentials.base import overflowed
from .system import System, UnitWarning, check_settings
from .units import BAR_PER_KJ_MOL_NM3, BOLTZMANN

Array = jax.Array

__all__ = ["Simulation", "BlowupError", "Chunk", "Frame", "INTEGRATORS"]

LOG_COLUMNS = ["step", "time", "potential", "kinetic", "total", "kT", "pressure",
               "conserved"]
"""Thermodynamics columns of every run (energies in kJ/mol or epsilon, pressure in
kJ/mol/nm^3 or reduced units, NaN where undefined: pressure in free space)."""

MOLECULAR_COLUMNS = ["temperature", "pressure_bar"]
"""Added for molecular-unit systems: temperature (K) beside kT, pressure (bar)."""

_UNSET = object()


class BlowupError(FloatingPointError):
    """The simulation produced non-finite or exploding values. ``step`` and ``atoms`` say
    where; ``frames`` holds the good frames of the failing chunk (written by ``run``)."""

    def __init__(self, message: str, step: int, atoms: list[int], frames: "Chunk | None" = None):
        super().__init__(message)
        self.step, self.atoms, self.frames = step, atoms, frames


@dataclass(frozen=True)
class Chunk:
    """A chunk's reported frames: positions (F, N, 3) nm, thermodynamics arrays (F,) and the
    box of each frame (F, 3, 3) nm."""

    positions: np.ndarray
    thermo: dict[str, np.ndarray]
    boxes: np.ndarray | None = None


Frame = Chunk
"""The old name of :class:`Chunk` (it holds a chunk of frames, not one frame)."""


class Simulation:
    """Run dynamics of a :class:`~workbench.system.System` with an integrator or sampler.

    ``Simulation(system, integrator, settings, **options)``: everything about the system
    (potential, params, masses, constraints, topology, box, start positions, units) is read
    from ``system``; ``params=``, ``positions=``, ``masses=``, ``constraints=``, ``topology=``
    and ``box=`` override one piece explicitly. The older loose form
    ``Simulation(potential, params, integrator, settings, positions, masses=...)`` still works
    and warns where a piece looks forgotten.

    integrator: an :class:`~workbench.dynamics.integrators.Integrator` (or sampler) or a name
      in :data:`INTEGRATORS` (built on the potential with the system's constraints).
    settings: the integrator's numeric knobs, as a dict (e.g. ``dict(dt=0.002, kT=2.494,
      gamma=1.0)``; molecular units: dt ps, kT kJ/mol) or its settings pytree.
    seed: PRNG seed (velocities and noise); velocities: (N, 3) nm/ps start velocities.
    report_interval: steps between reported frames; frames_per_chunk: frames per compiled chunk
      (both structural).
    blowup_force: a force above this (kJ/mol/nm) counts as a blow-up; so does a move longer
      than ``blowup_move`` (nm) in one step.
    """

    def __init__(self, system, *args, params=_UNSET, positions=_UNSET, masses=_UNSET,
                 constraints=_UNSET, topology=_UNSET, box=None, seed: int = 0,
                 velocities=None, report_interval: int = 100, frames_per_chunk: int = 1,
                 blowup_force: float = 1e8, blowup_move: float = 1.0):
        system, constraints, integrator, settings = _resolve_system(
            system, args, params=params, positions=positions, masses=masses,
            constraints=constraints, topology=topology)
        potential, params, positions = system.potential, system.params, system.positions
        masses = system.masses
        if isinstance(integrator, str):
            if integrator not in INTEGRATORS:
                raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(INTEGRATORS)}")
            factory = INTEGRATORS[integrator]
            if constraints is not None and factory not in CONSTRAINED:
                raise ValueError(f"integrator {integrator!r} does not support constraints; use "
                                 "'langevin' or 'velocity_verlet' (or pass constraints=None to "
                                 "drop the system's constraints)")
            integrator = factory(potential) if constraints is None else \
                factory(potential, constraints)
        elif constraints is not None and getattr(integrator, "constraints", None) is None:
            warnings.warn(
                f"the system has constraints but the integrator {integrator.name!r} was built "
                "without them, so they are dropped and constrained bonds will vibrate (and heat "
                "up at this time step): build it with the system's constraints (e.g. "
                "langevin(potential, system.constraints())), give the integrator by name, or "
                "pass constraints=None to drop them on purpose", UnitWarning, stacklevel=2)
        if not isinstance(report_interval, (int, np.integer)) or report_interval < 1 or \
                not isinstance(frames_per_chunk, (int, np.integer)) or frames_per_chunk < 1:
            raise ValueError("report_interval and frames_per_chunk must be integers >= 1, got "
                             f"{report_interval!r} and {frames_per_chunk!r}")
        if isinstance(settings, dict):
            check_settings(system.units, settings, where=f"{integrator.name} settings")
        self.system, self.units = system, system.units
        topology = None if system.topology is None else system.mdtraj_topology()
        self.potential, self.integrator = potential, integrator
        self.params = _same_structure(params, params, "params")  # strong dtypes: set_params
        # with a new value then reuses the compiled chunk
        self.settings = settings if not isinstance(settings, dict) else integrator.settings(**settings)
        self.report_interval, self.frames_per_chunk = int(report_interval), int(frames_per_chunk)
        self.topology, self.blowup_force = topology, float(blowup_force)
        self.blowup_move = float(blowup_move)
        self.time = 0.0  # ps, accumulated chunk by chunk with each chunk's own dt
        self.seed = seed
        self.state = integrator.init(jax.random.PRNGKey(seed), positions, params, self.settings,
                                     masses=masses, velocities=velocities,
                                     box=system.box if box is None else box)
        self.n_atoms = self.state.positions.shape[0]
        f2 = np.sum(np.asarray(self.state.forces, dtype=float) ** 2, axis=-1)
        bad = ~(np.isfinite(f2) & (f2 < self.blowup_force**2))
        if bad.any():
            atoms = np.nonzero(bad)[0].tolist()
            raise _blowup(0, atoms, None, self.blowup_force, self.blowup_move)
        self.dof = integrator.dof(self.n_atoms)
        # constrained systems: pressure from rigid groups (the atomic virial lacks the
        # constraint forces; see observables.group_pressure)
        cons = getattr(integrator, "constraints", None)
        self._groups = None
        if cons is not None:
            g = observables.rigid_groups(cons, self.n_atoms)
            self._groups = (jnp.asarray(g), int(g.max()) + 1)
        # Steps between reported frames skip the potential energy (the frame computes it once,
        # with the virial); the block loops of the pair kernels and list builds are split over
        # the CPU devices (workbench.parallel) when there is more than one block of atoms: for
        # fewer, the split costs more than it gains (measured: a 22-atom OBC2 step 0.8 ms on one
        # device, 4 ms split over two; LJ 256 atoms 0.30 vs 0.27 ms, 864 atoms 0.80 vs 0.55 ms).
        self.mesh = parallel.default_mesh() if self.n_atoms > nl.BLOCK else None
        self._chunk = xla.jit(self._chunk_impl, static_argnames=("n_frames", "interval"))
        self.regrowths = 0

    # ---------------------------------------------------------------- numeric knobs
    def set_params(self, params) -> None:
        """Replace the potential's parameters (same structure, shapes and dtypes: no recompile)."""
        self.params = _same_structure(self.params, params, "params")

    def set_settings(self, **values) -> None:
        """Change integrator settings by name, e.g. ``set_settings(kT=1.2)`` (no recompile)."""
        current = {f: getattr(self.settings, f) for f in self.settings.__dataclass_fields__}
        unknown = set(values) - set(current)
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; known: {sorted(current)}")
        merged = {k: float(values.get(k, v)) for k, v in current.items()}
        check_settings(self.units, values, where="set_settings")
        self.settings = self.integrator.settings(**merged)

    @property
    def compile_count(self) -> int:
        """How many times the chunk function has been compiled (traced)."""
        return self._chunk._cache_size()

    @property
    def time_per_step(self) -> float:
        """ps per step: the time step, or 1 for samplers without one (Monte Carlo: time counts
        sweeps or moves)."""
        return float(getattr(self.settings, "dt", 1.0))

    @property
    def steps_per_chunk(self) -> int:
        return self.report_interval * self.frames_per_chunk

    @property
    def log_columns(self) -> list[str]:
        """The thermodynamics columns this simulation reports (:data:`LOG_COLUMNS`, plus
        :data:`MOLECULAR_COLUMNS` in molecular units)."""
        return LOG_COLUMNS + (MOLECULAR_COLUMNS if self.units == "molecular" else [])

    # ---------------------------------------------------------------- compiled chunk
    def _thermo(self, state, params, settings, virial=None):
        ke = integ.kinetic_energy(state.velocities, state.masses)
        out = {
            "potential": state.potential_energy,
            "kinetic": ke,
            "total": state.potential_energy + ke,
            "kT": observables.kinetic_temperature(state.velocities, state.masses, self.dof),
        }
        if self.potential.space.periodic:
            w = (self.potential.virial(state.positions, params, state.aux, state.box)
                 if virial is None else virial)
            volume = box_volume(state.box)
            if self._groups is None:
                out["pressure"] = observables.pressure(state.velocities, state.masses, w, volume)
            else:
                out["pressure"] = observables.group_pressure(
                    state.positions, state.velocities, state.forces, state.masses,
                    *self._groups, w, volume)
        else:
            out["pressure"] = jnp.asarray(jnp.nan, ke.dtype)
        conserved = self.integrator.conserved
        out["conserved"] = conserved(state, settings) if conserved else jnp.asarray(jnp.nan, ke.dtype)
        if self.units == "molecular":
            out["temperature"] = out["kT"] / BOLTZMANN
            out["pressure_bar"] = out["pressure"] * BAR_PER_KJ_MOL_NM3
        return out

    def _chunk_impl(self, state, params, settings, n_frames: int, interval: int):
        step = functools.partial(self.integrator.step, energy=False)
        limit2, move2 = self.blowup_force**2, self.blowup_move**2

        def one(carry, _):
            s, bad_step, bad_atoms = carry
            before = s.positions
            s = step(s, params, settings)
            f2 = jnp.sum(s.forces * s.forces, -1)
            d = s.positions - before
            bad = ~(jnp.isfinite(f2) & (f2 < limit2) & (jnp.sum(d * d, -1) < move2)
                    & jnp.all(jnp.isfinite(s.velocities), -1))
            first = (bad_step < 0) & jnp.any(bad)
            bad_step = jnp.where(first, s.step, bad_step)
            bad_atoms = jnp.where(first, bad, bad_atoms)
            return (s, bad_step, bad_atoms), None

        def frame(carry, _):
            carry, _ = jax.lax.scan(one, carry, None, length=interval)
            s, virial, pot = carry[0], None, self.potential
            # the frame's energy (and the virial, in the same pass, for periodic systems)
            if pot.space.periodic:
                energy, virial = pot.energy_virial(s.positions, params, s.aux, s.box)
            else:
                energy = pot.energy(s.positions, params, s.aux, s.box)
            s = replace(s, potential_energy=energy)
            carry = (s,) + carry[1:]
            return carry, (s.positions, s.box, s.step, self._thermo(s, params, settings, virial))

        init = (state, jnp.asarray(-1, jnp.int32), jnp.zeros(state.positions.shape[0], bool))
        (state, bad_step, bad_atoms), (pos, boxes, steps, thermo) = jax.lax.scan(
            frame, init, None, length=n_frames
        )
        return state, pos, boxes, steps, thermo, bad_step, bad_atoms

    def advance(self, n_frames: int | None = None, interval: int | None = None) -> Chunk:
        """Run one chunk and return its frames: ``n_frames`` frames (default
        ``frames_per_chunk``) of ``interval`` steps (default ``report_interval``); each new pair
        of lengths compiles once. Regrows overflowing neighbor lists and recomputes the chunk;
        raises :class:`BlowupError` (after updating nothing) on a blow-up."""
        n_frames = self.frames_per_chunk if n_frames is None else int(n_frames)
        interval = self.report_interval if interval is None else int(interval)
        while True:
            start = self.state
            with parallel.use(self.mesh):
                new, pos, boxes, steps, thermo, bad_step, bad_atoms = self._chunk(
                    self._placed(start), self.params, self.settings, n_frames=n_frames,
                    interval=interval)
            if bool(overflowed(new.aux)):
                self.state = replace(start, aux=nl.grow_all(new.aux, start.positions))
                self.regrowths += 1
                continue
            break
        bad_step = int(bad_step)
        steps = np.asarray(steps)
        thermo = {k: np.asarray(v) for k, v in thermo.items()}
        thermo["step"] = steps
        thermo["time"] = self.time + (steps - int(start.step)) * self.time_per_step
        frame = Chunk(np.asarray(pos), thermo, np.asarray(boxes))
        if bad_step >= 0:
            atoms = np.nonzero(np.asarray(bad_atoms))[0].tolist()
            good = steps < bad_step
            partial = Chunk(frame.positions[good], {k: v[good] for k, v in thermo.items()},
                            frame.boxes[good])
            raise _blowup(bad_step, atoms, partial, self.blowup_force, self.blowup_move)
        self.state = new
        self.time += n_frames * interval * self.time_per_step
        return frame

    def _placed(self, state):
        """The state on the CPU devices of :attr:`mesh`: neighbor tables split by rows (each
        device keeps its blocks), everything else replicated. Arrays already placed stay."""
        if self.mesh is None:
            return state
        tables = {id(leaf.idx) for leaf in jax.tree_util.tree_leaves(
            state.aux, is_leaf=lambda x: isinstance(x, nl.NeighborList))
            if isinstance(leaf, nl.NeighborList)}
        return parallel.place(state, self.mesh, lambda x: id(x) in tables)

    # ---------------------------------------------------------------- host loop
    def run(self, n_steps: int, *, trajectory: str | None = None, log: str | None = None,
            progress: bool = True, checkpoint: str | None = None, checkpoint_every: int = 0,
            reporters: Sequence = (), append: bool = False) -> dict:
        """Advance exactly ``n_steps`` steps.

        Whole chunks run first; a remainder runs as single frames and then as a last stretch of
        fewer than ``report_interval`` steps that reports no frame (as OpenMM's reporters do),
        each shape compiled once. reporters: :mod:`workbench.reporters` objects (each says how
        often and what it needs) or plain callables receiving every chunk's :class:`Chunk`.
        Shortcuts for the common ones: trajectory: .dcd or .h5 path
        (:class:`~workbench.reporters.TrajectoryReporter`); log: CSV thermodynamics path
        (:class:`~workbench.reporters.LogReporter`); checkpoint: npz path written every
        ``checkpoint_every`` chunks and at the end, also after an error or an interrupt
        (:class:`~workbench.reporters.CheckpointReporter`); append: continue existing files.
        Returns the thermodynamics of all reported frames as arrays (:attr:`log_columns`).
        Interrupting keeps everything written so far."""
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        per, every = self.steps_per_chunk, self.report_interval
        n_chunks, rest = divmod(int(n_steps), per)
        plan = [(self.frames_per_chunk, every)] * n_chunks + [(1, every)] * (rest // every)
        if rest % every:
            plan.append((0, rest % every))  # steps with no reported frame
        active = []
        if trajectory:
            active.append(rep.TrajectoryReporter(trajectory, append=append))
        if log:
            active.append(rep.LogReporter(log, append=append))
        if checkpoint:
            active.append(rep.CheckpointReporter(
                checkpoint, checkpoint_every * self.frames_per_chunk if checkpoint_every else None))
        active += [r if isinstance(r, rep.Reporter) else _EveryFrame(r) for r in reporters]
        records: dict[str, list] = {c: [] for c in self.log_columns}
        seen = 0  # frames reported so far in this run
        bar = None
        opened = []
        try:
            for r in active:
                r.open(self)
                opened.append(r)
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_steps, unit="step", leave=False)
            for frames, interval in plan:
                try:
                    chunk = self.advance(max(frames, 1), interval)
                except BlowupError as e:
                    if e.frames is not None and frames:
                        self._emit(e.frames, seen, active, records)
                    raise
                if frames:
                    self._emit(chunk, seen, active, records)
                    seen += len(chunk.positions)
                if bar is not None:
                    bar.update(max(frames, 1) * interval)
        finally:
            if bar is not None:
                bar.close()
            for r in opened:
                r.close()
        return {k: np.asarray(v) for k, v in records.items()}

    def _emit(self, chunk: Chunk, seen: int, reporters, records):
        """Hand each reporter the frames of ``chunk`` it asked for (``seen``: frames before)."""
        if len(chunk.positions) == 0:
            return
        for k in records:
            records[k].extend(np.asarray(chunk.thermo[k]).tolist())
        for r in reporters:
            part = chunk if r.every == 1 else rep.select(chunk, seen, r.every)
            if part is not None:
                r.report(self, part)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str) -> None:
        """Write the full state (including the neighbor list) to ``path`` (.npz)."""
        meta = {"integrator": self.integrator.name, "n_atoms": self.n_atoms, "seed": self.seed,
                "settings": {k: float(getattr(self.settings, k)) for k in self.settings.__dataclass_fields__}}
        wio.save_state(path, self.state, meta)

    def load_checkpoint(self, path: str) -> None:
        """Restore a state written by :meth:`save_checkpoint` for the same system and integrator;
        continuing gives the same trajectory as the uninterrupted run."""
        state, meta = wio.load_state(path, self.state)
        if meta.get("integrator") != self.integrator.name or meta.get("n_atoms") != self.n_atoms:
            raise ValueError(
                f"checkpoint {path} is for {meta.get('integrator')} with {meta.get('n_atoms')} atoms; "
                f"this simulation uses {self.integrator.name} with {self.n_atoms}"
            )
        self.state = state


class _EveryFrame:
    """A plain callable ``f(chunk)`` as a reporter of every frame."""

    every, needs = 1, frozenset({"positions", "boxes", "thermo"})

    def __init__(self, fn):
        self.fn = fn

    def open(self, simulation) -> None:
        pass

    def report(self, simulation, chunk) -> None:
        self.fn(chunk)

    def close(self) -> None:
        pass


def _looks_molecular(potential) -> bool:
    """True for potentials imported from a force field (their terms are in molecular units)."""
    from .potentials.base import Sum

    terms = potential.terms.values() if isinstance(potential, Sum) else (potential,)
    return any(type(t).__module__.startswith(("workbench.potentials.nonbonded",
                                              "workbench.potentials.bonded",
                                              "workbench.potentials.cmap",
                                              "workbench.forcefield"))
               for t in terms)


def _resolve_system(system, args, *, params, positions, masses, constraints, topology):
    """(System, constraints, integrator, settings) from either call form of
    :class:`Simulation`, with the explicit overrides applied (``constraints=None`` drops the
    system's constraints on purpose)."""
    if isinstance(system, System):
        if len(args) != 2:
            raise TypeError("Simulation(system, integrator, settings, ...): expected the "
                            f"integrator and settings after the system, got {len(args)} "
                            "positional arguments (override pieces by keyword: params=, "
                            "positions=, masses=, constraints=)")
        integrator, settings = args
        if masses is None:
            raise ValueError("masses=None: give masses in amu (or leave masses out to use the "
                             "system's)")
        changes = {k: v for k, v in dict(params=params, positions=positions, masses=masses,
                                         topology=topology).items() if v is not _UNSET}
        if "positions" in changes:
            changes["positions"] = np.asarray(changes["positions"], dtype=float)
        if changes:
            system = system.replace(**changes)
        if system.masses_defaulted and system.units == "molecular" and \
                _looks_molecular(system.potential):
            warnings.warn("this force-field system's masses were left at their default of 1 "
                          "amu, so dynamics runs far too fast: give the masses in amu "
                          "(ForceFieldSystem carries OpenMM's)", UnitWarning, stacklevel=3)
        cons = system.constraints() if constraints is _UNSET else constraints
        return system, cons, integrator, settings
    # the loose form: Simulation(potential, params, integrator, settings, positions)
    rest = list(args)
    if params is _UNSET:
        params = rest.pop(0) if rest else _UNSET
    integrator = rest.pop(0) if rest else None
    settings = rest.pop(0) if rest else None
    if positions is _UNSET:
        positions = rest.pop(0) if rest else _UNSET
    if rest or params is _UNSET or positions is _UNSET or integrator is None or settings is None:
        raise TypeError("Simulation(system, integrator, settings, ...) takes a "
                        "workbench.System; the older form is Simulation(potential, params, "
                        "integrator, settings, positions, masses=...)")
    molecular = _looks_molecular(system)
    if masses is _UNSET or masses is None:
        if molecular:
            warnings.warn("masses not given for a force-field potential: every atom gets 1 amu "
                          "and dynamics runs far too fast. Pass the System (Simulation(system, "
                          "integrator, settings)) or masses=system.masses", UnitWarning,
                          stacklevel=3)
        masses = None
    cons = None if constraints is _UNSET else constraints
    out = System(system, params, np.asarray(positions, dtype=float), masses,
                 topology=None if topology is _UNSET else topology, constraint_set=cons,
                 units="molecular" if molecular else "reduced", name="LJ")
    return out, cons, integrator, settings


def _blowup(step: int, atoms: list[int], frames, limit: float, max_move: float) -> BlowupError:
    shown = atoms[:20]
    more = f" and {len(atoms) - 20} more" if len(atoms) > 20 else ""
    return BlowupError(
        f"simulation blew up at step {step}: non-finite values, forces above {limit:g} or a "
        f"move longer than {max_move:g} in one step, on atoms {shown}{more}. Frames before "
        f"step {step} were kept. Typical causes: overlapping atoms in the start structure "
        "(minimize first), a time step too large for the fastest motion, or a parameter pushed "
        "out of range.",
        step, atoms, frames,
    )


def _same_structure(old, new, what: str):
    """Cast ``new`` leaves to the dtype/shape of ``old`` so a new value never recompiles."""
    old_leaves, old_def = jax.tree_util.tree_flatten(old)
    new_leaves, new_def = jax.tree_util.tree_flatten(new)
    if old_def != new_def:
        raise ValueError(f"{what} has a different structure: expected {old_def}, got {new_def}")
    out = []
    for o, n in zip(old_leaves, new_leaves):
        a = jnp.asarray(n, dtype=jnp.asarray(o).dtype)
        if a.shape == () and jnp.shape(o) != ():  # a bare number sets every entry (e.g. per type)
            a = jnp.broadcast_to(a, jnp.shape(o))
        if a.shape != jnp.shape(o):
            raise ValueError(f"{what} leaf has shape {a.shape}, expected {jnp.shape(o)} "
                             "(shapes are structural: rebuild the simulation to change them)")
        if not np.all(np.isfinite(np.asarray(a))):  # on the host: no compile per shape
            raise ValueError(f"{what} contains non-finite values")
        out.append(a)
    return jax.tree_util.tree_unflatten(old_def, out)
