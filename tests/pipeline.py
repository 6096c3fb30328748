"""`meterstream up` as a child process, for end-to-end tests against the real broker."""

from __future__ import annotations

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

from tests.support import REPO, free_port, meterstream, wait_for


@dataclass
class Pipeline:
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def namespace(self) -> str:
        return self.env["METERSTREAM_NAMESPACE"]

    def post(self, body: bytes, path: str = "/v1/convex/logs") -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.env['METERSTREAM_RECEIVER_PORT']}{path}"
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def sql(self, query: str) -> str:
        return meterstream(["sql", query], self.env).stdout

    def stop(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _receiver_healthy(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def running_pipeline(kafka_bootstrap: str, workdir: Path) -> Iterator[Pipeline]:
    """A pipeline on its own namespace (topics, groups) and its own embedded ClickHouse."""
    env = {
        "METERSTREAM_KAFKA": kafka_bootstrap,
        "METERSTREAM_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "METERSTREAM_DATA_DIR": str(workdir / "ms"),
        "METERSTREAM_RECEIVER_PORT": str(free_port()),
        "METERSTREAM_WORKER_PORT": str(free_port()),
        "METERSTREAM_SINK_PORT": str(free_port()),
        "METERSTREAM_SINK_BATCH_SECONDS": "0.2",
    }
    log = workdir / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "meterstream", "up"], cwd=REPO,
                                   env={**os.environ, **env}, stdout=out,
                                   stderr=subprocess.STDOUT)
    pipeline = Pipeline(env, process, log)
    try:
        wait_for(lambda: process.poll() is not None
                 or _receiver_healthy(env["METERSTREAM_RECEIVER_PORT"]),
                 timeout=120, what="the receiver to answer /healthz")
        assert process.poll() is None, f"meterstream up exited:\n{pipeline.log_tail()}"
        yield pipeline
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"--- meterstream up log ({log}) ---\n{pipeline.log_tail(200)}")
