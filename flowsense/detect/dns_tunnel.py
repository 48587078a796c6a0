"""Data tunnelled through DNS queries (iodine, dnscat2, dns2tcp, DNSExfiltrator and the like).

A DNS tunnel carries its data upstream in the query name, below a domain whose authoritative
server the tunneller runs, and downstream in the answers (TXT, NULL, MX, CNAME records). Three
signs, strongest first, after the literature on DNS tunnel detection (Farnham and Atlasis, SANS
2013, "Detecting DNS Tunneling"; Born and Gustafson, "Detecting DNS tunnels using character
frequency analysis", 2010), nDPI's "Suspicious DNS traffic" and "Suspicious DGA domain" flow
risks, and Zeek's DNS scripts (long names and query counts per domain):

- ``encoded-names``: a query name whose part below the registered domain is long (40 chars and
  more) and shaped like encoded data: hex, mixed-case base64, high-entropy base32, or bytes no
  hostname holds. Ordinary long names (CDN and cloud hosts, UUID labels, DNSSEC hashes) are
  words, dotted numbers or under 40 chars.
- ``tunnel-qtypes``: repeated NULL (10) or private-use (65280-65534) queries, the record types
  iodine prefers and nothing ordinary asks for.
- ``volume``: one flow carrying many queries (30 and more) with sizeable answers, each for a
  different name of 20 chars and more below one public domain (not ``.local``, ``.arpa``...:
  a cluster's search-domain expansions are a resolver's own business).

The names come from the payload heads the flow table keeps (512 bytes a direction: the first
few queries of a flow; a lease of a bigger slab measured no gain on the tunnels of the corpus,
whose first queries already show the encoding) through a small bounded parser: messages are
walked to their end (UDP datagrams sit back to back in the head, TCP ones behind their length),
compression pointers followed at most a few times and only backwards. Candidates are picked by
port 53 in one vectorised step, so the per-row Python runs only on DNS flows. Names pass
through ``wire_text`` before they reach the evidence. mDNS (5353), LLMNR (5355) and NetBIOS
(137) are other ports and never candidates.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowsense.detect.base import Alert, Detector, Resources, flow_fields
from flowsense.encoding import wire_text
from flowsense.flows.features import FeatureFrame
from flowsense.flows.table import WatchRule

VARIANTS = {  # category dns-tunnel: 3500000-3599999; (sid, severity, confidence, signature)
    "encoded-names": (3500001, 1, 0.85, "DNS tunnel: data encoded in query names"),
    "tunnel-qtypes": (3500002, 1, 0.8, "DNS tunnel: repeated NULL or private-type queries"),
    "volume": (3500003, 2, 0.5, "DNS tunnel: many queries for distinct names below one domain"),
}
DNS_PORT = 53
MIN_ENCODED_CHARS = 40  # characters below the registered domain, dots left out
MIN_LABEL_CHARS = 16
# the shortest query that can hold such a name: header, the name (the encoded chars in one
# label and a two-label domain of one char each, with their length bytes and the root), qtype
# and class
MIN_MESSAGE_BYTES = 12 + (1 + MIN_ENCODED_CHARS) + 2 * 2 + 1 + 4
HEX_SHARE = 0.9
ENTROPY_BITS = 4.2  # per character; random hex tops out at 4, words stay under ~3.9
NULL_QUERIES = 2
VOLUME_QUERIES = 30
VOLUME_ANSWER_BYTES = 4096
VOLUME_NAMES = 4
VOLUME_MEAN_CHARS = 20  # tunnels fill their names; service names and search expansions are short
# special-use and private suffixes (RFC 6761, RFC 8375, de facto LAN ones): a cluster's or a
# home network's own names, never a tunneller's domain on the Internet
PRIVATE_TLDS = {b"local", b"arpa", b"internal", b"lan", b"home", b"corp", b"localdomain",
                b"localhost", b"intranet", b"private"}
MAX_MESSAGES = 64
MAX_POINTERS = 8
REMEMBERED_FLOWS = 100_000
EVIDENCE_NAMES = 3
EVIDENCE_NAME_CHARS = 80
QTYPE_NULL = 10
QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 15: "MX",
               16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
# second-level labels under which a ccTLD registers (co.uk, com.au, ...): no public suffix
# list is shipped, and a name one label too deep only shortens the part judged
_SECOND_LEVEL = {b"co", b"com", b"net", b"org", b"gov", b"edu", b"ac", b"or", b"ne", b"go",
                 b"gob", b"mil", b"nic", b"ltd", b"plc", b"nom"}
_HOSTNAME = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")
_UPPER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Query:
    labels: tuple[bytes, ...]
    qtype: int
    message: int = 0  # which message of the direction asked it (0: the first)


def _name(msg: bytes, p: int) -> tuple[tuple[bytes, ...], int] | None:
    """The labels of the name at ``p`` and the offset after it; pointers bounded and backwards."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    while p < len(msg) and len(labels) < 128:
        n = msg[p]
        if n == 0:
            return tuple(labels), (p + 1 if end < 0 else end)
        if n & 0xC0 == 0xC0:
            if p + 1 >= len(msg) or jumps >= MAX_POINTERS:
                return None
            target = ((n & 0x3F) << 8) | msg[p + 1]
            if target >= p:
                return None
            if end < 0:
                end = p + 2
            jumps += 1
            p = target
            continue
        if n & 0xC0 or p + 1 + n > len(msg):
            return None
        labels.append(msg[p + 1:p + 1 + n])
        p += 1 + n
    return None


