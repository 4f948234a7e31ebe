"""Term-by-term comparison with OpenMM: energies and forces of every force against the same
force evaluated by OpenMM (the Reference platform by default, double precision).

Each OpenMM force is put in a force group of its own on a copy of the System, so the comparison
is per term. Errors: the energy error relative to max(|E_openmm|, 1 kJ/mol) (terms that are
zero by symmetry would otherwise have no scale), and the RMS force error relative to the RMS of
OpenMM's forces. Used by the test suite and by ``workbench compare-openmm``, whose entry point
:func:`main` also checks its input and explains what is wrong with it (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .openmm import ForceFieldSystem

__all__ = ["EXIT_CODES", "InputError", "TermComparison", "compare", "format_table", "main",
           "read_structure", "resolve_forcefield_files", "shipped_forcefield_files"]


@dataclass(frozen=True)
class TermComparison:
    """One term: energies (kJ/mol) from workbench and OpenMM, the relative energy error, the
    relative RMS force error, and whether both are within ``tolerance``."""

    name: str
    energy: float
    energy_openmm: float
    energy_error: float
    force_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.energy_error <= self.tolerance and self.force_error <= self.tolerance


def _openmm_groups(system, positions, force_index: dict[str, int], platform: str):
    import openmm as mm
    from openmm import unit

    copy = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(system))
    if len(force_index) > 31:
        raise ValueError("more than 31 forces: cannot give each its own force group")
    for group, k in enumerate(force_index.values()):
        copy.getForce(k).setForceGroup(group)
        if type(copy.getForce(k)).__name__ == "NonbondedForce":
            copy.getForce(k).setReciprocalSpaceForceGroup(-1)  # same group as the direct space
    for k in range(copy.getNumForces()):
        if k not in force_index.values():
            copy.getForce(k).setForceGroup(31)
    ctx = mm.Context(copy, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))
    ctx.setPositions(positions * unit.nanometer)
    out = {}
    for group, name in enumerate(force_index):
        st = ctx.getState(getEnergy=True, getForces=True, groups={group})
        out[name] = (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                     st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return out


def compare(system: ForceFieldSystem, positions=None, *, platform: str = "Reference",
            tolerance: float = 1e-6, pme_tolerance: float = 1e-5) -> list[TermComparison]:
    """Compare every term of ``system`` with OpenMM at ``positions`` (N, 3) nm (default: the
    start structure). Needs float64 (``jax.config.update("jax_enable_x64", True)``)."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError("compare() needs float64: call jax.config.update('jax_enable_x64', "
                           "True) before any JAX computation")
    r = np.asarray(system.positions if positions is None else positions, dtype=np.float64)
    ref = _openmm_groups(system.system, r, system.force_index, platform)
    pot = system.potential
    rj = jnp.asarray(r)
    aux = pot.allocate(r)
    rows = []
    for name, term in pot.terms.items():
        ev = jax.jit(term.energy_forces)(rj, system.params[name], aux)
        e_ref, f_ref = ref[name]
        f = np.asarray(ev.forces)
        e_err = abs(float(ev.energy) - e_ref) / max(abs(e_ref), 1.0)
        scale = np.sqrt(np.mean(f_ref**2))
        f_err = float(np.sqrt(np.mean((f - f_ref) ** 2)) / scale) if scale > 0 else \
            float(np.sqrt(np.mean(f**2)))
        tol = pme_tolerance if getattr(term, "method", None) in ("PME", "Ewald") else tolerance
        rows.append(TermComparison(name, float(ev.energy), e_ref, e_err, f_err, tol))
    return rows


