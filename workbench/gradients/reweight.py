"""Gradients of ensemble averages by reweighting: samples held fixed, parameters moved.

For configurations x_i drawn from exp(-U(x; theta0) / kT) (times a known bias, see below),
the average of O at a nearby theta is the self-normalised importance-sampling estimate

    <O>_theta = sum_i w_i(theta) O(x_i; theta),
    w_i(theta) = softmax_i( log_weight_i - (U(x_i; theta) - U(x_i; theta0)) / kT ),

and its derivative at theta0 is the fluctuation formula

    d<O>/dtheta = <dO/dtheta> - (1 / kT) Cov(O, dU/dtheta).

:func:`reweighted_average` computes the first expression as a pure JAX function of ``params``
(reference parameters held by ``stop_gradient`` unless given), so ``jax.grad`` of it *is* the
second expression, any loss built from several averages differentiates by the chain rule, and
it runs under ``jit``, ``vmap`` and higher-order ``grad``. Frames are visited with
``lax.map`` over a ``jax.checkpoint``-ed body, so reverse mode stores no per-frame residuals;
each frame's neighbor list is rebuilt from a template (its capacity is structural).

Biased runs (metadynamics, umbrella windows) enter through ``log_weight``: the log of each
frame's weight toward the unbiased ensemble, e.g. (V_bias(s_i, t_i) - c(t_i)) / kT from
:func:`workbench.sampling.metadynamics.rct`. The Kish effective sample size
(sum w)^2 / sum w^2 says how many frames the estimate rests on; :func:`ensemble_gradient`
warns when it is small, and gives block-averaged standard errors.

Every entry point checks its frames first (:func:`check_samples`; shapes are static, so under
``jit`` too): frame counts of positions, box and log_weight agree, and the atom count matches
what the potential and the neighbor-list template were built for; a mismatch raises
:class:`FrameMismatchError` (JAX would otherwise clamp out-of-range atom indices and return a
number). Non-finite values and kT <= 0 raise ValueError when the inputs are concrete.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from ..contracts import Observable
from ..potentials.base import overflowed

Array = jax.Array

__all__ = ["Samples", "Reweighted", "GradientEstimate", "LowESSWarning", "FrameMismatchError",
           "check_samples", "log_weights", "reweighted_average",
           "frame_values", "frame_derivatives", "ensemble_gradient", "fit_template",
           "potential_energy", "virial_pressure"]

# observable(positions (N, 3) nm, params, aux, box (3, 3) | None) -> array (any shape)


class LowESSWarning(UserWarning):
    """The reweighted estimate rests on few effective samples."""


class FrameMismatchError(ValueError):
    """Frames that do not fit together or do not fit the potential: frame counts of positions,
    box and log_weight differ, or the atom count is not the one the potential (per-atom types,
    bonded indices) or its neighbor-list template was built for."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Samples:
    """Frames to reweight. positions: (F, N, 3) nm; box: (F, 3, 3) nm or None (the potential's
    box); log_weight: (F,) log weight of each frame toward the unbiased ensemble at the
    reference parameters (zeros for unbiased sampling)."""

    positions: Array
    box: Array | None
    log_weight: Array

    @classmethod
    def from_frames(cls, positions, box=None, log_weight=None) -> "Samples":
        """Checked constructor: positions (F, N, 3), box (F, 3, 3) or None, log_weight (F,)."""
        r = jnp.asarray(positions)
        if r.ndim != 3 or r.shape[-1] != 3 or r.shape[0] < 2:
            raise ValueError(f"positions must be (F, N, 3) with F >= 2 frames, got {r.shape}")
        if not bool(jnp.all(jnp.isfinite(r))):
            raise ValueError("positions contain non-finite values")
        f = r.shape[0]
        if box is not None:
            box = jnp.asarray(box, r.dtype)
            if box.shape != (f, 3, 3):
                raise ValueError(f"box must be (F, 3, 3) = ({f}, 3, 3), got {box.shape}")
        lw = jnp.zeros(f, r.dtype) if log_weight is None else jnp.asarray(log_weight, r.dtype)
        if lw.shape != (f,):
            raise ValueError(f"log_weight must be (F,) = ({f},), got {lw.shape}")
        if not bool(jnp.all(jnp.isfinite(lw))):
            raise ValueError("log_weight contains non-finite values")
        return cls(positions=r, box=box, log_weight=lw)

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    def block(self, i: int, n_blocks: int) -> "Samples":
        """The i-th of ``n_blocks`` contiguous blocks of frames (host side)."""
        size = self.n_frames // n_blocks
        sl = slice(i * size, (i + 1) * size)
        return Samples(self.positions[sl], None if self.box is None else self.box[sl],
                       self.log_weight[sl])


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Reweighted:
    """value: the reweighted average (the observable's shape, or pytree); ess: () Kish
    effective sample size;
    log_w: (F,) normalised log weights; overflow: () bool, a frame's neighbor list overflowed
    (the result is then wrong: grow the template list, as :func:`ensemble_gradient` does)."""

    value: Array
    ess: Array
    log_w: Array
    overflow: Array


