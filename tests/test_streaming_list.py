"""The streaming list (sendInitialEvents, Kubernetes 1.32+) against the fake API, and its fallback.

kdns serve (and ClusterSource in process) talk to tests/fakeapi.py over real HTTP; answers come
from a real kdns over UDP with dnspython. The fake's request log says how each kind was synced:
one watch with sendInitialEvents=true and no list GET, or (a server that refuses it, or is older
than it) paged lists and watches from the list's resourceVersion.
"""

from __future__ import annotations

import re

import dns.flags
import dns.rcode
import pytest

from conftest import Kdns, answers, eventually
from fakeapi import FakeAPI, endpointslice, namespace, service
from kdns.sources.cluster import ClusterSource
from test_cluster_source import FAST, WAIT, RecordingSink

KINDS = ("services", "endpointslices", "namespaces")
WEB = "web.prod.svc.cluster.local."
HEADLESS = "pg.prod.svc.cluster.local."
STREAMING = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
             "allowWatchBookmarks": "true", "resourceVersion": ""}


def seed(api: FakeAPI) -> None:
    api.create(namespace("empty"))
    api.create(service("prod", "web", "10.96.0.20", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    api.create(service("prod", "db", "10.96.0.30", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(service("dev", "web", "10.96.1.20"))
    api.create(service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-a", "pg", ["10.244.1.5"]))
    api.create(endpointslice("prod", "pg-b", "pg", ["10.244.2.5", "10.244.2.6"]))
    api.create(endpointslice("prod", "pg-c", "pg", ["10.244.3.5"], ready=False))
    api.create(endpointslice("prod", "web-a", "web", ["10.244.4.5"]))


def streaming_watches(api: FakeAPI, resource: str) -> list:
    return [r for r in api.requests_for(resource, watch=True) if r.query.get("sendInitialEvents") == "true"]


def lists(api: FakeAPI, resource: str) -> list:
    return api.requests_for(resource, watch=False)


@pytest.fixture
def fake(request):
    with FakeAPI(bookmark_interval=0.2, streaming_list=getattr(request, "param", "on")) as api:
        seed(api)
        yield api


@pytest.fixture
def kdns(fake, tmp_path):
    servers: list[Kdns] = []

    def start(*extra: str) -> Kdns:
        s = Kdns("--kubeconfig", fake.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1", *extra)
        servers.append(s)
        eventually(s, WEB, ("NOERROR", ["10.96.0.20"]))
        for r in KINDS:
            assert fake.wait_for(lambda: fake.watchers(r) == len(servers), WAIT), r
        return s
    yield start
    for s in servers:
        log = s.stop()
        assert s.proc.returncode == 0, log
        assert "Traceback" not in log, log


def exact(server: Kdns, name: str, rdtype: str = "A") -> str:
    """The whole response but its id and the SOA serial (each process's own clock): rcode,
    flags, every section, TTLs."""
    resp = server.query(name, rdtype)
    text = "\n".join(line for line in resp.to_text().splitlines() if not line.startswith("id "))
    return re.sub(r"( SOA \S+ \S+ )\d+ ", r"\1SERIAL ", text)


def assert_web_answer(server: Kdns) -> None:
    resp = server.query(WEB, "A")
    assert dns.rcode.to_text(resp.rcode()) == "NOERROR"
    assert resp.flags == dns.flags.QR | dns.flags.AA | dns.flags.RD
    assert [r.to_text() for r in resp.answer] == [f"{WEB} 5 IN A 10.96.0.20"]
    assert resp.authority == [] and resp.additional == []


# --------------------------------------------------------------------------- kdns serve

def test_syncs_by_one_streaming_watch_per_kind_and_keeps_reading_it(fake, kdns):
    server = kdns()
    for r in KINDS:
        assert lists(fake, r) == [], r                        # no list GET at all
        (w,) = fake.requests_for(r, watch=True)               # ONE request: list, then watch
        assert {k: w.query.get(k) for k in STREAMING} == STREAMING, (r, w.query)
        assert w.status == 200
    assert_web_answer(server)
    assert answers(server, HEADLESS) == ("NOERROR", ["10.244.1.5", "10.244.2.5", "10.244.2.6"])
    assert answers(server, "nosuch.prod.svc.cluster.local.")[0] == "NXDOMAIN"
    # Changes after the initial-events-end bookmark arrive on that same stream.
    fake.create(service("prod", "api", "10.96.0.40"))
    eventually(server, "api.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.40"]))
    fake.replace(endpointslice("prod", "pg-c", "pg", ["10.244.3.5"], ready=True))
    eventually(server, HEADLESS, ("NOERROR", ["10.244.1.5", "10.244.2.5", "10.244.2.6", "10.244.3.5"]))
    fake.delete("Service", "prod", "db")
    eventually(server, "db.prod.svc.cluster.local.", ("NXDOMAIN", []))
    for r in KINDS:
        assert len(fake.requests_for(r)) == 1, r
    assert "refused the streaming list" not in server.log()


@pytest.mark.parametrize("fake, why", [
    ("refuse", "HTTP 422 Unprocessable Entity: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for "
               "watch unless the WatchList feature gate is enabled"),
    ("ignore", "a BOOKMARK event before the initial-events-end bookmark"),
], indirect=["fake"], ids=["refused", "ignored"])
def test_a_server_without_it_gets_paged_lists(fake, kdns, why):
    server = kdns()
    for r in KINDS:
        assert len(streaming_watches(fake, r)) == 1, r       # asked once...
        (listed,) = lists(fake, r)                           # ...then listed
        assert listed.status == 200 and listed.query.get("limit") == "500"
        watch = fake.requests_for(r, watch=True)[-1]
        assert "sendInitialEvents" not in watch.query and watch.query["resourceVersion"] not in ("", "0")
        assert server.log().count(f"{r}: the API server refused the streaming list ({why}); "
                                  "using paged lists") == 1, server.log()
    assert_web_answer(server)
    assert answers(server, HEADLESS) == ("NOERROR", ["10.244.1.5", "10.244.2.5", "10.244.2.6"])
    fake.create(service("prod", "api", "10.96.0.40"))
    eventually(server, "api.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.40"]))
    # A relist (410) remembers the refusal: a paged list again, no second streaming attempt.
    fake.expire_next_watch("services")
    fake.drop_streams("services")
    assert fake.wait_for(lambda: len(lists(fake, "services")) == 2, WAIT)
    assert len(streaming_watches(fake, "services")) == 1
    fake.create(service("prod", "later", "10.96.0.41"))
    eventually(server, "later.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.41"]))
    assert server.log().count("refused the streaming list") == len(KINDS)


