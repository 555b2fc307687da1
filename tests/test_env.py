"""`kdns env`: the kubelet's Service environment variables, through the real command line.

Vectors: tests/data/envvars_cases.yaml (copy of shared/vectors/envvars_cases.yaml; 9 cases from
upstream kubelet tests, 10 derived) and tests/data/expand_cases.yaml (upstream expand_test.go).
Every case runs as `python -m kdns env` on a manifest built from the case's Services, with a Pod
file when the case has container env (and also with flags when it does not).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import Kdns
from kdns import env as kenv
from kdns.objects import EnvVar, service_from_dict
from kdns.sources import manifests

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
VECTORS = yaml.safe_load((DATA / "envvars_cases.yaml").read_text())["cases"]
EXPAND = yaml.safe_load((DATA / "expand_cases.yaml").read_text())
TIMEOUT = 60


def base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
            "LC_ALL": "C.UTF-8"}


def kdns_env(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdns", "env", *map(str, args)], cwd=ROOT,
                          env=env or base_env(), capture_output=True, timeout=TIMEOUT)


def lines(proc: subprocess.CompletedProcess) -> list[str]:
    return proc.stdout.decode("utf-8", "surrogateescape").splitlines()


def stderr(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode("utf-8", "replace")


def write_yaml(path: Path, docs: list[dict]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


# --------------------------------------------------------------------------- building inputs

def service_doc(s: dict) -> dict:
    spec: dict = {"type": s.get("type", "ClusterIP")}
    for key in ("clusterIP", "clusterIPs", "ipFamilies", "externalName"):
        if key in s:
            spec[key] = s[key]
    spec["ports"] = s["ports"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s["name"], "namespace": s["namespace"]}, "spec": spec}


def manifest_services(case: dict) -> list[dict]:
    """The case's Services as a manifest can hold them.

    Two vector shapes cannot be written as manifests, and the kubelet skips both anyway:
    duplicate namespace/name entries (only the upstream fixture has them; `kdns serve` rejects
    them) and a non-ExternalName Service with clusterIP "" (not yet allocated: in a manifest
    that means "allocate one", which kdns does, like an API server). The in-process test below
    runs the raw lists, duplicates and "" included.
    """
    kept: dict[tuple[str, str], dict] = {}
    for s in case["services"]:
        key = (s["namespace"], s["name"])
        unallocated = s.get("clusterIP", "") == "" and s.get("type") != "ExternalName"
        if unallocated:
            continue
        if key in kept:
            assert kept[key].get("clusterIP") in ("None", "") or s.get("clusterIP") in ("None", ""), \
                f"{case['id']}: two {key} Services with cluster IPs"
            if kept[key].get("clusterIP") not in ("None", ""):
                continue
        kept[key] = s
    return [service_doc(s) for s in kept.values()]


def pod_doc(namespace: str, links: bool, containers: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app", "namespace": namespace},
            "spec": {"enableServiceLinks": links, "containers": containers}}


def case_args(case: dict, form: str, tmp: Path) -> list[str]:
    services = manifest_services(case)
    if form == "pod-reversed":          # the kubelet's list order is random: it must not matter
        services.reverse()
    cluster = write_yaml(tmp / "cluster.yaml", services)
    links = case.get("enable_service_links", True)
    if form == "flags":
        return ["--manifests", cluster, "--namespace", case["pod_namespace"],
                *([] if links else ["--no-service-links"])]
    container = {"name": "app", "image": "registry.k8s.io/pause:3.9"}
    if "container_env" in case:
        container["env"] = case["container_env"]
    pod = write_yaml(tmp / "pod.yaml", [pod_doc(case["pod_namespace"], links, [container])])
    return ["--manifests", cluster, "--pod", pod]


CASE_FORMS = [pytest.param(c, form, id=f"{c['id']}-{form}")
              for c in VECTORS for form in ("pod", "pod-reversed", *(() if "container_env" in c else ("flags",)))]


def check_ambiguous(case: dict, got: dict[str, str], err: str) -> None:
    for name, candidates in case.get("ambiguous", {}).items():
        assert got[name] in candidates
        warning = [line for line in err.splitlines() if name in line and "warning" in line]
        assert warning, err
        for value in candidates:
            assert value in warning[0]


def without_ambiguous(case: dict, pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{n}={v}" for n, v in pairs if n not in case.get("ambiguous", {})]


# --------------------------------------------------------------------------- the vectors

@pytest.mark.parametrize("case,form", CASE_FORMS)
def test_vector_cases_canonical_order(case, form, tmp_path):
    proc = kdns_env(*case_args(case, form, tmp_path))
    assert proc.returncode == 0, stderr(proc)
    pairs = [tuple(line.split("=", 1)) for line in lines(proc)]
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), "a name printed twice"
    assert without_ambiguous(case, pairs) == case["expected"]
    assert set(names) == {e.split("=", 1)[0] for e in case["expected"]} | set(case.get("ambiguous", {}))
    check_ambiguous(case, dict(pairs), stderr(proc))
    assert "Traceback" not in stderr(proc)


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in VECTORS])
def test_vector_cases_sorted(case, tmp_path):
    proc = kdns_env(*case_args(case, "pod", tmp_path), "--sort")
    assert proc.returncode == 0, stderr(proc)
    pairs = [tuple(line.split("=", 1)) for line in lines(proc)]
    want = sorted(case["expected"], key=lambda e: e.split("=", 1)[0].encode())
    assert without_ambiguous(case, pairs) == want
    assert [n for n, _ in pairs] == sorted((n for n, _ in pairs), key=str.encode)


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in VECTORS])
def test_vector_cases_json(case, tmp_path):
    proc = kdns_env(*case_args(case, "pod", tmp_path), "--format", "json")
    assert proc.returncode == 0, stderr(proc)
    obj = json.loads(proc.stdout)
    assert isinstance(obj, dict)
    assert without_ambiguous(case, list(obj.items())) == case["expected"]   # same order, too
    check_ambiguous(case, obj, stderr(proc))


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in VECTORS])
@pytest.mark.parametrize("order", ["as-listed", "reversed"])
def test_vector_cases_in_process_raw_services(case, order):
    """kdns.env.compute on the vectors' raw Service lists: duplicates and clusterIP "" kept."""
    services = [service_from_dict(service_doc(s)) for s in case["services"]]
    if order == "reversed":
        services.reverse()
    container_env = [EnvVar(e["name"], e.get("value", "")) for e in case.get("container_env", [])]
    result = kenv.compute(services, case["pod_namespace"], case.get("enable_service_links", True),
                          container_env)
    assert without_ambiguous(case, result.variables) == case["expected"]
    check_ambiguous(case, dict(result.variables), "\n".join("warning " + w for w in result.warnings))


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in EXPAND["cases"]])
def test_expand_like_the_kubelet(case):
    context = EXPAND["context"]
    got = kenv.expand(case["input"], context.get)
    if "expected_hex" in case:
        assert got.encode("utf-8", "surrogateescape").hex() == case["expected_hex"]
    else:
        assert got == case["expected"]


