"""Mining protocols in the clear: Stratum v1, Monero-style (XMRig, xmr-stak), Ethereum proxies.

Recognised by parsing the newline-delimited JSON of a flow's payload (the watched-flow slab,
reassembled in TCP sequence order; a ``{`` watch rule leases it), in either direction and on any
port, never by substring: a message counts only if its line parses as a JSON object whose
``method`` (or a reply's ``result``) has the protocol's shape. A verdict needs at least two
distinct mining messages, so one stray word (a database row, a Zabbix ``login``, an Ethereum node
API call) does not fire. Facts from public sources: the Stratum v1 and EthereumStratum specs,
XMRig's and xmr-stak's pool protocol, nDPI's and Emerging Threats' mining signatures (whose known
misses and false positives the strictness here answers).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flowsense.detect.base import Alert, Detector, flow_fields, time_at_offset
from flowsense.encoding import wire_text
from flowsense.flows.features import FeatureFrame
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
}


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
    completed: tuple[int, int] | None = None  # (direction, byte offset) of the deciding line
    http: bool = False


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
    ev = Evidence(http=client.startswith(b"POST "))
    for d, data in ((0, client), (1, server)):
        for end, raw in _lines(data):
            try:
                msg = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(msg, dict):
                _classify(ev, msg, d, end)
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
    names = []
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


class StratumDetector(Detector):
    name = "stratum"

    def watch_rules(self) -> Sequence[WatchRule]:
        # JSON-RPC over raw TCP needs the slab; an HTTP getwork POST fits the 512-byte head
        return (WatchRule(b"{"),)

    def on_frame(self, frame: FeatureFrame) -> list[Alert]:
        alerts: list[Alert] = []
        heads = frame.head
        if heads is None:
            return alerts
        # vectorised pick: a first payload byte that could open JSON or an HTTP POST
        first = heads[:, :, 0]
        rows = ((first[:, 0] == ord("{")) | (first[:, 0] == ord("P")) | (first[:, 1] == ord("{")))
        rows &= frame.cols["protocol"] == 6
        for i in rows.nonzero()[0].tolist():
            ev = inspect(frame.payload(i, 0), frame.payload(i, 1))
            if ev is not None:
                alerts.append(self._alert(frame, i, ev))
        return alerts

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
        evidence["jobs"] = ev.jobs
        evidence["shares"] = ev.shares
        d, offset = ev.completed or (0, 0)
        return Alert(
            signature_id=sid, signature=sig, category="stratum-mining", variant=variant,
            severity=1, confidence=0.95 if len(ev.kinds) >= 3 else 0.85,
            timestamp_ns=time_at_offset(frame, i, d, offset), flow=flow_fields(frame, i),
            evidence=evidence, app_proto="stratum",
        )
