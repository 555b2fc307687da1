"""The manifest Watcher's step (``check``): only changed files are read again, only changed
objects reach the Store (as watch events), a bad edit keeps the last good data.

The sink is a real kdns.snapshot.Store; a thin wrapper records what the Watcher told it, and
the answers are read from the Store's published snapshot with kdns.answer.
"""

from __future__ import annotations

import os

import pytest

from kdns import answer as ans
from kdns.config import Config
from kdns.snapshot import Store
from kdns.sources import manifests, parsefiles, reload


def service(name: str, ip: str, ns: str = "shop") -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")


def endpoints(name: str, ip: str, ns: str = "shop") -> str:
    return (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n"
            f"addressType: IPv4\nports: [{{name: http, port: 8080}}]\n"
            f"endpoints: [{{addresses: [{ip}], conditions: {{ready: true}}}}]\n")


class Recording:
    """The Store, and a list of what it was told."""

    def __init__(self, store: Store):
        self.store, self.calls = store, []

    def reset(self, cluster, synced=True):
        self.calls.append(("reset",))
        self.store.reset(cluster, synced)

    def apply(self, op, obj):
        self.calls.append((op, type(obj).__name__, obj.name))
        self.store.apply(op, obj)

    def set_synced(self, synced):
        self.store.set_synced(synced)


def a_records(store: Store, name: str) -> tuple[int, list[str]]:
    resp = ans.answer(store.holder.current, f"{name}.shop.svc.cluster.local.", ans.A)
    return resp.rcode, [rdata for _owner, _type, _ttl, rdata in resp.answer]   # answer.RR tuples


