"""The ``workbench`` command line.

    workbench lab [JUPYTER-ARGS ...]      JupyterLab on the project's notebooks/ directory
    workbench bench lj [OPTIONS]          Lennard-Jones benchmark against jax-md and OpenMM
    workbench bench ml [ARGS ...]         neural potentials: accuracy vs sGDML, MD/training speed
    workbench bench panels [ARGS ...]     live-panel benchmark
    workbench bench peptide [ARGS ...]    alanine dipeptide (PME, OBC2) against OpenMM-CPU
    workbench bench sampling [ARGS ...]   metadynamics overhead, MBAR vs pymbar, replica exchange
    workbench bench grad [ARGS ...]       trajectory gradients: checkpointed, plain, reversible
    workbench bench startup [ARGS ...]    seconds to the first frame / chunk, cold and warm
    workbench compare-openmm PDB --forcefield XML [XML ...] [--nonbonded PME] [--cutoff NM]
                                          every force-field term against OpenMM Reference
    workbench --version

Exit status of ``compare-openmm`` (:data:`workbench.forcefield.compare.EXIT_CODES`): 0 every
term agrees with OpenMM, 1 some term disagrees beyond the tolerance, 2 bad input or an
unsupported force (the reason on stderr). ``lab`` returns JupyterLab's status (128 + the signal
number when it was stopped by one); 2 is a usage error everywhere.

Benchmark peers (jax-md, OpenMM) and optional benchmark modules are imported only when their
subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import parallel

__all__ = ["BENCHMARKS", "bench_dir", "bench_module", "build_parser", "lab_command", "main",
           "notebooks_dir", "run_until_signalled"]

_ROOT_FLAGS = ("--ServerApp.root_dir", "--notebook-dir", "--NotebookApp.notebook_dir",
               "--ServerApp.notebook_dir", "--root-dir")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("workbench")
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def notebooks_dir(cwd: str | Path | None = None) -> Path:
    """The project's ``notebooks/`` directory: next to the package source (a repository
    checkout or editable install) first, then under ``cwd`` (default: the current directory),
    then ``cwd`` itself if it holds notebooks. Raises FileNotFoundError saying where it looked."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    package_root = Path(__file__).resolve().parent.parent
    candidates = [package_root / "notebooks", cwd / "notebooks"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if any(cwd.glob("*.ipynb")):
        return cwd.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no notebooks/ directory found (looked in {looked}); run `workbench lab` from the "
        "project checkout, or pass --ServerApp.root_dir=PATH")


def lab_command(extra: Sequence[str] = (), notebooks: str | Path | None = None) -> list[str]:
    """The command line that ``workbench lab`` runs: this interpreter's ``-m jupyter lab`` (so
    the virtual environment's JupyterLab is used), rooted at ``notebooks`` (default:
    :func:`notebooks_dir`) unless ``extra`` names a root itself, with ``--allow-root`` added
    when running as root (JupyterLab refuses to start otherwise), then ``extra``."""
    extra = list(extra)
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = [sys.executable, "-m", "jupyter", "lab"]
    if not any(a.split("=", 1)[0] in _ROOT_FLAGS for a in extra):
        root = Path(notebooks) if notebooks is not None else notebooks_dir()
        cmd.append(f"--ServerApp.root_dir={root}")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
        cmd.append("--allow-root")
    return cmd + extra


