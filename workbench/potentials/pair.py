"""Pair potentials: a function of the squared distance, lifted to a whole system.

A :class:`PairKind` is a scalar pair energy ``u(r2, **p)`` of the squared distance r2 (nm^2)
(working in r2 avoids a square root in the inner loop for Lennard-Jones), the names of its
per-type parameters, and the mixing rule for each (Lorentz-Berthelot for Lennard-Jones).
:class:`PairPotential` lifts a kind to N particles with a cutoff, a truncation mode, particle
types and (optionally) a Verlet neighbor list, and satisfies the potential protocol of
:mod:`workbench.potentials.base`.

Truncation modes (structural), with rc the cutoff:

* ``"cut"``: u(r) for r < rc, else 0 (energy jumps at rc);
* ``"shift"``: u(r) - u(rc) (continuous energy);
* ``"force_shift"``: u(r) - u(rc) - (r - rc) u'(rc) (continuous energy and force);
* ``"switch"``: u(r) S(r), S the C2 quintic 1 - 10x^3 + 15x^4 - 6x^5 with
  x = (r - r_switch)/(rc - r_switch), as OpenMM's switching function.

Forces use a hand-written per-atom sum over the *full* neighbor list (no scatter-add, which is
slow under XLA on CPU). The energy has a custom JVP that reuses those forces, so
``jax.grad(energy)`` equals them and gradients with respect to parameters still come from
autodiff. Parameters are per-type arrays (numeric; never recompile).
"""

from __future__ import annotations

import dataclasses

import functools
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from .. import xla
from ..space import Space, box_volume
from .base import EnergyTerm, Evaluation, NeighborSpec
from .pairloop import as_list, energy_and_forces, pair_blocks, row_forces

Array = jax.Array

__all__ = [
    "PairKind",
    "PairPotential",
    "lennard_jones",
    "wca",
    "morse",
    "soft_sphere",
    "KINDS",
    "TRUNCATIONS",
]

TRUNCATIONS = ("cut", "shift", "force_shift", "switch")
_MIXING = {
    "arithmetic": lambda a, b: 0.5 * (a + b),
    "geometric": lambda a, b: jnp.sqrt(a * b),
}


@dataclass(frozen=True)
class PairKind:
    """A pair energy ``fn(r2, **params) -> u`` (kJ/mol) of the squared distance r2 (nm^2).

    mixing: parameter name -> "arithmetic" or "geometric" combination across types.
    defaults: default parameter values (per type).
    units: parameter name -> unit label (for panels and docs).
    """

    name: str
    fn: Callable[..., Array]
    mixing: Mapping[str, str]
    defaults: Mapping[str, float]
    units: Mapping[str, str] = field(default_factory=dict)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.mixing)


def _lj(r2, sigma, epsilon):
    s6 = (sigma * sigma / r2) ** 3
    return 4.0 * epsilon * s6 * (s6 - 1.0)


def _wca(r2, sigma, epsilon):
    inside = r2 < 2.0 ** (1.0 / 3.0) * sigma * sigma
    safe = jnp.where(inside, r2, sigma * sigma)
    return jnp.where(inside, _lj(safe, sigma, epsilon) + epsilon, 0.0)


def _morse(r2, D, alpha, r0):
    r = jnp.sqrt(r2)
    x = 1.0 - jnp.exp(-alpha * (r - r0))
    return D * x * x - D


def _soft_sphere(r2, sigma, epsilon, alpha):
    r = jnp.sqrt(r2)
    inside = r < sigma
    overlap = jnp.where(inside, 1.0 - r / sigma, 0.0)
    return jnp.where(inside, epsilon / alpha * overlap**alpha, 0.0)


lennard_jones = PairKind(
    "lennard_jones",
    _lj,
    {"sigma": "arithmetic", "epsilon": "geometric"},
    {"sigma": 1.0, "epsilon": 1.0},
    {"sigma": "nm", "epsilon": "kJ/mol"},
)
"""4 epsilon [(sigma/r)^12 - (sigma/r)^6], Lorentz-Berthelot mixing."""

wca = PairKind(
    "wca",
    _wca,
    {"sigma": "arithmetic", "epsilon": "geometric"},
    {"sigma": 1.0, "epsilon": 1.0},
    {"sigma": "nm", "epsilon": "kJ/mol"},
)
"""Weeks-Chandler-Andersen: Lennard-Jones cut at 2^(1/6) sigma and shifted up by epsilon.
The cutoff of the potential must be at least 2^(1/6) times the largest sigma."""

