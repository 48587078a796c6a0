"""Mining protocols in the clear: Stratum v1, Monero-style (XMRig, xmr-stak), Ethereum proxies.

Recognised by parsing the newline-delimited JSON of a flow's payload (the watched-flow slab,
reassembled in TCP sequence order; watch rules lease it for a payload that opens a JSON
object: a brace and what JSON allows after it), in either direction and on any
port, never by substring: a message counts only if its line parses as a JSON object whose
``method`` (or a reply's ``result``) has the protocol's shape. A verdict needs at least two
distinct mining messages, so one stray word (a database row, a Zabbix ``login``, an Ethereum node
API call) does not fire. Facts from public sources: the Stratum v1 and EthereumStratum specs,
XMRig's and xmr-stak's pool protocol, nDPI's and Emerging Threats' mining signatures (whose known
misses and false positives the strictness here answers).

Jobs and shares are counted past the 4 KiB slab too: the lines parsed in the slab give the sizes
of this flow's job pushes and share submits; past the slab's end, runs of one direction's
packets in the trace are counted as so many messages of the size they match (``count_method``
in the evidence; ``count_past_slab``). Past the slab it is an estimate: segments the capture
reordered look like retransmissions and are skipped. The count is kept per flow across
snapshots, so a session longer than the trace ring is counted whole when it was seen live.

Stratum V2 is encrypted from its first byte (a Noise NX handshake), so only its shape is left:
on its usual ports, the client's first message is 64 bytes (an ElligatorSwift key) and the
server's answer 234 (64 + 80 + 90; the spec's summary line still says 170, from the earlier
32-byte keys): stratum-mining/sv2-spec ``04-Protocol-Security.md`` 4.5.1-4.5.2. Ports: 34254,
the Stratum Reference Implementation pool's default, and 3336, Braiins Pool's V2 endpoint
(``stratum2+tcp://v2.stratum.braiins.com:3336``). Read from the first packet sizes (SPLT) alone,
at lower confidence.
"""

from __future__ import annotations

import json
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowsense.detect.base import Alert, Detector, Resources, flow_fields, time_at_offset
from flowsense.encoding import wire_text
from flowsense.flows.features import FeatureFrame, Trace
from flowsense.flows.table import WatchRule

MAX_LINES = 256  # JSON lines parsed a direction
MAX_LINE_BYTES = 16384

V1_CLIENT = {"mining.subscribe", "mining.authorize", "mining.configure",
             "mining.extranonce.subscribe", "mining.submit", "mining.suggest_difficulty"}
V1_SERVER = {"mining.notify", "mining.set_difficulty", "mining.set_target",
             "mining.set_extranonce"}
ETH_METHODS = {"eth_submitLogin", "eth_getWork", "eth_submitWork", "eth_submitHashrate"}

SIDS = {  # category stratum-mining: 3300000-3399999
    "stratum-v1": (3300001, "mining: Stratum v1 JSON-RPC (subscribe/authorize/notify/submit)"),
    "ethereumstratum": (3300002, "mining: NiceHash EthereumStratum/1.0.0"),
    "xmr": (3300003, "mining: Monero-style pool protocol (login/job/submit)"),
    "eth-proxy": (3300004, "mining: Ethereum stratum proxy (eth_submitLogin/eth_getWork)"),
    "eth-getwork-http": (3300005, "mining: Ethereum getwork over HTTP POST"),
    "stratum-v2": (3300006, "mining: Stratum V2 Noise handshake sizes on a Stratum V2 port"),
}
SV2_PORTS = (34254, 3336)
SV2_CLIENT = 64
SV2_SERVER = (234, 170)
COUNT_METHOD = ("lines parsed in the slab, then runs of trace packets past it sized like the "
                "parsed jobs/shares")
COUNT_FLOWS = 8192  # flows whose counting state is kept between snapshots (LRU)
# what JSON allows after an object's opening brace: blanks, a key, the closing brace (and the
# zero of UTF-16 or UTF-32 text, which json.loads reads); payload that merely begins with a
# brace (one random flow in 256) is not JSON and is neither watched nor parsed
JSON_SECOND = b'" \t\n\r}\x00'
JSON_AFTER_BRACE = np.zeros(256, dtype=bool)
JSON_AFTER_BRACE[np.frombuffer(JSON_SECOND, dtype=np.uint8)] = True


