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
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf, erfc

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


class ExpressionError(ValueError):
    """A custom-force expression that cannot be parsed or compiled.

    The message names the expression, the offending token or name, and how to fix it;
    ``expression`` holds the expression text.
    """

    def __init__(self, message: str, expression: str):
        super().__init__(f"in expression {expression!r}: {message}")
        self.expression = expression


# ----------------------------------------------------------------------------- expression trees


class Expr:
    """Base class of expression-tree nodes: immutable, compared by identity, shared freely."""

    __slots__ = ()

    def __str__(self) -> str:
        return _format(self)


@dataclass(frozen=True, eq=False)
class Number(Expr):
    """A numeric literal."""

    value: float


@dataclass(frozen=True, eq=False)
class Name(Expr):
    """A free variable (a coordinate like ``r``, a per-term or global parameter)."""

    name: str


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """An operator or function applied to arguments.

    ``function`` is ``"+" "-" "*" "/" "^"`` for the operators (``"-"`` with one argument is
    unary minus), otherwise a function name (built-in or supplied at compile time).
    """

    function: str
    args: tuple[Expr, ...]


_OPERATORS = {"+": 0, "-": 0, "*": 1, "/": 1, "^": 3}  # Lepton's precedences
_NEGATE_PRECEDENCE = 2  # unary minus: above * /, below ^
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(
    r"(?P<space>\s+)|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<op>[-+*/^])|(?P<lparen>\()|(?P<rparen>\))|(?P<comma>,)|(?P<word>[^-+*/^(),\s]+)"
)


def _format(node: Expr) -> str:
    if isinstance(node, Number):
        return repr(node.value)
    if isinstance(node, Name):
        return node.name
    args = [_format(a) for a in node.args]
    if node.function == "-" and len(args) == 1:
        return f"-({args[0]})"
    if node.function in _OPERATORS:
        return f"({args[0]} {node.function} {args[1]})"
    return f"{node.function}({', '.join(args)})"


def _tokenize(text: str, source: str) -> list[tuple[str, str]]:
    """Split one ``;``-piece into (kind, text) tokens; a word followed by ``(`` is a function."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)  # the word pattern matches anything the others do not
        kind, word = match.lastgroup, match.group()
        pos = match.end()
        if kind == "word":
            if word[0].isdigit() or word[0] == ".":
                raise ExpressionError(f"malformed number {word!r}", source)
            if not _NAME.match(word):
                raise ExpressionError(
                    f"invalid name {word!r}: names are letters, digits and underscores", source
                )
            if pos < len(text) and text[pos] == "(":
                kind, pos = "function", pos + 1
        if kind != "space":
            tokens.append((kind, word))
    return tokens


class _Parser:
    """Precedence-climbing parser of one piece, as Lepton's ``Parser::parsePrecedence``."""

    def __init__(self, text: str, source: str, scope: Mapping[str, Expr]):
        self.tokens = _tokenize(text, source)
        self.pos = 0
        self.source = source
        self.scope = scope

    def error(self, message: str) -> ExpressionError:
        return ExpressionError(message, self.source)

    def parse(self) -> Expr:
        node = self.expression(0)
        if self.pos < len(self.tokens):
            kind, token = self.tokens[self.pos]
            if kind == "rparen":
                raise self.error("unbalanced parentheses: ')' has no matching '('")
            raise self.error(
                f"unexpected {token!r} after a complete expression (missing operator?)"
            )
        return node

    def expression(self, precedence: int) -> Expr:
        if self.pos == len(self.tokens):
            raise self.error("unexpected end (an operand is missing)")
        kind, text = self.tokens[self.pos]
        self.pos += 1
        if kind == "number":
            node: Expr = Number(float(text))
        elif kind == "word":
            node = self.scope.get(text) or Name(text)
        elif kind == "lparen":
            node = self.expression(0)
            self.expect_close("(")
        elif kind == "function":
            args = [self.expression(0)]
            while self.pos < len(self.tokens) and self.tokens[self.pos][0] == "comma":
                self.pos += 1
                args.append(self.expression(0))
            self.expect_close(f"{text}(")
            node = Call(text, tuple(args))
        elif kind == "op" and text == "-":
            node = Call("-", (self.expression(_NEGATE_PRECEDENCE),))
        else:
            raise self.error(f"unexpected {text!r} where an operand was expected")
        while self.pos < len(self.tokens) and self.tokens[self.pos][0] == "op":
            op = self.tokens[self.pos][1]
            if _OPERATORS[op] < precedence:
                break
            self.pos += 1
            right_precedence = _OPERATORS[op] + (0 if op == "^" else 1)
            node = Call(op, (node, self.expression(right_precedence)))
        return node

    def expect_close(self, opened: str) -> None:
        if self.pos == len(self.tokens) or self.tokens[self.pos][0] != "rparen":
            found = "the end" if self.pos == len(self.tokens) else repr(self.tokens[self.pos][1])
            raise self.error(f"unbalanced parentheses: {opened!r} is not closed (found {found})")
        self.pos += 1


