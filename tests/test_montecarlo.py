"""Metropolis Monte Carlo: single-particle moves of the Lennard-Jones fluid against the JZG
equation of state at two state points (the MD runs of test_lj_eos check the same points, so MD
and MC agree through it), hybrid MC, all-particle moves and hybrid MC on the exact double well, and
the local energy change of one particle against the full energy difference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import workbench as wb
from workbench.potentials.base import FunctionPotential
from workbench.sampling import montecarlo as mcm
from workbench.simulate import Simulation

from test_lj_eos import block_average, jzg_energy, jzg_pressure
from test_metadynamics import BARRIER, double_well, exact_double_well

K99 = float(scipy.stats.t.ppf(0.9995, 9))


@pytest.mark.parametrize("T,rho,mode,seed", [(2.0, 0.5, "single", 1), (1.5, 0.8442, "single", 2),
                                             (2.0, 0.5, "hybrid", 3)])
def test_lj_monte_carlo_matches_jzg(T, rho, mode, seed):
    """500 atoms, 1000 sweeps (single) or 600 hybrid moves of 10 steps after equilibration with
    step-size adaptation; U/N and P = rho T + W/3V (+ tails) within max(k sigma, 1% / 2.5%)."""
    n = 500
    system = wb.lj_fluid(n_atoms=n, density=rho, cutoff=2.5, skin=0.5, truncation="cut")
    pot, params = system.potential, system.params
    vol = float(system.space.volume)
    e_tail, p_tail = (float(v) for v in pot.tail_correction(params, n, vol))
    sampler = mcm.metropolis(pot, mode=mode, step_size=0.1 if mode == "single" else 0.005,
                             target=0.4 if mode == "single" else 0.7)
    sim = Simulation(pot, params, sampler, dict(kT=T), system.positions, masses=system.masses,
                     seed=seed, report_interval=5, frames_per_chunk=40,
                     blowup_move=1.0 if mode == "single" else 5.0)  # a hybrid move is a trajectory
    for _ in range(2):
        sim.advance()
    sim.state = mcm.production(sim.state)
    u, w = [], []
    for _ in range(5 if mode == "single" else 3):
        th = sim.advance().thermo
        u.append(th["potential"])
        w.append(th["pressure"] - 2.0 * th["kinetic"] / (3.0 * vol))  # the virial part
    u, u_err = block_average(np.concatenate(u) / n + e_tail / n)
    p, p_err = block_average(rho * T + np.concatenate(w) + p_tail)
    u_ref, p_ref = jzg_energy(T, rho), jzg_pressure(T, rho)
    print(f"{mode} T={T} rho={rho}: U/N {u:.4f} +- {u_err:.4f} (JZG {u_ref:.4f}); "
          f"P {p:.4f} +- {p_err:.4f} (JZG {p_ref:.4f}); acceptance "
          f"{mcm.mc_state(sim.state).acceptance():.2f}, regrowths {sim.regrowths}")
    assert abs(u - u_ref) < max(K99 * u_err, 0.01 * abs(u_ref))
    assert abs(p - p_ref) < max(K99 * p_err, 0.025 * abs(p_ref))
    assert 0.2 < mcm.mc_state(sim.state).acceptance() < 0.95


@pytest.mark.parametrize("mode,step", [("all", 0.3), ("hybrid", 0.02)])
def test_double_well_distribution_is_exact(mode, step):
    kT = 2.5
    pot = FunctionPotential(double_well)
    params = {"h": jnp.asarray(BARRIER / 2.5)}  # 2 kT barrier: both wells sampled directly
    sampler = mcm.metropolis(pot, mode=mode, step_size=step, target=0.5 if mode == "all" else 0.8,
                             n_steps=20)
    settings = sampler.settings(kT=kT)
    state = sampler.init(jax.random.PRNGKey(4), np.array([[-1.0, 0.0, 0.0]]), params, settings)

    @jax.jit
    def run(s):
        return jax.lax.scan(lambda c, _: (sampler.step(c, params, settings),
                                          c.positions[0, 0]), s, None, length=100_000)

    state, _ = run(state)
    state = mcm.production(state)
    state, x = run(state)
    edges = np.linspace(-1.6, 1.6, 41)
    h, _ = np.histogram(np.asarray(x), edges)
    c = 0.5 * (edges[1:] + edges[:-1])
    exact = exact_double_well(c) / 2.5
    region = exact < 3.0 * kT
    with np.errstate(divide="ignore"):
        f = -kT * np.log(h[region])
    d = f - exact[region]
    assert np.abs(d - d.mean()).max() / kT < 0.2


def test_local_energy_change_equals_full_difference():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        system = wb.lj_fluid(n_atoms=256, density=0.8, cutoff=2.5, skin=0.5, truncation="shift")
        pot, params = system.potential, system.params
        rng = np.random.default_rng(0)
        r = jnp.asarray(system.positions + rng.normal(scale=0.05, size=system.positions.shape))
        aux = pot.allocate(r)
        u0 = pot.energy(r, params, aux)
        total = sum(float(pot.atom_energy(i, r[i], r, params, aux)) for i in range(0, 256, 37))
        assert np.isfinite(total)
        for i in (0, 17, 255):
            new = r[i] + jnp.asarray([0.05, -0.03, 0.02])
            du = pot.atom_energy(i, new, r, params, aux) - pot.atom_energy(i, r[i], r, params, aux)
            full = pot.energy(r.at[i].set(new), params, aux) - u0
            assert float(du) == pytest.approx(float(full), rel=1e-9, abs=1e-10)
            du_all = pot.atom_energy(i, new, r, params) - pot.atom_energy(i, r[i], r, params)
            assert float(du_all) == pytest.approx(float(full), rel=1e-9, abs=1e-10)
    finally:
        jax.config.update("jax_enable_x64", old)  # the suite runs in float64 (conftest)


def test_bad_monte_carlo_input_is_named():
    pot = FunctionPotential(double_well)
    with pytest.raises(ValueError, match="atom_energy"):
        mcm.metropolis(pot, mode="single")
    with pytest.raises(ValueError, match="mode"):
        mcm.metropolis(pot, mode="gibbs")
