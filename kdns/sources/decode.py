"""Bytes -> the few fields kdns reads, fast; anything unusual goes the slow, exact way.

Both sources spend most of a cold start decoding: a 10,000-Service cluster is ~40 MB of JSON,
and a dict for every mapping in it costs seconds and ~170 MB. So JSON (API list pages, watch
lines, JSON manifests) and most YAML manifests are decoded by msgspec straight into the typed
Structs below, which name only the fields ``kdns.objects.*_from_dict`` reads: every other field
is skipped in C. Each object is then turned into a dict of just those fields
(``msgspec.to_builtins``) and stripped by the same ``*_from_dict`` as before, so both paths
make the same objects and the same error lines.

The fast path is an optimisation, never a second grammar: the Structs type every field as the
JSON type ``*_from_dict`` accepts (or None, which it treats as absent). A document the Structs
do not fit (a string where a number belongs, a list as metadata, a Status in a watch stream,
nesting past the decoder's depth) raises ``Unsure``, and the caller decodes it generically and
lets ``*_from_dict`` word the problem. Measured on 40 MB (10,000 Services, 100,000 endpoints):
json.loads 3.9 s and +168 MB, msgspec to dicts 2.8 s, these Structs 0.7 s and +55 MB.

YAML: libyaml composes in C but PyYAML constructs every node in Python (~30 s for that
cluster as a kubectl-style dump). rapidyaml parses it in C++ and emits JSON per document,
which takes the fast path above. rapidyaml reads plain scalars by YAML 1.2 rules, PyYAML (and
kubectl's sigs.k8s.io/yaml) by 1.1 ones (``on`` is true, ``010`` is 8, ``~`` is null), and it
leaves aliases, merge keys and tags for the reader to resolve. So a file is only read this way
when it has no ``&``, ``*``, ``!`` or ``<<`` at all, and every string kdns reads from it is
checked against PyYAML's implicit resolvers: a string that PyYAML would have read as a bool,
a number, a null or a date means "Unsure", and the whole file is read by PyYAML instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any, Iterator

import msgspec
import yaml

try:                                  # optional: without it YAML takes PyYAML's path
    import ryml
except ImportError:                   # pragma: no cover - a wheel missing for the platform
    ryml = None


class Unsure(Exception):
    """The fast path cannot vouch for this document: decode it generically."""


class _S(msgspec.Struct, omit_defaults=True, gc=False):
    """Unknown fields are skipped; None (the default) is left out by to_builtins, which is
    what ``*_from_dict`` does with a null: treat it as absent."""


Str = str | None
Int = int | None
Bool = bool | None


class Meta(_S):
    name: Str = None
    namespace: Str = None
    labels: dict[str, Any] | None = None           # all of them: --labels selects on them
    annotations: dict[str, Any] | None = None      # the slice's last-change-trigger-time
    resourceVersion: Str = None
    continue_: Str = msgspec.field(default=None, name="continue")
    deletionTimestamp: Any = None


class Port(_S):
    name: Str = None
    port: Int = None
    protocol: Str = None
    targetPort: Any = None                         # int or a name: the slice controller's


class Conditions(_S):
    ready: Bool = None


class Ref(_S):
    name: Str = None


class Endpoint(_S):
    addresses: list[str] | None = None
    conditions: Conditions | None = None
    hostname: Str = None
    targetRef: Ref | None = None


class Address(_S):                      # legacy v1 Endpoints
    ip: Str = None
    hostname: Str = None
    targetRef: Ref | None = None


class Subset(_S):
    addresses: list[Address] | None = None
    notReadyAddresses: list[Address] | None = None
    ports: list[Port] | None = None


class Spec(_S):                         # Service and Pod fields share the one spec
    type: Str = None
    clusterIP: Str = None
    clusterIPs: list[str] | None = None
    externalName: Str = None
    ports: list[Port] | None = None
    publishNotReadyAddresses: Bool = None
    selector: dict[str, Any] | None = None
    hostname: Str = None
    subdomain: Str = None
    enableServiceLinks: Bool = None


class PodStatus(_S):
    podIP: Str = None
    phase: Str = None


class Object(_S):
    """Any kind kdns serves, with the fields of all of them (most stay None)."""
    apiVersion: Str = None
    kind: Str = None
    metadata: Meta | None = None
    spec: Spec | None = None
    status: PodStatus | None = None
    addressType: Str = None
    ports: list[Port] | None = None
    endpoints: list[Endpoint] | None = None
    subsets: list[Subset] | None = None


class Document(Object):
    """A manifest document: one object, or a List of them. The items stay raw JSON (views of
    the input, no copy) and are decoded one at a time: decoding them all at once kept every
    item's Structs alive while the objects were made, and the strings the objects keep were
    left scattered among the freed Structs' memory (a fragmented heap: ~15 MB of RSS at
    10,000 Services that was never given back)."""
    items: list[msgspec.Raw] | None = None


class Page(_S):
    """One page of an API list (items raw, as Document's)."""
    metadata: Meta | None = None
    items: list[msgspec.Raw] | None = None


class Event(_S):
    type: Str = None
    object: Object | None = None


_DOCUMENT = msgspec.json.Decoder(Document)
_OBJECT = msgspec.json.Decoder(Object)
_PAGE = msgspec.json.Decoder(Page)
_EVENT = msgspec.json.Decoder(Event)
_ANY = msgspec.json.Decoder()
to_dict = msgspec.to_builtins

# Past this depth the generic decoders recurse too (json's C scanner, PyYAML's constructor):
# a document nested deeper is refused with one line, not a RecursionError's traceback.
MAX_DEPTH = 1000


class TooDeep(ValueError):
    pass


def depth_over(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether flow brackets nest past ``limit`` (quotes not honoured: an over-estimate).
    libyaml's composer recurses in C and crashes the process around 100,000 levels; this
    runs only on the generic path, before it."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for m in _BRACKETS.finditer(data):
        depth += 1 if m.group() in b"[{" else -1
        if depth > limit:
            return True
    return False


_BRACKETS = re.compile(rb"[\[\]{}]")


def _typed(decoder: msgspec.json.Decoder, data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise Unsure(str(exc)) from None


def generic(data: bytes | str) -> Any:
    """Plain JSON -> builtins; ValueError (one line) for bad JSON or past MAX_DEPTH."""
    try:
        return _ANY.decode(data)
    except RecursionError:
        raise TooDeep("nested too deep") from None
    except msgspec.DecodeError:
        pass
    # Bad JSON: the standard library words it as users (and kdns's tests) know it.
    try:
        return json.loads(data)
    except RecursionError:
        raise TooDeep("nested too deep") from None


def page(data: bytes) -> Page:
    return _typed(_PAGE, data)


def event(data: bytes) -> dict:
    """A watch line -> the event as a dict of the fields kdns reads. ERROR events and lines
    the Structs do not fit are decoded whole (their Status message is wanted)."""
    try:
        ev = _typed(_EVENT, data)
    except Unsure:
        return generic(data)
    if ev.type == "ERROR":
        return generic(data)
    return to_dict(ev)


def json_document(data: bytes) -> Document:
    return _typed(_DOCUMENT, data)


def item(raw: msgspec.Raw) -> dict:
    """One raw list item -> a dict of the fields kdns reads; Unsure if the Structs do not fit."""
    return to_dict(_typed(_OBJECT, raw))


def check(doc: Document, yaml: bool = False) -> set:
    """Decode every item of ``doc`` once, keeping nothing, so that a misfit raises Unsure
    before the reader yields anything; returns the kinds in it (its items' too). ``yaml``:
    also check the strings as PyYAML would read them (see ``yaml_documents``)."""
    found = {doc.kind}
    if yaml:
        _strings_as_pyyaml(doc)
    for raw in doc.items or ():
        obj = _typed(_OBJECT, raw)
        found.add(obj.kind)
        if yaml:
            _strings_as_pyyaml(obj)
    return found


def items(doc: Document) -> Iterator[tuple[int | None, dict]]:
    """A decoded (and ``check``ed) document's objects as dicts: (None, doc) or (j, items[j])
    of a List, as the manifest reader numbers them."""
    if doc.kind is not None and doc.kind.endswith("List") and doc.items is not None:
        for j, raw in enumerate(doc.items):
            yield j, to_dict(_OBJECT.decode(raw))
    else:
        if doc.items is not None:          # an ``items`` field, if any, is ignored as before
            doc = msgspec.structs.replace(doc, items=None)
        yield None, to_dict(doc)


# --------------------------------------------------------------------------- YAML

# Characters that mean PyYAML would build something rapidyaml's JSON leaves out or spells
# differently: anchors and aliases (and merge keys), tags.
_YAML_FEATURES = (b"&", b"*", b"!", b"<<")    # bytes.find each: a regex takes seconds on 40 MB


def _implicit() -> dict[str, re.Pattern]:
    """PyYAML's implicit resolvers but str's, by first character as PyYAML keys them: a plain
    scalar that one of them matches is not a string to PyYAML. ("" is left out: rapidyaml
    gives null for an empty plain scalar, so an empty string was quoted.)"""
    out = {}
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items():
        patterns = [r.pattern for tag, r in resolvers if tag != "tag:yaml.org,2002:str"]
        if first and patterns:
            out[first] = re.compile("|".join(f"(?:{p})" for p in patterns), re.X)
    return out


_NOT_A_STRING = _implicit()


def _check(value: Any) -> None:
    if value is not None:
        resolver = _NOT_A_STRING.get(value[:1])
        if resolver is not None and resolver.match(value):
            raise Unsure(f"{value[:40]!r} is not a string to PyYAML")


def _check_ports(ports: list[Port] | None) -> None:
    for p in ports or ():
        _check(p.name)
        _check(p.protocol)
        if type(p.targetPort) is str:
            _check(p.targetPort)


_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _strings_as_pyyaml(obj: Object) -> None:
    """Unsure if any string kdns reads from ``obj`` is one PyYAML would read as another type
    (were it written plain). A field list, not a walk: a walk cost 3 s at 100,000 endpoints."""
    _check(obj.apiVersion)
    _check(obj.kind)
    _check(obj.addressType)
    m = obj.metadata
    if m is not None:
        _check(m.name)
        _check(m.namespace)
        for k, v in (m.labels or {}).items():
            _check(k)
            if type(v) is str:
                _check(v)
        if isinstance(m.deletionTimestamp, str):
            _check(m.deletionTimestamp)
    spec = obj.spec
    if spec is not None:
        for v in (spec.type, spec.clusterIP, spec.externalName, spec.hostname, spec.subdomain):
            _check(v)
        for v in spec.clusterIPs or ():
            _check(v)
        for k, v in (spec.selector or {}).items():
            _check(k)
            if type(v) is str:
                _check(v)
        _check_ports(spec.ports)
    if obj.status is not None:
        _check(obj.status.podIP)
        _check(obj.status.phase)
    _check_ports(obj.ports)
    for ep in obj.endpoints or ():
        for a in ep.addresses or ():
            if not _IPV4.fullmatch(a):          # a dotted quad is a string to PyYAML too
                _check(a)
        _check(ep.hostname)
        if ep.targetRef is not None:
            _check(ep.targetRef.name)
    for sub in obj.subsets or ():
        _check_ports(sub.ports)
        for a in (sub.addresses or []) + (sub.notReadyAddresses or []):
            _check(a.ip)
            _check(a.hostname)
            if a.targetRef is not None:
                _check(a.targetRef.name)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """rapidyaml prints its parse errors to fd 2 before raising, and has no switch for it;
    the file then goes to PyYAML, whose message is the one reported. Anything else written
    to fd 2 meanwhile (another thread's log line) is kept and written out afterwards."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as spool:
        os.dup2(spool.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            spool.seek(0)
            lines = spool.read().splitlines(keepends=True)
            if failed:                      # rapidyaml's own: "line=3 col=1 (41B): ERROR: ...",
                lines = [ln for ln in lines if not _RYML_NOISE.match(ln)]   # ".../c4/yml/x.hpp:N: ..."
            if lines:
                os.write(2, b"".join(lines))


_RYML_NOISE = re.compile(rb"^(line=\d+ col=\d+ |.*/c4/yml/\S*\.hpp:\d+: |\s*$)")


def yaml_documents(data: bytes) -> Iterator[tuple[int, Document | None]]:
    """(index, Document or None for an empty one) of a YAML stream, via rapidyaml; Unsure
    (before yielding anything) when PyYAML might read the file differently."""
    if ryml is None or any(c in data for c in _YAML_FEATURES):
        raise Unsure("YAML features rapidyaml's JSON does not carry")
    buf = bytearray(data)                  # parsed in place: no second copy in an arena
    docs = []
    try:
        with _quiet_stderr():
            tree = ryml.parse_in_place(buf)
            root = tree.root_id()
            for node in (list(ryml.children(tree, root)) if tree.is_stream(root) else [root]):
                out = bytearray(ryml.compute_json_length(tree, node))
                text = ryml.emit_json_in_place(tree, out, node)     # ~4x faster than emit_json's str
                docs.append(None if bytes(text).strip() in (b"null", b"") else text)
    except Exception as exc:            # noqa: BLE001 - ryml's own types; PyYAML words the error
        raise Unsure(f"rapidyaml: {type(exc).__name__}") from None
    del tree, buf
    # The callers ``check(doc, yaml=True)`` each document, which checks its strings.
    return enumerate([None if text is None else _typed(_DOCUMENT, text) for text in docs])

