"""Gradients of simulated properties with respect to parameters.

* :mod:`.reweight`: ensemble averages and their parameter gradients by reweighting fixed
  samples (MD, Monte Carlo, or biased runs with their weights).
"""

from . import reweight
from .reweight import Samples, ensemble_gradient, reweighted_average

__all__ = ["reweight", "Samples", "ensemble_gradient", "reweighted_average"]
