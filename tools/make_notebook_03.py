"""Writes notebooks/03_alanine_dipeptide.ipynb (kept as a script so the notebook stays reviewable).

Run from the project root: ``python tools/make_notebook_03.py``."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

cells = [
    md(
        "# Alanine dipeptide: a real force field, live\n\n"
        "Build ACE-ALA-NME from internal coordinates, give it OpenMM's amber14 force field, check "
        "every energy term against OpenMM, minimize it, and run Langevin dynamics with bonds to "
        "hydrogen constrained (2 fs steps): first in implicit solvent (OBC2), live, with a "
        "force-field torsion barrier on a slider; then in a box of water with PME. Finally, the "
        "sensitivity of the energy to every torsion type, by automatic differentiation.\n\n"
        "Molecular units throughout: nm, ps, kJ/mol, K.\n\n"
        "**Knobs** (next cell): `SEQUENCE` (any short sequence of standard residues, capped with "
        "ACE/NME), `IMPLICIT_STEPS` and `WATER_STEPS`. The defaults run in about two minutes on 2 "
        "CPU cores; for a converged Ramachandran plot run 100,000 implicit-solvent steps or more."
    ),
    code(
        "%matplotlib inline\n"
        "import subprocess\n"
        "import sys\n\n"
        "import jax\n"
        "import jax.numpy as jnp\n"
        "import matplotlib.pyplot as plt\n"
        "import mdtraj as md\n"
        "import numpy as np\n\n"
        "import workbench as wb\n"
        "from workbench import units\n"
        "from workbench.forcefield import openmm as ff\n"
        "from workbench.forcefield.builder import build_peptide\n"
        "from workbench.panels import Workbench\n"
        "from workbench.session import Session\n\n"
        "SEQUENCE = \"A\"          # ACE-A-NME is alanine dipeptide; try \"AAA\" or \"GW\"\n"
        "TEMPERATURE = 300.0     # K\n"
        "IMPLICIT_STEPS = 5000   # 10 ps of implicit-solvent dynamics at 2 fs\n"
        "LIVE_CHUNKS = 40        # chunks of 50 steps in the live view\n"
        "WATER_STEPS = 150       # the water box (about 2,500 atoms) is much slower on CPUs\n"
        "kT = units.kT_from_kelvin(TEMPERATURE)"
    ),
    md(
        "## Build and parameterize\n\n"
        "`build_peptide` places the heavy atoms from ideal internal coordinates and adds hydrogens "
        "with OpenMM's `Modeller`; `from_topology` runs OpenMM's `ForceField.createSystem` and "
        "turns every force into a workbench energy term. Parameters are grouped by **force-field "
        "type**: one entry per torsion type (atom classes and periodicity), per Lennard-Jones "
        "atom type and per residue-atom charge, so changing a type changes all its instances."
    ),
    code(
        "topology, positions = build_peptide(SEQUENCE)\n"
        "system = ff.from_topology(topology, positions, [\"amber14-all.xml\", \"implicit/obc2.xml\"],\n"
        "                          constraints=\"HBonds\")\n"
        "print(system.n_atoms, \"atoms; terms:\", list(system.potential.terms))\n"
        "torsions = system.potential.terms[\"PeriodicTorsionForce\"]\n"
        "print(f\"{torsions.n_instances} torsion terms in {torsions.n_types} force-field types\")\n"
        "phi_types = system.find_types(\"PeriodicTorsionForce\", \"k\", \"C-CX-N-C\")  # phi: C-N-CA-C\n"
        "print(\"phi torsion types:\", phi_types)"
    ),
    md(
        "### Check against OpenMM\n\n"
        "`workbench compare-openmm` evaluates every term in workbench and on OpenMM's Reference "
        "platform, in double precision, and prints the relative errors (it exits non-zero when a "
        "term disagrees beyond 1e-6). Here it runs on the project's copy of alanine dipeptide."
    ),
    code(
        "pdb = wb.systems.data_file(\"alanine-dipeptide-vacuum.pdb\")\n"
        "out = subprocess.run([sys.executable, \"-m\", \"workbench.cli\", \"compare-openmm\", pdb,\n"
        "                      \"--forcefield\", \"amber14-all.xml\", \"implicit/obc2.xml\"],\n"
        "                     capture_output=True, text=True)\n"
        "print(out.stdout[-2500:], out.stderr[-2000:])"
    ),
    md(
        "## Minimize\n\n"
        "FIRE on the constraint surface: with `constraints=\"HBonds\"` OpenMM leaves the X-H "
        "bonds out of the bond term (they are constraints), so the minimizer keeps them at "
        "their lengths. `dt_max` (ps, unit masses) suits stiff molecular bonds."
    ),
    code(
        "result = wb.minimize(system.potential, system.positions, system.params, ftol=20.0,\n"
        "                     max_steps=3000, constraints=system.constraints(), dt_max=0.001)\n"
        "print(f\"energy {result.energy:.1f} kJ/mol, max force {result.max_force:.1f} kJ/mol/nm \"\n"
        "      f\"after {result.steps} steps\")"
    ),
    md(
        "## Live: implicit solvent\n\n"
        "Langevin dynamics (BAOAB with SHAKE on the X-H bonds, as OpenMM's "
        "LangevinMiddleIntegrator), 2 fs, friction 5/ps. The slider is the **force constant of "
        "the phi torsion type** C-N-CA-C (n = 2) of amber14: move it and the backbone's "
        "preference changes at the next chunk, with no recompilation (the compile count stays "
        "at 1). The run goes on in the background."
    ),
    code(
        "session = Session(system, \"langevin\", dict(dt=0.002, kT=kT, gamma=5.0),\n"
        "                  positions=result.positions, report_interval=50, seed=1)\n"
        "session.run_blocking(n_steps=IMPLICIT_STEPS)\n"
        "name, label = next((k, v) for k, v in phi_types.items() if v.endswith(\"n=2\"))\n"
        "view = Workbench(session, parameter_options=dict(\n"
        "    include=[name, \"kT\", \"gamma\"], labels={name: \"phi k (\" + label + \")\"}))\n"
        "session.start(LIVE_CHUNKS)\n"
        "view"
    ),
    md(
        "## Ramachandran plot\n\n"
        "The backbone dihedrals phi (C-N-CA-C) and psi (N-CA-C-N) of every frame so far "
        "(`mdtraj.compute_phi/psi` on the session's frames). With the default run length the "
        "plot shows the basins the molecule visited; run longer for populations."
    ),
    code(
        "session.wait(timeout=120)\n"
        "traj = md.Trajectory(session.frames(), session.topology())\n"
        "_, phi = md.compute_phi(traj)\n"
        "_, psi = md.compute_psi(traj)\n"
        "fig, ax = plt.subplots(figsize=(4.5, 4))\n"
        "ax.scatter(np.degrees(phi[:, 0]), np.degrees(psi[:, 0]), s=6, alpha=0.5)\n"
        "ax.set(xlim=(-180, 180), ylim=(-180, 180), xlabel=\"phi (deg)\", ylabel=\"psi (deg)\",\n"
        "       title=f\"{len(traj)} frames, {session.step * 0.002:.0f} ps\")\n"
        "thermo = session.thermo()\n"
        "print(f\"<T> = {units.kelvin_from_kT(thermo['kT'][len(thermo['kT']) // 2:].mean()):.0f} K \"\n"
        "      f\"(set {TEMPERATURE:.0f} K; {session.simulation.dof} degrees of freedom), \"\n"
        "      f\"compiles: {session.compile_count}\")"
    ),
    md(
        "## Which torsion types matter? dE/dk by automatic differentiation\n\n"
        "The energy is a differentiable function of the per-type parameters, so one `jax.grad` "
        "gives the sensitivity of the mean potential energy over the sampled frames to every "
        "torsion type's force constant. (Its ensemble counterpart, d<U>/dk, adds a fluctuation "
        "term; see the gradients notebooks.)"
    ),
    code(
        "frames = jnp.asarray(session.frames())\n"
        "pot, params = system.potential, session.params\n\n"
        "def mean_energy(k):\n"
        "    p = {**params, \"PeriodicTorsionForce\": {**params[\"PeriodicTorsionForce\"], \"k\": k}}\n"
        "    return jnp.mean(jax.vmap(lambda r: pot.energy(r, p))(frames))\n\n"
        "grad = np.asarray(jax.grad(mean_energy)(params[\"PeriodicTorsionForce\"][\"k\"]))\n"
        "order = np.argsort(-np.abs(grad))[:15]\n"
        "fig, ax = plt.subplots(figsize=(7, 3.5))\n"
        "ax.barh([torsions.type_names[i] for i in order][::-1], grad[order][::-1])\n"
        "ax.set_xlabel(\"d<E>/dk (dimensionless: kJ/mol per kJ/mol)\")\n"
        "plt.tight_layout()"
    ),
    md(
        "## In water: PME, rigid TIP3P\n\n"
        "The same molecule in a box of about 800 TIP3P waters (`data/alanine-dipeptide-water.pdb`, "
        "made by `tools/make_data.py`): particle-mesh Ewald with a 1 nm cutoff, rigid water "
        "(SETTLE), X-H bonds constrained. The **water** checkbox under the view hides the "
        "solvent.\n\n"
        "The box starts from a minimized structure, so the temperature first *drops*: kinetic "
        "energy flows into the potential energy until they share it (equipartition), and the "
        "thermostat (friction 1/ps) restores 300 K over a few picoseconds, longer than this "
        "short run. The CPU speed of PME in workbench is measured against OpenMM in "
        "`benchmarks/RESULTS.md` (`workbench bench peptide`)."
    ),
    code(
        "water = ff.load(wb.systems.data_file(\"alanine-dipeptide-water.pdb\"),\n"
        "                [\"amber14-all.xml\", \"amber14/tip3p.xml\"], nonbonded_method=\"PME\",\n"
        "                cutoff=1.0, constraints=\"HBonds\")\n"
        "wet = Session(water, \"langevin\", dict(dt=0.002, kT=kT, gamma=1.0), report_interval=25,\n"
        "              seed=2)\n"
        "th = wet.run_blocking(n_steps=WATER_STEPS)\n"
        "print(f\"{water.n_atoms} atoms, {wet.step} steps: T = \"\n"
        "      f\"{units.kelvin_from_kT(th['kT'][-1]):.0f} K, potential {th['potential'][-1]:.0f} kJ/mol, \"\n"
        "      f\"{wet.steps_per_second:.1f} steps/s\")\n"
        "Workbench(wet, parameter_options=dict(include=[\"kT\", \"gamma\"]))"
    ),
    md(
        "## Exercises\n\n"
        "1. Set the phi torsion barrier to zero with the slider and watch where phi goes; then "
        "double it. Which basin of the Ramachandran plot gains?\n"
        "2. Change `SEQUENCE` to \"AAA\" and compare the torsion sensitivities per residue.\n"
        "3. Run `workbench compare-openmm` on `data/alanine-dipeptide-water.pdb` with "
        "`--nonbonded PME` from a terminal."
    ),
]

nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                             "language": "python"}
nb.metadata["language_info"] = {"name": "python"}
nbf.write(nb, "notebooks/03_alanine_dipeptide.ipynb")
