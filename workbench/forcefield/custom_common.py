"""What every OpenMM custom force shares: its expression, compiled with the calls that need more
than an elementwise function *lifted* out, and its parameters read into tunable arrays.

:class:`CustomExpression` compiles an energy expression with
:func:`~workbench.forcefield.expression.compile_expression`, except for two kinds of calls,
which it takes out of the tree ("lifts"), evaluates itself and feeds back in as variables:

* calls of *discrete* tabulated functions (``Discrete{1,2,3}DFunction``, e.g. charmm36's NBFIX
  tables ``acoef(type1, type2)``): the table becomes a parameter array, so its values are tunable
  (numeric) rather than frozen into the function; continuous tables stay fixed splines
  (:func:`~workbench.forcefield.tabulated.tabulated_function`, structural);
* geometric functions whose result depends on the box, such as ``pointdistance(x1, y1, z1, x2,
  y2, z2)`` and ``periodicdistance(...)``: implemented by the energy term at call time, with the
  call-time box.

Lifted calls are evaluated innermost first; their arguments may be any expressions of the
variables (and of calls lifted before them). Identical calls are evaluated once.

:func:`unsupported` builds the :class:`~workbench.forcefield.openmm.UnsupportedForceError`
every converter raises for an expression or feature it cannot translate, naming the force and the
expression. The helpers at the end read an OpenMM force's global parameters and tabulated
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from .expression import Call, Expr, ExpressionError, Name, Number, compile_expression, parse
from .tabulated import discrete_lookup, tabulated_function

Array = jax.Array

__all__ = [
    "CustomExpression",
    "ParameterLayout",
    "check_names",
    "force_label",
    "global_parameters",
    "tabulated_functions",
    "unsupported",
]


def unsupported(force: str, message: str, expression: str | None = None):
    """An :class:`~workbench.forcefield.openmm.UnsupportedForceError` naming ``force`` (e.g.
    ``"CustomNonbondedForce 'LennardJones'"``), what is wrong and the expression."""
    from .openmm import UnsupportedForceError  # lazy: openmm.py imports the converters

    text = f"{force}: {message}"
    if expression is not None:
        text += f" (expression: {expression!r})"
    return UnsupportedForceError(text)


def force_label(force) -> str:
    """``"<class> '<name>'"``, how errors name a force."""
    return f"{type(force).__name__} {force.getName()!r}"


@dataclass(frozen=True)
class _Lifted:
    """A lifted call: its variable name, function, and compiled arguments (a callable of the
    environment, or a name or a number used as is)."""

    name: str
    function: str
    args: tuple


class CustomExpression:
    """An OpenMM energy expression compiled to JAX, with tunable discrete tables.

    expression: the Lepton text (or a tree). variables: the names callers pass (coordinates,
    per-instance and global parameters). tables: the force's tabulated functions by name
    (OpenMM objects): discrete ones become tunable arrays (:attr:`tables`), continuous ones
    fixed splines. geometric: name -> number of arguments of functions the caller implements
    at call time (:meth:`__call__`'s ``geometric``); a tabulated function of the same name
    shadows it, as in OpenMM. rewrite: applied to the parsed tree first (e.g. CustomCompound-
    BondForce's ``distance(p1, p2)`` -> ``pointdistance(x1, ..., z2)``). owner: how errors name
    the force. Everything here is structural.

    Raises UnsupportedForceError for syntax errors, unknown variables or functions and wrong
    argument counts, naming the force and the expression.
    """

    def __init__(self, expression: str | Expr, variables: Sequence[str], *,
                 tables: Mapping[str, object] | None = None,
                 geometric: Mapping[str, int] | None = None,
                 rewrite: Callable[[Expr], Expr] | None = None, owner: str = "custom force"):
        import openmm

        self.source = expression if isinstance(expression, str) else str(expression)
        self.owner = owner
        tables = dict(tables or {})
        discrete = (openmm.Discrete1DFunction, openmm.Discrete2DFunction,
                    openmm.Discrete3DFunction)
        self.tables: dict[str, np.ndarray] = {}
        fixed: dict[str, Callable] = {}
        for name, fn in tables.items():
            try:
                converted = tabulated_function(fn)
            except (TypeError, ValueError) as e:
                raise unsupported(owner, f"tabulated function {name!r}: {e}", self.source) from e
            if isinstance(fn, discrete):
                self.tables[name] = np.asarray(converted.table, dtype=float)
            else:
                fixed[name] = converted
        self.geometric = {k: v for k, v in (geometric or {}).items() if k not in tables}
        arity = {**{k: t.ndim for k, t in self.tables.items()}, **self.geometric}
        try:
            tree = parse(expression) if isinstance(expression, str) else expression
            if rewrite is not None:
                tree = rewrite(tree)
            root, lifted = _lift(tree, arity, self._error)
            known = list(variables)
            self.lifted: list[_Lifted] = []
            for name, fn, args in lifted:
                compiled = tuple(a if isinstance(a, (Name, Number)) else
                                 compile_expression(a, known, fixed) for a in args)
                for a in args:
                    if isinstance(a, Name) and a.name not in known:
                        raise self._error(f"unknown variable {a.name!r} in a call of {fn!r}; "
                                          f"known variables: {', '.join(variables)}")
                self.lifted.append(_Lifted(name, fn, compiled))
                known.append(name)
            self._root = compile_expression(root, known, fixed)
        except ExpressionError as e:
            raise self._error(_reason(e)) from e
        lifted_names = {item.name for item in self.lifted}
        used = set(self._root.variables)
        for item in self.lifted:
            for a in item.args:
                if isinstance(a, Name):
                    used.add(a.name)
                elif callable(a):
                    used.update(a.variables)
        self.variables = tuple(v for v in variables if v in used and v not in lifted_names)
        """The caller's variables the expression uses (others need not be passed)."""

    def _error(self, message: str):
        return unsupported(self.owner, message, self.source)

    def __call__(self, values: Mapping[str, Array], tables: Mapping[str, Array] | None = None,
                 geometric: Mapping[str, Callable[..., Array]] | None = None) -> Array:
        """Evaluate elementwise. values: arrays (broadcast together) by variable name; tables:
        the current discrete tables by function name (default: the force's); geometric: the
        implementations of the geometric functions this expression calls."""
        env = dict(values)
        for item in self.lifted:
            args = [a(**{k: env[k] for k in a.variables}) if callable(a) else
                    (env[a.name] if isinstance(a, Name) else a.value) for a in item.args]
            if item.function in self.tables:
                table = self.tables[item.function] if tables is None or \
                    item.function not in tables else tables[item.function]
                env[item.name] = discrete_lookup(table, args)
            else:
                if geometric is None or item.function not in geometric:
                    raise ValueError(f"{self.owner}: no implementation given for "
                                     f"{item.function}()")
                env[item.name] = geometric[item.function](*args)
        return self._root(**{k: env[k] for k in self._root.variables})


def _reason(error: ExpressionError) -> str:
    """An ExpressionError's message without its 'in expression ...' prefix and its hint for
    ``compile_expression`` callers (a force's user cannot pass functions)."""
    text = str(error)
    prefix = f"in expression {error.expression!r}: "
    text = text.removeprefix(prefix)
    cut = text.find(" (pass other functions")
    if cut >= 0:
        text = text[:cut] + "; add a tabulated function of that name to the force, or rewrite " \
            "the expression with the functions listed"
    return text


def _lift(tree: Expr, arity: Mapping[str, int], error) -> tuple[Expr, list]:
    """Replace every call of a function in ``arity`` by a fresh name, innermost first.
    Returns (new tree, [(name, function, argument trees)]); identical calls share a name."""
    memo: dict[int, Expr] = {}
    by_text: dict[str, Name] = {}
    lifted: list = []

    def visit(node: Expr) -> Expr:
        if id(node) in memo:
            return memo[id(node)]
        new = node
        if isinstance(node, Call):
            args = tuple(visit(a) for a in node.args)
            if node.function in arity:
                if len(args) != arity[node.function]:
                    raise error(f"function {node.function!r} takes {arity[node.function]} "
                                f"argument(s) but is called with {len(args)}")
                key = str(Call(node.function, args))
                if key not in by_text:
                    by_text[key] = Name(f"_lifted{len(lifted)}")
                    lifted.append((by_text[key].name, node.function, args))
                new = by_text[key]
            elif any(a is not b for a, b in zip(args, node.args)):
                new = Call(node.function, args)
        memo[id(node)] = new
        return new

    return visit(tree), lifted


def check_names(owner: str, expression: str, groups: Mapping[str, Sequence[str]]) -> None:
    """Raise if a name is used twice among the parameter kinds in ``groups`` (e.g. a global
    parameter and a tabulated function of one name): workbench keys parameters by name."""
    seen: dict[str, str] = {}
    for kind, names in groups.items():
        for n in names:
            if n in seen:
                raise unsupported(owner, f"{n!r} is both a {seen[n]} and a {kind}", expression)
            seen[n] = kind


def global_parameters(force) -> dict[str, float]:
    """The force's global parameters and their default values (OpenMM's context values start
    there)."""
    return {force.getGlobalParameterName(i): float(force.getGlobalParameterDefaultValue(i))
            for i in range(force.getNumGlobalParameters())}


def tabulated_functions(force) -> dict[str, object]:
    """The force's tabulated functions by name (OpenMM objects)."""
    return {force.getTabulatedFunctionName(i): force.getTabulatedFunction(i)
            for i in range(force.getNumTabulatedFunctions())}


@dataclass(frozen=True, eq=False)
class ParameterLayout:
    """How a custom term's parameter pytree is laid out (all structural): ``per_type`` names
    ((T,) arrays, one value per type), ``globals`` (() scalars) and ``tables`` (discrete
    tabulated functions' values, their OpenMM shape). The pytree is one flat dict keyed by the
    force's own names."""

    per_type: tuple[str, ...] = ()
    globals: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    n_types: int = 0
    table_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def init(self, owner: str, values: Mapping[str, object]) -> dict[str, Array]:
        """Check and convert ``values`` (every name required) into float arrays."""
        names = (*self.per_type, *self.globals, *self.tables)
        unknown, missing = set(values) - set(names), set(names) - set(values)
        if unknown or missing:
            raise TypeError(f"{owner} parameters are {list(names)}; missing {sorted(missing)}, "
                            f"unknown {sorted(unknown)}")
        f = jnp.result_type(float)
        out = {}
        for k in names:
            v = np.asarray(values[k], dtype=float)
            if k in self.per_type:
                v = np.broadcast_to(v, (self.n_types,)) if v.ndim == 0 else v
                want = (self.n_types,)
            elif k in self.globals:
                want = ()
            else:
                want = tuple(self.table_shapes[k])
            if v.shape != want:
                raise ValueError(f"{owner} parameter {k!r} must have shape {want}, got {v.shape}")
            out[k] = jnp.asarray(v, dtype=f)
        return out

    def split(self, params: Mapping[str, Array]):
        """(per-type dict, globals dict, tables dict) views of ``params``."""
        return ({k: params[k] for k in self.per_type}, {k: params[k] for k in self.globals},
                {k: params[k] for k in self.tables})
