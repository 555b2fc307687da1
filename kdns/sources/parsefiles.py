"""Manifest files -> kdns objects, file by file: the part of a load that scales with the bytes.

``parse_file`` is one file's (where, object) pairs, problems and skipped kinds, all picklable:
past PARALLEL_BYTES, ``parse_files`` hands the files to worker processes.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from kdns import objects, selector
from kdns.objects import FieldError, short
from kdns.sources import workloads
from kdns.sources.documents import _describe, _fast_documents, _short

log = logging.getLogger("kdns.manifests")

PARALLEL_BYTES = 8 << 20       # this much YAML/JSON to read is parsed in worker processes
MAX_WORKERS = 8

_PARSERS: dict[str, Callable[[Any], Any]] = {
    # A Service and a Pod also give what the EndpointSlice controller reads of them (selector,
    # targetPorts; labels, container ports), for controllers.derive.
    "Service": lambda doc: [objects.service_from_dict(doc), *workloads.selector_from_dict(doc)],
    "EndpointSlice": objects.endpointslice_from_dict,
    "Endpoints": objects.endpoints_from_dict,
    "Namespace": objects.namespace_from_dict,
    "Pod": lambda doc: [objects.pod_from_dict(doc), *workloads.readable(workloads.bare_pod_from_dict, doc)],
    **{kind: (lambda doc: workloads.readable(workloads.workload_from_dict, doc))
       for kind in workloads.WORKLOAD_KINDS},
}


def _parse_file(path: Path, labels: str | None = None) -> tuple[list, list[str], dict[str, int]]:
    """One file: its (where, object) pairs, its problems, the kinds it skipped (picklable, for
    the worker processes of _parse_files)."""
    problems: list[str] = []
    skipped: dict[str, int] = {}
    try:
        return list(_file_objects(path, problems, skipped, labels)), problems, skipped
    except RecursionError:               # whichever decoder or walk met it: a problem, not a crash
        return [], problems + [f"{path}: does not parse: nested too deep"], skipped
    except ValueError as exc:            # a decoder's own error type, not one listed above
        return [], problems + [f"{path}: does not parse: {_short(' '.join(str(exc).split()))}"], skipped


def _parse_files(paths: list[Path], stamps: dict,
                 labels: str | None = None) -> list[tuple[list, list[str], dict[str, int]]]:
    """_parse_file of each path, in order. Parsing YAML is CPU-bound (libyaml composes, PyYAML's
    Python constructors build: ~30 s for a 10,000-Service dump on one core), so past
    PARALLEL_BYTES the files are shared out to worker processes (``python -c``, never a fork: a
    reload runs beside threads; not multiprocessing, whose spawn re-runs the caller's main
    module) and their objects come back pickled, a few percent of the parse."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                  len(paths), MAX_WORKERS)
    size = sum(stamps[p][1] for p in paths if stamps.get(p))
    if workers > 1 and size >= PARALLEL_BYTES:
        try:
            return _in_workers(paths, stamps, workers, labels)
        except (OSError, EOFError, pickle.UnpicklingError, subprocess.SubprocessError) as exc:
            log.warning("parsing the manifests in %d processes failed (%s); parsing them here",
                        workers, exc)
    return [_parse_file(p, labels) for p in paths]


def _in_workers(paths: list[Path], stamps: dict, workers: int, labels: str | None = None) -> list:
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for i in sorted(range(len(paths)), key=lambda i: -(stamps.get(paths[i]) or (0, 0))[1]):
        w = loads.index(min(loads))                    # biggest file to the least loaded worker
        shares[w].append(i)
        loads[w] += (stamps.get(paths[i]) or (0, 0))[1]
    root = str(Path(objects.__file__).resolve().parent.parent)   # the kdns being run
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))))
    procs = [subprocess.Popen([sys.executable, "-c", "from kdns.sources.parsefiles import _worker; _worker()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
             for _ in shares]
    results: list = [None] * len(paths)
    try:
        for proc, share in zip(procs, shares):
            proc.stdin.write(pickle.dumps(([paths[i] for i in share], labels)))
            proc.stdin.close()
        for proc, share in zip(procs, shares):
            for i, result in zip(share, pickle.load(proc.stdout)):
                results[i] = result
            if proc.wait(timeout=60) != 0:
                raise subprocess.SubprocessError(f"worker exited with {proc.returncode}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _worker() -> None:
    """A worker process of _in_workers: paths in (pickled, on stdin), results out (stdout)."""
    paths, labels = pickle.load(sys.stdin.buffer)
    pickle.dump([_parse_file(p, labels) for p in paths], sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


def _file_objects(path: Path, problems: list[str], skipped: dict[str, int],
                  labels: str | None = None) -> Iterator[tuple[Any, Any]]:
    """(where, object) for every object kdns serves in one file; problems named as load's."""
    selected = selector.parse(labels) if labels else None
    for where, doc in _fast_documents(path, problems):
        if not isinstance(doc, dict):
            problems.append(f"{where}: {_describe(doc)}: must be a mapping with apiVersion and kind")
            continue
        kind = doc.get("kind")
        if not kind or not isinstance(kind, str):
            problems.append(f"{where}: {_describe(doc)}: field kind: is required")
            continue
        parse = _PARSERS.get(kind)
        if parse is None:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        if selected is not None and kind == "Service" and not selected(selector.labels_of(doc)):
            continue                         # --labels: as the API's labelSelector would
        if kind == "EndpointSlice" and doc.get("apiVersion") not in (None, "discovery.k8s.io/v1"):
            problems.append(f"{where}: {_describe(doc)}: field apiVersion: EndpointSlice must be "
                            f"discovery.k8s.io/v1, got {short(doc.get('apiVersion'))}")
            continue
        try:
            obj = parse(doc)
        except FieldError as exc:
            problems.append(f"{where}: {_describe(doc)}: field {exc.path}: {exc.message}")
            continue
        for item in obj if isinstance(obj, list) else [obj]:
            yield where, item
