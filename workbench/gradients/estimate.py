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

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from ..contracts import Observable, of_state
from . import implicit as implicit_mod
from . import reweight as rw
from . import trajectory as tj

Array = jax.Array

__all__ = ["Gradient", "gradient", "METHODS", "value_function", "estimator", "ESTIMATORS",
           "Backprop", "Reweight", "Implicit", "FiniteDifference"]

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


@dataclass(frozen=True)
class Backprop:
    """d/dtheta of the observable's time average along one trajectory, by reverse mode through
    the steps (:func:`~workbench.gradients.trajectory.trajectory`).

    integrator: an Integrator (or sampler); state: its start (``integrator.init``); settings:
    its settings pytree; n_steps: steps (structural); every: steps between observations;
    checkpoint: "sqrt", an int (segment length) or None (store every step); horizon: truncated
    backpropagation after that many steps (None: the whole trajectory); store_forces: keep each
    step's forces through the checkpoints (fewer force passes backward)."""

    integrator: Any
    state: Any
    settings: Any
    n_steps: int
    every: int = 1
    checkpoint: Any = "sqrt"
    horizon: int | None = None
    store_forces: bool = False
    name: ClassVar[str] = "backprop"

    def _value(self, observable: Observable):
        """``(params, state, settings) -> (time average, {})``: the start and the settings are
        arguments, not constants baked into the program, so a new start reuses it."""
        run = tj.trajectory(self.integrator, int(self.n_steps), observable=of_state(observable),
                            every=int(self.every or 1), checkpoint=self.checkpoint,
                            horizon=self.horizon, store_forces=bool(self.store_forces))

        def traj_value(params, state, settings):
            return jnp.mean(run(state, params, settings)[1], axis=0), {}

        return traj_value

    def value_and_info(self, observable: Observable):
        """``params -> (value, {})``: the time average along the trajectory (jit-able)."""
        fn, state, settings = self._value(observable), self.state, self.settings
        return lambda params: fn(params, state, settings)

    def estimate(self, observable: Observable, params) -> "Gradient":
        key = ("backprop", id(self.integrator), id(observable), int(self.n_steps),
               int(self.every or 1), self.checkpoint, self.horizon, bool(self.store_forces))
        jac = _compiled(key, (self.integrator, observable), lambda: self._value(observable))
        state = _lists_like(self.state, _LISTS.get(key))
        _LISTS[key] = state.aux
        value, grad, _ = jac(params, state, self.settings)
        norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree_util.tree_leaves(grad))))
        return Gradient(value=value, gradient=grad, stderr=None, method=self.name,
                        diagnostics={"n_steps": int(self.n_steps), "horizon": self.horizon,
                                     "checkpoint": self.checkpoint, "gradient_norm": norm})


@dataclass(frozen=True)
class Reweight:
    """d/dtheta of the observable's ensemble average from fixed samples: the fluctuation formula
    (:func:`~workbench.gradients.reweight.ensemble_gradient`), with block standard errors and
    the effective sample size.

    potential; samples: :class:`~workbench.gradients.reweight.Samples`; kT (kJ/mol); aux: a
    neighbor-list template; n_blocks: blocks for the errors; min_ess: warn below this
    effective fraction; batch_size: frames per compiled batch."""

    potential: Any
    samples: Any
    kT: Any
    aux: Any = None
    n_blocks: int | None = None
    min_ess: float | None = None
    batch_size: int | None = None
    name: ClassVar[str] = "reweight"

    def estimate(self, observable: Observable, params) -> "Gradient":
        kw = {k: getattr(self, k) for k in ("aux", "n_blocks", "min_ess", "batch_size")
              if getattr(self, k) is not None}
        est = rw.ensemble_gradient(observable, self.potential, params, self.samples, self.kT,
                                   **kw)
        return Gradient(value=np.asarray(est.value), gradient=est.gradient, stderr=est.stderr,
                        method=self.name, diagnostics={"ess": est.ess, "n_frames": est.n_frames})


