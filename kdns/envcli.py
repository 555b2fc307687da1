"""`kdns env`: print (or run a command with) the Service env vars a pod would get.

Wiring only: read the source (manifests, the embedded zones/, or the API), read the --pod file,
hand everything to kdns.env, print in the asked format or exec the command.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import os
import re
import shlex
import sys
from typing import Any, Sequence

from kdns import env
from kdns.config import add_source_args, uses_api
from kdns.objects import Cluster, EnvVar, FieldError, pod_from_dict
from kdns.sources import controllers, manifests, workloads

FORMATS = ("env", "shell", "json")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UsageError(Exception):
    """A problem with the command line or an input file; each line is printed, exit 2."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "env", help="print the Service environment variables a pod would get",
        description="Print the Service environment variables the kubelet injects into a "
                    "container (<SVC>_SERVICE_HOST, <SVC>_PORT_..., ...), from the same sources "
                    "`kdns serve` reads, or run a command with them (after --).",
        epilog="Order: the container's env in declaration order, then one block per Service "
               "sorted by name. Warnings (collisions, unknown namespace) go to stderr.")
    p.add_argument("--namespace", "-n", metavar="NS",
                   help="the pod's namespace (default: the --pod file's, else 'default')")
    add_source_args(p, watch=False)
    p.add_argument("--pod", metavar="FILE",
                   help="a Pod manifest: namespace, enableServiceLinks and the container's env")
    p.add_argument("--workload", metavar="KIND/NAME",
                   help="as --pod, with the pod a workload in the manifests makes (deployment/web, "
                        "statefulset/db, daemonset/x, replicaset/x, job/x), in --namespace")
    p.add_argument("--container", metavar="NAME", help="which container of --pod")
    p.add_argument("--no-service-links", action="store_true",
                   help="enableServiceLinks: false (only the kubernetes Service's variables)")
    p.add_argument("--format", choices=FORMATS, default="env",
                   help="env: NAME=VALUE lines (default); shell: for eval; json: one object")
    p.add_argument("--sort", action="store_true", help="sort by name (bytewise), like `env | sort`")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when the namespace does not exist in the source (default: a warning)")
    # dest is not "command": the top-level parser keeps the subcommand's name there.
    p.add_argument("exec_command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="run CMD with the current environment plus these variables")
    return p


def run(args: argparse.Namespace) -> int:
    derived: list = []
    try:
        command = _command(args.exec_command)
        cluster = _cluster(args, derived)
        namespace, links, container_env = _pod_inputs(args, derived[0] if derived else None)
    except UsageError as exc:
        for line in exc.lines:
            print(f"kdns env: {line}", file=sys.stderr)
        return 2
    except manifests.ManifestError as exc:
        # The same lines as `kdns serve` prints for the same files.
        for line in exc.problems:
            print(f"kdns: {line}", file=sys.stderr)
        print(f"kdns: {len(exc.problems)} problem(s) in the manifests; nothing printed",
              file=sys.stderr)
        return 2
    result = env.compute(cluster.services.values(), namespace, links, container_env,
                         known_namespaces=cluster.namespaces.keys() or None, sort=args.sort)
    for warning in result.warnings:
        print(f"kdns env: warning: {warning}", file=sys.stderr)
    if args.strict and _unknown(namespace, cluster):
        print(f"kdns env: namespace {namespace!r} does not exist in the source (--strict)", file=sys.stderr)
        return 1
    if command:
        return _exec(command, result.variables)
    if args.format == "shell":
        for name, _ in result.variables:
            if not _SHELL_NAME.match(name):
                print(f"kdns env: warning: {name} is not a shell variable name: left out of "
                      f"--format shell (use -- CMD to pass it)", file=sys.stderr)
    _write(format_variables(result.variables, args.format))
    return 0


def _unknown(namespace: str, cluster: Cluster) -> bool:
    """As env.compute's warning: a namespace no Namespace object names and no Service lives in."""
    known = set(cluster.namespaces) | {svc.namespace for svc in cluster.services.values()}
    return bool(known) and namespace not in known


def load_cluster(args: argparse.Namespace) -> Cluster | None:
    """The source's Cluster for another subcommand (`kdns compare`), its problems printed as
    `kdns env` prints them; None when it cannot be read."""
    args = argparse.Namespace(**{"pod": None, "workload": None, **vars(args)})
    try:
        return _cluster(args, [])
    except UsageError as exc:
        for line in exc.lines:
            print(f"kdns: {line}", file=sys.stderr)
    except manifests.ManifestError as exc:
        for line in exc.problems:
            print(f"kdns: {line}", file=sys.stderr)
        print(f"kdns: {len(exc.problems)} problem(s) in the manifests", file=sys.stderr)
    return None


def format_variables(variables: Sequence[tuple[str, str]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(dict(variables), indent=2, ensure_ascii=False) + "\n"
    if fmt == "shell":
        # Single quotes take every byte literally, so eval cannot expand or split anything.
        return "".join(f"export {name}={shlex.quote(value)}\n"
                       for name, value in variables if _SHELL_NAME.match(name))
    return "".join(f"{name}={value}\n" for name, value in variables)


def _write(text: str) -> None:
    # surrogateescape: a value can hold the exact non-UTF-8 bytes the kubelet would produce.
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()


def _command(rest: list[str]) -> list[str]:
    if not rest:
        return []
    if rest[0] != "--":
        raise UsageError(f"unexpected argument {rest[0]!r}: put the command to run after --, "
                         f"e.g. kdns env -- ./my-app")
    if len(rest) == 1:
        raise UsageError("-- must be followed by a command to run")
    return rest[1:]


def _cluster(args: argparse.Namespace, derived: list) -> Cluster:
    try:
        net = ipaddress.ip_network(args.service_cidr, strict=False)
        derive = workloads.Options.from_args(args)
    except ValueError as exc:
        if "--pod-cidr" in str(exc):
            raise UsageError(str(exc)) from None
        raise UsageError(f"--service-cidr {args.service_cidr!r}: not a CIDR") from None
    if args.pod is not None and args.workload is not None:
        raise UsageError("--pod and --workload both give the pod: give one")
    api = uses_api(args)
    if api:
        if args.manifests:
            raise UsageError("--manifests and --kubeconfig/--context/--in-cluster are two "
                             "different sources: give one")
        if args.workload is not None:
            raise UsageError("--workload reads the workload from --manifests; with the API "
                             "source, give the pod with --pod")
        return _list_cluster(args)
    if args.manifests:
        paths = args.manifests
    else:
        try:
            paths = manifests.default_paths()
        except (ModuleNotFoundError, OSError):
            raise UsageError("no --manifests given and the embedded example cluster "
                             "(zones/cluster.yaml) is not installed") from None
    return manifests.load(paths, str(net), derive=derive, derived=derived)


def _list_cluster(args: argparse.Namespace) -> Cluster:
    try:
        # Imports `kubernetes` (slow, and optional for manifest users): only when asked for.
        api_source = importlib.import_module("kdns.sources.cluster")
    except ModuleNotFoundError as exc:
        if exc.name not in ("kdns.sources.cluster", "kubernetes"):
            raise
        raise UsageError("the Kubernetes API source is not available in this build of kdns "
                         f"({exc.name} is missing); use --manifests") from None
    list_cluster = getattr(api_source, "list_cluster", None)
    if list_cluster is None:
        raise UsageError("the Kubernetes API source has no list_cluster(); use --manifests")
    try:
        return list_cluster(kubeconfig=args.kubeconfig, context=args.context,
                            in_cluster=args.in_cluster)
    except Exception as exc:       # the API source's own errors: one line, never a traceback
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"cannot list Services from the cluster: {text}") from None


_WORKLOAD_KINDS = {"deployment": "Deployment", "deploy": "Deployment", "statefulset": "StatefulSet",
                   "sts": "StatefulSet", "daemonset": "DaemonSet", "ds": "DaemonSet",
                   "replicaset": "ReplicaSet", "rs": "ReplicaSet", "job": "Job"}


def _workload_pod(args: argparse.Namespace, derived) -> tuple[str, dict]:
    """The first pod (lowest ordinal) the named workload makes, as a Pod manifest."""
    kind_text, _, name = args.workload.partition("/")
    kind = _WORKLOAD_KINDS.get(kind_text.lower())
    if kind is None or not name:
        raise UsageError(f"--workload {args.workload!r}: give KIND/NAME, KIND one of "
                         f"deployment, statefulset, daemonset, replicaset, job")
    ns = args.namespace or "default"
    known = derived.workloads if derived is not None else {}
    if (kind, ns, name) not in known:
        have = sorted(f"{k.lower()}/{n}" for k, n2, n in known if n2 == ns)
        raise UsageError(f"--workload {args.workload}: no {kind} {name!r} in namespace {ns} in the "
                         f"manifests" + (f"; it has: {', '.join(have)}" if have else ""))
    pods = sorted((p for p in derived.pods.values() if p.owner == (kind, ns, name)),
                  key=lambda p: p.ordinal)
    if not pods:
        raise UsageError(f"--workload {args.workload}: {kind} {ns}/{name} makes no pods (0 replicas)")
    return f"{kind} {ns}/{name} (pod {pods[0].name})", controllers.pod_document(pods[0])


def _pod_inputs(args: argparse.Namespace, derived=None) -> tuple[str, bool, tuple[EnvVar, ...]]:
    """The pod's namespace, enableServiceLinks and the chosen container's env."""
    if args.namespace is not None and (not _DNS1123_LABEL.match(args.namespace)
                                       or len(args.namespace) > 63):
        raise UsageError(f"--namespace {args.namespace!r}: not a namespace name (DNS-1123 label)")
    if args.pod is None and args.workload is None:
        if args.container is not None:
            raise UsageError("--container needs --pod or --workload")
        return args.namespace or "default", not args.no_service_links, ()

    where, doc = _read_pod(args.pod) if args.pod is not None else _workload_pod(args, derived)
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    try:
        pod = pod_from_dict(doc, with_env=True)
    except FieldError as exc:
        raise UsageError(f"{where}: Pod/{meta.get('namespace') or 'default'}/"
                         f"{meta.get('name') or '?'}: field {exc.path}: {exc.message}") from None
    namespace = pod.namespace
    if args.namespace is not None:
        if meta.get("namespace") and args.namespace != pod.namespace:
            raise UsageError(f"--namespace {args.namespace} does not match the namespace "
                             f"{pod.namespace} of Pod {pod.name} in {args.pod or where}")
        namespace = args.namespace
    links = pod.enable_service_links and not args.no_service_links

    containers = pod.containers
    names = [c.name for c in containers]
    if args.container is not None:
        if args.container not in names:
            raise UsageError(f"--container {args.container}: Pod {pod.namespace}/{pod.name} has "
                             f"no such container; it has: {', '.join(names) or 'none'}")
        index = names.index(args.container)
    elif len(containers) > 1:
        raise UsageError(f"Pod {pod.namespace}/{pod.name} has {len(containers)} containers: "
                         f"{', '.join(names)}; pick one with --container")
    elif containers:
        index = 0
    else:
        return namespace, links, ()
    raw = (doc.get("spec") or {}).get("containers")[index]
    if isinstance(raw, dict) and raw.get("envFrom"):
        print(f"kdns env: warning: container {names[index]}: envFrom (ConfigMap/Secret) is not "
              f"modelled; its keys would also hide same-named service variables",
              file=sys.stderr)
    raw_env = raw.get("env") if isinstance(raw, dict) else None
    return namespace, links, _resolve_field_refs(containers[index].env, raw_env or [], doc, namespace)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['([^']*)'\]$")


def _resolve_field_refs(env_vars: tuple[EnvVar, ...], raw_env: list, doc: dict,
                        namespace: str) -> tuple[EnvVar | env.Resolved, ...]:
    """valueFrom.fieldRef paths the pod file itself answers (the downward API's env fields).

    Anything else (configMapKeyRef, secretKeyRef, resourceFieldRef, a status field the file
    lacks) stays unresolved, and kdns.env says so.
    """
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    status = doc.get("status") if isinstance(doc.get("status"), dict) else {}

    def ips(key: str) -> str | None:
        items = status.get(key)
        got = [i.get("ip") for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        return ",".join(got) if got and all(isinstance(g, str) for g in got) else None

    fields = {"metadata.name": meta.get("name"), "metadata.namespace": namespace,
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName"),
              "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
              "status.podIPs": ips("podIPs"), "status.hostIPs": ips("hostIPs")}
    out: list[EnvVar | env.Resolved] = []
    for var, raw in zip(env_vars, raw_env):
        source = raw.get("valueFrom") if var.value is None else None
        ref = source.get("fieldRef") if isinstance(source, dict) else None
        path = ref.get("fieldPath") if isinstance(ref, dict) else None
        value = fields.get(path) if isinstance(path, str) else None
        label = _LABEL_REF.match(path) if isinstance(path, str) else None
        if label:
            # As the kubelet's fieldpath package: a missing key is "".
            table = meta.get(label.group(1))
            value = table.get(label.group(2), "") if isinstance(table, dict) else ""
        out.append(env.Resolved(var.name, value) if isinstance(value, str) else var)
    return tuple(out)


def _read_pod(path: str) -> tuple[str, dict]:
    if not os.path.isfile(path):
        raise UsageError(f"--pod {path}: no such file")
    problems: list[str] = []
    docs = [(str(w), d) for w, d in manifests.read([path], problems)]
    if problems:
        raise UsageError(*problems)
    pods = [(w, d) for w, d in docs if isinstance(d, dict) and d.get("kind") == "Pod"]
    if not pods:
        kinds = sorted({str(d.get("kind") or "no kind") if isinstance(d, dict) else "not a mapping"
                        for _, d in docs})
        found = f"it holds {', '.join(kinds)}" if kinds else "it is empty"
        raise UsageError(f"--pod {path}: not a Pod manifest ({found}); "
                         f"give a file with one object of kind: Pod")
    if len(pods) > 1:
        which = ", ".join(f"{(d.get('metadata') or {}).get('name') or '?'} ({w})" for w, d in pods)
        raise UsageError(f"--pod {path}: holds {len(pods)} Pods: {which}; give a file with one")
    return pods[0]


def _exec(command: list[str], variables: Sequence[tuple[str, str]]) -> int:
    # Service variables replace same-named ones already set, as they replace image ENV in a pod.
    environ = dict(os.environ)
    environ.update(variables)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, environ)
    except FileNotFoundError:
        print(f"kdns env: {command[0]}: command not found", file=sys.stderr)
        return 127
    except (OSError, ValueError) as exc:     # ValueError: a NUL byte in a name or value
        print(f"kdns env: {command[0]}: cannot run: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 126
    return 0   # not reached: exec replaced this process
