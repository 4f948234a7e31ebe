"""Observables: kinetic energy, temperature, pressure and stress, RDF, mean-square displacement.

Units: kJ/mol, nm, ps, amu; temperatures are returned as kT (kJ/mol) - divide by
:data:`workbench.units.BOLTZMANN` for kelvin (in reduced units kT is the temperature).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .dynamics.integrators import kinetic_energy
from .space import Space, box_volume

Array = jax.Array

__all__ = [
    "kinetic_energy",
    "kinetic_temperature",
    "kinetic_tensor",
    "pressure_tensor",
    "pressure",
    "radial_distribution",
    "pair_histogram",
    "rigid_groups",
    "group_pressure",
    "mean_square_displacement",
]


def kinetic_temperature(velocities: Array, masses: Array, dof: int) -> Array:
    """kT = 2 KE / dof (kJ/mol). Use the integrator's ``dof(N)`` (3N - 3 when the total
    momentum is conserved, 3N for Langevin)."""
    return 2.0 * kinetic_energy(velocities, masses) / dof


def kinetic_tensor(velocities: Array, masses: Array) -> Array:
    """sum_i m_i v_i (x) v_i, (3, 3) kJ/mol."""
    return jnp.einsum("n,na,nb->ab", masses, velocities, velocities)


def pressure_tensor(velocities: Array, masses: Array, virial: Array, volume) -> Array:
    """Pressure tensor (K + W) / V, (3, 3) kJ/mol/nm^3, from the kinetic tensor and the virial
    W = sum_pairs r_ij (x) f_ij (``PairPotential.virial``). Multiply by 16.6054 for bar."""
    return (kinetic_tensor(velocities, masses) + virial) / volume


def pressure(velocities: Array, masses: Array, virial: Array, volume, tail: Array = 0.0,
             dof: int | None = None) -> Array:
    """Scalar pressure (kJ/mol/nm^3): (2 KE + tr W) / (3 V) + tail.

    With ``dof`` given, the kinetic part uses the thermostat's temperature definition,
    N kT / V with kT = 2 KE / dof, which is the usual choice when dof = 3N - 3."""
    n = velocities.shape[0]
    ke2 = 2.0 * kinetic_energy(velocities, masses)
    kin = ke2 / 3.0 if dof is None else n * ke2 / dof
    return (kin + jnp.trace(virial) / 3.0) / volume + tail


def rigid_groups(constraints, n_atoms: int) -> np.ndarray:
    """Host side: (N,) group index of each atom, atoms joined by constraints (a rigid water, a
    methyl's C-H bonds) sharing a group, every other atom alone in its own. For
    :func:`group_pressure`."""
    from .dynamics.constraints import constraint_pairs

    parent = np.arange(n_atoms)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    pairs, _ = constraint_pairs(constraints)  # NumPy: concrete constraints
    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(a) for a in range(n_atoms)])
    return np.unique(roots, return_inverse=True)[1].astype(np.int32)


def group_pressure(positions: Array, velocities: Array, forces: Array, masses: Array,
                   groups: Array, n_groups: int, virial: Array, volume) -> Array:
    """Scalar pressure (kJ/mol/nm^3) from the motion of atom groups rather than atoms: the
    kinetic part from group centre-of-mass velocities and the virial W - sum_i (r_i - R_g(i))
    . F_i. Constraint forces act inside groups and drop out, so this is the right pressure for
    constrained systems (whose atomic virial lacks the constraint forces); it averages to the
    atomic pressure for unconstrained ones. ``virial``: the atomic virial (3, 3) kJ/mol;
    positions unwrapped (groups whole); groups: (N,) from :func:`rigid_groups`."""
    m = masses[:, None]
    mass_g = jax.ops.segment_sum(masses, groups, n_groups)[:, None]
    com = jax.ops.segment_sum(m * positions, groups, n_groups) / mass_g
    vcom = jax.ops.segment_sum(m * velocities, groups, n_groups) / mass_g
    kin = jnp.sum(mass_g * vcom * vcom)
    inner = jnp.sum((positions - com[groups]) * forces)
    return (kin + jnp.trace(virial) - inner) / (3.0 * volume)


def radial_distribution(space: Space, frames, r_max: float, n_bins: int = 100,
                        chunk: int = 1024, boxes=None):
    """g(r) averaged over frames, for one species. frames: (T, N, 3) or (N, 3) nm in a periodic
    space; boxes: each frame's box (T, 3, 3) nm (a :class:`~workbench.simulate.Chunk`'s
    ``boxes``; needed when the box changes, as under a barostat), default ``space``'s box for
    every frame. Each frame's distances and ideal-gas normalization use its own box. Returns
    (r bin centres (n_bins,), g (n_bins,)).

    Host driver over jitted pair histograms; memory is bounded by ``chunk`` rows at a time."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, N, 3) or (N, 3), got {frames.shape}")
    if not space.periodic:
        raise ValueError("radial_distribution needs a periodic space (it normalizes by volume)")
    if not (np.isfinite(r_max) and r_max > 0) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"need r_max > 0 and an integer n_bins >= 1, got {r_max}, {n_bins}")
    if boxes is None:
        boxes = np.broadcast_to(np.asarray(space.box, float), (len(frames), 3, 3))
    boxes = np.asarray(boxes, float)
    if boxes.shape != (len(frames), 3, 3):
        raise ValueError(f"boxes must have shape ({len(frames)}, 3, 3) (one per frame), got "
                         f"{boxes.shape}")
    n = frames.shape[1]
    edges = np.linspace(0.0, r_max, int(n_bins) + 1)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = np.zeros(int(n_bins))
    checked = set()
    for r, box in zip(frames, boxes):
        sp = space.with_box(jnp.asarray(box))
        key = box.tobytes()
        if key not in checked:
            sp.check_cutoff(r_max, "r_max")
            checked.add(key)
        r = jnp.asarray(r)
        counts = np.zeros(int(n_bins))
        for start in range(0, n, chunk):
            rows = jnp.arange(start, min(start + chunk, n))
            counts += np.asarray(_hist_rows(sp, r, rows, r_max, int(n_bins)))
        volume = abs(float(np.linalg.det(box)))
        g += counts / (shell * (n - 1) / volume * n)
    return 0.5 * (edges[1:] + edges[:-1]), g / len(frames)


