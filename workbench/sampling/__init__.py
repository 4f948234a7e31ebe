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
``Session`` and the panels run them. They compose as optax chains transformations: a sampler's
``integrator=`` is a name (:data:`workbench.dynamics.registry.INTEGRATORS`) or an Integrator
object, including another sampler, which a biasing sampler rebuilds on the biased potential.
Each sampler keeps its own fields under its own key of ``state.extra`` (read them with
``metadynamics.bias_state``, ``barostat.barostat_state``, ``montecarlo.mc_state``), so nested
samplers never clobber each other:

* NPT metadynamics: ``metadynamics(system, cvs, ..., integrator=monte_carlo_barostat(system,
  P))`` (metadynamics outermost: the barostat's volume moves see the bias; walkers share it);
* NPT umbrella windows: ``umbrella(system, cvs, centers, k, integrator=monte_carlo_barostat(
  system, P))``;
* parallel-tempering metadynamics: ``replica_exchange(system, integrator=metadynamics(...))``.

Batch drivers (umbrella windows, replica exchange, metadynamics walkers) own a leading batch
axis and so are outermost; per-copy samplers (barostat, metadynamics, Monte Carlo) nest in any
order.
"""

from . import barostat, bias, cv, metadynamics, montecarlo, replica, umbrella
from .mbar import MBARResult, covariance, log_weights, mbar, reweight

__all__ = ["MBARResult", "barostat", "bias", "covariance", "cv", "log_weights", "mbar",
           "metadynamics", "montecarlo", "replica", "reweight", "umbrella"]
