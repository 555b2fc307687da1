"""Workloads in manifests become pods and EndpointSlices, as the controllers would make them.

The slices are checked exactly (names, ports, hostnames, readiness) against the controllers'
rules (docs/workloads.md names the source of each): the StatefulSet controller's identity
(<set>-<ordinal>, hostname = pod name, subdomain = serviceName), the EndpointSlice controller's
podToEndpoint / getEndpointPorts / ShouldSetHostname, FindPort for named targetPorts, and the
apiserver's generateName (5 characters of rand's alphabet). Then a real kdns serves the app and
dig and dnspython see the names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import dns.rcode
import pytest

from conftest import Kdns
from test_vectors import section_lines
from kdns.objects import Endpoint, ServicePort
from kdns.sources import controllers, manifests, workloads

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "zones" / "examples" / "shop"
ALPHA = "[bcdfghjklmnpqrstvwxz2456789]"


def load(*paths, **derive):
    derived: list = []
    cluster = manifests.load(list(paths), derive=workloads.Options(**derive), derived=derived)
    return cluster, derived[0]


def slices_of(cluster, ns, svc):
    return sorted((s for s in cluster.slices.values() if s.namespace == ns and s.service_name == svc),
                  key=lambda s: s.name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ the apimachinery primitives

def test_safe_encode_and_fnv_match_go():
    # rand.SafeEncodeString maps each byte to alphanums[b % 27]; '0' is 48 -> index 21 ('4').
    assert controllers.safe_encode("0123456789") == "456789bcdf"
    assert controllers.ALPHANUMS == "bcdfghjklmnpqrstvwxz2456789"
    # FNV-1a 32-bit test vectors (hash/fnv, and the FNV reference page)
    assert controllers.fnv32a(b"") == 0x811C9DC5
    assert controllers.fnv32a(b"a") == 0xE40C292C
    assert controllers.fnv32a(b"foobar") == 0xBF9CF968


def test_generated_names_have_the_apiserver_shape_and_are_stable():
    name = controllers.generated_name("web-", "default/web/0")
    assert re.fullmatch(f"web-{ALPHA}{{5}}", name)
    assert controllers.generated_name("web-", "default/web/0") == name
    assert controllers.generated_name("web-", "default/web/1") != name
    long = controllers.generated_name("x" * 70 + "-", "s")
    assert len(long) == 63 and long.startswith("x" * 58)


# ------------------------------------------------------------------ the example app, exactly

def test_statefulset_pods_and_slice_exactly():
    cluster, derived = load(SHOP)
    pods = {k: v for k, v in derived.pods.items() if v.owner == ("StatefulSet", "shop", "db")}
    assert sorted(p.name for p in pods.values()) == ["db-0", "db-1", "db-2"]
    for p in pods.values():
        assert (p.hostname, p.subdomain) == (p.name, "db")
        assert ("statefulset.kubernetes.io/pod-name", p.name) in p.labels
        assert ("apps.kubernetes.io/pod-index", p.name[-1]) in p.labels
    (sl,) = slices_of(cluster, "shop", "db")
    assert re.fullmatch(f"db-{ALPHA}{{5}}", sl.name)
    assert sl.address_type == "IPv4"
    assert sl.ports == (ServicePort("postgres", 5432, "TCP"),)      # targetPort 'postgres' -> 5432
    ips = {p.name: p.ip for p in pods.values()}
    assert sl.endpoints == tuple(Endpoint((ips[n],), True, n, n) for n in ("db-0", "db-1", "db-2"))


def test_deployment_pods_and_slice_exactly():
    cluster, derived = load(SHOP)
    pods = sorted((p for p in derived.pods.values() if p.owner == ("Deployment", "shop", "webapp")),
                  key=lambda p: p.name)
    assert len(pods) == 3
    h = dict(pods[0].labels)["pod-template-hash"]
    assert re.fullmatch(f"{ALPHA}{{1,10}}", h)
    for p in pods:
        assert re.fullmatch(f"webapp-{h}-{ALPHA}{{5}}", p.name)
        assert dict(p.labels) == {"app": "webapp", "pod-template-hash": h}
        assert (p.hostname, p.subdomain) == ("", "")
        assert ipaddress_in(p.ip, "10.244.0.0/16")
    (sl,) = slices_of(cluster, "shop", "webapp")
    # Service ports http -> targetPort 'http' (8080), metrics -> 'metrics' (9102): slice ports
    # carry the Service port's name with the container's number.
    assert sl.ports == (ServicePort("http", 8080, "TCP"), ServicePort("metrics", 9102, "TCP"))
    assert sl.endpoints == tuple(Endpoint((p.ip,), True, "", p.name) for p in pods)
    # Stable: the same manifests give the same pods, names and addresses.
    again, _ = load(SHOP)
    assert again.slices == cluster.slices and again.pods == cluster.pods


def ipaddress_in(ip: str, cidr: str) -> bool:
    import ipaddress
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def test_template_hash_follows_the_template_not_the_replicas(tmp_path):
    base = SHOP / "webapp.yaml"
    text = base.read_text()
    _, d1 = load(write(tmp_path, text))
    _, d2 = load(write(tmp_path, text.replace("replicas: 3", "replicas: 5")))
    _, d3 = load(write(tmp_path, text.replace("nginx:1.27", "nginx:1.28")))

    def hashes(d):
        return {dict(p.labels)["pod-template-hash"] for p in d.pods.values()}
    assert hashes(d1) == hashes(d2) and len(d2.pods) == 5
    assert hashes(d3) != hashes(d1)
    # the first three pods keep their names when scaling up
    assert set(d1.pods) <= set(d2.pods)


# ------------------------------------------------------------------ the controller's rules

RULES = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: prod}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {kdns.io/ready: "false"}
    spec:
      containers:
      - name: c
        ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: raw, port: 9000, targetPort: 9001}
  - {name: wrong, port: 81, targetPort: nosuch}
---
apiVersion: v1
kind: Service
metadata: {name: web-all, namespace: prod}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: prod}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: prod}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-1, namespace: prod, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.9]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: prod}
spec:
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: a}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: crunch, namespace: prod}
spec:
  parallelism: 4
  completions: 3
  completionMode: Indexed
  template:
    metadata: {labels: {app: crunch}}
    spec: {subdomain: crunch, containers: [{name: j}]}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: prod, labels: {app: web}}
spec: {hostname: solo, subdomain: other, containers: [{name: s}]}
status: {podIP: 10.9.9.9}
"""


