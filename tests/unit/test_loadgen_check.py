"""`meterstream loadgen check` on every table of the 0002 schema, in the real embedded
ClickHouse engine: rows as the worker normalises them from the generated bodies (the
sink does not write all these tables yet), then one row more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ingest.agent_usage import normalise_all
from meterstream.core import records
from meterstream.loadgen.cli import EXPECTED_KIND
from meterstream.loadgen.expected import (
    TABLE_OF_TOPIC,
    TABLES,
    DeploymentTotals,
    ExpectedTotals,
)
from meterstream.loadgen.traffic import LOGS, TrafficModel, TrafficOptions
from processors.split import split_body
from tests.support import REPO, meterstream

GRACE_MS = 86_400_000
NOW_MS = 1_781_524_800_000  # 2026-06-15T12:00:00Z


def _write_load(tmp_path: Path) -> tuple[Path, Path, ExpectedTotals]:
    """The expected totals of a generated load, and the records the pipeline would store."""
    model = TrafficModel(TrafficOptions(deployments=4, users=3, seed=21, prefix="lg-check",
                                        late=0.05, too_late=0.05, duplicates=0.0,
                                        grace_ms=GRACE_MS, storage_interval_ms=60_000))
    expected = ExpectedTotals({d.name: DeploymentTotals() for d in model.deployments})
    rows: dict[str, list[dict]] = {table: [] for table in TABLES}
    for offset in range(60):
        now = NOW_MS + offset * 2_000
        for delivery in model.next_batch(now):
            expected.add(delivery.deployment.name, delivery.totals)
            routed: dict[str, list[Any]]
            if delivery.endpoint == LOGS:
                routed = split_body(delivery.body, 0, offset).routed
            else:
                routed = {"agent_usage": [
                    records.agent_usage(r, 0, offset, i)
                    for i, r in enumerate(normalise_all(json.loads(delivery.body), now))]}
            for route, found in routed.items():
                rows[TABLE_OF_TOPIC[route]].extend(
                    r for r in found if r["timestamp"] >= now - GRACE_MS)
    expected_file = tmp_path / "expected.json"
    expected_file.write_text(json.dumps({"kind": EXPECTED_KIND, **expected.to_json()}))
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows))
    return expected_file, rows_file, expected


def test_check_compares_every_table_and_names_each_difference(tmp_path: Path) -> None:
    expected_file, rows_file, expected = _write_load(tmp_path)
    chdb = tmp_path / "clickhouse"
    subprocess.run([sys.executable, "-m", "tests.support.chdb_tables", str(chdb), str(rows_file)],
                   cwd=REPO, check=True, timeout=300)
    env = {"METERSTREAM_CLICKHOUSE": f"chdb://{chdb}"}
    check = ["loadgen", "check", "--expected", str(expected_file), "--wait", "0"]

    passed = meterstream(check, env)
    assert passed.stdout.splitlines()[-1] == "OK: every value matches"
    overall = expected.overall()
    assert all(overall.tables[table]["rows"] > 0 for table in TABLES)
    assert sum(overall.dead_lettered.values()) > 0

    name = sorted(expected.deployments)[0]
    meterstream(["sql", "--write", "INSERT INTO file_downloads (deployment, timestamp, storage_id, "
                 f"egress_bytes) SELECT '{name}', fromUnixTimestamp64Milli({NOW_MS}), "
                 "'extra', 1000"], env)
    failed = meterstream(check, env, check=False)
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[1] == "MISMATCH: 6 values differ"
    differences = {tuple(line.split("\t")[1:2] + line.split("\t")[4:]) for line in lines[3:]}
    assert differences == {
        ("file_downloads.rows", "1"), ("file_downloads.egress_bytes", "1000"),
        ("metrics.function_calls", "1"), ("metrics.file_downloads", "1"),
        ("metrics.file_download_bytes", "1000"), ("metrics.data_egress_bytes", "1000")}
    assert all(line.startswith(name) for line in lines[3:])

    # Only the tables asked for: function_executions alone still matches.
    only = meterstream([*check, "--tables", "function_executions"], env)
    assert only.stdout.splitlines()[-1] == "OK: every value matches"
