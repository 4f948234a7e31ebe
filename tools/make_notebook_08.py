# ruff: noqa: E501  (notebook text: one line per markdown paragraph)
"""Writes notebooks/08_sensitivity_and_chaos.ipynb (kept as a script so the notebook stays
reviewable).

Run from the project root: ``python tools/make_notebook_08.py``."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb = nbf.v4.new_notebook()

cells = [
    md("""# Sensitivity and chaos: how far back can a gradient look?

Automatic differentiation through a simulation gives the *exact* derivative of what the simulation computed. For molecular dynamics that is a trap: the dynamics is chaotic, two trajectories that start 1e-9 apart separate like exp(lambda t), and so does the derivative of anything at time t with respect to the start or to the parameters. After a few 1/lambda the backpropagated gradient is dominated by that growth and says nothing about how the *average* of the observable responds to the parameter.

This notebook measures the growth, the largest Lyapunov exponent lambda, and compares three estimators of the same derivative, d<U/N>/d epsilon of a Lennard-Jones liquid:

* **backprop** through the whole trajectory (exact for that trajectory, useless for long ones),
* **backprop with a truncated horizon** (gradients flow back at most h steps: bounded variance, some bias),
* **reweighting** the frames (the fluctuation formula: no differentiation through time at all).

Reduced units, double precision (derivatives that grow by orders of magnitude need it). **Knobs** (next cell): `N_ATOMS`, `HORIZONS`, `FRAMES`, `BACKPROP_STEPS`. About a minute and a half on 2 CPU cores."""),
    code("""%matplotlib inline
import jax

jax.config.update("jax_enable_x64", True)  # before any array is made
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import workbench as wb
from workbench.dynamics import integrators as integ
from workbench.gradients import chaos, gradient
from workbench.gradients import reweight as rw
from workbench.simulate import Simulation

N_ATOMS = 108                        # particles (4 n^3)
HORIZONS = [10, 25, 50, 100, 200]    # steps of 0.004 tau (400, 800: the growth goes on)
FRAMES = 400                         # frames for reweighting
BACKPROP_STEPS = 500                 # steps per backprop estimate (2000: smaller error bars)
kT, DT = 1.2, 0.004"""),
    md("""## The liquid

T* = 1.2, rho* = 0.8, the cutoff switched smoothly from 1.8 to 2.2 sigma (a truncated potential with a jump at the cutoff would add its own discontinuities to every derivative)."""),
    code("""fluid = wb.lj_fluid(n_atoms=N_ATOMS, density=0.8, cutoff=2.2, skin=0.3, truncation="switch",
                    r_switch=1.8)
pot, params = fluid.potential, fluid.params
lang = integ.langevin(pot)
settings = lang.settings(dt=DT, kT=kT, gamma=0.5)
state = lang.init(jax.random.PRNGKey(0), fluid.positions, params, settings)
equilibrate = jax.jit(lambda s: jax.lax.scan(
    lambda c, _: (lang.step(c, params, settings, energy=False), None), s, None, length=2000)[0])
state = equilibrate(state)


def u_per_atom(r, p, aux, box):
    return pot.energy(r, p, aux, box) / r.shape[0]"""),
    md("""## The largest Lyapunov exponent

A copy of the system displaced by 1e-6 (in positions and velocities together) runs alongside with the same random forces; every 10 steps the separation is measured and scaled back. lambda is the mean log growth per unit time."""),
    code("""lyap = chaos.lyapunov(lang, state, params, settings, n_steps=2000, renorm_every=10)
lam = lyap["lyapunov"]
print(f"largest Lyapunov exponent: {lam:.2f} per tau  (a perturbation grows e-fold every {1 / lam:.2f} tau)")"""),
    md("""## The gradient grows with the horizon

The norm of d U(x_t) / d x_0 and of d U(x_t) / d epsilon for horizons t, from reverse mode through the steps (checkpointed: memory grows like sqrt(t)). On a log scale both grow along a line of slope about lambda."""),
    code("""growth = chaos.gradient_growth(lang, state, params, settings, HORIZONS)
