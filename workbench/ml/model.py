"""A neural potential as a model (architecture, hyperparameters, elements, weights) and as an
energy term on a system's atoms.

* :class:`Model`: what is trained and saved. ``Model.create("painn", elements=(1, 6, 8),
  cutoff=0.5)`` builds one; ``model.params`` is a plain dict ``{"weights": {name: array},
  "shift": (E,) kJ/mol, "scale": (E,) kJ/mol}`` (numeric: a new value never recompiles); the
  per-atom energy is ``scale[Z] * net(...) + shift[Z]``, with shift and scale fitted from data
  (:func:`workbench.ml.train.fit_shift_scale`).
* :class:`NeuralPotential`: the model bound to a system's atoms (their elements, the space,
  optionally a subset for ML/MM); an ordinary :class:`~workbench.potentials.base.EnergyTerm`,
  so MD, samplers, reweighting, ``gradient(...)`` and the panels use it unchanged. Forces are
  -dE/dx by autodiff: conservative by construction.

File format (:meth:`Model.save`, :meth:`Model.load`; no pickle): one ``.npz`` with the JSON
description under ``"model"`` (format name and version, architecture, hyperparameters, elements,
seed, weight names) and each array under ``"weights/<name>"``, ``"shift"``, ``"scale"``.

Units: nm, kJ/mol.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from .. import space as spaces
from ..potentials.base import EnergyTerm, NeighborSpec
from ..space import Space
from .graph import build_graph
from .nequip import NequIP
from .painn import PaiNN

Array = jax.Array

__all__ = ["Model", "NeuralPotential", "ARCHITECTURES", "FORMAT", "VERSION", "ELEMENTS",
           "UnknownElementError"]

ARCHITECTURES = {"painn": PaiNN, "nequip": NequIP}
"""Architecture name -> Equinox module class (the one name table)."""

FORMAT, VERSION = "workbench-neural-potential", 1

ELEMENTS = {"H": 1, "He": 2, "Li": 3, "Be": 4, "B": 5, "C": 6, "N": 7, "O": 8, "F": 9, "Ne": 10,
            "Na": 11, "Mg": 12, "Al": 13, "Si": 14, "P": 15, "S": 16, "Cl": 17, "Ar": 18,
            "K": 19, "Ca": 20, "Br": 35, "I": 53}  # fmt: skip
"""Element symbol -> atomic number, for the elements models are usually trained on."""


class UnknownElementError(ValueError):
    """A model was asked about an element it was not trained on."""


def _flat(tree) -> dict[str, Array]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path).lstrip("."): leaf for path, leaf in leaves}


@dataclass(frozen=True, eq=False)
class Model:
    """A neural potential. architecture: a key of :data:`ARCHITECTURES`; hyperparameters:
    the module's keyword arguments (``cutoff`` nm, ``features``, ``layers``...); elements:
    atomic numbers it knows, sorted; params: see the module docstring; seed: of the initial
    weights. Build with :meth:`create` or :meth:`load`."""

    architecture: str
    hyperparameters: dict
    elements: tuple
    params: dict
    seed: int = 0
    _static: Any = field(default=None, repr=False)
    _treedef: Any = field(default=None, repr=False)
    _names: tuple = field(default=(), repr=False)

    @staticmethod
    def create(architecture: str, elements, *, cutoff: float, seed: int = 0,
               dtype=jnp.float64, **hyperparameters) -> "Model":
        """A new model with random weights (``seed``), shift 0 and scale 1 kJ/mol.

        elements: atomic numbers or symbols; cutoff: nm; dtype: float32 or float64 weights."""
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                             f"{sorted(ARCHITECTURES)}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive (nm), got {cutoff!r}")
        zs = tuple(sorted({ELEMENTS[e] if isinstance(e, str) else int(e) for e in elements}))
        if not zs:
            raise ValueError("a model needs at least one element")
        hp = dict(hyperparameters, cutoff=float(cutoff))
        cls = ARCHITECTURES[architecture]
        module = cls(len(zs), rng=np.random.default_rng(seed), dtype=dtype, **hp)
        return Model._from_module(architecture, hp, zs, module, seed, None)

    @staticmethod
    def _from_module(architecture, hp, zs, module, seed, extra) -> "Model":
        arrays, static = eqx.partition(module, eqx.is_inexact_array)
        leaves, treedef = jax.tree_util.tree_flatten(arrays)
        names = tuple(_flat(arrays))
        dtype = leaves[0].dtype
        params = {"weights": dict(zip(names, leaves)),
                  "shift": jnp.zeros(len(zs), dtype), "scale": jnp.ones(len(zs), dtype)}
        if extra is not None:
            params.update(extra)
        return Model(architecture, hp, zs, params, seed, static, treedef, names)

    # ------------------------------------------------------------------ evaluation
    @property
    def cutoff(self) -> float:
        """Interaction cutoff (nm) of one message-passing step."""
        return float(self.hyperparameters["cutoff"])

    def module(self, params: dict | None = None):
        """The Equinox module with ``params["weights"]`` (default: the model's)."""
        w = (self.params if params is None else params)["weights"]
        leaves = [w[n] for n in self._names]
        return eqx.combine(jax.tree_util.tree_unflatten(self._treedef, leaves), self._static)

    def species(self, atomic_numbers) -> np.ndarray:
        """(N,) indices into :attr:`elements` of ``atomic_numbers`` (ints or symbols); an
        element the model never saw raises :class:`UnknownElementError`."""
        zs = np.array([ELEMENTS.get(z, -1) if isinstance(z, str) else int(z)
                       for z in np.atleast_1d(atomic_numbers)])
        unknown = sorted(set(zs.tolist()) - set(self.elements))
        if unknown:
            raise UnknownElementError(
                f"the model knows elements {list(self.elements)} (atomic numbers) but the atoms "
                f"include {unknown}: train it on data with those elements, or describe those "
                "atoms with a force field (ML/MM: NeuralPotential(..., atoms=selection))")
        return np.searchsorted(np.asarray(self.elements), zs).astype(np.int32)

    def atom_energies(self, params: dict, species: Array, graph) -> Array:
        """Per-atom energies (N,) kJ/mol for ``species`` (N,) and a graph of this cutoff."""
        with jax.numpy_rank_promotion("allow"):  # e3nn-jax broadcasts implicitly inside
            out = self.module(params)(species, graph)
        return params["scale"][species] * out + params["shift"][species]

    def astype(self, dtype) -> "Model":
        """The same model with float32 or float64 weights."""
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), self.params)
        return self.replace(params=p)

    def replace(self, **changes) -> "Model":
        """A copy with ``params`` (same names and shapes) or ``seed`` replaced."""
        from dataclasses import replace

        if "params" in changes:
            _check_params(self, changes["params"])
        return replace(self, **changes)

    def potential(self, atomic_numbers, space: Space | None = None, *, atoms=None,
                  skin: float = 0.1) -> "NeuralPotential":
        """This model as an energy term on atoms with ``atomic_numbers`` (N,) (of the whole
        system; with ``atoms``, only those indices are described by the model)."""
        return NeuralPotential(self, atomic_numbers, space or spaces.free(), atoms=atoms,
                               skin=skin)

    def system(self, atomic_numbers, positions, *, box=None, topology=None,
               name: str = "neural potential"):
        """A :class:`~workbench.system.System` of atoms with ``atomic_numbers`` (N,) at
        ``positions`` (N, 3) nm described by this model alone: masses from the elements (amu),
        free space or a periodic ``box`` (edge lengths (3,) or (3, 3) nm). Simulation, Session,
        the samplers and ``gradient(...)`` take it as they take any system."""
        from openmm.app import Element

        from ..system import System

        z = np.atleast_1d(np.asarray(atomic_numbers, int))
        space = spaces.free() if box is None else (
            spaces.triclinic(box) if np.ndim(box) == 2 else spaces.periodic(box))
        masses = np.array([Element.getByAtomicNumber(int(a)).mass._value for a in z])
        if topology is None:  # one residue, atoms named by element (viewers see elements)
            import mdtraj as md

            topology = md.Topology()
            residue = topology.add_residue("MOL", topology.add_chain())
            for i, a in enumerate(z):
                el = md.element.Element.getByAtomicNumber(int(a))
                topology.add_atom(f"{el.symbol}{i + 1}", el, residue)
        return System(self.potential(z, space), self.params, np.asarray(positions, float),
                      masses=masses, space=space, topology=topology, units="molecular",
                      name=name)

    # ------------------------------------------------------------------ files
    def description(self) -> dict:
        return dict(format=FORMAT, version=VERSION, architecture=self.architecture,
                    hyperparameters=self.hyperparameters, elements=list(self.elements),
                    seed=self.seed, weights=list(self._names),
                    dtype=str(np.asarray(self.params["shift"]).dtype))

    def save(self, path: str) -> None:
        """Write weights and hyperparameters to ``path`` (.npz; atomic: temporary file renamed
        into place)."""
        arrays = {f"weights/{n}": np.asarray(a) for n, a in self.params["weights"].items()}
        arrays.update(shift=np.asarray(self.params["shift"]),
                      scale=np.asarray(self.params["scale"]))
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, model=json.dumps(self.description()), **arrays)
        os.replace(tmp, path)

    @staticmethod
    def load(path: str) -> "Model":
        """Read a model written by :meth:`save`."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file {path!r} not found")
        with np.load(path, allow_pickle=False) as f:
            if "model" not in f.files:
                raise ValueError(f"{path} is not a workbench model file (no 'model' entry)")
            desc = json.loads(str(f["model"]))
            if desc.get("format") != FORMAT or desc.get("version") != VERSION:
                raise ValueError(f"{path}: format {desc.get('format')!r} version "
                                 f"{desc.get('version')!r}; expected {FORMAT!r} {VERSION}")
            arrays = {k: f[k] for k in f.files if k != "model"}
        dtype = jnp.dtype(desc["dtype"])
        skeleton = ARCHITECTURES[desc["architecture"]](  # the weights come from the file
            len(desc["elements"]), rng=np.random.default_rng(0), dtype=dtype,
            **desc["hyperparameters"])
        model = Model._from_module(desc["architecture"], desc["hyperparameters"],
                                   tuple(desc["elements"]), skeleton, desc["seed"], None)
        missing = [n for n in model._names if f"weights/{n}" not in arrays]
        if missing or list(model._names) != desc["weights"]:
            raise ValueError(f"{path}: the weights do not fit a {desc['architecture']} model "
                             f"with these hyperparameters (missing: {missing[:5]})")
        params = {"weights": {n: jnp.asarray(arrays[f"weights/{n}"]) for n in model._names},
                  "shift": jnp.asarray(arrays["shift"]), "scale": jnp.asarray(arrays["scale"])}
        return model.replace(params=params)


def _check_params(model: Model, params) -> None:
    if not isinstance(params, dict) or set(params) != {"weights", "shift", "scale"}:
        raise ValueError("model params must be a dict with keys 'weights', 'shift', 'scale'")
    w = params["weights"]
    if set(w) != set(model._names):
        raise ValueError(f"model weights differ in names from the architecture's "
                         f"({sorted(set(w) ^ set(model._names))[:5]}...)")
    for n in model._names:
        if jnp.shape(w[n]) != jnp.shape(model.params["weights"][n]):
            raise ValueError(f"weight {n!r} has shape {jnp.shape(w[n])}, the model's is "
                             f"{jnp.shape(model.params['weights'][n])}")


@dataclass(frozen=True, eq=False)
class NeuralPotential(EnergyTerm):
    """A :class:`Model` as an energy term. params: the model's params dict (traced).

    atomic_numbers: (N,) of the whole system; space: boundary conditions; atoms: indices the
    model describes (None: all; otherwise the ML region of an ML/MM system: its pairs are
    taken all against all, with the minimum image in periodic boxes); skin: of the neighbor
    list the term asks for (nm)."""

    model: Model
    atomic_numbers: Any
    space: Space = field(default_factory=spaces.free)
    atoms: Any = None
    skin: float = 0.1

    def __post_init__(self):
        z = np.atleast_1d(np.asarray(self.atomic_numbers))
        object.__setattr__(self, "atomic_numbers", z)
        sel = None if self.atoms is None else np.asarray(self.atoms, np.int32)
        if sel is not None and (sel.ndim != 1 or len(sel) == 0 or sel.min() < 0
                                or sel.max() >= len(z) or len(np.unique(sel)) != len(sel)):
            raise ValueError(f"atoms must be distinct indices in [0, {len(z)}), got {self.atoms}")
        object.__setattr__(self, "atoms", sel)
        object.__setattr__(self, "_species", self.model.species(z if sel is None else z[sel]))
        if self.space.periodic:
            self.space.check_cutoff(self.model.cutoff, "the model's cutoff")

    def neighbor_spec(self) -> NeighborSpec | None:
        return None if self.atoms is not None else NeighborSpec(self.model.cutoff, self.skin)

    def param_units(self) -> dict[str, str]:
        return {"shift": "kJ/mol", "scale": "kJ/mol"}

    def atom_energies(self, positions: Array, params: dict, aux=None, box=None) -> Array:
        """Per-atom energies (N_model,) kJ/mol of the model's atoms."""
        space = self.box_space(box)
        if self.atoms is not None:
            positions, aux = positions[self.atoms], None
        elif isinstance(aux, nl.NeighborList) and aux.cutoff < self.model.cutoff:
            raise ValueError(f"the neighbor list's cutoff {aux.cutoff} nm is shorter than the "
                             f"model's {self.model.cutoff} nm: allocate it with the term's "
                             "neighbor_spec (or a longer cutoff)")
        elif aux is not None and not isinstance(aux, nl.NeighborList):
            raise TypeError(f"aux must be a NeighborList or None, got {type(aux).__name__}")
        graph = build_graph(positions, space, aux, self.model.cutoff)
        return self.model.atom_energies(params, jnp.asarray(self._species), graph)

    def energy(self, positions, params, aux=None, box=None):
        return jnp.sum(self.atom_energies(positions, params, aux, box))