# --------------------------------------------------------------------------- formats

MASTER = {"name": "kubernetes", "namespace": "default", "clusterIP": "10.96.0.1",
          "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}
REDIS = {"name": "redis", "namespace": "shop", "clusterIP": "10.96.7.7",
         "ports": [{"port": 6379, "protocol": "TCP"}]}

# Values that break naive quoting: quotes, $, backticks, $( ), backslashes, newlines, tabs,
# non-ASCII, an empty value, a leading dash, and the bytes the kubelet makes of "$é".
TRICKY_ENV = [
    {"name": "QUOTE", "value": "it's a 'quoted' \"word\""},
    {"name": "DOLLAR", "value": "$HOME ${PATH} `id` $$(echo hi) \\ \\\\ !!"},
    {"name": "NEWLINES", "value": "line1\nline2\n"},
    {"name": "TABS", "value": "a\tb  c"},
    {"name": "UNICODE", "value": "é ü 日本 🚀"},
    {"name": "EMPTY", "value": ""},
    {"name": "DASH", "value": "-n -e"},
    {"name": "MANGLED", "value": "x$éy"},
    {"name": "REF", "value": "$(REDIS_SERVICE_HOST):$(REDIS_SERVICE_PORT)"},
    {"name": "GLOB", "value": "* ? [a-z] ~"},
    {"name": "SEMI", "value": "a; exit 3 && false | true"},
]
TRICKY_WANT = {
    b"QUOTE": "it's a 'quoted' \"word\"".encode(),
    b"DOLLAR": b"$HOME ${PATH} `id` $(echo hi) \\ \\\\ !!",
    b"NEWLINES": b"line1\nline2\n",
    b"TABS": b"a\tb  c",
    b"UNICODE": "é ü 日本 🚀".encode(),
    b"EMPTY": b"",
    b"DASH": b"-n -e",
    b"MANGLED": bytes.fromhex("7824c383a979"),
    b"REF": b"10.96.7.7:6379",
    b"GLOB": b"* ? [a-z] ~",
    b"SEMI": b"a; exit 3 && false | true",
}


@pytest.fixture
def shop(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), service_doc(REDIS)])
    pod = write_yaml(tmp_path / "pod.yaml", [pod_doc("shop", True, [
        {"name": "app", "image": "app:1", "env": TRICKY_ENV}])])
    return cluster, pod


