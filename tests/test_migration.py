"""The zero-downtime migration of docs/ops.md, walked with kubectl against the in-repo fake API
holding a kubeadm CoreDNS, for both kdns manifests (deploy/kdns.yaml, deploy/kdns-corefile.yaml).

The `kubectl patch` commands are read from docs/ops.md itself, so the page cannot drift from what
is tested. The fake API stores objects but runs no controllers, so after each step the test does
the EndpointSlice controller's part: which Deployments' pods the `kube-dns` Service selects, and
which container port each of its DNS ports reaches (a named targetPort resolved by the pod's
port names, as the controller does). The step passes only if some pods are selected and every
one of them listens on the port its queries are sent to: CoreDNS on its Corefile's port, kdns on
its --listen port. That is "no step leaves the cluster without DNS", checked on the objects.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import DATA, ROOT
from fakeapi import FakeAPI

KUBECTL = shutil.which("kubectl")
OPS = ROOT / "docs" / "ops.md"
MANIFESTS = ["kdns.yaml", "kdns-corefile.yaml"]
KDNS_OBJECTS = {"serviceaccount/kdns", "clusterrole.rbac.authorization.k8s.io/system:kdns",
                "clusterrolebinding.rbac.authorization.k8s.io/system:kdns", "deployment.apps/kdns",
                "service/kdns", "poddisruptionbudget.policy/kdns"}

# kubeadm's CoreDNS (cmd/kubeadm/app/phases/addons/dns/manifests.go), the parts that route DNS:
# the Service sends 53 to 53 and 9153 to 9153 by number; the pods name their ports.
KUBE_DNS = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "kube-dns", "namespace": "kube-system",
                 "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                            "kubernetes.io/name": "CoreDNS"}},
    "spec": {"selector": {"k8s-app": "kube-dns"}, "clusterIP": "10.96.0.10",
             "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                       {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                       {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}}
# nodelocaldns.yaml's upstream Service (kubernetes/kubernetes cluster/addons/dns/nodelocaldns):
# CoreDNS's pods, 53 to 53 by number, no metrics port.
KUBE_DNS_UPSTREAM = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "kube-dns-upstream", "namespace": "kube-system",
                 "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                            "addonmanager.kubernetes.io/mode": "Reconcile",
                            "kubernetes.io/name": "KubeDNSUpstream"}},
    "spec": {"selector": {"k8s-app": "kube-dns"},
             "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                       {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}}
COREDNS = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
             "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                          "spec": {"containers": [{
                              "name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.1",
                              "args": ["-conf", "/etc/coredns/Corefile"],
                              "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                        {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}]}]}}}}


def coredns_configmap() -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": (DATA / "corefiles" / "kubeadm").read_text()}}


def migration_section() -> str:
    text = OPS.read_text()
    start = text.index("## Migrating from CoreDNS without downtime")
    return text[start:text.index("\n## ", start + 1)]


def doc_patches(service: str = "kube-dns") -> list[list[str]]:
    """The section's `kubectl ... patch service SERVICE` commands, in order, as argv."""
    lines = [ln.strip() for ln in migration_section().splitlines()]
    return [shlex.split(ln) for ln in lines
            if ln.startswith(f"kubectl -n kube-system patch service {service} ")]


@pytest.fixture
def cluster(tmp_path):
    if KUBECTL is None:
        pytest.fail("kubectl is needed: apt-get install kubectl (or kubernetes-client)")
    with FakeAPI() as api:
        for obj in (KUBE_DNS, KUBE_DNS_UPSTREAM, COREDNS, coredns_configmap()):
            api.apply(copy.deepcopy(obj))
        config = api.kubeconfig(tmp_path / "kubeconfig")

        def kubectl(*args: str, stdin: str | None = None) -> str:
            out = subprocess.run([KUBECTL, "--kubeconfig", config, "--cache-dir", str(tmp_path / "cache"),
                                  *args], capture_output=True, text=True, timeout=60, input=stdin)
            assert out.returncode == 0, f"kubectl {' '.join(args)}:\n{out.stdout}{out.stderr}"
            return out.stdout

        yield kubectl