def format_table(rows: list[TermComparison]) -> str:
    """A plain-text table of a comparison, one term per line."""
    head = f"{'term':<28}{'workbench':>18}{'openmm':>18}{'energy err':>12}{'force err':>12}  ok"
    lines = [head, "-" * len(head)]
    for c in rows:
        lines.append(f"{c.name:<28}{c.energy:>18.8f}{c.energy_openmm:>18.8f}"
                     f"{c.energy_error:>12.2e}{c.force_error:>12.2e}  {'yes' if c.ok else 'NO'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the command line
EXIT_OK, EXIT_DISAGREE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CODES = {
    EXIT_OK: "every term agrees with OpenMM within the tolerance",
    EXIT_DISAGREE: "at least one term disagrees beyond the tolerance",
    EXIT_BAD_INPUT: "bad input or an unsupported force, with the reason on stderr: a missing, "
                    "unreadable or non-PDB structure file, an unknown force-field file, a residue "
                    "without a template, a box narrower than twice the cutoff, a force workbench "
                    "cannot translate, a bad command-line option",
}
"""Exit status of ``workbench compare-openmm`` -> what it means."""

PERIODIC_METHODS = ("CutoffPeriodic", "Ewald", "PME")
DEFAULT_CUTOFF = 1.0
"""nm: the cutoff of the cutoff methods when ``--cutoff`` is not given."""

_PDBX_SUFFIXES = (".cif", ".mmcif", ".pdbx")
_NOT_FORCEFIELDS = {"residues.xml", "pdbNames.xml", "hydrogens.xml", "glycam-hydrogens.xml"}
_WATER_RESIDUES = {"HOH", "WAT", "H2O", "SOL", "TIP", "TIP3", "T3P", "SPC", "DOD"}
_ION_RESIDUES = {"NA", "CL", "K", "LI", "RB", "CS", "F", "BR", "IOD", "MG", "CA", "ZN", "SOD",
                 "CLA", "POT", "NA+", "CL-", "K+"}
_WATER_MODEL = re.compile(r"tip\d|spc|opc|water|swm", re.IGNORECASE)


class InputError(ValueError):
    """Bad input to ``compare-openmm``; the message says what is wrong and how to fix it."""


def read_structure(path: str | os.PathLike):
    """``openmm.app.PDBFile`` of ``path`` (``PDBxFile`` for .cif/.mmcif/.pdbx), after checking
    that it is a readable structure file with atoms. Raises :class:`InputError` otherwise."""
    from openmm import app

    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if not p.is_file():
        raise InputError(f"{path} is not a file: give a PDB file")
    pdbx = p.suffix.lower() in _PDBX_SUFFIXES
    kind = "PDBx/mmCIF" if pdbx else "PDB"
    data = p.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a {kind} file: it is binary (not UTF-8 text). "
                         "compare-openmm reads PDB files (and PDBx/mmCIF files named *.cif); "
                         "convert other formats first, e.g. with mdtraj: "
                         "mdtraj.load(FILE, top=TOPOLOGY).save_pdb('structure.pdb')") from None
    if not pdbx and not re.search(r"^(ATOM|HETATM)", text, re.MULTILINE):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        start = f"it starts with {first[:60]!r}" if first else "it is empty"
        raise InputError(f"{path} is not a PDB file: it has no ATOM or HETATM records ({start}). "
                         "compare-openmm reads PDB files (ATOM/HETATM records, and a CRYST1 "
                         "record for a periodic box) and PDBx/mmCIF files named *.cif; convert "
                         "other formats first, e.g. with mdtraj: "
                         "mdtraj.load(FILE, top=TOPOLOGY).save_pdb('structure.pdb')")
    try:
        structure = (app.PDBxFile if pdbx else app.PDBFile)(str(p))
    except Exception as e:  # OpenMM's readers raise bare exceptions on malformed files
        raise InputError(f"could not read {path} as a {kind} file ({type(e).__name__}: {e}); "
                         f"check that it is a well-formed {kind} file") from e
    if structure.topology.getNumAtoms() == 0:
        raise InputError(f"{path} has no atoms")
    return structure


def _data_directories() -> list[Path]:
    try:
        from openmm.app.forcefield import _getDataDirectories  # with plugins' directories
        return [Path(d) for d in _getDataDirectories()]
    except ImportError:
        from openmm import app

        return [Path(app.__file__).parent / "data"]


def shipped_forcefield_files() -> list[str]:
    """The force-field files that ``openmm.app.ForceField`` finds by name alone: every .xml
    under OpenMM's data directories (those of plugins such as openmmforcefields too), as
    relative names with '/' (``amber14-all.xml``, ``amber14/tip3p.xml``, ``implicit/obc2.xml``)."""
    names = set()
    for d in _data_directories():
        for f in d.rglob("*.xml"):
            if f.name not in _NOT_FORCEFIELDS:
                names.add(f.relative_to(d).as_posix())
    return sorted(names)


def _close_names(name: str, shipped: list[str]) -> list[str]:
    close = difflib.get_close_matches(name, shipped, n=3, cutoff=0.6)
    by_base: dict[str, list[str]] = {}
    for s in shipped:
        by_base.setdefault(s.rsplit("/", 1)[-1], []).append(s)
    for base in difflib.get_close_matches(name.rsplit("/", 1)[-1], list(by_base), n=3,
                                          cutoff=0.6):
        close += [s for s in by_base[base] if s not in close]
    return close[:5]


def resolve_forcefield_files(files) -> None:
    """Check that every force-field file exists, as a path or as a file OpenMM ships (searched
    as ``ForceField`` does); raise :class:`InputError` naming the missing one and the closest
    shipped names."""
    dirs = _data_directories()
    for name in files:
        if os.path.isfile(name) or any((d / name).is_file() for d in dirs):
            continue
        shipped = shipped_forcefield_files()
        close = _close_names(name, shipped)
        guess = f"Did you mean {close[0]}? " if close else ""
        if len(close) > 1:
            guess += f"(Other close names: {', '.join(close[1:])}.) "
        raise InputError(
            f"force-field file {name!r} not found: it is neither a file here nor one that OpenMM "
            f"ships. {guess}OpenMM's files are under {dirs[0]} (for example amber14-all.xml with "
            "amber14/tip3p.xml, amber19-all.xml, charmm36.xml with charmm36/water.xml, "
            "implicit/obc2.xml); give your own file by its path")


