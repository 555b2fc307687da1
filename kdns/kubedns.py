"""A kube-dns ConfigMap as the kdns serve flags that mean the same (``--kube-dns-configmap``):
data.stubDomains are stub domains (``--forward``), data.upstreamNameservers the default
upstreams (``--upstream``). Errors are CorefileError lines, as a Corefile's."""

from __future__ import annotations

import json

import yaml

from kdns.corefile import CorefileError


def translate_kube_dns(path: str) -> list[str]:
    """A kube-dns ConfigMap (YAML or JSON): data.stubDomains -> --forward, data.upstreamNameservers
    -> --upstream. Any other data key is an error: kube-dns's federations are not served."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise CorefileError([f"{path}: {getattr(exc, 'strerror', None) or exc}"]) from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise CorefileError([f"{path}: not a ConfigMap with data"])
    args: list[str] = []
    problems: list[str] = []
    for key, value in data.items():
        try:
            parsed = json.loads(value) if isinstance(value, str) else value
        except ValueError as exc:
            problems.append(f"{path}: data.{key}: not JSON: {exc}")
            continue
        if key == "upstreamNameservers":
            if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
                problems.append(f"{path}: data.upstreamNameservers: expected a list of addresses")
                continue
            for ip in parsed:
                args += ["--upstream", ip]
        elif key == "stubDomains":
            if not isinstance(parsed, dict):
                problems.append(f"{path}: data.stubDomains: expected a mapping of zone to addresses")
                continue
            for zone, ips in parsed.items():
                if not isinstance(ips, list) or not all(isinstance(x, str) for x in ips):
                    problems.append(f"{path}: data.stubDomains.{zone}: expected a list of addresses")
                    continue
                args += ["--forward", f"{zone.strip('.').lower()}=" + ",".join(ips)]
        else:
            problems.append(f"{path}: data.{key}: not supported by kdns (stubDomains and "
                            "upstreamNameservers are)")
    if problems:
        raise CorefileError(problems)
    return args
