"""Excluded pairs masked inside the pair loop, by per-particle bit masks over index offsets.

The pair loop runs over the neighbor list as built, which knows nothing of exclusions (the list
is shared by every term, and GB terms need the excluded pairs). A term with exclusions marks
them per particle instead: bit ``d - 1`` of particle i's "up" mask is set when (i, i + d) is
excluded, bit ``d - 1`` of its "down" mask when (i, i - d) is, for offsets d up to 32 w (w <= 2
words of 32 bits each way). In the loop a pair (i, j) is excluded when the bit for j - i is set in
i's masks: one gather of j's particle index per pair, a few integer operations, no per-pair
table, correct across list rebuilds and the list's spatial sorting. Bonded exclusions are close
in index (1-2, 1-3 and 1-4 pairs of a residue and its neighbours), so nearly all are covered;
the rest (disulfide bridges, unusual atom orders) are returned as ``far`` pairs for the term to
subtract after the loop.

Masking rather than subtracting is what keeps single precision accurate: an excluded 1-2 pair
such as C-H carries ~1e5 kJ/mol of r^-12 energy and ~1e7 kJ/mol/nm of force (charmm36's NBFIX
pairs more), which a subtraction after the loop must cancel to float32's 1e-7 relative (measured against
float64: up to 13.9 kJ/mol/nm of error on vacuum alanine dipeptide, 1.4 on the solvated one).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["MAX_WORDS", "ExclusionMasks", "build", "excluded", "particle_ids", "unique_pairs"]

MAX_WORDS = 2
"""Words of 32 bits per direction: offsets up to 64 are masked in the loop."""


@dataclass(frozen=True)
class ExclusionMasks:
    """masks: (N, 2, w) uint32, [:, 0] for partners above a particle (j > i), [:, 1] for those
    below; far: (F, 2) excluded pairs i < j farther apart than 32 w in index."""

    masks: np.ndarray
    far: np.ndarray

    @property
    def words(self) -> int:
        return self.masks.shape[-1]


def unique_pairs(exclusions) -> np.ndarray:
    """(E, 2) int32 pairs i < j, sorted and without repeats or self pairs."""
    pairs = np.asarray(exclusions, np.int64).reshape(-1, 2)
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1)
    return np.unique(pairs, axis=0).astype(np.int32).reshape(-1, 2)


def build(exclusions, n: int) -> ExclusionMasks | None:
    """The masks of ``exclusions`` (E, 2) over ``n`` particles, or None when there are none."""
    pairs = unique_pairs(exclusions)
    if not len(pairs):
        return None
    offset = pairs[:, 1] - pairs[:, 0]
    words = min(MAX_WORDS, (int(offset.max()) - 1) // 32 + 1)
    near = offset <= 32 * words
    masks = np.zeros((n, 2, words), np.uint32)
    i, j, k = pairs[near, 0], pairs[near, 1], offset[near] - 1
    bit = np.uint32(1) << (k % 32).astype(np.uint32)
    np.bitwise_or.at(masks, (i, 0, k // 32), bit)
    np.bitwise_or.at(masks, (j, 1, k // 32), bit)
    return ExclusionMasks(masks, pairs[~near])


def particle_ids(n: int, dtype) -> Array:
    """The particle indices (N,) as ``dtype``: a float dtype (exact below 2^24 in float32) lets
    the pair loop gather them in one row with the coordinates."""
    return jnp.arange(n, dtype=dtype)


def excluded(id_i: Array, id_j: Array, mask_i: Array) -> Array:
    """Whether pairs are excluded: particle indices id_i (B, 1) and id_j (B, K) (integers, or
    whole numbers in a float dtype), the masks of the block's particles mask_i (B, 1, 2, w).
    Returns (B, K) bool."""
    d = id_j - id_i
    a = jnp.abs(d)
    k = jnp.maximum(a - 1, 0).astype(jnp.int32)
    words = mask_i.shape[-1]
    up, down = mask_i[..., 0, :], mask_i[..., 1, :]
    word = jnp.where(d > 0, up[..., 0], down[..., 0])
    if words == 2:
        high = k >= 32
        word = jnp.where(high, jnp.where(d > 0, up[..., 1], down[..., 1]), word)
    bit = (word >> (k % 32).astype(jnp.uint32)) & jnp.uint32(1)
    return (a >= 1) & (a <= 32 * words) & (bit == 1)