t = growth["times"]
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.semilogy(t, growth["position_gradient_norm"], "o-", label="|dU(t)/dx(0)|")
ax.semilogy(t, growth["param_gradient_norm"], "s-", label="|dU(t)/d epsilon|")
ref = growth["position_gradient_norm"][0] * np.exp(lam * (t - t[0]))
ax.semilogy(t, ref, "k--", lw=1, label=f"exp(lambda t), lambda = {lam:.1f}")
ax.set(xlabel="horizon t (tau)", ylabel="gradient norm")
ax.legend(fontsize=8)
print(f"growth rate of the gradient: {growth['growth_rate']:.2f} per tau (Lyapunov {lam:.2f})")"""),
    md("""## Three estimates of d<U/N>/d epsilon

`gradient(observable, params, method=...)` asks each path for the same quantity. Backprop differentiates the time average of U/N along one trajectory; with `horizon=h` the gradient is cut every h steps. Reweighting uses frames of a long run and the fluctuation formula, with block standard errors."""),
    code("""sim = Simulation(fluid, "langevin", dict(dt=DT, kT=kT, gamma=0.5),
                 params=params, positions=state.positions, seed=1, report_interval=25,
                 frames_per_chunk=FRAMES // 4)
sim.advance()
frames = np.concatenate([sim.advance().positions for _ in range(4)])
samples = rw.Samples.from_frames(frames)
rows = []
est = gradient(u_per_atom, params, "reweight", potential=pot, samples=samples, kT=kT,
               aux=pot.allocate(frames[0]))
rows.append(("reweighting", float(est.gradient["epsilon"][0]), float(est.stderr["epsilon"][0]),
             f"ESS {est.diagnostics['ess']:.0f}"))
for n_steps, horizon in [(BACKPROP_STEPS, None), (BACKPROP_STEPS, 50), (BACKPROP_STEPS, 10)]:
    per_seed = []
    for seed in range(3):  # independent starts: the spread is the estimator's noise
        s0 = lang.init(jax.random.PRNGKey(10 + seed), np.asarray(frames[130 * seed]), params, settings)
        g = gradient(u_per_atom, params, "backprop", integrator=lang, state=s0, settings=settings,
                     n_steps=n_steps, every=10, horizon=horizon)
        per_seed.append(float(g.gradient["epsilon"][0]))
    label = "backprop, whole run" if horizon is None else f"backprop, horizon {horizon} steps"
    rows.append((label, np.mean(per_seed), np.std(per_seed, ddof=1) / np.sqrt(3),
                 f"{n_steps} steps x 3 starts: {np.round(per_seed, 2).tolist()}"))
print(f"{'estimator':32s} {'d<U/N>/d eps':>12s} {'+-':>8s}")
for name, value, err, note in rows:
    print(f"{name:32s} {value:12.3f} {err:8.3f}   {note}")"""),
    md("""## What to do about it

* For derivatives of **equilibrium averages** (a density, a pressure, an RDF, a free energy), use reweighting: `method="reweight"`, or a fit with an `EnsembleObjective` (notebooks 06 and 07). Its error bars are honest, and it never differentiates through time.
* When the quantity really is **dynamical** (a transport coefficient, a transient, a controlled trajectory), truncate: `horizon=` a few 1/lambda. The estimate is biased (the slow part of the response is cut) but its variance stays bounded; compare horizons to see the bias.
* For **short, deliberately deterministic** problems (a minimization, a relaxation, a few steps of a quench), full backprop is exact and fine: `method="implicit"` for minima avoids unrolling altogether.

## Exercises

1. Lower the temperature to kT = 0.6 (a denser, slower liquid): does lambda change much?
2. Add horizons of 800 and 1600 steps. The memory stays small (checkpointing), but what happens to the norm?
3. Compare the reweighting error bar with `FRAMES` doubled: does it shrink like 1/sqrt(frames)?"""),
]
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}, "language_info": {"name": "python"}}
nbf.write(nb, "notebooks/08_sensitivity_and_chaos.ipynb")
