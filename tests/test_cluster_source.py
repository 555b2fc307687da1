"""kdns.sources.cluster against the fake API server, over real HTTP.

A RecordingSink (a real Sink, not a mock) keeps every call and maintains the view a serving
side would hold, so each test asserts both what the source said and where it left the sink.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import replace

import pytest

from fakeapi import FakeAPI, endpointslice, namespace, pod, service
from kdns import objects
from kdns.objects import Cluster, Endpoint, EndpointSlice, Namespace, Pod, Service, ServicePort
from kdns.sources import cluster, kubeauth
from kdns.sources.cluster import ClusterError, ClusterSource, Store, Timeouts

FAST = Timeouts(connect=2.0, read=1.0, list_read=5.0, watch=30.0, relist_after=300.0,
                backoff_base=0.05, backoff_cap=0.2, page_size=500)
WAIT = 15.0                       # upper bound for anything to happen; never a speed claim


class RecordingSink:
    """Records reset/apply/set_synced and keeps the resulting view, like a serving sink."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.calls: list[tuple] = []
        self.view = Cluster()
        self.synced: bool | None = None

    def reset(self, cluster: Cluster, synced: bool = True) -> None:
        with self.cond:
            self.calls.append(("reset", synced))
            self.view = Cluster(dict(cluster.services), dict(cluster.slices),
                                dict(cluster.namespaces), dict(cluster.pods))
            self.synced = synced
            self.cond.notify_all()

    def apply(self, op: str, obj) -> None:
        with self.cond:
            self.calls.append(("apply", op, type(obj).__name__, _name(obj)))
            table, key = _slot(self.view, obj)
            if op == "DELETED":
                table.pop(key, None)
            else:
                table[key] = obj
            self.cond.notify_all()

    def set_synced(self, synced: bool) -> None:
        with self.cond:
            self.calls.append(("synced", synced))
            self.synced = synced
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def resets(self) -> int:
        with self.cond:
            return sum(1 for c in self.calls if c[0] == "reset")

    def applies(self) -> list[tuple]:
        with self.cond:
            return [c[1:] for c in self.calls if c[0] == "apply"]

    def ips(self) -> dict[str, str]:
        """'ns/name' -> clusterIP for every Service in the view."""
        with self.cond:
            return {f"{k[0]}/{k[1]}": s.cluster_ip for k, s in sorted(self.view.services.items())}

    def endpoints(self) -> dict[str, list[str]]:
        """'ns/service' -> addresses, all slices of a service merged (what DNS would serve)."""
        with self.cond:
            out: dict[str, list[str]] = {}
            for s in self.view.slices.values():
                out.setdefault(f"{s.namespace}/{s.service_name}", []).extend(
                    a for e in s.endpoints for a in e.addresses)
            return {k: sorted(v) for k, v in sorted(out.items())}


def _name(obj) -> str:
    return obj.name if isinstance(obj, Namespace) else f"{obj.namespace}/{obj.name}"


def _slot(view: Cluster, obj):
    if isinstance(obj, Service):
        return view.services, obj.key
    if isinstance(obj, EndpointSlice):
        return view.slices, obj.key
    if isinstance(obj, Namespace):
        return view.namespaces, obj.name
    return view.pods, obj.key


@pytest.fixture
def run(api, tmp_path):
    """Start a ClusterSource on the fake; stop it (and check it stops) after the test."""
    started: list[ClusterSource] = []

    def start(sink: RecordingSink, *, pods: bool = False, timeouts: Timeouts = FAST,
              wait_sync: bool = True) -> ClusterSource:
        src = ClusterSource(sink, kubeconfig=api.kubeconfig(tmp_path / "kubeconfig"), pods=pods,
                            timeouts=timeouts)
        src.start()
        started.append(src)
        if wait_sync:
            assert sink.wait(lambda s: s.synced), "the source never synced"
            # ...and every kind is watching, so a test's faults hit a live stream.
            for kind in src.kinds:
                assert api.wait_for(lambda: api.watchers(kind.resource) == 1, WAIT)
        return src

    yield start
    for src in started:
        src.stop()
        assert not any(t.is_alive() for t in src._threads), "a watch thread did not stop"


