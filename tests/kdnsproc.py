"""Run `kdns serve` as a real subprocess (optionally inside a network namespace) and talk to it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


class KdnsProcess:
    def __init__(self, *args: str, listen: str = "127.0.0.1:0", netns: str | None = None,
                 wait: bool = True):
        cmd = [sys.executable, "-m", "kdns", "serve", "--listen", listen, *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.host = listen.rsplit(":", 1)[0].strip("[]")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._wait_port() if wait else 0

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

    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 5.0,
              **kw) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232, **kw)
        if tcp:
            return dns.query.tcp(q, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout)

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
