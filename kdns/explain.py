"""Why kdns answers a name as it does: the answer, each record's origin, the rule, and for a
negative answer the reason and a likely fix (`kdns explain`).

Pure. The answer itself always comes from kdns.answer.answer() on a snapshot built as `kdns
serve` builds it, so an explanation can never describe an answer kdns would not give; this
module only walks the objects behind it (the Service, its EndpointSlices, the endpoints and
their conditions, and, for manifests, the file and document and the workload a derived pod
came from).
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from kdns import answer as ans
from kdns import names

TYPES = {"A": ans.A, "NS": ans.NS, "CNAME": ans.CNAME, "SOA": ans.SOA, "PTR": ans.PTR,
         "MX": ans.MX, "TXT": ans.TXT, "AAAA": ans.AAAA, "SRV": ans.SRV, "ANY": ans.ANY,
         "AXFR": ans.AXFR, "IXFR": ans.IXFR}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {ans.NOERROR: "NOERROR", ans.FORMERR: "FORMERR", ans.SERVFAIL: "SERVFAIL",
          ans.NXDOMAIN: "NXDOMAIN", ans.NOTIMP: "NOTIMP", ans.REFUSED: "REFUSED",
          ans.BADVERS: "BADVERS"}


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype, f"TYPE{qtype}")


def rr_text(rr) -> str:
    owner, rtype, ttl, data = rr
    if rtype == ans.SRV:
        data = " ".join(map(str, data))
    elif rtype == ans.SOA:
        data = " ".join(map(str, data))
    elif rtype == ans.TXT:
        data = " ".join(f'"{s}"' for s in data)
    return f"{owner} {ttl} IN {type_name(rtype)} {data}"


@dataclass
class Sources:
    """What the snapshot was built from: the objects, and for manifests where each came from."""
    cluster: Any                              # kdns.objects.Cluster
    origins: dict | None = None               # (kind, ns, name) -> "file, document N"
    derived: Any = None                       # kdns.sources.controllers.Derived
    label: str = "the manifests"              # or "the API at https://..."

    def where(self, kind: str, ns: str, name: str) -> str:
        if self.origins is None:
            return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
        at = self.origins.get((kind, ns, name))
        what = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
        return f"{what} ({at})" if at else what


@dataclass
class Explanation:
    qname: str
    qtype: str
    rcode: str
    kind: str                                 # positive | nodata | nxdomain | refused | forward | servfail
    records: list[dict] = field(default_factory=list)   # section, record, origin
    rule: str = ""
    reasons: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def negative(self) -> bool:
        return self.kind != "positive"

    def as_dict(self) -> dict:
        return {"qname": self.qname, "qtype": self.qtype, "rcode": self.rcode, "kind": self.kind,
                "records": self.records, "rule": self.rule, "reasons": self.reasons,
                "suggestions": self.suggestions}


def explain(snap, sources: Sources, qname: str, qtype: int) -> Explanation:
    if not qname.endswith("."):
        qname += "."
    resp = ans.answer(snap, qname, qtype)
    if resp.forward:
        kind = "forward"
    elif resp.rcode == ans.NOERROR:
        kind = "positive" if resp.answer else "nodata"
    else:
        kind = {ans.NXDOMAIN: "nxdomain", ans.SERVFAIL: "servfail"}.get(resp.rcode, "refused")
    ex = Explanation(qname, type_name(qtype), RCODES.get(resp.rcode, str(resp.rcode)), kind)
    w = _Why(snap, sources, ex, qname, qtype)
    w.run(resp)
    for section in ("answer", "authority", "additional"):
        for rr in getattr(resp, section):
            ex.records.append({"section": section, "record": rr_text(rr), "origin": w.origin(rr)})
    return ex


class _Why:
    def __init__(self, snap, sources: Sources, ex: Explanation, qname: str, qtype: int):
        self.snap, self.src, self.ex, self.qtype = snap, sources, ex, qtype
        self.c = sources.cluster
        self.lower = qname.lower()
        self.svc = None                       # the Service the name is about, if any
        self.slices: list = []

    # ------------------------------------------------------------------ the rule and reasons
    def run(self, resp) -> None:
        ex, snap = self.ex, self.snap
        if resp.forward:
            ex.rule = (f"{self.lower} is outside the served zones ({', '.join(snap.zones)}): kdns "
                       f"forwards it to its upstreams, or answers REFUSED without one")
            return
        if self.qtype in (ans.AXFR, ans.IXFR):
            ex.rule = "zone transfers are REFUSED (a non-goal, dns-behavior.md §3.8)"
            return
        if not snap.synced:
            ex.reasons.append("the API source has not listed every kind yet: names that would not "
                              "exist answer SERVFAIL, never NXDOMAIN")
        zone, labels = names.split(self.lower, snap.zones)
        if zone != snap.config.domain:
            return self._reverse(zone, labels, resp)
        n = len(labels)
        if n == 0:
            ex.rule = "the zone apex: SOA and NS; other types NODATA"
        elif labels[-1] not in ("svc", "pod"):
            if labels == ["dns-version"]:
                ex.rule = "dns-version.<zone>: TXT \"1.1.0\" (Kubernetes DNS spec §2.2); other types NODATA"
            elif labels == ["dns"] or labels == ["ns", "dns"]:
                ex.rule = "ns.dns.<zone>: the nameserver's addresses (the SOA MNAME)"
            else:
                ex.rule = "in the cluster zone only svc.<zone> and pod.<zone> have children"
                ex.reasons.append(f"'{labels[-1]}' is neither 'svc' nor 'pod': nothing exists "
                                  f"under {labels[-1]}.{zone}")
                if n >= 2:
                    ex.suggestions.append(f"did you mean {'.'.join(labels)}.svc.{zone}?")
        elif n == 1:
            ex.rule = f"{labels[0]}.<zone> is a structural name: it exists, with no records (NODATA)"
        elif not self._namespace(labels[-2]):
            return
        elif n == 2:
            ex.rule = f"the namespace name {labels[-2]}.{labels[-1]}.<zone> exists, with no records (NODATA)"
        elif labels[-1] == "pod":
            self._pod(labels)
        else:
            self._service(labels, resp)
        if resp.rcode == ans.NOERROR and not resp.answer and not ex.reasons:
            ex.reasons.append(f"the name exists but has no {type_name(self.qtype)} record (NODATA)")

    def _namespace(self, ns: str) -> bool:
        if ns in self.snap.namespaces:
            return True
        self.ex.rule = "<ns>.svc and <ns>.pod exist only for namespaces that exist"
        self.ex.reasons.append(f"namespace '{ns}' does not exist in {self.src.label}")
        close = difflib.get_close_matches(ns, sorted(self.snap.namespaces), n=3, cutoff=0.6)
        if close:
            self.ex.suggestions.append("did you mean namespace " + " or ".join(f"'{c}'" for c in close) + "?")
        return False

    def _pod(self, labels: list[str]) -> None:
        mode = self.snap.config.pods
        ns = labels[-2]
        if mode == "disabled":
            self.ex.rule = "pod records <a-b-c-d>.<ns>.pod.<zone>"
            self.ex.reasons.append("pod records are disabled (--pods disabled)")
            self.ex.suggestions.append("serve with --pods insecure (kubeadm's default) or verified")
            return
        if len(labels) != 3:
            self.ex.rule = "pod records have exactly one label before <ns>.pod"
            self.ex.reasons.append("too many labels for a pod name")
            return
        ip = names.pod_ip(labels[0])
        if ip is None:
            self.ex.rule = f"pod records (--pods {mode}): the dashed IP of a pod, <a-b-c-d>.<ns>.pod.<zone>"
            self.ex.reasons.append(f"'{labels[0]}' is not a dashed IP address")
            pods = [p for p in self.c.pods.values() if p.namespace == ns and p.name == labels[0] and p.ip]
            if pods:
                self.ex.suggestions.append(f"pod {labels[0]} has the address {pods[0].ip}: ask for "
                                           f"{names.dashed(pods[0].ip)}.{ns}.pod.{self.snap.config.domain}")
            return
        if mode == "insecure":
            self.ex.rule = "--pods insecure: any dashed IP answers with that IP, pod or not (as kubeadm's Corefile)"
            return
        self.ex.rule = "--pods verified: a dashed IP answers only when a running pod in that namespace has it"
        pods = [p for p in self.c.pods.values() if p.ip == ip and p.active]
        if not any(p.namespace == ns for p in pods):
            where = f"; pod {pods[0].namespace}/{pods[0].name} has it" if pods else ""
            self.ex.reasons.append(f"no running pod in namespace {ns} has the address {ip}{where}")

    def _reverse(self, zone: str, labels: list[str], resp) -> None:
        self.ex.rule = "PTR for cluster IPs (one) and ready endpoint addresses (one per Service)"
        ip = names.reverse_ip(zone, labels) if labels else None
        if not labels:
            self.ex.rule = f"the apex of {zone}"
        elif ip is None:
            self.ex.reasons.append(f"not the reverse name of an address under {zone}")
        elif resp.rcode == ans.NXDOMAIN:
            self.ex.reasons.append(f"no Service has {ip} as a cluster IP or a ready endpoint address")
            self.ex.suggestions.append("kdns forwards such names to its upstreams when it has one (fallthrough)")

    def _service(self, labels: list[str], resp) -> None:
        ex, c, domain = self.ex, self.c, self.snap.config.domain
        ns, name = labels[-2], labels[-3]
        svc = c.services.get((ns, name))
        if svc is None:
            ex.rule = "<svc>.<ns>.svc.<zone> exists for every Service"
            ex.reasons.append(f"namespace '{ns}' exists but has no Service '{name}'")
            alts = [f"'{m}' ({ns})" for m in difflib.get_close_matches(
                name, sorted(s for (n2, s) in c.services if n2 == ns), n=3, cutoff=0.6)]
            alts += [f"'{name}' ({n2})" for (n2, s) in sorted(c.services) if s == name and n2 != ns]
            if alts:
                ex.suggestions.append("did you mean " + " or ".join(alts) + "?")
            return
        self.svc = svc
        self.slices = sorted((sl for sl in c.slices.values()
                              if sl.namespace == ns and sl.service_name == name), key=lambda s: s.name)
        where = self.src.where("Service", ns, name)
        if svc.external:
            try:
                ipaddress.ip_address(svc.external_name)
                ex.rule = "ExternalName: a CNAME to spec.externalName"
                ex.reasons.append(f"{where}: ExternalName target {svc.external_name} is an IP address: "
                                  f"no record (Kubernetes DNS spec)")
                ex.suggestions.append("use a selector-less Service with an EndpointSlice holding that address")
                return
            except ValueError:
                pass
            if len(labels) > 3:
                ex.rule = "nothing exists below an ExternalName Service (CoreDNS PR #6162)"
                ex.reasons.append(f"{where} is an ExternalName Service")
                return
            inzone = names.split(svc.external_name + ".", self.snap.zones) is not None
            ex.rule = (f"ExternalName: {name}.{ns}.svc CNAME {svc.external_name}; A/AAAA chase the "
                       f"target {'in the cluster zone' if inzone else 'through the upstream (kdns serve)'}")
            if not inzone and self.qtype in (ans.A, ans.AAAA):
                ex.reasons.append("explain does not ask the upstream: the target's records are not shown")
            return
        if len(labels) == 3:
            return self._service_name(svc, where)
        if len(labels) == 4:
            return self._endpoint(svc, labels[0], where)
        if len(labels) == 5:
            return self._port(svc, labels, where)
        ex.rule = "at most <port>.<proto>.<svc>.<ns>.svc: longer names do not exist"
        ex.reasons.append(f"{len(labels) - 3} labels before {name}.{ns}.svc.{domain}: too many")

    def _endpoint_states(self) -> tuple[list, list]:
        """(published, not published) as (endpoint name, ip, slice, index, endpoint)."""
        pub, unpub = [], []
        cfg = self.snap.config
        for sl in self.slices:
            if sl.address_type == "FQDN":
                continue
            for i, ep in enumerate(sl.endpoints):
                ok = ep.ready or (self.svc.publish_not_ready and cfg.publish_not_ready)
                for ip in ep.addresses:
                    n = ep.hostname or (ep.pod_name if cfg.endpoint_pod_names and ep.pod_name else names.dashed(ip))
                    (pub if ok else unpub).append((n, ip, sl, i, ep))
        return pub, unpub

    def _not_ready_text(self, unpub: list, total: int) -> str:
        shown = ", ".join(f"{ep.pod_name or n} (ready=false{self._why_not_ready(sl, ep)})"
                          for n, _, sl, _, ep in unpub[:5])
        return f"{len(unpub)} of {total} not ready: {shown}" + (", ..." if len(unpub) > 5 else "")

    def _why_not_ready(self, sl, ep) -> str:
        d = self.src.derived
        if d is None or sl.key not in d.slices:
            return ""
        for de in d.slices[sl.key][1]:
            if ep.addresses and de.ip == ep.addresses[0]:
                return f", {de.why_ready}" if not de.ready else ""
        return ""

    def _no_slices(self, where: str) -> None:
        ex, svc = self.ex, self.svc
        d = self.src.derived
        ex.reasons.append(f"{where} has no EndpointSlices")
        warn = [w for w in (d.warnings if d else []) if w.startswith(f"Service {svc.namespace}/{svc.name}:")]
        if warn:
            ex.reasons.extend(warn)
            ex.suggestions.append("check the Service's selector against the pod template labels")
        else:
            ex.suggestions.append("give the Service a selector matching a workload's pod labels, or write "
                                  "an EndpointSlice labelled kubernetes.io/service-name: " + svc.name)

    def _service_name(self, svc, where: str) -> None:
        ex = self.ex
        pub, unpub = self._endpoint_states()
        total = len(pub) + len(unpub)
        if svc.headless:
            ex.rule = "headless: one A/AAAA per ready endpoint address"
            if unpub:
                ex.rule += "; " + self._not_ready_text(unpub, total)
            if not pub:
                if not self.slices:
                    self._no_slices(where)
                ex.reasons.insert(0, f"Service {svc.namespace}/{svc.name} is headless and has no ready "
                                     f"endpoints: NXDOMAIN for every type (Kubernetes DNS spec §2.4.1)")
                if unpub:
                    ex.suggestions.append("the pods must be ready, or set spec.publishNotReadyAddresses: true"
                                          " (the EndpointSlice controller then marks every endpoint ready)")
                return
        else:
            ex.rule = (f"{svc.type}: A/AAAA of spec.clusterIPs ({', '.join(svc.addresses)}); "
                       f"endpoints do not matter")
            if self.qtype == ans.SRV:
                ex.rule = "bare-name SRV: one record per Service port, named or not, weight ⌊100/N⌋"
            if not pub:
                d = self.src.derived
                why = [w for w in (d.warnings if d else []) if w.startswith(f"Service {svc.namespace}/{svc.name}: selector")]
                ex.rule += ("; note: no ready endpoints, so DNS answers but connections to it will fail"
                            + (f" ({why[0].split(': ', 1)[1]})" if why else ""))
        if self.qtype in (ans.A, ans.AAAA) and not ex.records and self._family_missing(pub):
            fam = "IPv6" if self.qtype == ans.AAAA else "IPv4"
            ex.reasons.append(f"{where} has no {fam} address: NODATA")
        if self.qtype == ans.SRV and not svc.ports and not svc.headless:
            ex.reasons.append(f"{where} has no ports: no SRV (NODATA)")

    def _family_missing(self, pub) -> bool:
        want6 = self.qtype == ans.AAAA
        ips = [ip for _, ip, *_ in pub] if self.svc.headless else list(self.svc.addresses)
        return not any((":" in ip) == want6 for ip in ips)

    def _endpoint(self, svc, label: str, where: str) -> None:
        ex = self.ex
        ex.rule = ("<endpoint>.<svc>.<ns>.svc: the endpoint's hostname, else its dashed IP"
                   + (" (or its pod name, --endpoint-pod-names)" if self.snap.config.endpoint_pod_names else "")
                   + "; ready endpoints only")
        pub, unpub = self._endpoint_states()
        if any(n == label for n, *_ in pub):
            return
        mine = [(n, ip, sl, i, ep) for n, ip, sl, i, ep in unpub if n == label]
        if mine:
            n, ip, sl, i, ep = mine[0]
            ex.reasons.append(f"endpoint {label} ({ip}) in {self._slice_where(sl)} endpoints[{i}] is not "
                              f"ready (ready=false{self._why_not_ready(sl, ep)}): not-ready endpoints have no name")
            return
        if not self.slices:
            self._no_slices(where)
            return
        ex.reasons.append(f"no ready endpoint of {where} is named '{label}'")
        # A pod of that name that is not named under this Service: the subdomain rule.
        for p in self.c.pods.values():
            if p.namespace == svc.namespace and (p.name == label or p.hostname == label):
                if p.hostname and p.subdomain != svc.name:
                    ex.reasons.append(f"pod {p.name} has hostname {p.hostname} but subdomain "
                                      f"'{p.subdomain}', not '{svc.name}': the EndpointSlice controller "
                                      f"sets an endpoint's hostname only under the Service its subdomain names")
                    ex.suggestions.append(f"set the pod's spec.subdomain (a StatefulSet's spec.serviceName) to {svc.name}")
                elif not p.hostname:
                    ex.reasons.append(f"pod {p.name} has no hostname: its endpoint is named "
                                      f"{names.dashed(p.ip) if p.ip else 'by its dashed IP'}")
                break
        known = sorted({n for n, *_ in pub})
        close = difflib.get_close_matches(label, known, n=3, cutoff=0.5)
        if close:
            ex.suggestions.append("did you mean " + " or ".join(f"'{c}'" for c in close) + "?")
        elif known:
            ex.suggestions.append("its endpoints are: " + ", ".join(known[:8]) + (", ..." if len(known) > 8 else ""))

    def _port(self, svc, labels: list[str], where: str) -> None:
        ex = self.ex
        port, proto = names.port_proto(labels[0], labels[1])
        ex.rule = ("_<port>._<proto>.<svc>: one SRV per named port with that name and protocol"
                   + ("; headless: one per ready endpoint, with the endpoint's (target) port"
                      if svc.headless else "; the Service port, target the Service name"))
        if svc.headless:
            pub, _ = self._endpoint_states()
            have = {(p.name, p.protocol.lower()) for sl in self.slices for p in sl.ports if p.name}
            if not pub:
                ex.reasons.append(f"Service {svc.namespace}/{svc.name} is headless and has no ready endpoints")
                return
        else:
            have = {(p.name, p.protocol.lower()) for p in svc.ports if p.name}
        if (port, proto) in have:
            return
        d = self.src.derived
        for w in (d.warnings if d else []):
            if w.startswith(f"Service {svc.namespace}/{svc.name}: port '{port}':"):
                ex.reasons.append(w)
        named = sorted({n for n, _ in have})
        label = f"'_{port}._{proto}'"
        if any(n == port for n in named):
            protos = sorted({pr for n, pr in have if n == port})
            ex.reasons.append(f"{label} - port '{port}' is {'/'.join(p.upper() for p in protos)}, not {proto.upper()}")
        elif named:
            ex.reasons.append(f"{label} - the Service has ports " + ", ".join(f"'{n}'" for n in named))
            close = difflib.get_close_matches(port, named, n=1, cutoff=0.5)
            if close:
                ex.suggestions.append(f"did you mean _{close[0]}._{proto}.{'.'.join(labels[2:])}."
                                      f"{self.snap.config.domain}?")
        else:
            ex.reasons.append(f"{label} - {where} has no named ports: unnamed ports have no SRV "
                              f"record (Kubernetes DNS spec §2.3.2)")
        if proto not in ("tcp", "udp", "sctp"):
            ex.reasons.append(f"'{proto}' is not a protocol (tcp, udp, sctp)")

    # ------------------------------------------------------------------ per-record origins
    def _slice_where(self, sl) -> str:
        d = self.src.derived
        if d is not None and sl.key in d.slices:
            return f"EndpointSlice {sl.namespace}/{sl.name} (derived by kdns)"
        return self.src.where("EndpointSlice", sl.namespace, sl.name)

    def _pod_origin(self, pod_name: str, ns: str) -> str:
        d = self.src.derived
        p = d.pods.get((ns, pod_name)) if d is not None else None
        if p is None:
            return f"pod {pod_name}" if pod_name else ""
        kind, pns, pname = p.owner
        if kind == "Pod":
            return f"pod {pod_name}, {self.src.where('Pod', pns, pname)}"
        return f"pod {pod_name} of {self.src.where(kind, pns, pname)}"

    def _endpoint_origin(self, ip: str) -> str:
        out = []
        for sl in self.slices:
            for i, ep in enumerate(sl.endpoints):
                if ip in ep.addresses:
                    cond = "ready" if ep.ready else "ready=false, published (--publish-not-ready)"
                    pod = self._pod_origin(ep.pod_name, sl.namespace)
                    out.append(f"{self._slice_where(sl)} endpoints[{i}]"
                               + (f" hostname {ep.hostname}" if ep.hostname else "")
                               + (f", {pod}" if pod else "") + f", {cond}")
        return "; ".join(out)

    def origin(self, rr) -> str:
        owner, rtype, _, data = rr
        svc = self.svc
        if rtype == ans.SOA:
            return "the zone's SOA (negative answers carry it, RFC 2308); serial = snapshot version"
        if rtype == ans.PTR:
            return self._ptr_origin(owner)
        if rtype == ans.NS:
            return "the apex NS (--pod-ip names the Service holding it, else ns.dns.<zone>)"
        if rtype == ans.TXT:
            return "the Kubernetes DNS schema version (spec §2.2)"
        if svc is None:
            return ""
        where = self.src.where("Service", svc.namespace, svc.name)
        if rtype == ans.CNAME:
            return f"{where} spec.externalName"
        if rtype in (ans.A, ans.AAAA):
            lower_owner = owner.lower()
            if lower_owner != self.lower and not lower_owner.startswith(f"{svc.name}.{svc.namespace}.svc."):
                return self._chased_origin(lower_owner, data)
            if not svc.headless and not svc.external and data in svc.addresses:
                return self._cluster_ip_origin(svc, data)
            return self._endpoint_origin(data)
        if rtype == ans.SRV:
            prio, weight, port, target = data
            if not svc.headless:
                ports = [p for p in svc.ports if p.port == port]
                names_ = ", ".join(f"'{p.name}'" if p.name else "unnamed" for p in ports)
                return f"{where} spec.ports {names_} {port}/{ports[0].protocol if ports else 'TCP'}"
            ep_name = target.split(".")[0]
            pub, _ = self._endpoint_states()
            ips = [ip for n, ip, *_ in pub if n == ep_name.lower()]
            src = self._endpoint_origin(ips[0]) if ips else ""
            return f"slice port {port} (the target port); {src}"
        return ""

    def _cluster_ip_origin(self, svc, ip: str) -> str:
        where = self.src.where("Service", svc.namespace, svc.name)
        if svc.allocated:
            return f"{where}: allocated by kdns from --service-cidr (no clusterIP in its manifest)"
        index = svc.cluster_ips.index(ip) if ip in svc.cluster_ips else 0
        return f"{where} spec.clusterIPs[{index}]"

    def _chased_origin(self, owner: str, ip: str) -> str:
        """A record of an in-zone ExternalName target (or an SRV target's address)."""
        hit = names.split(owner, self.snap.zones)
        labels = hit[1] if hit else []
        if len(labels) == 3 and labels[-1] == "svc":
            target = self.c.services.get((labels[-2], labels[-3]))
            if target is not None and not target.headless and ip in target.addresses:
                return "the CNAME target: " + self._cluster_ip_origin(target, ip)
            if target is not None:
                return f"the CNAME target: an endpoint of {self.src.where('Service', target.namespace, target.name)}"
        return f"the CNAME target {owner}"

    def _ptr_origin(self, owner: str) -> str:
        zone, labels = names.split(owner.lower(), self.snap.zones)
        ip = names.reverse_ip(zone, labels)
        for svc in self.c.services.values():
            if ip in svc.addresses:
                return f"cluster IP of {self.src.where('Service', svc.namespace, svc.name)}"
        for sl in self.c.slices.values():
            for i, ep in enumerate(sl.endpoints):
                if ip in ep.addresses:
                    return f"endpoint of Service {sl.namespace}/{sl.service_name}: {self._slice_where(sl)} endpoints[{i}]"
        return ""