def parse(expression: str) -> Expr:
    """Parse an OpenMM/Lepton expression into a tree with its definitions substituted.

    ``"E; a = ...; b = ..."``: the first piece is the result; each later piece defines a name
    usable in the pieces to its left. As in Lepton, definitions are read from right to left, so
    a definition may use names defined after it (and a repeated name is redefined for the
    pieces to its left). A definition using a name defined to its left (including itself) is
    rejected with the cycle or the reordering that fixes it, because Lepton would silently treat
    that name as a free variable.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, got {type(expression).__name__}")
    primary, *pieces = expression.split(";")
    definitions: list[tuple[str, str]] = []
    for piece in pieces:
        if not piece.strip():
            continue
        name, equals, body = piece.partition("=")
        name = name.strip()
        if not equals or not name:
            raise ExpressionError(
                f"definition {piece.strip()!r} needs the form 'name = expression'", expression
            )
        if not _NAME.match(name):
            raise ExpressionError(f"invalid definition name {name!r}", expression)
        definitions.append((name, body))
    defined = {name for name, _ in definitions}
    scope: dict[str, Expr] = {}
    for index in range(len(definitions) - 1, -1, -1):
        name, body = definitions[index]
        tree = _Parser(body, expression, scope).parse()
        unresolved = sorted(free_names(tree) & defined)
        if unresolved:
            _raise_order_error(definitions, index, unresolved[0], expression)
        scope[name] = tree
    if not primary.strip():
        raise ExpressionError("the result (the text before the first ';') is empty", expression)
    return _Parser(primary, expression, scope).parse()


def _raise_order_error(definitions, index: int, used: str, expression: str) -> None:
    """Report a definition using a name Lepton has not defined yet: a cycle or a bad order."""
    uses: dict[str, set[str]] = {}
    for name, body in definitions:
        words = {w for kind, w in _tokenize(body, expression) if kind == "word"}
        uses.setdefault(name, set()).update(words)
    name = definitions[index][0]
    paths, seen = [[name, used]], {used}
    while paths:  # breadth-first search for a way from `used` back to `name`
        path = paths.pop(0)
        if path[-1] == name:
            raise ExpressionError(
                f"cycle in definitions: {' -> '.join(path)} (a name cannot be defined through "
                "itself; rename or remove one definition)",
                expression,
            )
        for word in sorted(uses.get(path[-1], ())):
            if word == name or word not in seen:
                seen.add(word)
                paths.append(path + [word])
    raise ExpressionError(
        f"definition of {name!r} uses {used!r}, which is defined to its left; Lepton resolves "
        f"definitions right to left, so move '{used} = ...' after '{name} = ...'",
        expression,
    )


def _walk(expr: Expr):
    """Yield each distinct node of a (possibly shared) tree once."""
    seen, stack = set(), [expr]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, Call):
            stack.extend(node.args)


def _as_tree(expression: str | Expr) -> Expr:
    return parse(expression) if isinstance(expression, str) else expression


def free_names(expression: str | Expr) -> set[str]:
    """Names an expression uses but does not define: its coordinates and parameters."""
    return {n.name for n in _walk(_as_tree(expression)) if isinstance(n, Name)}


def function_names(expression: str | Expr) -> set[str]:
    """Functions an expression calls (built-in or not), without the operators."""
    return {
        n.function
        for n in _walk(_as_tree(expression))
        if isinstance(n, Call) and n.function not in _OPERATORS
    }


def substitute(expression: str | Expr, replace: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild a tree top-down, using ``replace(node)`` wherever it returns a node.

    For callers that rewrite pseudo-functions before compiling, for example
    CustomCompoundBondForce's ``distance(p1, p2)`` into a variable they compute themselves.
    """
    memo: dict[int, Expr] = {}

    def visit(node: Expr) -> Expr:
        if id(node) not in memo:
            new = replace(node)
            if new is None and isinstance(node, Call):
                args = tuple(visit(a) for a in node.args)
                unchanged = all(a is b for a, b in zip(args, node.args))
                new = node if unchanged else Call(node.function, args)
            memo[id(node)] = node if new is None else new
        return memo[id(node)]

    return visit(_as_tree(expression))


