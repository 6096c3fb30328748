"""What `meterstream loadgen` prints: the run's summary, the expected totals per
deployment, and a check's differences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from meterstream.core.catalogue import METRICS
from meterstream.loadgen.check import Difference
from meterstream.loadgen.expected import DeploymentTotals, ExpectedTotals
from meterstream.loadgen.sender import LoadResult

# (heading, billing metric) of the totals table; storage and dead letters follow.
COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (metric.heading, metric.name) for metric in METRICS if metric.heading is not None)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def summary(result: LoadResult, out: TextIO) -> None:
    stats, traffic = result.stats, result.traffic
    print(f"loadgen: {traffic.deployments} deployments ({traffic.prefix}-0001...), "
          f"{traffic.users} end users each, seed {traffic.seed}", file=out)
    print(f"sent:     {stats.bodies:,} bodies in {stats.elapsed:.1f} s: {stats.events:,} "
          f"log-stream events acknowledged ({stats.events_per_second:,.0f} events/s), "
          f"{stats.agent_records:,} agent usage records", file=out)
    failures = ", ".join(f"{what}: {count:,}" for what, count in sorted(stats.failures.items()))
    print(f"answers:  {stats.acked_bodies:,} bodies acknowledged, {stats.rejected:,} rejected, "
          f"{stats.undetermined:,} undetermined; {stats.retries:,} retries"
          + (f" ({failures})" if failures else ""), file=out)
    print(f"repeats:  {stats.repeats:,} bodies delivered twice on purpose "
          f"({stats.repeats_acked:,} acknowledged; counted once)", file=out)
    print(f"late:     {stats.late:,} within the grace (counted), {stats.dead_lettered:,} "
          f"older than the grace (dead-lettered, not counted)", file=out)
    print(f"latency:  p50 {_ms(stats.latency_ms(0.5))}, p99 {_ms(stats.latency_ms(0.99))} "
          f"({stats.requests:,} requests)", file=out)
    if result.expected.exact:
        print("expected: exact", file=out)
    else:
        print(f"expected: NOT exact: {result.expected.undetermined_bodies:,} bodies may or may "
              "not have been stored", file=out)


def _row(name: str, totals: DeploymentTotals) -> list[str]:
    storage = sum(totals.storage["bytes"].values()) if totals.storage else 0
    return [name, *(f"{totals.metrics[metric]:,}" for _, metric in COLUMNS), f"{storage:,}",
            f"{sum(totals.dead_lettered.values()):,}"]


def totals_table(expected: ExpectedTotals, out: TextIO) -> None:
    """The billing metrics per deployment and over all (tokens per model and user, and
    the per-table sums, are in the JSON document)."""
    header = ["deployment", *(heading for heading, _ in COLUMNS), "storage_bytes",
              "dead_lettered"]
    rows = [_row(name, totals) for name, totals in sorted(expected.deployments.items())]
    rows.append(_row("all", expected.overall()))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                          strict=True)]
        print("  ".join(cells), file=out)


def differences(compared: int, found: Sequence[Difference], deployments: int,
                tables: Sequence[str], out: TextIO) -> None:
    print(f"loadgen check: {deployments} deployments, {compared:,} values from "
          f"{', '.join(tables)}", file=out)
    if not found:
        print("OK: every value matches", file=out)
        return
    print(f"MISMATCH: {len(found):,} values differ", file=out)
    print("deployment\tvalue\texpected\tobserved\tdifference", file=out)
    for d in found:
        difference = (d.observed - d.expected
                      if d.expected is not None and d.observed is not None else "")
        print(f"{d.deployment}\t{d.value}\t{d.expected}\t{d.observed}\t{difference}", file=out)
