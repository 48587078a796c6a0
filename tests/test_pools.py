"""Known mining pools: the signature files (validation, file:line errors, plain lists), the ways a
flow is tied to a pool (login, TLS SNI, HTTP Host, DNS answers, address list), on the corpus and
on captures built for each way."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from flowsense.detect.base import Alert, Resources
from flowsense.detect.pools import PoolDetector, tls_sni
from flowsense.detect.stratum import StratumDetector
from flowsense.errors import SignatureError
from flowsense.signatures import BUNDLED, load_pools
from tests.conftest import manifest, run_detectors
from tests.pcapgen import tcp_session, udp, write_pcap

REPO = Path(__file__).resolve().parents[1]
C, S = "10.7.7.7", "203.0.113.50"


def run(paths: list[Path], pools_from: list[Path] | None = None) -> list[Alert]:
    res = Resources(pools=load_pools(pools_from))
    return run_detectors(paths, [StratumDetector(res), PoolDetector(res)])


# --- signature files --------------------------------------------------------------------------
def test_bundled_signatures_validate_and_match_on_label_boundaries() -> None:
    pools = load_pools()
    assert pools.versions and all(e.source and e.date for e in pools.entries)
    assert pools.match_name("eu1-zcash.flypool.org").domain == "flypool.org"
    assert pools.match_name("FLYPOOL.ORG.").domain == "flypool.org"
    assert pools.match_name("notflypool.org") is None
    assert pools.match_name("flypool.org.example.com") is None
    assert pools.match_ip("94.23.199.191") is not None and pools.match_ip("94.23.199.190") is None
    r = subprocess.run([sys.executable, "-m", "flowsense", "signatures", "validate"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "ok" in r.stdout


BAD = {
    "unknown key": ("pools:\n  - domain: a.example\n    source: s\n    date: 2026-01-01\n"
                    "    colour: red\n", 5),
    "domain and cidr": ("pools:\n  - domain: a.example\n    cidr: 10.0.0.0/8\n    source: s\n"
                        "    date: 2026-01-01\n", 2),
    "no source": ("pools:\n  - domain: a.example\n    date: 2026-01-01\n", 2),
    "bad date": ("pools:\n  - domain: a.example\n    source: s\n    date: yesterday\n", 4),
    "bad port": ("pools:\n  - {domain: a.example, source: s, date: 2026-01-01, ports: [70000]}\n",
                 2),
    "bad domain": ("pools:\n  - {domain: 'bad name!', source: s, date: 2026-01-01}\n", 2),
    "bad yaml": ("pools:\n  - domain: [unclosed\n", 3),
    "top key": ("version: 1\nextra: 2\n", 2),
    "tag": ("pools: !!python/object/apply:os.system ['true']\n", 1),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_signature_files_name_file_and_line(tmp_path: Path, case: str) -> None:
    text, line = BAD[case]
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SignatureError) as exc:
        load_pools([path])
    assert exc.value.line == line and str(path) in str(exc.value)
    r = subprocess.run([sys.executable, "-m", "flowsense", "signatures", "validate", str(path)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and f"{path}:{line}:" in r.stdout and "Traceback" not in r.stderr


def test_plain_lists_and_their_errors(tmp_path: Path) -> None:
    good = tmp_path / "mine.txt"
    good.write_text("# my pools\nxmr.example.net\n192.0.2.0/24  # a range\n\n")
    pools = load_pools([good])
    assert pools.match_name("a.xmr.example.net") is not None
    assert pools.match_ip("192.0.2.77") is not None
    bad = tmp_path / "bad.list"
    bad.write_text("ok.example\nnot a domain\n")
    with pytest.raises(SignatureError) as exc:
        load_pools([bad])
    assert exc.value.line == 2
    r = subprocess.run([sys.executable, "-m", "flowsense", "analyze", "--signatures", str(bad),
                        str(REPO / "pcaps")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and f"{bad}:2" in r.stderr


# --- the ways a flow is tied to a pool --------------------------------------------------------
def client_hello(name: str) -> bytes:
    sni = name.encode()
    ext = struct.pack(">HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack(">H", len(ext)) + ext)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def test_tls_sni_parser() -> None:
    assert tls_sni(client_hello("xmr-eu1.nanopool.org")) == "xmr-eu1.nanopool.org"
    assert tls_sni(client_hello("x")[:20]) is None
    assert tls_sni(b"GET / HTTP/1.1\r\n") is None


def _dns_pair(t: float, name: str, addr: str) -> list[tuple[float, bytes]]:
    q = dpkt.dns.DNS(id=4242, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    r = dpkt.dns.DNS(id=4242, qr=1, qd=q.qd, an=[dpkt.dns.DNS.RR(
        name=name, type=dpkt.dns.DNS_A, ttl=300, rdata=socket.inet_aton(addr))])
    return [(t, udp(C, "192.0.2.53", 53001, 53, bytes(q))),
            (t + 0.02, udp("192.0.2.53", C, 53, 53001, bytes(r)))]


@pytest.mark.parametrize("variant", ["dns", "sni", "http-host"])
def test_each_way_of_knowing_a_pool(tmp_path: Path, variant: str) -> None:
    pk = []
    if variant == "dns":
        pk += _dns_pair(0.0, "xmr-eu1.nanopool.org", S)
        pk += tcp_session(C, S, 41000, 14433, 1.0, [(0, bytes(range(256)) * 2), (1, b"\x17" * 90)])
    elif variant == "sni":
        pk += tcp_session(C, S, 41001, 443, 1.0, [(0, client_hello("xmr-eu1.nanopool.org")),
                                                  (1, b"\x16\x03\x03" + bytes(200))])
    else:
        req = b"POST / HTTP/1.1\r\nHost: eth-eu1.nanopool.org:8888\r\nContent-Length: 2\r\n\r\n{}"
        pk += tcp_session(C, S, 41002, 8888, 1.0, [(0, req), (1, b"HTTP/1.1 200 OK\r\n\r\n")])
    alerts = [a for a in run([write_pcap(tmp_path / "p.pcap", pk)]) if a.category == "mining-pool"]
    assert len(alerts) == 1
    a = alerts[0]
    assert a.variant == variant and a.evidence["pool"] == "nanopool.org"
    assert a.flow["dst_ip"] == S and a.severity == 1
    assert a.evidence.get("encrypted") is (True if variant == "sni" else None)


def test_only_lookups_of_listed_names_are_shown_at_their_reply(tmp_path: Path) -> None:
    """The pool detector's prompt rule names the pools: the flow table shows a lookup at its
    reply only when its question ends in a listed domain (any case, any subdomain, not a
    look-alike); the rest wait for their end. After a reload the new names count."""
    from flowsense.capture.reader import iter_batches
    from flowsense.config import FlowConfig
    from flowsense.flows.table import FlowTable

    names = ["xmr-eu1.nanopool.org", "XMR.NanoPool.ORG", "nanopool.org",
             "nanopool.org.evil.example", "notnanopool.org", "example.com", "pool.example.net"]
    pk = []
    for k, name in enumerate(names):
        q = dpkt.dns.DNS(id=k, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
        r = dpkt.dns.DNS(id=k, qr=1, qd=q.qd)
        pk += [(k + 0.0, udp(C, "192.0.2.53", 53100 + k, 53, bytes(q))),
               (k + 0.01, udp("192.0.2.53", C, 53, 53100 + k, bytes(r)))]
    cap = write_pcap(tmp_path / "d.pcap", pk)

    def prompted(det: PoolDetector, table: FlowTable | None = None) -> list[int]:
        shown: list = []
        table = table or FlowTable(FlowConfig(), det.watch_rules())
        table.prompt_sink = shown.append
        for batch in iter_batches(str(cap)):
            table.feed(batch)
        return sorted(p - 53100 for f in shown for p in f.cols["src_port"].tolist())

    det = PoolDetector(Resources(pools=load_pools()))
    assert prompted(det) == [0, 1, 2]
    extra = tmp_path / "extra.txt"
    extra.write_text("example.net\n")
    reloaded = Resources(pools=load_pools([BUNDLED, extra]))
    det2 = PoolDetector(reloaded)
    table = FlowTable(FlowConfig(), PoolDetector(Resources(pools=load_pools())).watch_rules())
    table.set_watch_rules(det2.watch_rules())
    assert prompted(det2, table) == [0, 1, 2, 6]


def test_dns_answer_for_another_client_does_not_count(tmp_path: Path) -> None:
    pk = _dns_pair(0.0, "xmr-eu1.nanopool.org", S)
    pk += tcp_session("10.7.7.8", S, 41003, 14433, 1.0, [(0, b"\x00" * 100)])
    assert [a for a in run([write_pcap(tmp_path / "p.pcap", pk)])
            if a.category == "mining-pool"] == []


# --- the corpus -------------------------------------------------------------------------------
def test_corpus_pool_flows_and_the_protocol_alone(corpus: Path, tmp_path: Path) -> None:
    cap = corpus / "ndpi" / "mining.pcapng"
    alerts = run([cap])
    pool = {(a.flow["dst_ip"], a.flow["dst_port"]): a.variant
            for a in alerts if a.category == "mining-pool"}
    assert pool == {("94.23.199.191", 3333): "login", ("116.211.167.195", 3333): "login",
                    ("185.71.66.39", 9999): "ip-list", ("178.32.196.217", 9050): "ip-list"}
    # with every corpus pool address and name removed, the protocol alone still carries it
    empty = tmp_path / "sigs"
    empty.mkdir()
    without = run([cap], [empty])
    assert [a for a in without if a.category == "mining-pool"] == []
    assert sorted((a.flow["dst_ip"], a.variant) for a in without) == sorted(
        (a.flow["dst_ip"], a.variant) for a in alerts if a.category == "stratum-mining")
    assert len(without) == 4


@pytest.mark.parametrize("name", [r["file"] for r in manifest() if r["label"] in
                                  ("benign", "ssh", "other-tunnel", "ssh-reverse")])
def test_no_pool_alerts_on_benign_ssh_and_tunnel_captures(corpus: Path, name: str) -> None:
    assert run([corpus / name]) == []


def test_bundled_path_exists() -> None:
    assert (BUNDLED / "pools.yaml").is_file()


def _client_heads(heads: list[bytes], kept: list[int]) -> tuple:
    """A frame's heads and kept lengths for 512-byte client payloads, its rows in reverse (any
    order, any subset) and an output array: what the detectors' head kernels take."""
    import numpy as np

    arr = np.zeros((len(heads), 2, 512), dtype=np.uint8)
    arr[:, 0, :] = np.frombuffer(b"".join(heads), dtype=np.uint8).reshape(len(heads), 512)
    head_len = np.zeros((len(heads), 2), dtype=np.int64)
    head_len[:, 0] = kept
    rows = np.arange(len(heads), dtype=np.int64)[::-1].copy()
    return arr, head_len, rows, np.zeros(len(rows), dtype=bool)


