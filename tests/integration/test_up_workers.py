"""`meterstream up --workers 2`: two worker processes in one consumer group share the raw
partitions, each answers the quota page for every deployment (Faust forwards it to the
owner), the pipeline lands the load generator's exact totals, and SIGTERM stops them all."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

from tests.integration.test_loadgen_pipeline import _folded, _live_usage
from tests.support import free_port, meterstream, metric_sample, wait_for
from tests.support.pipeline import running_pipeline


def _two_free_ports() -> int:
    """A port that is free, and so is the next one (the second worker's)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _logged(log: Path, message: str) -> dict:
    """The first record of `up`'s JSON log with this message."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == message:
            return json.loads(line)
    raise AssertionError(f"no {message!r} in the log")


def _children(log: Path) -> dict[str, int]:
    """The children `up` started, by name: their pids, from its "pipeline started" line."""
    record = _logged(log, "pipeline started")
    return {k: v for k, v in record.items() if k.split("-")[0] in ("worker", "sink", "receiver")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_partitions_and_land_exact_totals(kafka_bootstrap: str,
                                                                 tmp_path: Path) -> None:
    base = _two_free_ports()
    with running_pipeline(kafka_bootstrap, tmp_path, command="up --workers 2",
                          extra_env={"METERSTREAM_WORKER_PORT": str(base)}) as pipeline:
        children = _children(pipeline.log)
        assert sorted(children) == ["receiver", "sink", "worker-0", "worker-1"]
        ports = [str(base), str(base + 1)]
        for port in ports:
            def answers(port: str = port) -> bool:
                return metric_sample(port, "meterstream_worker_raw_batches_total") >= 0

            wait_for(answers, timeout=120, what=f"the worker on port {port} to answer")
        # Each keeps its table files apart (processors/app.py worker_datadir).
        assert sorted(p.name for p in (tmp_path / "ms" / "worker").iterdir()) == sorted(
            f"port-{port}" for port in ports)

        # Both in the group before any traffic: else the first to join may take it all.
        def shared() -> bool:
            owned = [metric_sample(port, "meterstream_worker_raw_partitions") for port in ports]
            return all(count > 0 for count in owned) and sum(owned) == 8

        wait_for(shared, timeout=120, what="the two workers to share the 8 raw partitions")
        # The load's deployments have new names each run, and its skew leaves some of them
        # without events: the raw partitions with traffic can all be one worker's. Another
        # load (other names) then follows, until both workers had bodies of their own.
        processed = [0.0, 0.0]
        for load in range(4):
            expected_file = tmp_path / f"expected-{load}.json"
            run = meterstream(["loadgen", "--deployments", "8", "--users", "3",
                               "--events", "3000", "--duplicates", "0.2", "--late", "0.05",
                               "--seed", str(5 + load), "--connections", "4",
                               "--expected-out", str(expected_file)],
                              pipeline.env, timeout=300)
            assert "expected: exact" in run.stdout
            document = json.loads(expected_file.read_text())
            assert document["exact"]
            check = meterstream(["loadgen", "check", "--expected", str(expected_file),
                                 "--tables", "function_executions", "--wait", "120"],
                                pipeline.env, timeout=200)
            assert check.stdout.splitlines()[-1] == "OK: every value matches", check.stdout
            # Each worker processed raw bodies of its own partitions.
            processed = [metric_sample(port, "meterstream_worker_raw_batches_total")
                         for port in ports]
            if all(count > 0 for count in processed):
                break
        assert all(count > 0 for count in processed), processed

        # Either worker answers for every deployment with counted events (the load
        # generator's skew leaves some with none), with the exact live totals.
        counted = {name: totals for name, totals in document["deployments"].items()
                   if totals["first_event_ms"] is not None}
        assert len(counted) >= 4, sorted(counted)
        for port in ports:
            via = dataclasses.replace(pipeline, env={**pipeline.env,
                                                     "METERSTREAM_WORKER_PORT": port})
            for name, totals in counted.items():
                live = _live_usage(via, name, totals)
                assert live["metrics"] == totals["metrics"], (port, name)
                assert live["tokens_by_model"] == _folded(totals["tokens_by_model"]), name

        # SIGTERM stops every child, cleanly.
        assert pipeline.stop() == 0, pipeline.log_tail()
        assert not [name for name, pid in children.items() if _alive(pid)]
        assert _logged(pipeline.log, "pipeline stopped")["clean"] is True
