# ruff: noqa: E501  (notebook text: one line per markdown paragraph)
"""Writes notebooks/06_tune_lj_to_target.ipynb (kept as a script so the notebook stays
reviewable).

Run from the project root: ``python tools/make_notebook_06.py``."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb = nbf.v4.new_notebook()

cells = [
    md("""# Tuning a Lennard-Jones model to a target g(r) and pressure

A force field is usually tuned to reproduce measured properties. Here the "measurement" is made in the notebook: a Lennard-Jones fluid with hidden parameters (epsilon, sigma) gives a radial distribution function g(r) and a pressure P. Starting from wrong parameters, we fit epsilon and sigma to those targets.

The gradient of an ensemble average with respect to a parameter comes from **reweighting** the samples we already have (no differentiation through the chaotic trajectory):

d<O>/dtheta = <dO/dtheta> - (1/kT) Cov(O, dU/dtheta).

When the parameters have moved so far that the old samples no longer represent the new ensemble (their *effective sample size* drops), a new short simulation is run at the current parameters: the scheme of DiffTRe (Thaler and Zavadlav, 2021).

Reduced units (sigma, epsilon, tau). **Knobs** (next cell): `N_ATOMS`, `FRAMES` per sample set, `FIT_STEPS`. The defaults run in about a minute on 2 CPU cores."""),
    code("""%matplotlib inline
import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import workbench as wb
from workbench.gradients import fit as ft
from workbench.gradients import reweight as rw
from workbench.observables import pair_histogram
from workbench.panels import GradientPanel, Workbench
from workbench.session import GradientSession, Session
from workbench.simulate import Simulation

