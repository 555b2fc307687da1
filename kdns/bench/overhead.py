"""What counting, timing and --log-queries cost on the hot path (issue 14: counting <= 5% of hot QPS).

    python -m kdns.bench.overhead [--rounds 30] [--duration 2]

Three kdns processes serve the embedded example cluster on 127.0.0.1 with no upstream, started
together and warmed up (idle ones cost nothing), then take turns in many short interleaved rounds,
the order rotating every round, so a shared machine's drift hits each alike:

- shipped: ``kdns serve --http 127.0.0.1:0`` (metrics registered, as deploy/ runs it);
- counting off: the same through kdns.bench.nocount, the UDP loops without their counting and
  timing statements (the only way to turn them off; never shipped);
- log-queries: shipped plus ``--log-queries``, its lines written to a file.

dnsperf asks hot A names (packet-cache hits) at full speed for ``--duration`` seconds per run.
Each run gives QPS and server CPU microseconds per answered query; the costs are per-round
paired ratios, median and range. CPU per query is the primary figure: QPS here moves with
whatever else the two shared cores run, CPU per query far less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdns.bench import ab, cpu, dnsperf, report

HOT_A = [q for q in ab.HOT if q.endswith(" A") and not q.startswith("nope.")]
VARIANTS = (("shipped", ["-m", "kdns"], []),
            ("counting off", ["-m", "kdns.bench.nocount"], []),
            ("log-queries", ["-m", "kdns"], ["--log-queries"]))
# Rotation (--loadbalance) is paid on answers of several A/AAAA records: the example cluster's
# headless mysql has two.
HEADLESS_A = "mysql.default.svc.cluster.local A"
ROTATION = (("no-loadbalance", ["-m", "kdns"], ["--no-loadbalance"]),
            ("loadbalance", ["-m", "kdns"], []))
LIMIT = 0.05                             # issue 14: counting and timing at most 5% of hot QPS


class Server:
    def __init__(self, name: str, module: list[str], extra: list[str], tmp: Path):
        self.name, self.port = name, ab.free_port()
        self.log = (tmp / f"{name.replace(' ', '-')}.log").open("wb")
        argv = [sys.executable, *module, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--resolv-conf", "", "--lameduck", "0", "--reload", "0", "--http", "127.0.0.1:0",
                *extra]
        self.proc = subprocess.Popen(argv, cwd=ab.REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        ab.stop(self.proc, 10)
        self.log.close()


def measure(rounds: int, duration: float, tmp: Path, say=report.say) -> dict:
    datafile = tmp / "hot-a.txt"
    datafile.write_text("\n".join(HOT_A) + "\n")
    running = [Server(name, module, extra, tmp) for name, module, extra in VARIANTS]
    runs: dict[str, list[dict]] = {s.name: [] for s in running}
    try:
        for s in running:
            if not ab.ready(s.port, time.monotonic() + 30):
                s.log.flush()
                raise RuntimeError(f"{s.name} did not answer: "
                                   f"{Path(s.log.name).read_bytes()[-400:].decode(errors='replace')}")
            dnsperf.run(s.port, datafile, 1.0)            # warm the packet cache and the loops
        for r in range(rounds):
            order = running[r % 3:] + running[:r % 3]
            for s in (order if r % 2 == 0 else order[::-1]):
                meter = cpu.Meter(s.proc.pid).start()
                res = dnsperf.run(s.port, datafile, duration)
                used = meter.stop()
                runs[s.name].append({"qps": res.qps, "cpu_us": cpu.us_per_query(used, res.completed),
                                     "lost_pct": res.lost_pct})
            say(f"overhead round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {v[-1]['qps']:,.0f} QPS {v[-1]['cpu_us'] or 0:.2f} us" for n, v in runs.items()))
    finally:
        for s in running:
            s.stop()
    out = summarize(runs, duration)
    out["micro"] = micro()
    return out


def micro(number: int = 1_000_000) -> dict:
    """The counting statements alone, timed in this process (best of 5, the bare loop's own
    cost taken off): nanoseconds per packet-cache hit and per recvmmsg batch. A bound that no
    neighbour on the machine can blur, to read beside the noisy end-to-end figures."""
    import timeit
    from time import perf_counter

    from kdns.metrics import Listener

    scope = {"hit": [b"", [0, 0]], "hits": 0, "listener": Listener(0, "udp", "127.0.0.1", 53),
             "perf_counter": perf_counter}

    def best(stmt: str) -> float:
        return min(timeit.repeat(stmt, globals=scope, number=number, repeat=5)) / number * 1e9

    bare = best("pass")
    return {"hit_ns": best("hit[1][hits] += 1") - bare,
            "batch_ns": best("start = perf_counter(); listener.done(64, start)") - bare}


def instructions(module: list[str], extra: list[str], datafile: Path, tmp: Path, queries: int,
                 rate: int = 0) -> float:
    """User-space instructions per answered query under valgrind's callgrind: a count that
    other tenants of the machine cannot move (the kernel's UDP path is not in it). Counters
    are zeroed after a warm-up pass and dumped after ``queries`` more (dnsperf -n 1 over a
    file of that many); ``rate`` (dnsperf -Q) makes recvmmsg batches small."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is missing (apt-get install valgrind)")
    port = ab.free_port()
    out = tmp / f"callgrind.{port}"
    # The interpreter itself, not a wrapper script that execs it (pyenv's shims): valgrind
    # follows no exec.
    argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
            os.path.realpath(sys.executable), *module, "serve", "--listen", f"127.0.0.1:{port}",
            "--resolv-conf", "", "--lameduck", "0", "--reload", "0", "--http", "127.0.0.1:0", *extra]
    log = (tmp / f"callgrind.{port}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ab.REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        if not ab.ready(port, time.monotonic() + 120):
            raise RuntimeError(f"kdns under valgrind did not answer: {(tmp / f'callgrind.{port}.log').read_text()[-300:]}")
        control = shutil.which("callgrind_control") or "callgrind_control"

        def ask() -> int:
            argv = [dnsperf.binary(), "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile),
                    "-n", "1", "-q", "100", "-t", "5", *(["-Q", str(rate)] if rate else [])]
            text = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
            return dnsperf.parse(text).completed

        ask()                                               # warm: every name cached
        subprocess.run([control, "-z", str(proc.pid)], capture_output=True, timeout=60, check=True)
        answered = ask()
        subprocess.run([control, "-d", str(proc.pid)], capture_output=True, timeout=60, check=True)
        dumps = sorted(tmp.glob(f"callgrind.{port}.*[0-9]"), key=lambda p: p.stat().st_mtime)
        totals = [int(line.split()[1]) for line in dumps[-1].read_text().splitlines()
                  if line.startswith("totals:")]
        return totals[0] / max(1, answered)
    finally:
        ab.stop(proc, 30)
        log.close()


def _names(path: Path, names: list[str], queries: int) -> Path:
    path.write_text("\n".join((names * (queries // len(names) + 1))[:queries]) + "\n")
    return path


def count_instructions(tmp: Path, queries: int = 20000, repeats: int = 2, say=report.say) -> dict:
    """Instructions per hot-A query for each variant at full speed (at a low fixed rate the idle
    loops' own wakeups swamp the count: 13k-22k per query at 2,000 QPS); and the
    rotation's (--loadbalance, the default) on a headless name of two records, against
    --no-loadbalance, at full speed."""
    hot = _names(tmp / "hot-a-n.txt", HOT_A, queries)
    headless = _names(tmp / "headless-n.txt", [HEADLESS_A], queries)
    out: dict = {}
    plan = [("0", hot, VARIANTS, 0)]
    plan.append(("rotation", headless, ROTATION, 0))
    for key, datafile, variants, rate in plan:
        for name, module, extra in variants:
            counts = [instructions(module, extra, datafile, tmp, queries, rate) for _ in range(repeats)]
            out.setdefault(key, {})[name] = counts
            say(f"instructions/query, {key}, {name}: {counts}")
    return out


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def _ci95(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval of the median: how finely this many rounds resolve a cost."""
    import random

    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * 0.025)], medians[int(draws * 0.975) - 1]


def summarize(runs: dict[str, list[dict]], duration: float) -> dict:
    out: dict = {"rounds": len(runs["shipped"]), "duration_s": duration, "variants": {}, "costs": {}}
    for name, rs in runs.items():
        out["variants"][name] = {"qps": _spread([r["qps"] for r in rs]),
                                 "cpu_us": _spread([r["cpu_us"] for r in rs if r["cpu_us"]])}
    pairs = (("counting", "shipped", "counting off"), ("log-queries", "log-queries", "shipped"))
    for cost, with_it, without in pairs:
        a, b = runs[with_it], runs[without]
        if not a or not b:
            continue
        out["costs"][cost] = {
            # Paired per round: the extra CPU per query, and the QPS given up, with it on.
            "cpu": _spread([x["cpu_us"] / y["cpu_us"] - 1 for x, y in zip(a, b)
                            if x["cpu_us"] and y["cpu_us"]]),
            "qps": _spread([1 - x["qps"] / y["qps"] for x, y in zip(a, b) if y["qps"]]),
            # The least disturbed run of each: on a shared machine, the closest to the cost alone.
            "best_cpu": min(x["cpu_us"] for x in a if x["cpu_us"]) /
                        min(y["cpu_us"] for y in b if y["cpu_us"]) - 1,
        }
        for v in out["costs"][cost].values():
            if isinstance(v, dict):
                v["ci95"] = _ci95(v["runs"])
    return out


def lines(m: dict) -> str:
    if "error" in m:
        return f"  {m['error']}"
    rows = [f"  {'':<13} {'QPS median':>11} {'range':>17}  {'CPU us/query':>12} {'range':>13}"]
    for name, v in m.get("variants", {}).items():
        q, c = v["qps"], v["cpu_us"]
        rows.append(f"  {name:<13} {q['median']:>11,.0f} {q['min']:>8,.0f}-{q['max']:<8,.0f}  "
                    f"{c['median']:>12.2f} {c['min']:>6.2f}-{c['max']:<6.2f}")
    for cost, v in m.get("costs", {}).items():
        c, q = v["cpu"], v["qps"]
        verdict = ""
        if cost == "counting":
            # Met only if the whole interval is under the budget; undecided if it straddles it.
            verdict = ("; within the 5% budget" if c["ci95"][1] <= LIMIT else
                       "; OVER the 5% budget" if c["ci95"][0] > LIMIT else
                       "; the 5% budget is inside the interval: these rounds cannot decide it")
        best = m["costs"][cost]["best_cpu"]
        rows.append(f"  {cost} cost (paired rounds, median [range] (95% CI of the median)): CPU/query "
                    f"{c['median']:+.1%} [{c['min']:+.1%} to {c['max']:+.1%}] ({c['ci95'][0]:+.1%} to "
                    f"{c['ci95'][1]:+.1%}), QPS given up {q['median']:+.1%} [{q['min']:+.1%} to "
                    f"{q['max']:+.1%}] ({q['ci95'][0]:+.1%} to {q['ci95'][1]:+.1%}); best round "
                    f"against best round: CPU/query {best:+.1%}{verdict}")
    for key, per in (m.get("instructions") or {}).items():
        first = next(iter(per))
        base = min(per[first]) if key == "rotation" else min(per["counting off"])
        what = {"0": "hot A, full speed", "rotation": f"{HEADLESS_A}, full speed"}.get(key, f"hot A, {key} QPS")
        rows.append(f"  user-space instructions per query (callgrind; {what}): "
                    + ", ".join(f"{n} {min(v):,.0f}" + ("" if min(v) == base else f" ({min(v) / base - 1:+.1%})")
                                for n, v in per.items()))
    if "micro" in m and "variants" in m:
        u, cpu_us = m["micro"], m["variants"]["shipped"]["cpu_us"]["min"]
        rows.append(f"  counting statements in-process: {u['hit_ns']:.0f} ns per hit + "
                    f"{u['batch_ns']:.0f} ns per recvmmsg batch = "
                    + ", ".join(f"{(u['hit_ns'] + u['batch_ns'] / b) / (cpu_us * 1000):.1%} at {b}/batch"
                                for b in (64, 16, 4, 1))
                    + f" of the best shipped {cpu_us:.2f} us/query")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdns.bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds per dnsperf run (default 2; CPU is read in 10 ms ticks)")
    p.add_argument("--instructions", action="store_true",
                   help="also count instructions per query under valgrind (immune to the machine's load)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    try:
        dnsperf.binary()
    except dnsperf.DnsperfError as exc:
        print(f"kdns.bench.overhead: {exc}", file=sys.stderr)
        return 2
    machine = report.machine()
    with tempfile.TemporaryDirectory(prefix="kdns-overhead-") as tmp:
        try:
            m = measure(args.rounds, args.duration, Path(tmp)) if args.rounds > 0 else {}
            if args.instructions:
                m["instructions"] = count_instructions(Path(tmp))
        except (RuntimeError, OSError, dnsperf.DnsperfError) as exc:
            print(f"kdns.bench.overhead: {exc}", file=sys.stderr)
            return 1
    print(f"kdns.bench.overhead {machine['date']}: {machine['cpus']} CPUs ({machine['cpu']}), "
          f"Linux {machine['kernel']}, Python {machine['python']}; load before run {machine['load']}")
    print(f"hot A names (packet-cache hits), dnsperf -c 1 -q 100 -l {args.duration:g}, "
          f"{m.get('rounds', 0)} interleaved rounds:")
    print(lines(m))
    if args.json:
        import json
        args.json.write_text(json.dumps({"machine": machine, "overhead": m}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
