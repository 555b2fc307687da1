"""The miss path's CPU in-process: ``python -m kdns.bench.miss``.

dnsperf figures carry the kernel's UDP path and whatever else runs on the two cores; this times
only kdns's own Python for workload (e)'s questions (uniformly random A over every Service and
endpoint name of the generated cluster), through the same call the UDP loop makes on a
packet-cache miss (``Server._respond`` with the server's packet cache, so the doorkeeper and
hits on names asked again are counted as they would be). CPU time (time.process_time) per
query, over chunks of queries: the minimum and the median of the chunks, since the machine is
shared. No sockets: the queries are wire bytes made by dnspython.

    python -m kdns.bench.miss --services 10000 --queries 200000 --chunks 8
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

from kdns import config as kconfig, server as kserver, snapshot
from kdns.bench import cluster as gen, workloads
from kdns.sources import manifests


def measure(services: int, queries: int, chunks: int, seed: int = 1) -> list[float]:
    """µs of CPU per query for each chunk of ``queries`` random cold A questions."""
    import dns.message

    model = gen.generate(services, services * 10)
    with tempfile.TemporaryDirectory(prefix="kdns-miss-") as tmp:
        cluster = manifests.load([str(p) for p in gen.write_manifests(model, Path(tmp))])
    snap = snapshot.build(cluster, kconfig.Config())
    gc.collect()
    gc.freeze()                                   # as kdns serve does once the load settled
    names = workloads.a_names(model)
    rng = random.Random(seed)
    wires = []
    for i in range(queries):
        q = dns.message.make_query(names[rng.randrange(len(names))], "A", use_edns=False)
        q.id = i & 0xFFFF
        wires.append(q.to_wire())
    server = kserver.Server(snapshot.Holder(snap), (), cache_size=kconfig.Config().cache_size)
    cache, respond = server.cache, server._respond
    lookup = cache.entries.get
    peer = lambda: ("127.0.0.1", 53000)           # never read: nothing here is forwarded
    size = max(1, queries // chunks)
    out = []
    for c in range(chunks):
        chunk = wires[c * size:(c + 1) * size]
        begin = time.process_time()
        for wire in chunk:
            if lookup(wire[2:]) is None:          # a hit costs the UDP loop this lookup only
                respond(wire, snap, cache, False, None, peer)
        out.append((time.process_time() - begin) / len(chunk) * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdns.bench.miss", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10000, help="services (10 endpoints each)")
    p.add_argument("--queries", type=int, default=200_000, help="questions asked (default 200,000)")
    p.add_argument("--chunks", type=int, default=8, help="chunks timed separately (default 8)")
    args = p.parse_args(argv)
    per = measure(args.services, args.queries, args.chunks)
    ranked = sorted(per)
    print(f"miss path in-process, {args.services:,} services, {args.queries:,} cold A questions: "
          f"{ranked[0]:.2f} us/query min, {ranked[len(ranked) // 2]:.2f} median over {len(per)} chunks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
