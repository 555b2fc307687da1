"""Smoke tests for the benchmark harness (python -m kdns.bench): the generator, the peers'
configs and kdns agree on the names. No timing, no load: every server here answers a handful of
questions and is stopped."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from kdns.bench import check, cluster as gen, dnsperf, servers, workloads
from kdns.sources import manifests

ROOT = Path(__file__).resolve().parent.parent

SERVICES, ENDPOINTS = 60, 600


@pytest.fixture(scope="module")
def model() -> gen.Cluster:
    return gen.generate(SERVICES, ENDPOINTS, seed=5)


@pytest.fixture(scope="module")
def records(model) -> list[gen.Record]:
    return list(gen.records(model))


@pytest.fixture(scope="module")
def manifest_dir(model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("manifests")
    gen.write_manifests(model, d)
    return d


def _probe(model):
    return (next(s for s in model.services if not s.headless).fqdn, "A")


def test_generator_gives_exact_counts_and_a_mix(model):
    assert len(model.services) == SERVICES
    assert model.endpoint_count == ENDPOINTS
    assert len({(s.namespace, s.name) for s in model.services}) == SERVICES
    assert any(s.headless for s in model.services) and any(not s.headless for s in model.services)
    assert len(model.namespaces) >= 3
    ips = [ep.ip for s in model.services for ep in s.endpoints]
    assert len(set(ips)) == len(ips)


def test_manifests_load_into_the_same_cluster(model, manifest_dir):
    loaded = manifests.load([manifest_dir])
    assert set(loaded.services) == {(s.namespace, s.name) for s in model.services}
    assert sum(len(sl.endpoints) for sl in loaded.slices.values()) == ENDPOINTS
    for s in model.services:
        assert loaded.services[(s.namespace, s.name)].cluster_ip == s.cluster_ip


def test_records_cover_a_srv_ptr(model, records):
    svc = next(s for s in model.services if not s.headless)
    srv_name, port = svc.srv_names()[0]
    assert gen.Record(svc.fqdn, "A", svc.cluster_ip) in records
    assert gen.Record(srv_name, "SRV", f"0 100 {port.port} {svc.fqdn}") in records
    assert gen.Record(gen.ptr_name(svc.cluster_ip), "PTR", svc.fqdn) in records


@pytest.mark.skipif(not shutil.which("dnsmasq") or not shutil.which("dig"), reason="needs dnsmasq and dig")
def test_dnsmasq_serves_the_generated_names(model, records, tmp_path):
    port = servers.free_port()
    spec = servers.dnsmasq(tmp_path, "dnsmasq-srv", records, port, _probe(model), srv=True, upstream=None)
    svc = next(s for s in model.services if not s.headless)
    with servers.Running(spec, tmp_path):
        out = subprocess.run(["dig", "+short", "+time=2", "+tries=1", "-p", str(port), "@127.0.0.1",
                              svc.fqdn, "A"], capture_output=True, text=True, timeout=10)
        assert out.stdout.split() == [svc.cluster_ip]
        expect = workloads.Expectations(records)
        for w in ("a", "a-mix", "c", "e"):
            asked, wrong, problems = check.sample(port, workloads.build(w, model), expect, size=60)
            assert asked > 0 and wrong == 0, problems


def test_kdns_agrees_with_the_model(model, records, manifest_dir, tmp_path):
    port = servers.free_port()
    spec = servers.kdns(manifest_dir, port, _probe(model), None, ready_timeout=60)
    expect = workloads.Expectations(records)
    with servers.Running(spec, tmp_path):
        for w in ("a", "a-mix", "c", "e"):
            asked, wrong, problems = check.sample(port, workloads.build(w, model), expect, size=60)
            assert asked > 0 and wrong == 0, problems
        walk = [q for q in workloads.build("b", model) if q[0] not in workloads.EXTERNAL]
        asked, wrong, problems = check.sample(port, walk, expect, size=60)
        assert asked > 0 and wrong == 0, problems


def test_search_walk_is_mostly_nxdomain(model, records):
    expect = workloads.Expectations(records)
    walk = workloads.build("b", model)
    nx = sum(expect(n, t).rcode == "NXDOMAIN" for n, t in walk)
    assert nx / len(walk) > 0.5
    assert any(n in workloads.EXTERNAL for n, _ in walk)


@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="needs a C compiler")
def test_ceiling_builds_and_answers(tmp_path):
    port = servers.free_port()
    with servers.Running(servers.ceiling(tmp_path, port), tmp_path):
        r = servers.ask(port, "anything.example.", "A", timeout=2)
        assert r is not None and r.answer[0].to_text().endswith("IN A 127.0.0.1")


DNSPERF_OUT = """\
Statistics:

  Queries sent:         863090
  Queries completed:    862990 (99.99%)
  Queries lost:         100 (0.01%)

  Response codes:       NOERROR 431495 (50.00%), NXDOMAIN 431495 (50.00%)
  Average packet size:  request 44, response 60
  Run time (s):         4.001201
  Queries per second:   215682.741736

  Average Latency (s):  0.000361 (min 0.000013, max 0.004713)
  Latency StdDev (s):   0.000098
