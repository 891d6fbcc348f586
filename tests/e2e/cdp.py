"""A small headless-Chromium driver over the Chrome DevTools protocol (a WebSocket), so the console
test needs only Debian's ``chromium`` and the ``websockets`` package already installed with
uvicorn: no browser download, no driver binary."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect


def find_chromium() -> str | None:
    """Debian's chromium on PATH, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(Exception):
    """The browser refused a command or a page script threw."""


class Browser:
    """One headless Chromium with one page, driven over CDP."""

    def __init__(self, executable: str, profile_dir: Path, *, width: int = 1600, height: int = 1000) -> None:
        self._proc = subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",  # we run as root in CI; the page is our own console
                "--disable-gpu",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--autoplay-policy=no-user-gesture-required",
                f"--window-size={width},{height}",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile_dir}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 30.0
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise CdpError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5.0) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        self._ws: ClientConnection = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one CDP command and return its result (events in between are skipped)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=30.0))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0, poll_s: float = 0.02) -> Any:
        """Poll until the expression is truthy; its value. CdpError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"timed out after {timeout_s} s waiting for {expression!r}")
            time.sleep(poll_s)

    def goto(self, url: str) -> None:
        """Open a page and wait until it has loaded."""
        self.send("Page.navigate", url=url)
        time.sleep(0.05)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e || e.disabled) return null; e.scrollIntoView({block: 'nearest'});"
            " const r = e.getBoundingClientRect();"
            " return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()"
        )
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Focus a field and type into it."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def press(self, key: str, key_code: int | None = None) -> None:
        """Press and release one key (e.g. "a"); ``key_code`` is the key's virtual key code for
        pages that read ``keyCode`` (Leaflet: 37 for ArrowLeft, 187 for "+")."""
        names = ("windowsVirtualKeyCode", "nativeVirtualKeyCode")
        codes = {} if key_code is None else dict.fromkeys(names, key_code)
        text = {"text": key} if len(key) == 1 else {}
        self.send("Input.dispatchKeyEvent", type="keyDown", key=key, **text, **codes)
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key, **codes)

    def viewport(self, width: int, height: int) -> None:
        """Make the page exactly ``width`` x ``height`` CSS pixels (screenshots of a known size)."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def screenshot(self, path: Path) -> None:
        """Save the page as a PNG."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """Close the connection and end the browser we started."""
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
