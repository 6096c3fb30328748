"""Charts as inline SVG drawn on the server: no script, no network, nothing to load.

A series is a list of (time in ms, value); the chart is a polyline over the whole
range asked for (windows without usage are zeros, so a gap shows as a drop), with its
largest value and the range's ends written as text. The <svg> carries
`data-points` (how many values) and `data-max` so that tests and scripts can read
what was drawn without parsing the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from meterstream.console.markup import Html, tag

WIDTH, HEIGHT = 400, 150
LEFT, RIGHT, TOP, BOTTOM = 8, 8, 18, 22


def _label(ms: int, resolution: str) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%d" if resolution == "day" else "%m-%d %H:%M")


def number(value: float) -> str:
    """A value as a person reads it: integers whole, others to six decimals at most (the
    display's precision), never in exponent notation."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.6f}".rstrip("0").rstrip(".") or "0"


def line_chart(title: str, series: Sequence[tuple[int, float]], resolution: str,
               unit: str = "") -> Html:
    """An SVG line chart of `series`, in time order; an empty series draws an empty frame."""
    values = [value for _, value in series]
    top = max(values, default=0.0)
    scale = top if top > 0 else 1.0
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = inner_w / max(len(series) - 1, 1)
    points = " ".join(
        f"{LEFT + i * step:.1f},{TOP + inner_h - (value / scale) * inner_h:.1f}"
        for i, (_, value) in enumerate(series))
    parts: list[Html] = [
        tag("title", title),
        tag("rect", x=LEFT, y=TOP, width=inner_w, height=inner_h, class_="frame"),
        tag("text", f"{title}: max {number(top)} {unit}".rstrip(), x=LEFT, y=12,
            class_="caption"),
    ]
    if series:
        parts.append(tag("polyline", points=points, class_="line"))
        parts.append(tag("text", _label(series[0][0], resolution), x=LEFT, y=HEIGHT - 6,
                         class_="axis"))
        parts.append(tag("text", _label(series[-1][0], resolution), x=WIDTH - RIGHT,
                         y=HEIGHT - 6, class_="axis end"))
    return tag("svg", *parts, xmlns="http://www.w3.org/2000/svg", class_="chart",
               viewBox=f"0 0 {WIDTH} {HEIGHT}", width=WIDTH, height=HEIGHT,
               role="img", data_points=len(series), data_max=number(top),
               aria_label=title)