def expected_shop_service_bytes() -> dict[bytes, bytes]:
    result = kenv.compute([service_from_dict(service_doc(MASTER)),
                           service_from_dict(service_doc(REDIS))], "shop")
    return {n.encode(): v.encode() for n, v in result.variables}


def environ_of(output: bytes) -> dict[bytes, bytes]:
    return dict(item.split(b"=", 1) for item in output.split(b"\0") if item)


def test_format_shell_round_trips_through_bash(shop):
    cluster, pod = shop
    run_env = {**base_env(), "PY": sys.executable, "CLUSTER": str(cluster), "POD": str(pod)}
    script = ('eval "$("$PY" -m kdns env --manifests "$CLUSTER" --pod "$POD" --format shell)" '
              '|| exit 99; env -0')
    before = subprocess.run(["bash", "-c", "env -0"], env=run_env, cwd=ROOT,
                            capture_output=True, timeout=TIMEOUT)
    after = subprocess.run(["bash", "-c", script], env=run_env, cwd=ROOT,
                           capture_output=True, timeout=TIMEOUT)
    assert after.returncode == 0, after.stderr
    old, new = environ_of(before.stdout), environ_of(after.stdout)
    old.pop(b"_", None)
    new.pop(b"_", None)
    added = {k: v for k, v in new.items() if old.get(k) != v}
    want = {**TRICKY_WANT, **{k: v for k, v in expected_shop_service_bytes().items()
                              if k not in TRICKY_WANT}}
    assert added == want
    assert not set(old) - set(new)


def test_format_shell_leaves_out_names_a_shell_cannot_hold(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER)])
    pod = write_yaml(tmp_path / "pod.yaml", [pod_doc("shop", True, [
        {"name": "app", "env": [{"name": "MY.VAR", "value": "1"}, {"name": "OK", "value": "2"}]}])])
    proc = kdns_env("--manifests", cluster, "--pod", pod, "--format", "shell")
    assert proc.returncode == 0
    out = lines(proc)
    assert out[0] == "export OK=2"
    assert not any("MY.VAR" in line for line in out)
    assert "MY.VAR" in stderr(proc) and "warning" in stderr(proc)
    plain = kdns_env("--manifests", cluster, "--pod", pod)
    assert lines(plain)[:2] == ["MY.VAR=1", "OK=2"]


def test_format_json_is_one_object_with_exact_strings(shop):
    cluster, pod = shop
    proc = kdns_env("--manifests", cluster, "--pod", pod, "--format", "json")
    assert proc.returncode == 0, stderr(proc)
    obj = json.loads(proc.stdout.decode("utf-8", "surrogateescape"))
    assert list(obj)[:len(TRICKY_ENV)] == [e["name"] for e in TRICKY_ENV]
    assert obj["NEWLINES"] == "line1\nline2\n"
    assert obj["QUOTE"] == "it's a 'quoted' \"word\""
    assert obj["REF"] == "10.96.7.7:6379"
    assert obj["REDIS_PORT"] == "tcp://10.96.7.7:6379"


