"""Training data for the learned potentials: configurations sampled with the workbench's own
MD, labelled with DFT energies and forces from pyscf.

    python tools/make_ml_data.py                       # both molecules into data/ml/
    python tools/make_ml_data.py --molecule ethanol    # one of them
    python tools/make_ml_data.py --frames 20 --out DIR # a small set elsewhere (the tests do this)

Sampling: CHARMM36 (OpenMM's ``charmm36.xml``: ethanol ETOH, flexible TIP3P water), no cutoff,
Langevin (BAOAB) with a 0.5 fs step and friction 1/ps, a frame every 50 fs after 5 ps of
equilibration; ethanol at 500 K (as MD17), the water trimer at 350 K inside a flat-bottom
restraint on the oxygens (k = 1000 kJ/mol/nm^2 beyond 0.45 nm from their centroid) so the
cluster does not evaporate. Seeds are fixed (``SEEDS``); the MD is deterministic on one machine.

Labels: PBE/def2-SVP (pyscf ``dft.RKS``, xc "pbe", default grids level 3, SCF tolerance 1e-10
Eh, analytic gradients), the level of the rMD17 benchmark's functional with a smaller basis.
Each labelled frame is appended to ``<molecule>.npz`` as soon as it is done (the file is
rewritten atomically), so an interrupted run keeps its frames and a rerun resumes where it
stopped; the same frames come out either way.

File format (read it with :func:`workbench.ml.data.load`): npz with ``positions`` (F, N, 3) nm,
``energies`` (F,) kJ/mol, ``forces`` (F, N, 3) kJ/mol/nm, ``atomic_numbers`` (N,) and ``meta``
(a JSON string: level of theory, units, seeds, sampling protocol, program versions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.ml.molecules import CHARMM, topology  # noqa: E402
from workbench.units import BOHR_NM, HARTREE_KJ_MOL  # noqa: E402

SEEDS = {"ethanol": 2026, "water3": 2027}
FRAMES = {"ethanol": 250, "water3": 150}  # frames in data/ml/ (DFT: 5-10 s each on 2 cores)
TEMPERATURE = {"ethanol": 500.0, "water3": 350.0}  # K
DT, FRICTION, EVERY, EQUILIBRATION = 0.0005, 1.0, 100, 10_000  # ps, 1/ps, steps, steps
RESTRAINT_K, RESTRAINT_R0 = 1000.0, 0.45  # kJ/mol/nm^2, nm (water cluster only)
THEORY = dict(program="pyscf", method="RKS", xc="pbe", basis="def2-svp", grids_level=3,
              conv_tol=1e-10)

def sample(molecule: str, n_frames: int):
    """(F, N, 3) nm configurations and the atomic numbers (N,) from Langevin MD."""
    import jax.numpy as jnp

    from workbench import Simulation
    from workbench.forcefield.openmm import from_topology
    from workbench.potentials.base import FunctionPotential, Sum
    from workbench.units import BOLTZMANN

    top, pos = topology(molecule)
    ff = from_topology(top, pos, CHARMM, rigid_water=False, name=molecule)
    system = ff
    if molecule != "ethanol":
        oxygens = np.array([a.index for a in top.atoms() if a.element.symbol == "O"])

        def flat_bottom(r, p):
            o = r[oxygens]
            d = jnp.linalg.norm(o - o.mean(axis=0), axis=1)
            return 0.5 * p["k"] * jnp.sum(jnp.where(d > p["r0"], d - p["r0"], 0.0) ** 2)

        terms = dict(ff.potential.terms, restraint=FunctionPotential(flat_bottom))
        params = dict(ff.params, restraint=dict(k=RESTRAINT_K, r0=RESTRAINT_R0))
        system = ff.replace(potential=Sum(terms), params=params)
    kT = BOLTZMANN * TEMPERATURE[molecule]
    sim = Simulation(system, "langevin", dict(dt=DT, kT=kT, gamma=FRICTION),
                     seed=SEEDS[molecule], report_interval=EVERY, frames_per_chunk=10)
    sim.run(EQUILIBRATION, progress=False)
    frames = []
    while len(frames) < n_frames:
        frames.extend(sim.advance().positions)
    numbers = np.array([a.element.atomic_number for a in top.atoms()])
    return np.asarray(frames[:n_frames], float), numbers


def label(positions_nm: np.ndarray, numbers: np.ndarray, guess=None):
    """PBE/def2-SVP energy (kJ/mol), forces (N, 3) kJ/mol/nm and the density matrix."""
    from pyscf import dft, gto

    mol = gto.M(atom=[(int(z), tuple(x)) for z, x in zip(numbers, positions_nm / BOHR_NM)],
                unit="Bohr", basis=THEORY["basis"], verbose=0)
    mf = dft.RKS(mol)
    mf.xc, mf.grids.level, mf.conv_tol = THEORY["xc"], THEORY["grids_level"], THEORY["conv_tol"]
    e = mf.kernel(dm0=guess)
    if not mf.converged:
        raise RuntimeError("SCF did not converge")
    g = mf.nuc_grad_method().kernel()  # Eh/bohr
    return e * HARTREE_KJ_MOL, -g * HARTREE_KJ_MOL / BOHR_NM, mf.make_rdm1()


def _write(path: Path, data: dict, meta: dict) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data, meta=json.dumps(meta, indent=1))
    os.replace(tmp, path)


def make(molecule: str, n_frames: int, out: Path, progress: bool = True) -> Path:
    """Sample and label ``n_frames`` frames of ``molecule`` into ``out/<molecule>.npz``,
    resuming from the frames already there."""
    import jax
    import openmm
    import pyscf

    jax.config.update("jax_enable_x64", True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{molecule}.npz"
    positions, numbers = sample(molecule, n_frames)
    meta = dict(molecule=molecule, theory=THEORY, units=dict(
        positions="nm", energies="kJ/mol", forces="kJ/mol/nm"), sampling=dict(
        forcefield="charmm36.xml + charmm36/water.xml", integrator="langevin (BAOAB)", dt_ps=DT, friction_per_ps=FRICTION,
        temperature_K=TEMPERATURE[molecule], seed=SEEDS[molecule], every_steps=EVERY,
        equilibration_steps=EQUILIBRATION,
        restraint=None if molecule == "ethanol" else dict(
            kind="flat-bottom on oxygens from their centroid", k_kJ_mol_nm2=RESTRAINT_K,
            r0_nm=RESTRAINT_R0)),
        versions=dict(pyscf=pyscf.__version__, openmm=openmm.__version__, jax=jax.__version__),
        script="tools/make_ml_data.py")
    done_e, done_f = [], []
    if path.exists():
        old = np.load(path)
        k = min(len(old["energies"]), n_frames)
        if not np.allclose(old["positions"][:k], positions[:k], atol=1e-6):
            raise RuntimeError(f"{path} holds different configurations (another protocol?): "
                               "move it away to start again")
        done_e, done_f = list(old["energies"][:k]), list(old["forces"][:k])
    guess, t0 = None, time.time()
    for i in range(len(done_e), n_frames):
        e, f, guess = label(positions[i], numbers, guess)
        done_e.append(e)
        done_f.append(f)
        _write(path, dict(positions=positions[: i + 1], energies=np.array(done_e),
                          forces=np.array(done_f), atomic_numbers=numbers), meta)
        if progress:
            print(f"{molecule}: {i + 1}/{n_frames} frames ({time.time() - t0:.0f} s)", flush=True)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecule", choices=sorted(SEEDS), action="append")
    ap.add_argument("--frames", type=int, help="frames per molecule (default: FRAMES)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "ml")
    args = ap.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        ap.error("--frames must be at least 1")
    for m in args.molecule or sorted(SEEDS):
        print(make(m, args.frames or FRAMES[m], args.out))


if __name__ == "__main__":
    main()
