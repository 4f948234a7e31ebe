"""NequIP-class E(3)-equivariant interatomic potential (Batzner et al., Nat. Commun. 13, 2453
(2022)), with features up to angular order ``l_max``, written on e3nn-jax's irreps algebra.

Node features are irreps arrays ``F x 0e + F x 1o + F x 2e + ...`` (parity (-1)^l, the
irreps that products of spherical harmonics of bond vectors reach). One interaction block:

1. a linear map of the node features (per irrep, mixing channels);
2. messages: the tensor product of each neighbor's features with the spherical harmonics
   Y(r_ij / |r_ij|) up to ``l_max``, each output irrep weighted by an MLP of the radial Bessel
   basis times the polynomial envelope (NequIP eq. 3, the "uvu" convolution);
3. the sum over neighbors divided by sqrt(``avg_neighbors``) (a fixed normalisation);
4. a linear map to the next features plus an element-dependent self-connection (an indexed
   linear map: one weight set per element, NequIP's self-interaction), then a gated
   nonlinearity (SiLU on scalars, sigmoid gates on l > 0).

The per-atom energy is a linear readout of the scalars through a small MLP. Equivariance holds
by construction; the energy is invariant (tested to 1e-10 in float64). Lengths in nm.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp

from .graph import Graph, radial_features
from .layers import Mlp, e3nn_linear, normal

Array = jax.Array

__all__ = ["NequIP"]


def _hidden(features: int, l_max: int) -> e3nn.Irreps:
    return e3nn.Irreps("+".join(f"{features}x{l}{'e' if l % 2 == 0 else 'o'}"
                                for l in range(l_max + 1)))


def _irreps_of(fn, *irreps) -> e3nn.Irreps:
    """The irreps ``fn`` returns for inputs of ``irreps``, by shape evaluation (no arrays
    computed, nothing compiled)."""
    args = [e3nn.IrrepsArray(i, jnp.zeros(e3nn.Irreps(i).dim)) for i in irreps]
    return jax.eval_shape(fn, *args).irreps


def _gather(x: e3nn.IrrepsArray, neighbors: Array) -> e3nn.IrrepsArray:
    pad = jnp.concatenate([x.array, jnp.zeros((1, x.irreps.dim), x.array.dtype)])
    return e3nn.IrrepsArray(x.irreps, pad[neighbors])


class _Interaction(eqx.Module):
    pre: e3nn.equinox.Linear
    radial: Mlp
    post: e3nn.equinox.Linear
    self_connection: e3nn.equinox.Linear
    sh_irreps: e3nn.Irreps = eqx.field(static=True)
    message_irreps: e3nn.Irreps = eqx.field(static=True)
    target: e3nn.Irreps = eqx.field(static=True)
    avg_neighbors: float = eqx.field(static=True)

    def __init__(self, irreps_in, features, l_max, n_rbf, n_elements, avg_neighbors, rng,
                 dtype):
        irreps_in = e3nn.Irreps(irreps_in)
        hidden = _hidden(features, l_max)
        self.sh_irreps = e3nn.Irreps.spherical_harmonics(l_max)
        self.pre = e3nn_linear(rng, dtype, irreps_out=irreps_in, irreps_in=irreps_in)
        self.message_irreps = _irreps_of(lambda a, b: e3nn.tensor_product(
            a, b, filter_ir_out=hidden), irreps_in, self.sh_irreps).regroup()
        self.radial = Mlp((n_rbf, 64, self.message_irreps.num_irreps), rng=rng, dtype=dtype)
        n_gates = hidden.filter(drop="0e").num_irreps
        self.target = (e3nn.Irreps(f"{features}x0e") + e3nn.Irreps(f"{n_gates}x0e")
                       + hidden.filter(drop="0e")).simplify()
        self.post = e3nn_linear(rng, dtype, irreps_out=self.target,
                                irreps_in=self.message_irreps, force_irreps_out=True)
        self.self_connection = e3nn_linear(
            rng, dtype, irreps_out=self.target, irreps_in=irreps_in, linear_type="indexed",
            num_indexed_weights=n_elements, force_irreps_out=True)
        self.avg_neighbors = float(avg_neighbors)

    def __call__(self, h, species, g: Graph, rbf, env):
        x = self.pre(h)
        sh = e3nn.spherical_harmonics(self.sh_irreps, g.vectors, normalize=True,
                                      normalization="component")
        msg = e3nn.tensor_product(_gather(x, g.neighbors), sh,
                                  filter_ir_out=self.message_irreps).regroup()
        msg = msg * (self.radial(rbf) * env[..., None])
        agg = e3nn.sum(msg, axis=1) / jnp.sqrt(self.avg_neighbors)
        out = self.post(agg) + self.self_connection(species, h)
        return e3nn.gate(out, even_act=jax.nn.silu, even_gate_act=jax.nn.sigmoid)


class NequIP(eqx.Module):
    """NequIP-class energy network: ``model(species, graph) -> (N,)`` per-atom outputs.

    Hyperparameters: features (channels per irrep), l_max, layers, n_rbf, cutoff (nm),
    avg_neighbors (message normalisation)."""

    embedding: Array
    interactions: tuple
    readout: Mlp
    cutoff: float = eqx.field(static=True)
    n_rbf: int = eqx.field(static=True)
    features: int = eqx.field(static=True)

    def __init__(self, n_elements: int, *, cutoff: float, features: int = 16, l_max: int = 2,
                 layers: int = 3, n_rbf: int = 8, avg_neighbors: float = 8.0, rng,
                 dtype=jnp.float64):
        self.embedding = normal(rng, (n_elements, features), dtype)
        irreps = e3nn.Irreps(f"{features}x0e")
        blocks = []
        for _ in range(layers):
            block = _Interaction(irreps, features, l_max, n_rbf, n_elements, avg_neighbors, rng,
                                 dtype)
            blocks.append(block)
            irreps = _irreps_of(e3nn.gate, block.target)
        self.interactions = tuple(blocks)
        self.readout = Mlp((features, features, 1), rng=rng, dtype=dtype)
        self.cutoff, self.n_rbf, self.features = float(cutoff), int(n_rbf), int(features)

    def __call__(self, species: Array, g: Graph) -> Array:
        h = e3nn.IrrepsArray(f"{self.features}x0e", self.embedding[species])
        rbf, env = radial_features(g, self.cutoff, self.n_rbf)
        for block in self.interactions:
            h = block(h, species, g, rbf, env)
        scalars = h.filter(keep="0e").array
        return self.readout(scalars)[:, 0]
