"""The table, the ratios against the targets of issues 6 and 10, and the machine they were measured on."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

from kdns.bench.workloads import DESCRIPTIONS

# (workload, peer, minimum kdns/peer ratio) from issues 6 and 10.
TARGETS = (
    ("a", "dnsmasq-a", 1.3),
    ("a", "ceiling", 0.65),
    ("a", "unbound", 1.0),
    ("a-mix", "dnsmasq-srv", 3.0),
    ("b", "dnsmasq-a", 1.3),
    ("c", "dnsmasq-a", 1.0),
    ("e", "dnsmasq-a", 1.0),
)
# Issue 10: CPU per query of a computed answer against one from the packet cache.
MISS_OVER_HIT_MAX = 3.0
def say(text: str) -> None:
    """A progress line, on stderr so that stdout is the report alone."""
    print(text, file=sys.stderr, flush=True)


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
    head = ("workload", "server", "QPS", "CPU us/q", "avg ms", "p99 ms", "lost %", "RSS MB", "check", "note")
    lines = [head]
    for r in rows:
        if r.get("error"):
            lines.append((r["workload"], r["server"], "-", "-", "-", "-", "-", "-", "-", r["error"][:90]))
            continue
        check = "ok" if r["wrong"] == 0 else f"{r['wrong']}/{r['asked']} wrong"
        qps = f"{r['qps']:,.0f}"
        runs = r.get("qps_runs") or []
        if len(runs) > 1:
            qps += f" ({_k(min(runs))}-{_k(max(runs))})"
        lines.append((r["workload"], r["server"], qps, cpu_cell(r), _f(r["avg_ms"], ".3f"),
                      _f(r["p99_ms"], ".3f"), _f(r["lost_pct"], ".2f"), _f(r["rss_mb"], ".1f"),
                      check, r.get("note", "")))
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    out = []
    for n, l in enumerate(lines):
        out.append("| " + " | ".join(str(c).ljust(widths[i]) if i in (0, 1, 8, 9) else str(c).rjust(widths[i])
                                     for i, c in enumerate(l)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def cpu_cell(r: dict) -> str:
    """CPU microseconds per answered query, with the spread over rounds."""
    cell = _f(r.get("cpu_us"), ".2f")
    runs = r.get("cpu_us_runs") or []
    if len(runs) > 1:
        cell += f" ({min(runs):.1f}-{max(runs):.1f})"
    return cell


def cpu_lines(rows: list[dict]) -> str:
    """Issue 10's miss/hit CPU target. Hit: kdns on (a), hot names from the packet cache. Miss:
    kdns-nocache on (a) (every answer computed, the same questions) when it ran, else kdns on
    the cold workload (e), where most answers are computed."""
    by = {(r["workload"], r["server"]): r for r in rows if not r.get("error") and r.get("cpu_us")}
    hit = by.get(("a", "kdns"))
    misses = [("kdns-nocache (a)", by.get(("a", "kdns-nocache"))), ("kdns (e) cold", by.get(("e", "kdns")))]
    misses = [(label, m) for label, m in misses if m]
    if not hit or not misses:
        return ""
    out = []
    for label, m in misses:
        ratio = m["cpu_us"] / hit["cpu_us"]
        met = "met" if ratio <= MISS_OVER_HIT_MAX else "NOT met"
        out.append(f"  miss/hit CPU per query: {label} {m['cpu_us']:.2f} us / kdns (a) {hit['cpu_us']:.2f} us "
                   f"= {ratio:.2f}x (target <= {MISS_OVER_HIT_MAX:g}: {met})")
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


# Issue 10, workload (d): kdns QPS under churn over kdns QPS at rest (rate 0), same run.
CHURN_TARGETS = {100: 0.9, 1000: 0.7}


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[(len(values) - 1) // 2]


def churn_summary(m: dict) -> list[dict]:
    """One row per (server, rate): medians over rounds, spreads, and the ratio to kdns at rest
    (each round's run over the same round's rate-0 run, and the ratio of the medians)."""
    runs = [r for r in m.get("runs", []) if not r.get("error")]
    rest = {r["round"]: r["qps"] for r in runs if r["server"] == "kdns-api" and r["rate"] == 0}
    rest_median = _median(list(rest.values())) if rest else None
    out = []
    keys = dict.fromkeys((r["server"], r["rate"]) for r in m.get("runs", []))
    for server, rate in keys:
        mine = [r for r in runs if r["server"] == server and r["rate"] == rate]
        if not mine:
            err = next(r for r in m["runs"] if r["server"] == server and r["rate"] == rate)
            out.append({"server": server, "rate": rate, "error": err.get("error", "failed")})
            continue
        qps = [r["qps"] for r in mine]
        row = {"server": server, "rate": rate, "qps": _median(qps), "qps_runs": qps,
               "cpu_us": _median([r["cpu_us"] for r in mine if r.get("cpu_us") is not None] or [0.0]),
               "cpu_us_runs": [r["cpu_us"] for r in mine if r.get("cpu_us") is not None],
               "lost_pct": max(r["lost_pct"] for r in mine)}
        if server == "kdns-api":
            row["changes_per_s"] = _median([r.get("changes_per_s", 0.0) for r in mine])
            row["harness_cores"] = _median([r.get("harness_cores", 0.0) for r in mine])
            fresh = [r.get("fresh_s") for r in mine]
            row["fresh_max_s"] = None if None in fresh else max(fresh)
            row["notes"] = [r["note"] for r in mine if r.get("note")]
        if rest_median:
            row["ratio"] = row["qps"] / rest_median
            row["per_round"] = [r["qps"] / rest[r["round"]] for r in mine if rest.get(r["round"])]
            target = CHURN_TARGETS.get(int(rate)) if server == "kdns-api" else None
            row["target"] = target
            row["met"] = None if target is None else row["ratio"] >= target
        out.append(row)
    return out


def churn_lines(m: dict) -> str:
    head = ("server", "changes/s asked", "applied/s", "QPS", "vs kdns at rest", "CPU us/q", "lost %",
            "harness cores", "last change answered", "target")
    lines = [head]
    for r in churn_summary(m):
        name = "kdns (API)" if r["server"] == "kdns-api" else f"{r['server']} (hosts file, at rest)"
        if r.get("error"):
            lines.append((name, f"{r['rate']:g}", "-", "-", "-", "-", "-", "-", "-", r["error"][:60]))
            continue
        runs = r["qps_runs"]
        qps = f"{r['qps']:,.0f}" + (f" ({_k(min(runs))}-{_k(max(runs))})" if len(runs) > 1 else "")
        ratio = "-"
        if r.get("ratio") is not None:
            ratio = f"{r['ratio']:.2f}"
            if len(r.get("per_round") or []) > 1:
                ratio += f" [{min(r['per_round']):.2f}-{max(r['per_round']):.2f}]"
        is_kdns = r["server"] == "kdns-api"
        fresh = "-"
        if is_kdns and r["rate"] > 0:
            fresh = "NOT within the timeout" if r["fresh_max_s"] is None else f"<= {r['fresh_max_s'] * 1000:.0f} ms after"
        target = "-" if r.get("target") is None else f">= {r['target']:g}: {'met' if r['met'] else 'NOT met'}"
        lines.append((name, f"{r['rate']:g}" if is_kdns else "-",
                      f"{r['changes_per_s']:.0f}" if is_kdns else "-", qps, ratio,
                      cpu_cell(r), f"{r['lost_pct']:.2f}",
                      f"{r['harness_cores']:.2f}" if is_kdns else "-", fresh, target))
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    out = []
    for n, l in enumerate(lines):
        out.append("| " + " | ".join(str(c).ljust(widths[i]) if i in (0, 8, 9) else str(c).rjust(widths[i])
                                     for i, c in enumerate(l)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    checks = m.get("checks", {})
    bad = [f"{k}: {v['wrong']}/{v['asked']} wrong, e.g. {v['problems'][0]}" for k, v in checks.items() if v["wrong"]]
    if bad:
        out.append("  answers checked before timing: " + "; ".join(bad))
    for r in churn_summary(m):
        for note in r.get("notes") or []:
            out.append(f"  {r['rate']:g}/s: {note}")
    return "\n".join(out)
