"""The table, the ratios against the targets of issue 6, and the machine they were measured on."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from kdns.bench.workloads import DESCRIPTIONS

# (workload, peer, minimum kdns/peer ratio) from issue 6.
TARGETS = (
    ("a", "dnsmasq-a", 1.3),
    ("a", "ceiling", 0.65),
    ("a", "unbound", 1.0),
    ("a-mix", "dnsmasq-srv", 3.0),
    ("b", "dnsmasq-a", 1.3),
    ("c", "dnsmasq-a", 1.0),
)
# CoreDNS's published sizing: MB ~= (pods + services) / 1000 + 54.
def coredns_mb(services: int, pods: int) -> float:
    return (pods + services) / 1000 + 54


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def _f(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def _k(qps: float) -> str:
    return f"{qps / 1000:.0f}k" if qps >= 10_000 else f"{qps / 1000:.1f}k" if qps >= 1000 else f"{qps:.0f}"


def table(rows: list[dict]) -> str:
    head = ("workload", "server", "QPS", "avg ms", "p99 ms", "lost %", "RSS MB", "check", "note")
    lines = [head]
    for r in rows:
        if r.get("error"):
            lines.append((r["workload"], r["server"], "-", "-", "-", "-", "-", "-", r["error"][:90]))
            continue
        check = "ok" if r["wrong"] == 0 else f"{r['wrong']}/{r['asked']} wrong"
        qps = f"{r['qps']:,.0f}"
        runs = r.get("qps_runs") or []
        if len(runs) > 1:
            qps += f" ({_k(min(runs))}-{_k(max(runs))})"
        lines.append((r["workload"], r["server"], qps, _f(r["avg_ms"], ".3f"),
                      _f(r["p99_ms"], ".3f"), _f(r["lost_pct"], ".2f"), _f(r["rss_mb"], ".1f"),
                      check, r.get("note", "")))
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    out = []
    for n, l in enumerate(lines):
        out.append("| " + " | ".join(str(c).ljust(widths[i]) if i in (0, 1, 7, 8) else str(c).rjust(widths[i])
                                     for i, c in enumerate(l)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def ratios(rows: list[dict]) -> list[dict]:
    """kdns / peer QPS per workload, with the target where issue 6 sets one."""
    by = {(r["workload"], r["server"]): r for r in rows if not r.get("error")}
    out = []
    workloads = sorted({r["workload"] for r in rows}, key=lambda w: list(DESCRIPTIONS).index(w))
    for w in workloads:
        k = by.get((w, "kdns"))
        if not k:
            continue
        for peer in ("dnsmasq-a", "dnsmasq-srv", "unbound", "knot", "ceiling"):
            p = by.get((w, peer))
            if not p or not p["qps"]:
                continue
            target = next((t for tw, tp, t in TARGETS if tw == w and tp == peer), None)
            ratio = k["qps"] / p["qps"]
            out.append({"workload": w, "peer": peer, "ratio": ratio, "target": target,
                        "per_round": per_round(k, p),
                        "met": None if target is None else ratio >= target,
                        "peer_wrong": p.get("wrong", 0), "kdns_wrong": k.get("wrong", 0)})
    return out


def per_round(kdns: dict, peer: dict) -> list[float]:
    """kdns/peer of each round, pairing the runs taken minutes apart: on a shared machine their
    load is alike, so this spread says how far the ratio of medians can be trusted."""
    pairs = zip(kdns.get("qps_rounds") or [], peer.get("qps_rounds") or [])
    return [k / p for k, p in pairs if k and p]


def ratio_lines(items: list[dict]) -> str:
    lines = []
    for w in dict.fromkeys(i["workload"] for i in items):
        parts = []
        for i in (i for i in items if i["workload"] == w):
            s = f"kdns/{i['peer']}{'*' if i['peer_wrong'] else ''} {i['ratio']:.2f}"
            if len(i.get("per_round") or []) > 1:
                s += f" [rounds {min(i['per_round']):.2f}-{max(i['per_round']):.2f}]"
            if i["target"] is not None:
                s += f" (target >= {i['target']:g}: {'met' if i['met'] else 'NOT met'})"
            parts.append(s)
        lines.append(f"  ({w}) {DESCRIPTIONS[w]}: " + "; ".join(parts))
    if any(i["peer_wrong"] for i in items):
        lines.append("  * that peer answered part of the sample wrongly (see its check column): "
                     "its QPS is not for the same answers")
    if any(i["kdns_wrong"] for i in items):
        lines.append("  kdns itself answered part of a sample wrongly: see its check column")
    return "\n".join(lines)


def memory_table(items: list[dict]) -> str:
    head = ("services", "endpoints", "kdns RSS MB", "CoreDNS formula MB", "within", "start->ready s",
            "change->answer s")
    lines = [head]
    for m in items:
        if m.get("error"):
            lines.append((str(m["services"]), str(m["endpoints"]), "-", f"{m['formula_mb']:.0f}", "-", "-",
                          m["error"][:80]))
            continue
        lines.append((f"{m['services']:,}", f"{m['endpoints']:,}", f"{m['rss_mb']:.1f}", f"{m['formula_mb']:.0f}",
                      "yes" if m["rss_mb"] <= m["formula_mb"] else "NO", f"{m['ready_s']:.2f}",
                      _f(m.get("change_s"), ".2f", m.get("change_note", "-"))))
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    out = []
    for n, l in enumerate(lines):
        out.append("| " + " | ".join(c.rjust(widths[i]) for i, c in enumerate(l)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def watch_lines(m: dict) -> str:
    """The API source: one line of sizes and memory, one of event->answer percentiles."""
    head = f"  {m['services']:,} services, {m['endpoints']:,} endpoints"
    if "rss_mb" not in m:
        return f"{head}: {m.get('error', 'no result')}"
    within = "within" if m["rss_mb"] <= m["formula_mb"] else "OVER"
    lines = [f"{head}: start->ready {m['ready_s']:.2f} s; RSS {m['rss_mb']:.1f} MB "
             f"(CoreDNS formula {m['formula_mb']:.0f} MB: {within})"]
    if m.get("event_ms"):
        e = m["event_ms"]
        kinds = ", ".join(f"{k} {v} ms" for k, v in m.get("by_kind_p50_ms", {}).items())
        lines.append(f"  event -> answer (API stored it -> kdns answers it): p50 {e['p50']} ms, "
                     f"p90 {e['p90']} ms, p99 {e['p99']} ms, max {e['max']} ms (p50 by kind: {kinds})")
    if m.get("error"):
        lines.append(f"  {m['error']}")
    return "\n".join(lines)
