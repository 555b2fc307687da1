"""The Dockerfile, checked without a Docker engine: its shape, then its steps run for real.

The builder stage's COPY and RUN steps run in a fresh venv (standing in for python:3.11-slim's
/usr/local), the runtime stage's COPY --from=builder lands in a second, empty venv, and kdns is
started the way the ENTRYPOINT starts it, from a directory that holds no source tree, so only
what pip installed can answer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ["python", "-m", "kdns"]
CMD = ["serve", "--in-cluster", "--listen", "0.0.0.0:1053", "--http", "0.0.0.0:8080"]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "python3-dev", "libc6-dev")


def parse(text: str) -> list[dict]:
    """Dockerfile -> stages: [{"base", "name", "steps": [(INSTRUCTION, args)]}]."""
    stages: list[dict] = []
    logical, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):                   # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    for line in logical:
        op, _, args = line.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m, f"FROM {args!r}"
            stages.append({"base": m.group(1), "name": m.group(2), "steps": []})
        else:
            assert stages, f"{op} before FROM"
            stages[-1]["steps"].append((op, args))
    return stages


def steps(stage: dict, op: str) -> list[str]:
    return [args for o, args in stage["steps"] if o == op]


def env_of(stage: dict) -> dict[str, str]:
    env = {}
    for args in steps(stage, "ENV"):
        for item in shlex.split(args):
            key, eq, val = item.partition("=")
            assert eq, f"ENV {args!r}: use the KEY=VALUE form"
            env[key] = val
    return env


@pytest.fixture(scope="module")
def stages() -> list[dict]:
    return parse(DOCKERFILE.read_text())


def test_dockerfile_shape(stages):
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    builder, final = stages[0], stages[-1]
    assert builder["name"], "the builder stage is named, so the runtime stage can COPY --from it"
    for st in stages:
        assert re.fullmatch(r"python:3\.1[12]-slim(@sha256:[0-9a-f]{64})?", st["base"]), st["base"]
    assert final["base"].split("@")[0] == builder["base"].split("@")[0], \
        "same base in both stages, so the wheels' ABI and site-packages paths match"
    # The runtime stage gets only the installed prefix: no source tree, no compiler.
    copies = steps(final, "COPY")
    assert copies and all(c.startswith(f"--from={builder['name']} ") for c in copies), copies
    final_text = " ".join(args for _, args in final["steps"]).lower()
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(^|[\s/]){re.escape(tool)}($|\s)", final_text), f"{tool} in the final stage"
    assert not steps(final, "RUN"), "the runtime stage installs nothing"
    users = steps(final, "USER")
    assert users and re.fullmatch(r"65532(:65532)?", users[-1]), "a numeric non-root USER (runAsNonRoot)"
    env = env_of(final)
    assert env.get("PYTHONUNBUFFERED") == "1" and env.get("PYTHONDONTWRITEBYTECODE") == "1"
    (entry,) = steps(final, "ENTRYPOINT")
    assert json.loads(entry) == ENTRYPOINT, "exec form, so python is PID 1 and receives SIGTERM"
    (cmd,) = steps(final, "CMD")
    assert json.loads(cmd) == CMD
    exposed = set(" ".join(steps(final, "EXPOSE")).split())
    assert {"1053/udp", "1053/tcp", "8080"} <= exposed


def _index_reachable() -> bool:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    host = re.sub(r"^\w+://([^/:@]*@)?", "", url).split("/")[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=10).close()
        return True
    except OSError:
        return False


def _run_builder(builder: dict, work: Path, python: Path) -> None:
    """COPY and RUN of the builder stage, with its absolute paths moved under ``work``."""
    def here(path: str, cwd: Path) -> Path:
        return work / path.lstrip("/") if path.startswith("/") else cwd / path

    env = {**os.environ, **env_of(builder), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    cwd = work
    for op, args in builder["steps"]:
        if op == "WORKDIR":
            cwd = here(args, cwd)
            cwd.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(args)
            assert not any(s.startswith("--") for s in sources), f"COPY {args}: flags not simulated"
            target = here(dest, cwd)
            for src in sources:                        # Docker's rules: a directory's
                origin = ROOT / src                    # contents go into dest
                assert origin.exists(), f"COPY {src}: not in the repository"
                if origin.is_dir():
                    shutil.copytree(origin, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                elif dest.endswith("/") or len(sources) > 1 or target.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target / origin.name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target)
        elif op == "RUN":
            argv = shlex.split(args)
            assert argv[0] == "pip", f"RUN {args}: only pip steps are simulated here"
            argv = [str(python), "-m", "pip", *(str(here(a, cwd)) if a.startswith("/") else a
                                                for a in argv[1:])]
            out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                if not _index_reachable():
                    pytest.skip("pip cannot reach the package index to fetch kdns's dependencies: "
                                f"RUN {args} failed\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
                pytest.fail(f"RUN {args} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
        elif op in ("ENV", "ARG", "LABEL"):
            pass
        else:
            pytest.fail(f"{op} in the builder stage: not simulated by this test")


def test_dockerfile_steps_install_and_run(stages, tmp_path):
    builder, final = stages[0], stages[-1]
    build_env = tmp_path / "builder-python"
    runtime = tmp_path / "runtime-python"
    subprocess.run([sys.executable, "-m", "venv", str(build_env)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(runtime)], check=True, timeout=300)
    _run_builder(builder, tmp_path / "builder", build_env / "bin" / "python")

    # COPY --from=builder /install /usr/local: the venv plays /usr/local, the base's prefix
    # (same layout: bin/, lib/python3.X/site-packages/).
    for args in steps(final, "COPY"):
        src, dest = shlex.split(args)[1:]
        assert dest == "/usr/local", f"COPY {args}: expected the prefix to land in /usr/local"
        shutil.copytree(tmp_path / "builder" / src.lstrip("/"), runtime, dirs_exist_ok=True)
    site = next(runtime.glob("lib/python3.*/site-packages"))
    assert (site / "kdns" / "zones" / "cluster.yaml").exists(), "the embedded cluster ships in the wheel"
    assert not (site / "tests").exists()

    # ENTRYPOINT + a CMD with the embedded manifests instead of --in-cluster (no API here).
    workdir = tmp_path / "empty-cwd"
    workdir.mkdir()
    argv = [str(runtime / "bin" / "python"), *ENTRYPOINT[1:],
            "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--lameduck", "0",
            "--resolv-conf", ""]   # never the machine's resolvers from a test
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(env_of(final))
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        log, dns_port, http_port = "", None, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (dns_port and http_port):
            line = proc.stdout.readline()
            if not line:
                break
            log += line
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                dns_port = int(m.group(1))
            if m := re.search(r"http on 127\.0\.0\.1:(\d+)", line):
                http_port = int(m.group(1))
        assert dns_port and http_port, f"kdns from the image did not start:\n{log}"
        assert str(site) in subprocess.run(
            [argv[0], "-c", "import kdns; print(kdns.__file__)"], cwd=workdir, env=env,
            capture_output=True, text=True, timeout=60).stdout, "kdns must come from the installed prefix"
        q = dns.message.make_query("webapp.default.svc.cluster.local.", "A")
        resp = dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=5)
        assert resp.rcode() == dns.rcode.NOERROR
        assert [r.address for r in resp.answer[0]] == ["10.96.45.200"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as r:
            assert (r.status, r.read()) == (200, b"OK")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            assert b"kdns_dns_requests_total" in r.read()
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
