"""Tests for pipeline.tasks.countdown (docs/methods.md §5: Countdown reward, TinyZero protocol).

The reference implementations used here (expression trees, subset-partition reachability,
step replay) are written independently of the module so that the tests can really fail.
The last section is a peer test against reasoning-gym's ``countdown`` scorer.
"""

from __future__ import annotations

import builtins
import itertools
import random
import re
import time
from collections import Counter
from fractions import Fraction
from functools import cache

import numpy as np
import pytest

from pipeline.tasks.countdown import (
    MAX_EQUATION_CHARS,
    EquationError,
    Problem,
    best_solution,
    check_equation,
    evaluate,
    extract_answer,
    generate,
    make_splits,
    prompt,
    solve,
    trace,
    verify,
)


def _ans(eq: str) -> str:
    return f"<think>scratch</think>\n<answer>{eq}</answer>"


# ============================================================ 1. verifier, tricky inputs
@pytest.mark.parametrize(
    ("numbers", "target", "response", "expected"),
    [
        # plain correct answers, whitespace, order of numbers irrelevant
        ([1, 2, 3], 6, _ans("1+2+3"), True),
        ([1, 2, 3], 6, _ans("3 * 2 * 1"), True),
        ([1, 2, 3], 6, "<answer>\n  (1 +\t2) *\n 2 / 2 + 3 - 3 </answer>", False),  # extras
        ([1, 2, 3], 9, "<answer>\n  (1 +\t2) *\n 3 </answer>", True),
        ([1, 2, 3], 9, "<answer>\n  (1 +\t2) *\n 3 * 3 / 3 </answer>", False),  # 3 reused
        ([3, 4, 5], 27, "<answer>\n\t(4 + 5)\n*  3\n</answer>", True),
        ([3, 4, 5], 27, "<answer>   (4+5)*3   </answer>", True),
        # division by zero, even where the final value would be fine / multiplied by 0
        ([5, 3, 3], 0, _ans("5/(3-3)"), False),
        ([5, 3, 3, 0], 0, _ans("0*(5/(3-3))"), False),
        ([5, 5, 2], 0, _ans("(5-5)/2"), True),  # 0 as a numerator is fine
        # reused / missing / extra / foreign numbers
        ([1, 2, 3], 7, _ans("1+2*3"), True),
        ([1, 2, 3], 9, _ans("3*3"), False),  # 3 reused, 1 and 2 missing
        ([1, 2, 3], 6, _ans("2*3"), False),  # 1 missing
        ([1, 2, 3], 6, _ans("2*3*1*1"), False),  # 1 reused
        ([1, 2, 3], 6, _ans("1*2*3+0"), False),  # 0 is not in the list
        ([1, 2, 3], 10, _ans("1*2*3+4"), False),  # 4 is not in the list
        ([1, 2, 3], 5, _ans("2+3"), False),
        ([2, 2, 3], 7, _ans("2+2+3"), True),  # duplicates in the list: each used once
        ([2, 2, 3], 7, _ans("2*2+3"), True),
        ([2, 2, 3], 5, _ans("2+3"), False),  # one 2 unused
        ([2, 2, 3], 9, _ans("2+2+2+3"), False),  # a third 2
        ([1, 2], 12, _ans("12"), False),  # no concatenation
        ([1, 2], 12, _ans("1 2"), False),
        ([1, 2], 3, _ans("(1)(2)"), False),  # no implicit multiplication
        ([12], 12, _ans("1+2"), False),  # no splitting
        # exponentiation and other operators are not allowed
        ([2, 3], 8, _ans("2**3"), False),
        ([2, 3], 8, _ans("2^3"), False),
        ([7, 2], 3, _ans("7//2"), False),
        ([7, 2], 1, _ans("7%2"), False),
        # no unary operators (TinyZero's grammar has none)
        ([3, 7], 4, _ans("-3+7"), False),
        ([3, 7], 4, _ans("7+-3"), False),
        ([3, 7], 4, _ans("7-(-3)+0"), False),
        ([3, 7], 10, _ans("+3+7"), False),
        ([3, 7], 4, _ans("7-3"), True),
        ([3, 7, 1], 3, _ans("3-7+7"), False),
        ([3, 7, 1], -3, _ans("3-7+1"), True),  # negative values are fine, unary signs not
        # garbage, empty, missing or malformed tags
        ([1, 2], 3, _ans(""), False),
        ([1, 2], 3, _ans("   "), False),
        ([1, 2], 3, _ans("three"), False),
        ([1, 2], 3, _ans("1+2=3"), False),
        ([1, 2], 3, _ans("(1+2"), False),
        ([1, 2], 3, _ans("1+2)"), False),
        ([1, 2], 3, _ans("()1+2"), False),
        ([1, 2], 3, _ans("1++2"), False),
        ([1, 2], 3, _ans("1+2+"), False),
        ([1, 2], 3, _ans("1 + 2 </think>"), False),
        ([1, 2], 3, _ans("1+2\x00"), False),
        ([1, 2], 3, "1+2", False),  # no tag at all
        ([1, 2], 3, "", False),
        ([1, 2], 3, "<answer>1+2", False),  # unclosed
        ([1, 2], 3, "1+2</answer>", False),
        ([1, 2], 3, "<Answer>1+2</Answer>", False),  # tags are case-sensitive
        ([1, 2], 3, "<answer><answer>1+2</answer>", False),
        # several answers: the last one wins
        ([1, 2], 3, "<answer>1*2</answer> no wait <answer>1+2</answer>", True),
        ([1, 2], 3, "<answer>1+2</answer> no wait <answer>1*2</answer>", False),
        ([1, 2], 3, "<answer>1+2</answer>\n<answer></answer>", False),
        ([1, 2], 3, "<answer>1+2</answer>\n<answer>nonsense</answer>", False),
        ([1, 2], 3, "<answer>\n1+\n2\n</answer> trailing text", True),
        # unicode and ASCII-letter operator aliases
        ([3, 4], 12, _ans("3 × 4"), True),
        ([8, 2], 4, _ans("8 ÷ 2"), True),
        ([7, 3], 4, _ans("7 − 3"), True),
        ([1, 3, 4, 6], 24, _ans("6 ÷ (1 − 3 ÷ 4)"), True),
        ([3, 4], 12, _ans("3 · 4"), False),
        ([7, 3], 4, _ans("7 – 3"), False),  # en dash is not a minus
        # exact rational arithmetic: non-integer intermediates and float traps
        ([1, 3, 4, 6], 24, _ans("6/(1-3/4)"), True),
        ([3, 3, 8, 8], 24, _ans("8/(3-8/3)"), True),
        ([1, 5, 5, 5], 24, _ans("5*(5-1/5)"), True),
        ([1, 3, 3], 1, _ans("1/3*3"), True),
        ([1, 49, 49], 1, _ans("1/49*49"), True),  # 0.9999999999999999 in floats
        ([1, 10, 2, 10, 10], 3, _ans("(1/10+2/10)*10"), True),  # 3.0000000000000004
        ([1, 10, 2, 10, 10], 3, _ans("(1/10+2/10)*10+0"), False),
        ([1000000001, 1000000000], 1, _ans("1000000001/1000000000"), False),  # close, not exact
        ([2, 3], 1, _ans("2/3"), False),
        ([1, 2], 0, _ans("1/2"), False),  # no truncation to int
        ([7, 2], 3, _ans("7/2"), False),
        # decimals and leading zeros
        ([5, 2], 5, _ans("2.5*2"), False),
        ([25, 2], 5, _ans("2.5*2"), False),
        ([2, 5, 2], 5, _ans("2.5*2"), False),  # a decimal is not two numbers either
        ([5, 2], 10, _ans("5,0*2"), False),
        # Leading zeros are rejected, as by TinyZero's eval-based scorer and reasoning-gym;
        # a lone 0 is a number.
        ([3, 4], 7, _ans("03+4"), False),
        ([0, 3, 4], 7, _ans("03+4"), False),
        ([30, 4], 34, _ans("030+4"), False),
        ([0, 7], 7, _ans("0+7"), True),
        # Only ASCII digits are numbers (TinyZero's eval would reject others too).
        ([1, 2], 3, _ans("\uff11+\uff12"), False),  # fullwidth 1 + 2
        ([3, 4], 12, _ans("3x4"), False),  # a letter is not an operator
        ([1, 2], 3, _ans("1\u00a0+\u00a02"), True),  # no-break spaces are whitespace
    ],
)
def test_verify_tricky(numbers, target, response, expected) -> None:
    assert verify(numbers, target, response) is expected


