"""Peer engines for ``workbench bench lj``: jax-md and OpenMM's CPU platform.

Both run the system of :mod:`workbench_bench.lj` from the same positions and velocities, with the
same engine interface as :class:`workbench_bench.lj.WorkbenchEngine`: ``Engine(case, chunk,
variant)`` builds everything (neighbor list allocated), ``advance(n_chunks)`` runs
``n_chunks * chunk`` steps and blocks, ``total_energy()``, ``initial_potential``, ``builds``
(neighbor-list builds so far, or None when the engine does not say), ``regrowths``.

The peer packages are imported lazily, inside the classes; a missing one raises
:class:`PeerUnavailable` (an ImportError) that says how to install it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

from .ljcase import CUTOFF, DT, MASS, SKIN, TEMPERATURE, LJCase, probe_chunk, start

__all__ = [
    "JAXMD_FORMATS", "JaxMDEngine", "OpenMMEngine", "PeerUnavailable", "engine_class",
    "jaxmd_fastest",
]

INSTALL_HINT = 'install the benchmark peers with: pip install -e ".[bench]"'
JAXMD_FORMATS = ("Dense", "Sparse", "OrderedSparse")


class PeerUnavailable(ImportError):
    """A peer package is not installed (the message says how to install it)."""


def _require(module: str, peer: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"{peer} is not installed ({exc}); {INSTALL_HINT}") from exc


# ------------------------------------------------------------------------------ jax-md
def jax_md_lj(box_length: float, fmt=None):
    """jax-md's pieces for the plain-cut LJ fluid (cutoff 2.5, skin 0.3, sigma = epsilon = 1)
    in a cubic box: (neighbor_fn, energy_fn(R, neighbor, **params), shift). The cut is the
    safe-where form: padded pairs (dr = 0) would otherwise make gradients NaN."""
    import jax.numpy as jnp
    from jax_md import energy, partition, smap, space

    box = jnp.asarray(box_length)
    displacement, shift = space.periodic(box)

    def lj_cut(dr, sigma=1.0, epsilon=1.0, **unused):
        inside = (dr > 0.1) & (dr < CUTOFF)
        safe = jnp.where(inside, dr, 1.0)
        return jnp.where(inside, energy.lennard_jones(safe, sigma, epsilon), 0.0)

    neighbor_fn = partition.neighbor_list(
        displacement, box, r_cutoff=CUTOFF, dr_threshold=SKIN,
        format=fmt if fmt is not None else partition.NeighborListFormat.Dense)
    energy_fn = smap.pair_neighbor_list(
        lj_cut, space.canonicalize_displacement_or_metric(displacement), sigma=1.0, epsilon=1.0)
    return neighbor_fn, energy_fn, shift


class JaxMDEngine:
    """jax-md 0.2.x: ``space.periodic``, ``partition.neighbor_list`` (r_cutoff 2.5,
    dr_threshold = skin 0.3, cell list), a plain-cut LJ lifted by ``smap.pair_neighbor_list``
    (the pair function of ``energy.lennard_jones_neighbor_list`` without its smooth switch from
    r_onset = 2.0, so the physics matches in.lj), ``simulate.nve``; a chunk is the documented
    ``update -> step`` loop under ``lax.fori_loop``, with the overflow check after each chunk
    (on overflow: reallocate with more capacity and redo the chunk). ``variant``: neighbor-list format, Dense / Sparse / OrderedSparse."""

    name = "jax-md"

    def __init__(self, case: LJCase, chunk: int, variant: str | None = None):
        jax_md = _require("jax_md", "jax-md")
        import jax
        import jax.numpy as jnp
        from jax_md import partition, quantity, simulate

        # jax-md asks for float64 sums internally; under float32 JAX warns on every trace.
        warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
        fmt_name = variant or "Dense"
        if fmt_name not in JAXMD_FORMATS:
            raise ValueError(f"jax-md format must be one of {JAXMD_FORMATS}, got {fmt_name!r}")
        fmt = getattr(partition.NeighborListFormat, fmt_name)
        self.variant, self.extra = fmt_name, {"format": fmt_name,
                                              "jax_md_version": _version("jax-md", jax_md)}
        self.neighbor_fn, self.energy_fn, shift = jax_md_lj(case.box_length, fmt)
        init_fn, apply_fn = simulate.nve(self.energy_fn, shift, dt=DT)
        positions = jnp.asarray(case.positions)
        self.nbrs = self.neighbor_fn.allocate(positions)
        self.state = init_fn(jax.random.PRNGKey(case.seed), positions, TEMPERATURE, mass=MASS,
                             momenta=jnp.asarray(MASS * case.velocities, positions.dtype),
                             neighbor=self.nbrs)
        self.initial_potential = float(self.energy_fn(positions, neighbor=self.nbrs))
        self._kinetic = jax.jit(lambda s: quantity.kinetic_energy(momentum=s.momentum,
                                                                  mass=s.mass))
        self._energy = jax.jit(lambda r, nbrs: self.energy_fn(r, neighbor=nbrs))
        self._builds = 1
        self.regrowths = 0
        self._extra = 0
        self._sparse = fmt_name != "Dense"

        def body(i, carry):
            state, nbrs, rebuilt = carry
            new = nbrs.update(state.position)
            rebuilt = rebuilt + jnp.any(new.reference_position != nbrs.reference_position)
            return apply_fn(state, neighbor=new), new, rebuilt

        self._chunk = jax.jit(
            lambda state, nbrs: jax.lax.fori_loop(0, chunk, body, (state, nbrs, 0)))

    def advance(self, n_chunks: int) -> None:
        """Run ``n_chunks`` chunks; on neighbor overflow reallocate and redo the chunk."""
        done = 0
        while done < n_chunks:
            state, nbrs, rebuilt = self._chunk(self.state, self.nbrs)
            if bool(nbrs.did_buffer_overflow):
                # Reallocating at the chunk's start alone can give the same capacity again (a
                # lattice has fewer neighbors than the liquid it melts into): add headroom.
                if self.regrowths >= 20:
                    raise RuntimeError("jax-md neighbor list keeps overflowing after 20 regrowths")
                n = self.state.position.shape[0]
                per_atom = max(1, int(np.prod(self.nbrs.idx.shape)) // (2 * n if self._sparse
                                                                         else n))
                self._extra += max(4, per_atom // 4)
                self.nbrs = self.neighbor_fn.allocate(self.state.position,
                                                      extra_capacity=self._extra)
                self._builds += 1
                self.regrowths += 1
                continue
            self.state, self.nbrs = state, nbrs
            self._builds += int(rebuilt)
            done += 1

    def total_energy(self) -> float:
        """Kinetic + potential energy (epsilon) at the current state."""
        pe = self._energy(self.state.position, self.nbrs)
        return float(pe) + float(self._kinetic(self.state))

    @property
    def builds(self) -> int:
        return self._builds


def jaxmd_fastest(case: LJCase, chunk: int, fmt: str = "auto",
                  log: Callable[[str], None] = print):
    """Start jax-md in ``fmt`` (or, for "auto", in each format, keeping the one whose probe
    chunk is fastest). Returns (engine, setup_s, compile_s, probe_s), the engine two chunks
    in; ``engine.extra["format_trials"]`` holds each format's probe-chunk seconds."""
    formats = JAXMD_FORMATS if fmt == "auto" else (fmt,)
    best, trials = None, {}
    for name in formats:
        try:
            eng, setup_s, compile_s = start(JaxMDEngine, case, chunk, name)
            probe_s = probe_chunk(eng)
        except PeerUnavailable:
            raise
        except (RuntimeError, ValueError, TypeError, MemoryError) as exc:  # note it, try next
            log(f"[bench lj] jax-md format {name} failed: {type(exc).__name__}: {exc}")
            trials[name] = f"failed: {type(exc).__name__}: {exc}"
            continue
        trials[name] = probe_s
        log(f"[bench lj] jax-md format {name}: probe chunk {probe_s:.3f} s "
            f"(first chunk {compile_s:.2f} s)")
        if best is None or probe_s < best[3]:
            best = (eng, setup_s, compile_s, probe_s)
    if best is None:
        raise RuntimeError(f"jax-md ran in no neighbor-list format: {trials}")
    best[0].extra["format_trials"] = trials
    return best


