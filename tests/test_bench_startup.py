"""Smoke tests for the start->ready and churn reports (kdns.bench.startup, kdns.bench.churn):
each source starts and answers for the last Service, churned endpoints get answered. Tiny
sizes and no timing assertions: the figures themselves belong to python -m kdns.bench."""

from __future__ import annotations

import yaml

from kdns.bench import apichurn as churn, startup
from kdns.sources import manifests


def test_the_yaml_writer_is_kubectl_style_yaml_of_the_same_objects(tmp_path):
    docs = list(startup.documents(30))
    path = startup.write_yaml(30, tmp_path / "c.yaml")
    assert yaml.safe_load(path.read_text())["items"] == docs
    assert "- addresses:\n    - 10.244.0.2\n" in path.read_text()     # block style, as kubectl prints
    assert manifests.load([path]) == manifests.load([startup.write_json(30, tmp_path / "c.json")])


def test_every_source_becomes_ready_for_the_last_service(tmp_path):
    rows = startup.run([40], tmp_path)
    assert [(r["source"], r["services"], r["rounds"]) for r in rows] == [
        ("api", 40, 1), ("yaml", 40, 1), ("json", 40, 1)], rows
    assert all(r["ready_s"] > 0 and r["rss_mb"] > 0 for r in rows)
    assert startup.table(rows).count("\n") == 4


def test_churned_endpoints_are_answered(tmp_path):
    out = churn.measure(40, tmp_path, rate=20, seconds=2, sample=1, timeout=20)
    assert out["events"] >= 20 and out.get("unanswered", 0) == 0, out
    assert out["event_ms"]["samples"] == out["events"]
    assert "event -> answer ms" in churn.lines(out)
