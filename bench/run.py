"""The benchmark: every stage beside its raw path, measured in one run, as one table.

    .venv/bin/python -m bench.run [--quick] [--write]

Runs, one after the other on this machine (each script's docstring says exactly what
it measures):

- bench/receiver.py: acknowledged events/s and p50/p99 latency vs a bare aiokafka
  producer sending the same bodies;
- bench/worker.py: events/s (and CPU per event) vs a bare aiokafka consumer that
  orjson-decodes the same topic;
- bench/sink.py: rows/s into ClickHouse vs clickhouse-connect `insert_arrow` of the
  same rows;
- bench/end_to_end.py: the highest sustained events/s through `meterstream up` with
  `meterstream loadgen` traffic, alert latency at that rate, and ClickHouse totals
  against the load generator's expected totals (exact);
- bench/state.py: the worker's RSS and restart-to-processing time with a day of traffic
  at 10k events/s remembered (6.75M bodies) and the live usage of 10k deployments,
  written straight into its tables' changelog topics.

It starts its own Kafka broker unless METERSTREAM_KAFKA names one, prints the table
and, with --write, puts it with the machine's facts and the command into
BENCHMARKS.md's "## Summary" section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.receiver import cli, start_broker
from bench.report import machine, put_section

REPO = Path(__file__).resolve().parent.parent

RECEIVER_PROCESSES = max(2, os.cpu_count() or 1)
"""One receiver process per core, as a deployment that wants the rate would run it
(METERSTREAM_RECEIVER_PROCESSES); the bare producer it is compared with is one process
that does far less per body (BENCHMARKS.md, receiver section)."""
GOALS = {"receiver": 0.95, "worker": 0.5, "sink": 0.8, "end_to_end": 50_000,
         "alert_p99_ms": 1000, "state_rss_bytes": 1 << 30, "state_restart_s": 30}


def stage(module: str, args: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    print(f"== {module} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", module, *args, "--json", str(out)],
                   env={**os.environ, **env}, cwd=REPO, check=True)
    return json.loads(out.read_text())


def machine_facts() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{machine()}, {memory:.0f} GiB, {platform.system()} {platform.release()}; "
            "Kafka broker on the same machine")


def table(results: dict[str, dict[str, Any]]) -> str:
    receiver, worker = results["receiver"], results["worker"]
    sink, e2e = results["sink"], results["end_to_end"]
    rows = [
        "| stage | meterstream | raw path (same run) | ratio | goal |",
        "|---|---:|---:|---:|---|",
        f"| receiver ({receiver['processes']} processes): acknowledged events/s "
        f"(p50 / p99 ms; CPU s per M events) | {receiver['events_per_s']:,.0f} "
        f"({receiver['p50_ms']:.1f} / {receiver['p99_ms']:.1f}; {receiver['cpu_s_per_m']:.1f}) | "
        f"bare aiokafka producer {receiver['raw_events_per_s']:,.0f} "
        f"({receiver['raw_p50_ms']:.1f} / {receiver['raw_p99_ms']:.1f}; "
        f"{receiver['raw_cpu_s_per_m']:.1f}) | "
        f"{receiver['events_per_s'] / receiver['raw_events_per_s']:.2f} | "
        f">= {GOALS['receiver']}x, p99 < 50 ms |",
        f"| worker: events/s (CPU s per M events) | {worker['events_per_s']:,.0f} "
        f"({worker['cpu_s_per_m']:.1f}) | bare aiokafka consumer + orjson "
        f"{worker['raw_events_per_s']:,.0f} ({worker['raw_cpu_s_per_m']:.1f}) | "
        f"{worker['events_per_s'] / worker['raw_events_per_s']:.2f} | "
        f">= {GOALS['worker']}x (about 100,000 events/s, <= 10 CPU s per M) |",
        f"| sink: rows/s into ClickHouse | {sink['rows_per_s']:,.0f} | "
        f"clickhouse-connect insert_arrow {sink['raw_rows_per_s']:,.0f} | "
        f"{sink['rows_per_s'] / sink['raw_rows_per_s']:.2f} | >= {GOALS['sink']}x |",
        f"| end to end: sustained events/s | {e2e['sustained_events_per_s']:,.0f} | | | "
        f">= 50,000 events/s |",
        f"| end to end: alert latency p50 / p99 ms at that rate | "
        f"{_ms(e2e['alert_p50_ms'])} / {_ms(e2e['alert_p99_ms'])} | | | p99 < 1,000 ms |",
        f"| end to end: CPU s per M events at that rate, by process (share of the "
        f"{os.cpu_count()} cores) | {_cpu(e2e)} | | | |",
        f"| end to end: ClickHouse totals vs the load generator's | "
        f"{e2e['totals_compared'] - e2e['totals_differing']:,} of {e2e['totals_compared']:,} "
        f"values equal | | | all, exactly |",
    ]
    if "state" in results:
        state = results["state"]
        rows.append(
            f"| worker state: RSS / restart-to-processing at {state['deployments']:,} "
            f"deployments, {state['bodies']:,} bodies remembered (a day at 10k ev/s) | "
            f"{state['rss_bytes'] / 2**20:,.0f} MiB / {state['restart_s']:.1f} s"
            + ("" if state["on_disk"] else
               f" (first start, restoring the changelog: {state['first_start_s']:.0f} s)")
            + " | | | RSS < 1 GiB, restart < 30 s |")
    return "\n".join(rows)


def _cpu(e2e: dict[str, Any]) -> str:
    """Each process's CPU per million events, busiest first, and what all took."""
    per_m, share = e2e.get("cpu_s_per_m_events") or {}, e2e.get("cpu_share") or {}
    if not per_m:
        return "n/a"
    busiest = sorted(per_m, key=lambda name: -per_m[name])
    return (", ".join(f"{name} {per_m[name]:,.0f}" for name in busiest if share[name] >= 0.005)
            + f" (all: {sum(share.values()) / (os.cpu_count() or 1):.0%})")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs (one of each, smaller loads): a smoke test of the "
                             "benchmark, not figures to quote")
    parser.add_argument("--write", action="store_true",
                        help="put the table into BENCHMARKS.md's Summary section")
    args = parser.parse_args()
    quick = args.quick
    broker_env, own_broker = start_broker()
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="meterstream-bench-") as workdir:
            out = Path(workdir)
            results["receiver"] = stage("bench.receiver", [
                "--seconds", "5" if quick else "20", "--runs", "1" if quick else "3",
                "--connections", "16", "--processes", str(RECEIVER_PROCESSES)],
                broker_env, out / "receiver.json")
            results["worker"] = stage("bench.worker", [
                "--events", "200000" if quick else "1000000", "--runs", "1" if quick else "3"],
                broker_env, out / "worker.json")
            results["sink"] = stage("bench.sink", ["--events", "200000" if quick else "1000000",
                                                "--runs", "1" if quick else "3"],
                                    broker_env, out / "sink.json")
            results["end_to_end"] = stage("bench.end_to_end", [
                "--step-seconds", "10" if quick else "30", "--max-steps", "3" if quick else "10",
                "--start", "3000"],
                broker_env, out / "end_to_end.json")
            # --on-disk: the day is written into the worker's databases as a clean stop
            # leaves them; restoring it from the changelog instead (a first start, or
            # after a crash) takes Faust hours at this size on this machine.
            results["state"] = stage("bench.state", [
                "--on-disk", "--bodies", "675000" if quick else "6750000",
                "--deployments", "1000" if quick else "10000",
                "--starts", "2" if quick else "3"], broker_env, out / "state.json")
    finally:
        if own_broker:
            cli(["kafka", "stop"], broker_env)
    command = ".venv/bin/python -m bench.run" + (" --quick" if quick else "")
    text = "\n".join([
        f"Command: `{command}` ({time.strftime('%Y-%m-%d', time.gmtime())}, "
        f"{(time.monotonic() - started) / 60:.0f} min)  ",
        f"Machine: {machine_facts()}.",
        "",
        table(results),
        "",
        "Each stage's own command and details: " + "; ".join(
            f"`{r['command']}`" for r in results.values() if r.get("command")) + ".",
    ])
    print()
    print(text)
    if args.write:
        put_section("Summary", text, at_top=True)


if __name__ == "__main__":
    main()
