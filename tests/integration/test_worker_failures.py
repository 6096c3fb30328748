"""The worker's live usage and its alerts stay exact when a worker is killed or stopped
mid-load: on the real broker, with a receiver and one or two `meterstream worker`
processes."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from pathlib import Path

import orjson

from tests.support import free_port, read_topic, wait_for
from tests.support.load import Load, function_load
from tests.support.pipeline import Pipeline, running_pipeline, worker_page
from tests.support.workers import (
    minute_ago,
    quota_alert_ids,
    raw_batches,
    runaway_alert_id,
    start_worker,
    worker_processes,
)

SECRET = "3f1c2b7e9a0d4c5e8b6a7f0e1d2c3b4a"
CHECKED = ("function_calls", "database_io_bytes", "data_egress_bytes", "file_downloads")


def _get(port: int, path: str) -> dict | None:
    try:
        return json.loads(worker_page(port, path))
    except OSError:
        return None


def _usage(port: int, deployment: str, at_ms: int) -> dict[str, int] | None:
    report = _get(port, f"/v1/quota/{deployment}?at={at_ms}")
    if report is None or "periods" not in report:
        return None
    month = report["periods"]["month"]["usage"]
    return {"action_compute_mb_ms": month["action_compute_mb_ms"],
            **{metric: month[metric] for metric in CHECKED}}


def _wait_usage(port: int, deployment: str, at_ms: int, expected: dict[str, int],
                what: str) -> None:
    try:
        wait_for(lambda: _usage(port, deployment, at_ms) == expected, timeout=120, what=what)
    except AssertionError:
        assert (raw_batches(port), _usage(port, deployment, at_ms)) == (None, expected)
        raise


def _expected(load: Load) -> dict[str, int]:
    return {"action_compute_mb_ms": load.totals["action_compute_mb_ms"],
            **{metric: load.totals[metric] for metric in CHECKED}}


def _send(receiver: Pipeline, bodies: list[bytes], statuses: list[int]) -> threading.Thread:
    def run() -> None:
        for body in bodies:
            statuses.append(receiver.post(body, SECRET)[0])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _alert_ids(kafka_bootstrap: str, namespace: str) -> list[str]:
    return [orjson.loads(m.value)["id"]
            for m in read_topic(kafka_bootstrap, f"{namespace}.alerts")]


def test_kill_9_of_the_worker_mid_load_counts_every_event_and_alert_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    at_ms = minute_ago()
    deployment = "crashy-otter-1"
    load = function_load(deployment, bodies=120, events_per_body=50, at_ms=at_ms)
    calls = load.totals["function_calls"]
    # No commit before the kill: the restarted worker processes everything again.
    env = {"METERSTREAM_WORKER_COMMIT_INTERVAL": "600"}
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver",
                          extra_env=env) as receiver, worker_processes() as workers:
        receiver.register(deployment, webhook_secret=SECRET)
        status, _ = receiver.admin("PUT", f"/v1/deployments/{deployment}/quotas", {"quotas": [
            {"metric": "function_calls", "period": "month", "limit": calls // 2,
             "thresholds": [0.5, 1.0], "hard": True},
            {"metric": "database_io_bytes", "period": "day", "limit": 10 ** 15}]})
        assert status == 200
        port = free_port()
        workers.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        statuses: list[int] = []
        sender = _send(receiver, load.bodies, statuses)
        wait_for(lambda: raw_batches(port) >= 40, timeout=120, what="40 bodies processed")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(30)
        port = free_port()
        workers.append(start_worker(receiver.env, tmp_path / "worker.log", port))
        sender.join(300)
        assert statuses == [200] * len(load.bodies)

        expected = _expected(load)
        _wait_usage(port, deployment, at_ms, expected, f"usage {expected}")
        # The restarted worker processed again what the killed one had done. A message is
        # counted when it is acked, once its records are stored: a moment after the live
        # usage shows it.
        wait_for(lambda: raw_batches(port) >= len(load.bodies), timeout=60,
                 what="every body acked")
        assert raw_batches(port) == len(load.bodies)
        ids = _alert_ids(kafka_bootstrap, receiver.namespace)
        assert sorted(ids) == sorted([
            *quota_alert_ids(deployment, at_ms, "function_calls", "month", (0.5, 1.0)),
            runaway_alert_id(deployment, at_ms)])
        report = _get(port, f"/v1/quota/{deployment}?at={at_ms}")
        assert report is not None
        assert report["hard_limit_exceeded"] is True


def test_partitions_move_between_two_workers_with_exact_totals(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    at_ms = minute_ago()
    deployments = [f"shared-otter-{n}" for n in range(6)]
    loads = {d: function_load(d, bodies=30, events_per_body=40, at_ms=at_ms)
             for d in deployments}
    thirds = [[body for d in deployments for body in loads[d].bodies[i::3]] for i in range(3)]
    with running_pipeline(kafka_bootstrap, tmp_path, command="receiver") as receiver, \
            worker_processes() as workers:
        for deployment in deployments:
            receiver.register(deployment, webhook_secret=SECRET)
            receiver.admin("PUT", f"/v1/deployments/{deployment}/quotas", {"quotas": [
                {"metric": "file_downloads", "period": "month",
                 "limit": loads[deployment].totals["file_downloads"], "thresholds": [1.0]}]})
        ports = [free_port(), free_port()]
        workers.append(start_worker(receiver.env, tmp_path / "a.log", ports[0]))
        statuses: list[int] = []
        _send(receiver, thirds[0], statuses).join(300)
        workers.append(start_worker(receiver.env, tmp_path / "b.log", ports[1]))
        _send(receiver, thirds[1], statuses).join(300)

        # Both workers answer for every deployment: the one that does not own it forwards.
        expected_two_thirds = {}
        for deployment in deployments:
            part = Load()
            for body in loads[deployment].bodies[0::3] + loads[deployment].bodies[1::3]:
                part.add_body(orjson.loads(body))
            expected_two_thirds[deployment] = _expected(part)
        for deployment in deployments:
            _wait_usage(ports[1], deployment, at_ms, expected_two_thirds[deployment],
                        f"two thirds of {deployment} counted")
            assert _usage(ports[0], deployment, at_ms) == expected_two_thirds[deployment]

        workers[0].send_signal(signal.SIGTERM)  # its partitions move to the other worker
        assert workers[0].wait(60) == 0
        _send(receiver, thirds[2], statuses).join(300)
        assert statuses == [200] * sum(len(third) for third in thirds)
        for deployment in deployments:
            _wait_usage(ports[1], deployment, at_ms, _expected(loads[deployment]),
                        f"all of {deployment} counted")
        ids = Counter(_alert_ids(kafka_bootstrap, receiver.namespace))
        assert ids == Counter(alert for d in deployments for alert in [
            *quota_alert_ids(d, at_ms, "file_downloads", "month", (1.0,)),
            runaway_alert_id(d, at_ms)])