def test_controller_rules_exactly(tmp_path, caplog):
    caplog.set_level("INFO", logger="kdns.manifests")
    cluster, derived = load(write(tmp_path, RULES), nodes=3)
    ip = {p.name: p.ip for p in derived.pods.values()}
    # solo matches app=web too, but has no 'http' container port: a slice of its own, with the
    # ports that do resolve (numbers), no hostname (its subdomain is 'other'), ready.
    web = slices_of(cluster, "prod", "web")
    by_pod = {e.pod_name: (s.ports, e) for s in web for e in s.endpoints}
    assert by_pod["solo"] == ((ServicePort("raw", 9001, "TCP"),), Endpoint(("10.9.9.9",), True, "", "solo"))
    assert by_pod["web-0"][1] == Endpoint((ip["web-0"],), False, "web-0", "web-0")
    assert by_pod["web-1"][1] == Endpoint((ip["web-1"],), False, "web-1", "web-1")
    assert by_pod["web-0"][0] == (ServicePort("http", 8080, "TCP"), ServicePort("dns", 5353, "UDP"),
                                  ServicePort("raw", 9001, "TCP"))
    # publishNotReadyAddresses: the controller writes ready=true; hostnames only under 'web'.
    (all_sl,) = [s for s in slices_of(cluster, "prod", "web-all") if s.ports]
    assert {e.pod_name: (e.ready, e.hostname) for e in all_sl.endpoints} == {
        "web-0": (True, ""), "web-1": (True, "")}
    # Explicit slices win.
    assert [s.name for s in slices_of(cluster, "prod", "manual")] == ["manual-1"]
    # A selector matching nothing: no slice, a warning naming the Service.
    assert slices_of(cluster, "prod", "lonely") == []
    assert "Service prod/lonely: selector app=nobody matches no pod in namespace prod" in caplog.text
    # An unknown targetPort name: a warning naming the Service, the port and the pod.
    assert ("Service prod/web: port 'wrong': targetPort 'nosuch' names no TCP container port of the "
            "pods of StatefulSet prod/web (web-0, web-1): their endpoints lack that port") in caplog.text
    assert "Service prod/web: port 'http': targetPort 'http' names no TCP container port of pod solo" in caplog.text
    # DaemonSet: one pod per node; Job: min(parallelism, completions) indexed pods.
    agents = [p for p in derived.pods.values() if p.owner[0] == "DaemonSet"]
    assert [p.node for p in sorted(agents, key=lambda p: p.node)] == ["node-0", "node-1", "node-2"]
    assert all(re.fullmatch(f"agent-{ALPHA}{{5}}", p.name) for p in agents)
    jobs = sorted((p for p in derived.pods.values() if p.owner[0] == "Job"), key=lambda p: p.ordinal)
    assert [(p.hostname, p.subdomain) for p in jobs] == [("crunch-0", "crunch"), ("crunch-1", "crunch"),
                                                          ("crunch-2", "crunch")]
    assert all(re.fullmatch(f"crunch-{i}-{ALPHA}{{5}}", p.name) for i, p in enumerate(jobs))
    assert "derived 2 pods for StatefulSet prod/web: web-0, web-1" in caplog.text
    assert "derived 3 pods for DaemonSet prod/agent" in caplog.text
    assert ("1 Service(s) selecting pods have their own EndpointSlices or Endpoints in the "
            "manifests, which win: none derived for prod/manual") in caplog.text


