"""Integrators as ``init`` / ``step`` pairs over a pytree state.

Each factory takes a potential (see :mod:`workbench.potentials.base`) and returns an
:class:`Integrator` with

* ``init(key, positions, params, settings, *, masses, velocities=None, aux=None) -> MDState``
* ``step(state, params, settings, *, energy=True) -> MDState`` (pure; composes with ``lax.scan``,
  ``vmap``, ``grad``). ``energy=False`` skips the potential energy where the potential has a
  forces-only path (``state.potential_energy`` is then NaN): faster steps between reports.
* ``settings(**values)``: the integrator's numeric knobs (time step, kT, friction, ...) as a
  pytree of arrays, so changing them never recompiles.

Factories: :func:`velocity_verlet` (NVE), :func:`langevin` (BAOAB, NVT),
:func:`nose_hoover_chain` (NVT, deterministic), :func:`brownian` (overdamped Langevin).
Units: nm, ps, amu, kJ/mol; ``kT`` in kJ/mol, friction ``gamma`` in 1/ps, ``tau`` in ps.

Composition (optax-chain style): samplers (:mod:`workbench.sampling`) are Integrators that wrap
an inner Integrator, which may itself be a sampler. Every Integrator can be rebuilt on another
potential (:meth:`Integrator.with_potential`, through the ``rebuild`` each factory sets), which
is how a biasing sampler runs everything inside it on the biased potential. Each sampler keeps
its own fields in ``state.extra[key]`` (a dict keyed by sampler: :func:`sampler_state`,
:func:`with_sampler_state`), so nested samplers never clobber each other; plain integrators
carry ``extra`` through unchanged. :meth:`Integrator.ensemble` names what a (nested) sampler
samples: the potential and params its innermost integrator runs on at a state, and the
pressure of an NPT sampler (replica exchange and the barostat use it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from .. import xla
from ..system import unpack
from . import constraints as cons
from .sampler_state import (check_free_key, every, layers, sampler_state, with_sampler_state,
                            without_sampler_state)
from ..neighbors import _check_positions
from ..potentials.base import Evaluation

Array = jax.Array

__all__ = [
    "MDState",
    "Integrator",
    "SETTING_UNITS",
    "VerletSettings",
    "LangevinSettings",
    "NoseHooverSettings",
    "BrownianSettings",
    "ChainState",
    "velocity_verlet",
    "langevin",
    "nose_hoover_chain",
    "brownian",
    "maxwell_boltzmann",
    "kinetic_energy",
    "Ensemble",
    "sampler_state",
    "with_sampler_state",
    "without_sampler_state",
    "check_free_key",
    "every",
    "layers",
]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ChainState:
    """Nose-Hoover chain variables: positions xi (M,) and velocities v_xi (M,) (1/ps)."""

    xi: Array
    v_xi: Array


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MDState:
    """positions, velocities, forces: (N, 3) in nm, nm/ps, kJ/mol/nm; masses: (N,) amu;
    potential_energy: () kJ/mol; aux: the potential's neighbor list (or None); box: (3, 3) nm,
    rows are the box vectors (zeros in free space; a barostat changes it); key: PRNG key;
    step: () int; chain: thermostat state or None; extra: the samplers' own fields, a dict
    keyed by sampler (``{"metadynamics": MetadState, "barostat": BarostatState, ...}``; read
    and written with :func:`sampler_state` / :func:`with_sampler_state`), or None when no
    sampler is involved; integrators carry it through unchanged."""

    positions: Array
    velocities: Array
    forces: Array
    masses: Array
    potential_energy: Array
    aux: Any
    box: Array
    key: Array
    step: Array
    chain: ChainState | None = None
    extra: Any = None


SETTING_UNITS = {"dt": "ps", "kT": "kJ/mol", "gamma": "1/ps", "tau": "ps"}
"""Unit of each integrator setting (molecular units)."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class VerletSettings:
    dt: Array  # ps


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LangevinSettings:
    dt: Array  # ps
    kT: Array  # kJ/mol
    gamma: Array  # 1/ps


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class NoseHooverSettings:
    dt: Array  # ps
    kT: Array  # kJ/mol
    tau: Array  # ps, thermostat period


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class BrownianSettings:
    dt: Array  # ps
    kT: Array  # kJ/mol
    gamma: Array  # 1/ps


