"""Trajectory, log and checkpoint files. Everything is written incrementally and flushed after
every chunk, so an interrupted or crashed run keeps all frames produced so far.

* :class:`TrajectoryWriter` - DCD (with a PDB topology beside it) or HDF5 (topology inside),
  through mdtraj's file classes (imported lazily). Positions in nm; reduced units are written as
  if sigma were 1 nm.
* :class:`ThermoLog` - CSV thermodynamics log.
* :func:`save_state` / :func:`load_state` - npz checkpoints (never pickle).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import fields, is_dataclass, replace
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TrajectoryWriter", "ThermoLog", "save_state", "load_state"]

FORMATS = {".dcd": "dcd", ".h5": "hdf5", ".hdf5": "hdf5"}


class TrajectoryWriter:
    """Append frames to ``path`` (.dcd or .h5). ``topology``: mdtraj.Topology.
    ``box``: (3, 3) box vectors in nm (None for free space)."""

    def __init__(self, path: str, topology, box=None, append: bool = False):
        ext = os.path.splitext(path)[1].lower()
        if ext not in FORMATS:
            raise ValueError(f"trajectory format {ext!r} not supported; use one of {sorted(FORMATS)}")
        import mdtraj as md

        self.path, self.format, self.topology = path, FORMATS[ext], topology
        self.n_frames = 0
        mode = "a" if append and os.path.exists(path) else "w"
        if self.format == "dcd":
            self._file = _DCDWriter(path, topology.n_atoms, with_cell=box is not None, append=mode == "a")
            pdb = os.path.splitext(path)[0] + ".pdb"
            if mode == "w":
                self._write_pdb(pdb, box)
        else:
            self._file = md.formats.HDF5TrajectoryFile(path, mode)
            if mode == "w":
                self._file.topology = topology
        self._box = None if box is None else np.asarray(box, dtype=float)

    def _write_pdb(self, pdb_path, box):
        import mdtraj as md

        n = self.topology.n_atoms
        traj = md.Trajectory(np.zeros((1, n, 3)), self.topology)
        if box is not None:
            traj.unitcell_vectors = np.asarray(box, dtype=float)[None]
        self._pdb_path = pdb_path
        self._pdb_traj = traj

    def _cell(self, n_frames, boxes=None):
        if self._box is None:
            return None, None
        import mdtraj as md

        boxes = np.broadcast_to(self._box if boxes is None else np.asarray(boxes, float),
                                (n_frames, 3, 3))
        a, b, c, al, be, ga = md.utils.box_vectors_to_lengths_and_angles(
            boxes[:, 0], boxes[:, 1], boxes[:, 2])
        return np.stack([a, b, c], -1), np.stack([al, be, ga], -1)

    def write(self, positions, time_ps: Sequence[float] | None = None, boxes=None):
        """positions: (T, N, 3) or (N, 3) nm; boxes: (T, 3, 3) nm per frame (a barostat changes
        them), or None for the box given at construction. Flushed to disk before returning."""
        xyz = np.asarray(positions, dtype=np.float32)
        if xyz.ndim == 2:
            xyz = xyz[None]
        if hasattr(self, "_pdb_traj") and self.n_frames == 0:
            self._pdb_traj.xyz = xyz[:1]
            self._pdb_traj.save_pdb(self._pdb_path)
        lengths, angles = self._cell(len(xyz), boxes)
        if self.format == "dcd":
            self._file.write(xyz * 10.0, None if lengths is None else lengths * 10.0, angles)
        else:
            t = None if time_ps is None else np.asarray(time_ps, dtype=np.float32)
            self._file.write(coordinates=xyz, time=t, cell_lengths=lengths, cell_angles=angles)
            self._file.flush()
        self.n_frames += len(xyz)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _DCDWriter:
    """Minimal CHARMM/NAMD DCD writer that appends and flushes after every write.

    Written here because mdtraj's DCDTrajectoryFile can neither append nor flush, and a crash
    must not lose frames. Files read back with mdtraj (tested). Coordinates in angstrom."""

    def __init__(self, path: str, n_atoms: int, with_cell: bool, append: bool = False):
        import struct

        self._struct, self.n_atoms, self.with_cell = struct, n_atoms, with_cell
        if append:
            self._fh = open(path, "r+b")
            self._fh.seek(8)
            self.n_frames = struct.unpack("<i", self._fh.read(4))[0]
            self._fh.seek(0, os.SEEK_END)
            return
        self._fh = open(path, "wb")
        self.n_frames = 0
        icntrl = [0] * 20
        icntrl[1], icntrl[2], icntrl[10], icntrl[19] = 0, 1, int(with_cell), 24
        head = b"CORD" + struct.pack("<9i", *icntrl[:9]) + struct.pack("<f", 1.0)
        head += struct.pack("<10i", *icntrl[10:])
        self._record(head)
        title = b"workbench trajectory".ljust(80)
        self._record(struct.pack("<i", 1) + title)
        self._record(struct.pack("<i", n_atoms))
        self._fh.flush()

    def _record(self, payload: bytes):
        n = self._struct.pack("<i", len(payload))
        self._fh.write(n + payload + n)

    def write(self, xyz_angstrom, lengths=None, angles=None):
        st = self._struct
        for t, frame in enumerate(np.asarray(xyz_angstrom, dtype="<f4")):
            if self.with_cell:
                a, b, c = lengths[t]
                al, be, ga = angles[t]
                self._record(st.pack("<6d", a, ga, b, be, al, c))
            for k in range(3):
                self._record(np.ascontiguousarray(frame[:, k]).tobytes())
            self.n_frames += 1
        self._fh.seek(8)
        self._fh.write(st.pack("<i", self.n_frames))
        self._fh.seek(0, os.SEEK_END)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        if not self._fh.closed:
            self._fh.close()


class ThermoLog:
    """CSV log with a header row; one row per reported frame, flushed per write."""

    def __init__(self, path: str, columns: Sequence[str], append: bool = False):
        self.columns = list(columns)
        exists = append and os.path.exists(path)
        self._fh = open(path, "a" if exists else "w", newline="")
        self._w = csv.writer(self._fh)
        if not exists:
            self._w.writerow(self.columns)
            self._fh.flush()

    def write(self, rows: dict[str, np.ndarray]):
        arrays = [np.atleast_1d(np.asarray(rows[c])) for c in self.columns]
        for values in zip(*arrays):
            self._w.writerow([f"{v:.10g}" if isinstance(v, (float, np.floating)) else v for v in values])
        self._fh.flush()

    def close(self):
        if not self._fh.closed:
            self._fh.close()


# ---------------------------------------------------------------------- checkpoints
def _static_meta(tree) -> list:
    """Static fields of the dataclasses inside ``tree``, in traversal order (for capacities)."""
    out = []

    def visit(x):
        if is_dataclass(x) and not isinstance(x, type):
            static = {
                f.name: getattr(x, f.name)
                for f in fields(x)
                if f.metadata.get("static") and isinstance(getattr(x, f.name), (int, float, str, tuple, type(None)))
            }
            if static:
                out.append([type(x).__name__, static])
            for f in fields(x):
                if not f.metadata.get("static"):
                    visit(getattr(x, f.name))
        elif isinstance(x, dict):
            for k in sorted(x):
                visit(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    visit(tree)
    return out


def _apply_static(tree, meta: list):
    it = iter(meta)

    def visit(x):
        if is_dataclass(x) and not isinstance(x, type):
            static_names = [
                f.name for f in fields(x)
                if f.metadata.get("static") and isinstance(getattr(x, f.name), (int, float, str, tuple, type(None)))
            ]
            if static_names:
                _, values = next(it)
                values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
                x = replace(x, **values)
            changes = {f.name: visit(getattr(x, f.name)) for f in fields(x) if not f.metadata.get("static")}
            return replace(x, **changes)
        if isinstance(x, dict):
            return {k: visit(x[k]) for k in sorted(x)}
        if isinstance(x, (list, tuple)):
            return type(x)(visit(v) for v in x)
        return x

    return visit(tree)


def save_state(path: str, state: Any, metadata: dict | None = None) -> None:
    """Write the pytree ``state`` to ``path`` (.npz): every leaf as an array, the static
    capacities and ``metadata`` as JSON. Written to a temporary file and renamed, so a crash
    never leaves a half-written checkpoint."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arrays[f"leaf_{i:04d}"] = np.asarray(leaf)
    meta = {"static": _static_meta(state), "metadata": metadata or {}, "n_leaves": len(leaves)}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_state(path: str, template: Any) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save_state` into the structure of ``template``
    (a state of the same system, e.g. from ``integrator.init``). Returns (state, metadata)."""
    with np.load(path) as data:
        meta = json.loads(bytes(data["__meta__"]).decode())
        template = _apply_static(template, meta["static"])
        leaves, treedef = jax.tree_util.tree_flatten(template)
        if len(leaves) != meta["n_leaves"]:
            raise ValueError(
                f"checkpoint {path} holds {meta['n_leaves']} arrays but this simulation's state "
                f"has {len(leaves)}: it was written for a different integrator or system"
            )
        new = []
        for i, t in enumerate(leaves):
            a = data[f"leaf_{i:04d}"]
            if hasattr(t, "shape") and a.shape != t.shape and i != 0 and t.ndim != a.ndim:
                raise ValueError(f"checkpoint array {i} has shape {a.shape}, expected {t.shape}")
            if isinstance(t, jax.Array) and jnp.issubdtype(t.dtype, jax.dtypes.prng_key):
                new.append(jax.random.wrap_key_data(jnp.asarray(a)))
            else:
                new.append(jnp.asarray(a, dtype=t.dtype if hasattr(t, "dtype") else None))
    return jax.tree_util.tree_unflatten(treedef, new), meta["metadata"]