def get(kubectl, what: str) -> dict:
    return json.loads(kubectl("-n", "kube-system", "get", what, "-o", "json"))


def listens(container: dict, configmaps: dict) -> set[tuple[int, str]]:
    """Where a container's DNS server listens: kdns its --listen port, CoreDNS its Corefile's
    server block port (both over UDP and TCP)."""
    args = container.get("args", [])
    if args[:1] == ["serve"]:
        if "--listen" in args:
            port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
        else:
            raise AssertionError(f"kdns without --listen: {args}")
    else:
        corefile = configmaps["coredns"]["data"]["Corefile"]
        port = int(re.search(r"^\.:(\d+)", corefile, re.M).group(1))
    return {(port, "UDP"), (port, "TCP")}


def target(container: dict, service_port: dict) -> int | None:
    """The container port a Service port reaches on this pod; None when a named one is missing
    (the EndpointSlice controller leaves the pod out for that port)."""
    t = service_port.get("targetPort", service_port["port"])
    if isinstance(t, int):
        return t
    for p in container.get("ports", []):
        if p.get("name") == t and p.get("protocol", "TCP") == service_port.get("protocol", "TCP"):
            return p["containerPort"]
    return None


def dns_backends(kubectl, service: str = "kube-dns") -> dict[str, set[tuple[int, str]]]:
    """Deployment -> the (port, protocol) the Service's port 53 reaches on its pods, after
    asserting each of them listens there."""
    svc = get(kubectl, f"service/{service}")
    if service == "kube-dns":
        assert svc["spec"]["clusterIP"] == "10.96.0.10"      # every kubelet's --cluster-dns
    configmaps = {c["metadata"]["name"]: c for c in get(kubectl, "configmaps")["items"]}
    out = {}
    for dep in get(kubectl, "deployments")["items"]:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if not svc["spec"]["selector"].items() <= labels.items() or not dep["spec"].get("replicas", 1):
            continue
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        reached = {(target(container, p), p["protocol"]) for p in svc["spec"]["ports"] if p["port"] == 53}
        assert reached <= listens(container, configmaps), \
            f"{dep['metadata']['name']}: {service} sends DNS to {reached}, it listens on {listens(container, configmaps)}"
        out[dep["metadata"]["name"]] = reached
    assert out, f"{service} selects no DNS server: the cluster has no DNS"
    return out


def run_doc_patch(kubectl, argv: list[str]) -> None:
    """A patch command from docs/ops.md, computed by kubectl (--dry-run=client: GET, then the
    patch applied locally) and written with `kubectl replace` (the fake API has no PATCH)."""
    assert argv[0] == "kubectl"
    patched = kubectl(*argv[1:], "--dry-run=client", "-o", "json")
    kubectl("replace", "-f", "-", stdin=patched)


