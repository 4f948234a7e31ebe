"""Names of the leaves of a parameter pytree: one convention for the whole package.

A leaf's name is its path with keys joined by dots (``epsilon``, ``lj.sigma``,
``NonbondedForce.epsilon``; list and tuple positions as numbers); a scalar inside a leaf adds its
index (``epsilon[1]``, ``PeriodicTorsionForce.k[12]``). Sessions, panels, fitting and the units
table (:meth:`~workbench.potentials.base.EnergyTerm.param_units`) all use these names.
"""

from __future__ import annotations

import jax

__all__ = ["key_name", "leaf_names"]


def key_name(k) -> str:
    """One path entry of ``jax.tree_util.tree_flatten_with_path`` as text."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_names(tree) -> list[str]:
    """Dotted name of every leaf of ``tree``, in flattening order."""
    return [".".join(key_name(k) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
