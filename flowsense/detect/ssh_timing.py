"""What an SSH session's encrypted packets say by their sizes, directions and timing.

One ``Session`` per watched SSH flow, fed the flow's trace (payload length, flags, time; see
``flows.features.Trace``) a little at a time: each look consumes only the entries new since the
last (the trace counts every packet since the lease, so entries the ring overwrote between two
looks are known and skipped), retransmissions are left out, and sizes are TCP payload sizes from
IP lengths. The state is a few counters a flow, so a reverse shell opened hours into a session
is found while the flow is open.

The ideas come from the analysts who look at encrypted SSH by hand: packetStrider (keystroke and
login shapes, the reverse-session indicator), JA4SSH (which side sends the bare ACKs: the typing
side receives the echoes and acknowledges them), and OpenSSH 9.5's chaff (keystroke-sized
``PING``s every 20 ms while typing, answered by the server). Sizes come from ``ssh_framing``.

* ``reverse-interactive``: keystroke bursts. A burst opens with a keystroke-sized packet after
  ``burst_gap_ms`` of quiet in both directions; it counts as reverse when the responder opened it
  and the initiator answered with the matching echo size within ``fast`` (half the handshake's
  round trip, kept within 10-40 ms, 25 ms without a handshake: a reverse echo takes about zero
  seen from the inside host, a forward one a round trip), and as forward when the initiator
  opened it and the responder answered. A responder packet a round trip after the initiator's
  own key is that key's echo and opens nothing. Chaff keeps a burst open, so
  it is counted once whoever answers it.
* ``reverse-setup``: after login the responder opens a channel (``forwarded-tcpip``, the only
  direction an ``-R`` forward opens in; the agent and X11 channels a server opens are smaller),
  the initiator confirms at once, and a key exchange follows through it (a packet of
  inner-KEXINIT size each way within 10 s).
* ``remote-forward``: the first requests after ``USERAUTH_SUCCESS`` include one of
  ``tcpip-forward``'s size (its bind address 0-45 bytes) answered by a ``REQUEST_SUCCESS``, before
  any channel is confirmed (the server's ``hostkeys-00`` comes the other way and larger; a
  keepalive comes later and periodically).
* ``reverse-exfil``: after a reverse finding, ``exfil_bytes`` from initiator to responder, at
  least four times what went the other way.
* ``idle-tunnel``: nothing but keepalive requests and their replies for ``idle_tunnel_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowsense.config import SshConfig
from flowsense.detect.ssh_framing import (
    MAX_BIND_ADDRESS,
    OPEN_CONFIRMATION,
    TCPIP_FORWARD_BASE,
    KeystrokeModel,
    Suite,
    sizes_for,
)
from flowsense.flows.features import Trace
from flowsense.flows.table_kernels import TR_ACK_ONLY, TR_DIR, TR_RETRANS

I2R, R2I = 0, 1
MS = 1_000_000
INNER_KEXINIT = 300  # smallest inner KEXINIT carried (Dropbear's are ~500 bytes, OpenSSH's ~1 KiB)
SETUP_WINDOW_NS = 10_000 * MS
FORWARD_SCAN = 4  # requests after USERAUTH_SUCCESS looked at for tcpip-forward
LATENCIES_KEPT = 32
KEEPALIVE_MIN_NS = 1000 * MS


@dataclass
class Finding:
    variant: str
    ts_ns: int
    confidence: float
    evidence: dict[str, Any]


@dataclass
class Session:
    """Timing state of one SSH flow (bounded: counters and a few recent values)."""

    i2r: Suite  # framing from the initiator to the responder
    r2i: Suite
    enc_at: tuple[int | None, int | None]  # byte offsets where encryption starts, by direction
    rtt_ns: int | None
    tun: SshConfig
    base: dict[str, Any] = field(default_factory=dict)  # versions, HASSH, negotiated
    flip: int = 0  # 1: the TCP roles were guessed wrong; the SSH client is the initiator
    model: KeystrokeModel = field(init=False)
    consumed: int = 0
    missed: int = 0
    nbytes: list[int] = field(default_factory=lambda: [0, 0])
    enc: list[bool] = field(default_factory=lambda: [False, False])
    enc_ts: int = 0
    acks: list[int] = field(default_factory=lambda: [0, 0])
    last_data_ts: int = 0
    opener: tuple[int, int, int] | None = None  # (direction, ts, size) of the open burst
    last_i_cand: int = -1  # ts of the initiator's last keystroke-sized packet not an echo
    rev_bursts: int = 0
    fwd_bursts: int = 0
    latencies_us: list[int] = field(default_factory=list)
    fwd_latencies_us: list[int] = field(default_factory=list)
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # matched pairs, counted
    reverse_since: int | None = None  # ts of the first reverse finding
    since_bytes: list[int] = field(default_factory=lambda: [0, 0])
    # remote-forward: 0 waiting for USERAUTH_SUCCESS, 1 watching requests, 2 done (or, with
    # compression, not judged)
    rf_stage: int = 0
    rf_requests: list[tuple[int, int]] = field(default_factory=list)  # (ts, size)
    rf_seen: int = 0
    # reverse-setup: a channel the responder opened and the initiator confirmed at once
    rs_open: tuple[int, int] | None = None  # (ts, size) of the candidate open
    rs_confirm: tuple[int, int, int] | None = None  # (ts, size, latency)
    rs_big: list[int] = field(default_factory=lambda: [0, 0])
    # idle-tunnel
    active_ts: int = 0
    ka_requests: int = 0
    ka_pending: tuple[int, int] | None = None  # (direction, ts) of an unanswered request
    ka_last: int = 0  # ts of the last keepalive request
    ka_sizes: set[int] = field(default_factory=set)  # sizes of the requests since activity
    fired: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.sz = sizes_for(self.i2r, self.r2i)
        self.model = self.sz.model
        fast = 25 * MS if self.rtt_ns is None else self.rtt_ns // 2
        self.fast_ns = int(min(max(fast, 10 * MS), 40 * MS))
        self.gap_ns = int(self.tun.burst_gap_ms * MS)

    # --- feeding ------------------------------------------------------------------------------
    def feed(self, trace: Trace) -> list[Finding]:
        """Consume the entries of ``trace`` not seen before; findings in packet order."""
        total = trace.dropped + len(trace.length)
        if total <= self.consumed:
            return []
        start = self.consumed - trace.dropped
        if start < 0:  # the ring went round between two looks
            self.missed += -start
            self.opener = None
            start = 0
        self.consumed = total
        fl = trace.flags[start:]
        keep = (fl & TR_RETRANS) == 0
        if not keep.any():
            return []
        out: list[Finding] = []
        for length, flags, ts in zip(trace.length[start:][keep].tolist(), fl[keep].tolist(),
                                     trace.ts_ns[start:][keep].tolist()):
            d = (flags & TR_DIR) ^ self.flip
            if length == 0:
                if flags & TR_ACK_ONLY and self.enc[0] and self.enc[1]:
                    self.acks[d] += 1
                continue
            self.nbytes[d] += length
            if not self.enc[d]:
                at = self.enc_at[d]
                if at is not None and self.nbytes[d] >= at:
                    self.enc[d] = True
                    if self.enc[1 - d]:
                        self.enc_ts = self.active_ts = self.last_data_ts = ts
                continue
            if not self.enc[1 - d]:
                continue
            self._packet(d, length, ts, out)
        return out

    def _packet(self, d: int, size: int, ts: int, out: list[Finding]) -> None:
        if self.reverse_since is not None:
            self.since_bytes[d] += size
        self._keystroke(d, size, ts, out)
        self._remote_forward(d, size, ts, out)
        self._setup(d, size, ts, out)
        self._idle(d, size, ts, out)
        self._exfil(ts, out)
        self.last_data_ts = ts

    # --- reverse-interactive ------------------------------------------------------------------
    def _keystroke(self, d: int, size: int, ts: int, out: list[Finding]) -> None:
        m = self.model
        cand = size in (m.r_sizes if d == R2I else m.i_sizes)
        op = self.opener
        answered = False
        if op is not None and op[0] != d:
            pair = (op[2], size) if op[0] == R2I else (size, op[2])
            lat = ts - op[1]
            # the initiator answers a responder's key at once, or it is a key of its own
            if cand and pair in m.pairs and (op[0] == I2R or lat <= self.fast_ns):
                answered = True
                if op[0] == R2I:
                    self.rev_bursts += 1
                    self.sizes[pair] = self.sizes.get(pair, 0) + 1
                    if len(self.latencies_us) < LATENCIES_KEPT:
                        self.latencies_us.append(lat // 1000)
                else:
                    self.fwd_bursts += 1
                    if len(self.fwd_latencies_us) < LATENCIES_KEPT:
                        self.fwd_latencies_us.append(lat // 1000)
            self.opener = None  # answered, or answered by something else
        if cand and not answered and ts - self.last_data_ts >= self.gap_ns:
            if not (d == R2I and self._echo_of_initiator(ts)):
                self.opener = (d, ts, size)
        if cand and d == I2R and not answered:  # a key of the initiator's, not an echo
            self.last_i_cand = ts
        if (self.rev_bursts >= self.tun.reverse_bursts
                and self.rev_bursts >= 2 * self.fwd_bursts + 1
                and "reverse-interactive" not in self.fired):
            self.fired.add("reverse-interactive")
            self._reverse_began(ts)
            out.append(Finding("reverse-interactive", ts, self._interactive_confidence(),
                               self.keystroke_evidence()))

    def _echo_of_initiator(self, ts: int) -> bool:
        """A responder packet one round trip after the initiator's keystroke is its echo (a
        forward session), even if it arrives after a quiet spell."""
        if self.rtt_ns is None or self.last_i_cand < 0:
            return False
        lag = ts - self.last_i_cand
        return 0.6 * self.rtt_ns <= lag <= 1.5 * self.rtt_ns + 5 * MS

    def _interactive_confidence(self) -> float:
        conf = 0.8
        if self.acks[R2I] > self.acks[I2R]:  # JA4SSH: the typing side sends the bare ACKs
            conf += 0.08
        if self.rtt_ns and self.latencies_us:
            med = sorted(self.latencies_us)[len(self.latencies_us) // 2] * 1000
            if med * 4 < self.rtt_ns:
                conf += 0.07
        return min(conf, 0.97)

    def keystroke_evidence(self) -> dict[str, Any]:
        lat = sorted(self.latencies_us)
        ev: dict[str, Any] = {
            "reverse_keystrokes": self.rev_bursts,
            "forward_keystrokes": self.fwd_bursts,
            "keystroke_sizes_matched": {f"{r}/{i}": n for (r, i), n in self.sizes.items()},
            "echo_latency_ms": round(lat[len(lat) // 2] / 1000, 3) if lat else None,
            "round_trip_ms": round(self.rtt_ns / MS, 3) if self.rtt_ns else None,
            "bare_acks": {"from_initiator": self.acks[I2R], "from_responder": self.acks[R2I]},
            "compressed": self.model.compressed,
        }
        if self.sizes:  # the commonest pair: what it is, and what could have made it
            pair = max(self.sizes, key=lambda p: self.sizes[p])
            kinds = self.model.kind[pair]
            if kinds[0] == "plain":
                ev["plain_keystroke_size"] = pair[0]
            if kinds[-1] != "plain":
                ev["tunnelled_keystroke_size"] = pair[0]
                ev["inner_suites"] = [k for k in kinds if k != "plain"]
        if self.missed:
            ev["trace_packets_missed"] = self.missed
        return ev

    def _reverse_began(self, ts: int) -> None:
        if self.reverse_since is None:
            self.reverse_since = ts
            self.since_bytes = [0, 0]

    # --- remote-forward -----------------------------------------------------------------------
    def _remote_forward(self, d: int, size: int, ts: int, out: list[Finding]) -> None:
        if self.rf_stage == 0:
            # USERAUTH_SUCCESS: a one-byte message from the server after the client's requests
            if d == R2I and size in self.sz.auth_ok and self.nbytes[I2R] > 0:
                self.rf_stage = 1
            return
        if self.rf_stage != 1:
            return
        if d == I2R:
            self.rf_seen += 1
            if size in self.sz.fwd_req:
                self.rf_requests.append((ts, size))
            if self.rf_seen > FORWARD_SCAN and not self.rf_requests:
                self.rf_stage = 2
            return
        if size in self.sz.fwd_rep and self.rf_requests:
            req_ts, req_size = self.rf_requests.pop(0)
            self.rf_stage = 2
            if "remote-forward" not in self.fired:
                self.fired.add("remote-forward")
                bind = sorted(n for n in range(MAX_BIND_ADDRESS)
                              if self.i2r.packet_size(TCPIP_FORWARD_BASE + n) == req_size)
                out.append(Finding("remote-forward", ts, 0.6, {
                    "request_size": req_size, "reply_size": size,
                    "bind_address_length": [bind[0], bind[-1]],
                    "reply_after_ms": round((ts - req_ts) / MS, 3)}))
        elif size == self.r2i.packet_size(OPEN_CONFIRMATION):
            self.rf_stage = 2  # a channel confirmed: the setup is over (hostkeys-00 passes)

    # --- reverse-setup ------------------------------------------------------------------------
    def _setup(self, d: int, size: int, ts: int, out: list[Finding]) -> None:
        # after login only: during authentication the client answers the server at once
        if self.rf_stage == 0 or "reverse-setup" in self.fired or self.rev_bursts:
            return
        if d == R2I and size in self.sz.rs_opens:
            self.rs_open = (ts, size)
            return
        if d == I2R and self.rs_open is not None and self.rs_confirm is None:
            lat = ts - self.rs_open[0]
            if size in self.sz.rs_conf and lat <= self.fast_ns:
                self.rs_confirm = (ts, size, lat)
                self.rs_big = [0, 0]
            else:
                self.rs_open = None
            return
        if self.rs_confirm is None:
            return
        if ts - self.rs_confirm[0] > SETUP_WINDOW_NS:
            self.rs_open = self.rs_confirm = None
            return
        if size >= INNER_KEXINIT and not self.rs_big[d]:
            self.rs_big[d] = size
        if self.rs_big[0] and self.rs_big[1]:
            self.fired.add("reverse-setup")
            self._reverse_began(ts)
            assert self.rs_open is not None
            out.append(Finding("reverse-setup", ts, 0.8, {
                "channel_open_from_responder_size": self.rs_open[1],
                "confirmation_size": self.rs_confirm[1],
                "confirmation_after_ms": round(self.rs_confirm[2] / MS, 3),
                "inner_kexinit_sizes": {"from_responder": self.rs_big[R2I],
                                        "from_initiator": self.rs_big[I2R]},
                "round_trip_ms": round(self.rtt_ns / MS, 3) if self.rtt_ns else None}))

    # --- reverse-exfil ------------------------------------------------------------------------
    def _exfil(self, ts: int, out: list[Finding]) -> None:
        if self.reverse_since is None or "reverse-exfil" in self.fired:
            return
        up, down = self.since_bytes
        if up >= self.tun.exfil_bytes and up >= 4 * down:
            self.fired.add("reverse-exfil")
            out.append(Finding("reverse-exfil", ts, 0.75, {
                "bytes_initiator_to_responder": up, "bytes_responder_to_initiator": down,
                "seconds_since_reverse_session": round((ts - self.reverse_since) / 1e9, 3),
                **({"trace_packets_missed": self.missed} if self.missed else {})}))

    # --- idle-tunnel --------------------------------------------------------------------------
    def _idle(self, d: int, size: int, ts: int, out: list[Finding]) -> None:
        pend = self.ka_pending
        # a keepalive request comes a second or more after the last (ServerAliveInterval and
        # Dropbear's -K count in seconds): faster small exchanges are typing
        if size in self.sz.ka_req[d] and ts - self.ka_last >= KEEPALIVE_MIN_NS:
            self.ka_requests += 1
            self.ka_pending = (d, ts)
            self.ka_last = ts
            self.ka_sizes.add(size)
        elif pend is not None and pend[0] != d and size in self.sz.ka_rep[d]:
            self.ka_pending = None
        else:
            self.active_ts = ts
            self.ka_requests = 0
            self.ka_pending = None
            self.ka_sizes = set()
            return
        idle_ns = ts - self.active_ts
        if (idle_ns >= self.tun.idle_tunnel_s * 1e9 and self.ka_requests >= 2
                and "idle-tunnel" not in self.fired):
            self.fired.add("idle-tunnel")
            out.append(Finding("idle-tunnel", ts, 0.7, {
                "idle_seconds": round(idle_ns / 1e9, 3), "keepalive_requests": self.ka_requests,
                "keepalive_request_sizes": sorted(self.ka_sizes),
                "compressed": self.model.compressed}))


def handshake_rtt_ns(splt_ps: np.ndarray, splt_t_ms: np.ndarray, n: int,
                     orientation: str) -> int | None:
    """Round trip from the TCP handshake (SYN, SYN-ACK, ACK: the first three packets, signed by
    direction), as seen where the capture was made; None without a handshake."""
    if orientation != "syn" or n < 3:
        return None
    if not (splt_ps[0] > 0 > splt_ps[1] and splt_ps[2] > 0):
        return None
    rtt = float(splt_t_ms[2]) - float(splt_t_ms[0])
    return int(rtt * MS) if rtt > 0 else None
