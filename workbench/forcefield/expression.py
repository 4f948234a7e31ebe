"""OpenMM custom-force expressions (Lepton syntax) translated into pure JAX functions.

OpenMM's Custom*Force classes describe energies as strings such as
``"4*eps*((sig/r)^12-(sig/r)^6); sig=0.5*(sigma1+sigma2); eps=sqrt(epsilon1*epsilon2)"``.
This module is the one translator from that syntax to JAX, in three steps:

1. :func:`parse` reads the text into a small immutable tree (:class:`Number`, :class:`Name`,
   :class:`Call`) with exactly Lepton's grammar: ``+ - * /``, right-associative ``^`` binding
   tighter than unary minus (``-x^2`` is ``-(x^2)``), which binds tighter than ``* /``, which bind
   tighter than ``+ -``; function calls; and ``;``-separated definitions ``name = expr`` that are
   substituted into the pieces to their left (Lepton reads them right to left, so a definition
   may use only names defined *after* it).
2. :func:`simplify` applies the rewrites of Lepton's ``ParsedExpression::optimize`` that change
   results, not just rounding (``0*x -> 0``, ``x/x -> 1``, ``x^0 -> 1``, ``sqrt(x^2) -> abs(x)``,
   integer powers by repeated multiplication, ...).
3. :func:`compile_expression` checks names, functions and argument counts (errors at compile
   time) and returns ``f(**values)``, elementwise with broadcasting, pure ``jnp``, so it composes
   with ``jit``, ``grad`` and ``vmap``. Gradients follow Lepton's derivative rules where they
   differ from JAX's defaults (``abs'(0) = 1``; ``min``/``max`` pick one side at a tie). Inside
   an unselected branch of ``select`` the arguments of singular operations (sqrt, log, division,
   negative or fractional powers, ...) are replaced by safe values, so a branch that is not taken
   never puts NaN into a gradient, as in Lepton, whose derivative of ``select`` is a ``select``.

:func:`tabulated_function` (OpenMM's ``Continuous{1,2,3}DFunction`` and
``Discrete{1,2,3}DFunction`` as JAX callables) lives in :mod:`.tabulated` and is re-exported here.

Units are whatever the expression uses (OpenMM: nm, kJ/mol, radians, elementary charge).
The expression text and the function set are structural (changing them compiles a new
function); every value passed at call time is numeric (traced, never recompiles).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.scipy.special import erf, erfc

from .expression_tree import (  # noqa: F401 - the public surface of the translator
    Call,
    Expr,
    ExpressionError,
    Name,
    Number,
    _NAME,
    _OPERATORS,
    _as_tree,
    _format,
    _walk,
    free_names,
    function_names,
    parse,
    simplify,
    substitute,
)
from .tabulated import TabulatedFunction, _as_float, tabulated_function

Array = jax.Array

__all__ = [
    "BUILTIN_FUNCTIONS",
    "Call",
    "Expr",
    "ExpressionError",
    "Name",
    "Number",
    "TabulatedFunction",
    "compile_expression",
    "free_names",
    "function_names",
    "parse",
    "simplify",
    "substitute",
    "tabulated_function",
]


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Function:
    """An operation: arity (None: unchecked), implementation, and, per argument, the value
    substituted inside an unselected ``select`` branch (None: used as is)."""

    arity: int | None
    impl: Callable[..., Array]
    safe: tuple[float | None, ...] = ()


def _min(a, b):  # Lepton: d min = select(step(a - b), db, da)
    return jnp.where(a >= b, b, a)


def _max(a, b):  # Lepton: d max = select(step(a - b), da, db)
    return jnp.where(a >= b, a, b)


def _where(condition, x, one, zero):
    return jnp.where(condition, jnp.full_like(x, one), jnp.full_like(x, zero))


def _minus(a, b=None):
    return -a if b is None else a - b


_OPERATIONS = {"+": jnp.add, "-": _minus, "*": jnp.multiply, "/": jnp.divide, "^": jnp.power}

BUILTIN_FUNCTIONS: dict[str, _Function] = {
    "+": _Function(2, jnp.add),
    "-": _Function(None, _minus),  # binary minus, or unary minus with one argument
    "*": _Function(2, jnp.multiply),
    "/": _Function(2, jnp.divide, (None, 1.0)),
    "^": _Function(2, jnp.power, (1.0, None)),
    "sqrt": _Function(1, jnp.sqrt, (1.0,)),
    "exp": _Function(1, jnp.exp, (0.0,)),
    "log": _Function(1, jnp.log, (1.0,)),
    "sin": _Function(1, jnp.sin),
    "cos": _Function(1, jnp.cos),
    "sec": _Function(1, lambda x: 1.0 / jnp.cos(x), (0.0,)),
    "csc": _Function(1, lambda x: 1.0 / jnp.sin(x), (1.0,)),
    "tan": _Function(1, jnp.tan, (0.0,)),
    "cot": _Function(1, lambda x: 1.0 / jnp.tan(x), (1.0,)),
    "asin": _Function(1, jnp.arcsin, (0.0,)),
    "acos": _Function(1, jnp.arccos, (0.0,)),
    "atan": _Function(1, jnp.arctan),
    "atan2": _Function(2, jnp.arctan2, (1.0, 1.0)),
    "sinh": _Function(1, jnp.sinh, (0.0,)),
    "cosh": _Function(1, jnp.cosh, (0.0,)),
    "tanh": _Function(1, jnp.tanh),
    "erf": _Function(1, erf),
    "erfc": _Function(1, erfc),
    "step": _Function(1, lambda x: _where(x >= 0, x, 1.0, 0.0)),
    "delta": _Function(1, lambda x: _where(x == 0, x, 1.0, 0.0)),
    "square": _Function(1, lambda x: x * x),
    "cube": _Function(1, lambda x: x * x * x),
    "recip": _Function(1, lambda x: 1.0 / x, (1.0,)),
    "min": _Function(2, _min),
    "max": _Function(2, _max),
    "abs": _Function(1, lambda x: jnp.where(x >= 0, x, -x)),  # Lepton: abs'(0) = +1
    "floor": _Function(1, jnp.floor),
    "ceil": _Function(1, jnp.ceil),
    "select": _Function(3, lambda c, a, b: jnp.where(c != 0, a, b)),
}
"""Lepton's operators and built-in functions: name -> arity, implementation, safe arguments."""
_POWER = BUILTIN_FUNCTIONS["^"]


