"""The one table of integrators by name, and how a sampler takes its inner integrator.

:data:`INTEGRATORS` maps a name to its factory ``factory(potential[, constraints])``;
:class:`~workbench.simulate.Simulation` and every sampler (metadynamics, umbrella windows, the
barostat, replica exchange) resolve names through it (:func:`resolve`), so there is one list of
names. A sampler's ``integrator=`` argument is either such a name or an
:class:`~workbench.dynamics.integrators.Integrator` object, which may itself be a sampler: it is
rebuilt on the sampler's potential
(:meth:`~workbench.dynamics.integrators.Integrator.with_potential`), so a biasing sampler runs
it, and everything inside it, on the biased potential.
"""

from __future__ import annotations

import warnings
from dataclasses import fields

from . import integrators as integ

__all__ = ["INTEGRATORS", "CONSTRAINED", "resolve"]

INTEGRATORS = {
    "verlet": integ.velocity_verlet,
    "velocity_verlet": integ.velocity_verlet,
    "langevin": integ.langevin,
    "nose_hoover": integ.nose_hoover_chain,
    "nose_hoover_chain": integ.nose_hoover_chain,
    "brownian": integ.brownian,
}
"""Integrator factories by name (structural: the dynamics' functional form)."""

CONSTRAINED = (integ.velocity_verlet, integ.langevin)
"""Integrator factories that take ``constraints``."""


def resolve(integrator, potential, constraints=None, *, where: str,
            thermostat: bool = False) -> integ.Integrator:
    """The inner integrator of sampler ``where`` on ``potential`` (an energy term).

    integrator: a name in :data:`INTEGRATORS` (built with ``constraints``) or an Integrator
    (or sampler) object, rebuilt on ``potential`` with its own constraints. thermostat: the
    sampler needs settings with kT (an NVT or NPT integrator)."""
    if isinstance(integrator, str):
        if integrator not in INTEGRATORS:
            raise ValueError(f"{where}: unknown integrator {integrator!r}; give one of "
                             f"{sorted(INTEGRATORS)} or an Integrator / sampler object")
        factory = INTEGRATORS[integrator]
        if constraints is not None and factory not in CONSTRAINED:
            raise ValueError(f"{where}: integrator {integrator!r} does not support constraints "
                             "and this system has them; use 'langevin' or 'velocity_verlet' (or "
                             "pass system.potential to drop them)")
        inner = factory(potential) if constraints is None else factory(potential, constraints)
    elif isinstance(integrator, integ.Integrator):
        if constraints is not None and integrator.constraints is None:
            warnings.warn(f"{where}: the system has constraints but the integrator "
                          f"{integrator.name!r} was built without them, so they are dropped: "
                          "build it on the System (e.g. langevin(system)) to keep them",
                          UserWarning, stacklevel=3)
        inner = integrator.with_potential(potential)
    else:
        raise TypeError(f"{where}: integrator must be a name in {sorted(INTEGRATORS)} or an "
                        f"Integrator / sampler object, got {type(integrator).__name__}")
    if thermostat and "kT" not in {f.name for f in fields(inner.settings_class)}:
        raise ValueError(f"{where} needs a thermostatted inner integrator (settings with kT); "
                         f"{inner.name} has {[f.name for f in fields(inner.settings_class)]}: "
                         "use 'langevin' or 'brownian'")
    return inner
