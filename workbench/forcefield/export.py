"""A :class:`~workbench.forcefield.openmm.ForceFieldSystem` back to OpenMM, with its current
(possibly fitted) parameters: :func:`to_openmm` (an ``openmm.System``), :func:`to_xml` (its XML
serialization) and :func:`write_pdb` (frames with the system's topology).

:func:`to_openmm` deep-copies the System the force field was imported from and rewrites each
imported force's per-particle, per-bond, per-torsion and global parameters from the per-type
parameter pytree: every OpenMM entry gets the value of its type. The entry -> type maps are the
ones the importers recorded in the terms (``types`` of the bonded and custom bonded terms,
``charge_types`` / ``lj_types`` of Nonbonded, ``particle_types`` of CustomNonbonded and CustomGB,
``constants["openmm_map"]`` of CMAP), so export is exact: the exported System on OpenMM's
Reference platform gives the energy workbench gives for the same parameters.

Per force (units are OpenMM's, which are the parameters' units already: nm, rad, kJ/mol, e;
workbench's harmonic forms use OpenMM's 0.5 k (x - x0)^2 and its CMAP grid ordering is converted
by :func:`~workbench.potentials.cmap.map_to_openmm`):

* HarmonicBondForce (r0, k), HarmonicAngleForce (theta0, k), PeriodicTorsionForce (phase, k;
  the periodicity is structural and stays);
* NonbondedForce: particle charge, sigma, epsilon; exceptions as the import read them: the
  pairs it recognised as 1-4 pairs scaled from the types (``scaled_pairs``) are regenerated as
  ``coulomb14scale * q_i q_j``, ``(sigma_i + sigma_j) / 2``, ``lj14scale * sqrt(eps_i eps_j)``;
  pairs with their own parameters (``fixed_pairs``) get ``exception_chargeprod / _sigma /
  _epsilon``; zero exceptions (pure exclusions) stay zero;
* CMAPTorsionForce: the grids of the maps in use;
* CustomBond/Angle/Torsion/External/CompoundBond/NonbondedForce: per-instance parameters,
  global parameter default values, and discrete tabulated functions (e.g. charmm36's NBFIX
  ``acoef``/``bcoef``; continuous tables are structural and stay);
* CustomGBForce (amber's implicit/obc2.xml, gbn2.xml, ...): per-particle parameters and global
  defaults; GBSAOBCForce: charge, radius, scale and the two dielectrics and surface-area energy.

A force kind without a writer (see :data:`WRITERS`) is copied as it is when its parameters
equal ``ffsystem.params`` (those read at import) and raises ``NotImplementedError`` naming it
otherwise. Forces workbench skipped at import (CMMotionRemover) are copied as they are.

Values equal to the original at the parameters' precision are written as the original (so a
float32 export of unchanged parameters leaves the System bit for bit as it was); 1-4 pairs
whose regenerated values lie within the import's own tolerance of the original (1e-9
relative, or 4 float32 ulps for float32 parameters) keep the original. Global parameters shared
by several custom forces must end with one value (OpenMM keeps one per Context): a conflict
raises ``ValueError``. OpenMM is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .openmm import ForceFieldSystem

__all__ = ["WRITERS", "to_openmm", "to_xml", "write_pdb"]

_SCALED_RTOL = 1e-9
"""The import's tolerance for recognising a 1-4 exception as scaled from the types."""


# ---------------------------------------------------------------------------- helpers
def _plain(x) -> float:
    """A float in OpenMM's default units (nm, ps, kJ/mol, e, rad) from a Quantity or number."""
    if hasattr(x, "value_in_unit_system"):
        from openmm import unit

        return float(x.value_in_unit_system(unit.md_unit_system))
    return float(x)


def _array(x) -> tuple[np.ndarray, np.dtype]:
    """float64 values of a parameter leaf and the dtype it is stored in."""
    a = np.asarray(x)
    dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float64)
    return np.asarray(a, dtype=np.float64), dtype


