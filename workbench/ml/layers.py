"""Small building blocks of the neural potentials, as Equinox modules.

Why Equinox (and not Flax): a module *is* a pytree, so the trainable arrays split from the
structure with ``eqx.partition`` and go back with ``eqx.combine``. That matches the energy-term
contract exactly (numeric ``params`` pytree traced, structure static: a new weight value never
recompiles), and it is a light, pure-Python dependency with no hidden state or RNG plumbing at
call time. The irreps algebra of the equivariant model comes from e3nn-jax, which ships
Equinox versions of its layers.

:class:`Dense` works on any leading shape (``x @ W + b``), which Equinox's own ``nn.Linear``
(one vector per call, needing ``vmap``) does not.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["Dense", "Mlp", "normal", "e3nn_linear"]


def normal(rng, shape, dtype, std: float = 1.0) -> Array:
    """Initial weights drawn on the host (NumPy): drawing them with ``jax.random`` outside a
    trace compiles one program per shape (about 0.3 s each: a small NequIP needed 21 of them,
    8 s before its first energy)."""
    return jnp.asarray(rng.normal(scale=std, size=shape), dtype)


def e3nn_linear(rng, dtype, **kwargs):
    """``e3nn.equinox.Linear(**kwargs)`` with its weights drawn on the host: the layer's
    structure comes from a shape evaluation (nothing computed), then each path's weights are
    drawn with the standard deviation e3nn-jax gives that path."""
    import e3nn_jax as e3nn

    skeleton = eqx.filter_eval_shape(
        lambda key: e3nn.equinox.Linear(key=key, input_dtype=dtype, **kwargs),
        jax.random.PRNGKey(0))
    instructions = skeleton._linear.instructions
    names = list(skeleton._weights)
    if len(names) != len(instructions):  # e3nn-jax changed how it names weights
        raise RuntimeError("unexpected e3nn-jax Linear layout; pin e3nn-jax==0.21.0")
    weights = {n: normal(rng, skeleton._weights[n].shape, dtype, ins.weight_std)
               for n, ins in zip(names, instructions)}
    return eqx.tree_at(lambda layer: layer._weights, skeleton, weights)


class Dense(eqx.Module):
    """Affine map of the last axis: (..., n_in) -> (..., n_out). LeCun-normal weights (unit
    variance out for unit variance in), zero bias."""

    weight: Array
    bias: Array | None

    def __init__(self, n_in: int, n_out: int, *, rng, bias: bool = True, dtype=jnp.float64):
        self.weight = normal(rng, (n_in, n_out), dtype, 1.0 / n_in**0.5)
        self.bias = jnp.zeros(n_out, dtype) if bias else None

    def __call__(self, x: Array) -> Array:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias.reshape((1,) * (y.ndim - 1) + (-1,))


class Mlp(eqx.Module):
    """Dense layers with SiLU between them (none after the last): sizes (n_in, h1, ..., n_out)."""

    layers: tuple

    def __init__(self, sizes, *, rng, dtype=jnp.float64, bias_last: bool = True):
        n = len(sizes) - 1
        self.layers = tuple(Dense(a, b, rng=rng, dtype=dtype, bias=(i < n - 1 or bias_last))
                            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))

    def __call__(self, x: Array) -> Array:
        for layer in self.layers[:-1]:
            x = jax.nn.silu(layer(x))
        return self.layers[-1](x)
