"""Math answers: extract the last ``\\boxed{}`` and verify it (docs/methods.md §5).

``verify(..., mode="symbolic")`` uses the math-verify library; ``mode="strict"`` compares
:func:`normalize_answer` strings (the usual MATH / Hendrycks normalisation, documented there).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pipeline.tasks.bounded import DEFAULT_BUDGET_S, verify_bounded

__all__ = ["last_boxed", "normalize_answer", "verify", "VERIFY_MODES"]

logger = logging.getLogger(__name__)

VERIFY_MODES = ("symbolic", "strict")

# ``\boxed`` or ``\fbox`` not followed by a letter (so ``\boxedfoo``/``\fboxsep`` do not count).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _match_braces(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``text[start]``; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) and any other backslash-escaped character are skipped.
    """
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (docs/methods.md §5).

    Braces are matched with nesting; ``\\boxed 5`` (no braces) yields the next whitespace-
    or ``$``-delimited token. Returns None when there is no box, or the last box is
    unbalanced or empty of a token.
    """
    if not isinstance(text, str):
        return None
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    pos = matches[-1].end()
    # Optional spaces between the command and its argument.
    j = pos
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        end = _match_braces(text, j)
        return None if end is None else text[j + 1 : end]
    if j == pos:  # e.g. "\boxed5" or "\boxed$": no separator, not a valid argument form
        return None
    token = re.match(r"[^\s$]+", text[j:])
    return token.group(0) if token else None


# --------------------------------------------------------------------------------------
# Strict normalisation
# --------------------------------------------------------------------------------------

_TEXT_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mathbf", "\\mbox")


def _unwrap(s: str, command: str) -> str:
    """Replace every ``command{X}`` by ``X`` (nested braces respected)."""
    out = []
    i = 0
    pat = re.compile(re.escape(command) + r"(?![A-Za-z])\s*\{")
    while True:
        m = pat.search(s, i)
        if m is None:
            out.append(s[i:])
            break
        brace = m.end() - 1
        end = _match_braces(s, brace)
        if end is None:
            out.append(s[i:])
            break
        out.append(s[i : m.start()])
        out.append(s[brace + 1 : end])
        i = end + 1
    return "".join(out)


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}`` (Hendrycks)."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part or part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return s
        a, b = part[0], part[1]
        if b != "{":
            out += "{" + a + "}{" + b + "}" + part[2:]
        else:
            out += "{" + a + "}" + part[1:]
    return out


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}`` (Hendrycks)."""
    return re.sub(r"\\sqrt(?![A-Za-z{\[])(\w)", r"\\sqrt{\1}", s)


