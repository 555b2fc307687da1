"""python -m kdns.bench.nocount serve ...: `kdns serve` with the hot path's counting and timing
taken out, for the benchmark's metrics-cost row only (kdns.bench.overhead). Never shipped, never
documented as a kdns flag.

Rather than a switch in the UDP loops (a branch per batch, and one more thing to keep right) or a
copy of them (which would drift from the real ones), it recompiles the server's own two loops
from their source with the counting statements replaced by ``pass``: the per-batch clock read
(``start = perf_counter()``), the per-hit cell increment (``hit[1][hits] += 1``) and the per-batch
histogram update (``listener.done`` / ``listener.one``). Each must be found exactly as many times
as expected, or this exits 2 naming what it did not find, so the row can never silently measure
a loop that still counts. The miss path's counting (``stats.computed``) stays: a hot run answers
from the packet cache after its warm-up.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap

from kdns import server

# Per loop: (statement, how many times it must occur). Matched as whole statements, comment
# allowed after, so the real lines and nothing else are replaced.
COUNTING = {
    "_udp_batch_loop": (("start = perf_counter()", 1), ("hit[1][hits] += 1", 1),
                        ("listener.done(n, start)", 1)),
    "_udp_loop": (("start = perf_counter()", 1), ("hit[1][hits] += 1", 1),
                  ("listener.one(start)", 1)),
}


class Mismatch(Exception):
    pass


def strip(source: str, statements) -> str:
    """``source`` with each of ``statements`` (a line of its own, maybe a comment after)
    replaced by ``pass`` at the same indentation; Mismatch when a count differs."""
    for statement, expected in statements:
        pattern = re.compile(r"^(?P<indent>[ \t]*)" + re.escape(statement) + r"[ \t]*(#.*)?$", re.M)
        found = len(pattern.findall(source))
        if found != expected:
            raise Mismatch(f"expected {statement!r} {expected}x in the loop, found it {found}x")
        source = pattern.sub(lambda m: m.group("indent") + "pass", source)
    return source


def install() -> None:
    """Replace Server's UDP loops with their counting-free versions."""
    for name, statements in COUNTING.items():
        source = strip(textwrap.dedent(inspect.getsource(getattr(server.Server, name))), statements)
        scope: dict = {}
        exec(compile(source, f"<kdns.bench.nocount {name}>", "exec"), vars(server), scope)
        setattr(server.Server, name, scope[name])


def main(argv: list[str] | None = None) -> int:
    try:
        install()
    except (Mismatch, OSError, TypeError) as exc:
        print(f"kdns.bench.nocount: the server's UDP loops changed ({exc}); update "
              "kdns/bench/nocount.py's COUNTING", file=sys.stderr)
        return 2
    from kdns.cli import main as kdns_main
    return kdns_main(argv)


if __name__ == "__main__":
    sys.exit(main())
