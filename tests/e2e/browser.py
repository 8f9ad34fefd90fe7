"""Drive the real MLflow UI in headless Chromium, with the standard library only.

- ``MlflowServer``: ``mlflow server`` on 127.0.0.1 and a free port, one worker, telemetry off; stopped by its
  process group id.
- ``Chromium``: Debian's ``/usr/bin/chromium`` in headless mode with the flags this closed network needs,
  driven through the DevTools protocol (a tiny websocket client below: no extra Python dependency).
  ``open`` loads a URL with localStorage flags set before the page's own scripts run, ``wait_for`` polls a
  JavaScript expression until it is truthy, ``screenshot`` writes a PNG.

Used by tests/e2e/test_mlflow_ui.py and tools/screenshots.py.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
    "--mute-audio", "--hide-scrollbars", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]
# Environment of the processes these helpers start: MLflow and Chromium must not phone home.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# No background job runner (GenAI jobs; its huey consumers triple the server's start-up time on 2 cores).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

# MLflow 3.17's UI opens its "MLflow Assistant" side panel on a browser's first visit
# (localStorage key "mlflow.assistant.fab.autoOpenedOnFirstLoad", version 1 -> "<key>_v1", JSON value):
# mark it as already done, and the panel as closed, before the app starts.
MLFLOW_UI_STORAGE = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
}


class BrowserError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str | None:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    return shutil.which("chromium")


def _kill_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it spawned (its group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # children may outlive the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


# --- the MLflow server --------------------------------------------------------------------------------

class MlflowServer:
    """``mlflow server`` over a SQLite file; ``url`` is ``http://127.0.0.1:<port>``. A context manager."""

    def __init__(self, db: str | Path, port: int | None = None, artifacts: str | Path | None = None,
                 log: str | Path | None = None, timeout: float = 180.0):
        self.db = Path(db).resolve()
        if not self.db.is_file():
            raise BrowserError(f"no MLflow database at {self.db}")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = Path(artifacts).resolve() if artifacts else self.db.parent / "mlartifacts"
        self._own_log = log is None  # a temporary log is removed by stop()
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")[1])
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
               "--default-artifact-root", self.artifacts.as_uri(), "--artifacts-destination", self.artifacts.as_uri(),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.db.parent, env={**os.environ, **QUIET_ENV, **SERVER_ENV},
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, self.log_tail()
                self.stop()
                raise BrowserError(f"mlflow server exited with {code}; its log ends:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise BrowserError(f"mlflow server not healthy after {self.timeout:.0f}s; its log ends:\n{tail}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None
        if self._own_log:
            self.log.unlink(missing_ok=True)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- a minimal websocket client (RFC 6455: client frames masked, text only) ------------------------------

class _WebSocket:
    def __init__(self, url: str, timeout: float = 30.0):
        assert url.startswith("ws://"), url
        hostport, _, path = url[len("ws://"):].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port or 80)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BrowserError("websocket: connection closed during handshake")
            head += chunk
        head, _, self._buf = head.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise BrowserError(f"websocket: handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise BrowserError("websocket: connection closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise BrowserError("websocket: closed by the browser")
            if opcode == 0x9:
                self._send_frame(0xA, data)
                continue
            if opcode == 0xA:
                continue
            parts.append(data)
            if fin:
                return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


# --- Chromium over the DevTools protocol ---------------------------------------------------------------

class Chromium:
    """A headless Chromium with one page. A context manager; ``close`` ends it by its process group."""

    def __init__(self, width: int = 1400, height: int = 900, executable: str | None = None,
                 timeout: float = 60.0):
        self.executable = executable or chromium_path()
        if not self.executable:
            raise BrowserError(f"chromium not found ({CHROMIUM}); install it with .ci/install-browser")
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix="hyporay-chromium-")
        self.proc: subprocess.Popen | None = None
        self.ws: _WebSocket | None = None
        self._id = 0
        self._scripts: set[str] = set()

    def start(self) -> Chromium:
        cmd = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
               f"--window-size={self.width},{self.height}", "about:blank"]
        self._log = open(Path(self.profile) / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **QUIET_ENV}, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BrowserError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        page = None
        while page is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                page = next((t for t in json.load(r) if t.get("type") == "page"), None)
            if page is None:
                if time.monotonic() > deadline:
                    self.close()
                    raise BrowserError("chromium has no page target")
                time.sleep(0.1)
        self.ws = _WebSocket(page["webSocketDebuggerUrl"], timeout=self.timeout)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def call(self, method: str, **params) -> dict:
        """One DevTools command; returns its result (events in between are skipped)."""
        if self.ws is None:
            raise BrowserError("chromium is not started")
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"javascript error in {expression[:80]!r}: "
                               f"{res['exceptionDetails'].get('exception', {}).get('description', res['exceptionDetails'])}")
        return res.get("result", {}).get("value")

    def open(self, url: str, local_storage: dict[str, str] | None = None) -> None:
        """Navigate to ``url``; ``local_storage`` items are set for the page's origin before its scripts run."""
        if local_storage:
            script = ";".join(f"try{{localStorage.setItem({json.dumps(k)},{json.dumps(v)})}}catch(e){{}}"
                              for k, v in local_storage.items())
            if script not in self._scripts:
                self.call("Page.addScriptToEvaluateOnNewDocument", source=script)
                self._scripts.add(script)
        # via about:blank: a URL that differs from the current one only after '#' would otherwise be a
        # same-document navigation, and the single-page app would keep its state
        self.call("Page.navigate", url="about:blank")
        self.wait_for("location.href === 'about:blank' && document.readyState === 'complete'", timeout=10,
                      interval=0.05, what="about:blank")
        res = self.call("Page.navigate", url=url)
        if res.get("errorText"):
            raise BrowserError(f"cannot open {url}: {res['errorText']}")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.5,
                 what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = self.evaluate(expression)
            except BrowserError as exc:  # page in the middle of navigating
                last = str(exc)
            else:
                if last:
                    return last
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for {what or expression!r} "
                                   f"(last value {last!r}); page text: {self.text()[:600]!r}")
            time.sleep(interval)

    def text(self) -> str:
        try:
            return self.evaluate("document.body ? document.body.innerText : ''") or ""
        except BrowserError:
            return ""

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None
            self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
