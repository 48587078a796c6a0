"""Columnar flow and packet tables for the synthetic capture, and the vectorised helpers on them.

Every builder returns packets in flow-major order (all packets of a flow together, in time order);
the generator concatenates them and sorts once by time to interleave the flows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# TCP flag bits.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# Flow kinds: what the generator made, for the sidecar's breakdown (the analysers never see it).
KINDS = ("tcp", "ssh", "stratum", "dns", "ntp", "quic", "icmp")
K_TCP, K_SSH, K_STRATUM, K_DNS, K_NTP, K_QUIC, K_ICMP = range(len(KINDS))

# Larger than any capture-relative time in microseconds: lets one cumulative max run per flow.
_GROUP_STRIDE = np.int64(1) << 40


@dataclass
class Flows:
    """One row per flow. Addresses are (n, 2) uint64: IPv4 in column 1, IPv6 as (high, low)."""

    kind: np.ndarray  # u1, index into KINDS
    proto: np.ndarray  # u1, IP protocol number (6, 17, 1 or 58)
    v6: np.ndarray  # bool
    vlan: np.ndarray  # u2, 802.1Q id, 0 = untagged
    cli_addr: np.ndarray  # (n, 2) u8
    srv_addr: np.ndarray  # (n, 2) u8
    cli_port: np.ndarray  # u2; the echo identifier for ICMP
    srv_port: np.ndarray  # u2
    cli_mac: np.ndarray  # u8, 48 bits
    isn_c: (
        np.ndarray
    )  # i8, client's initial sequence number; low 16 bits are the DNS transaction id
    isn_s: np.ndarray  # i8


@dataclass
class Packets:
    """One row per packet, flow-major until the generator sorts by time."""

    ts_us: np.ndarray  # i8, microseconds since the start of the capture
    flow: np.ndarray  # i8, row in Flows
    from_client: np.ndarray  # bool
    flags: np.ndarray  # u1, TCP flags, or the ICMP type
    plen: np.ndarray  # i8, L4 payload bytes
    tmpl: np.ndarray  # i4, payload template id, -1 for random bytes
    seq: np.ndarray  # i8, TCP sequence number or ICMP echo sequence
    ack: np.ndarray  # i8, TCP acknowledgement number

    def __len__(self) -> int:
        return len(self.ts_us)


def empty_packets(n: int) -> Packets:
    """A zeroed packet table of ``n`` rows (template -1)."""
    return Packets(
        ts_us=np.zeros(n, np.int64),
        flow=np.zeros(n, np.int64),
        from_client=np.zeros(n, bool),
        flags=np.zeros(n, np.uint8),
        plen=np.zeros(n, np.int64),
        tmpl=np.full(n, -1, np.int32),
        seq=np.zeros(n, np.int64),
        ack=np.zeros(n, np.int64),
    )


def concat_packets(parts: list[Packets]) -> Packets:
    """Concatenate packet tables column by column."""
    return Packets(
        **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Packets)}
    )


def concat_flows(parts: list[Flows]) -> Flows:
    """Concatenate flow tables column by column."""
    return Flows(
        **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Flows)}
    )


def group_index(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of the given sizes laid out back to back: (group of each row, index within it)."""
    sizes = np.asarray(sizes, np.int64)
    group = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    starts = np.cumsum(sizes) - sizes
    return group, np.arange(int(sizes.sum()), dtype=np.int64) - starts[group]


def strictly_increasing(ts_us: np.ndarray, group: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Nudge times so they increase by at least 1 us within each group (flow-major input).

    Two packets of one flow with the same timestamp would make their order depend on the sort;
    subtracting the index turns "strictly increasing" into "non-decreasing", a cumulative max.
    """
    shifted = ts_us - index + group * _GROUP_STRIDE
    return np.maximum.accumulate(shifted) - group * _GROUP_STRIDE + index


def tcp_sequence_numbers(pk: Packets, fl: Flows) -> None:
    """Fill ``seq``/``ack`` of TCP packets in place (flow-major, time-ordered input).

    Each side's sequence advances by its payload plus one for SYN and FIN; a packet acknowledges
    everything the other side sent before it (the network is loss-free and instantaneous).
    """
    tcp = fl.proto[pk.flow] == 6
    adv = pk.plen + ((pk.flags & SYN) != 0) + ((pk.flags & FIN) != 0)
    adv = np.where(tcp, adv, 0)
    c_adv = np.where(pk.from_client, adv, 0)
    s_adv = adv - c_adv
    c_cum, s_cum = np.cumsum(c_adv), np.cumsum(s_adv)
    # Cumulative sums restart at each flow: subtract the running total at the flow's first packet.
    first = np.r_[True, pk.flow[1:] != pk.flow[:-1]]
    starts = np.flatnonzero(first)
    run = np.cumsum(first) - 1
    c_before = (c_cum - c_adv)[starts][run]
    s_before = (s_cum - s_adv)[starts][run]
    c_sent, s_sent = c_cum - c_before, s_cum - s_before  # inclusive of this packet
    isn_c, isn_s = fl.isn_c[pk.flow], fl.isn_s[pk.flow]
    mask32 = np.int64(0xFFFFFFFF)
    seq = np.where(pk.from_client, isn_c + c_sent - c_adv, isn_s + s_sent - s_adv) & mask32
    ack = np.where(pk.from_client, isn_s + s_sent, isn_c + c_sent) & mask32
    # A bare SYN acknowledges nothing.
    ack = np.where((pk.flags & ACK) != 0, ack, 0)
    pk.seq = np.where(tcp, seq, pk.seq)
    pk.ack = np.where(tcp, ack, pk.ack)