class Ensemble(NamedTuple):
    """What a (possibly nested) sampler samples at one state: ``potential`` and ``params``, the
    energy its innermost integrator runs on (with a sampler's bias filled in from the state),
    and ``pressure`` (kJ/mol/nm^3; 0 for constant volume). The reduced energy of a
    configuration (positions, box) is (U + P V) / kT."""

    potential: Any
    params: Any
    pressure: Any


@dataclass(frozen=True, eq=False)
class Integrator:
    """An ``init``/``step`` pair with its settings class and degrees of freedom.

    ``dof(n)``: degrees of freedom for temperature (3N - 3 when total momentum is conserved).
    ``conserved(state, settings)``: the quantity the exact dynamics conserves (kJ/mol), if any.
    ``rebuild(potential)``: the same integrator (kind, constraints, structural options, inner
    samplers) on another potential; every factory sets it (see :meth:`with_potential`).
    ``ensemble_fn(state, params) -> Ensemble``: set by samplers that change what is sampled
    (a bias, a pressure); None means ``Ensemble(potential, params, 0)`` (see :meth:`ensemble`).
    """

    name: str
    init: Callable[..., MDState]
    step: Callable[..., MDState]
    settings_class: type
    dof: Callable[[int], int]
    conserved: Callable[..., Array] | None = None
    potential: Any = field(default=None, repr=False)
    constraints: Any = field(default=None, repr=False)
    rebuild: Callable[[Any], "Integrator"] | None = field(default=None, repr=False)
    ensemble_fn: Callable[[MDState, Any], Ensemble] | None = field(default=None, repr=False)

    def with_potential(self, potential) -> "Integrator":
        """This integrator on ``potential`` (an energy term): what a biasing sampler calls to
        run its inner integrator (and everything inside that) on the biased potential. Returns
        ``self`` when ``potential`` is already this integrator's. Structural: it builds anew."""
        if potential is self.potential:
            return self
        if self.rebuild is None:
            raise TypeError(f"{self.name} cannot be rebuilt on another potential (it was made "
                            "without a rebuild function); build it with one of the factories")
        return self.rebuild(potential)

    def ensemble(self, state: MDState, params) -> Ensemble:
        """The :class:`Ensemble` this integrator samples at ``state`` with ``params`` (its own
        potential's params, as its ``step`` takes them)."""
        if self.ensemble_fn is None:
            return Ensemble(self.potential, params, 0.0)
        return self.ensemble_fn(state, params)

    def settings(self, **values) -> Any:
        """Build the numeric settings pytree; every field is required, unknown names raise."""
        names = [f.name for f in fields(self.settings_class)]
        unknown = set(values) - set(names)
        missing = set(names) - set(values)
        if unknown or missing:
            raise TypeError(
                f"{self.name} settings are {names}; missing {sorted(missing)}, "
                f"unknown {sorted(unknown)}"
            )
        out = {}
        for k in names:
            v = float(values[k])
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"{self.name} setting {k} must be positive and finite, got {v}")
            out[k] = jnp.asarray(v, dtype=jnp.result_type(float))
        return self.settings_class(**out)


def _unconstrained(model, name: str):
    """The potential of ``model`` (a System or a potential) for an integrator without
    constraint support; a constrained system is refused, naming the alternatives."""
    potential, constraints = unpack(model)
    if constraints is not None:
        raise ValueError(f"{name} does not support constraints and this system has them: use "
                         "langevin or velocity_verlet, or pass system.potential to drop them")
    return potential


def _kT(settings):
    return settings.kT