def test_format_env_prints_the_exact_bytes(shop):
    cluster, pod = shop
    proc = kdns_env("--manifests", cluster, "--pod", pod)
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"QUOTE=it's a 'quoted' \"word\"\nDOLLAR=")
    assert b"\nMANGLED=" + bytes.fromhex("7824c383a979") + b"\n" in proc.stdout
    assert "MANGLED" in stderr(proc)          # told, not silently "fixed"


# --------------------------------------------------------------------------- -- CMD

CHILD = ("import os, sys; sys.stdout.buffer.write("
         "b'\\0'.join(k + b'=' + v for k, v in os.environb.items()))")


def test_exec_runs_the_command_with_the_variables(shop):
    cluster, pod = shop
    parent = {**base_env(), "KEEP": "me", "REDIS_SERVICE_PORT": "1", "QUOTE": "old"}
    proc = kdns_env("--manifests", cluster, "--pod", pod, "--",
                    sys.executable, "-c", CHILD, env=parent)
    assert proc.returncode == 0, stderr(proc)
    child = environ_of(proc.stdout)
    assert child[b"KEEP"] == b"me"                            # the current environment stays
    assert child[b"REDIS_SERVICE_PORT"] == b"6379"            # as in a pod: kubelet vars win
    for name, value in {**expected_shop_service_bytes(), **TRICKY_WANT}.items():
        assert child[name] == value, name


def test_exec_namespace_flags_and_exit_status(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), service_doc(REDIS)])
    proc = kdns_env("--manifests", cluster, "-n", "shop", "--",
                    sys.executable, "-c", "import os; raise SystemExit(7 if "
                    "os.environ['REDIS_PORT'] == 'tcp://10.96.7.7:6379' else 1)")
    assert proc.returncode == 7
    assert proc.stdout == b""


def test_exec_command_not_found(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER)])
    proc = kdns_env("--manifests", cluster, "--", "no-such-command-kdns")
    assert proc.returncode == 127
    assert "no-such-command-kdns: command not found" in stderr(proc)


def test_a_command_needs_the_double_dash(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER)])
    proc = kdns_env("--manifests", cluster, "echo", "hi")
    assert proc.returncode == 2
    assert "after --" in stderr(proc)


# --------------------------------------------------------------------------- sources and flags

def test_allocated_cluster_ip_matches_kdns_serve(tmp_path):
    """A Service without clusterIP gets the address manifests.load gives it (what serve uses)."""
    web = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"ports": [{"name": "http", "port": 80}]}}
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), web])
    for cidr in ("10.96.0.0/12", "10.200.0.0/16"):
        served = manifests.load([cluster], cidr).services[("shop", "web")].cluster_ip
        assert ipaddress.ip_address(served) in ipaddress.ip_network(cidr)
        args = ["--manifests", cluster, "-n", "shop"]
        if cidr != "10.96.0.0/12":
            args += ["--service-cidr", cidr]
        got = dict(line.split("=", 1) for line in lines(kdns_env(*args)))
        assert got["WEB_SERVICE_HOST"] == served
        assert got["WEB_PORT_80_TCP"] == f"tcp://{served}:80"


def test_env_and_a_real_dns_answer_agree(tmp_path):
    """`kdns serve` on the same manifests answers A with the address `kdns env` prints."""
    web = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"ports": [{"name": "http", "port": 80}]}}
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), web])
    got = dict(line.split("=", 1) for line in lines(kdns_env("--manifests", cluster, "-n", "shop")))
    server = Kdns("--manifests", str(cluster), "--reload", "0")
    try:
        for name, var in (("web.shop.svc.cluster.local.", "WEB_SERVICE_HOST"),
                          ("kubernetes.default.svc.cluster.local.", "KUBERNETES_SERVICE_HOST")):
            reply = server.query(name, "A")
            assert [rr.address for rrset in reply.answer for rr in rrset] == [got[var]]
    finally:
        server.stop()


