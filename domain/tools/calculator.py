"""The calculator tool: arithmetic by walking the parsed expression, never by eval."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from domain.context import UserExecutionContext
from domain.errors import ToolError
from domain.llm import ToolSpec

MAX_LENGTH = 200
MAX_DEPTH = 50
MAX_EXPONENT = 1000
MAX_BITS = 2048  # about 600 digits: enough for any real question, cheap to compute and send

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "π": math.pi, "e": math.e}
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {  # name: (function, min, max args)
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (round, 1, 2),
    "min": (min, 1, 20),
    "max": (max, 1, 20),
}
# "x" multiplies only when it stands alone, so "max" and "exp" keep their letters.
_TIMES_X = re.compile(r"(?<![A-Za-z_])[xX](?![A-Za-z_])")
# Escaped: times, asterisk operator, middle dot, division sign, minus sign.
_SYMBOLS = {"\u00d7": "*", "\u2217": "*", "\u00b7": "*", "\u00f7": "/", "\u2212": "-", "^": "**"}


def normalise(expression: str) -> str:
    """Map the symbols people type (x, times and division signs, ^) onto Python's operators."""
    for symbol, replacement in _SYMBOLS.items():
        expression = expression.replace(symbol, replacement)
    return _TIMES_X.sub("*", expression).strip()


def evaluate(expression: str) -> tuple[str, Number]:
    """Return the normalised expression and its value; raise ToolError for anything else."""
    if len(expression) > MAX_LENGTH:
        raise ToolError(f"the expression is longer than {MAX_LENGTH} characters")
    text = normalise(expression)
    if not text:
        raise ToolError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        shown = expression.strip()
        raise ToolError(f"{shown!r} is not an arithmetic expression I can read") from None
    value = _tidy(_eval(tree.body, 0))
    return ast.unparse(tree), value


def _eval(node: ast.AST, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise ToolError(f"the expression is nested more than {MAX_DEPTH} levels deep")
    try:
        if isinstance(node, ast.Constant):
            return _number(node.value)
        if isinstance(node, ast.Name):
            if node.id not in _CONSTANTS:
                raise ToolError(f"unknown name {node.id!r} (known: pi, e)")
            return _CONSTANTS[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            operand = _eval(node.operand, depth + 1)
            return _checked(-operand if isinstance(node.op, ast.USub) else +operand)
        if isinstance(node, ast.BinOp):
            left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
            if isinstance(node.op, ast.Pow):
                return _power(left, right)
            if type(node.op) in _BINARY:
                return _checked(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.Call):
            return _call(node, depth)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None
    raise ToolError(f"{type(node).__name__} is not allowed in a calculation")


def _call(node: ast.Call, depth: int) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
        raise ToolError(f"only these functions are allowed: {', '.join(_FUNCTIONS)}")
    name = node.func.id
    function, least, most = _FUNCTIONS[name]
    if not least <= len(node.args) <= most:
        raise ToolError(f"{name} takes {least} to {most} arguments" if least != most
                        else f"{name} takes {least} argument")
    args = [_eval(arg, depth + 1) for arg in node.args]
    if name == "sqrt" and args[0] < 0:
        raise ToolError("cannot take the square root of a negative number")
    # round(n, -10**9) would build 10**(10**9): keep the digits small.
    if name == "round" and len(args) == 2 and (not isinstance(args[1], int) or abs(args[1]) > 100):
        raise ToolError("round's digits must be a whole number between -100 and 100")
    # min and max take the list, so a single argument is allowed as it is on a calculator.
    return _checked(function(args) if name in ("min", "max") else function(*args))


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponents larger than {MAX_EXPONENT} are not allowed")
    # Estimate before computing, so 999**999 is refused without being built.
    both_ints = isinstance(base, int) and isinstance(exponent, int)
    if both_ints and exponent > 0 and (abs(base).bit_length() - 1) * exponent > MAX_BITS:
        raise ToolError("the result is too large")
    return _checked(base**exponent)


def _number(value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("only numbers are allowed")
    return _checked(value)


def _checked(value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ToolError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large")
    return value


def _tidy(value: Number) -> Number:
    """Ints stay exact; floats lose binary noise (0.1 + 0.2 -> 0.3), and 12 / 4 reads as 3."""
    if isinstance(value, int):
        return value
    value = round(value, 12)
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class Calculator:
    """Evaluates one arithmetic expression: + - * / // % **, sqrt, abs, round, min, max, pi, e."""

    idempotent = True

    spec = ToolSpec(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly, e.g. '17 * 23' or '(2 + 3) ^ 2'. "
            "Supports + - * / // % ** (or ^), parentheses, sqrt, abs, round, min, max, pi and e."
        ),
        parameters={
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "The expression to evaluate."}
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
    )

    async def __call__(
        self, context: UserExecutionContext, arguments: Mapping[str, Any], *, call_key: str = ""
    ) -> dict[str, Any]:
        expression = arguments.get("expression")
        if not isinstance(expression, str):
            raise ToolError("expression must be a string")
        normalised, value = evaluate(expression)
        return {"expression": normalised, "value": value}
