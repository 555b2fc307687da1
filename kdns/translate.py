"""A CoreDNS Corefile as the kdns serve flags that mean the same.

``translate(text)`` returns the flags (a kube-dns ConfigMap's are kdns.kubedns's);
``kdns corefile FILE`` prints them as a command line and
``kdns serve --corefile FILE`` runs with them. Every plugin and option either maps to a flag,
is one kdns always has (``loop``, ``errors``; the packet cache never serves a changed cluster
answer, so ``disable success|denial <cluster zone>`` holds already), or is an error naming the
Corefile line: nothing is dropped silently. A few map to behaviour that differs and say so in a
note (``reload``: kdns reads the Corefile once).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex


from kdns.corefile import CorefileError, Line, Server, parse

REVERSE = ("in-addr.arpa", "ip6.arpa")


# ----------------------------------------------------------------------------- translating

def _seconds(text: str) -> int | None:
    """A Go duration as CoreDNS takes it ('5s', '1m', '30') in whole seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", text)
    if not m:
        return None
    value, unit = int(m.group(1)), m.group(2) or "s"
    return {"ms": value // 1000, "s": value, "m": value * 60, "h": value * 3600}[unit]


def _addr(text: str, default_host: str) -> str:
    """':9153' -> '0.0.0.0:9153'; 'localhost:9153' -> '127.0.0.1:9153'."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or default_host
    if host == "localhost":
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Translation:
    def __init__(self, where: str):
        self.where = where
        self.args: list[str] = []
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.cluster_zones: list[str] = []
        self.stubs: list[tuple[str, Line]] = []     # --forward zones, with their Corefile line
        self.default_forward = False                 # the main block has a 'forward .'

    def bad(self, line: Line | int, message: str) -> None:
        number = line.line if isinstance(line, Line) else line
        self.problems.append(f"{self.where}:{number}: {message}")

    def note(self, line: Line, message: str) -> None:
        self.notes.append(f"{self.where}:{line.line}: {message}")

    def flag(self, *parts: str) -> None:
        self.args.extend(parts)

    def unsupported_options(self, d: Line, allowed: tuple[str, ...]) -> list[Line]:
        out = []
        for opt in d.block or ():
            if opt.name in allowed:
                out.append(opt)
            else:
                self.bad(opt, f"{d.name} option '{opt.name}' is not supported by kdns")
        return out

    def no_args(self, d: Line) -> None:
        if d.args:
            self.bad(d, f"{d.name} '{' '.join(d.args)}': arguments are not supported by kdns")
        self.unsupported_options(d, ())


def translate(text: str, where: str = "Corefile") -> list[str]:
    """The serve flags for a Corefile; CorefileError lists every line kdns cannot honour."""
    return _translate(text, where).args


def _translate(text: str, where: str) -> _Translation:
    servers = parse(text, where)
    t = _Translation(where)
    ports = sorted({port for s in servers for _, port in s.keys})
    if len(ports) > 1:
        t.bad(servers[0].line, f"server blocks on ports {', '.join(map(str, ports))}: kdns "
              "serves one configuration on every --listen address; use one port")
    root = [s for s in servers if "" in (z for z, _ in s.keys) or
            any(d.name == "kubernetes" for d in s.directives)]
    if not any(d.name == "kubernetes" for s in servers for d in s.directives):
        t.bad(servers[0].line, "no kubernetes plugin: kdns serves a cluster, say which zone")
    binds: list[str] = []
    seen_loadbalance = False
    for s in servers:
        is_main = s in root
        zones = [z for z, _ in s.keys]
        if not is_main:
            _stub_block(t, s, zones)
            continue
        for d in s.directives:
            handler = _MAIN.get(d.name)
            if handler is None:
                t.bad(d, f"plugin '{d.name}' is not supported by kdns")
                continue
            if d.name == "loadbalance":
                seen_loadbalance = True
            if d.name == "bind":
                binds.extend(d.args)
                t.unsupported_options(d, ())
                continue
            handler(t, d, zones)
    port = ports[0] if ports else 53
    for host in binds or ["0.0.0.0"]:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            t.bad(servers[0].line, f"bind {host}: kdns binds IP addresses, not interface names")
            continue
        t.args[:0] = ["--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if not seen_loadbalance:
        t.flag("--no-loadbalance")             # kdns rotates by default; CoreDNS only with the plugin
    if not t.default_forward and root:
        # No 'forward .': CoreDNS forwards nothing else, so kdns must not fall back to
        # /etc/resolv.conf (its own default).
        t.flag("--resolv-conf", "")
    served = t.cluster_zones + list(REVERSE)
    inside = [(z, line) for z, line in t.stubs
              if any(z == c or z.endswith("." + c) for c in served)]
    if inside:
        # A server block (or forward FROM) for a zone kdns serves is the operator saying so:
        # CoreDNS sends those names to that block, not to the kubernetes plugin.
        t.flag("--forward-inside-cluster-zone")
        for z, line in inside:
            t.note(line, f"{z} is inside a zone kdns serves from the cluster's data; as in CoreDNS, "
                         "its names go to the stub domain's upstreams instead")
    if t.problems:
        raise CorefileError(t.problems)
    return t


def notes(text: str, where: str = "Corefile") -> list[str]:
    return _translate(text, where).notes


def translate_file(path: str, notes: list[str] | None = None) -> list[str]:
    """translate() of a file; its notes (behaviour that differs, said once) go to ``notes``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise CorefileError([f"{path}: {exc.strerror or exc}"]) from None
    t = _translate(text, os.path.basename(path) or "Corefile")
    if notes is not None:
        notes.extend(t.notes)
    return t.args


def command_line(args: list[str]) -> str:
    return shlex.join(["kdns", "serve", *args])


# ---- the main server block's plugins

def _nothing(t: _Translation, d: Line, zones) -> None:
    t.no_args(d)


def _errors(t, d, zones):
    t.no_args(d)                                   # kdns logs errors on stderr always


def _log(t, d, zones):
    t.no_args(d)
    if "--log-queries" not in t.args:        # the common format, as the log plugin's default
        t.flag("--log-queries")


def _reload(t, d, zones):
    t.unsupported_options(d, ())
    t.note(d, "reload: kdns reads the Corefile at startup; restart it after a change "
              "(kubectl -n kube-system rollout restart deployment kdns)")


def _health(t, d, zones):
    t.flag("--http", _addr(d.args[0] if d.args else ":8080", "0.0.0.0"))
    for opt in t.unsupported_options(d, ("lameduck",)):
        secs = _seconds(opt.args[0]) if len(opt.args) == 1 else None
        if secs is None:
            t.bad(opt, f"lameduck {' '.join(opt.args)}: expected a duration such as 5s")
        else:
            t.flag("--lameduck", str(secs))


def _ready(t, d, zones):
    t.flag("--http", _addr(d.args[0] if d.args else ":8181", "0.0.0.0"))
    t.unsupported_options(d, ())


def _prometheus(t, d, zones):
    t.flag("--http", _addr(d.args[0] if d.args else "localhost:9153", "0.0.0.0"))
    t.unsupported_options(d, ())


def _loadbalance(t, d, zones):
    if d.args and d.args != ["round_robin"]:
        t.bad(d, f"loadbalance {' '.join(d.args)}: only round_robin is supported by kdns")
    t.unsupported_options(d, ())
    t.flag("--loadbalance")


def _kubernetes(t, d, zones):
    kzones = [z.strip(".").lower() for z in d.args] or [z for z in zones]
    cluster = [z for z in kzones if z not in REVERSE]
    for z in cluster:
        if not z:
            t.bad(d, "kubernetes zone '.': kdns needs the cluster zone named (e.g. cluster.local)")
        elif z.endswith(".in-addr.arpa") or z.endswith(".ip6.arpa"):
            t.bad(d, f"kubernetes zone {z}: kdns serves all of in-addr.arpa and ip6.arpa")
    cluster = [z for z in cluster if z and not z.endswith((".in-addr.arpa", ".ip6.arpa"))]
    if cluster:
        t.flag("--domain", cluster[0])
        for z in cluster[1:]:
            t.flag("--zone", z)
    t.cluster_zones = cluster
    fallthrough = None
    source = False
    for opt in t.unsupported_options(d, ("pods", "ttl", "fallthrough", "endpoint_pod_names",
                                         "namespaces", "labels", "ignore", "noendpoints",
                                         "kubeconfig")):
        a = opt.args
        if opt.name == "pods":
            if a not in (["disabled"], ["insecure"], ["verified"]):
                t.bad(opt, f"pods {' '.join(a)}: expected disabled, insecure or verified")
            else:
                t.flag("--pods", a[0])
        elif opt.name == "ttl":
            if len(a) != 1 or not a[0].isdigit() or int(a[0]) > 3600:
                t.bad(opt, f"ttl {' '.join(a)}: expected 0-3600")
            else:
                t.flag("--ttl", a[0])
        elif opt.name == "fallthrough":
            fallthrough = [z.strip(".").lower() or "." for z in a]
        elif opt.name == "endpoint_pod_names":
            t.flag("--endpoint-pod-names")
        elif opt.name == "namespaces":
            t.flag("--namespaces", ",".join(a))
        elif opt.name == "labels":
            t.flag("--labels", " ".join(a))
        elif opt.name == "ignore":
            if a != ["empty_service"]:
                t.bad(opt, f"ignore {' '.join(a)}: only 'ignore empty_service' is supported by kdns")
            else:
                t.flag("--ignore-empty-service")
        elif opt.name == "noendpoints":
            t.flag("--noendpoints")
        elif opt.name == "kubeconfig":
            if not 1 <= len(a) <= 2:
                t.bad(opt, "kubeconfig: expected KUBECONFIG [CONTEXT]")
            else:
                t.flag("--kubeconfig", a[0], *(["--context", a[1]] if len(a) == 2 else []))
                source = True
    if not source:
        t.flag("--in-cluster")                     # CoreDNS's default: the pod's service account
    if fallthrough is None:
        t.flag("--no-fallthrough")
    else:
        t.flag("--fallthrough", *fallthrough)


def _forward_targets(t, d) -> tuple[list[str], str | None]:
    upstreams, resolv = [], None
    for to in d.args[1:]:
        if to.startswith("dns://"):
            to = to[len("dns://"):]
        if "://" in to:
            t.bad(d, f"forward to {to}: only plain DNS is supported by kdns")
            continue
        if to.startswith("/") or to.startswith("."):
            resolv = to
            continue
        host, port = to, ""
        if to.startswith("["):
            host, _, port = to[1:].partition("]")
            port = port.lstrip(":")
        elif to.count(":") == 1:
            host, port = to.split(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            t.bad(d, f"forward to {to}: not an IP address or a resolv.conf path")
            continue
        upstreams.append((f"[{host}]" if ":" in host else host) + (f":{port}" if port else ""))
    if not d.args[1:]:
        t.bad(d, "forward: no upstream given")
    return upstreams, resolv


def _forward(t, d, zones):
    if not d.args:
        t.bad(d, "forward: expected FROM TO...")
        return
    source = d.args[0].strip(".").lower()
    upstreams, resolv = _forward_targets(t, d)
    opts = t.unsupported_options(d, ("max_concurrent", "policy", "except"))
    if source:
        _stub(t, d, source, upstreams, resolv)
    else:
        if resolv and upstreams:
            t.bad(d, "forward: both a resolv.conf and addresses: kdns takes one or the other")
        t.default_forward = True
        for u in upstreams:
            t.flag("--upstream", u)
        if resolv:
            t.flag("--resolv-conf", resolv)
    for opt in opts:
        if opt.name == "max_concurrent":
            if len(opt.args) != 1 or not opt.args[0].isdigit():
                t.bad(opt, "max_concurrent: expected a number")
            else:
                t.flag("--max-concurrent", opt.args[0])
        elif opt.name == "policy":
            if opt.args not in (["random"], ["round_robin"], ["sequential"]):
                t.bad(opt, f"policy {' '.join(opt.args)}: expected random, round_robin or sequential")
            elif opt.args != ["sequential"]:
                t.flag("--policy", opt.args[0])
        elif opt.name == "except":
            for z in opt.args:
                t.flag("--forward-except", z.strip(".").lower())


def _stub(t, d, zone, upstreams, resolv):
    if resolv:
        t.bad(d, f"forward {zone} {resolv}: a stub domain takes addresses, not a resolv.conf")
    if upstreams:
        t.flag("--forward", f"{zone}=" + ",".join(upstreams))
        t.stubs.append((zone, d))


def _cache(t, d, zones):
    args = list(d.args)
    if args and args[0].isdigit():
        ttl = args.pop(0)
        t.flag("--cache-ttl", ttl)
        t.flag("--cache-denial-ttl", str(min(int(ttl), 1800)))
    if args and any(z.strip(".") for z in args):
        t.bad(d, f"cache zones {' '.join(args)}: kdns caches forwarded answers for every zone")
    sizes = []
    for opt in t.unsupported_options(d, ("success", "denial", "disable")):
        a = opt.args
        if opt.name in ("success", "denial"):
            if not 1 <= len(a) <= 2 or not all(x.isdigit() for x in a):
                t.bad(opt, f"cache {opt.name} {' '.join(a)}: expected CAPACITY [TTL] "
                           "(a minimum TTL is not supported by kdns)")
                continue
            sizes.append(int(a[0]))
            if len(a) == 2:
                t.flag("--cache-ttl" if opt.name == "success" else "--cache-denial-ttl", a[1])
        else:
            kinds, what = a[:1], a[1:]
            if kinds not in (["success"], ["denial"]):
                t.bad(opt, f"cache disable {' '.join(a)}: expected success or denial ZONES")
                continue
            outside = [z for z in what if z.strip(".").lower() not in t.cluster_zones + list(REVERSE)]
            if not what or outside:
                t.bad(opt, f"cache disable {' '.join(a)}: kdns cannot stop caching forwarded "
                           "answers (its cluster answers are never stale, so disabling the "
                           "cluster zones is accepted)")
    if sizes:
        t.flag("--cache-size", str(max(sizes)))


def _hosts(t, d, zones):
    args = list(d.args)
    # hosts [FILE [ZONES...]]: the file defaults to /etc/hosts, as CoreDNS's does.
    path = args.pop(0) if args else "/etc/hosts"
    if any(z.strip(".") for z in args):
        t.bad(d, f"hosts zones {' '.join(args)}: kdns answers hosts names in every zone")
    t.flag("--hosts", path)
    fallthrough = False
    for opt in d.block or ():
        if opt.name == "fallthrough":
            if any(z.strip(".") for z in opt.args):
                t.bad(opt, "hosts fallthrough ZONES: kdns falls through for every other name")
            fallthrough = True
        elif opt.name == "reload":
            secs = _seconds(opt.args[0]) if len(opt.args) == 1 else None
            if secs is None:
                t.bad(opt, "hosts reload: expected a duration such as 5s")
            else:
                t.flag("--reload", str(secs))
        elif opt.name in ("ttl", "no_reverse"):
            t.bad(opt, f"hosts option '{opt.name}' is not supported by kdns (hosts records "
                       "take the kubernetes ttl and always have PTRs)")
        else:
            try:
                ipaddress.ip_address(opt.name.split("%")[0])
            except ValueError:
                t.bad(opt, f"hosts option '{opt.name}' is not supported by kdns")
                continue
            t.flag("--hosts-entry", " ".join([opt.name, *opt.args]))
    if not fallthrough:
        t.bad(d, "hosts without fallthrough answers NXDOMAIN for every other name; kdns always "
                 "falls through: add 'fallthrough' to the hosts block")


def _rewrite(t, d, zones):
    a = list(d.args)
    if a and a[0] in ("stop", "continue"):
        a.pop(0)
    if d.block:
        t.bad(d, "rewrite with a block is not supported by kdns (use 'rewrite name exact|suffix "
                 "FROM TO')")
        return
    if len(a) >= 3 and a[-2:] == ["answer", "auto"]:
        a = a[:-2]
    if not a or a[0] != "name":
        t.bad(d, f"rewrite {' '.join(d.args)}: only 'rewrite name exact|suffix FROM TO' is "
                 "supported by kdns")
        return
    a = a[1:]
    kind = "exact"
    if len(a) == 3:
        kind = a.pop(0)
    if len(a) != 2 or kind not in ("exact", "suffix"):
        t.bad(d, f"rewrite {' '.join(d.args)}: only 'rewrite name exact|suffix FROM TO' is "
                 "supported by kdns")
        return
    t.flag("--rewrite-name" if kind == "exact" else "--rewrite-suffix",
           f"{a[0].strip('.')}={a[1].strip('.')}")


_MAIN = {
    "errors": _errors, "log": _log, "health": _health, "ready": _ready,
    "kubernetes": _kubernetes, "prometheus": _prometheus, "forward": _forward, "cache": _cache,
    "loop": _nothing, "reload": _reload, "loadbalance": _loadbalance, "hosts": _hosts,
    "rewrite": _rewrite, "bind": _nothing,
}


def _stub_block(t: _Translation, s: Server, zones: list[str]) -> None:
    """A server block for other zones: a stub domain (``consul.local:53 { forward . IP }``)."""
    forwards = [d for d in s.directives if d.name == "forward"]
    if len(forwards) != 1:
        t.bad(s.line, f"server block {' '.join(z or '.' for z in zones)}: kdns takes other "
                      "zones' blocks as stub domains, with one 'forward . ADDRESS...'")
        return
    for d in s.directives:
        if d.name in ("errors", "loop"):
            t.no_args(d)
        elif d.name == "log":
            _log(t, d, zones)
        elif d.name == "cache":
            if d.args[1:] or d.block:
                t.bad(d, "cache in a stub domain's block: only 'cache [TTL]' is supported by kdns")
            elif d.args:
                t.note(d, "cache in a stub domain's block: the stub domain has a forwarding cache "
                          "of its own, its TTLs capped by --cache-ttl as every zone's")
        elif d.name == "forward":
            if d.args[:1] != ["."]:
                t.bad(d, "forward in a stub domain's block: expected 'forward . ADDRESS...'")
                continue
            upstreams, resolv = _forward_targets(t, d)
            t.unsupported_options(d, ())
            for zone in zones:
                _stub(t, d, zone, upstreams, resolv)
        else:
            t.bad(d, f"plugin '{d.name}' is not supported by kdns in a stub domain's block")
