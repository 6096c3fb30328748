"""What building the load costs, beside replaying the same bodies, in the same run.

    .venv/bin/python -m bench.loadgen [--events 300000] [--deployments 100] [--runs 3]

One process, one core, no network:

- raw: the bodies' events built beforehand; timed: serialising each body (JSON
  array or JSONL, as the deployment's stream) and signing it, what any sender of
  Convex webhooks does;
- loadgen: the traffic model building the same bodies from its seed (events,
  agent usage records, late times, expected totals), serialising and signing them.

Prints medians over the runs, the two paths alternating: events/s and CPU seconds
per million log-stream events.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import orjson

from meterstream.core.signature import sign
from meterstream.loadgen.events import log_stream_body
from meterstream.loadgen.traffic import LOGS, TrafficModel, TrafficOptions
from tests.support.independent_totals import events_of

START_MS = 1_781_524_800_000


def _options(deployments: int) -> TrafficOptions:
    return TrafficOptions(deployments=deployments, users=20, seed=1, prefix="bench",
                          duplicates=0.05, late=0.01, too_late=0.01)


def loadgen(events: int, deployments: int) -> tuple[float, int]:
    """CPU seconds to build, serialise and sign `events` log-stream events."""
    model = TrafficModel(_options(deployments))
    made = 0
    started = time.process_time()
    for n in range(events):
        if made >= events:
            break
        for delivery in model.next_batch(START_MS + n * 1000):
            sign(delivery.body, delivery.deployment.webhook_secret)
            made += delivery.events if delivery.endpoint == LOGS else 0
    return time.process_time() - started, made


def raw(prepared: list[tuple[list[dict], bool, str]]) -> tuple[float, int]:
    started = time.process_time()
    for events, jsonl, secret in prepared:
        sign(log_stream_body(events, jsonl), secret)
    return time.process_time() - started, sum(len(events) for events, _, _ in prepared)


def prepare(events: int, deployments: int) -> list[tuple[list[dict], bool, str]]:
    model = TrafficModel(_options(deployments))
    prepared = []
    made = 0
    for n in range(events):
        if made >= events:
            break
        for delivery in model.next_batch(START_MS + n * 1000):
            if delivery.endpoint == LOGS:
                parsed = [orjson.loads(orjson.dumps(e)) for e in events_of(delivery.body)]
                prepared.append((copy.deepcopy(parsed), delivery.deployment.jsonl,
                                 delivery.deployment.webhook_secret))
                made += delivery.events
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    prepared = prepare(args.events, args.deployments)
    results: dict[str, list[tuple[float, int]]] = {"raw": [], "loadgen": []}
    for _ in range(args.runs):
        results["raw"].append(raw(prepared))
        results["loadgen"].append(loadgen(args.events, args.deployments))
    raw_rate = statistics.median(n / s for s, n in results["raw"])
    print("| path | events/s | CPU s per M events | ratio |")
    print("|---|---:|---:|---:|")
    for path, runs in results.items():
        rate = statistics.median(n / s for s, n in runs)
        print(f"| {path} | {rate:,.0f} | {1e6 / rate:.1f} | {rate / raw_rate:.2f} |")


if __name__ == "__main__":
    main()
