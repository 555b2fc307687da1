"""The fake API server is only worth testing against if real clients accept it.

kubectl (client-go) is the second, independent client: if it lists, watches, creates, replaces
and deletes through the fake, the fake's discovery, tables, lists, watch framing and errors are
what client-go expects. The raw-HTTP tests pin the wire details kdns's reflector relies on
(paging, 410s, bookmarks, timeouts, faults), byte for byte where it matters.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import subprocess
import threading
import time

import pytest

import fakeapi
from fakeapi import FakeAPI, endpointslice, service

# $KUBECTL picks another client-go (e.g. Debian's kubernetes-client 1.20) to check against.
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl")


@pytest.fixture
def kubectl(api, tmp_path):
    assert KUBECTL, "kubectl is required (Debian: apt-get install kubernetes-client)"
    config = api.kubeconfig(tmp_path / "kubeconfig")

    def run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([KUBECTL, "--kubeconfig", config, "--cache-dir", str(tmp_path / "cache"),
                               *args], capture_output=True, text=True, timeout=60, input=stdin)
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)} failed:\n{proc.stderr}"
        return proc
    run.config = config
    run.cache = str(tmp_path / "cache")
    return run


def rows(text: str) -> list[list[str]]:
    """kubectl table output without the AGE column (the last one)."""
    return [line.split()[:-1] for line in text.strip().splitlines()]


def seed(api: FakeAPI) -> None:
    api.create(service("prod", "web", "10.96.0.20", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    api.create(service("dev", "db", "10.96.0.30", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(service("prod", "mail", type="ExternalName", external_name="mail.example.org"))
    api.create(endpointslice("prod", "web-a1", "web", ["10.244.1.5", "10.244.1.6"]))


# --------------------------------------------------------------------------- kubectl

def test_kubectl_get_services_all_namespaces(api, kubectl):
    seed(api)
    out = kubectl("get", "svc", "-A").stdout
    assert rows(out) == [
        ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"],
        ["dev", "db", "ClusterIP", "10.96.0.30", "<none>", "5432/TCP"],
        ["prod", "mail", "ExternalName", "<none>", "mail.example.org", "<none>"],
        ["prod", "web", "ClusterIP", "10.96.0.20", "<none>", "80/TCP"],
    ]
    one_ns = kubectl("get", "services", "-n", "dev", "-o", "jsonpath={.items[*].metadata.name}").stdout
    assert one_ns == "db"


def test_kubectl_pages_through_a_chunked_list(api, kubectl):
    for i in range(7):
        api.create(service("prod", f"s{i}", f"10.96.1.{i + 1}"))
    out = kubectl("get", "svc", "-n", "prod", "--chunk-size=3", "-o", "name").stdout
    assert out.split() == [f"service/s{i}" for i in range(7)]
    lists = [r for r in api.requests_for("services", watch=False) if r.query.get("limit") == "3"]
    assert len(lists) == 3 and "continue" in lists[1].query


def test_kubectl_watch_endpointslices(api, kubectl):
    seed(api)
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", kubectl.config, "--cache-dir", kubectl.cache,
                             "get", "endpointslices", "-A", "-w", "--output-watch-events"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_row(timeout: float = 20.0) -> list[str]:
        try:
            return lines.get(timeout=timeout).split()[:-1]
        except queue.Empty:
            proc.kill()
            raise AssertionError("kubectl -w printed nothing: " + proc.stderr.read()) from None

    try:
        assert next_row() == ["EVENT", "NAMESPACE", "NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"]
        assert next_row() == ["ADDED", "prod", "web-a1", "IPv4", "8080", "10.244.1.5,10.244.1.6"]
        assert api.wait_for(lambda: api.watchers("endpointslices") == 1)
        api.create(endpointslice("dev", "db-x", "db", ["10.244.9.9"]))
        assert next_row() == ["ADDED", "dev", "db-x", "IPv4", "8080", "10.244.9.9"]
        api.replace(endpointslice("dev", "db-x", "db", ["10.244.9.10"]))
        assert next_row() == ["MODIFIED", "dev", "db-x", "IPv4", "8080", "10.244.9.10"]
        api.delete("EndpointSlice", "dev", "db-x")
        assert next_row() == ["DELETED", "dev", "db-x", "IPv4", "8080", "10.244.9.10"]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    watch = api.requests_for("endpointslices", watch=True)[0]
    lst = [r for r in api.requests_for("endpointslices", watch=False)][0]
    assert watch.status == 200 and lst.status == 200
    # kubectl resumes exactly where its list left off.
    assert int(watch.query["resourceVersion"]) >= 1000


SLICE_YAML = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-x1
  namespace: prod
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: [%s]}]
"""


