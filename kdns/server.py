"""The UDP transport and the hot path (TCP connections are kdns.tcp's; it hands us messages).

The hot path is a packet cache (kdns.packetcache): the key is the query after its 2-byte ID
(flags, question as sent, EDNS), the value is the response after its ID. An entry lives as long
as the data it was read from: a new snapshot drops only the answers whose Service, namespace,
PTR entry or pod it changed (Holder.changes), so a live cluster's churn does not empty it. A hit
costs one dict lookup and a slot in the next sendmmsg; a miss is parsed and answered on raw bytes
(kdns.rawwire, kdns.wire), a few microseconds, with no dnslib.

Queries are counted in plain ints (kdns.metrics.QueryStats): a cache entry carries its stats
cell, so a hit costs one more list increment and never a prometheus call or a lock.

Each UDP socket has its own thread (it keeps watch JSON and HTTP off the loop's thread) running
a blocking loop that takes up to --udp-batch queries per recvmmsg and sends their answers with one
sendmmsg (kdns.mmsg): the socket wrappers of a recvfrom/sendto loop cost CPython ~2 µs per query,
more than everything else on the hit path, and batching measured 1.4x its QPS here. Where recvmmsg
is missing (not Linux, 32-bit) the loop is one recvfrom/sendto per query, as fast as uvloop.
Anything that waits on the network (forwarding, ExternalName chases) is handed to the forwarder
(kdns.forward: one reactor thread, no thread per waiting query), so the loop never blocks; its
answer goes out later with a plain sendto. Whether a client may recurse (--allow) is asked before
any forwarded answer is served, memoised or not.
"""

from __future__ import annotations

import logging
import socket
import threading
from time import perf_counter

from kdns import answer as ans
from kdns import direct, mmsg, rewrite, sockets, tcp, wire
from kdns.metrics import QueryStats
from kdns.badinput import BadInputLog
from kdns.packetcache import PacketCache, evict_oldest, rotated
from kdns.snapshot import Holder, Snapshot

log = logging.getLogger("kdns.server")

MAX_TCP_MESSAGE = 65535


