"""Integrators (init/step pairs) and minimizers."""

from .integrators import (
    BrownianSettings,
    Integrator,
    LangevinSettings,
    MDState,
    NoseHooverSettings,
    VerletSettings,
    brownian,
    kinetic_energy,
    langevin,
    maxwell_boltzmann,
    nose_hoover_chain,
    velocity_verlet,
)
from .minimize import FireState, MinimizeResult, fire, gradient_descent, minimize

__all__ = [
    "BrownianSettings", "Integrator", "LangevinSettings", "MDState", "NoseHooverSettings",
    "VerletSettings", "brownian", "kinetic_energy", "langevin", "maxwell_boltzmann",
    "nose_hoover_chain", "velocity_verlet", "FireState", "MinimizeResult", "fire",
    "gradient_descent", "minimize",
]