def test_unknown_namespace_prints_only_the_kubernetes_block(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), service_doc(REDIS)])
    proc = kdns_env("--manifests", cluster, "-n", "nope")
    assert proc.returncode == 0
    assert all(line.startswith("KUBERNETES_") for line in lines(proc))
    assert len(lines(proc)) == 8
    assert "namespace 'nope' does not exist" in stderr(proc)
    known = kdns_env("--manifests", cluster, "-n", "shop")
    assert "does not exist" not in stderr(known)


def test_default_source_is_the_embedded_zones(tmp_path):
    proc = kdns_env("-n", "default")
    try:
        present = manifests.default_paths()[0].is_file()
    except ModuleNotFoundError:
        present = False
    if present:
        assert proc.returncode == 0, stderr(proc)
        assert any(line.startswith("KUBERNETES_SERVICE_HOST=") for line in lines(proc))
    else:
        assert proc.returncode == 2
        assert "zones/cluster.yaml" in stderr(proc) and "Traceback" not in stderr(proc)


def test_no_service_links_overrides_the_pod(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), service_doc(REDIS)])
    pod = write_yaml(tmp_path / "pod.yaml", [pod_doc("shop", True, [{"name": "app"}])])
    with_links = lines(kdns_env("--manifests", cluster, "--pod", pod))
    assert any(line.startswith("REDIS_") for line in with_links)
    without = lines(kdns_env("--manifests", cluster, "--pod", pod, "--no-service-links"))
    assert without and all(line.startswith("KUBERNETES_") for line in without)


def test_pod_without_namespace_takes_the_flag_and_a_mismatch_is_an_error(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), service_doc(REDIS)])
    doc = pod_doc("shop", True, [{"name": "app"}])
    del doc["metadata"]["namespace"]
    pod = write_yaml(tmp_path / "pod.yaml", [doc])
    assert any(line.startswith("REDIS_") for line in lines(kdns_env("--manifests", cluster,
                                                                    "--pod", pod, "-n", "shop")))
    assert not any(line.startswith("REDIS_") for line in lines(kdns_env("--manifests", cluster,
                                                                        "--pod", pod)))
    pinned = write_yaml(tmp_path / "pinned.yaml", [pod_doc("shop", True, [{"name": "app"}])])
    proc = kdns_env("--manifests", cluster, "--pod", pinned, "-n", "other")
    assert proc.returncode == 2
    assert "does not match" in stderr(proc)


def test_container_choice(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER)])
    pod = write_yaml(tmp_path / "pod.yaml", [pod_doc("shop", True, [
        {"name": "web", "env": [{"name": "WHO", "value": "web"}]},
        {"name": "sidecar", "env": [{"name": "WHO", "value": "sidecar"}]}])])
    proc = kdns_env("--manifests", cluster, "--pod", pod)
    assert proc.returncode == 2
    assert "web, sidecar" in stderr(proc) and "--container" in stderr(proc)
    assert lines(kdns_env("--manifests", cluster, "--pod", pod, "--container", "sidecar"))[0] \
        == "WHO=sidecar"
    missing = kdns_env("--manifests", cluster, "--pod", pod, "--container", "db")
    assert missing.returncode == 2 and "web, sidecar" in stderr(missing)
    assert kdns_env("--manifests", cluster, "--container", "web").returncode == 2


