"""The kubernetes plugin's options, against a real kdns: --namespaces, --labels (manifests and the
API's labelSelector), --ignore-empty-service, --noendpoints, --fallthrough, --zone, and the apex
NS naming every Service whose endpoints hold --pod-ip (CoreDNS ns.go nsAddrs, TestNsAddrs)."""

from __future__ import annotations

import json

import dns.rcode
import pytest

from conftest import Kdns, answers, eventually
from dnsstub import Stub
from fakeapi import endpointslice, service

WAIT = 20.0




def labelled(obj: dict, **labels: str) -> dict:
    obj["metadata"].setdefault("labels", {}).update(labels)
    return obj


def cluster(tmp_path, *objs: dict):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))
    return str(path)


OBJECTS = [
    labelled(service("prod", "web", "10.96.0.20"), tier="front"),
    endpointslice("prod", "web-1", "web", ["10.244.1.20"]),
    labelled(service("prod", "empty", "10.96.0.21"), tier="back"),
    service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
    endpointslice("prod", "pg-1", "pg", ["10.244.1.5", "10.244.1.6"]),
    service("dev", "web", "10.96.1.20"),
    # The DNS server's own pods, behind two Services (NodeLocal DNSCache's kube-dns-upstream
    # selects the same pods as kube-dns), and a headless one.
    service("kube-system", "kube-dns", "10.96.0.10"),
    endpointslice("kube-system", "kube-dns-1", "kube-dns", ["10.244.0.10", "10.244.0.11"]),
    service("kube-system", "kube-dns-upstream", "10.96.0.11"),
    endpointslice("kube-system", "kube-dns-upstream-1", "kube-dns-upstream", ["10.244.0.10", "10.244.0.11"]),
    service("kube-system", "dns-headless", "None"),
    endpointslice("kube-system", "dns-headless-1", "dns-headless", ["10.244.0.10", "10.244.0.11"]),
    service("kube-system", "other", "10.96.0.12"),
    endpointslice("kube-system", "other-1", "other", ["10.244.0.99"]),
]


@pytest.fixture
def kdns():
    servers: list[Kdns] = []

    def start(*args: str) -> Kdns:
        s = Kdns(*args)
        servers.append(s)
        return s
    yield start
    for s in servers:
        log = s.stop()
        assert "Traceback" not in log, log


def test_defaults_serve_everything(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS))
    assert answers(s, "web.dev.svc.cluster.local.") == ("NOERROR", ["10.96.1.20"])
    assert answers(s, "empty.prod.svc.cluster.local.") == ("NOERROR", ["10.96.0.21"])
    assert answers(s, "pg.prod.svc.cluster.local.") == ("NOERROR", ["10.244.1.5", "10.244.1.6"])


def test_namespaces_serves_only_those(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--namespaces", "prod,kube-system")
    assert answers(s, "web.prod.svc.cluster.local.") == ("NOERROR", ["10.96.0.20"])
    assert answers(s, "web.dev.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "dev.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "10-1-2-3.dev.pod.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "10-1-2-3.prod.pod.cluster.local.") == ("NOERROR", ["10.1.2.3"])
    assert answers(s, "20.1.96.10.in-addr.arpa.", "PTR") == ("NXDOMAIN", [])
    assert answers(s, "20.0.96.10.in-addr.arpa.", "PTR") == ("NOERROR", ["web.prod.svc.cluster.local."])


def test_labels_select_services_from_manifests(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--labels", "tier in (front, middle)")
    assert answers(s, "web.prod.svc.cluster.local.") == ("NOERROR", ["10.96.0.20"])
    assert answers(s, "empty.prod.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "web.dev.svc.cluster.local.") == ("NXDOMAIN", [])      # no tier label


def test_labels_go_to_the_api_as_label_selector(kdns, tmp_path, api):
    api.create(labelled(service("prod", "web", "10.96.0.20"), tier="front"))
    api.create(labelled(service("prod", "db", "10.96.0.30"), tier="back"))
    s = kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1",
             "--labels", "tier=front")
    eventually(s, "web.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.20"]))
    assert answers(s, "db.prod.svc.cluster.local.") == ("NXDOMAIN", [])
    assert api.wait_for(lambda: api.watchers("services") == 1, WAIT)
    # The Service leaves the selection: the API says DELETED, kdns forgets it.
    api.replace(labelled(service("prod", "web", "10.96.0.20"), tier="back"))
    eventually(s, "web.prod.svc.cluster.local.", ("NXDOMAIN", []))
    api.replace(labelled(service("prod", "db", "10.96.0.30"), tier="front"))
    eventually(s, "db.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.30"]))


