"""Other real local peers: an EC2 instance metadata service (IMDSv2) and tinyproxy."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from tests.localaws import free_port

ROLE = "osquery-host-role"


class ImdsV2:
    """IMDSv2 as botocore uses it: PUT a token, then read the role's credentials with it.

    Requests without a valid token are refused (401), so only the v2 flow gets credentials,
    unless `serve_v1` (an instance whose metadata options still allow IMDSv1). `token_status`
    makes every token request fail with that status (a hop limit too low, IMDSv2 turned off by
    a proxy in between, ...). Every request is counted by kind: `token_requests` (PUT
    /latest/api/token), `v1_requests` (any GET without a token header) and `v2_requests`.
    """

    def __init__(self, access_key: str = "ASIAIMDSEXAMPLE", secret_key: str = "imds-secret",
                 token: str = "imds-session-token", *, token_status: int | None = None,
                 serve_v1: bool = False) -> None:
        self.access_key, self.secret_key, self.token = access_key, secret_key, token
        self.token_status = token_status
        self.serve_v1 = serve_v1
        self.requests: list[tuple[str, str]] = []
        self.token_times: list[float] = []
        self.v1_requests = 0
        self.v2_requests = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                with lock:
                    owner.requests.append(("PUT", self.path))
                    if self.path == "/latest/api/token":
                        owner.token_times.append(time.monotonic())
                if self.path != "/latest/api/token":
                    self._answer(404, "")
                elif owner.token_status is not None:
                    self._answer(owner.token_status, "")
                else:
                    self._answer(200, "imds-token-1")

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token")
                with lock:
                    owner.requests.append(("GET", self.path))
                    if token is None:
                        owner.v1_requests += 1
                    else:
                        owner.v2_requests += 1
                if token != "imds-token-1" and not (token is None and owner.serve_v1):
                    self._answer(401, "")
                    return
                base = "/latest/meta-data/iam/security-credentials/"
                if self.path == base:
                    self._answer(200, ROLE)
                elif self.path == base + ROLE:
                    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=6)
                    self._answer(200, json.dumps({
                        "Code": "Success", "Type": "AWS-HMAC",
                        "AccessKeyId": owner.access_key, "SecretAccessKey": owner.secret_key,
                        "Token": owner.token, "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "LastUpdated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }))
                else:
                    self._answer(404, "")

            def _answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def token_requests(self) -> int:
        return len(self.token_times)

    def __enter__(self) -> ImdsV2:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class TinyProxy:
    """Debian's tinyproxy as a real forward proxy with BasicAuth, its log kept for the test."""

    def __init__(self, user: str, password: str) -> None:
        binary = shutil.which("tinyproxy")
        if binary is None:
            raise RuntimeError("tinyproxy is not installed (make test installs Debian's "
                               "tinyproxy-bin; apt-get install tinyproxy-bin)")
        self.binary = binary
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="tinyproxy"))
        self.log_path = self.directory / "tinyproxy.log"
        self.pid_path = self.directory / "tinyproxy.pid"
        config = self.directory / "tinyproxy.conf"
        config.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{self.log_path}\"\n"
            f"PidFile \"{self.pid_path}\"\nLogLevel Info\nMaxClients 20\n"
            f"Allow 127.0.0.1\nBasicAuth {user} {password}\nDisableViaHeader Yes\n")
        self._proc: subprocess.Popen[bytes] | None = None
        self._config = config

    def __enter__(self) -> TinyProxy:
        # -d keeps it in the foreground, so the pid we hold is the proxy's own.
        self._proc = subprocess.Popen([self.binary, "-d", "-c", str(self._config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while "Accepting connections" not in self.log_text():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError(f"tinyproxy did not start: {self.log_text()}")
            time.sleep(0.05)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connect_targets(self) -> list[str]:
        """Every host:port a client asked to CONNECT to (HTTPS through the proxy), in order.

        tinyproxy logs the request line before it resolves or reaches the target, so the list
        holds what was asked for even where the target cannot be reached (no internet here)."""
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP", self.log_text())

    def requests(self) -> list[str]:
        """Every request line tinyproxy took: "CONNECT host:443", "POST http://..."."""
        return [f"{method} {target}" for method, target in re.findall(
            r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP", self.log_text())]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)