def _arity(fn: Callable) -> int | None:
    """Argument count of a custom function: its ``num_args`` or its positional parameters."""
    if isinstance(getattr(fn, "num_args", None), int):
        return fn.num_args
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class _Evaluator:
    """Evaluates a simplified tree once per (node, branch mask): shared subtrees are reused."""

    def __init__(self, table: Mapping[str, _Function], values: Mapping[str, Array]):
        self.table, self.values = table, values
        self.memo: dict[tuple[int, int], Array] = {}
        self.masks: list[Array] = []  # keeps masks alive so their ids stay unique

    def __call__(self, node: Expr, mask: Array | None = None) -> Array:
        key = (id(node), id(mask))
        if key not in self.memo:
            self.memo[key] = self.evaluate(node, mask)
        return self.memo[key]

    def evaluate(self, node: Expr, mask: Array | None) -> Array:
        if isinstance(node, Number):
            return node.value  # a weakly typed Python float keeps the inputs' precision
        if isinstance(node, Name):
            return self.values[node.name]
        fn = self.table[node.function]
        if node.function == "select" and fn is BUILTIN_FUNCTIONS["select"]:
            condition = jnp.asarray(self(node.args[0], mask)) != 0
            masks = [condition, ~condition]
            if mask is not None:
                masks = [mask & m for m in masks]
            self.masks.extend(masks)
            taken, other = (self(arg, m) for arg, m in zip(node.args[1:], masks))
            return jnp.where(condition, taken, other)
        args = [self(arg, mask) for arg in node.args]
        exponent = node.args[-1]
        if node.function == "^" and isinstance(exponent, Number) and fn is _POWER:
            k = exponent.value
            if abs(k) < 2**31 and k == int(k):  # Lepton: integer powers by multiplication
                impl = lambda x, _: jax.lax.integer_pow(x, int(k))
                return self.guarded(impl, args, (1.0 if k < 0 else None, None), mask)
        return self.guarded(fn.impl, args, fn.safe, mask)

    @staticmethod
    def guarded(impl, args, safe, mask) -> Array:
        if mask is not None and safe:  # inside an unselected branch: keep singular ops finite
            args = [a if s is None else jnp.where(mask, a, s) for a, s in zip(args, safe)]
        return impl(*args)


