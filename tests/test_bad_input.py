"""Bad input is never silent (issue 17, section 5): every public entry point of the estimators
(MBAR, WHAM, reweighting), the CVs and the samplers (metadynamics, umbrella) refuses NaN, inf,
negative, wrongly shaped, out-of-range and wrongly typed input with a named error whose message
names the offending argument; MBAR refuses states that do not overlap (it used to return f = 0
with zero uncertainty after zero iterations) and still matches pymbar where they do."""

from __future__ import annotations

import importlib
import warnings
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import space as spaces
from workbench.gradients import reweight as rw
from workbench.potentials.base import FunctionPotential
from workbench.potentials.bonded import HarmonicBond
from workbench.potentials.pair import PairPotential
from workbench.sampling import bias, cv
from workbench.sampling import metadynamics as md
from workbench.sampling import umbrella as us


def _bowl(r, p):
    return jnp.sum(r * r)


POT = FunctionPotential(_bowl)
X = cv.Position(0, 0)
mb = importlib.import_module("workbench.sampling.mbar")  # (the package's `mbar` is the function)


def harmonic_samples(centers, n=400, seed=0) -> np.ndarray:
    """n (one for all, or one per state) exact samples of each unit Gaussian centred at
    ``centers``, state by state."""
    rng = np.random.default_rng(seed)
    counts = np.broadcast_to(n, (len(centers),))
    return np.concatenate([rng.normal(c, 1.0, m) for c, m in zip(centers, counts)])


def harmonic_states(centers, n=400, seed=0):
    """Unit harmonic states u_k(x) = (x - c_k)^2 / 2 (kT), n exact samples from each:
    (u_kn, N_k). (Few shapes across the file: each new one compiles the solver.)"""
    c = np.asarray(centers, float)
    x = harmonic_samples(c, n, seed)
    return 0.5 * (x[None, :] - c[:, None]) ** 2, np.broadcast_to(n, c.shape).astype(float)


# --- MBAR ------------------------------------------------------------------------------------

def _u_with(k, n, value):
    u, nk = harmonic_states([0.0, 1.0], n=10)
    u[k, n] = value
    return u, nk


@pytest.mark.parametrize("u_kn, n_k, match", [
    (*_u_with(1, 3, np.nan), r"k=1, sample n=3"),
    (*_u_with(0, 7, -np.inf), r"k=0, sample n=7"),
    (np.zeros(5), np.ones(1), "u_kn must be"),
    (np.zeros((2, 0)), np.zeros(2), "u_kn must be"),
    (np.zeros((2, 10)), np.ones(3), r"N_k must have shape \(2,\)"),
    (np.zeros((2, 10)), np.array([12.0, -2.0]), "N_k must be non-negative"),
    (np.zeros((2, 10)), np.array([4.5, 5.5]), "N_k must be whole numbers"),
    (np.zeros((2, 10)), np.array([np.nan, 10.0]), "N_k must be whole numbers"),
    (np.zeros((2, 10)), np.array([3.0, 3.0]), "sum to N = 10"),
    (np.vstack([np.zeros(10), np.full(10, np.inf)]), np.array([10.0, 0.0]), r"state\(s\) \[1\]"),
    (np.vstack([np.r_[np.inf, np.zeros(9)], np.zeros(10)]), np.array([10.0, 0.0]),
     r"sample\(s\) n=\[0\]"),
])
def test_mbar_refuses_bad_reduced_potentials_and_counts(u_kn, n_k, match):
    with pytest.raises(ValueError, match=match):
        mb.mbar(u_kn, n_k)


@pytest.mark.parametrize("kwargs, match", [
    (dict(f_init=np.zeros(3)), "f_init must have shape"),
    (dict(f_init=np.array([0.0, np.nan])), "f_init must be finite"),
    (dict(max_iter=10.5), "max_iter"),
    (dict(max_iter=0), "max_iter"),
    (dict(tol=-1.0), "tol"),
    (dict(tol=np.nan), "tol"),
])
def test_mbar_refuses_bad_solver_options(kwargs, match):
    u, nk = harmonic_states([0.0, 1.0], n=10)
    with pytest.raises(ValueError, match=match):
        mb.mbar(u, nk, **kwargs)


