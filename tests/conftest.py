"""Shared fixtures: a real kdns process on loopback, and a dnspython client for it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def wait_for(predicate, timeout: float = 15.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (bounded; never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def answers(server: "Kdns", name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    """(rcode, sorted answer rdata) of one query: what the live-cluster tests compare."""
    import dns.rcode
    resp = server.query(name, rdtype)
    return dns.rcode.to_text(resp.rcode()), sorted(rd.to_text() for rrset in resp.answer for rd in rrset)


def eventually(server: "Kdns", name: str, want, rdtype: str = "A", timeout: float = 20.0) -> None:
    """Poll until ``name`` answers ``want`` (bounded; a change reaching kdns, never a timing)."""
    deadline = time.monotonic() + timeout
    got = answers(server, name, rdtype)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = answers(server, name, rdtype)
    assert got == want, f"{name} {rdtype}: got {got}, want {want}\n{server.log()}"


class Kdns:
    """A `kdns serve` subprocess; ``port`` is the UDP/TCP port it bound on ``listen``'s host.

    No forwarding unless a test asks for it (``--upstream`` wins): the machine's resolv.conf
    points at resolvers that tests must never reach. No lameduck either: tests stop many
    servers; one that wants a lameduck passes its own (argparse keeps the last value given).
    """

    def __init__(self, *args: str, listen: str = "127.0.0.1:0", netns: str | None = None,
                 env: dict | None = None, wait: bool = True, wrap: list[str] | None = None):
        cmd = [sys.executable, "-m", "kdns", "serve", "--listen", listen, "--resolv-conf", "",
               "--lameduck", "0", *args]
        if wrap:                          # e.g. setpriv, to run without some of root's powers
            cmd = [*wrap, *cmd]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.host = listen.rsplit(":", 1)[0].strip("[]")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.port = 0
        # A reader thread keeps the pipe drained, so kdns never blocks on logging and tests can
        # look at what it said so far (``log()``).
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.port = self._wait_port()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def _wait_port(self) -> int:
        deadline = time.monotonic() + 30
        pattern = re.compile(r"listening on \[?" + re.escape(self.host) + r"\]?:(\d+)")
        while time.monotonic() < deadline:
            m = pattern.search(self.log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise RuntimeError("kdns exited early:\n" + self.log())
            time.sleep(0.02)
        raise RuntimeError("kdns did not start:\n" + self.log())

    def wait_exit(self, timeout: float = 30) -> int:
        """The exit status of a kdns expected to stop by itself."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, edns: int | bool = 0,
              payload: int = 1232, rdclass: str = "IN", want_dnssec: bool = False,
              timeout: float = 3.0) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, payload=payload,
                                   want_dnssec=want_dnssec)
        return self.send(q, tcp=tcp, timeout=timeout)

    def send(self, q: dns.message.Message, *, tcp: bool = False, timeout: float = 3.0) -> dns.message.Message:
        if tcp:
            return dns.query.tcp(q, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout, ignore_trailing=True)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.log()


@pytest.fixture
def api():
    """A fresh in-repo fake Kubernetes API server (tests/fakeapi.py) on loopback."""
    from fakeapi import FakeAPI

    with FakeAPI(bookmark_interval=0.2) as fake:
        yield fake


@pytest.fixture(scope="session")
def vectors_server():
    """kdns serving the vector cluster with the vectors' assumed config (cases.yaml header)."""
    servers: dict[tuple, Kdns] = {}

    def get(**config) -> Kdns:
        key = tuple(sorted(config.items()))
        if key not in servers:
            args = ["--manifests", str(DATA / "cluster.yaml"), "--pod-ip", "10.244.0.10",
                    "--ttl", "5", "--pods", config.get("pods", "insecure")]
            if config.get("endpoint_pod_names"):
                args.append("--endpoint-pod-names")
            servers[key] = Kdns(*args)
        return servers[key]

    yield get
    for s in servers.values():
        s.stop()
