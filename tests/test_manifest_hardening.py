"""Bad manifests while starting and while serving (issue 13 items 4, 5, 6, 9a), against real kdns
processes; the watcher's death and /ready in-process with a real HTTP endpoint.

Unreadable files: as root, kdns runs under setpriv without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, so mode 000 means what it says (as a user it does anyway).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import dns.rcode
import pytest

from conftest import ROOT, Kdns, wait_for

SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}
"""
NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search") if os.geteuid() == 0 else ()
DEEP = "[" * 100_000 + "]" * 100_000


def service(name: str, ip: str) -> str:
    return SERVICE.format(name=name, ip=ip)


def run_serve(*args: str, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*wrap, sys.executable, "-m", "kdns", "serve", "--listen", "127.0.0.1:0",
                           "--resolv-conf", "", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def a_of(server: Kdns, name: str) -> tuple[int, list[str]]:
    resp = server.query(f"{name}.shop.svc.cluster.local.")
    return resp.rcode(), sorted(rd.address for rrset in resp.answer for rd in rrset)


def write(path, text: str) -> None:
    """Replace a file's content and make sure its stamp (mtime, size) changes."""
    before = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
    path.write_text(text)
    st = os.stat(path)
    if st.st_mtime_ns == before:
        os.utime(path, ns=(st.st_atime_ns, before + 1_000_000))


def ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def http_port(server: Kdns) -> int:
    import re
    assert wait_for(lambda: re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()))
    return int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))


@pytest.fixture
def shop(tmp_path):
    d = tmp_path / "shop"
    d.mkdir()
    (d / "web.yaml").write_text(service("web", "10.96.0.10"))
    (d / "api.yaml").write_text(service("api", "10.96.0.11"))
    yield d
    os.chmod(d, 0o755)
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o755)


# ---------------------------------------------------------------- item 4: deep nesting

def test_deep_json_at_start_is_exit_2_with_one_line(shop):
    (shop / "deep.json").write_text(DEEP)
    r = run_serve("--manifests", str(shop))
    assert r.returncode == 2
    assert f"kdns: {shop / 'deep.json'}: does not parse: nested too deep" in r.stderr
    assert "Traceback" not in r.stderr


def test_deep_json_while_serving_keeps_the_last_good_data_and_watching_goes_on(shop):
    server = Kdns("--manifests", str(shop), "--reload", "0.2", "--http", "127.0.0.1:0")
    try:
        port = http_port(server)
        (shop / "web.json").write_text(DEEP)
        assert wait_for(lambda: "reload failed: still serving the last good manifests" in server.log())
        assert a_of(server, "web") == (0, ["10.96.0.10"])
        assert ready(port)[0] == 200                            # still watching
        write(shop / "web.json", '{"apiVersion": "v1", "kind": "List", "items": []}')
        write(shop / "web.yaml", service("web", "10.96.0.20"))
        assert wait_for(lambda: a_of(server, "web") == (0, ["10.96.0.20"]))
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_a_watcher_that_dies_turns_ready_to_503_and_says_so(shop, caplog):
    from kdns import http
    from kdns.config import Config
    from kdns.snapshot import Store
    from kdns.sources import reload
    from prometheus_client import CollectorRegistry

    class DyingSink:
        """A serving side whose failure is not an Exception: the thread itself ends."""

        def __init__(self):
            self.store = Store(Config())

        def reset(self, cluster, synced=True):
            raise SystemExit("the sink went away")

        def apply(self, op, obj):
            raise SystemExit("the sink went away")

    sink = DyingSink()
    watcher, cluster = reload.Watcher.loaded([shop], "10.96.0.0/12", sink, 0.05)
    sink.store.reset(cluster, True)
    status = http.Status(lambda: sink.store.holder.current, None, failed=watcher.failed)
    web = http.HTTP(("127.0.0.1", 0), status, CollectorRegistry())
    _, port = web.start()
    try:
        watcher.start()
        assert ready(port)[0] == 200
        write(shop / "web.yaml", service("web", "10.96.0.20"))
        assert wait_for(lambda: watcher.failed() is not None)
        code, body = ready(port)
        assert code == 503
        assert "not updating: the manifest watcher stopped: SystemExit: the sink went away" in body
        assert "the manifest watcher stopped" in caplog.text
    finally:
        watcher.stop()
        web.close()


# ---------------------------------------------------------------- item 5: data that vanishes

def test_an_unreadable_file_at_start_is_an_error(shop):
    os.chmod(shop / "api.yaml", 0)
    r = run_serve("--manifests", str(shop), wrap=NO_DAC)
    assert r.returncode == 2
    assert f"kdns: {shop / 'api.yaml'}: cannot read: Permission denied" in r.stderr


def test_an_unreadable_directory_at_start_is_an_error(shop):
    sub = shop / "more"
    sub.mkdir()
    (sub / "db.yaml").write_text(service("db", "10.96.0.12"))
    os.chmod(sub, 0)
    r = run_serve("--manifests", str(shop), wrap=NO_DAC)
    assert r.returncode == 2
    assert f"kdns: {sub}: cannot read directory: Permission denied" in r.stderr


def test_an_unreadable_file_on_reload_keeps_its_objects_and_says_why(shop):
    server = Kdns("--manifests", str(shop), "--reload", "0.2", wrap=list(NO_DAC))
    try:
        os.chmod(shop / "api.yaml", 0)
        write(shop / "web.yaml", service("web", "10.96.0.20"))     # a reload happens
        write(shop / "api.yaml", service("api", "10.96.0.21"))     # and this one cannot be read
        assert wait_for(lambda: a_of(server, "web") == (0, ["10.96.0.20"]))
        assert wait_for(lambda: "api.yaml: cannot read: Permission denied; keeping its 1 object(s)"
                        in server.log())
        assert a_of(server, "api") == (0, ["10.96.0.11"])
        os.chmod(shop / "api.yaml", 0o644)
        write(shop / "api.yaml", service("api", "10.96.0.22"))
        assert wait_for(lambda: a_of(server, "api") == (0, ["10.96.0.22"]))
    finally:
        server.stop()


