# ruff: noqa: E501  (notebook text: one line per markdown paragraph)
"""Writes notebooks/09_neural_potential.ipynb (kept as a script so the notebook stays
reviewable).

Run from the project root: ``python tools/make_notebook_09.py``."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb = nbf.v4.new_notebook()

cells = [
    md("""# A neural network potential, from DFT data to molecular dynamics

A neural network potential is an *energy*: a function of the positions that a network computes, so the forces are minus its gradient (conservative by construction) and everything else in the workbench (MD, samplers, reweighting, gradients, fitting) uses it unchanged.

This notebook

1. reads the training data shipped in `data/ml/` (ethanol sampled at 500 K with the workbench's own MD, labelled with PBE/def2-SVP energies and forces from pyscf by `tools/make_ml_data.py`),
2. trains a PaiNN model (equivariant message passing) for a few hundred steps and checks it on held-out frames,
3. compares with the model trained longer by `tools/train_ml_models.py`,
4. runs MD with the trained model (energy conservation, structure at 300 K),
5. puts the network molecule into a box of CHARMM water: ML/MM with mechanical embedding.

Units: nm, kJ/mol (forces kJ/mol/nm; 1 kJ/mol/nm = 1.04 meV/Å). **Knobs** (next cell): `ARCH`, `N_TRAIN`, `STEPS`, `MD_PS`. About two minutes on 2 CPU cores with the defaults."""),
    code("""%matplotlib inline
import json

import jax

jax.config.update("jax_enable_x64", True)  # MD in double precision (training runs in float32)
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import workbench as wb
from workbench import Simulation
from workbench.ml import Model
from workbench.ml.data import load
from workbench.ml.train import evaluate, fit_shift_scale
from workbench.panels import TrainingPanel
from workbench.sampling import cv
from workbench.session import TrainingSession
from workbench.units import BOLTZMANN, EV_KJ_MOL

ARCH = "painn"                  # "painn" or "nequip"
N_TRAIN = wb.sized(150, 60)     # training frames (50 more for validation, the rest for testing)
STEPS = wb.sized(3000, 300)     # optimizer steps of the training run below
MD_PS = wb.sized(20.0, 2.0)     # picoseconds of MD with the trained model
kT = BOLTZMANN * 300.0
MEV_PER_A = 1000 / EV_KJ_MOL / 10  # 1 kJ/mol/nm in meV/A"""),
    md("""## The data

Each frame holds positions (nm), the DFT energy (kJ/mol) and forces (kJ/mol/nm); the file records the level of theory, the sampling protocol and the seeds, and the script reproduces it."""),
    code("""data = load(wb.data_file("ml/ethanol.npz"))
print(f"{len(data)} frames of {data.n_atoms} atoms; theory: {data.meta['theory']}")
print("sampling:", {k: data.meta["sampling"][k] for k in ("forcefield", "temperature_K", "dt_ps", "seed")})
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].hist(data.energies - data.energies.min(), bins=30)
ax[0].set(xlabel="E - min E (kJ/mol)", ylabel="frames")
ax[1].hist(data.forces.ravel(), bins=60)
ax[1].set(xlabel="force component (kJ/mol/nm)", yscale="log");"""),
    md("""## Training

`fit_shift_scale` sets each element's energy shift (least squares on the element counts) and the energy scale from the RMS force, so the network learns numbers of order one. Training is the workbench's `fit` loop (`workbench.ml.train.train`): Adam with a decaying learning rate, mini-batches on a leading axis, validation every epoch with the best weights kept (early stopping), checkpoints and a CSV log.

The panel shows it live: the batch and validation errors, the parity plot of the validation forces and the error per element. **stop** ends the run after the current step with a checkpoint; **train** resumes it (same batches, so the same weights as an uninterrupted run)."""),
    code("""train_set, valid_set, test_set = data.split(N_TRAIN, 50, seed=0)
hyper = dict(painn=dict(features=32, layers=3, n_rbf=16), nequip=dict(features=8, layers=3, l_max=2))[ARCH]
model = Model.create(ARCH, ("H", "C", "O"), cutoff=0.5, seed=0, dtype=jnp.float32, **hyper)
model = fit_shift_scale(model, train_set)
training = TrainingSession(model, train_set, valid_set, steps=STEPS, batch_size=10,
                           learning_rate=3e-3, final_learning_rate=3e-5)
display(TrainingPanel(training, md_positions=data.positions[0]))
training.start()
training.wait()
mine = evaluate(training.best, test_set)
print(f"held-out: energy MAE {mine['energy_mae']:.2f} kJ/mol, force MAE {mine['force_mae']:.1f} kJ/mol/nm "
      f"({mine['force_mae'] * MEV_PER_A:.0f} meV/A)")"""),
    code("""fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
h = training.validation
ax[0].semilogy(h["step"], np.array(h["force_mae"]) * MEV_PER_A, "o-", ms=3)
ax[0].set(xlabel="optimizer step", ylabel="validation force MAE (meV/A)")
ax[1].plot(test_set.forces.ravel(), mine["forces"].ravel(), ".", ms=2, alpha=0.4)
lim = np.abs(test_set.forces).max()
ax[1].plot([-lim, lim], [-lim, lim], "k--", lw=1)
ax[1].set(xlabel="DFT force (kJ/mol/nm)", ylabel="model force (kJ/mol/nm)", title="held-out frames")
fig.tight_layout()"""),
    md("""## The shipped models

`tools/train_ml_models.py` trains both architectures on the same split for longer; the files beside the data hold the weights (`Model.load`) and the held-out errors."""),
    code("""for arch in ("painn", "nequip"):
    report = json.load(open(wb.data_file(f"ml/ethanol-{arch}.json")))
    print(f"{arch:7s} {report['steps']:5d} steps: energy MAE {report['test_energy_mae_kj_mol']:.2f} kJ/mol, "
          f"force MAE {report['test_force_mae_mev_per_a']:.0f} meV/A on {report['n_test']} held-out frames")
shipped = Model.load(wb.data_file("ml/ethanol-painn.npz")).astype(jnp.float64)"""),
    md("""## Molecular dynamics with the network

`model.system(...)` makes an ordinary `System` (masses from the elements), so `Simulation` runs it. First the energy conservation of velocity Verlet with a 0.5 fs step after a short Langevin start at 300 K, then the O-H bond and the C-C-O-H torsion sampled at 300 K."""),
    code("""ethanol = shipped.system(data.atomic_numbers, data.positions[0], name="ethanol")
warm = Simulation(ethanol, "langevin", dict(dt=0.0005, kT=kT, gamma=5.0), seed=0,
                  report_interval=500, frames_per_chunk=4)
warm.run(2000, progress=False)
nve = Simulation(ethanol, "velocity_verlet", dict(dt=0.0005), positions=np.asarray(warm.state.positions),
                 velocities=np.asarray(warm.state.velocities), report_interval=100, frames_per_chunk=20)
log = nve.run(int(MD_PS / 0.0005), progress=False)
slope = np.polyfit(log["time"], log["total"], 1)[0]
print(f"NVE: drift {slope / kT:+.4f} kT/ps, fluctuation {np.std(log['total']) / kT:.3f} kT, T = {np.mean(log['temperature']):.0f} K")

nvt = Simulation(ethanol, "langevin", dict(dt=0.0005, kT=kT, gamma=1.0), seed=1,
                 report_interval=50, frames_per_chunk=40)
frames = np.concatenate([nvt.advance().positions for _ in range(int(MD_PS / 0.0005) // 2000)])
oh = np.linalg.norm(frames[:, 2] - frames[:, 1], axis=1)
phi = np.degrees(np.asarray(jax.vmap(cv.Dihedral(5, 0, 1, 2))(jnp.asarray(frames))))
fig, ax = plt.subplots(1, 3, figsize=(12, 3))
ax[0].plot(log["time"], (log["total"] - log["total"][0]) / kT)
ax[0].set(xlabel="t (ps)", ylabel="E - E(0) (kT)", title="NVE, 0.5 fs")
ax[1].hist(oh, bins=30)
ax[1].set(xlabel="O-H (nm)")
ax[2].hist(phi, bins=36, range=(-180, 180))
ax[2].set(xlabel="C-C-O-H torsion (deg)")
fig.tight_layout()"""),
    md("""## ML/MM: the network molecule in CHARMM water

The box comes from OpenMM's `Modeller` and is relaxed briefly with OpenMM's minimizer (its tiled waters can overlap across the box faces). `mixed_system` takes a force-field system and a selection: inside the selection the network replaces every force-field term (bonds, angles, torsions and the pairs are removed from the OpenMM System, as openmm-ml does), between the selection and the water the force field's charges and Lennard-Jones act (mechanical embedding), and the water is TIP3P with PME."""),
    code("""import openmm
from openmm import app, unit

from workbench.forcefield.openmm import from_topology
from workbench.ml.mixed import mixed_system
from workbench.ml.molecules import CHARMM, topology

top, xyz = topology("ethanol")
modeller = app.Modeller(top, xyz * unit.nanometer)
charmm = app.ForceField(*CHARMM)
modeller.addSolvent(charmm, boxSize=openmm.Vec3(2.2, 2.2, 2.2) * unit.nanometer)
# Modeller's waters can overlap across the box faces: relax the MM system briefly first
mm = charmm.createSystem(modeller.topology, nonbondedMethod=app.PME,
                         nonbondedCutoff=0.9 * unit.nanometer, constraints=app.HBonds)
context = openmm.Context(mm, openmm.VerletIntegrator(0.001))
context.setPositions(modeller.getPositions())
openmm.LocalEnergyMinimizer.minimize(context, 10.0, 300)
box_xyz = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
solvated = from_topology(modeller.topology, box_xyz, CHARMM, nonbonded_method="PME", cutoff=0.9,
                         constraints="HBonds")
hybrid = mixed_system(solvated, shipped, atoms=range(9))
print(f"{hybrid.n_atoms} atoms: ethanol by the network, {(hybrid.n_atoms - 9) // 3} waters by CHARMM")
sim = Simulation(hybrid, "langevin", dict(dt=0.001, kT=kT, gamma=1.0), seed=2, report_interval=100,
                 frames_per_chunk=5)
sim.run(500, progress=False)  # settle
log = sim.run(wb.sized(5000, 1000), progress=False)
print(f"T = {np.mean(log['temperature']):.0f} K; potential {np.mean(log['potential']):.0f} kJ/mol")"""),
    md("""## Exercises

1. Train the NequIP-class model (`ARCH = "nequip"`): slower per step, but its l = 2 features see angles directly. Which learns faster per frame?
2. Halve `N_TRAIN` and retrain: how does the held-out force error grow? (The learning curve of a model.)
3. Run the NVE check with a 1 fs step: energy drift grows like dt^2 for a smooth potential."""),
]
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}, "language_info": {"name": "python"}}
nbf.write(nb, "notebooks/09_neural_potential.ipynb")
