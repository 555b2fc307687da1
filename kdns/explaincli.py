"""`kdns explain NAME [TYPE]`: the answer kdns gives, and why; a pod's search walk; a check of
a running server against it.

Wiring only: read the source as `kdns serve` does (manifests with workloads derived, or the API),
build the same snapshot, hand it to kdns.explain / kdns.searchwalk, ask a server with
kdns.dnsclient, print text or JSON. Exit 0 for an answer, 1 for NXDOMAIN/NODATA (or a walk that
finds nothing), 3 when --ask's server answers differently, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from kdns import answer as ans
from kdns import dnsclient, explain, searchwalk
from kdns.config import (Config, ConfigError, add_answer_args, add_source_args, normalize_zone,
                         parse_hostport, uses_api)
from kdns.sources import manifests, workloads


class UsageError(Exception):
    pass


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain", help="say what kdns answers for a name, and why",
        description="Print the answer kdns gives for NAME (from the same sources as `kdns serve`), "
                    "the origin of each record, the rule behind it, and for a negative answer the "
                    "reason and a likely fix. Exit 0 for an answer, 1 for NXDOMAIN/NODATA.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("qtype", metavar="TYPE", nargs="?", default=None,
                   help="A (default), AAAA, SRV, PTR, CNAME, TXT, SOA, NS, MX, ANY; "
                        "with --from/--pod and no TYPE: A and AAAA, as getaddrinfo asks")
    add_source_args(p, watch=False)
    add_answer_args(p)                             # the same flags as kdns serve
    walk = p.add_argument_group("a pod's search walk")
    walk.add_argument("--from", dest="from_ns", metavar="NAMESPACE",
                      help="resolve NAME as a pod in NAMESPACE would: its search list, ndots:5")
    walk.add_argument("--pod", metavar="FILE", help="as --from, with the namespace (and dnsConfig) of this Pod")
    walk.add_argument("--resolver", choices=["glibc", "musl"], default="glibc",
                      help="the pod's C library: glibc (default) or musl (Alpine)")
    p.add_argument("--ask", metavar="HOST[:PORT]",
                   help="also send the query (every query of the walk) to this server and show "
                        "where its answer differs: rcode, records, TTLs")
    p.add_argument("--format", choices=["text", "json"], default="text")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        qtype = _qtype(args.qtype)
        config = Config(domain=normalize_zone(args.domain), ttl=args.ttl, pods=args.pods,
                        endpoint_pod_names=args.endpoint_pod_names,
                        publish_not_ready=args.publish_not_ready, service_cidr=args.service_cidr,
                        pod_ip=args.pod_ip)
        ask_at = parse_hostport(args.ask, 53) if args.ask else None
        sources = _sources(args)
        walk_ns, search_extra, ndots = _walk_inputs(args)
    except (UsageError, ConfigError, ValueError) as exc:
        print(f"kdns explain: {exc}", file=sys.stderr)
        return 2
    except manifests.ManifestError as exc:
        for line in exc.problems:
            print(f"kdns: {line}", file=sys.stderr)
        print(f"kdns: {len(exc.problems)} problem(s) in the manifests; nothing explained", file=sys.stderr)
        return 2
    from kdns.snapshot import build                 # the same snapshot `kdns serve` builds
    snap = build(sources.cluster, config)
    out: dict[str, Any] = {}
    asked: list[dict] = []

    def ask(name: str, t: int):
        if ask_at is None:
            return None
        try:
            reply = dnsclient.ask(ask_at[0], ask_at[1], name, t)
        except dnsclient.AskError as exc:
            asked.append({"qname": name, "qtype": explain.type_name(t), "error": str(exc), "differences": [str(exc)]})
            return None
        computed = ans.answer(snap, name, t)
        asked.append({"qname": name, "qtype": explain.type_name(t), "rcode": explain.RCODES.get(reply.rcode, str(reply.rcode)),
                      "records": [explain.rr_text(r) for s in ("answer", "authority", "additional")
                                  for r in getattr(reply, s)],
                      "differences": [] if computed.forward else differences(computed, reply),
                      "forwarded": computed.forward})
        return reply

    if walk_ns is not None:
        qtypes = [qtype] if qtype is not None else [ans.A, ans.AAAA]
        search = searchwalk.search_list(walk_ns, config.domain) + search_extra
        explained: dict[tuple[str, int], explain.Explanation] = {}

        def step(name: str, t: int) -> searchwalk.Query:
            ex = explain.explain(snap, sources, name, t)
            explained[(name, t)] = ex
            reply = ask(name, t)
            resp = ans.answer(snap, name, t)
            if resp.forward:
                if reply is None:
                    return searchwalk.Query(name, t, -1, 0, True)
                return searchwalk.Query(name, t, reply.rcode, len(reply.answer), True)
            return searchwalk.Query(name, t, resp.rcode, len(resp.answer))

        w = searchwalk.walk(args.name, search, args.resolver, qtypes, step, ndots)
        out["walk"] = _walk_dict(w, explained)
        final = w.answered_by
        found = final is not None
        if found:
            out["answer"] = [explained[(final, t)].as_dict() for t in qtypes]
    else:
        ex = explain.explain(snap, sources, args.name, qtype or ans.A)
        if ex.kind == "forward" and not args.name.endswith(".") and args.name.count(".") < searchwalk.NDOTS:
            ex.suggestions.append(f"a pod would walk its search list first: kdns explain --from "
                                  f"NAMESPACE {args.name}")
        ask(ex.qname, qtype or ans.A)
        out["answer"] = [ex.as_dict()]
        found = not ex.negative
    if ask_at is not None:
        out["ask"] = {"server": args.ask, "queries": asked}
    if args.format == "json":
        sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(_text(out))
    if any(q["differences"] for q in asked):
        return 3
    return 0 if found else 1


def _qtype(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.upper()
    if t in explain.TYPES:
        return explain.TYPES[t]
    if t.startswith("TYPE") and t[4:].isdigit():
        return int(t[4:])
    raise UsageError(f"unknown type {text!r}: use A, AAAA, SRV, PTR, CNAME, TXT, SOA, NS, MX or ANY")


def _sources(args) -> explain.Sources:
    if uses_api(args):
        if args.manifests:
            raise UsageError("--manifests and --kubeconfig/--context/--in-cluster are two "
                             "different sources: give one")
        try:
            from kdns.sources import cluster as api_source
            cluster = api_source.list_cluster(kubeconfig=args.kubeconfig, context=args.context,
                                              in_cluster=args.in_cluster, pods=args.pods == "verified")
        except Exception as exc:      # the API source's own errors: one line, never a traceback
            raise UsageError(f"cannot list the cluster: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        return explain.Sources(cluster, None, None, "the API")
    paths = args.manifests or manifests.default_paths()
    origins: dict = {}
    derived: list = []
    cluster = manifests.load(paths, args.service_cidr, derive=workloads.Options.from_args(args),
                             origins=origins, derived=derived)
    return explain.Sources(cluster, origins, derived[0] if derived else None, "the manifests")


def _walk_inputs(args) -> tuple[str | None, list[str], int]:
    if args.pod is None:
        return args.from_ns, [], searchwalk.NDOTS
    if args.from_ns is not None:
        raise UsageError("--from and --pod both give the pod's namespace: give one")
    if not os.path.isfile(args.pod):
        raise UsageError(f"--pod {args.pod}: no such file")
    problems: list[str] = []
    pods = [d for _, d in manifests.read([args.pod], problems) if isinstance(d, dict) and d.get("kind") == "Pod"]
    if problems:
        raise UsageError("; ".join(problems))
    if len(pods) != 1:
        raise UsageError(f"--pod {args.pod}: give a file with exactly one Pod (it has {len(pods)})")
    pod = pods[0]
    ns = (pod.get("metadata") or {}).get("namespace") or "default"
    spec = pod.get("spec") or {}
    dns_config = spec.get("dnsConfig") or {}
    ndots = searchwalk.NDOTS
    for opt in dns_config.get("options") or []:
        if isinstance(opt, dict) and opt.get("name") == "ndots" and str(opt.get("value", "")).isdigit():
            ndots = int(opt["value"])
    extra = [s.rstrip(".") for s in dns_config.get("searches") or [] if isinstance(s, str)]
    if spec.get("dnsPolicy") not in (None, "ClusterFirst", "ClusterFirstWithHostNet"):
        print(f"kdns explain: warning: --pod {args.pod}: dnsPolicy {spec.get('dnsPolicy')} is not "
              f"ClusterFirst; walking the ClusterFirst search list anyway", file=sys.stderr)
    return ns, extra, ndots


def _walk_dict(w: searchwalk.Walk, explained: dict) -> dict:
    steps = []
    for s in w.steps:
        queries = []
        for q in s.queries:
            ex = explained.get((q.name, q.qtype))
            queries.append({"qname": q.name, "qtype": explain.type_name(q.qtype),
                            "rcode": "unknown (forwarded)" if q.rcode < 0 else explain.RCODES.get(q.rcode, str(q.rcode)),
                            "answers": q.answers, "forwarded": q.forwarded,
                            "why": _why(ex)})
        steps.append({"name": s.name, "verdict": s.verdict, "why": s.why, "queries": queries})
    return {"name": w.name, "resolver": w.resolver, "search": w.search, "steps": steps,
            "answered_by": w.answered_by, "outcome": w.outcome}


def _why(ex) -> str:
    """One line for a walk step: the reason a name is negative, or for NODATA the rule."""
    if ex is None:
        return ""
    if ex.kind != "nodata" and ex.reasons:
        return ex.reasons[0]
    return ex.rule


# --------------------------------------------------------------------------- --ask

def _norm(rr) -> tuple:
    owner, rtype, _, data = rr
    if rtype in (ans.CNAME, ans.PTR, ans.NS) and isinstance(data, str):
        data = data.lower().rstrip(".") + "."
    elif rtype == ans.SRV:
        data = (*data[:3], data[3].lower().rstrip(".") + ".")
    elif rtype == ans.SOA:
        data = (data[0].lower(), data[1].lower(), *data[3:])      # the serial differs by design
    elif rtype == ans.TXT:
        data = tuple(data)
    return (owner.lower(), rtype, data)


def differences(computed, reply) -> list[str]:
    """What the asked server's reply does differently from kdns's computed answer, in words."""
    diffs = []
    # An out-of-zone ExternalName target is resolved upstream by `kdns serve` (not by explain):
    # the server's records for it, and its rcode, are the upstream's.
    chased = computed.chase[0].lower() if computed.chase else None
    qowner = computed.answer[0][0].lower() if computed.answer else ""
    if computed.rcode != reply.rcode and not (chased and computed.rcode == ans.NOERROR):
        diffs.append(f"rcode: kdns computes {explain.RCODES.get(computed.rcode, computed.rcode)}, "
                     f"the server says {explain.RCODES.get(reply.rcode, reply.rcode)}")
    for section in ("answer", "authority", "additional"):
        mine = {_norm(r): r for r in getattr(computed, section)}
        theirs = {_norm(r): r for r in getattr(reply, section)}
        for key in mine.keys() - theirs.keys():
            diffs.append(f"{section}: missing from the server: {explain.rr_text(mine[key])}")
        for key in theirs.keys() - mine.keys():
            if chased and (section != "answer" or key[0] != qowner):
                continue                  # the upstream's part of the chain
            diffs.append(f"{section}: only the server has: {explain.rr_text(theirs[key])}")
        for key in mine.keys() & theirs.keys():
            if mine[key][2] != theirs[key][2]:
                diffs.append(f"{section}: TTL of {explain.rr_text(mine[key]).split(' ', 1)[0]} "
                             f"{explain.type_name(key[1])}: kdns computes {mine[key][2]}, the server "
                             f"says {theirs[key][2]}")
    if computed.authoritative and not reply.aa:
        diffs.append("flags: kdns answers authoritatively (AA=1), the server does not")
    return diffs


# --------------------------------------------------------------------------- text

def _text(out: dict) -> str:
    lines: list[str] = []
    w = out.get("walk")
    if w:
        lines.append(f"search walk of {w['name']!r} ({w['resolver']}, search {' '.join(w['search'])}):")
        for n, s in enumerate(w["steps"], 1):
            for q in s["queries"]:
                rcode = "NODATA" if q["rcode"] == "NOERROR" and not q["answers"] else q["rcode"]
                why = f"  ({q['why']})" if q["why"] and rcode != "NOERROR" else ""
                lines.append(f"  {n}. {q['qname']} {q['qtype']}: {rcode}"
                             + (f", {q['answers']} record(s)" if q["answers"] else "") + why)
            lines.append(f"     -> {s['verdict']}: {s['why']}")
        lines.append(f"  outcome: {w['outcome']}")
        lines.append("")
    for ex in out.get("answer", []):
        lines.append(f"{ex['qname']} {ex['qtype']}: {ex['rcode']}"
                     + {"nodata": " (NODATA)", "forward": " (outside the cluster zones)"}.get(ex["kind"], ""))
        if ex["rule"]:
            lines.append(f"  rule: {ex['rule']}")
        for r in ex["records"]:
            lines.append(f"  {r['section']}: {r['record']}")
            if r["origin"]:
                lines.append(f"      from {r['origin']}")
        for reason in ex["reasons"]:
            lines.append(f"  why: {reason}")
        for s in ex["suggestions"]:
            lines.append(f"  fix: {s}")
        lines.append("")
    a = out.get("ask")
    if a:
        lines.append(f"asked {a['server']}:")
        for q in a["queries"]:
            if q.get("error"):
                lines.append(f"  {q['qname']} {q['qtype']}: {q['error']}")
                continue
            state = ("forwarded by kdns: not compared" if q["forwarded"]
                     else "matches" if not q["differences"] else "DIFFERS")
            lines.append(f"  {q['qname']} {q['qtype']}: {q['rcode']}, {state}")
            for d in q["differences"]:
                lines.append(f"      {d}")
        lines.append("")
    return "\n".join(lines)
