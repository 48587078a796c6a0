"""Connections to known mining pools, by how the pool was known.

Strongest first: the pool named inside the mining protocol (``login``), in the TLS ClientHello
(``sni``: a TLS connection to a pool is encrypted Stratum), in an HTTP Host header
(``http-host``), in a DNS answer the same client received for the address it then connected to
(``dns``), and last the address alone (``ip-list``, low confidence: pools sit behind shared CDNs
and addresses change hands). One alert a flow, the strongest way it was known; the others are in
the evidence. Indicators come from ``signatures/`` (``flowsense.signatures``). Weakest of all,
for what is encrypted and on no list: the ``cadence`` of job pushes and share submits on a
long-lived low-volume flow (``detect.cadence``, lower confidence, the figures as evidence).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import dpkt
import numpy as np

from flowsense.detect import cadence
from flowsense.detect.base import Alert, Detector, Resources, flow_fields, time_at_offset
from flowsense.detect.dns_tunnel import parse_message
from flowsense.detect.kernels import may_name_suffix, pair_keys, pool_picks
from flowsense.detect.stratum import JSON_AFTER_BRACE, pool_names
from flowsense.encoding import wire_text
from flowsense.flows.features import FeatureFrame
from flowsense.flows.ids import addr_text
from flowsense.flows.table import NameSuffixes, WatchRule
from flowsense.signatures import HASH_WEIGHTS, PoolEntry, PoolSet, sorted_members

VARIANTS = {  # category mining-pool: 3400000-3499999; (sid, severity, confidence, signature)
    "login": (3400001, 1, 0.95, "mining pool named in the miner's own protocol"),
    "sni": (3400002, 1, 0.9, "TLS to a known mining pool (encrypted Stratum)"),
    "http-host": (3400003, 1, 0.85, "HTTP to a known mining pool"),
    "dns": (3400004, 1, 0.8, "connection to an address a known mining pool's name resolved to"),
    "ip-list": (3400005, 2, 0.5, "connection to a listed mining pool address"),
    "cadence": (3400006, 2, 0.4, "long-lived flow with the cadence of mining job pushes and "
                                 "share submits"),
}
DNS_CACHE_ENTRIES = 100_000
MAX_SEEN_OPEN = 1_000_000  # DNS flows remembered as read while open (cleared past this)
ANSWER_MEMO = 1024  # DNS lookups (without their ids) remembered with their answers (<= 1 MiB)
_HTTP_FIRST = np.zeros(256, dtype=bool)  # first letters of the HTTP methods, by byte
_HTTP_FIRST[np.frombuffer(b"GPHDOCT", dtype=np.uint8)] = True
_NONE_ASKED = np.zeros(0, dtype=np.uint64)


@functools.lru_cache(maxsize=4096)
def _low64(addr: str) -> int:
    """An address's low 64 bits (the whole of an IPv4 address), as the frame's ``addr`` holds
    them."""
    return int(ipaddress.ip_address(addr)) & 0xFFFFFFFFFFFFFFFF


class DnsAnswers:
    """Answers each client received: (client, address) -> (name, expiry ns); bounded, LRU."""

    def __init__(self, capacity: int = DNS_CACHE_ENTRIES) -> None:
        self.capacity = capacity
        self._map: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()

    def learn(self, client: str, addr: str, name: str, expiry_ns: int) -> None:
        key = (client, addr)
        self._map[key] = (name, expiry_ns)
        self._map.move_to_end(key)
        while len(self._map) > self.capacity:
            self._map.popitem(last=False)

    def __len__(self) -> int:
        return len(self._map)

    def pairs(self) -> list[tuple[str, str]]:
        """(client, address) of every answer held."""
        return list(self._map)

    def lookup(self, client: str, addr: str, at_ns: int) -> str | None:
        hit = self._map.get((client, addr))
        if hit is None or hit[1] < at_ns:
            return None
        return hit[0]


def dns_qname(query: bytes) -> str | None:
    """The first question's name of a DNS message, lower case (the one bounded DNS parser:
    ``dns_tunnel.parse_message``)."""
    got = parse_message(query)
    if got is None or not got[1] or not got[1][0].labels:
        return None
    return ".".join(label.decode("ascii", "replace").lower() for label in got[1][0].labels)


def dns_answers(query: bytes, response: bytes) -> list[tuple[str, str, int]]:
    """(name asked, address, ttl s) from a response matched to its query (same id and question)."""
    try:
        q = dpkt.dns.DNS(query)
        r = dpkt.dns.DNS(response)
    except (dpkt.UnpackError, struct.error, IndexError, ValueError):
        return []
    if q.id != r.id or not r.qr or not q.qd or not r.qd or q.qd[0].name != r.qd[0].name:
        return []
    out = []
    for an in r.an:
        if an.type == dpkt.dns.DNS_A and len(an.rdata) == 4:
            out.append((q.qd[0].name, ".".join(str(b) for b in an.rdata), an.ttl))
        elif an.type == dpkt.dns.DNS_AAAA and len(an.rdata) == 16:
            out.append((q.qd[0].name, str(ipaddress.IPv6Address(an.rdata)), an.ttl))
    return out


def tls_sni(data: bytes) -> str | None:
    """The server_name of a TLS ClientHello at the start of ``data`` (bounds checked)."""
    if len(data) < 9 or data[0] != 0x16 or data[5] != 0x01:
        return None
    end = min(len(data), 5 + struct.unpack(">H", data[3:5])[0])
    p = 9 + 2 + 32  # handshake header, client_version, random
    try:
        p += 1 + data[p]  # session id
        p += 2 + struct.unpack(">H", data[p:p + 2])[0]  # cipher suites
        p += 1 + data[p]  # compression methods
        ext_end = min(end, p + 2 + struct.unpack(">H", data[p:p + 2])[0])
        p += 2
        while p + 4 <= ext_end:
            etype, elen = struct.unpack(">HH", data[p:p + 4])
            p += 4
            if etype == 0 and p + 5 <= ext_end:  # server_name: list length, type, name length
                nlen = struct.unpack(">H", data[p + 3:p + 5])[0]
                name = data[p + 5:p + 5 + nlen]
                return wire_text(name) if len(name) == nlen else None
            p += elen
    except (IndexError, struct.error):
        return None
    return None


def http_host(data: bytes) -> str | None:
    """The Host header of an HTTP request at the start of ``data`` (in its first 2 KiB)."""
    head = data[:2048]
    if not head[:8].split(b" ", 1)[0].isalpha():
        return None
    at = head.lower().find(b"\r\nhost:")
    if at < 0 or head.find(b"\r\n\r\n", 0, at + 2) >= 0:  # none, or only in the body
        return None
    end = head.find(b"\r\n", at + 7)
    value = head[at + 7:end if end >= 0 else len(head)]
    return wire_text(value.strip().split(b":")[0])


class PoolDetector(Detector):
    name = "pools"

    def __init__(self, resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.dns = DnsAnswers()
        self._names_memo: tuple[PoolSet, NameSuffixes] | None = None
        # flow ids of the DNS lookups read while open (their reply's prompt): sorted, and the
        # frames' arrays not merged in yet
        self._seen_open = np.zeros(0, dtype=np.int64)
        self._seen_new: list[np.ndarray] = []
        # (client, pool address) pairs DNS answered, as ``kernels.pair_key``: sorted, a superset
        # (what the bounded cache dropped stays until it is rebuilt)
        self._asked = np.zeros(0, dtype=np.uint64)
        self._answer_memo: dict[tuple[bytes, bytes], tuple[tuple[str, str, int], ...]] = {}
        self._answer_memo_of: PoolSet | None = None

    @property
    def pools(self) -> PoolSet:
        # read through the shared resources each time: a reload (watch's SIGUSR2) swaps them
        return self.resources.pools

    @property
    def names(self) -> NameSuffixes:
        """The listed domains as the flow table's name test takes them (``wire_suffixes``),
        made again when the signatures are reloaded."""
        pools = self.pools
        if self._names_memo is None or self._names_memo[0] is not pools:
            suffixes = pools.wire_suffixes()
            self._names_memo = (pools, NameSuffixes(
                np.array(sorted(suffixes), dtype=np.int64),
                np.unique(np.concatenate([np.zeros(0, np.uint64), *suffixes.values()])),
                HASH_WEIGHTS))
        return self._names_memo[1]

    def watch_rules(self) -> Sequence[WatchRule]:
        # post-quantum ClientHellos outgrow the 512-byte head: the slab holds the SNI.
        # DNS answers that name a listed pool are learned the moment they arrive (a prompt
        # rule, no lease): the connection a lookup precedes may be judged before the UDP flow
        # of the lookup ends. Other lookups cannot lead to a pool: read when they end.
        return (WatchRule(b"\x16\x03"), WatchRule(b"", 53, prompt=True, names=self.names))

    def on_frame(self, frame: FeatureFrame) -> list[Alert]:
        if frame.n == 0:
            return []
        c = frame.cols
        dns_rows = self._new_lookups(frame)
        self._learn(frame, dns_rows[self._may_ask_pool(frame, dns_rows)])
        alerts: list[Alert] = []
        # vectorised pick, over the rows that can carry a connection (a frame of DNS lookups
        # alone, as a prompt rule shows them, has none): a client payload that can name a pool
        # (JSON, a TLS ClientHello, an HTTP request), a listed server address, or a client that
        # DNS answered for
        assert frame.head is not None and frame.head_len is not None and frame.addr is not None
        assert frame.start is not None
        n = frame.n
        cand, named, listed, asked = (np.empty(n, dtype=bool) for _ in range(4))
        names = self.names
        c_int = {k: np.ascontiguousarray(c[k], dtype=np.int64)
                 for k in ("protocol", "dst_port", "ip_version")}
        pool_picks(frame.start, frame.head, frame.head_len, c_int["protocol"],
                   c_int["dst_port"], c_int["ip_version"], frame.addr, JSON_AFTER_BRACE,
                   _HTTP_FIRST, *self.pools.v4_tables,
                   self._asked if len(self.dns) else _NONE_ASKED, names.lengths, names.hashes,
                   names.weights, names.bits, cand, named, listed, asked)
        self.pools.listed_v6(np.where(cand, c_int["ip_version"], 0), frame.addr[:, 2],
                             frame.addr[:, 3], listed)  # the candidates' IPv6 addresses
        rhythm = cadence.candidates(frame)
        pick = cand & (named | listed | asked | rhythm)
        for i in np.flatnonzero(pick).tolist():
            is_listed, is_rhythm = bool(listed[i]), bool(rhythm[i])
            found = self._judge(frame, i, is_listed)
            figures = cadence.figures(frame, i) if is_rhythm else None
            if figures is not None and cadence.matches(figures):
                found.append(("cadence", "behaviour", None))
            else:
                figures = None
            if found:
                alerts.append(self._alert(frame, i, found, figures))
        return alerts

    def _learn(self, frame: FeatureFrame, rows: np.ndarray) -> None:
        """Keep the answers of the DNS lookups in ``rows`` that asked for a pool name (the rest
        cannot matter), before the flows of this frame are judged."""
        if not len(rows):
            return
        c = frame.cols
        assert frame.addr is not None
        # the clients' addresses as text for these rows alone (a prompt frame's columns are
        # computed as read: its src_ip column would format every lookup of the frame)
        clients = addr_text(c["ip_version"][rows].astype(np.uint8), frame.addr[rows, 0],
                            frame.addr[rows, 1])
        learned: list[tuple[int, int]] = []
        for i, client in zip(rows.tolist(), clients.tolist()):
            for name, addr, ttl in self._pool_answers(frame.payload(i, 0), frame.payload(i, 1)):
                expiry = (int(c["bidirectional_last_seen_ms"][i]) + 1000 * ttl) * 1_000_000
                self.dns.learn(client, addr, name, expiry)
                learned.append((int(frame.addr[i, 1]), _low64(addr)))
        if not learned:
            return
        if len(self._asked) > 2 * len(self.dns) + 1024:  # rebuild past evictions
            learned += [(_low64(client), _low64(addr)) for client, addr in self.dns.pairs()]
            self._asked = np.zeros(0, dtype=np.uint64)
        pairs = np.array(learned, dtype=np.uint64).reshape(-1, 2)
        keys = np.empty(len(pairs), dtype=np.uint64)
        pair_keys(pairs[:, 0].copy(), pairs[:, 1].copy(), keys)
        new = np.unique(keys[~sorted_members(keys, self._asked)])  # most were asked before
        if len(new):  # into their places (``np.union1d`` sorted the whole array again)
            self._asked = np.insert(self._asked, np.searchsorted(self._asked, new), new)

    def _pool_answers(self, query: bytes, response: bytes) -> tuple[tuple[str, str, int], ...]:
        """``dns_answers`` of a lookup that asked for a pool name (none for other names),
        memoised by the two messages without their id (a client asks for its pool again and
        again; the id only has to match, and nothing else depends on it)."""
        memo = self._answer_memo
        if len(memo) > ANSWER_MEMO or self._answer_memo_of is not self.pools:  # or reloaded
            memo.clear()
            self._answer_memo_of = self.pools
        same_id = len(query) >= 2 and query[:2] == response[:2]
        key = (query[2:], response[2:])
        if same_id and key in memo:
            return memo[key]
        qname = dns_qname(query)
        found = () if qname is None or self.pools.match_name(qname) is None else \
            tuple(dns_answers(query, response))
        if same_id:
            memo[key] = found
        return found

    def _new_lookups(self, frame: FeatureFrame) -> np.ndarray:
        """Rows of DNS lookups not read before: a lookup whose reply was shown at once (a
        prompt rule) is not read again when its flow ends (only the first message of each
        direction is parsed, and that has not changed)."""
        c = frame.cols
        rows = np.flatnonzero((c["protocol"] == 17) & (c["dst_port"] == 53))
        if not len(rows):
            return rows
        fids = c["flow_id"][rows]
        if c["expiration"][rows[0]] == "":  # a live record (prompt or snapshot frame)
            if len(self._seen_open) + sum(map(len, self._seen_new)) > MAX_SEEN_OPEN:
                self._seen_open, self._seen_new = np.zeros(0, dtype=np.int64), []
            self._seen_new.append(fids.astype(np.int64))
            return rows
        if self._seen_new:  # sorted (a flow's reply is shown once: no duplicates to remove)
            self._seen_open = np.sort(np.concatenate([self._seen_open, *self._seen_new]))
            self._seen_new = []
        seen = sorted_members(fids, self._seen_open)
        if seen.any():  # ended: not shown again
            self._seen_open = self._seen_open[~sorted_members(self._seen_open, np.sort(fids))]
        return rows[~seen]

    def _may_ask_pool(self, frame: FeatureFrame, rows: np.ndarray) -> np.ndarray:
        """Which DNS queries' first question can end in a listed domain (a kernel over the
        heads, ``detect.kernels.may_name_suffix``): the name's wire bytes up to its terminating
        zero hashed backwards for each length of a listed domain, the hashes looked up; a hit
        is checked exactly (``dns_qname``, ``match_name``)."""
        ok = np.zeros(len(rows), dtype=bool)
        names = self.names
        if not len(rows) or not len(names.hashes):
            return ok
        assert frame.head is not None and frame.head_len is not None
        may_name_suffix(frame.head, frame.head_len, np.ascontiguousarray(rows, dtype=np.int64),
                        names.lengths, names.hashes, names.weights, names.bits, ok)
        return ok

    def _judge(self, frame: FeatureFrame, i: int,
               listed: bool) -> list[tuple[str, str, PoolEntry | None]]:
        """(variant, what matched, entry) for every way row ``i`` is known by name or address,
        strongest first."""
        c = frame.cols
        client = frame.payload(i, 0)
        found: list[tuple[str, str, PoolEntry | None]] = []
        if client[:1] == b"{":
            for name in pool_names(client):
                e = self.pools.match_name(name)
                if e is not None:
                    found.append(("login", name, e))
                    break
        sni = tls_sni(client)
        if sni and (e := self.pools.match_name(sni)) is not None:
            found.append(("sni", sni, e))
        host = http_host(client)
        if host and (e := self.pools.match_name(host)) is not None:
            found.append(("http-host", host, e))
        dst = frame.text("dst_ip", i)
        first_ns = int(c["bidirectional_first_seen_ms"][i]) * 1_000_000
        name = self.dns.lookup(frame.text("src_ip", i), dst, first_ns)
        if name and (e := self.pools.match_name(name)) is not None:
            found.append(("dns", name, e))
        if listed and (e := self.pools.match_ip(dst)) is not None:
            found.append(("ip-list", dst, e))
        return found

    def _alert(self, frame: FeatureFrame, i: int, found: list[tuple[str, str, PoolEntry | None]],
               figures: dict[str, Any] | None) -> Alert:
        variant, matched, entry = found[0]
        sid, severity, confidence, signature = VARIANTS[variant]
        evidence: dict[str, Any] = {}
        if entry is not None:
            evidence = {"pool": entry.domain or str(entry.network), "matched": matched,
                        "indicator_source": entry.source, "indicator": entry.origin}
        if figures is not None:
            evidence["cadence"] = {k: v for k, v in figures.items() if k != "last_ns"}
        if variant == "sni":
            evidence["encrypted"] = True
        if len(found) > 1:
            evidence["also"] = [{"variant": v, "matched": m} for v, m, _ in found[1:]]
        start_ns = int(frame.cols["bidirectional_first_seen_ms"][i]) * 1_000_000
        if variant in ("login", "sni", "http-host"):  # the client's first payload named the pool
            ts = time_at_offset(frame, i, 0, 1, fallback_ns=start_ns)
        elif variant == "cadence" and figures is not None:
            ts = figures["last_ns"]  # the last message the figures counted
        else:
            ts = start_ns  # the connection itself
        return Alert(
            signature_id=sid, signature=signature, category="mining-pool", variant=variant,
            severity=severity, confidence=confidence, timestamp_ns=ts,
            flow=flow_fields(frame, i), evidence=evidence,
            app_proto="tls" if variant == "sni" else "",
        )
