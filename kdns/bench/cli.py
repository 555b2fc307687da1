"""python -m kdns.bench: kdns against dnsmasq, unbound, knot and a C ceiling, in one run.

Generates a cluster, starts each server in turn on a 127.0.0.1 high port with the same records,
runs dnsperf (bounded by -l) for every workload, and prints one table (QPS and server CPU per
answered query) plus the kdns/peer ratios;
then starts kdns alone at 1k and 10k services to report memory, start-to-ready time, and how long
a manifest change takes to show in answers; then kdns on the in-repo fake API server for the
watch source's start-to-ready, memory and event-to-answer latency; then workload (d), hot names
while a churn driver changes other Services through that fake API; then the forwarding row
(kdns.bench.forwarding: forwarded-name QPS and a victim's answers under a blackholed-zone flood,
kdns beside unbound). See docs/bench.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kdns.bench import (apichurn, check, cluster as gen, cpu, dnsperf, forwarding, fuzz, live,
                        report, servers, slowloris, startup, watch, workloads)
from kdns.bench.servers import Running, Unavailable

SERVERS = ("kdns", "kdns-nocache", "dnsmasq-a", "dnsmasq-srv", "unbound", "knot", "ceiling")


def _csv(choices: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(choices)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdns.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10000, help="services in the cluster (default 10000)")
    p.add_argument("--endpoints", type=int, default=None,
                   help="endpoints in total (default 10 per service, so 100000 at 10000 services)")
    p.add_argument("--namespaces", type=int, default=0, help="namespaces (default: one per ~200 services, 3-50)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run (default 10)")
    p.add_argument("--latency-duration", type=float, default=None,
                   help="seconds of the -v run that gives p99 (default duration/3, at least 1; 0 skips)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded dnsperf before each run")
    p.add_argument("--only", type=_csv(SERVERS, "server"), action="extend", default=None, metavar="NAME",
                   help=f"servers to run, comma-separated, repeatable: {', '.join(SERVERS)}")
    p.add_argument("--workload", type=_csv(workloads.WORKLOADS, "workload"), action="extend", default=None,
                   metavar="NAME", help=f"workloads, comma-separated, repeatable: {', '.join(workloads.WORKLOADS)}")
    p.add_argument("--clients", type=int, default=1, help="dnsperf -c (default 1)")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    p.add_argument("--qps", type=int, default=0, help="dnsperf -Q, 0 = unlimited (default)")
    p.add_argument("--memory-sizes", default="1000,10000",
                   help="service counts for the kdns memory/startup report, 10 endpoints each; '' skips")
    p.add_argument("--watch-services", type=int, default=None, metavar="N",
                   help="services for the API-source report (kdns on tests/fakeapi.py: start->ready, "
                        "RSS, event->answer), 10 endpoints each; default --services; 0 skips")
    p.add_argument("--watch-events", type=int, default=100, metavar="N",
                   help="watch events timed from the fake API storing them to kdns answering (default 100)")
    p.add_argument("--churn-services", default="1000", metavar="LIST",
                   help="workload (d): service counts (10 endpoints each) for the churn report, kdns serve "
                        "--kubeconfig on tests/fakeapi.py with EndpointSlice churn on other Services; "
                        "'' skips (default 1000)")
    p.add_argument("--churn-rates", default="0,10,100,1000", metavar="LIST",
                   help="workload (d): EndpointSlice changes per second (default 0,10,100,1000)")
    p.add_argument("--churn-writer", choices=("local", "http"), default="local",
                   help="workload (d): who writes the changes: 'local', calls into the fake API "
                        "in the harness's process (default: the harness then costs what an API "
                        "server elsewhere would not take from kdns's cores, only the store and the "
                        "watch encoding), or 'http', PUTs from a driver process (kdns.bench.churn; "
                        "~1 core at 1,000/s on its own)")
    p.add_argument("--churn-hot", type=int, default=200, metavar="N",
                   help="workload (d): hot services asked for (A) while the others change (default 200)")
    p.add_argument("--fuzz", type=int, default=200_000, metavar="N",
                   help="mutated UDP datagrams for the fuzz report (in and out of zone, a canary "
                        "query between windows; default 200000); 0 skips")
    p.add_argument("--slowloris", type=int, default=260, metavar="N",
                   help="dripping TCP connections for the slowloris report (default 260); 0 skips")
    p.add_argument("--fuzz-only", action="store_true",
                   help="run only the hostile-client reports, fuzz and slowloris (no dnsperf, no peers)")
    p.add_argument("--change-timeout", type=float, default=300.0,
                   help="longest wait for a manifest change to show in answers (seconds)")
    p.add_argument("--forward-duration", type=float, default=5.0, metavar="SECONDS",
                   help="seconds per dnsperf run of the forwarding row (cached and uncached "
                        "forwarded names, kdns and unbound to one loopback stub); 0 skips the row")
    p.add_argument("--flood-qps", type=int, default=2000, metavar="N",
                   help="unique names per second the forwarding row's flooding client sends under "
                        "a dead zone (default 2000)")
    p.add_argument("--flood-seconds", type=float, default=10.0, metavar="SECONDS",
                   help="how long the forwarding row's flood lasts (default 10)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every run this many times and report the median (default 1)")
    p.add_argument("--together", action="store_true",
                   help="start all servers first, then take turns run by run (fairer on a busy machine)")
    p.add_argument("--startup-sizes", default="1000,10000",
                   help="service counts for the start->ready/RSS report of every source (API, one "
                        "YAML file, one JSON List; issue 11's cluster); '' skips")
    p.add_argument("--api-churn-rate", type=float, default=1000.0,
                   help="events/s of the API churn report, event->answer/lag/RSS (default 1000)")
    p.add_argument("--api-churn-seconds", type=float, default=30.0,
                   help="seconds of the API churn report (default 30; 0 skips)")
    p.add_argument("--api-churn-services", type=int, default=10000,
                   help="services in the API churn report's cluster (default 10000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every figure as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, manifests, logs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.endpoints is None:
        args.endpoints = args.services * 10
    if args.watch_services is None:
        args.watch_services = args.services
    if args.latency_duration is None:
        args.latency_duration = max(1.0, round(args.duration / 3, 1))
    if args.fuzz_only:
        return _fuzz_only(args)
    try:
        dnsperf.binary()
        model = gen.generate(args.services, args.endpoints, namespaces=args.namespaces, seed=args.seed)
        sizes = [int(s) for s in args.memory_sizes.split(",") if s.strip()]
        args.churn_sizes = [int(s) for s in args.churn_services.split(",") if s.strip()]
        args.churn_rate_list = [float(s) for s in args.churn_rates.split(",") if s.strip()]
        if any(r < 0 for r in args.churn_rate_list) or any(n < 1 for n in args.churn_sizes):
            raise ValueError("--churn-rates must be >= 0 and --churn-services >= 1")
    except (ValueError, dnsperf.DnsperfError) as exc:
        print(f"kdns.bench: {exc}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="kdns-bench-"))
    try:
        return _run(args, model, sizes, tmp)
    except KeyboardInterrupt:
        print("kdns.bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _fuzz_only(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="kdns-bench-"))
    try:
        machine = report.machine()
        result = _fuzz(args, tmp)
        print(f"kdns.bench {machine['date']}: {machine['cpus']} CPUs ({machine['cpu']}), "
              f"Linux {machine['kernel']}, Python {machine['python']}; load before run {machine['load']}")
        print("\nkdns fuzz (mutated UDP datagrams, in and out of zone):")
        print(fuzz.lines(result) if "error" not in result else f"  {result['error']}")
        loris = _slowloris(args, tmp)
        if loris is not None:
            print("\nkdns slowloris (TCP):")
            print(slowloris.lines(loris) if "error" not in loris else f"  {loris['error']}")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, "fuzz": result, "slowloris": loris},
                                            indent=2))
        return 0 if result.get("alive") and (loris is None or loris.get("alive")) else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _slowloris(args, tmp: Path) -> dict | None:
    if args.slowloris <= 0:
        return None
    _say(f"kdns slowloris: {args.slowloris} dripping connections")
    try:
        return slowloris.run(args.slowloris, tmp, seed=args.seed)
    except (Unavailable, OSError) as exc:
        return {"error": str(exc)}


def _fuzz(args, tmp: Path) -> dict:
    _say(f"kdns fuzz: {args.fuzz:,} mutated datagrams")
    try:
        return fuzz.run(args.fuzz, tmp, seed=args.seed)
    except (Unavailable, OSError) as exc:
        return {"error": str(exc)}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run(args, model: gen.Cluster, sizes: list[int], tmp: Path) -> int:
    names = args.only or list(SERVERS)
    chosen = list(workloads.WORKLOADS) if args.workload is None else args.workload   # '' = none
    machine = report.machine()
    _say(f"cluster: {len(model.services):,} services, {model.endpoint_count:,} endpoints, "
         f"{len(model.namespaces)} namespaces; workloads {', '.join(chosen)}; servers {', '.join(names)}")
    records = list(gen.records(model))
    expect = workloads.Expectations(records)
    manifests = tmp / "manifests"
    gen.write_manifests(model, manifests)
    probe_svc = next(s for s in model.services if not s.headless)
    probe = (probe_svc.fqdn, "A")
    files = {}
    queries = {}
    for w in chosen:
        queries[w] = workloads.build(w, model)
        files[w] = tmp / f"{w}.queries"
        workloads.write(files[w], queries[w])

    samples: dict[tuple[str, str], list[dict]] = {}
    upstream = None
    if "b" in chosen and names:
        port = servers.free_port()
        try:
            upstream = Running(servers.upstream_dnsmasq(tmp, port, workloads.EXTERNAL), tmp).__enter__()
        except Unavailable as exc:
            _say(f"no upstream for external names: {exc}")
    up = upstream.spec.port if upstream else None
    bench = Bench(args, tmp, files, queries, expect, samples)
    try:
        if not chosen:
            pass                                # --workload '': only the reports below
        elif args.together:
            bench.together(names, chosen, lambda n: _spec(n, tmp, manifests, records, probe, up))
        else:
            for r in range(args.rounds):
                for name in names:
                    bench.alone(name, chosen, lambda n: _spec(n, tmp, manifests, records, probe, up), r)
    finally:
        if upstream:
            upstream.stop()
    rows = [_median(samples[(w, n)]) for n in names for w in chosen if (w, n) in samples]

    ratio_items = report.ratios(rows)
    print(f"\nkdns.bench {machine['date']}: {machine['cpus']} CPUs ({machine['cpu']}), {machine['memory']}, "
          f"Linux {machine['kernel']}, Python {machine['python']}; load before run {machine['load']}")
    if rows:
        print(f"cluster: {len(model.services):,} services, {model.endpoint_count:,} endpoints, "
              f"{len(model.namespaces)} namespaces, {len(records):,} records; dnsperf -l {args.duration:g} "
              f"-c {args.clients} -q {args.outstanding}{f' -Q {args.qps}' if args.qps else ''}; "
              f"p99 from a {args.latency_duration:g} s -v run\n")
        print(report.table(rows))
    for name, note in bench.notes.items():
        if note:
            print(f"  {name}: {note}")
    if ratio_items:
        print("\nratios (QPS, same run):")
        print(report.ratio_lines(ratio_items))
    cpu_text = report.cpu_lines(rows)
    if cpu_text:
        print("\nCPU per answered query (server utime + stime over the measured dnsperf run, same run):")
        print(cpu_text)

    memory = []
    if sizes and "kdns" in names:
        for n in sizes:
            memory.append(_memory(n, n * 10, args, tmp))
        print("\nkdns memory and startup (manifest source; CoreDNS formula MB = (pods + services)/1000 + 54, "
              "pods = endpoints):")
        print(report.memory_table(memory))
    api_source = None
    if args.watch_services > 0 and "kdns" in names:
        api_source = _watch(args, tmp)
        print(f"\nkdns watch source (kdns serve --kubeconfig on tests/fakeapi.py, {args.watch_events} events):")
        print(report.watch_lines(api_source))
    churn = []
    if args.churn_sizes and args.churn_rate_list and "kdns" in names:
        for n in args.churn_sizes:
            churn.append(_churn(n, args, tmp))
            print(f"\n(d) churn: {args.churn_hot} hot A names while the fake API applies EndpointSlice changes "
                  f"to other Services; {n:,} services, {n * 10:,} endpoints; dnsperf -l {args.duration:g}; "
                  f"medians of {args.rounds} round(s), spread in brackets:")
            print(report.churn_lines(churn[-1]))
    forward_rows = []
    if args.forward_duration > 0 and "kdns" in names:
        peers = [n for n in ("kdns", "unbound") if n in names]
        try:
            forward_rows = forwarding.measure(peers, tmp, duration=args.forward_duration,
                                              flood_qps=args.flood_qps, flood_s=args.flood_seconds,
                                              rounds=args.rounds, clients=args.clients,
                                              outstanding=args.outstanding, say=_say)
        except (Unavailable, OSError) as exc:
            forward_rows = [{"server": "stub", "error": str(exc)}]
        print("\n" + forwarding.table(forward_rows, args.flood_qps, args.flood_seconds))
    fuzzed = None
    if args.fuzz > 0 and "kdns" in names:
        fuzzed = _fuzz(args, tmp)
        print("\nkdns fuzz (mutated UDP datagrams, in and out of zone):")
        print(fuzz.lines(fuzzed) if "error" not in fuzzed else f"  {fuzzed['error']}")
    loris = _slowloris(args, tmp) if "kdns" in names else None
    if loris is not None:
        print("\nkdns slowloris (TCP):")
        print(slowloris.lines(loris) if "error" not in loris else f"  {loris['error']}")
    startup_rows, churn_out = [], None
    if args.startup_sizes.strip() and "kdns" in names:
        startup_rows = startup.run([int(x) for x in args.startup_sizes.split(",") if x.strip()], tmp,
                                   rounds=args.rounds, say=_say)
        print(f"\nkdns start -> ready and RSS by source (issue 11's cluster, {args.rounds} round(s)):")
        print(startup.table(startup_rows))
    if args.api_churn_seconds > 0 and "kdns" in names:
        try:
            churn_out = apichurn.measure(args.api_churn_services, tmp, rate=args.api_churn_rate,
                                         seconds=args.api_churn_seconds)
        except (Unavailable, OSError) as exc:
            churn_out = {"error": str(exc)}
        print("\nkdns API churn:")
        print(apichurn.lines(churn_out))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                         "cluster": {"services": len(model.services),
                                                     "endpoints": model.endpoint_count,
                                                     "namespaces": len(model.namespaces),
                                                     "records": len(records)},
                                         "results": rows, "ratios": ratio_items, "memory": memory,
                                         "watch": api_source, "churn": churn,
                                         "forwarding": forward_rows, "fuzz": fuzzed,
                                         "slowloris": loris, "startup": startup_rows,
                                         "api_churn": churn_out}, indent=2))
    return 0


def _spec(name: str, tmp: Path, manifests: Path, records, probe, upstream: int | None) -> servers.Spec:
    port = servers.free_port()
    if name == "kdns":
        return servers.kdns(manifests, port, probe, upstream)
    if name == "kdns-nocache":              # every query takes the miss path: its CPU per query
        spec = servers.kdns(manifests, port, probe, upstream, extra=["--cache-size", "1"], name=name)
        spec.note = (spec.note + "; " if spec.note else "") + \
            "kdns --cache-size 1: every answer computed (the forwarding cache is 1 entry too)"
        return spec
    if name == "dnsmasq-a":
        return servers.dnsmasq(tmp, name, records, port, probe, srv=False, upstream=upstream)
    if name == "dnsmasq-srv":
        return servers.dnsmasq(tmp, name, records, port, probe, srv=True, upstream=upstream)
    if name == "unbound":
        return servers.unbound(tmp, records, port, probe, upstream)
    if name == "knot":
        return servers.knot(tmp, records, port, probe)
    if name == "ceiling":
        return servers.ceiling(tmp, port)
    raise ValueError(name)


def _median(runs: list[dict]) -> dict:
    """The run with the median QPS (its latency and RSS with it), and the spread over rounds."""
    ok = [r for r in runs if not r.get("error")]
    if not ok:
        return runs[0]
    rounds = [r.get("qps") if not r.get("error") else None for r in runs]   # in round order
    ok.sort(key=lambda r: r["qps"])
    row = dict(ok[(len(ok) - 1) // 2])
    row["rounds"] = len(ok)
    row["qps_runs"] = [r["qps"] for r in ok]
    row["qps_rounds"] = rounds
    row["cpu_us_runs"] = [r["cpu_us"] for r in ok if r.get("cpu_us") is not None]
    return row


class Bench:
    """Runs every workload against a server and files the results by (workload, server)."""

    def __init__(self, args, tmp, files, queries, expect, samples):
        self.args, self.tmp, self.files, self.queries, self.expect = args, tmp, files, queries, expect
        self.samples = samples
        self.checked: dict[tuple[str, str], tuple[int, int, list[str]]] = {}
        self.notes: dict[str, str] = {}                 # server -> what it is configured to do

    def _file(self, name: str, chosen, exc: Exception) -> None:
        _say(f"{name}: skipped: {exc}")
        for w in chosen:
            self.samples.setdefault((w, name), []).append(
                {"workload": w, "server": name, "error": f"skipped: {exc}"})

    def alone(self, name: str, chosen, make_spec, round_no: int) -> None:
        """Start one server, run every workload, stop it: nothing else is running meanwhile."""
        try:
            _say(f"{name}: starting (round {round_no + 1})")
            run = servers.start(lambda: make_spec(name), self.tmp)
            try:
                _say(f"{name}: ready after {run.ready_after:.2f} s, RSS {run.rss_kb() / 1024:.1f} MB")
                for w in chosen:
                    self.one(run, w)
            finally:
                run.stop()
        except (Unavailable, OSError) as exc:
            if round_no == 0:
                self._file(name, chosen, exc)

    def together(self, names, chosen, make_spec) -> None:
        """Start every server first (idle servers cost no CPU), then take turns run by run, so
        that load from other tenants of the machine hits every server alike."""
        running: list[Running] = []
        try:
            for name in names:
                try:
                    run = servers.start(lambda: make_spec(name), self.tmp)
                except (Unavailable, OSError) as exc:
                    self._file(name, chosen, exc)
                    continue
                _say(f"{name}: ready after {run.ready_after:.2f} s")
                running.append(run)
            for r in range(self.args.rounds):
                for w in chosen:
                    for run in running:
                        self.one(run, w)
        finally:
            for run in running:
                run.stop()

    def one(self, run: Running, w: str) -> None:
        args, spec = self.args, run.spec
        row = {"workload": w, "server": spec.name}
        notes = []
        self.notes[spec.name] = spec.note
        if (w, spec.name) not in self.checked:
            if spec.name == "ceiling":
                self.checked[(w, spec.name)] = (0, 0, [])
            else:
                self.checked[(w, spec.name)] = check.sample(spec.port, self.queries[w], self.expect)
        asked, wrong, problems = self.checked[(w, spec.name)]
        if wrong:
            notes.append("e.g. " + problems[0])
        datafile = self.files[w]
        drained = 0.0
        try:
            if args.warmup > 0:
                dnsperf.run(spec.port, datafile, args.warmup, clients=args.clients, outstanding=args.outstanding)
                drained += run.quiesce()
            meter = cpu.Meter(run.proc.pid).start()
            res = dnsperf.run(spec.port, datafile, args.duration, clients=args.clients,
                              outstanding=args.outstanding, qps_limit=args.qps)
            cpu_s = meter.stop()
            drained += run.quiesce()
            p99 = None
            if args.latency_duration > 0:
                lat = dnsperf.run(spec.port, datafile, args.latency_duration, clients=args.clients,
                                  outstanding=args.outstanding, qps_limit=args.qps,
                                  verbose_to=self.tmp / f"{spec.name}-{w}.verbose")
                p99 = lat.p99_ms
                drained += run.quiesce()
        except dnsperf.DnsperfError as exc:
            row["error"] = str(exc)
            self.samples.setdefault((w, spec.name), []).append(row)
            return
        if drained > 2:
            notes.append(f"busy {drained:.0f} s after its runs (draining a backlog)")
        row.update(qps=res.qps, avg_ms=res.avg_ms, p99_ms=p99, lost_pct=res.lost_pct, sent=res.sent,
                   completed=res.completed, cpu_s=cpu_s, cpu_us=cpu.us_per_query(cpu_s, res.completed),
                   rcodes=res.rcodes, rss_mb=run.rss_kb() / 1024, asked=asked, wrong=wrong,
                   note="; ".join(notes))
        self.samples.setdefault((w, spec.name), []).append(row)
        _say(f"{spec.name} {w}: {res.qps:,.0f} QPS, lost {res.lost_pct:.2f}%, "
             f"CPU {row['cpu_us'] or 0:.1f} us/query, check {asked - wrong}/{asked}")


def _memory(services: int, endpoints: int, args, tmp: Path) -> dict:
    """kdns alone at one size: RSS once ready, start-to-ready, manifest change to answer."""
    out = {"services": services, "endpoints": endpoints, "formula_mb": report.coredns_mb(services, endpoints)}
    d = tmp / f"memory-{services}"
    model = gen.generate(services, endpoints, seed=args.seed)
    gen.write_manifests(model, d)
    probe = (next(s for s in model.services if not s.headless).fqdn, "A")
    reload_s = 0.25
    spec = servers.kdns(d, servers.free_port(), probe, None, extra=["--reload", str(reload_s)])
    _say(f"kdns memory at {services:,} services / {endpoints:,} endpoints: starting")
    try:
        with Running(spec, tmp) as run:
            out["ready_s"] = run.ready_after
            time.sleep(1.0)                     # let the first snapshot's garbage go
            out["rss_mb"] = run.rss_kb() / 1024
            out["change_note"] = f"> {args.change_timeout:g} s"
            out.update(_change_to_answer(run, d, args.change_timeout))
            _say(f"kdns memory at {services:,}: {out['rss_mb']:.1f} MB, ready {out['ready_s']:.2f} s, "
                 f"change {out.get('change_s')}")
    except (Unavailable, OSError) as exc:
        out["error"] = str(exc)
    return out


def _watch(args, tmp: Path) -> dict:
    n = args.watch_services
    _say(f"kdns watch source at {n:,} services / {n * 10:,} endpoints: starting")
    try:
        out = watch.measure(n, n * 10, events=args.watch_events, seed=args.seed, tmp=tmp,
                            timeout=args.change_timeout)
    except (Unavailable, OSError) as exc:
        return {"services": n, "endpoints": n * 10, "error": str(exc)}
    _say(f"kdns watch source: ready {out.get('ready_s', 0):.2f} s, {out.get('rss_mb', 0):.1f} MB, "
         f"events {out.get('event_ms')}")
    return out


def _churn(services: int, args, tmp: Path) -> dict:
    _say(f"(d) churn at {services:,} services, rates {args.churn_rates}: starting")
    try:
        return live.measure(services, args, tmp, rates=args.churn_rate_list, hot_count=args.churn_hot, say=_say)
    except (Unavailable, OSError, dnsperf.DnsperfError) as exc:
        return {"services": services, "runs": [{"server": "kdns-api", "rate": 0, "error": str(exc)}]}


def _change_to_answer(run: Running, directory: Path, timeout: float) -> dict:
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
