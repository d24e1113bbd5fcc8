"""Countdown, the verifiable arithmetic task of TinyZero (docs/methods.md §5).

Given numbers and a target, write an equation that uses every number exactly once with
``+ - * /`` (``× ÷ −`` accepted) and parentheses and evaluates *exactly* to the target.
The answer is the text of the last ``<answer>…</answer>``. Expressions are parsed by a
small recursive-descent parser over :class:`fractions.Fraction` — never ``eval``.

Also here: a problem generator whose targets come from random expression trees (every
problem is solvable), disjoint train/test splits, an exhaustive solver and the
reasoning traces used to SFT the builtin models.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

MAX_EQUATION_CHARS = 300
_OPS = "+-*/"
_ALIASES = {"×": "*", "÷": "/", "−": "-"}
_OPEN, _CLOSE = "<answer>", "</answer>"
# integers without leading zeros (TinyZero's eval and reasoning-gym both reject "03")
_TOKEN_RE = re.compile(r"\s*(?:(0|[1-9][0-9]*)(?![0-9])|([-+*/()]))")


@dataclass(frozen=True)
class Problem:
    """One Countdown instance: use every number once to reach ``target``."""

    numbers: tuple[int, ...]
    target: int

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Order-free identity used to keep splits disjoint."""
        return tuple(sorted(self.numbers)), self.target

    def to_dict(self) -> dict:
        return {"numbers": list(self.numbers), "target": self.target}

    @classmethod
    def from_dict(cls, d: dict) -> Problem:
        return cls(tuple(int(n) for n in d["numbers"]), int(d["target"]))


