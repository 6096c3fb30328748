"""HTML built from escaped parts: the one place text becomes markup.

Deployment names, labels, teams, user ids and model names are chosen by tenants and
are hostile until escaped. `Html` marks text that is already markup; everything else
that reaches `tag`, `join` or `html` is escaped, attribute values included, so a page
can only carry tenant text as text.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from urllib.parse import quote, urlencode


class Html(str):
    """Text that is markup already (built by this module, never from tenant input)."""

    __slots__ = ()




def html(value: object) -> Html:
    """`value` as markup: Html as it is, None as nothing, anything else escaped."""
    if isinstance(value, Html):
        return value
    if value is None:
        return Html("")
    if isinstance(value, str | int | float):
        return Html(escape(str(value), quote=True))
    if isinstance(value, Iterable):
        return join(value)
    return Html(escape(str(value), quote=True))


def join(parts: Iterable[object], separator: str = "") -> Html:
    return Html(escape(separator).join(html(part) for part in parts))


def attributes(values: dict[str, object]) -> Html:
    """ name="value" pairs, each value escaped; None and False leave the attribute out."""
    shown = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        name = name.rstrip("_").replace("_", "-")
        shown.append(name if value is True else f'{name}="{escape(str(value), quote=True)}"')
    return Html("".join(f" {item}" for item in shown))


_VOID = frozenset({"input", "br", "meta", "link", "img"})


def tag(element: str, /, *content: object, **attrs: object) -> Html:
    """<element attrs>content</element>; `class_` is the class attribute, `data_x` is
    data-x."""
    opening = f"<{element}{attributes(attrs)}>"
    if element in _VOID:
        return Html(opening)
    return Html(f"{opening}{join(content)}</{element}>")


def path(*segments: str, **query: object) -> str:
    """A URL path of percent-encoded segments with a query string (empty values left
    out); for tenant names in links, which `tag` then escapes as attribute text."""
    built = "/" + "/".join(quote(segment, safe="") for segment in segments)
    kept = {k: v for k, v in query.items() if v not in (None, "")}
    return built + (f"?{urlencode(kept)}" if kept else "")
