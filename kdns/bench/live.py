"""Workload (d), churn: hot A names while the API changes other Services.

A live cluster rewrites EndpointSlices many times a second. This loads a generated cluster into
the in-repo fake API server (tests/fakeapi.py, as kdns/bench/watch.py does), starts
``kdns serve --kubeconfig`` on it, and for each rate of changes per second (0, 10, 100, 1,000 by
default) runs dnsperf on the hot names (200 Services' A records) while the churn driver
(kdns/bench/churn.py, a process of its own, writing over HTTP) rolls the endpoints of the OTHER
Services. Reported per rate: the changes the API actually applied during the measured run,
kdns's QPS and its ratio to rate 0, kdns's CPU per answered query, and how long after the churn
stopped kdns answered with the last new address (a server that keeps its QPS by falling behind
the watch would show here). dnsmasq cannot watch an API: it serves the same records from a hosts
file, at rest, in the same rounds, as the reference.

Everything here is on 127.0.0.1; dnsperf runs are bounded by -l, the driver by a count, a
duration and SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from kdns.bench import check, cluster as gen, cpu, dnsperf, servers, watch, workloads
from kdns.bench import churn as churn_driver
from kdns.bench.servers import REPO, Running, Unavailable, free_port

FRESH_TIMEOUT_S = 60.0  # longest wait for kdns to answer the last change once the churn stopped
SETTLE_S = 1.0          # churn runs this long before dnsperf starts: the watch is in its stride


def plan(model: gen.Cluster, hot: list[gen.Service]) -> list[dict]:
    """The EndpointSlices the driver may change: every Service's except the hot ones."""
    asked = {(s.namespace, s.name) for s in hot}
    return [d for s in model.services if (s.namespace, s.name) not in asked for d in gen.slice_docs(s)]


def hot_queries(hot: list[gen.Service], repeat: int = 50) -> list[tuple[str, str]]:
    return [(s.fqdn, "A") for s in hot] * repeat


def api_revision(url: str) -> int:
    """The API's global resourceVersion: every write bumps it by one, so the difference over a
    run is the number of changes applied."""
    with urllib.request.urlopen(f"{url}/api/v1/namespaces?limit=1", timeout=10) as r:
        return int(json.loads(r.read())["metadata"]["resourceVersion"])


class Churn:
    """The driver process for one rate, started before a run and stopped after it."""

    def __init__(self, url: str, plan_file: Path, rate: float, seconds: float, log: Path):
        self.argv = [sys.executable, "-m", "kdns.bench.churn", "--api", url, "--plan", str(plan_file),
                     "--rate", f"{rate:g}", "--count", str(math.ceil(rate * seconds)),
                     "--duration", f"{seconds:g}"]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Churn":
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env)
        return self

    def cpu_s(self) -> float:
        return cpu.seconds(self.proc.pid) if self.proc and self.proc.poll() is None else 0.0

    def stop(self) -> dict:
        """SIGTERM (the driver stops writing and prints its summary), then its summary."""
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=5)
            return {"error": "the churn driver did not stop within 30 s"}
        try:
            return json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"the churn driver exited {self.proc.returncode} without a summary "
                             f"(see {self.log})"}

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


class LocalChurn:
    """Churn's interface over a LocalDriver thread in this process (``--churn-writer local``):
    its CPU is the harness's own (time.process_time), so cpu_s() is 0 here."""

    def __init__(self, api, plan_file: Path, rate: float, seconds: float):
        self.driver = churn_driver.LocalDriver(api, json.loads(plan_file.read_text()), rate=rate,
                                               count=math.ceil(rate * seconds), duration=seconds)
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self.result: dict = {}

    def _run(self) -> None:
        self.result = self.driver.run()

    def __enter__(self) -> "LocalChurn":
        self.thread.start()
        return self

    def cpu_s(self) -> float:
        return 0.0

    def stop(self) -> dict:
        self.driver.stopping.set()
        self.thread.join(30)
        return self.result if not self.thread.is_alive() else {
            "error": "the churn thread did not stop within 30 s"}

    def __exit__(self, *exc) -> None:
        self.stop()


def _fresh_after(port: int, last: dict | None, timeout: float) -> float | None:
    """Seconds until kdns answers the driver's last new address (None: not within timeout)."""
    if not last:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        r = servers.ask(port, last["qname"], "A", timeout=0.5)
        if r is not None and any(last["address"] == rd.to_text() for rrset in r.answer for rd in rrset):
            return time.monotonic() - started
        time.sleep(0.01)
    return None


def _dnsperf(run: Running, datafile: Path, args) -> tuple[dnsperf.Result, float]:
    if args.warmup > 0:
        dnsperf.run(run.spec.port, datafile, args.warmup, clients=args.clients, outstanding=args.outstanding)
    meter = cpu.Meter(run.proc.pid).start()
    res = dnsperf.run(run.spec.port, datafile, args.duration, clients=args.clients,
                      outstanding=args.outstanding)
    return res, meter.stop()


def _row(server: str, rate: float, res: dnsperf.Result, cpu_s: float, rss_mb: float) -> dict:
    return {"server": server, "rate": rate, "qps": res.qps, "lost_pct": res.lost_pct, "avg_ms": res.avg_ms,
            "completed": res.completed, "cpu_s": cpu_s, "cpu_us": cpu.us_per_query(cpu_s, res.completed),
            "rss_mb": rss_mb}


