"""The Service environment variables the kubelet injects into a container.

Pure: Services + the pod's namespace, enableServiceLinks and container env in, an ordered list
of (name, value) and warnings out. The algorithm and its traps are in
shared/reference/envvars.md; the kubelet code it mirrors is named at each step:

1. select services       kubelet_pods.go getServiceEnvVarMap
2. per-service variables  envvars.go FromServices / makeLinkVariables
3. flatten (last wins)    getServiceEnvVarMap, end
4. merge container env    kubelet_pods.go makeEnvironmentVariables + expansion/expand.go

The kubelet's own order is Go-map order (random per container start), so we print a canonical
one (README, "kdns env"): container env in declaration order, then one block per service sorted
by service name, each in FromServices order. Where two services produce the same name with
different values the kubelet's pick is random too; we warn, listing the candidates, and print
the last in canonical order (what step 3 does over the canonical list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from kdns.objects import EnvVar, Service

MASTER_NAMESPACE = "default"      # hard-coded since v1.27 (PR #116015)
MASTER_NAME = "kubernetes"

# Go strings.ToUpper on the ASCII names Kubernetes allows; Python's str.upper() would turn
# "ß" into "SS" (envvars.md, pitfall 6).
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class Resolved:
    """A valueFrom variable the caller resolved (e.g. a fieldRef read from the pod file).

    The kubelet stores such values as they are: `$(VAR)` expansion is only for `value`.
    """
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Result:
    variables: list[tuple[str, str]]           # canonical order, each name once
    warnings: list[str] = field(default_factory=list)


def env_name(name: str) -> str:
    """makeEnvVariableName: only '-' becomes '_', then ASCII upper case; nothing else."""
    return name.replace("-", "_").translate(_ASCII_UPPER)


def ip_is_set(svc: Service) -> bool:
    """v1helper.IsServiceIPSet: an exact string compare, whatever the Service type."""
    return svc.cluster_ip not in ("", "None")


def _join_host_port(ip: str, port: int) -> str:
    # Go net.JoinHostPort: brackets whenever the host contains ':'.
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def select_services(services: Iterable[Service], namespace: str, links: bool) -> dict[str, Service]:
    """getServiceEnvVarMap's selection, keyed by Service name only (as the kubelet does).

    The master Service default/kubernetes is always in; the pod's namespace only with links,
    and a `kubernetes` Service there replaces the master whatever the list order.
    """
    selected: dict[str, Service] = {}
    for svc in services:
        if not ip_is_set(svc):
            continue
        if svc.namespace == MASTER_NAMESPACE and svc.name == MASTER_NAME:
            if MASTER_NAME not in selected:
                selected[MASTER_NAME] = svc
        elif svc.namespace == namespace and links:
            selected[svc.name] = svc
    return selected


def service_block(svc: Service) -> list[tuple[str, str]]:
    """FromServices for one Service, in its emit order. Needs at least one port."""
    prefix = env_name(svc.name)
    ip = svc.cluster_ip                        # verbatim: no canonicalisation (pitfall 9)
    out = [(prefix + "_SERVICE_HOST", ip), (prefix + "_SERVICE_PORT", str(svc.ports[0].port))]
    for p in svc.ports:
        if p.name:
            out.append((prefix + "_SERVICE_PORT_" + env_name(p.name), str(p.port)))
    for i, p in enumerate(svc.ports):
        proto = p.protocol or "TCP"
        url = f"{proto.lower()}://{_join_host_port(ip, p.port)}"
        if i == 0:
            out.append((prefix + "_PORT", url))
        group = f"{prefix}_PORT_{p.port}_{proto.translate(_ASCII_UPPER)}"
        out += [(group, url), (group + "_PROTO", proto.lower()),
                (group + "_PORT", str(p.port)), (group + "_ADDR", ip)]
    return out


def expand(value: str, lookup: Callable[[str], str | None],
           on_mangle: Callable[[], None] | None = None) -> str:
    """third_party/forked/golang/expansion Expand, byte for byte.

    `$(NAME)` -> lookup(NAME), or stays literal when unknown; `$$` -> `$`; any other `$x`, an
    unclosed `$(` and a trailing `$` are copied. Go works on bytes and writes string(byte) after
    a lone `$`, which mangles a non-ASCII character there; we reproduce that (the pod gets those
    bytes) and tell on_mangle.
    """
    data = value.encode("utf-8", "surrogateescape")
    out = bytearray()
    checkpoint = 0
    cursor = 0
    while cursor < len(data):
        if data[cursor] == 0x24 and cursor + 1 < len(data):           # '$', not the last byte
            out += data[checkpoint:cursor]
            nxt = data[cursor + 1]
            advance = 1
            if nxt == 0x24:                                           # '$$' -> '$'
                out += b"$"
            elif nxt == 0x28:                                         # '$('
                close = data.find(b")", cursor + 2)
                if close < 0:
                    out += b"$("
                else:
                    name = data[cursor + 2:close]
                    found = lookup(name.decode("utf-8", "surrogateescape"))
                    out += (b"$(" + name + b")" if found is None
                            else found.encode("utf-8", "surrogateescape"))
                    advance = close - cursor
            else:
                if nxt >= 0x80 and on_mangle is not None:
                    on_mangle()
                out += b"$" + chr(nxt).encode("utf-8")               # Go: string(input[0])
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out += data[checkpoint:]
    return out.decode("utf-8", "surrogateescape")


def _quote(value: str) -> str:
    return "'" + value.encode("utf-8", "surrogateescape").decode("utf-8", "replace") + "'"


def compute(services: Iterable[Service], namespace: str, links: bool = True,
            container_env: Sequence[EnvVar | Resolved] = (),
            known_namespaces: Iterable[str] | None = None, sort: bool = False) -> Result:
    """What the container's environment holds from the kubelet (no image ENV, PATH, HOME)."""
    services = list(services)
    warnings: list[str] = []
    if known_namespaces is not None:
        known = set(known_namespaces) | {s.namespace for s in services}
        if namespace not in known:
            warnings.append(f"namespace {namespace!r} does not exist in the source: "
                            f"only the {MASTER_NAME} Service's variables apply")

    selected = select_services(services, namespace, links)
    if MASTER_NAME not in selected:
        warnings.append(f"no Service {MASTER_NAMESPACE}/{MASTER_NAME} with a cluster IP: a real "
                        f"cluster always has one, so a real pod would also get KUBERNETES_*")

    # Steps 2-3 over the canonical list: blocks sorted by Service name; remember every
    # (service, value) per name so collisions can be reported rather than silently resolved.
    service_env: dict[str, str] = {}
    producers: dict[str, list[tuple[Service, str]]] = {}
    for name in sorted(selected, key=lambda n: n.encode()):
        svc = selected[name]
        if not svc.ports:
            # The API rejects this; FromServices would index Ports[0] and panic.
            warnings.append(f"Service {svc.namespace}/{svc.name} has a cluster IP but no ports: "
                            f"skipped (the kubelet cannot build its variables)")
            continue
        for var, value in service_block(svc):
            service_env[var] = value
            producers.setdefault(var, []).append((svc, value))
    ambiguous = {var: got for var, got in producers.items() if len({v for _, v in got}) > 1}

    # Step 4: the container's env, declared order; `$(VAR)` sees earlier container vars first,
    # then the service vars (even with links off: KUBERNETES_* is always there).
    container: dict[str, str | None] = {}
    mangled: list[str] = []
    looked_up_ambiguous: set[str] = set()

    def lookup(ref: str) -> str | None:
        if ref in container:
            return container[ref]
        if ref in service_env:
            if ref in ambiguous:
                looked_up_ambiguous.add(ref)
            return service_env[ref]
        return None

    for var in container_env:
        if isinstance(var, Resolved):
            container[var.name] = var.value
            continue
        if var.value is None:
            # valueFrom (fieldRef, configMapKeyRef, ...) needs the live pod; it still removes a
            # same-named service variable, as in the kubelet.
            container[var.name] = None
            continue
        value = var.value
        if value:
            def note_mangle(name: str = var.name) -> None:
                if name not in mangled:
                    mangled.append(name)
            value = expand(value, lookup, note_mangle)
        container[var.name] = value

    variables = [(n, v) for n, v in container.items() if v is not None]
    variables += [(n, v) for n, v in service_env.items() if n not in container]

    unresolved = [n for n, v in container.items() if v is None]
    for var, got in ambiguous.items():
        if var in container:
            continue
        candidates = ", ".join(f"{_quote(v)} from Service {s.namespace}/{s.name}" for s, v in got)
        warnings.append(f"{var} is set by more than one Service: {candidates}; the kubelet picks "
                        f"one at random on each container start; printing {_quote(service_env[var])}")
    for var in sorted(looked_up_ambiguous):
        warnings.append(f"a container env $({var}) reference uses the ambiguous {var}; "
                        f"expanded with {_quote(service_env[var])}")
    if unresolved:
        warnings.append("env " + ", ".join(unresolved) + ": valueFrom is resolved by the kubelet "
                        "from the live pod; kdns cannot, so left out (it still hides a service "
                        "variable of the same name)")
    for name in mangled:
        warnings.append(f"env {name}: '$' followed by a non-ASCII character; the kubelet expands "
                        f"byte-wise and mangles it, and kdns prints those same bytes")
    if sort:
        variables.sort(key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))
    return Result(variables, warnings)
