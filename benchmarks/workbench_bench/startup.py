"""Start-up benchmark (``workbench bench startup``): how soon the workbench shows something.

Each figure is measured in a fresh Python process (nothing compiled, nothing cached in
memory), twice per case: **cold**, with an empty JAX persistent compilation cache, and
**warm**, a second fresh process with the cache the first one filled (what a user gets the
second time a notebook runs: ``workbench lab`` and ``dev.py`` point JAX at a cache directory).
Imports (``import workbench``, OpenMM) are timed separately and not included.

Cases:

* ``lj``: the live panel's system, 1,000 Lennard-Jones atoms (simple cubic start, density
  0.8442, cutoff 2.5, skin 0.3), a :class:`~workbench.session.Session` with Langevin at
  T = 1.44: seconds until its first frame is recorded (``lj_first_frame_s``);
* ``pme``: alanine dipeptide in TIP3P water (PME, 1 nm, HBonds, rigid water, 2 fs, 300 K):
  seconds from loading the PDB to the end of the first chunk of ``--steps`` steps
  (``pme_first_chunk_cold_s`` / ``_warm_s``), with OpenMM-CPU's time for the same in the same
  run (``openmm_pme_first_chunk_s``);
* ``obc2``: alanine dipeptide in OBC2 implicit solvent, the same way (``obc2_first_chunk_*``).

``--json FILE`` writes every figure, and the compile seconds of each case (JAX's own
monitoring events), so that a slow start says what limited it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from workbench_bench import child_env

__all__ = ["main", "measure", "CASES"]

CASES = ("lj", "pme", "obc2")


def _child(case: str, steps: int) -> dict:
    """Runs in the fresh process: returns the case's figures."""
    t0 = time.perf_counter()
    import jax  # noqa: F401

    import workbench  # noqa: F401
    from workbench_bench.peptide import compile_timer

    imports = time.perf_counter() - t0
    if case.startswith("openmm_"):
        from workbench_bench.peptide import run_openmm

        return {"first_chunk_s": run_openmm(case.split("_")[1], 0.0, steps)["first_chunk_s"]}
    with compile_timer() as compiled:
        t1 = time.perf_counter()
        if case == "lj":
            from workbench_bench.panels import lattice_system
            from workbench.session import Session

            system = lattice_system(1000)
            session = Session(system, "langevin", dict(dt=0.005, kT=1.44, gamma=1.0),
                              report_interval=steps, frames_per_chunk=1)
            session.run_blocking(1)
            assert session.frames_total >= 1
        else:
            from workbench import units
            from workbench_bench.peptide import DT_PS, SYSTEMS, TEMPERATURE_K
            from workbench.forcefield.openmm import load
            from workbench.simulate import Simulation
            from workbench.systems import data_file

            spec = SYSTEMS[case]
            kw = dict(cutoff=spec["cutoff"]) if spec["cutoff"] else {}
            system = load(data_file(spec["pdb"]), spec["forcefield"],
                          nonbonded_method=spec["method"], constraints="HBonds", **kw)
            sim = Simulation(system, "langevin",
                             dict(dt=DT_PS, kT=units.kT_from_kelvin(TEMPERATURE_K), gamma=1.0),
                             report_interval=steps, frames_per_chunk=1)
            frame = sim.advance()
            assert frame.positions.shape[0] == 1
        first = time.perf_counter() - t1
    return {"first_s": first, "import_s": imports, "compile_s": compiled["seconds"]}


def measure(case: str, cache_dir: str | None, steps: int) -> dict:
    """Run ``case`` in a fresh process with JAX's compilation cache in ``cache_dir`` (None:
    no persistent cache); returns its figures."""
    env = child_env()
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        env.pop(k, None)
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    code = ("import json, sys; from workbench_bench.startup import _child; "
            f"print('@@' + json.dumps(_child({case!r}, {int(steps)})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"startup case {case} failed:\n{out.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    """``workbench bench startup [--cases lj pme obc2] [--steps N] [--json FILE]``."""
    ap = argparse.ArgumentParser(prog="workbench bench startup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=20,
                    help="steps in the first chunk (default 20: a live panel's chunk)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    result: dict = {"benchmark": "startup", "steps": args.steps,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "load_average": list(os.getloadavg())
                                if hasattr(os, "getloadavg") else None}}
    for case in args.cases:
        with tempfile.TemporaryDirectory(prefix="wb-jax-cache-") as cache:
            cold = measure(case, cache, args.steps)
            warm = measure(case, cache, args.steps)
        entry = {"cold": cold, "warm": warm}
        if case in ("pme", "obc2"):
            entry["openmm"] = measure(f"openmm_{case}", None, args.steps)
            result[f"openmm_{case}_first_chunk_s"] = entry["openmm"]["first_chunk_s"]
            result[f"{case}_first_chunk_cold_s"] = cold["first_s"]
            result[f"{case}_first_chunk_warm_s"] = warm["first_s"]
        else:
            result["lj_first_frame_s"] = cold["first_s"]
            result["lj_first_frame_warm_s"] = warm["first_s"]
        result[case] = entry
        peer = (f" | OpenMM-CPU {entry['openmm']['first_chunk_s']:.2f} s"
                if "openmm" in entry else "")
        print(f"{case}: first {'frame' if case == 'lj' else 'chunk'} cold "
              f"{cold['first_s']:.2f} s (compile {cold['compile_s']:.2f} s), warm "
              f"{warm['first_s']:.2f} s (compile {warm['compile_s']:.2f} s); imports "
              f"{cold['import_s']:.2f} s{peer}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