def test_off_lists_paged_and_answers_the_same_as_streaming(fake, kdns):
    streamed = kdns()
    paged = kdns("--api-streaming-list", "off")
    for r in KINDS:
        assert len(lists(fake, r)) == 1 and len(streaming_watches(fake, r)) == 1, r
    queries = [(WEB, "A"), (HEADLESS, "A"), ("_http._tcp.web.prod.svc.cluster.local.", "SRV"),
               ("_http._tcp.pg.prod.svc.cluster.local.", "SRV"), ("web.dev.svc.cluster.local.", "A"),
               ("nosuch.empty.svc.cluster.local.", "A"), ("20.0.96.10.in-addr.arpa.", "PTR")]
    for name, rdtype in queries:
        assert exact(streamed, name, rdtype) == exact(paged, name, rdtype), (name, rdtype)
    assert exact(streamed, WEB) == (
        "opcode QUERY\nrcode NOERROR\nflags QR AA RD\nedns 0\npayload 1232\n;QUESTION\n"
        f"{WEB} IN A\n;ANSWER\n{WEB} 5 IN A 10.96.0.20\n;AUTHORITY\n;ADDITIONAL")
    assert [answers(streamed, n, t) for n, t in queries[1:]] == [
        ("NOERROR", ["10.244.1.5", "10.244.2.5", "10.244.2.6"]),
        ("NOERROR", ["0 100 80 web.prod.svc.cluster.local."]),
        ("NOERROR", ["0 33 8080 10-244-1-5.pg.prod.svc.cluster.local.",
                     "0 33 8080 10-244-2-5.pg.prod.svc.cluster.local.",
                     "0 33 8080 10-244-2-6.pg.prod.svc.cluster.local."]),
        ("NOERROR", ["10.96.1.20"]), ("NXDOMAIN", []), ("NOERROR", ["web.prod.svc.cluster.local."])]