def pair_histogram(space: Space, edges):
    """g(r) of one frame as a pure function: ``g(positions (N, 3), params=None, aux=None,
    box=None) -> (bins,)``, the pair-distance histogram on ``edges`` (nm, static) normalized
    by the ideal gas of the same density (one species). Hard bins: its average over frames is
    the RDF, and reweighting (:mod:`workbench.gradients.reweight`) differentiates that average
    without differentiating the histogram. All pairs (N^2 distances): for the few hundred atoms
    of a fitting run; use :func:`radial_distribution` for long trajectories."""
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be an increasing 1-D array of at least two bin edges")
    if not space.periodic:
        raise ValueError("pair_histogram needs a periodic space (it normalizes by volume)")
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)

    def g(positions, params=None, aux=None, box=None):
        n = positions.shape[0]
        b = space.box if box is None else box
        d = space.with_box(b).displacement(positions[:, None, :], positions[None, :, :])
        dist = jnp.sqrt(jnp.sum(d * d, -1) + jnp.eye(n, dtype=positions.dtype))  # no sqrt(0)
        idx = jnp.searchsorted(jnp.asarray(edges, positions.dtype), dist, side="right") - 1
        idx = jnp.where(jnp.eye(n, dtype=bool), -1, idx)
        counts = jnp.sum(idx[..., None] == jnp.arange(edges.size - 1)[None, None, :], axis=(0, 1))
        volume = box_volume(b)
        return counts / (jnp.asarray(shell, positions.dtype) * n * (n - 1) / volume)

    return g


@functools.partial(jax.jit, static_argnames=("n_bins",))
def _hist_rows(space, r, rows, r_max, n_bins):
    """Pair-distance histogram of atoms ``rows`` against all atoms (module-level and jitted once
    per shape: new frames, boxes or r_max reuse the compiled program)."""
    n = r.shape[0]
    d = space.displacement(r[rows][:, None, :], r[None, :, :])
    dist = jnp.sqrt(jnp.sum(d * d, -1))
    self_pair = rows[:, None] == jnp.arange(n)[None, :]
    dist = jnp.where(self_pair, 2.0 * r_max, dist)
    b = jnp.floor(dist / (r_max / n_bins)).astype(jnp.int32)
    return jnp.zeros(n_bins + 1, jnp.int32).at[jnp.clip(b, 0, n_bins)].add(1)[:n_bins]


def mean_square_displacement(frames, lags=None):
    """MSD (nm^2) of unwrapped positions ``frames`` (T, N, 3), averaged over atoms and time
    origins, for each lag in ``lags`` (frame counts; default 0..T-1). Returns (lags, msd)."""
    frames = np.asarray(frames, dtype=float)
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, N, 3), got {frames.shape}")
    t = frames.shape[0]
    lags = np.arange(t) if lags is None else np.asarray(lags, dtype=int)
    if np.any(lags < 0) or np.any(lags >= t):
        raise ValueError(f"lags must lie in [0, {t - 1}]")
    msd = np.array([np.mean(np.sum((frames[k:] - frames[: t - k]) ** 2, -1)) for k in lags])
    return lags, msd