def test_mbar_allows_unreachable_states_as_plus_inf(x64):
    """+inf: a sample the state cannot reach (zero weight there); the free energy is that of
    the truncated state, exp(-f) = P(x > 0) = 1/2 for a unit Gaussian centred at 0."""
    x = np.random.default_rng(0).normal(size=800)
    u = np.vstack([0.5 * x * x, np.where(x > 0, 0.5 * x * x, np.inf)])
    res = mb.mbar(u, np.array([800.0, 0.0]))
    assert np.isfinite(float(res.f[1])) and np.isfinite(float(res.df[0, 1]))
    assert abs(float(res.f[1]) - np.log(2.0)) < 4 * float(res.df[0, 1]) + 1e-3


def test_mbar_refuses_states_that_never_overlap(x64):
    """The regression: two harmonic states 30 kT-widths apart used to give f = [0, 0] with zero
    uncertainty after zero Newton steps."""
    u, nk = harmonic_states([0.0, 30.0])
    with pytest.raises(mb.OverlapError, match=r"\[0\] \| \[1\]") as err:
        mb.mbar(u, nk)
    assert err.value.groups == [[0], [1]]
    assert isinstance(err.value, ValueError)
    # check=False (the traced code jit and vmap run, where nothing can be raised): honest,
    # infinite uncertainties
    res = mb.mbar(u, nk, check=False)
    assert np.isinf(float(res.df[0, 1])) and float(res.df[0, 0]) == 0.0
    assert float(res.spectral_gap) < 1e-10
    assert mb.overlap_groups(res) == [[0], [1]]
    # an unsampled state spread over both does not determine their difference: still refused
    x = harmonic_samples([0.0, 30.0])
    broad = np.vstack([u, 0.5e-3 * (x - 15.0) ** 2, 0.5e-2 * (x - 15.0) ** 2])
    with pytest.raises(mb.OverlapError):
        mb.mbar(broad, np.r_[nk, 0.0, 0.0])
    # a sampled state in between connects them (a chain of neighbours suffices: the ends
    # alone overlap below the threshold)
    u3, nk3 = harmonic_states([0.0, 4.5, 9.0, 2.0], n=[300, 250, 250, 0])
    res = mb.mbar(u3, nk3)
    assert float(res.overlap[0, 2]) < mb.OVERLAP_THRESHOLD < float(res.overlap[0, 1])
    assert mb.overlap_groups(res) == [[0, 1, 2, 3]] and np.isfinite(float(res.df[0, 2]))


def test_mbar_warns_on_poor_overlap(x64):
    u, nk = harmonic_states([0.0, 8.0])
    with pytest.warns(mb.PoorOverlapWarning, match="spectral gap"):
        res = mb.mbar(u, nk)
    assert float(res.df[0, 1]) > 1.0  # and the uncertainty says so


