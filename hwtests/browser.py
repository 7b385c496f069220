"""Headless Chromium over the DevTools protocol (CDP), for tests and screenshots.

Chromium is started with `--remote-debugging-pipe`: it reads CDP commands from
fd 3 and writes replies and events to fd 4, each message NUL-terminated JSON.
No port, no websocket library. `check_page()` loads a page, records every
request, failed request, console error and uncaught exception, and can take a
full-page PNG screenshot.

    python -m hwtests.browser reports/x.html --screenshot x.png [--width 1200]

exits 1 when the page had a failed request, a console error or an exception.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0", "--remote-debugging-pipe",
]


class BrowserError(Exception):
    pass


def find_chromium() -> str | None:
    env = os.environ.get("HWTESTS_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class PageCheck:
    url: str
    requests: list[str] = field(default_factory=list)          # every URL the page requested
    failed: list[str] = field(default_factory=list)            # "URL: error text"
    console_errors: list[str] = field(default_factory=list)    # console.error / Log errors
    exceptions: list[str] = field(default_factory=list)        # uncaught JS exceptions
    title: str = ""
    width: int = 0                                             # layout size of the page (CSS px)
    height: int = 0
    scroll_width: int = 0                                      # document width; > width means horizontal scroll
    values: dict = field(default_factory=dict)                 # name -> result of the caller's expressions
    screenshot: bytes | None = None
    stderr: str = ""

    @property
    def problems(self) -> list[str]:
        return ([f"failed request: {f}" for f in self.failed] + [f"console error: {e}" for e in self.console_errors]
                + [f"exception: {e}" for e in self.exceptions])


class _Pipe:
    """One CDP connection over Chromium's fd 3/4 pipe."""

    def __init__(self, proc: subprocess.Popen, to_fd: int, from_fd: int):
        self.proc, self.to_fd, self.from_fd = proc, to_fd, from_fd
        self.q: queue.Queue = queue.Queue()
        self.next_id = 0
        self.events: list[dict] = []
        self.t = threading.Thread(target=self._reader, daemon=True)
        self.t.start()

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.from_fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.q.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                try:
                    self.q.put(json.loads(msg))
                except ValueError:
                    pass

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self.next_id += 1
        mid = self.next_id
        msg: dict = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._get(deadline, method)
            if m.get("id") == mid:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error'].get('message')}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, name: str, timeout: float) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == name:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._get(deadline, name)
            if m.get("method") == name:
                self.events.append(m)      # keep it for the collectors too
                return m
            self.events.append(m)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                m = self.q.get(timeout=left)
            except queue.Empty:
                return
            if m is None:
                return
            self.events.append(m)

    def _get(self, deadline: float, what: str) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrowserError(f"timeout waiting for {what}")
        try:
            m = self.q.get(timeout=left)
        except queue.Empty:
            raise BrowserError(f"timeout waiting for {what}") from None
        if m is None:
            raise BrowserError(f"chromium exited (status {self.proc.poll()}) while waiting for {what}")
        return m


def _launch(exe: str, profile: str, width: int, height: int) -> tuple[subprocess.Popen, int, int]:
    to_r, to_w = os.pipe()       # we write commands to to_w; chromium reads fd 3
    from_r, from_w = os.pipe()   # chromium writes fd 4; we read from_r

    def child():
        # move both ends out of the way first, so dup2 to 3/4 cannot clobber one another
        a = os.dup(to_r)
        b = os.dup(from_w)
        os.dup2(a, 3)
        os.dup2(b, 4)
        for fd in (a, b):
            if fd not in (3, 4):
                os.close(fd)

    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=child, close_fds=False, start_new_session=True)
    os.close(to_r)
    os.close(from_w)
    return proc, to_w, from_r


