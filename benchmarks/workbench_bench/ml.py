"""Neural-potential benchmark (``workbench bench ml``): accuracy against a reference model and
throughput of MD and training.

* **accuracy**: the shipped ethanol models (``data/ml/ethanol-<arch>.npz``, trained by
  ``tools/train_ml_models.py``) on the held-out frames of their split, beside sGDML (the
  ``sgdml`` package, 0.4.10: a kernel method, independent of this code) trained on the same
  training frames, its kernel width chosen on the same validation frames. Optionally
  (``--learning-curve``) both at several training-set sizes, ours with ``--steps`` steps each.
* **md**: the NequIP-class model with the shipped hyperparameters (random weights: speed does
  not depend on them) on a periodic box of water (``--waters``, 64 = 192 atoms by default),
  float32, velocity Verlet chunks: atom-steps per second and the compile seconds.
* **train**: configurations per second of energy+force training steps on ethanol (batch 10).

``--json FILE`` keys: ``force_mae_ethanol_mev_per_a`` (our best model),
``sgdml_force_mae_ethanol_mev_per_a``, per-model ``<arch>_force_mae_mev_per_a`` and
``<arch>_energy_mae_kj_mol``, ``md_atom_steps_per_s``, ``md_compile_s``,
``train_configs_per_s``, and the learning curves when asked. A same-size model from a
maintained JAX package as the throughput peer (``md_ratio_vs_peer``, ``train_ratio_vs_peer``) is
not wired in yet.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from workbench.units import EV_KJ_MOL, KCAL

__all__ = ["main", "sgdml_reference", "md_throughput", "train_throughput"]

MEV_PER_A = 1000 / EV_KJ_MOL / 10  # 1 kJ/mol/nm in meV/A
_GDML = None


def _split():
    import sys
    from pathlib import Path

    from workbench import data_file
    from workbench.ml.data import load

    sys.path.insert(0, str(Path(data_file("ml")).parents[1] / "tools"))
    import train_ml_models as tool

    data = load(data_file("ml/ethanol.npz"))
    n_train, n_valid = tool.SPLIT["ethanol"]
    return data, tool, data.split(n_train, n_valid, seed=0)


def _sgdml_dataset(d, name: str) -> dict:
    """A dataset in sGDML's format (Angstrom, kcal/mol) from ours (nm, kJ/mol)."""
    from sgdml.utils import io

    text = {"type": "d", "code_version": "0.4.10", "name": name, "theory": "PBE/def2-SVP",
            "r_unit": "Ang", "e_unit": "kcal/mol"}
    base = {k: np.array(v) for k, v in text.items()}  # sGDML reads npz fields: arrays
    base.update(z=d.atomic_numbers, R=d.positions * 10.0, E=d.energies[:, None] / KCAL,
                F=d.forces / KCAL / 10.0)
    base["md5"] = np.array(io.dataset_md5(base))
    return base


def sgdml_reference(train, valid, test, sigmas=(5, 10, 20, 40, 80)) -> dict:
    """sGDML trained on ``train`` (every frame), kernel width from ``valid``; force and energy
    MAE on ``test`` in our units (kJ/mol/nm, kJ/mol)."""
    for alias, kind in (("int", int), ("float", float), ("bool", bool)):
        if alias not in np.__dict__:  # sgdml 0.4.10 (the last without PyTorch) uses aliases
            setattr(np, alias, kind)  # that NumPy 1.24 removed; only this benchmark sets them
    from sgdml.predict import GDMLPredict
    from sgdml.train import GDMLTrain

    tr, va = _sgdml_dataset(train, "train"), _sgdml_dataset(valid, "valid")
    best = None
    global _GDML
    if _GDML is None:  # sGDML allows one GDMLTrain per process
        _GDML = GDMLTrain(max_processes=2)
    gdml = _GDML
    for sig in sigmas:
        task = gdml.create_task(tr, len(train), va, len(valid), sig=sig, lam=1e-10)
        model = gdml.train(task, callback=lambda *a, **k: None)  # its progress lines off
        pred = GDMLPredict(model, max_processes=2)
        e, f = pred.predict(valid.positions.reshape(len(valid), -1) * 10.0)
        mae = float(np.mean(np.abs(f * KCAL * 10.0 - valid.forces.reshape(len(valid), -1))))
        if best is None or mae < best[0]:
            best = (mae, sig, pred)
    _, sig, pred = best
    e, f = pred.predict(test.positions.reshape(len(test), -1) * 10.0)
    f = f.reshape(test.forces.shape) * KCAL * 10.0
    e = np.ravel(e) * KCAL
    return {"sigma": sig, "force_mae": float(np.mean(np.abs(f - test.forces))),
            "energy_mae": float(np.mean(np.abs(e - test.energies)))}


