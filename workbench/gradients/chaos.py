"""How far back can a trajectory gradient look? Diagnostics for chaotic dynamics.

Molecular dynamics is chaotic: two trajectories a distance d0 apart separate like
d0 exp(lambda t) (lambda > 0, the largest Lyapunov exponent), and the gradient of an observable at
time t with respect to the initial state or the parameters grows the same way. Beyond a few
1/lambda the backpropagated gradient is dominated by this growth: its variance explodes, and it
stops describing how the *average* of the observable responds. Then use a truncated horizon
(:func:`workbench.gradients.trajectory.trajectory` with ``horizon``), or the reweighting
estimator (:mod:`workbench.gradients.reweight`), which differentiates the ensemble average
directly.

* :func:`lyapunov`: the largest exponent by the two-trajectory method of Benettin et al. (1976):
  a copy displaced by ``eps`` runs alongside (same noise for Langevin), renormalized back to
  ``eps`` every ``renorm_every`` steps; lambda is the mean log growth per unit time.
* :func:`gradient_growth`: the norm of d O(t)/d(initial positions) and of d O(t)/d params for a
  list of horizons t, from checkpointed reverse mode; its log slope against t approaches lambda.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import trajectory as tj

__all__ = ["lyapunov", "gradient_growth"]


def lyapunov(integrator, state, params, settings, n_steps: int, *, renorm_every: int = 10,
             eps: float | None = None, seed: int = 0) -> dict:
    """Largest Lyapunov exponent (1/ps, or 1/tau in reduced units) of ``integrator`` from
    ``state``: dict with ``lyapunov``, ``log_growth`` (per renormalization) and ``times``.
    eps: displacement norm (nm) of the companion trajectory, in phase space (positions and
    velocities together); default 1e-6 in float64 and 1e-3 in float32, where a smaller one
    drowns in the rounding of the positions (each of 3N components must stay well above their
    last bit, or the rounding noise is what grows). Host side; the stepping is jitted."""
    if n_steps < renorm_every or renorm_every < 1:
        raise ValueError(f"need n_steps >= renorm_every >= 1, got {n_steps}, {renorm_every}")
    if eps is None:
        eps = 1e-6 if state.positions.dtype == jnp.float64 else 1e-3
    key = jax.random.PRNGKey(seed)
    dx = jax.random.normal(key, state.positions.shape, state.positions.dtype)
    dv = jax.random.normal(jax.random.fold_in(key, 1), state.velocities.shape,
                           state.velocities.dtype)
    norm = jnp.sqrt(jnp.sum(dx * dx) + jnp.sum(dv * dv))
    other = replace(state, positions=state.positions + eps * dx / norm,
                    velocities=state.velocities + eps * dv / norm)

    @jax.jit
    def block(a, b):
        def one(c, _):
            a, b = c
            # the same noise key for both copies: the Langevin noise does not separate them
            b = replace(b, key=a.key)
            return (integrator.step(a, params, settings, energy=False),
                    integrator.step(b, params, settings, energy=False)), None

        (a, b), _ = jax.lax.scan(one, (a, b), None, length=renorm_every)
        ddx, ddv = b.positions - a.positions, b.velocities - a.velocities
        d = jnp.sqrt(jnp.sum(ddx * ddx) + jnp.sum(ddv * ddv))
        b = replace(b, positions=a.positions + eps * ddx / d,
                    velocities=a.velocities + eps * ddv / d)
        return a, b, jnp.log(d / eps)

    dt = float(getattr(settings, "dt", 1.0))
    logs = []
    a, b = state, other
    for _ in range(n_steps // renorm_every):
        a, b, g = block(a, b)
        logs.append(float(g))
    logs = np.asarray(logs)
    times = dt * renorm_every * np.arange(1, len(logs) + 1)
    return {"lyapunov": float(np.mean(logs) / (dt * renorm_every)), "log_growth": logs,
            "times": times}


def gradient_growth(integrator, state, params, settings, horizons: Sequence[int],
                    observable=None, param_leaf=None) -> dict:
    """Norms of d O(x_t)/d x_0 and d O(x_t)/d params for each horizon t (steps) in
    ``horizons``; O defaults to the potential energy. Returns dict with ``horizons`` (steps),
    ``times``, ``position_gradient_norm``, ``param_gradient_norm`` and ``growth_rate`` (the
    log slope of the position gradient norm against time, comparable to :func:`lyapunov`)."""
    hs = [int(h) for h in horizons]
    if not hs or min(hs) < 1 or any(h != float(x) for h, x in zip(hs, horizons)):
        raise ValueError(f"horizons must be positive whole numbers of steps, got {horizons}")
    obs = observable or tj.final_potential_energy(integrator.potential)
    # One run to the longest horizon, the observable recorded every gcd(horizons) steps, and one
    # backward pass per horizon (vmapped over one-hot cotangents on the frames): one compiled
    # program for every horizon, instead of one per horizon. A run longer than h gives the
    # same gradient at h (steps past h do not touch O(x_h)).
    every = functools.reduce(math.gcd, hs)
    run = tj.trajectory(integrator, max(hs), observable=obs, every=every, checkpoint="sqrt")
    frames = np.asarray([h // every - 1 for h in hs])

    def observed(x0, p):
        out = run(replace(state, positions=x0), p, settings)[1]
        if out.ndim != 1:
            raise ValueError("gradient_growth needs a scalar observable; it returned shape "
                             f"{out.shape[1:]} per frame")
        return out

    @jax.jit
    def gradients(x0, p):
        out, vjp = jax.vjp(observed, x0, p)
        cotangents = jax.nn.one_hot(frames, out.shape[0], dtype=out.dtype)
        return jax.vmap(vjp)(cotangents)

    gx, gp = gradients(state.positions, params)
    leaves = jax.tree_util.tree_leaves(gp if param_leaf is None else param_leaf(gp))
    x_norm = np.sqrt(np.sum(np.asarray(gx).reshape(len(hs), -1) ** 2, axis=1))
    p_norm = np.sqrt(sum(np.sum(np.asarray(x).reshape(len(hs), -1) ** 2, axis=1)
                         for x in leaves))
    dt = float(getattr(settings, "dt", 1.0))
    t = dt * np.asarray(horizons, float)
    slope = np.polyfit(t, np.log(x_norm), 1)[0] if len(t) > 1 else float("nan")
    return {"horizons": np.asarray(horizons), "times": t,
            "position_gradient_norm": x_norm, "param_gradient_norm": p_norm,
            "growth_rate": float(slope)}
