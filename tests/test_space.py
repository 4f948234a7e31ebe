"""Boundary conditions: minimum image against brute force, wrapping, volumes, input validation.

References are independent of :mod:`workbench.space`: explicit loops over periodic images and
perpendicular widths from the inverse box matrix. Lengths in arbitrary units (nm or sigma).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from workbench import space

BOX_ORTHO = np.diag([3.0, 4.0, 5.0])
# Reduced OpenMM form: |bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2, strongly skewed.
BOX_TRI = np.array([[3.0, 0.0, 0.0], [1.2, 3.2, 0.0], [-1.1, 1.4, 3.5]])


def _widths(box: np.ndarray) -> np.ndarray:
    """Perpendicular widths (3,) of the cell with rows ``box``: 1 / |column i of box^-1|."""
    return 1.0 / np.linalg.norm(np.linalg.inv(box), axis=0)


def _brute_min_image(d: np.ndarray, box: np.ndarray, reach: int = 2) -> np.ndarray:
    """Shortest image of each displacement (M, 3) over all lattice shifts n in [-reach, reach]^3
    (reach=1 is the 27 neighbouring images)."""
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), float) @ box
    cand = d[:, None, :] + shifts[None, :, :]  # (M, S, 3)
    best = np.argmin(np.sum(cand * cand, axis=-1), axis=1)
    return cand[np.arange(len(d)), best]


def _random_in_cell(rng: np.random.Generator, box: np.ndarray, n: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, (n, 3)) @ box


@pytest.mark.parametrize(
    "make, box, reach",
    [
        (lambda: space.periodic([3.0, 4.0, 5.0]), BOX_ORTHO, 1),
        (lambda: space.triclinic(BOX_TRI), BOX_TRI, 2),
    ],
    ids=["periodic", "triclinic"],
)
def test_minimum_image_equals_brute_force(make, box, reach):
    """Below half the smallest perpendicular width the minimum image is unique and must be found.
    (Orthorhombic: the 27 neighbouring images suffice; triclinic: 125 images, a superset.)"""
    sp = make()
    rng = np.random.default_rng(0)
    ri = _random_in_cell(rng, box, 4000)
    rj = _random_in_cell(rng, box, 4000)
    ref = _brute_min_image(ri - rj, box, reach)
    got = np.asarray(sp.displacement(jnp.asarray(ri), jnp.asarray(rj)))
    half = 0.5 * _widths(box).min()
    close = np.linalg.norm(ref, axis=1) < half
    assert close.sum() > 500  # the test covers many pairs
    np.testing.assert_allclose(got[close], ref[close], atol=1e-12)
    # Beyond that range the result must still be a lattice image of ri - rj.
    n = np.linalg.solve(box.T, (got - (ri - rj)).T).T
    np.testing.assert_allclose(n, np.round(n), atol=1e-9)


@pytest.mark.parametrize(
    "make, box",
    [
        (lambda: space.periodic([3.0, 4.0, 5.0]), BOX_ORTHO),
        (lambda: space.triclinic(BOX_TRI), BOX_TRI),
    ],
    ids=["periodic", "triclinic"],
)
def test_displacement_is_periodic_in_unwrapped_coordinates(make, box):
    """Shifting either particle by any integer combination of box vectors changes nothing."""
    sp = make()
    rng = np.random.default_rng(1)
    ri = _random_in_cell(rng, box, 500)
    rj = _random_in_cell(rng, box, 500)
    n = rng.integers(-4, 5, (500, 3)).astype(float)
    base = np.asarray(sp.displacement(jnp.asarray(ri), jnp.asarray(rj)))
    moved = np.asarray(sp.displacement(jnp.asarray(ri + n @ box), jnp.asarray(rj)))
    np.testing.assert_allclose(moved, base, atol=1e-10)


def test_free_displacement_is_plain_difference():
    sp = space.free()
    rng = np.random.default_rng(2)
    ri, rj = rng.normal(0, 10, (50, 3)), rng.normal(0, 10, (50, 3))
    np.testing.assert_array_equal(np.asarray(sp.displacement(ri, rj)), ri - rj)
    np.testing.assert_array_equal(np.asarray(sp.wrap(jnp.asarray(ri))), ri)
    assert np.isinf(float(sp.volume))


@pytest.mark.parametrize(
    "make, box",
    [
        (lambda: space.periodic([3.0, 4.0, 5.0]), BOX_ORTHO),
        (lambda: space.triclinic(BOX_TRI), BOX_TRI),
    ],
    ids=["periodic", "triclinic"],
)
def test_wrap_puts_positions_in_cell_and_preserves_displacements(make, box):
    sp = make()
    rng = np.random.default_rng(3)
    r = rng.uniform(-20.0, 20.0, (1000, 3))
    w = np.asarray(sp.wrap(jnp.asarray(r)))
    s = np.linalg.solve(box.T, w.T).T  # fractional coordinates of the wrapped positions
    assert np.all(s >= -1e-12) and np.all(s < 1.0 + 1e-12)
    # wrap moves each position by a lattice vector
    n = np.linalg.solve(box.T, (w - r).T).T
    np.testing.assert_allclose(n, np.round(n), atol=1e-9)
    # minimum-image displacements are unchanged (compare against brute force on wrapped copies)
    i, j = rng.integers(0, 1000, (2, 400))
    before = np.asarray(sp.displacement(jnp.asarray(r[i]), jnp.asarray(r[j])))
    after = np.asarray(sp.displacement(jnp.asarray(w[i]), jnp.asarray(w[j])))
    np.testing.assert_allclose(after, before, atol=1e-9)
    # wrapping twice is idempotent
    np.testing.assert_allclose(np.asarray(sp.wrap(jnp.asarray(w))), w, atol=1e-12)


def test_volume_and_perpendicular_widths():
    assert float(space.periodic([3.0, 4.0, 5.0]).volume) == pytest.approx(60.0, rel=1e-14)
    tri = space.triclinic(BOX_TRI)
    assert float(tri.volume) == pytest.approx(abs(np.linalg.det(BOX_TRI)), rel=1e-14)
    np.testing.assert_allclose(tri.perpendicular_widths(), _widths(BOX_TRI), rtol=1e-12)
    np.testing.assert_allclose(
        space.periodic([3.0, 4.0, 5.0]).perpendicular_widths(), [3.0, 4.0, 5.0], rtol=1e-14
    )
    # a scalar gives a cube
    np.testing.assert_allclose(np.asarray(space.periodic(2.5).box), 2.5 * np.eye(3))


@pytest.mark.parametrize(
    "lengths", [0.0, -1.0, [1.0, 0.0, 2.0], [1.0, -2.0, 3.0], [1.0, np.nan, 1.0], np.inf]
)
def test_periodic_rejects_non_positive_or_non_finite_lengths(lengths):
    with pytest.raises(ValueError, match="positive"):
        space.periodic(lengths)


@pytest.mark.parametrize("lengths", [[1.0, 2.0], np.ones((3, 3)), np.ones(4)])
def test_periodic_rejects_wrong_shape_with_clear_message(lengths):
    """The message must say that the box lengths have the wrong shape."""
    with pytest.raises(ValueError, match="lengths"):
        space.periodic(lengths)


def test_triclinic_rejects_bad_boxes():
    with pytest.raises(ValueError, match="shape"):
        space.triclinic(np.eye(3)[:2])
    with pytest.raises(ValueError, match="shape"):
        space.triclinic(np.ones(9))
    upper = BOX_TRI.copy()
    upper[0, 1] = 0.3
    with pytest.raises(ValueError, match="lower-triangular"):
        space.triclinic(upper)
    upper = BOX_TRI.copy()
    upper[1, 2] = 0.1
    with pytest.raises(ValueError, match="lower-triangular"):
        space.triclinic(upper)
    for row, col, value in [(1, 0, 1.6), (2, 0, -1.6), (2, 1, 1.7)]:
        unreduced = BOX_TRI.copy()
        unreduced[row, col] = value
        with pytest.raises(ValueError, match="reduced"):
            space.triclinic(unreduced)
    flat = BOX_TRI.copy()
    flat[2, 2] = 0.0
    with pytest.raises(ValueError, match="positive"):
        space.triclinic(flat)
    bad = BOX_TRI.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        space.triclinic(bad)
    with pytest.raises(ValueError, match="dimension"):
        space.free(2)


def test_check_cutoff():
    cube = space.periodic(4.0)
    cube.check_cutoff(1.99)
    with pytest.raises(ValueError, match="box"):
        cube.check_cutoff(2.01)
    # triclinic: the limit is half the smallest perpendicular width, not half the diagonal
    tri = space.triclinic(BOX_TRI)
    half_width = 0.5 * _widths(BOX_TRI).min()
    assert half_width < 0.5 * np.diag(BOX_TRI).min()
    tri.check_cutoff(0.999 * half_width)
    between = 0.5 * (half_width + 0.5 * np.diag(BOX_TRI).min())
    with pytest.raises(ValueError, match="box"):
        tri.check_cutoff(between)
    with pytest.raises(ValueError, match="cutoff \\+ skin"):
        tri.check_cutoff(between, "cutoff + skin")
    space.free().check_cutoff(1e6)  # no box, no limit


@pytest.mark.parametrize("length", [4.0, 5.0, 7.5, 5.04])
def test_check_cutoff_accepts_exactly_half_the_box(length):
    """The documented rule is 'raise if the cutoff exceeds half the box': a cutoff of exactly
    L/2 (a common choice, e.g. rc = 2.5 in a box of 5) must pass, whatever the rounding of the
    box determinant."""
    space.periodic(length).check_cutoff(length / 2)
    space.triclinic(np.diag([length, length + 1.0, length + 2.0])).check_cutoff(length / 2)
