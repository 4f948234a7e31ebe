"""OpenMM (Lepton) expression trees: parsing and the result-changing simplifications.

The syntax half of :mod:`workbench.forcefield.expression` (see its docstring for the grammar and
Lepton's rules): :func:`parse` turns text into an immutable tree of :class:`Number`,
:class:`Name` and :class:`Call`; :func:`simplify` applies Lepton's optimizations that change
results; :func:`substitute`, :func:`free_names` and :func:`function_names` inspect and rewrite
trees. No JAX here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Call", "Expr", "ExpressionError", "Name", "Number", "free_names", "function_names",
           "parse", "simplify", "substitute"]


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
_FOLD = {"+": np.add, "-": lambda a, b=None: -a if b is None else a - b, "*": np.multiply,
         "/": np.divide, "^": np.power}
"""Literal arithmetic folded in float64 with C semantics, as Lepton does."""
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
            return number(_FOLD[fn](*map(np.float64, const)))
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