def seed(api: FakeAPI) -> None:
    api.create(service("prod", "web", "10.96.0.20"))
    api.create(service("prod", "db", "10.96.0.30", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(service("dev", "web", "10.96.1.20"))
    api.create(endpointslice("prod", "web-a", "web", ["10.244.1.5"]))
    api.create(endpointslice("prod", "web-b", "web", ["10.244.2.5"]))
    api.create(endpointslice("dev", "web-a", "web", ["10.244.3.5"]))


def watches(api: FakeAPI, resource: str) -> list:
    return api.requests_for(resource, watch=True)


# --------------------------------------------------------------------------- sync

def test_initial_sync_is_one_reset_with_every_kind(api, run, caplog):
    seed(api)
    api.create(endpointslice("prod", "orphan", None, ["10.244.9.9"]))          # no service label
    bad = service("prod", "bad", "10.96.0.40", ports=[{"name": "http", "port": 0, "protocol": "TCP"}])
    api.create(bad)
    sink = RecordingSink()
    caplog.set_level(logging.WARNING, logger="kdns.cluster")
    run(sink)
    assert sink.calls[:2] == [("synced", False), ("reset", True)]
    assert sink.ips() == {"dev/web": "10.96.1.20", "prod/db": "10.96.0.30", "prod/web": "10.96.0.20"}
    assert sink.endpoints() == {"dev/web": ["10.244.3.5"], "prod/web": ["10.244.1.5", "10.244.2.5"]}
    assert sorted(sink.view.namespaces) == ["default", "dev", "kube-node-lease", "kube-public", "kube-system", "prod"]
    assert sink.view.pods == {}
    assert sink.view.services[("prod", "db")] == Service(
        "prod", "db", "ClusterIP", "10.96.0.30", ("10.96.0.30",), "", (ServicePort("pg", 5432, "TCP"),))
    assert "skipping Service prod/bad from the API: field spec.ports[0].port" in caplog.text
    assert not api.requests_for("pods")                  # pods only when asked for


def test_lists_raw_paged_and_watches_from_the_list_version(api, run):
    for i in range(7):
        api.create(service("prod", f"s{i}", f"10.96.5.{i + 1}"))
    sink = RecordingSink()
    run(sink, timeouts=replace(FAST, page_size=3))
    assert len(sink.view.services) == 7
    lists = api.requests_for("services", watch=False)
    assert [r.query.get("limit") for r in lists] == ["3", "3", "3"]
    assert "continue" not in lists[0].query and "continue" in lists[1].query
    slices = api.requests_for("endpointslices", watch=False)[0]
    assert slices.query["labelSelector"] == "kubernetes.io/service-name"
    assert api.wait_for(lambda: watches(api, "services"))
    w = watches(api, "services")[0]
    assert w.query["allowWatchBookmarks"] == "true" and int(w.query["timeoutSeconds"]) >= 30
    assert w.query["resourceVersion"] == str(api.resource_version)   # nothing changed since the list


def test_pods_are_watched_in_verified_mode(api, run):
    api.create(pod("prod", "web-0", "10.244.1.5"))
    sink = RecordingSink()
    run(sink, pods=True)
    assert sink.view.pods[("prod", "web-0")].ip == "10.244.1.5"
    api.create(pod("prod", "web-1", "10.244.1.6", phase="Pending"))
    assert sink.wait(lambda s: ("prod", "web-1") in s.view.pods)


def test_not_synced_until_every_kind_lists(api, run):
    seed(api)
    api.fail("list", "endpointslices", code=403, count=3)
    sink = RecordingSink()
    src = run(sink, wait_sync=False)
    assert sink.wait(lambda s: s.synced)
    # Three refused lists came first: the one reset follows the fourth, successful one.
    assert [r.status for r in api.requests_for("endpointslices", watch=False)] == [403, 403, 403, 200]
    assert sink.calls[0] == ("synced", False) and sink.resets() == 1
    assert sink.endpoints()["prod/web"] == ["10.244.1.5", "10.244.2.5"]
    assert src.stats.errors["endpointslices"] == 3


def test_forbidden_list_keeps_it_unsynced_and_says_why(api, run, caplog):
    api.fail("list", "endpointslices", code=403, count=None)
    caplog.set_level(logging.WARNING, logger="kdns.cluster")
    sink = RecordingSink()
    run(sink, wait_sync=False)
    assert api.wait_for(lambda: len(api.requests_for("endpointslices", watch=False)) >= 2)
    assert sink.calls == [("synced", False)]
    assert "listing endpointslices" in caplog.text and "HTTP 403" in caplog.text
    assert "needs list and watch on endpointslices" in caplog.text


# --------------------------------------------------------------------------- events

def test_creates_updates_deletes_of_services_and_slices(api, run):
    seed(api)
    sink = RecordingSink()
    run(sink)
    api.create(service("prod", "api", "10.96.0.50"))
    api.replace(service("prod", "web", "10.96.0.20", ports=[{"name": "https", "port": 443, "protocol": "TCP"}]))
    api.delete("Service", "dev", "web")
    api.create(endpointslice("prod", "api-x", "api", ["10.244.4.1"]))
    api.replace(endpointslice("prod", "web-b", "web", ["10.244.2.6", "10.244.2.7"]))
    api.delete("EndpointSlice", "dev", "web-a")
    assert sink.wait(lambda s: len(s.applies()) == 6)
    # Each kind has its own stream, so only the order within a kind is defined.
    assert [a for a in sink.applies() if a[1] == "Service"] == [
        ("ADDED", "Service", "prod/api"), ("MODIFIED", "Service", "prod/web"), ("DELETED", "Service", "dev/web")]
    assert [a for a in sink.applies() if a[1] == "EndpointSlice"] == [
        ("ADDED", "EndpointSlice", "prod/api-x"), ("MODIFIED", "EndpointSlice", "prod/web-b"),
        ("DELETED", "EndpointSlice", "dev/web-a")]
    assert sink.ips() == {"prod/api": "10.96.0.50", "prod/db": "10.96.0.30", "prod/web": "10.96.0.20"}
    assert sink.view.services[("prod", "web")].ports == (ServicePort("https", 443, "TCP"),)
    assert sink.endpoints() == {"prod/api": ["10.244.4.1"], "prod/web": ["10.244.1.5", "10.244.2.6", "10.244.2.7"]}
    assert sink.resets() == 1


def test_changes_dns_cannot_see_are_not_applied(api, run):
    seed(api)
    sink = RecordingSink()
    run(sink)
    noisy = api.get("Service", "prod", "web")
    noisy["metadata"]["annotations"] = {"deployed-by": "ci"}
    api.replace(noisy)
    api.create(service("prod", "marker", "10.96.0.99"))
    assert sink.wait(lambda s: ("ADDED", "Service", "prod/marker") in s.applies())
    assert sink.applies() == [("ADDED", "Service", "prod/marker")]


def test_a_slice_that_loses_its_service_label_is_deleted(api, run):
    seed(api)
    sink = RecordingSink()
    run(sink)
    api.replace(endpointslice("prod", "web-b", None, ["10.244.2.5"]))
    assert sink.wait(lambda s: s.endpoints().get("prod/web") == ["10.244.1.5"])
    assert sink.applies() == [("DELETED", "EndpointSlice", "prod/web-b")]


def test_bad_objects_are_skipped_and_the_watch_goes_on(api, run, caplog):
    seed(api)
    caplog.set_level(logging.WARNING, logger="kdns.cluster")
    sink = RecordingSink()
    run(sink)
    api.create(service("prod", "broken", "10.96.0.77", ports=[{"name": "Bad_Name", "port": 80}]))
    broken_web = service("prod", "web", "not-an-ip")
    api.replace(broken_web)                          # the old, good web must not linger
    api.create(service("prod", "after", "10.96.0.78"))
    assert sink.wait(lambda s: "prod/after" in s.ips())
    assert sink.ips() == {"dev/web": "10.96.1.20", "prod/after": "10.96.0.78", "prod/db": "10.96.0.30"}
    assert "skipping Service prod/broken from the API: field spec.ports[0].name" in caplog.text
    assert "skipping Service prod/web from the API: field spec.clusterIP" in caplog.text
    assert sink.resets() == 1


def test_namespaces_come_and_go(api, run):
    sink = RecordingSink()
    run(sink)
    api.create(namespace("staging"))
    assert sink.wait(lambda s: "staging" in s.view.namespaces)
    api.delete("Namespace", "", "staging")
    assert sink.wait(lambda s: "staging" not in s.view.namespaces)


# --------------------------------------------------------------------------- faults

def test_relist_after_410_replaces_the_state(api, run):
    seed(api)
    sink = RecordingSink()
    src = run(sink)
    # Keep the services watch down while the world changes, then forget the history.
    api.fail("watch", "services", code=500, count=None)
    api.drop_streams("services")
    n = len(watches(api, "services"))
    assert api.wait_for(lambda: len(watches(api, "services")) > n)
    api.delete("Service", "prod", "db")
    api.create(service("prod", "new", "10.96.0.60"))
    api.compact()
    api.clear_faults()
    assert sink.wait(lambda s: s.resets() == 2)
    assert sink.ips() == {"dev/web": "10.96.1.20", "prod/new": "10.96.0.60", "prod/web": "10.96.0.20"}
    assert src.stats.relists == {"services": 1}
    # It watches again from the relist's version and keeps following.
    api.create(service("prod", "later", "10.96.0.61"))
    assert sink.wait(lambda s: "prod/later" in s.ips())


def test_in_stream_410_forced_on_a_fresh_watch(api, run):
    seed(api)
    sink = RecordingSink()
    src = run(sink)
    api.expire_next_watch("endpointslices")
    api.drop_streams("endpointslices")
    assert sink.wait(lambda s: s.resets() == 2)
    assert src.stats.relists == {"endpointslices": 1}
    assert sink.endpoints()["prod/web"] == ["10.244.1.5", "10.244.2.5"]


def test_relist_when_history_rolls_over_a_slow_reconnect():
    with FakeAPI(history=3, bookmark_interval=0.2) as api:
        seed(api)
        sink = RecordingSink()
        with tempfile.TemporaryDirectory() as tmp:
            src = ClusterSource(sink, kubeconfig=api.kubeconfig(os.path.join(tmp, "kc")), timeouts=FAST)
            src.start()
            try:
                assert sink.wait(lambda s: s.synced)
                api.fail("watch", "services", code=503, count=None)
                api.drop_streams("services")
                for i in range(5):                          # more changes than the ring holds
                    api.create(service("prod", f"burst{i}", f"10.96.7.{i + 1}"))
                api.delete("Service", "prod", "web")
                api.clear_faults()
                assert sink.wait(lambda s: s.resets() == 2 and "prod/burst4" in s.ips())
                assert "prod/web" not in sink.ips()
                assert src.stats.relists == {"services": 1}
            finally:
                src.stop()


def test_reconnect_after_dropped_streams_resumes_without_reset(api, run):
    seed(api)
    sink = RecordingSink()
    run(sink)
    api.drop_after(events=1, resource="services", count=2)
    api.drop_streams("services")
    api.create(service("prod", "a", "10.96.0.71"))
    api.create(service("prod", "b", "10.96.0.72"))
    api.create(service("prod", "c", "10.96.0.73"))
    assert sink.wait(lambda s: {"prod/a", "prod/b", "prod/c"} <= set(s.ips()))
    assert sink.resets() == 1                        # resumed from the last version: no relist
    ws = watches(api, "services")
    assert len(ws) >= 4
    versions = [int(w.query["resourceVersion"]) for w in ws]
    assert versions == sorted(versions)              # never goes back in time
    assert [a for a in sink.applies() if a[1] == "Service"] == [
        ("ADDED", "Service", "prod/a"), ("ADDED", "Service", "prod/b"), ("ADDED", "Service", "prod/c")]


def test_split_chunks_are_reassembled(api, run):
    seed(api)
    api.split_chunks = True
    sink = RecordingSink()
    run(sink)
    api.create(service("prod", "split", "10.96.0.74"))
    assert sink.wait(lambda s: "prod/split" in s.ips())


def test_reconnect_after_500s(api, run):
    seed(api)
    sink = RecordingSink()
    src = run(sink)
    api.fail("watch", "services", code=500, count=3)
    api.drop_streams("services")
    api.create(service("prod", "during", "10.96.0.75"))
    assert sink.wait(lambda s: "prod/during" in s.ips())
    assert [w.status for w in watches(api, "services")][1:4] == [500, 500, 500]
    assert src.stats.errors["services"] >= 4        # the drop and three 500s
    assert sink.resets() == 1


@pytest.mark.parametrize("code", [401, 403])
def test_reconnect_after_auth_errors(api, run, code, caplog):
    seed(api)
    caplog.set_level(logging.WARNING, logger="kdns.cluster")
    sink = RecordingSink()
    run(sink)
    api.fail("watch", "endpointslices", code=code, count=2)
    api.drop_streams("endpointslices")
    api.create(endpointslice("prod", "web-c", "web", ["10.244.5.5"]))
    assert sink.wait(lambda s: "10.244.5.5" in s.endpoints()["prod/web"])
    assert f"HTTP {code}" in caplog.text
    assert sink.resets() == 1


def test_429_retry_after_is_honoured(api, run):
    seed(api)
    sink = RecordingSink()
    run(sink)
    api.fail("watch", "services", code=429, retry_after=1, count=1)
    api.drop_streams("services")
    api.create(service("prod", "patient", "10.96.0.76"))
    assert sink.wait(lambda s: "prod/patient" in s.ips())
    ws = watches(api, "services")
    i = next(i for i, w in enumerate(ws) if w.status == 429)
    # Backoff alone would retry within 0.2 s; the server asked for a full second.
    assert ws[i + 1].time - ws[i].time >= 1.0


def test_stall_changes_nothing_then_converges(api, run):
    seed(api)
    sink = RecordingSink()
    src = run(sink)
    before = list(sink.calls)
    view = sink.ips()
    with api.stalled():
        api.create(service("prod", "in-stall", "10.96.0.80"))
        api.delete("Service", "dev", "web")
        n = len(watches(api, "services"))
        # The read timeout fires and the source retries, more than once, into the silence.
        assert api.wait_for(lambda: len(watches(api, "services")) >= n + 2, timeout=WAIT)
        assert sink.calls == before and sink.ips() == view
        assert src.synced
    assert sink.wait(lambda s: "prod/in-stall" in s.ips() and "dev/web" not in s.ips())
    assert sink.resets() == 1


def test_long_outage_relists(api, run):
    seed(api)
    sink = RecordingSink()
    src = run(sink, timeouts=replace(FAST, relist_after=0.5))
    api.fail("watch", "services", code=503, count=None)
    api.drop_streams("services")
    api.delete("Service", "prod", "db")
    n = len(watches(api, "services"))
    assert api.wait_for(lambda: len(watches(api, "services")) > n + 2)
    assert "prod/db" in sink.ips()                   # outage: the last good data stays
    api.fail("watch", "services", code=503, count=None)
    time.sleep(0.6)                                  # longer than relist_after, still failing
    api.clear_faults()
    assert sink.wait(lambda s: s.resets() >= 2 and "prod/db" not in s.ips())
    assert src.stats.relists.get("services", 0) >= 1


def test_bookmarks_advance_the_resume_version(api, run):
    seed(api)
    sink = RecordingSink()
    run(sink)
    first = int(watches(api, "services")[0].query["resourceVersion"])
    api.create(namespace("elsewhere"))               # moves the global version, not services
    rv_after = api.resource_version
    # Two bookmarks at or past that version have gone out on the services stream.
    assert api.wait_for(lambda: sum(1 for r, v in list(api.bookmarks) if r == "services" and v >= rv_after) >= 2)
    api.drop_streams("services")
    assert api.wait_for(lambda: len(watches(api, "services")) >= 2)
    resumed = int(watches(api, "services")[1].query["resourceVersion"])
    assert first < rv_after <= resumed
    assert sink.resets() == 1


# --------------------------------------------------------------------------- one-shot + config

def test_list_cluster_reads_everything_once(api, tmp_path):
    seed(api)
    got = cluster.list_cluster(api.kubeconfig(tmp_path / "kc"))
    assert sorted(got.services) == [("dev", "web"), ("prod", "db"), ("prod", "web")]
    assert sorted(got.slices) == [("dev", "web-a"), ("prod", "web-a"), ("prod", "web-b")]
    assert "prod" in got.namespaces and got.pods == {}
    assert not api.requests_for("services", watch=True)


def test_kubeconfig_resolution_and_context(api, tmp_path, monkeypatch):
    seed(api)
    path = api.kubeconfig(tmp_path / "kc")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{path}")
    assert ("prod", "web") in cluster.list_cluster().services
    with pytest.raises(ClusterError, match=r"listing services at http://127.0.0.1:9: cannot connect"):
        cluster.list_cluster(context="nowhere")
    with pytest.raises(ClusterError, match=r"context 'nope' in kubeconfig .*nope"):
        cluster.list_cluster(context="nope")
    bad = tmp_path / "bad"
    bad.write_text("garbage: [\n")
    with pytest.raises(ClusterError, match=r"kubeconfig .*bad: not YAML: while parsing"):
        cluster.list_cluster(str(bad))
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ClusterError, match=r"kubeconfig .*bad: not a usable kubeconfig \("):
        cluster.list_cluster(str(bad))
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ClusterError, match=r"kubeconfig ~/.kube/config: no such file \(use --kubeconfig"):
        cluster.list_cluster()
    with pytest.raises(ClusterError, match=r"--in-cluster: .*service account"):
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        cluster.list_cluster(in_cluster=True)


