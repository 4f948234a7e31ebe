"""Gradients of simulated properties with respect to parameters.

* :mod:`.trajectory`: pure trajectory functions with checkpointing, truncation, or exact
  reversibility (constant memory).
* :mod:`.implicit`: minimizers differentiated by the implicit function theorem.
* :mod:`.chaos`: Lyapunov exponent and gradient growth with the horizon.
* :mod:`.reweight`: ensemble averages and their parameter gradients by reweighting fixed
  samples (MD, Monte Carlo, or biased runs with their weights).
* :mod:`.free_energy`: free-energy differences and surfaces, and their parameter gradients.
* :mod:`.estimate`: :func:`gradient`, one call for every path, the method an estimator object
  (:class:`~.estimate.Backprop`, :class:`~.estimate.Reweight`, :class:`~.estimate.Implicit`,
  :class:`~.estimate.FiniteDifference`) or its name, to compare them.
* :mod:`.fit`: optax-driven fitting of parameters (energies and forces, ensemble observables
  with re-sampling, structures), checkpointed and resumable.
"""

from . import chaos, estimate, free_energy, implicit, reweight, trajectory
from .estimate import Backprop, FiniteDifference, Gradient, Implicit, Reweight, gradient
from .reweight import Samples, ensemble_gradient, reweighted_average

__all__ = ["chaos", "estimate", "free_energy", "implicit", "reweight", "trajectory", "Gradient",
           "Backprop", "FiniteDifference", "Implicit", "Reweight",
           "Samples", "ensemble_gradient", "gradient", "reweighted_average"]