def test_kubectl_create_replace_delete(api, kubectl):
    api.create(fakeapi.namespace("prod"))
    assert kubectl("create", "-f", "-", stdin=SLICE_YAML % "10.244.2.7").stdout.strip() == \
        "endpointslice.discovery.k8s.io/api-x1 created"
    stored = api.get("EndpointSlice", "prod", "api-x1")
    assert stored["endpoints"] == [{"addresses": ["10.244.2.7"]}]
    rv1 = int(stored["metadata"]["resourceVersion"])

    again = kubectl("create", "-f", "-", stdin=SLICE_YAML % "10.244.2.7", check=False)
    assert again.returncode != 0
    assert 'endpointslices.discovery.k8s.io "api-x1" already exists' in again.stderr

    assert kubectl("replace", "-f", "-", stdin=SLICE_YAML % "10.244.2.8").stdout.strip() == \
        "endpointslice.discovery.k8s.io/api-x1 replaced"
    stored = api.get("EndpointSlice", "prod", "api-x1")
    assert stored["endpoints"] == [{"addresses": ["10.244.2.8"]}]
    assert int(stored["metadata"]["resourceVersion"]) > rv1

    stale = SLICE_YAML.replace("namespace: prod", f"namespace: prod\n  resourceVersion: '{rv1}'")
    conflict = kubectl("replace", "-f", "-", stdin=stale % "10.244.2.9", check=False)
    assert conflict.returncode != 0 and "the object has been modified" in conflict.stderr

    out = kubectl("get", "endpointslice", "api-x1", "-n", "prod", "-o", "json").stdout
    assert json.loads(out)["metadata"]["labels"] == {"kubernetes.io/service-name": "api"}

    assert kubectl("delete", "endpointslice", "api-x1", "-n", "prod").stdout.strip() == \
        'endpointslice.discovery.k8s.io "api-x1" deleted'
    assert api.get("EndpointSlice", "prod", "api-x1") is None
    missing = kubectl("delete", "endpointslice", "api-x1", "-n", "prod", check=False)
    assert missing.returncode != 0 and 'endpointslices.discovery.k8s.io "api-x1" not found' in missing.stderr


def test_kubectl_create_service_gets_a_cluster_ip(api, kubectl):
    doc = json.dumps(service("default", "web", ports=[{"name": "http", "port": 80}]))
    out = kubectl("create", "-f", "-", "-o", "jsonpath={.spec.clusterIP}", stdin=doc).stdout
    assert out.startswith("10.96.")
    stored = api.get("Service", "default", "web")
    assert stored["spec"]["clusterIP"] == out and stored["spec"]["clusterIPs"] == [out]
    assert stored["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]


# --------------------------------------------------------------------------- raw wire

def get(api: FakeAPI, path: str, headers: dict | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = json.loads(resp.read() or b"null")
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def watch(api: FakeAPI, path: str, *, timeout: float = 10) -> tuple[http.client.HTTPResponse, list]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=timeout)
    conn.request("GET", path)
    return conn.getresponse(), []


def events(resp: http.client.HTTPResponse, n: int) -> list[dict]:
    return [json.loads(resp.readline()) for _ in range(n)]


def test_discovery_documents(api):
    assert get(api, "/api")[2]["versions"] == ["v1"]
    core = {r["name"]: r for r in get(api, "/api/v1")[2]["resources"]}
    assert core["services"]["shortNames"] == ["svc"] and core["namespaces"]["namespaced"] is False
    groups = get(api, "/apis")[2]["groups"]
    assert [g["name"] for g in groups] == ["apps", "discovery.k8s.io", "policy", "rbac.authorization.k8s.io"]
    slices = get(api, "/apis/discovery.k8s.io/v1")[2]["resources"]
    assert [(r["name"], r["kind"], "watch" in r["verbs"]) for r in slices] == \
        [("endpointslices", "EndpointSlice", True)]
    assert get(api, "/version")[2]["major"] == "1"
    status, _, body = get(api, "/apis/batch/v1/jobs")
    assert status == 404 and body["reason"] == "NotFound"


def test_list_pages_with_a_consistent_snapshot_and_expires(api):
    for i in range(5):
        api.create(service("prod", f"s{i}", f"10.96.2.{i + 1}"))
    status, _, first = get(api, "/api/v1/namespaces/prod/services?limit=2")
    assert status == 200 and [o["metadata"]["name"] for o in first["items"]] == ["s0", "s1"]
    assert "kind" not in first["items"][0] and first["metadata"]["remainingItemCount"] == 3
    rv = first["metadata"]["resourceVersion"]
    api.delete("Service", "prod", "s3")                     # after the first page: not seen
    token = first["metadata"]["continue"]
    _, _, second = get(api, f"/api/v1/namespaces/prod/services?limit=2&continue={token}")
    assert [o["metadata"]["name"] for o in second["items"]] == ["s2", "s3"]
    assert second["metadata"]["resourceVersion"] == rv
    api.compact()
    status, _, gone = get(api, f"/api/v1/namespaces/prod/services?limit=2&continue={second['metadata']['continue']}")
    assert status == 410 and gone["reason"] == "Expired" and gone["code"] == 410


def test_label_and_namespace_selection(api):
    seed(api)
    api.create(endpointslice("prod", "orphan", None, ["10.244.7.7"]))
    _, _, body = get(api, "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io%2Fservice-name")
    assert [o["metadata"]["name"] for o in body["items"]] == ["web-a1"]
    _, _, body = get(api, "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21kubernetes.io%2Fservice-name")
    assert [o["metadata"]["name"] for o in body["items"]] == ["orphan"]
    _, _, body = get(api, "/api/v1/namespaces/dev/services")
    assert [o["metadata"]["name"] for o in body["items"]] == ["db"]


def test_watch_replays_from_resource_version_and_bookmarks(api):
    _, _, lst = get(api, "/api/v1/services")
    rv = lst["metadata"]["resourceVersion"]
    api.create(service("prod", "web", "10.96.0.20"))       # after the list: replayed
    resp, _ = watch(api, f"/api/v1/services?watch=true&resourceVersion={rv}&allowWatchBookmarks=true")
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    added, = events(resp, 1)
    assert added["type"] == "ADDED" and added["object"]["kind"] == "Service"
    assert int(added["object"]["metadata"]["resourceVersion"]) > int(rv)
    api.delete("Service", "prod", "web")
    deleted, bookmark = events(resp, 2)
    assert deleted["type"] == "DELETED" and deleted["object"]["metadata"]["name"] == "web"
    assert bookmark == {"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {
        "resourceVersion": str(api.resource_version)}}}
    resp.close()


