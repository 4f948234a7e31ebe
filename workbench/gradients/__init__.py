"""Gradients of simulated properties with respect to parameters.

* :mod:`.trajectory`: pure trajectory functions with checkpointing, truncation, or exact
  reversibility (constant memory).
* :mod:`.implicit`: minimizers differentiated by the implicit function theorem.
* :mod:`.chaos`: Lyapunov exponent and gradient growth with the horizon.
* :mod:`.reweight`: ensemble averages and their parameter gradients by reweighting fixed
  samples (MD, Monte Carlo, or biased runs with their weights).
* :mod:`.free_energy`: free-energy differences and surfaces, and their parameter gradients.
* :mod:`.estimate`: :func:`gradient`, one call for every path (``method=``), to compare them.
* :mod:`.fit`: optax-driven fitting of parameters (energies and forces, ensemble observables
  with re-sampling, structures), checkpointed and resumable.
"""

from . import chaos, estimate, free_energy, implicit, reweight, trajectory
from .estimate import Gradient, gradient
from .reweight import Samples, ensemble_gradient, reweighted_average

__all__ = ["chaos", "estimate", "free_energy", "implicit", "reweight", "trajectory", "Gradient",
           "Samples", "ensemble_gradient", "gradient", "reweighted_average"]
