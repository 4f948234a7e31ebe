"""workbench: differentiable molecular simulation in JAX, with live Jupyter panels.

Layers (imports point downward): ``space``/``neighbors`` -> ``potentials`` -> ``dynamics`` ->
``simulate`` (host driver) -> ``session`` -> ``panels``. The core never imports widget libraries.
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
from .potentials import PairPotential, Sum  # noqa: E402
from .simulate import BlowupError, Simulation  # noqa: E402
from .systems import System, fcc_lattice, lj_fluid  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "neighbors", "observables", "parallel", "potentials", "space", "units", "brownian", "langevin",
    "minimize", "nose_hoover_chain", "velocity_verlet", "PairPotential", "Sum", "BlowupError",
    "Simulation", "System", "fcc_lattice", "lj_fluid",
]
