"""Each kind of HTML report, loaded by a real browser (headless Chromium, driven over the DevTools
protocol through ``--remote-debugging-pipe``: no Node, no websocket). The page must render without
a console error or an exception, request nothing but itself and inline ``data:`` images, and give
a non-blank screenshot of the window's size, at desktop and at phone width.

Set ``TP_SCREENSHOTS=DIR`` to keep the screenshots (``docs/html-report.md`` says how the README's
were made). Skipped only where Chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from test_html_report import hand_finding, hand_report, write_history  # noqa: E402

from training_profiler.formats.html import (  # noqa: E402
    audit_to_html, compare_to_html, diff_to_html, monitor_to_html, plan_to_html,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")


class Chromium:
    """Headless Chromium speaking the DevTools protocol on fds 3 (commands in) and 4 (replies out),
    messages separated by NUL bytes."""

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="tp-chromium-")

        def high(fd: int) -> int:  # our ends above 9, so the child's dup2 onto 3 and 4 clobbers none
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return moved

        to_chrome, self._write = map(high, os.pipe())
        self._read, from_chrome = map(high, os.pipe())

        def child_fds() -> None:
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=child_fds)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next(deadline))

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def render(self, url: str, width: int, height: int) -> tuple[bytes, list[str], list[str]]:
        """(PNG screenshot, console errors and exceptions, every URL requested) of ``url``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.events.clear()
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.send(method, session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        errors, requests = [], []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(json.dumps(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                requests.append(params["request"]["url"])
        self.send("Target.closeTarget", {"targetId": target})
        return png, errors, requests

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def chromium():
    browser = Chromium(CHROMIUM)
    yield browser
    browser.close()


def _pages(tmp: Path) -> dict[str, str]:
    from training_profiler.fx_audit.review import diff_reports
    from training_profiler.runtime.report import read_history

    base = hand_report("Net", findings=[hand_finding()])
    head = hand_report("Net", fc_params=500_000, grads=2 * 2**20)
    ranks = [{"params": 4 * 2**30, "grads": 4 * 2**30, "optimizer_state": 8 * 2**30, "communication": 2**30}] * 2
    return {
        "audit": audit_to_html(base),
        "compare": compare_to_html([base, hand_report("Wide", fc_params=4_000_000)]),
        "diff": diff_to_html(diff_reports(base, head)),
        "plan": plan_to_html("plan", {"ddp": ranks}, budget=16 * 2**30, max_micro_batch={"ddp": 4}),
        "monitor": monitor_to_html(read_history(write_history(tmp / "run.jsonl"))),
    }


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_chromium_reports_a_broken_page(chromium, tmp_path):
    """The checks below can fail: a script error, a console error and an outside load are all seen."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><p>x</p><script>console.error("boom"); missing();</script>'
                    '<img src="https://example.invalid/x.png">')
    _, errors, requests = chromium.render(page.as_uri(), 400, 300)
    assert any("boom" in e for e in errors) and any("missing is not defined" in e for e in errors)
    assert "https://example.invalid/x.png" in requests


@pytest.mark.parametrize("width, height", [(1100, 1400), (400, 900)])
def test_every_report_kind_renders_in_chromium(chromium, tmp_path, width, height):
    from PIL import Image

    keep = os.environ.get("TP_SCREENSHOTS")
    for kind, text in _pages(tmp_path).items():
        page = tmp_path / f"{kind}.html"
        page.write_text(text, encoding="utf-8")
        png, errors, requests = chromium.render(page.as_uri(), width, height)
        assert errors == [], f"{kind}: {errors}"
        assert [r for r in requests if r != page.as_uri() and not r.startswith("data:")] == [], kind
        assert _png_size(png) == (width, height), kind
        image = Image.open(io.BytesIO(png)).convert("RGB")
        colors = image.getcolors(maxcolors=1 << 20)
        assert len(colors) > 50, f"{kind}: the screenshot is nearly blank ({len(colors)} colors)"
        # charts drawn: a good share of the window is neither the background nor a section's white
        busy = sum(n for n, c in colors if c not in ((255, 255, 255), (245, 246, 248)))
        assert busy > 0.05 * width * height, f"{kind}: only {busy} pixels drawn"
        (tmp_path / f"{kind}-{width}.png").write_bytes(png)
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"{kind}-{width}.png").write_bytes(png)