def test_upstream_env_expansion_with_a_field_ref(tmp_path):
    """kubelet_pods_test.go TestMakeEnvironmentVariables "env expansion" with its fieldRef
    POD_NAME kept (the vector drops it): the pod file answers metadata.name."""
    case = next(c for c in VECTORS if c["id"] == "upstream-mkenv-links-false")
    cluster = write_yaml(tmp_path / "cluster.yaml", manifest_services(case))
    declared = [
        {"name": "TEST_LITERAL", "value": "test-test-test"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "OUT_OF_ORDER_TEST", "value": "$(OUT_OF_ORDER_TARGET)"},
        {"name": "OUT_OF_ORDER_TARGET", "value": "FOO"},
        {"name": "EMPTY_VAR"},
        {"name": "EMPTY_TEST", "value": "foo-$(EMPTY_VAR)"},
        {"name": "POD_NAME_TEST2", "value": "test2-$(POD_NAME)"},
        {"name": "POD_NAME_TEST3", "value": "$(POD_NAME_TEST2)-3"},
        {"name": "LITERAL_TEST", "value": "literal-$(TEST_LITERAL)"},
        {"name": "TEST_UNDEFINED", "value": "$(UNDEFINED_VAR)"},
    ]
    doc = pod_doc("test1", False, [{"name": "c", "env": declared}])
    doc["metadata"]["name"] = "dapi-test-pod-name"
    pod = write_yaml(tmp_path / "pod.yaml", [doc])
    proc = kdns_env("--manifests", cluster, "--pod", pod)
    assert proc.returncode == 0, stderr(proc)
    assert lines(proc) == [
        "TEST_LITERAL=test-test-test", "POD_NAME=dapi-test-pod-name",
        "OUT_OF_ORDER_TEST=$(OUT_OF_ORDER_TARGET)", "OUT_OF_ORDER_TARGET=FOO", "EMPTY_VAR=",
        "EMPTY_TEST=foo-", "POD_NAME_TEST2=test2-dapi-test-pod-name",
        "POD_NAME_TEST3=test2-dapi-test-pod-name-3", "LITERAL_TEST=literal-test-test-test",
        "TEST_UNDEFINED=$(UNDEFINED_VAR)",
        "KUBERNETES_SERVICE_HOST=1.2.3.1", "KUBERNETES_SERVICE_PORT=8081",
        "KUBERNETES_PORT=tcp://1.2.3.1:8081", "KUBERNETES_PORT_8081_TCP=tcp://1.2.3.1:8081",
        "KUBERNETES_PORT_8081_TCP_PROTO=tcp", "KUBERNETES_PORT_8081_TCP_PORT=8081",
        "KUBERNETES_PORT_8081_TCP_ADDR=1.2.3.1"]
    assert "valueFrom" not in stderr(proc)


def test_field_refs_the_pod_file_answers(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER)])

    def ref(name: str, path: str) -> dict:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    doc = pod_doc("shop", True, [{"name": "c", "env": [
        ref("NS", "metadata.namespace"), ref("APP", "metadata.labels['app']"),
        ref("NOLABEL", "metadata.labels['absent']"), ref("NOTE", "metadata.annotations['n']"),
        ref("IP", "status.podIP"), ref("IPS", "status.podIPs"), ref("NODE", "spec.nodeName"),
        ref("SA", "spec.serviceAccountName"),
        {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
        {"name": "USE", "value": "$(APP)/$(IP)"}]}])
    doc["metadata"].update(labels={"app": "web"}, annotations={"n": "$(APP) stays"})
    doc["spec"]["nodeName"] = "node-1"
    doc["status"] = {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}
    pod = write_yaml(tmp_path / "pod.yaml", [doc])
    proc = kdns_env("--manifests", cluster, "--pod", pod)
    assert proc.returncode == 0, stderr(proc)
    assert lines(proc)[:9] == ["NS=shop", "APP=web", "NOLABEL=", "NOTE=$(APP) stays",
                               "IP=10.244.1.5", "IPS=10.244.1.5,fd00::5", "NODE=node-1",
                               "USE=web/10.244.1.5", "KUBERNETES_SERVICE_HOST=10.96.0.1"]
    warning = [line for line in stderr(proc).splitlines() if "valueFrom" in line]
    assert len(warning) == 1 and "SA, CM" in warning[0]


def test_value_from_is_left_out_but_still_hides_the_service_variable(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), service_doc(REDIS)])
    pod = write_yaml(tmp_path / "pod.yaml", [pod_doc("shop", True, [{"name": "app", "env": [
        {"name": "REDIS_PORT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "port"}}},
        {"name": "REDIS_SERVICE_HOST", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]}])])
    proc = kdns_env("--manifests", cluster, "--pod", pod)
    assert proc.returncode == 0
    assert not any(line.startswith("REDIS_PORT=") for line in lines(proc))
    assert lines(proc)[0] == "REDIS_SERVICE_HOST=app"
    assert not any(line.startswith("REDIS_SERVICE_HOST=10.") for line in lines(proc))
    assert any(line.startswith("REDIS_PORT_6379_TCP=") for line in lines(proc))
    assert "valueFrom" in stderr(proc)


def test_service_with_cluster_ip_and_no_ports_is_skipped_with_a_warning(tmp_path):
    bare = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bare", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.9.9"}}
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER), bare])
    proc = kdns_env("--manifests", cluster, "-n", "shop")
    assert proc.returncode == 0
    assert not any(line.startswith("BARE_") for line in lines(proc))
    assert "shop/bare" in stderr(proc) and "no ports" in stderr(proc)