def _dof(constraints, remove_com: bool) -> Callable[[int], int]:
    """Degrees of freedom for the temperature: 3N, less the constraints, less 3 when the total
    momentum is conserved (one copy of the rule; :func:`constraints.constrained_dof`)."""

    def dof(n: int) -> int:
        if constraints is not None:
            return cons.constrained_dof(n, constraints, remove_com)
        return 3 * n - (3 if remove_com else 0)

    return dof


def kinetic_energy(velocities: Array, masses: Array) -> Array:
    """0.5 sum m v^2 (kJ/mol). velocities (N, 3) nm/ps, masses (N,) amu."""
    return 0.5 * jnp.sum(masses[:, None] * velocities * velocities)


def maxwell_boltzmann(key: Array, masses: Array, kT, remove_com: bool = True) -> Array:
    """Velocities (N, 3) nm/ps drawn at temperature kT (kJ/mol); the centre-of-mass motion is
    removed when ``remove_com``."""
    masses = jnp.asarray(masses)
    v = jax.random.normal(key, (masses.shape[0], 3), dtype=jnp.result_type(float))
    v = v * jnp.sqrt(kT / masses)[:, None]
    if remove_com:
        v = v - jnp.sum(masses[:, None] * v, 0, keepdims=True) / jnp.sum(masses)
    return v