N_ATOMS = 108      # particles (4 n^3)
FRAMES = 150       # frames per sample set (20 steps apart)
FIT_STEPS = 40     # optimizer steps
kT, DENSITY = 1.5, 0.8
HIDDEN = dict(epsilon=1.0, sigma=1.0)   # the "experiment"
START = dict(epsilon=0.85, sigma=1.05)  # our first guess"""),
    md("""## The target

A fluid at T* = 1.5, rho* = 0.8 with the hidden parameters: g(r) from a histogram of pair distances in each frame, and the virial pressure. Both are ensemble averages: functions of the configurations, averaged over frames."""),
    code("""fluid = wb.lj_fluid(n_atoms=N_ATOMS, density=DENSITY, cutoff=2.2, skin=0.3,
                    truncation="switch", r_switch=1.8)
pot = fluid.potential


def params_of(values):
    return {k: jnp.asarray([v], jnp.float32) for k, v in values.items()}


edges = np.linspace(0.8, 2.4, 33)
r_mid = 0.5 * (edges[1:] + edges[:-1])
observables = {"g": pair_histogram(pot.space, edges), "P": rw.virial_pressure(pot, kT)}
every = lambda *a: {k: f(*a) for k, f in observables.items()}  # noqa: E731

def md_sampler(values, seed):
    sim = Simulation(fluid, "langevin", dict(dt=0.005, kT=kT, gamma=1.0),
                     params=params_of(values), seed=seed, report_interval=20,
                     frames_per_chunk=50)
    sim.advance()  # melt the lattice
    return ft.simulation_sampler(sim, FRAMES, equilibrate=1)

target_samples = md_sampler(HIDDEN, 1)(params_of(HIDDEN))
aux = pot.allocate(target_samples.positions[0])
target = rw.reweighted_average(every, pot, params_of(HIDDEN), target_samples, kT, aux).value
print(f"target pressure P* = {float(target['P']):.3f}; g(r) peak {float(target['g'].max()):.2f} "
      f"at r = {r_mid[int(np.argmax(target['g']))]:.2f} sigma")"""),
    md("""## The objective

The loss compares the reweighted averages with the targets. `EnsembleObjective` keeps the current samples and the parameters they were drawn at; before every optimizer step it checks the effective sample size at the new parameters and draws new samples when it falls below 60% of the frames."""),
    code("""def loss(av, p):
    return jnp.sum((av["g"] - target["g"]) ** 2) + 0.5 * (av["P"] - target["P"]) ** 2

objective = ft.EnsembleObjective(md_sampler(START, 2), observables, loss, pot, kT, aux,
                                 min_ess=0.6)"""),
    md("""## Live: gradients that follow the sliders

The session runs the fluid with the current parameters; the parameter panel moves epsilon and sigma; the gradient panel shows d(loss)/d(epsilon) and d(loss)/d(sigma) at the sliders' values, recomputed in the background (by reweighting when the samples allow it, after a short new run otherwise). **step** takes one Adam step and moves the sliders; **run** keeps fitting until **stop**."""),
    code("""session = Session(dataclasses.replace(fluid, params=params_of(START)), "langevin", dict(dt=0.005, kT=kT, gamma=1.0), report_interval=20, frames_per_chunk=5, units="reduced")
grads = GradientSession(session, {"reweight": objective}, optimizer=optax.adam(0.01))
gradient_panel = GradientPanel(grads)
view = Workbench(session, panels=[gradient_panel],
                 parameter_options=dict(include=["epsilon", "sigma"],
                                        ranges={"epsilon": (0.5, 1.5), "sigma": (0.9, 1.1)}))
session.start(20)
view"""),
    md("""Moving a slider from code does the same as dragging it; the gradient follows:"""),
    code("""grads.wait(timeout=120)
print("at the start:", {k: round(v, 4) for k, v in grads.last.gradient.items()},
      f"loss {grads.last.loss:.4f}")
session.set_params(sigma=1.0)
grads.wait(timeout=120)
print("sigma = 1.0: ", {k: round(v, 4) for k, v in grads.last.gradient.items()},
      f"loss {grads.last.loss:.4f}, ESS {grads.last.metrics['ess']:.0f}")
session.set_params(sigma=START["sigma"])"""),
    md("""## The fit

`fit` runs the same objective in a loop (Adam, learning rate 0.02), re-sampling as needed. It can checkpoint and resume (`checkpoint="fit.npz"`), log to CSV and respect bounds; here it only keeps the history."""),
    code("""session.stop()
grads.close()
result = ft.fit(objective, params_of(START), steps=FIT_STEPS, optimizer=optax.adam(0.02),
                bounds={"epsilon": (0.3, 3.0), "sigma": (0.8, 1.2)}, progress=False)
best = {k: float(v[0]) for k, v in result.best_params.items()}
print(f"fitted epsilon = {best['epsilon']:.3f}, sigma = {best['sigma']:.4f} (hidden: 1, 1); "
      f"new samples drawn at steps {result.resampled}")"""),
    code("""fit_samples = md_sampler(best, 3)(params_of(best))
start_samples = md_sampler(START, 4)(params_of(START))
fitted = rw.reweighted_average(every, pot, params_of(best), fit_samples, kT, aux).value
first = rw.reweighted_average(every, pot, params_of(START), start_samples, kT, aux).value
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
ax.plot(r_mid, target["g"], "k", lw=2, label="target")
ax.plot(r_mid, first["g"], "--", label=f"start (P = {float(first['P']):.2f})")
ax.plot(r_mid, fitted["g"], label=f"fitted (P = {float(fitted['P']):.2f})")
ax.set(xlabel="r (sigma)", ylabel="g(r)", title=f"target P = {float(target['P']):.2f}")
ax.legend(fontsize=8)
ax2.semilogy(result.history["loss"], "o-", ms=3)
for s in result.resampled:
    ax2.axvline(s, color="0.8", lw=0.8)
ax2.set(xlabel="optimizer step", ylabel="loss", title="loss (grey: new samples)")"""),
    md("""## Exercises

1. Fit only sigma (`trainable=["sigma"]` in `fit`) with the pressure term removed from the loss: is g(r) alone enough to find sigma? And epsilon?
2. Lower `min_ess` to 0.2: fewer new simulations, but are the gradients still reliable? Watch the ESS in the gradient panel.
3. Raise `FRAMES` and `N_ATOMS` (the knobs) and compare the recovered parameters: how much of the error is statistical?"""),
]
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}, "language_info": {"name": "python"}}
nbf.write(nb, "notebooks/06_tune_lj_to_target.ipynb")