"""


def test_dnsperf_statistics_parse():
    r = dnsperf.parse(DNSPERF_OUT)
    assert (r.sent, r.completed, r.lost_pct) == (863090, 862990, 0.01)
    assert r.qps == pytest.approx(215682.741736)
    assert r.avg_ms == pytest.approx(0.361)
    assert r.rcodes == {"NOERROR": 431495, "NXDOMAIN": 431495}
    assert dnsperf.percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_watch_report_times_every_event_through_a_live_kdns(tmp_path):
    """kdns.bench's API-source report: kdns serve --kubeconfig on the fake API; every event
    (new Services, replaced EndpointSlices) must show in kdns's answers. No timing asserted."""
    from kdns.bench import report, watch

    out = watch.measure(40, 200, events=6, seed=3, tmp=tmp_path, timeout=30)
    assert "error" not in out, out.get("error")
    assert out["services"] == 40 and out["events"] == 6
    assert out["ready_s"] > 0 and out["rss_mb"] > 0
    assert set(out["by_kind_p50_ms"]) == {"service", "endpoints"}
    assert 0 < out["event_ms"]["p50"] <= out["event_ms"]["p99"] <= out["event_ms"]["max"]
    text = report.watch_lines(out)
    assert "start->ready" in text and "event -> answer" in text


def test_ratios_pair_the_rounds():
    """Each round's kdns/peer, from runs in round order; the target is judged on the medians."""
    from kdns.bench import report

    rows = [{"workload": "a", "server": "kdns", "qps": 200.0, "wrong": 0, "qps_rounds": [180.0, 200.0, 260.0]},
            {"workload": "a", "server": "dnsmasq-a", "qps": 150.0, "wrong": 0, "qps_rounds": [100.0, 150.0, 200.0]}]
    (item,) = report.ratios(rows)
    assert item["per_round"] == [1.8, 200 / 150, 1.3]
    assert item["ratio"] == 200 / 150 and item["met"] is True
    line = report.ratio_lines([item])
    assert "kdns/dnsmasq-a 1.33 [rounds 1.30-1.80] (target >= 1.3: met)" in line


def test_cold_workload_asks_every_service_and_endpoint_name(model):
    """(e): every A name of the cluster, services and endpoints (<ep>.<svc>.<ns>.svc.<zone>)."""
    names = workloads.a_names(model)
    live = [s for s in model.services if s.endpoints or not s.headless]
    assert len(names) == len(set(names)) == len(live) + ENDPOINTS
    asked = {n for n, t in workloads.build("e", model)}
    assert asked <= set(names) and len(asked) > 0.9 * len(names)
    assert any(n.count(".") > 5 for n in asked)            # endpoint names, one label deeper


def test_cpu_meter_counts_a_child_process_tree():
    from kdns.bench import cpu

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(5)"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}], timeout=20)"])
    try:
        meter = cpu.Meter(parent.pid).start()
        deadline = time.monotonic() + 10
        while cpu.seconds(parent.pid) - meter.began < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert meter.stop() >= 0.25                       # the grandchild's spin, not the parent's
    finally:
        parent.kill()
        parent.wait(timeout=10)
    assert cpu.us_per_query(2.0, 1_000_000) == 2.0
    assert cpu.us_per_query(1.0, 0) is None


def test_churn_changes_roll_pods_through_other_slices(model):
    from kdns.bench import churn, live

    hot = workloads.hot_services(model, 10)
    plan = live.plan(model, hot)
    hot_keys = {(s.namespace, s.name) for s in hot}
    assert plan and not any((d["metadata"]["namespace"], d["metadata"]["labels"]["kubernetes.io/service-name"])
                            in hot_keys for d in plan)
    seq = list(itertools.islice(churn.changes(plan), 400))
    fresh = [c for _, c in seq if c]
    assert len(fresh) >= 180 and len({ip for _, ip in fresh}) == len(fresh)
    for qname, ip in fresh:
        assert qname.startswith(ip.replace(".", "-") + ".") or not qname[0].isdigit()
    down = [d for d, c in seq if c is None]
    assert all(any(not ep["conditions"]["ready"] for ep in d["endpoints"]) for d in down)