class Server:
    def __init__(self, holder: Holder, listen: tuple[tuple[str, int], ...], cache_size: int = 20000,
                 forwarder=None, batch: int = 64, loadbalance: bool = True,
                 rewrites: rewrite.Rules = rewrite.Rules(),
                 tcp_limits: tcp.Limits = tcp.Limits()):
        self.holder = holder
        self.tcp_limits = tcp_limits
        self.tcp: tcp.TCPServer | None = None
        self.batch = batch        # datagrams per recvmmsg/sendmmsg (Config checks 1-1024); 1 = recvfrom
        self.listen = listen
        self.cache_size = max(1, cache_size)
        self.forwarder = forwarder
        self.cache = PacketCache(holder, self.cache_size)
        self.loadbalance = loadbalance          # rotate A/AAAA RRsets between answers
        self.rewrites = rewrites                # --rewrite-name/--rewrite-suffix
        self._turn = 0                          # the rotation of uncached (TCP) answers
        self._forward_memo: dict = {}           # query after ID -> (reply after ID, valid until, cell)
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.stats = QueryStats()
        self._listeners: dict = {}              # socket -> its kdns.metrics.Listener
        self.bad = BadInputLog(log)

    # ------------------------------------------------------------------ lifecycle
    def bind(self) -> list[tuple[str, int]]:
        """Open every socket (UDP and TCP per listen address); returns the bound addresses.
        A sockets.ListenError says which address failed and what to do."""
        self._udp, self._tcp, bound = sockets.open_listeners(self.listen)
        for udp, (host, port) in zip(self._udp, bound):
            self._listeners[udp] = self.stats.listen("udp", host, port)
            self.stats.listen("tcp", host, port)
        return bound

    def start(self) -> None:
        loop = self._udp_batch_loop if self.batch > 1 and mmsg.available() else self._udp_loop
        for sock in self._udp:
            self._spawn(loop, sock, f"kdns-udp-{sock.getsockname()[1]}")
        if self._tcp:
            self.tcp = tcp.TCPServer(self._tcp, lambda data, local, peer: self._tcp_respond(data, local, peer),
                                     self.tcp_limits)
            self.tcp.start()

    def _spawn(self, target, sock, name) -> None:
        t = threading.Thread(target=target, args=(sock,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        self._stopping.set()
        if self.tcp is not None:
            self.tcp.close()
        for sock in self._udp + self._tcp:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self.forwarder is not None:
            self.forwarder.close()

    def cache_entries(self) -> int:
        return len(self.cache.entries)

    def cache_cells(self) -> list:
        return [entry[1] for entry in list(self.cache.entries.values())]

    # ------------------------------------------------------------------ UDP
    def _udp_loop(self, sock: socket.socket) -> None:
        """One recvfrom and one sendto per query: the portable loop (and --udp-batch 1)."""
        recvfrom, sendto, holder = sock.recvfrom, sock.sendto, self.holder
        cache = self.cache
        gen, lookup = None, cache.entries.get
        listener = self.stats.enter(self._listeners[sock])
        hits = listener.hit
        while True:
            try:
                data, addr = recvfrom(4096)
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            start = perf_counter()
            snap = holder.current
            if snap is not gen:
                cache.sync(snap)                 # drop what the new snapshot changed
                gen = snap
            hit = lookup(data[2:])
            if hit is not None:
                hit[1][hits] += 1                # [response after the ID, stats cell, deps, rotation]
                packet = data[:2] + (hit[0] if hit[3] is None else rotated(hit))
            else:
                packet = self._udp_miss(sock, data, snap, lambda a=addr: a)
                if packet is None:
                    continue
            try:
                sendto(packet, addr)
            except OSError:
                pass
            listener.one(start)

    def _udp_batch_loop(self, sock: socket.socket) -> None:
        """The same as _udp_loop, up to --udp-batch queries per recvmmsg and answers per
        sendmmsg (kdns.mmsg). Each answer is written over its own query in the arena, after
        the ID it shares with it, and sent from there; a query without an answer to send now
        (dropped, or forwarded and answered later from a worker) splits the sendmmsg run."""
        batch = mmsg.Batch(sock, self.batch)
        view, lengths, out_lengths, peer = batch.slots, batch.lengths, batch.out_lengths, batch.peer
        listener = self.stats.enter(self._listeners[sock])
        recv, send, slot, hits = batch.recv, batch.send, mmsg.SLOT, listener.hit
        holder, stopping = self.holder, self._stopping.is_set
        cache = self.cache
        gen, lookup = None, cache.entries.get
        while True:
            try:
                n = recv()
            except OSError:
                if stopping():
                    return
                continue
            if stopping():
                return                           # shutdown() wakes recvmmsg with empty datagrams
            start = perf_counter()               # the batch is timed once, for each of its queries
            snap = holder.current                # one snapshot for the whole batch
            if snap is not gen:
                cache.sync(snap)                 # drop what the new snapshot changed
                gen = snap
            first, i, at = 0, -1, -slot
            for size in lengths[:n].tolist():
                i += 1
                at += slot
                hit = lookup(view[at + 2:at + size].tobytes())
                if hit is not None:
                    hit[1][hits] += 1            # [response after the ID, stats cell, deps, rotation]
                    tail = hit[0] if hit[3] is None else rotated(hit)
                    end = at + 2 + len(tail)
                    view[at + 2:end] = tail
                else:
                    packet = self._udp_miss(sock, view[at:at + size].tobytes(), snap,
                                            lambda i=i: peer(i))
                    if packet is None or len(packet) > slot:
                        if packet is not None:
                            self._udp_send(sock, packet, peer(i))
                        if i > first:
                            send(first, i - first)
                        first = i + 1
                        continue
                    end = at + len(packet)
                    view[at:end] = packet
                out_lengths[i] = end - at
            if n > first:
                send(first, n - first)
            listener.done(n, start)

    def _udp_miss(self, sock, data: bytes, snap: Snapshot, peer) -> bytes | None:
        """A query the packet cache does not hold: a memoised forwarded reply, else the full
        path. ``peer()`` gives the sender, asked for only when an answer may come later from a
        worker. Returns the packet to send now, or None."""
        forwarder = self.forwarder
        if forwarder is not None:
            # The same question within the same second of a forwarding-cache entry's life gets
            # byte-identical TTLs, so the patched reply is memoised until then (exact: no TTL is
            # ever served longer than it counts).
            key = data[2:]
            memo = self._forward_memo.get(key)
            if memo is not None and memo[1] > forwarder.clock() and forwarder.allows(peer()):
                memo[2][self.stats.computed_slot()] += 1
                return data[:2] + memo[0]
        try:
            return self._respond(data, snap, self.cache, tcp=False,
                                 reply=lambda p, addr: self._udp_send(sock, p, addr), peer=peer)
        except Exception as e:                   # a bad packet must never kill the loop
            self.bad.exception("answering a UDP query", e)
            return None

    @staticmethod
    def _udp_send(sock: socket.socket, packet: bytes, addr) -> None:
        try:
            sock.sendto(packet, addr)
        except OSError:
            pass

    # ------------------------------------------------------------------ the miss path
    def _respond(self, data: bytes, snap: Snapshot, cache: PacketCache | None, tcp: bool,
                 reply, peer) -> bytes | None:
        """Answer one query; ``peer()`` gives its sender's socket address, asked for only on
        the way to the forwarder (reading it costs a miss ~1 us). Returns the packet, or None
        when dropped or answered later via ``reply(packet, sender)`` (forwarding). Cacheable
        answers go into ``cache``."""
        start = perf_counter()
        transport = "tcp" if tcp else "udp"
        try:
            query = wire.decode(data)
        except wire.Drop:
            self.stats.drop()
            return None
        except wire.Reject as rej:
            if rej.why:
                self.bad.packet(rej.why)
            self.stats.computed(rej.packet, transport, data)
            return rej.packet
        if cache is not None and query.cookie:
            # The query carried a COOKIE option: its key without it may be cached already.
            hit = cache.entries.get(query.packet_key)
            if hit is not None:
                hit[1][self.stats.current("udp").hit] += 1
                return data[:2] + (hit[0] if hit[3] is None else rotated(hit))
        forwarder = self.forwarder
        # A stub domain inside a served zone (--forward-inside-cluster-zone): its names are the
        # stub's, never the cluster data's (asked only when there is such a zone).
        inside = forwarder is not None and forwarder.inside is not None \
            and forwarder.inside(query.name)
        if cache is not None and not self.rewrites and not inside:
            # The common miss (A/AAAA of a Service or endpoint), written straight to bytes.
            got = direct.address(snap, query, wire.udp_limit(query))
            if got is not None:
                packet, rcode, deps, records = got
                denial = rcode == ans.NXDOMAIN or (rcode == ans.NOERROR and not records)
                cell = self.stats.computed_local(query.qtype, rcode, denial, len(data),
                                                 len(packet), transport)
                self.stats.observe(perf_counter() - start)
                run = records if self.loadbalance and records > 1 else 0
                cache.put(query.packet_key, packet[2:], cell, deps, snap.version,
                          _rotation(query, run))
                return packet
        try:
            if inside:
                resp = ans.Response(ans.NOERROR, authoritative=False, forward=True)
            elif self.rewrites:
                resp = rewrite.answer(snap, query.qname, query.qtype, self.rewrites)
            else:
                resp = ans.answer(snap, query.qname, query.qtype)
        except Exception as e:
            self.bad.exception("answering", e, query.qname)
            return self._counted(wire.servfail(query), transport, data)
        limit = MAX_TCP_MESSAGE if tcp else wire.udp_limit(query)
        if forwarder is not None and (resp.forward or resp.chase or resp.fallthrough) and \
                forwarder.takes(resp.chase[0] if resp.chase and not resp.forward else query.name):
            client = peer()
            if forwarder.admits(client, query.name):
                if not tcp and resp.forward:
                    # The forwarding cache, asked only once the name is known to be outside our
                    # zones (an in-zone miss never pays for a second parse).
                    hit = forwarder.cached_until(data, client)
                    if hit is not None:
                        packet, until = hit
                        if len(self._forward_memo) >= self.cache_size:
                            evict_oldest(self._forward_memo)
                        self._forward_memo[data[2:]] = (packet[2:], until,
                                                        self.stats.computed(packet, "udp", data))
                        return packet
                return self._forward(data, query, resp, limit, tcp, client, reply, transport)
            # Outside --allow: the answer kdns gives without an upstream (REFUSED, the CNAME
            # alone, its own NXDOMAIN), for this client only.
            cache = None
        if resp.forward:
            resp = ans.Response(ans.REFUSED, authoritative=False)   # no upstream configured
        run = self._rotatable(query, resp)
        if run and cache is None:
            self._turn += 1                      # uncached: rotate the records themselves
            turn = self._turn % run
            resp.answer = resp.answer[turn:] + resp.answer[:turn]
        packet = wire.encode(query, resp, limit)
        cell = self.stats.computed(packet, transport, data)
        self.stats.observe(perf_counter() - start)
        if cache is not None:
            # A truncated answer is not rotated.
            cache.put(query.packet_key, packet[2:], cell, resp.deps, snap.version,
                      _rotation(query, 0 if packet[2] & 0x02 else run))
        return packet

    def _rotatable(self, query: wire.Query, resp: ans.Response) -> int:
        """The number of records to rotate: an answer of several A (or AAAA) records owned by
        the question itself (so each is a fixed-size, position-independent RR), else 0."""
        answer = resp.answer
        if not self.loadbalance or len(answer) < 2 or query.qtype not in (ans.A, ans.AAAA):
            return 0
        qname, qtype = query.qname, query.qtype
        for owner, rtype, _, _ in answer:
            if rtype != qtype or owner != qname:
                return 0
        return len(answer)

    def _counted(self, packet: bytes, transport: str, data: bytes | None = None) -> bytes:
        self.stats.computed(packet, transport, data)
        return packet

    def _forward(self, data: bytes, query: wire.Query, resp: ans.Response, limit: int, tcp: bool,
                 client, reply, transport: str) -> bytes | None:
        """Answers that need an upstream: forwarded names, ExternalName chases, PTR fallthrough.
        UDP: handed to the forwarder, answered now (cache hit, shed) or later through ``reply``;
        TCP: the connection's own thread waits."""
        fwd = self.forwarder
        if tcp:
            packet = (fwd.chase(query, resp, limit, client) if resp.chase and not resp.forward
                      else fwd.forward(data, True, client))
            return self._counted(packet or wire.servfail(query), transport, data)

        # Answered later, on the forwarder's thread: timed from now, out of its batch's time.
        listener, begun = self.stats.current("udp"), perf_counter()

        def later(packet: bytes) -> None:
            self.stats.enter(listener)
            try:
                self.stats.computed(packet, "udp", data)
                reply(packet, client)            # _udp_send: a failed send is dropped there
            finally:
                listener.one(begun)
        if resp.forward or resp.fallthrough:
            packet = fwd.submit(data, client, False, later)
        else:
            packet = fwd.submit_chase(query, resp, limit, client, later)
        if packet is None:
            listener.skipped += 1
            return None
        return self._counted(packet, transport, data)

    # ------------------------------------------------------------------ TCP
    def _tcp_respond(self, data: bytes, local: tuple, peer: tuple) -> bytes | None:
        """One message off a TCP connection accepted on ``local`` (kdns.tcp owns the
        connections and their limits; this runs on one of its workers)."""
        try:
            listener = self.stats.enter(self.stats.listener("tcp", *local))
            start = perf_counter()
            packet = self._respond(data, self.holder.current, None, tcp=True, reply=None,
                                   peer=lambda: peer)
            if packet is not None:
                listener.one(start)
            return packet
        except Exception as e:
            self.bad.exception("answering a TCP query", e)
            return None


def _rotation(query: wire.Query, run: int) -> tuple[int, int, int] | None:
    """Where a packet-cache entry's run of ``run`` rotatable A/AAAA records sits in the response
    after its ID: (start, end, record size); None when there is nothing to rotate."""
    if not run:
        return None
    size = 16 if query.qtype == ans.A else 28
    first = len(query.question) + 10     # the answer section, after the ID
    return (first, first + run * size, size)
