"""Energy minimization: FIRE and gradient descent as init/step pairs, and a host-side driver.

FIRE follows Bitzek et al., PRL 97, 170201 (2006): velocity Verlet steps with the velocity
mixed toward the force direction, an adaptive time step, and a full stop when the power P = F.v
turns negative. Gradient descent takes a fixed step along the force.

:func:`minimize` runs jitted chunks until the largest force component falls below ``ftol``,
regrowing neighbor lists that overflow (so no step is computed with an incomplete list).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from .. import xla
from ..potentials.base import overflowed

Array = jax.Array

__all__ = ["FireState", "fire", "gradient_descent", "minimize", "MinimizeResult"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class FireState:
    """positions, velocities, forces (N, 3); energy (); dt, alpha (); n_pos: steps since P < 0."""

    positions: Array
    velocities: Array
    forces: Array
    energy: Array
    aux: Any
    dt: Array
    alpha: Array
    n_pos: Array
    box: Any = None


def _projector(constraints):
    """Forces and velocities projected onto the constraint surface's tangent space (unit masses),
    and positions projected onto the surface; identities without constraints."""
    if constraints is None:
        return (lambda r, v: v), (lambda old, new: new)
    from . import constraints as cons

    def tangent(r, v):
        return cons.constrain_velocities(r, v, jnp.ones(r.shape[0], r.dtype), constraints)

    def surface(old, new):
        return cons.constrain_positions(old, new, jnp.ones(new.shape[0], new.dtype), constraints)

    return tangent, surface


def fire(potential, dt_start=0.001, dt_max=0.01, n_min=5, f_inc=1.1, f_dec=0.5,
         alpha_start=0.1, f_alpha=0.99, constraints=None):
    """FIRE minimizer for ``potential``. Returns (init, step) with
    ``init(positions, params, aux) -> FireState`` and ``step(state, params) -> FireState``.
    Time steps in ps (unit masses): the defaults suit reduced LJ units; molecules with stiff
    bonds need ``dt_max`` near 0.002. ``constraints``: minimize on the constraint surface
    (positions projected by SHAKE, forces and velocities to its tangent space); the reported
    forces are the projected ones."""
    tangent, surface = _projector(constraints)

    def init(positions, params, aux, box=None):
        positions = surface(positions, positions)
        ev, aux = potential.evaluate(positions, params, aux, box)
        ev = replace(ev, forces=tangent(positions, ev.forces))
        z = jnp.zeros_like(positions)
        dtype = positions.dtype
        return FireState(positions, z, ev.forces, ev.energy, aux, jnp.asarray(dt_start, dtype),
                         jnp.asarray(alpha_start, dtype), jnp.asarray(0, jnp.int32), box)

    def step(s: FireState, params) -> FireState:
        v = s.velocities + 0.5 * s.dt * s.forces
        r = surface(s.positions, s.positions + s.dt * v)
        ev, aux = potential.evaluate(r, params, s.aux, s.box)
        ev = replace(ev, forces=tangent(r, ev.forces))
        v = tangent(r, v + 0.5 * s.dt * ev.forces)
        power = jnp.sum(ev.forces * v)
        f_norm = jnp.sqrt(jnp.sum(ev.forces**2))
        v_norm = jnp.sqrt(jnp.sum(v**2))
        mixed = (1 - s.alpha) * v + s.alpha * ev.forces * v_norm / (f_norm + 1e-30)
        up = power > 0
        grow = up & (s.n_pos > n_min)
        v = jnp.where(up, mixed, jnp.zeros_like(v))
        dt = jnp.where(grow, jnp.minimum(s.dt * f_inc, dt_max), jnp.where(up, s.dt, s.dt * f_dec))
        alpha = jnp.where(grow, s.alpha * f_alpha, jnp.where(up, s.alpha, alpha_start))
        n_pos = jnp.where(up, s.n_pos + 1, 0)
        return FireState(r, v, ev.forces, ev.energy, aux, dt, alpha, n_pos, s.box)

    return init, step


def gradient_descent(potential, step_size=1e-4, constraints=None):
    """Steepest descent r <- r + step_size * F (step_size in nm^2 mol/kJ). Returns (init, step)
    with the same state as FIRE."""
    init_fire, _ = fire(potential, constraints=constraints)
    tangent, surface = _projector(constraints)

    def step(s: FireState, params) -> FireState:
        r = surface(s.positions, s.positions + step_size * s.forces)
        ev, aux = potential.evaluate(r, params, s.aux, s.box)
        ev = replace(ev, forces=tangent(r, ev.forces))
        return replace(s, positions=r, forces=ev.forces, energy=ev.energy, aux=aux)

    return init_fire, step


def _build(potential, method: str, chunk: int, options: tuple, constraints=None):
    """Jitted (init, run-a-chunk) for a potential."""
    init, step = {"fire": fire, "gradient_descent": gradient_descent}[method](
        potential, constraints=constraints, **dict(options))

    def run(s, params):
        return jax.lax.scan(lambda c, _: (step(c, params), None), s, None, length=chunk)[0]

    return xla.jit(init), xla.jit(run)


_compiled = functools.lru_cache(maxsize=32)(_build)
""":func:`_build` cached by potential, so repeated minimize() calls compile once (constraints,
whose arrays cannot be hashed, are cached per Constraints object in :data:`_WITH_CONSTRAINTS`)."""
_WITH_CONSTRAINTS: dict = {}


@dataclass(frozen=True)
class MinimizeResult:
    positions: Array
    energy: float
    max_force: float
    steps: int
    converged: bool
    aux: Any


def minimize(potential, positions, params, aux=None, *, box=None, method: str = "fire",
             ftol: float = 1e-3, max_steps: int = 10_000, chunk: int = 100, constraints=None,
             **options):
    """Minimize the energy from ``positions`` (N, 3) until max |F component| < ``ftol``
    (kJ/mol/nm) or ``max_steps``, in the box ``box`` (3, 3) nm (default: the potential's).
    method: ``"fire"`` or ``"gradient_descent"``; options go to the method's factory.
    constraints: stay on the constraint surface (e.g. ``ForceFieldSystem.constraints()``: a
    system built with constrained X-H bonds has no bond terms for them). Returns a
    :class:`MinimizeResult`."""
    makers = {"fire": fire, "gradient_descent": gradient_descent}
    if method not in makers:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(makers)}")
    positions = jnp.asarray(positions, dtype=jnp.result_type(float))
    box = potential.default_box() if box is None else jnp.asarray(box, positions.dtype)
    if aux is None:
        aux = potential.allocate(positions, box)
    opts = tuple(sorted(options.items()))
    if constraints is None:
        init, run = _compiled(potential, method, chunk, opts)
    else:
        key = (id(potential), method, chunk, opts, id(constraints))
        if key not in _WITH_CONSTRAINTS or _WITH_CONSTRAINTS[key][0] is not constraints:
            if len(_WITH_CONSTRAINTS) > 32:
                _WITH_CONSTRAINTS.clear()
            _WITH_CONSTRAINTS[key] = (constraints, potential,
                                      _build(potential, method, chunk, opts, constraints))
        init, run = _WITH_CONSTRAINTS[key][2]
    state = init(positions, params, aux, box)
    while bool(overflowed(state.aux)):  # the list given was too small: regrow before step 0
        state = init(positions, params, nl.grow_all(state.aux, positions), box)
    done = 0
    while True:
        fmax = float(jnp.max(jnp.abs(state.forces)))
        if not np.isfinite(fmax):
            raise FloatingPointError(
                f"minimization produced non-finite forces after {done} steps; the start "
                "structure probably has overlapping atoms (or the step is too large)"
            )
        if fmax < ftol or done >= max_steps:
            break
        new = run(state, params)
        if bool(overflowed(new.aux)):
            state = replace(state, aux=nl.grow_all(new.aux, state.positions))
            continue
        state = new
        done += chunk
    return MinimizeResult(state.positions, float(state.energy), fmax, done, fmax < ftol, state.aux)
