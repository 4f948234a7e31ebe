"""Lennard-Jones plus Coulomb with exclusions and scaled 1-4 pairs, as OpenMM's NonbondedForce.

One term computes both interactions from one pass over the shared neighbor list. Methods
(structural), as OpenMM defines them:

* ``NoCutoff``: every pair, plain 1/r Coulomb;
* ``CutoffNonPeriodic`` / ``CutoffPeriodic``: pairs within the cutoff, Coulomb with a reaction
  field, k q_i q_j (1/r + k_rf r^2 - c_rf), k_rf = (eps - 1) / ((2 eps + 1) rc^3),
  c_rf = 3 eps / ((2 eps + 1) rc), eps the solvent dielectric;
* ``Ewald`` / ``PME``: erfc(alpha r)/r in direct space within the cutoff, the reciprocal sum
  and the self energy from :mod:`workbench.potentials.ewald`.

Lennard-Jones is cut at the cutoff (optionally with OpenMM's switching function), mixed by
Lorentz-Berthelot, with the optional long-range dispersion correction for a homogeneous fluid.

Exclusions and exceptions. Every exception pair is excluded from the normal sum. Exceptions with
non-zero parameters (the 1-4 pairs) are computed separately with plain Coulomb and LJ, no cutoff:
either *scaled* (q_i q_j coulomb14scale, LJ with mixed sigma and lj14scale sqrt(eps_i eps_j), so
they follow the atom types' parameters) or *fixed* (their own per-pair parameters). The pair loop
runs over the list as built (which knows nothing of exclusions) and masks excluded pairs with
per-particle bit masks over index offsets (:mod:`workbench.potentials.exclusions`): their charge
product and epsilon are zero there, so single precision never has to cancel an excluded C-H
pair's ~1e5 kJ/mol of r^-12 energy. The few exclusions too far apart in index for the masks are
subtracted pair by pair after the loop. In Ewald methods the reciprocal sum includes excluded
pairs too, and k q_i q_j erf(alpha r)/r is subtracted for them, as OpenMM does.

Parameters (numeric, keyed by type): ``charge`` (Tq,) e per charge type, ``sigma``,
``epsilon`` (Tl,) nm, kJ/mol per Lennard-Jones type, ``coulomb14scale``, ``lj14scale`` () and the
fixed exceptions' ``exception_chargeprod`` e^2, ``exception_sigma`` nm, ``exception_epsilon``
kJ/mol, (X,) each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import units
from ..space import Space
from . import exclusions as exclusion_masks
from .base import strain_virial
from .pairloop import (CutoffPairTerm, block_virial, energy_and_forces, finish_virial,
                       pair_blocks, row_forces)

Array = jax.Array


def sqrt0(x: Array) -> Array:
    """sqrt(x) for x >= 0 with derivative 0 (not inf) at x = 0: the geometric mixing rule
    sqrt(eps_i) sqrt(eps_j) then has finite parameter gradients when a type has no LJ (water
    hydrogens, eps = 0), where sqrt(eps_i eps_j) gave 0 * inf = NaN for its partners. At eps = 0
    itself the derivative is taken as 0 (the true one is infinite)."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)

__all__ = ["Nonbonded", "METHODS"]

METHODS = ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME")
UNITS = {"charge": "e", "sigma": "nm", "epsilon": "kJ/mol", "coulomb14scale": "",
         "lj14scale": "", "exception_chargeprod": "e^2", "exception_sigma": "nm",
         "exception_epsilon": "kJ/mol"}
"""Unit of each parameter."""
_QUADRATURE = np.polynomial.legendre.leggauss(48)


def _pairs(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int32).reshape(-1, 2)