def _merge(original, new, dtype) -> np.ndarray:
    """``new``, except where it equals ``original`` at the parameters' precision ``dtype``:
    there the original value (so an unchanged float32 parameter writes its float64 origin)."""
    original = np.asarray(original, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    same = original.astype(dtype) == new.astype(dtype)
    return np.where(same, original, new)


def _check_count(term_name: str, what: str, n_force: int, n_term: int) -> None:
    if n_force != n_term:
        raise ValueError(f"{term_name}: the OpenMM force has {n_force} {what} but the term has "
                         f"{n_term}; the System changed after import, export from the "
                         "ForceFieldSystem built from it")


def _per_entry(params: Mapping, names, types: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """(M, P) values of the per-type parameters ``names`` at every entry (type row ``types``),
    merged with the entries' ``originals`` (M, P)."""
    out = np.empty((len(types), len(names)))
    for k, name in enumerate(names):
        values, dtype = _array(params[name])
        out[:, k] = _merge(originals[:, k], values[types], dtype)
    return out


# ---------------------------------------------------------------------------- bonded
def _write_bonds(force, term, params, name):
    n = force.getNumBonds()
    _check_count(name, "bonds", n, term.n_instances)
    rows = [force.getBondParameters(i) for i in range(n)]
    orig = np.array([[_plain(r[2]), _plain(r[3])] for r in rows]).reshape(n, 2)
    new = _per_entry(params, ("r0", "k"), term.types, orig)
    for i, r in enumerate(rows):
        force.setBondParameters(i, r[0], r[1], new[i, 0], new[i, 1])


def _write_angles(force, term, params, name):
    n = force.getNumAngles()
    _check_count(name, "angles", n, term.n_instances)
    rows = [force.getAngleParameters(i) for i in range(n)]
    orig = np.array([[_plain(r[3]), _plain(r[4])] for r in rows]).reshape(n, 2)
    new = _per_entry(params, ("theta0", "k"), term.types, orig)
    for i, r in enumerate(rows):
        force.setAngleParameters(i, r[0], r[1], r[2], new[i, 0], new[i, 1])


def _write_torsions(force, term, params, name):
    n = force.getNumTorsions()
    _check_count(name, "torsions", n, term.n_instances)
    rows = [force.getTorsionParameters(i) for i in range(n)]
    periodicity = np.asarray(term.constants["periodicity"])[term.types]
    bad = [i for i, r in enumerate(rows) if int(r[4]) != int(periodicity[i])]
    if bad:
        raise ValueError(f"{name}: torsion {bad[0]} has periodicity {rows[bad[0]][4]} in the "
                         f"System but {periodicity[bad[0]]} in the term")
    orig = np.array([[_plain(r[5]), _plain(r[6])] for r in rows]).reshape(n, 2)
    new = _per_entry(params, ("phase", "k"), term.types, orig)
    for i, r in enumerate(rows):
        force.setTorsionParameters(i, r[0], r[1], r[2], r[3], int(r[4]), new[i, 0], new[i, 1])


def _write_cmap(force, term, params, name):
    from ..potentials.cmap import map_from_openmm, map_to_openmm

    _check_count(name, "torsions", force.getNumTorsions(), term.n_instances)
    grids, dtype = _array(params["energy"])
    for t, k in enumerate(np.asarray(term.constants["openmm_map"]).tolist()):
        size, flat = force.getMapParameters(k)
        if hasattr(flat, "value_in_unit_system"):
            from openmm import unit

            flat = flat.value_in_unit_system(unit.md_unit_system)
        original = map_from_openmm(flat, size)
        if original.shape != grids[t].shape:
            raise ValueError(f"{name}: map {k} is {size} x {size} in the System, "
                             f"{grids[t].shape} in the parameters (a grid size is structural)")
        new = _merge(original, grids[t], dtype)
        if not np.array_equal(new, original):
            force.setMapParameters(k, int(size), map_to_openmm(new))


# ---------------------------------------------------------------------------- nonbonded
def _write_nonbonded(force, term, params, name):
    n = force.getNumParticles()
    _check_count(name, "particles", n, term.n_particles)
    parts = [force.getParticleParameters(i) for i in range(n)]
    orig = np.array([[_plain(x) for x in p] for p in parts]).reshape(n, 3)
    q_type, lj_type = np.asarray(term.charge_types), np.asarray(term.lj_types)
    q_val, q_dt = _array(params["charge"])
    s_val, s_dt = _array(params["sigma"])
    e_val, e_dt = _array(params["epsilon"])
    q = _merge(orig[:, 0], q_val[q_type], q_dt) if n else orig[:, 0]
    sig = _merge(orig[:, 1], s_val[lj_type], s_dt) if n else orig[:, 1]
    eps = _merge(orig[:, 2], e_val[lj_type], e_dt) if n else orig[:, 2]
    for i in range(n):
        if not (q[i] == orig[i, 0] and sig[i] == orig[i, 1] and eps[i] == orig[i, 2]):
            force.setParticleParameters(i, q[i], sig[i], eps[i])

    c14, c14_dt = _array(params["coulomb14scale"])
    l14, l14_dt = _array(params["lj14scale"])
    c14, l14 = float(c14), float(l14)
    fixed_q, fq_dt = _array(params["exception_chargeprod"])
    fixed_s, fs_dt = _array(params["exception_sigma"])
    fixed_e, fe_dt = _array(params["exception_epsilon"])
    finest = max((np.finfo(d).eps for d in (q_dt, s_dt, e_dt, c14_dt, l14_dt)))
    rtol = max(_SCALED_RTOL, 4.0 * float(finest))
    scaled = {tuple(p) for p in np.asarray(term.scaled_pairs).tolist()}
    fixed = {tuple(p): k for k, p in enumerate(np.asarray(term.fixed_pairs).tolist())}
    seen_scaled = seen_fixed = 0
    for k in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(k)
        qq, s, e = _plain(qq), _plain(s), _plain(e)
        if (i, j) in fixed:
            m = fixed[(i, j)]
            seen_fixed += 1
            new = (_merge(qq, fixed_q[m], fq_dt), _merge(s, fixed_s[m], fs_dt),
                   _merge(e, fixed_e[m], fe_dt))
        elif (i, j) in scaled:
            seen_scaled += 1
            new = [c14 * q[i] * q[j], 0.5 * (sig[i] + sig[j]), l14 * np.sqrt(eps[i] * eps[j])]
            for a, old in enumerate((qq, s, e)):
                if abs(new[a] - old) <= rtol * abs(old):
                    new[a] = old
            if new[2] == 0.0 and e == 0.0:  # no LJ either way: keep the System's sigma
                new[1] = s
        else:  # a pure exclusion (zero charge product and epsilon): workbench ignores it too
            if qq != 0.0 or e != 0.0:
                raise ValueError(f"{name}: exception {k} ({i}, {j}) is neither a scaled nor a "
                                 "fixed pair of the term; the System changed after import")
            continue
        new = tuple(float(x) for x in new)
        if new != (qq, s, e):
            force.setExceptionParameters(k, i, j, *new)
    if seen_scaled != len(scaled) or seen_fixed != len(fixed):
        raise ValueError(f"{name}: the System's exceptions do not match the term's 1-4 pairs; "
                         "the System changed after import")


# ---------------------------------------------------------------------------- custom forces
_CUSTOM_BONDED = {
    # class: (count, getter, setter)
    "CustomBondForce": ("getNumBonds", "getBondParameters", "setBondParameters"),
    "CustomAngleForce": ("getNumAngles", "getAngleParameters", "setAngleParameters"),
    "CustomTorsionForce": ("getNumTorsions", "getTorsionParameters", "setTorsionParameters"),
    "CustomExternalForce": ("getNumParticles", "getParticleParameters", "setParticleParameters"),
    "CustomCompoundBondForce": ("getNumBonds", "getBondParameters", "setBondParameters"),
}


def _write_globals(force, params, names):
    for k in range(force.getNumGlobalParameters()):
        g = force.getGlobalParameterName(k)
        if g in names:
            value, dtype = _array(params[g])
            old = float(force.getGlobalParameterDefaultValue(k))
            force.setGlobalParameterDefaultValue(k, float(_merge(old, value, dtype)))


def _write_tables(force, params, names, name):
    """Discrete tabulated functions: the table (n1[, n2[, n3]]) indexed [x, y, z], flat in
    OpenMM with x fastest."""
    if not names or not hasattr(force, "getNumTabulatedFunctions"):
        return
    for k in range(force.getNumTabulatedFunctions()):
        tname = force.getTabulatedFunctionName(k)
        if tname not in names:
            continue
        fn = force.getTabulatedFunction(k)
        table, dtype = _array(params[tname])
        old = list(fn.getFunctionParameters())
        if table.ndim == 1:
            original = np.asarray(old, dtype=float).reshape(-1)
        else:
            sizes = [int(x) for x in old[:table.ndim]]
            original = np.asarray(old[table.ndim], dtype=float).reshape(sizes[::-1]).T
        if original.shape != table.shape:
            raise ValueError(f"{name}: tabulated function {tname!r} has shape {original.shape} "
                             f"in the System, {table.shape} in the parameters (structural)")
        new = _merge(original, table, dtype)
        if np.array_equal(new, original):
            continue
        flat = [float(x) for x in new.T.ravel()]
        if table.ndim == 1:
            fn.setFunctionParameters(flat)
        else:
            fn.setFunctionParameters(*table.shape, flat)


def _write_custom_bonded(force, term, params, name):
    count, get, set_ = _CUSTOM_BONDED[type(force).__name__]
    n = getattr(force, count)()
    _check_count(name, "entries", n, term.n_instances)
    layout = term.layout
    rows = [list(getattr(force, get)(i)) for i in range(n)]
    per = layout.per_type
    orig = np.array([[float(v) for v in r[-1]] for r in rows]).reshape(n, len(per))
    new = _per_entry(params, per, term.types, orig)
    for i, r in enumerate(rows):
        if not np.array_equal(new[i], orig[i]):
            r[-1] = [float(x) for x in new[i]]
            getattr(force, set_)(i, *r)
    _write_globals(force, params, layout.globals)
    _write_tables(force, params, layout.tables, name)


def _write_particles(force, params, per, types, n_expected: int, name: str) -> None:
    """Per-particle parameters ``per`` of a custom force, each particle from its type's row."""
    n = force.getNumParticles()
    _check_count(name, "particles", n, n_expected)
    orig = np.array([[float(v) for v in force.getParticleParameters(i)] for i in range(n)])
    orig = orig.reshape(n, len(per))
    new = _per_entry(params, per, np.asarray(types), orig)
    for i in range(n):
        if not np.array_equal(new[i], orig[i]):
            force.setParticleParameters(i, [float(x) for x in new[i]])


def _write_custom_nonbonded(force, term, params, name):
    layout = term.layout
    _write_particles(force, params, layout.per_type, term.particle_types, term.n_particles, name)
    _write_globals(force, params, layout.globals)
    _write_tables(force, params, layout.tables, name)


def _write_custom_gb(force, term, params, name):
    _write_particles(force, params, term.particle_parameters, term.particle_types,
                     term.n_particles, name)
    _write_globals(force, params, term.global_parameters)


def _write_gbsaobc(force, term, params, name):
    n = force.getNumParticles()
    _check_count(name, "particles", n, term.n_particles)
    orig = np.array([[_plain(x) for x in force.getParticleParameters(i)] for i in range(n)])
    orig = orig.reshape(n, 3)
    new = _per_entry(params, ("charge", "radius", "scale"), np.asarray(term.particle_types), orig)
    for i in range(n):
        if not np.array_equal(new[i], orig[i]):
            force.setParticleParameters(i, *(float(x) for x in new[i]))
    for g, getter, setter in (("soluteDielectric", "getSoluteDielectric", "setSoluteDielectric"),
                              ("solventDielectric", "getSolventDielectric",
                               "setSolventDielectric"),
                              ("surfaceAreaEnergy", "getSurfaceAreaEnergy",
                               "setSurfaceAreaEnergy")):
        value, dtype = _array(params[g])
        old = _plain(getattr(force, getter)())
        new_value = float(_merge(old, value, dtype))
        if new_value != old:
            getattr(force, setter)(new_value)


WRITERS: dict[str, Callable[[Any, Any, Mapping, str], None]] = {
    "HarmonicBondForce": _write_bonds,
    "HarmonicAngleForce": _write_angles,
    "PeriodicTorsionForce": _write_torsions,
    "NonbondedForce": _write_nonbonded,
    "CMAPTorsionForce": _write_cmap,
    **{cls: _write_custom_bonded for cls in _CUSTOM_BONDED},
    "CustomNonbondedForce": _write_custom_nonbonded,
    "CustomGBForce": _write_custom_gb,
    "GBSAOBCForce": _write_gbsaobc,
}
"""OpenMM force class -> ``writer(force, term, params, term_name)``: rewrites ``force`` (a
copy) in place from the term's per-type ``params``."""


# ---------------------------------------------------------------------------- entry points
def _check_structure(ffsystem, params) -> None:
    """``params`` must have the imported pytree's structure and shapes (types are
    structural: a new type cannot be written back)."""
    terms = ffsystem.potential.terms
    if not isinstance(params, Mapping) or set(params) != set(terms):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise KeyError(f"params must have one entry per term {sorted(terms)}; got {got}")
    for name in terms:
        ref, got = ffsystem.params[name], params[name]
        if not isinstance(got, Mapping) or set(got) != set(ref):
            keys = sorted(got) if isinstance(got, Mapping) else type(got).__name__
            raise KeyError(f"params[{name!r}] must have the keys {sorted(ref)}; got {keys}")
        for key in ref:
            a, b = np.shape(ref[key]), np.shape(got[key])
            if a != b:
                raise ValueError(f"params[{name!r}][{key!r}] has shape {b}, the imported one "
                                 f"{a}; types are structural: rebuild the system to change them")
            if not np.all(np.isfinite(np.asarray(got[key], dtype=float))):
                raise ValueError(f"params[{name!r}][{key!r}] contains NaN or infinite values")


def _unchanged(a, b) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _check_globals(system) -> None:
    """OpenMM keeps one value per global parameter name in a Context."""
    seen: dict[str, tuple[float, int]] = {}
    for k, force in enumerate(system.getForces()):
        if not hasattr(force, "getNumGlobalParameters"):
            continue
        for g in range(force.getNumGlobalParameters()):
            gname = force.getGlobalParameterName(g)
            value = float(force.getGlobalParameterDefaultValue(g))
            if gname in seen and seen[gname][0] != value:
                other, idx = seen[gname]
                raise ValueError(
                    f"global parameter {gname!r} is {other} in force {idx} "
                    f"({type(system.getForce(idx)).__name__}) and {value} in force {k} "
                    f"({type(force).__name__}); OpenMM keeps one value per name: give the "
                    "terms that share it the same value")
            seen.setdefault(gname, (value, k))


def to_openmm(ffsystem: ForceFieldSystem, params=None):
    """An ``openmm.System``: a deep copy of ``ffsystem.system`` with every imported force's
    parameters rewritten from ``params`` (default ``ffsystem.params``), each type's values
    going to every OpenMM entry of that type (see the module docstring for what each force
    writes and what raises). ``params`` must have the structure of ``ffsystem.params``
    (numeric values may change; shapes are structural)."""
    import openmm

    if ffsystem.system is None:
        raise ValueError("this ForceFieldSystem has no OpenMM System to export (it was not made "
                         "by from_system / from_topology / load)")
    params = ffsystem.params if params is None else params
    _check_structure(ffsystem, params)
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(ffsystem.system))
    n_forces = system.getNumForces()
    for name, term in ffsystem.potential.terms.items():
        index = ffsystem.force_index[name]
        if not 0 <= index < n_forces:
            raise ValueError(f"{name}: force index {index} is not in the System "
                             f"({n_forces} forces)")
        force = system.getForce(index)
        cls = type(force).__name__
        writer = WRITERS.get(cls)
        if writer is None:
            if _unchanged(params[name], ffsystem.params[name]):
                continue
            raise NotImplementedError(
                f"cannot write the parameters of {cls} (term {name!r}) back to OpenMM; "
                f"forces that can be written: {sorted(WRITERS)}. Keep that term's parameters "
                "as imported to export the rest")
        writer(force, term, params[name], name)
    _check_globals(system)
    return system


def to_xml(ffsystem: ForceFieldSystem, path=None, params=None) -> str:
    """``openmm.XmlSerializer.serialize(to_openmm(ffsystem, params))``; also written to
    ``path`` when given (read it back with ``XmlSerializer.deserialize``)."""
    import openmm

    text = openmm.XmlSerializer.serialize(to_openmm(ffsystem, params))
    if path is not None:
        with open(path, "w") as fh:
            fh.write(text)
    return text


def write_pdb(ffsystem: ForceFieldSystem, positions, path, box=None) -> str:
    """Write frames to a PDB file with the system's topology (``openmm.app.PDBFile``; an
    mdtraj placeholder topology for systems without one). positions: (N, 3) or (F, N, 3) nm
    (numpy, JAX or an OpenMM Quantity); several frames become MODEL records. box: (3,) edges
    or (3, 3) vectors nm for the CRYST1 record (default: the system's box when periodic, none
    otherwise). Returns ``path``."""
    from openmm import Vec3, app, unit

    if hasattr(positions, "value_in_unit"):
        positions = positions.value_in_unit(unit.nanometer)
    r = np.asarray(positions, dtype=np.float64)
    n = ffsystem.n_atoms
    frames = r[None] if r.ndim == 2 else r
    if frames.ndim != 3 or frames.shape[1:] != (n, 3):
        raise ValueError(f"positions must have shape ({n}, 3) or (frames, {n}, 3) nm; "
                         f"got {r.shape}")
    if not np.all(np.isfinite(frames)):
        bad = np.argwhere(~np.isfinite(frames))[0]
        raise ValueError(f"positions contain NaN or infinite values (frame {bad[0]}, atom "
                         f"{bad[1]})")
    if box is None and ffsystem.space.periodic:
        box = ffsystem.box
    vectors = None
    if box is not None:
        b = np.asarray(box, dtype=np.float64)
        b = np.diag(b) if b.shape == (3,) else b
        if b.shape != (3, 3) or not np.all(np.isfinite(b)) or np.any(np.diag(b) <= 0):
            raise ValueError(f"box must be (3,) edges or (3, 3) vectors in nm with positive "
                             f"diagonal; got {np.asarray(box).shape}")
        vectors = tuple(Vec3(*map(float, v)) for v in b) * unit.nanometer
    if ffsystem.topology is not None:
        topology = ffsystem.topology
    else:
        topology = ffsystem.mdtraj_topology().to_openmm()
    before = topology.getPeriodicBoxVectors()
    try:
        topology.setPeriodicBoxVectors(vectors)
        with open(path, "w") as fh:
            app.PDBFile.writeHeader(topology, fh)
            for k, frame in enumerate(frames):
                app.PDBFile.writeModel(topology, frame * unit.nanometer, fh,
                                       modelIndex=k + 1 if len(frames) > 1 else None)
            app.PDBFile.writeFooter(topology, fh)
    finally:
        topology.setPeriodicBoxVectors(before)
    return path
