"""The fast decoders (kdns.sources.decode) change nothing but speed, and hostile input is cut
short: every source gives the same snapshot for the same cluster, the exact-path fallbacks
give the same objects, and alias bombs, deep nesting, huge values, over-long watch lines and
wrong-typed watch events each get one clear line.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT
from fakeapi import FakeAPI, service
from kdns.bench import cluster as gen, startup
from kdns import objects
from kdns.config import Config
from kdns.snapshot import Store
from kdns.sources import cluster, manifests
from test_cluster_source import FAST, WAIT, RecordingSink, seed


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdns", "serve", "--listen", "127.0.0.1:0",
                           "--resolv-conf", "", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def cluster_docs() -> list[dict]:
    """Issue 11's shape (targetRefs, nodeNames, zones, API metadata) plus the benchmark's mix
    (headless, StatefulSet hostnames, several ports, several slices per Service)."""
    docs = list(startup.documents(200))
    # Both generators number Services from 10.96.0.1; two Services may not share a clusterIP
    # (the API server refuses it, and so do manifests), so this half moves to 10.100/16.
    for doc in docs:
        spec = doc.get("spec", {})
        if doc.get("kind") == "Service" and spec.get("clusterIP", "None") != "None":
            spec["clusterIP"] = spec["clusterIP"].replace("10.96.", "10.100.", 1)
            spec["clusterIPs"] = [spec["clusterIP"]]
    mix = gen.generate(100, 1200, namespaces=4, seed=7)
    docs += list(gen.documents(mix))
    # The fake API (like a kubeadm cluster) has this one from the start.
    return docs + [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-node-lease"}}]


def as_yaml(docs: list[dict], path: Path) -> Path:
    """Block-style YAML as kubectl prints it, one ``kind: List``."""
    out: list[str] = []
    startup._block(docs, "", out)
    path.write_text("apiVersion: v1\nkind: List\nitems:\n" + "".join(out))
    return path


def compiled(cl) -> tuple:
    store = Store(Config())
    store.reset(cl)
    snap = store.holder.current
    return (dict(store.cluster.services), dict(store.cluster.slices), set(store.cluster.namespaces),
            dict(snap.services.items()), dict(snap.ptr.items()))


def test_yaml_json_and_the_api_give_the_same_snapshot(tmp_path):
    docs = cluster_docs()
    from_json = manifests.load([tmp_path / "c.json"]) if (tmp_path / "c.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})) else None
    from_yaml = manifests.load([as_yaml(docs, tmp_path / "c.yaml")])
    # A YAML file with an anchor goes the exact (PyYAML) way; the objects must not change.
    exact = tmp_path / "exact.yaml"
    exact.write_text((tmp_path / "c.yaml").read_text() + "# &anchor in a comment\n")
    from_pyyaml = manifests.load([exact])
    with FakeAPI() as api:
        for doc in docs:
            api.apply(doc)
        from_api = cluster.list_cluster(kubeconfig=api.kubeconfig(tmp_path / "kubeconfig"))
    want = compiled(from_json)
    assert len(want[0]) == 300 and len(want[1]) > 300
    assert compiled(from_yaml) == want
    assert compiled(from_pyyaml) == want
    assert compiled(from_api) == want


@pytest.mark.parametrize("text, field, value", [
    # YAML 1.1 as PyYAML (and kubectl) reads it, not as rapidyaml's 1.2 reading would.
    ("publishNotReadyAddresses: yes", "publish_not_ready", True),
    ("publishNotReadyAddresses: on", "publish_not_ready", True),
    ("publishNotReadyAddresses: true", "publish_not_ready", True),
    ("type: ~", "type", "ClusterIP"),
])
def test_yaml_scalars_read_as_pyyaml_reads_them(tmp_path, text, field, value):
    path = tmp_path / "svc.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n"
                    f"spec:\n  clusterIP: 10.96.0.5\n  {text}\n  ports:\n  - port: 80\n")
    svc = manifests.load([path]).services[("shop", "web")]
    assert getattr(svc, field) == value


def test_a_yaml_11_non_string_is_still_the_error_it_was(tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: on\n"
                    "spec:\n  clusterIP: 10.96.0.5\n  ports:\n  - port: 80\n")
    with pytest.raises(manifests.ManifestError) as err:
        manifests.load([path])
    assert err.value.problems == [f"{path}, document 0: Service/default/True: field metadata.name: "
                                  "must be a string, got True"]


def bomb(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nkind: Service\nmetadata: {{name: *a{levels - 1}}}\n"


def test_an_alias_bomb_is_refused_with_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("kind: Namespace\nmetadata: {name: shop}\n---\n" + bomb(9))    # 9**9 nodes
    out = run_serve("--manifests", str(path))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"kdns: {path}: does not parse: document 1: YAML aliases expand it by more than 100000 "
        "nodes (an alias bomb?)",
        "kdns: 1 problem(s) in the manifests; nothing served"]


def test_a_few_aliases_are_fine_and_values_in_errors_are_cut(tmp_path):
    shared = ("kind: List\nitems:\n"
              "- {kind: Service, apiVersion: v1, metadata: {name: web, namespace: shop},\n"
              "   spec: {clusterIP: 10.96.0.5, ports: &p [{name: http, port: 80}]}}\n"
              "- {kind: Service, apiVersion: v1, metadata: {name: api, namespace: shop},\n"
              "   spec: {clusterIP: 10.96.0.6, ports: *p}}\n")
    path = tmp_path / "aliases.yaml"
    path.write_text(shared)
    services = manifests.load([path]).services
    assert sorted(services) == [("shop", "api"), ("shop", "web")]
    assert services[("shop", "api")].ports == services[("shop", "web")].ports
    path.write_text(shared + "---\n" + bomb(4))                 # 9**4 nodes: under the cap
    with pytest.raises(manifests.ManifestError) as err:
        manifests.load([path])
    (line,) = err.value.problems
    name = [[[["x"] * 9] * 9] * 9] * 9
    assert line == (f"{path}, document 1: Service/default/{objects.short_str(name)}: field "
                    f"metadata.name: must be a string, got {objects.short(name)}")
    assert len(line) < 600 and objects.short(name).startswith("[[[...], [...], [...], [...], ...], ")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_huge_field_value_gives_a_one_line_error(tmp_path, suffix):
    path = tmp_path / f"huge{suffix}"
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.0.5", "type": "x" * (8 << 20), "ports": [{"port": 80}]}}
    path.write_text(json.dumps(doc))                     # JSON is YAML too
    out = run_serve("--manifests", str(path))
    assert out.returncode == 2
    cut = "'" + "x" * 37 + "..." + "x" * 38 + "'"              # reprlib's 80-character prefix
    assert out.stderr.splitlines() == [
        f"kdns: {path}, document 0: Service/shop/web: field spec.type: must be ClusterIP, NodePort, "
        f"LoadBalancer or ExternalName, got {cut}",
        "kdns: 1 problem(s) in the manifests; nothing served"]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deep_nesting_is_a_clean_error_at_start(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text('{"kind": "Service", "metadata": {"name": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    out = run_serve("--manifests", str(path))
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"kdns: {path}: does not parse: nested too deep",
                                       "kdns: 1 problem(s) in the manifests; nothing served"]


# --------------------------------------------------------------------------- API streams

@pytest.fixture
def api():
    with FakeAPI(bookmark_interval=0.5) as fake:
        yield fake


@pytest.fixture
def source(api, tmp_path):
    started = []

    def start(timeouts=FAST):
        sink = RecordingSink()
        src = cluster.ClusterSource(sink, kubeconfig=api.kubeconfig(tmp_path / "kubeconfig"),
                                    timeouts=timeouts)
        src.start()
        started.append(src)
        assert sink.wait(lambda s: s.synced)
        assert api.wait_for(lambda: api.watchers("services") == 1, WAIT)
        return src, sink

    yield start
    for src in started:
        src.stop()


def test_a_watch_line_without_a_newline_is_capped_and_the_watch_resumes(api, source, caplog):
    seed(api)
    caplog.set_level(logging.INFO, logger="kdns.cluster")
    src, sink = source(replace(FAST, max_line=64 << 10))
    api.garbage_next_watch("services", line=b'{"type": "ADDED", "object": {"x": "' + b"y" * (1 << 20))
    api.drop_streams("services")
    assert api.wait_for(lambda: len(api.requests_for("services", watch=True)) >= 3, WAIT)
    api.create(service("prod", "after-long-line", "10.96.0.97"))
    assert sink.wait(lambda s: "prod/after-long-line" in s.ips())
    assert "watching services at %s: LineTooLong: a watch line over the 65536-byte cap without a " \
           "newline; retrying in" % api.url in caplog.text
    assert sink.resets() == 1                       # resumed from its resourceVersion: no relist


def test_a_wrong_typed_name_in_a_watch_event_is_skipped(api, source, caplog):
    seed(api)
    caplog.set_level(logging.WARNING, logger="kdns.cluster")
    src, sink = source()
    bad = {"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Service",
                                       "metadata": {"name": ["a", "b"], "namespace": "prod",
                                                    "resourceVersion": "1"}}}
    api.garbage_next_watch("services", line=json.dumps(bad).encode() + b"\n")
    api.drop_streams("services")
    assert api.wait_for(lambda: len(api.requests_for("services", watch=True)) >= 2, WAIT)
    api.create(service("prod", "after-bad-name", "10.96.0.98"))
    assert sink.wait(lambda s: "prod/after-bad-name" in s.ips())
    assert "skipping a Service event from the API: field metadata.name: must be a string, got list" \
        in caplog.text
    assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text
    assert sink.resets() == 1


def test_lines_are_split_and_joined_across_chunks():
    class Resp:
        def __init__(self, chunks):
            self.chunks = chunks

        def stream(self, *_a, **_k):
            return iter(self.chunks)

    chunks = [b'{"a"', b': 1}\n{"b": 2}\n\n{"c"', b"", b": 3}", b"\n" + b"x" * 10]
    assert list(cluster._lines(Resp(chunks))) == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}', b"x" * 10]
    with pytest.raises(cluster.LineTooLong):
        list(cluster._lines(Resp([b"x" * 10] * 5), max_line=40))
    assert list(cluster._lines(Resp([b"x" * 10] * 4 + [b"\n"]), max_line=40)) == [b"x" * 40]
