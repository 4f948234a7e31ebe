"""Fitting force-field parameters with optax: a host-side loop that logs, regularizes, respects
bounds, checkpoints, resumes after an interrupt, and shows progress.

:func:`fit` minimizes an *objective* over a params pytree. An objective is either

* a function ``loss(params) -> scalar`` or ``-> (scalar, metrics dict)``, differentiable (it is
  jitted once; new parameter values never recompile), e.g. :func:`force_matching` (energies and
  forces of reference frames) or :func:`structure_loss` (a minimized structure against a
  target, through the implicit minimizer); or
* an object with ``value_and_grad(params) -> (loss, metrics, grads)`` (metrics["resampled"]
  = 1 marks a step that drew new samples) and optionally ``prepare(params) -> bool`` called
  before every step: :class:`EnsembleObjective`, a loss of ensemble averages (an RDF, a
  pressure, a density, a free-energy difference) estimated by reweighting samples and
  re-sampled at the current parameters when their effective sample size drops (the DiffTRe
  scheme of Thaler and Zavadlav, Nat. Commun. 12, 6884 (2021)).

Parameters are named by their dotted paths ("NonbondedForce.epsilon", or "epsilon" for a flat
dict), the names ``param_units`` uses; ``bounds`` and the log use them. The loop is host side;
each step is one compiled call of the objective's value and gradient plus one optax update.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from ..contracts import is_objective
from ..naming import leaf_names
from . import reweight as rw

Array = jax.Array

__all__ = ["FitResult", "fit", "as_objective", "EnsembleObjective", "force_matching",
           "structure_loss", "simulation_sampler", "batch_sampler", "param_names"]


@dataclass
class FitResult:
    """params: after the last step; best_params / best_loss: the lowest loss seen (its params);
    history: per step lists ("step", "loss", "grad_norm" and every scalar metric);
    steps: optimizer steps done in all (resumed runs included); interrupted: the run stopped
    early (KeyboardInterrupt or the callback), its checkpoint saved; resampled: steps at which
    an ensemble objective drew new samples."""

    params: Any
    best_params: Any
    best_loss: float
    history: dict[str, list] = field(default_factory=dict)
    steps: int = 0
    interrupted: bool = False
    resampled: list = field(default_factory=list)
    system: Any = None
    """The fitted :class:`~workbench.system.System` (best params), when ``fit`` was given one."""


def param_names(params) -> list[str]:
    """Dotted name of every leaf of ``params`` (:mod:`workbench.naming`), in flattening order."""
    return leaf_names(params)


def _bounds_arrays(params, bounds: Mapping[str, tuple] | None):
    """(lower, upper) pytrees (None leaves: unbounded) from {dotted name: (lo, hi)}."""
    names = param_names(params)
    leaves, tree = jax.tree_util.tree_flatten(params)
    bounds = dict(bounds or {})
    unknown = set(bounds) - set(names)
    if unknown:
        raise KeyError(f"bounds for unknown parameters {sorted(unknown)}; parameters are "
                       f"{names}")
    lo, hi = [], []
    for name, leaf in zip(names, leaves):
        b = bounds.get(name, (None, None))
        if len(b) != 2:
            raise ValueError(f"bounds[{name!r}] must be (lower, upper) with None for no bound")
        dt, shape = jnp.asarray(leaf).dtype, jnp.shape(leaf)
        lo.append(None if b[0] is None else jnp.broadcast_to(jnp.asarray(b[0], dt), shape))
        hi.append(None if b[1] is None else jnp.broadcast_to(jnp.asarray(b[1], dt), shape))
        if lo[-1] is not None and hi[-1] is not None and bool(jnp.any(lo[-1] > hi[-1])):
            raise ValueError(f"bounds[{name!r}]: lower bound above the upper one")
    return tree, lo, hi


def _trainable_mask(params, trainable):
    """0/1 mask pytree from names of leaves ("a.b") or of elements ("a.b[3]", a flat index into
    the leaf), or None when everything trains."""
    if trainable is None:
        return None
    names = param_names(params)
    leaves, tree = jax.tree_util.tree_flatten(params)
    masks = [np.zeros(np.shape(x)) for x in leaves]
    for item in trainable:
        base, index = item, None
        if item.endswith("]") and "[" in item:
            base, rest = item[:-1].split("[", 1)
            index = int(rest)
        if base not in names:
            raise KeyError(f"trainable {item!r} names no parameter; parameters are {names}")
        m = masks[names.index(base)]
        if index is None:
            m[...] = 1.0
        elif not 0 <= index < m.size:
            raise IndexError(f"trainable {item!r}: {base} has {m.size} entries")
        else:
            m.reshape(-1)[index] = 1.0
    return jax.tree_util.tree_unflatten(
        tree, [jnp.asarray(m, jnp.asarray(x).dtype) for m, x in zip(masks, leaves)])


def _project(params, tree, lo, hi):
    leaves = jax.tree_util.tree_leaves(params)
    out = []
    for x, a, b in zip(leaves, lo, hi):
        if a is not None:
            x = jnp.maximum(x, a)
        if b is not None:
            x = jnp.minimum(x, b)
        out.append(x)
    return jax.tree_util.tree_unflatten(tree, out)


class _Function:
    """A plain loss function as an objective: jitted value and gradient (metrics optional)."""

    def __init__(self, loss: Callable, l2: float, center):
        def total(p):
            out = loss(p)
            value, metrics = out if isinstance(out, tuple) else (out, {})
            value = jnp.asarray(value)
            if value.ndim != 0:
                raise ValueError(f"the loss must be a scalar, got shape {value.shape}")
            if l2:
                reg = sum(jnp.sum((a - b) ** 2) for a, b in zip(
                    jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(center)))
                metrics = dict(metrics, loss_data=value, l2=reg)
                value = value + l2 * reg
            return value, metrics

        self._vg = jax.jit(jax.value_and_grad(total, has_aux=True))
        self._total = total

    def value_and_grad(self, params):
        (value, metrics), grads = self._vg(params)
        return value, metrics, grads

    def line_search(self):
        """(fn, args) with fn(params, *args) the scalar loss: for optax's line searches."""
        return (lambda p: self._total(p)[0]), ()