@pytest.mark.skipif(not shutil.which("dnsperf"), reason="needs dnsperf")
@pytest.mark.parametrize("writer", ["http", "local"])
def test_churn_report_runs_kdns_on_the_fake_api_under_churn(tmp_path, writer):
    """Workload (d) at a tiny size: the driver (its own process writing HTTP PUTs, or a thread
    calling into the fake API) changes slices of other Services while dnsperf asks kdns; the API
    applied the changes, kdns answers the last one, CPU per query is accounted. No timing
    asserted."""
    from kdns.bench import live, report

    args = types.SimpleNamespace(seed=3, warmup=0, duration=1.0, rounds=1, clients=1, outstanding=20,
                                 change_timeout=30.0, churn_writer=writer)
    out = live.measure(30, args, tmp_path, rates=[0, 40], hot_count=8)
    kdns = {r["rate"]: r for r in out["runs"] if r["server"] == "kdns-api"}
    assert set(kdns) == {0, 40} and not any(r.get("error") for r in kdns.values()), kdns
    assert kdns[40]["writer"] == writer
    assert out["checks"]["kdns-api"]["wrong"] == 0, out["checks"]
    assert kdns[0]["changes"] == 0 and kdns[40]["changes"] > 0
    assert kdns[40]["driver"]["sent"] >= kdns[40]["changes"] and kdns[40]["driver"]["errors"] == 0
    assert kdns[40]["fresh_s"] is not None                  # the last new address is answered
    assert all(r["completed"] > 0 and r["cpu_us"] > 0 for r in kdns.values())
    if shutil.which("dnsmasq"):
        (rest,) = [r for r in out["runs"] if r["server"] == "dnsmasq-a"]
        assert rest["cpu_us"] > 0 and out["checks"]["dnsmasq-a"]["wrong"] == 0
    text = report.churn_lines(out)
    assert "kdns (API)" in text and "CPU us/q" in text


def test_report_shows_cpu_per_query_and_the_miss_hit_target():
    from kdns.bench import report

    rows = [{"workload": "a", "server": "kdns", "qps": 100.0, "cpu_us": 2.0, "cpu_us_runs": [1.9, 2.0, 2.5],
             "avg_ms": 0.1, "p99_ms": None, "lost_pct": 0.0, "rss_mb": 1.0, "wrong": 0, "asked": 1},
            {"workload": "a", "server": "kdns-nocache", "qps": 50.0, "cpu_us": 8.0, "avg_ms": 0.1, "p99_ms": None,
             "lost_pct": 0.0, "rss_mb": 1.0, "wrong": 0, "asked": 1}]
    assert "| 2.00 (1.9-2.5) |" in report.table(rows)
    assert "kdns-nocache (a) 8.00 us / kdns (a) 2.00 us = 4.00x (target <= 3: NOT met)" in report.cpu_lines(rows)


def test_forwarding_row_stub_answers_blackholes_and_expires(tmp_path):
    """The forwarding row's upstream (python -m kdns.bench.stub): an A for every name, TTL 0 under
    the fresh zone, nothing at all under the blackholed one."""
    from kdns.bench import forwarding

    spec = forwarding.stub_spec(servers.free_port())
    with servers.Running(spec, tmp_path):
        r = servers.ask(spec.port, "anything.example.", "A")
        assert [rr.to_text() for rr in r.answer] == ["anything.example. 300 IN A 192.0.2.1"]
        r = servers.ask(spec.port, f"x1.{forwarding.FRESH}", "A")
        assert [rr.to_text() for rr in r.answer] == [f"x1.{forwarding.FRESH} 0 IN A 192.0.2.1"]
        r = servers.ask(spec.port, "anything.example.", "AAAA")
        assert r.rcode() == 0 and not r.answer
        assert servers.ask(spec.port, f"r1.{forwarding.BLACKHOLE}", "A", timeout=0.3) is None


def test_fuzz_report_runs_small_and_kdns_survives(tmp_path):
    """The fuzz report at 3,000 datagrams: kdns keeps running and answering the canary, and
    every reply is a DNS message carrying an ID that was asked."""
    from kdns.bench import fuzz

    r = fuzz.run(3000, tmp_path, seed=3, canary_every=500, services=50)
    assert r["alive"]
    assert r["canary_failed"] == 0 and r["canary_ok"] == 6
    assert r["unparsable_replies"] == 0 and r["wrong_id"] == 0
    assert r["replies"] + r["unanswered"] == 3000
    assert {"FORMERR", "NOERROR"} <= set(r["rcodes"])
    assert "canary answered 6/6" in fuzz.lines(r)


