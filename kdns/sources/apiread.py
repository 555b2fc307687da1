"""Reading the API: list pages and watch lines, as raw JSON decoded by kdns.sources.decode.

- Objects are read as raw JSON (``_preload_content=False``), never as client models: building
  models costs seconds and megabytes at 10k objects (kubernetes-client #1231, #1867).
- Errors are worded for the log (``describe_error``) and sorted into retryable ones
  (``RETRYABLE``), 410 Expired (relist) and the rest.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable, Iterator

import urllib3
from urllib.parse import quote

from kdns.sources import kubeimport  # noqa: F401, I001 - first: see there
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTClientObject

from kdns.sources import decode
from kdns.sources.clusterstore import Expired, Kind, StreamError, parse_items


QUERY = {"limit": "limit", "_continue": "continue", "label_selector": "labelSelector",
         "watch": "watch", "resource_version": "resourceVersion",
         "allow_watch_bookmarks": "allowWatchBookmarks", "timeout_seconds": "timeoutSeconds",
         "send_initial_events": "sendInitialEvents", "resource_version_match": "resourceVersionMatch"}


class ApiClient:
    """The part of kubernetes.client.ApiClient kdns uses: a GET through the client's own REST
    layer (its TLS, proxy and pool settings from the Configuration), with the bearer token the
    Configuration gives now (its refresh hook runs per request: exec plugins, rotated
    service-account tokens), as ApiClient.param_serialize/call_api build it.
    Not ApiClient itself: its module pulls in pydantic, dateutil and the response models,
    +11 MB of RSS (measured on kubernetes 37) for model deserialisation kdns never does."""

    # What ApiClient sends: an API server's audit log sees the same client.
    USER_AGENT = "OpenAPI-Generator/37.0.2/python"

    def __init__(self, configuration: Any):
        self.configuration = configuration
        self.rest_client = RESTClientObject(configuration)

    def get(self, path: str, query: list[tuple[str, Any]], timeout: Any) -> Any:
        headers = {"Accept": "application/json", "User-Agent": self.USER_AGENT}
        auth = self.configuration.auth_settings().get("BearerToken")
        if auth and auth["in"] == "header":
            headers[auth["key"]] = auth["value"]
        # parameters_to_url_query's spelling: booleans lower case, values percent-quoted.
        url = self.configuration.host + path
        if query:
            url += "?" + "&".join(f"{k}={quote(str(v).lower() if isinstance(v, bool) else str(v))}"
                                  for k, v in query)
        return self.rest_client.request("GET", url, headers=headers, _request_timeout=timeout)

    def close(self) -> None:
        self.rest_client.close()


def lister(api: ApiClient, kind: Kind) -> Callable[..., Any]:
    """``kind``'s list (and, with watch=True, watch) call: what CoreV1Api's and DiscoveryV1Api's
    list_*_for_all_namespaces do with _preload_content=False (the raw urllib3 response; an
    ApiException for a non-2xx status).
    Not those classes themselves: importing the generated CoreV1Api costs ~21 MB of RSS for
    code objects kdns never runs (measured on kubernetes 37), an eighth of a 10k-service zone."""
    def call(*, _preload_content: bool = False, _request_timeout=None, **params: Any) -> Any:
        query = [(QUERY[k], v) for k, v in params.items() if v is not None]
        resp = api.get(kind.path, query, _request_timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response
    return call


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ApiException) and not exc.status:
        return " ".join(str(exc.reason).split())     # no HTTP response: TLS and the like
    if isinstance(exc, ApiException):
        message = ""
        try:
            status = json.loads(exc.body or "")
            message = status.get("message") or ""
        except (ValueError, AttributeError):
            pass
        text = f"HTTP {exc.status} {exc.reason or ''}".rstrip()
        return f"{text}: {message}" if message else text
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "no data before the read timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return f"connection broken ({exc.args[0] if exc.args else exc})"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return f"cannot connect ({str(exc).rsplit(': ', 1)[-1]})"
    return f"{type(exc).__name__}: {exc}"


def retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None                       # an HTTP-date: fall back to our own backoff


class SinkError(Exception):
    """The sink raised: its state is unknown, so the kind is relisted and reset."""


RETRYABLE = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, StreamError)


def _list(api: ApiClient, kind: Kind, page_size: int, timeout: tuple[float, float]) -> tuple[dict, str]:
    """All items of a kind, stripped to objects (``parse_items``) page by page, and the list's
    resourceVersion. Stripping each page as it comes keeps one page of raw JSON alive, not the
    whole cluster's: at 10,000 Services and 100,000 endpoints the raw dicts of every page held
    at once cost ~170 MB of RSS that stayed after the listing (a fragmented heap)."""
    fn = lister(api, kind)
    items: dict = {}
    token = None
    while True:
        try:
            resp = fn(limit=page_size, _continue=token, label_selector=kind.label_selector,
                      _preload_content=False, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 410:
                # The continue token outlived the server's snapshot: start the list again.
                raise Expired(describe_error(exc)) from None
            raise
        try:
            data = resp.data
        finally:
            resp.release_conn()
        try:
            # Typed Structs of only the fields kdns reads (kdns.sources.decode: ~5x faster
            # than json.loads, a third of the memory); a page they do not fit goes the
            # generic way, which words its problems.
            page = decode.page(data)
            del data
            items.update(parse_items(kind, _page_items(page)))
            meta = decode.to_dict(page.metadata) if page.metadata is not None else {}
        except decode.Unsure:
            doc = decode.generic(data)
            if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
                raise ValueError(f"list of {kind.resource} is not a {kind.kind}List") from None
            items.update(parse_items(kind, doc.get("items") or []))
            meta = doc.get("metadata") or {}
            del doc
        meta = meta if isinstance(meta, dict) else {}
        token = meta.get("continue")
        if not token:
            rv = meta.get("resourceVersion")
            if not rv or not isinstance(rv, str):
                raise ValueError(f"list of {kind.resource} has no metadata.resourceVersion")
            return items, rv


def _page_items(page: decode.Page) -> Iterator[dict]:
    """A page's items one at a time (see decode.Document); one the Structs do not fit is
    decoded whole, and parse_items words its problem as for a page decoded generically."""
    for raw in page.items or ():
        try:
            yield decode.item(raw)
        except decode.Unsure:
            yield decode.generic(bytes(raw))


# The API server refuses objects past ~1.5 MB; a watch "line" this long without a newline is
# a broken or hostile stream. Past it the stream is dropped and the watch resumes.
MAX_LINE = 16 << 20


class LineTooLong(ValueError):
    """A watch line over the cap: the stream is abandoned (a retryable error)."""


def _lines(resp: Any, max_line: int = MAX_LINE) -> Iterator[bytes]:
    """One watch event per line; a line may span chunks and a chunk may hold many lines.
    The pieces of a long line are kept in a list and joined once: appending each chunk to
    one bytes object copied the line once per chunk (a 50 MB object took 20 s to arrive)."""
    parts: list[bytes] = []
    size = 0
    for chunk in resp.stream(65536, decode_content=True):
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            if parts:
                parts.append(chunk[start:nl])
                line = b"".join(parts)
                parts, size = [], 0
            else:
                line = chunk[start:nl]
            start = nl + 1
            if len(line) > max_line:
                raise LineTooLong(f"a watch line of {len(line)} bytes, over the {max_line}-byte cap")
            if line.strip():
                yield line
        if start < len(chunk):
            size += len(chunk) - start
            if size > max_line:
                raise LineTooLong(f"a watch line over the {max_line}-byte cap without a newline")
            parts.append(chunk[start:] if start else chunk)
    if parts:
        line = b"".join(parts)
        if line.strip():
            yield line


class Backoff:
    """Jittered exponential backoff (client-go style: 0.8 s doubling up to 30 s)."""

    def __init__(self, base: float = 0.8, cap: float = 30.0, rng: Callable[[], float] = random.random):
        self.base, self.cap, self.rng = base, cap, rng
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return delay * (0.5 + 0.5 * self.rng())           # in [delay/2, delay]

    def reset(self) -> None:
        self.failures = 0


def _reason(exc: BaseException) -> str:
    """A bounded label for kdns_watch_errors: the HTTP status, or what broke."""
    status = getattr(exc, "status", None)
    if isinstance(exc, ApiException) and status:
        return str(status)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "timeout"
    if isinstance(exc, (urllib3.exceptions.ProtocolError, urllib3.exceptions.NewConnectionError,
                        ConnectionError)):
        return "disconnect"
    if isinstance(exc, StreamError):
        return "stream"
    return "error"


def _advice(exc: BaseException, kind: Kind) -> str:
    status = getattr(exc, "status", None)
    if status == 403:
        return (f" (the account needs list and watch on {kind.resource}; see the ClusterRole in "
                "deploy/kdns.yaml)")
    if status == 401:
        return " (the credentials were rejected; check the kubeconfig user or the service account token)"
    return ""