def test_the_doc_has_the_three_patches_and_rolls_back_after_scaling_up():
    patches = doc_patches()
    assert [p[p.index("--type") + 1] for p in patches] == ["merge", "json", "json"]
    section = migration_section()
    rollback = section[section.index("4. **Roll back**"):]
    assert rollback.index("--replicas=2") < rollback.index("patch service kube-dns")
    assert section.index("patch service kube-dns") < section.index("scale deployment/coredns --replicas=0")


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_migration_never_leaves_the_cluster_without_dns(cluster, manifest):
    kubectl = cluster
    before = {what: get(kubectl, what) for what in ("service/kube-dns", "deployment/coredns", "configmap/coredns")}
    assert dns_backends(kubectl) == {"coredns": {(53, "UDP"), (53, "TCP")}}

    # 1. Beside CoreDNS: the manifest creates kdns's own objects only (server-side dry run first,
    # as an operator would), and touches nothing CoreDNS or kube-dns routes through.
    path = str(ROOT / "deploy" / manifest)
    dry = kubectl("apply", "--dry-run=server", "--validate=false", "-f", path).splitlines()
    assert sorted(dry) == sorted(f"{o} created (server dry run)" for o in KDNS_OBJECTS)
    applied = kubectl("apply", "--validate=false", "-f", path).splitlines()
    assert sorted(applied) == sorted(f"{o} created" for o in KDNS_OBJECTS)
    for what, was in before.items():
        assert get(kubectl, what) == was, f"{manifest} changed {what}"
    assert dns_backends(kubectl) == {"coredns": {(53, "UDP"), (53, "TCP")}}
    # kdns's own Service (what step 2 compares against) reaches kdns where it listens.
    own = get(kubectl, "service/kdns")
    (kdns,) = get(kubectl, "deployment/kdns")["spec"]["template"]["spec"]["containers"]
    assert {(target(kdns, p), p["protocol"]) for p in own["spec"]["ports"] if p["port"] == 53} <= \
        listens(kdns, {})

    name_ports, switch, roll_back = doc_patches()
    # 3a. Named target ports: still CoreDNS, still port 53.
    run_doc_patch(kubectl, name_ports)
    assert dns_backends(kubectl) == {"coredns": {(53, "UDP"), (53, "TCP")}}
    # ... and the metrics port reaches a declared port on both servers' pods.
    svc = get(kubectl, "service/kube-dns")
    (metrics,) = [p for p in svc["spec"]["ports"] if p["port"] == 9153]
    (coredns,) = get(kubectl, "deployment/coredns")["spec"]["template"]["spec"]["containers"]
    assert target(coredns, metrics) == 9153
    assert target(kdns, metrics) == (8080 if manifest == "kdns.yaml" else 9153)

    # 3b. The selector switch: kdns alone, on 1053.
    run_doc_patch(kubectl, switch)
    assert dns_backends(kubectl) == {"kdns": {(1053, "UDP"), (1053, "TCP")}}

    # 4. Roll back: CoreDNS again, on 53, the cluster DNS address never changed.
    run_doc_patch(kubectl, roll_back)
    assert dns_backends(kubectl) == {"coredns": {(53, "UDP"), (53, "TCP")}}
    after = get(kubectl, "service/kube-dns")
    assert after["spec"]["selector"] == before["service/kube-dns"]["spec"]["selector"]


def test_a_selector_switch_alone_would_have_left_the_cluster_without_dns(cluster):
    """Why step 3 names the ports first: kubeadm's numeric targetPort 53 reaches nothing on kdns
    (this is the check above failing, on purpose)."""
    kubectl = cluster
    kubectl("apply", "--validate=false", "-f", str(ROOT / "deploy" / "kdns.yaml"))
    run_doc_patch(kubectl, doc_patches()[1])
    with pytest.raises(AssertionError, match=r"kdns: kube-dns sends DNS to .*53.*it listens on .*1053"):
        dns_backends(kubectl)


def test_nodelocal_s_upstream_is_switched_and_rolled_back_the_same_way(cluster):
    """With NodeLocal DNSCache, node-local-dns reaches the cluster zone through
    kube-dns-upstream (nodelocaldns.yaml's, 53 -> 53 by number): the doc's patches for it never
    leave it without a DNS server listening where it sends queries."""
    kubectl = cluster
    kubectl("apply", "--validate=false", "-f", str(ROOT / "deploy" / "kdns.yaml"))
    up = "kube-dns-upstream"
    before = get(kubectl, f"service/{up}")
    assert dns_backends(kubectl, up) == {"coredns": {(53, "UDP"), (53, "TCP")}}
    patches = doc_patches(up)
    assert [p[p.index("--type") + 1] for p in patches] == ["merge", "json", "json"]
    name_ports, switch, roll_back = patches
    run_doc_patch(kubectl, name_ports)
    assert dns_backends(kubectl, up) == {"coredns": {(53, "UDP"), (53, "TCP")}}
    run_doc_patch(kubectl, switch)
    assert dns_backends(kubectl, up) == {"kdns": {(1053, "UDP"), (1053, "TCP")}}
    run_doc_patch(kubectl, roll_back)
    assert dns_backends(kubectl, up) == {"coredns": {(53, "UDP"), (53, "TCP")}}
    after = get(kubectl, f"service/{up}")
    assert after["spec"]["selector"] == before["spec"]["selector"]
    assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]