def md_throughput(n_waters: int = 64, steps: int = 50, chunks: int = 4) -> dict:
    """The NequIP-class model on ``n_waters`` waters in a periodic box (float32)."""
    import jax
    import jax.numpy as jnp

    from workbench import Simulation
    from workbench.ml import Model
    from workbench.units import BOLTZMANN

    import train_ml_models as tool

    side = int(np.ceil(n_waters ** (1 / 3)))
    length = (n_waters / 33.4) ** (1 / 3)  # nm: liquid density
    grid = (np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[
        :n_waters] + 0.5) * length / side
    water = np.array([[0.0, 0.0, 0.0], [0.09572, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
    r = (grid[:, None, :] + water[None]).reshape(-1, 3)
    z = np.tile([8, 1, 1], n_waters)
    model = Model.create("nequip", (1, 8), cutoff=tool.CUTOFF, dtype=jnp.float32,
                         **tool.ARCHITECTURES["nequip"])
    system = model.system(z, r, box=[length] * 3)
    with jax.enable_x64(False):
        sim = Simulation(system, "langevin", dict(dt=0.0005, kT=BOLTZMANN * 300, gamma=1.0),
                         report_interval=steps, frames_per_chunk=1)
        t0 = time.perf_counter()
        sim.advance()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(chunks):
            sim.advance()
        run = time.perf_counter() - t0
    per_step = run / (chunks * steps)
    return {"atoms": len(z), "box_nm": length, "md_atom_steps_per_s": len(z) / per_step,
            "md_ms_per_step": 1000 * per_step, "md_compile_s": first - per_step * steps}


def train_throughput(data, steps: int = 30) -> dict:
    """Configurations per second of training steps (PaiNN and NequIP-class, float32)."""
    import jax
    import jax.numpy as jnp

    from workbench.ml import Model
    from workbench.ml.train import EnergyForceObjective, fit_shift_scale

    import train_ml_models as tool

    out = {}
    for arch, hp in tool.ARCHITECTURES.items():
        m = fit_shift_scale(Model.create(arch, (1, 6, 8), cutoff=tool.CUTOFF, dtype=jnp.float32,
                                         **hp), data)
        obj = EnergyForceObjective(m, data, batch_size=10)
        w = m.params["weights"]
        jax.block_until_ready(obj.value_and_grad(w)[2])
        t0 = time.perf_counter()
        for _ in range(steps):
            g = obj.value_and_grad(w)[2]
        jax.block_until_ready(g)
        out[f"{arch}_train_configs_per_s"] = 10 * steps / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    """``workbench bench ml [--skip accuracy md train] [--waters N] [--json FILE]``."""
    ap = argparse.ArgumentParser(prog="workbench bench ml", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "md", "train"])
    ap.add_argument("--waters", type=int, default=64, help="waters in the MD box (>= 64)")
    ap.add_argument("--learning-curve", action="store_true",
                    help="sGDML at 50, 100 and the full training set as well")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.waters < 64:
        ap.error("--waters must be at least 64 (192 atoms)")
    from workbench import parallel

    parallel.configure()
    data, tool, (train, valid, test) = _split()
    out = {"processor": platform.processor() or platform.machine()}
    if "accuracy" not in args.skip:
        from workbench import data_file
        from workbench.ml import Model
        from workbench.ml.train import evaluate

        best = None
        for arch in tool.ARCHITECTURES:
            m = evaluate(Model.load(data_file(f"ml/ethanol-{arch}.npz")), test)
            out[f"{arch}_force_mae_mev_per_a"] = m["force_mae"] * MEV_PER_A
            out[f"{arch}_energy_mae_kj_mol"] = m["energy_mae"]
            best = m["force_mae"] if best is None else min(best, m["force_mae"])
        out["force_mae_ethanol_mev_per_a"] = best * MEV_PER_A
        ref = sgdml_reference(train, valid, test)
        out["sgdml_force_mae_ethanol_mev_per_a"] = ref["force_mae"] * MEV_PER_A
        out["sgdml_energy_mae_kj_mol"] = ref["energy_mae"]
        out["sgdml_sigma"] = ref["sigma"]
        if args.learning_curve:
            curve = {}
            for n in (50, 100, len(train)):
                curve[n] = sgdml_reference(train.subset(np.arange(n)), valid, test)["force_mae"] \
                    * MEV_PER_A
            out["sgdml_learning_curve_mev_per_a"] = curve
        print(f"ethanol force MAE (meV/A): ours {out['force_mae_ethanol_mev_per_a']:.1f}, "
              f"sGDML {out['sgdml_force_mae_ethanol_mev_per_a']:.1f}", flush=True)
    if "md" not in args.skip:
        out.update(md_throughput(args.waters))
        print(f"MD: {out['md_atom_steps_per_s']:.3g} atom-steps/s on {out['atoms']} atoms "
              f"(compile {out['md_compile_s']:.1f} s)", flush=True)
    if "train" not in args.skip:
        out.update(train_throughput(train))
        print("training:", {k: round(v, 1) for k, v in out.items() if "train_configs" in k})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0
