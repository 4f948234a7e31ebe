"""Training data readers and training: units, named errors, a small training run that must
really learn (held-out force error against an independent reference potential), checkpoints
that resume to the same weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import space as spaces
from workbench.ml import Model
from workbench.ml.data import DataError, Dataset, load, read_extxyz
from workbench.ml.train import evaluate, fit_shift_scale, train
from workbench.potentials.pair import PairPotential, morse
from workbench.units import EV_KJ_MOL, KCAL

jax.config.update("jax_enable_x64", True)

Z = np.array([8, 1, 1, 8, 1, 1])


def _reference(n_frames=120, seed=0):
    """Frames of a 6-atom cluster jittered around a compact start, labelled by a Morse pair
    potential (an independent reference the network has to learn)."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0],
                     [0.28, 0.05, 0.02], [0.38, 0.05, 0.0], [0.28, 0.15, 0.0]])
    r = base + rng.normal(scale=0.012, size=(n_frames, *base.shape))
    pot = PairPotential(morse, spaces.free(), cutoff=1.0, truncation="cut", neighbor_list=False)
    params = pot.init_params(D=50.0, alpha=20.0, r0=0.11)
    ef = jax.jit(jax.vmap(lambda x: pot.energy_forces(x, params, None)))(jnp.asarray(r))
    return Dataset(r, np.asarray(ef.energy), np.asarray(ef.forces), Z, {"source": "morse"})


def test_readers_convert_units_and_name_bad_files(tmp_path):
    d = _reference(4)
    # the workbench format with declared units
    p = tmp_path / "own.npz"
    np.savez(p, positions=d.positions * 10, energies=d.energies / KCAL, forces=d.forces / KCAL / 10,
             atomic_numbers=Z, meta=json.dumps({"units": {"positions": "A", "energies": "kcal/mol",
                                                          "forces": "kcal/mol/A"}}))
    back = load(str(p))
    assert np.allclose(back.positions, d.positions) and np.allclose(back.forces, d.forces)
    assert np.allclose(back.energies, d.energies)
    # MD17 / sGDML keys (kcal/mol and Angstrom)
    p = tmp_path / "md17.npz"
    np.savez(p, R=d.positions * 10, E=d.energies[:, None] / KCAL, F=d.forces / KCAL / 10, z=Z)
    assert np.allclose(load(str(p)).forces, d.forces)
    # extended XYZ through ASE (eV, Angstrom)
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for r, e, f in zip(d.positions, d.energies, d.forces):
        atoms = ase.Atoms(numbers=Z, positions=r * 10)
        atoms.calc = SinglePointCalculator(atoms, energy=e / EV_KJ_MOL, forces=f / EV_KJ_MOL / 10)
        frames.append(atoms)
    ase.io.write(tmp_path / "d.xyz", frames, format="extxyz")
    x = read_extxyz(str(tmp_path / "d.xyz"))
    # (text: forces to about 1e-5 kJ/mol/nm)
    assert np.allclose(x.forces, d.forces, atol=1e-4) and np.allclose(x.energies, d.energies)
    # named errors
    np.savez(tmp_path / "noforce.npz", positions=d.positions, energies=d.energies,
             atomic_numbers=Z)
    with pytest.raises(DataError, match="no forces"):
        load(str(tmp_path / "noforce.npz"))
    np.savez(tmp_path / "mixed.npz", positions=d.positions, energies=d.energies, forces=d.forces,
             atomic_numbers=Z, meta=json.dumps({"units": {"positions": "nm", "energies": "kJ/mol",
                                                          "forces": "eV/A"}}))
    with pytest.raises(DataError, match="mixed units"):
        load(str(tmp_path / "mixed.npz"))
    bad = d.forces.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"forces are not finite in frames \[2\]"):
        Dataset(d.positions, d.energies, bad, Z)
    frames[1] = ase.Atoms(numbers=Z[::-1], positions=frames[1].positions)
    frames[1].calc = SinglePointCalculator(frames[1], energy=0.0, forces=np.zeros((6, 3)))
    ase.io.write(tmp_path / "two.xyz", frames, format="extxyz")
    with pytest.raises(DataError, match="frame 1 has other atoms"):
        read_extxyz(str(tmp_path / "two.xyz"))


def test_training_learns_held_out_forces_of_a_reference_potential():
    data = _reference(160)
    tr, va, te = data.split(100, 20, seed=1)
    model = fit_shift_scale(Model.create("painn", ("H", "O"), cutoff=0.35, seed=0, features=16,
                                         layers=2, n_rbf=8), tr)
    before = evaluate(model, te)
    result = train(model, tr, va, steps=400, batch_size=10, learning_rate=5e-3,
                   final_learning_rate=5e-4, progress=False)
    after = evaluate(result.model, te)
    spread = float(np.mean(np.abs(te.forces - te.forces.mean())))
    # a model that learned nothing predicts about the mean: its MAE is the spread
    assert after["force_mae"] < 0.15 * spread, (after["force_mae"], spread)
    assert after["force_mae"] < 0.2 * before["force_mae"]
    assert result.history["step"] and min(result.history["valid_force_mae"]) == \
        pytest.approx(evaluate(result.model, va)["force_mae"])


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path):
    data = _reference(40, seed=3)
    tr, va, _ = data.split(30, 10, seed=0)
    model = fit_shift_scale(Model.create("painn", ("H", "O"), cutoff=0.35, seed=2, features=8,
                                         layers=1, n_rbf=4), tr)
    kw = dict(steps=12, batch_size=5, eval_every=3, progress=False)
    straight = train(model, tr, va, **kw)
    ck = str(tmp_path / "ck.npz")
    first = train(model, tr, va, checkpoint=ck, callback=lambda s, m, v: s >= 6, **kw)
    assert first.interrupted and first.steps == 6
    resumed = train(model, tr, va, checkpoint=ck, **kw)
    assert resumed.steps == 12
    for a, b in zip(jax.tree_util.tree_leaves(straight.model.params),
                    jax.tree_util.tree_leaves(resumed.model.params)):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert resumed.history["step"] == straight.history["step"]
