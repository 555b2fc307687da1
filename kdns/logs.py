"""kdns's own log lines, on stderr: --log-format text|json, --log-level.

text: ``2026-12-02T13:45:01.123Z [INFO] kdns: listening on 127.0.0.1:5353 (udp, tcp)``, the
level in brackets as CoreDNS prints it; query lines (--log-queries) are CoreDNS log plugin lines
after the same timestamp and level. json: one object per line, ``{"time", "level", "logger",
"msg"}``, plus the fields of a query line, for log pipelines that parse rather than grep.
Timestamps are UTC, RFC 3339 with milliseconds, so lines from several pods sort together.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
QUERY_LOGGER = "kdns.query"


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name != QUERY_LOGGER:
            msg = "kdns: " + msg
        line = f"{_timestamp(record)} [{record.levelname}] {msg}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": _timestamp(record), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def add_log_args(p: argparse.ArgumentParser, top: bool = False) -> None:
    """--log-level and --log-format, before or after the subcommand (``kdns serve --log-level
    debug`` and ``kdns --log-level debug serve`` are the same; the later one wins)."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    p.add_argument("--log-level", default=default("info"), choices=LEVELS,
                   help="least severe level logged (default info)")
    p.add_argument("--log-format", default=default("text"), choices=FORMATS,
                   help="text: timestamp, [LEVEL], message; json: one object per line (default text)")
