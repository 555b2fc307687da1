"""The kdns command line: the subcommands and their dispatch; wiring only, no DNS or Kubernetes
logic (serve: kdns.serve, kdns.serveflags; env, compare, explain: their own modules)."""

from __future__ import annotations

import argparse
import sys

from kdns import __version__, compare, envcli, explaincli, logs, serveargs, serveflags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdns", description="Cluster DNS for Kubernetes Service discovery")
    parser.add_argument("--version", action="version", version=f"kdns {__version__}")
    logs.add_log_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="answer DNS for a cluster over UDP and TCP")
    serveflags.add_serve_args(s)
    logs.add_log_args(s)
    logs.add_log_args(envcli.add_parser(sub))
    logs.add_log_args(compare.add_parser(sub))
    logs.add_log_args(explaincli.add_parser(sub))
    c = sub.add_parser("corefile", help="print the kdns serve command line a Corefile means")
    c.add_argument("file", metavar="FILE")
    logs.add_log_args(c)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "corefile":
        return serveargs.print_corefile(args.file)
    if args.command == "serve":
        if args.corefile or args.kube_dns_configmap:
            args = serveargs.with_translation(args, list(sys.argv[1:] if argv is None else argv),
                                              build_parser)
            if args is None:
                return 2
        from kdns.serve import serve      # the server's imports only when serving
        return serve(args)
    if args.command == "env":
        return envcli.run(args)
    if args.command == "compare":
        return compare.run(args, envcli.load_cluster)
    if args.command == "explain":
        return explaincli.run(args)
    return 2
