"""Gradients of simulated properties with respect to parameters.

* :mod:`.trajectory`: pure trajectory functions with checkpointing, truncation, or exact
  reversibility (constant memory).
* :mod:`.implicit`: minimizers differentiated by the implicit function theorem.
* :mod:`.chaos`: Lyapunov exponent and gradient growth with the horizon.
* :mod:`.reweight`: ensemble averages and their parameter gradients by reweighting fixed
  samples (MD, Monte Carlo, or biased runs with their weights).
"""

from . import chaos, implicit, reweight, trajectory
from .reweight import Samples, ensemble_gradient, reweighted_average

__all__ = ["chaos", "implicit", "reweight", "trajectory", "Samples", "ensemble_gradient",
           "reweighted_average"]