def as_objective(objective, l2: float = 0.0, l2_center=None):
    """``objective`` in the object form (``value_and_grad``, ``line_search``): objects that
    already have ``value_and_grad`` are returned as they are; a loss function is jitted, with
    ``l2`` (sum of squares toward ``l2_center``) added."""
    if is_objective(objective):
        if l2:
            raise ValueError("l2 regularization applies to plain loss functions; put it in the "
                             "objective's loss for an ensemble objective")
        return objective
    if l2 and l2_center is None:
        raise ValueError("l2 needs l2_center (fit uses the start parameters)")
    return _Function(objective, float(l2), l2_center)


def _flat(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _save(path: str, step: int, params, opt_state, best, best_loss, history, resampled):
    arrays = {f"p{i}": x for i, x in enumerate(_flat(params))}
    arrays.update({f"o{i}": x for i, x in enumerate(_flat(opt_state))})
    arrays.update({f"b{i}": x for i, x in enumerate(_flat(best))})
    meta = {"step": step, "best_loss": best_loss, "history": history, "resampled": resampled,
            "structure": str(jax.tree_util.tree_structure((params, opt_state)))}
    tmp = path + ".tmp.npz"
    np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, path)  # atomic: an interrupt mid-write leaves the previous checkpoint


def _load(path: str, params, opt_state):
    z = np.load(path, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    if meta["structure"] != str(jax.tree_util.tree_structure((params, opt_state))):
        raise ValueError(f"checkpoint {path} belongs to another fit (different parameters or "
                         "optimizer); delete it or pass resume=False")

    def fill(prefix, like):
        leaves, tree = jax.tree_util.tree_flatten(like)
        new = [jnp.asarray(z[f"{prefix}{i}"], dtype=jnp.asarray(x).dtype)
               for i, x in enumerate(leaves)]
        return jax.tree_util.tree_unflatten(tree, new)

    return (meta["step"], fill("p", params), fill("o", opt_state), fill("b", params),
            meta["best_loss"], meta["history"], meta["resampled"])


def _scalars(metrics) -> dict[str, float]:
    out = {}
    for k, v in dict(metrics).items():
        a = np.asarray(v)
        if a.size == 1 and np.issubdtype(a.dtype, np.number):
            out[k] = float(a)
    return out


def fit(objective, params, *, steps: int = 100, optimizer=None, learning_rate: float = 1e-2,
        bounds: Mapping[str, tuple] | None = None, trainable=None, l2: float = 0.0,
        l2_center=None,
        checkpoint: str | None = None, checkpoint_every: int = 10, resume: bool = True,
        progress: bool = True, log: str | None = None,
        callback: Callable[[int, Any, float, dict], bool | None] | None = None) -> FitResult:
    """Minimize ``objective`` (see the module docstring) from ``params``; host side.

    steps: optimizer steps in all (a resumed run continues up to it); optimizer: an optax
    GradientTransformation (default ``optax.adam(learning_rate)``; ``optax.lbfgs()`` gets the
    loss function for its line search: best for deterministic losses); bounds: {dotted name:
    (lower, upper)}, either None (or arrays of the leaf's shape), enforced by projection after
    every step; trainable: names of the leaves ("NonbondedForce.epsilon") or single entries
    ("PeriodicTorsionForce.k[4]", the names of ``find_types`` and the parameter panel) to fit,
    the rest held (default: everything); l2: weight of
    sum (theta - l2_center)^2 added to a plain loss (l2_center defaults to the start);
    checkpoint: an .npz path written every ``checkpoint_every`` steps, at the end and on an
    interrupt, and read at the start when ``resume``; log: a CSV file, one row per step;
    callback(step, params, loss, metrics): return True to stop. A KeyboardInterrupt stops the
    loop after saving (``interrupted`` in the result), so the next call resumes.

    ``params`` may be a :class:`~workbench.system.System`: its params are fitted and the result's
    ``system`` is the system with the best ones (``result.system.to_xml(...)`` exports a fitted
    force field)."""
    import optax

    from ..system import System

    system = params if isinstance(params, System) else None
    if system is not None:
        params = system.params

    opt = optimizer if optimizer is not None else optax.adam(learning_rate)
    tree, lo, hi = _bounds_arrays(params, bounds)
    params = _project(params, tree, lo, hi)
    mask = _trainable_mask(params, trainable)
    obj = as_objective(objective, l2, params if l2_center is None else l2_center)
    opt_state = opt.init(params)
    if isinstance(opt, optax.GradientTransformationExtraArgs) and \
            hasattr(obj, "line_search"):  # L-BFGS and other line-search methods: the loss too
        def _update(g, s, p, v, args):
            fn, _ = obj.line_search()
            return opt.update(g, s, p, value=v, grad=g, value_fn=lambda q: fn(q, *args))

        jitted = jax.jit(_update)

        def update(g, s, p, v):
            return jitted(g, s, p, v, obj.line_search()[1])
    else:
        plain = jax.jit(lambda g, s, p: opt.update(g, s, p))

        def update(g, s, p, v):
            return plain(g, s, p)
    start, best, best_loss, history, resampled = 0, params, float("inf"), {}, []
    if checkpoint and resume and os.path.exists(checkpoint):
        start, params, opt_state, best, best_loss, history, resampled = _load(
            checkpoint, params, opt_state)
    bar = None
    if progress and steps > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="fit", leave=True)
    writer = None
    log_file = open(log, "a", newline="") if log else None
    step, interrupted = start, False

    def save():
        if checkpoint:
            _save(checkpoint, step, params, opt_state, best, best_loss, history, resampled)

    try:
        while step < steps:
            prepare = getattr(obj, "prepare", None)
            if prepare is not None and prepare(params):
                resampled.append(step)
            loss, metrics, grads = obj.value_and_grad(params)
            if float(dict(metrics).get("resampled", 0.0)):
                resampled.append(step)
            if mask is not None:
                grads = jax.tree_util.tree_map(jnp.multiply, grads, mask)
            loss = float(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss} at step {step}; lower the "
                                         "learning rate or tighten the bounds")
            gnorm = float(np.sqrt(sum(np.sum(np.square(g)) for g in _flat(grads))))
            if loss < best_loss:
                best, best_loss = params, loss
            row = {"step": step, "loss": loss, "grad_norm": gnorm, **_scalars(metrics)}
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if log_file is not None:
                if writer is None:
                    writer = csv.DictWriter(log_file, fieldnames=list(row))
                    if log_file.tell() == 0:
                        writer.writeheader()
                writer.writerow({k: row.get(k) for k in writer.fieldnames})
                log_file.flush()
            updates, opt_state = update(grads, opt_state, params, loss)
            params = _project(optax.apply_updates(params, updates), tree, lo, hi)
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
            if checkpoint and step % checkpoint_every == 0:
                save()
            if callback is not None and callback(step, params, loss, metrics):
                interrupted = step < steps
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        save()
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    return FitResult(params=params, best_params=best, best_loss=best_loss, history=history,
                     steps=step, interrupted=interrupted, resampled=resampled,
                     system=None if system is None else system.replace(params=best))


