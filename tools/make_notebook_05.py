# ruff: noqa: E501  (notebook text: one line per markdown paragraph)
"""Writes notebooks/05_monte_carlo_replica_exchange.ipynb (kept as a script so the notebook
stays reviewable).

Run from the project root: ``python tools/make_notebook_05.py``."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

cells = [
    md("""# Monte Carlo, replica exchange and NPT

Three ways to sample that are not plain molecular dynamics, each with a check you can see:

1. **Replica exchange** over a temperature ladder lets a particle in a double well cross a barrier of 12 kT that plain MD at the lowest temperature never crosses; the lowest rung then has the exact Boltzmann distribution.
2. **Metropolis Monte Carlo** (single-particle moves) and **Langevin MD** of the same Lennard-Jones fluid give the same energy, pressure and g(r): they sample the same ensemble by different routes.
3. A **Monte Carlo barostat** turns MD into NPT: at the equation-of-state pressure of a density, the box settles at that density.

Reduced units for the Lennard-Jones fluid; kJ/mol and nm for the double well.

**Knobs** (next cell): `ROUNDS` (exchange rounds), `SWEEPS`, `MD_STEPS`, `N_ATOMS`. The defaults run in about a minute on 2 CPU cores."""),
    code("""%matplotlib inline
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import workbench as wb
from workbench.observables import radial_distribution
from workbench.panels.free_energy import acceptance_figure
from workbench.potentials.base import FunctionPotential, Sum
from workbench.sampling import barostat, montecarlo, replica
from workbench.simulate import Simulation