@pytest.mark.parametrize(
    "eq",
    [
        "9**9**9",
        "9**9**9**9",
        "2^100",
        "2^10^10^10",
        "10**10**10",
        "(9**9)**(9**9)",
        "pow(9, 9**9)",
        "__import__('os')",
        "9" * 100 + "**" + "9" * 100,
    ],
)
def test_huge_exponents_rejected_quickly(eq: str) -> None:
    start = time.perf_counter()
    assert verify([9, 9, 9], 1, _ans(eq)) is False
    assert check_equation([9, 9, 9], 1, eq) is False
    with pytest.raises(EquationError):
        evaluate(eq)
    assert time.perf_counter() - start < 0.1


def test_big_but_legal_products_are_exact_and_fast() -> None:
    nums = [99999] * 20
    eq = "*".join(str(n) for n in nums)
    assert len(eq) <= MAX_EQUATION_CHARS
    start = time.perf_counter()
    assert check_equation(nums, 99999**20, eq) is True
    assert check_equation(nums, 99999**20 + 1, eq) is False
    assert time.perf_counter() - start < 0.1


def test_never_calls_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("eval/exec/compile must not be used")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, boom)
    assert verify([1, 3, 4, 6], 24, _ans("6/(1-3/4)")) is True
    assert verify([1, 3, 4, 6], 24, _ans("__import__('os').system('true')")) is False


