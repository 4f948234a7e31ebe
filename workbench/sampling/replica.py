"""Replica exchange (parallel tempering and Hamiltonian replica exchange) on a batch axis.

Replicas are a leading axis of the integrator state; each *slot* r has its own settings (a kT
ladder is an array of shape (R,)) and, for Hamiltonian exchange, its own params (a pytree with
a leading (R,) axis). Every ``exchange_every`` steps neighbouring slots (0-1, 2-3, ... then 1-2,
3-4, ... alternately) try to swap configurations, accepted with the Metropolis probability

    min(1, exp(-[u_i(x_j) + u_j(x_i) - u_i(x_i) - u_j(x_j)])),  u_r(x) = U_r(x) / kT_r

(for temperature exchange this is exp((1/kT_i - 1/kT_j)(U_i - U_j))). An accepted swap moves the
configuration and its neighbor list, and rescales velocities by sqrt(kT_new / kT_old) so each
slot keeps its temperature. Everything runs in one compiled ``lax.scan``; the statistics
(:class:`ExchangeStats`: acceptance per pair, the slot-to-slot acceptance matrix, the replica in
each slot, and round trips between the lowest and the highest slot) stay in the carry.

The integrator of each replica is a name or any Integrator / sampler object: each slot keeps its
sampler state (``state.extra``: a metadynamics bias, barostat counters) while configurations
move between slots, and the exchange uses what each slot samples
(:meth:`~workbench.dynamics.integrators.Integrator.ensemble`): u_r(x) = (U_r(x) + V_r(x) +
P_r V_box(x)) / kT_r with the slot's bias V_r and pressure P_r. So
``replica_exchange(system, integrator=metadynamics(system, cvs, ...))`` is parallel-tempering
metadynamics (Bussi et al. 2006: one bias per temperature) and a barostat inside gives NPT
replica exchange.

Under ``vmap`` the replicas share the program; to place them across CPU devices, put the state
with a ``jax.sharding.NamedSharding`` over the replica axis (:func:`shard_replicas`): XLA then
runs each device's replicas there, and the results equal the one-device ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from ..dynamics import integrators as integ
from ..dynamics.registry import resolve
from ..space import box_volume
from ..system import unpack
from . import batch

Array = jax.Array

__all__ = ["ExchangeStats", "ReplicaExchange", "replica_exchange", "ladder", "shard_replicas"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ExchangeStats:
    """attempts, accepted: (R - 1,) per neighbouring pair (r, r + 1); matrix: (R, R) accepted
    swaps between slots (symmetric); replica: (R,) which replica (by starting slot) is in each
    slot; direction: (R,) per replica +1 after last visiting slot 0, -1 after the top, 0 before
    either; round_trips: (R,) per replica, completed bottom -> top -> bottom trips."""

    attempts: Array
    accepted: Array
    matrix: Array
    replica: Array
    direction: Array
    round_trips: Array

    @classmethod
    def empty(cls, n: int) -> "ExchangeStats":
        z = jnp.zeros(n - 1, jnp.int32)
        return cls(attempts=z, accepted=z, matrix=jnp.zeros((n, n), jnp.int32),
                   replica=jnp.arange(n, dtype=jnp.int32), direction=jnp.zeros(n, jnp.int32),
                   round_trips=jnp.zeros(n, jnp.int32))

    def acceptance(self) -> np.ndarray:
        """Acceptance ratio of each neighbouring pair (NaN where never attempted)."""
        a = np.asarray(self.attempts, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(self.accepted, float) / a


@dataclass(frozen=True, eq=False)
class ReplicaExchange:
    """Replica exchange around ``integrator`` (built on ``potential``); see the module doc."""

    integrator: Any
    potential: Any
    exchange_every: int
    _compiled: dict = field(default_factory=dict, repr=False)

    def advance(self, states, stats: ExchangeStats, params, settings, n_exchanges: int, *,
                hamiltonian: bool = False, record=None):
        """Host side: :meth:`run`, compiled once per (n_exchanges, hamiltonian, record), with
        neighbor-list overflow recovery for the whole batch (:func:`.batch.advance`).
        Returns (states, stats, recorded, regrowths)."""
        key = (int(n_exchanges), bool(hamiltonian), record)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(lambda st, sa, p, c: self.run(
                st, sa, p, c, key[0], hamiltonian=key[1], record=key[2]))
        (states, stats, out), regrowths = batch.advance(self._compiled[key], states, stats,
                                                        params, settings)
        return states, stats, out, regrowths

    def init(self, key, positions, params, settings, *, hamiltonian: bool = False, **kwargs):
        """States (leading replica axis) and empty statistics. positions: (N, 3) (all replicas
        start there) or (R, N, 3); settings: batched settings (each field (R,)); params: shared,
        or batched (leading (R,) axis) with ``hamiltonian=True``."""
        n_rep = _n_replicas(settings)
        r = np.asarray(positions, dtype=float)
        r = np.broadcast_to(r, (n_rep,) + r.shape) if r.ndim == 2 else r
        if r.shape[0] != n_rep:
            raise ValueError(f"positions for {r.shape[0]} replicas, settings for {n_rep}")
        keys = jax.random.split(key, n_rep)
        pick = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)  # noqa: E731
        states = [self.integrator.init(keys[i], r[i], pick(params, i) if hamiltonian else params,
                                       pick(settings, i), **kwargs) for i in range(n_rep)]
        return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *states), ExchangeStats.empty(n_rep)

    def run(self, states, stats: ExchangeStats, params, settings, n_exchanges: int, *,
            hamiltonian: bool = False, record=None):
        """``n_exchanges`` rounds of ``exchange_every`` steps then one exchange attempt.
        Returns (states, stats, recorded): ``record(states) -> pytree`` is stacked over rounds
        (e.g. the CV of every slot), None when not given. Jit-able (n_exchanges is static)."""
        p_axis = 0 if hamiltonian else None

        def steps(st):
            def one(st, _):
                with nl.shared_rebuilds("replicas"):  # one list-rebuild decision for all
                    return jax.vmap(lambda s, p, c: self.integrator.step(s, p, c, energy=False),
                                    in_axes=(0, p_axis, 0), axis_name="replicas")(
                                        st, params, settings), None
            return jax.lax.scan(one, st, None, length=self.exchange_every)[0]

        def round_(carry, parity):
            st, stats = carry
            st = steps(st)
            st, stats = self.exchange(st, stats, params, settings, parity,
                                      hamiltonian=hamiltonian)
            out = record(st) if record is not None else None
            return (st, stats), out

        parities = jnp.arange(n_exchanges, dtype=jnp.int32) % 2
        (states, stats), out = jax.lax.scan(round_, (states, stats), parities)
        return states, stats, out

    @property
    def plain(self) -> bool:
        """True when the replicas sample the system's potential itself (no sampler bias or
        pressure): configurations then carry their energies and forces between slots."""
        return self.integrator.ensemble_fn is None

    def _slot_ensembles(self, states, params, hamiltonian: bool) -> integ.Ensemble:
        """Each slot's :class:`~workbench.dynamics.integrators.Ensemble` (params and pressure
        with a leading (R,) axis; the potential is shared)."""
        p_axis = 0 if hamiltonian else None
        pot = []

        def one(st, p):
            e = self.integrator.ensemble(st, p)
            pot.append(e.potential)
            return e.params, jnp.asarray(e.pressure, st.positions.dtype)

        prm, pressure = jax.vmap(one, in_axes=(0, p_axis))(states, params)
        return integ.Ensemble(pot[0], prm, pressure)

    def reduced_energies(self, states, params, settings, hamiltonian: bool) -> Array:
        """(R, R) u[slot, config] = (U_slot(x_config) + P_slot V(config)) / kT_slot, U_slot
        with the slot's sampler bias (the states' neighbor lists are current: every step
        refreshes them)."""
        if not self.plain:
            ens = self._slot_ensembles(states, params, hamiltonian)

            def slot(p, pressure):
                return jax.vmap(lambda r, a, b: ens.potential.energy(r, p, a, b)
                                + pressure * box_volume(b))(states.positions, states.aux,
                                                             states.box)

            return jax.vmap(slot)(ens.params, ens.pressure) / settings.kT[:, None]

        def energy(p, r, aux, box):
            return self.potential.energy(r, p, aux, box)

        if hamiltonian:
            e = jax.vmap(lambda p: jax.vmap(lambda r, a, b: energy(p, r, a, b))(
                states.positions, states.aux, states.box))(params)
        else:
            e_conf = jax.vmap(lambda r, a, b: energy(params, r, a, b))(
                states.positions, states.aux, states.box)
            e = jnp.broadcast_to(e_conf[None, :], (e_conf.shape[0],) * 2)
        return e / settings.kT[:, None]

    def exchange(self, states, stats: ExchangeStats, params, settings, parity, *,
                 hamiltonian: bool = False):
        """One round of neighbour swap attempts between pairs (r, r + 1) with r % 2 == parity."""
        n = states.positions.shape[0]
        u = self.reduced_energies(states, params, settings, hamiltonian)
        i = jnp.arange(n - 1)
        delta = u[i, i + 1] + u[i + 1, i] - u[i, i] - u[i + 1, i + 1]
        key, sub = jax.random.split(states.key[0])
        accept = (jax.random.uniform(sub, (n - 1,), delta.dtype) < jnp.exp(-delta))
        active = (i % 2) == parity
        accept = accept & active
        # a permutation of slots: each accepted pair (r, r+1) swaps
        up = jnp.concatenate([accept, jnp.zeros(1, bool)])  # slot r takes from r + 1
        down = jnp.concatenate([jnp.zeros(1, bool), accept])  # slot r takes from r - 1
        src = jnp.arange(n) + up.astype(jnp.int32) - down.astype(jnp.int32)
        kT = settings.kT
        scale = jnp.sqrt(kT / kT[src])

        def take(x):
            return x[src]

        moved = replace(states, positions=take(states.positions),
                        velocities=take(states.velocities) * scale[:, None, None].astype(
                            states.velocities.dtype),
                        aux=jax.tree_util.tree_map(take, states.aux), box=take(states.box))
        if not self.plain:  # forces under the slot's own bias (its sampler state stays)
            ens = self._slot_ensembles(states, params, hamiltonian)
            ev = jax.vmap(lambda p, r, a, b: ens.potential.energy_forces(r, p, a, b))(
                ens.params, moved.positions, moved.aux, moved.box)
            moved = replace(moved, forces=ev.forces, potential_energy=ev.energy)
        elif hamiltonian:  # forces belong to the configuration under the slot's Hamiltonian
            ev = jax.vmap(lambda p, r, a, b: self.potential.energy_forces(r, p, a, b))(
                params, moved.positions, moved.aux, moved.box)
            moved = replace(moved, forces=ev.forces, potential_energy=ev.energy)
        else:  # one Hamiltonian: forces and energy travel with the configuration
            moved = replace(moved, forces=take(states.forces),
                            potential_energy=take(states.potential_energy))
        moved = replace(moved, key=states.key.at[0].set(key))
        replica = stats.replica[src]
        # round trips, per replica: reaching the top after the bottom, then the bottom again
        at_bottom = jnp.zeros(n, bool).at[replica[0]].set(True)
        at_top = jnp.zeros(n, bool).at[replica[-1]].set(True)
        direction = stats.direction
        trips = stats.round_trips + (at_bottom & (direction == -1)).astype(jnp.int32)
        direction = jnp.where(at_bottom, 1, jnp.where(at_top & (direction == 1), -1, direction))
        acc = accept.astype(jnp.int32)
        matrix = stats.matrix.at[i, i + 1].add(acc).at[i + 1, i].add(acc)
        stats = ExchangeStats(attempts=stats.attempts + active.astype(jnp.int32),
                              accepted=stats.accepted + acc, matrix=matrix, replica=replica,
                              direction=direction, round_trips=trips)
        return moved, stats


def _n_replicas(settings) -> int:
    leaves = jax.tree_util.tree_leaves(settings)
    shapes = {jnp.shape(x) for x in leaves}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError("replica settings must be batched: every field an array of shape (R,) "
                         f"(e.g. a kT ladder); got shapes {sorted(shapes)}")
    n = next(iter(shapes))[0]
    if n < 2:
        raise ValueError(f"replica exchange needs at least 2 replicas, got {n}")
    return n


def replica_exchange(potential, *, integrator="langevin", exchange_every: int = 100,
                     constraints=None) -> ReplicaExchange:
    """Replica exchange of ``potential`` with a thermostatted ``integrator``: a name in
    :data:`~workbench.dynamics.registry.INTEGRATORS` or an Integrator / sampler object (a
    metadynamics sampler, a barostat; rebuilt on ``potential``). Swaps are attempted every
    ``exchange_every`` steps (structural). ``potential`` may be a
    :class:`~workbench.system.System` (its constraints come along)."""
    potential, constraints = unpack(potential, constraints)
    if exchange_every < 1:
        raise ValueError(f"exchange_every must be >= 1, got {exchange_every}")
    inner = resolve(integrator, potential, constraints, where="replica_exchange",
                    thermostat=True)
    return ReplicaExchange(inner, potential, int(exchange_every))


def ladder(settings_factory, kT_min: float, kT_max: float, n: int, **fixed):
    """Geometric kT ladder as batched settings: ``settings_factory(kT=..., **fixed)`` per rung
    (e.g. ``integrator.settings``), stacked along a leading (n,) axis."""
    kTs = np.geomspace(kT_min, kT_max, n)
    rungs = [settings_factory(kT=float(k), **fixed) for k in kTs]
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *rungs)


def shard_replicas(tree, devices=None):
    """Place a replica-batched pytree (states, settings, stats) across CPU ``devices`` (default:
    all), split along the leading replica axis; leaves whose leading axis does not divide
    evenly, and scalars, are replicated."""
    devices = jax.devices() if devices is None else devices
    mesh = jax.sharding.Mesh(np.asarray(devices), ("replicas",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("replicas"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def put(x):
        if not hasattr(x, "shape") or x.ndim == 0 or x.shape[0] % len(devices):
            return jax.device_put(x, whole)
        return jax.device_put(x, split)

    return jax.tree_util.tree_map(put, tree)
