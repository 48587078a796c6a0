"""Long-lived sessions scripted event by event: interactive SSH and Stratum mining.

There are only a handful of these flows (a few thousand packets in all), so a readable Python
script per session costs nothing next to the vectorised bulk. They open at the start of the
capture and are still open at its end, as a tunnel or a miner would be.
"""

from __future__ import annotations

import numpy as np

from benchmarks import payloads
from benchmarks.synth_packets import ACK, PSH, SYN, Packets, empty_packets

DELAYED_ACK_US = 40_000  # Linux's delayed-ACK timer


class _Script:
    """Collects the packets of one flow, in any order; :meth:`packets` sorts them by time."""

    def __init__(self, flow: int, book: payloads.TemplateBook) -> None:
        self.flow, self.book = flow, book
        self.rows: list[tuple[int, bool, int, int, int]] = []

    def send(self, t_us: float, from_client: bool, size: int = 0, flags: int = ACK) -> None:
        """A segment with ``size`` random payload bytes (a bare ACK by default)."""
        if size and flags == ACK:
            flags = PSH | ACK
        self.rows.append((int(t_us), from_client, flags, size, -1))

    def say(self, t_us: float, from_client: bool, text: bytes) -> None:
        """A segment whose payload is exactly ``text``."""
        self.rows.append((int(t_us), from_client, PSH | ACK, len(text), self.book.add(text)))

    def handshake(self, t_us: float, rtt_us: float) -> float:
        """SYN, SYN-ACK, ACK; returns the time the connection is established."""
        self.send(t_us, True, flags=SYN)
        self.send(t_us + rtt_us, False, flags=SYN | ACK)
        self.send(t_us + rtt_us + 40, True)
        return t_us + rtt_us + 40

    def packets(self) -> Packets:
        rows = sorted(self.rows, key=lambda r: r[0])  # stable: equal times keep script order
        pk = empty_packets(len(rows))
        ts = np.array([r[0] for r in rows], np.int64)
        # Strictly increasing, at least a microsecond apart: the global sort keeps this order.
        pk.ts_us = np.maximum.accumulate(ts - np.arange(len(ts))) + np.arange(len(ts))
        pk.flow[:] = self.flow
        pk.from_client = np.array([r[1] for r in rows], bool)
        pk.flags = np.array([r[2] for r in rows], np.uint8)
        pk.plen = np.array([r[3] for r in rows], np.int64)
        pk.tmpl = np.array([r[4] for r in rows], np.int32)
        return pk


# The key exchange and authentication of an OpenSSH session after the banners: (from_client, bytes).
_SSH_SETUP = [
    (True, 1448),
    (True, 88),
    (False, 1080),
    (True, 1208),
    (False, 1448),
    (False, 132),
    (True, 16),
    (True, 44),
    (False, 44),
    (True, 68),
    (False, 52),
    (True, 612),
    (False, 28),
    (True, 112),
    (False, 680),
    (True, 400),
    (False, 92),
    (False, 504),
]


def ssh_session(
    rng: np.random.Generator,
    flow: int,
    start_us: float,
    end_us: float,
    rtt_us: float,
    mss: int,
    book: payloads.TemplateBook,
) -> Packets:
    """An interactive session: banners, key exchange, then keystrokes echoed until ``end_us``.

    Each keystroke is a 36-byte encrypted packet (chacha20-poly1305, no TCP options) from the
    client, the 36-byte echo from the server, and the client's delayed ACK; now and then a
    command prints a burst of output. Pauses stay far below any idle timeout.
    """
    s = _Script(flow, book)
    t = s.handshake(start_us, rtt_us) + 2_000
    s.say(t, False, payloads.SSH_SERVER_BANNER)
    s.say(t + 300, True, payloads.SSH_CLIENT_BANNER)
    t += rtt_us
    for from_client, size in _SSH_SETUP:
        s.send(t, from_client, min(size, mss))
        t += rtt_us / 2 + rng.uniform(100, 2_000)
    s.send(t, True)
    while True:
        t += rng.exponential(350_000) if rng.random() > 0.04 else rng.uniform(2e6, 15e6)
        if t > end_us - rtt_us - DELAYED_ACK_US:
            break
        s.send(t, True, 36)
        s.send(t + rtt_us, False, 36)
        s.send(t + rtt_us + DELAYED_ACK_US, True)
        if rng.random() < 0.05:  # Enter: a command writes a screenful of output
            for k in range(int(rng.integers(2, 16))):
                s.send(t + rtt_us + 300 + 150 * k, False, int(rng.choice([mss, mss, mss, 220, 96])))
                if k % 2:
                    s.send(t + 1.5 * rtt_us + 150 * k, True)
    return s.packets()


def stratum_session(
    rng: np.random.Generator,
    flow: int,
    start_us: float,
    end_us: float,
    rtt_us: float,
    book: payloads.TemplateBook,
    xmr: bool,
    worker: str,
) -> Packets:
    """A miner connected to a pool: subscribe/authorize (or login), then job pushes and shares.

    The pool pushes a job every few seconds (the client ACKs it after the delayed-ACK timer);
    the miner submits a share now and then and the pool answers it.
    """
    s = _Script(flow, book)
    t = s.handshake(start_us, rtt_us) + 1_000
    opening = payloads.xmr_open(worker) if xmr else payloads.stratum_v1_open(worker)
    previous_from_client = False
    for from_client, text in opening:
        # An answer waits a round trip; a message following one's own goes out at once.
        t += rtt_us if previous_from_client and not from_client else 200
        s.say(t, from_client, text)
        previous_from_client = from_client
    s.send(t + DELAYED_ACK_US, True)
    next_job, next_share, job, msg_id = t + 1_000, t + rng.exponential(7e6), 1, len(opening) + 1
    while True:
        if next_job <= next_share:
            t = next_job
            if t > end_us - DELAYED_ACK_US:
                break
            job += 1
            s.say(
                t,
                False,
                payloads.xmr_job(job, rng) if xmr else payloads.stratum_v1_notify(job, rng),
            )
            s.send(t + DELAYED_ACK_US, True)
            next_job = t + max(rng.exponential(4e6), 300_000)
        else:
            t = next_share
            if t > end_us - rtt_us - DELAYED_ACK_US:
                break
            msg_id += 1
            share = (
                payloads.xmr_submit(msg_id, job, rng)
                if xmr
                else payloads.stratum_v1_submit(msg_id, worker, job, rng)
            )
            s.say(t, True, share)
            s.say(t + rtt_us, False, payloads.stratum_result(msg_id))
            s.send(t + rtt_us + DELAYED_ACK_US, True)
            next_share = t + max(rng.exponential(7e6), 200_000)
    return s.packets()
