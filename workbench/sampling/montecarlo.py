"""Metropolis Monte Carlo samplers with the integrators' ``init``/``step`` contract (so
``Simulation``, ``Session`` and ``lax.scan`` run them), in the canonical ensemble at ``kT``.

* ``mode="single"``: one *sweep* per step, every particle in turn displaced uniformly in a cube
  of half-width ``step_size``, accepted on its local energy change (``atom_energy`` of a pair
  potential, O(K) per move through the neighbor list). The list is rebuilt between sweeps when a
  particle has moved more than half the skin minus one sweep's largest move, so it is exact
  throughout the next sweep.
* ``mode="all"``: every particle displaced at once, one full energy per move (any potential).
* ``mode="hybrid"``: hybrid Monte Carlo (Duane et al. 1987): fresh Maxwell-Boltzmann momenta,
  ``n_steps`` velocity-Verlet steps of size ``step_size`` (ps), accepted on the change of the
  total energy; exact for any step size, any potential.

Step sizes adapt toward ``target`` acceptance while ``mc_state(state).adapt`` is on (switch it
off with :func:`production`: adaptation breaks detailed balance). The sampler's fields live in
``state.extra["mc"]`` (an :class:`MCState`, read with :func:`mc_state`), so a barostat or a
metadynamics bias can wrap it (``monte_carlo_barostat(system, P, integrator=metropolis(system,
mode="all"))``; single-particle moves need a pair potential, so not under a bias). Velocities
are zero (single/all) or the last accepted momenta (hybrid); temperatures from velocities mean
nothing for the first two.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics import integrators as integ
from ..system import unpack

Array = jax.Array

__all__ = ["MCState", "MCSettings", "MonteCarlo", "metropolis", "production", "mc_state", "KEY"]

KEY = "mc"
"""The key of the Monte Carlo sampler's entry in ``state.extra``."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MCSettings:
    kT: Array  # kJ/mol


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MCState:
    """step_size: () nm (single/all) or ps (hybrid); attempts, accepted: () totals (moves of
    one particle count one each in single mode); adapt: () bool; target: () acceptance."""

    step_size: Array
    attempts: Array
    accepted: Array
    adapt: Array
    target: Array

    def acceptance(self) -> float:
        a = int(self.attempts)
        return float(self.accepted) / a if a else float("nan")


@dataclass(frozen=True, eq=False)
class MonteCarlo(integ.Integrator):
    """The sampler :func:`metropolis` returns (an Integrator)."""

    mode: str = "single"


def mc_state(state: integ.MDState) -> MCState:
    """The Monte Carlo sampler's :class:`MCState` (step size, counters) in ``state``."""
    return integ.sampler_state(state, KEY)


def production(state: integ.MDState) -> integ.MDState:
    """The state with step-size adaptation switched off (for sampling after equilibration)."""
    return integ.with_sampler_state(state, KEY, replace(mc_state(state),
                                                        adapt=jnp.asarray(False)))


def _adapted(mc: MCState, rate: Array, limit: float | None) -> Array:
    """Robbins-Monro style update of the step size toward the target acceptance."""
    s = mc.step_size * jnp.exp(0.5 * (rate - mc.target))
    if limit is not None:
        s = jnp.minimum(s, limit)
    return jnp.where(mc.adapt, s, mc.step_size)


