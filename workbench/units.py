"""Units. Molecular units as OpenMM and mdtraj use them: nm, ps, amu, kJ/mol, elementary
charge, kelvin. Reduced Lennard-Jones units (sigma, epsilon, mass = 1) for teaching systems."""

BOLTZMANN = 0.00831446261815324
"""Boltzmann constant in kJ/mol/K: kT = BOLTZMANN * T."""

AVOGADRO = 6.02214076e23
BAR_PER_KJ_MOL_NM3 = 16.605390671738466
"""1 kJ/mol/nm^3 in bar."""


def strip(q, unit=None):
    """The value of an OpenMM ``Quantity`` in ``unit`` (its own unit when None), or ``q`` as it
    is when it carries no unit: the one place where OpenMM's units are taken off."""
    if hasattr(q, "value_in_unit"):
        return q.value_in_unit(unit) if unit is not None else q._value
    return q


def kT_from_kelvin(temperature: float) -> float:
    """kT (kJ/mol) at ``temperature`` (K)."""
    return BOLTZMANN * temperature


def kelvin_from_kT(kT: float) -> float:
    """Temperature (K) for ``kT`` (kJ/mol)."""
    return kT / BOLTZMANN

ONE_4PI_EPS0 = 138.93545764438198
"""Coulomb constant 1/(4 pi eps0) in kJ/mol nm / e^2, the value OpenMM 8 uses (CODATA 2018):
two unit charges 1 nm apart have 138.935... kJ/mol."""

KCAL = 4.184
"""1 kcal in kJ."""

HARTREE_KJ_MOL = 2625.4996394798254
"""1 hartree in kJ/mol (CODATA 2018: 4.3597447222071e-18 J x N_A)."""

BOHR_NM = 0.0529177210903
"""1 bohr in nm (CODATA 2018)."""

EV_KJ_MOL = 96.48533212331002
"""1 eV in kJ/mol (CODATA 2018: e x N_A / 1000)."""

LABELS = {
    "molecular": {"energy": "kJ/mol", "length": "nm", "time": "ps", "1/length": "1/nm",
                  "1/time": "1/ps"},
    "reduced": {"energy": "ε", "length": "σ", "time": "τ", "1/length": "1/σ", "1/time": "1/τ"},
}
"""Axis labels by dimension for the two unit systems workbench uses (OpenMM's molecular units
and reduced Lennard-Jones units)."""

REDUCED_LABELS = {
    "kJ/mol": "ε", "nm": "σ", "ps": "τ", "1/nm": "1/σ", "1/ps": "1/τ", "kJ/mol/nm^2": "ε/σ²",
    "kJ/mol/nm^3": "ε/σ³", "amu": "m",
}
"""A molecular unit label -> its reduced-unit label (energies in epsilon, lengths in sigma,
times in tau, masses in m). Labels of energy terms and settings are declared once, in molecular
units (``EnergyTerm.param_units``, ``integrators.SETTING_UNITS``), and translated here."""