def test_mbar_good_overlap_matches_pymbar_without_warnings(x64):
    pymbar = pytest.importorskip("pymbar")
    u, nk = harmonic_states([0.0, 0.7, 1.5, 0.5], n=[300, 250, 250, 0])  # 3: unsampled
    with warnings.catch_warnings():
        warnings.simplefilter("error", mb.PoorOverlapWarning)
        res = mb.mbar(u, nk)
    with jax.numpy_rank_promotion("allow"):  # pymbar's JAX solvers broadcast NumPy-style
        ref = pymbar.MBAR(u, nk.astype(int), solver_protocol="robust")
        out = ref.compute_free_energy_differences()
        ov = ref.compute_overlap()
    np.testing.assert_allclose(np.asarray(res.delta_f), out["Delta_f"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.df), out["dDelta_f"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(np.asarray(res.overlap), ov["matrix"], atol=1e-8)
    np.testing.assert_allclose(float(res.spectral_gap), np.real(ov["scalar"]), atol=1e-8)
    np.testing.assert_allclose(np.asarray(res.overlap).sum(1), 1.0, atol=1e-8)
    assert mb.overlap_groups(res) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("u_n, obs, match", [
    (np.zeros(7), None, r"u_n must have shape \(800,\)"),
    (np.r_[np.nan, np.zeros(799)], None, "u_n has a non-finite"),
    (np.zeros(800), np.zeros(5), "observable_n must have shape"),
    (np.zeros(800), np.r_[np.inf, np.zeros(799)], "observable_n contains non-finite"),
])
def test_mbar_reweight_refuses_bad_new_states(x64, u_n, obs, match):
    u, nk = harmonic_states([0.0, 1.0])
    res = mb.mbar(u, nk)
    with pytest.raises(ValueError, match=match):
        mb.reweight(res, u_n, obs)


# --- umbrella estimators: WHAM, MBAR on windows -------------------------------------------------

def _windows(centers, k=300.0, kT=2.5, n=400):
    rng = np.random.default_rng(0)
    return np.stack([rng.normal(c, np.sqrt(kT / k), n) for c in centers])


GRID = bias.Grid.for_cvs([X], lower=-1.5, upper=1.5, bins=60)
CENTERS = np.linspace(-1.0, 1.0, 9)
SAMPLES = _windows(CENTERS)


def _nan_samples():
    s = SAMPLES.copy()
    s[2, 5] = np.nan
    return s


@pytest.mark.parametrize("estimator", [us.wham, us.free_energy_mbar])
@pytest.mark.parametrize("samples, centers, k, kT, match", [
    (_nan_samples(), CENTERS, 300.0, 2.5, r"non-finite CV values \(window 2, sample 5\)"),
    (SAMPLES, CENTERS[:-1], 300.0, 2.5, r"centers must have shape \(9, 1\)"),
    (SAMPLES, np.r_[CENTERS[:-1], np.nan], 300.0, 2.5, "centers must be finite"),
    (SAMPLES, CENTERS, -300.0, 2.5, "force constants k must be finite and positive"),
    (SAMPLES, CENTERS, np.nan, 2.5, "force constants k must be finite and positive"),
    (SAMPLES, CENTERS, np.ones(4), 2.5, "force constants k must be a scalar"),
    (SAMPLES, CENTERS, 300.0, 0.0, "kT must be"),
    (SAMPLES, CENTERS, 300.0, np.inf, "kT must be"),
    (SAMPLES[0], CENTERS, 300.0, 2.5, "samples must be"),
    (SAMPLES[..., None].repeat(2, -1), CENTERS, 300.0, 2.5, "2 CV"),
])
def test_window_estimators_refuse_bad_input(estimator, samples, centers, k, kT, match):
    with pytest.raises(ValueError, match=match):
        estimator(samples, centers, k, kT, GRID)


@pytest.mark.parametrize("estimator", [us.wham, us.free_energy_mbar])
def test_window_estimators_refuse_disconnected_windows(x64, estimator):
    centers = np.array([-1.0, 1.0])
    with pytest.raises(mb.OverlapError, match=r"\[0\] \| \[1\]"):
        estimator(_windows(centers), centers, 300.0, 2.5, GRID)


def test_wham_good_windows_overlap_without_warnings(x64):
    with warnings.catch_warnings():
        warnings.simplefilter("error", mb.PoorOverlapWarning)
        _, f, res = us.wham(SAMPLES, CENTERS, 300.0, 2.5, GRID)
    assert np.isfinite(f[np.abs(GRID.axes()[0]) < 1.0]).all()
    assert float(res.spectral_gap) > 1e-3
    np.testing.assert_allclose(np.asarray(res.overlap).sum(1), 1.0, atol=1e-6)


def test_unbiased_log_weights_needs_one_period_per_cv():
    with pytest.raises(ValueError, match="periods needs one entry per CV"):
        us.unbiased_log_weights(SAMPLES, CENTERS, 300.0, 2.5, (None, None))
    with pytest.raises(ValueError, match="periods needs one entry per CV"):
        us.unbiased_log_weights(SAMPLES, CENTERS, 300.0, 2.5, None)


def test_wham_refuses_bad_solver_options():
    with pytest.raises(ValueError, match="max_iter"):
        us.wham(SAMPLES, CENTERS, 300.0, 2.5, GRID, max_iter=2.5)
    with pytest.raises(TypeError, match="grid"):
        us.wham(SAMPLES, CENTERS, 300.0, 2.5, "grid")


# --- CVs -------------------------------------------------------------------------------------

REF = np.random.default_rng(0).normal(size=(4, 3))


@pytest.mark.parametrize("make, error, match", [
    (lambda: cv.Position(-1), cv.AtomIndexError, "Position atom"),
    (lambda: cv.Position(1.5), TypeError, "Position atom"),
    (lambda: cv.Position(True), TypeError, "Position atom"),
    (lambda: cv.Position(0, 3), ValueError, "axis"),
    (lambda: cv.Position(0, 1.0), ValueError, "axis"),
    (lambda: cv.Distance(0, 0), cv.AtomIndexError, "i and j are the same atom"),
    (lambda: cv.Distance(-1, 2), cv.AtomIndexError, "Distance i"),
    (lambda: cv.Distance(0, 1.0), TypeError, "Distance j"),
    (lambda: cv.Distance(0, "1"), TypeError, "Distance j"),
    (lambda: cv.Angle(0, 1, 1), cv.AtomIndexError, "j and k are the same atom"),
    (lambda: cv.Dihedral(0, 1, 2, 0), cv.AtomIndexError, "i and l are the same atom"),
    (lambda: cv.Dihedral(0, 1, 2, np.float64(3)), TypeError, "Dihedral l"),
    (lambda: cv.Gyration([0, 0, 1]), cv.AtomIndexError, "atom 0 is listed twice"),
    (lambda: cv.Gyration([]), cv.AtomIndexError, "not empty"),
    (lambda: cv.Gyration([0.0, 1.0]), TypeError, "Gyration atoms"),
    (lambda: cv.Gyration([-1, 2]), cv.AtomIndexError, "non-negative"),
    (lambda: cv.Gyration([0, 1], masses=[1.0, np.nan]), ValueError, "masses"),
    (lambda: cv.Gyration([0, 1], masses=[1.0, -1.0]), ValueError, "masses"),
    (lambda: cv.Gyration([0, 5], masses=[1.0, 1.0, 1.0]), ValueError, "masses"),
    (lambda: cv.RMSD(REF, atoms=[0, 1, 1, 2]), cv.AtomIndexError, "RMSD atoms"),
    (lambda: cv.RMSD(np.full((4, 3), np.nan)), ValueError, "reference"),
    (lambda: cv.RMSD(REF, weights=[1.0, 1.0, np.inf, 1.0]), ValueError, "weights"),
    (lambda: cv.Coordination([0], [1], r0=np.nan), ValueError, "r0"),
    (lambda: cv.Coordination([0], [1], r0=0.0), ValueError, "r0"),
    (lambda: cv.Coordination([0], [1], r0=0.3, n=6.0), TypeError, "exponent n"),
    (lambda: cv.Coordination([0], [1], r0=0.3, n=12, m=6), ValueError, "0 < n < m"),
    (lambda: cv.Coordination([0], [0], r0=0.3), cv.AtomIndexError, "no pair"),
    (lambda: cv.Coordination([0, 0], [1], r0=0.3), cv.AtomIndexError, "group_a"),
    (lambda: cv.Function(lambda r, b: r[0, 0], atoms=[-1]), cv.AtomIndexError, "Function"),
    (lambda: cv.Function("not callable"), TypeError, "callable"),
    (lambda: cv.Function(lambda r, b: r[0, 0], period=np.nan), ValueError, "period"),
])
def test_cv_constructors_refuse_bad_indices_and_numbers(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("c, field", [
    (cv.Position(5), "atom"),
    (cv.Distance(0, 7), "j"),
    (cv.Angle(9, 1, 2), "i"),
    (cv.Dihedral(0, 1, 2, 5), "l"),
    (cv.Gyration([0, 1, 6]), "atoms"),
    (cv.RMSD(REF, atoms=[0, 1, 2, 8]), "atoms"),
    (cv.Coordination([0], [1, 2, 5], r0=0.3), "group_b"),
    (cv.Function(lambda r, b: r[6, 0], atoms=[6]), "atoms"),
])
def test_out_of_range_atoms_raise_never_clamp(c, field):
    """JAX clamps r[7] to r[4] for 5 atoms; the CV must refuse instead: in check(n_atoms), when
    called, and under jit (the shape is static)."""
    with pytest.raises(cv.AtomIndexError, match=rf"\({field}\).*system of 5 atoms"):
        c.check(5)
    with pytest.raises(IndexError, match=type(c).__name__):
        cv.check([X, c], 5)
    r = jnp.zeros((5, 3))
    with pytest.raises(cv.AtomIndexError, match="out of range"):
        c(r)
    with pytest.raises(cv.AtomIndexError, match="out of range"):
        jax.jit(lambda x: cv.values([c], x))(r)
    assert c.check(10) is c


def test_cv_checks_positions_shape_and_atom_count_type():
    with pytest.raises(ValueError, match=r"positions must be \(N, 3\)"):
        cv.Distance(0, 1)(jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="n_atoms"):
        cv.Distance(0, 1).check(4.0)
    with pytest.raises(TypeError, match="CV objects"):
        cv.check([X, "phi"], 4)


# --- biases, grids, metadynamics ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=np.nan), ValueError, "height"),
    (dict(height=np.inf), ValueError, "height"),
    (dict(height=0.0), ValueError, "height"),
    (dict(height=-1.0), ValueError, "height"),
    (dict(height="1"), TypeError, "height"),
    (dict(sigma=np.nan), ValueError, "sigma"),
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(sigma=-0.1), ValueError, "sigma"),
    (dict(sigma=[0.1, 0.1, 0.1]), ValueError, "sigma"),
    (dict(bias_factor=np.nan), ValueError, "bias_factor"),
    (dict(bias_factor=0.5), ValueError, "bias_factor"),
    (dict(bias_factor=-np.inf), ValueError, "bias_factor"),
    (dict(pace=2.5), TypeError, "pace"),
    (dict(pace=0), ValueError, "pace"),
    (dict(lower=np.nan), ValueError, "lower and upper"),
    (dict(upper=np.inf), ValueError, "lower and upper"),
    (dict(lower=1.0, upper=-1.0), ValueError, "upper > lower"),
    (dict(bins=50.5), TypeError, "bins"),
    (dict(bins=1), ValueError, "bins"),
    (dict(grid="grid"), TypeError, "grid"),
    (dict(integrator="leapfrog"), ValueError, "integrator"),
])
def test_metadynamics_constructor_refuses_bad_hills_and_grids(kwargs, error, match):
    args = dict(sigma=0.1, height=1.0, bias_factor=10.0, pace=10, lower=-2.0, upper=2.0,
                bins=80)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        md.metadynamics(POT, X, **args)


