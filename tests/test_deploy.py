"""deploy/kdns.yaml: accepted by kubectl, every field known to the Kubernetes schema, the security
settings and probes the issue asks for, and container args that `kdns serve` accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from conftest import ROOT

MANIFEST = ROOT / "deploy" / "kdns.yaml"
KUBE_DNS = ROOT / "deploy" / "kube-dns.yaml"
UPSTREAM = ROOT / "deploy" / "kube-dns-upstream.yaml"
PODS_VERIFIED = ROOT / "deploy" / "kdns-pods-verified.yaml"
MONITORING = ROOT / "deploy" / "monitoring"
EVERY_FILE = [MANIFEST, KUBE_DNS, UPSTREAM, PODS_VERIFIED, MONITORING / "servicemonitor.yaml",
              MONITORING / "prometheus-rules.yaml"]

# Flags the container passes that another branch adds to `kdns serve` (the API source). Until it
# is merged they may be missing; once present they are checked like every other flag. Empty this
# set when kdns.sources.cluster lands.


def load(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return load(MANIFEST)


def one(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ---------------------------------------------------------------- kubectl, with a discovery stub

# kubectl maps kinds to resources through API discovery even for --dry-run=client, so it needs
# a server. This stub serves only the legacy discovery documents (kubectl falls back to them when
# aggregated discovery is not offered) and 404 for every object, so `apply` plans a create.
RESOURCES = {
    "/api/v1": [("serviceaccounts", "ServiceAccount", True), ("services", "Service", True),
                ("namespaces", "Namespace", False), ("pods", "Pod", True)],
    "/apis/apps/v1": [("deployments", "Deployment", True)],
    "/apis/rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                           ("clusterrolebindings", "ClusterRoleBinding", False)],
    "/apis/discovery.k8s.io/v1": [("endpointslices", "EndpointSlice", True)],
    "/apis/policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    # The Prometheus Operator's CRDs, as a cluster with it installed lists them.
    "/apis/monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True),
                                       ("prometheusrules", "PrometheusRule", True)],
}


def _discovery(path: str):
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = []
        for gv in RESOURCES:
            if gv.startswith("/apis/"):
                group, version = gv[len("/apis/"):].split("/")
                ref = {"groupVersion": f"{group}/{version}", "version": version}
                groups.append({"name": group, "versions": [ref], "preferredVersion": ref})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path in RESOURCES:
        gv = path.removeprefix("/apis/").removeprefix("/api/")
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for name, kind, namespaced in RESOURCES[path]]}
    return None


class _Stub(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        doc = _discovery(self.path.split("?")[0])
        code = 200
        if doc is None:
            code, doc = 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "NotFound", "code": 404, "message": f"{self.path} not found"}
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{httpd.server_port}"}}],
        "users": [{"name": "stub", "user": {}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}]}))
    yield path
    httpd.shutdown()
    httpd.server_close()


def test_kubectl_apply_dry_run_accepts_the_manifest(kubeconfig, tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed: apt-get install kubectl (or kubernetes-client)")
    # --validate=false: field validation needs the server's OpenAPI schema, which the stub does
    # not have; test_every_field_is_in_the_kubernetes_schema checks fields instead.
    files = [a for path in EVERY_FILE for a in ("-f", str(path))]
    out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"),
                          "apply", "--dry-run=client", "--validate=false", *files],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split("\n")[:-1] == [
        "serviceaccount/kdns created (dry run)",
        "clusterrole.rbac.authorization.k8s.io/system:kdns created (dry run)",
        "clusterrolebinding.rbac.authorization.k8s.io/system:kdns created (dry run)",
        "deployment.apps/kdns created (dry run)",
        "service/kdns created (dry run)",
        "poddisruptionbudget.policy/kdns created (dry run)",
        "service/kube-dns created (dry run)",
        "service/kube-dns-upstream created (dry run)",
        "clusterrole.rbac.authorization.k8s.io/system:kdns:pods created (dry run)",
        "clusterrolebinding.rbac.authorization.k8s.io/system:kdns:pods created (dry run)",
        "servicemonitor.monitoring.coreos.com/kdns created (dry run)",
        "prometheusrule.monitoring.coreos.com/kdns created (dry run)",
    ]
    # What kubectl would send for the main file: its objects, in order, with their names.
    out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"),
                          "create", "--dry-run=client", "--validate=false", "-o", "yaml", "-f", str(MANIFEST)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    sent = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert [(d["kind"], d["metadata"]["name"]) for d in sent] == [
        ("ServiceAccount", "kdns"), ("ClusterRole", "system:kdns"), ("ClusterRoleBinding", "system:kdns"),
        ("Deployment", "kdns"), ("Service", "kdns"), ("PodDisruptionBudget", "kdns")]


# ---------------------------------------------------------------- the schema, from the kubernetes client

def _model(kind: str, api_version: str):
    import kubernetes.client as k

    version = api_version.split("/")[-1].capitalize()
    return getattr(k, f"{version}{kind}")


def _check(value, type_name: str, path: str, problems: list[str]) -> None:
    import kubernetes.client as k

    # Both spellings of the generated types: list[X] / dict(str, X) and List[X] / Dict[str, X].
    if type_name[:5].lower() == "list[":
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            _check(item, type_name[5:-1], f"{path}[{i}]", problems)
    elif type_name[:5].lower() in ("dict(", "dict["):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map")
            return
        inner = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            _check(item, inner, f"{path}.{key}", problems)
    elif type_name in ("str", "int", "bool", "float", "object", "datetime"):
        ok = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
              "datetime": str}[type_name]
        if not isinstance(value, ok) or (type_name == "int" and isinstance(value, bool)):
            problems.append(f"{path}: expected {type_name}, got {value!r}")
    else:
        model = getattr(k, type_name)
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a {type_name} object")
            return
        fields = {json_name: model.openapi_types[py] for py, json_name in model.attribute_map.items()}
        for key, item in value.items():
            if key not in fields:
                problems.append(f"{path}.{key}: not a field of {type_name}")
            else:
                _check(item, fields[key], f"{path}.{key}", problems)


def test_every_field_is_in_the_kubernetes_schema(docs):
    """A typo (readOnlyRootFileSystem) would be silently dropped by the API server: catch it here,
    against the kubernetes client's models (generated from the API's OpenAPI spec)."""
    problems: list[str] = []
    for doc in docs + load(KUBE_DNS) + load(UPSTREAM) + load(PODS_VERIFIED):
        model = _model(doc["kind"], doc["apiVersion"])
        _check(doc, model.__name__, f"{doc['kind']}/{doc['metadata']['name']}", problems)
    # IntOrString fields (probe and target ports) are typed object in the client: check them here.
    for svc in [d for d in docs + load(KUBE_DNS) + load(UPSTREAM) if d["kind"] == "Service"]:
        assert all(isinstance(p["targetPort"], int) for p in svc["spec"]["ports"])
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- what the issue asks of it

def test_rbac_is_list_and_watch_only(docs):
    role = one(docs, "ClusterRole")
    granted = {(g, r): sorted(rule["verbs"]) for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("", "services"): ["list", "watch"], ("", "namespaces"): ["list", "watch"],
                       ("discovery.k8s.io", "endpointslices"): ["list", "watch"]}
    assert "OPTIONAL, only for `--pods verified`" in MANIFEST.read_text(), "pods documented"
    assert re.search(r"#\s*resources: \[\"pods\"\]", MANIFEST.read_text())
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "kube-system"}]


def test_deployment_is_hardened_and_probed(docs):
    dep = one(docs, "Deployment")
    assert dep["metadata"]["namespace"] == "kube-system"
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["dnsPolicy"] == "Default" and pod["priorityClassName"] == "system-cluster-critical"
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["terminationGracePeriodSeconds"] > 5 + 5, "room for the 5 s lameduck"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080, "scheme": "HTTP"}
    ports = {(p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert ports == {(1053, "UDP"), (1053, "TCP"), (8080, "TCP")}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    (env,) = [e for e in c["env"] if e["name"] == "POD_IP"]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    args = c["args"]
    assert args[args.index("--pod-ip") + 1] == "$(POD_IP)"
    assert args[args.index("--listen") + 1] == "0.0.0.0:1053"
    assert args[args.index("--http") + 1] == "0.0.0.0:8080"


def test_kube_dns_service_maps_53_to_1053(docs):
    """kdns.yaml never touches kube-dns or kube-dns-upstream (running beside CoreDNS, and
    NodeLocal's upstream); kube-dns.yaml (a cluster without DNS) and kube-dns-upstream.yaml (the
    switch, with NodeLocal) select kdns's pods, as kdns's own Service does, 53 -> 1053."""
    assert not [d for d in docs if d["metadata"]["name"] in ("kube-dns", "kube-dns-upstream")]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.get("k8s-app") != "kube-dns", "no cluster traffic before the selector switch"
    for svc in (one(load(KUBE_DNS), "Service", "kube-dns"), one(docs, "Service", "kdns"),
                one(load(UPSTREAM), "Service", "kube-dns-upstream")):
        assert svc["metadata"]["namespace"] == "kube-system"
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        ports = {(p["port"], p["protocol"], p["targetPort"]) for p in svc["spec"]["ports"]}
        assert {(53, "UDP", 1053), (53, "TCP", 1053)} <= ports, svc["metadata"]["name"]
        assert ports <= {(53, "UDP", 1053), (53, "TCP", 1053), (9153, "TCP", 8080)}
    assert one(load(KUBE_DNS), "Service")["spec"]["clusterIP"] == "10.96.0.10"


def test_disruption_budget_keeps_one_ready(docs):
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_pods_verified_rbac_is_optional_and_exact(docs):
    text = PODS_VERIFIED.read_text()
    assert text.startswith("# OPTIONAL: only with `kdns serve --pods verified`")
    extra = load(PODS_VERIFIED)
    role, binding = one(extra, "ClusterRole"), one(extra, "ClusterRoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]


def test_servicemonitor_scrapes_each_pod_once(docs):
    (sm,) = load(MONITORING / "servicemonitor.yaml")
    want = sm["spec"]["selector"]["matchLabels"]
    services = [d for d in docs + load(KUBE_DNS) + load(UPSTREAM) if d["kind"] == "Service"]
    matched = [s for s in services if want.items() <= s["metadata"].get("labels", {}).items()]
    assert [s["metadata"]["name"] for s in matched] == ["kdns"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in matched[0]["spec"]["ports"]}
    # job = the value of the jobLabel label: what the alerts and the dashboard select.
    assert matched[0]["metadata"]["labels"][sm["spec"]["jobLabel"]] == "kdns"
    rules = (MONITORING / "prometheus-rules.yaml").read_text()
    assert 'job="kdns"' in rules and "job=" not in rules.replace('job="kdns"', "")


def test_dashboard_and_alerts_read_only_what_kdns_exports():
    """Every metric the dashboard and the alerts query is one kdns serves (checked against a live
    scrape), or a forwarder metric (kdns_forward_*), or Prometheus's own `up`."""
    import json
    import urllib.request

    from conftest import Kdns

    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][1]["query"])
    (rule,) = load(MONITORING / "prometheus-rules.yaml")
    exprs += [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\b([a-z_]+)(?=\{)", e))
    server = Kdns("--http", "127.0.0.1:0", "--reload", "0")
    try:
        port = int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", body, re.M):
        names |= {name, *(name + suffix for suffix in suffixes.get(kind, []))}
    missing = {m for m in used if m not in names and not m.startswith("kdns_forward_") and m != "up"}
    assert not missing, missing
    assert {"kdns_dns_request_duration_seconds_bucket", "kdns_dns_responses_total",
            "kdns_cache_hits_total", "kdns_kubernetes_dns_programming_duration_seconds_bucket"} <= used
    assert all(p["datasource"]["uid"] == "$datasource" for p in dash["panels"])


def test_container_args_are_kdns_serve_flags(docs):
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[0] == "serve"
    helptext = subprocess.run([sys.executable, "-m", "kdns", "serve", "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60).stdout
    known = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", helptext))
    assert "--lameduck" in known and "--http" in known
    flags = [a for a in args[1:] if a.startswith("--")]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"not flags of kdns serve: {unknown}"
    # The values parse too (the kubelet expands $(POD_IP) before kdns sees it).
    from kdns.cli import build_parser

    argv = [a.replace("$(POD_IP)", "10.244.0.10") for a in args]
    parsed = build_parser().parse_args(argv)
    assert parsed.http == [("0.0.0.0", 8080)] and parsed.listen == [("0.0.0.0", 1053)]
    assert parsed.pod_ip == "10.244.0.10" and parsed.lameduck == 5 and parsed.tcp_connections == 1024


# ---------------------------------------------------------------- deploy/kdns-corefile.yaml

COREFILE_MANIFEST = ROOT / "deploy" / "kdns-corefile.yaml"


@pytest.fixture(scope="module")
def corefile_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(COREFILE_MANIFEST.read_text()) if d]


def test_corefile_variant_differs_only_in_how_kdns_is_configured(docs, corefile_docs):
    # Beside CoreDNS as kdns.yaml is: the same objects and names, the same pod labels (not
    # CoreDNS's k8s-app: kube-dns), its own Service, never kube-dns (tests/test_migration.py
    # walks the switch).
    assert [d for d in corefile_docs if d["kind"] not in ("Deployment", "Service")] == \
        [d for d in docs if d["kind"] not in ("Deployment", "Service")]
    assert [(d["kind"], d["metadata"]["name"]) for d in corefile_docs] == \
        [(d["kind"], d["metadata"]["name"]) for d in docs]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    deployment = one(corefile_docs, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"] == pod_labels
    assert deployment["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]
    assert one(corefile_docs, "Service", "kdns")["spec"]["selector"] == one(docs, "Service", "kdns")["spec"]["selector"]
    problems: list[str] = []
    for doc in corefile_docs:
        _check(doc, _model(doc["kind"], doc["apiVersion"]).__name__, doc["kind"], problems)
    assert not problems, "\n".join(problems)
    pod = one(corefile_docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "config-volume", "configMap": {"name": "coredns"}}]
    (c,) = pod["containers"]
    assert c["volumeMounts"] == [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}]
    assert c["args"] == ["serve", "--corefile", "/etc/coredns/Corefile", "--listen", "0.0.0.0:1053",
                         "--pod-ip", "$(POD_IP)"]
    assert c["readinessProbe"]["httpGet"]["port"] == 8181      # the Corefile's ready
    assert c["livenessProbe"]["httpGet"]["port"] == 8080       # the Corefile's health
    svc = one(corefile_docs, "Service")
    assert {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {(53, 1053), (9153, 9153)}


def container_serve_args(container: dict, corefile) -> list[str]:
    """The Corefile variant's `kdns serve` arguments as the container has them, with the
    mounted Corefile at ``corefile``, a pod IP, and no --listen (Kdns listens on loopback)."""
    args = list(container["args"][1:])
    args[args.index("/etc/coredns/Corefile")] = str(corefile)
    args[args.index("$(POD_IP)")] = "10.244.0.10"
    del args[args.index("--listen"):args.index("--listen") + 2]
    return args


def test_corefile_variant_runs_kubeadms_corefile(tmp_path):
    """The container's command line with kubeadm's Corefile at its mount path: kdns starts and
    answers, the Corefile's three HTTP ports replaced by loopback ones only for the test."""
    from conftest import DATA, Kdns

    (c,) = one([d for d in yaml.safe_load_all(COREFILE_MANIFEST.read_text()) if d],
               "Deployment")["spec"]["template"]["spec"]["containers"]
    corefile = (DATA / "corefiles" / "kubeadm").read_text()
    for port in ("8080", "8181", "9153"):
        corefile = corefile.replace(f":{port}", ":0")
    corefile = corefile.replace("health {", "health 127.0.0.1:0 {").replace("ready\n", "ready 127.0.0.1:0\n")
    path = tmp_path / "Corefile"
    path.write_text(corefile.replace("prometheus :0", "prometheus 127.0.0.1:0"))
    s = Kdns(*container_serve_args(c, path), "--manifests", str(DATA / "cluster.yaml"))
    try:
        resp = s.query("kube-dns.kube-system.svc.cluster.local.", "A")
        assert [rr.to_text() for rr in resp.answer] == ["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10"]
        assert s.log().count("(/health, /ready, /metrics)") == 3
    finally:
        log = s.stop()
    assert s.proc.returncode == 0, log


def test_corefile_variant_runs_a_corefile_with_a_stub_domain(tmp_path):
    """The container's command line with the Kubernetes "Customizing DNS Service" Corefile (its
    consul.local server block a stub domain), the upstreams moved onto loopback stubs."""
    from conftest import DATA, Kdns
    from dnsstub import Stub

    upstream = Stub(["www.example.com. 600 IN A 192.0.2.80"])
    consul = Stub(["web.service.consul.local. 600 IN A 10.150.1.1"])
    (c,) = one([d for d in yaml.safe_load_all(COREFILE_MANIFEST.read_text()) if d],
               "Deployment")["spec"]["template"]["spec"]["containers"]
    corefile = (DATA / "corefiles" / "customizing-dns").read_text()
    corefile = corefile.replace("    health\n", "    health 127.0.0.1:0\n").replace(
        "prometheus :9153", "prometheus 127.0.0.1:0").replace(
        "172.16.0.1", f"127.0.0.1:{upstream.port}").replace("10.150.0.1", f"127.0.0.1:{consul.port}")
    path = tmp_path / "Corefile"
    path.write_text(corefile)
    s = Kdns(*container_serve_args(c, path), "--manifests", str(DATA / "cluster.yaml"))
    try:
        for name, want in (("web.service.consul.local.", "web.service.consul.local. 30 IN A 10.150.1.1"),
                           ("www.example.com.", "www.example.com. 30 IN A 192.0.2.80"),
                           ("kube-dns.kube-system.svc.cluster.local.",
                            "kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10")):
            assert [rr.to_text() for rr in s.query(name, "A").answer] == [want]
        assert (consul.count(name="web.service.consul.local"), upstream.count(name="www.example.com")) == (1, 1)
    finally:
        log = s.stop()
        upstream.close()
        consul.close()
    assert s.proc.returncode == 0, log


def test_kubectl_apply_dry_run_accepts_the_corefile_variant(kubeconfig, tmp_path):
    """deploy/kdns-corefile.yaml, on its own as an operator applies it: kubectl takes every
    object, and every field is in the Kubernetes schema."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed: apt-get install kubectl (or kubernetes-client)")
    out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"),
                          "apply", "--dry-run=client", "--validate=false", "-f", str(COREFILE_MANIFEST)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    docs = load(COREFILE_MANIFEST)
    assert len(out.stdout.split("\n")[:-1]) == len(docs)
    assert all(line.endswith(" (dry run)") for line in out.stdout.split("\n")[:-1])
    problems: list[str] = []
    for doc in docs:
        _check(doc, _model(doc["kind"], doc["apiVersion"]).__name__,
               f"{doc['kind']}/{doc['metadata']['name']}", problems)
    assert not problems, "\n".join(problems)
