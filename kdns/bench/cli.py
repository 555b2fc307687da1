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
from pathlib import Path

from kdns.bench import (apichurn, cluster as gen, dnsperf, forwarding, fuzz, overhead, peers, report,
                        servers, slowloris, solo, startup, workloads)
from kdns.bench.report import say
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
    p.add_argument("--overhead-rounds", type=int, default=20, metavar="N",
                   help="interleaved rounds of the counting / --log-queries cost report (kdns as "
                        "shipped, with counting off, with --log-queries; kdns.bench.overhead); "
                        "0 skips (default 20)")
    p.add_argument("--overhead-duration", type=float, default=2.0, metavar="SECONDS",
                   help="seconds per dnsperf run of that report (default 2)")
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
        result = solo.fuzz_run(args, tmp)
        print(f"kdns.bench {machine['date']}: {machine['cpus']} CPUs ({machine['cpu']}), "
              f"Linux {machine['kernel']}, Python {machine['python']}; load before run {machine['load']}")
        print("\nkdns fuzz (mutated UDP datagrams, in and out of zone):")
        print(fuzz.lines(result) if "error" not in result else f"  {result['error']}")
        loris = solo.slowloris_run(args, tmp)
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


def _run(args, model: gen.Cluster, sizes: list[int], tmp: Path) -> int:
    names = args.only or list(SERVERS)
    chosen = list(workloads.WORKLOADS) if args.workload is None else args.workload   # '' = none
    machine = report.machine()
    say(f"cluster: {len(model.services):,} services, {model.endpoint_count:,} endpoints, "
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
            say(f"no upstream for external names: {exc}")
    up = upstream.spec.port if upstream else None
    bench = peers.Bench(args, tmp, files, queries, expect, samples)
    try:
        if not chosen:
            pass                                # --workload '': only the reports below
        elif args.together:
            bench.together(names, chosen, lambda n: peers.spec(n, tmp, manifests, records, probe, up))
        else:
            for r in range(args.rounds):
                for name in names:
                    bench.alone(name, chosen, lambda n: peers.spec(n, tmp, manifests, records, probe, up), r)
    finally:
        if upstream:
            upstream.stop()
    rows = [peers.median(samples[(w, n)]) for n in names for w in chosen if (w, n) in samples]

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
            memory.append(solo.memory(n, n * 10, args, tmp))
        print("\nkdns memory and startup (manifest source; CoreDNS formula MB = (pods + services)/1000 + 54, "
              "pods = endpoints):")
        print(report.memory_table(memory))
    api_source = None
    if args.watch_services > 0 and "kdns" in names:
        api_source = solo.watch_source(args, tmp)
        print(f"\nkdns watch source (kdns serve --kubeconfig on tests/fakeapi.py, {args.watch_events} events):")
        print(report.watch_lines(api_source))
    churn = []
    if args.churn_sizes and args.churn_rate_list and "kdns" in names:
        for n in args.churn_sizes:
            churn.append(solo.churn(n, args, tmp))
            print(f"\n(d) churn: {args.churn_hot} hot A names while the fake API applies EndpointSlice changes "
                  f"to other Services; {n:,} services, {n * 10:,} endpoints; dnsperf -l {args.duration:g}; "
                  f"medians of {args.rounds} round(s), spread in brackets:")
            print(report.churn_lines(churn[-1]))
    forward_rows = []
    if args.forward_duration > 0 and "kdns" in names:
        forwarders = [n for n in ("kdns", "unbound") if n in names]
        try:
            forward_rows = forwarding.measure(forwarders, tmp, duration=args.forward_duration,
                                              flood_qps=args.flood_qps, flood_s=args.flood_seconds,
                                              rounds=args.rounds, clients=args.clients,
                                              outstanding=args.outstanding, say=say)
        except (Unavailable, OSError) as exc:
            forward_rows = [{"server": "stub", "error": str(exc)}]
        print("\n" + forwarding.table(forward_rows, args.flood_qps, args.flood_seconds))
    fuzzed = None
    if args.fuzz > 0 and "kdns" in names:
        fuzzed = solo.fuzz_run(args, tmp)
        print("\nkdns fuzz (mutated UDP datagrams, in and out of zone):")
        print(fuzz.lines(fuzzed) if "error" not in fuzzed else f"  {fuzzed['error']}")
    loris = solo.slowloris_run(args, tmp) if "kdns" in names else None
    if loris is not None:
        print("\nkdns slowloris (TCP):")
        print(slowloris.lines(loris) if "error" not in loris else f"  {loris['error']}")
    startup_rows, churn_out = [], None
    if args.startup_sizes.strip() and "kdns" in names:
        startup_rows = startup.run([int(x) for x in args.startup_sizes.split(",") if x.strip()], tmp,
                                   rounds=args.rounds, say=say)
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
    costs = None
    if args.overhead_rounds > 0 and "kdns" in names:
        say(f"kdns counting and --log-queries cost: {args.overhead_rounds} rounds")
        try:
            costs = overhead.measure(args.overhead_rounds, args.overhead_duration, tmp)
        except (RuntimeError, OSError, dnsperf.DnsperfError) as exc:
            costs = {"error": str(exc)}
        print(f"\nkdns counting and --log-queries cost (hot A names, packet-cache hits; dnsperf -l "
              f"{args.overhead_duration:g}, {args.overhead_rounds} interleaved rounds):")
        print(overhead.lines(costs))
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
                                         "api_churn": churn_out, "overhead": costs}, indent=2))
    return 0
