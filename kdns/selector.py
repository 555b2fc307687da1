"""Kubernetes label selectors (k8s.io/apimachinery/pkg/labels, the string form), for --labels.

``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k`` (does not
exist), comma-separated, all must hold. The API source sends the text as the list/watch
request's labelSelector (the API then filters, and an object leaving the selection arrives as
DELETED); the manifest source applies the same predicate to each Service it reads.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

from kdns.config import ConfigError

# A qualified name, optionally with a DNS-subdomain prefix (IsQualifiedName).
_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\(([^)]*)\)\s*$")

Predicate = Callable[[Mapping[str, str]], bool]


def _split(text: str) -> list[str]:
    """Requirements split at top-level commas (commas inside '(...)' belong to a set)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse(text: str) -> Predicate:
    """The selector as a predicate on a labels mapping; ConfigError names the bad part."""
    tests: list[Predicate] = []
    if not text.strip():
        raise ConfigError("--labels '': an empty selector")
    for part in _split(text):
        tests.append(_requirement(part.strip(), text))
    return lambda labels: all(t(labels) for t in tests)


def _requirement(part: str, whole: str) -> Predicate:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"--labels {whole!r}: {part!r}: {why}")

    m = _SET.match(part)
    if m:
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        _check(key, values, bad)
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("==", "!=", "="):
        if op in part:
            key, value = (x.strip() for x in part.split(op, 1))
            _check(key, {value}, bad)
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if part.startswith("!"):
        key = part[1:].strip()
        _check(key, set(), bad)
        return lambda labels: key not in labels
    _check(part, set(), bad)
    return lambda labels: part in labels


def _check(key: str, values: set[str], bad) -> None:
    if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise bad(f"{key!r} is not a label key")
    for value in values:
        if not _VALUE.match(value) or len(value) > 63:
            raise bad(f"{value!r} is not a label value")


def labels_of(doc: Mapping) -> Mapping[str, str]:
    meta = doc.get("metadata") if isinstance(doc, Mapping) else None
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}