def _atom_counts(potential, aux) -> tuple[dict[str, int], dict[str, int]]:
    """What the potential says about the atom count: ({source: exact N}, {source: minimum N})
    from a declared ``n_atoms``, per-atom type arrays, bonded/pair index arrays, and the
    neighbor lists in ``aux``."""
    from ..potentials.bonded import BondedTerm
    from ..potentials.pair import PairPotential

    exact: dict[str, int] = {}
    least: dict[str, int] = {}

    def visit(term, path):
        n = getattr(term, "n_atoms", None)
        if isinstance(n, (int, np.integer)):
            exact[f"{path}.n_atoms"] = int(n)
        if isinstance(term, PairPotential) and term.types is not None:
            exact[f"{path}.types"] = len(term.types)
        for name in ("charge_types", "lj_types", "particle_types"):
            a = getattr(term, name, None)
            if isinstance(a, np.ndarray) and a.ndim == 1:
                exact[f"{path}.{name}"] = len(a)
        names = ("indices",) if isinstance(term, BondedTerm) else ()
        for name in names + ("exclusions", "scaled_pairs", "fixed_pairs"):
            a = getattr(term, name, None)
            if isinstance(a, np.ndarray) and a.size and a.dtype.kind in "iu":
                least[f"{path}.{name}"] = int(a.max()) + 1
        for key, sub in (getattr(term, "terms", None) or {}).items():
            visit(sub, f"{path}.terms[{key!r}]")

    visit(potential, "potential")
    lists = jax.tree_util.tree_leaves(aux, is_leaf=lambda x: isinstance(x, nl.NeighborList))
    for i, a in enumerate(x for x in lists if isinstance(x, nl.NeighborList)):
        exact[f"aux neighbor list {i}"] = int(a.n_atoms)
    return exact, least


def check_samples(potential, samples: "Samples", aux=None, kT=None, *,
                  values: bool = False) -> "Samples":
    """Check frames before reweighting (every entry point calls it): ``samples`` is a
    :class:`Samples` whose positions (F, N, 3), box (F, 3, 3) and log_weight (F,) agree, and N
    is the atom count of ``potential`` and of the lists in ``aux``
    (:class:`FrameMismatchError` otherwise; static shapes, so under jit too); a concrete
    ``kT`` must be finite and > 0. ``values``: also require finite positions and log weights
    when concrete (host side: :func:`ensemble_gradient`; :meth:`Samples.from_frames` checks
    them once at construction)."""
    if not isinstance(samples, Samples):
        raise TypeError(f"samples must be a workbench.gradients.reweight.Samples (build it with "
                        f"Samples.from_frames(positions, box, log_weight)), got "
                        f"{type(samples).__name__}")
    shape = np.shape(samples.positions)
    if len(shape) != 3 or shape[2] != 3 or shape[0] < 1:
        raise FrameMismatchError(f"samples.positions must be (F, N, 3) nm frames, got {shape}")
    f, n = shape[0], shape[1]
    if np.shape(samples.log_weight) != (f,):
        raise FrameMismatchError(f"samples.log_weight has shape {np.shape(samples.log_weight)} "
                                 f"but there are {f} frames: it needs one log weight per frame")
    if samples.box is not None and np.shape(samples.box) != (f, 3, 3):
        raise FrameMismatchError(f"samples.box has shape {np.shape(samples.box)}; it needs one "
                                 f"(3, 3) box per frame: ({f}, 3, 3)")
    exact, least = _atom_counts(potential, aux)
    for source, m in exact.items():
        if m != n:
            raise FrameMismatchError(f"the frames have {n} atoms but {source} is for {m} atoms: "
                                     "pass frames of this system (or rebuild the potential / "
                                     "neighbor-list template for these frames)")
    for source, m in least.items():
        if n < m:
            raise FrameMismatchError(f"the frames have {n} atoms but {source} refers to atom "
                                     f"{m - 1}: pass frames of this system")
    if kT is not None and not isinstance(kT, jax.core.Tracer):
        k = np.asarray(kT)
        if k.ndim != 0 or k.dtype.kind not in "iuf" or not (np.isfinite(k) and k > 0):
            raise ValueError(f"kT must be a finite number > 0 (kJ/mol), got {kT!r}")
    if values and not any(isinstance(x, jax.core.Tracer)
                          for x in (samples.positions, samples.log_weight)):
        ok = np.isfinite(np.asarray(samples.positions)).all(axis=(1, 2))
        if not ok.all():
            raise ValueError(f"samples.positions contain non-finite values (frame "
                             f"{int(np.argmin(ok))})")
        if not np.all(np.isfinite(np.asarray(samples.log_weight))):
            raise ValueError("samples.log_weight contains non-finite values")
    return samples