@dataclass(frozen=True)
class Implicit:
    """d/dtheta of the observable at the local minimum reached from ``positions``, by the
    implicit function theorem (:mod:`~workbench.gradients.implicit`).

    potential; positions: (N, 3) nm start of the minimization; aux, box: its neighbor list and
    box; minimizer: a :func:`~workbench.gradients.implicit.minimizer` (default: built with
    ``minimizer_options``)."""

    potential: Any
    positions: Any
    aux: Any = None
    box: Any = None
    minimizer: Any = None
    minimizer_options: dict | None = None
    name: ClassVar[str] = "implicit"

    def _value(self, observable: Observable):
        """``(params, x0, aux, box) -> (value at the minimum, the minimizer's info)``: the start,
        neighbor list and box are arguments, so new ones reuse the compiled program."""
        pot = self.potential
        solve = self.minimizer or implicit_mod.minimizer(pot, **dict(self.minimizer_options
                                                                     or {}))

        def min_value(params, x0, aux, box):
            x, info = solve(x0, params, aux, box)
            return observable(x, params, pot.update(x, aux, box), box), info

        return min_value

    def value_and_info(self, observable: Observable):
        """``params -> (value at the minimum, the minimizer's info)`` (jit-able)."""
        fn, x0, aux, box = self._value(observable), jnp.asarray(self.positions), self.aux, self.box
        return lambda params: fn(params, x0, aux, box)

    def estimate(self, observable: Observable, params) -> "Gradient":
        options = tuple(sorted((self.minimizer_options or {}).items()))
        key = ("implicit", id(self.potential), id(observable), id(self.minimizer), options)
        jac = _compiled(key, (self.potential, observable, self.minimizer),
                        lambda: self._value(observable))
        value, grad, info = jac(params, jnp.asarray(self.positions), self.aux, self.box)
        return Gradient(value=value, gradient=grad, stderr=None, method=self.name,
                        diagnostics={"steps": int(info["steps"]),
                                     "max_force": float(info["max_force"])})


@dataclass(frozen=True)
class FiniteDifference:
    """Central differences of the value another estimator computes (``of``: a
    :class:`Backprop` or :class:`Implicit`), element by element of every leaf, with relative
    step ``h``: the check the others are tested against. (Reweighted averages need new samples
    at every point: difference independent runs instead.)"""

    of: Any
    h: float = 1e-5
    name: ClassVar[str] = "finite_difference"

    def __post_init__(self):
        if not isinstance(self.of, (Backprop, Implicit)):
            raise ValueError("finite differences difference a value computed by a Backprop or "
                             "an Implicit estimator (of='backprop' or of='implicit'); reweighted "
                             "averages need new samples at every point")
        if not (np.isfinite(self.h) and self.h > 0):
            raise ValueError(f"the finite-difference step h must be positive, got {self.h}")

    def estimate(self, observable: Observable, params) -> "Gradient":
        fn = self.of.value_and_info(observable)
        value, grad = _finite_difference(lambda p: fn(p)[0], params, self.h)
        return Gradient(value=value, gradient=grad, stderr=None, method=self.name,
                        diagnostics={"of": self.of.name, "h": self.h})


ESTIMATORS = {c.name: c for c in (Backprop, Reweight, Implicit)}
"""Method name -> estimator class (the ``method=`` strings of :func:`gradient`)."""