def test_watch_label_selector_turns_leaving_into_deleted(api):
    api.create(endpointslice("prod", "web-a1", "web", ["10.244.1.5"]))
    rv = api.resource_version
    resp, _ = watch(api, f"/apis/discovery.k8s.io/v1/endpointslices?watch=1&resourceVersion={rv}"
                         "&labelSelector=kubernetes.io%2Fservice-name")
    api.replace(endpointslice("prod", "web-a1", None, ["10.244.1.5"]))
    api.replace(endpointslice("prod", "web-a1", "web", ["10.244.1.5"]))
    assert [e["type"] for e in events(resp, 2)] == ["DELETED", "ADDED"]
    resp.close()


def test_watch_too_old_resource_version_is_an_in_stream_410():
    with FakeAPI(history=3) as api:
        rv = api.resource_version
        for i in range(5):
            api.create(service("prod", f"s{i}", f"10.96.3.{i + 1}"))
        resp, _ = watch(api, f"/api/v1/services?watch=true&resourceVersion={rv}")
        assert resp.status == 200
        err, = events(resp, 1)
        assert err["type"] == "ERROR"
        assert err["object"]["code"] == 410 and err["object"]["reason"] == "Expired"
        assert err["object"]["message"].startswith(f"too old resource version: {rv} (")
        assert resp.read() == b""                            # then a clean end of stream
        recent = api.resource_version - 1
        resp, _ = watch(api, f"/api/v1/services?watch=true&resourceVersion={recent}")
        assert events(resp, 1)[0]["type"] == "ADDED"
        resp.close()


def test_watch_timeout_seconds_ends_cleanly(api):
    resp, _ = watch(api, f"/api/v1/services?watch=true&resourceVersion={api.resource_version}&timeoutSeconds=1")
    assert resp.read() == b""                                # zero-length chunk, no exception