@pytest.mark.parametrize(
    "eq",
    [
        "(" * 10_000 + "1" + ")" * 10_000,
        "(" * 140 + "1" + ")" * 140,  # within the length limit, deeper than the parser allows
        "(" * 149 + "1",
        "1" + ")" * 299,
        "(1+" * 70 + "1" + ")" * 70,
        "1+" * 5_000 + "1",
        "1" * 5_000,  # int() of >4300 digits would raise ValueError in Python 3.11
        "-" * 100_000 + "1",
        "(" * 200_000,
    ],
)
def test_long_and_deep_inputs_rejected_without_crash(eq: str) -> None:
    start = time.perf_counter()
    with pytest.raises(EquationError):
        evaluate(eq)
    assert check_equation([1], 1, eq) is False
    assert verify([1], 1, _ans(eq)) is False
    assert time.perf_counter() - start < 0.5


def test_moderate_nesting_accepted() -> None:
    eq = "(" * 20 + "1+2" + ")" * 20 + "*" + "(" * 20 + "3" + ")" * 20
    assert len(eq) <= MAX_EQUATION_CHARS
    assert check_equation([1, 2, 3], 9, eq) is True


def test_long_response_with_short_answer() -> None:
    response = "<think>" + "let me think. " * 20_000 + "</think><answer>(4+5)*3</answer>"
    start = time.perf_counter()
    assert verify([3, 4, 5], 27, response) is True
    assert time.perf_counter() - start < 0.5


def test_length_limit_boundary() -> None:
    core = "1+2"
    pad = MAX_EQUATION_CHARS - len(core)
    assert check_equation([1, 2], 3, " " * pad + core) is True
    assert check_equation([1, 2], 3, " " * (pad + 1) + core) is False


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer> 1+2 </answer>", "1+2"),
        ("<answer>a</answer><answer>b</answer>", "b"),
        ("<answer>a</answer>\n<answer>\nb\n</answer> tail", "b"),
        ("<answer></answer>", ""),
        ("<answer>x\ny</answer>", "x\ny"),
        ("no tags", None),
        ("<answer>open", None),
        ("", None),
        ("<answer>a<answer>b</answer>", "a<answer>b"),
        ("<answer>a</answer><answer>open", "a"),
        ("</answer><answer>c</answer></answer>", "c"),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected
    import re  # the reference: the regex the extraction replaces
    ref = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    assert extract_answer(response) == (ref[-1].strip() if ref else None)


def test_extract_answer_is_linear_on_unclosed_tags() -> None:
    """1 MB of unclosed ``<answer>`` tags (the regex took > 20 s): a count of ``find``
    calls, not a timing, shows the scan stops after the first unclosed tag."""
    hostile = "<answer>" * (1 << 17)
    calls = []

    class Counting(str):
        def find(self, *a):  # noqa: D102
            calls.append(a)
            return str.find(self, *a)
    assert extract_answer(Counting(hostile)) is None
    assert len(calls) == 2
    assert extract_answer(hostile + "</answer>") == "<answer>" * ((1 << 17) - 1)


@pytest.mark.parametrize(
    ("eq", "value", "numbers"),
    [
        ("1+2*3", Fraction(7), [1, 2, 3]),
        ("(1+2)*3", Fraction(9), [1, 2, 3]),
        ("8-3-2", Fraction(3), [8, 3, 2]),  # left associative
        ("8-(3-2)", Fraction(7), [8, 3, 2]),
        ("64/8/2", Fraction(4), [64, 8, 2]),
        ("64/(8/2)", Fraction(16), [64, 8, 2]),
        ("2/3", Fraction(2, 3), [2, 3]),
        ("1/3*3", Fraction(1), [1, 3, 3]),
        ("7 − 3 × 2 ÷ 4", Fraction(11, 2), [7, 3, 2, 4]),
        ("  12 ", Fraction(12), [12]),
    ],
)
def test_evaluate_values(eq: str, value: Fraction, numbers: list[int]) -> None:
    got_value, got_numbers = evaluate(eq)
    assert isinstance(got_value, Fraction)
    assert got_value == value
    assert got_numbers == numbers


# ============================================================ 2. parser vs a reference
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_SPACES = ["", "", "", " ", "  ", "\t", "\n"]
_ALIAS = {"*": "×", "/": "÷", "-": "−"}


