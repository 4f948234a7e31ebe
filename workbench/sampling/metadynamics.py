"""Well-tempered metadynamics on one or two CVs, as a sampler with the integrators' contract.

:func:`metadynamics` wraps an integrator or another sampler: it builds (or rebuilds, through
:meth:`~workbench.dynamics.integrators.Integrator.with_potential`) the inner one on the biased
system ``Sum({"system": potential, "bias": GridBias})`` and returns an
:class:`~workbench.dynamics.integrators.Integrator` whose ``init``/``step`` take the *system's*
params, keep the bias in ``state.extra["metadynamics"]`` (a :class:`MetadState`, read it with
:func:`bias_state`) and deposit a Gaussian hill every ``pace`` steps, so
:class:`~workbench.simulate.Simulation` and ``lax.scan`` run it like any integrator (the reported
potential energy is the unbiased one; :func:`bias_energy` gives V).

NPT metadynamics is ``metadynamics(system, cvs, ..., integrator=monte_carlo_barostat(system,
pressure))``: metadynamics outermost, so the barostat (and the Langevin inside it) is rebuilt
on system + bias and its volume moves see the biased energy (the CVs move when the box is
scaled); hills are deposited after the step's volume move, and walkers (:attr:`init_walkers`)
share the bias while each keeps its own barostat state.

Well-tempered rule (Barducci, Bussi, Parrinello 2008; PLUMED's METAD BIASFACTOR): a hill
deposited at s has height w0 exp(-V(s) / (kT (gamma - 1))); the bias converges to
V(s) = -(1 - 1/gamma) F(s) + const, so F = -gamma / (gamma - 1) V (:func:`free_energy`).
``bias_factor = inf`` is plain metadynamics (F = -V). Several walkers (a batch axis on the
state) share one bias: :func:`deposit` takes hills from all of them.

Hill heights, widths and the bias factor live in the state as arrays (changing them never
recompiles); ``pace`` and the grid are structural. Units: kJ/mol; CV units for sigma.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from ..dynamics import integrators as integ
from ..dynamics.registry import resolve
from ..potentials.base import Sum
from ..system import unpack
from . import cv as cvs_mod
from .bias import Grid, GridBias, add_hills, hill_reach

Array = jax.Array

__all__ = ["MetadState", "Metadynamics", "metadynamics", "bias_state", "deposit",
           "free_energy", "bias_energy", "rct", "reweighted_free_energy", "KEY"]

KEY = "metadynamics"
"""The default key of the bias in ``state.extra``."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MetadState:
    """table: (points..., 2^d) bias table kJ/mol (see GridBias); height: () kJ/mol initial hill
    height w0; sigma: (d,) hill widths (CV units); bias_factor: () gamma (inf: plain
    metadynamics); n_hills: () int, hills deposited so far (per walker: each counts)."""

    table: Array
    height: Array
    sigma: Array
    bias_factor: Array
    n_hills: Array


@dataclass(frozen=True, eq=False)
class Metadynamics(integ.Integrator):
    """The sampler :func:`metadynamics` returns (an Integrator with the bias attached)."""

    bias: GridBias | None = None
    pace: int = 500
    inner: Any = None
    init_walkers: Any = None
    step_walkers: Any = None
    key: str = KEY


def bias_state(state: integ.MDState, key: "str | Metadynamics" = KEY) -> MetadState:
    """The bias (:class:`MetadState`) in ``state``; ``key``: the sampler (or its ``key=``) when
    it was given another key."""
    return integ.sampler_state(state, key.key if isinstance(key, Metadynamics) else key)


def _meta(sampler, meta_or_state) -> MetadState:
    """A MetadState from itself or from a state holding it."""
    if isinstance(meta_or_state, integ.MDState):
        return bias_state(meta_or_state, sampler if isinstance(sampler, Metadynamics) else KEY)
    return meta_or_state


def _number(name: str, value) -> float:
    """A real scalar (NaN and inf pass here; the caller decides)."""
    a = np.asarray(value)
    if a.ndim != 0 or a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(a)


def _check_start(cvs, positions, settings, bias_factor: float) -> None:
    """Host-side checks where the sampler first meets positions and settings: the CVs' atom
    indices against the atom count (static shape), finite positions, and a finite kT > 0 for
    well-tempered runs (when concrete; nothing can be raised inside jit)."""
    shape = np.shape(positions)
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"positions must be (N, 3) nm, got shape {shape}")
    cvs_mod.check(cvs, shape[0])
    if not isinstance(positions, jax.core.Tracer) and not np.all(np.isfinite(positions)):
        raise ValueError("positions contain non-finite values (NaN or inf)")
    if not np.isinf(bias_factor):
        kT = _kT(settings)
        if not isinstance(kT, jax.core.Tracer) and not (np.all(np.isfinite(kT))
                                                        and np.all(np.asarray(kT) > 0)):
            raise ValueError(f"settings.kT must be finite and > 0 (kJ/mol), got {kT}")


