"""Manifest files -> documents: the readers of YAML and JSON, before any object is made.

Two readers: the fast one (kdns.sources.decode: only the fields kdns reads, in C) and the
generic, exact one (PyYAML / json), which words every parse error. Each yields (where, doc)
with ``str(where)`` = "file, document N[, items[J]]", for the problem lines of kdns.sources.manifests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from kdns.objects import short_str
from kdns.sources import decode, workloads
from kdns.sources.files import Unreadable, files_of

# libyaml's loader parses a 10,000-service dump about ten times faster than the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    """The generic (exact) reader: every document as builtins. ``decode`` is the fast one."""
    data = path.read_bytes()
    text = data.decode("utf-8")
    if path.suffix == ".json":
        try:
            yield 0, decode.generic(data)          # one value, by far the common case
            return
        except decode.TooDeep:
            raise
        except ValueError:
            pass                                   # several concatenated values, or bad JSON
        decoder = json.JSONDecoder()
        pos, index = 0, 0
        while True:                       # a .json file may hold several concatenated objects
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return
            doc, pos = decoder.raw_decode(text, pos)
            yield index, doc
            index += 1
    else:
        if decode.depth_over(data):
            raise decode.TooDeep("nested too deep")
        yield from _yaml_documents(text)


# Nodes one YAML document may gain through aliases. Aliases share one parsed node, but
# everything after the parser (type checks, comparisons, error messages) sees the expanded
# tree: a "billion laughs" bomb in metadata.name grew kdns to 2 GB (kube-apiserver's
# CVE-2019-11253). Real manifests use aliases for a few shared blocks.
MAX_ALIAS_NODES = 100_000


class AliasBomb(ValueError):
    pass


def _yaml_documents(text: str) -> Iterator[tuple[int, Any]]:
    loader = _YAML_LOADER(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if "*" in text:
                _check_aliases(node, index)
            yield index, loader.construct_document(node)
            index += 1
    finally:
        loader.dispose()


def _check_aliases(root: Any, index: int) -> None:
    """AliasBomb if aliases expand document ``index`` by more than MAX_ALIAS_NODES nodes.
    Sizes are memoised per node, so this is linear in the nodes parsed, not the expansion."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                total += size(v)
        sizes[id(node)] = total
        return total

    if size(root) - len(sizes) > MAX_ALIAS_NODES:
        raise AliasBomb(f"document {index}: YAML aliases expand it by more than {MAX_ALIAS_NODES} "
                        "nodes (an alias bomb?)")


def _describe(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "document"
    kind = short_str(doc.get("kind") or "?")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = short_str(meta.get("name") or "?")
    ns = short_str(meta.get("namespace")) if meta.get("namespace") else None
    if kind == "Namespace":
        return f"{kind}/{name}"
    return f"{kind}/{ns or 'default'}/{name}"


def read(paths: Iterable[str | os.PathLike], problems: list[str]) -> Iterator[tuple[Any, Any]]:
    """Every object in the files, one at a time, as (where, dict); ``str(where)`` is
    "file, document N[, items[J]]". Files that do not parse add a line to ``problems``.

    A generator, so that only one document's raw dicts are alive at a time: a whole cluster's
    worth of parsed YAML would cost several times the memory of the objects kept from it.
    """
    files, missing = files_of(paths)
    problems.extend(missing)
    for path in files:
        yield from _file_documents(path, problems)


def _file_documents(path: Path, problems: list[str]) -> Iterator[tuple[Any, Any]]:
    try:
        for index, doc in _documents(path):
            if doc is None:
                continue
            # kind: List, and typed lists such as ServiceList from the API.
            if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") \
                    and isinstance(doc.get("items"), list):
                for j, item in enumerate(doc.get("items") or []):
                    yield _Where(path, index, j), item
            else:
                yield _Where(path, index, None), doc
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: does not parse: {_short(' '.join(str(exc).split()))}")
    except (AliasBomb, decode.TooDeep) as exc:
        problems.append(f"{path}: does not parse: {exc}")
    except RecursionError:
        problems.append(f"{path}: does not parse: nested too deep")
    except MemoryError:
        problems.append(f"{path}: does not parse: too big to hold in memory")
    except OSError as exc:
        problems.append(Unreadable(path, f"{path}: cannot read: {exc.strerror or exc}"))


class _Where:
    """Where a document came from; formatted only when a problem is reported."""

    __slots__ = ("path", "index", "item")

    def __init__(self, path: Path, index: int, item: int | None):
        self.path, self.index, self.item = path, index, item

    def __str__(self) -> str:
        where = f"{self.path}, document {self.index}"
        return where if self.item is None else f"{where}, items[{self.item}]"


def _short(text: str, limit: int = 200) -> str:
    """A quoted value or decoder message cut to a prefix: one line, never the whole input."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _fast_documents(path: Path, problems: list[str]) -> Iterator[tuple[Any, Any]]:
    """``_file_documents`` with only the fields kdns reads, decoded in C (kdns.sources.decode);
    a file the fast decoders cannot vouch for is read by the generic ones, which word its
    errors. Unsure is only ever raised before the first document is yielded."""
    try:
        data = path.read_bytes()
        data.decode("utf-8")                        # the generic reader words a bad byte
        yaml_file = path.suffix != ".json"
        if not yaml_file:
            docs: Any = [(0, decode.json_document(data))]
        else:
            docs = list(decode.yaml_documents(data))
        # Pods and workloads are read whole (their pod templates are compared as JSON):
        # the Structs carry only what the other kinds need.
        if any(d is not None and decode.check(d, yaml_file) & _WHOLE for _, d in docs):
            raise decode.Unsure("Pods or workloads")
    except (OSError, UnicodeDecodeError, decode.Unsure):
        yield from _file_documents(path, problems)
        return
    del data
    for index, doc in docs:
        if doc is None:
            continue
        for j, obj in decode.items(doc):
            yield _Where(path, index, j), obj


_WHOLE = frozenset(("Pod", *workloads.WORKLOAD_KINDS))
