"""Monte Carlo barostat (isotropic, or anisotropic for orthorhombic boxes) around any thermostatted
integrator, as OpenMM's MonteCarloBarostat / MonteCarloAnisotropicBarostat.

Every ``every`` steps a volume change dV, uniform in [-max_dv, max_dv], is proposed: the box is
scaled (all three vectors, or one axis), and so are the centres of mass of the *groups* (molecules,
rigid waters, or single atoms), each group moving rigidly, so constraints still hold. The move is
accepted with probability min(1, exp(-w / kT)),

    w = dU + P dV - n_groups kT ln(V' / V),

the NPT ensemble's Metropolis rule for a uniform volume step (Frenkel and Smit, ch. 5.4). For the
full-potential pressure of a truncated pair potential, add its tail correction as an energy term of
the box (``potentials.pair.PairPotential.tail_term``). max_dv adapts toward 25-75% acceptance
(OpenMM's rule: x0.9 / x1.1 every 10 attempts). Pressure in kJ/mol/nm^3 (16.6054 bar) or reduced
units; it lives in ``state.extra["barostat"]`` (a :class:`BarostatState`, read it with
:func:`barostat_state`) with the counters and the groups.

The inner integrator is any thermostatted Integrator or sampler (a name, or an object rebuilt on
this barostat's potential). dU is the energy of what the inner sampler samples
(:meth:`~workbench.dynamics.integrators.Integrator.ensemble`): with a biasing sampler inside
(``monte_carlo_barostat(system, P, integrator=metadynamics(system, ...))``), or this barostat
inside one (``metadynamics(system, ..., integrator=monte_carlo_barostat(system, P))``, which
rebuilds it on system + bias), the volume moves see the biased energy, as NPT sampling of the
biased ensemble requires.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics import integrators as integ
from ..dynamics.registry import resolve
from ..space import box_volume
from ..system import unpack

Array = jax.Array

__all__ = ["BarostatState", "Barostat", "monte_carlo_barostat", "barostat_state",
           "scale_groups", "volume", "BAR", "KEY"]

KEY = "barostat"
"""The default key of the barostat's entry in ``state.extra``."""