# ------------------------------------------------------------------ a real kdns, dig and dnspython

@pytest.fixture(scope="module")
def shop():
    server = Kdns("--manifests", str(SHOP), "--reload", "0")
    yield server
    server.stop()


def test_served_statefulset_names(shop):
    cluster, derived = load(SHOP)
    ip = {p.name: p.ip for p in derived.pods.values()}
    resp = shop.query("db-0.db.shop.svc.cluster.local.")
    assert resp.rcode() == dns.rcode.NOERROR
    assert section_lines(resp.answer) == [f"db-0.db.shop.svc.cluster.local. 5 IN A {ip['db-0']}"]
    resp = shop.query("db.shop.svc.cluster.local.")
    assert sorted(section_lines(resp.answer)) == sorted(
        f"db.shop.svc.cluster.local. 5 IN A {ip[n]}" for n in ("db-0", "db-1", "db-2"))
    resp = shop.query("_postgres._tcp.db.shop.svc.cluster.local.", "SRV")
    assert sorted(section_lines(resp.answer)) == [
        f"_postgres._tcp.db.shop.svc.cluster.local. 5 IN SRV 0 33 5432 db-{i}.db.shop.svc.cluster.local."
        for i in range(3)]
    log = shop.log()
    assert "derived 3 pods for StatefulSet shop/db: db-0, db-1, db-2" in log
    assert "derived 1 EndpointSlice for Service shop/db: 3 endpoints, 3 ready" in log


