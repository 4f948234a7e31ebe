"""Energy terms: pair potentials, sums of terms, and potentials from plain functions."""

from .base import Evaluation, FunctionPotential, Potential, Sum, overflowed
from .pair import (
    KINDS,
    TRUNCATIONS,
    PairKind,
    PairPotential,
    lennard_jones,
    morse,
    soft_sphere,
    wca,
)

__all__ = [
    "Evaluation",
    "FunctionPotential",
    "Potential",
    "Sum",
    "overflowed",
    "KINDS",
    "TRUNCATIONS",
    "PairKind",
    "PairPotential",
    "lennard_jones",
    "morse",
    "soft_sphere",
    "wca",
]
