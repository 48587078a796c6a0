"""The mix: which flows the capture holds, their endpoints, sizes and lifetimes.

Flow identity is kept unambiguous on purpose, so that every analyser must find the same number
of flows: each non-ICMP flow has its own client (address, port) pair (no port reuse, whatever the
protocol), each ICMP flow its own client address (nfstream keys ICMP without echo ids), a host
keeps one VLAN id, and nothing idles long enough for any timeout of 100 s or more to split a flow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks import payloads
from benchmarks.synth_flows import (
    CLOSE_FIN,
    CLOSE_OPEN,
    CLOSE_RST,
    INTERACTIVE,
    icmp_echoes,
    tcp_connections,
    udp_exchanges,
)
from benchmarks.synth_packets import (
    K_DNS,
    K_ICMP,
    K_NTP,
    K_QUIC,
    K_SSH,
    K_STRATUM,
    K_TCP,
    Flows,
    Packets,
    concat_flows,
    concat_packets,
    tcp_sequence_numbers,
)
from benchmarks.synth_sessions import ssh_session, stratum_session

N_HOSTS = 16_384  # clients 10.16.0.0/18 and fd00::/64
ICMP_HOST_BASE = 0x80000  # pingers get their own addresses, 10.24.0.0 upwards
EPHEMERAL = (32_768, 61_000)  # Linux's ephemeral port range
N_SERVERS = 5_000
VLAN_IDS = np.array([10, 20, 30, 100, 200], np.int64)
SERVER_V4_PREFIXES = np.array(
    [
        0x17000000,
        0x22600000,
        0x34540000,
        0x68100000,
        0x8EFA0000,
        0x97650000,
        0xACD90000,
        0xB9C70000,
    ],
    np.int64,
)  # 23/8, 34.96/16, ...
RESOLVERS_V4 = np.array([0x0A000035, 0x08080808], np.int64)  # 10.0.0.53, 8.8.8.8
RESOLVERS_V6 = np.array([[0xFD00000000000000, 0x53], [0x2001486048600000, 0x8888]], np.uint64)
V6_CLIENT_HI, V6_SERVER_HI = 0xFD00000000000000, 0x20010DB800000000
TCP_PORTS = np.array([443, 80, 8443, 993, 5228, 8080])
TCP_PORT_P = np.array([0.70, 0.15, 0.05, 0.04, 0.03, 0.03])
# Bulk flow kinds and their shares of the flow count.
BULK_KINDS = np.array([K_TCP, K_DNS, K_QUIC, K_NTP, K_ICMP])
BULK_P = np.array([0.60, 0.28, 0.05, 0.02, 0.05])
# Miners log in with a wallet address (Monero's are 95 characters).
XMR_WALLET = (
    "4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skxNgYeYTRj5UzqtReoS44qo9mt"
    "mXCqY45DJ852K5Jv2684Rge"
)
BTC_WALLET = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"


@dataclass(frozen=True)
class MixSpec:
    """What to generate. The IPv6 share is of the packets (and so, about, of the flows); the VLAN
    share is of the client hosts."""

    packets: int
    seed: int
    duration_s: float = 90.0
    ipv6_share: float = 0.05
    vlan_share: float = 0.20
    zipf_a: float = 1.8  # flow sizes: P(n) ~ n^-a
    max_data_packets: int = 30_000  # the elephants' cap
    median_tcp_lifetime_s: float = 14.0
    # shares of the TCP profiles (download, interactive, upload): the packet-size mix
    tcp_profile_p: tuple[float, float, float] = (0.6, 0.3, 0.1)


def host_vlan(host: np.ndarray, vlan_share: float) -> np.ndarray:
    """The VLAN id a client host lives on (0 = untagged): a fixed hash, so a host never moves."""
    h = (np.asarray(host, np.int64) * 2654435761) & 0xFFFFFFFF
    tagged = (h >> 8) % 1000 < vlan_share * 1000
    return np.where(tagged, VLAN_IDS[(h >> 20) % len(VLAN_IDS)], 0).astype(np.uint16)


def _unique_client_endpoints(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct (host, port) pairs in random order."""
    span = EPHEMERAL[1] - EPHEMERAL[0]
    picked = np.empty(0, np.int64)
    while len(picked) < n:
        more = rng.integers(0, N_HOSTS * span, size=n - len(picked) + 64)
        picked = np.unique(np.concatenate([picked, more]))
    picked = rng.permutation(picked)[:n]
    return picked // span, EPHEMERAL[0] + picked % span


