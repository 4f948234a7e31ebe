"""Units. Molecular units as OpenMM and mdtraj use them: nm, ps, amu, kJ/mol, elementary
charge, kelvin. Reduced Lennard-Jones units (sigma, epsilon, mass = 1) for teaching systems."""

BOLTZMANN = 0.00831446261815324
"""Boltzmann constant in kJ/mol/K: kT = BOLTZMANN * T."""

AVOGADRO = 6.02214076e23
BAR_PER_KJ_MOL_NM3 = 16.605390671738466
"""1 kJ/mol/nm^3 in bar."""


def kT_from_kelvin(temperature: float) -> float:
    """kT (kJ/mol) at ``temperature`` (K)."""
    return BOLTZMANN * temperature


def kelvin_from_kT(kT: float) -> float:
    """Temperature (K) for ``kT`` (kJ/mol)."""
    return kT / BOLTZMANN