def test_an_unreadable_directory_on_reload_keeps_its_files_objects(shop):
    sub = shop / "more"
    sub.mkdir()
    (sub / "db.yaml").write_text(service("db", "10.96.0.12"))
    server = Kdns("--manifests", str(shop), "--reload", "0.2", wrap=list(NO_DAC))
    try:
        os.chmod(sub, 0)
        write(shop / "web.yaml", service("web", "10.96.0.20"))
        assert wait_for(lambda: a_of(server, "web") == (0, ["10.96.0.20"]))
        assert f"{sub}: cannot read directory: Permission denied; keeping its 1 object(s)" in server.log()
        assert a_of(server, "db") == (0, ["10.96.0.12"])
    finally:
        server.stop()


@pytest.mark.parametrize("empty", ["", "---\n", "---\n---\n"], ids=["empty", "one-separator", "separators"])
def test_a_file_that_goes_to_zero_documents_keeps_its_objects_until_deleted(shop, empty):
    server = Kdns("--manifests", str(shop), "--reload", "0.2")
    try:
        write(shop / "api.yaml", empty)
        write(shop / "web.yaml", service("web", "10.96.0.20"))
        assert wait_for(lambda: a_of(server, "web") == (0, ["10.96.0.20"]))
        assert wait_for(lambda: "api.yaml: holds no documents now (emptied, or caught "
                                "half-written); keeping its 1 object(s)" in server.log())
        assert a_of(server, "api") == (0, ["10.96.0.11"])
        (shop / "api.yaml").unlink()
        assert wait_for(lambda: a_of(server, "api")[0] == dns.rcode.NXDOMAIN)
    finally:
        server.stop()


def test_a_file_with_a_document_of_another_kind_is_not_empty(shop):
    # "At least one document": a file that now holds only a ConfigMap really dropped its Service.
    server = Kdns("--manifests", str(shop), "--reload", "0.2")
    try:
        write(shop / "api.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        assert wait_for(lambda: a_of(server, "api")[0] == dns.rcode.NXDOMAIN)
    finally:
        server.stop()


# ---------------------------------------------------------------- item 6: shared clusterIP

def test_two_services_with_one_cluster_ip_are_an_error_naming_both(shop):
    (shop / "api.yaml").write_text(service("api", "10.96.0.10"))
    r = run_serve("--manifests", str(shop))
    assert r.returncode == 2
    assert (f"kdns: {shop / 'web.yaml'}, document 0: Service/shop/web: field spec.clusterIP: "
            f"10.96.0.10 is already the clusterIP of Service/shop/api ({shop / 'api.yaml'}, "
            f"document 0); every Service needs its own") in r.stderr


def test_a_shared_cluster_ip_on_reload_keeps_the_last_good_data(shop):
    server = Kdns("--manifests", str(shop), "--reload", "0.2")
    try:
        write(shop / "api.yaml", service("api", "10.96.0.10"))
        assert wait_for(lambda: "is already the clusterIP of Service/shop/" in server.log())
        assert wait_for(lambda: "reload failed: still serving the last good manifests" in server.log())
        assert a_of(server, "api") == (0, ["10.96.0.11"])
        resp = server.query("10.0.96.10.in-addr.arpa.", "PTR")
        assert [rd.target.to_text() for rrset in resp.answer for rd in rrset] == [
            "web.shop.svc.cluster.local."]
    finally:
        server.stop()


# ---------------------------------------------------------------- item 9a: not a regular file

def test_dev_zero_is_not_a_regular_file():
    r = run_serve("--manifests", "/dev/zero")
    assert r.returncode == 2
    assert "kdns: /dev/zero: not a regular file (a device); give a manifest file or a directory of them" in r.stderr


def test_a_fifo_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "cluster.yaml"
    os.mkfifo(fifo)
    r = run_serve("--manifests", str(fifo))
    assert r.returncode == 2
    assert f"kdns: {fifo}: not a regular file (a FIFO)" in r.stderr


def test_a_fifo_or_broken_symlink_in_a_directory_is_named(shop):
    os.mkfifo(shop / "pipe.yaml")
    os.symlink(shop / "gone.yaml", shop / "link.yaml")
    r = run_serve("--manifests", str(shop))
    assert r.returncode == 2
    assert f"kdns: {shop / 'pipe.yaml'}: not a regular file (a FIFO)" in r.stderr
    assert f"kdns: {shop / 'link.yaml'}: broken symlink (to {shop / 'gone.yaml'})" in r.stderr
    assert shutil.which("setpriv") or os.geteuid() != 0     # the unreadable tests need it


def test_a_file_written_while_it_is_read_is_read_again(tmp_path):
    # A big file takes a while to parse; it is rewritten (one more Service) while load() reads
    # it. Whenever the write lands, load() must return what the file holds once it returns,
    # never the version it began with (the stamp taken before reading has moved on).
    import threading

    from kdns.sources import manifests

    f = tmp_path / "big.yaml"
    docs = [service(f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}") for i in range(3000)]
    f.write_text("---\n".join(docs))
    grown = "---\n".join(docs + [service("late", "10.97.0.1")])
    start = threading.Event()

    def rewrite():
        start.wait()
        threading.Event().wait(0.05)
        write(f, grown)

    writer = threading.Thread(target=rewrite)
    writer.start()
    start.set()
    cluster = manifests.load([f])
    writer.join()
    assert ("shop", "late") in cluster.services
