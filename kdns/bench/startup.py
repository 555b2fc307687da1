"""Start -> ready and RSS for every source, at issue 11's cluster shape.

The cluster is N ClusterIP Services in N/100 namespaces, each with one EndpointSlice of 10
ready endpoints carrying targetRefs, nodeNames and zones as the API returns them. The same
objects are given to kdns three ways:

- the API: tests/fakeapi.py (in this harness's process, so not in kdns's), ``--kubeconfig``;
- one YAML file in ``kubectl get -o yaml`` style (block style, a ``kind: List``);
- the same List as one JSON file.

Ready is the first correct answer for the *last* Service (every object listed, the snapshot
compiled and published); RSS is read a second after ready (the process tree, VmRSS).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from kdns.bench import servers
from kdns.bench.report import coredns_mb
from kdns.bench.servers import Running, Unavailable, free_port

DOMAIN = "cluster.local"
SOURCES = ("api", "yaml", "json")
ENDPOINTS_PER_SERVICE = 10
ZONES = ("zone-a", "zone-b", "zone-c")


def _ip(n: int, base: int) -> str:
    n += base
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def namespaces(services: int) -> list[str]:
    return [f"ns-{i:03d}" for i in range(max(1, services // 100))]


def documents(services: int) -> Iterator[dict]:
    """Every object, as the API lists them (metadata the API adds included: uid,
    resourceVersion, creationTimestamp, managed-by labels)."""
    nss = namespaces(services)
    for ns in nss:
        yield {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": ns, "uid": f"ns-uid-{ns}", "resourceVersion": "1",
                            "labels": {"kubernetes.io/metadata.name": ns}},
               "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
    for i in range(services):
        yield from service_objects(i, nss[i % len(nss)])


def service_objects(i: int, ns: str) -> Iterator[dict]:
    name = f"svc-{i:05d}"
    cip = _ip(i, 0x0A600000 + 10)                       # 10.96.0.10 onwards
    yield {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns, "uid": f"00000000-0000-4000-8000-{i:012d}",
                        "resourceVersion": str(1000 + i), "creationTimestamp": "2026-01-01T00:00:00Z",
                        "labels": {"app": name}},
           "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip], "selector": {"app": name},
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
           "status": {"loadBalancer": {}}}
    eps = []
    for j in range(ENDPOINTS_PER_SERVICE):
        n = i * ENDPOINTS_PER_SERVICE + j
        eps.append({"addresses": [_ip(n, 0x0AF40000 + 2)],       # 10.244.0.2 onwards
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": f"node-{n % 50:02d}", "zone": ZONES[n % 3],
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": f"{name}-7d4b9c-{j:05d}",
                                  "uid": f"10000000-0000-4000-8000-{n:012d}"}})
    yield {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-abcde", "namespace": ns, "generateName": f"{name}-",
                        "uid": f"20000000-0000-4000-8000-{i:012d}", "resourceVersion": str(50000 + i),
                        "labels": {"kubernetes.io/service-name": name,
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                             "uid": f"00000000-0000-4000-8000-{i:012d}",
                                             "controller": True, "blockOwnerDeletion": True}]},
           "addressType": "IPv4", "endpoints": eps,
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def probe(services: int) -> tuple[str, str]:
    """The last Service: answered only once everything before it is in the snapshot too."""
    i = services - 1
    ns = namespaces(services)[i % len(namespaces(services))]
    return f"svc-{i:05d}.{ns}.svc.{DOMAIN}.", "A"


# --------------------------------------------------------------------------- writers

_PLAIN = re.compile(r"^(?:[A-Za-z_/][A-Za-z0-9_./-]*|\d+\.\d+\.\d+\.\d+)$")   # names, dotted quads
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str) and _PLAIN.match(v) and v.lower() not in _RESERVED:
        return v
    return json.dumps(v)


def _block(obj: Any, indent: str, out: list[str]) -> None:
    """kubectl's YAML: block mappings and sequences, '- ' items at the parent's indent."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{indent}{k}:\n")
                _block(v, indent + ("  " if isinstance(v, dict) else ""), out)
            else:
                out.append(f"{indent}{k}: {_scalar(v) if not isinstance(v, (dict, list)) else json.dumps(v)}\n")
    else:
        for v in obj:
            if isinstance(v, dict) and v:
                first = True
                for k, val in v.items():
                    lead = f"{indent}- " if first else f"{indent}  "
                    first = False
                    if isinstance(val, (dict, list)) and val:
                        out.append(f"{lead}{k}:\n")
                        _block(val, indent + "  " + ("  " if isinstance(val, dict) else ""), out)
                    else:
                        out.append(f"{lead}{k}: {_scalar(val) if not isinstance(val, (dict, list)) else json.dumps(val)}\n")
            else:
                out.append(f"{indent}- {_scalar(v)}\n")