def test_bearer_token_from_kubeconfig(tmp_path):
    with FakeAPI(token="s3cret") as api:
        api.create(service("prod", "web", "10.96.0.20"))
        assert ("prod", "web") in cluster.list_cluster(api.kubeconfig(tmp_path / "kc")).services
        api.token, real = None, api.token
        anonymous = api.kubeconfig(tmp_path / "anon")
        api.token = real
        with pytest.raises(ClusterError, match=r"HTTP 401 Unauthorized: Unauthorized \(the credentials"):
            cluster.list_cluster(anonymous)


# --------------------------------------------------------------------------- the pure step

def test_store_apply_scripted_events():
    store = Store()
    kind = cluster.KINDS["endpointslices"]
    raw = endpointslice("prod", "web-a", "web", ["10.244.1.5"])
    op, obj = store.apply(kind, "ADDED", raw)
    assert op == "ADDED" and obj == EndpointSlice(
        "prod", "web-a", "web", "IPv4", (ServicePort("http", 8080, "TCP"),), (Endpoint(("10.244.1.5",), True),))
    assert store.apply(kind, "MODIFIED", raw) is None                     # nothing new
    raw2 = endpointslice("prod", "web-a", "web", ["10.244.1.5"], ready=False)
    op, obj = store.apply(kind, "MODIFIED", raw2)
    assert op == "MODIFIED" and obj.endpoints[0].ready is False
    op, obj = store.apply(kind, "DELETED", raw2)
    assert op == "DELETED" and obj.name == "web-a" and store.cluster.slices == {}
    assert store.apply(kind, "DELETED", raw2) is None                     # unknown: nothing to say
    assert store.apply(kind, "ADDED", {"metadata": {}}) is None
    ns = cluster.KINDS["namespaces"]
    assert store.apply(ns, "ADDED", namespace("prod")) == ("ADDED", Namespace("prod"))
    assert store.cluster.namespaces == {"prod": Namespace("prod")}


