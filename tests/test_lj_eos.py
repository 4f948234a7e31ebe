"""Lennard-Jones fluid thermodynamics from Langevin NVT runs against the Johnson, Zollweg and
Gubbins equation of state (Mol. Phys. 78, 591 (1993), "JZG"), a modified Benedict-Webb-Rubin
fit to simulations of the full LJ fluid, accurate to about 1% in U and a few % in P.

The EOS is implemented here from the paper's formulas and checked first: thermodynamic
consistency (P = rho^2 d(A/N)/d rho + rho T, U = d(beta A/N)/d beta, G_i as integrals), and agreement
with two independent LJ equations of state (Kolafa and Nezbeda 1994; Mecke et al. 1996).
The simulations use truncation 'cut' at rc = 2.5 plus the homogeneous tail corrections, so
that they estimate the full-potential U and P. Reduced units (sigma = epsilon = m = k_B = 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

import workbench as wb
from workbench.simulate import Simulation

# JZG 1993, Table 10: x_1 .. x_32 (index 0 unused), gamma = 3.
X = np.array(
    [
        0.0,
        0.8623085097507421,
        2.976218765822098,
        -8.402230115796038,
        0.1054136629203555,
        -0.8564583828174598,
        1.582759470107601,
        0.7639421948305453,
        1.753173414312048,
        2.798291772190376e3,
        -4.8394220260857657e-2,
        0.9963265197721935,
        -3.698000291272493e1,
        2.084012299434647e1,
        8.305402124717285e1,
        -9.574799715203068e2,
        -1.477746229234994e2,
        6.398607852471505e1,
        1.603993673294834e1,
        6.805916615864377e1,
        -2.791293578795945e3,
        -6.245128304568454,
        -8.116836104958410e3,
        1.488735559561229e1,
        -1.059346754655084e4,
        -1.131607632802822e2,
        -8.867771540418822e3,
        -3.986982844450543e1,
        -4.689270299917261e3,
        2.593535277438717e2,
        -2.694523589434903e3,
        -7.218487631550215e2,
        1.721802063863269e2,
    ]
)
GAMMA = 3.0


def jzg_a(T: float) -> np.ndarray:
    """a_1 .. a_8 (T) (JZG Table 5)."""
    x = X
    return np.array(
        [
            x[1] * T + x[2] * np.sqrt(T) + x[3] + x[4] / T + x[5] / T**2,
            x[6] * T + x[7] + x[8] / T + x[9] / T**2,
            x[10] * T + x[11] + x[12] / T,
            x[13],
            x[14] / T + x[15] / T**2,
            x[16] / T,
            x[17] / T + x[18] / T**2,
            x[19] / T**2,
        ]
    )


def jzg_b(T: float) -> np.ndarray:
    """b_1 .. b_6 (T) (JZG Table 6)."""
    x = X
    return np.array(
        [
            x[20] / T**2 + x[21] / T**3,
            x[22] / T**2 + x[23] / T**4,
            x[24] / T**2 + x[25] / T**3,
            x[26] / T**2 + x[27] / T**4,
            x[28] / T**2 + x[29] / T**3,
            x[30] / T**2 + x[31] / T**3 + x[32] / T**4,
        ]
    )


def jzg_c(T: float) -> np.ndarray:
    """c_1 .. c_8 (T) of the internal energy (JZG Table 7): c_i = d(a_i / T) / d(1/T)."""
    x = X
    return np.array(
        [
            x[2] * np.sqrt(T) / 2 + x[3] + 2 * x[4] / T + 3 * x[5] / T**2,
            x[7] + 2 * x[8] / T + 3 * x[9] / T**2,
            x[11] + 2 * x[12] / T,
            x[13],
            2 * x[14] / T + 3 * x[15] / T**2,
            2 * x[16] / T,
            2 * x[17] / T + 3 * x[18] / T**2,
            3 * x[19] / T**2,
        ]
    )


def jzg_d(T: float) -> np.ndarray:
    """d_1 .. d_6 (T) of the internal energy (JZG Table 8)."""
    x = X
    return np.array(
        [
            3 * x[20] / T**2 + 4 * x[21] / T**3,
            3 * x[22] / T**2 + 5 * x[23] / T**4,
            3 * x[24] / T**2 + 4 * x[25] / T**3,
            3 * x[26] / T**2 + 5 * x[27] / T**4,
            3 * x[28] / T**2 + 4 * x[29] / T**3,
            3 * x[30] / T**2 + 4 * x[31] / T**3 + 5 * x[32] / T**4,
        ]
    )


def jzg_G(rho: float) -> np.ndarray:
    """G_1 .. G_6 (rho) (JZG Table 9): G_1 = (1 - F) / (2 gamma),
    G_i = -(F rho^(2(i-1)) - 2 (i-1) G_(i-1)) / (2 gamma), F = exp(-gamma rho^2)."""
    F = np.exp(-GAMMA * rho**2)
    g = [(1 - F) / (2 * GAMMA)]
    for i in range(2, 7):
        g.append(-(F * rho ** (2 * (i - 1)) - 2 * (i - 1) * g[-1]) / (2 * GAMMA))
    return np.array(g)


def jzg_helmholtz(T: float, rho: float) -> float:
    """Residual Helmholtz energy per particle A/N = sum a_i rho^i / i + sum b_i G_i."""
    i = np.arange(1, 9)
    return float(np.sum(jzg_a(T) * rho**i / i) + np.sum(jzg_b(T) * jzg_G(rho)))


def jzg_pressure(T: float, rho: float) -> float:
    """P = rho T + sum a_i rho^(i+1) + F sum b_i rho^(2i+1)."""
    F = np.exp(-GAMMA * rho**2)
    i, j = np.arange(1, 9), np.arange(1, 7)
    return float(
        rho * T + np.sum(jzg_a(T) * rho ** (i + 1)) + F * np.sum(jzg_b(T) * rho ** (2 * j + 1))
    )


def jzg_energy(T: float, rho: float) -> float:
    """Residual (configurational) internal energy per particle U/N = sum c_i rho^i / i
    + sum d_i G_i."""
    i = np.arange(1, 9)
    return float(np.sum(jzg_c(T) * rho**i / i) + np.sum(jzg_d(T) * jzg_G(rho)))


# ----------------------------------------------------------------------------- the EOS itself
def derivative(f, x: float, h: float = 1e-3) -> float:
    """Five-point central difference (error O(h^4))."""
    return (f(x - 2 * h) - 8 * f(x - h) + 8 * f(x + h) - f(x + 2 * h)) / (12 * h)


STATES = [(2.0, 0.5), (1.5, 0.8442), (1.3, 0.4), (0.75, 0.85), (3.0, 1.0), (1.15, 0.822)]


@pytest.mark.parametrize("T,rho", STATES)
def test_jzg_pressure_is_density_derivative_of_helmholtz(T, rho):
    dA = derivative(lambda r: jzg_helmholtz(T, r), rho)
    assert jzg_pressure(T, rho) == pytest.approx(rho * T + rho**2 * dA, rel=1e-7, abs=1e-8)


@pytest.mark.parametrize("T,rho", STATES)
def test_jzg_energy_is_beta_derivative_of_helmholtz(T, rho):
    u = derivative(lambda b: b * jzg_helmholtz(1.0 / b, rho), 1.0 / T)
    assert jzg_energy(T, rho) == pytest.approx(u, rel=1e-7)


def test_jzg_G_functions_are_integrals():
    """G_i(rho) = int_0^rho F(r) r^(2i-1) dr, which makes d(A/N)/d rho give the F b_i terms."""
    from scipy.integrate import quad

    for rho in (0.3, 0.8442, 1.1):
        ref = [
            quad(lambda r, i=i: np.exp(-GAMMA * r * r) * r ** (2 * i - 1), 0, rho, epsabs=1e-14)[0]
            for i in range(1, 7)
        ]
        np.testing.assert_allclose(jzg_G(rho), ref, rtol=1e-9, atol=1e-14)


def test_jzg_agrees_with_independent_equations_of_state():
    """Kolafa-Nezbeda (Fluid Phase Equilib. 100, 1 (1994)) at T = 1.3: U(0.2) = -1.53715,
    P(0.2) = 0.121479, U(0.4) = -2.80602 (values quoted with that EOS's code); Mecke et al.
    (Int. J. Thermophys. 17, 391 (1996)) at T = 1.15, rho = 0.822: P = 2.1555. Independent fits
    to different simulation data agree with JZG to within their accuracy (1%)."""
    assert jzg_energy(1.3, 0.2) == pytest.approx(-1.5371511, rel=0.01)
    assert jzg_pressure(1.3, 0.2) == pytest.approx(0.1214794, rel=0.01)
    assert jzg_energy(1.3, 0.4) == pytest.approx(-2.8060167, rel=0.01)
    assert jzg_pressure(1.15, 0.822) == pytest.approx(8.622 / 4, rel=0.01)
    # Values this implementation gives (regression, 1e-6), for the record.
    assert jzg_pressure(2.0, 0.5) == pytest.approx(1.0774504, rel=1e-6)
    assert jzg_energy(2.0, 0.5) == pytest.approx(-3.1449434, rel=1e-6)
    assert jzg_pressure(1.5, 0.8442) == pytest.approx(4.4279556, rel=1e-6)
    assert jzg_energy(1.5, 0.8442) == pytest.approx(-5.3336709, rel=1e-6)


# ----------------------------------------------------------------------------- simulations
def block_average(x, n_blocks: int = 10) -> tuple[float, float]:
    """Mean of ``x`` (T,) and its standard error from ``n_blocks`` block means."""
    x = np.asarray(x, dtype=float)
    m = len(x) // n_blocks * n_blocks
    b = x[:m].reshape(n_blocks, -1).mean(axis=1)
    return float(b.mean()), float(b.std(ddof=1) / np.sqrt(n_blocks))


@pytest.mark.slow
@pytest.mark.parametrize("T,rho,seed", [(2.0, 0.5, 1), (1.5, 0.8442, 2)])
def test_lj_fluid_matches_jzg_equation_of_state(T, rho, seed):
    """500 atoms, Langevin (BAOAB, dt 0.005, gamma 1), 2000 steps of equilibration from fcc,
    10000 steps sampled every 10. U/N = <E_pot>/N + E_tail/N, P = rho T + <tr W>/3V + P_tail.
    Accept |U - U_JZG| < max(k sigma, 1%) and |P - P_JZG| < max(k sigma, 2.5%), sigma from 10 block
    averages and k = 4.78 (Student's t, 9 dof, 99.9%); the kinetic temperature must equal T within
    max(k sigma, 1%)."""
    n = 500
    system = wb.lj_fluid(n_atoms=n, density=rho, cutoff=2.5, skin=0.5, truncation="cut")
    pot, params = system.potential, system.params
    vol = float(system.space.volume)
    e_tail, p_tail = (float(v) for v in pot.tail_correction(params, n, vol))
    sim = Simulation(
        pot,
        params,
        "langevin",
        {"dt": 0.005, "kT": T, "gamma": 1.0},
        system.positions,
        masses=system.masses,
        seed=seed,
        report_interval=10,
        frames_per_chunk=100,
    )
    sim.run(2000, progress=False)
    out = sim.run(10000, progress=False)
    # Configurational pressure: the logged pressure minus its kinetic part 2 KE / 3V.
    virial_p = out["pressure"] - rho * out["kT"]
    u, u_err = block_average(out["potential"] / n + e_tail / n)
    p, p_err = block_average(rho * T + virial_p + p_tail)
    t, t_err = block_average(out["kT"])
    u_ref, p_ref = jzg_energy(T, rho), jzg_pressure(T, rho)
    print(
        f"T={T} rho={rho}: kT {t:.4f} +- {t_err:.4f}; U/N {u:.4f} +- {u_err:.4f} "
        f"(JZG {u_ref:.4f}, {100 * (u / u_ref - 1):+.2f}%, {(u - u_ref) / u_err:+.1f} sigma); "
        f"P {p:.4f} +- {p_err:.4f} (JZG {p_ref:.4f}, {100 * (p / p_ref - 1):+.2f}%, "
        f"{(p - p_ref) / p_err:+.1f} sigma); tails E/N {e_tail / n:.4f} P {p_tail:.4f}"
    )
    # The errors come from 10 block means, so the bound is Student's t for 9 degrees of freedom
    # at 99.9% (4.78 standard errors), not the normal 3: a 3-sigma bound on an estimated sigma
    # fails far more often than 0.3% (seen: a -4.3 "sigma" pressure in one realization, while
    # three other seeds gave -1.3, -0.0 and +0.1 sigma).
    k = float(scipy.stats.t.ppf(0.9995, 9))
    # BAOAB samples configurations to O(dt^2) but its full-step velocities carry an O(dt^2)
    # kinetic-temperature bias (Leimkuhler & Matthews 2013): about 1% at dt = 0.005 here.
    assert abs(t - T) < max(k * t_err, 0.01 * T)
    assert u_err < 0.005 * abs(u_ref) and p_err < 0.03 * abs(p_ref)
    assert abs(u - u_ref) < max(k * u_err, 0.01 * abs(u_ref))
    assert abs(p - p_ref) < max(k * p_err, 0.025 * abs(p_ref))
