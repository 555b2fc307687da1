"""The table of python -m kdns.bench: every server in turn (or all at once, taking turns) on the
same records, every workload run by dnsperf, filed by (workload, server); the median of rounds."""

from __future__ import annotations

from pathlib import Path

from kdns.bench import check, cpu, dnsperf, servers
from kdns.bench.report import say
from kdns.bench.servers import Running, Unavailable


def spec(name: str, tmp: Path, manifests: Path, records, probe, upstream: int | None) -> servers.Spec:
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


def median(runs: list[dict]) -> dict:
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
        say(f"{name}: skipped: {exc}")
        for w in chosen:
            self.samples.setdefault((w, name), []).append(
                {"workload": w, "server": name, "error": f"skipped: {exc}"})

    def alone(self, name: str, chosen, make_spec, round_no: int) -> None:
        """Start one server, run every workload, stop it: nothing else is running meanwhile."""
        try:
            say(f"{name}: starting (round {round_no + 1})")
            run = servers.start(lambda: make_spec(name), self.tmp)
            try:
                say(f"{name}: ready after {run.ready_after:.2f} s, RSS {run.rss_kb() / 1024:.1f} MB")
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
                say(f"{name}: ready after {run.ready_after:.2f} s")
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
        say(f"{spec.name} {w}: {res.qps:,.0f} QPS, lost {res.lost_pct:.2f}%, "
             f"CPU {row['cpu_us'] or 0:.1f} us/query, check {asked - wrong}/{asked}")