def _water_model_for(forcefield) -> str:
    for name in forcefield:
        for prefix, water in (("charmm36_2024", "charmm36_2024/water.xml"),
                              ("charmm36", "charmm36/water.xml"),
                              ("amber19", "amber19/tip3p.xml"), ("amber14", "amber14/tip3p.xml")):
            if Path(name).name.startswith(prefix):
                return water
    return "tip3p.xml"


def _template_hint(message: str, forcefield) -> str:
    """A hint for OpenMM's "No template found for residue N (NAME)" ('' for other errors)."""
    m = re.search(r"No template found for residue \d+ \(([^)]+)\)", message)
    if not m:
        return ""
    residue = m.group(1)
    if residue.upper() not in _WATER_RESIDUES | _ION_RESIDUES:
        return (f"\nhint: none of the force-field files defines residue {residue}: add a file "
                "that does (small molecules: GAFF or SMIRNOFF templates from openmmforcefields), "
                "or check its residue and atom names and its hydrogens (openmm.app.Modeller."
                "addHydrogens, PDBFixer).")
    what = "water" if residue.upper() in _WATER_RESIDUES else "an ion"
    if any(_WATER_MODEL.search(Path(name).name) for name in forcefield):
        return (f"\nhint: {residue} is {what} and a water model is listed, but its atoms do not "
                "match the model's template: check the atom names and that every water has its "
                "two hydrogens.")
    return (f"\nhint: {residue} is {what}; its template comes from a water-model file: add one "
            f"to --forcefield, e.g. --forcefield {' '.join(forcefield)} "
            f"{_water_model_for(forcefield)}")