def _random_tree(rng: random.Random, leaves: int):
    """A random binary expression tree: int leaf, or (op, left, right)."""
    if leaves == 1:
        return rng.choice([rng.randint(0, 9), rng.randint(0, 9), rng.randint(10, 999)])
    k = rng.randint(1, leaves - 1)
    return (rng.choice("+-*/"), _random_tree(rng, k), _random_tree(rng, leaves - k))


def _tree_value(tree) -> Fraction | None:
    """Exact value by structural recursion; None on any division by zero."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = _tree_value(left), _tree_value(right)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def _tree_leaves(tree) -> list[int]:
    return [tree] if isinstance(tree, int) else _tree_leaves(tree[1]) + _tree_leaves(tree[2])


def _render(tree, rng: random.Random, unicode_ok: bool) -> tuple[str, int]:
    """(text, precedence) with the minimal parentheses plus random redundant ones."""
    if isinstance(tree, int):
        text, prec = str(tree), 3
    else:
        op, left, right = tree
        lt, lp = _render(left, rng, unicode_ok)
        rt, rp = _render(right, rng, unicode_ok)
        if lp < _PREC[op]:
            lt = f"({lt})"
        if rp < _PREC[op] or (rp == _PREC[op] and op in "-/"):
            rt = f"({rt})"
        sym = _ALIAS[op] if unicode_ok and op in _ALIAS and rng.random() < 0.2 else op
        text = f"{lt}{rng.choice(_SPACES)}{sym}{rng.choice(_SPACES)}{rt}"
        prec = _PREC[op]
    if rng.random() < 0.1:
        text, prec = f"({rng.choice(_SPACES)}{text}{rng.choice(_SPACES)})", 3
    return text, prec


def _python_value(text: str) -> Fraction:
    """Python's own evaluation of a test-generated string, literals made Fractions."""
    ascii_text = text.replace("×", "*").replace("÷", "/").replace("−", "-")
    assert re.fullmatch(r"[\d\s+\-*/()]*", ascii_text), ascii_text
    src = re.sub(r"\d+", lambda m: f"Fraction({int(m.group())})", ascii_text)
    return eval(src.replace("\n", " "), {"Fraction": Fraction, "__builtins__": {}})  # noqa: S307


def test_parser_matches_reference_trees() -> None:
    rng = random.Random(20240611)
    checked = zero_div = 0
    for _ in range(3000):
        tree = _random_tree(rng, rng.randint(1, 10))
        text, _ = _render(tree, rng, unicode_ok=True)
        if len(text) > MAX_EQUATION_CHARS:
            continue
        expected = _tree_value(tree)
        if expected is None:
            zero_div += 1
            with pytest.raises(EquationError):
                evaluate(text)
            with pytest.raises(ZeroDivisionError):
                _python_value(text)
            continue
        value, used = evaluate(text)
        assert value == expected, text
        assert used == _tree_leaves(tree), text
        assert value == _python_value(text), text
        numbers = sorted(used)
        assert check_equation(numbers, int(value), text) is (value.denominator == 1), text
        checked += 1
    assert checked > 2000 and zero_div > 50


def test_parser_fuzz_mutations() -> None:
    """Mutated expressions: only EquationError may escape, and whatever the parser accepts
    Python evaluates to the same value (Python also allows unary ops, ** and //, so
    rejection on our side is not compared)."""
    rng = random.Random(7)
    alphabet = "0123456789+-*/() .^x×÷−a=,%"
    accepted = rejected = 0
    for _ in range(3000):
        text, _ = _render(_random_tree(rng, rng.randint(1, 6)), rng, unicode_ok=False)
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randint(0, len(chars))
            action = rng.random()
            if action < 0.4 and chars:
                del chars[min(pos, len(chars) - 1)]
            elif action < 0.8:
                chars.insert(pos, rng.choice(alphabet))
            elif chars:
                chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
        mutated = "".join(chars)
        try:
            value, used = evaluate(mutated)
        except EquationError:
            rejected += 1
            continue
        accepted += 1
        assert [int(t) for t in re.findall(r"\d+", mutated)] == used, mutated
        assert value == _python_value(mutated), mutated
    assert accepted > 300 and rejected > 1000


# ============================================================ 3. solver vs brute force
def _reachable(numbers: tuple[int, ...], integral_only: bool = False) -> frozenset[Fraction]:
    """Values of all expressions using every number once, by subset partition (each
    expression splits its numbers into the two operand sub-multisets)."""
    n = len(numbers)

    @cache
    def reach(mask: int) -> frozenset[Fraction]:
        idx = [i for i in range(n) if mask >> i & 1]
        if len(idx) == 1:
            return frozenset({Fraction(numbers[idx[0]])})
        out: set[Fraction] = set()
        sub = (mask - 1) & mask
        while sub:
            rest = mask & ~sub
            if rest:
                for a in reach(sub):
                    for b in reach(rest):
                        cands = [a + b, a - b, a * b]
                        if b != 0:
                            cands.append(a / b)
                        for c in cands:
                            if not integral_only or (c.denominator == 1 and c >= 0):
                                out.add(c)
            sub = (sub - 1) & mask
        return frozenset(out)

    return reach((1 << n) - 1)


