"""Saving and loading a :class:`~workbench.system.System` as one ``.npz`` file (the format is
:data:`workbench.system.FILE_FORMAT`). No pickle: potentials are rebuilt from a description
(pair potentials: their arguments; force-field systems: the OpenMM System XML, its topology and
force-field files), then the saved parameters are put in, leaf by leaf, by name."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from . import naming
from . import space as spaces

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT, VERSION = "workbench-system", 1


def _text(arr) -> str:
    return bytes(np.asarray(arr, np.uint8)).decode()


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def _potential_description(system) -> tuple[str, dict, dict]:
    """(kind, JSON description, extra arrays) of the system's potential."""
    from .forcefield.openmm import ForceFieldSystem
    from .potentials.pair import PairPotential

    if isinstance(system, ForceFieldSystem):
        if system.system is None:
            raise TypeError("this force-field system has no OpenMM System to save from")
        import openmm
        from openmm import app
        import io

        pdb = io.StringIO()
        top = system.topology
        if top is None:
            raise TypeError("a force-field system without a topology cannot be saved")
        app.PDBFile.writeFile(top, system.positions * 10.0 * openmm.unit.angstrom, pdb,
                              keepIds=True)
        desc = {"forcefield_files": list(system.forcefield_files or ())}
        arrays = {"openmm_xml": _bytes(openmm.XmlSerializer.serialize(system.system)),
                  "topology_pdb": _bytes(pdb.getvalue())}
        return "forcefield", desc, arrays
    pot = system.potential
    if isinstance(pot, PairPotential):
        desc = {"pair_kind": pot.kind.name, "cutoff": float(pot.cutoff),
                "truncation": pot.truncation,
                "r_switch": None if pot.r_switch is None else float(pot.r_switch),
                "skin": float(pot.skin), "neighbor_list": bool(pot.neighbor_list),
                "capacity_factor": float(pot.capacity_factor), "list_method": pot.list_method}
        arrays = {} if pot.types is None else {"types": np.asarray(pot.types)}
        return "pair", desc, arrays
    raise TypeError(
        f"cannot save a System whose potential is a {type(pot).__name__}: files hold pair "
        "potentials and force-field systems (imported from OpenMM). Save the parameters alone "
        "with numpy (system.params) and rebuild the potential in code")


def save(system, path: str) -> None:
    """Write ``system`` to ``path`` (.npz, atomic)."""
    kind, desc, arrays = _potential_description(system)
    names = naming.leaf_names(system.params)
    leaves = jax.tree_util.tree_leaves(system.params)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "units": system.units,
            "name": system.name, "element": system.element, "params": names,
            "potential": desc, "space": system.space.kind}
    out = {"__meta__": _bytes(json.dumps(meta)), "positions": system.positions,
           "masses": np.asarray(system.masses), "box": np.asarray(system.space.box, float)}
    for name, leaf in zip(names, leaves):
        out[f"param:{name}"] = np.asarray(leaf)
    out.update(arrays)
    if not str(path).endswith(".npz"):
        raise ValueError(f"system files end in .npz; got {path!r}")
    tmp = str(path)[:-4] + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)


def _space(kind: str, box: np.ndarray) -> spaces.Space:
    if kind == "free":
        return spaces.free()
    if kind == "periodic":
        return spaces.periodic(np.diag(box))
    return spaces.triclinic(box)


def _fill_params(template, data, names: list[str], path: str):
    """``template``'s structure with the saved leaves (same names, shapes; dtype of the
    template)."""
    t_names = naming.leaf_names(template)
    if t_names != names:
        raise ValueError(f"{path}: saved parameters {names[:6]}... do not match the rebuilt "
                         f"potential's {t_names[:6]}...: the file was written by another version")
    leaves, treedef = jax.tree_util.tree_flatten(template)
    new = []
    for name, t in zip(names, leaves):
        a = data[f"param:{name}"]
        if a.shape != np.shape(t):
            raise ValueError(f"{path}: parameter {name} has shape {a.shape}, the potential "
                             f"expects {np.shape(t)}")
        new.append(jnp.asarray(a, dtype=jnp.asarray(t).dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


def load(path: str):
    """Read a system written by :func:`save`."""
    from .system import System

    if not os.path.exists(path):
        raise FileNotFoundError(f"system file {path!r} not found")
    with np.load(path, allow_pickle=False) as data:
        try:
            meta = json.loads(_text(data["__meta__"]))
        except KeyError:
            raise ValueError(f"{path} is not a workbench system file (no __meta__)") from None
        if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
            raise ValueError(f"{path}: format {meta.get('format')} version "
                             f"{meta.get('version')} is not one this workbench reads "
                             f"({FORMAT} <= {VERSION})")
        positions, masses, box = data["positions"], data["masses"], data["box"]
        desc, names = meta["potential"], meta["params"]
        if meta["kind"] == "pair":
            from .potentials.pair import PairPotential

            space = _space(meta["space"], box)
            types = data["types"] if "types" in data else None
            pot = PairPotential(desc["pair_kind"], space, desc["cutoff"],
                                truncation=desc["truncation"], r_switch=desc["r_switch"],
                                types=types, skin=desc["skin"],
                                neighbor_list=desc["neighbor_list"],
                                capacity_factor=desc["capacity_factor"],
                                list_method=desc["list_method"])
            params = _fill_params(pot.init_params(), data, names, path)
            return System(pot, params, positions, masses, space, units=meta["units"],
                          element=meta["element"], name=meta["name"])
        if meta["kind"] == "forcefield":
            import io

            import openmm
            from openmm import app

            from .forcefield.openmm import from_system

            omm = openmm.XmlSerializer.deserialize(_text(data["openmm_xml"]))
            pdb = app.PDBFile(io.StringIO(_text(data["topology_pdb"])))
            files = desc.get("forcefield_files") or []
            ff = app.ForceField(*files) if files else None
            system = from_system(omm, positions, pdb.topology, forcefield=ff)
            params = _fill_params(system.params, data, names, path)
            return system.replace(params=params, name=meta["name"],
                                  forcefield_files=tuple(files))
        raise ValueError(f"{path}: unknown system kind {meta['kind']!r}")
