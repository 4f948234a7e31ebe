"""The shipped DFT data (data/ml/, made by tools/make_ml_data.py): provenance recorded, and
the labels reproduced by pyscf from the stored configurations."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from workbench import data_file
from workbench.ml.data import load

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("make_ml_data", ROOT / "tools" / "make_ml_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("molecule, n_atoms", [("ethanol", 9), ("water3", 9)])
def test_data_records_provenance_and_relabels_exactly(molecule, n_atoms):
    tool = _tool()
    data = load(data_file(f"ml/{molecule}.npz"))
    assert data.n_atoms == n_atoms and len(data) == tool.FRAMES[molecule]
    theory, sampling = data.meta["theory"], data.meta["sampling"]
    assert (theory["xc"], theory["basis"]) == ("pbe", "def2-svp")
    assert sampling["seed"] == tool.SEEDS[molecule]
    assert data.meta["units"] == {"positions": "nm", "energies": "kJ/mol", "forces": "kJ/mol/nm"}
    # the first configuration, labelled again: same energy and forces
    e, f, _ = tool.label(data.positions[0], data.atomic_numbers)
    assert e == pytest.approx(data.energies[0], abs=1e-5)
    assert np.allclose(f, data.forces[0], atol=1e-3)
    # configurations are distinct MD frames, not copies
    assert np.min(np.abs(np.diff(data.energies))) > 0