def _replay(numbers, steps, target) -> None:
    """Each step's operands are available values; the last value left is the target."""
    pool = Counter(Fraction(n) for n in numbers)
    for s in steps:
        assert s.op in "+-*/"
        pool[s.left] -= 1
        assert pool[s.left] >= 0, (numbers, steps)
        pool[s.right] -= 1
        assert pool[s.right] >= 0, (numbers, steps)
        expected = {
            "+": s.left + s.right,
            "-": s.left - s.right,
            "*": s.left * s.right,
            "/": s.left / s.right if s.right else None,
        }[s.op]
        assert expected is not None and s.value == expected, s
        pool[s.value] += 1
    assert +pool == Counter({Fraction(target): 1}), (numbers, steps, pool)
    assert len(steps) == len(numbers) - 1


def _solver_cases():
    rng = random.Random(99)
    cases = []
    for size, count in ((2, 40), (3, 80), (4, 30)):
        for _ in range(count):
            numbers = tuple(rng.randint(1, 9) for _ in range(size))
            if rng.random() < 0.5:
                target = rng.randint(0, 60)  # often unreachable
            else:
                ints = sorted(v for v in _reachable(numbers) if v.denominator == 1)
                target = int(rng.choice(ints))
            cases.append((numbers, target))
    cases += [((1, 3, 4, 6), 24), ((3, 3, 8, 8), 24), ((1, 5, 5, 5), 24), ((2, 2), 1)]
    cases += [((5, 5), 3), ((1, 1, 1, 1), 7), ((7, 7, 7), 0)]
    return cases


def test_solver_matches_brute_force() -> None:
    positive = negative = 0
    for numbers, target in _solver_cases():
        reachable = Fraction(target) in _reachable(numbers)
        solutions = list(itertools.islice(solve(numbers, target), 25))
        assert bool(solutions) is reachable, (numbers, target)
        for sol in solutions:
            assert check_equation(numbers, target, sol.expression), (numbers, target, sol)
            value, used = evaluate(sol.expression)
            assert value == target and sorted(used) == sorted(numbers)
            _replay(numbers, sol.steps, target)
        best = best_solution(numbers, target)
        if not reachable:
            negative += 1
            assert best is None
            with pytest.raises(ValueError):
                trace(Problem(numbers, target))
            continue
        positive += 1
        assert best is not None
        assert check_equation(numbers, target, best.expression)
        _replay(numbers, best.steps, target)
        # integral intermediates (non-negative integers) are preferred whenever possible
        integral_possible = Fraction(target) in _reachable(numbers, integral_only=True)
        assert best.integral is integral_possible, (numbers, target, best)
        if best.integral:
            assert all(s.value.denominator == 1 and s.value >= 0 for s in best.steps)
    assert positive > 60 and negative > 30


def test_solver_needs_fractional_intermediates() -> None:
    best = best_solution([1, 3, 4, 6], 24)
    assert best is not None and not best.integral
    assert check_equation([1, 3, 4, 6], 24, best.expression)
    _replay([1, 3, 4, 6], best.steps, 24)
    assert verify([1, 3, 4, 6], 24, trace(Problem((1, 3, 4, 6), 24)))


def test_solver_finds_every_value() -> None:
    """Over all solutions the solver reaches exactly the brute-force value set."""
    for numbers in [(2, 3, 7), (1, 1, 5), (4, 4, 2), (6, 0, 3)]:
        reach = _reachable(numbers)
        for target in sorted({int(v) for v in reach if v.denominator == 1})[:40]:
            assert next(solve(numbers, target), None) is not None, (numbers, target)
        for target in range(-30, 60):
            if Fraction(target) not in reach:
                assert next(solve(numbers, target), None) is None, (numbers, target)


# ============================================================ 4. generator and splits
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_numbers": 4, "min_number": 1, "max_number": 9, "min_target": 10, "max_target": 30},
        {"num_numbers": 2, "min_number": 5, "max_number": 25, "min_target": 1, "max_target": 50},
        dict(num_numbers=3, min_number=50, max_number=60, min_target=100, max_target=999),
    ],
)
def test_generate_ranges_distinct_solvable(kwargs: dict) -> None:
    n = 80 if kwargs.get("num_numbers") == 4 else 150
    problems = generate(n, seed=5, **kwargs)
    num_numbers = kwargs.get("num_numbers", 3)
    lo, hi = kwargs.get("min_number", 1), kwargs.get("max_number", 20)
    tlo, thi = kwargs.get("min_target", 1), kwargs.get("max_target", 100)
    assert len(problems) == n
    assert len({p.key for p in problems}) == n
    for p in problems:
        assert isinstance(p.target, int) and all(isinstance(x, int) for x in p.numbers)
        assert len(p.numbers) == num_numbers
        assert all(lo <= x <= hi for x in p.numbers)
        assert tlo <= p.target <= thi
        assert Fraction(p.target) in _reachable(p.numbers), p
        assert Problem.from_dict(p.to_dict()) == p
    assert generate(n, seed=5, **kwargs) == problems
    assert generate(n, seed=6, **kwargs) != problems


