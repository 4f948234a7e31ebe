"""Term-by-term comparison with OpenMM: energies and forces of every force against the same
force evaluated by OpenMM (the Reference platform by default, double precision).

Each OpenMM force is put in a force group of its own on a copy of the System, so the comparison
is per term. Errors: the energy error relative to max(|E_openmm|, 1 kJ/mol) (terms that are
zero by symmetry would otherwise have no scale), and the RMS force error relative to the RMS of
OpenMM's forces. Used by the test suite and by ``workbench compare-openmm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .openmm import ForceFieldSystem

__all__ = ["TermComparison", "compare", "format_table"]


@dataclass(frozen=True)
class TermComparison:
    """One term: energies (kJ/mol) from workbench and OpenMM, the relative energy error, the
    relative RMS force error, and whether both are within ``tolerance``."""

    name: str
    energy: float
    energy_openmm: float
    energy_error: float
    force_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.energy_error <= self.tolerance and self.force_error <= self.tolerance


def _openmm_groups(system, positions, force_index: dict[str, int], platform: str):
    import openmm as mm
    from openmm import unit

    copy = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(system))
    if len(force_index) > 31:
        raise ValueError("more than 31 forces: cannot give each its own force group")
    for group, k in enumerate(force_index.values()):
        copy.getForce(k).setForceGroup(group)
        if type(copy.getForce(k)).__name__ == "NonbondedForce":
            copy.getForce(k).setReciprocalSpaceForceGroup(-1)  # same group as the direct space
    for k in range(copy.getNumForces()):
        if k not in force_index.values():
            copy.getForce(k).setForceGroup(31)
    ctx = mm.Context(copy, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))
    ctx.setPositions(positions * unit.nanometer)
    out = {}
    for group, name in enumerate(force_index):
        st = ctx.getState(getEnergy=True, getForces=True, groups={group})
        out[name] = (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                     st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return out


def compare(system: ForceFieldSystem, positions=None, *, platform: str = "Reference",
            tolerance: float = 1e-6, pme_tolerance: float = 1e-5) -> list[TermComparison]:
    """Compare every term of ``system`` with OpenMM at ``positions`` (N, 3) nm (default: the
    start structure). Needs float64 (``jax.config.update("jax_enable_x64", True)``)."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError("compare() needs float64: call jax.config.update('jax_enable_x64', "
                           "True) before any JAX computation")
    r = np.asarray(system.positions if positions is None else positions, dtype=np.float64)
    ref = _openmm_groups(system.system, r, system.force_index, platform)
    pot = system.potential
    rj = jnp.asarray(r)
    aux = pot.allocate(r)
    rows = []
    for name, term in pot.terms.items():
        ev = jax.jit(term.energy_forces)(rj, system.params[name], aux)
        e_ref, f_ref = ref[name]
        f = np.asarray(ev.forces)
        e_err = abs(float(ev.energy) - e_ref) / max(abs(e_ref), 1.0)
        scale = np.sqrt(np.mean(f_ref**2))
        f_err = float(np.sqrt(np.mean((f - f_ref) ** 2)) / scale) if scale > 0 else \
            float(np.sqrt(np.mean(f**2)))
        tol = pme_tolerance if getattr(term, "method", None) in ("PME", "Ewald") else tolerance
        rows.append(TermComparison(name, float(ev.energy), e_ref, e_err, f_err, tol))
    return rows


def format_table(rows: list[TermComparison]) -> str:
    """A plain-text table of a comparison, one term per line."""
    head = f"{'term':<28}{'workbench':>18}{'openmm':>18}{'energy err':>12}{'force err':>12}  ok"
    lines = [head, "-" * len(head)]
    for c in rows:
        lines.append(f"{c.name:<28}{c.energy:>18.8f}{c.energy_openmm:>18.8f}"
                     f"{c.energy_error:>12.2e}{c.force_error:>12.2e}  {'yes' if c.ok else 'NO'}")
    return "\n".join(lines)


def main(pdb: str, forcefield: list[str], nonbonded: str = "NoCutoff", cutoff: float = 1.0,
         tolerance: float = 1e-6, pme_tolerance: float = 1e-5, platform: str = "Reference",
         out=None) -> int:
    """``workbench compare-openmm``: load ``pdb`` with ``forcefield`` files, print the table,
    return 0 when every term agrees within tolerance, 1 when one does not, 2 for unsupported
    forces or bad input (with the reason printed)."""
    import sys

    from .openmm import ForceFieldError, UnsupportedForceError, load

    out = out or sys.stdout
    jax.config.update("jax_enable_x64", True)
    try:
        system = load(pdb, forcefield, nonbonded_method=nonbonded, cutoff=cutoff)
    except (ForceFieldError, UnsupportedForceError) as e:
        print(f"compare-openmm: {type(e).__name__}: {e}", file=out)
        return 2
    rows = compare(system, platform=platform, tolerance=tolerance, pme_tolerance=pme_tolerance)
    print(f"{pdb}: {system.n_atoms} atoms, {nonbonded}, force fields {' '.join(forcefield)}",
          file=out)
    print(format_table(rows), file=out)
    for note in system.notes:
        print(f"note: {note}", file=out)
    bad = [c.name for c in rows if not c.ok]
    if bad:
        print(f"compare-openmm: {len(bad)} term(s) disagree beyond tolerance: {bad}", file=out)
        return 1
    print(f"compare-openmm: all {len(rows)} terms agree", file=out)
    return 0