def check_page(target: str | Path, screenshot: Path | None = None, width: int = 1200, height: int = 900,
               full_page: bool = True, timeout: float = 60, exe: str | None = None,
               expressions: dict[str, str] | None = None) -> PageCheck:
    """Load `target` (a file path or URL) in headless Chromium; report requests, errors, screenshot.

    `expressions` (name -> JavaScript expression with a JSON value) are evaluated in the loaded
    page, into `values`: layout checks measure what the browser laid out, not what the HTML says."""
    exe = exe or find_chromium()
    if not exe:
        raise BrowserError("no Chromium found (Debian: apt-get install chromium)")
    url = target if isinstance(target, str) and "://" in target else Path(target).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="hwtests-chromium-")
    proc, to_w, from_r = _launch(exe, profile, width, height)
    err_chunks: list[bytes] = []
    et = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    et.start()
    res = PageCheck(url=url)
    try:
        cdp = _Pipe(proc, to_w, from_r)
        targets = cdp.send("Target.getTargets", timeout=timeout)["targetInfos"]
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            page = {"targetId": cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]}
        sid = cdp.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for dom in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{dom}.enable", session=sid)
        cdp.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=sid)
        nav = cdp.send("Page.navigate", {"url": url}, session=sid, timeout=timeout)
        if nav.get("errorText"):
            res.failed.append(f"{url}: {nav['errorText']}")
        cdp.wait_event("Page.loadEventFired", timeout)
        cdp.drain(0.5)
        ev = cdp.send("Runtime.evaluate", {"expression": "JSON.stringify([document.title, "
                                           "document.documentElement.scrollWidth])", "returnByValue": True},
                      session=sid)
        title, sw = json.loads(ev["result"]["value"])
        res.title, res.scroll_width = title, int(sw)
        for name, expr in (expressions or {}).items():
            ev = cdp.send("Runtime.evaluate", {"expression": f"JSON.stringify({expr})", "returnByValue": True},
                          session=sid)
            if "exceptionDetails" in ev:
                res.exceptions.append(f"{name}: {ev['exceptionDetails'].get('text', 'exception')}")
                continue
            res.values[name] = json.loads(ev["result"]["value"]) if "value" in ev["result"] else None
        lm = cdp.send("Page.getLayoutMetrics", session=sid)
        size = lm.get("cssContentSize") or lm.get("contentSize")
        res.width, res.height = int(size["width"]), int(size["height"])
        if screenshot is not None:
            params: dict = {"format": "png"}
            if full_page:
                params.update(captureBeyondViewport=True,
                              clip={"x": 0, "y": 0, "width": width, "height": min(res.height, 16000), "scale": 1})
            shot = cdp.send("Page.captureScreenshot", params, session=sid, timeout=timeout)
            res.screenshot = base64.b64decode(shot["data"])
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(res.screenshot)
        cdp.drain(0.2)
        _collect(cdp.events, res)
        try:
            cdp.send("Browser.close", timeout=5)
        except BrowserError:
            pass
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for fd in (to_w, from_r):
            try:
                os.close(fd)
            except OSError:
                pass
        et.join(timeout=5)
        shutil.rmtree(profile, ignore_errors=True)
    res.stderr = b"".join(err_chunks).decode(errors="replace")
    return res


def _collect(events: list[dict], res: PageCheck) -> None:
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Network.requestWillBeSent":
            res.requests.append(p.get("request", {}).get("url", ""))
        elif m == "Network.loadingFailed":
            if not p.get("canceled"):
                res.failed.append(f"{p.get('requestId')}: {p.get('errorText')} {p.get('blockedReason') or ''}".strip())
        elif m == "Network.responseReceived":
            st = p.get("response", {}).get("status", 0)
            if st and int(st) >= 400:
                res.failed.append(f"{p['response'].get('url')}: HTTP {st}")
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            res.exceptions.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            res.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Log.entryAdded":
            ent = p.get("entry", {})
            if ent.get("level") == "error":
                res.console_errors.append(f"{ent.get('source')}: {ent.get('text')} {ent.get('url', '')}".strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hwtests.browser",
                                 description="Load a page in headless Chromium; list failed requests and console "
                                 "errors; optionally save a full-page screenshot.")
    ap.add_argument("page", help="HTML file or URL")
    ap.add_argument("--screenshot", metavar="PNG")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--viewport-only", action="store_true", help="screenshot the viewport, not the whole page")
    a = ap.parse_args(argv)
    try:
        r = check_page(a.page, Path(a.screenshot) if a.screenshot else None, a.width, a.height,
                       full_page=not a.viewport_only)
    except BrowserError as exc:
        print(f"browser: {exc}", file=sys.stderr)
        return 4
    print(f"{r.url}: title {r.title!r}, {r.width}x{r.height} CSS px (document width {r.scroll_width}), "
          f"{len(r.requests)} request(s)")
    for p in r.problems:
        print(p)
    if a.screenshot:
        print(f"screenshot: {a.screenshot}")
    return 1 if r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