# --- objectives --------------------------------------------------------------------------------

class EnsembleObjective:
    """A loss of ensemble averages, by reweighting samples drawn at reference parameters; new
    samples are drawn when the effective sample size at the current parameters falls below
    ``min_ess`` (a fraction of the frames).

    sample(params) -> :class:`~workbench.gradients.reweight.Samples` (host side: runs a
    simulation, e.g. :func:`simulation_sampler`); observables: {name: observable(positions,
    params, aux, box)}; loss(averages: {name: array}, params) -> scalar; potential, kT, aux:
    as for :func:`~workbench.gradients.reweight.reweighted_average`. Metrics: each scalar
    average, "ess" and "ess_fraction"."""

    def __init__(self, sample: Callable[[Any], rw.Samples], observables: Mapping[str, Callable],
                 loss: Callable[[dict, Any], Array], potential, kT, aux=None, *,
                 min_ess: float = 0.5, batch_size: int | None = None):
        if not 0.0 < min_ess <= 1.0:
            raise ValueError(f"min_ess is a fraction of the frames in (0, 1], got {min_ess}")
        self.sample_fn, self.observables, self.loss = sample, dict(observables), loss
        self.potential, self.kT, self.aux, self.min_ess = potential, kT, aux, float(min_ess)
        self.samples: rw.Samples | None = None
        self.reference = None
        names = list(self.observables)

        def every(r, p, a, b):
            return {k: self.observables[k](r, p, a, b) for k in names}

        def value(p, ref, samples, aux):
            res = rw.reweighted_average(every, potential, p, samples, kT, aux, ref_params=ref,
                                        batch_size=batch_size)
            averages = res.value
            metrics = {k: v for k, v in averages.items()}
            metrics["ess"] = res.ess
            metrics["ess_fraction"] = res.ess / samples.n_frames
            return loss(averages, p), metrics

        self._vg = jax.jit(jax.value_and_grad(value, has_aux=True))
        self._value = value

    def _resample(self, params) -> None:
        self.samples = self.sample_fn(params)
        self.reference = jax.tree_util.tree_map(jnp.asarray, params)
        self.aux = rw.fit_template(self.potential, self.samples, self.aux)

    def value_and_grad(self, params):
        """Loss, metrics and gradient at ``params`` from the samples in hand; when their
        effective sample size there is below ``min_ess`` (or there are none yet), new samples
        are drawn at ``params`` first (metrics["resampled"] = 1). One pass over the frames in
        the common case: the ESS comes with the value."""
        resampled = self.samples is None
        if resampled:
            self._resample(params)
        (value, metrics), grads = self._vg(params, self.reference, self.samples, self.aux)
        if not resampled and float(metrics["ess_fraction"]) < self.min_ess:
            self._resample(params)
            resampled = True
            (value, metrics), grads = self._vg(params, self.reference, self.samples, self.aux)
        return value, dict(metrics, resampled=float(resampled)), grads

    def line_search(self):
        """(fn, args) with fn(params, *args) the scalar loss on the current samples."""
        return (lambda p, ref, s, aux: self._value(p, ref, s, aux)[0]), \
            (self.reference, self.samples, self.aux)