# ------------------------------------------------------------------------------ OpenMM
class OpenMMEngine:
    """OpenMM, CPU platform (Threads = os.cpu_count()): NonbondedForce with zero charges,
    sigma = 1 nm, epsilon = 1 kJ/mol (reduced units read as molecular ones), CutoffPeriodic at
    2.5 nm, no switching, no dispersion correction, mass 1 amu, VerletIntegrator dt = 0.005 ps
    (leapfrog, the same trajectory as velocity Verlet). OpenMM keeps its own padded neighbor
    list and does not report rebuilds. A chunk is ``integrator.step(chunk)``. ``variant``: an
    optional thread count."""

    name = "openmm"

    def __init__(self, case: LJCase, chunk: int, variant: str | None = None):
        mm = _require("openmm", "OpenMM")
        threads = str(variant or os.cpu_count() or 1)
        system = mm.System()
        lo = case.box_length
        system.setDefaultPeriodicBoxVectors(mm.Vec3(lo, 0, 0), mm.Vec3(0, lo, 0),
                                            mm.Vec3(0, 0, lo))
        nb = mm.NonbondedForce()
        nb.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic)
        nb.setCutoffDistance(CUTOFF)
        nb.setUseSwitchingFunction(False)
        nb.setUseDispersionCorrection(False)
        for _ in range(case.n_atoms):
            system.addParticle(MASS)
            nb.addParticle(0.0, 1.0, 1.0)
        system.addForce(nb)
        self.integrator = mm.VerletIntegrator(DT)
        platform = mm.Platform.getPlatformByName("CPU")
        self.context = mm.Context(system, self.integrator, platform, {"Threads": threads})
        self.context.setPositions(np.asarray(case.positions))
        self.context.setVelocities(np.asarray(case.velocities))
        self.chunk = chunk
        self.variant = ""
        self.extra = {"threads": int(threads), "openmm_version": mm.__version__}
        self.initial_potential = self._energies()[0]
        self.regrowths = 0
        self.builds = None

    def _energies(self) -> tuple[float, float]:
        import openmm.unit as u

        st = self.context.getState(getEnergy=True)
        return (st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole))

    def advance(self, n_chunks: int) -> None:
        """Run ``n_chunks * chunk`` steps (one ``step`` call; the CPU platform is synchronous,
        the positions fetch makes sure every step is done)."""
        self.integrator.step(n_chunks * self.chunk)
        self.context.getState(getPositions=False)

    def total_energy(self) -> float:
        """Kinetic + potential energy (epsilon); the leapfrog kinetic energy is OpenMM's."""
        return float(sum(self._energies()))


def _version(dist: str, module) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return getattr(module, "__version__", None)


def engine_class(name: str) -> type:
    """Peer engine class by name ("jax-md" or "openmm"); checks that its package imports."""
    if name == "jax-md":
        _require("jax_md", "jax-md")
        return JaxMDEngine
    if name == "openmm":
        _require("openmm", "OpenMM")
        return OpenMMEngine
    raise ValueError(f"unknown peer {name!r}; known: jax-md, openmm")