def _fresh(potential, positions, aux, box):
    """``aux`` with every list rebuilt at ``positions`` (frames are unrelated configurations)."""
    return nl.rebuild_all(potential.box_space(box), positions, aux)


def frame_values(observable: Observable, potential, params, samples: Samples, aux=None,
                 *, batch_size: int | None = None) -> tuple[Array, Array, Array]:
    """Per frame: potential energy (F,) kJ/mol, observable (F, ...), and whether any frame's
    list overflowed (). Pure; checkpointed per frame (reverse mode recomputes, stores nothing).
    batch_size: frames evaluated together under vmap (structural; default one at a time)."""
    check_samples(potential, samples, aux)

    @jax.checkpoint
    def one(x):
        r, box = x
        a = _fresh(potential, r, aux, box)
        u = potential.energy(r, params, a, box)
        return u, observable(r, params, a, box), overflowed(a)

    if samples.box is None:
        u, o, ovf = jax.lax.map(lambda r: one((r, None)), samples.positions,
                                batch_size=batch_size)
    else:
        u, o, ovf = jax.lax.map(one, (samples.positions, samples.box), batch_size=batch_size)
    return u, o, jnp.any(ovf)


def log_weights(observable: Observable | None, potential, params, samples: Samples, kT,
                aux=None, *, ref_params=None, batch_size: int | None = None):
    """Normalised log weights (F,) of the frames at ``params`` (samples drawn at ``ref_params``,
    default ``params`` held by ``stop_gradient``), the observable per frame (F, ...) (None: a
    zero), and whether any frame's list overflowed. The core of every reweighted estimate."""
    check_samples(potential, samples, aux, kT)
    obs = observable if observable is not None else (lambda *a: jnp.zeros(()))
    u, o, ovf = frame_values(obs, potential, params, samples, aux, batch_size=batch_size)
    if ref_params is None:
        u0 = jax.lax.stop_gradient(u)
    else:
        u0, _, ovf0 = frame_values(lambda *a: jnp.zeros(()), potential,
                                   jax.lax.stop_gradient(ref_params), samples, aux,
                                   batch_size=batch_size)
        ovf = ovf | ovf0
    log_w = samples.log_weight - (u - u0) / kT
    return log_w - jax.scipy.special.logsumexp(log_w), o, ovf


def reweighted_average(observable: Observable, potential, params, samples: Samples, kT,
                       aux=None, *, ref_params=None, batch_size: int | None = None
                       ) -> Reweighted:
    """<O> at ``params`` from ``samples`` drawn at ``ref_params`` (default: ``params`` itself,
    held by ``stop_gradient``, so the value is the plain weighted average and its gradient the
    fluctuation formula). kT: kJ/mol (scalar, numeric). aux: a neighbor-list template from
    ``potential.allocate`` (capacity structural), or None. The observable may return any
    pytree of arrays (several observables at once); the value has its structure. Pure: jit,
    grad, vmap."""
    log_w, o, ovf = log_weights(observable, potential, params, samples, kT, aux,
                                ref_params=ref_params, batch_size=batch_size)
    w = jnp.exp(log_w)
    value = jax.tree_util.tree_map(lambda x: jnp.tensordot(w, x, axes=1), o)
    ess = 1.0 / jnp.sum(w * w)
    return Reweighted(value=value, ess=jax.lax.stop_gradient(ess),
                      log_w=jax.lax.stop_gradient(log_w), overflow=ovf)