def simulation_sampler(simulation, n_frames: int, *, equilibrate: int = 0) -> Callable:
    """``sample(params) -> Samples`` from a :class:`~workbench.simulate.Simulation`, which
    continues from where it stopped: new params (``set_params``, no recompilation), then
    ``equilibrate`` chunks discarded, then chunks until ``n_frames`` frames."""

    def sample(params):
        simulation.set_params(params)
        for _ in range(int(equilibrate)):
            simulation.advance()
        pos, boxes = [], []
        while sum(len(p) for p in pos) < n_frames:
            frame = simulation.advance()
            pos.append(frame.positions)
            boxes.append(frame.boxes)
        r = np.concatenate(pos)[:n_frames]
        box = np.concatenate(boxes)[:n_frames] if simulation.potential.space.periodic else None
        return rw.Samples.from_frames(r, box=box)

    return sample


def batch_sampler(integrator, settings, positions, *, copies: int, n_frames: int, stride: int,
                  masses=1.0, seed: int = 0, equilibrate: int = 0) -> Callable:
    """``sample(params) -> Samples`` from ``copies`` independent trajectories of ``integrator``
    run together on a leading batch axis (one compiled scan under ``vmap``), continuing from
    where the last call stopped: ``equilibrate`` frames discarded, then ``n_frames // copies``
    frames per copy, ``stride`` steps apart, copy after copy in the result. The copies share
    one neighbor-list capacity; an overflow regrows it for all and recomputes the chunk
    (:func:`workbench.sampling.batch.advance`). positions: (N, 3) nm (every copy starts there,
    with its own velocities) or (copies, N, 3)."""
    from ..sampling import batch

    if copies < 1 or n_frames < copies:
        raise ValueError(f"need copies >= 1 and n_frames >= copies, got {copies}, {n_frames}")
    r = np.asarray(positions, dtype=float)
    r = np.broadcast_to(r, (copies,) + r.shape) if r.ndim == 2 else r
    if r.shape[0] != copies:
        raise ValueError(f"positions must be (N, 3) or ({copies}, N, 3), got {r.shape}")
    per = n_frames // copies
    box = {"states": None}
    compiled: dict = {}

    def chunk(states, params, n):
        if n not in compiled:
            def run(states, params):
                def frame(c, _):
                    with nl.shared_rebuilds("copies"):
                        c = jax.lax.fori_loop(0, stride, lambda i, x: jax.vmap(
                            lambda st: integrator.step(st, params, settings, energy=False),
                            axis_name="copies")(x), c)
                    return c, (c.positions, c.box)
                return jax.lax.scan(frame, states, None, length=n)
            compiled[n] = jax.jit(run)
        (states, out), _ = batch.advance(compiled[n], states, params)
        return states, out

    def sample(params):
        if box["states"] is None:
            keys = jax.random.split(jax.random.PRNGKey(seed), copies)
            one = [integrator.init(k, x, params, settings, masses=masses)
                   for k, x in zip(keys, r)]
            box["states"] = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *one)
        states = box["states"]
        if equilibrate:
            states, _ = chunk(states, params, int(equilibrate))
        states, (pos, boxes) = chunk(states, params, per)
        box["states"] = states
        pos = np.swapaxes(np.asarray(pos), 0, 1).reshape((-1,) + r.shape[1:])
        boxes = np.swapaxes(np.asarray(boxes), 0, 1).reshape(-1, 3, 3)
        periodic = integrator.potential.space.periodic
        return rw.Samples.from_frames(pos, box=boxes if periodic else None)

    return sample


