"""Sampling and free-energy estimation, in JAX, on top of the energy-term contract.

* :mod:`~workbench.sampling.cv` - collective variables (PLUMED names), differentiable;
* :mod:`~workbench.sampling.bias` - harmonic and grid biases as energy terms;
* :mod:`~workbench.sampling.metadynamics` - well-tempered metadynamics (walkers, reweighting);
* :mod:`~workbench.sampling.umbrella` - umbrella windows as a batch; WHAM;
* :mod:`~workbench.sampling.mbar` - MBAR (Newton, uncertainties, implicit derivatives);
* :mod:`~workbench.sampling.replica` - temperature / Hamiltonian replica exchange;
* :mod:`~workbench.sampling.montecarlo` - Metropolis single-particle, all-particle, hybrid MC;
* :mod:`~workbench.sampling.barostat` - Monte Carlo barostat (NPT);
* :mod:`~workbench.sampling.distributed` - independent runs on dask.distributed.

Samplers share the integrators' ``init``/``step`` contract, so the ``Simulation`` driver, the
``Session`` and the panels run them; their own fields live in ``state.extra``.
"""

from . import bias, cv, metadynamics, montecarlo, replica, umbrella
from .mbar import MBARResult, covariance, log_weights, mbar, reweight

__all__ = ["MBARResult", "bias", "covariance", "cv", "log_weights", "mbar", "metadynamics",
           "montecarlo", "replica", "reweight", "umbrella"]