def _addresses(host_v4: np.ndarray, v6: np.ndarray, hi_v6: int) -> np.ndarray:
    """(n, 2) uint64 addresses: IPv4 in column 1, or IPv6 under ``hi_v6`` with the same host."""
    # Everything in uint64: numpy turns a uint64/int64 mix into float64.
    host = np.asarray(host_v4).astype(np.uint64)
    out = np.zeros((len(host), 2), np.uint64)
    out[:, 1] = np.where(v6, host & np.uint64(0xFFFFFF), host)
    out[:, 0] = np.where(v6, np.uint64(hi_v6), np.uint64(0))
    out[v6, 1] += np.uint64(0x1000)  # keep clear of ::53 and friends
    return out


def _server_v4(s: np.ndarray) -> np.ndarray:
    return SERVER_V4_PREFIXES[s % len(SERVER_V4_PREFIXES)] + 1 + (s * 7919) % 65_000


def _flows(n: int) -> Flows:
    return Flows(
        kind=np.zeros(n, np.uint8),
        proto=np.full(n, 6, np.uint8),
        v6=np.zeros(n, bool),
        vlan=np.zeros(n, np.uint16),
        cli_addr=np.zeros((n, 2), np.uint64),
        srv_addr=np.zeros((n, 2), np.uint64),
        cli_port=np.zeros(n, np.int64),
        srv_port=np.zeros(n, np.int64),
        cli_mac=np.zeros(n, np.int64),
        isn_c=np.zeros(n, np.int64),
        isn_s=np.zeros(n, np.int64),
    )


def _bulk_sizes(
    rng: np.random.Generator, spec: MixSpec, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (kind, data packets, close) for flows until their packets fill ``budget`` exactly."""
    kinds, mids, closes, total = [], [], [], 0
    while total < budget:
        n = max(1_000, budget // 10)
        kind = rng.choice(BULK_KINDS, size=n, p=BULK_P)
        zipf = np.minimum(rng.zipf(spec.zipf_a, size=n), spec.max_data_packets)
        close = np.where(rng.random(n) < 0.88, CLOSE_FIN, CLOSE_RST)
        mid = np.select(
            [kind == K_TCP, kind == K_QUIC, kind == K_DNS, kind == K_ICMP],
            [
                1 + zipf,
                1 + np.minimum(zipf, 8_000),
                np.where(rng.random(n) < 0.03, 1, 2),
                2 * rng.integers(1, 9, size=n),
            ],
            2,
        )
        kinds.append(kind)
        mids.append(mid)
        closes.append(close)
        total += int(_packets_of(kind, mid, close).sum())
    kind, mid, close = np.concatenate(kinds), np.concatenate(mids), np.concatenate(closes)
    cum = np.cumsum(_packets_of(kind, mid, close))
    k = int(np.searchsorted(cum, budget, side="right"))
    kind, mid, close = kind[:k], mid[:k], close[:k]
    rest = budget - (int(cum[k - 1]) if k else 0)
    # Fill the remainder exactly: one more TCP connection, or a few DNS lookups.
    if rest >= 8:
        fill = (np.array([K_TCP]), np.array([rest - 6]), np.array([CLOSE_FIN]))
    else:
        fill = (
            np.full(rest // 2 + rest % 2, K_DNS),
            np.r_[np.full(rest // 2, 2), np.ones(rest % 2, np.int64)],
            np.zeros(rest // 2 + rest % 2, np.int64),
        )
    return (
        np.r_[kind, fill[0]].astype(np.int64),
        np.r_[mid, fill[1]].astype(np.int64),
        np.r_[close, fill[2]].astype(np.int64),
    )


def _packets_of(kind: np.ndarray, mid: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Packets per flow: TCP adds handshake and close to the data packets; others are as drawn."""
    return np.where(kind == K_TCP, 3 + mid + np.array([3, 1, 0])[close], mid)


def _rtt_us(rng: np.random.Generator, n: int, median_ms: float) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median_ms * 1e3), 0.7, n), 200, 400_000).astype(np.int64)


