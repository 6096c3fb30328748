"""`meterstream up` (or one service) as a child process, for tests against the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meterstream.core.signature import HEADER, sign
from tests.support import (
    REPO,
    free_port,
    meterstream,
    receiver_ready,
    stop_process,
    wait_for,
)

ADMIN_TOKEN = "test-admin-token-0123456789"
READ_TOKEN = "test-read-token-0123456789"


def worker_page(port: int | str, path: str, token: str | None = READ_TOKEN,
                timeout: float = 10) -> bytes:
    """The body of GET `path` on the worker's web server at `port`, with `token` as bearer
    (None: without one); raises urllib.error.HTTPError (an OSError) on a non-2xx answer."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body: bytes = answer.read()
        return body


@dataclass
class Pipeline:
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def namespace(self) -> str:
        return self.env["METERSTREAM_NAMESPACE"]

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                port_variable: str = "METERSTREAM_RECEIVER_PORT") -> tuple[int, bytes]:
        """A request to the public port (or to the port of `port_variable`)."""
        url = f"http://127.0.0.1:{self.env[port_variable]}{path}"
        request = urllib.request.Request(url, data=body, method=method, headers={
            "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post(self, body: bytes, secret: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """A Convex webhook POST, signed with `secret` when given."""
        signed = {HEADER: sign(body, secret)} if secret else {}
        return self.request("POST", "/v1/convex/logs", body, {**signed, **(headers or {})})

    def admin(self, method: str, path: str, body: dict | None = None,
              token: str = ADMIN_TOKEN) -> tuple[int, dict]:
        """A request to the admin API, on its own port."""
        status, answer = self.request(method, path,
                                      None if body is None else json.dumps(body).encode(),
                                      {"Authorization": f"Bearer {token}"},
                                      port_variable="METERSTREAM_ADMIN_PORT")
        return status, json.loads(answer or b"null")

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.env['METERSTREAM_ADMIN_PORT']}"

    def register(self, name: str, **fields: object) -> dict:
        """PUTs the deployment's record. One registered without a webhook secret is opted in
        to unsigned bodies (as the tests' unsigned posts need) unless `allow_unsigned` is
        given."""
        if "webhook_secret" not in fields:
            fields.setdefault("allow_unsigned", True)
        status, answer = self.admin("PUT", f"/v1/deployments/{name}", dict(fields))
        assert status == 200, answer
        return answer

    def sql(self, query: str) -> str:
        return meterstream(["sql", query], self.env).stdout

    def stop(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_pipeline(kafka_bootstrap: str, workdir: Path, command: str = "up",
                     extra_env: dict[str, str] | None = None) -> Iterator[Pipeline]:
    """A pipeline on its own namespace (topics, groups) and its own embedded ClickHouse."""
    env = {
        "METERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
        "METERSTREAM_READ_TOKEN": READ_TOKEN,
        "METERSTREAM_KAFKA": kafka_bootstrap,
        "METERSTREAM_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "METERSTREAM_DATA_DIR": str(workdir / "ms"),
        "METERSTREAM_RECEIVER_PORT": str(free_port()),
        "METERSTREAM_ADMIN_PORT": str(free_port()),
        "METERSTREAM_WORKER_PORT": str(free_port()),
        "METERSTREAM_SINK_PORT": str(free_port()),
        "METERSTREAM_CONSOLE_PORT": str(free_port()),
        "METERSTREAM_SINK_BATCH_SECONDS": "0.2",
        **(extra_env or {}),
    }
    log = workdir / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "meterstream", *command.split()],
                                   cwd=REPO,
                                   env={**os.environ, **env}, stdout=out,
                                   stderr=subprocess.STDOUT)
    pipeline = Pipeline(env, process, log)
    try:
        wait_for(lambda: process.poll() is not None
                 or receiver_ready(f"http://127.0.0.1:{env['METERSTREAM_RECEIVER_PORT']}"),
                 timeout=120, what="the receiver to answer /readyz")
        assert process.poll() is None, f"meterstream up exited:\n{pipeline.log_tail()}"
        yield pipeline
    finally:
        stop_process(process)
        print(f"--- meterstream {command} log ({log}) ---\n{pipeline.log_tail(200)}")
