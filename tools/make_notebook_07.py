# ruff: noqa: E501  (notebook text: one line per markdown paragraph)
"""Writes notebooks/07_fit_torsion.ipynb (kept as a script so the notebook stays reviewable).

Run from the project root: ``python tools/make_notebook_07.py``."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb = nbf.v4.new_notebook()

cells = [
    md("""# Fitting a torsion of alanine dipeptide to a target phi distribution

The backbone dihedral phi (C-N-CA-C) of alanine dipeptide is shaped by many terms of the force field, but one torsion *type* acts on it directly: amber14's `C-CX-N-C`, with a 3-fold and a 2-fold cosine. Here the 2-fold barrier k is hidden: the target phi distribution comes from amber14 as shipped, and the fit starts from three times its value.

The distribution is sampled by **16 copies** of the molecule run side by side (a batch axis: one compiled program for all), and the gradient of the loss with respect to k comes from reweighting those samples. When the effective sample size drops, new samples are drawn at the current k.

Units: kJ/mol, nm, ps; 300 K, Langevin with bonds to hydrogen constrained, 2 fs. **Knobs** (next cell): `COPIES`, `FRAMES`, `FIT_STEPS`. The defaults take about a minute and a half on 2 CPU cores; with them the fit moves k most of the way and stops where sampling noise hides the rest. Raise `FRAMES` for a sharper answer."""),
    code("""%matplotlib inline
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import workbench as wb
from workbench import units
from workbench.dynamics import integrators as integ
from workbench.forcefield import openmm as ff
from workbench.gradients import fit as ft
from workbench.gradients import reweight as rw
from workbench.panels import GradientPanel
from workbench.sampling import cv
from workbench.session import GradientSession, Session

COPIES = 16       # molecules run side by side
FRAMES = 1600     # frames per sample set (0.1 ps apart, over all copies)
FIT_STEPS = 25    # optimizer steps
kT = units.kT_from_kelvin(300.0)"""),
    md("""## The molecule and the torsion type

`find_types` lists the per-type parameters whose name matches; the flat name (`PeriodicTorsionForce.k[5]`) is what sliders, gradients and the fit use. Every dihedral of that type in the molecule follows one value."""),
    code("""system = ff.load(wb.systems.data_file("alanine-dipeptide-vacuum.pdb"), ["amber14-all.xml"],
                 nonbonded_method="NoCutoff", constraints="HBonds")
phi, psi = cv.backbone_torsions(system.topology, 1)
types = system.find_types("PeriodicTorsionForce", "k", "C-CX-N-C")
print(types)
name = [n for n, t in types.items() if t.endswith("n=2")][0]
index = int(name.split("[")[1][:-1])
true_k = float(system.params["PeriodicTorsionForce"]["k"][index])


def with_k(params, value):
    t = params["PeriodicTorsionForce"]
    return {**params, "PeriodicTorsionForce": {**t, "k": t["k"].at[index].set(value)}}


start = with_k(system.params, 3.0 * true_k)
print(f"{name}: amber14 k = {true_k:.3f} kJ/mol; the fit starts at {3 * true_k:.3f}")"""),
    md("""## The target distribution