def test_served_deployment_endpoints_with_dig(shop):
    if shutil.which("dig") is None:
        pytest.fail("dig is not installed; .ci/run installs it")
    cluster, derived = load(SHOP)
    pods = [p for p in derived.pods.values() if p.owner == ("Deployment", "shop", "webapp")]
    svc_ip = cluster.services[("shop", "webapp")].cluster_ip
    out = subprocess.run(["dig", "+short", "+time=3", "+tries=1", f"@{shop.host}", "-p", str(shop.port),
                          "webapp.shop.svc.cluster.local"], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == [svc_ip]
    dashed = pods[0].ip.replace(".", "-")
    out = subprocess.run(["dig", "+short", "+time=3", "+tries=1", f"@{shop.host}", "-p", str(shop.port),
                          f"{dashed}.webapp.shop.svc.cluster.local"], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == [pods[0].ip]
    resp = shop.query("_http._tcp.webapp.shop.svc.cluster.local.", "SRV")
    assert section_lines(resp.answer) == [
        "_http._tcp.webapp.shop.svc.cluster.local. 5 IN SRV 0 100 80 webapp.shop.svc.cluster.local."]


def test_bad_workload_input_warns_and_serves(tmp_path):
    path = write(tmp_path, RULES)
    server = Kdns("--manifests", str(path), "--reload", "0")
    try:
        assert server.query("web-0.web.prod.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN  # not ready
        resp = server.query("web-0.web-all.prod.svc.cluster.local.")
        assert resp.rcode() == dns.rcode.NXDOMAIN           # no hostname under web-all
        log = server.log()
        assert "warning: Service prod/lonely: selector app=nobody matches no pod" in log
        assert "targetPort 'nosuch' names no TCP container port" in log
        assert "Traceback" not in log
    finally:
        server.stop()


def test_env_workload(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "kdns", "env", "--manifests", str(SHOP), "--workload",
                          "deployment/webapp", "-n", "shop", "--sort"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    cluster, _ = load(SHOP)
    web_ip = cluster.services[("shop", "webapp")].cluster_ip
    lines = out.stdout.splitlines()
    assert "DB_HOST=db-0.db.shop.svc.cluster.local" in lines
    assert f"WEBAPP_SERVICE_HOST={web_ip}" in lines and "WEBAPP_SERVICE_PORT_HTTP=80" in lines
    assert not [l for l in lines if l.startswith("DB_SERVICE_HOST")]     # headless: no variables
    ran = subprocess.run([sys.executable, "-m", "kdns", "env", "--manifests", str(SHOP), "--workload",
                          "statefulset/db", "-n", "shop", "--", "sh", "-c", "echo $WEBAPP_SERVICE_PORT"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert ran.returncode == 0 and ran.stdout == "80\n"
    bad = subprocess.run([sys.executable, "-m", "kdns", "env", "--manifests", str(SHOP), "--workload",
                          "deployment/nope", "-n", "shop"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2
    assert "no Deployment 'nope' in namespace shop in the manifests; it has: deployment/webapp, statefulset/db" in bad.stderr


def test_unreadable_workload_is_a_warning_not_a_failure(tmp_path):
    path = write(tmp_path, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                           "spec: {replicas: three, template: {spec: {containers: [{name: c}]}}}\n"
                           "---\n" + (SHOP / "db.yaml").read_text())
    server = Kdns("--manifests", str(path), "--reload", "0")
    try:
        assert server.query("db-0.db.shop.svc.cluster.local.").rcode() == dns.rcode.NOERROR
        assert (f"warning: {path}, document 0: Deployment/default/web: field spec.replicas: must be a "
                f"non-negative integer, got 'three'; no endpoints derived from it") in server.log()
    finally:
        server.stop()


def test_reload_rederives(tmp_path):
    from conftest import wait_for
    path = write(tmp_path, (SHOP / "db.yaml").read_text())
    server = Kdns("--manifests", str(path), "--reload", "0.2")
    try:
        assert server.query("db-2.db.shop.svc.cluster.local.").rcode() == dns.rcode.NOERROR
        path.write_text(path.read_text().replace("replicas: 3", "replicas: 2"))
        assert wait_for(lambda: server.query("db-2.db.shop.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN)
        assert server.query("db-1.db.shop.svc.cluster.local.").rcode() == dns.rcode.NOERROR
        assert "derived 2 pods for StatefulSet shop/db: db-0, db-1" in server.log()
    finally:
        server.stop()


def test_bad_derive_flags_are_clear():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "kdns", "serve", "--resolv-conf", "", "--manifests",
                               str(SHOP), *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    out = serve("--pod-cidr", "nope")
    assert out.returncode == 2 and "kdns: --pod-cidr 'nope': not a CIDR" in out.stderr
    out = serve("--nodes", "0")
    assert out.returncode == 2 and "--nodes: '0': must be 1-5000 nodes" in out.stderr
    out = serve("--pod-cidr", "10.0.0.0/30")
    assert out.returncode == 2 and "kdns: --pod-cidr 10.0.0.0/30: too small for 6 pods" in out.stderr
    assert "Traceback" not in out.stderr


def test_pod_cidr_moves_the_addresses(tmp_path):
    cluster, derived = load(SHOP, pod_cidr="10.200.0.0/24")
    assert all(ipaddress_in(p.ip, "10.200.0.0/24") for p in derived.pods.values())
    assert len({p.ip for p in derived.pods.values()}) == len(derived.pods) == 6