def _kT(settings) -> Array:
    if not hasattr(settings, "kT"):
        raise ValueError("well-tempered metadynamics needs a thermostatted integrator (settings "
                         "with kT); for plain metadynamics pass bias_factor=inf")
    return settings.kT


def _heights(bias: GridBias, meta: MetadState, s: Array, kT: Array) -> Array:
    """Well-tempered heights (W,) kJ/mol of hills at ``s`` (W, d) on the current bias."""
    params = {"table": meta.table}
    v = jax.vmap(lambda x: bias.bias_at(x, params))(s)
    gamma = meta.bias_factor
    scale = jnp.where(jnp.isinf(gamma), 1.0,
                      jnp.exp(-v / (kT * jnp.where(jnp.isinf(gamma), 1.0, gamma - 1.0))))
    return meta.height * scale


def deposit(bias: GridBias, meta: MetadState, s: Array, kT: Array,
            reach: tuple[int, ...] | None = None) -> MetadState:
    """Add one hill per row of ``s`` (W, d) (walkers) at the current bias: heights
    w0 exp(-V(s)/(kT (gamma - 1))), all evaluated on the bias before this deposit. reach: grid
    points filled on each side of a centre (default :func:`~.bias.hill_reach` of the state's
    widths, which must then be concrete)."""
    if reach is None:
        reach = hill_reach(bias.grid, np.asarray(meta.sigma))
    table = add_hills(bias.grid, meta.table, s, meta.sigma, _heights(bias, meta, s, kT), reach)
    return replace(meta, table=table,
                   n_hills=meta.n_hills + s.shape[0])