def _function_table(functions: Mapping[str, Callable] | None) -> dict[str, _Function]:
    table = dict(BUILTIN_FUNCTIONS)
    for name, fn in (functions or {}).items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"function name {name!r} must be letters, digits and underscores")
        if not callable(fn):
            raise TypeError(f"function {name!r} must be callable, got {type(fn).__name__}")
        table[name] = _Function(_arity(fn), fn)  # custom functions shadow built-ins, as in Lepton
    return table


def _check(tree: Expr, variables: Sequence[str], table: Mapping[str, _Function], source: str):
    known_functions = ", ".join(sorted(n for n in table if n not in _OPERATORS))
    for node in _walk(tree):
        if isinstance(node, Name) and node.name not in variables:
            raise ExpressionError(
                f"unknown variable {node.name!r}; known variables: "
                f"{', '.join(variables) or '(none)'} (pass it in `variables`, or define it with "
                "'; name = ...')",
                source,
            )
        if isinstance(node, Call):
            fn = table.get(node.function)
            if fn is None:
                raise ExpressionError(
                    f"unknown function {node.function!r}; known functions: {known_functions} "
                    "(pass other functions, e.g. tabulated ones, in `functions`)",
                    source,
                )
            if fn.arity is not None and fn.arity != len(node.args):
                raise ExpressionError(
                    f"function {node.function!r} takes {fn.arity} argument(s) but is called with "
                    f"{len(node.args)}",
                    source,
                )


def compile_expression(
    expression: str | Expr,
    variables: Sequence[str],
    functions: Mapping[str, Callable[..., Array]] | None = None,
) -> Callable[..., Array]:
    """Compile an OpenMM/Lepton expression into an elementwise JAX function.

    Args:
      expression: the energy expression text (or a tree from :func:`parse`/:func:`substitute`).
      variables: the names callers will pass (coordinates such as ``r``, ``theta``, ``x``;
        per-term, per-particle and global parameters). Structural.
      functions: extra functions by name (e.g. from :func:`tabulated_function`), elementwise
        jnp callables; they shadow built-ins of the same name, as in Lepton. Structural.

    Returns:
      ``expression_fn(**values) -> Array``: values broadcast against each other; the result has
      their broadcast shape and is pure jnp (jit/grad/vmap safe; new values never retrace).
      Every used variable must be passed; a declared but unused one may be; others raise.
      The evaluation is wrapped in ``jax.jit`` (one compile per input shapes and dtypes, inlined
      under an outer jit). Attributes: ``.expression`` (text), ``.variables`` (names used).

    Raises:
      ExpressionError: syntax errors, unknown variables or functions, wrong argument counts.
    """
    source = expression if isinstance(expression, str) else str(expression)
    variables = tuple(variables)
    table = _function_table(functions)
    tree = _as_tree(expression)
    _check(tree, variables, table, source)
    tree = simplify(tree, keep=tuple(functions or ()))
    used = tuple(v for v in variables if v in free_names(tree))

    @jax.jit
    def evaluate(arrays: dict[str, Array]) -> Array:
        # an expression broadcasts its variables as NumPy does (a global against per-pair
        # values, like Lepton): explicit here, whatever the caller's rank-promotion setting
        with jax.numpy_rank_promotion("allow"):
            result = _Evaluator(table, arrays)(tree)
        shape = jnp.broadcast_shapes(*(a.shape for a in arrays.values()), jnp.shape(result))
        return jnp.broadcast_to(jnp.asarray(result), shape)

    def expression_fn(**values) -> Array:
        unknown = sorted(set(values) - set(variables))
        missing = [v for v in used if v not in values]
        if unknown or missing:
            problem = f"unexpected {unknown}" if unknown else f"missing {missing}"
            raise ExpressionError(
                f"{problem}: pass exactly the variables {list(used)} (optional: "
                f"{[v for v in variables if v not in used]})",
                source,
            )
        return evaluate({k: _as_float(v) for k, v in values.items()})

    expression_fn.expression = source
    expression_fn.variables = used
    expression_fn.__doc__ = f"Evaluate {source!r} elementwise; keyword arguments {list(used)}."
    return expression_fn
