"""Excluded pairs masked in the pair loop (workbench.potentials.exclusions): the masks against
brute-force set membership, Nonbonded with near and far exclusions against a direct double sum,
and the single-precision accuracy the masking exists for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from workbench import space as spaces
from workbench import units
from workbench.forcefield import openmm as wfo
from workbench.potentials import exclusions as em
from workbench.potentials.nonbonded import Nonbonded
from workbench.systems import data_file


def _random_exclusions(rng, n):
    """Pairs at offsets 1-3 (bonded-like), 30-40 (across the first word), 60-64 (the last
    masked offsets) and beyond 64 (far), with duplicates and both orders."""
    pairs = []
    for lo, hi, count in ((1, 4, 60), (30, 41, 20), (60, 65, 10), (65, 90, 8)):
        i = rng.integers(0, n - hi, count)
        pairs += [(a, a + d) for a, d in zip(i, rng.integers(lo, hi, count))]
    pairs += [(j, i) for i, j in pairs[:5]] + pairs[:3]
    return np.asarray(pairs)


def test_masks_equal_set_membership():
    rng = np.random.default_rng(0)
    n = 120
    excl = _random_exclusions(rng, n)
    m = em.build(excl, n)
    assert m.words == 2
    truth = {(min(i, j), max(i, j)) for i, j in excl}
    far = {tuple(p) for p in m.far}
    assert far == {p for p in truth if p[1] - p[0] > 64} and far
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    got = np.asarray(em.excluded(jnp.asarray(i[:, :1], jnp.int32), jnp.asarray(j, jnp.int32),
                                 jnp.asarray(m.masks)[:, None]))
    want = np.zeros((n, n), bool)
    for a, b in truth - far:
        want[a, b] = want[b, a] = True
    np.testing.assert_array_equal(got, want)
    assert em.build(np.zeros((0, 2), int), n) is None


def test_nonbonded_with_near_and_far_exclusions_equals_a_direct_sum(x64):
    """100 charged LJ particles, no cutoff; exclusions masked in the loop and subtracted
    (offsets > 64), against a NumPy double sum over the pairs that are not excluded."""
    rng = np.random.default_rng(1)
    n = 100
    pos = rng.uniform(0, 2.5, (n, 3))
    qt, lt = rng.integers(0, 4, n), rng.integers(0, 3, n)
    excl = _random_exclusions(rng, n)
    term = Nonbonded(spaces.free(), "NoCutoff", qt, lt, exclusions=excl)
    assert len(term._masks.far) > 0
    charge, sigma, eps = [0.5, -0.4, 0.2, -0.3], [0.30, 0.25, 0.35], [0.5, 0.2, 0.8]
    params = term.init_params(charge, sigma, eps)
    ev = term.energy_forces(jnp.asarray(pos), params)
    skip = {(min(i, j), max(i, j)) for i, j in excl}
    q, s, e = np.asarray(charge)[qt], np.asarray(sigma)[lt], np.asarray(eps)[lt]
    energy, forces = 0.0, np.zeros((n, 3))
    for i in range(n):
        for j in range(i + 1, n):
            if (i, j) in skip:
                continue
            d = pos[i] - pos[j]
            r = np.linalg.norm(d)
            sr6 = (0.5 * (s[i] + s[j]) / r) ** 6
            ee = np.sqrt(e[i] * e[j])
            coul = units.ONE_4PI_EPS0 * q[i] * q[j] / r
            energy += 4 * ee * sr6 * (sr6 - 1) + coul
            f = (24 * ee * sr6 * (2 * sr6 - 1) / r + coul / r) * d / r
            forces[i] += f
            forces[j] -= f
    np.testing.assert_allclose(float(ev.energy), energy, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ev.forces), forces, rtol=1e-9, atol=1e-8)


def test_single_precision_forces_of_a_peptide_are_accurate():
    """ACE-ALA-NME in vacuum: float32 forces within 0.1 kJ/mol/nm of float64 ones. Subtracting
    the excluded pairs after the loop instead left errors of 13.9 kJ/mol/nm: each excluded C-H
    pair carries ~1e7 kJ/mol/nm of r^-12 force to cancel."""
    d = wfo.load(data_file("alanine-dipeptide-vacuum.pdb"), ["amber14-all.xml"])
    pot = d.potential

    def forces(dtype):
        p = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
            d.params)
        with jax.enable_x64(dtype == jnp.float64):
            return np.asarray(pot.energy_forces(jnp.asarray(d.positions, dtype), p).forces)

    f64, f32 = forces(jnp.float64), forces(jnp.float32)
    assert np.abs(f64).max() > 10.0
    assert np.abs(f32 - f64).max() < 0.1, np.abs(f32 - f64).max()