def touch(path, text: str) -> None:
    """Write and move the mtime on, so a same-size edit within one clock tick still shows."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def cluster_dir(tmp_path):
    (tmp_path / "a.yaml").write_text(service("a", "10.96.0.11") + "---\n" + endpoints("a", "10.244.0.11"))
    (tmp_path / "b.yaml").write_text(service("b", "10.96.0.12"))
    return tmp_path


@pytest.fixture
def watched(cluster_dir):
    sink = Recording(Store(Config()))
    watcher, cluster = reload.Watcher.loaded([cluster_dir], "10.96.0.0/12", sink, interval=60)
    sink.store.reset(cluster, True)
    return watcher, sink


def test_an_edit_to_one_file_reaches_the_store_as_one_event(watched, cluster_dir):
    watcher, sink = watched
    kept = watcher._files[str(cluster_dir / "a.yaml")][1]
    touch(cluster_dir / "b.yaml", service("b", "10.96.0.99"))
    watcher.check()
    assert sink.calls == [("MODIFIED", "Service", "b")]
    assert a_records(sink.store, "b") == (ans.NOERROR, ["10.96.0.99"])
    assert a_records(sink.store, "a") == (ans.NOERROR, ["10.96.0.11"])
    # a.yaml was not read again: its objects are the very ones of the first load
    assert watcher._files[str(cluster_dir / "a.yaml")][1] is kept


def test_nothing_changed_is_no_event(watched):
    watcher, sink = watched
    watcher.check()
    assert sink.calls == []


def test_a_new_file_adds_and_a_removed_file_deletes(watched, cluster_dir):
    watcher, sink = watched
    (cluster_dir / "c.yaml").write_text(service("c", "10.96.0.13", ns="new"))
    watcher.check()
    assert sink.calls == [("ADDED", "Namespace", "new"), ("ADDED", "Service", "c")]
    sink.calls.clear()
    (cluster_dir / "a.yaml").unlink()
    watcher.check()
    assert sink.calls == [("DELETED", "Service", "a"), ("DELETED", "EndpointSlice", "a-1")]
    assert a_records(sink.store, "a")[0] == ans.NXDOMAIN
    assert a_records(sink.store, "b") == (ans.NOERROR, ["10.96.0.12"])


def test_a_bad_edit_keeps_the_last_good_data_and_a_fix_applies(watched, cluster_dir, caplog):
    watcher, sink = watched
    touch(cluster_dir / "b.yaml", service("b", "10.96.0.12").replace("port: 80", "port: eighty"))
    watcher.check()
    assert sink.calls == []
    assert "reload failed: still serving the last good manifests" in caplog.text
    assert f"{cluster_dir / 'b.yaml'}, document 0: Service/shop/b: field spec.ports[0].port" in caplog.text
    assert a_records(sink.store, "b") == (ans.NOERROR, ["10.96.0.12"])
    touch(cluster_dir / "b.yaml", service("b", "10.96.0.77"))
    watcher.check()
    assert sink.calls == [("MODIFIED", "Service", "b")]
    assert a_records(sink.store, "b") == (ans.NOERROR, ["10.96.0.77"])


def test_a_clash_with_an_unread_file_is_named_with_its_document(watched, cluster_dir, caplog):
    """0.yaml (new, read first) redefines a.yaml's Service: the clash is reported at a.yaml,
    which came from the cache with no document index, so load reads everything again to name
    it fully."""
    watcher, sink = watched
    (cluster_dir / "0.yaml").write_text(service("a", "10.96.0.50"))
    watcher.check()
    assert sink.calls == []
    assert f"{cluster_dir / 'a.yaml'}, document 0: Service/shop/a: defined twice with different content" \
        in caplog.text
    assert a_records(sink.store, "a") == (ans.NOERROR, ["10.96.0.11"])


def test_many_changes_are_one_reset(watched, cluster_dir):
    watcher, sink = watched
    watcher.RESET_ABOVE = 1
    touch(cluster_dir / "a.yaml", service("a", "10.96.0.21") + "---\n" + endpoints("a", "10.244.0.21"))
    watcher.check()
    assert sink.calls == [("reset",)]
    assert a_records(sink.store, "a") == (ans.NOERROR, ["10.96.0.21"])


def test_diff_orders_namespaces_first_and_deletions_last():
    old = manifests.Cluster()
    new = manifests.Cluster()
    gone = manifests.objects.Namespace("gone")
    old.namespaces["gone"] = gone
    new.namespaces["fresh"] = manifests.objects.Namespace("fresh")
    assert reload.diff(old, new) == [("ADDED", new.namespaces["fresh"]), ("DELETED", gone)]


# ---------------------------------------------------------------- worker processes

@pytest.fixture
def many_files(tmp_path):
    for n in range(6):
        (tmp_path / f"f{n}.yaml").write_text(
            service(f"s{n}", f"10.96.1.{n + 1}", ns=f"ns{n % 2}") + "---\n" + endpoints(f"s{n}", f"10.244.1.{n + 1}", ns=f"ns{n % 2}")
            + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n")
    return tmp_path


def test_worker_processes_load_the_same_cluster(many_files, monkeypatch, caplog):
    serial = manifests.load([many_files])
    monkeypatch.setattr(parsefiles, "PARALLEL_BYTES", 0)
    caplog.set_level("INFO", logger="kdns.manifests")
    parallel = manifests.load([many_files])
    assert "parsing them here" not in caplog.text          # the workers did it
    assert "skipping 6 ConfigMap object(s)" in caplog.text
    for table in ("services", "slices", "namespaces", "pods"):
        assert getattr(parallel, table) == getattr(serial, table)
    assert len(parallel.services) == 6


def test_worker_processes_report_problems_as_a_serial_load_does(many_files, monkeypatch):
    (many_files / "f3.yaml").write_text(service("s3", "10.96.1.300", ns="ns1"))
    (many_files / "f5.yaml").write_text("kind: Service\nmetadata: [oops\n")
    with pytest.raises(manifests.ManifestError) as serial:
        manifests.load([many_files])
    monkeypatch.setattr(parsefiles, "PARALLEL_BYTES", 0)
    with pytest.raises(manifests.ManifestError) as parallel:
        manifests.load([many_files])
    assert parallel.value.problems == serial.value.problems
    assert len(serial.value.problems) == 2
    assert serial.value.problems[0].startswith(f"{many_files / 'f3.yaml'}, document 0: Service/ns1/s3: field spec.clusterIP")
    assert serial.value.problems[1].startswith(f"{many_files / 'f5.yaml'}: does not parse")