def test_a_bad_label_selector_stops_startup(tmp_path):
    s = Kdns("--manifests", cluster(tmp_path, *OBJECTS), "--labels", "tier in front", wait=False)
    assert s.wait_exit() == 2
    assert "kdns: --labels 'tier in front': 'tier in front': 'tier in front' is not a label key" in s.log()


def test_ignore_empty_service(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--ignore-empty-service")
    assert answers(s, "empty.prod.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "web.prod.svc.cluster.local.") == ("NOERROR", ["10.96.0.20"])
    # its cluster IP still has its PTR
    assert answers(s, "21.0.96.10.in-addr.arpa.", "PTR") == ("NOERROR", ["empty.prod.svc.cluster.local."])


def test_noendpoints(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--noendpoints")
    assert answers(s, "web.prod.svc.cluster.local.") == ("NOERROR", ["10.96.0.20"])
    assert answers(s, "pg.prod.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "10-244-1-20.web.prod.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "5.1.244.10.in-addr.arpa.", "PTR") == ("NXDOMAIN", [])


def test_extra_zone_serves_the_same_data(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--zone", "example.internal")
    assert answers(s, "web.prod.svc.example.internal.") == ("NOERROR", ["10.96.0.20"])
    resp = s.query("web.prod.svc.Example.Internal.", "A")
    assert resp.answer[0].name.to_text() == "web.prod.svc.Example.Internal."
    resp = s.query("nosuch.prod.svc.example.internal.", "A")
    assert dns.rcode.to_text(resp.rcode()) == "NXDOMAIN"
    assert resp.authority[0].name.to_text() == "example.internal."
    # PTR targets stay in the cluster domain
    assert answers(s, "20.0.96.10.in-addr.arpa.", "PTR") == ("NOERROR", ["web.prod.svc.cluster.local."])


def test_a_zone_overlapping_the_cluster_zone_is_refused(tmp_path):
    s = Kdns("--manifests", cluster(tmp_path, *OBJECTS), "--zone", "svc.cluster.local", wait=False)
    assert s.wait_exit() == 2
    assert "kdns: --zone 'svc.cluster.local': overlaps the cluster zone 'cluster.local' or a " \
           "reverse zone" in s.log()


@pytest.fixture
def upstream():
    stub = Stub(["gone.prod.svc.cluster.local. 60 IN A 192.0.2.1",
                 "9.9.9.10.in-addr.arpa. 60 IN PTR outside.example.com.",
                 "www.example.com. 60 IN A 192.0.2.80"])
    yield stub
    stub.close()


def test_fallthrough_zones_send_nxdomain_upstream(kdns, tmp_path, upstream):
    up = f"127.0.0.1:{upstream.port}"
    default = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--upstream", up)
    # the default falls through the reverse zones only (kubeadm's Corefile)
    assert answers(default, "9.9.9.10.in-addr.arpa.", "PTR") == ("NOERROR", ["outside.example.com."])
    assert answers(default, "gone.prod.svc.cluster.local.") == ("NXDOMAIN", [])

    every = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--upstream", up, "--fallthrough")
    assert answers(every, "gone.prod.svc.cluster.local.") == ("NOERROR", ["192.0.2.1"])
    assert answers(every, "9.9.9.10.in-addr.arpa.", "PTR") == ("NOERROR", ["outside.example.com."])
    assert answers(every, "web.prod.svc.cluster.local.") == ("NOERROR", ["10.96.0.20"])

    some = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--upstream", up,
                "--fallthrough", "prod.svc.cluster.local")
    assert answers(some, "gone.prod.svc.cluster.local.") == ("NOERROR", ["192.0.2.1"])
    assert answers(some, "9.9.9.10.in-addr.arpa.", "PTR") == ("NXDOMAIN", [])

    none = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--upstream", up, "--no-fallthrough")
    assert answers(none, "9.9.9.10.in-addr.arpa.", "PTR") == ("NXDOMAIN", [])
    assert answers(none, "www.example.com.") == ("NOERROR", ["192.0.2.80"])     # still forwarded


def ns_answer(server: Kdns) -> tuple[list[str], list[str]]:
    resp = server.query("cluster.local.", "NS")
    ns = sorted(rd.to_text() for rrset in resp.answer for rd in rrset)
    glue = sorted(f"{rrset.name} {rd.to_text()}" for rrset in resp.additional for rd in rrset)
    return ns, glue


def test_apex_ns_names_every_service_holding_the_pod_ip(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--pod-ip", "10.244.0.10")
    assert ns_answer(s) == (
        ["10-244-0-10.dns-headless.kube-system.svc.cluster.local.",
         "10-244-0-11.dns-headless.kube-system.svc.cluster.local.",
         "kube-dns-upstream.kube-system.svc.cluster.local.",
         "kube-dns.kube-system.svc.cluster.local."],
        ["10-244-0-10.dns-headless.kube-system.svc.cluster.local. 10.244.0.10",
         "10-244-0-11.dns-headless.kube-system.svc.cluster.local. 10.244.0.11",
         "kube-dns-upstream.kube-system.svc.cluster.local. 10.96.0.11",
         "kube-dns.kube-system.svc.cluster.local. 10.96.0.10"])


def test_apex_ns_without_a_matching_service(kdns, tmp_path):
    s = kdns("--manifests", cluster(tmp_path, *OBJECTS), "--pod-ip", "10.244.9.9")
    assert ns_answer(s) == (["ns.dns.cluster.local."], ["ns.dns.cluster.local. 127.0.0.1"])


def test_manifests_beside_the_api_and_the_api_wins_a_conflict(kdns, tmp_path, api):
    api.create(service("prod", "web", "10.96.0.20"))
    static = cluster(tmp_path, service("prod", "web", "10.96.5.5"), service("prod", "static", "10.96.5.6"))
    s = kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1",
             "--manifests", static)
    eventually(s, "web.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.20"]))
    assert answers(s, "static.prod.svc.cluster.local.") == ("NOERROR", ["10.96.5.6"])
    assert ("kdns: Service prod/web is both in the API and in the manifests "
            f"({static}): the API's object wins") in s.log()
    assert api.wait_for(lambda: api.watchers("services") == 1, WAIT)
    api.delete("Service", "prod", "web")               # the manifest's object comes back
    eventually(s, "web.prod.svc.cluster.local.", ("NOERROR", ["10.96.5.5"]))
    api.create(service("prod", "static", "10.96.0.66"))
    eventually(s, "static.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.66"]))
    # the manifests are still reloaded: a new static object shows, one the API has stays the API's
    cluster(tmp_path, service("prod", "web", "10.96.5.5"), service("prod", "static", "10.96.5.7"),
            service("prod", "added", "10.96.5.8"))
    eventually(s, "added.prod.svc.cluster.local.", ("NOERROR", ["10.96.5.8"]))
    assert answers(s, "static.prod.svc.cluster.local.") == ("NOERROR", ["10.96.0.66"])


def test_noendpoints_and_namespaces_with_the_api(kdns, tmp_path, api):
    api.create(service("prod", "web", "10.96.0.20"))
    api.create(service("dev", "web", "10.96.1.20"))
    api.create(service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-1", "pg", ["10.244.1.5"]))
    s = kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1",
             "--noendpoints", "--namespaces", "prod")
    eventually(s, "web.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.20"]))
    assert answers(s, "pg.prod.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "web.dev.svc.cluster.local.") == ("NXDOMAIN", [])
    assert api.wait_for(lambda: api.watchers("services") == 1, WAIT)
    assert api.watchers("endpointslices") == 0                  # not even watched
    api.create(service("prod", "api", "10.96.0.40"))
    eventually(s, "api.prod.svc.cluster.local.", ("NOERROR", ["10.96.0.40"]))
