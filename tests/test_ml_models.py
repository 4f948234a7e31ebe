"""Neural potentials (PaiNN, NequIP-class): invariances, forces as -dE/dx, neighbor lists,
periodic boxes, precision, files, bad input and the no-recompile contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import space as spaces
from workbench.ml import Model, UnknownElementError

jax.config.update("jax_enable_x64", True)

# ethanol (nm), a slightly distorted start structure; atomic numbers C O H H H C H H H
ETHANOL = np.array([
    [0.0, 0.0, 0.0], [0.1425, 0.0, 0.0], [0.1745, 0.0905, 0.01], [-0.0363, -0.0513, 0.0888],
    [-0.0363, -0.0513, -0.0888], [-0.0513, 0.1435, 0.0], [-0.1603, 0.1435, 0.0],
    [-0.0150, 0.1948, 0.0888], [-0.0150, 0.1958, -0.0878]])
Z = np.array([6, 8, 1, 1, 1, 6, 1, 1, 1])
SMALL = {"painn": dict(features=16, layers=2, n_rbf=8), "nequip": dict(features=4, layers=2, l_max=2)}


@pytest.fixture(scope="module", params=sorted(SMALL))
def model(request):
    return Model.create(request.param, ("H", "C", "O"), cutoff=0.4, seed=1, **SMALL[request.param])


def _water_box(n_side=2, length=1.0, seed=0):
    """A periodic box of 8 flexible waters on a jittered lattice: positions (24, 3), Z."""
    rng = np.random.default_rng(seed)
    g = (np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.25)
    o = g * length / n_side + rng.normal(scale=0.01, size=g.shape)
    h1 = o + np.array([0.0957, 0.0, 0.0])
    h2 = o + np.array([-0.024, 0.0927, 0.0])
    r = np.stack([o, h1, h2], 1).reshape(-1, 3)
    return r, np.tile([8, 1, 1], len(o))


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_energy_is_invariant_under_translation_rotation_and_permutation(model):
    term = model.potential(Z)
    energy = jax.jit(term.energy)
    r = jnp.asarray(ETHANOL)
    e0 = energy(r, model.params, term.allocate(ETHANOL))
    moved = ETHANOL @ _rotation(3).T + np.array([0.7, -1.3, 2.1])
    assert abs(energy(jnp.asarray(moved), model.params, term.allocate(moved)) - e0) < 1e-10
    perm = np.array([0, 1, 2, 4, 3, 5, 8, 6, 7])  # swap like atoms: H3<->H4, the methyl Hs
    swapped = ETHANOL[perm]
    assert abs(energy(jnp.asarray(swapped), model.params, term.allocate(swapped)) - e0) < 1e-10
    # reflections too (parity: the energy is an O(3) invariant)
    mirrored = ETHANOL * np.array([1.0, 1.0, -1.0])
    assert abs(energy(jnp.asarray(mirrored), model.params, term.allocate(mirrored)) - e0) < 1e-10


def test_forces_are_minus_the_gradient_by_central_differences(model):
    term = model.potential(Z)
    aux = term.allocate(ETHANOL)
    ev = jax.jit(term.energy_forces)(jnp.asarray(ETHANOL), model.params, aux)
    energy = jax.jit(term.energy)
    h = 1e-5
    fd = np.zeros_like(ETHANOL)
    for i in range(len(Z)):
        for k in range(3):
            d = np.zeros_like(ETHANOL)
            d[i, k] = h
            fd[i, k] = -(energy(jnp.asarray(ETHANOL + d), model.params, aux)
                         - energy(jnp.asarray(ETHANOL - d), model.params, aux)) / (2 * h)
    f = np.asarray(ev.forces)
    assert np.linalg.norm(f - fd) < 1e-6 * np.linalg.norm(f)
    assert np.allclose(f.sum(axis=0), 0.0, atol=1e-9)  # no net force (translation invariance)


def test_periodic_box_with_neighbor_list_equals_all_pairs_and_images(model):
    r, z = _water_box()
    space = spaces.periodic(1.0)
    term = model.potential(z, space)
    aux = term.allocate(r)
    assert aux is not None
    evaluate = jax.jit(term.energy_forces)
    with_list = evaluate(jnp.asarray(r), model.params, aux)
    all_pairs = evaluate(jnp.asarray(r), model.params, None)
    e_all = float(all_pairs.energy)
    assert abs(with_list.energy - e_all) < 1e-10 * max(1.0, abs(e_all))
    assert np.allclose(with_list.forces, all_pairs.forces, atol=1e-9)
    # shifting atoms by box vectors changes nothing
    shifted = r + np.random.default_rng(1).integers(-2, 3, size=r.shape) * 1.0
    moved = evaluate(jnp.asarray(shifted), model.params, None)
    assert abs(moved.energy - e_all) < 1e-10 * max(1.0, abs(e_all))


def test_a_molecule_in_a_large_box_equals_free_space(model):
    free = model.potential(Z)
    boxed = model.potential(Z, spaces.periodic(3.0))
    r = ETHANOL + 1.5
    e_free = jax.jit(free.energy)(jnp.asarray(r), model.params, None)
    e_box = jax.jit(boxed.energy)(jnp.asarray(r), model.params, boxed.allocate(r))
    assert abs(e_free - e_box) < 1e-10


def test_float32_model_agrees_with_float64(model):
    term = model.potential(Z)
    e64 = jax.jit(term.energy)(jnp.asarray(ETHANOL), model.params, None)
    m32 = model.astype(jnp.float32)
    t32 = m32.potential(Z)
    e32 = jax.jit(t32.energy)(jnp.asarray(ETHANOL, jnp.float32), m32.params, None)
    assert e32.dtype == jnp.float32
    assert abs(float(e32) - float(e64)) < 1e-4 * max(1.0, abs(float(e64)))


def test_save_and_load_round_trip(model, tmp_path):
    params = jax.tree_util.tree_map(lambda a: a * 1.01, model.params)
    params["shift"] = params["shift"] + jnp.array([-1.0, -2.0, -3.0])
    trained = model.replace(params=params)
    path = str(tmp_path / "model.npz")
    trained.save(path)
    loaded = Model.load(path)
    assert loaded.architecture == model.architecture
    assert loaded.hyperparameters == model.hyperparameters and loaded.elements == model.elements
    energy = jax.jit(trained.potential(Z).energy)  # same structure: one program for both
    e1 = energy(jnp.asarray(ETHANOL), trained.params, None)
    e2 = jax.jit(loaded.potential(Z).energy)(jnp.asarray(ETHANOL), loaded.params, None)
    assert float(e1) == float(e2)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a workbench model file"):
        Model.load(str(tmp_path / "other.npz"))


def test_no_recompile_for_new_weights_and_vmap_grad_compose(model):
    term = model.potential(Z)
    traces = []

    def loss(params, r):
        traces.append(1)
        return term.energy(r, params, None)

    # the parameter gradient of a batch of configurations (vmap inside grad inside jit)
    f = jax.jit(jax.grad(lambda p, rs: jnp.sum(jax.vmap(lambda r: loss(p, r))(rs))))
    batch = jnp.stack([jnp.asarray(ETHANOL), jnp.asarray(ETHANOL) * 1.01])
    g1 = f(model.params, batch)
    other = jax.tree_util.tree_map(lambda a: a + 0.01, model.params)
    g2 = f(other, batch)
    assert len(traces) == 1
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves((g1, g2)))


def test_bad_input_is_named():
    m = Model.create("painn", ("H", "O"), cutoff=0.4, **SMALL["painn"])
    with pytest.raises(UnknownElementError, match=r"include \[6\]"):
        m.potential(Z)
    with pytest.raises(ValueError, match="unknown architecture"):
        Model.create("schnet2", ("H",), cutoff=0.4)
    with pytest.raises(ValueError, match="half the box"):
        m.potential([8, 1, 1], spaces.periodic(0.6))
    # a neighbor list shorter than the model's cutoff
    from workbench import neighbors as nl

    z = [8, 1, 1]
    r = ETHANOL[:3]
    term = m.potential(z, spaces.periodic(2.0))
    short = nl.allocate(spaces.periodic(2.0), r, 0.2, 0.0)
    with pytest.raises(ValueError, match="shorter than the model's"):
        term.energy(jnp.asarray(r), m.params, short)
    with pytest.raises(ValueError, match="distinct indices"):
        m.potential(z, atoms=[0, 0])