def test_dns_name_kernel_matches_its_naive_twin() -> None:
    """``detect.kernels.may_name_suffix`` against the plain-Python twin in tests/naive.py, on
    messages built around listed names (case mixed, as resolvers randomise it), their
    look-alikes, random bytes, names with no terminator in the window and heads cut short."""
    import random

    from flowsense.detect.kernels import may_name_suffix
    from flowsense.signatures import HASH_WEIGHTS
    from tests import naive

    det = PoolDetector(Resources(pools=load_pools()))
    lengths, listed = det.names.lengths, det.names.hashes
    rng = random.Random(7)
    domains = sorted(det.pools._domains)[:40]
    heads, kept = [], []
    for k in range(3000):
        kind = k % 5
        if kind == 4:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        else:
            name = rng.choice(domains)
            if kind == 1:
                name = rng.choice(["eu1.", "x.", ""]) + name
            elif kind == 2:
                name = name[: rng.randrange(1, len(name))] + rng.choice(["q", "org", ".com"])
            name = "".join(ch.upper() if rng.random() < 0.3 else ch for ch in name)
            wire = b"".join(bytes([len(lb)]) + lb.encode() for lb in name.split(".") if lb)
            body = wire + (b"" if kind == 3 and rng.random() < 0.5 else b"\0\0\1\0\1")
        msg = bytes(rng.randrange(256) for _ in range(12)) + body
        heads.append(msg[:512].ljust(512, b"\0"))
        kept.append(min(len(msg), 512) - (rng.randrange(0, 8) if kind == 3 else 0))
    arr, head_len, rows, out = _client_heads(heads, kept)
    may_name_suffix(arr, head_len, rows, lengths, listed, HASH_WEIGHTS, det.names.bits, out)
    weights = [int(w) for w in HASH_WEIGHTS]
    table = {int(h) for h in listed}
    want = [naive.may_name_suffix(heads[r], kept[r], lengths.tolist(), table, weights)
            for r in rows.tolist()]
    assert out.tolist() == want
    assert 200 < sum(want) < len(want) - 200, "both answers well represented"