def estimator(method: str, **options):
    """The estimator object for ``method`` built from keyword ``options`` (unknown or missing
    ones raise, naming what the method takes)."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown gradient method {method!r}; choose one of {METHODS}")
    cls = ESTIMATORS[method]
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING]
    unknown = set(options) - set(names)
    if unknown:
        raise TypeError(f"gradient(method={method!r}) got unknown options {sorted(unknown)}; "
                        f"it takes {sorted(names)}")
    missing = [n for n in required if options.get(n) is None]
    if missing:
        raise TypeError(f"gradient(method={method!r}) needs {', '.join(missing)}")
    return cls(**{k: v for k, v in options.items() if v is not None})


def value_function(observable: Observable, method: str, **options) -> Callable[[Any], Array]:
    """The pure function ``params -> value`` that ``method`` ("backprop" or "implicit")
    differentiates: the time average of the observable over the trajectory, or its value at
    the minimum. jit-able; what :func:`gradient` and the finite-difference check evaluate."""
    if method not in ("backprop", "implicit"):
        raise ValueError(f"value_function: method must be 'backprop' or 'implicit', got "
                         f"{method!r}")
    fn = estimator(method, **options).value_and_info(observable)
    return lambda params: fn(params)[0]


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


def _jacobian(fn):
    """``(params, *args) -> (value, d value/d params, info)`` as numpy, for ``fn(params, *args)
    -> (value, info)``: one jitted program (reverse mode; a Jacobian for an array value)."""

    @jax.jit
    def value_grad_info(params, *args):
        def twice(p):  # the value as the output and, once more, inside the aux
            out = fn(p, *args)
            return out[0], out

        value, _ = jax.eval_shape(fn, params, *args)
        if value.ndim == 0:
            (v, info), g = jax.value_and_grad(lambda p: fn(p, *args), has_aux=True)(params)
        else:
            g, (v, info) = jax.jacrev(twice, has_aux=True)(params)
        return v, g, info

    def call(params, *args):
        v, g, info = value_grad_info(params, *args)
        return jax.tree_util.tree_map(np.asarray, (v, g, info))

    return call


_COMPILED: dict = {}
_COMPILED_MAX = 16  # structures kept (oldest dropped first)


def _compiled(key: tuple, keep: tuple, make: Callable):
    """The jitted :func:`_jacobian` of ``make()`` for this structure ``key``, built once: asking
    again with a new start, settings or parameter value never recompiles (the contract of
    every public function). ``keep``: the objects whose ids are in ``key``, held so that the
    ids stay theirs while the entry lives."""
    hit = _COMPILED.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], keep)):
        return hit[1]
    jac = _jacobian(make())
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = (keep, jac)
    return jac


_LISTS: dict = {}  # per structure key: the neighbor lists of the last start (their capacities)


def _lists_like(state, template):
    """``state`` with each neighbor list rebuilt at the template's capacities where they hold
    its pairs, so that a new start reuses the compiled program. A list's capacity comes from
    the start's own positions, so two frames of one liquid can differ by a slot or two: in
    notebook 08 the three starts of each estimator compiled 6 programs instead of 3. A start
    that needs more room keeps its own (larger) list, and compiles."""
    if template is None or state.aux is None:
        return state
    is_list = nl._is_list
    leaves, tree = jax.tree_util.tree_flatten(state.aux, is_leaf=is_list)
    t_leaves, t_tree = jax.tree_util.tree_flatten(template, is_leaf=is_list)
    if tree != t_tree:
        return state
    out = []
    for a, t in zip(leaves, t_leaves):
        if (is_list(a) and is_list(t) and a.n_atoms == t.n_atoms
                and (a.capacity, a.cell_capacity) != (t.capacity, t.cell_capacity)
                and a.capacity <= t.capacity and a.cell_capacity <= t.cell_capacity
                and not bool(a.overflow)):
            g = nl.grow(state.positions, a, 1.0, min_capacity=t.capacity,
                        min_cell_capacity=t.cell_capacity)
            a = g if _same_shapes(g, t) and not bool(g.overflow) else a
        out.append(a)
    return replace(state, aux=jax.tree_util.tree_unflatten(tree, out))


def _same_shapes(a, b) -> bool:
    """Same pytree structure (static fields included), leaf shapes and dtypes: one program."""
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    return ta == tb and all(
        jnp.shape(x) == jnp.shape(y) and jnp.result_type(x) == jnp.result_type(y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


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


def gradient(observable: Observable, params, method="reweight", *, of: str | None = None,
             h: float | None = None, **options) -> Gradient:
    """d(observable)/d(params) by ``method`` (see the module table). Host side.

    ``method`` is an estimator object (:class:`Backprop`, :class:`Reweight`, :class:`Implicit`,
    :class:`FiniteDifference`: the options are its fields, as diffrax's adjoints are objects)
    or its name with the options as keywords.

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
    if not isinstance(method, str):
        if of is not None or h is not None or options:
            raise TypeError("an estimator object carries its own options: gradient(observable, "
                            f"params, {type(method).__name__}(...)) takes no more")
        from ..system import System

        if isinstance(params, System):
            params = params.params
        return method.estimate(observable, params)
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
        est = FiniteDifference(estimator(of, **options), 1e-5 if h is None else h)
    else:
        if of is not None or h is not None:
            raise TypeError("of= and h= are only for method='finite_difference'")
        est = estimator(method, **options)
    return est.estimate(observable, params)
