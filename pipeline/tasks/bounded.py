"""Math verification with a hard wall-clock budget per answer (docs/methods.md §5).

math-verify's own timeouts use ``signal.alarm``: they only work in the main thread, and a
hostile answer (``\\boxed{9^{9^{9^{9}}}}``) still took 5–16 s in sympy. Here each answer
is verified in a forked worker process; one that is not done within the budget counts as
wrong, the worker is killed and a fresh one forked (a fork costs milliseconds: the parent
has math-verify imported). :func:`timeouts` counts the answers that ran out of budget in
this process, for the jobs' metrics.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

Check = Callable[[str, str], bool]
DEFAULT_BUDGET_S = 2.0
_STARTUP_S = 60.0
_LOCK = threading.Lock()
_WORKER: _Worker | None = None
_TIMEOUTS = 0
_WARM: set[Check] = set()  # checks already run once in this process


def _serve(conn: Connection, check: Check) -> None:
    """Worker loop: ``(answer, gold)`` in, ``check(answer, gold)`` out; ``None`` stops it."""
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        answer, gold = msg
        conn.send(bool(check(answer, gold)))


class _Worker:
    def __init__(self, check: Check) -> None:
        import math_verify  # noqa: F401 - imported once in the parent, inherited by forks

        if check not in _WARM:  # what the first call loads (the LaTeX grammar, sympy's
            check("\\frac{1}{2}", "0.5")  # parsers) is loaded once here, in the parent,
            _WARM.add(check)  # so no fork pays it out of an answer's budget
        self.check = check
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, check), daemon=True,
                                name="math-verify")
        self.proc.start()
        child.close()
        if not self.conn.poll(_STARTUP_S) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError("math verification worker did not start")

    def ask(self, answer: str, gold: str, budget_s: float) -> bool | None:
        """The verdict, or None when it did not come within ``budget_s``."""
        self.conn.send((answer, gold))
        return bool(self.conn.recv()) if self.conn.poll(budget_s) else None

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def verify_bounded(check: Check, answer: str, gold: str,
                   budget_s: float = DEFAULT_BUDGET_S) -> bool:
    """``check(answer, gold)`` (math-verify's verdict: the fork inherits the function, so it
    is not pickled) within ``budget_s`` seconds of wall clock, else False (counted by
    :func:`timeouts`). Thread-safe (one worker per process, used under a lock)."""
    global _WORKER, _TIMEOUTS
    with _LOCK:
        if _WORKER is not None and _WORKER.check is not check:
            _WORKER.kill()
            _WORKER = None
        if _WORKER is None or not _WORKER.alive():
            _WORKER = _Worker(check)
        try:
            got = _WORKER.ask(answer, gold, budget_s)
        except (EOFError, OSError, BrokenPipeError):  # the worker died: count as wrong
            got = None
        if got is None:
            _WORKER.kill()
            _WORKER = None
            _TIMEOUTS += 1
            return False
        return got


def timeouts() -> int:
    """Answers that ran out of budget (or killed their worker) in this process so far."""
    return _TIMEOUTS


def shutdown() -> Any:
    """Stop the worker (it is a daemon, so it also ends with the process)."""
    global _WORKER
    with _LOCK:
        if _WORKER is not None:
            with contextlib.suppress(OSError):
                _WORKER.conn.send(None)
            _WORKER.kill()
            _WORKER = None