def test_pool_picks_name_what_the_exact_tests_name() -> None:
    """``detect.kernels.pool_picks`` (the pool detector's first look at every record) names
    what the exact tests name: on requests built around listed names (case mixed, with ports,
    blanks and trailing dots, under subdomains, look-alikes, a Host only in the body, none at
    all, heads cut short) ``http_host`` then ``PoolSet.match_name``; on random bytes, a JSON
    object's opening or a ClientHello's first bytes."""
    import random

    import numpy as np

    from flowsense.detect.kernels import pool_picks
    from flowsense.detect.pools import _HTTP_FIRST, http_host
    from flowsense.detect.stratum import JSON_AFTER_BRACE, json_opens

    det = PoolDetector(Resources(pools=load_pools()))
    rng = random.Random(11)
    domains = sorted(det.pools._domains)[:40]
    heads, kept = [], []
    for k in range(3000):
        kind = k % 6
        name = rng.choice(domains)
        if kind == 1:
            name = rng.choice(["eu1.", "x.", "."]) + name + rng.choice(["", ".", ".."])
        elif kind == 2:
            name = name[: rng.randrange(1, len(name))] + rng.choice(["q", "org", ".com"])
        name = "".join(ch.upper() if rng.random() < 0.3 else ch for ch in name)
        value = rng.choice(["", " ", "\t"]) + name + rng.choice(["", ":3333", " ", ":80 "])
        header = rng.choice(["Host", "host", "HOST"]) + ":" + value
        if kind == 3:
            req = f"POST /x HTTP/1.1\r\nUser-Agent: a\r\n\r\n{header}\r\n"
        elif kind == 4:
            req = "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"
        else:
            req = f"GET / HTTP/1.1\r\nAccept: */*\r\n{header}\r\nX: y\r\n\r\n"
        msg = req.encode() if kind != 5 else bytes(rng.randrange(256) for _ in range(300))
        cut = rng.randrange(len(msg) // 2, len(msg) + 1) if rng.random() < 0.2 else len(msg)
        heads.append(msg[:512].ljust(512, b"\0"))
        kept.append(min(cut, 512))
    arr, head_len, rows, out = _client_heads(heads, kept)
    names = det.names
    n = len(heads)
    start = np.ascontiguousarray(arr[:, :, :8])
    six = np.full(n, 6, dtype=np.int64)  # TCP, and IPv6 (no IPv4 list to look up)
    cand, named, listed, asked = (np.zeros(n, dtype=bool) for _ in range(4))
    pool_picks(start, arr, head_len, six, np.full(n, 80, np.int64), six,
               np.zeros((n, 4), np.uint64), JSON_AFTER_BRACE, _HTTP_FIRST,
               *det.pools.v4_tables, np.zeros(0, np.uint64), names.lengths, names.hashes,
               names.weights, names.bits, cand, named, listed, asked)
    want = []
    for r in range(n):
        host = http_host(heads[r][: kept[r]])
        opening = bool(json_opens(start[r, 0])) or heads[r][0] == 0x16 and heads[r][5] == 1
        want.append(host is not None and det.pools.match_name(host) is not None or opening)
    assert cand.all() and not listed.any() and not asked.any()
    assert named.tolist() == want
    assert 300 < sum(want) < len(want) - 300, "both answers well represented"
