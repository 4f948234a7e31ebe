"""workbench: differentiable molecular simulation in JAX, with live Jupyter panels.

Layers (imports point downward): ``space``/``neighbors`` -> ``potentials`` -> ``dynamics`` ->
``simulate`` (host driver) -> ``session`` -> ``panels``. The core never imports widget libraries.
"""

from . import neighbors, observables, potentials, space, units
from .dynamics import (
    brownian,
    langevin,
    minimize,
    nose_hoover_chain,
    velocity_verlet,
)
from .potentials import PairPotential, Sum
from .simulate import BlowupError, Simulation
from .systems import System, fcc_lattice, lj_fluid

__version__ = "0.1.0"

__all__ = [
    "neighbors", "observables", "potentials", "space", "units", "brownian", "langevin",
    "minimize", "nose_hoover_chain", "velocity_verlet", "PairPotential", "Sum", "BlowupError",
    "Simulation", "System", "fcc_lattice", "lj_fluid",
]