@dataclass(frozen=True)
class GradientEstimate:
    """value: <O> (observable's shape); gradient: d<O>/dparams, a params-shaped pytree whose
    leaves have shape value.shape + leaf.shape; stderr: the same pytree, block-averaged
    standard errors (None with one block); ess: Kish effective sample size; n_frames."""

    value: np.ndarray
    gradient: Any
    stderr: Any
    ess: float
    n_frames: int


def fit_template(potential, samples: Samples, aux):
    """Host side: the neighbor-list template ``aux`` grown until every frame's list fits
    (unchanged when it already does, or when ``aux`` holds no list)."""
    check_samples(potential, samples, aux)
    if not any(isinstance(a, nl.NeighborList) for a in jax.tree_util.tree_leaves(
            aux, is_leaf=lambda x: isinstance(x, nl.NeighborList))):
        return aux
    while True:
        @jax.jit
        def flags(template, rs, boxes):
            def one(x):
                r, box = x
                return overflowed(_fresh(potential, r, template, box))
            if boxes is None:
                return jax.lax.map(lambda r: one((r, None)), rs)
            return jax.lax.map(one, (rs, boxes))

        bad = np.asarray(flags(aux, samples.positions, samples.box))
        if not bad.any():
            return aux
        i = int(np.argmax(bad))
        box = None if samples.box is None else samples.box[i]
        fresh = _fresh(potential, samples.positions[i], aux, box)
        aux = nl.grow_all(fresh, samples.positions[i], 1.25)


def frame_derivatives(observable: Observable, potential, params, samples: Samples, aux=None,
                      *, batch_size: int | None = None):
    """Per frame: U (F,), dU/dparams (pytree of (F, *leaf)), O (F, ...), dO/dparams (pytree of
    (F, *O.shape, *leaf)), and whether any list overflowed. The raw material of
    :func:`ensemble_gradient`: averages and blocks are combined from it without re-evaluating
    frames. Pure; ``jit`` it."""
    check_samples(potential, samples, aux)

    def one(x):
        r, box = x
        a = _fresh(potential, r, aux, box)

        def uo(p):
            return potential.energy(r, p, a, box), observable(r, p, a, box)

        (u, o) = uo(params)
        du = jax.grad(lambda p: uo(p)[0])(params)
        do = jax.jacrev(lambda p: uo(p)[1])(params)
        return u, du, o, do, overflowed(a)

    if samples.box is None:
        out = jax.lax.map(lambda r: one((r, None)), samples.positions, batch_size=batch_size)
    else:
        out = jax.lax.map(one, (samples.positions, samples.box), batch_size=batch_size)
    u, du, o, do, ovf = out
    return u, du, o, do, jnp.any(ovf)


_PROGRAMS: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()


def _frame_derivatives_program(observable, potential, batch_size):
    """One jitted :func:`frame_derivatives` per (observable, potential, batch size), kept for
    the next call: repeated estimates (new parameters, new frames of the same shapes) do not
    recompile. The list template is an argument, not a constant."""
    key = (id(observable), id(potential), batch_size)
    hit = _PROGRAMS.get(key)
    if hit is not None and hit[0] is observable and hit[1] is potential:
        _PROGRAMS.move_to_end(key)
        return hit[2]
    fn = jax.jit(lambda p, s, a: frame_derivatives(observable, potential, p, s, a,
                                                   batch_size=batch_size))
    _PROGRAMS[key] = (observable, potential, fn)
    while len(_PROGRAMS) > 32:
        _PROGRAMS.popitem(last=False)
    return fn


