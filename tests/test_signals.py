"""Signals, restarts and bind errors (issue 13 item 7), against real kdns processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import dns.rcode
import pytest

from conftest import DATA, ROOT, Kdns, wait_for

SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}
"""


def a_of(server: Kdns, name: str) -> tuple[int, list[str]]:
    resp = server.query(name)
    return resp.rcode(), sorted(rd.address for rrset in resp.answer for rd in rrset)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (for tests that need a fixed number)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


def run_serve(*args: str, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*wrap, sys.executable, "-m", "kdns", "serve", "--resolv-conf", "", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_sighup_rereads_the_manifests_and_never_exits(tmp_path):
    f = tmp_path / "shop.yaml"
    f.write_text(SERVICE.format(name="web", ip="10.96.0.10"))
    server = Kdns("--manifests", str(f), "--reload", "0")      # no polling: only SIGHUP reads
    try:
        f.write_text(SERVICE.format(name="web", ip="10.96.0.10") + "---\n" +
                     SERVICE.format(name="api", ip="10.96.0.11"))
        assert a_of(server, "api.shop.svc.cluster.local.")[0] == dns.rcode.NXDOMAIN
        for _ in range(3):
            server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: a_of(server, "api.shop.svc.cluster.local.") == (0, ["10.96.0.11"]))
        assert server.proc.poll() is None
        assert "SIGHUP: re-reading the manifests" in server.log()
    finally:
        server.stop()


def test_sigusr1_reports_and_does_not_kill():
    server = Kdns("--manifests", str(DATA / "cluster.yaml"))
    try:
        server.proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: "SIGUSR1: serving snapshot" in server.log())
        assert server.proc.poll() is None
        assert server.query("web.prod.svc.cluster.local.").rcode() == dns.rcode.NOERROR
    finally:
        server.stop()


def test_a_new_kdns_binds_while_the_old_one_drains_its_lameduck():
    port = free_port()
    listen = f"127.0.0.1:{port}"
    old = Kdns("--manifests", str(DATA / "cluster.yaml"), "--lameduck", "30", listen=listen)
    new = None
    try:
        old.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "lameduck: not ready" in old.log())
        new = Kdns("--manifests", str(DATA / "cluster.yaml"), listen=listen)   # SO_REUSEPORT
        assert new.port == port
        old.proc.send_signal(signal.SIGTERM)                    # a second signal ends it now
        assert old.wait_exit() == 0
        assert new.query("web.prod.svc.cluster.local.").rcode() == dns.rcode.NOERROR
        assert new.query("web.prod.svc.cluster.local.", tcp=True).rcode() == dns.rcode.NOERROR
    finally:
        old.stop()
        if new is not None:
            new.stop()


def test_address_in_use_names_the_address_and_what_to_do():
    with socket.socket() as holder:                             # no SO_REUSEPORT: exclusive
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        r = run_serve("--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert (f"kdns: cannot listen on 127.0.0.1:{port} (tcp): address already in use: another "
            f"process holds it") in r.stderr
    assert "choose another --listen" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_privileged_port_says_it_needs_root_or_the_capability():
    # As root, drop the capability for the child; as a user, port 53 is refused anyway.
    wrap = ("setpriv", "--bounding-set=-net_bind_service") if os.geteuid() == 0 else ()
    if open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read().strip() not in ("1024",):
        pytest.skip("unprivileged ports start below 1024 here: nothing is refused")
    r = run_serve("--listen", "127.0.0.1:53", wrap=wrap)
    assert r.returncode == 1
    assert ("kdns: cannot listen on 127.0.0.1:53 (tcp): permission denied: port 53 needs root or "
            "CAP_NET_BIND_SERVICE; use --listen 127.0.0.1:5353") in r.stderr


def test_ctrl_c_without_http_exits_at_once():
    # Run by hand (no --http: no Service routes to it), Ctrl-C skips the lameduck.
    server = Kdns("--manifests", str(DATA / "cluster.yaml"), "--lameduck", "60")
    server.proc.send_signal(signal.SIGINT)
    assert server.wait_exit(20) == 0
    assert "lameduck" not in server.log()
    assert "stopped" in server.log()


def test_sigterm_still_drains_the_lameduck_without_http():
    server = Kdns("--manifests", str(DATA / "cluster.yaml"), "--lameduck", "60")
    try:
        server.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "lameduck: not ready" in server.log())
        assert server.query("web.prod.svc.cluster.local.").rcode() == dns.rcode.NOERROR
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 0
