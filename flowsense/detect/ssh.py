"""SSH seen from outside the encryption: banners, KEXINITs, the key exchange, and what they say
about roles, ports and wrappers.

Parsed from each direction's payload (the watched-flow slab; an ``SSH-`` watch rule leases it, so
KEXINITs past byte 512 are there): the identification string (RFC 4253 4.2; a server may send
other lines first), then the binary packets in the clear up to NEWKEYS (RFC 4253 6: length,
padding length, payload whose first byte is the message number). HASSH and HASSHServer follow
Salesforce's definition (MD5 of kex;encryption;mac;compression from the client's, resp. the
server's, KEXINIT); the negotiated algorithms follow RFC 4253 7.1 (the first of the client's
list the server also offers).

Flagged (ALERTS.md categories); the timing variants are judged in ``ssh_timing`` from sizes
given by ``ssh_framing``, on every look at a live flow (snapshots) and when it ends:

* ``reverse-ssh`` / ``reverse-interactive``, ``reverse-setup``, ``remote-forward``,
  ``reverse-exfil`` and ``ssh-tunnel`` / ``idle-tunnel``: see ``ssh_timing``.

* ``reverse-ssh`` / ``role-reversal``: the TCP client plays the SSH server (it sends the key
  exchange reply) or the TCP server plays the client, as in Zeek's ``reverse-ssh.pcap``. Only on
  a handshake the capture saw begin with a SYN (never a guessed orientation).
* ``ssh-tunnel`` / ``odd-port``: SSH on a port registered to another protocol.
* ``ssh-tunnel`` / ``multiplexed``: SSH on a server address and port that also served TLS in the
  same input (sslh and the like).
* ``ssh-tunnel`` / ``encapsulated``: an SSH banner inside a WebSocket (HTTP Upgrade) stream or
  inside ICMP echo payloads (IP over ICMP).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowsense.detect.base import Alert, Detector, Resources, flow_fields, time_at_offset
from flowsense.detect.ssh_framing import suite
from flowsense.detect.ssh_timing import Session, handshake_rtt_ns
from flowsense.encoding import wire_text
from flowsense.flows.features import FeatureFrame, heads_joined
from flowsense.flows.table import WatchRule

MAX_PACKET = 35000  # RFC 4253 6.1: implementations must handle 35000-byte packets
KEXINIT = 20
NEWKEYS = 21
CLIENT_KEX = {30, 32, 34}  # KEXDH_INIT / KEX_ECDH_INIT, KEX_DH_GEX_INIT, KEX_DH_GEX_REQUEST
SERVER_KEX = {31, 33}  # KEXDH_REPLY / KEX_ECDH_REPLY, KEX_DH_GEX_REPLY (31 also GEX_GROUP)
NAME_LISTS = ("kex", "hostkey", "enc_c2s", "enc_s2c", "mac_c2s", "mac_s2c", "comp_c2s",
              "comp_s2c", "lang_c2s", "lang_s2c")
# ports registered to other protocols where SSH has no business (IANA service names)
ODD_PORTS = {20: "ftp-data", 21: "ftp", 23: "telnet", 25: "smtp", 53: "domain", 80: "http",
             110: "pop3", 123: "ntp", 143: "imap", 443: "https", 445: "microsoft-ds",
             465: "submissions", 587: "submission", 853: "domain-s", 993: "imaps", 995: "pop3s",
             1194: "openvpn", 3389: "ms-wbt-server", 5060: "sip", 8080: "http-alt",
             8443: "https-alt"}
SIDS = {
    ("reverse-ssh", "reverse-interactive"): (3100101, 1, "reverse SSH: interactive session "
                                                         "driven from the server side"),
    ("reverse-ssh", "reverse-setup"): (3100102, 1, "reverse SSH: a login through a tunnel "
                                                   "opened from the server side"),
    ("reverse-ssh", "remote-forward"): (3100103, 2, "reverse SSH: remote port forward "
                                                    "requested (tcpip-forward)"),
    ("reverse-ssh", "reverse-exfil"): (3100104, 1, "reverse SSH: bulk transfer out through a "
                                                   "reverse session"),
    ("reverse-ssh", "role-reversal"): (3100005, 1, "reverse SSH: the connection's initiator "
                                                   "plays the SSH server"),
    ("ssh-tunnel", "idle-tunnel"): (3200001, 2, "SSH session kept open by keepalives alone"),
    ("ssh-tunnel", "odd-port"): (3200002, 2, "SSH on a port registered to another protocol"),
    ("ssh-tunnel", "multiplexed"): (3200003, 2, "SSH behind a protocol multiplexer"),
    ("ssh-tunnel", "encapsulated"): (3200004, 1, "SSH inside another protocol (WebSocket)"),
}
MEMO_ENDPOINTS = 50_000


@dataclass
class SshSide:
    banner: str | None = None
    banner_end: int = 0
    kexinit: dict[str, list[str]] | None = None
    messages: list[int] = field(default_factory=list)  # message numbers in the clear
    newkeys_at: int | None = None  # byte offset where encryption starts


def parse_side(data: bytes) -> SshSide:
    """Banner, KEXINIT and cleartext message numbers of one direction (bounds checked)."""
    side = SshSide()
    start = 0
    for _ in range(16):  # lines a server may send before its banner
        if data.startswith(b"SSH-", start):
            break
        nl = data.find(b"\n", start, start + 1024)
        if nl < 0:
            return side
        start = nl + 1
    else:
        return side
    nl = data.find(b"\n", start, start + 256)
    if nl < 0:
        return side
    side.banner = wire_text(data[start:nl].rstrip(b"\r"))
    side.banner_end = p = nl + 1
    if not side.banner.startswith("SSH-2.0") and not side.banner.startswith("SSH-1.99"):
        return side  # SSH-1 framing differs; the banner is what we keep
    while p + 6 <= len(data) and len(side.messages) < 64:
        plen, padlen = struct.unpack(">IB", data[p:p + 5])
        if plen < 5 or plen > MAX_PACKET or padlen >= plen:
            break
        payload = data[p + 5:p + 4 + plen - padlen]
        if not payload:
            break
        msg = payload[0]
        side.messages.append(msg)
        if msg == KEXINIT and side.kexinit is None:
            side.kexinit = _kexinit(payload)
        p += 4 + plen
        if msg == NEWKEYS:
            side.newkeys_at = p
            break
    return side


def _kexinit(payload: bytes) -> dict[str, list[str]] | None:
    p = 17  # message number and 16-byte cookie
    out: dict[str, list[str]] = {}
    for name in NAME_LISTS:
        if p + 4 > len(payload):
            return None
        n = struct.unpack(">I", payload[p:p + 4])[0]
        if p + 4 + n > len(payload):
            return None
        text = wire_text(payload[p + 4:p + 4 + n])
        out[name] = text.split(",") if text else []
        p += 4 + n
    return out


def hassh(kex: dict[str, list[str]], server: bool) -> dict[str, str]:
    d = "s2c" if server else "c2s"
    algs = ";".join(",".join(kex[k]) for k in ("kex", f"enc_{d}", f"mac_{d}", f"comp_{d}"))
    return {"hash": hashlib.md5(algs.encode(), usedforsecurity=False).hexdigest(),
            "string": algs}


def negotiated(client: dict[str, list[str]], server: dict[str, list[str]]) -> dict[str, str]:
    """RFC 4253 7.1: for each list, the first client choice the server also supports."""
    out = {}
    for key in ("kex", "hostkey", "enc_c2s", "enc_s2c", "mac_c2s", "mac_s2c", "comp_c2s",
                "comp_s2c"):
        offered = set(server.get(key, []))
        out[key] = next((a for a in client.get(key, []) if a in offered), "")
    return out


class SshDetector(Detector):
    name = "ssh"

    def __init__(self, resources: Resources | None = None) -> None:
        super().__init__(resources)
        # server endpoints: which protocols answered there, and SSH flows waiting for a TLS one
        self._served: OrderedDict[tuple[str, int], set[str]] = OrderedDict()
        self._ssh_seen: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        # timing state of watched SSH flows by flow_id (None: nothing to time, e.g. an unknown
        # cipher); bounded, least recently seen dropped first, ended flows forgotten
        self._sessions: OrderedDict[int, Session | None] = OrderedDict()
        self._tun = self.resources.config.ssh

    def watch_rules(self) -> Sequence[WatchRule]:
        # an SSH banner, and ICMP echo payloads that begin with an IPv4 header (IP over ICMP,
        # as icmptunnel and ptunnel carry it): their slab holds the inner stream's first KiB
        return (WatchRule(b"SSH-"), WatchRule(b"\x45", port=8))

    def _remember(self, key: tuple[str, int], proto: str) -> set[str]:
        seen = self._served.setdefault(key, set())
        seen.add(proto)
        self._served.move_to_end(key)
        while len(self._served) > MEMO_ENDPOINTS:
            self._served.popitem(last=False)
        return seen

    def on_frame(self, frame: FeatureFrame) -> list[Alert]:
        """Ended flows (and interim records): the cleartext checks, then the rest of their
        trace; their timing state is then forgotten."""
        alerts = self._static(frame) + self._timing(frame)
        c = frame.cols
        for i in frame.traces:
            if not bool(c["interim"][i]) and c["expiration"][i] != "":
                self._sessions.pop(int(c["flow_id"][i]), None)
        return alerts

    def on_snapshot(self, frame: FeatureFrame) -> list[Alert]:
        """Live watched flows: the cleartext checks and the trace entries new since the last
        look, so a reverse shell is flagged while the flow is open."""
        return self._static(frame) + self._timing(frame)

    def _timing(self, frame: FeatureFrame) -> list[Alert]:
        alerts: list[Alert] = []
        c = frame.cols
        for i, trace in frame.traces.items():
            if c["protocol"][i] != 6:
                continue
            fid = int(c["flow_id"][i])
            if fid in self._sessions:
                self._sessions.move_to_end(fid)
                sess = self._sessions[fid]
            else:
                sess = self._session(frame, i)
                if sess is False:
                    continue  # not ready yet (no NEWKEYS in the slab): look again later
                self._sessions[fid] = sess or None
                while len(self._sessions) > self._tun.max_sessions:
                    self._sessions.popitem(last=False)
            if not sess:
                continue
            for f in sess.feed(trace):
                category = "ssh-tunnel" if f.variant == "idle-tunnel" else "reverse-ssh"
                alerts.append(self._alert(frame, i, category, f.variant, f.confidence, f.ts_ns,
                                          {**f.evidence, **sess.base}))
        return alerts

    def _session(self, frame: FeatureFrame, i: int) -> Session | None | bool:
        """Timing state for an SSH flow: None when it cannot be timed (not SSH, an unknown
        cipher), False when its key exchange is not complete yet."""
        cs = parse_side(frame.payload(i, 0))
        ss = parse_side(frame.payload(i, 1))
        if not (cs.banner and ss.banner):
            return None if not (cs.banner or ss.banner) else False
        if cs.kexinit is None or ss.kexinit is None or None in (cs.newkeys_at, ss.newkeys_at):
            return False
        # roles from the SSH messages: the suite client to server is the initiator's unless
        # the initiator plays the SSH server (role reversal)
        swapped = bool(SERVER_KEX & set(cs.messages)) or bool(CLIENT_KEX & set(ss.messages))
        client, server = (ss, cs) if swapped else (cs, ss)
        n = negotiated(client.kexinit or {}, server.kexinit or {})
        c2s = suite(n["enc_c2s"], n["mac_c2s"], n["comp_c2s"])
        s2c = suite(n["enc_s2c"], n["mac_s2c"], n["comp_s2c"])
        if c2s is None or s2c is None:
            return None
        c = frame.cols
        # without the SYN the TCP roles are a guess (ALERTS.md): take the SSH client as the
        # initiator then, so a capture that began mid-handshake is judged the right way round
        flip = swapped and c["orientation"][i] == "guessed"
        i2r, r2i = (s2c, c2s) if swapped and not flip else (c2s, s2c)
        enc_at = (ss.newkeys_at, cs.newkeys_at) if flip else (cs.newkeys_at, ss.newkeys_at)
        rtt = None
        if frame.splt_ps is not None and frame.splt_t_ms is not None and frame.splt_n is not None:
            rtt = handshake_rtt_ns(frame.splt_ps[i], frame.splt_t_ms[i], int(frame.splt_n[i]),
                                   str(c["orientation"][i]))
        base = self._evidence(cs, ss)
        if flip:
            base["roles_from"] = "ssh"  # initiator and responder as the SSH messages name them
        sess = Session(i2r, r2i, enc_at, rtt, self._tun, base=base, flip=int(flip))
        trace = frame.traces[i]
        if trace.dropped:  # the ring went round before the first look: the handshake is past
            sess.enc = [True, True]
            sess.enc_ts = sess.active_ts = sess.last_data_ts = int(trace.ts_ns[0])
        return sess

    def _static(self, frame: FeatureFrame) -> list[Alert]:
        if frame.n == 0 or frame.head is None:
            return []
        c = frame.cols
        # vectorised pick, over TCP rows: a banner at the start of either direction, a TLS
        # ClientHello (for multiplexers), or an HTTP request that may upgrade to a WebSocket
        tcp = np.flatnonzero(c["protocol"] == 6)
        assert frame.start is not None  # with the heads
        start = frame.start[tcp, :, :3]
        ssh = _starts(start[:, 0], b"SSH") | _starts(start[:, 1], b"SSH")
        tls = start[:, 0, 0] == 0x16
        http = start[:, 0, 0] == ord("G")
        alerts: list[Alert] = []
        for i in tcp[tls].tolist():
            key = (frame.text("dst_ip", i), int(c["dst_port"][i]))
            self._remember(key, "tls")
            waiting = self._ssh_seen.pop(key, None)
            if waiting is not None:
                alerts.append(waiting["multiplexed"])
        for i in tcp[ssh].tolist():
            alerts += self._judge(frame, i)
        rows = tcp[http & ~ssh]
        for i in _containing(frame, rows, (0,), b"upgrade: websocket", fold=True).tolist():
            a = self._websocket(frame, i)
            if a is not None:
                alerts.append(a)
        icmp = np.flatnonzero((c["protocol"] == 1) | (c["protocol"] == 58))
        for i in _containing(frame, icmp, (0, 1), b"SSH-").tolist():
            a = self._icmp(frame, i)
            if a is not None:
                alerts.append(a)
        return alerts

    def _icmp(self, frame: FeatureFrame, i: int) -> Alert | None:
        """An SSH identification line inside ICMP payloads (an IP-over-ICMP tunnel)."""
        for d in (0, 1):
            data = frame.payload(i, d)
            k = _banner_at(data)
            if k >= 0:
                end = data.find(b"\n", k, k + 256)
                banner = wire_text(data[k:end].rstrip(b"\r"))
                start_ns = int(frame.cols["bidirectional_first_seen_ms"][i]) * 1_000_000
                return self._alert(frame, i, "ssh-tunnel", "encapsulated", 0.85,
                                   time_at_offset(frame, i, d, k + 1, start_ns),
                                   {"wrapper": "icmp", "inner_banner": banner})
        return None

    def _evidence(self, cs: SshSide, ss: SshSide) -> dict[str, Any]:
        ev: dict[str, Any] = {"ssh": {"client": {}, "server": {}}}
        for side, name, is_server in ((cs, "client", False), (ss, "server", True)):
            if side.banner:
                ev["ssh"][name]["software_version"] = side.banner
            if side.kexinit:
                ev["ssh"][name]["hassh"] = hassh(side.kexinit, is_server)
            if side.newkeys_at is not None:
                ev["ssh"][name]["encrypted_from_byte"] = side.newkeys_at
        if cs.kexinit and ss.kexinit:
            ev["ssh"]["negotiated"] = negotiated(cs.kexinit, ss.kexinit)
        return ev

    def _alert(self, frame: FeatureFrame, i: int, category: str, variant: str,
               confidence: float, ts: int, evidence: dict[str, Any]) -> Alert:
        sid, severity, signature = SIDS[(category, variant)]
        return Alert(signature_id=sid, signature=signature, category=category, variant=variant,
                     severity=severity, confidence=confidence, timestamp_ns=ts,
                     flow=flow_fields(frame, i), evidence=evidence, app_proto="ssh")

    def _judge(self, frame: FeatureFrame, i: int) -> list[Alert]:
        c = frame.cols
        cs = parse_side(frame.payload(i, 0))
        ss = parse_side(frame.payload(i, 1))
        if not (cs.banner or ss.banner):
            return []
        ev = self._evidence(cs, ss)
        start_ns = int(c["bidirectional_first_seen_ms"][i]) * 1_000_000
        out: list[Alert] = []
        # role reversal: the key exchange reply comes from the TCP client, or the request from
        # the TCP server; only where the capture saw the SYN name the client
        reply_from_client = bool(SERVER_KEX & set(cs.messages))
        request_from_server = bool(CLIENT_KEX & set(ss.messages))
        if c["orientation"][i] == "syn" and (reply_from_client or request_from_server):
            d = 0 if reply_from_client else 1
            side = cs if d == 0 else ss
            kex_msgs = SERVER_KEX if d == 0 else CLIENT_KEX
            at = _offset_of_message(frame.payload(i, d), side, kex_msgs)
            ev_rr = dict(ev, kex_reply_from_initiator=reply_from_client,
                         kex_request_from_responder=request_from_server)
            out.append(self._alert(frame, i, "reverse-ssh", "role-reversal", 0.9,
                                   time_at_offset(frame, i, d, at, start_ns), ev_rr))
        port = int(c["dst_port"][i])
        banner_ts = time_at_offset(frame, i, 0 if cs.banner else 1, 1, start_ns)
        if port in ODD_PORTS:
            out.append(self._alert(frame, i, "ssh-tunnel", "odd-port", 0.8, banner_ts,
                                   dict(ev, port=port, registered_to=ODD_PORTS[port])))
        key = (frame.text("dst_ip", i), port)
        mux = self._alert(frame, i, "ssh-tunnel", "multiplexed", 0.75, banner_ts,
                          dict(ev, also_served="tls"))
        if "tls" in self._remember(key, "ssh"):
            out.append(mux)
        else:
            self._ssh_seen[key] = {"multiplexed": mux}
            while len(self._ssh_seen) > MEMO_ENDPOINTS:
                self._ssh_seen.popitem(last=False)
        return out

    def _websocket(self, frame: FeatureFrame, i: int) -> Alert | None:
        client = frame.payload(i, 0)
        if b"upgrade: websocket" not in client[:2048].lower():
            return None
        server = frame.payload(i, 1)
        if not server.startswith(b"HTTP/1.1 101"):
            return None
        k = server.find(b"SSH-", server.find(b"\r\n\r\n"))
        if k < 0:
            return None
        end = server.find(b"\n", k, k + 256)
        banner = wire_text(server[k:end if end > 0 else k + 64].rstrip(b"\r"))
        if not (banner.startswith("SSH-2.0-") or banner.startswith("SSH-1.")):
            return None
        start_ns = int(frame.cols["bidirectional_first_seen_ms"][i]) * 1_000_000
        return self._alert(frame, i, "ssh-tunnel", "encapsulated", 0.9,
                           time_at_offset(frame, i, 1, k + 1, start_ns),
                           {"wrapper": "websocket", "inner_banner": banner})


_BANNER = re.compile(rb"SSH-(?:2\.0|1\.\d{1,2})-[!-~]{1,200}\r?\n")


def _banner_at(data: bytes) -> int:
    """Offset of a whole SSH identification line anywhere in ``data``, or -1."""
    m = _BANNER.search(data)
    return m.start() if m else -1


def _starts(heads: np.ndarray, prefix: bytes) -> np.ndarray:
    """Rows of a uint8[n, H] head matrix that begin with ``prefix``."""
    ok = heads[:, 0] == prefix[0]
    for k in range(1, len(prefix)):
        ok &= heads[:, k] == prefix[k]
    return ok


def _containing(frame: FeatureFrame, rows: np.ndarray, dirs: tuple[int, ...], word: bytes,
                fold: bool = False) -> np.ndarray:
    """The ``rows`` whose payload in one of ``dirs`` may contain ``word`` (lower-cased first
    with ``fold``): a watched flow's (its slab outgrows the head), or one whose head does, found
    by one search over the heads laid end to end (each followed by a NUL, so no match spans two;
    ``word`` holds none). A superset for the per-row test to settle."""
    if not len(rows):
        return rows
    keep = np.zeros(len(rows), dtype=bool)
    if frame.slabs:
        keep |= np.isin(rows, np.fromiter(frame.slabs, dtype=np.int64, count=len(frame.slabs)))
    for d in dirs:
        blob, width = heads_joined(frame, rows, d, 0)
        if fold:
            blob = blob.lower()
        at = blob.find(word)
        while at >= 0:
            k = at // width
            keep[k] = True
            at = blob.find(word, (k + 1) * width)  # the next row
    return rows[keep]


def _offset_of_message(data: bytes, side: SshSide, wanted: set[int]) -> int:
    """Byte offset just past the first packet carrying one of ``wanted`` message numbers."""
    p = side.banner_end
    for msg in side.messages:
        if p + 4 > len(data):
            break
        p += 4 + struct.unpack(">I", data[p:p + 4])[0]
        if msg in wanted:
            return p
    return max(p, 1)