def measure(services: int, args, tmp: Path, *, rates: list[float], hot_count: int = 200,
            say=lambda text: None) -> dict:
    """The churn rows at one cluster size: a list of per-(server, rate, round) runs plus checks."""
    d = tmp / f"churn-{services}"
    d.mkdir(parents=True, exist_ok=True)
    model = gen.generate(services, services * 10, seed=args.seed)
    hot = workloads.hot_services(model, hot_count)
    queries = hot_queries(hot)
    datafile = d / "hot.queries"
    workloads.write(datafile, queries)
    plan_file = d / "plan.json"
    plan_file.write_text(json.dumps(plan(model, hot)))
    records = list(gen.records(model))
    expect = workloads.Expectations(records)
    probe = (hot[0].fqdn, "A")
    out: dict = {"services": services, "endpoints": model.endpoint_count, "hot": len(hot),
                 "rates": rates, "runs": [], "checks": {}}
    fake = watch._fakeapi()
    longest = SETTLE_S + args.warmup + args.duration + 5
    history = max(10_000, int(max(rates or [0]) * longest * 2))   # no 410 relists from a short ring
    with fake.FakeAPI(history=history, bookmark_interval=5.0) as api:
        for doc in gen.documents(model):
            api.apply(doc)
        kubeconfig = str(api.kubeconfig(d / "kubeconfig"))
        with contextlib.ExitStack() as stack:
            kdns = servers.start(lambda: servers.kdns(None, free_port(), probe, None, name="kdns-api",
                                                      extra=["--kubeconfig", kubeconfig]), d)
            stack.callback(kdns.stop)
            say(f"churn at {services:,} services: kdns ready after {kdns.ready_after:.2f} s")
            try:
                dnsmasq = servers.start(lambda: servers.dnsmasq(d, "dnsmasq-a", records, free_port(), probe,
                                                                srv=False, upstream=None), d)
                stack.callback(dnsmasq.stop)
            except (Unavailable, OSError) as exc:
                dnsmasq = None
                out["runs"].append({"server": "dnsmasq-a", "rate": 0, "error": f"skipped: {exc}"})
            for run in (kdns, dnsmasq):
                if run is not None:
                    asked, wrong, problems = check.sample(run.spec.port, queries, expect)
                    out["checks"][run.spec.name] = {"asked": asked, "wrong": wrong, "problems": problems}
            for r in range(args.rounds):
                if dnsmasq is not None:
                    out["runs"].append(_at_rest(dnsmasq, datafile, args, r, say))
                for rate in rates:
                    out["runs"].append(_one_rate(kdns, api, plan_file, rate, datafile, args, d, r, say))
    return out


def _at_rest(dnsmasq: Running, datafile: Path, args, round_no: int, say) -> dict:
    try:
        res, cpu_s = _dnsperf(dnsmasq, datafile, args)
    except dnsperf.DnsperfError as exc:
        return {"server": "dnsmasq-a", "rate": 0, "round": round_no, "error": str(exc)}
    dnsmasq.quiesce()
    row = _row("dnsmasq-a", 0, res, cpu_s, dnsmasq.rss_kb() / 1024)
    row["round"] = round_no
    say(f"churn dnsmasq-a (hosts file, at rest): {res.qps:,.0f} QPS, CPU {row['cpu_us'] or 0:.1f} us/query")
    return row


def _one_rate(kdns: Running, api, plan_file: Path, rate: float, datafile: Path, args,
              d: Path, round_no: int, say) -> dict:
    seconds = SETTLE_S + args.warmup + args.duration + 2       # outlasts the runs; stopped after them
    row: dict = {"server": "kdns-api", "rate": rate, "round": round_no}
    url = api.url
    churn = None
    if rate > 0:
        writer = getattr(args, "churn_writer", "http")
        churn = (LocalChurn(api, plan_file, rate, seconds) if writer == "local"
                 else Churn(url, plan_file, rate, seconds, d / "churn.log"))
        row["writer"] = writer
    try:
        if churn:
            churn.__enter__()
            time.sleep(SETTLE_S)
        if args.warmup > 0:
            dnsperf.run(kdns.spec.port, datafile, args.warmup, clients=args.clients, outstanding=args.outstanding)
        rev0, harness0, driver0 = api_revision(url), time.process_time(), churn.cpu_s() if churn else 0.0
        meter = cpu.Meter(kdns.proc.pid).start()
        began = time.monotonic()
        res = dnsperf.run(kdns.spec.port, datafile, args.duration, clients=args.clients,
                          outstanding=args.outstanding)
        cpu_s = meter.stop()
        window = time.monotonic() - began
        driver_s = (churn.cpu_s() - driver0) if churn else 0.0
        harness_s = time.process_time() - harness0            # the fake API (this process's threads)
        changes = api_revision(url) - rev0
        summary = churn.stop() if churn else {}
    except dnsperf.DnsperfError as exc:
        if churn:
            churn.stop()
        row["error"] = str(exc)
        return row
    except BaseException:                       # interrupted, API gone: never leave the driver behind
        if churn:
            churn.stop()
        raise
    fresh = _fresh_after(kdns.spec.port, summary.get("last"), timeout=min(FRESH_TIMEOUT_S, args.change_timeout))
    kdns.quiesce()
    row.update(_row("kdns-api", rate, res, cpu_s, kdns.rss_kb() / 1024))
    row.update(round=round_no, changes=changes, changes_per_s=changes / window,
               harness_cores=(harness_s + driver_s) / window, driver=summary, fresh_s=fresh)
    if summary.get("errors"):
        row["note"] = f"{summary['errors']} changes failed: {summary.get('first_error', '')[:80]}"
    say(f"churn kdns at {rate:g}/s (applied {row['changes_per_s']:.0f}/s): {res.qps:,.0f} QPS, "
        f"CPU {row['cpu_us'] or 0:.1f} us/query, last change answered "
        f"{'NEVER' if fresh is None else f'{fresh * 1000:.0f} ms'} after the churn stopped")
    return row