def test_the_flag_takes_auto_or_off_only():
    s = Kdns("--kubeconfig", "/nonexistent", "--api-streaming-list", "on", wait=False)
    assert s.wait_exit() == 2
    assert "--api-streaming-list: invalid choice: 'on' (choose from 'auto', 'off')" in s.log()


# --------------------------------------------------------------------------- ClusterSource

def synced_source(api: FakeAPI, tmp_path, streaming: bool) -> tuple[ClusterSource, RecordingSink]:
    sink = RecordingSink()
    src = ClusterSource(sink, kubeconfig=api.kubeconfig(tmp_path / "kubeconfig"), timeouts=FAST,
                        streaming_list=streaming)
    src.start()
    assert sink.wait(lambda s: s.synced), "the source never synced"
    return src, sink


def test_the_same_snapshot_both_ways(fake, tmp_path):
    fake.create(service("prod", "bad", "10.96.0.50", ports=[{"name": "x", "port": "eighty"}]))  # skipped
    streamed, s_sink = synced_source(fake, tmp_path, True)
    paged, p_sink = synced_source(fake, tmp_path, False)
    try:
        assert len(streaming_watches(fake, "services")) == 1 and len(lists(fake, "services")) == 1
        assert streamed.store.snapshot() == paged.store.snapshot()
        assert s_sink.view == p_sink.view
        assert sorted(s_sink.view.services) == [("dev", "web"), ("prod", "db"), ("prod", "pg"), ("prod", "web")]
        assert s_sink.calls[:2] == [("synced", False), ("reset", True)]
    finally:
        streamed.stop()
        paged.stop()


def test_a_relist_after_410_streams_again(fake, tmp_path):
    src, sink = synced_source(fake, tmp_path, True)
    try:
        assert fake.wait_for(lambda: fake.watchers("services") == 1, WAIT)
        fake.fail("watch", "services", code=500, count=None)
        fake.drop_streams("services")
        n = len(fake.requests_for("services", watch=True))
        assert fake.wait_for(lambda: len(fake.requests_for("services", watch=True)) > n, WAIT)
        fake.delete("Service", "prod", "db")
        fake.create(service("prod", "new", "10.96.0.60"))
        fake.compact()
        fake.clear_faults()
        assert sink.wait(lambda s: s.resets() == 2)
        assert sink.ips() == {"dev/web": "10.96.1.20", "prod/new": "10.96.0.60", "prod/pg": "None",
                              "prod/web": "10.96.0.20"}
        assert src.stats.relists == {"services": 1}
        assert len(streaming_watches(fake, "services")) == 2 and lists(fake, "services") == []
        fake.create(service("prod", "later", "10.96.0.61"))
        assert sink.wait(lambda s: "prod/later" in s.ips())
    finally:
        src.stop()


def test_an_error_event_before_the_bookmark_is_a_refusal(fake, tmp_path, caplog):
    fake.expire_next_watch("services")            # the streaming watch's first line: ERROR 410
    caplog.set_level("INFO", "kdns.cluster")
    src, sink = synced_source(fake, tmp_path, True)
    try:
        assert len(streaming_watches(fake, "services")) == 1 and len(lists(fake, "services")) == 1
        assert len(streaming_watches(fake, "namespaces")) == 1 and lists(fake, "namespaces") == []
        refusals = [r.getMessage() for r in caplog.records if "refused the streaming list" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].startswith(
            "services: the API server refused the streaming list (ERROR event 410 Expired: too old "
            "resource version: "), refusals
        assert sorted(sink.ips()) == ["dev/web", "prod/db", "prod/pg", "prod/web"]
        assert src.stats.relists == {}
    finally:
        src.stop()


def test_a_stream_cut_before_the_bookmark_is_retried_not_refused(fake, tmp_path, caplog):
    fake.drop_after(2, "services")                # two ADDED events, then the connection is cut
    src, sink = synced_source(fake, tmp_path, True)
    try:
        assert len(streaming_watches(fake, "services")) == 2 and lists(fake, "services") == []
        assert not [r for r in caplog.records if "refused the streaming list" in r.getMessage()]
        assert sorted(sink.ips()) == ["dev/web", "prod/db", "prod/pg", "prod/web"]
        assert src.stats.errors == {"services": 1}
    finally:
        src.stop()
