"""Trains the neural potentials shipped in data/ml/ on the DFT data made by
tools/make_ml_data.py, and reports their held-out errors.

    python tools/train_ml_models.py                    # both architectures, ethanol
    python tools/train_ml_models.py --arch painn --steps 500 --out DIR   # a quick one elsewhere

Split: ``SPLIT`` training / validation frames drawn with seed 0, the rest held out for the
test figures. Training: float32, mini-batches of 10, Adam from 3e-3 decaying to 3e-5, the
weights with the lowest validation force MAE kept (workbench.ml.train). Writes
``<molecule>-<arch>.npz`` (the model file format of workbench.ml.model) and
``<molecule>-<arch>.json`` (hyperparameters, split, steps, seconds, and the held-out energy and
force MAE). Deterministic on one machine: same data, seeds and steps, same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHITECTURES = {
    "painn": dict(features=32, layers=3, n_rbf=16),
    "nequip": dict(features=16, layers=3, l_max=2, n_rbf=8),
}
"""Hyperparameters of the shipped models (small: MD at a few hundred microseconds a step)."""
CUTOFF = 0.5  # nm
SPLIT = {"ethanol": (150, 50), "water3": (100, 25)}  # training, validation frames


def train_one(molecule: str, arch: str, steps: int, out: Path, data_dir: Path) -> dict:
    import jax.numpy as jnp

    from workbench.ml import Model
    from workbench.ml.data import load
    from workbench.ml.train import evaluate, fit_shift_scale, train
    from workbench.units import EV_KJ_MOL

    data = load(str(data_dir / f"{molecule}.npz"))
    n_train, n_valid = SPLIT[molecule]
    tr, va, te = data.split(n_train, n_valid, seed=0)
    model = Model.create(arch, sorted(set(data.atomic_numbers.tolist())), cutoff=CUTOFF,
                         seed=0, dtype=jnp.float32, **ARCHITECTURES[arch])
    model = fit_shift_scale(model, tr)
    t0 = time.time()
    result = train(model, tr, va, steps=steps, batch_size=10, learning_rate=3e-3,
                   final_learning_rate=3e-5, patience=10**9, progress=True)
    seconds = time.time() - t0
    test = evaluate(result.model, te)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save(str(out / f"{molecule}-{arch}.npz"))
    report = dict(molecule=molecule, architecture=arch, hyperparameters=result.model.hyperparameters,
                  n_train=len(tr), n_valid=len(va), n_test=len(te), split_seed=0, steps=result.steps,
                  train_seconds=round(seconds, 1),
                  test_energy_mae_kj_mol=test["energy_mae"], test_force_mae_kj_mol_nm=test["force_mae"],
                  test_force_mae_mev_per_a=test["force_mae"] / EV_KJ_MOL / 10 * 1000,
                  best_valid_force_mae_kj_mol_nm=min(result.history["valid_force_mae"]),
                  data=data.meta.get("theory"))
    (out / f"{molecule}-{arch}.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecule", choices=sorted(SPLIT), default="ethanol")
    ap.add_argument("--arch", choices=sorted(ARCHITECTURES), action="append")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "ml")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    for arch in args.arch or sorted(ARCHITECTURES):
        print(json.dumps(train_one(args.molecule, arch, args.steps, args.out, args.data), indent=1))


if __name__ == "__main__":
    main()
