"""deploy/monitoring/prometheus-rules.yaml through Prometheus's own promtool: the rules parse
(`promtool check rules`), and every alert fires on series that should fire it and stays silent on
series that should not (`promtool test rules`). Debian's `prometheus` package ships promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

RULES = ROOT / "deploy" / "monitoring" / "prometheus-rules.yaml"
ALERTS = {"KdnsDown", "KdnsLatencyHigh", "KdnsErrorsHigh", "KdnsForwardLatencyHigh",
          "KdnsForwardErrorsHigh", "KdnsForwardHealthcheckFailureCount"}
POD = 'job="kdns",instance="10.244.0.10:8080",pod="kdns-7d9f-abcde"'
SERVER = 'server="dns://0.0.0.0:1053",zone="."'


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is needed: apt-get install prometheus (Debian ships promtool in it)")
    return path


def ramp(per_minute: float, minutes: int = 30) -> str:
    """A counter growing by ``per_minute`` each minute, in promtool's expanding notation."""
    return f"0+{per_minute:g}x{minutes}"


def duration_buckets(slow: bool, metric: str = "kdns_dns_request_duration_seconds_bucket",
                     labels: str = SERVER) -> list[dict]:
    """Histogram buckets where 99% of requests take under 1 ms (fast) or about 8 s (slow)."""
    fast_share = 1 if slow else 100
    series = []
    for le in ("0.001", "8.192", "+Inf"):
        per_minute = {"0.001": fast_share, "8.192": 100, "+Inf": 100}[le]
        series.append({"series": f'{metric}{{{POD},{labels},le="{le}"}}', "values": ramp(per_minute)})
    return series


def responses(servfail_per_minute: float, metric: str = "kdns_dns_responses_total",
              labels: str = SERVER + ',plugin="kubernetes"') -> list[dict]:
    return [{"series": f'{metric}{{{POD},{labels},rcode="NOERROR"}}', "values": ramp(100)},
            {"series": f'{metric}{{{POD},{labels},rcode="SERVFAIL"}}', "values": ramp(servfail_per_minute)}]


def case(series: list[dict], alert: str, expected: list[dict], at: str = "20m") -> dict:
    return {"interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}]}


def expected(severity: str, description: str, summary: str, **labels) -> dict:
    return {"exp_labels": {"severity": severity, **labels},
            "exp_annotations": {"summary": summary, "description": description}}


DOWN = "kdns has disappeared from Prometheus target discovery."
ERRORS = "kdns is returning SERVFAIL."
FWD_ERRORS = "kdns is returning SERVFAIL for forward requests."
TO = 'to="10.0.0.2:53"'

TESTS = [
    # KdnsDown: no kdns target at all, or all of them down, for 15 minutes.
    case([], "KdnsDown", [expected("critical", DOWN, DOWN)]),
    case([{"series": f"up{{{POD}}}", "values": "0x30"}], "KdnsDown", [expected("critical", DOWN, DOWN)]),
    case([{"series": f"up{{{POD}}}", "values": "1x30"}], "KdnsDown", []),
    case([], "KdnsDown", [], at="10m"),                                   # not for 15m yet
    # KdnsLatencyHigh: p99 above 4 s.
    case(duration_buckets(slow=True), "KdnsLatencyHigh", [expected(
        "critical", "kdns has 99th percentile latency of 8.109262626262627 seconds for server "
        "dns://0.0.0.0:1053 zone . .", "kdns is experiencing high 99th percentile latency.",
        job="kdns", server="dns://0.0.0.0:1053", zone=".")]),
    case(duration_buckets(slow=False), "KdnsLatencyHigh", []),
    # KdnsErrorsHigh: SERVFAIL over 3% is critical (and over 1%, a warning too); 2%: warning only.
    case(responses(100), "KdnsErrorsHigh", [
        expected("critical", "kdns is returning SERVFAIL for 50% of requests.", ERRORS, job="kdns"),
        expected("warning", "kdns is returning SERVFAIL for 50% of requests.", ERRORS, job="kdns")]),
    case(responses(100 * 0.02 / 0.98), "KdnsErrorsHigh", [
        expected("warning", "kdns is returning SERVFAIL for 2% of requests.", ERRORS, job="kdns")]),
    case(responses(0), "KdnsErrorsHigh", []),
    # The forwarder's alerts, per upstream (`to`).
    case(duration_buckets(True, "kdns_forward_request_duration_seconds_bucket", TO), "KdnsForwardLatencyHigh",
         [expected("critical", "kdns has 99th percentile latency of 8.109262626262627 seconds forwarding "
                   "requests to 10.0.0.2:53.", "kdns is experiencing high latency forwarding requests.",
                   job="kdns", to="10.0.0.2:53")]),
    case(duration_buckets(False, "kdns_forward_request_duration_seconds_bucket", TO), "KdnsForwardLatencyHigh", []),
    case(responses(100, "kdns_forward_responses_total", TO), "KdnsForwardErrorsHigh", [
        expected("critical", "kdns is returning SERVFAIL for 50% of forward requests to 10.0.0.2:53.",
                 FWD_ERRORS, job="kdns", to="10.0.0.2:53"),
        expected("warning", "kdns is returning SERVFAIL for 50% of forward requests to 10.0.0.2:53.",
                 FWD_ERRORS, job="kdns", to="10.0.0.2:53")]),
    case(responses(0, "kdns_forward_responses_total", TO), "KdnsForwardErrorsHigh", []),
    case([{"series": f"kdns_forward_healthcheck_failures_total{{{POD},{TO}}}", "values": ramp(1)}],
         "KdnsForwardHealthcheckFailureCount", [expected(
             "warning", "kdns health checks have failed to upstream server 10.0.0.2:53.",
             "kdns health checks have failed to upstream server.", job="kdns", to="10.0.0.2:53")]),
    case([{"series": f"kdns_forward_healthcheck_failures_total{{{POD},{TO}}}", "values": "3x30"}],
         "KdnsForwardHealthcheckFailureCount", []),
]


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory):
    """The PrometheusRule's spec is a Prometheus rule file: promtool reads it as one."""
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    path = tmp_path_factory.mktemp("rules") / "kdns-rules.yaml"
    path.write_text(yaml.safe_dump(doc["spec"]))
    return path


def test_every_mixin_alert_is_ported(rule_file):
    groups = yaml.safe_load(rule_file.read_text())["groups"]
    names = {r["alert"] for g in groups for r in g["rules"]}
    assert names == ALERTS
    exprs = " ".join(r["expr"] for g in groups for r in g["rules"])
    assert "coredns" not in exprs and 'job="kdns"' in exprs
    assert {c["alert_rule_test"][0]["alertname"] for c in TESTS} == ALERTS


def test_promtool_check_rules(rule_file):
    out = subprocess.run([promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in yaml.safe_load(rule_file.read_text())['groups'])} rules found" \
        in out.stdout + out.stderr


def test_promtool_test_rules_fire_and_stay_silent(rule_file, tmp_path):
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(rule_file)], "evaluation_interval": "1m",
                                     "tests": TESTS}, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_a_wrong_expectation_fails(rule_file, tmp_path):
    """The harness can fail: an alert expected where the series should not fire it."""
    tests = tmp_path / "tests.yaml"
    wrong = case(responses(0), "KdnsErrorsHigh", [expected("warning", "x", ERRORS, job="kdns")])
    tests.write_text(yaml.safe_dump({"rule_files": [str(rule_file)], "evaluation_interval": "1m",
                                     "tests": [wrong]}, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