def test_generate_exclude_and_bad_args() -> None:
    first = generate(100, seed=1)
    second = generate(100, seed=1, exclude=[p.key for p in first])
    assert not {p.key for p in first} & {p.key for p in second}
    with pytest.raises(ValueError):
        generate(5, num_numbers=1)
    with pytest.raises(ValueError):
        generate(5, min_number=10, max_number=5)
    with pytest.raises(ValueError):
        generate(5, min_target=10, max_target=5)
    assert generate(0) == []


def test_problem_key_is_order_free() -> None:
    assert Problem((3, 1, 2), 6).key == Problem((2, 3, 1), 6).key == ((1, 2, 3), 6)
    assert Problem((3, 1, 2), 6).key != Problem((3, 1, 2), 7).key


def test_make_splits_disjoint_and_deterministic() -> None:
    sizes = {"train": 400, "val": 60, "test": 60}
    splits = make_splits(sizes, seed=3)
    assert list(splits) == list(sizes)
    keys = {}
    for name, problems in splits.items():
        assert len(problems) == sizes[name]
        keys[name] = {p.key for p in problems}
        assert len(keys[name]) == sizes[name]  # no duplicates within a split
    for a, b in itertools.combinations(keys, 2):
        assert not keys[a] & keys[b], (a, b)
    again = make_splits(sizes, seed=3)
    assert {k: [p.to_dict() for p in v] for k, v in again.items()} == {
        k: [p.to_dict() for p in v] for k, v in splits.items()
    }
    other = make_splits(sizes, seed=4)
    for name in sizes:
        assert other[name] != splits[name]
    # kwargs reach the generator
    small = make_splits({"a": 30, "b": 30}, seed=2, num_numbers=4, max_number=9, max_target=50)
    for problems in small.values():
        assert all(len(p.numbers) == 4 and max(p.numbers) <= 9 for p in problems)
        assert all(1 <= p.target <= 50 for p in problems)


def test_space_too_small_raises_clear_error() -> None:
    # numbers in 1..2, two of them, targets 1..100: only 7 distinct problems exist
    with pytest.raises(ValueError, match="could only generate"):
        make_splits({"train": 5, "test": 5}, seed=0, num_numbers=2, max_number=2)


# ============================================================ 5. traces and prompts
_TRACE_RE = re.compile(r"<think>(.*)</think>\n<answer>(.*)</answer>", re.DOTALL)
_STEP_RE = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def test_trace_verifies_and_is_well_formed() -> None:
    problems = generate(250, seed=11) + generate(40, seed=12, num_numbers=4, max_number=12)
    non_integral = 0
    for p in problems:
        text = trace(p)
        assert verify(p.numbers, p.target, text), (p, text)
        m = _TRACE_RE.fullmatch(text)
        assert m is not None, text
        think, answer = m.groups()
        assert "<" not in think and "<" not in answer
        assert check_equation(p.numbers, p.target, answer)
        lines = think.split("\n")
        assert len(lines) == len(p.numbers) - 1
        best = best_solution(p.numbers, p.target)
        assert text == trace(p, best)
        if not best.integral:
            non_integral += 1
            continue
        pool = Counter(p.numbers)
        for line in lines:
            sm = _STEP_RE.fullmatch(line)
            assert sm is not None, line
            a, op, b, v = int(sm[1]), sm[2], int(sm[3]), int(sm[4])
            if op == "/":
                assert b != 0 and Fraction(a, b) == v, line
            else:
                assert {"+": a + b, "-": a - b, "*": a * b}[op] == v, line
            pool[a] -= 1
            pool[b] -= 1
            assert pool[a] >= 0 and pool[b] >= 0, (p, text)
            pool[v] += 1
        assert int(lines[-1].rsplit("=", 1)[1]) == p.target
        assert +pool == Counter({p.target: 1})
    assert non_integral < len(problems) // 10


def test_trace_steps_read_correctly_with_fractions() -> None:
    """Every think line ``lhs=rhs`` must hold when read with the usual precedence rules,
    also when intermediates are fractions (or negative: unary minus is fine here)."""
    for numbers, target in [((1, 3, 4, 6), 24), ((3, 3, 8, 8), 24), ((1, 5, 5, 5), 24)]:
        think = _TRACE_RE.fullmatch(trace(Problem(numbers, target))).group(1)
        for line in think.split("\n"):
            lhs, rhs = line.split("=")
            assert _python_value(lhs) == _python_value(rhs), (numbers, target, line)


