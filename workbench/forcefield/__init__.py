"""Force fields from OpenMM: a ``System`` (or PDB + force-field XML through ``openmm.app``)
turned into workbench energy terms whose parameters form one differentiable pytree."""
