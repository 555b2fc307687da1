"""The reports of kdns alone: memory and startup with a manifest change, the watch source, workload
(d) churn, fuzz and slowloris. Each returns a dict with "error" rather than raising when a part
is missing, so one absent tool never loses the rest of the run."""

from __future__ import annotations

import time
from pathlib import Path

from kdns.bench import cluster as gen, dnsperf, fuzz, live, report, servers, slowloris, watch
from kdns.bench.report import say
from kdns.bench.servers import Running, Unavailable


def slowloris_run(args, tmp: Path) -> dict | None:
    if args.slowloris <= 0:
        return None
    say(f"kdns slowloris: {args.slowloris} dripping connections")
    try:
        return slowloris.run(args.slowloris, tmp, seed=args.seed)
    except (Unavailable, OSError) as exc:
        return {"error": str(exc)}


def fuzz_run(args, tmp: Path) -> dict:
    say(f"kdns fuzz: {args.fuzz:,} mutated datagrams")
    try:
        return fuzz.run(args.fuzz, tmp, seed=args.seed)
    except (Unavailable, OSError) as exc:
        return {"error": str(exc)}


def memory(services: int, endpoints: int, args, tmp: Path) -> dict:
    """kdns alone at one size: RSS once ready, start-to-ready, manifest change to answer."""
    out = {"services": services, "endpoints": endpoints, "formula_mb": report.coredns_mb(services, endpoints)}
    d = tmp / f"memory-{services}"
    model = gen.generate(services, endpoints, seed=args.seed)
    gen.write_manifests(model, d)
    probe = (next(s for s in model.services if not s.headless).fqdn, "A")
    reload_s = 0.25
    spec = servers.kdns(d, servers.free_port(), probe, None, extra=["--reload", str(reload_s)])
    say(f"kdns memory at {services:,} services / {endpoints:,} endpoints: starting")
    try:
        with Running(spec, tmp) as run:
            out["ready_s"] = run.ready_after
            time.sleep(1.0)                     # let the first snapshot's garbage go
            out["rss_mb"] = run.rss_kb() / 1024
            out["change_note"] = f"> {args.change_timeout:g} s"
            out.update(change_to_answer(run, d, args.change_timeout))
            say(f"kdns memory at {services:,}: {out['rss_mb']:.1f} MB, ready {out['ready_s']:.2f} s, "
                 f"change {out.get('change_s')}")
    except (Unavailable, OSError) as exc:
        out["error"] = str(exc)
    return out


def watch_source(args, tmp: Path) -> dict:
    n = args.watch_services
    say(f"kdns watch source at {n:,} services / {n * 10:,} endpoints: starting")
    try:
        out = watch.measure(n, n * 10, events=args.watch_events, seed=args.seed, tmp=tmp,
                            timeout=args.change_timeout)
    except (Unavailable, OSError) as exc:
        return {"services": n, "endpoints": n * 10, "error": str(exc)}
    say(f"kdns watch source: ready {out.get('ready_s', 0):.2f} s, {out.get('rss_mb', 0):.1f} MB, "
         f"events {out.get('event_ms')}")
    return out


def churn(services: int, args, tmp: Path) -> dict:
    say(f"(d) churn at {services:,} services, rates {args.churn_rates}: starting")
    try:
        return live.measure(services, args, tmp, rates=args.churn_rate_list, hot_count=args.churn_hot, say=say)
    except (Unavailable, OSError, dnsperf.DnsperfError) as exc:
        return {"services": services, "runs": [{"server": "kdns-api", "rate": 0, "error": str(exc)}]}


def change_to_answer(run: Running, directory: Path, timeout: float) -> dict:
    """Add one Service in a new manifest file; time until kdns answers for it."""
    name, ip = "bench-event", "10.111.222.33"
    (directory / "zz-bench-event.yaml").write_text(
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")
    started = time.monotonic()
    qname = f"{name}.default.svc.{gen.DOMAIN}."
    while time.monotonic() - started < timeout:
        r = servers.ask(run.spec.port, qname, "A", timeout=0.5)
        if r is not None and any(ip in rr.to_text() for rr in r.answer):
            return {"change_s": time.monotonic() - started}
        if run.proc.poll() is not None:
            return {"change_note": "kdns exited"}
        time.sleep(0.02)
    return {"change_s": None}