def test_slowloris_report_runs_small(tmp_path):
    from kdns.bench import slowloris

    r = slowloris.run(10, tmp_path, seconds=1.5)
    assert r["alive"] and r["opened"] == 10
    assert r["client_ok"] >= 1 and r["client_failed"] == 0
    assert "dripping connections" in slowloris.lines(r)


def test_counting_off_variant_counts_no_hits_and_shipped_counts_each(tmp_path):
    """The overhead report's two sides differ in exactly the hot path's counting: 5 identical
    queries (1 miss, then 4 packet-cache hits) are 5 in kdns_dns_requests_total as shipped and
    1 (the miss, counted on the miss path) with counting off; both answer the same."""
    import re
    import urllib.request

    import dns.message
    import dns.query
    from prometheus_client.parser import text_string_to_metric_families

    from kdns.bench import ab, overhead

    def requests_total(server) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"http on 127\.0\.0\.1:(\d+)", Path(server.log.name).read_text())
            if m:
                break
            time.sleep(0.05)
        body = urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=5).read().decode()
        return sum(s.value for f in text_string_to_metric_families(body) for s in f.samples
                   if s.name == "kdns_dns_requests_total" and s.labels["type"] == "A")

    counts, answers = {}, {}
    for name, module, extra in overhead.VARIANTS[:2]:
        server = overhead.Server(name, module, extra, tmp_path)
        try:
            assert ab.ready(server.port, time.monotonic() + 30), Path(server.log.name).read_text()
            before = requests_total(server)                   # ab.ready's own probe
            for _ in range(5):
                r = dns.query.udp(dns.message.make_query("nginx.default.svc.cluster.local.", "A"),
                                  "127.0.0.1", port=server.port, timeout=2)
            answers[name] = sorted(rr.to_text() for rr in r.answer)
            counts[name] = requests_total(server) - before
        finally:
            server.stop()
    assert counts == {"shipped": 5, "counting off": 1}
    assert answers["shipped"] == answers["counting off"] != []


def test_counting_off_refuses_a_loop_it_does_not_recognise():
    from kdns.bench import nocount

    with pytest.raises(nocount.Mismatch, match="listener.done"):
        nocount.strip("def f():\n    start = perf_counter()\n    hit[1][hits] += 1\n",
                      nocount.COUNTING["_udp_batch_loop"])
    stripped = nocount.strip("def f():\n    start = perf_counter()   # why\n    hit[1][hits] += 1\n"
                             "    listener.done(n, start)\n", nocount.COUNTING["_udp_batch_loop"])
    assert stripped == "def f():\n    pass\n    pass\n    pass\n"


def test_overhead_report_runs_small(tmp_path):
    from kdns.bench import overhead

    m = overhead.measure(1, 0.5, tmp_path, say=lambda _: None)
    assert set(m["variants"]) == {"shipped", "counting off", "log-queries"}
    assert all(v["qps"]["median"] > 0 and v["cpu_us"]["median"] > 0 for v in m["variants"].values())
    text = overhead.lines(m)
    assert "counting cost" in text and "log-queries cost" in text and "ns per hit" in text


@pytest.mark.skipif(not shutil.which("dnsperf") or not shutil.which("dnsmasq"),
                    reason="needs dnsperf and dnsmasq")
def test_the_bench_command_runs_a_workload_against_a_peer(tmp_path):
    """`python -m kdns.bench` itself, end to end at a tiny size (the reports' wiring, not only
    their parts): a hot workload against kdns and dnsmasq, with the ratio line."""
    out = subprocess.run([sys.executable, "-m", "kdns.bench", "--services", "40", "--workload", "a",
                          "--only", "kdns,dnsmasq-a", "--duration", "1", "--warmup", "0",
                          "--rounds", "1", "--memory-sizes", "", "--watch-services", "0",
                          "--churn-services", "", "--startup-sizes", "", "--api-churn-seconds", "0",
                          "--fuzz", "0", "--slowloris", "0", "--forward-duration", "0",
                          "--overhead-rounds", "0"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| a ")]
    assert [r.split("|")[2].strip() for r in rows] == ["kdns", "dnsmasq-a"], out.stdout
    assert "kdns/dnsmasq-a" in out.stdout
