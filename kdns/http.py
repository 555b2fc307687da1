"""/health, /ready and /metrics, on their own thread (never the UDP loop's).

As CoreDNS's health and ready plugins: /health is 200 "OK" for as long as the process runs
(lameduck included: the kubelet must not restart a pod that is shutting down cleanly); /ready is
200 "OK" once the snapshot is synced with the API and 503 with the reason otherwise, and goes 503
the moment lameduck starts, so endpoints drop this pod while it still answers DNS.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder

log = logging.getLogger("kdns.http")


class Status:
    """What /ready reports: the served snapshot's sync state, and whether we are shutting down."""

    def __init__(self, snapshot, waiting_for=None, problem=None):
        self.snapshot = snapshot            # () -> the current Snapshot
        # () -> why the source, though serving, must not take traffic (a missing permission)
        self.problem = problem
        # () -> what the source still waits for, e.g. "endpointslices, namespaces" (optional;
        # the API source can say which kinds are not listed yet).
        self.waiting_for = waiting_for
        self.lameduck = False

    def not_ready(self) -> str | None:
        """None when ready, else the reason, for a human reading the probe's output."""
        if self.lameduck:
            return "shutting down (lameduck): still answering DNS, but take this server out of rotation"
        problem = self.problem() if self.problem else None
        if problem:
            return f"not ready: {problem}"
        if not self.snapshot().synced:
            detail = self.waiting_for() if self.waiting_for else ""
            return "not synced: waiting for the first full listing of the Kubernetes API" + \
                (f" ({detail})" if detail else "")
        return None

    def ready(self) -> bool:
        return self.not_ready() is None


class HTTP:
    """The HTTP endpoints on ``address``; ``start()`` binds and returns the bound (host, port)."""

    def __init__(self, address: tuple[str, int], status: Status, registry):
        self.address = address
        self.status = status
        self.registry = registry
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> tuple[str, int]:
        status, registry = self.status, self.registry

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def version_string(self):
                return "kdns"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    self._send(200, b"OK", "text/plain; charset=utf-8")
                elif path == "/ready":
                    reason = status.not_ready()
                    if reason is None:
                        self._send(200, b"OK", "text/plain; charset=utf-8")
                    else:
                        self._send(503, reason.encode() + b"\n", "text/plain; charset=utf-8")
                elif path == "/metrics":
                    encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                    try:
                        body = encoder(registry)
                    except Exception:               # a broken collector must not kill the thread
                        log.exception("collecting metrics failed")
                        self._send(500, b"collecting metrics failed\n", "text/plain; charset=utf-8")
                        return
                    self._send(200, body, ctype)
                else:
                    self._send(404, b"not found: try /health, /ready or /metrics\n",
                               "text/plain; charset=utf-8")

            def do_HEAD(self):  # noqa: N802
                self._head_only = True
                self.do_GET()

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not getattr(self, "_head_only", False):
                    self.wfile.write(body)

            def log_message(self, fmt, *args):
                # Probes hit these every few seconds: a line each would drown the real log.
                log.debug("%s %s", self.address_string(), fmt % args)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET

        self._httpd = Server(self.address, Handler)
        threading.Thread(target=self._httpd.serve_forever, name="kdns-http", daemon=True).start()
        return self._httpd.server_address[:2]

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