def parse_message(msg: bytes, index: int = 0) -> tuple[bool, list[Query], int] | None:
    """(is a response, its questions, its length) of the DNS message at the start of ``msg``,
    walked through every section to find where it ends; None where it is cut or malformed."""
    if len(msg) < 12:
        return None
    response = bool(msg[2] & 0x80)
    counts = [int.from_bytes(msg[k:k + 2], "big") for k in (4, 6, 8, 10)]
    if counts[0] > 8 or sum(counts) > 512:
        return None
    p = 12
    questions = []
    for _ in range(counts[0]):
        got = _name(msg, p)
        if got is None or got[1] + 4 > len(msg):
            return None
        labels, p = got
        questions.append(Query(labels, int.from_bytes(msg[p:p + 2], "big"), index))
        p += 4
    for _ in range(sum(counts[1:])):
        got = _name(msg, p)
        if got is None or got[1] + 10 > len(msg):
            return None
        p = got[1]
        p += 10 + int.from_bytes(msg[p + 8:p + 10], "big")
        if p > len(msg):
            return None
    return response, questions, p


def queries(data: bytes, tcp: bool) -> list[Query]:
    """The questions of the queries in a direction's payload (UDP datagrams back to back, TCP
    messages behind their 2-byte length), up to the first message that is cut or malformed."""
    out: list[Query] = []
    p = 0
    for k in range(MAX_MESSAGES):
        if tcp:
            if p + 2 > len(data):
                break
            size = int.from_bytes(data[p:p + 2], "big")
            got = parse_message(data[p + 2:p + 2 + size], k) if size else None
            step = 2 + size
        else:
            got = parse_message(data[p:], k)
            step = got[2] if got is not None else 0
        if got is None or step <= 0:
            break
        if not got[0]:
            out.extend(got[1])
        p += step
    return out


