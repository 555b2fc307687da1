"""`kdns explain`, through the real command line: each kind of explanation, a pod's search walk
for glibc and musl (the outcomes tests/test_resolvers.py sees from the real C libraries), and
--ask against a real kdns and against a deliberately wrong server (tests/dnsstub.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Kdns
from dnsstub import Stub, closed_port

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
CLUSTER = DATA / "explain-cluster.yaml"
RESOLVERS = DATA / "resolvers-cluster.yaml"
SHOP = ROOT / "zones" / "examples" / "shop"


def explain(*args: str, manifests: Path = CLUSTER) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kdns", "explain", "--manifests", str(manifests), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


def as_json(*args: str, manifests: Path = CLUSTER, rc: int | None = None) -> dict:
    out = explain(*args, "--format", "json", manifests=manifests)
    if rc is not None:
        assert out.returncode == rc, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout)


# ------------------------------------------------------------------ positive answers

def test_clusterip_answer_names_service_file_and_document():
    got = as_json("webapp.shop.svc.cluster.local", rc=0)
    (ex,) = got["answer"]
    assert (ex["rcode"], ex["kind"]) == ("NOERROR", "positive")
    assert ex["rule"] == ("ClusterIP: A/AAAA of spec.clusterIPs (10.96.1.10); endpoints do not matter; "
                          "note: no ready endpoints, so DNS answers but connections to it will fail")
    assert ex["records"] == [{
        "section": "answer", "record": "webapp.shop.svc.cluster.local. 5 IN A 10.96.1.10",
        "origin": f"Service shop/webapp ({CLUSTER}, document 2) spec.clusterIPs[0]"}]


def test_headless_answer_names_slice_endpoint_condition_and_the_not_ready():
    got = as_json("peers.shop.svc.cluster.local", rc=0)
    (ex,) = got["answer"]
    assert ex["rule"] == ("headless: one A/AAAA per ready endpoint address; "
                          "1 of 3 not ready: peers-2 (ready=false)")
    where = f"EndpointSlice shop/peers-x7k2p ({CLUSTER}, document 7)"
    assert ex["records"] == [
        {"section": "answer", "record": "peers.shop.svc.cluster.local. 5 IN A 10.244.2.10",
         "origin": f"{where} endpoints[0] hostname peers-0, pod peers-0, ready"},
        {"section": "answer", "record": "peers.shop.svc.cluster.local. 5 IN A 10.244.2.11",
         "origin": f"{where} endpoints[1] hostname peers-1, pod peers-1, ready"}]


def test_derived_endpoint_names_the_workload_and_its_file():
    out = explain("db-1.db.shop.svc.cluster.local", manifests=SHOP)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "db-1.db.shop.svc.cluster.local. A: NOERROR"
    assert lines[2].startswith("  answer: db-1.db.shop.svc.cluster.local. 5 IN A 10.244.")
    assert lines[3].startswith("      from EndpointSlice shop/db-") and lines[3].endswith(
        f"(derived by kdns) endpoints[1] hostname db-1, pod db-1 of StatefulSet shop/db "
        f"({SHOP / 'db.yaml'}, document 1), ready")


def test_srv_and_ptr_origins():
    (ex,) = as_json("_https._tcp.webapp.shop.svc.cluster.local", "SRV", rc=0)["answer"]
    assert [r["record"] for r in ex["records"]] == [
        "_https._tcp.webapp.shop.svc.cluster.local. 5 IN SRV 0 100 443 webapp.shop.svc.cluster.local.",
        "webapp.shop.svc.cluster.local. 5 IN A 10.96.1.10"]
    assert ex["records"][0]["origin"] == f"Service shop/webapp ({CLUSTER}, document 2) spec.ports 'https' 443/TCP"
    (ex,) = as_json("10.1.96.10.in-addr.arpa", "PTR", rc=0)["answer"]
    assert ex["records"][0]["origin"] == f"cluster IP of Service shop/webapp ({CLUSTER}, document 2)"


# ------------------------------------------------------------------ negative answers

NEGATIVE = [
    ("missing-service-did-you-mean", ["web.shop.svc.cluster.local"], "NXDOMAIN",
     ["namespace 'shop' exists but has no Service 'web'"],
     ["did you mean 'webapp' (shop) or 'web' (store)?"]),
    ("headless-no-ready", ["db.default.svc.cluster.local"], "NXDOMAIN",
     ["Service default/db is headless and has no ready endpoints: NXDOMAIN for every type "
      "(Kubernetes DNS spec §2.4.1)"],
     ["the pods must be ready, or set spec.publishNotReadyAddresses: true (the EndpointSlice "
      "controller then marks every endpoint ready)"]),
    ("port-name", ["_http._tcp.webapp.shop.svc.cluster.local", "SRV"], "NXDOMAIN",
     ["'_http._tcp' - the Service has ports 'https', 'metrics'"],
     ["did you mean _https._tcp.webapp.shop.svc.cluster.local?"]),
    ("externalname-ip", ["legacy.shop.svc.cluster.local"], "NXDOMAIN",
     [f"Service shop/legacy ({CLUSTER}, document 8): ExternalName target 192.0.2.7 is an IP "
      f"address: no record (Kubernetes DNS spec)"],
     ["use a selector-less Service with an EndpointSlice holding that address"]),
    ("pods-disabled", ["--pods", "disabled", "10-244-1-1.shop.pod.cluster.local"], "NXDOMAIN",
     ["pod records are disabled (--pods disabled)"],
     ["serve with --pods insecure (kubeadm's default) or verified"]),
    ("not-ready-endpoint", ["peers-2.peers.shop.svc.cluster.local"], "NXDOMAIN",
     [f"endpoint peers-2 (10.244.2.12) in EndpointSlice shop/peers-x7k2p ({CLUSTER}, document 7) "
      f"endpoints[2] is not ready (ready=false): not-ready endpoints have no name"], []),
    ("subdomain-rule", ["cache-0.cache.shop.svc.cluster.local"], "NXDOMAIN",
     [f"no ready endpoint of Service shop/cache ({CLUSTER}, document 11) is named 'cache-0'",
      "pod cache-0 has hostname cache-0 but subdomain 'cache-peers', not 'cache': the "
      "EndpointSlice controller sets an endpoint's hostname only under the Service its subdomain names"],
     None),
    ("unknown-namespace", ["web.shpo.svc.cluster.local"], "NXDOMAIN",
     ["namespace 'shpo' does not exist in the manifests"], ["did you mean namespace 'shop'?"]),
    ("not-svc-or-pod", ["web.shop.cluster.local"], "NXDOMAIN",
     ["'shop' is neither 'svc' nor 'pod': nothing exists under shop.cluster.local"],
     ["did you mean web.shop.svc.cluster.local?"]),
    ("wrong-family-nodata", ["webapp.shop.svc.cluster.local", "AAAA"], "NOERROR",
     [f"Service shop/webapp ({CLUSTER}, document 2) has no IPv6 address: NODATA"], []),
]


@pytest.mark.parametrize("args,rcode,reasons,suggestions", [c[1:] for c in NEGATIVE],
                         ids=[c[0] for c in NEGATIVE])
def test_negative_answers_say_why(args, rcode, reasons, suggestions):
    got = as_json(*args, rc=1)
    (ex,) = got["answer"]
    assert ex["rcode"] == rcode
    assert ex["kind"] == ("nodata" if rcode == "NOERROR" else "nxdomain")
    assert ex["reasons"] == reasons
    if suggestions is not None:
        assert ex["suggestions"] == suggestions
    assert [r["section"] for r in ex["records"]] == ["authority"]       # the SOA, nothing else


def test_text_format_reads_like_the_json():
    out = explain("web.shop.svc.cluster.local")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == "web.shop.svc.cluster.local. A: NXDOMAIN"
    assert "  why: namespace 'shop' exists but has no Service 'web'" in lines
    assert "  fix: did you mean 'webapp' (shop) or 'web' (store)?" in lines


def test_bad_input_is_a_clear_error():
    out = explain("web.shop.svc.cluster.local", "BOGUS")
    assert out.returncode == 2 and "kdns explain: unknown type 'BOGUS'" in out.stderr
    out = explain("x", "--from", "a", "--pod", "p.yaml")
    assert out.returncode == 2 and "--from and --pod both give the pod's namespace" in out.stderr
    out = explain("x", manifests=DATA / "nope.yaml")
    assert out.returncode == 2 and "no such file or directory" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------ the search walk

def walk_of(*args: str, rc: int) -> dict:
    return as_json(*args, manifests=RESOLVERS, rc=rc)["walk"]


def steps(w: dict) -> list[tuple]:
    return [(s["name"], tuple(q["rcode"] for q in s["queries"]), s["verdict"]) for s in w["steps"]]


def test_walk_glibc_and_musl_find_service_names():
    # test_resolvers.py: getent/musl resolve webapp, webapp.default and web.prod from "default".
    for resolver in ("glibc", "musl"):
        w = walk_of("--from", "default", "--resolver", resolver, "webapp.default", rc=0)
        assert steps(w) == [
            ("webapp.default.default.svc.cluster.local.", ("NXDOMAIN", "NXDOMAIN"), "next"),
            ("webapp.default.svc.cluster.local.", ("NOERROR", "NOERROR"), "answers")]
        assert w["answered_by"] == "webapp.default.svc.cluster.local."
        w = walk_of("--from", "default", "--resolver", resolver, "web.prod", rc=0)
        assert [s[0] for s in steps(w)] == ["web.prod.default.svc.cluster.local.", "web.prod.svc.cluster.local."]


def test_walk_musl_stops_at_nodata_glibc_goes_on():
    # test_resolvers.py test_musl_stops_on_nodata: musl never sends "prod." upstream.
    w = walk_of("--from", "default", "--resolver", "musl", "prod", rc=1)
    assert steps(w) == [("prod.default.svc.cluster.local.", ("NXDOMAIN", "NXDOMAIN"), "next"),
                        ("prod.svc.cluster.local.", ("NOERROR", "NOERROR"), "stops")]
    assert w["outcome"] == ("musl stops at prod.svc.cluster.local. (NODATA): the lookup fails "
                            "without trying further names")
    w = walk_of("--from", "default", "prod", rc=1)
    assert steps(w) == [("prod.default.svc.cluster.local.", ("NXDOMAIN", "NXDOMAIN"), "next"),
                        ("prod.svc.cluster.local.", ("NOERROR", "NOERROR"), "next"),
                        ("prod.cluster.local.", ("NXDOMAIN", "NXDOMAIN"), "next"),
                        ("prod.", ("unknown (forwarded)", "unknown (forwarded)"), "unknown")]


def test_walk_with_ndots_and_a_type():
    # 4 dots < ndots:5: even a full name walks the list first (dns-behavior.md §7) - for glibc;
    # musl too (it skips the list only at >= ndots dots).
    w = walk_of("--from", "default", "web.prod.svc.cluster.local", "A", rc=0)
    assert [s[0] for s in steps(w)] == [
        "web.prod.svc.cluster.local.default.svc.cluster.local.",
        "web.prod.svc.cluster.local.svc.cluster.local.",
        "web.prod.svc.cluster.local.cluster.local.", "web.prod.svc.cluster.local."]
    w = walk_of("--from", "default", "web.prod.svc.cluster.local.", "A", rc=0)   # trailing dot
    assert [s[0] for s in steps(w)] == ["web.prod.svc.cluster.local."]


def test_walk_from_a_pod_file(tmp_path):
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: prod}\n"
                   "spec: {containers: [{name: c}]}\n")
    w = walk_of("--pod", str(pod), "web", rc=0)
    assert steps(w) == [("web.prod.svc.cluster.local.", ("NOERROR", "NOERROR"), "answers")]


def test_walk_text_names_each_query():
    out = explain("--from", "default", "--resolver", "musl", "prod", manifests=RESOLVERS)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[:7] == [
        "search walk of 'prod' (musl, search default.svc.cluster.local svc.cluster.local cluster.local):",
        "  1. prod.default.svc.cluster.local. A: NXDOMAIN  (namespace 'default' exists but has no Service 'prod')",
        "  1. prod.default.svc.cluster.local. AAAA: NXDOMAIN  (namespace 'default' exists but has no Service 'prod')",
        "     -> next: NXDOMAIN: musl goes on",
        "  2. prod.svc.cluster.local. A: NODATA  (the namespace name prod.svc.<zone> exists, with no records (NODATA))",
        "  2. prod.svc.cluster.local. AAAA: NODATA  (the namespace name prod.svc.<zone> exists, with no records (NODATA))",
        "     -> stops: NODATA: musl stops here, the name has no address"]


# ------------------------------------------------------------------ --ask

@pytest.fixture(scope="module")
def upstream():
    stub = Stub(["www.example.com. 300 IN A 192.0.2.53"])
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def live(upstream):
    server = Kdns("--manifests", str(RESOLVERS), "--upstream", f"127.0.0.1:{upstream.port}", "--reload", "0")
    yield server
    server.stop()


def test_ask_a_real_kdns_matches(live):
    got = as_json("webapp.default.svc.cluster.local", "--ask", f"127.0.0.1:{live.port}",
                  manifests=RESOLVERS, rc=0)
    (q,) = got["ask"]["queries"]
    assert q["rcode"] == "NOERROR" and q["differences"] == []
    assert q["records"] == ["webapp.default.svc.cluster.local. 5 IN A 10.96.45.200"]
    # negative answers too (the SOA serial is the server's own and is not compared)
    got = as_json("nope.default.svc.cluster.local", "--ask", f"127.0.0.1:{live.port}",
                  manifests=RESOLVERS, rc=1)
    assert got["ask"]["queries"][0]["differences"] == []


def test_ask_completes_the_walk_through_the_upstream(live):
    w = as_json("--from", "default", "www.example.com", "A", "--ask", f"127.0.0.1:{live.port}",
                manifests=RESOLVERS, rc=0)
    assert steps(w["walk"]) == [
        ("www.example.com.default.svc.cluster.local.", ("NXDOMAIN",), "next"),
        ("www.example.com.svc.cluster.local.", ("NXDOMAIN",), "next"),
        ("www.example.com.cluster.local.", ("NXDOMAIN",), "next"),
        ("www.example.com.", ("NOERROR",), "answers")]
    assert [q["differences"] for q in w["ask"]["queries"]] == [[], [], [], []]
    assert w["ask"]["queries"][-1]["forwarded"] is True


def test_ask_a_wrong_server_spells_out_the_differences():
    wrong = Stub(["webapp.default.svc.cluster.local. 30 IN A 10.96.45.201",
                  "web.prod.svc.cluster.local. 30 IN A 10.96.10.1"], soa=None)
    try:
        at = f"127.0.0.1:{wrong.port}"
        out = as_json("webapp.default.svc.cluster.local", "--ask", at, manifests=RESOLVERS, rc=3)
        assert out["ask"]["queries"][0]["differences"] == [
            "answer: missing from the server: webapp.default.svc.cluster.local. 5 IN A 10.96.45.200",
            "answer: only the server has: webapp.default.svc.cluster.local. 30 IN A 10.96.45.201"]
        out = as_json("web.prod.svc.cluster.local", "--ask", at, manifests=RESOLVERS, rc=3)
        assert out["ask"]["queries"][0]["differences"] == [
            "answer: TTL of web.prod.svc.cluster.local. A: kdns computes 5, the server says 30"]
        out = as_json("ext.default.svc.cluster.local", "SRV", "--ask", at, manifests=RESOLVERS, rc=3)
        # kdns: NODATA with the SOA; the stub: NXDOMAIN without one
        assert out["ask"]["queries"][0]["differences"] == [
            "rcode: kdns computes NOERROR, the server says NXDOMAIN",
            "authority: missing from the server: cluster.local. 5 IN SOA ns.dns.cluster.local. "
            f"hostmaster.cluster.local. {out['answer'][0]['records'][0]['record'].split()[-5]} 7200 1800 86400 5"]
        text = explain("web.prod.svc.cluster.local", "--ask", at, manifests=RESOLVERS)
        assert text.returncode == 3
        assert f"asked {at}:" in text.stdout
        assert "  web.prod.svc.cluster.local. A: NOERROR, DIFFERS" in text.stdout
        assert "      answer: TTL of web.prod.svc.cluster.local. A: kdns computes 5, the server says 30" in text.stdout
    finally:
        wrong.close()


def test_ask_nobody_is_a_difference_not_a_crash():
    host, port = closed_port()
    out = explain("webapp.default.svc.cluster.local", "--ask", f"{host}:{port}", manifests=RESOLVERS)
    assert out.returncode == 3 and "Traceback" not in out.stderr
    assert f"cannot ask {host}:{port}" in out.stdout or f"no answer from {host}:{port}" in out.stdout


# ------------------------------------------------------------------ the API source

def test_explain_a_live_cluster_and_ask_the_kdns_serving_it(api, tmp_path):
    from conftest import wait_for
    from fakeapi import endpointslice, namespace, service
    api.create(namespace("prod"))
    api.create(service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-a", "pg", ["10.244.1.5"], ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-b", "pg", ["10.244.2.5"], ready=False))
    kc = api.kubeconfig(tmp_path / "kubeconfig")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kdns", "explain", "--kubeconfig", kc, *args, "--format", "json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    out = run("pg.prod.svc.cluster.local")
    assert out.returncode == 0, out.stderr
    (ex,) = json.loads(out.stdout)["answer"]
    assert ex["rule"] == "headless: one A/AAAA per ready endpoint address; 1 of 2 not ready: 10-244-2-5 (ready=false)"
    assert ex["records"] == [{"section": "answer", "record": "pg.prod.svc.cluster.local. 5 IN A 10.244.1.5",
                              "origin": "EndpointSlice prod/pg-a endpoints[0], ready"}]
    server = Kdns("--kubeconfig", kc, "--api-timeout", "1")
    try:
        assert wait_for(lambda: server.query("pg.prod.svc.cluster.local.").rcode() == 0)
        out = run("_pg._tcp.pg.prod.svc.cluster.local", "SRV", "--ask", f"127.0.0.1:{server.port}")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["ask"]["queries"][0]["differences"] == []
    finally:
        server.stop()


def test_externalname_chase_and_allocated_ip_origins():
    (ex,) = as_json("ext.shop.svc.cluster.local", rc=0)["answer"]
    assert ex["records"] == [
        {"section": "answer", "record": "ext.shop.svc.cluster.local. 5 IN CNAME web.store.svc.cluster.local.",
         "origin": f"Service shop/ext ({CLUSTER}, document 9) spec.externalName"},
        {"section": "answer", "record": "web.store.svc.cluster.local. 5 IN A 10.96.2.10",
         "origin": f"the CNAME target: Service store/web ({CLUSTER}, document 3) spec.clusterIPs[0]"}]
    (ex,) = as_json("webapp.shop.svc.cluster.local", manifests=SHOP, rc=0)["answer"]
    assert ex["records"][0]["origin"] == (f"Service shop/webapp ({SHOP / 'webapp.yaml'}, document 1): "
                                          f"allocated by kdns from --service-cidr (no clusterIP in its manifest)")


def test_a_short_name_outside_the_zone_points_at_the_walk():
    (ex,) = as_json("webapp", rc=1)["answer"]
    assert (ex["kind"], ex["rcode"]) == ("forward", "REFUSED")
    assert ex["suggestions"] == ["a pod would walk its search list first: kdns explain --from NAMESPACE webapp"]


def test_derivation_warnings_explain_what_is_missing(tmp_path):
    app = tmp_path / "app.yaml"
    app.write_text("""\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: prod}