A histogram of phi in 24 bins over (-180, 180] degrees, from the 16 copies at amber14's k. In vacuum at 300 K the molecule stays at phi < 0 (C7eq, C5, alphaR)."""),
    code("""lang = integ.langevin(system.potential, system.constraints())
settings = lang.settings(dt=0.002, kT=kT, gamma=1.0)
edges = np.linspace(-np.pi, np.pi, 25)


def phi_histogram(r, p, aux, box):
    i = jnp.searchsorted(jnp.asarray(edges, r.dtype), phi(r, box), side="right") - 1
    return (jnp.arange(len(edges) - 1) == i).astype(r.dtype)


def sampler(seed, frames):
    return ft.batch_sampler(lang, settings, system.positions, copies=COPIES, n_frames=frames,
                            stride=50, masses=system.masses, seed=seed, equilibrate=20)

target_samples = sampler(1, 2 * FRAMES)(system.params)
target = rw.reweighted_average(phi_histogram, system.potential, system.params, target_samples, kT).value
start_samples = sampler(2, FRAMES)(start)
first = rw.reweighted_average(phi_histogram, system.potential, start, start_samples, kT).value
centres = np.degrees(0.5 * (edges[1:] + edges[:-1]))
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.bar(centres, target, width=14, alpha=0.5, label="target (amber14)")
ax.step(centres, first, where="mid", color="C3", label="start: 3 k")
ax.set(xlabel="phi (deg)", ylabel="fraction of frames", xlim=(-180, 0))
ax.legend(fontsize=8)"""),
    md("""## Live gradient

A session runs one molecule at the starting parameters; the gradient panel shows d(loss)/dk for the torsion type, by reweighting the batch samples (the objective re-samples when their effective sample size falls below 70%). The loss is a squared distance between histograms, scaled by 100."""),
    code("""def loss(av, p):
    return 100.0 * jnp.sum((av["phi"] - target) ** 2)

objective = ft.EnsembleObjective(sampler(3, FRAMES), {"phi": phi_histogram}, loss,
                                 system.potential, kT, min_ess=0.7)
session = Session(system, "langevin", dict(dt=0.002, kT=kT, gamma=1.0), report_interval=100,
                  frames_per_chunk=5)
session.set_params(start)
grads = GradientSession(session, {"reweight": objective}, optimizer=optax.adam(0.25),
                        trainable=[name])
panel = GradientPanel(grads, labels={name: "C-CX-N-C n=2 k"})
panel"""),
    code("""grads.wait(timeout=300)
print(f"d(loss)/dk = {grads.last.gradient[name]:.4f} at k = {grads.last.params[name]:.3f} "
      f"(loss {grads.last.loss:.4f}; ESS {grads.last.metrics['ess']:.0f} of {FRAMES})")"""),
    md("""## The fit

Adam on k alone (`trainable=[name]`: every other parameter of the force field is held)."""),
    code("""grads.close()
result = ft.fit(objective, start, steps=FIT_STEPS, optimizer=optax.adam(0.25), trainable=[name],
                bounds={"PeriodicTorsionForce.k": (0.0, None)}, progress=False)
k_fit = float(result.best_params["PeriodicTorsionForce"]["k"][index])
print(f"k: start {3 * true_k:.3f} -> fitted {k_fit:.3f} (amber14: {true_k:.3f}); "
      f"loss {result.history['loss'][0]:.4f} -> {result.best_loss:.4f}; new samples at steps {result.resampled}")"""),
    code("""best = result.best_params
fitted = rw.reweighted_average(phi_histogram, system.potential, best, sampler(4, FRAMES)(best), kT).value
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
ax.bar(centres, target, width=14, alpha=0.5, label="target")
ax.step(centres, first, where="mid", color="C3", label="start")
ax.step(centres, fitted, where="mid", color="C2", label=f"fitted (k = {k_fit:.2f})")
ax.set(xlabel="phi (deg)", ylabel="fraction of frames", xlim=(-180, 0))
ax.legend(fontsize=8)
ax2.plot(result.history["loss"], "o-", ms=3)
ax2.set(xlabel="optimizer step", ylabel="loss")
session.stop()"""),
    md("""## Exercises

1. Free the 3-fold term too (`trainable=[name, name_of_n3]`): both barriers shape the same distribution. Does the fit find amber14's pair, or another pair with the same histogram? (Looking at the gradient panel with both bars helps.)
2. Add psi to the target (a 2-D histogram with `free_energy_profile`-style bins): is k better determined?
3. Double `FRAMES`: how close does k get now? The remaining error is sampling noise in the target and in the fit."""),
]
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}, "language_info": {"name": "python"}}
nbf.write(nb, "notebooks/07_fit_torsion.ipynb")