def _estimate(log_weight, du, o, do, kT):
    """Weighted <O> and <dO> - Cov(O, dU) / kT from per-frame arrays (numpy, host side)."""
    w = np.exp(log_weight - log_weight.max())
    w = w / w.sum()
    mean_o = np.tensordot(w, o, axes=1)
    do_o = o - mean_o  # (F, *O)

    def leaf(d_u, d_o):
        d_u = d_u.reshape(len(w), -1)  # (F, P)
        mean_du = w @ d_u
        cov = np.einsum("f,fo,fp->op", w, do_o.reshape(len(w), -1), d_u - mean_du)
        g = np.tensordot(w, d_o, axes=1).reshape(cov.shape) - cov / kT
        return g.reshape(o.shape[1:] + d_o.shape[1 + o.ndim - 1:])

    return mean_o, jax.tree_util.tree_map(leaf, du, do), 1.0 / np.sum(w * w)


def ensemble_gradient(observable: Observable, potential, params, samples: Samples, kT,
                      aux=None, *, n_blocks: int = 10, min_ess: float = 50.0,
                      batch_size: int | None = None) -> GradientEstimate:
    """Host side: <O> and d<O>/dparams at ``params`` (where the samples were drawn) by the
    fluctuation formula, with standard errors from ``n_blocks`` contiguous blocks (correlated
    frames: blocks longer than the correlation time). Grows the neighbor-list template until
    every frame fits. Warns (:class:`LowESSWarning`) when the effective sample size is below
    ``min_ess``. For an average at other parameters, or a loss of several averages, use
    :func:`reweighted_average` under ``jax.grad``."""
    check_samples(potential, samples, aux, kT, values=True)
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)):
        raise TypeError(f"n_blocks must be an integer, got {n_blocks!r}")
    if not np.isfinite(min_ess):
        raise ValueError(f"min_ess must be finite, got {min_ess!r}")
    if n_blocks < 1 or samples.n_frames < 2 * n_blocks:
        raise ValueError(f"need n_blocks >= 1 and at least 2 frames per block; got {n_blocks} "
                         f"blocks for {samples.n_frames} frames")
    aux = fit_template(potential, samples, aux)
    fn = _frame_derivatives_program(observable, potential, batch_size)
    u, du, o, do, _ = jax.tree_util.tree_map(np.asarray, fn(params, samples, aux))
    lw = np.asarray(samples.log_weight, dtype=float)
    value, grad, ess = _estimate(lw, du, o, do, float(kT))
    if ess < min_ess:
        warnings.warn(f"reweighting rests on an effective sample size of {ess:.1f} frames "
                      f"(of {samples.n_frames}); the gradient is unreliable: sample longer, "
                      "or closer to these parameters", LowESSWarning, stacklevel=2)
    stderr = None
    if n_blocks > 1:
        size = samples.n_frames // n_blocks
        take = [slice(i * size, (i + 1) * size) for i in range(n_blocks)]
        grads = [_estimate(lw[b], jax.tree_util.tree_map(lambda a: a[b], du), o[b],
                           jax.tree_util.tree_map(lambda a: a[b], do), float(kT))[1]
                 for b in take]
        stderr = jax.tree_util.tree_map(
            lambda *bs: np.std(np.stack(bs), axis=0, ddof=1) / np.sqrt(n_blocks), *grads)
    return GradientEstimate(value=value, gradient=grad, stderr=stderr, ess=float(ess),
                            n_frames=samples.n_frames)


# --- common observables ---------------------------------------------------------------------

def potential_energy(potential) -> Observable:
    """The observable U(x; theta) (kJ/mol) of ``potential``."""

    def obs(positions, params, aux, box):
        return potential.energy(positions, params, aux, box)

    return obs


def virial_pressure(potential, kT, tail=None) -> Observable:
    """The configurational pressure estimator P = (N kT + tr W / 3) / V (kJ/mol/nm^3, or
    reduced units), for Monte Carlo samples (no velocities). tail: optional
    ``tail(params, volume) -> pressure`` added (e.g. the LJ tail correction)."""

    def obs(positions, params, aux, box):
        n = positions.shape[0]
        w = potential.virial(positions, params, aux, box)
        b = potential.default_box() if box is None else box
        vol = jnp.abs(jnp.linalg.det(b))
        p = (n * kT + jnp.trace(w) / 3.0) / vol
        return p if tail is None else p + tail(params, vol)

    return obs