# --------------------------------------------------------------------------- parsing
class EquationError(ValueError):
    """The equation text is not a well-formed Countdown expression."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    for alias, op in _ALIASES.items():
        text = text.replace(alias, op)
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise EquationError(f"unexpected character {text[pos]!r} at {pos}")
        tokens.append(("num", m.group(1)) if m.group(1) else ("op", m.group(2)))
        pos = m.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := INT | '(' expr ')'. No unary operators, no exponentiation."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.i = 0
        self.numbers: list[int] = []

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self) -> Fraction:
        if not self.tokens:
            raise EquationError("empty equation")
        value = self._expr(0)
        if self._peek() is not None:
            raise EquationError(f"unexpected token {self._peek()[1]!r}")
        return value

    def _expr(self, depth: int) -> Fraction:
        value = self._term(depth)
        while (tok := self._peek()) is not None and tok[1] in "+-" and tok[0] == "op":
            self.i += 1
            rhs = self._term(depth)
            value = value + rhs if tok[1] == "+" else value - rhs
        return value

    def _term(self, depth: int) -> Fraction:
        value = self._factor(depth)
        while (tok := self._peek()) is not None and tok[1] in "*/" and tok[0] == "op":
            self.i += 1
            rhs = self._factor(depth)
            if tok[1] == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise EquationError("division by zero")
                value = value / rhs
        return value

    def _factor(self, depth: int) -> Fraction:
        if depth > 50:
            raise EquationError("parentheses nested too deeply")
        tok = self._peek()
        if tok is None:
            raise EquationError("equation ends early")
        self.i += 1
        if tok[0] == "num":
            self.numbers.append(int(tok[1]))
            return Fraction(int(tok[1]))
        if tok[1] == "(":
            value = self._expr(depth + 1)
            close = self._peek()
            if close is None or close[1] != ")":
                raise EquationError("unbalanced parentheses")
            self.i += 1
            return value
        raise EquationError(f"unexpected token {tok[1]!r}")


def evaluate(equation: str) -> tuple[Fraction, list[int]]:
    """Exact value of ``equation`` and the integers it uses, or :class:`EquationError`."""
    if len(equation) > MAX_EQUATION_CHARS:
        raise EquationError(f"equation longer than {MAX_EQUATION_CHARS} characters")
    parser = _Parser(_tokenize(equation))
    value = parser.parse()
    return value, parser.numbers


def extract_answer(response: str) -> str | None:
    """Text of the last ``<answer>…</answer>`` in ``response`` (stripped), or None: the
    pairs a non-greedy ``<answer>(.*?)</answer>`` finds left to right, found with
    ``str.find`` in linear time (the regex is quadratic on unclosed tags)."""
    last, pos = None, 0
    while (start := response.find(_OPEN, pos)) >= 0:
        end = response.find(_CLOSE, start + len(_OPEN))
        if end < 0:  # no later tag can close either
            break
        last, pos = response[start + len(_OPEN):end], end + len(_CLOSE)
    return None if last is None else last.strip()


def check_equation(numbers: Sequence[int], target: int, equation: str) -> bool:
    """True iff ``equation`` uses each of ``numbers`` exactly once and equals ``target``."""
    try:
        value, used = evaluate(equation)
    except EquationError:
        return False
    return sorted(used) == sorted(int(n) for n in numbers) and value == Fraction(int(target))


def verify(numbers: Sequence[int], target: int, response: str) -> bool:
    """Countdown reward (docs/methods.md §5): the last ``<answer>`` equation is exactly right."""
    equation = extract_answer(response)
    return equation is not None and check_equation(numbers, target, equation)


# --------------------------------------------------------------------------- solver
@dataclass(frozen=True)
class Step:
    """One binary operation of a solution: ``left op right = value``."""

    left: Fraction
    op: str
    right: Fraction
    value: Fraction


@dataclass(frozen=True)
class Solution:
    expression: str
    steps: tuple[Step, ...]

    @property
    def integral(self) -> bool:
        """All intermediate values are non-negative integers (easier to learn)."""
        return all(s.value.denominator == 1 and s.value >= 0 for s in self.steps)


def _fmt(x: Fraction) -> str:
    """A value as an operand: fractions and negatives parenthesised (``6/(1/4)``)."""
    if x.denominator == 1:
        return str(x.numerator) if x >= 0 else f"({x.numerator})"
    return f"({x.numerator}/{x.denominator})"


def _fmt_value(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _wrap(expr: str, prec: int, need: int) -> str:
    return f"({expr})" if prec < need else expr


def _search(items: list[tuple[Fraction, str, int, tuple[Step, ...]]]) -> Iterator[Solution]:
    # items: (value, expression, precedence: 3 atom / 2 product / 1 sum, steps so far)
    if len(items) == 1:
        value, expr, _, steps = items[0]
        yield Solution(expr, steps)
        return
    for i, j in itertools.permutations(range(len(items)), 2):
        (a, ea, pa, sa), (b, eb, pb, sb) = items[i], items[j]
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        for op in _OPS:
            if op in "+*" and i > j:  # commutative: one order is enough
                continue
            value = _apply(a, op, b)
            if value is None:
                continue
            if op in "+-":
                expr = f"{ea}{op}{_wrap(eb, pb, 2 if op == '-' else 1)}"
                prec = 1
            else:
                expr = f"{_wrap(ea, pa, 2)}{op}{_wrap(eb, pb, 3 if op == '/' else 2)}"
                prec = 2
            step = Step(a, op, b, value)
            yield from _search([*rest, (value, expr, prec, (*sa, *sb, step))])


def solve(numbers: Sequence[int], target: int) -> Iterator[Solution]:
    """All solutions (as step sequences) of a problem, by exhaustive search."""
    start = [(Fraction(n), str(n), 3, ()) for n in numbers]
    goal = Fraction(target)
    for sol in _search(start):
        if sol.steps and sol.steps[-1].value == goal:
            yield sol


def best_solution(numbers: Sequence[int], target: int) -> Solution | None:
    """The first solution with integral intermediates, else the first solution."""
    fallback = None
    for sol in solve(numbers, target):
        if sol.integral:
            return sol
        fallback = fallback or sol
    return fallback


# --------------------------------------------------------------------------- data
def _random_target(numbers: Sequence[int], rng: random.Random) -> Fraction | None:
    """Value of a random expression tree over all ``numbers`` (a random merge order)."""
    values = [Fraction(n) for n in numbers]
    rng.shuffle(values)
    while len(values) > 1:
        i, j = rng.sample(range(len(values)), 2)
        value = _apply(values[i], rng.choice(_OPS), values[j])
        if value is None:
            return None
        values = [v for k, v in enumerate(values) if k not in (i, j)] + [value]
    return values[0]


def generate(
    n: int,
    *,
    num_numbers: int = 3,
    min_number: int = 1,
    max_number: int = 20,
    min_target: int = 1,
    max_target: int = 100,
    seed: int = 0,
    exclude: Iterable[tuple[tuple[int, ...], int]] = (),
) -> list[Problem]:
    """``n`` distinct solvable problems; targets are integer values of random expressions.

    Problems whose :attr:`Problem.key` is in ``exclude`` are skipped (disjoint splits).
    """
    if num_numbers < 2 or min_number > max_number or min_target > max_target:
        raise ValueError("countdown: need num_numbers >= 2 and non-empty number/target ranges")
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 100_000:
            raise ValueError(
                f"countdown: could only generate {len(out)} of {n} distinct problems with "
                f"numbers {min_number}..{max_number} ×{num_numbers}, targets "
                f"{min_target}..{max_target}; widen the ranges"
            )
        numbers = tuple(rng.randint(min_number, max_number) for _ in range(num_numbers))
        target = _random_target(numbers, rng)
        if target is None or target.denominator != 1 or not min_target <= target <= max_target:
            continue
        problem = Problem(numbers, int(target))
        if problem.key in seen:
            continue
        seen.add(problem.key)
        out.append(problem)
    return out


def make_splits(sizes: dict[str, int], *, seed: int = 0, **gen_kwargs) -> dict[str, list[Problem]]:
    """Disjoint splits (e.g. ``{"train": 20000, "test": 200}``) from independent streams."""
    splits: dict[str, list[Problem]] = {}
    used: set = set()
    for offset, (name, size) in enumerate(sizes.items()):
        problems = generate(size, seed=seed * 1000 + offset, exclude=used, **gen_kwargs)
        used |= {p.key for p in problems}
        splits[name] = problems
    return splits


# --------------------------------------------------------------------------- text
def prompt(problem: Problem, style: str = "builtin") -> str:
    """Prompt text. ``builtin``: the compact format of the tiny models (their own
    tokenizer, no chat template); ``chat``: the TinyZero instruction for chat models."""
    nums = " ".join(str(n) for n in problem.numbers)
    if style == "builtin":
        return f"Numbers: {nums}\nTarget: {problem.target}\n"
    if style == "chat":
        return (
            f"Using the numbers [{', '.join(str(n) for n in problem.numbers)}], create an "
            f"equation that equals {problem.target}. You can use basic arithmetic operations "
            "(+, -, *, /) and each number must be used exactly once. Show your work in "
            "<think> </think> tags and return the final equation in <answer> </answer> tags, "
            "for example <answer> (1 + 2) / 3 </answer>."
        )
    raise ValueError(f"countdown: unknown prompt style {style!r} (builtin, chat)")


def trace(problem: Problem, solution: Solution | None = None) -> str:
    """Reasoning trace for SFT: the solution's steps, then the equation.

    ``<think>12+7=19\\n19*3=57</think>\\n<answer>(12+7)*3</answer>``
    """
    solution = solution or best_solution(problem.numbers, problem.target)
    if solution is None:
        raise ValueError(f"countdown: {problem} has no solution")
    steps = "\n".join(
        f"{_fmt(s.left)}{s.op}{_fmt(s.right)}={_fmt_value(s.value)}" for s in solution.steps
    )
    return f"<think>{steps}</think>\n<answer>{solution.expression}</answer>"
