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
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import io as wio
from . import neighbors as nl
from . import observables, parallel, xla
from .dynamics import integrators as integ
from .potentials.base import overflowed
from .systems import placeholder_topology

Array = jax.Array

__all__ = ["Simulation", "BlowupError", "Frame", "INTEGRATORS"]

INTEGRATORS = {
    "verlet": integ.velocity_verlet,
    "velocity_verlet": integ.velocity_verlet,
    "langevin": integ.langevin,
    "nose_hoover": integ.nose_hoover_chain,
    "nose_hoover_chain": integ.nose_hoover_chain,
    "brownian": integ.brownian,
}

CONSTRAINED = (integ.velocity_verlet, integ.langevin)
"""Integrator factories that take ``constraints``."""

LOG_COLUMNS = ["step", "time", "potential", "kinetic", "total", "kT", "pressure",
               "conserved"]


class BlowupError(FloatingPointError):
    """The simulation produced non-finite or exploding values. ``step`` and ``atoms`` say
    where; ``frames`` holds the good frames of the failing chunk (written by ``run``)."""

    def __init__(self, message: str, step: int, atoms: list[int], frames: "Frame | None" = None):
        super().__init__(message)
        self.step, self.atoms, self.frames = step, atoms, frames


@dataclass(frozen=True)
class Frame:
    """A chunk's reported frames: positions (F, N, 3) nm, thermodynamics arrays (F,) and the
    box of each frame (F, 3, 3) nm."""

    positions: np.ndarray
    thermo: dict[str, np.ndarray]
    boxes: np.ndarray | None = None


class Simulation:
    """Run dynamics of ``potential`` with ``integrator``.

    potential: energy model; params: its parameter pytree.
    integrator: an :class:`~workbench.dynamics.integrators.Integrator` or a name in
      :data:`INTEGRATORS` (built on ``potential``).
    settings: the integrator's numeric knobs, as a dict (e.g. ``dict(dt=0.005, kT=1.0,
      gamma=1.0)``) or its settings pytree.
    positions: (N, 3) nm; masses: scalar or (N,) amu; seed: PRNG seed (velocities and noise).
    report_interval: steps between reported frames; frames_per_chunk: frames per compiled chunk
      (both structural). topology: mdtraj topology for trajectory files (optional).
    blowup_force: a force above this (kJ/mol/nm) counts as a blow-up; so does a move longer
      than ``blowup_move`` (nm) in one step. constraints: a
      :class:`~workbench.dynamics.constraints.Constraints` for an integrator given by name
      (``ForceFieldSystem.constraints()``). box: start box (3, 3) nm (default: the potential's).
    """

    def __init__(self, potential, params, integrator, settings, positions, *, masses=1.0,
                 seed: int = 0, velocities=None, report_interval: int = 100,
                 frames_per_chunk: int = 1, topology=None, blowup_force: float = 1e8,
                 blowup_move: float = 1.0, constraints=None, box=None):
        if isinstance(integrator, str):
            if integrator not in INTEGRATORS:
                raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(INTEGRATORS)}")
            factory = INTEGRATORS[integrator]
            if constraints is not None and factory not in CONSTRAINED:
                raise ValueError(f"integrator {integrator!r} does not support constraints; use "
                                 "'langevin' or 'velocity_verlet'")
            integrator = factory(potential) if constraints is None else \
                factory(potential, constraints)
        elif constraints is not None and integrator.constraints is not constraints:
            raise ValueError("pass constraints to the integrator factory (e.g. "
                             "langevin(potential, constraints)) or give the integrator by name")
        if report_interval < 1 or frames_per_chunk < 1:
            raise ValueError("report_interval and frames_per_chunk must be >= 1")
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
                                     masses=masses, velocities=velocities, box=box)
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
        self._chunk = xla.jit(self._chunk_impl)
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
            volume = jnp.abs(jnp.linalg.det(state.box))
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
        return out

    def _chunk_impl(self, state, params, settings):
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
            carry, _ = jax.lax.scan(one, carry, None, length=self.report_interval)
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
            frame, init, None, length=self.frames_per_chunk
        )
        return state, pos, boxes, steps, thermo, bad_step, bad_atoms

    def advance(self) -> Frame:
        """Run one chunk and return its frames. Regrows overflowing neighbor lists and recomputes
        the chunk; raises :class:`BlowupError` (after updating nothing) on a blow-up."""
        while True:
            start = self.state
            with parallel.use(self.mesh):
                new, pos, boxes, steps, thermo, bad_step, bad_atoms = self._chunk(
                    self._placed(start), self.params, self.settings)
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
        frame = Frame(np.asarray(pos), thermo, np.asarray(boxes))
        if bad_step >= 0:
            atoms = np.nonzero(np.asarray(bad_atoms))[0].tolist()
            good = steps < bad_step
            partial = Frame(frame.positions[good], {k: v[good] for k, v in thermo.items()},
                            frame.boxes[good])
            raise _blowup(bad_step, atoms, partial, self.blowup_force, self.blowup_move)
        self.state = new
        self.time += self.steps_per_chunk * self.time_per_step
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
            reporters: Sequence[Callable[[Frame], None]] = (), append: bool = False) -> dict:
        """Advance ``n_steps`` (a multiple of ``report_interval * frames_per_chunk``).

        trajectory: .dcd or .h5 path, frames appended per chunk; log: CSV thermodynamics path;
        checkpoint: npz path written every ``checkpoint_every`` chunks and at the end;
        reporters: callables receiving each chunk's :class:`Frame`. Returns the thermodynamics
        of all reported frames as arrays. Interrupting keeps everything written so far."""
        per = self.steps_per_chunk
        if n_steps % per:
            raise ValueError(
                f"n_steps={n_steps} is not a multiple of the chunk length {per} "
                f"(report_interval={self.report_interval} x frames_per_chunk={self.frames_per_chunk})"
            )
        writer = logger = bar = None
        records: dict[str, list] = {c: [] for c in LOG_COLUMNS}
        try:
            if trajectory:
                top = self.topology if self.topology is not None else placeholder_topology(self.n_atoms)
                box = np.asarray(self.state.box) if self.potential.space.periodic else None
                writer = wio.TrajectoryWriter(trajectory, top, box, append=append)
            if log:
                logger = wio.ThermoLog(log, LOG_COLUMNS, append=append)
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_steps, unit="step", leave=False)
            for i in range(n_steps // per):
                try:
                    frame = self.advance()
                except BlowupError as e:
                    if e.frames is not None:
                        self._emit(e.frames, writer, logger, records, reporters)
                    raise
                self._emit(frame, writer, logger, records, reporters)
                if bar is not None:
                    bar.update(per)
                if checkpoint and checkpoint_every and (i + 1) % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint)
            if checkpoint:
                self.save_checkpoint(checkpoint)
        finally:
            for h in (writer, logger, bar):
                if h is not None:
                    h.close()
        return {k: np.asarray(v) for k, v in records.items()}

    def _emit(self, frame: Frame, writer, logger, records, reporters):
        if len(frame.positions) == 0:
            return
        if writer is not None:
            writer.write(frame.positions, frame.thermo["time"], frame.boxes)
        if logger is not None:
            logger.write(frame.thermo)
        for k in LOG_COLUMNS:
            records[k].extend(np.asarray(frame.thermo[k]).tolist())
        for r in reporters:
            r(frame)

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
        if not bool(jnp.all(jnp.isfinite(a))):
            raise ValueError(f"{what} contains non-finite values")
        out.append(a)
    return jax.tree_util.tree_unflatten(old_def, out)