morse = PairKind(
    "morse",
    _morse,
    {"D": "geometric", "alpha": "arithmetic", "r0": "arithmetic"},
    {"D": 1.0, "alpha": 5.0, "r0": 1.0},
    {"D": "kJ/mol", "alpha": "1/nm", "r0": "nm"},
)
"""D [(1 - exp(-alpha (r - r0)))^2 - 1]: minimum -D at r0."""

soft_sphere = PairKind(
    "soft_sphere",
    _soft_sphere,
    {"sigma": "arithmetic", "epsilon": "geometric", "alpha": "arithmetic"},
    {"sigma": 1.0, "epsilon": 1.0, "alpha": 2.0},
    {"sigma": "nm", "epsilon": "kJ/mol", "alpha": ""},
)
"""epsilon/alpha (1 - r/sigma)^alpha for r < sigma, else 0 (as jax-md's soft_sphere)."""

KINDS = {k.name: k for k in (lennard_jones, wca, morse, soft_sphere)}


def _truncate(kind_fn, truncation: str, cutoff: float, r_switch: float | None):
    """Return u_t(r2, p) that is exactly 0 (with zero derivative) for r2 >= cutoff^2."""
    rc2 = cutoff * cutoff

    def base(r2, p):
        return kind_fn(r2, **p)

    if truncation == "cut":
        inner = base
    elif truncation == "shift":

        def inner(r2, p):
            return base(r2, p) - base(jnp.asarray(rc2, r2.dtype), p)

    elif truncation == "force_shift":

        def inner(r2, p):
            rc = jnp.asarray(cutoff, r2.dtype)
            u_rc, du2_rc = jax.jvp(lambda s: base(s, p), (rc * rc,), (jnp.ones_like(rc),))
            du_dr_rc = 2.0 * rc * du2_rc
            return base(r2, p) - u_rc - (jnp.sqrt(r2) - rc) * du_dr_rc

    elif truncation == "switch":
        rs = float(r_switch)

        def inner(r2, p):
            r = jnp.sqrt(r2)
            x = jnp.clip((r - rs) / (cutoff - rs), 0.0, 1.0)
            s = 1.0 + x**3 * (-10.0 + x * (15.0 - 6.0 * x))
            return base(r2, p) * s

    else:  # pragma: no cover - validated in PairPotential
        raise ValueError(truncation)

    def truncated(r2, p):
        inside = r2 < rc2
        safe = jnp.where(inside, r2, 0.25 * rc2)  # any finite in-range value
        return jnp.where(inside, inner(safe, p), 0.0)

    return truncated