def test_trace_with_explicit_solution() -> None:
    p = Problem((1, 3, 4, 6), 24)
    sols = list(itertools.islice(solve(p.numbers, p.target), 5))
    for sol in sols:
        assert verify(p.numbers, p.target, trace(p, sol))


def test_prompts() -> None:
    p = Problem((12, 7, 3), 57)
    assert prompt(p) == "Numbers: 12 7 3\nTarget: 57\n"
    chat = prompt(p, "chat")
    assert "[12, 7, 3]" in chat and "equals 57" in chat
    assert "<answer>" in chat and "<think>" in chat
    with pytest.raises(ValueError):
        prompt(p, "nope")


# ============================================================ 6. peer: reasoning-gym
# reasoning-gym 0.1.25 scores with sympy ``parse_expr`` + ``float`` + ``np.isclose`` and takes
# the used numbers from the regex ``\b\d+\b``. Legitimate disagreement classes, where our
# verifier is stricter or differently lenient BY DESIGN (docs/methods.md §5: only + − × ÷ and
# parentheses, exact rational arithmetic):
#   unary       rg accepts unary +/- (sympy); we reject (TinyZero grammar has none). This
#               includes some of rg's own reference answers, e.g. "-2 + (8 - 3)/1".
#   power       rg accepts ``**``; we reject exponentiation.
#   floordiv    rg accepts ``//`` (floor division on sympy Integers); we reject.
#   decimal     rg accepts "2.5" when 2 and 5 are both in the list; we reject decimals.
#   tolerance   rg accepts |value - target| <= 1e-6 + 1e-5·|target| (np.isclose); we
#               require exact equality.
#   alias       we accept ``× ÷ −``; sympy cannot parse them.
# (Leading zeros "03" and letters "3x4": both reject, so no class.)
# Each disagreement must fall in one class *in the stated direction*; all else must agree.
_UNARY_RE = re.compile(r"(^|[-+*/(×÷−])\s*[-+−]")
_CLASSES = {  # class -> (our verdict, rg verdict)
    "power": (False, True),
    "floordiv": (False, True),
    "unary": (False, True),
    "decimal": (False, True),
    "tolerance": (False, True),
    "alias": (True, False),
}


def _disagreement_class(numbers, target, answer: str) -> str | None:
    if "**" in answer:
        return "power"
    if "//" in answer:
        return "floordiv"
    if _UNARY_RE.search(answer.strip()):
        return "unary"
    if "." in answer:
        return "decimal"
    if re.search(r"[×÷−]", answer):
        return "alias"
    try:
        value, used = evaluate(answer)
    except EquationError:
        return None
    if (
        sorted(used) == sorted(numbers)
        and value != target
        and np.isclose(float(value), target, atol=1e-6)
    ):
        return "tolerance"
    return None


def _num_spans(answer: str) -> list[re.Match]:
    return list(re.finditer(r"\d+", answer))


def _corruptions(answer: str, numbers, rng: random.Random) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    spans = _num_spans(answer)
    if not spans:
        return out
    m = rng.choice(spans)
    s, e = m.span()
    # drop a number together with an adjacent binary operator
    left = answer[:s].rstrip()
    if left and left[-1] in "+-*/":
        out.append(("drop", left[:-1] + answer[e:]))
    else:
        right = answer[e:].lstrip()
        if right and right[0] in "+-*/":
            out.append(("drop", answer[:s] + right[1:]))
    # duplicate a number: overwrite another one with it, or append it
    if len(spans) > 1:
        m2 = rng.choice([x for x in spans if x is not m])
        s2, e2 = m2.span()
        out.append(("duplicate", answer[:s2] + m.group() + answer[e2:]))
    out.append(("duplicate", f"{answer}{rng.choice('+-*/')}{m.group()}"))
    out.append(("duplicate", f"({answer})*{m.group()}/{m.group()}"))  # value preserved
    # change an operator (sometimes to ** or //, which sympy reads)
    ops = [i for i, c in enumerate(answer) if c in "+-*/"]
    if ops:
        i = rng.choice(ops)
        new = rng.choice([o for o in "+-*/" if o != answer[i]] + ["**", "//"])
        out.append(("operator", answer[:i] + new + answer[i + 1 :]))
    # off-by-one constant
    n = int(m.group())
    out.append(("off_by_one", answer[:s] + str(n + rng.choice([1, -1])) + answer[e:]))
    # swap in a number that is not in the list
    wrong = rng.choice([x for x in range(1, max(numbers) + 12) if x not in numbers])
    out.append(("wrong_number", answer[:s] + str(wrong) + answer[e:]))
    # formatting variants that must still be accepted by both
    out.append(("reformat", f" ( {answer} ) "))
    out.append(("reformat", answer.replace(" ", "")))
    return out