def _run_lab(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        cmd = lab_command(extra)
    except FileNotFoundError as exc:
        print(f"workbench lab: {exc}", file=sys.stderr)
        return 2
    if args.print_command:
        print(" ".join(cmd))
        return 0
    # the notebook kernels split work over the CPU cores unless the user chose otherwise
    env = dict(os.environ)
    env.setdefault(parallel.ENV, "auto")
    # compiled programs persist between kernels and sessions: the second start of a notebook
    # skips most of XLA's compile time (workbench bench startup measures both)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(compile_cache_dir()))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    return run_until_signalled(cmd, LAB_GRACE_S, env=env)


def compile_cache_dir() -> Path:
    """Where ``workbench lab`` keeps JAX's persistent compilation cache:
    ``$XDG_CACHE_HOME/workbench/jax`` (default ``~/.cache/workbench/jax``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "workbench" / "jax"


LAB_GRACE_S = 10.0
"""Seconds JupyterLab gets to shut down (its kernels too) after SIGTERM, before SIGKILL."""
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def run_until_signalled(cmd: Sequence[str], grace: float, **popen) -> int:
    """Run ``cmd`` in a session of its own and wait for it. SIGINT (Ctrl-C), SIGTERM or SIGHUP
    received meanwhile stop it: SIGTERM to its process group (JupyterLab then shuts its kernels
    down), SIGKILL after ``grace`` seconds or at a second signal. Returns its exit status, or
    128 + the number of the first signal. ``popen``: keyword arguments for ``subprocess.Popen``.

    Its own session keeps a terminal's Ctrl-C from reaching the child directly (JupyterLab would
    ask "Shut down this Jupyter server?" and carry on), so the child stops exactly once, and the
    caller stopping stops it whatever signal was used."""
    import signal
    import subprocess
    import threading

    if os.name == "nt":
        try:
            return subprocess.call(list(cmd), **popen)
        except KeyboardInterrupt:
            return 130
    proc = subprocess.Popen(list(cmd), start_new_session=True, **popen)
    received: list[int] = []
    timer = threading.Timer(grace, _signal_group, (proc.pid, signal.SIGKILL))
    timer.daemon = True

    def stop(signum, frame):
        received.append(signum)
        if len(received) == 1:
            _signal_group(proc.pid, signal.SIGTERM)
            timer.start()
        else:
            _signal_group(proc.pid, signal.SIGKILL)

    names = STOP_SIGNALS if threading.current_thread() is threading.main_thread() else ()
    previous = {s: signal.signal(s, stop) for s in
                (getattr(signal, name) for name in names if hasattr(signal, name))}
    try:
        status = proc.wait()
    finally:
        timer.cancel()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        _signal_group(proc.pid, signal.SIGKILL)  # anything left in its process group
        return 128 + received[0]
    return status if status >= 0 else 128 - status


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _use_cores() -> None:
    """Benchmarks use every core (their worker processes too) unless the user chose otherwise."""
    os.environ.setdefault(parallel.ENV, "auto")
    parallel.configure_from_env()


BENCHMARKS = {
    "grad": "gradients through 1,000 LJ Langevin steps: checkpointed, plain and reversible",
    "lj": "Lennard-Jones fluid (LAMMPS in.lj): atom-steps/s, compile and cold-start times",
    "ml": "neural potentials: held-out ethanol errors beside sGDML, MD and training speed",
    "panels": "live panels: chunk latency and frame rate",
    "peptide": "alanine dipeptide in water (PME) and in OBC2 against OpenMM-CPU: ns/day",
    "sampling": "metadynamics overhead, MBAR against pymbar, replica-exchange throughput",
    "startup": "seconds to the first frame / chunk, cold and with a warm compile cache",
}
"""``workbench bench`` NAME -> one-line description: the one registry of benchmark names. The
code is the module ``workbench_bench.NAME`` in the repository's ``benchmarks/`` folder,
outside the installed package (:func:`bench_module`)."""


def bench_dir(cwd: str | Path | None = None) -> Path | None:
    """The folder holding the ``workbench_bench`` package: ``benchmarks/`` beside the package
    source (a checkout or editable install), else under ``cwd``; None when neither has it."""
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    for c in (here, Path.cwd() / "benchmarks" if cwd is None else Path(cwd) / "benchmarks"):
        if (c / "workbench_bench" / "__init__.py").is_file():
            return c
    return None


def bench_module(name: str):
    """Import ``workbench_bench.<name>`` from :func:`bench_dir` (put on ``sys.path``). Raises
    ModuleNotFoundError saying where benchmarks live when there is no checkout."""
    if name not in BENCHMARKS:
        raise ModuleNotFoundError(f"no benchmark named {name!r} (module workbench_bench.{name}); "
                                  f"choose one of {sorted(BENCHMARKS)}", name=name)
    folder = bench_dir()
    if folder is None:
        raise ModuleNotFoundError(
            "the benchmarks live in the repository's benchmarks/ folder, outside the installed "
            "package: run `workbench bench` from a checkout (git clone, then `python3 dev.py "
            "test` or `pip install -e .`)", name="workbench_bench")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(f"workbench_bench.{name}")


def _run_bench_lj(args: argparse.Namespace, extra: list[str]) -> int:
    _use_cores()
    return bench_module("lj").run(args)


def _run_bench_module(name: str, extra: list[str]) -> int:
    _use_cores()
    try:
        module = bench_module(name)
    except ModuleNotFoundError as exc:
        print(f"workbench bench {name}: {exc}", file=sys.stderr)
        return 2
    return int(module.main(extra) or 0)


def _exit_status_epilog(codes: dict[int, str]) -> str:
    """An "exit status:" block for --help, one wrapped entry per status."""
    import textwrap

    return "exit status:\n" + "\n".join(
        textwrap.fill(text, 78, initial_indent=f"  {code}  ", subsequent_indent="     ")
        for code, text in codes.items())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``workbench`` (subcommands lab, bench lj, bench panels)."""
    parser = argparse.ArgumentParser(
        prog="workbench", description="Interactive, differentiable molecular simulation in JAX.")
    parser.add_argument("--version", action="version", version=f"workbench {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    try:
        where = str(notebooks_dir())
    except FileNotFoundError:
        where = "not found from here"
    lab = sub.add_parser(
        "lab", allow_abbrev=False, help="open JupyterLab on the project's notebooks",
        description=f"Run JupyterLab (this Python's `-m jupyter lab`) on notebooks/ ({where}). "
                    "Unrecognised arguments go to JupyterLab, e.g. `workbench lab --port 8899 "
                    "--no-browser`; put `--` first to pass JupyterLab's own --help.")
    lab.add_argument("--print-command", action="store_true",
                     help="print the JupyterLab command line instead of running it")
    lab.set_defaults(handler=_run_lab)

    bench = sub.add_parser("bench", help="benchmarks against peer engines",
                           description="Benchmarks; see benchmarks/README.md.")
    bsub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bsub.required = True
    try:
        lj_arguments = bench_module("lj").add_arguments
    except ModuleNotFoundError:
        lj_arguments = None  # no checkout: `bench lj` says where benchmarks live
    if lj_arguments is not None:
        lj_parser = bsub.add_parser(
            "lj", allow_abbrev=False, help=BENCHMARKS["lj"],
            description="Lennard-Jones fluid (LAMMPS in.lj, NVE, reduced units): workbench "
                        "against jax-md and OpenMM in one run.")
        lj_arguments(lj_parser)
        lj_parser.set_defaults(handler=_run_bench_lj, subparser=lj_parser)
    for name in BENCHMARKS:
        if name == "lj" and lj_arguments is not None:
            continue
        module_parser = bsub.add_parser(name, add_help=False, help=BENCHMARKS[name])
        module_parser.set_defaults(handler=lambda args, extra, name=name:
                                   _run_bench_module(name, extra))

    from .forcefield.compare import EXIT_CODES

    cmp = sub.add_parser(
        "compare-openmm", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="compare every force-field term with OpenMM's Reference platform",
        description="Load PDB with the force-field XML files the openmm package ships (or your "
                    "own),\nevaluate every term in workbench and in OpenMM (float64), and print "
                    "the errors\nterm by term. Warnings and errors go to stderr.",
        epilog=_exit_status_epilog(EXIT_CODES)
        + "\n\nexample:\n  workbench compare-openmm data/alanine-dipeptide-water.pdb "
          "--forcefield amber14-all.xml \\\n      amber14/tip3p.xml --nonbonded PME --cutoff 1.0")
    cmp.add_argument("pdb", help="PDB file (with a CRYST1 box for the periodic methods), or a "
                                 "PDBx/mmCIF file named *.cif")
    cmp.add_argument("--forcefield", nargs="+", default=["amber14-all.xml"], metavar="XML",
                     help="force-field files, by path or by the name OpenMM ships them under "
                          "(amber14/tip3p.xml for water; default: amber14-all.xml)")
    cmp.add_argument("--nonbonded", default="NoCutoff",
                     choices=["NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME"])
    cmp.add_argument("--cutoff", type=float, default=None, metavar="NM",
                     help="nonbonded cutoff for the cutoff methods (default 1.0; ignored, with a "
                          "warning, by NoCutoff); a periodic box must be at least twice as wide")
    cmp.add_argument("--tolerance", type=float, default=1e-6,
                     help="relative energy and RMS force tolerance (default 1e-6)")
    cmp.add_argument("--pme-tolerance", type=float, default=1e-5,
                     help="the same for Ewald and PME terms (default 1e-5)")
    cmp.set_defaults(handler=_run_compare, subparser=cmp)
    return parser


def _run_compare(args: argparse.Namespace, extra: list[str]) -> int:
    from .forcefield import compare

    return compare.main(args.pdb, args.forcefield, args.nonbonded, args.cutoff, args.tolerance,
                        args.pme_tolerance)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    # `lab` passes its extra arguments to JupyterLab, every benchmark but `lj` (which has its
    # own parser) to its module's parser
    if extra and handler not in (_run_lab,) and getattr(args, "benchmark", None) in (None, "lj"):
        getattr(args, "subparser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return int(handler(args, extra) or 0)


if __name__ == "__main__":
    sys.exit(main())