BAR = 1.0 / 16.6054
"""kJ/mol/nm^3 per bar."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class BarostatState:
    """pressure: () target (kJ/mol/nm^3 or reduced); max_dv: () current largest volume step;
    attempts, accepted: () totals; window_attempts, window_accepted: () counts since the last
    adaptation; groups: (N,) int group of each atom (groups move rigidly)."""

    pressure: Array
    max_dv: Array
    attempts: Array
    accepted: Array
    window_attempts: Array
    window_accepted: Array
    groups: Array

    def acceptance(self) -> float:
        a = int(self.attempts)
        return float(self.accepted) / a if a else float("nan")


@dataclass(frozen=True, eq=False)
class Barostat(integ.Integrator):
    """The sampler :func:`monte_carlo_barostat` returns (an Integrator)."""

    every: int = 25
    inner: Any = None
    groups: Any = None
    n_groups: int = 0
    anisotropic: bool = False
    key: str = KEY


def barostat_state(state: integ.MDState, key: "str | Barostat" = KEY) -> BarostatState:
    """The barostat's :class:`BarostatState` in ``state`` (pressure, step size, counters,
    groups); ``key``: the barostat (or its ``key=``) when it was given another key."""
    return integ.sampler_state(state, key.key if isinstance(key, Barostat) else key)


volume = box_volume
"""Box volume (nm^3): :func:`workbench.space.box_volume`."""


def scale_groups(positions: Array, masses: Array, groups: Array, n_groups: int,
                 factor: Array) -> Array:
    """Positions (N, 3) with every group's centre of mass scaled by ``factor`` ((3,) per axis,
    or a scalar) about the origin, each group moved rigidly."""
    m = masses[:, None]
    com = jax.ops.segment_sum(m * positions, groups, n_groups) / \
        jax.ops.segment_sum(m, groups, n_groups)
    return positions + (com * (jnp.reshape(factor, (1, -1)) - 1.0))[groups]


def monte_carlo_barostat(potential, pressure: float, *, integrator="langevin",
                         every: int = 25, max_dv: float | None = None, anisotropic: bool = False,
                         groups=None, constraints=None, key: str = KEY) -> Barostat:
    """NPT: ``integrator`` on ``potential`` (or a :class:`~workbench.system.System`, which
    brings its constraints) plus a Monte Carlo volume move every ``every`` steps (structural) at
    ``pressure`` (numeric, in the state).

    integrator: a name in :data:`~workbench.dynamics.registry.INTEGRATORS` with a thermostat
    (built with ``constraints``), or an Integrator / sampler object (rebuilt on ``potential``).
    groups: (N,) group index of each atom (atoms of a group move rigidly); default: atoms joined
    by constraints form a group, every other atom is its own. max_dv: the first largest volume
    step (default 1% of the start volume). anisotropic: scale one axis of an orthorhombic box at a
    time (chosen at random). key: this barostat's entry in ``state.extra``."""
    from ..observables import rigid_groups

    potential, constraints = unpack(potential, constraints)
    if not potential.space.periodic:
        raise ValueError("a barostat needs a periodic space (the box it scales)")
    if anisotropic and potential.space.kind != "periodic":
        raise ValueError("the anisotropic barostat needs an orthorhombic (periodic) box")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    inner = resolve(integrator, potential, constraints, where="monte_carlo_barostat",
                    thermostat=True)
    constraints = inner.constraints
    dtype = jnp.result_type(float)
    store = key  # this barostat's entry in state.extra (``key`` below is a PRNG key)

    def init(key, positions, params, settings, **kwargs) -> integ.MDState:
        state = inner.init(key, positions, params, settings, **kwargs)
        integ.check_free_key(state, store, "monte_carlo_barostat")
        n = state.positions.shape[0]
        g = (rigid_groups(constraints, n) if groups is None and constraints is not None
             else np.arange(n) if groups is None else np.asarray(groups))
        if g.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {g.shape}")
        dv = 0.01 * float(volume(state.box)) if max_dv is None else float(max_dv)
        z = jnp.asarray(0, jnp.int32)
        baro = BarostatState(pressure=jnp.asarray(pressure, dtype), max_dv=jnp.asarray(dv, dtype),
                             attempts=z, accepted=z, window_attempts=z, window_accepted=z,
                             groups=jnp.asarray(g, jnp.int32))
        return integ.with_sampler_state(state, store, baro)

    def move(state, params, settings):
        baro = barostat_state(state, store)
        g = baro.groups
        pot, prm, _ = inner.ensemble(state, params)  # what the inner sampler samples (a bias)
        u_old = pot.energy(state.positions, prm, state.aux, state.box)  # the state's may be NaN
        n_groups = state.positions.shape[0]  # an upper bound: segment sums ignore empty groups
        rng, k_dv, k_axis, k_acc = jax.random.split(state.key, 4)
        v = volume(state.box)
        dv = baro.max_dv * jax.random.uniform(k_dv, (), dtype, -1.0, 1.0)
        v_new = v + dv
        ok = v_new > 0
        if anisotropic:
            axis = jax.random.randint(k_axis, (), 0, 3)
            factor = jnp.where(jnp.arange(3) == axis, v_new / v, 1.0)
        else:
            factor = jnp.full(3, jnp.cbrt(jnp.where(ok, v_new / v, 1.0)))
        box = state.box * factor[:, None]
        r = scale_groups(state.positions, state.masses, g, n_groups, factor)
        ev, aux = pot.evaluate(r, prm, state.aux, box)
        kT = settings.kT
        n_real = jnp.sum(jax.ops.segment_sum(jnp.ones_like(g), g, n_groups) > 0)
        w = (ev.energy - u_old + baro.pressure * dv
             - n_real * kT * jnp.log(jnp.where(ok, v_new / v, 1.0)))
        accept = ok & (jax.random.uniform(k_acc, (), dtype) < jnp.exp(-w / kT))
        new = replace(state, positions=r, box=box, aux=aux, forces=ev.forces,
                      potential_energy=ev.energy)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, state)
        wa, wc = baro.window_attempts + 1, baro.window_accepted + accept.astype(jnp.int32)
        adapt = wa >= 10
        rate = wc / wa
        scale = jnp.where(rate < 0.25, 0.9, jnp.where(rate > 0.75, 1.1, 1.0))
        max_dv_ = jnp.where(adapt, jnp.minimum(baro.max_dv * scale, 0.3 * v), baro.max_dv)
        baro = replace(baro, max_dv=max_dv_, attempts=baro.attempts + 1,
                       accepted=baro.accepted + accept.astype(jnp.int32),
                       window_attempts=jnp.where(adapt, 0, wa),
                       window_accepted=jnp.where(adapt, 0, wc))
        return integ.with_sampler_state(replace(out, key=rng), store, baro)

    def step(state, params, settings, *, energy: bool = True) -> integ.MDState:
        state = inner.step(state, params, settings, energy=energy)
        return jax.lax.cond(integ.every(state.step, every), lambda s: move(s, params, settings),
                            lambda s: s, state)

    def ensemble(state, params) -> integ.Ensemble:
        e = inner.ensemble(state, params)
        return integ.Ensemble(e.potential, e.params, barostat_state(state, store).pressure)

    def rebuild(p) -> Barostat:
        return monte_carlo_barostat(p, pressure, integrator=inner, every=every, max_dv=max_dv,
                                    anisotropic=anisotropic, groups=groups, key=store)

    return Barostat(name=f"npt({inner.name})", init=init, step=step,
                    settings_class=inner.settings_class, dof=inner.dof, conserved=None,
                    potential=potential, constraints=constraints, rebuild=rebuild,
                    ensemble_fn=ensemble, every=every, inner=inner, groups=groups,
                    anisotropic=anisotropic, key=store)