def metropolis(potential, *, mode: str = "single", step_size: float = 0.1, target: float = 0.4,
               n_steps: int = 10) -> MonteCarlo:
    """A Metropolis Monte Carlo sampler of ``potential`` (see the module docstring).

    mode: "single", "all" or "hybrid". step_size: first displacement half-width (nm) or, for
    hybrid, time step (ps). target: acceptance the step size adapts to (default 0.4; 0.7 suits
    hybrid). n_steps: velocity-Verlet steps per hybrid move (structural). ``potential`` may be
    a :class:`~workbench.system.System` without constraints (moves would break them)."""
    potential, constraints = unpack(potential)
    if constraints is not None:
        raise ValueError("Monte Carlo moves do not keep constraints and this system has them: "
                         "sample it with langevin dynamics, or pass system.potential to drop "
                         "them")
    if mode not in ("single", "all", "hybrid"):
        raise ValueError(f"mode must be 'single', 'all' or 'hybrid', got {mode!r}")
    if mode == "single" and not hasattr(potential, "atom_energy"):
        raise ValueError(f"single-particle moves need a pair potential with atom_energy "
                         f"(local energy changes); {type(potential).__name__} has none: use "
                         "mode='all' or 'hybrid'")
    if not (step_size > 0 and 0 < target < 1):
        raise ValueError(f"need step_size > 0 and 0 < target < 1, got {step_size}, {target}")
    dtype = jnp.result_type(float)
    spec = potential.neighbor_spec()
    skin = spec.skin if spec is not None else None
    # a sweep moves a particle by at most sqrt(3) step: keep that within half the skin
    limit = None if (mode != "single" or skin is None) else 0.45 * skin / np.sqrt(3.0)
    vv = integ.velocity_verlet(potential) if mode == "hybrid" else None

    def init(key, positions, params, settings, *, masses=1.0, velocities=None, aux=None,
             box=None) -> integ.MDState:
        state = integ.velocity_verlet(potential).init(
            key, positions, params, integ.VerletSettings(dt=jnp.asarray(1.0, dtype)),
            masses=masses, velocities=jnp.zeros_like(jnp.asarray(positions, dtype))
            if velocities is None else velocities, aux=aux, box=box)
        s0 = step_size if limit is None else min(step_size, limit)
        z = jnp.asarray(0, jnp.int32)
        mc = MCState(step_size=jnp.asarray(s0, dtype), attempts=z, accepted=z,
                     adapt=jnp.asarray(True), target=jnp.asarray(target, dtype))
        return integ.with_sampler_state(state, KEY, mc)

    def single(state, params, settings):
        mc, kT = mc_state(state), settings.kT
        n = state.positions.shape[0]
        key, k_moves, k_acc = jax.random.split(state.key, 3)
        moves = jax.random.uniform(k_moves, (n, 3), dtype, -1.0, 1.0) * mc.step_size
        logu = jnp.log(jax.random.uniform(k_acc, (n,), dtype))
        aux, box = state.aux, state.box

        def body(i, carry):
            r, acc = carry
            old, new = r[i], r[i] + moves[i]
            du = (potential.atom_energy(i, new, r, params, aux, box)
                  - potential.atom_energy(i, old, r, params, aux, box))
            ok = logu[i] < -du / kT
            return r.at[i].set(jnp.where(ok, new, old)), acc + ok.astype(jnp.int32)

        r, acc = jax.lax.fori_loop(0, n, body, (state.positions, jnp.asarray(0, jnp.int32)))
        aux = _refresh(potential, r, state.aux, box, 2.0 * jnp.sqrt(3.0) * mc.step_size)
        ev = potential.energy_forces(r, params, aux, box)
        rate = acc / n
        mc = replace(mc, step_size=_adapted(mc, rate, limit), attempts=mc.attempts + n,
                     accepted=mc.accepted + acc)
        return integ.with_sampler_state(replace(
            state, positions=r, aux=aux, forces=ev.forces, potential_energy=ev.energy,
            key=key), KEY, mc)

    def all_at_once(state, params, settings):
        mc, kT = mc_state(state), settings.kT
        key, k_move, k_acc = jax.random.split(state.key, 3)
        r = state.positions + jax.random.uniform(k_move, state.positions.shape, dtype, -1.0,
                                                 1.0) * mc.step_size
        u_old = potential.energy(state.positions, params, state.aux, state.box)
        ev, aux = potential.evaluate(r, params, state.aux, state.box)
        ok = jnp.log(jax.random.uniform(k_acc, (), dtype)) < -(ev.energy - u_old) / kT
        new = replace(state, positions=r, aux=aux, forces=ev.forces, potential_energy=ev.energy)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
        mc = replace(mc, step_size=_adapted(mc, ok.astype(dtype), None),
                     attempts=mc.attempts + 1, accepted=mc.accepted + ok.astype(jnp.int32))
        return integ.with_sampler_state(replace(out, key=key), KEY, mc)

    def hybrid(state, params, settings):
        mc, kT = mc_state(state), settings.kT
        key, k_v, k_acc = jax.random.split(state.key, 3)
        v = integ.maxwell_boltzmann(k_v, state.masses, kT, remove_com=False)
        u_old = potential.energy(state.positions, params, state.aux, state.box)
        h_old = u_old + integ.kinetic_energy(v, state.masses)
        s = replace(state, velocities=v)
        vs = integ.VerletSettings(dt=mc.step_size)
        s = jax.lax.fori_loop(0, n_steps, lambda _, x: vv.step(x, params, vs, energy=False), s)
        u_new = potential.energy(s.positions, params, s.aux, s.box)
        dh = u_new + integ.kinetic_energy(s.velocities, s.masses) - h_old
        ok = jnp.log(jax.random.uniform(k_acc, (), dtype)) < -dh / kT
        s = replace(s, potential_energy=u_new)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), s, state)
        mc = replace(mc, step_size=_adapted(mc, ok.astype(dtype), None),
                     attempts=mc.attempts + 1, accepted=mc.accepted + ok.astype(jnp.int32))
        return integ.with_sampler_state(replace(out, key=key, step=state.step + 1), KEY, mc)

    moves = {"single": single, "all": all_at_once, "hybrid": hybrid}[mode]

    def step(state, params, settings, *, energy: bool = True) -> integ.MDState:
        out = moves(state, params, settings)
        return out if mode == "hybrid" else replace(out, step=state.step + 1)

    def rebuild(p) -> MonteCarlo:
        return metropolis(p, mode=mode, step_size=step_size, target=target, n_steps=n_steps)

    return MonteCarlo(name=f"metropolis({mode})", init=init, step=step,
                      settings_class=MCSettings, dof=lambda n: 3 * n, conserved=None,
                      potential=potential, rebuild=rebuild, mode=mode)



def _refresh(potential, positions, aux, box, margin) -> Any:
    """Update the neighbor list(s) in ``aux`` so they stay exact while particles move up to
    ``margin`` more (the next sweep)."""
    from .. import neighbors as nl

    space = potential.box_space(box)
    return jax.tree_util.tree_map(
        lambda a: nl.update(space, positions, a, margin) if isinstance(a, nl.NeighborList) else a,
        aux, is_leaf=lambda x: isinstance(x, nl.NeighborList))