def force_matching(potential, positions, energies=None, forces=None, aux=None, *,
                   energy_weight: float = 1.0, force_weight: float = 1.0, box=None,
                   batch_size: int | None = None) -> Callable:
    """``loss(params) -> (loss, metrics)`` against reference frames: force_weight x mean
    squared force error (kJ/mol/nm)^2 + energy_weight x mean squared error of the energies
    relative to their mean (kJ/mol)^2 (an offset between two models is not fitted).
    positions: (F, N, 3) nm; energies: (F,) kJ/mol; forces: (F, N, 3); at least one of them;
    aux: a neighbor-list template (rebuilt per frame); box: (3, 3) or None. Pure."""
    r = jnp.asarray(positions)
    if r.ndim != 3 or r.shape[-1] != 3:
        raise ValueError(f"positions must be (F, N, 3), got {r.shape}")
    if energies is None and forces is None:
        raise ValueError("force_matching needs reference energies, forces, or both")
    e_ref = None if energies is None else jnp.asarray(energies, r.dtype)
    f_ref = None if forces is None else jnp.asarray(forces, r.dtype)
    if e_ref is not None and e_ref.shape != r.shape[:1]:
        raise ValueError(f"energies must be (F,) = {r.shape[:1]}, got {e_ref.shape}")
    if f_ref is not None and f_ref.shape != r.shape:
        raise ValueError(f"forces must be {r.shape}, got {f_ref.shape}")

    def loss(params):
        def one(x):
            a = nl.rebuild_all(potential.box_space(box), x, aux)
            ev = potential.energy_forces(x, params, a, box)
            return ev.energy, ev.forces

        e, f = jax.lax.map(jax.checkpoint(one), r, batch_size=batch_size)
        total, metrics = jnp.zeros((), r.dtype), {}
        if e_ref is not None:
            de = (e - jnp.mean(e)) - (e_ref - jnp.mean(e_ref))
            metrics["energy_rmse"] = jnp.sqrt(jnp.mean(de * de))
            total = total + energy_weight * jnp.mean(de * de)
        if f_ref is not None:
            df = f - f_ref
            metrics["force_rmse"] = jnp.sqrt(jnp.mean(df * df))
            total = total + force_weight * jnp.mean(df * df)
        return total, metrics

    return loss


def structure_loss(potential, positions, target, *, atoms=None, aux=None, box=None,
                   minimizer_options: dict | None = None) -> Callable:
    """``loss(params) -> (RMSD^2 nm^2, metrics)``: the local minimum reached from ``positions``
    (N, 3), differentiated implicitly (:mod:`~workbench.gradients.implicit`), against
    ``target`` (N, 3) after optimal superposition (:class:`~workbench.sampling.cv.RMSD`, over
    ``atoms``, default all)."""
    from ..sampling import cv
    from .implicit import minimizer

    solve = minimizer(potential, **dict(minimizer_options or {}))
    target = np.asarray(target, dtype=float)
    idx = np.arange(target.shape[0]) if atoms is None else np.asarray(atoms)
    rmsd = cv.RMSD(target[idx], idx)
    x0 = jnp.asarray(positions)

    def loss(params):
        x, info = solve(x0, params, aux, box)
        d = rmsd(x)
        return d * d, {"rmsd": d, "max_force": info["max_force"]}

    return loss