def _fix_a_slash_b(s: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` when the whole string is an integer ratio."""
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        return f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    return s


def _fix_number(s: str) -> str:
    """Canonical form of a plain decimal number: ``1,000`` -> ``1000``, ``2.50`` -> ``2.5``,
    ``3.0`` -> ``3``, ``.5`` -> ``0.5``, ``007`` -> ``7``, ``-0`` -> ``0``. Other strings
    are returned unchanged."""
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)(\d*)(?:\.(\d*))?", s)
    if not m or not (m.group(2) or m.group(3)):
        return s
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    return out if out == "0" else sign + out


def normalize_answer(s: Any) -> str:
    """Strict normalised string form of a math answer (docs/methods.md §5, strict option).

    The Hendrycks MATH ``strip_string`` normalisation plus a few common extras, in order:
    strip; drop newlines, ``\\!``, ``\\,``/``\\;``/``\\:``, ``\\displaystyle``;
    ``\\dfrac``/``\\tfrac`` -> ``\\frac``; drop ``\\left``/``\\right``, degree signs
    (``^\\circ``), dollar signs (``$``, ``\\$``) and percent signs; drop a trailing unit
    written as ``\\text{ unit}`` (leading space, Hendrycks convention), then unwrap the
    remaining ``\\text{X}``/``\\mathrm{X}``/``\\textbf{X}``/``\\mbox{X}`` to ``X``; drop a
    trailing ``.``; drop a short left-hand side (``x=3`` -> ``3``, lhs of at most two
    characters); remove all whitespace; ``\\sqrt3`` -> ``\\sqrt{3}``; ``\\frac12`` ->
    ``\\frac{1}{2}``; plain numbers canonical (``1,000`` -> ``1000``, ``2.50`` -> ``2.5``,
    ``.5`` -> ``0.5``, ``007`` -> ``7``); an integer ratio ``a/b`` -> ``\\frac{a}{b}``.
    Unlike Hendrycks, ``0.5`` is *not* rewritten to ``\\frac{1}{2}``: strict mode never
    equates decimals and fractions (use ``mode="symbolic"`` for that). Case is kept.
    """
    s = str(s).strip()
    s = s.replace("\n", "").replace("\r", "")
    s = s.replace("\\!", "")
    for sp in ("\\,", "\\;", "\\:", "\\displaystyle"):
        s = s.replace(sp, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left(?![A-Za-z])", "", s)
    s = re.sub(r"\\right(?![A-Za-z])", "", s)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    # Trailing units "\text{ cm}" (Hendrycks _remove_right_units), then plain unwrapping.
    m = re.search(r"\\(?:text|mbox)\{\s+[^{}]*\}\s*\.?\s*$", s)
    if m and m.start() > 0:
        s = s[: m.start()]
    for cmd in _TEXT_WRAPPERS:
        s = _unwrap(s, cmd)
    s = s.strip()
    s = s.rstrip(".").strip()
    # "x = 3" / "k=3" -> "3" (short lhs only, single "=").
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if len(lhs.strip()) <= 2:
            s = rhs
    s = re.sub(r"\s+", "", s)
    s = s.replace("\\ ", "")
    s = _fix_sqrt(s)
    s = _fix_fracs(s)
    s = _fix_number(s)
    s = _fix_a_slash_b(s)
    return s


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def _parse_gold(gold: str) -> list:
    from math_verify import parse

    g = gold.strip()
    if "\\boxed" in g or "\\fbox" in g or "$" in g:
        candidates = [g, f"\\boxed{{{g}}}"]
    else:
        # A bare gold like "\sqrt{8}" or "(1,2)" is not found by parse() without a wrapper.
        candidates = [f"\\boxed{{{g}}}", f"${g}$", g]
    for c in candidates:
        parsed = parse(c, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def _verify_symbolic(answer: str, gold: str) -> bool:
    """math-verify's verdict, with no time limit of its own: the wall-clock budget is
    :mod:`pipeline.tasks.bounded`'s (math-verify's signal timeouts work only in a main
    thread and still let a hostile answer run 5–16 s)."""
    from math_verify import parse
    from math_verify import verify as mv_verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = _parse_gold(gold)
        pred_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except (Exception, TimeoutException):  # math-verify's TimeoutException is a BaseException
        logger.debug("math-verify failed on answer=%r gold=%r", answer, gold, exc_info=True)
        return False


def verify(response: str, gold: str, *, mode: str = "symbolic",
           timeout_s: float | None = DEFAULT_BUDGET_S) -> bool:
    """Whether the last boxed answer of ``response`` equals ``gold`` (docs/methods.md §5).

    ``mode="symbolic"``: math-verify (``parse`` + ``verify``, gold wrapped in ``\\boxed{}``
    when bare); errors count as wrong. ``timeout_s`` is a hard wall-clock budget per answer
    (default 2 s): the check runs in a worker process (:mod:`pipeline.tasks.bounded`), and
    an answer not decided in time counts as wrong (:func:`pipeline.tasks.bounded.timeouts`
    counts them); ``None`` verifies in this process with no budget. ``mode="strict"``:
    equality of :func:`normalize_answer` strings. A response with no (balanced) box is
    wrong. Unknown ``mode`` -> ValueError.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"unknown verify mode {mode!r}; expected one of {VERIFY_MODES}")
    answer = last_boxed(response)
    if answer is None or not answer.strip():
        return False
    gold = str(gold)
    if mode == "strict":
        return normalize_answer(answer) == normalize_answer(gold)
    if timeout_s is None or timeout_s <= 0:
        return _verify_symbolic(answer, gold)
    return verify_bounded(_verify_symbolic, answer, gold, float(timeout_s))
