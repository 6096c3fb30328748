"""CPU of the worker's fast path per body, without Kafka: decoding into columns
(processors/fast_split.py `fast_columns`), one Arrow message per event type
(meterstream/core/record_format.py `encode`) and the usage sums (meterstream/core/usage.py
`columns_usage`), as RawProcessor._fast calls them.

    .venv/bin/python -m bench.fast_path [--bodies 600] [--repeats 7] [--baseline main]

The bodies are bench/worker.py's (BodyBuilder: 128 events from 100 deployments). With
`--baseline REV` the same three modules as they are at git revision REV are loaded beside
the working tree's, checked to give the same columns, the same bytes and the same usage
on every body, and timed on the same bodies in the same process, taking turns every 20
bodies so that whatever else runs on the machine slows both alike. Times are
`time.process_time`, per stage, summed over all bodies; the median of the repeats, per
body. One process; the defaults take about 25 s on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from bench.worker import REPO, BodyBuilder
from meterstream.core import events, record_format, usage
from processors import fast_split

MODULES = {"fast_split": "processors/fast_split.py",
           "record_format": "meterstream/core/record_format.py",
           "usage": "meterstream/core/usage.py"}
"""The modules timed, by the name this script gives them and their path in the tree."""


CHUNK = 20
"""Bodies timed in one go before the other path's turn."""


class FastPath(NamedTuple):
    fast_columns: Callable[[bytes, int, int], Any]
    encode: Callable[[events.EventType, list[list[Any]]], bytes]
    columns_usage: Callable[[Any], Any]


def tree() -> FastPath:
    return FastPath(fast_split.fast_columns, record_format.encode, usage.columns_usage)


def at_revision(revision: str, into: Path) -> FastPath:
    """The three modules as they are at `revision`, loaded under names of their own (they
    import only meterstream.core modules other than each other, which stay the tree's)."""
    loaded: dict[str, ModuleType] = {}
    for name, path in MODULES.items():
        source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, check=True,
                                capture_output=True).stdout
        file = into / f"baseline_{name}.py"
        file.write_bytes(source)
        spec = importlib.util.spec_from_file_location(f"baseline_{name}", file)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and msgspec look their module up
        spec.loader.exec_module(module)
        loaded[name] = module
    return FastPath(loaded["fast_split"].fast_columns, loaded["record_format"].encode,
                    loaded["usage"].columns_usage)


def run(path: FastPath, bodies: list[bytes]) -> list[tuple[Any, list[bytes], Any]]:
    """What RawProcessor._fast computes for each body (all bodies take the fast path), to
    compare two paths. (Not timed: kept, what the bodies made would make the collector's
    full passes the larger part of the time; the worker drops it after each body.)"""
    fast_columns, encode, columns_usage = path
    out = []
    for offset, body in enumerate(bodies):
        routed = fast_columns(body, 0, offset)
        assert routed is not None, "a bench body left the fast path"
        values = []
        for route, columns in routed.items():
            event_type = events.BY_TOPIC[route]
            values.append(encode(event_type, [columns[name] for name, _ in event_type.columns]))
        out.append((routed, values, columns_usage(routed)))
    return out


def plain(value: Any) -> Any:
    """A dataclass as dicts and lists, to compare across modules of the same source."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


STAGES = ("fast_columns", "encode", "columns_usage")


def timed(path: FastPath, bodies: list[bytes]) -> list[float]:
    """CPU seconds of each of STAGES over the bodies, as `run` calls them."""
    fast_columns, encode, columns_usage = path
    clock = time.process_time
    spent = [0.0, 0.0, 0.0]
    for offset, body in enumerate(bodies):
        began = clock()
        routed = fast_columns(body, 0, offset)
        split = clock()
        if routed is None:
            sys.exit("a bench body left the fast path")
        for route, columns in routed.items():
            event_type = events.BY_TOPIC[route]
            encode(event_type, [columns[name] for name, _ in event_type.columns])
        encoded = clock()
        columns_usage(routed)
        spent[0] += split - began
        spent[1] += encoded - split
        spent[2] += clock() - encoded
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--baseline", metavar="REV",
                        help="also time the modules as they are at this git revision")
    args = parser.parse_args()
    builder = BodyBuilder(args.deployments, args.bodies, seed=14)
    bodies = [builder.body(message)[1] for message in range(args.bodies)]
    paths = {"tree": tree()}
    with tempfile.TemporaryDirectory() as scratch:
        if args.baseline:
            paths = {args.baseline: at_revision(args.baseline, Path(scratch)), **paths}
            first, second = (run(path, bodies) for path in paths.values())
            for (old_columns, old_values, old_usage), (columns, values, usage_) in zip(
                    first, second, strict=True):
                # usage as plain data: the baseline's dataclasses are classes of their own
                if (old_columns != columns or old_values != values
                        or plain(old_usage) != plain(usage_)):
                    sys.exit("the baseline and the tree disagree on a body")
            del first, second
            print(f"{args.baseline} and the tree agree on all {len(bodies)} bodies")
        for path in paths.values():  # warm up: each encoder builds its layouts once
            timed(path, bodies[:CHUNK])
        times: dict[str, list[list[float]]] = {name: [] for name in paths}
        chunks = [bodies[at:at + CHUNK] for at in range(0, len(bodies), CHUNK)]
        for _ in range(args.repeats):
            total = {name: [0.0] * len(STAGES) for name in paths}
            # Alternating every few bodies, so that what else runs on the machine slows
            # both alike.
            for chunk in chunks:
                for name, path in paths.items():
                    for stage, seconds in enumerate(timed(path, chunk)):
                        total[name][stage] += seconds
            for name, stages in total.items():
                times[name].append(stages)
    print(f"µs CPU per body, median of {args.repeats} repeats over {len(bodies)} bodies")
    print(f"{'':>12}  {'total':>7}  " + "  ".join(f"{stage:>13}" for stage in STAGES)
          + "  (totals of the repeats)")
    def per_body(seconds: float) -> float:
        return seconds / len(bodies) * 1e6

    for name, repeats in times.items():
        totals = [sum(stages) for stages in repeats]
        medians = [statistics.median(stages[at] for stages in repeats)
                   for at in range(len(STAGES))]
        print(f"{name:>12}  {per_body(statistics.median(totals)):7.1f}  "
              + "  ".join(f"{per_body(seconds):13.1f}" for seconds in medians)
              + "  (" + ", ".join(f"{per_body(seconds):.0f}" for seconds in totals) + ")")

    if len(times) == 2:
        # The repeats' spread is mostly the machine's: the ratio within each repeat (both
        # paths timed turn about) is the steadier figure.
        (base, before), (_, after) = times.items()
        for index, label in enumerate(("total", *STAGES)):
            ratios = [(sum(new) if index == 0 else new[index - 1])
                      / (sum(old) if index == 0 else old[index - 1])
                      for old, new in zip(before, after, strict=True)]
            print(f"tree / {base}, {label}: {statistics.median(ratios):.2f} "
                  f"(median of the repeats' ratios; {min(ratios):.2f} to {max(ratios):.2f})")


if __name__ == "__main__":
    main()