def test_metadynamics_init_checks_atoms_positions_and_kT():
    sampler = md.metadynamics(POT, cv.Distance(0, 3), sigma=0.1, height=1.0, lower=0.0,
                              upper=3.0)
    settings = sampler.inner.settings(dt=0.01, kT=2.5, gamma=1.0)
    key = jax.random.PRNGKey(0)
    with pytest.raises(cv.AtomIndexError, match=r"atom index 3 \(j\).*system of 2 atoms"):
        sampler.init(key, np.zeros((2, 3)), {}, settings)
    with pytest.raises(ValueError, match="non-finite"):
        sampler.init(key, np.full((4, 3), np.nan), {}, settings)
    with pytest.raises(ValueError, match=r"positions must be \(N, 3\)"):
        sampler.init(key, np.zeros((4, 2)), {}, settings)
    with pytest.raises(ValueError, match="kT"):
        sampler.init(key, np.eye(4, 3), {}, replace(settings, kT=jnp.asarray(np.nan)))
    with pytest.raises(cv.AtomIndexError, match="out of range"):
        sampler.init_walkers(key, np.zeros((3, 2, 3)), {}, settings)


@pytest.mark.parametrize("make, error, match", [
    (lambda: bias.Grid((-1.0,), (np.nan,), (10,), (None,)), ValueError, "finite"),
    (lambda: bias.Grid((-1.0,), (1.0,), (10.0,), (None,)), TypeError, "bins"),
    (lambda: bias.Grid((-1.0,), (1.0,), (10,), (-2.0,)), ValueError, "period"),
    (lambda: bias.Grid.for_cvs([X], lower=[-1.0, 0.0], upper=1.0), ValueError, "one entry"),
    (lambda: bias.Harmonic([X]).init_params(0.0, np.nan), ValueError, "k must be finite"),
    (lambda: bias.Harmonic([X]).init_params(0.0, -1.0), ValueError, "k must be finite"),
    (lambda: bias.Harmonic([X]).init_params(np.inf, 1.0), ValueError, "center must be finite"),
    (lambda: bias.Harmonic([X]).init_params([0.0, 1.0], 1.0), ValueError, "center must be"),
    (lambda: bias.hill_reach(bias.Grid.for_cvs([X], -1.0, 1.0, 10), np.nan), ValueError,
     "sigma"),
])
def test_bias_terms_and_grids_refuse_bad_numbers(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- umbrella windows --------------------------------------------------------------------------

@pytest.mark.parametrize("cvs, centers, k, error, match", [
    (X, [0.0, 1.0], np.nan, ValueError, "force constants k"),
    (X, [0.0, 1.0], np.inf, ValueError, "force constants k"),
    (X, [0.0, 1.0], -1.0, ValueError, "force constants k"),
    (X, [0.0, 1.0], [1.0, 2.0, 3.0], ValueError, "force constants k must be a scalar"),
    (X, [0.0, np.nan], 1.0, ValueError, "centers must be finite"),
    (X, [[0.0, 1.0]], 1.0, ValueError, r"centers must have shape \(W, 1\)"),
    ([X, cv.Position(0, 1)], [0.0, 1.0], 1.0, ValueError, r"centers must have shape \(W, 2\)"),
    ([X, cv.Position(0, 1), cv.Position(0, 2)], np.zeros((2, 2)), 1.0, ValueError,
     r"centers must have shape \(W, 3\)"),
    (X, "middle", 1.0, TypeError, "centers"),
    ("x", [0.0], 1.0, TypeError, "CV objects"),
])
def test_umbrella_constructor_refuses_bad_windows(cvs, centers, k, error, match):
    with pytest.raises(error, match=match):
        us.umbrella(POT, cvs, centers, k)


def test_umbrella_windows_check_atoms_and_new_centres():
    sampler = us.umbrella(POT, cv.Distance(0, 2), [0.5, 1.0], k=100.0)
    settings = sampler.inner.settings(dt=0.01, kT=2.5, gamma=1.0)
    with pytest.raises(cv.AtomIndexError, match=r"atom index 2 \(j\).*system of 2 atoms"):
        sampler.init_windows(jax.random.PRNGKey(0), np.zeros((2, 3)), {}, settings)
    with pytest.raises(ValueError, match="non-finite"):
        sampler.init_windows(jax.random.PRNGKey(0), np.full((3, 3), np.nan), {}, settings)
    with pytest.raises(ValueError, match=r"centers must have shape \(2, 1\)"):
        sampler.window_params(centers=[0.5, 1.0, 1.5])
    with pytest.raises(ValueError, match="force constants k"):
        sampler.window_params(k=np.nan)


# --- reweighting -------------------------------------------------------------------------------

FRAMES = np.random.default_rng(0).normal(size=(6, 3, 3))
OBS = rw.potential_energy(POT)


@pytest.mark.parametrize("samples, match", [
    (rw.Samples(jnp.asarray(FRAMES), None, jnp.zeros(5)), r"log_weight has shape \(5,\)"),
    (rw.Samples(jnp.asarray(FRAMES), jnp.zeros((6, 3)), jnp.zeros(6)), r"box has shape"),
    (rw.Samples(jnp.asarray(FRAMES[0]), None, jnp.zeros(3)), r"positions must be \(F, N, 3\)"),
])
@pytest.mark.parametrize("entry", ["reweighted_average", "frame_values", "ensemble_gradient"])
def test_reweighting_refuses_frames_that_do_not_fit_together(samples, match, entry):
    args = (OBS, POT, {}, samples)
    with pytest.raises(rw.FrameMismatchError, match=match):
        if entry == "frame_values":
            rw.frame_values(*args)
        else:
            getattr(rw, entry)(*args, 2.5)


@pytest.mark.parametrize("potential, match", [
    (PairPotential("lennard_jones", spaces.free(), 1.0, types=np.zeros(4, int),
                   neighbor_list=False), r"potential.types is for 4 atoms"),
    (HarmonicBond(np.array([[0, 5]])), r"potential.indices refers to atom 5"),
])
def test_reweighting_refuses_frames_of_another_system(potential, match):
    samples = rw.Samples.from_frames(FRAMES)
    obs = rw.potential_energy(potential)
    with pytest.raises(rw.FrameMismatchError, match=match):
        rw.reweighted_average(obs, potential, {}, samples, 2.5)
    with pytest.raises(rw.FrameMismatchError, match=match):
        rw.ensemble_gradient(obs, potential, {}, samples, 2.5, n_blocks=1)


def test_reweighting_refuses_a_list_template_for_another_atom_count():
    pot = PairPotential("lennard_jones", spaces.periodic(3.0), 1.0, skin=0.3)
    aux = pot.allocate(jnp.asarray(np.random.default_rng(0).uniform(0, 3, (8, 3))))
    with pytest.raises(rw.FrameMismatchError, match="aux neighbor list 0 is for 8 atoms"):
        rw.frame_values(rw.potential_energy(pot), pot, {}, rw.Samples.from_frames(FRAMES), aux)


@pytest.mark.parametrize("kT, kwargs, error, match", [
    (np.nan, {}, ValueError, "kT"),
    (0.0, {}, ValueError, "kT"),
    (-2.5, {}, ValueError, "kT"),
    (2.5, dict(n_blocks=1.5), TypeError, "n_blocks"),
    (2.5, dict(n_blocks=4), ValueError, "n_blocks"),
    (2.5, dict(min_ess=np.nan), ValueError, "min_ess"),
])
def test_ensemble_gradient_refuses_bad_numbers(kT, kwargs, error, match):
    samples = rw.Samples.from_frames(FRAMES)
    with pytest.raises(error, match=match):
        rw.ensemble_gradient(OBS, POT, {}, samples, kT, **kwargs)


def test_reweighting_refuses_non_finite_frames_and_non_samples():
    bad = FRAMES.copy()
    bad[4, 1, 2] = np.inf
    samples = rw.Samples(jnp.asarray(bad), None, jnp.zeros(6))
    with pytest.raises(ValueError, match=r"non-finite values \(frame 4\)"):
        rw.ensemble_gradient(OBS, POT, {}, samples, 2.5, n_blocks=1)
    with pytest.raises(ValueError, match="non-finite"):
        rw.Samples.from_frames(bad)
    with pytest.raises(TypeError, match="Samples.from_frames"):
        rw.reweighted_average(OBS, POT, {}, FRAMES, 2.5)
    with pytest.raises(ValueError, match="kT"):
        rw.reweighted_average(OBS, POT, {}, rw.Samples.from_frames(FRAMES), np.nan)