def _raised_in_openmm(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "openmm" in Path(tb.tb_frame.f_code.co_filename).parts


def _half_box(topology) -> float | None:
    """Half the narrowest perpendicular width of the PDB's box (nm), None without a box."""
    from openmm import unit

    vectors = topology.getPeriodicBoxVectors()
    if vectors is None:
        return None
    box = np.asarray(vectors.value_in_unit(unit.nanometer), dtype=float)
    volume = abs(np.linalg.det(box))
    a, b, c = box
    widths = [volume / np.linalg.norm(np.cross(u, v)) for u, v in ((b, c), (c, a), (a, b))]
    return 0.5 * float(min(widths))


def _skin_terms() -> list[type]:
    """Every energy-term dataclass with a ``skin`` field (the converters' classes imported)."""
    from ..potentials.base import EnergyTerm
    from .openmm import converters

    converters()  # imports the plugin modules, so their term classes are subclasses below
    found, stack = [], [EnergyTerm]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if dataclasses.is_dataclass(cls) and "__init__" in cls.__dict__ and \
                any(f.name == "skin" for f in dataclasses.fields(cls)):
            found.append(cls)
    return found


@contextmanager
def _skin_at_most(limit: float):
    """Within the block, energy terms built without an explicit ``skin`` get at most ``limit``
    (nm). The importer builds its terms with their default skins; a single-point comparison
    builds its neighbor list at the compared positions, so any skin >= 0 gives the same numbers,
    and boxes down to twice the cutoff (what OpenMM accepts) can be compared."""
    patched = []
    try:
        for cls in _skin_terms():
            init = cls.__init__
            param = inspect.signature(init).parameters["skin"]
            if param.default is param.empty or param.default <= limit:
                continue
            if param.kind is param.KEYWORD_ONLY:
                old = init.__kwdefaults__
                init.__kwdefaults__ = {**old, "skin": limit}
                patched.append((init, "__kwdefaults__", old))
            else:  # __defaults__ holds the positional parameters' defaults, in order
                with_defaults = [p.name for p in inspect.signature(init).parameters.values()
                                 if p.default is not p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
                old = init.__defaults__
                new = list(old)
                new[with_defaults.index("skin")] = limit
                init.__defaults__ = tuple(new)
                patched.append((init, "__defaults__", old))
        yield
    finally:
        for init, attr, old in reversed(patched):
            setattr(init, attr, old)


def _load(pdb: str, forcefield, nonbonded: str, cutoff: float | None, err):
    """The :class:`ForceFieldSystem` to compare; warnings and notes on ``err``. Raises
    :class:`InputError` or :class:`~.openmm.UnsupportedForceError`."""
    from .openmm import METHODS, from_topology

    if nonbonded not in METHODS:
        raise InputError(f"unknown nonbonded method {nonbonded!r}; choose one of {list(METHODS)}")
    structure = read_structure(pdb)
    resolve_forcefield_files(forcefield)
    if cutoff is not None and nonbonded == "NoCutoff":
        print(f"compare-openmm: warning: --cutoff {cutoff:g} is ignored with --nonbonded "
              "NoCutoff (every pair interacts); choose CutoffNonPeriodic, or CutoffPeriodic, "
              "Ewald or PME with a periodic box, to use a cutoff", file=err)
    cutoff = DEFAULT_CUTOFF if cutoff is None else float(cutoff)
    if nonbonded != "NoCutoff" and not cutoff > 0:
        raise InputError(f"--cutoff must be positive, got {cutoff:g}")
    skin_cap, half = nullcontext(), None
    if nonbonded in PERIODIC_METHODS:
        half = _half_box(structure.topology)
        if half is None:
            raise InputError(f"{pdb} has no periodic box (no CRYST1 record), which --nonbonded "
                             f"{nonbonded} needs: add a CRYST1 record, or use NoCutoff or "
                             "CutoffNonPeriodic")
        if cutoff > half * (1 + 1e-12):
            longest = np.floor(half * 1e3) / 1e3
            raise InputError(
                f"the box of {pdb} is {2 * half:.4g} nm at its narrowest, less than twice the "
                f"cutoff ({cutoff:g} nm): the minimum-image convention would miss or double-count "
                f"pairs, and OpenMM refuses such a box too. Use --cutoff {longest:g} or shorter, "
                "or a bigger box (more solvent)")
        skin_cap = _skin_at_most(max(0.0, np.floor((half - cutoff) * 1e9) / 1e9))
    try:
        with skin_cap:
            system = from_topology(structure.topology, structure.positions, list(forcefield),
                                   nonbonded_method=nonbonded, cutoff=cutoff, name=pdb)
    except Exception as e:
        # ForceFieldError, the terms' own checks (ValueError), and OpenMM's bare exceptions on
        # input it cannot match; anything else raised inside workbench keeps its traceback
        if not isinstance(e, ValueError) and not _raised_in_openmm(e):
            raise
        raise InputError(f"{e}{_template_hint(str(e), forcefield)}") from e
    for name, term in system.potential.terms.items():
        default = {f.name: f.default for f in dataclasses.fields(term)}.get("skin") \
            if dataclasses.is_dataclass(term) else None
        if half is not None and isinstance(default, float) and term.skin < default:
            print(f"compare-openmm: note: the box ({2 * half:.4g} nm at its narrowest) is "
                  f"shorter than 2 x (cutoff {cutoff:g} + neighbor-list skin {default:g}) nm: "
                  f"{name} uses a skin of {term.skin:.4g} nm here (a single-point comparison "
                  "does not need one; OpenMM accepts boxes down to twice the cutoff)", file=err)
    return system


def main(pdb: str, forcefield, nonbonded: str = "NoCutoff", cutoff: float | None = None,
         tolerance: float = 1e-6, pme_tolerance: float = 1e-5, platform: str = "Reference",
         out=None, err=None) -> int:
    """``workbench compare-openmm``: load ``pdb`` with the ``forcefield`` files, print the
    table on ``out`` (stdout), warnings and errors on ``err`` (stderr), and return an exit
    status of :data:`EXIT_CODES`. ``cutoff`` (nm): None for :data:`DEFAULT_CUTOFF` (a cutoff
    given with NoCutoff is ignored, with a warning)."""
    from .openmm import UnsupportedForceError

    out = out or sys.stdout
    err = err or sys.stderr
    jax.config.update("jax_enable_x64", True)
    try:
        system = _load(pdb, forcefield, nonbonded, cutoff, err)
    except InputError as e:  # one paragraph, and a hint on a line of its own
        message, *hints = str(e).split("\n")
        print(f"compare-openmm: error: {message}", file=err)
        for hint in hints:
            print(f"compare-openmm: {hint}", file=err)
        return EXIT_BAD_INPUT
    except UnsupportedForceError as e:
        print(f"compare-openmm: unsupported: {e}", file=err)
        return EXIT_BAD_INPUT
    rows = compare(system, platform=platform, tolerance=tolerance, pme_tolerance=pme_tolerance)
    print(f"{pdb}: {system.n_atoms} atoms, {nonbonded}, force fields {' '.join(forcefield)}",
          file=out)
    print(format_table(rows), file=out)
    for note in system.notes:
        print(f"note: {note}", file=out)
    bad = [c.name for c in rows if not c.ok]
    if bad:
        print(f"compare-openmm: {len(bad)} term(s) disagree beyond tolerance: {bad}", file=out)
        return EXIT_DISAGREE
    print(f"compare-openmm: all {len(rows)} terms agree", file=out)
    return EXIT_OK
