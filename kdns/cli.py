"""Command line: argparse wiring only.

Minimal on the env branch (only `env`); the lead's cli.py with `serve` replaces it, keeping
the two lines that register and dispatch `env`.
"""

from __future__ import annotations

import argparse

from kdns import __version__, envcli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdns", description="Cluster DNS for Kubernetes")
    parser.add_argument("--version", action="version", version=f"kdns {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    envcli.add_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)
