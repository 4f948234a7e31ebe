"""workbench: differentiable molecular simulation in JAX, with live Jupyter panels.

Start from a :class:`System` (potential, params, masses, constraints, topology, box, positions,
units): :func:`lj_fluid` for a Lennard-Jones fluid, :func:`workbench.forcefield.load` for a
molecule with an OpenMM force field. Run it with :class:`Simulation` (integrators:
:func:`langevin`, :func:`velocity_verlet`, :func:`nose_hoover_chain`, :func:`brownian`;
samplers in :mod:`workbench.sampling`), watch it with :class:`workbench.session.Session` and
the panels in :mod:`workbench.panels`, differentiate it with :mod:`workbench.gradients`.

Layers (imports point downward): ``space``/``neighbors``/``system`` -> ``potentials`` ->
``forcefield`` -> ``dynamics`` -> ``sampling``/``gradients`` -> ``simulate`` (host driver) ->
``session`` -> ``panels``. The core never imports widget libraries. Importing the package
changes no global state, except that ``WORKBENCH_CPU_DEVICES`` (if set) asks XLA for that many
CPU devices, which must happen before JAX starts.
"""

from . import parallel

parallel.configure_from_env()  # CPU devices only when asked (WORKBENCH_CPU_DEVICES; see parallel)

from . import neighbors, observables, potentials, space, units  # noqa: E402
from .dynamics import (  # noqa: E402
    brownian,
    langevin,
    minimize,
    nose_hoover_chain,
    velocity_verlet,
)
from .notebook import sized, small_mode  # noqa: E402
from .potentials import PairPotential, Sum  # noqa: E402
from .simulate import BlowupError, Simulation  # noqa: E402
from .system import UnitWarning  # noqa: E402
from .systems import System, data_file, fcc_lattice, lj_fluid  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "neighbors", "observables", "parallel", "potentials", "space", "units", "brownian", "langevin",
    "minimize", "nose_hoover_chain", "velocity_verlet", "PairPotential", "Sum", "BlowupError",
    "Simulation", "System", "UnitWarning", "data_file", "fcc_lattice", "lj_fluid", "sized",
    "small_mode",
]