def metadynamics(potential, cvs: Sequence[cvs_mod.CV] | cvs_mod.CV, *, sigma, height: float,
                 bias_factor: float = 10.0, pace: int = 500, grid: Grid | None = None,
                 lower=None, upper=None, bins=100, integrator="langevin",
                 constraints=None, key: str = KEY) -> Metadynamics:
    """Well-tempered metadynamics of ``potential`` (or a System) on ``cvs`` (1 or 2).

    sigma: hill widths (CV units, one per CV or one for all); height: initial hill height
    (kJ/mol); bias_factor: gamma > 1 (inf: plain metadynamics); pace: steps between hills
    (structural). grid: a :class:`Grid` (or ``lower``/``upper``/``bins`` to make one with
    :meth:`Grid.for_cvs`; periodic CVs need no bounds). integrator: a name in
    :data:`~workbench.dynamics.registry.INTEGRATORS` (built with ``constraints``) or an
    Integrator / sampler object (e.g. a barostat for NPT), rebuilt on the biased system.
    key: the bias's entry in ``state.extra``. Returns the sampler; its ``init`` takes the
    system's params like the plain integrator's."""
    potential, constraints = unpack(potential, constraints)
    cvs = cvs_mod._check_cvs(cvs)
    if len(cvs) not in (1, 2):
        raise ValueError(f"metadynamics supports 1 or 2 CVs, got {len(cvs)}")
    bias_factor = _number("bias_factor", bias_factor)
    if not (bias_factor > 1.0):
        raise ValueError(f"bias_factor must be > 1 (inf for plain metadynamics), got {bias_factor}")
    height = _number("height", height)
    if not (np.isfinite(height) and height > 0):
        raise ValueError(f"hill height must be finite and > 0 (kJ/mol), got height={height}")
    pace_a = np.asarray(pace)
    if pace_a.ndim != 0 or pace_a.dtype.kind not in "iu":
        raise TypeError(f"pace must be an integer number of steps, got pace={pace!r}")
    pace = int(pace_a)
    if pace < 1:
        raise ValueError(f"need pace >= 1 step between hills, got pace={pace}")
    if grid is not None and not isinstance(grid, Grid):
        raise TypeError(f"grid must be a workbench.sampling.bias.Grid, got {type(grid).__name__}")
    grid = grid or Grid.for_cvs(cvs, lower, upper, bins)
    sig = np.asarray(sigma, dtype=float)
    if sig.ndim > 1 or sig.size not in (1, len(cvs)):
        raise ValueError(f"sigma must be one width or one per CV ({len(cvs)}), got shape "
                         f"{sig.shape}")
    sig = np.broadcast_to(sig.reshape(-1), (len(cvs),))
    if not np.all(np.isfinite(sig) & (sig > 0)):
        raise ValueError(f"sigma (hill widths, CV units) must be finite and positive, got {sig}")
    if np.any(sig < grid.spacing):
        raise ValueError(f"hill widths {sig} are narrower than the grid spacing {grid.spacing}: "
                         "use more bins or wider hills (PLUMED suggests spacing <= sigma / 2)")
    bias = GridBias(cvs, grid, space=potential.space)
    reach = hill_reach(grid, sig)  # hills are local patches (structural: these widths)
    biased = Sum({"system": potential, "bias": bias})
    inner = resolve(integrator, biased, constraints, where="metadynamics")
    dtype = jnp.result_type(float)
    store = key  # the bias's entry in state.extra (``key`` below is a PRNG key)

    def biased_params(params, meta: MetadState):
        return {"system": params, "bias": {"table": meta.table}}

    def kT_of(settings) -> Array:
        return jnp.asarray(1.0, dtype) if np.isinf(bias_factor) else _kT(settings)

    def init(key, positions, params, settings, **kwargs) -> integ.MDState:
        _check_start(cvs, positions, settings, bias_factor)
        table = grid.zeros(dtype)
        meta = MetadState(table=table, height=jnp.asarray(height, dtype),
                          sigma=jnp.asarray(sig, dtype),
                          bias_factor=jnp.asarray(bias_factor, dtype),
                          n_hills=jnp.asarray(0, jnp.int32))
        state = inner.init(key, positions, biased_params(params, meta), settings, **kwargs)
        integ.check_free_key(state, store, "metadynamics")
        return integ.with_sampler_state(state, store, meta)

    def step(state, params, settings, *, energy: bool = True) -> integ.MDState:
        meta = bias_state(state, store)
        state = inner.step(state, biased_params(params, meta), settings, energy=energy)

        def add(meta):
            s = cvs_mod.values(cvs, state.positions, state.box)[None, :]
            return deposit(bias, meta, s, kT_of(settings), reach)

        meta = jax.lax.cond(integ.every(state.step, pace), add, lambda m: m, meta)
        return integ.with_sampler_state(state, store, meta)

    def init_walkers(key, positions, params, settings, **kwargs) -> integ.MDState:
        """Walkers from ``positions`` (W, N, 3): a state whose fields have a leading walker
        axis, except the bias (``state.extra[key]``) all walkers share; the inner samplers'
        entries (a barostat's) are per walker (keys split per walker)."""
        positions = np.asarray(positions)
        if positions.ndim != 3:
            raise ValueError(f"walker positions must have shape (W, N, 3), got {positions.shape}")
        keys = jax.random.split(key, positions.shape[0])
        states = [init(k, r, params, settings, **kwargs) for k, r in zip(keys, positions)]
        meta = bias_state(states[0], store)
        bare = [integ.without_sampler_state(st, store) for st in states]
        stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *bare)
        return integ.with_sampler_state(stacked, store, meta)

    def step_walkers(states, params, settings, *, energy: bool = True) -> integ.MDState:
        """One step of every walker on the shared bias; each deposits its hill on the same
        step (multiple-walker metadynamics, Raiteri et al. 2006)."""
        meta = bias_state(states, store)
        bare = integ.without_sampler_state(states, store)
        p = biased_params(params, meta)
        with nl.shared_rebuilds("walkers"):  # one list-rebuild decision for all walkers
            bare = jax.vmap(lambda st: inner.step(st, p, settings, energy=energy),
                            axis_name="walkers")(bare)

        def add(meta):
            s = jax.vmap(lambda r, b: cvs_mod.values(cvs, r, b))(bare.positions, bare.box)
            return deposit(bias, meta, s, kT_of(settings), reach)

        meta = jax.lax.cond(bare.step[0] % pace == 0, add, lambda m: m, meta)
        return integ.with_sampler_state(bare, store, meta)

    def ensemble(state, params) -> integ.Ensemble:
        return inner.ensemble(state, biased_params(params, bias_state(state, store)))

    def rebuild(p) -> Metadynamics:
        return metadynamics(p, cvs, sigma=sig, height=height, bias_factor=bias_factor,
                            pace=pace, grid=grid, integrator=inner, key=store)

    return Metadynamics(name=f"metadynamics({inner.name})", init=init, step=step,
                        settings_class=inner.settings_class, dof=inner.dof, conserved=None,
                        potential=potential, constraints=inner.constraints, rebuild=rebuild,
                        ensemble_fn=ensemble, bias=bias, pace=pace, inner=inner,
                        init_walkers=init_walkers, step_walkers=step_walkers, key=store)