ROUNDS = 6000      # replica-exchange rounds of 50 steps
SWEEPS = 600       # Monte Carlo sweeps (every particle once each)
MD_STEPS = 3000    # Langevin steps of the same fluid
N_ATOMS = 256      # Lennard-Jones particles (4 n^3)"""),
    md("""## 1. Replica exchange on a double well

U(x, y, z) = h (x^2 - 1)^2 + 50 (y^2 + z^2) kJ/mol with h = 12.5 kJ/mol: at kT = 1 kJ/mol the barrier is 12.5 kT. Six replicas on a geometric ladder from kT = 1 to 12 run Langevin dynamics side by side (a batch axis, one compiled program); every 50 steps neighbours try to swap configurations with the Metropolis rule."""),
    code("""def double_well(r, p):
    x = r[0, 0]
    return p["h"] * (x * x - 1.0) ** 2 + 50.0 * (r[0, 1] ** 2 + r[0, 2] ** 2)

params = {"h": jnp.asarray(12.5)}
rex = replica.replica_exchange(FunctionPotential(double_well), exchange_every=50)
ladder = replica.ladder(rex.integrator.settings, 1.0, 12.0, 6, dt=0.01, gamma=5.0)
states, stats = rex.init(jax.random.PRNGKey(0), np.array([[-1.0, 0.0, 0.0]]), params, ladder)
run = jax.jit(lambda st, sa: rex.run(st, sa, params, ladder, ROUNDS,
                                     record=lambda s: s.positions[:, 0, 0]))
states, stats, x = run(states, stats)
x = np.asarray(x)
print("acceptance per pair:", np.round(stats.acceptance(), 2))
print("round trips per replica:", np.asarray(stats.round_trips))"""),
    md("""The lowest rung's histogram against the exact distribution exp(-U(x)/kT), and, for contrast, plain Langevin MD at the same temperature started in the left well:"""),
    code("""integ = wb.dynamics.integrators.langevin(FunctionPotential(double_well))
one = integ.settings(dt=0.01, kT=1.0, gamma=5.0)
s = integ.init(jax.random.PRNGKey(1), np.array([[-1.0, 0.0, 0.0]]), params, one)
_, x_md = jax.jit(lambda s: jax.lax.scan(lambda c, _: (integ.step(c, params, one), c.positions[0, 0]),
                                         s, None, length=ROUNDS * 50)[0:2])(s)
grid = np.linspace(-1.6, 1.6, 200)
exact = np.exp(-12.5 * (grid**2 - 1) ** 2)
exact /= np.trapezoid(exact, grid)
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax.hist(x[:, 0], bins=80, range=(-1.6, 1.6), density=True, alpha=0.6, label="replica exchange, kT = 1")
ax.hist(np.asarray(x_md)[::50], bins=80, range=(-1.6, 1.6), density=True, alpha=0.6, label="plain MD, kT = 1")
ax.plot(grid, exact, "k", lw=1, label="exact")
ax.set(xlabel="x (nm)", ylabel="density")
ax.legend(fontsize=8)
ax2.imshow(plt.imread(__import__("io").BytesIO(acceptance_figure(stats))))
ax2.axis("off")
print(f"left-well fraction: replica exchange {np.mean(x[:, 0] < 0):.2f}, plain MD {np.mean(np.asarray(x_md) < 0):.2f} (exact 0.50)")"""),
    md("""## 2. Monte Carlo and MD of the same Lennard-Jones fluid

T* = 1.5, rho* = 0.8442 (the LAMMPS `in.lj` liquid), cutoff 2.5 sigma. Monte Carlo: every particle in turn is displaced at random and accepted on its *local* energy change, read from the neighbor list (O(neighbours) per move); the step size adapts to the acceptance during equilibration, then is frozen. MD: Langevin at the same temperature. The Monte Carlo 'pressure' column holds only the virial part (velocities are zero), so rho T is added."""),
    code("""T, rho = 1.5, 0.8442
fluid = wb.lj_fluid(n_atoms=N_ATOMS, density=rho, cutoff=2.5, skin=0.5, truncation="cut")
mc = montecarlo.metropolis(fluid, mode="single", step_size=0.1)
sim_mc = Simulation(fluid, mc, dict(kT=T), report_interval=10, frames_per_chunk=10, seed=2)
sim_mc.run(SWEEPS // 3, progress=False)
sim_mc.state = montecarlo.production(sim_mc.state)
frames_mc, thermo_mc = [], []
for _ in range(SWEEPS // 100):
    f = sim_mc.advance()
    frames_mc.append(f.positions)
    thermo_mc.append(f.thermo)
sim_md = Simulation(fluid, "langevin", dict(dt=0.005, kT=T, gamma=1.0),
                    report_interval=30, frames_per_chunk=10, seed=3)
sim_md.run(1500, progress=False)
frames_md, thermo_md = [], []
for _ in range(MD_STEPS // 300):
    f = sim_md.advance()
    frames_md.append(f.positions)
    thermo_md.append(f.thermo)
cat = lambda rows, k: np.concatenate([r[k] for r in rows])  # noqa: E731
u_mc, u_md = cat(thermo_mc, "potential") / N_ATOMS, cat(thermo_md, "potential") / N_ATOMS
p_mc = rho * T + cat(thermo_mc, "pressure")
p_md = cat(thermo_md, "pressure")
print(f"Monte Carlo: U/N = {u_mc.mean():.3f}, P = {p_mc.mean():.3f} (acceptance {montecarlo.mc_state(sim_mc.state).acceptance():.2f})")
print(f"Langevin MD: U/N = {u_md.mean():.3f}, P = {p_md.mean():.3f}")
r, g_mc = radial_distribution(fluid.space, np.concatenate(frames_mc), 3.0, 90)
_, g_md = radial_distribution(fluid.space, np.concatenate(frames_md), 3.0, 90)
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(r, g_md, label="Langevin MD")
ax.plot(r, g_mc, "--", label="Monte Carlo")
ax.set(xlabel="r (sigma)", ylabel="g(r)")
ax.legend()"""),
    md("""## 3. NPT with a Monte Carlo barostat

Every 25 Langevin steps a random volume change is proposed, with the particles' positions scaled with the box, and accepted on dU + P dV - N kT ln(V'/V). The tail correction of the truncated potential is added as an energy term of the box, so the barostat sees the full Lennard-Jones potential. The target pressure is the Johnson-Zollweg-Gubbins equation-of-state value for rho* = 0.5 at T* = 2.0 (P* = 1.0775); the density should settle at 0.5 (the tests check this within 1.5%).

The barostat is a sampler around an integrator (`integrator=`, a name or an integrator object) and is itself an integrator, so samplers compose: `metadynamics(system, cvs, ..., integrator=npt)` is NPT metadynamics, `umbrella(system, cvs, centers, k, integrator=npt)` NPT umbrella windows. Each sampler keeps its own state under its own key of `state.extra`; read the barostat's with `barostat.barostat_state(state)`."""),
    code("""n = N_ATOMS
gas = wb.lj_fluid(n_atoms=n, density=0.45, cutoff=2.5, skin=0.5, truncation="cut")
full = Sum({"pair": gas.potential, "tail": gas.potential.tail_term(n)})
npt = barostat.monte_carlo_barostat(full, 1.0775, every=25)
with_tail = gas.replace(potential=full, params={"pair": gas.params, "tail": gas.params})
sim = Simulation(with_tail, npt, dict(dt=0.005, kT=2.0, gamma=1.0),
                 report_interval=25, frames_per_chunk=40, seed=4)
density = []
for _ in range(6):
    density.append(n / np.abs(np.linalg.det(sim.advance().boxes)))
density = np.concatenate(density)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(np.arange(len(density)) * 25 * 0.005, density)
ax.axhline(0.5, color="k", lw=0.8, ls="--")
ax.set(xlabel="time (tau)", ylabel="density")
print(f"<rho> over the second half: {density[len(density) // 2:].mean():.3f} (EOS: 0.500); "
      f"barostat acceptance {barostat.barostat_state(sim.state).acceptance():.2f}")"""),
    md("""## Exercises

1. Shrink the ladder to 3 replicas between kT = 1 and 12. What happens to the acceptance and the round trips, and to the lowest rung's left-well fraction?
2. Compare Monte Carlo with `mode="hybrid"` (trajectories of 10 velocity-Verlet steps) against single-particle moves: which decorrelates the energy faster per second?
3. Run the barostat from a start density of 0.6 instead of 0.45, or with `anisotropic=True`."""),
]

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": "python3"}, "language_info": {"name": "python"}}
nbf.write(nb, "notebooks/05_monte_carlo_replica_exchange.ipynb")