# ----------------------------------------------------------------------------- simplification


def simplify(expression: str | Expr, keep: Sequence[str] = ()) -> Expr:
    """Apply Lepton's result-changing rewrites and fold literal arithmetic.

    Returns a hash-consed tree (structurally equal subtrees are one object), so the rules that
    compare subtrees (``x - x``, ``x / x``, ``x * x``) work as Lepton's. Function names in
    ``keep`` (custom functions that shadow built-ins) are never rewritten.
    """
    interned: dict[tuple, Expr] = {}
    memo: dict[int, Expr] = {}

    def intern(key: tuple, make: Callable[[], Expr]) -> Expr:
        if key not in interned:
            interned[key] = make()
        return interned[key]

    def number(value: float) -> Expr:
        return intern(("#", float(value).hex()), lambda: Number(float(value)))

    def builtin(fn: str, args: tuple[Expr, ...]) -> Expr | None:
        return None if fn in keep else build(fn, args)

    def build(fn: str, args: tuple[Expr, ...]) -> Expr:
        if fn not in keep:
            rewritten = _rewrite(fn, args, number, builtin)
            if rewritten is not None:
                return rewritten
        return intern((fn, *map(id, args)), lambda: Call(fn, args))

    def visit(node: Expr) -> Expr:
        if id(node) not in memo:
            if isinstance(node, Number):
                memo[id(node)] = number(node.value)
            elif isinstance(node, Name):
                memo[id(node)] = intern(("$", node.name), lambda: node)
            else:
                memo[id(node)] = build(node.function, tuple(visit(a) for a in node.args))
        return memo[id(node)]

    return visit(_as_tree(expression))


def _rewrite(fn, args, number, build) -> Expr | None:
    """One Lepton optimisation rule applied to ``fn(*args)``, or None when none applies."""
    const = [a.value if isinstance(a, Number) else None for a in args]
    if fn in _OPERATORS and None not in const:  # fold literal arithmetic: float64, C semantics
        with np.errstate(all="ignore"):
            return number(_OPERATIONS[fn](*map(np.float64, const)))
    first = const[0]
    second = const[1] if len(const) > 1 else None
    inner = args[0] if isinstance(args[0], Call) else None
    if fn == "-" and len(args) == 1:  # -(-x) = x
        return inner.args[0] if inner and inner.function == "-" and len(inner.args) == 1 else None
    if fn == "+":
        return args[1] if first == 0 else args[0] if second == 0 else None
    if fn == "-":
        if args[0] is args[1]:
            return number(0.0)
        return build("-", args[1:]) if first == 0 else args[0] if second == 0 else None
    if fn == "*":
        if first == 0 or second == 0:
            return number(0.0)
        if first == 1 or second == 1:
            return args[1] if first == 1 else args[0]
        return build("square", args[:1]) if args[0] is args[1] else None
    if fn == "/":
        if args[0] is args[1]:
            return number(1.0)
        return number(0.0) if first == 0 else args[0] if second == 1 else None
    if fn == "^":
        if first in (0.0, 1.0):
            return number(first)
        named = {-1.0: "recip", 2.0: "square", 3.0: "cube", 0.5: "sqrt"}
        if second == 0:
            return number(1.0)
        if second == 1:
            return args[0]
        return build(named[second], args[:1]) if second in named else None
    if fn == "sqrt" and inner and inner.function == "square":  # sqrt(square(x)) = abs(x)
        return build("abs", inner.args)
    if fn == "square" and inner and inner.function == "sqrt":  # square(sqrt(x)) = x
        return inner.args[0]
    if fn == "select" and args[1] is args[2]:
        return args[1]
    return None


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