def test_backoff_grows_jittered_and_capped():
    b = cluster.Backoff(base=1.0, cap=8.0, rng=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    low = cluster.Backoff(base=1.0, cap=8.0, rng=lambda: 0.0)
    assert low.next() == 0.5 and b.next() == 1.0


def test_objects_from_the_api_match_the_manifest_parsers(api, run):
    """Both sources strip with the same functions: a Service read from the API equals the
    one parsed from the manifest dict it was created from."""
    doc = service("prod", "web", "10.96.0.20", ports=[{"name": "http", "port": 80, "protocol": "TCP"}])
    api.create(doc)
    sink = RecordingSink()
    run(sink)
    assert sink.view.services[("prod", "web")] == objects.service_from_dict(doc)


def test_in_cluster_service_account_over_tls(tmp_path, monkeypatch):
    """--in-cluster: https to KUBERNETES_SERVICE_HOST:PORT, the mounted CA, the bearer token."""
    with FakeAPI(token="sa-token", tls=True) as api:
        seed(api)
        sa = tmp_path / "serviceaccount"
        sa.mkdir()
        (sa / "token").write_text("sa-token")
        (sa / "ca.crt").write_text(open(api.ca_file).read())
        monkeypatch.setattr(kubeauth, "SERVICE_ACCOUNT_DIR", str(sa))   # where the loader reads it
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        got = cluster.list_cluster(in_cluster=True)
        assert sorted(got.services) == [("dev", "web"), ("prod", "db"), ("prod", "web")]
        sink = RecordingSink()
        src = ClusterSource(sink, in_cluster=True, timeouts=FAST)
        assert src.host == f"https://127.0.0.1:{api.port}"
        src.start()
        try:
            assert sink.wait(lambda s: s.synced)
            api.create(service("prod", "tls", "10.96.0.90"))
            assert sink.wait(lambda s: "prod/tls" in s.ips())
        finally:
            src.stop()
        (sa / "ca.crt").write_text("")
        with pytest.raises(ClusterError, match=r"--in-cluster: Cert file exists but empty"):
            cluster.list_cluster(in_cluster=True)
        other = FakeAPI(tls=True).start()                 # a CA that did not sign the server
        try:
            (sa / "ca.crt").write_text(open(other.ca_file).read())
            with pytest.raises(ClusterError, match=r"listing services at https://127.0.0.1:\d+: .*CERTIFICATE_VERIFY_FAILED"):
                cluster.list_cluster(in_cluster=True)
        finally:
            other.stop()


class FlakySink(RecordingSink):
    """A serving side with a bug: it raises on one object, once."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison

    def apply(self, op: str, obj) -> None:
        if obj.name == self.poison:
            self.poison = ""
            raise RuntimeError("boom")
        super().apply(op, obj)


def test_a_failing_sink_is_logged_and_healed_by_a_relist(api, run, caplog):
    seed(api)
    caplog.set_level(logging.WARNING, logger="kdns.cluster")
    sink = FlakySink("poison")
    run(sink)
    api.create(service("prod", "poison", "10.96.0.91"))
    assert sink.wait(lambda s: s.resets() == 2 and "prod/poison" in s.ips())
    assert "the serving side failed to take ADDED Service poison; relisting to recover" in caplog.text
    api.create(service("prod", "after", "10.96.0.92"))
    assert sink.wait(lambda s: "prod/after" in s.ips())


def test_step_scripted_watch_events():
    store = Store()
    svc = cluster.KINDS["services"]
    added = {"type": "ADDED", "object": {**service("prod", "web", "10.96.0.20"),
                                         "metadata": {"name": "web", "namespace": "prod", "resourceVersion": "11"}}}
    change, rv = cluster.step(store, svc, added)
    assert change == ("ADDED", objects.service_from_dict(added["object"])) and rv == "11"
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1",
                                                "metadata": {"resourceVersion": "20"}}}
    assert cluster.step(store, svc, bookmark) == (None, "20")
    gone = {"type": "DELETED", "object": {**added["object"], "metadata": {**added["object"]["metadata"],
                                                                          "resourceVersion": "21"}}}
    change, rv = cluster.step(store, svc, gone)
    assert change[0] == "DELETED" and change[1].name == "web" and rv == "21" and store.cluster.services == {}
    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                           "message": "too old resource version: 5 (10)"}}
    with pytest.raises(cluster.Expired, match=r"too old resource version: 5 \(10\)"):
        cluster.step(store, svc, expired)
    with pytest.raises(cluster.StreamError, match="ERROR event 500 InternalError: etcd down"):
        cluster.step(store, svc, {"type": "ERROR", "object": {"code": 500, "reason": "InternalError",
                                                              "message": "etcd down"}})
    for garbage in ([], {"type": "ADDED"}, {"type": "ADDED", "object": "x"}, {"object": {}}):
        with pytest.raises(cluster.BadEvent):
            cluster.step(store, svc, garbage)
    assert cluster.step(store, svc, {"type": "SURPRISE", "object": {}}) == (None, None)


def test_undecodable_lines_are_skipped(api, run, caplog):
    seed(api)
    caplog.set_level(logging.WARNING, logger="kdns.cluster")
    sink = RecordingSink()
    src = run(sink)
    api.garbage_next_watch("services")
    api.garbage_next_watch("services", line=b'{"type": "ADDED", "object": null}\n')
    api.drop_streams("services")
    assert api.wait_for(lambda: api.watchers("services") == 1 and len(watches(api, "services")) == 2)
    api.create(service("prod", "after-garbage", "10.96.0.93"))
    assert sink.wait(lambda s: "prod/after-garbage" in s.ips())
    assert "services: skipping an undecodable watch event: Expecting property name" in caplog.text
    assert sink.resets() == 1
    api.drop_streams("services")
    assert api.wait_for(lambda: len(watches(api, "services")) == 3)
    api.create(service("prod", "after-null", "10.96.0.94"))
    assert sink.wait(lambda s: "prod/after-null" in s.ips())
    assert "skipping an undecodable watch event: no type or no object" in caplog.text
    assert src.stats.skipped == 2


def test_a_watch_that_ends_at_once_is_not_spun_on(api, run):
    seed(api)
    sink = RecordingSink()
    run(sink, timeouts=replace(FAST, watch=0.0), wait_sync=False)   # timeoutSeconds=0: ends at once
    assert sink.wait(lambda s: s.synced)
    n = len(watches(api, "services"))
    api.create(service("prod", "later", "10.96.0.95"))
    assert sink.wait(lambda s: "prod/later" in s.ips())
    time.sleep(1.0)
    # Backing off (0.05 s doubling to 0.2 s), a second holds a handful of retries, not hundreds.
    assert len(watches(api, "services")) - n < 30


def test_the_kubernetes_parts_imported_on_use_are_the_real_ones():
    """kdns.sources.kubeimport: kube_config's ApiClient, OAuth2Session and oauthlib (OIDC
    refresh only) import when used, and are then the client's own classes."""
    import sys
    from kubernetes.client.configuration import Configuration
    from kubernetes.config import kube_config
    client = kube_config.ApiClient(configuration=Configuration())
    assert type(client).__module__ == "kubernetes.client.api_client"
    session = kube_config.OAuth2Session(client_id="kdns")
    assert type(session).__module__ == "requests_oauthlib.oauth2_session"
    assert kube_config.oauthlib.oauth2.rfc6749.errors.InvalidClientIdError.__module__ == \
        "oauthlib.oauth2.rfc6749.errors"
    assert type(sys.modules["requests_oauthlib"]).__name__ == "module"
    assert sys.modules["requests_oauthlib"].__file__.endswith("__init__.py")
