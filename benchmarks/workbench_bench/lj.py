"""``workbench bench lj``: the Lennard-Jones fluid of LAMMPS ``in.lj``, workbench against peers.

The system (reduced units; sigma = epsilon = mass = 1): an fcc lattice of 4 n^3 atoms at
density 0.8442, Maxwell-Boltzmann velocities at T = 1.44 (seeded, centre-of-mass motion removed,
rescaled to exactly T with 3N - 3 degrees of freedom, as LAMMPS ``velocity create`` does), a plain
cut at 2.5 (no shift, no tail correction), a Verlet skin of 0.3, NVE velocity Verlet with
dt = 0.005. Every engine starts from the same positions and velocities.

Per engine and system size it measures

* ``compile_s``: wall time of the first chunk in this process (compilation + ``chunk`` steps);
* ``cold_first_chunk_s``: in a fresh Python process (cold caches, no persistent compilation
  cache), the time from "imports done" to the first finished chunk: build the system, allocate
  the neighbor list, compile, run ``chunk`` steps (``cold_import_s`` is the import time before);
* ``atom_steps_per_s``: N * steps / seconds over ``steps`` steady-state steps (after the first
  chunk and one probe chunk), neighbor-list rebuilds included (``rebuilds`` counts them);
* the total energy per atom before the first step and after each timed run (must stay finite).

All engines run the same number of steps from the same state. With ``--steps auto`` the count is
chosen so that workbench's timed run lasts about ``--seconds``. Only workbench's public API is
used (:func:`workbench.lj_fluid`, :class:`workbench.Simulation`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from workbench_bench import child_env
from workbench_bench.ljcase import (  # noqa: F401 (re-exported: the benchmark's definition)
    CUTOFF, DENSITY, DT, MASS, SKIN, TEMPERATURE, LJCase, check_atoms, lj_case, probe_chunk,
    start,
)

__all__ = [  # noqa: RUF022 (grouped: constants, classes, functions)
    "DENSITY", "TEMPERATURE", "CUTOFF", "SKIN", "DT", "MASS", "PEERS",
    "LJCase", "EngineResult", "WorkbenchEngine", "lj_case", "check_atoms", "measure",
    "probe_chunk", "cold_start", "machine_info", "format_table", "add_arguments", "run", "main",
]

PEERS = ("jax-md", "openmm")
_PEER_ALIASES = {"jax-md": "jax-md", "jax_md": "jax-md", "jaxmd": "jax-md", "openmm": "openmm"}
ENGINES = ("workbench",) + PEERS


# ------------------------------------------------------------------------------ engines
class WorkbenchEngine:
    """workbench: :func:`workbench.lj_fluid` + ``Simulation('verlet')``, one frame per chunk
    of ``chunk`` steps. ``variant`` is unused (kept for the common engine interface)."""

    name = "workbench"

    def __init__(self, case: LJCase, chunk: int, variant: str | None = None):
        import workbench as wb

        system = wb.lj_fluid(case.n_atoms, DENSITY, cutoff=CUTOFF, skin=SKIN, truncation="cut",
                             mass=MASS)
        if not np.allclose(system.positions, case.positions):
            raise RuntimeError("workbench.lj_fluid positions differ from the benchmark lattice")
        self.sim = wb.Simulation(
            system.potential, system.params, "verlet", {"dt": DT}, system.positions,
            masses=system.masses, velocities=case.velocities, report_interval=chunk,
            frames_per_chunk=1, seed=case.seed,
        )
        self.variant = ""
        self.extra: dict = {}
        self.initial_potential = float(self.sim.state.potential_energy)
        self.last_total = self.initial_potential + case.kinetic_energy

    def advance(self, n_chunks: int) -> None:
        """Run ``n_chunks`` chunks (blocks until done)."""
        for _ in range(n_chunks):
            frame = self.sim.advance()
        self.last_total = float(frame.thermo["total"][-1])

    def total_energy(self) -> float:
        """Kinetic + potential energy (epsilon) at the current state."""
        return self.last_total

    @property
    def builds(self) -> int:
        """Neighbor-list builds so far (allocation included)."""
        import jax

        from workbench.neighbors import NeighborList

        leaves = jax.tree_util.tree_leaves(
            self.sim.state.aux, is_leaf=lambda x: isinstance(x, NeighborList))
        return sum(int(x.n_builds) for x in leaves if isinstance(x, NeighborList))

    @property
    def regrowths(self) -> int:
        return int(self.sim.regrowths)


def engine_class(name: str) -> type:
    """The engine class for ``name`` (peers are imported lazily; raises
    :class:`workbench_bench.peers.PeerUnavailable` when a peer package is missing)."""
    if name == "workbench":
        return WorkbenchEngine
    from . import peers

    return peers.engine_class(name)


# ------------------------------------------------------------------------------ measuring
@dataclass
class EngineResult:
    """One engine at one size. Rates in atom-steps/s, times in s, energies per atom (epsilon)."""

    engine: str
    n_atoms: int
    steps: int
    chunk: int
    atom_steps_per_s: float
    seconds: list[float]
    setup_s: float
    compile_s: float
    probe_chunk_s: float
    cold_first_chunk_s: float | None = None
    cold_import_s: float | None = None
    rebuilds: int | None = None
    regrowths: int = 0
    energy_start: float = float("nan")
    energy_end: float = float("nan")
    energy_finite: bool = False
    variant: str = ""
    extra: dict = field(default_factory=dict)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_engine(name: str, case: LJCase, chunk: int, variant: str | None = None):
    """Build an engine and run its first chunk; returns (engine, setup_s, compile_s)."""
    return start(engine_class(name), case, chunk, variant)


def measure(name: str, case: LJCase, chunk: int, steps: int | None, repeat: int = 1,
            seconds: float = 10.0, variant: str | None = None,
            started: tuple | None = None) -> EngineResult:
    """Measure one engine: first chunk (compile), one probe chunk, then ``repeat`` timed runs
    of ``steps`` steps (None: enough for about ``seconds`` s each, from the probe).
    ``started``: (engine, setup_s, compile_s, probe_s) when already built by the caller."""
    if started is None:
        eng, setup_s, compile_s = start_engine(name, case, chunk, variant)
        probe_s = probe_chunk(eng)
    else:
        eng, setup_s, compile_s, probe_s = started
    e_start = case.kinetic_energy + float(eng.initial_potential)
    n_chunks = (max(3, math.ceil(seconds / max(probe_s, 1e-9))) if steps is None
                else max(1, steps // chunk))
    builds0 = eng.builds
    load_before = _loadavg()
    times, energies = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        eng.advance(n_chunks)
        times.append(time.perf_counter() - t0)
        energies.append(eng.total_energy())
    n_steps = n_chunks * chunk
    rate = case.n_atoms * n_steps / statistics.median(times)
    rebuilds = None if builds0 is None else eng.builds - builds0
    finite = bool(np.all(np.isfinite(energies)) and np.isfinite(e_start))
    return EngineResult(
        engine=name, n_atoms=case.n_atoms, steps=n_steps, chunk=chunk, atom_steps_per_s=rate,
        seconds=times, setup_s=setup_s, compile_s=compile_s, probe_chunk_s=probe_s,
        rebuilds=rebuilds, regrowths=eng.regrowths, energy_start=e_start / case.n_atoms,
        energy_end=energies[-1] / case.n_atoms, energy_finite=finite,
        variant=getattr(eng, "variant", ""),
        extra={**getattr(eng, "extra", {}), "loadavg_before": load_before,
               "loadavg_after": _loadavg()},
    )


# ------------------------------------------------------------------------------ cold start
def cold_start(name: str, n_atoms: int, chunk: int, seed: int = 0,
               variant: str | None = None) -> dict:
    """Time-to-first-chunk in a fresh Python process (no in-memory or persistent compilation
    cache). Returns ``{"import_s", "first_chunk_s"}`` (s); raises RuntimeError on failure."""
    spec = json.dumps({"engine": name, "n_atoms": n_atoms, "chunk": chunk, "seed": seed,
                       "variant": variant})
    env = child_env(dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false"))
    # The clock starts before ``import workbench`` (which imports JAX) so imports are timed.
    code = ("import sys, time; t0 = time.perf_counter(); from workbench_bench import lj; "
            "sys.exit(lj._cold_worker(sys.argv[1], t0))")
    proc = subprocess.run([sys.executable, "-c", code, spec],
                          capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"cold-start worker for {name} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def _cold_worker(spec_json: str, t0: float | None = None) -> int:
    """Body of the fresh process behind :func:`cold_start`; prints one JSON line.
    ``t0``: perf_counter at interpreter start (before importing workbench)."""
    t0 = time.perf_counter() if t0 is None else t0
    spec = json.loads(spec_json)
    name = spec["engine"]
    if name == "workbench":
        import jax  # noqa: F401

        import workbench  # noqa: F401
    elif name == "jax-md":
        import jax_md  # noqa: F401
    elif name == "openmm":
        import openmm  # noqa: F401
    t1 = time.perf_counter()
    case = lj_case(spec["n_atoms"], spec["seed"])
    eng, _, _ = start_engine(name, case, spec["chunk"], spec.get("variant"))
    t2 = time.perf_counter()
    energy = eng.total_energy()
    print(json.dumps({"import_s": t1 - t0, "first_chunk_s": t2 - t1,
                      "energy_finite": bool(np.isfinite(energy))}))
    return 0


# ------------------------------------------------------------------------------ reporting
def machine_info() -> dict[str, Any]:
    """CPU, OS, Python and library versions, and the date (UTC)."""
    from importlib import metadata

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1_5_15": _loadavg(),
    }
    for dist in ("workbench", "jax", "jaxlib", "numpy", "jax-md", "openmm"):
        try:
            info[dist.replace("-", "_") + "_version"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist.replace("-", "_") + "_version"] = None
    try:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [str(d) for d in jax.devices()]
        info["jax_x64"] = bool(jax.config.jax_enable_x64)
    except RuntimeError as exc:  # no backend: report it, do not fail the benchmark
        info["jax_backend"] = f"unavailable: {exc}"
    return info


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (other work on the machine skews every rate)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(results: list[EngineResult]) -> str:
    """A plain-text table: engine, atoms, steps, atom-steps/s, workbench/peer ratio, compile s
    (first chunk in process), cold first-chunk s, rebuilds, energy per atom start -> end."""
    base = {r.n_atoms: r.atom_steps_per_s for r in results if r.engine == "workbench"}
    head = ["engine", "atoms", "steps", "atom-steps/s", "wb/peer", "compile s", "first-chunk s",
            "rebuilds", "E/N start -> end"]
    rows = [head]
    for r in results:
        ratio = base.get(r.n_atoms)
        ratio_s = ("1.00" if r.engine == "workbench" else
                   _fmt(ratio / r.atom_steps_per_s if ratio else None, ".2f"))
        rows.append([
            r.engine + (f" ({r.variant})" if r.variant and r.engine != "workbench" else ""),
            str(r.n_atoms), str(r.steps), f"{r.atom_steps_per_s:.3e}", ratio_s,
            _fmt(r.compile_s, ".2f"), _fmt(r.cold_first_chunk_s, ".2f"),
            "-" if r.rebuilds is None else str(r.rebuilds),
            f"{r.energy_start:.4f} -> {r.energy_end:.4f}" + ("" if r.energy_finite else " NaN!"),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line
def _parse_compare(text: str) -> list[str]:
    out = []
    for item in (t.strip().lower() for t in text.split(",")):
        if not item or item == "none":
            continue
        if item not in _PEER_ALIASES:
            raise argparse.ArgumentTypeError(
                f"unknown peer {item!r}; choose from {', '.join(PEERS)} (comma-separated)")
        if _PEER_ALIASES[item] not in out:
            out.append(_PEER_ALIASES[item])
    return out


def _parse_steps(text: str) -> int | None:
    if text == "auto":
        return None
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--steps must be >= 1 or 'auto'")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``bench lj`` options to ``parser``."""
    parser.add_argument("--atoms", type=int, nargs="+", default=[4000], metavar="N",
                        help="system sizes, each 4 n^3 with n >= 4 (default: 4000)")
    parser.add_argument("--steps", type=_parse_steps, default=None, metavar="N|auto",
                        help="timed steps per repeat, rounded down to whole chunks (default "
                             "auto: about --seconds of workbench time); peers run the same")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="target timing length per repeat for --steps auto (default 10)")
    parser.add_argument("--chunk", type=int, default=100,
                        help="steps per compiled chunk / OpenMM step() call (default 100)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed runs per engine and size; the median is reported")
    parser.add_argument("--compare", type=_parse_compare, default=[],
                        metavar="PEERS", help="comma-separated peers: jax-md,openmm")
    parser.add_argument("--jaxmd-format", default="auto",
                        choices=["auto", "Dense", "Sparse", "OrderedSparse"],
                        help="jax-md neighbor-list format (auto: time all three, keep fastest)")
    parser.add_argument("--no-cold", action="store_true",
                        help="skip the cold-start (fresh process) measurement")
    parser.add_argument("--seed", type=int, default=0, help="velocity seed (default 0)")
    parser.add_argument("--json", metavar="FILE", help="write all figures and machine info here")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; returns the exit status
    (0 ok, 1 an engine failed or gave a non-finite energy, 2 bad input)."""
    try:
        for n in args.atoms:
            check_atoms(n)
    except ValueError as exc:
        print(f"workbench bench lj: error: --atoms: {exc}", file=sys.stderr)
        return 2
    if args.chunk < 1 or args.repeat < 1 or args.seconds <= 0:
        print("workbench bench lj: error: --chunk and --repeat must be >= 1, --seconds > 0",
              file=sys.stderr)
        return 2
    engines = ["workbench"]
    skipped: list[dict] = []
    for peer in args.compare:
        try:
            engine_class(peer)
            engines.append(peer)
        except ImportError as exc:
            print(f"skipping {peer}: {exc}", file=sys.stderr)
            skipped.append({"engine": peer, "reason": str(exc)})
    results: list[EngineResult] = []
    failed: list[dict] = []
    for n in args.atoms:
        case = lj_case(n, args.seed)
        steps = args.steps
        for name in engines:
            _log(f"[bench lj] {name}, {n} atoms: compiling and timing ...")
            try:
                res = _measure_engine(name, case, args, steps)
            except (RuntimeError, FloatingPointError, ValueError, MemoryError) as exc:
                msg = f"{type(exc).__name__}: {exc}"
                _log(f"[bench lj] {name}, {n} atoms FAILED: {msg}")
                failed.append({"engine": name, "n_atoms": n, "error": msg})
                continue
            if steps is None:
                steps = res.steps  # peers run as many steps as workbench did
            if not args.no_cold:
                _log(f"[bench lj] {name}, {n} atoms: cold start in a fresh process ...")
                try:
                    cold = cold_start(name, n, args.chunk, args.seed, res.extra.get("format"))
                    res.cold_first_chunk_s = cold["first_chunk_s"]
                    res.cold_import_s = cold["import_s"]
                except RuntimeError as exc:
                    _log(f"[bench lj] {name}, {n} atoms: cold start failed: {exc}")
                    res.extra["cold_error"] = str(exc)[-500:]
            _log(f"[bench lj] {name}, {n} atoms: {res.atom_steps_per_s:.3e} atom-steps/s")
            results.append(res)
    print(format_table(results))
    for s in skipped:
        print(f"(skipped {s['engine']}: {s['reason']})")
    for f in failed:
        print(f"(failed {f['engine']} at {f['n_atoms']} atoms: {f['error']})")
    if args.json:
        payload = {
            "benchmark": "lj",
            "system": {"density": DENSITY, "temperature": TEMPERATURE, "cutoff": CUTOFF,
                       "truncation": "cut", "skin": SKIN, "dt": DT, "mass": MASS,
                       "integrator": "NVE velocity Verlet", "units": "reduced (LJ)",
                       "seed": args.seed},
            "settings": {"chunk": args.chunk, "repeat": args.repeat, "steps": args.steps,
                         "seconds": args.seconds, "compare": args.compare},
            "machine": machine_info(),
            "results": [asdict(r) for r in results],
            "skipped": skipped,
            "failed": failed,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2, default=_json_default)
        print(f"wrote {args.json}")
    bad = [r for r in results if not r.energy_finite]
    for r in bad:
        print(f"error: {r.engine} at {r.n_atoms} atoms produced a non-finite energy",
              file=sys.stderr)
    return 1 if bad or failed else 0


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x)}")


def _measure_engine(name: str, case: LJCase, args, steps: int | None) -> EngineResult:
    if name == "jax-md":
        from . import peers

        started = peers.jaxmd_fastest(case, args.chunk, args.jaxmd_format, log=_log)
        return measure(name, case, args.chunk, steps, args.repeat, args.seconds,
                       started=started)
    return measure(name, case, args.chunk, steps, args.repeat, args.seconds)


def main(argv: list[str] | None = None) -> int:
    """``workbench bench lj [options]``."""
    parser = argparse.ArgumentParser(
        prog="workbench bench lj",
        description="Lennard-Jones fluid (LAMMPS in.lj, NVE, reduced units): workbench vs peers.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
