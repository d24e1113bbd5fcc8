"""A headless chromium driven over the DevTools protocol (CDP), standard library only.

The browser talks CDP over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, messages
NUL-terminated JSON), so no websocket client and no driver binary are needed::

    with Browser(find_chromium()) as b:
        b.goto("http://127.0.0.1:5000/#/experiments/1")
        b.wait_for("document.querySelectorAll('svg').length > 0", timeout=60)
        b.screenshot("page.png")

``wait_for`` polls a JavaScript expression until it is truthy (or returns an object with
``ok`` true) and returns its last value, so a check can both wait for a page to render and
report what it found.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless chromium with one page (``width`` x ``height`` CSS pixels)."""

    def __init__(self, chromium: str, *, width: int = 1600, height: int = 1000,
                 timeout: float = 60) -> None:
        self.chromium, self.width, self.height, self.timeout = chromium, width, height, timeout
        self._id = 0
        self._buf = b""
        self.session: str | None = None

    # ----------------------------------------------------------------- process
    def __enter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-cdp-")
        to_child, self._out = os.pipe()  # we write commands; chromium reads fd 3
        self._in, from_child = os.pipe()  # chromium writes fd 4; we read
        # fds >= 10 so the shell's `3<&N 4>&M` cannot overwrite one with the other
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--mute-audio", "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        script = f'exec 3<&{hi[0]} 4>&{hi[1]} {hi[0]}<&- {hi[1]}>&-; exec "$@"'
        try:
            self.proc = subprocess.Popen(
                ["bash", "-c", script, "chromium-cdp", self.chromium, *args],
                pass_fds=hi, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            for fd in hi:
                os.close(fd)
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target,
                                     flatten=True)["sessionId"]
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.width,
                      height=self.height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session = None
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, 9)  # renderer / zygote children left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._profile.cleanup()

    # ----------------------------------------------------------------- protocol
    def call(self, method: str, timeout: float | None = None, **params: Any) -> dict:
        """Send one command (to the page's session once attached); return its result."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data):]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._id:  # anything else is an event
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})

    def _read(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"chromium did not answer {method} in time")
            ready, _, _ = select.select([self._in], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise CDPError(f"chromium exited (code {self.proc.poll()}) during {method}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    # ----------------------------------------------------------------- page
    def goto(self, url: str) -> None:
        res = self.call("Page.navigate", url=url)
        if res.get("errorText"):
            raise CDPError(f"could not open {url}: {res['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            detail = res["exceptionDetails"]
            text = detail.get("exception", {}).get("description") or detail.get("text")
            raise CDPError(f"JavaScript error: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.5) -> Any:
        """Poll ``expression`` until it is truthy (an object: until its ``ok`` is truthy);
        return the last value, truthy or not, when ``timeout`` seconds have passed. A
        JavaScript error (the page not there yet) counts as ``{"ok": False, "error": …}``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except CDPError as exc:
                if not str(exc).startswith("JavaScript error") and "context" not in str(exc):
                    raise
                value = {"ok": False, "error": str(exc).splitlines()[0]}
            ok = value.get("ok") if isinstance(value, dict) else value
            if ok or time.monotonic() > deadline:
                return value
            time.sleep(interval)

    def screenshot(self, out: str | Path) -> Path:
        """PNG of the viewport."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out