@dataclass(frozen=True, eq=False)
class Nonbonded(CutoffPairTerm):
    """LJ + Coulomb over N particles (see the module docstring).

    space: boundary conditions (periodic for CutoffPeriodic, Ewald, PME). method: one of
    :data:`METHODS`. charge_types, lj_types: (N,) row of each particle in the charge and LJ type
    tables. exclusions: (E, 2) pairs left out of the normal sum (every exception pair).
    scaled_pairs: (S, 2) 1-4 pairs computed from the types with the 1-4 scales. fixed_pairs:
    (X, 2) pairs with their own parameters. cutoff (nm), switch_distance (nm or None),
    dispersion_correction, reaction_field_dielectric, ewald_alpha (1/nm), pme_grid (3 ints),
    ewald_kmax (3 ints): as OpenMM. skin: neighbor-list skin (nm). All structural.
    """

    space: Space
    method: str
    charge_types: np.ndarray
    lj_types: np.ndarray
    exclusions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    scaled_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    fixed_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    cutoff: float | None = None
    switch_distance: float | None = None
    dispersion_correction: bool = False
    reaction_field_dielectric: float = 78.3
    ewald_alpha: float = 0.0
    pme_grid: tuple[int, int, int] | None = None
    ewald_kmax: tuple[int, int, int] | None = None
    skin: float = 0.2
    charge_type_names: Sequence[str] | None = None
    lj_type_names: Sequence[str] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown nonbonded method {self.method!r}; choose one of {METHODS}")
        periodic = self.method in ("CutoffPeriodic", "Ewald", "PME")
        if periodic != self.space.periodic:
            raise ValueError(f"nonbonded method {self.method} needs a "
                             f"{'periodic' if periodic else 'free'} space, got {self.space.kind}")
        if self.method != "NoCutoff":
            if not (self.cutoff and self.cutoff > 0):
                raise ValueError(f"nonbonded method {self.method} needs a positive cutoff")
            self.space.check_cutoff(self.cutoff + self.skin, "nonbonded cutoff + skin")
        if self.switch_distance is not None and not (0 <= self.switch_distance < (self.cutoff or 0)):
            raise ValueError(f"switch_distance must lie in [0, cutoff), got {self.switch_distance}")
        if self.method == "PME" and self.pme_grid is None:
            raise ValueError("PME needs pme_grid (nx, ny, nz); see ewald.pme_parameters")
        if self.method == "Ewald" and self.ewald_kmax is None:
            raise ValueError("Ewald needs ewald_kmax (kx, ky, kz); see ewald.ewald_parameters")
        qt = np.asarray(self.charge_types, dtype=np.int32)
        lt = np.asarray(self.lj_types, dtype=np.int32)
        if qt.shape != lt.shape or qt.ndim != 1:
            raise ValueError(f"charge_types and lj_types must both have shape (N,), got "
                             f"{qt.shape} and {lt.shape}")
        for name in ("exclusions", "scaled_pairs", "fixed_pairs"):
            pairs = _pairs(getattr(self, name))
            if pairs.size and (pairs.min() < 0 or pairs.max() >= len(qt)):
                raise ValueError(f"{name} index out of range for {len(qt)} particles")
            object.__setattr__(self, name, pairs)
        object.__setattr__(self, "charge_types", qt)
        object.__setattr__(self, "lj_types", lt)
        object.__setattr__(self, "_masks", exclusion_masks.build(self.exclusions, len(qt)))
        for attr, types in (("charge_type_names", qt), ("lj_type_names", lt)):
            n = int(types.max()) + 1 if len(types) else 0
            names = getattr(self, attr)
            names = tuple(names) if names is not None else tuple(f"{attr[:-6]}{i}" for i in range(n))
            if len(names) < n:
                raise ValueError(f"{attr} has {len(names)} names for {n} types")
            object.__setattr__(self, attr, names)

    # ------------------------------------------------------------------ parameters
    @property
    def n_particles(self) -> int:
        return len(self.charge_types)

    @property
    def ewald(self) -> bool:
        return self.method in ("Ewald", "PME")

    def init_params(self, charge, sigma, epsilon, coulomb14scale=0.8333333333333334,
                    lj14scale=0.5, exception_chargeprod=(), exception_sigma=(),
                    exception_epsilon=()) -> dict[str, Array]:
        """The parameter pytree from per-type values (see the module docstring for units)."""
        f = jnp.result_type(float)
        out = {
            "charge": jnp.asarray(charge, f), "sigma": jnp.asarray(sigma, f),
            "epsilon": jnp.asarray(epsilon, f),
            "coulomb14scale": jnp.asarray(coulomb14scale, f),
            "lj14scale": jnp.asarray(lj14scale, f),
            "exception_chargeprod": jnp.asarray(exception_chargeprod, f).reshape(-1),
            "exception_sigma": jnp.asarray(exception_sigma, f).reshape(-1),
            "exception_epsilon": jnp.asarray(exception_epsilon, f).reshape(-1),
        }
        nq, nl_ = len(self.charge_type_names), len(self.lj_type_names)
        for k, n in (("charge", nq), ("sigma", nl_), ("epsilon", nl_)):
            if out[k].shape != (n,):
                raise ValueError(f"{k} needs one value per type ({n}), got {out[k].shape}")
        for k in ("exception_chargeprod", "exception_sigma", "exception_epsilon"):
            if out[k].shape != (len(self.fixed_pairs),):
                raise ValueError(f"{k} needs one value per fixed pair ({len(self.fixed_pairs)})")
        return out

    def particle_params(self, params) -> dict[str, Array]:
        """Per-particle view: charge (N,) e, sigma (N,) nm, epsilon (N,) kJ/mol."""
        return {"charge": params["charge"][self.charge_types],
                "sigma": params["sigma"][self.lj_types],
                "epsilon": params["epsilon"][self.lj_types]}

    def param_units(self) -> dict[str, str]:
        return dict(UNITS)

    # ------------------------------------------------------------------ pair physics
    def _pair_energy(self, r2, qq, sig, eps, dtype):
        """Energy of pairs (any shape) in the normal sum, zero beyond the cutoff."""
        return self._pair_terms(r2, qq, sig, eps, dtype, forces=False)

    def _pair_terms(self, r2, qq, sig, eps, dtype, forces: bool, keep=None):
        """Pair energies, and with ``forces`` also -dU/dr / r (so the force on i from j is that
        times r_ij), written out by hand: the inner loop of every step (about 2x faster than
        differentiating the energy with ``jvp``; the two are compared in the tests). ``keep``:
        False for pairs that do not interact (exclusions), which are exactly zero."""
        rc = self.pair_cutoff
        inside = r2 < rc * rc
        if keep is not None:
            inside = inside & keep
        r2 = jnp.where(inside, r2, 0.25 * rc * rc)
        inv_r2 = 1.0 / r2
        inv_r = jnp.sqrt(inv_r2)
        s6 = (sig * sig * inv_r2) ** 3
        lj = 4.0 * eps * s6 * (s6 - 1.0)
        f_lj = 24.0 * eps * s6 * (2.0 * s6 - 1.0) * inv_r2
        if self.switch_distance is not None:
            width = rc - self.switch_distance
            r = r2 * inv_r
            x = jnp.clip((r - self.switch_distance) / width, 0.0, 1.0)
            sw = 1.0 + x**3 * (-10.0 + x * (15.0 - 6.0 * x))
            dsw = x * x * (-30.0 + x * (60.0 - 30.0 * x)) / width
            f_lj = f_lj * sw - lj * dsw * inv_r
            lj = lj * sw
        kqq = units.ONE_4PI_EPS0 * qq
        if self.method == "NoCutoff":
            coul = kqq * inv_r
            f_coul = coul * inv_r2
        elif self.method in ("CutoffNonPeriodic", "CutoffPeriodic"):
            e = self.reaction_field_dielectric
            krf = (e - 1.0) / ((2.0 * e + 1.0) * rc**3)
            crf = 3.0 * e / ((2.0 * e + 1.0) * rc)
            coul = kqq * (inv_r + krf * r2 - crf)
            f_coul = kqq * (inv_r * inv_r2 - 2.0 * krf)
        else:
            a = self.ewald_alpha
            ar = a * r2 * inv_r
            erfc = jax.scipy.special.erfc(ar)
            coul = kqq * erfc * inv_r
            f_coul = kqq * (erfc * inv_r + (2.0 * a / np.sqrt(np.pi)) * jnp.exp(-ar * ar)) * inv_r2
        zero = jnp.zeros((), dtype)
        energy = jnp.where(inside, lj + coul, zero)
        if not forces:
            return energy
        return energy, jnp.where(inside, f_lj + f_coul, zero)

    def _atoms(self, params):
        pp = self.particle_params(params)
        atoms = {"q": pp["charge"], "s": 0.5 * pp["sigma"], "e": sqrt0(pp["epsilon"])}
        if self._masks is not None:
            atoms["id"] = exclusion_masks.particle_ids(self.n_particles, pp["charge"].dtype)
            atoms["excluded"] = jnp.asarray(self._masks.masks)
        return atoms

    def _pair_block(self, forces: bool, virial: bool = False):
        def per_block(dx, dy, dz, r2, ai, aj, _):
            keep = None
            if self._masks is not None:  # excluded pairs: exactly zero, nothing to cancel
                keep = ~exclusion_masks.excluded(ai["id"], aj["id"], ai["excluded"])
            out = self._pair_terms(r2, ai["q"] * aj["q"], ai["s"] + aj["s"], ai["e"] * aj["e"],
                                   dx.dtype, forces or virial, keep)
            if not (forces or virial):
                return 0.5 * jnp.sum(out)
            e, f_over_r = out
            if virial:
                return 0.5 * jnp.sum(e), block_virial(f_over_r, dx, dy, dz)
            return 0.5 * jnp.sum(e), row_forces(f_over_r, dx, dy, dz)
        return per_block

    capabilities: ClassVar[frozenset] = frozenset({"pair_virial"})

    def _pair_virial(self, positions, params, aux, space, diagonal_only: bool):
        out, _ = pair_blocks(positions, self._atoms(params), aux, space, self.pair_cutoff,
                             self._pair_block(False, virial=True))
        return finish_virial(out, diagonal_only)

    def _pair_sum(self, positions, params, aux, space, forces: bool):
        out, inverse = pair_blocks(positions, self._atoms(params), aux, space, self.pair_cutoff,
                                   self._pair_block(forces))
        return energy_and_forces(out, inverse, positions.shape[0], forces)

    # ------------------------------------------------------------------ the rest
    def _distances(self, positions, pairs, space):
        d = space.displacement(positions[pairs[:, 0]], positions[pairs[:, 1]])
        return jnp.sqrt(jnp.sum(d * d, -1))

    def _explicit_energy(self, positions, params, space, long_range: bool = True):
        """Everything but the pair loop: excluded pairs the masks miss taken back out, 1-4
        exceptions, reciprocal and self energies (with the excluded pairs' reciprocal part taken
        out), dispersion correction. ``long_range=False``: only the pairs (no reciprocal, self,
        neutralizing or dispersion terms)."""
        dtype = positions.dtype
        k = units.ONE_4PI_EPS0
        pp = self.particle_params(params)
        q, sig, eps = pp["charge"], pp["sigma"], pp["epsilon"]
        total = jnp.zeros((), dtype)
        far = self._masks.far if self._masks is not None else self.exclusions[:0]
        if len(far):
            i, j = far[:, 0], far[:, 1]
            r = self._distances(positions, far, space)
            total = total - jnp.sum(self._pair_energy(
                r * r, q[i] * q[j], 0.5 * (sig[i] + sig[j]), sqrt0(eps[i]) * sqrt0(eps[j]),
                dtype))
        if self.ewald and len(self.exclusions):
            from . import ewald

            i, j = self.exclusions[:, 0], self.exclusions[:, 1]
            r = self._distances(positions, self.exclusions, space)
            total = total + ewald.excluded_pair_correction(r, q[i] * q[j], self.ewald_alpha)
        for pairs, scaled in ((self.scaled_pairs, True), (self.fixed_pairs, False)):
            if not len(pairs):
                continue
            i, j = pairs[:, 0], pairs[:, 1]
            if scaled:
                qq = params["coulomb14scale"] * q[i] * q[j]
                s = 0.5 * (sig[i] + sig[j])
                e = params["lj14scale"] * sqrt0(eps[i]) * sqrt0(eps[j])
            else:
                qq, s = params["exception_chargeprod"], params["exception_sigma"]
                e = params["exception_epsilon"]
            r = self._distances(positions, pairs, space)
            s6 = (s / r) ** 6
            total = total + jnp.sum(4.0 * e * s6 * (s6 - 1.0) + k * qq / r)
        if long_range:
            total = total + self._long_range(positions, params, space.box)
        return total

    def _long_range(self, positions, params, box):
        """Reciprocal, self and neutralizing energies (Ewald methods) and the dispersion
        correction (periodic): the terms that depend on the box beyond the pair distances."""
        total = jnp.zeros((), positions.dtype)
        q = self.particle_params(params)["charge"]
        if self.ewald:
            from . import ewald

            if self.method == "PME":
                total = total + ewald.pme_reciprocal_energy(positions, q, box, self.ewald_alpha,
                                                            tuple(self.pme_grid))
            else:
                total = total + ewald.ewald_reciprocal_energy(positions, q, box, self.ewald_alpha,
                                                              tuple(self.ewald_kmax))
            total = total + ewald.ewald_self_energy(q, self.ewald_alpha)
            total = total + ewald.neutralizing_energy(q, box, self.ewald_alpha)
        if self.dispersion_correction and self.space.periodic:
            total = total + self._dispersion(params, self.box_space(box).volume)
        return total

    def energy_virial(self, positions, params, aux=None, box=None):
        """Energy (kJ/mol) and virial (3, 3) kJ/mol. With PME the long-range terms' virial is
        closed-form (:func:`~workbench.potentials.ewald.pme_reciprocal_energy_virial`; the
        self energy has none, and the neutralizing and dispersion terms, ~1/V, have E times the
        identity); only the explicit pairs are strain-differentiated. Autodiff of the
        reciprocal sum's strain compiled a second backward pass through the grid into every
        chunk (measured 1.3 s of the solvated dipeptide's chunk compile)."""
        if self.method != "PME":
            return super().energy_virial(positions, params, aux, box)
        from . import ewald

        space = self.box_space(box)
        diagonal = self.space.kind == "periodic"
        e_pair, w_pair = self._pair_virial(positions, params, aux, space, diagonal)
        e_near, w_near = strain_virial(
            lambda r, b: self._explicit_energy(r, params, self.box_space(b), long_range=False),
            positions, space.box, diagonal_only=diagonal)
        q = self.particle_params(params)["charge"]
        e_rec, w_rec = ewald.pme_reciprocal_energy_virial(positions, q, space.box,
                                                          self.ewald_alpha, tuple(self.pme_grid))
        e_volume = ewald.neutralizing_energy(q, space.box, self.ewald_alpha)
        if self.dispersion_correction:
            e_volume = e_volume + self._dispersion(params, space.volume)
        w_long = w_rec + e_volume * jnp.eye(3, dtype=w_rec.dtype)
        if diagonal:
            w_long = jnp.diag(jnp.diagonal(w_long))
        energy = e_pair + e_near + e_rec + e_volume + ewald.ewald_self_energy(q, self.ewald_alpha)
        return energy, w_pair + w_near + w_long

    def _dispersion(self, params, volume):
        """OpenMM's long-range dispersion correction 8 pi N^2/V <eps (sigma^12/(9 rc^9) -
        sigma^6/(3 rc^3)) + switch part> (averaged over the N(N+1)/2 pairs incl. self pairs),
        from the LJ type counts; the switching region is integrated by Gauss-Legendre."""
        counts = jnp.asarray(np.bincount(self.lj_types, minlength=len(self.lj_type_names)),
                             params["sigma"].dtype)
        s = 0.5 * (params["sigma"][:, None] + params["sigma"][None, :])
        e = sqrt0(params["epsilon"])[:, None] * sqrt0(params["epsilon"])[None, :]
        rc = float(self.cutoff)
        s6 = s**6
        f = e * (s6 * s6 / (9.0 * rc**9) - s6 / (3.0 * rc**3))
        if self.switch_distance is not None:
            rs = float(self.switch_distance)
            x, w = _QUADRATURE
            r = 0.5 * (rc - rs) * x + 0.5 * (rc + rs)
            t = (r - rs) / (rc - rs)
            one_minus_s = -(t**3) * (-10.0 + t * (15.0 - 6.0 * t))
            # quadrature nodes along a last axis, after the (types, types) pair axes
            r, one_minus_s, w = (np.reshape(a, (1, 1, -1)) for a in (r, one_minus_s, w))
            lj = (s6[..., None] ** 2 / r**12 - s6[..., None] / r**6) * r**2 * one_minus_s
            f = f + e * 0.5 * (rc - rs) * jnp.sum(jnp.asarray(w) * lj, -1)
        pair_sum = 0.5 * (counts @ f @ counts + jnp.sum(counts * jnp.diagonal(f)))
        n = float(self.n_particles)
        return 8.0 * np.pi * n * n * pair_sum / (n * (n + 1) / 2.0) / volume

    # ------------------------------------------------------------------ contract
