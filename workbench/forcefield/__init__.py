"""Force fields from OpenMM: a ``System`` (or PDB + force-field XML through ``openmm.app``)
turned into workbench energy terms whose parameters form one differentiable pytree, keyed by
force-field type.

* :mod:`.openmm` - :func:`load`, :func:`from_topology`, :func:`from_system`,
  :class:`ForceFieldSystem`;
* :mod:`.compare` - every term against OpenMM's Reference platform (``workbench
  compare-openmm``);
* :mod:`.builder` - capped peptides from a sequence, solvation;
* :mod:`.expression`, :mod:`.custom`, :mod:`.custom_nonbonded`, :mod:`.gb` - OpenMM's custom
  forces and implicit solvents.

OpenMM itself is imported only inside the functions that need it.
"""

from .openmm import (
    ForceFieldError,
    ForceFieldSystem,
    UnsupportedForceError,
    from_system,
    from_topology,
    load,
)

__all__ = ["ForceFieldError", "ForceFieldSystem", "UnsupportedForceError", "from_system",
           "from_topology", "load"]