def test_send_initial_events_ends_with_the_annotated_bookmark(api):
    seed(api)
    resp, _ = watch(api, "/api/v1/namespaces/prod/services?watch=true&sendInitialEvents=true"
                         "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    evs = events(resp, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs[:2]] == [("ADDED", "mail"), ("ADDED", "web")]
    assert evs[2]["type"] == "BOOKMARK"
    assert evs[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    resp.close()


def test_injected_status_faults(api):
    api.fail("watch", "services", code=429, retry_after=3)
    status, headers, body = get(api, "/api/v1/services?watch=true&resourceVersion=1000")
    assert status == 429 and headers["Retry-After"] == "3" and body["reason"] == "TooManyRequests"
    api.fail("list", None, code=500)
    assert get(api, "/api/v1/namespaces")[0] == 500
    assert get(api, "/api/v1/namespaces")[0] == 200          # count=1: consumed
    api.fail("watch", "endpointslices", code=403)
    assert get(api, "/api/v1/services?watch=true&timeoutSeconds=0")[0] == 200   # other resource
    assert get(api, "/apis/discovery.k8s.io/v1/endpointslices?watch=true")[0] == 403


def test_dropped_stream_is_a_broken_chunked_body(api):
    api.drop_after(events=1, resource="services")
    rv = api.resource_version
    api.create(service("prod", "a", "10.96.4.1"))
    api.create(service("prod", "b", "10.96.4.2"))
    resp, _ = watch(api, f"/api/v1/services?watch=true&resourceVersion={rv}")
    assert events(resp, 1)[0]["object"]["metadata"]["name"] == "a"
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    resp, _ = watch(api, f"/api/v1/services?watch=true&resourceVersion={rv}")
    assert api.wait_for(lambda: api.watchers("services") == 1)
    assert api.drop_streams("services") == 1
    with pytest.raises(http.client.IncompleteRead):
        resp.read()


def test_split_chunks_still_frame_one_event_per_line(api):
    api.split_chunks = True
    rv = api.resource_version
    api.create(service("prod", "a", "10.96.4.1"))
    resp, _ = watch(api, f"/api/v1/services?watch=true&resourceVersion={rv}")
    assert events(resp, 1)[0]["object"]["metadata"]["name"] == "a"
    resp.close()


def test_stall_answers_nothing_until_released(api):
    api.stall()
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=0.5)
    conn.request("GET", "/api/v1/services")
    with pytest.raises(TimeoutError):
        conn.getresponse()
    conn.close()
    api.unstall()
    assert get(api, "/api/v1/services")[0] == 200


def test_create_validates_like_the_api_server(api):
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    body = json.dumps(service("ghost", "web", "10.96.0.9")).encode()
    conn.request("POST", "/api/v1/namespaces/ghost/services", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 404 and json.loads(resp.read())["message"] == 'namespaces "ghost" not found'
    body = json.dumps(service("prod", "web", "10.96.0.9")).encode()
    conn.request("POST", "/api/v1/namespaces/default/services", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "does not match the namespace" in json.loads(resp.read())["message"]
    conn.close()


def test_requests_are_recorded_with_their_query(api):
    get(api, "/api/v1/services?limit=500&resourceVersion=0")
    req = api.requests[-1]
    assert (req.method, req.path, req.query, req.status) == \
        ("GET", "/api/v1/services", {"limit": "500", "resourceVersion": "0"}, 200)
    assert time.monotonic() >= req.time


def test_kubectl_over_tls_needs_the_token(tmp_path):
    assert KUBECTL
    with FakeAPI(token="s3cret", tls=True) as fake:
        fake.create(service("prod", "web", "10.96.0.20"))
        good = fake.kubeconfig(tmp_path / "good")
        ok = subprocess.run([KUBECTL, "--kubeconfig", good, "get", "svc", "-A", "-o", "name"],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.split() == ["service/web"]
        fake.token, real = "wrong", fake.token
        wrong = fake.kubeconfig(tmp_path / "wrong")
        fake.token = real
        denied = subprocess.run([KUBECTL, "--kubeconfig", wrong, "get", "svc", "-A"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        assert denied.returncode != 0 and "Unauthorized" in denied.stderr


DEPLOYMENT_YAML = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: kdns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kdns}
rules:
- apiGroups: [""]
  resources: [services, namespaces]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kdns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kdns}
subjects: [{kind: ServiceAccount, name: kdns, namespace: kube-system}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: kdns, namespace: kube-system}
spec:
  replicas: 2
  selector: {matchLabels: {k8s-app: kdns}}
  template:
    metadata: {labels: {k8s-app: kdns}}
    spec:
      serviceAccountName: kdns
      containers: [{name: kdns, image: kdns:latest}]
"""


def kubectl_minor() -> int:
    out = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True,
                         timeout=60).stdout
    return int(json.loads(out)["clientVersion"]["minor"].rstrip("+"))


def test_kubectl_apply_dry_run_of_a_deployment_manifest(api, kubectl):
    # Before 1.27 kubectl asks the OpenAPI v2 schema whether a kind supports server dry-run;
    # the fake's v2 document is empty, so only client dry-run applies to those.
    for mode in ("client", "server") if kubectl_minor() >= 27 else ("client",):
        out = kubectl("apply", f"--dry-run={mode}", "-f", "-", stdin=DEPLOYMENT_YAML).stdout
        suffix = "(server dry run)" if mode == "server" else "(dry run)"
        assert out.splitlines() == [
            f"serviceaccount/kdns created {suffix}",
            f"clusterrole.rbac.authorization.k8s.io/kdns created {suffix}",
            f"clusterrolebinding.rbac.authorization.k8s.io/kdns created {suffix}",
            f"deployment.apps/kdns created {suffix}",
        ]
    assert api.get("Deployment", "kube-system", "kdns") is None        # dry runs store nothing
    wrong = kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                    stdin=DEPLOYMENT_YAML.replace("apps/v1", "apps/v1beta9"))
    assert wrong.returncode != 0 and 'no matches for kind "Deployment" in version "apps/v1beta9"' in wrong.stderr
