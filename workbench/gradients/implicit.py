"""Minimizers differentiated implicitly: the minimum x*(theta) as a pure, jit-able function
whose derivative comes from the stationarity condition, not from unrolled iterations.

At a minimum the forces vanish, F(x*, theta) = 0, so dx*/dtheta = H^-1 dF/dtheta with H the
Hessian of the energy. Reverse mode needs one linear solve per cotangent g:
H lambda = g by conjugate gradients on Hessian-vector products (each one vector-Jacobian
product of the forces: the pair terms' fast reverse rule), then
g . dx*/dtheta = lambda . dF/dtheta (one more product). Memory and time do not depend on how
many iterations the minimizer took. Rigid translations are zero modes of H (and rotations in
free space): cotangents are projected off the net translation; observables should not depend on
the absolute orientation in free space.

The minimizer itself runs in a ``lax.while_loop`` until the largest force component is below
``ftol``: L-BFGS (optax, zoom line search) or FIRE (:func:`workbench.dynamics.minimize.fire`).
Neighbor lists are refreshed as it goes; their capacity is structural (allocate with room).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .. import xla

Array = jax.Array

__all__ = ["minimizer"]


def _lbfgs(potential, ftol, max_steps, memory):
    import optax

    def run(x0, params, aux, box):
        def value(x):
            return potential.energy(x, params, potential.update(x, aux, box), box)

        opt = optax.lbfgs(memory_size=memory)
        vg = optax.value_and_grad_from_state(value)

        def cond(c):
            x, state, k, fmax = c
            return (k < max_steps) & (fmax > ftol)

        def body(c):
            x, state, k, _ = c
            v, g = vg(x, state=state)
            updates, state = opt.update(g, state, x, value=v, grad=g, value_fn=value)
            x = optax.apply_updates(x, updates)
            gx = jax.grad(value)(x)
            return x, state, k + 1, jnp.max(jnp.abs(gx))

        g0 = jax.grad(value)(x0)
        c = (x0, opt.init(x0), jnp.asarray(0, jnp.int32), jnp.max(jnp.abs(g0)))
        x, _, k, fmax = jax.lax.while_loop(cond, body, c)
        return x, k, fmax

    return run


def _fire(potential, ftol, max_steps, options):
    from ..dynamics.minimize import fire

    init, step = fire(potential, **options)

    def run(x0, params, aux, box):
        s = init(x0, params, aux, box)

        def cond(c):
            s, k = c
            return (k < max_steps) & (jnp.max(jnp.abs(s.forces)) > ftol)

        s, k = jax.lax.while_loop(cond, lambda c: (step(c[0], params), c[1] + 1),
                                  (s, jnp.asarray(0, jnp.int32)))
        return s.positions, k, jnp.max(jnp.abs(s.forces))

    return run


def minimizer(potential, *, method: str = "lbfgs", ftol: float = 1e-6, max_steps: int = 10_000,
              memory: int = 10, cg_tol: float = 1e-10, cg_maxiter: int = 2000,
              fire_options: dict | None = None):
    """``solve(positions (N, 3), params, aux=None, box=None) -> (x* (N, 3), info)``: the local
    minimum of ``potential`` reached from ``positions``, differentiable in ``params`` by the
    implicit function theorem (the start gets no gradient: the minimum does not depend on it).
    info: {"steps": iterations, "max_force": largest |F| component at x*}.

    method: "lbfgs" (optax) or "fire"; ftol (kJ/mol/nm): convergence on the largest force
    component; max_steps, memory, cg_tol, cg_maxiter: structural. Gradients are only as good as
    the minimum: a solve that stops at max_steps with forces above ftol gives approximate ones
    (check ``info``)."""
    if method not in ("lbfgs", "fire"):
        raise ValueError(f"method must be 'lbfgs' or 'fire', got {method!r}")
    if not (ftol > 0 and max_steps >= 1):
        raise ValueError(f"need ftol > 0 and max_steps >= 1, got {ftol}, {max_steps}")
    run = _lbfgs(potential, ftol, max_steps, memory) if method == "lbfgs" else \
        _fire(potential, ftol, max_steps, dict(fire_options or {}))

    @jax.custom_vjp
    def core(x0, params, aux, box):
        return run(x0, params, aux, box)

    def core_fwd(x0, params, aux, box):
        out = run(x0, params, aux, box)
        return out, (out[0], params, aux, box, x0)

    def core_bwd(res, g):
        x, params, aux, box, x0 = res
        gx = g[0]
        aux = potential.update(x, aux, box)

        def project(v):  # off the net translation (a zero mode of the Hessian)
            return v - jnp.mean(v, axis=0, keepdims=True)

        _, vjp_x = jax.vjp(lambda y: -potential.forces_only(y, params, aux, box), x)

        def hvp(v):
            return project(vjp_x(project(v))[0])

        lam, _ = jax.scipy.sparse.linalg.cg(hvp, project(gx), tol=cg_tol, maxiter=cg_maxiter)
        _, vjp_p = jax.vjp(lambda p: potential.forces_only(x, p, aux, box), params)
        (gp,) = vjp_p(lam)
        return jnp.zeros_like(x0), gp, xla.zero_cotangents(aux), \
            None if box is None else jnp.zeros_like(box)

    core.defvjp(core_fwd, core_bwd)

    def solve(positions, params, aux=None, box=None) -> tuple[Array, dict[str, Any]]:
        x, k, fmax = core(jnp.asarray(positions), params, aux, box)
        return x, {"steps": k, "max_force": fmax}

    return solve