# --------------------------------------------------------------------------- bad input

def test_bad_manifests_exit_2_with_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([
        service_doc(MASTER),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
         "spec": {"ports": [{"port": 70000}]}},
    ]))
    proc = kdns_env("--manifests", bad, "-n", "shop")
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = stderr(proc).splitlines()
    assert len(err) == 3, err                     # as `kdns serve`: one per problem, a summary
    assert err[0].startswith(f"kdns: {bad}, document 1: Service/shop/web: field spec.clusterIP")
    assert err[1].startswith(f"kdns: {bad}, document 2: Service/shop/db: field spec.ports[0].port")
    assert err[2] == "kdns: 2 problem(s) in the manifests; nothing printed"
    assert "Traceback" not in stderr(proc)


def test_unparsable_and_missing_manifests(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Service\nmetadata: [unclosed\n")
    proc = kdns_env("--manifests", broken, "--manifests", tmp_path / "absent.yaml")
    assert proc.returncode == 2
    err = stderr(proc)
    assert "absent.yaml: no such file or directory" in err
    assert "broken.yaml: does not parse" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("docs,needle", [
    ([{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}],
     "not a Pod manifest (it holds Deployment)"),
    ([], "not a Pod manifest (it is empty)"),
    ([pod_doc("a", True, []), {**pod_doc("a", True, []), "metadata": {"name": "b"}}], "holds 2 Pods"),
    ([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
       "spec": {"containers": [{"name": "c", "env": [{"value": "x"}]}]}}],
     "Pod/default/p: field spec.containers[0].env[0].name: is required"),
], ids=["deployment", "empty", "two-pods", "bad-field"])
def test_pod_file_that_is_not_one_pod(tmp_path, docs, needle):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER)])
    pod = write_yaml(tmp_path / "pod.yaml", docs)
    proc = kdns_env("--manifests", cluster, "--pod", pod)
    assert proc.returncode == 2
    assert needle in stderr(proc), stderr(proc)
    assert "Traceback" not in stderr(proc) and proc.stdout == b""


def test_bad_flags(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yaml", [service_doc(MASTER)])
    for args, needle in ((["-n", "Not_A_Namespace"], "not a namespace name"),
                         (["--service-cidr", "10.0.0.0/99"], "not a CIDR"),
                         (["--kubeconfig", tmp_path / "kc"], "two different sources"),
                         (["--pod", tmp_path / "nope.yaml"], "no such file")):
        proc = kdns_env("--manifests", cluster, *args)
        assert proc.returncode == 2, args
        assert needle in stderr(proc), (args, stderr(proc))


def test_api_source_errors_are_one_clear_line(tmp_path):
    """Without kdns.sources.cluster: a clear 'not available'; with it: its error, no traceback."""
    proc = kdns_env("--kubeconfig", tmp_path / "no-such-kubeconfig", "-n", "shop")
    assert proc.returncode == 2
    err = stderr(proc)
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("kdns env: ")]
    assert len(ours) == 1, err
    assert "not available" in ours[0] or "cannot list Services from the cluster" in ours[0]