@dataclass(frozen=True, eq=False)
class PairPotential(EnergyTerm):
    """A pair potential over N particles.

    kind: a :class:`PairKind` (or its name, e.g. ``"lennard_jones"``).
    space: boundary conditions.
    cutoff: interaction cutoff (nm), structural. Must be below half the box.
    truncation: one of ``TRUNCATIONS`` (structural).
    r_switch: start of the switching region for ``truncation="switch"`` (nm).
    types: (N,) integer particle types, or None for a single type (structural).
    skin: neighbor-list skin (nm). ``neighbor_list=False`` sums over all pairs instead (small or
      non-periodic systems). list_method: how the list is built, "auto", "cells" or "all_pairs"
      (see :func:`workbench.neighbors.allocate`).
    """

    kind: PairKind | str
    space: Space
    cutoff: float
    truncation: str = "shift"
    r_switch: float | None = None
    types: np.ndarray | None = None
    skin: float = 0.3
    neighbor_list: bool = True
    capacity_factor: float = 1.2
    list_method: str = "auto"

    def __post_init__(self):
        kind = KINDS.get(self.kind) if isinstance(self.kind, str) else self.kind
        if kind is None:
            raise ValueError(f"unknown pair kind {self.kind!r}; choose one of {sorted(KINDS)}")
        object.__setattr__(self, "kind", kind)
        if self.truncation not in TRUNCATIONS:
            raise ValueError(
                f"unknown truncation {self.truncation!r}; choose one of {list(TRUNCATIONS)}"
            )
        if not (self.cutoff > 0 and np.isfinite(self.cutoff)):
            raise ValueError(f"cutoff must be positive and finite, got {self.cutoff}")
        if self.truncation == "switch":
            if self.r_switch is None or not (0 < self.r_switch < self.cutoff):
                raise ValueError(
                    f"truncation='switch' needs 0 < r_switch < cutoff, got r_switch={self.r_switch}"
                )
        self.space.check_cutoff(self.cutoff + (self.skin if self.neighbor_list else 0.0))
        if self.types is not None:
            t = np.asarray(self.types)
            if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or t.min() < 0:
                raise ValueError("types must be a 1-D array of non-negative integers")
            object.__setattr__(self, "types", t.astype(np.int32))
        object.__setattr__(
            self, "_u", _truncate(kind.fn, self.truncation, self.cutoff, self.r_switch)
        )

    # ------------------------------------------------------------------ parameters
    @property
    def n_types(self) -> int:
        return 1 if self.types is None else int(self.types.max()) + 1

    def init_params(self, **values) -> dict[str, Array]:
        """Per-type parameter arrays, (n_types,) each, from scalars or sequences; missing names
        take the kind's defaults. Unknown names raise."""
        unknown = set(values) - set(self.kind.param_names)
        if unknown:
            raise TypeError(
                f"{self.kind.name} has parameters {list(self.kind.param_names)}; "
                f"unknown: {sorted(unknown)}"
            )
        out = {}
        for name in self.kind.param_names:
            v = np.asarray(values.get(name, self.kind.defaults[name]), dtype=float)
            v = np.broadcast_to(v, (self.n_types,)) if v.ndim == 0 else v
            if v.shape != (self.n_types,):
                raise ValueError(
                    f"parameter {name!r} needs one value per type ({self.n_types}), got {v.shape}"
                )
            out[name] = jnp.asarray(v, dtype=jnp.result_type(float))
        return out

    def _check_params(self, params):
        if set(params) != set(self.kind.param_names):
            raise KeyError(
                f"{self.kind.name} params need keys {list(self.kind.param_names)}, got {list(params)}"
            )

    def _pair_params(self, params, ti, tj):
        """Mixed parameters per pair: scalars for one type, else gathered from (T, T) tables
        by the types ``ti`` (B, 1) and ``tj`` (B, K)."""
        if self.types is None:
            return {k: _MIXING[m](params[k][0], params[k][0]) for k, m in self.kind.mixing.items()}
        n_t = self.n_types
        flat = ti * n_t + tj
        out = {}
        for k, m in self.kind.mixing.items():
            v = params[k]
            out[k] = _MIXING[m](v[:, None], v[None, :]).reshape(-1)[flat]
        return out

    # ------------------------------------------------------------------ neighbors
    def param_units(self) -> dict[str, str]:
        return dict(self.kind.units)

    def neighbor_spec(self) -> NeighborSpec | None:
        if not self.neighbor_list:
            return None
        return NeighborSpec(self.cutoff, self.skin, self.capacity_factor, self.list_method)

    def allocate(self, positions, box=None):
        """Host side: the neighbor list for ``positions`` (N, 3), or None for all pairs."""
        r = nl._check_positions(positions)
        if self.types is not None and len(self.types) != r.shape[0]:
            raise ValueError(f"types has {len(self.types)} entries but positions has {r.shape[0]}")
        return super().allocate(positions, box)

    def _blocks(self, positions, params, aux, space, per_block):
        """Run ``per_block(dx, dy, dz, r2, p)`` over the pair blocks (see
        :func:`~workbench.potentials.pairloop.pair_blocks`) with ``p`` the mixed parameters
        of each pair."""
        types = None if self.types is None else jnp.asarray(self.types)

        def block(dx, dy, dz, r2, ti, tj, params):
            p = self._pair_params(params, ti, tj) if types is not None else \
                self._pair_params(params, None, None)
            return per_block(dx, dy, dz, r2, p)

        return pair_blocks(positions, types, aux, space, self.cutoff, block, params)

    def _u_du(self, r2, p):
        return jax.jvp(lambda s: self._u(s, p), (r2,), (jnp.ones_like(r2),))

    # ------------------------------------------------------------------ physics
    def _energy_forces(self, positions, params, aux, space):
        def per_block(dx, dy, dz, r2, p):
            u, du = self._u_du(r2, p)
            return 0.5 * jnp.sum(u), row_forces(-2.0 * du, dx, dy, dz)

        out, inverse = self._blocks(positions, params, aux, space, per_block)
        return energy_and_forces(out, inverse, positions.shape[0], True)

    def _energy_plain(self, positions, params, aux, space):
        e, _ = self._blocks(positions, params, aux, space,
                            lambda dx, dy, dz, r2, p: 0.5 * jnp.sum(self._u(r2, p)))
        return jnp.sum(e)

    def energy(self, positions: Array, params, aux=None, box=None) -> Array:
        """Total pair energy (kJ/mol). positions: (N, 3) nm. Differentiable in positions, params
        and box; ``aux`` is the neighbor list (used as is, not refreshed) or None for all pairs.
        Position derivatives reuse the hand-written force kernel (a custom JVP)."""
        self._check_params(params)
        return _pair_energy(self, positions, params, as_list(aux), self.box_space(box))

    def energy_forces(self, positions: Array, params, aux=None, box=None) -> Evaluation:
        """Energy and forces in one pass over the pairs (``aux`` as is)."""
        self._check_params(params)
        e, f = self._energy_forces(positions, params, as_list(aux), self.box_space(box))
        return Evaluation(energy=e, forces=f)

    def forces_only(self, positions: Array, params, aux=None, box=None) -> Array:
        """Forces (N, 3) kJ/mol/nm without the energy (a cheaper kernel). Reverse mode uses a
        hand-written Hessian-vector product (see :func:`_pair_forces`)."""
        self._check_params(params)
        return _pair_forces(self, positions, params, as_list(aux), self.box_space(box))

    def _forces_plain(self, positions, params, aux, space):
        n = positions.shape[0]

        def per_block(dx, dy, dz, r2, p):
            _, du = self._u_du(r2, p)
            return row_forces(-2.0 * du, dx, dy, dz)

        f, inverse = self._blocks(positions, params, aux, space, per_block)
        f = f.reshape(-1, 3)[:n]
        return f if inverse is None else f[inverse]

    def _forces_vjp(self, positions, params, aux, space, w):
        """(w . dF/dx (N, 3), w . dF/dparams, w . dF/dbox (3, 3)) for a cotangent ``w`` (N, 3)
        on the forces, in one pass over the pairs with gathers only. F_k = sum_j phi(r2) d_kj,
        so w . dF/dx_k = sum_j [phi (w_k - w_j) + psi d_kj (d_kj . (w_k - w_j))] with
        psi = 2 dphi/dr2: the Hessian is symmetric, so row sums of the full list need no
        scatter (autodiff's transpose of the neighbor gather is a scatter-add, slow on CPU).
        The box enters through the minimum image d = (x_k - x_j) - s B (s integer)."""
        n = positions.shape[0]
        types = None if self.types is None else jnp.asarray(self.types)
        periodic = space.periodic
        inv_box = jnp.linalg.inv(space.box) if periodic else None

        def mixed(q, ti, tj):
            return self._pair_params(q, ti, tj) if types is not None else \
                self._pair_params(q, None, None)

        def block(dx, dy, dz, r2, ai, aj, params, raw):
            ti, wxi, wyi, wzi = ai  # (B, 1) each: structure of arrays (fast gathers)
            tj, wxj, wyj, wzj = aj  # (B, K) each; padded neighbors: phi = 0

            def phi_of(q, s):
                return -2.0 * self._u_du(s, mixed(q, ti, tj))[1]

            phi, dphi = jax.jvp(lambda s: phi_of(params, s), (r2,), (jnp.ones_like(r2),))
            ux, uy, uz = wxi - wxj, wyi - wyj, wzi - wzj
            c = 2.0 * dphi * (dx * ux + dy * uy + dz * uz)
            g = jnp.stack([jnp.sum(phi * ux + c * dx, 1), jnp.sum(phi * uy + c * dy, 1),
                           jnp.sum(phi * uz + c * dz, 1)], -1)
            wd = dx * wxi + dy * wyi + dz * wzi
            if types is None:
                # one type: each parameter is a scalar; forward mode per leaf keeps every
                # reduction a row sum of the (B, K) block (reverse mode's whole-block sums
                # beside row sums make a multi-output fusion XLA's CPU emitter runs scalar)
                gp = {}
                for key, v in params.items():
                    t = {k2: jnp.zeros_like(v2) for k2, v2 in params.items()}
                    t[key] = jnp.ones_like(v)
                    d = jax.jvp(lambda q: phi_of(q, r2), (params,), (t,))[1]
                    gp[key] = jnp.sum(wd * d, 1)
            else:
                _, vjp = jax.vjp(lambda q: phi_of(q, r2), params)
                (gp,) = vjp(wd)
            if not periodic:
                return g, gp, jnp.zeros((3, 3), dx.dtype)
            c = 2.0 * dphi * wd
            q = jnp.stack([phi * wxi + c * dx, phi * wyi + c * dy, phi * wzi + c * dz], -1)
            d = jnp.stack([dx, dy, dz], -1)
            shift = (jnp.stack(raw, -1) - d) @ inv_box  # image vectors s (B, K, 3)
            return g, gp, -jnp.einsum("bkm,bka->ma", shift, q)

        per_atom = (jnp.zeros(n, jnp.int32) if types is None else types,
                    w[:, 0], w[:, 1], w[:, 2])
        (g, gp, gb), inverse = pair_blocks(positions, per_atom, aux, space, self.cutoff, block,
                                           params, raw=True)
        g = g.reshape(-1, 3)[:n]
        g = g if inverse is None else g[inverse]
        gb = jnp.sum(gb, 0)
        if space.kind == "periodic":  # orthorhombic: only the box lengths enter
            gb = jnp.diag(jnp.diagonal(gb))
        if types is None:
            gp = {k: jnp.sum(gp[k]).reshape(v.shape).astype(v.dtype) for k, v in params.items()}
        else:
            gp = jax.tree_util.tree_map(lambda x: jnp.sum(x, 0), gp)
        return g, gp, gb

    def energy_virial(self, positions: Array, params, aux=None, box=None) -> tuple[Array, Array]:
        """Energy (kJ/mol) and virial tensor W = sum over pairs r_ij (x) f_ij (3, 3) kJ/mol in one
        pass over the pairs (``aux`` as is). The pressure tensor is (sum m v v + W) / V."""
        self._check_params(params)

        def per_block(dx, dy, dz, r2, p):
            u, du = self._u_du(r2, p)
            d = jnp.stack([dx, dy, dz], -1)
            # f_ij = -2 du/dr2 r_ij; each pair appears twice in the full list.
            return 0.5 * jnp.sum(u), -jnp.einsum("nk,nka,nkb->ab", du, d, d)

        (e, w), _ = self._blocks(positions, params, as_list(aux), self.box_space(box), per_block)
        return jnp.sum(e), jnp.sum(w, 0)

    capabilities: ClassVar[frozenset] = frozenset({"atom_energy"})

    def atom_energy(self, i: Array, r_i: Array, positions: Array, params, aux=None,
                    box=None) -> Array:
        """Energy (kJ/mol) of atom ``i`` placed at ``r_i`` (3,) with every other atom at
        ``positions`` (N, 3): the sum over i's row of the neighbor list (all other atoms when
        ``aux`` is None). For single-particle Monte Carlo: the energy change of moving i is
        ``atom_energy(i, new) - atom_energy(i, old)``, O(K) instead of O(N K). The list must
        hold i's neighbors at ``r_i`` (stay within half the skin of its build)."""
        n = positions.shape[0]
        aux = as_list(aux)
        if aux is None:
            j = jnp.arange(n)
            valid = j != i
        else:
            row = aux.idx[aux.inverse[i]]
            valid = row < n
            j = aux.order[jnp.where(valid, row, 0)]
        space = self.box_space(box)
        d = space.displacement(r_i[None, :], positions[j])
        far2 = 4.0 * self.cutoff**2
        r2 = jnp.where(valid, jnp.sum(d * d, -1), far2)
        if self.types is None:
            pp = self._pair_params(params, None, None)
        else:
            t = jnp.asarray(self.types)
            pp = self._pair_params(params, t[i][None, None], t[j][None, :])
            pp = {k: v.reshape(-1) for k, v in pp.items()}
        return jnp.sum(jnp.where(valid, self._u(r2, pp), 0.0))

    def tail_correction(self, params, n_particles: int, volume) -> tuple[Array, Array]:
        """Lennard-Jones long-range corrections for a homogeneous fluid, as if the plain
        potential continued beyond the cutoff: (energy kJ/mol, pressure kJ/mol/nm^3).

        E_tail = (2 pi / V) sum_ab N_a N_b int_rc^inf r^2 u_ab dr,
        P_tail = -(2 pi / 3 V^2) sum_ab N_a N_b int_rc^inf r^3 u_ab' dr.
        Only for ``lennard_jones``. With ``truncation="shift"`` the energy also lacks the shift
        inside rc; use ``"cut"`` when comparing with full-potential equations of state."""
        if self.kind.name != "lennard_jones":
            raise ValueError(f"tail corrections are defined for lennard_jones, not {self.kind.name}")
        if self.types is None:
            counts = np.array([float(n_particles)])
            sig, eps = params["sigma"][:1], params["epsilon"][:1]
        else:
            counts = np.bincount(self.types, minlength=self.n_types).astype(float)
            sig, eps = params["sigma"], params["epsilon"]
        s_ab = 0.5 * (sig[:, None] + sig[None, :])
        e_ab = jnp.sqrt(eps[:, None] * eps[None, :])
        x3 = (s_ab / self.cutoff) ** 3
        x9 = x3**3
        e_int = 4.0 * e_ab * s_ab**3 * (x9 / 9.0 - x3 / 3.0)  # int_rc^inf r^2 u dr
        p_int = 4.0 * e_ab * s_ab**3 * (-4.0 / 3.0 * x9 + 2.0 * x3)  # int_rc^inf r^3 u' dr
        nn = jnp.asarray(counts[:, None] * counts[None, :])
        energy = 2.0 * jnp.pi / volume * jnp.sum(nn * e_int)
        pressure = -2.0 * jnp.pi / (3.0 * volume**2) * jnp.sum(nn * p_int)
        return energy, pressure

    def tail_term(self, n_particles: int):
        """The tail energy as an energy term of the box (params: this potential's): add it with
        ``Sum({"pair": pot, "tail": pot.tail_term(n)})`` so that pressures and barostats see the
        full potential (its box derivative is P_tail)."""
        from .base import FunctionPotential

        def energy(positions, params, box):
            return self.tail_correction(params, n_particles, box_volume(box))[0]

        return FunctionPotential(energy, space=self.space, takes_box=True)


