"""Monte Carlo barostat: NPT Lennard-Jones fluid at the Johnson-Zollweg-Gubbins pressure of a
known density returns that density; group scaling keeps molecules rigid."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import workbench as wb
from workbench import space as spaces
from workbench.potentials.base import FunctionPotential, Sum
from workbench.sampling import barostat as bs
from workbench.simulate import Simulation

from test_lj_eos import block_average, jzg_pressure


def _npt_density(T, rho, anisotropic, seed, chunks=10):
    n = 500
    system = wb.lj_fluid(n_atoms=n, density=rho, cutoff=2.5, skin=0.5, truncation="cut")
    pot = Sum({"pair": system.potential, "tail": system.potential.tail_term(n)})
    params = {"pair": system.params, "tail": system.params}
    sampler = bs.monte_carlo_barostat(pot, jzg_pressure(T, rho), every=25, anisotropic=anisotropic)
    sim = Simulation(pot, params, sampler, dict(dt=0.005, kT=T, gamma=1.0), system.positions,
                     masses=system.masses, seed=seed, report_interval=25, frames_per_chunk=80)
    for _ in range(2):  # equilibration
        sim.advance()
    dens = []
    for _ in range(chunks):
        frame = sim.advance()
        dens.append(n / np.abs(np.linalg.det(frame.boxes)))
    baro = bs.barostat_state(sim.state)
    return np.concatenate(dens), baro, sim


@pytest.mark.parametrize("T,rho,anisotropic", [(2.0, 0.5, False), (2.0, 0.5, True),
                                                (1.5, 0.8442, False)])
def test_npt_lj_fluid_has_the_equation_of_state_density(T, rho, anisotropic):
    """P* = P_JZG(T*, rho*) at two state points (a dilute supercritical fluid and the dense
    liquid): <rho> = rho within max(k sigma, the density error that 2.5% in P makes, which is
    JZG's accuracy: 2.5% P / (dP/drho), 1.5% at rho* = 0.5, 0.5% at 0.8442)."""
    dens, baro, sim = _npt_density(T, rho, anisotropic, seed=3 + anisotropic)
    m, err = block_average(dens)
    k = float(scipy.stats.t.ppf(0.9995, 9))
    h = 1e-4
    slope = (jzg_pressure(T, rho + h) - jzg_pressure(T, rho - h)) / (2 * h)
    tol = 0.025 * abs(jzg_pressure(T, rho)) / slope
    print(f"T={T} rho={rho} anisotropic={anisotropic}: rho {m:.4f} +- {err:.4f} (bound "
          f"{max(k * err, tol):.4f}), acceptance {baro.acceptance():.2f}, regrowths "
          f"{sim.regrowths}")
    assert abs(m - rho) < max(k * err, tol)
    assert 0.2 < baro.acceptance() < 0.8
    assert np.std(dens) > 0  # the volume moved
    box = sim.state.box
    if anisotropic:  # orthorhombic, with unequal sides after one-axis moves
        assert float(jnp.max(jnp.abs(box - jnp.diag(jnp.diagonal(box))))) == 0.0
        assert len(set(np.round(np.diagonal(np.asarray(box)), 6))) == 3


def test_group_scaling_keeps_molecules_rigid():
    rng = np.random.default_rng(0)
    r = jnp.asarray(rng.uniform(0, 3, (6, 3)))
    m = jnp.asarray([16.0, 1.0, 1.0, 12.0, 12.0, 4.0])
    groups = jnp.asarray([0, 0, 0, 1, 1, 2])
    out = bs.scale_groups(r, m, groups, 6, jnp.asarray([1.1, 0.9, 1.05]))
    d = lambda x, i, j: float(jnp.linalg.norm(x[i] - x[j]))  # noqa: E731
    for i, j in [(0, 1), (0, 2), (1, 2), (3, 4)]:
        assert d(out, i, j) == pytest.approx(d(r, i, j), rel=1e-6)
    com = lambda x, idx: jnp.sum(m[np.array(idx), None] * x[np.array(idx)], 0) / jnp.sum(  # noqa: E731
        m[np.array(idx)])
    np.testing.assert_allclose(np.asarray(com(out, [0, 1, 2])),
                               np.asarray(com(r, [0, 1, 2])) * np.array([1.1, 0.9, 1.05]),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out[5]), np.asarray(r[5]) * np.array([1.1, 0.9, 1.05]),
                               rtol=1e-6)


def test_bad_barostat_input_is_named():
    free = FunctionPotential(lambda r, p: jnp.sum(r**2))
    with pytest.raises(ValueError, match="periodic"):
        bs.monte_carlo_barostat(free, 1.0)
    tri = FunctionPotential(lambda r, p: jnp.sum(r**2),
                            space=spaces.triclinic(np.array([[3.0, 0, 0], [1.0, 3.0, 0],
                                                             [0, 0, 3.0]])))
    with pytest.raises(ValueError, match="orthorhombic"):
        bs.monte_carlo_barostat(tri, 1.0, anisotropic=True)