def _check_masses(masses, n):
    if isinstance(masses, jax.core.Tracer):
        return jnp.broadcast_to(masses, (n,))
    m = np.asarray(masses, dtype=float)
    m = np.broadcast_to(m, (n,)) if m.ndim == 0 else m
    if m.shape != (n,):
        raise ValueError(f"masses must be a scalar or have shape ({n},), got {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        bad = np.nonzero(~(np.isfinite(m) & (m > 0)))[0][:10].tolist()
        raise ValueError(f"masses must be positive and finite; bad entries at atoms {bad}")
    return jnp.asarray(m, dtype=jnp.result_type(float))


def _make_init(potential, kT_of: Callable[[Any], Any] | None, remove_com: bool, chain_len=0,
               constraints=None):
    def init(key, positions, params, settings, *, masses=1.0, velocities=None, aux=None,
             box=None):
        n = _check_positions(positions).shape[0]
        m = _check_masses(masses, n)
        positions = jnp.asarray(positions, dtype=jnp.result_type(float))
        box = potential.default_box() if box is None else jnp.asarray(box, positions.dtype)
        if box.shape != (3, 3):
            raise ValueError(f"box must be a (3, 3) matrix of box vectors (rows), got {box.shape}")
        fresh = aux is None
        if fresh:
            aux = potential.allocate(positions, box)
        if velocities is not None:
            velocities = jnp.asarray(velocities, dtype=positions.dtype)
            if velocities.shape != positions.shape:
                raise ValueError(
                    f"velocities must have shape {positions.shape}, got {velocities.shape}")

        key, positions, v, ev, aux = _start_program()(
            key, positions, params, aux, box, settings, m, velocities, potential=potential,
            kT_of=kT_of, remove_com=remove_com, fresh=fresh, constraints=constraints)
        chain = None
        if chain_len:
            z = jnp.zeros(chain_len, dtype=positions.dtype)
            chain = ChainState(xi=z, v_xi=z)
        return MDState(
            positions=positions,
            velocities=v,
            forces=ev.forces,
            masses=m,
            potential_energy=ev.energy,
            aux=aux,
            box=box,
            key=key,
            step=jnp.asarray(0, jnp.int32),
            chain=chain,
        )

    return init


def _start(key, positions, params, aux, box, settings, m, v, *, potential, kT_of, remove_com,
           fresh, constraints):
    """Start on the constraint surface, key split, velocity draw and first forces as one
    compiled program (each eager op would compile on its own: measured 0.3 s more at start-up,
    and 4.5 s more for the ~100 ops of an eager constraint projection of alanine dipeptide).
    Module-level and keyed by its static arguments, so a second ``init`` with new values
    reuses the compiled program."""
    if constraints is not None:  # start on the constraint surface, velocities tangent
        positions = cons.constrain_positions(positions, positions, m, constraints)
    key, vkey = jax.random.split(key)
    if v is None:
        if kT_of is None:
            v = jnp.zeros_like(positions)
        else:
            v = maxwell_boltzmann(vkey, m, kT_of(settings), remove_com)
    if constraints is not None:
        v = cons.constrain_velocities(positions, v, m, constraints)
    evaluate = potential.evaluate_fresh if fresh else potential.evaluate
    ev, aux = evaluate(positions, params, aux, box)
    return key, positions, v, ev, aux


@functools.cache
def _start_program():
    return xla.jit(_start, static_argnames=("potential", "kT_of", "remove_com", "fresh"))


FORCES_NAME = "workbench_forces"
"""The name (``jax.ad_checkpoint.checkpoint_name``) of every step's forces: a checkpoint policy
that saves it (:func:`workbench.gradients.trajectory.trajectory`'s ``store_forces``) spares the
backward pass the force evaluations of its recomputation. A no-op everywhere else."""


def _forces(potential, state, positions, params, energy: bool = True):
    """Forces (and the energy, unless ``energy`` is False: then the returned energy is NaN;
    :class:`~workbench.simulate.Simulation` fills it in at reported frames). Refreshes the
    potential's neighbor list; the box is the state's."""
    if energy:
        ev, aux = potential.evaluate(positions, params, state.aux, state.box)
        return replace(ev, forces=checkpoint_name(ev.forces, FORCES_NAME)), aux
    forces, aux = potential.forces(positions, params, state.aux, state.box)
    forces = checkpoint_name(forces, FORCES_NAME)
    return Evaluation(energy=jnp.full((), jnp.nan, forces.dtype), forces=forces), aux


def velocity_verlet(potential, constraints=None) -> Integrator:
    """Velocity Verlet (NVE). Settings: dt (ps). Conserves kinetic + potential energy with an
    error of order dt^2. With ``constraints`` (:mod:`~workbench.dynamics.constraints`): RATTLE
    (positions projected by SHAKE along the old bond vectors, velocities made tangent)."""
    potential, constraints = unpack(potential, constraints)

    def step(state: MDState, params, s: VerletSettings, *, energy: bool = True) -> MDState:
        inv_m = (1.0 / state.masses)[:, None]
        v = state.velocities + 0.5 * s.dt * state.forces * inv_m
        r = state.positions + s.dt * v
        if constraints is not None:
            r = cons.constrain_positions(state.positions, r, state.masses, constraints)
            v = (r - state.positions) / s.dt
        ev, aux = _forces(potential, state, r, params, energy)
        v = v + 0.5 * s.dt * ev.forces * inv_m
        if constraints is not None:
            v = cons.constrain_velocities(r, v, state.masses, constraints)
        return replace(
            state, positions=r, velocities=v, forces=ev.forces, potential_energy=ev.energy,
            aux=aux, step=state.step + 1,
        )

    def conserved(state, s):
        return state.potential_energy + kinetic_energy(state.velocities, state.masses)

    return Integrator(
        "velocity_verlet", _make_init(potential, None, True, constraints=constraints), step,
        VerletSettings, _dof(constraints, remove_com=True), conserved, potential, constraints,
        rebuild=lambda p: velocity_verlet(p, constraints),
    )


def langevin(potential, constraints=None) -> Integrator:
    """Langevin dynamics, BAOAB splitting (Leimkuhler and Matthews 2013): NVT.
    Settings: dt (ps), kT (kJ/mol), gamma (friction, 1/ps). Initial velocities are drawn at kT.

    Written in OpenMM's LangevinMiddleIntegrator form: the two half kicks of consecutive steps
    are merged into one full kick (V A O A), so the state's velocities are the mid-step ones
    (after the noise, half a step ahead of the positions), and the kinetic energy and
    temperature reported from them are what OpenMM reports. The full-step velocities of BAOAB
    run cold by O(dt^2) (about 3% at 2 fs in water); the mid-step ones do not.

    With ``constraints`` (bonds to hydrogen, rigid water) it is the constrained BAOAB
    (g-BAOAB with one projection per drift) of Leimkuhler and Matthews (2016): velocities made
    tangent after the kick and after the noise, positions projected (SHAKE/SETTLE) after each
    half drift with the projection's displacement folded back into the velocities. 2 fs steps."""
    potential, constraints = unpack(potential, constraints)

    def step(state: MDState, params, s: LangevinSettings, *, energy: bool = True) -> MDState:
        inv_m = (1.0 / state.masses)[:, None]
        key, noise_key = jax.random.split(state.key)
        m = state.masses

        def drift(r, v):  # A: half a drift, projected, the projection folded into v
            new = r + 0.5 * s.dt * v
            if constraints is None:
                return new, v
            shaken = cons.constrain_positions(r, new, m, constraints)
            return shaken, v + (shaken - new) / (0.5 * s.dt)

        c1 = jnp.exp(-s.gamma * s.dt)
        c2 = jnp.sqrt((1.0 - c1 * c1) * s.kT) * jnp.sqrt(inv_m)
        noise = c2 * jax.random.normal(noise_key, state.velocities.shape,
                                       state.velocities.dtype)
        kick = s.dt * state.forces * inv_m
        if constraints is None:
            v = state.velocities + kick  # V: the full kick
            r, v = drift(state.positions, v)
            v = c1 * v + noise  # O
            r, v = drift(r, v)
        else:
            # V A then O A share one half step v <- a v + b, tangent, A (a = 1, b = the kick;
            # then a = c1, b = the noise): a two-pass loop compiles the constraint projections
            # once instead of twice (1 v + b is v + b exactly, so the numbers are unchanged)
            def half(carry, ab):
                r, v = carry
                v = ab[0] * v + ab[1]
                v = cons.constrain_velocities(r, v, m, constraints)
                return drift(r, v), None

            a = jnp.stack([jnp.ones_like(c1), c1])
            (r, v), _ = jax.lax.scan(half, (state.positions, state.velocities),
                                     (a, jnp.stack([kick, noise])))
        ev, aux = _forces(potential, state, r, params, energy)
        return replace(
            state, positions=r, velocities=v, forces=ev.forces, potential_energy=ev.energy,
            aux=aux, key=key, step=state.step + 1,
        )

    return Integrator(
        "langevin", _make_init(potential, _kT, False, constraints=constraints), step,
        LangevinSettings, _dof(constraints, remove_com=False), None, potential, constraints,
        rebuild=lambda p: langevin(p, constraints),
    )


def _chain_masses(dof, kT, tau, m):
    q = kT * tau * tau * jnp.ones(m)
    return q.at[0].multiply(dof)


def _chain_half_step(ke2, chain: ChainState, q, dof, kT, dt):
    """Half step (dt/2) of a Nose-Hoover chain (Martyna, Tuckerman, Klein 1996 with one
    Suzuki-Yoshida stage). ke2 = sum m v^2. Returns (velocity scale, new chain)."""
    m = chain.v_xi.shape[0]
    v_xi = chain.v_xi
    dt4, dt8 = 0.25 * dt, 0.125 * dt

    def force(j, v_xi, ke2):
        if j == 0:
            return (ke2 - dof * kT) / q[0]
        return (q[j - 1] * v_xi[j - 1] ** 2 - kT) / q[j]

    v_xi = v_xi.at[m - 1].add(dt4 * force(m - 1, v_xi, ke2))
    for j in range(m - 2, -1, -1):
        a = jnp.exp(-dt8 * v_xi[j + 1])
        v_xi = v_xi.at[j].set(a * (a * v_xi[j] + dt4 * force(j, v_xi, ke2)))
    scale = jnp.exp(-0.5 * dt * v_xi[0])
    ke2 = ke2 * scale * scale
    xi = chain.xi + 0.5 * dt * v_xi
    for j in range(0, m - 1):
        a = jnp.exp(-dt8 * v_xi[j + 1])
        v_xi = v_xi.at[j].set(a * (a * v_xi[j] + dt4 * force(j, v_xi, ke2)))
    v_xi = v_xi.at[m - 1].add(dt4 * force(m - 1, v_xi, ke2))
    return scale, ChainState(xi=xi, v_xi=v_xi)


def nose_hoover_chain(potential, chain_length: int = 3) -> Integrator:
    """Nose-Hoover chain thermostat around velocity Verlet (NVT, deterministic).
    Settings: dt (ps), kT (kJ/mol), tau (thermostat period, ps; 0.1-1 ps is typical).
    ``chain_length`` is structural. The extended energy (:attr:`Integrator.conserved`) is
    conserved to order dt^2."""
    potential = _unconstrained(potential, "nose_hoover_chain")
    if chain_length < 1:
        raise ValueError(f"chain_length must be >= 1, got {chain_length}")

    def step(state: MDState, params, s: NoseHooverSettings, *, energy: bool = True) -> MDState:
        n = state.positions.shape[0]
        dof = 3 * n - 3
        q = _chain_masses(dof, s.kT, s.tau, chain_length)
        ke2 = 2.0 * kinetic_energy(state.velocities, state.masses)
        scale, chain = _chain_half_step(ke2, state.chain, q, dof, s.kT, s.dt)
        inv_m = (1.0 / state.masses)[:, None]
        v = state.velocities * scale + 0.5 * s.dt * state.forces * inv_m
        r = state.positions + s.dt * v
        ev, aux = _forces(potential, state, r, params, energy)
        v = v + 0.5 * s.dt * ev.forces * inv_m
        ke2 = 2.0 * kinetic_energy(v, state.masses)
        scale, chain = _chain_half_step(ke2, chain, q, dof, s.kT, s.dt)
        return replace(
            state, positions=r, velocities=v * scale, forces=ev.forces,
            potential_energy=ev.energy, aux=aux, step=state.step + 1, chain=chain,
        )

    def conserved(state, s):
        n = state.positions.shape[0]
        dof = 3 * n - 3
        q = _chain_masses(dof, s.kT, s.tau, chain_length)
        c = state.chain
        thermo = 0.5 * jnp.sum(q * c.v_xi**2) + dof * s.kT * c.xi[0] + s.kT * jnp.sum(c.xi[1:])
        return state.potential_energy + kinetic_energy(state.velocities, state.masses) + thermo

    return Integrator(
        "nose_hoover_chain", _make_init(potential, _kT, True, chain_length), step,
        NoseHooverSettings, _dof(None, remove_com=True), conserved, potential,
        rebuild=lambda p: nose_hoover_chain(p, chain_length),
    )


def brownian(potential) -> Integrator:
    """Overdamped Langevin (Brownian) dynamics, Euler-Maruyama:
    r += dt F / (m gamma) + sqrt(2 kT dt / (m gamma)) xi. Settings: dt (ps), kT (kJ/mol),
    gamma (1/ps). ``velocities`` holds the drift-plus-noise displacement divided by dt."""
    potential = _unconstrained(potential, "brownian")

    def step(state: MDState, params, s: BrownianSettings, *, energy: bool = True) -> MDState:
        key, noise_key = jax.random.split(state.key)
        mobility = (1.0 / (state.masses * s.gamma))[:, None]
        noise = jax.random.normal(noise_key, state.positions.shape, state.positions.dtype)
        dr = s.dt * state.forces * mobility + jnp.sqrt(2.0 * s.kT * s.dt * mobility) * noise
        r = state.positions + dr
        ev, aux = _forces(potential, state, r, params, energy)
        return replace(
            state, positions=r, velocities=dr / s.dt, forces=ev.forces,
            potential_energy=ev.energy, aux=aux, key=key, step=state.step + 1,
        )

    return Integrator(
        "brownian", _make_init(potential, None, False), step, BrownianSettings,
        _dof(None, remove_com=False), None, potential, rebuild=brownian,
    )