def json_opens(start: np.ndarray) -> np.ndarray:
    """Vectorised over payload starts (uint8[..., 2+]): which open a JSON object."""
    return (start[..., 0] == ord("{")) & JSON_AFTER_BRACE[start[..., 1]]


@dataclass
class Evidence:
    """What the JSON of one flow showed."""

    methods: Counter = field(default_factory=Counter)
    kinds: set[str] = field(default_factory=set)  # distinct mining message kinds
    variant_votes: Counter = field(default_factory=Counter)
    agent: str | None = None
    algo: str | None = None
    worker: str | None = None
    difficulty: Any = None
    jobs: int = 0
    shares: int = 0
    # bytes of each parsed job and share line (with its newline), by direction
    sizes: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    completed: tuple[int, int] | None = None  # (direction, byte offset) of the deciding line
    http: bool = False


def _may_mine(data: bytes) -> bool:
    """Whether ``data`` can hold a mining message. Each names its method (``mining.*``,
    ``login``, ``job``, ``submit``, ``keepalived``, ``eth_*``) or carries a ``job``: a payload
    without these words has none, unless its JSON spells them with \\u escapes or is UTF-16/32
    (``json.loads`` tells that from a zero after the line's opening brace). (One regular
    expression of these words scans no faster, and a looser one lets benign JSON through.)"""
    return (b"job" in data or b"mining." in data or b"submit" in data or b"login" in data
            or b"eth_" in data or b"keepalived" in data or b"\\u" in data or b"{\x00" in data)


def _lines(data: bytes) -> list[tuple[int, bytes]]:
    """Complete JSON lines (offset of their end, line) of one direction's payload."""
    out: list[tuple[int, bytes]] = []
    start = 0
    body = data
    if data.startswith(b"POST "):  # HTTP getwork: the body follows the headers
        cut = data.find(b"\r\n\r\n")
        if cut < 0:
            return out
        start = cut + 4
    while len(out) < MAX_LINES and start < len(body):
        end = body.find(b"\n", start)
        stop = len(body) if end < 0 else end
        line = body[start:stop].strip()
        if line.startswith(b"{") and len(line) <= MAX_LINE_BYTES:
            out.append((stop, line))
        if end < 0:
            break
        start = end + 1
    return out


def _truncate(v: Any, n: int = 24) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    text = wire_text(text.encode("utf-8", "surrogatepass"))
    return text if len(text) <= n else text[:n] + "..."


def _note(ev: Evidence, kind: str, variant: str, d: int, end: int) -> None:
    ev.kinds.add(kind)
    ev.variant_votes[variant] += 1
    if len(ev.kinds) == 2 and ev.completed is None:
        ev.completed = (d, end)


def inspect(client: bytes, server: bytes) -> Evidence | None:
    """Mining evidence in a flow's two payload streams, or None when it is not mining."""
    if not (client.lstrip()[:1] in (b"{", b"P") or server.lstrip()[:1] == b"{"):
        return None
    if not (_may_mine(client) or _may_mine(server)):
        return None  # no message can be a mining one: nothing to parse
    ev = Evidence(http=client.startswith(b"POST "))
    for d, data in ((0, client), (1, server)):
        for end, raw in _lines(data):
            try:
                msg = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(msg, dict):
                jobs, shares = ev.jobs, ev.shares
                _classify(ev, msg, d, end)
                for kind, before in (("jobs", jobs), ("shares", shares)):
                    if getattr(ev, kind) > before:
                        ev.sizes.setdefault((kind, d), []).append(len(raw) + 1)
    if len(ev.kinds) < 2:
        return None
    return ev