def write_yaml(services: int, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write("apiVersion: v1\nitems:\n")
        for doc in documents(services):
            out: list[str] = []
            _block([doc], "", out)
            f.write("".join(out))
        f.write("kind: List\nmetadata:\n  resourceVersion: \"\"\n")
    return path


def write_json(services: int, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write('{"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": [\n')
        for n, doc in enumerate(documents(services)):
            f.write(("" if n == 0 else ",\n") + json.dumps(doc, indent=None))
        f.write("\n]}\n")
    return path


# --------------------------------------------------------------------------- measure

def measure(source: str, services: int, tmp: Path, *, fakeapi=None, timeout: float = 600.0) -> dict:
    """One start of kdns on ``source``: ready seconds and RSS (MB) a second after ready."""
    out: dict = {"source": source, "services": services,
                 "endpoints": services * ENDPOINTS_PER_SERVICE,
                 "formula_mb": coredns_mb(services, services * ENDPOINTS_PER_SERVICE)}
    port = free_port()
    if source == "api":
        if fakeapi is None:
            raise Unavailable("the API source needs tests/fakeapi.py")
        spec = servers.kdns(None, port, probe(services), None, name=f"kdns-api-{services}",
                            extra=["--kubeconfig", str(fakeapi.kubeconfig(tmp / "kubeconfig"))],
                            ready_timeout=timeout)
    else:
        path = tmp / f"cluster-{services}.{source}"
        if not path.exists():
            (write_yaml if source == "yaml" else write_json)(services, path)
        out["file_mb"] = round(path.stat().st_size / 1e6, 1)
        spec = servers.kdns(path, port, probe(services), None, name=f"kdns-{source}-{services}",
                            ready_timeout=timeout)
    with Running(spec, tmp) as run:
        out["ready_s"] = round(run.ready_after, 2)
        time.sleep(1.0)
        out["rss_mb"] = round(run.rss_kb() / 1024, 1)
    return out


_FAKE = """
import sys, time
sys.path.insert(0, sys.argv[3])
from fakeapi import FakeAPI
from kdns.bench.startup import documents
api = FakeAPI(history=1000, bookmark_interval=5.0).start()
for doc in documents(int(sys.argv[1])):
    api.apply(doc)
api.kubeconfig(sys.argv[2])
print("ready", flush=True)
sys.stdin.read()
api.stop()
"""


class FakeAPIProcess:
    """tests/fakeapi.py holding the cluster, in a process of its own (as an API server is:
    its JSON encoding must not share a GIL with the harness's DNS polling)."""

    def __init__(self, services: int, tmp: Path):
        self.services, self.path = services, tmp / f"kubeconfig-{services}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "FakeAPIProcess":
        fake = servers.REPO / "tests" / "fakeapi.py"
        if not fake.is_file():
            raise Unavailable(f"{fake} not found (the API source needs a checkout)")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(servers.REPO), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-c", _FAKE, str(self.services), str(self.path),
                                      str(fake.parent)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.__exit__()
            raise Unavailable("the fake API did not start")
        return self

    def kubeconfig(self, _path=None) -> str:
        return str(self.path)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run(sizes: list[int], tmp: Path, rounds: int = 1, say=lambda text: None) -> list[dict]:
    """Every source at every size, ``rounds`` times (the sources take turns each round, so a
    busy machine slows them alike); one row per (size, source) with the median and range."""
    rows: dict[tuple[int, str], list[dict]] = {}
    for n in sizes:
        for r in range(rounds):
            for source in SOURCES:
                try:
                    if source == "api":
                        with FakeAPIProcess(n, tmp) as api:
                            got = measure(source, n, tmp, fakeapi=api)
                    else:
                        got = measure(source, n, tmp)
                except (Unavailable, OSError) as exc:
                    got = {"source": source, "services": n, "error": str(exc)}
                say(f"startup {source} at {n:,} services, round {r + 1}: {got.get('ready_s')} s, "
                    f"{got.get('rss_mb')} MB")
                rows.setdefault((n, source), []).append(got)
    out = []
    for (n, source), runs in rows.items():
        good = [g for g in runs if "error" not in g]
        row = dict(good[len(good) // 2] if good else runs[0])
        if good:
            for k in ("ready_s", "rss_mb"):
                vals = sorted(g[k] for g in good)
                row[k] = vals[len(vals) // 2]
                row[k + "_range"] = (vals[0], vals[-1])
        row["rounds"] = len(good)
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| services | source | ready s (median, range) | RSS MB (median, range) | CoreDNS formula MB | RSS/formula |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['services']:,} | {r['source']} | error: {r['error']} | | | |")
            continue
        lo, hi = r["ready_s_range"]
        mlo, mhi = r["rss_mb_range"]
        lines.append(f"| {r['services']:,} | {r['source']} | {r['ready_s']:.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{r['rss_mb']:.0f} ({mlo:.0f}-{mhi:.0f}) | {r['formula_mb']:.0f} | "
                     f"{r['rss_mb'] / r['formula_mb']:.2f} |")
    return "\n".join(lines)