def _symbolic_zero(t) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def _instantiate(tangents, primals):
    return jax.tree_util.tree_map(
        lambda t, p: jnp.zeros_like(p) if _symbolic_zero(t) else t, tangents, primals,
        is_leaf=_symbolic_zero)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pair_forces(pot: PairPotential, positions, params, aux, space):
    """Pair forces whose reverse-mode derivative is one hand-written pass over the pairs
    (positions, params and box; see :meth:`PairPotential._forces_vjp`). Forward mode (jvp)
    through it is not defined: differentiate the energy for that."""
    return pot._forces_plain(positions, params, aux, space)


def _pair_forces_fwd(pot, positions, params, aux, space):
    return pot._forces_plain(positions, params, aux, space), (positions, params, aux, space)


def _pair_forces_bwd(pot, res, w):
    positions, params, aux, space = res
    g, gp, gb = pot._forces_vjp(positions, params, aux, space, w)
    gs = dataclasses.replace(jax.tree_util.tree_map(jnp.zeros_like, space), box=gb)
    return g, gp, xla.zero_cotangents(aux), gs


_pair_forces.defvjp(_pair_forces_fwd, _pair_forces_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _pair_energy(pot: PairPotential, positions, params, aux, space):
    """Pair energy whose position derivative is the hand-written force kernel. The neighbor list
    and the space are ordinary arguments (a custom JVP that closed over them broke under
    ``jit(grad(jit(f)))`` with lists made inside the trace); their tangents are ignored for the
    list (integer tables) and honoured for the box."""
    return pot._energy_plain(positions, params, aux, space)


@functools.partial(_pair_energy.defjvp, symbolic_zeros=True)
def _pair_energy_jvp(pot, primals, tangents):
    r, p, aux, space = primals
    dr, dp, _, dspace = tangents
    energy, forces = pot._energy_forces(r, p, aux, space)
    out = jnp.zeros_like(energy)
    if not _symbolic_zero(dr):
        out = out - jnp.sum(forces * dr)
    leaves = jax.tree_util.tree_leaves((dp, dspace), is_leaf=_symbolic_zero)
    if not all(_symbolic_zero(t) for t in leaves):
        _, de = jax.jvp(lambda q, s: pot._energy_plain(r, q, aux, s), (p, space),
                        (_instantiate(dp, p), _instantiate(dspace, space)))
        out = out + de
    return energy, out