spec:
  serviceName: web
  replicas: 2
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: grpc, port: 81, targetPort: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: prod}
spec:
  selector: {app: cart}
  clusterIP: 10.96.3.3
  ports: [{name: grpc, port: 9090}]
""")
    (ex,) = as_json("_grpc._tcp.web.prod.svc.cluster.local", "SRV", manifests=app, rc=1)["answer"]
    assert ex["reasons"] == [
        "Service prod/web: port 'grpc': targetPort 'grpc' names no TCP container port of the pods of "
        "StatefulSet prod/web (web-0, web-1): their endpoints lack that port",
        "'_grpc._tcp' - the Service has ports 'http'"]
    (ex,) = as_json("_http._tcp.web.prod.svc.cluster.local", "SRV", manifests=app, rc=0)["answer"]
    assert [r["record"].split()[-2:] for r in ex["records"] if r["section"] == "answer"] == [
        ["8080", "web-0.web.prod.svc.cluster.local."], ["8080", "web-1.web.prod.svc.cluster.local."]]
    (ex,) = as_json("cart.prod.svc.cluster.local", manifests=app, rc=0)["answer"]
    assert ex["rule"] == ("ClusterIP: A/AAAA of spec.clusterIPs (10.96.3.3); endpoints do not matter; "
                          "note: no ready endpoints, so DNS answers but connections to it will fail "
                          "(selector app=cart matches no pod in namespace prod: no endpoints)")