def split_name(labels: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(labels below the registered domain, the registered domain's labels), by a heuristic:
    the last two labels, three under a ccTLD's usual second level (``co.uk``)."""
    k = 2
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2].lower() in _SECOND_LEVEL:
        k = 3
    return labels[:-k] if len(labels) > k else (), labels[-k:]


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per character."""
    if not data:
        return 0.0
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def name_figures(labels: tuple[bytes, ...]) -> dict[str, Any]:
    """What a name's part below its registered domain looks like."""
    sub, base = split_name(labels)
    chars = b"".join(sub)
    n = len(chars) or 1
    letters = sum(b in _UPPER or b in _LOWER for b in chars)
    upper = sum(b in _UPPER for b in chars)
    return {
        "sub_chars": len(chars),
        "longest_label": max((len(x) for x in sub), default=0),
        "entropy": round(entropy(chars), 2),
        "folded_entropy": entropy(chars.lower()),
        "hex_share": sum(b in _HEX for b in chars) / n,
        "digit_share": sum(b in _DIGITS for b in chars) / n,
        "upper_share": upper / letters if letters else 0.0,
        "non_hostname": sum(b not in _HOSTNAME for b in chars),
        "alnum_share": sum(b in _HOSTNAME and b not in b"-_" for b in chars) / n,
        "base": b".".join(base).lower(),
    }


def _long(labels: tuple[bytes, ...]) -> bool:
    """Whether a name can hold encoded data at all (cheap: lengths only)."""
    sub = split_name(labels)[0]
    return (sum(len(x) for x in sub) >= MIN_ENCODED_CHARS
            and max((len(x) for x in sub), default=0) >= MIN_LABEL_CHARS)


def encoded(f: dict[str, Any]) -> str | None:
    """The encoding a name's figures show (``hex``, ``base64``, ``base32``, ``raw``), or None."""
    if f["sub_chars"] < MIN_ENCODED_CHARS or f["longest_label"] < MIN_LABEL_CHARS:
        return None  # short, or dotted numbers and nibbles (PTR, ENUM, DNSBL lookups)
    if f["non_hostname"]:
        return "raw"
    if f["hex_share"] >= HEX_SHARE and 0.15 <= f["digit_share"] <= 0.95:
        return "hex"
    if f["alnum_share"] < 0.95:
        return None  # words, UUIDs and CamelCase host names joined by hyphens
    if (0.2 <= f["upper_share"] <= 0.8 and f["digit_share"] >= 0.05
            and f["folded_entropy"] >= ENTROPY_BITS):
        return "base64"  # case-folded first: resolvers randomise case (DNS 0x20)
    if f["folded_entropy"] >= ENTROPY_BITS and f["digit_share"] >= 0.05:
        return "base32"
    return None


@dataclass
class Verdict:
    found: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    message: int = -1  # the query message that completed the first sign (-1: the flow's counts)


def judge(qs: list[Query], cols: dict[str, np.ndarray], i: int, d: int) -> Verdict:
    """The variants row ``i``'s queries show, strongest first, and the evidence."""
    v = Verdict()
    if not qs:
        return v
    # figures only for names long enough to hold encoded data: most names stop here
    figs = [name_figures(q.labels) if _long(q.labels) else None for q in qs]
    kinds = [encoded(f) if f is not None else None for f in figs]
    hits = [k for k, kind in enumerate(kinds) if kind]
    nulls = [q for q in qs if q.qtype == QTYPE_NULL or 65280 <= q.qtype <= 65534]
    sent = "src2dst" if d == 0 else "dst2src"
    back = "dst2src" if d == 0 else "src2dst"
    n_queries = int(cols[f"{sent}_packets"][i])
    answer_bytes = int(cols[f"{back}_payload_bytes"][i])
    split = [split_name(q.labels) for q in qs]
    bases = Counter(b".".join(b).lower() for _, b in split)
    base = bases.most_common(1)[0][0]
    if hits:
        v.found.append("encoded-names")
        base = b".".join(split[hits[0]][1]).lower()
        v.message = qs[hits[0]].message
    if len(nulls) >= NULL_QUERIES:
        v.found.append("tunnel-qtypes")
        if v.message < 0:
            v.message = nulls[NULL_QUERIES - 1].message
    if (n_queries >= VOLUME_QUERIES and answer_bytes >= VOLUME_ANSWER_BYTES
            and len(qs) >= VOLUME_NAMES and len(bases) == 1
            and base.rsplit(b".", 1)[-1] not in PRIVATE_TLDS
            and len({sub for sub, _ in split}) == len(qs)
            and sum(len(b"".join(sub)) for sub, _ in split) >= VOLUME_MEAN_CHARS * len(qs)):
        v.found.append("volume")
    if not v.found:
        return v
    figs = [f if f is not None else name_figures(q.labels) for f, q in zip(figs, qs)]
    shown = hits or list(range(len(qs)))
    v.evidence = {
        "base_domain": wire_text(base),
        "queries_seen": len(qs),
        "queries_in_flow": n_queries,
        "answer_bytes": answer_bytes,
        "encoded_names": len(hits),
        "encodings": sorted({k for k in kinds if k}),
        "qtypes": dict(Counter(QTYPE_NAMES.get(q.qtype, str(q.qtype)) for q in qs)),
        "max_label_length": max(f["longest_label"] for f in figs),
        "max_entropy": max(f["entropy"] for f in figs),
        "qnames": [wire_text(b".".join(qs[k].labels)[:EVIDENCE_NAME_CHARS])
                   for k in shown[:EVIDENCE_NAMES]],
    }
    return v


def evidence_time(frame: FeatureFrame, i: int, verdict: Verdict) -> int:
    """Capture time (ns) of the query that completed the evidence: over UDP the n-th message is
    the querier's n-th datagram, whose time the first-packets record (``splt``) holds, to the
    millisecond (the flow's start is kept in ms); else (TCP, past the first packets, the flow's
    counts) the flow's last packet."""
    c = frame.cols
    last_ns = int(c["bidirectional_last_seen_ms"][i]) * 1_000_000
    if verdict.message < 0 or c["protocol"][i] != 17 or frame.splt_ps is None:
        return last_ns
    assert frame.splt_n is not None and frame.splt_t_ms is not None
    n = int(frame.splt_n[i])
    sign = 1 if c["dst_port"][i] == DNS_PORT else -1
    sent = np.flatnonzero(frame.splt_ps[i, :n] * sign > 0)
    if verdict.message >= len(sent):
        return last_ns
    offset_ns = int(round(float(frame.splt_t_ms[i, sent[verdict.message]]) * 1e6))
    return min(last_ns, int(c["bidirectional_first_seen_ms"][i]) * 1_000_000 + offset_ns)


class DnsTunnelDetector(Detector):
    name = "dns-tunnel"

    def __init__(self, resources: Resources | None = None) -> None:
        super().__init__(resources)
        # the variant each flow was first reported under (bounded): a live flow judged again
        # later keeps its signature, so it stays one alert a flow (a stronger one an update)
        self._reported: OrderedDict[int, str] = OrderedDict()

    def watch_rules(self) -> Sequence[WatchRule]:
        # every DNS flow shown at its first answer (a prompt rule, no lease): a tunnel's flow
        # can stay open for as long as the tunnel (one 5-tuple), and its first query already
        # shows an encoded name; ended flows are judged again with all they sent
        return (WatchRule(b"", DNS_PORT, prompt=True),)

    def on_frame(self, frame: FeatureFrame) -> list[Alert]:
        if frame.n == 0:
            return []
        c = frame.cols
        transport = (c["protocol"] == 17) | (c["protocol"] == 6)
        to_server = c["dst_port"] == DNS_PORT
        dns = transport & (to_server | (c["src_port"] == DNS_PORT))
        # the querier's direction (a capture begun on an answer guesses the roles reversed)
        d = np.where(to_server, 0, 1)
        assert frame.head_len is not None
        sent = np.where(to_server, c["src2dst_packets"], c["dst2src_packets"])
        kept = frame.head_len[np.arange(frame.n), d]
        # one query too short to hold an encoded name cannot show any sign: most DNS flows
        rows = np.flatnonzero(dns & ((sent >= NULL_QUERIES) | (kept >= MIN_MESSAGE_BYTES)))
        alerts = []
        for i in rows.tolist():
            di = int(d[i])
            qs = queries(frame.payload(i, di), tcp=bool(c["protocol"][i] == 6))
            verdict = judge(qs, c, i, di)
            if verdict.found:
                alerts.append(self._alert(frame, i, verdict))
        return alerts

    def _alert(self, frame: FeatureFrame, i: int, verdict: Verdict) -> Alert:
        flow_id = int(frame.cols["flow_id"][i])
        variant = self._reported.get(flow_id, verdict.found[0])
        self._reported[flow_id] = variant
        self._reported.move_to_end(flow_id)
        while len(self._reported) > REMEMBERED_FLOWS:
            self._reported.popitem(last=False)
        sid, severity, confidence, signature = VARIANTS[variant]
        evidence = dict(verdict.evidence)
        if variant == "encoded-names" and evidence["encoded_names"] < 2:
            confidence = 0.7  # one name: a single exfiltrated blob, or an odd but honest host
        also = [x for x in verdict.found if x != variant]
        if also:
            evidence["also"] = also
        return Alert(
            signature_id=sid, signature=signature, category="dns-tunnel", variant=variant,
            severity=severity, confidence=confidence,
            timestamp_ns=evidence_time(frame, i, verdict),
            flow=flow_fields(frame, i), evidence=evidence, app_proto="dns",
        )