def _classify(ev: Evidence, msg: dict, d: int, end: int) -> None:
    method = msg.get("method")
    params = msg.get("params")
    result = msg.get("result")
    if isinstance(method, str):
        ev.methods[method] += 1
    if method in V1_CLIENT or method in V1_SERVER:
        variant = "stratum-v1"
        if method == "mining.subscribe" and isinstance(params, list):
            if any(isinstance(p, str) and p.startswith("EthereumStratum/") for p in params):
                variant = "ethereumstratum"
            if params and isinstance(params[0], str):
                ev.agent = ev.agent or _truncate(params[0], 48)
        if method == "mining.authorize" and isinstance(params, list) and params:
            ev.worker = ev.worker or _truncate(params[0])
        if method == "mining.set_difficulty" and isinstance(params, list) and params:
            ev.difficulty = params[0] if isinstance(params[0], (int, float)) else ev.difficulty
        if method == "mining.notify":
            ev.jobs += 1
        if method == "mining.submit":
            ev.shares += 1
        _note(ev, method, variant, d, end)
    elif method == "login" and isinstance(params, dict) and "login" in params:
        # a Monero-style login names a wallet and (XMRig, xmr-stak) an agent and algorithms
        ev.worker = ev.worker or _truncate(params.get("login"))
        if isinstance(params.get("agent"), str):
            ev.agent = _truncate(params["agent"], 48)
        if isinstance(params.get("algo"), list) and params["algo"]:
            ev.algo = _truncate(params["algo"][0])
        if "agent" in params or "pass" in params:
            _note(ev, "login", "xmr", d, end)
    elif method == "job" and isinstance(params, dict) and "blob" in params:
        ev.jobs += 1
        _note(ev, "job", "xmr", d, end)
    elif method == "submit" and isinstance(params, dict) and "nonce" in params:
        ev.shares += 1
        _note(ev, "submit", "xmr", d, end)
    elif method == "keepalived":
        _note(ev, "keepalived", "xmr", d, end)
    elif isinstance(result, dict) and isinstance(result.get("job"), dict) \
            and "blob" in result["job"]:
        ev.jobs += 1
        job = result["job"]
        if isinstance(job.get("algo"), str):
            ev.algo = _truncate(job["algo"])
        _note(ev, "job", "xmr", d, end)
    elif method in ETH_METHODS:
        variant = "eth-getwork-http" if ev.http else "eth-proxy"
        if method == "eth_submitLogin" and isinstance(params, list) and params:
            ev.worker = ev.worker or _truncate(params[0])
        if method == "eth_submitWork":
            ev.shares += 1
        if method == "eth_getWork":
            ev.jobs += 1
        _note(ev, method, variant, d, end)


_HOSTLIKE = re.compile(r"^[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$")


def pool_names(client: bytes) -> list[str]:
    """Host names a miner put in its subscribe or login parameters (EWBF names its pool)."""
    names: list[str] = []
    if b"mining.subscribe" not in client and b"login" not in client and b"\\u" not in client:
        return names  # neither method can be in it, not even spelt with JSON escapes
    for _, raw in _lines(client)[:8]:
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not isinstance(msg, dict) or msg.get("method") not in ("mining.subscribe", "login"):
            continue
        params = msg.get("params")
        values = params.values() if isinstance(params, dict) else params or []
        for v in values if isinstance(values, (list, type({}.values()))) else []:
            if isinstance(v, str) and _HOSTLIKE.match(v) and not v.replace(".", "").isdigit():
                names.append(v.lower())
    return names


@dataclass
class Tally:
    """Jobs and shares counted past the slab for one flow, and how far its trace was read."""

    read: int = 0  # trace packets (lifetime index) already looked at
    offset: tuple[int, int] = (0, 0)  # payload bytes a direction up to there
    jobs: int = 0
    shares: int = 0


