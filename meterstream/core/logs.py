"""Logs on stderr: one JSON object per line for machines, or one readable line for a person.

METERSTREAM_LOG_FORMAT picks the form: `json`, `text`, or `auto` (the default), which is
text when stderr is a terminal and JSON otherwise, so that collected logs stay parseable
and a person running a command is not shown JSON.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

# Attributes every LogRecord has; anything else came in through `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

LOG_FORMATS = ("auto", "text", "json")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the record carries besides the standard attributes (its `extra=`)."""
    return {key: value for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`12:00:01 warning sink: message key=value ...`: local time to the second, the
    fields after the message (strings with spaces quoted), a traceback on lines below."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower()} {self.service}: {record.getMessage()}"
        fields = " ".join(f"{key}={_shown(value)}" for key, value in _fields(record).items())
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return repr(text) if isinstance(value, str) and (not text or " " in text) else text


def chosen_format(setting: str, stream: IO[str] | None = None) -> str:
    """`text` or `json`: `auto` is text when `stream` (stderr) is a terminal."""
    if setting != "auto":
        return setting
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def logging_config(service: str, level: str, fmt: str = "auto") -> dict[str, Any]:
    """A dictConfig for the service; Faust's worker takes the same dict."""
    formatter = TextFormatter if chosen_format(fmt) == "text" else JsonFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"meterstream": {"()": formatter, "service": service}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "meterstream",
                       "stream": sys.stderr}
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # aiokafka logs every metadata hiccup at INFO/ERROR while a broker starts.
        "loggers": {"aiokafka": {"level": "WARNING"}},
    }


def configure(service: str, level: str, fmt: str = "auto") -> None:
    import logging.config

    logging.config.dictConfig(logging_config(service, level, fmt))
