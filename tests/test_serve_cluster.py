"""`kdns serve --kubeconfig` end to end: the fake API server on one side, dnspython on the other.

Every check is a DNS answer from a real kdns process; the API side is driven through the fake's
test controls (changes, faults, stalls). Waits are bounded polls; none is a speed claim.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, Kdns, answers, eventually
from fakeapi import FakeAPI, endpointslice, pod, service

WAIT = 20.0




WEB = "web.prod.svc.cluster.local."
DB = "db.prod.svc.cluster.local."
HEADLESS = "pg.prod.svc.cluster.local."


def seed(api: FakeAPI) -> None:
    api.create(service("prod", "web", "10.96.0.20"))
    api.create(service("prod", "db", "10.96.0.30"))
    api.create(service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-a", "pg", ["10.244.1.5"]))
    api.create(endpointslice("prod", "pg-b", "pg", ["10.244.2.5"]))


@pytest.fixture
def api(api):
    seed(api)
    return api


@pytest.fixture
def kdns(api, tmp_path):
    servers: list[Kdns] = []

    def start(*extra: str) -> Kdns:
        s = Kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1", *extra)
        servers.append(s)
        return s
    yield start
    for s in servers:
        log = s.stop()
        assert s.proc.returncode == 0, log
        assert "Traceback" not in log, log


def synced(api: FakeAPI, server: Kdns) -> Kdns:
    eventually(server, WEB, ("NOERROR", ["10.96.0.20"]))
    for r in ("services", "endpointslices", "namespaces"):
        assert api.wait_for(lambda: api.watchers(r) == 1, WAIT), r
    return server


def test_servfail_until_the_first_sync(api, kdns):
    api.stall()                                   # the first list hangs
    server = kdns()
    assert answers(server, WEB) == ("SERVFAIL", [])
    assert answers(server, "nosuch.prod.svc.cluster.local.") == ("SERVFAIL", [])   # never NXDOMAIN
    api.unstall()
    eventually(server, WEB, ("NOERROR", ["10.96.0.20"]))
    assert answers(server, "nosuch.prod.svc.cluster.local.")[0] == "NXDOMAIN"


def test_creates_updates_and_deletes_show_up(api, kdns):
    server = synced(api, kdns())
    eventually(server, HEADLESS, ("NOERROR", ["10.244.1.5", "10.244.2.5"]))   # both slices merged
    api.create(service("prod", "api", "10.96.0.40"))
    eventually(server, "api.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.40"]))
    api.replace(service("prod", "api", "10.96.0.40", ports=[{"name": "grpc", "port": 9090, "protocol": "TCP"}]))
    eventually(server, "_grpc._tcp.api.prod.svc.cluster.local.",
               ("NOERROR", ["0 100 9090 api.prod.svc.cluster.local."]), "SRV")
    api.delete("Service", "prod", "db")
    eventually(server, DB, ("NXDOMAIN", []))
    api.replace(endpointslice("prod", "pg-b", "pg", ["10.244.2.6", "10.244.2.7"]))
    eventually(server, HEADLESS, ("NOERROR", ["10.244.1.5", "10.244.2.6", "10.244.2.7"]))
    api.delete("EndpointSlice", "prod", "pg-a")
    eventually(server, HEADLESS, ("NOERROR", ["10.244.2.6", "10.244.2.7"]))
    api.create(endpointslice("prod", "pg-c", "pg", ["10.244.3.5"], ready=False))
    eventually(server, HEADLESS, ("NOERROR", ["10.244.2.6", "10.244.2.7"]))   # not ready: not served
    api.replace(endpointslice("prod", "pg-c", "pg", ["10.244.3.5"], ready=True))
    eventually(server, HEADLESS, ("NOERROR", ["10.244.2.6", "10.244.2.7", "10.244.3.5"]))


def test_relist_after_410(api, kdns):
    server = synced(api, kdns())
    api.fail("watch", "services", code=500, count=None)
    api.drop_streams("services")
    n = len(api.requests_for("services", watch=True))
    assert api.wait_for(lambda: len(api.requests_for("services", watch=True)) > n, WAIT)
    api.delete("Service", "prod", "db")           # while kdns cannot watch...
    api.create(service("prod", "fresh", "10.96.0.50"))
    api.compact()                                 # ...and then the history is gone
    api.clear_faults()
    eventually(server, DB, ("NXDOMAIN", []))
    eventually(server, "fresh.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.50"]))
    assert "services: relisted at resourceVersion" in server.log()


def test_reconnect_after_dropped_streams_and_500s(api, kdns):
    server = synced(api, kdns())
    api.drop_streams()
    api.create(service("prod", "after-drop", "10.96.0.60"))
    eventually(server, "after-drop.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.60"]))
    api.fail("watch", None, code=500, count=3)
    api.drop_streams()
    api.replace(endpointslice("prod", "pg-a", "pg", ["10.244.1.9"]))
    api.delete("Service", "prod", "web")
    eventually(server, HEADLESS, ("NOERROR", ["10.244.1.9", "10.244.2.5"]))
    eventually(server, WEB, ("NXDOMAIN", []))
    assert "HTTP 500" in server.log() and "relisted" not in server.log()


def test_no_change_during_a_stall_then_convergence(api, kdns):
    server = synced(api, kdns())
    with api.stalled():
        api.delete("Service", "prod", "web")
        api.create(service("prod", "late", "10.96.0.70"))
        n = len(api.requests_for("services", watch=True))
        # kdns gives up on the silent stream (read timeout 1 s) and retries into the silence...
        assert api.wait_for(lambda: len(api.requests_for("services", watch=True)) >= n + 2, WAIT)
        # ...while it keeps answering from the last good data.
        assert answers(server, WEB) == ("NOERROR", ["10.96.0.20"])
        assert answers(server, "late.prod.svc.cluster.local.") == ("NXDOMAIN", [])
        assert answers(server, HEADLESS) == ("NOERROR", ["10.244.1.5", "10.244.2.5"])
    eventually(server, WEB, ("NXDOMAIN", []))
    eventually(server, "late.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.70"]))


def test_bad_kubeconfig_is_a_clear_error(tmp_path):
    server = Kdns("--kubeconfig", str(tmp_path / "missing"), wait=False)
    server.proc.wait(30)
    out = server.stop()
    assert server.proc.returncode == 2
    assert out.strip() == f"kdns: kubeconfig {tmp_path / 'missing'}: no such file"


def test_bad_manifests_beside_the_api_stop_startup(api, tmp_path):
    # --manifests with --kubeconfig adds static objects to the cluster's (test_kube_options.py);
    # a bad manifest stops startup as it does alone.
    (tmp_path / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
                                       "spec: {clusterIP: 10.96.0.300}\n")
    server = Kdns("--kubeconfig", api.kubeconfig(tmp_path / "kc"), "--manifests",
                  str(tmp_path / "bad.yaml"), wait=False)
    server.proc.wait(30)
    out = server.stop()
    assert server.proc.returncode == 2, out
    assert "field spec.clusterIP: invalid IP address '10.96.0.300'" in out


def test_kdns_env_reads_the_same_source(api, tmp_path):
    api.create(service("default", "kubernetes", "10.96.0.1",
                       ports=[{"name": "https", "port": 443, "protocol": "TCP"}]))
    kc = api.kubeconfig(tmp_path / "kubeconfig")
    out = subprocess.run([sys.executable, "-m", "kdns", "env", "--kubeconfig", kc, "--namespace", "prod"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "KUBERNETES_SERVICE_HOST=10.96.0.1" in lines
    assert "WEB_SERVICE_HOST=10.96.0.20" in lines and "DB_PORT=tcp://10.96.0.30:80" in lines
    assert not any(line.startswith("PG_SERVICE_HOST") for line in lines)     # headless: none
    assert not api.requests_for("services", watch=True)                      # one listing, no watch
    down = subprocess.run([sys.executable, "-m", "kdns", "env", "--kubeconfig", kc, "--context", "nowhere"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert down.returncode == 2
    assert down.stderr.strip() == ("kdns env: cannot list Services from the cluster: listing services at "
                                   "http://127.0.0.1:9: cannot connect ([Errno 111] Connection refused)")


def test_pods_verified_follows_the_pod_watch(api, kdns):
    api.create(pod("prod", "web-0", "10.244.1.5"))
    server = synced(api, kdns("--pods", "verified"))
    assert api.wait_for(lambda: api.watchers("pods") == 1, WAIT)
    eventually(server, "10-244-1-5.prod.pod.cluster.local.", ("NOERROR", ["10.244.1.5"]))
    assert answers(server, "10-244-1-6.prod.pod.cluster.local.")[0] == "NXDOMAIN"
    api.create(pod("prod", "web-1", "10.244.1.6"))
    eventually(server, "10-244-1-6.prod.pod.cluster.local.", ("NOERROR", ["10.244.1.6"]))
    api.delete("Pod", "prod", "web-0")
    eventually(server, "10-244-1-5.prod.pod.cluster.local.", ("NXDOMAIN", []))


def test_pods_are_not_watched_unless_verified(api, kdns):
    server = synced(api, kdns())
    assert answers(server, "10-244-9-9.prod.pod.cluster.local.") == ("NOERROR", ["10.244.9.9"])   # insecure
    assert not api.requests_for("pods")


def test_ready_and_metrics_follow_the_watch(api, kdns):
    from test_http import get, http_port, scrape, value

    api.stall()                                       # the first listing hangs
    server = kdns("--http", "127.0.0.1:0")
    port = http_port(server)
    code, body, _ = get(port, "/ready")
    assert code == 503
    assert body.strip() == ("not synced: waiting for the first full listing of the Kubernetes API "
                            "(services, endpointslices, namespaces)")
    assert value(scrape(port), "kdns_synced") == 0
    api.unstall()
    synced(api, server)
    assert get(port, "/ready")[:2] == (200, "OK")
    m = scrape(port)
    assert value(m, "kdns_synced") == 1
    for kind in ("services", "endpointslices", "namespaces"):
        assert value(m, "kdns_relists_total", kind=kind, reason="start") == 1
    api.create(service("prod", "counted", "10.96.0.80"))
    eventually(server, "counted.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.80"]))
    assert value(scrape(port), "kdns_watch_events_total", kind="services", type="ADDED") == 1
    # A 500 at watch start, then a 410: an error counted, a relist for the right reason.
    api.fail("watch", "services", code=500)
    api.expire_next_watch("services")
    api.drop_streams("services")
    deadline = time.monotonic() + WAIT
    while value(scrape(port), "kdns_relists_total", kind="services", reason="gone") < 1 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    m = scrape(port)
    assert value(m, "kdns_relists_total", kind="services", reason="gone") == 1
    assert value(m, "kdns_watch_errors_total", kind="services", reason="500") == 1
    assert value(m, "kdns_watch_errors_total", kind="services", reason="disconnect") == 1
    assert value(m, "kdns_watch_events_total", kind="services", type="ERROR") == 1
    assert api.wait_for(lambda: any(r == "namespaces" for r, _ in list(api.bookmarks)), WAIT)
    deadline = time.monotonic() + WAIT
    while value(scrape(port), "kdns_watch_events_total", kind="namespaces", type="BOOKMARK") < 1 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(scrape(port), "kdns_watch_events_total", kind="namespaces", type="BOOKMARK") >= 1
    assert get(port, "/ready")[:2] == (200, "OK")     # an outage or relist never un-readies


def test_the_deploy_manifest_applied_through_kubectl_is_served(api, kdns, tmp_path):
    """deploy/kdns.yaml, kube-dns.yaml and kube-dns-upstream.yaml, created with kubectl (validation on) against
    the fake API, then answered by kdns watching that API: the Services they define resolve."""
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    assert kubectl, "kubectl is required (Debian: apt-get install kubernetes-client)"
    server = synced(api, kdns())
    config = api.kubeconfig(tmp_path / "kubectl-config")
    out = subprocess.run([kubectl, "--kubeconfig", config, "--cache-dir", str(tmp_path / "cache"),
                          "create", "-f", str(ROOT / "deploy" / "kdns.yaml"),
                          "-f", str(ROOT / "deploy" / "kube-dns.yaml"),
                          "-f", str(ROOT / "deploy" / "kube-dns-upstream.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("kube-dns", "kdns", "kube-dns-upstream"):
        assert f"service/{name} created" in out.stdout.splitlines()
        want = api.get("Service", "kube-system", name)["spec"]["clusterIP"]
        eventually(server, f"{name}.kube-system.svc.cluster.local.", ("NOERROR", [want]))
    assert api.get("Deployment", "kube-system", "kdns")["spec"]["replicas"] == 2
