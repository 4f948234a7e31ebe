"""Writes notebooks/00_quickstart.ipynb (kept as a script so the notebook stays reviewable)."""
import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Quick start: a Lennard-Jones fluid\n\n"
        "Build a Lennard-Jones fluid in reduced units, minimize it, run Langevin (NVT) dynamics and "
        "look at energy, temperature and the radial distribution function.\n\n"
        "Knobs: `N_ATOMS` (must be 4 n^3: 108, 256, 500, 864, 4000, ...) and `N_STEPS`. "
        "The defaults keep the notebook under a minute on 2 CPU cores."
    ),
    nbf.v4.new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "import workbench as wb\n\n"
        "N_ATOMS = 500      # try 4000 or 32000\n"
        "N_STEPS = 4000\n"
        "KT = 1.44          # reduced temperature\n"
        "DENSITY = 0.8442"
    ),
    nbf.v4.new_markdown_cell(
        "## Build and minimize\n"
        "`lj_fluid` places atoms on an fcc lattice. `params` is a pytree of arrays: changing a value "
        "never recompiles."
    ),
    nbf.v4.new_code_cell(
        "system = wb.lj_fluid(N_ATOMS, density=DENSITY, cutoff=2.5, skin=0.3, truncation='shift')\n"
        "print(system.n_atoms, 'atoms in a box of', np.diag(np.asarray(system.space.box)))\n"
        "print('params:', {k: np.asarray(v) for k, v in system.params.items()})\n\n"
        "result = wb.minimize(system.potential, system.positions, system.params, ftol=1e-2)\n"
        "print(f'minimized: E = {result.energy:.2f}, max force = {result.max_force:.2e}, '\n"
        "      f'converged = {result.converged} after {result.steps} steps')"
    ),
    nbf.v4.new_markdown_cell("## Langevin dynamics (BAOAB)"),
    nbf.v4.new_code_cell(
        "# the system brings potential, params, masses, box and units; positions= overrides one piece\n"
        "sim = wb.Simulation(system, 'langevin', dict(dt=0.005, kT=KT, gamma=1.0),\n"
        "                    positions=result.positions, seed=1, report_interval=50,\n"
        "                    frames_per_chunk=4)\n"
        "frames = []\n"
        "thermo = sim.run(N_STEPS, reporters=[lambda f: frames.append(f.positions)])\n"
        "frames = np.concatenate(frames)\n"
        "print(f'{len(frames)} frames; compiled {sim.compile_count} time(s); '\n"
        "      f'{int(sim.state.aux.n_builds)} neighbor-list builds')"
    ),
    nbf.v4.new_code_cell(
        "fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))\n"
        "t = thermo['time']\n"
        "ax[0].plot(t, thermo['potential'] / N_ATOMS, label='potential')\n"
        "ax[0].plot(t, thermo['total'] / N_ATOMS, label='total')\n"
        "ax[0].set_xlabel('time (reduced)'); ax[0].set_ylabel('energy per atom'); ax[0].legend()\n"
        "ax[1].plot(t, thermo['kT']); ax[1].axhline(KT, color='k', ls='--', label='set kT')\n"
        "ax[1].set_xlabel('time (reduced)'); ax[1].set_ylabel('kT'); ax[1].legend()\n"
        "plt.tight_layout()\n"
        "half = len(t) // 2\n"
        "print(f\"<kT> = {thermo['kT'][half:].mean():.3f} (set {KT}), \"\n"
        "      f\"<P> = {thermo['pressure'][half:].mean():.3f} (virial, no tail correction)\")"
    ),
    nbf.v4.new_markdown_cell("## Radial distribution function"),
    nbf.v4.new_code_cell(
        "r, g = wb.observables.radial_distribution(system.space, frames[len(frames) // 2:], r_max=3.0, n_bins=120)\n"
        "plt.figure(figsize=(5, 3.5))\n"
        "plt.plot(r, g); plt.axhline(1, color='k', lw=0.5)\n"
        "plt.xlabel('r / sigma'); plt.ylabel('g(r)')\n"
        "print(f'first peak at r = {r[np.argmax(g)]:.3f} sigma, height {g.max():.2f}')"
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
nb.metadata["language_info"] = {"name": "python"}
nbf.write(nb, "notebooks/00_quickstart.ipynb")