def _sessions(
    rng: np.random.Generator, spec: MixSpec, book: payloads.TemplateBook
) -> tuple[Flows, Packets]:
    """The long SSH and Stratum flows, open from the first second to the last."""
    n_each = int(np.clip(spec.packets // 250_000, 2, 8))
    fl = _flows(2 * n_each)
    fl.kind[:n_each], fl.kind[n_each:] = K_SSH, K_STRATUM
    fl.srv_port = np.where(fl.kind == K_SSH, 22, 3333)
    fl.v6[1] = True  # one SSH session over IPv6
    srv = (
        np.where(fl.kind == K_SSH, 0xC6336400 + 10, 0xCB007100 + 20)
        + np.arange(2 * n_each) % n_each
    )
    fl.srv_addr = _addresses(srv, fl.v6, V6_SERVER_HI)
    parts = []
    end = spec.duration_s * 1e6
    for f in range(2 * n_each):
        start, stop = rng.uniform(5e4, 1e6), end - rng.uniform(5e4, 1e6)
        rtt = rng.uniform(15e3, 90e3)
        if fl.kind[f] == K_SSH:
            parts.append(ssh_session(rng, f, start, stop, rtt, 1440 if fl.v6[f] else 1460, book))
        else:
            xmr = f % 2 == 1  # half the miners speak Monero's dialect
            worker = XMR_WALLET if xmr else f"{BTC_WALLET}.rig{f}"
            parts.append(stratum_session(rng, f, start, stop, rtt, book, xmr, worker))
    return fl, concat_packets(parts)


def _set_clients(fl: Flows, host: np.ndarray, rng: np.random.Generator, spec: MixSpec) -> None:
    """Client addresses, MACs and VLANs from host numbers (``fl.v6`` already set), and ISNs."""
    fl.vlan = host_vlan(host, spec.vlan_share)
    fl.cli_addr = _addresses(0x0A100000 + host, fl.v6, V6_CLIENT_HI)
    fl.cli_mac = 0x020000000000 + host
    fl.isn_c, fl.isn_s = rng.integers(0, 2**32, len(host)), rng.integers(0, 2**32, len(host))


def _bulk_flows(
    rng: np.random.Generator,
    spec: MixSpec,
    kind: np.ndarray,
    n_pkts: np.ndarray,
    s_fl: Flows,
    v6_packets: float,
) -> tuple[Flows, np.ndarray]:
    """Endpoints of the bulk flows (and the sessions' clients); also returns the DNS resolver
    choice (0 the local resolver, 1 a public one)."""
    n, n_s = len(kind), len(s_fl.kind)
    fl = _flows(n)
    fl.kind = kind.astype(np.uint8)
    # IPv6 for flows taken in random order until they hold the IPv6 share of the packets: with
    # Zipf sizes a per-flow coin would let a few elephants decide the packet share.
    perm = rng.permutation(n)
    fl.v6[perm[np.cumsum(n_pkts[perm]) <= v6_packets]] = True
    icmp, dns = kind == K_ICMP, kind == K_DNS
    fl.proto = np.select([kind == K_TCP, icmp & fl.v6, icmp], [6, 58, 1], 17).astype(np.uint8)

    # Clients: the sessions take the first unique endpoints, the bulk the rest; pingers stand apart.
    host, port = _unique_client_endpoints(rng, n + n_s)
    s_fl.cli_port = port[:n_s]
    _set_clients(s_fl, host[:n_s], rng, spec)
    host, port = host[n_s:], port[n_s:]
    host = np.where(icmp, ICMP_HOST_BASE + np.cumsum(icmp), host)
    fl.cli_port = np.where(icmp, rng.integers(1, 65_535, n), port)
    _set_clients(fl, host, rng, spec)

    # Servers: a few popular ones take most flows; DNS goes to a resolver.
    server = (rng.zipf(1.3, n) - 1) % N_SERVERS
    fl.srv_addr = _addresses(_server_v4(server), fl.v6, V6_SERVER_HI)
    resolver = (rng.random(n) < 0.2).astype(np.int64)
    fl.srv_addr[dns & ~fl.v6, 1] = RESOLVERS_V4[resolver[dns & ~fl.v6]]
    fl.srv_addr[dns & fl.v6] = RESOLVERS_V6[resolver[dns & fl.v6]]
    ports = [rng.choice(TCP_PORTS, n, p=TCP_PORT_P), 53, 123, 443]
    fl.srv_port = np.select([kind == K_TCP, dns, kind == K_NTP, kind == K_QUIC], ports, 0)
    return fl, resolver


def _bulk_packets(
    rng: np.random.Generator,
    spec: MixSpec,
    book: payloads.TemplateBook,
    fl: Flows,
    first_id: int,
    mid: np.ndarray,
    close: np.ndarray,
    resolver: np.ndarray,
) -> list[Packets]:
    """Lifetimes and packet schedules of the bulk flows."""
    n = len(fl.kind)
    kind = fl.kind.astype(np.int64)
    tcp, dns, ntp, icmp = kind == K_TCP, kind == K_DNS, kind == K_NTP, kind == K_ICMP
    d_us = spec.duration_s * 1e6
    rtt = np.where(dns & (resolver == 0), _rtt_us(rng, n, 0.8), _rtt_us(rng, n, 25.0))
    life = rng.lognormal(np.log(spec.median_tcp_lifetime_s * 1e6), 1.0, n)
    # Elephants need time for their packets (at most ~2,000 a second); nothing outlives the capture.
    life = np.maximum(life, 3 * rtt + 500 * mid + 5_000)
    life = np.select([dns | ntp, icmp], [rtt + 1, (mid // 2) * 1e6 + rtt], life)
    life = np.minimum(life, d_us - 200_000).astype(np.int64)
    start = (rng.random(n) * (d_us - 100_000 - life)).astype(np.int64)
    ids = first_id + np.arange(n)

    profile = rng.choice(3, n, p=list(spec.tcp_profile_p))
    mss = np.where(fl.v6, 1440, 1460)
    http = fl.srv_port == 80
    t = tcp
    tcp_pk = tcp_connections(
        rng, ids[t], mid[t], close[t], start[t], life[t], rtt[t], profile[t], mss[t], http[t], book
    )

    u = dns | ntp | (kind == K_QUIC)
    names = rng.zipf(1.5, n) % len(payloads.DNS_NAMES)
    q_ids = np.array([book.add(payloads.dns_query(x)) for x in payloads.DNS_NAMES])
    a_ids = np.array(
        [book.add(payloads.dns_answer(x, 0x5DB8D822 + i)) for i, x in enumerate(payloads.DNS_NAMES)]
    )
    size_class = np.select([dns, ntp], [0, 1], 2)
    query = np.where(ntp, book.add(payloads.NTP_REQUEST), q_ids[names])
    answer = np.where(ntp, book.add(payloads.NTP_RESPONSE), a_ids[names])
    udp_pk = udp_exchanges(
        rng,
        ids[u],
        mid[u],
        size_class[u],
        start[u],
        life[u],
        rtt[u],
        query[u],
        answer[u],
        book.lengths(),
    )
    icmp_pk = icmp_echoes(ids[icmp], mid[icmp] // 2, start[icmp], rtt[icmp], fl.v6[icmp])
    return [tcp_pk, udp_pk, icmp_pk]


def plan_mixed(
    spec: MixSpec, rng: np.random.Generator, book: payloads.TemplateBook
) -> tuple[Flows, Packets]:
    """The realistic mix: long sessions plus Zipf-sized TCP, DNS, QUIC, NTP and ping flows."""
    s_fl, s_pk = _sessions(rng, spec, book)
    budget = spec.packets - len(s_pk)
    if budget < 1_000:
        raise ValueError(
            f"--packets {spec.packets} is too small for the long sessions ({len(s_pk)} packets)"
        )
    kind, mid, close = _bulk_sizes(rng, spec, budget)
    v6_packets = spec.ipv6_share * spec.packets - np.sum(s_fl.v6[s_pk.flow])
    fl, resolver = _bulk_flows(rng, spec, kind, _packets_of(kind, mid, close), s_fl, v6_packets)
    parts = _bulk_packets(rng, spec, book, fl, len(s_fl.kind), mid, close, resolver)
    flows, packets = concat_flows([s_fl, fl]), concat_packets([s_pk, *parts])
    tcp_sequence_numbers(packets, flows)
    return flows, packets


def plan_live(
    n_flows: int, rng: np.random.Generator, book: payloads.TemplateBook, spec: MixSpec
) -> tuple[Flows, Packets]:
    """``n_flows`` TCP connections, all opened within ten seconds and none closed: at the end of
    the capture every one of them is live, so a flow table holds them all at once.

    Each is a handshake, a request and a short answer: small packets keep the file small."""
    fl = _flows(n_flows)
    fl.v6 = rng.random(n_flows) < spec.ipv6_share
    host, fl.cli_port = _unique_client_endpoints(rng, n_flows)
    _set_clients(fl, host, rng, spec)
    server = (rng.zipf(1.3, n_flows) - 1) % N_SERVERS
    fl.srv_addr = _addresses(_server_v4(server), fl.v6, V6_SERVER_HI)
    fl.srv_port[:] = 443
    rtt = _rtt_us(rng, n_flows, 25.0)
    start = (rng.random(n_flows) * 9e6).astype(np.int64)
    every = np.ones(n_flows, np.int64)
    pk = tcp_connections(
        rng,
        np.arange(n_flows),
        2 * every,
        CLOSE_OPEN * every,
        start,
        3 * rtt + 20_000,
        rtt,
        INTERACTIVE * every,
        np.where(fl.v6, 1440, 1460),
        np.zeros(n_flows, bool),
        book,
    )
    tcp_sequence_numbers(pk, fl)
    return fl, pk
