"""One way to ask for a parameter gradient: :func:`gradient` with a ``method``.

The same observable, ``observable(positions (N, 3), params, aux, box) -> array``, can be
differentiated along each path of :mod:`workbench.gradients`, so that they can be compared:

===================  ============================================================================
``"backprop"``       d/dtheta of its time average along one trajectory (reverse mode through the
                     steps: :func:`~workbench.gradients.trajectory.trajectory`, checkpointed or
                     truncated); exact for that trajectory, and for chaotic dynamics growing
                     like exp(lambda t) with the length (see :mod:`~workbench.gradients.chaos`)
``"reweight"``       d/dtheta of its ensemble average from fixed samples (the fluctuation
                     formula, :mod:`~workbench.gradients.reweight`), with block errors and the
                     effective sample size
``"implicit"``       d/dtheta of its value at the local minimum reached from given positions
                     (implicit function theorem, :mod:`~workbench.gradients.implicit`)
``"finite_difference"``  central differences of one of the values above (``of=``), element by
                     element of every parameter leaf: the check the others are tested against
===================  ============================================================================

Each returns a :class:`Gradient`: the value, the gradient (a params-shaped pytree whose leaves
have shape value.shape + leaf.shape), standard errors where the method has them, and the
method's diagnostics (effective sample size, horizon, minimizer convergence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..contracts import Observable, of_state
from . import implicit as implicit_mod
from . import reweight as rw
from . import trajectory as tj

Array = jax.Array

__all__ = ["Gradient", "gradient", "METHODS", "value_function"]

METHODS = ("backprop", "reweight", "implicit", "finite_difference")

# observable(positions (N, 3) nm, params, aux, box (3, 3) | None) -> array


@dataclass(frozen=True)
class Gradient:
    """value: the estimated quantity (observable's shape); gradient: d value / d params
    (pytree, leaves value.shape + leaf.shape); stderr: same pytree of standard errors, or None;
    method: which path; diagnostics: dict (ess, n_frames, n_steps, horizon, steps,
    max_force, ... depending on the method)."""

    value: np.ndarray
    gradient: Any
    stderr: Any
    method: str
    diagnostics: dict = field(default_factory=dict)


def _require(method: str, given: dict, names: tuple[str, ...]):
    missing = [n for n in names if given.get(n) is None]
    if missing:
        raise TypeError(f"gradient(method={method!r}) needs {', '.join(missing)}")


_OPTIONS = {
    "backprop": ({"integrator", "state", "settings", "n_steps"},
                 {"every", "checkpoint", "horizon", "store_forces"}),
    "reweight": ({"potential", "samples", "kT"}, {"aux", "n_blocks", "min_ess", "batch_size"}),
    "implicit": ({"potential", "positions"},
                 {"aux", "box", "minimizer", "minimizer_options"}),
}


def _check_options(method: str, options: dict):
    required, optional = _OPTIONS[method]
    unknown = set(options) - required - optional
    if unknown:
        raise TypeError(f"gradient(method={method!r}) got unknown options {sorted(unknown)}; "
                        f"it takes {sorted(required | optional)}")
    _require(method, options, tuple(sorted(required)))


def value_function(observable: Observable, method: str, **options) -> Callable[[Any], Array]:
    """The pure function ``params -> value`` that ``method`` ("backprop" or "implicit")
    differentiates: the time average of the observable over the trajectory, or its value at
    the minimum. jit-able; what :func:`gradient` and the finite-difference check evaluate."""
    fn = _value_and_info(observable, method, options)
    return lambda params: fn(params)[0]


def _value_and_info(observable: Observable, method: str, options: dict):
    """``params -> (value, info)`` for "backprop" and "implicit" (info: the minimizer's)."""
    _check_options(method, options)
    if method == "backprop":
        integrator, state = options["integrator"], options["state"]
        run = tj.trajectory(
            integrator, int(options["n_steps"]),
            observable=of_state(observable),
            every=int(options.get("every") or 1),
            checkpoint=options.get("checkpoint", "sqrt"), horizon=options.get("horizon"),
            store_forces=bool(options.get("store_forces", False)))
        settings = options["settings"]

        def traj_value(params):
            return jnp.mean(run(state, params, settings)[1], axis=0), {}

        return traj_value
    if method == "implicit":
        pot = options["potential"]
        solve = options.get("minimizer") or implicit_mod.minimizer(
            pot, **dict(options.get("minimizer_options") or {}))
        x0, aux, box = jnp.asarray(options["positions"]), options.get("aux"), options.get("box")

        def min_value(params):
            x, info = solve(x0, params, aux, box)
            return observable(x, params, pot.update(x, aux, box), box), info

        return min_value
    raise ValueError(f"value_function: method must be 'backprop' or 'implicit', got {method!r}")


def _system_options(system, method: str | None, options: dict) -> dict:
    """``options`` completed from ``system`` (see :func:`gradient`)."""
    from ..dynamics.integrators import Integrator
    from ..simulate import INTEGRATORS
    from ..system import check_settings

    o = {k: v for k, v in options.items() if v is not None}
    seed = int(o.pop("seed", 0))
    if method in ("reweight", "implicit"):
        o.setdefault("potential", system.potential)
    if method == "implicit":
        o.setdefault("positions", system.positions)
        if system.box is not None:
            o.setdefault("box", jnp.asarray(system.box))
    if method == "backprop":
        integ = o.get("integrator")
        if isinstance(integ, str):
            if integ not in INTEGRATORS:
                raise ValueError(f"unknown integrator {integ!r}; choose one of "
                                 f"{sorted(INTEGRATORS)}")
            integ = o["integrator"] = INTEGRATORS[integ](system)
        settings = o.get("settings")
        if isinstance(settings, dict):
            check_settings(system.units, settings, where="gradient settings")
            if isinstance(integ, Integrator):
                settings = o["settings"] = integ.settings(**settings)
        if "state" not in o and isinstance(integ, Integrator) and settings is not None:
            o["state"] = integ.init(jax.random.PRNGKey(seed), system.positions, system.params,
                                    settings, masses=system.masses, box=system.box)
    return o


def _jacobian(fn, params):
    """(value, d value/d params, info) of ``fn(params) -> (value, info)``."""
    value, _ = jax.eval_shape(fn, params)
    if value.ndim == 0:
        (v, info), g = jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
    else:
        def twice(p):  # the value as the output and, once more, inside the aux
            out = fn(p)
            return out[0], out

        g, (v, info) = jax.jit(jax.jacrev(twice, has_aux=True))(params)
    to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
    return np.asarray(v), to_np(g), to_np(info)


def _finite_difference(fn, params, h: float):
    """Central differences of ``fn`` (params -> array), every element of every leaf."""
    f = jax.jit(fn)
    leaves, tree = jax.tree_util.tree_flatten(params)
    value = np.asarray(f(params))
    grads = []
    for k, leaf in enumerate(leaves):
        leaf = np.asarray(leaf, dtype=float)
        g = np.zeros(value.shape + leaf.shape)
        for idx in np.ndindex(leaf.shape or ()):
            step = h * max(1.0, abs(float(leaf[idx]) if leaf.shape else float(leaf)))
            vals = []
            for sign in (1.0, -1.0):
                moved = leaf.copy()
                moved[idx] = moved[idx] + sign * step
                p = jax.tree_util.tree_unflatten(
                    tree, leaves[:k] + [jnp.asarray(moved, jnp.asarray(leaves[k]).dtype)]
                    + leaves[k + 1:])
                vals.append(np.asarray(f(p)))
            g[(...,) + idx] = (vals[0] - vals[1]) / (2.0 * step)
        grads.append(g)
    return value, jax.tree_util.tree_unflatten(tree, grads)


def gradient(observable: Observable, params, method: str = "reweight", *, of: str | None = None,
             h: float = 1e-5, **options) -> Gradient:
    """d(observable)/d(params) by ``method`` (see the module table). Host side.

    ``params`` may be a :class:`~workbench.system.System`: its params are differentiated, and
    it answers the options below that it can (``potential``, ``positions``, ``box``; for
    backprop an ``integrator`` given by name, e.g. "langevin", is built with the system's
    constraints, and ``state`` defaults to a start from the system's positions and masses with
    ``seed`` (default 0)). Explicit options win.

    Options by method (unknown ones raise):

    * backprop: ``integrator``, ``state`` (from ``integrator.init``), ``settings``,
      ``n_steps``; optional ``every`` (steps between observations, default 1),
      ``checkpoint`` ("sqrt", an int, or None), ``store_forces`` (keep each step's forces:
      fewer force passes backward) and ``horizon`` (truncated backpropagation);
    * reweight: ``potential``, ``samples`` (:class:`~workbench.gradients.reweight.Samples`),
      ``kT``; optional ``aux`` (neighbor-list template), ``n_blocks`` (10), ``min_ess``,
      ``batch_size``;
    * implicit: ``potential``, ``positions`` (start of the minimization); optional ``aux``,
      ``box``, ``minimizer`` (a :func:`~workbench.gradients.implicit.minimizer`) or
      ``minimizer_options``;
    * finite_difference: ``of`` ("backprop" or "implicit") and that method's options; ``h``
      the relative step.
    """
    if method not in METHODS:
        raise ValueError(f"unknown gradient method {method!r}; choose one of {METHODS}")
    from ..system import System

    if isinstance(params, System):
        params, options = params.params, _system_options(
            params, of if method == "finite_difference" else method, options)
    elif "seed" in options:
        raise TypeError("seed= is for gradient(observable, system, 'backprop', ...)")
    if method == "finite_difference":
        if of not in ("backprop", "implicit"):
            raise ValueError("method='finite_difference' differences a value computed by "
                             "of='backprop' or of='implicit' (reweighted averages need new "
                             "samples at every point: difference independent runs instead)")
        value, grad = _finite_difference(value_function(observable, of, **options), params, h)
        return Gradient(value=value, gradient=grad, stderr=None, method=method,
                        diagnostics={"of": of, "h": h})
    if of is not None:
        raise TypeError("of= is only for method='finite_difference'")
    if method == "reweight":
        _check_options(method, options)
        kw = {k: options[k] for k in ("aux", "n_blocks", "min_ess", "batch_size")
              if options.get(k) is not None}
        est = rw.ensemble_gradient(observable, options["potential"], params, options["samples"],
                                   options["kT"], **kw)
        return Gradient(value=np.asarray(est.value), gradient=est.gradient, stderr=est.stderr,
                        method=method, diagnostics={"ess": est.ess, "n_frames": est.n_frames})
    value, grad, info = _jacobian(_value_and_info(observable, method, options), params)
    if method == "backprop":
        diag = {"n_steps": int(options["n_steps"]), "horizon": options.get("horizon"),
                "checkpoint": options.get("checkpoint", "sqrt"),
                "gradient_norm": float(np.sqrt(sum(np.sum(np.square(g)) for g in
                                                   jax.tree_util.tree_leaves(grad))))}
    else:
        diag = {"steps": int(info["steps"]), "max_force": float(info["max_force"])}
    return Gradient(value=value, gradient=grad, stderr=None, method=method, diagnostics=diag)
