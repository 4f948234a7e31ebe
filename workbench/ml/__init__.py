"""Learned energies: neural network potentials (PaiNN, NequIP-class) as energy terms on the
shared neighbor list, their training data and training.

    from workbench.ml import Model
    model = Model.create("painn", elements=("H", "C", "O"), cutoff=0.5)
    term = model.potential(atomic_numbers)          # an EnergyTerm: Simulation, samplers, ...
"""

from .graph import Graph, build_graph
from .model import ARCHITECTURES, Model, NeuralPotential, UnknownElementError

__all__ = ["ARCHITECTURES", "Graph", "Model", "NeuralPotential", "UnknownElementError",
           "build_graph"]