def _salad(numbers, rng: random.Random) -> str:
    """Random token soup over the problem's numbers; sometimes a valid equation."""
    toks = [str(x) for x in numbers] + list("+-*/()") + ["", " "]
    return "".join(rng.choice(toks) for _ in range(rng.randint(1, 12)))


_GARBAGE = ["", " ", "none", "I don't know", "<answer>", "1 2 3", "()", "+", "=", "24", "x"]

# hand-written members of each documented class (numbers, target, answer)
_CRAFTED = [
    ((2, 3, 1), 9, "2**3+1"),  # power
    ((7, 2, 1), 4, "7//2+1"),  # floordiv
    ((3, 7), 4, "-3+7"),  # unary
    ((3, 7), 10, "+3+7"),  # unary
    ((3, 7), 10, "7--3"),  # unary
    ((2, 5, 2), 5, "2.5*2"),  # decimal
    ((1000001, 1000000), 1, "1000001/1000000"),  # tolerance
    ((1000001, 1000), 1000, "1000001/1000"),  # tolerance (rtol 1e-5)
    ((3, 4), 12, "3×4"),  # alias
    ((8, 2), 4, "8÷2"),  # alias
    ((7, 3), 4, "7−3"),  # alias
    ((3, 4), 12, "3x4"),  # letter: both reject (no disagreement, kept as a check)
    ((3, 4), 7, "03+4"),  # leading zero: both reject
]


@pytest.fixture(scope="module")
def rg_peer():
    reasoning_gym = pytest.importorskip("reasoning_gym")
    small = reasoning_gym.create_dataset(
        "countdown",
        size=320,
        seed=42,
        min_numbers=3,
        max_numbers=4,
        min_value=1,
        max_value=20,
        min_target=1,
        max_target=100,
    )
    default = reasoning_gym.create_dataset("countdown", size=40, seed=43)  # 4-6 numbers, ≤999
    return small, list(small) + list(default)


def test_peer_reasoning_gym(rg_peer) -> None:
    scorer, entries = rg_peer
    rng = random.Random(2025)
    pairs: list[tuple[str, tuple, int, str]] = []  # (source, numbers, target, answer)

    def add_with_corruptions(source, numbers, target, answer):
        pairs.append((source, numbers, target, answer))
        pairs.append(("target_off_by_one", numbers, target + rng.choice([1, -1]), answer))
        for kind, bad in _corruptions(answer, numbers, rng):
            if bad != answer:  # e.g. "duplicate" overwriting a 12 with another 12
                pairs.append((kind, numbers, target, bad))

    for entry in entries:
        numbers = tuple(entry["metadata"]["numbers"])
        target = entry["metadata"]["target"]
        add_with_corruptions("rg_answer", numbers, target, entry["answer"])
        if len(numbers) <= 4:
            sol = best_solution(numbers, target)
            assert sol is not None, entry  # every rg problem is solvable
            add_with_corruptions("our_solver", numbers, target, sol.expression)
        pairs.append(("garbage", numbers, target, rng.choice(_GARBAGE)))
        pairs.append(("salad", numbers, target, _salad(numbers, rng)))
    for p in generate(150, seed=77, num_numbers=4, max_number=15):
        add_with_corruptions("our_generator", p.numbers, p.target, extract_answer(trace(p)))
        pairs.append(("salad", p.numbers, p.target, _salad(p.numbers, rng)))
    for numbers, target, answer in _CRAFTED:
        pairs.append(("crafted", numbers, target, answer))

    agree = Counter()
    classes = Counter()
    unexplained = []
    start = time.perf_counter()
    for source, numbers, target, answer in pairs:
        entry = {"metadata": {"numbers": list(numbers), "target": target}}
        ours = check_equation(numbers, target, answer)
        theirs = scorer.score_answer(answer, entry) == 1.0
        if ours == theirs:
            agree[ours] += 1
            continue
        cls = _disagreement_class(numbers, target, answer)
        if cls is None or _CLASSES[cls] != (ours, theirs):
            unexplained.append((source, numbers, target, answer, ours, theirs, cls))
        else:
            classes[cls] += 1
    elapsed = time.perf_counter() - start

    assert not unexplained, unexplained[:20]
    assert len(pairs) >= 2000
    assert agree[True] >= 800 and agree[False] >= 1500, agree
    # every documented class is exercised (at least by the crafted cases)
    assert set(classes) == set(_CLASSES), classes
    print(f"peer: {len(pairs)} pairs, agree {dict(agree)}, classes {dict(classes)}, {elapsed:.1f}s")