def count_past_slab(ev: Evidence, trace: Trace, slab: tuple[int, int], tally: Tally) -> None:
    """Add to ``tally`` the messages past the slab sized like this flow's parsed jobs and shares.

    Consecutive payload packets of one direction (until the other direction sends payload) form
    a run: a message split over segments (an Equihash share is ~2.9 kB) or several coalesced
    ones. A run of g bytes counts k messages of a kind when k = round(g / the kind's median
    parsed size) and g lies within k times the band (0.8x the smallest to 1.25x the largest
    parsed size), per kind and direction; a run that is not whole messages (a share beside a
    keepalive) counts its packets that are in the band. Retransmissions and bare ACKs are
    skipped."""
    bands = {key: (0.8 * min(v), 1.25 * max(v), sorted(v)[len(v) // 2])
             for key, v in ev.sizes.items()}
    if not bands:
        return
    start = trace.dropped
    lengths = trace.length.tolist()
    flags = trace.flags.tolist()
    off = list(tally.offset)
    if start > tally.read and tally.read == 0:
        off = [max(off[0], slab[0]), max(off[1], slab[1])]  # the ring lost the start: past it
    run_d, run = -1, []  # the run's packet sizes past the slab

    def close() -> None:
        for kind in ("jobs", "shares"):
            band = bands.get((kind, run_d))
            if band is None or not run:
                continue
            g = sum(run)
            k = max(1, round(g / band[2]))
            if not k * band[0] <= g <= k * band[1]:  # not whole messages: its packets one by one
                k = sum(band[0] <= n <= band[1] for n in run)
            if k:
                setattr(tally, kind, getattr(tally, kind) + k)
                return

    for k in range(max(0, tally.read - start), len(lengths)):
        n, f = lengths[k], flags[k]
        d = f & 1
        if n == 0 or f & 2:  # bare ACK or retransmission
            continue
        off[d] += n
        if d != run_d:
            close()
            run_d, run = d, []
        if off[d] > slab[d]:  # bytes in the slab were parsed there
            run.append(n)
    close()
    tally.read = start + len(lengths)
    tally.offset = (off[0], off[1])


def sv2_handshake(frame: FeatureFrame, i: int) -> tuple[int, int, int] | None:
    """(client bytes, server bytes, index in the SPLT of the server's message) when row ``i``'s
    first packets are a Stratum V2 Noise handshake: after the SYN and SYN-ACK, the first client
    packet larger than a bare ACK carries 64 payload bytes and the first larger server packet
    234 (or 170). A bare ACK's IP size (the smallest client packet after the SYN) gives the
    header bytes to take off."""
    assert frame.splt_ps is not None and frame.splt_n is not None
    sizes = frame.splt_ps[i, : int(frame.splt_n[i])].tolist()
    client = [(k, s) for k, s in enumerate(sizes) if s > 0][1:]  # without the SYN
    server = [(k, -s) for k, s in enumerate(sizes) if s < 0][1:]  # without the SYN-ACK
    if not client or not server:
        return None
    header = min(s for _, s in client)
    c = next(((k, s - header) for k, s in client if s > header), None)
    s = next(((k, s - header) for k, s in server if s > header), None)
    if c is None or s is None or c[1] != SV2_CLIENT or s[1] not in SV2_SERVER or s[0] < c[0]:
        return None
    return c[1], s[1], s[0]


class StratumDetector(Detector):
    name = "stratum"

    def __init__(self, resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.tallies: OrderedDict[int, Tally] = OrderedDict()
        # watched flows' last evidence (None: not mining), by flow id, with the lengths and
        # hashes of the payloads it came from (LRU)
        self.inspected: OrderedDict[int, tuple[tuple[int, int, int, int], Evidence | None]] = \
            OrderedDict()

    def watch_rules(self) -> Sequence[WatchRule]:
        # JSON-RPC over raw TCP needs the slab; an HTTP getwork POST fits the 512-byte head.
        # Flows on the Stratum V2 ports are watched so they are judged while still open.
        return (*(WatchRule(b"{" + bytes([c])) for c in JSON_SECOND),
                *(WatchRule(b"", port) for port in SV2_PORTS))

    def on_frame(self, frame: FeatureFrame) -> list[Alert]:
        alerts: list[Alert] = []
        heads = frame.head
        if heads is None:
            return alerts
        c = frame.cols
        # vectorised pick, over TCP rows (a prompt frame of DNS lookups has none): payload
        # that opens a JSON object in either direction, or an HTTP POST
        start = frame.start
        assert start is not None  # with the heads
        picked = np.flatnonzero((c["protocol"] == 6)
                                & (json_opens(start).any(axis=1) | (start[:, 0, 0] == ord("P"))))
        rows = np.zeros(frame.n, dtype=bool)
        rows[picked] = True
        for i in picked.tolist():
            ev = self._inspect(frame, i)
            if ev is not None:
                alerts.append(self._alert(frame, i, ev))
        sv2_port = np.zeros(frame.n, dtype=bool)
        for port in SV2_PORTS:  # a few comparisons (``np.isin`` sorts)
            sv2_port |= c["dst_port"] == port
        sv2 = np.flatnonzero((c["protocol"] == 6) & sv2_port & ~rows)
        for i in sv2[c["orientation"][sv2] == "syn"].tolist():
            hs = sv2_handshake(frame, i)
            if hs is not None:
                alerts.append(self._sv2_alert(frame, i, hs))
        return alerts

    def _inspect(self, frame: FeatureFrame, i: int) -> Evidence | None:
        """``inspect`` of row ``i``; for a watched flow shown again with the same payload (a
        snapshot while nothing arrived, or its end) the evidence found the last time."""
        client, server = frame.payload(i, 0), frame.payload(i, 1)
        if i not in frame.slabs:
            return inspect(client, server)
        c = frame.cols
        fid = int(c["flow_id"][i])
        key = (len(client), len(server), hash(client), hash(server))
        last = self.inspected.pop(fid, None)
        ev = last[1] if last is not None and last[0] == key else inspect(client, server)
        if c["interim"][i] or c["expiration"][i] == "":  # still open: keep for the next look
            self.inspected[fid] = (key, ev)
            while len(self.inspected) > COUNT_FLOWS:
                self.inspected.popitem(last=False)
        return ev

    def _tally(self, frame: FeatureFrame, i: int, ev: Evidence) -> Tally:
        """This flow's count past the slab, carried on from its earlier snapshots."""
        fid = int(frame.cols["flow_id"][i])
        tally = self.tallies.pop(fid, None) or Tally()
        trace = frame.traces.get(i)
        if trace is not None:
            slab = (len(frame.payload(i, 0)), len(frame.payload(i, 1)))
            count_past_slab(ev, trace, slab, tally)
        if frame.cols["interim"][i] or frame.cols["expiration"][i] == "":
            self.tallies[fid] = tally  # still open: keep it for the next look
            while len(self.tallies) > COUNT_FLOWS:
                self.tallies.popitem(last=False)
        return tally

    def _sv2_alert(self, frame: FeatureFrame, i: int, hs: tuple[int, int, int]) -> Alert:
        sid, sig = SIDS["stratum-v2"]
        assert frame.splt_t_ms is not None
        start_ns = int(frame.cols["bidirectional_first_seen_ms"][i]) * 1_000_000
        ts = start_ns + int(float(frame.splt_t_ms[i, hs[2]]) * 1e6)
        return Alert(
            signature_id=sid, signature=sig, category="stratum-mining", variant="stratum-v2",
            severity=2, confidence=0.6, timestamp_ns=ts, flow=flow_fields(frame, i),
            evidence={"noise_handshake_bytes": {"client": hs[0], "server": hs[1]},
                      "port": int(frame.cols["dst_port"][i])},
            app_proto="stratum2",
        )

    def _alert(self, frame: FeatureFrame, i: int, ev: Evidence) -> Alert:
        variant = ev.variant_votes.most_common(1)[0][0]
        if "ethereumstratum" in ev.variant_votes:
            variant = "ethereumstratum"
        sid, sig = SIDS[variant]
        evidence: dict[str, Any] = {"methods": dict(ev.methods.most_common(12))}
        for key in ("agent", "algo", "worker", "difficulty"):
            value = getattr(ev, key)
            if value is not None:
                evidence[key] = value
        tally = self._tally(frame, i, ev)
        evidence["jobs"] = ev.jobs + tally.jobs
        evidence["shares"] = ev.shares + tally.shares
        evidence["jobs_parsed"] = ev.jobs
        evidence["shares_parsed"] = ev.shares
        evidence["count_method"] = COUNT_METHOD
        d, offset = ev.completed or (0, 0)
        return Alert(
            signature_id=sid, signature=sig, category="stratum-mining", variant=variant,
            severity=1, confidence=0.95 if len(ev.kinds) >= 3 else 0.85,
            timestamp_ns=time_at_offset(frame, i, d, offset), flow=flow_fields(frame, i),
            evidence=evidence, app_proto="stratum",
        )