def bias_energy(sampler: Metadynamics, state: integ.MDState) -> Array:
    """The bias V (kJ/mol) at the state's CV values."""
    s = cvs_mod.values(sampler.bias.cvs, state.positions, state.box)
    return sampler.bias.bias_at(s, {"table": bias_state(state, sampler).table})


def free_energy(sampler_or_grid, meta: MetadState | integ.MDState
                ) -> tuple[list[np.ndarray], np.ndarray]:
    """The free-energy surface from the bias (``meta``: the MetadState, or a state holding
    it): (grid axes, F (points...)) in kJ/mol with its minimum at 0: F = -gamma / (gamma - 1) V
    for well-tempered metadynamics, -V for plain."""
    grid = sampler_or_grid.bias.grid if isinstance(sampler_or_grid, Metadynamics) \
        else sampler_or_grid
    meta = _meta(sampler_or_grid, meta)
    v = np.asarray(meta.table[..., 0], dtype=float)
    gamma = float(meta.bias_factor)
    f = -v if np.isinf(gamma) else -gamma / (gamma - 1.0) * v
    return grid.axes(), f - f.min()


def rct(sampler: Metadynamics, meta: MetadState | integ.MDState, kT) -> Array:
    """c(t) of Tiwary and Parrinello (2015), kJ/mol: kT ln(int e^{gamma V/((gamma-1) kT)} ds /
    int e^{V/((gamma-1) kT)} ds) over the grid, so that samples taken with the bias V(s, t)
    reweight with exp((V(s, t) - c(t)) / kT). Plain metadynamics: gamma -> inf. ``meta``: the
    MetadState or a state holding it."""
    meta = _meta(sampler, meta)
    v = meta.table[..., 0]
    gamma = meta.bias_factor
    inv = jnp.where(jnp.isinf(gamma), 0.0, 1.0 / jnp.where(jnp.isinf(gamma), 1.0, gamma - 1.0))
    a = jax.scipy.special.logsumexp((1.0 + inv) * v / kT)
    b = jax.scipy.special.logsumexp(inv * v / kT)
    return kT * (a - b)


def reweighted_free_energy(grid: Grid, s: np.ndarray, log_weight: np.ndarray, kT: float
                           ) -> tuple[list[np.ndarray], np.ndarray]:
    """Free energy (kJ/mol, minimum 0; inf where nothing was sampled) on the points of ``grid``
    from samples ``s`` (T, d) with log weights (T,), e.g. (V(s_t, t) - c(t)) / kT from
    :func:`rct`: a weighted histogram with one bin centred on each grid point."""
    lw = np.asarray(log_weight, dtype=float)
    s = np.asarray(s, dtype=float)
    if lw.ndim != 1 or s.size != lw.size * grid.dim:
        raise ValueError(f"reweighted_free_energy: s must be (T, {grid.dim}) CV values for T = "
                         f"len(log_weight) samples; got s {s.shape}, log_weight {lw.shape}")
    s = s.reshape(len(lw), grid.dim)
    if not np.all(np.isfinite(s)) or np.any(np.isnan(lw)) or np.any(lw == np.inf):
        raise ValueError("reweighted_free_energy: s and log_weight must be finite (log_weight "
                         "may be -inf for a zero weight)")
    if not (np.isfinite(kT) and kT > 0):
        raise ValueError(f"kT must be finite and > 0 (kJ/mol), got {kT}")
    idx = []
    for a in range(grid.dim):
        x = np.rint((s[:, a] - grid.lower[a]) / grid.spacing[a]).astype(np.int64)
        x = np.mod(x, grid.bins[a]) if grid.periods[a] is not None else x
        idx.append(x)
    inside = np.all([(i >= 0) & (i < n) for i, n in zip(idx, grid.shape)], axis=0)
    flat = np.ravel_multi_index([i[inside] for i in idx], grid.shape)
    w = np.exp(lw[inside] - lw[inside].max())
    hist = np.bincount(flat, weights=w, minlength=int(np.prod(grid.shape))).reshape(grid.shape)
    with np.errstate(divide="ignore"):
        f = -kT * np.log(hist)
    return grid.axes(), f - f[np.isfinite(f)].min()
