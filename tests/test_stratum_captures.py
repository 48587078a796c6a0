"""The bundled mining captures (``pcaps/stratum``, made by ``python -m pcaps.gen.stratum_captures``)
through ``flowsense analyze`` as users run it: the alerts each must give, flow by flow, and the
silence of the benign controls (JSON-RPC look-alikes, hours-long chatty sessions). Also the
parts built for them on synthetic captures: DNS answers learned the moment they arrive, Stratum
V2 handshake sizes, and job/share counts past the slab held to a naive count of the lines."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import dpkt
import numpy as np
import pytest

from flowsense.cli import main
from flowsense.config import Config
from flowsense.detect import cadence
from flowsense.detect.base import Resources
from flowsense.detect.pools import PoolDetector, dns_qname
from flowsense.flows.table import WatchRule
from flowsense.pipeline import Pipeline
from flowsense.signatures import load_pools
from tests.pcapgen import tcp_session, udp, write_pcap

REPO = Path(__file__).resolve().parents[1]
CAPS = REPO / "pcaps" / "stratum"
INSIDE = "10.20.30.40"
BENIGN = ["jsonrpc-benign.pcap", "benign-mqtt-keepalive.pcap", "benign-websocket-push.pcap",
          "benign-imap-idle.pcap"]


def analyze(path: Path, tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / f"{path.stem}.eve"
    assert main(["analyze", "--format", "eve", "-o", str(out), *extra, str(path)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def by_flow(alerts: list[dict]) -> dict[tuple[int, str], dict]:
    """(server port, category) -> the first record (later ones are updates)."""
    out: dict[tuple[int, str], dict] = {}
    for a in alerts:
        out.setdefault((a["dest_port"], a["alert"]["category"]), a)
    return out


def naive_counts(path: Path) -> dict[int, Counter]:
    """Jobs and shares per client port, counted line by line over each reassembled direction
    (dpkt; the captures have no loss or reordering)."""
    streams: dict[tuple[int, int], bytes] = {}
    for _, buf in dpkt.pcap.Reader(open(path, "rb")):
        ip = dpkt.ethernet.Ethernet(buf).data
        if isinstance(ip.data, dpkt.tcp.TCP) and ip.data.data:
            key = (ip.data.sport, ip.data.dport)
            streams[key] = streams.get(key, b"") + ip.data.data
    out: dict[int, Counter] = {}
    for (sport, dport), data in streams.items():
        client = sport if dport < sport else dport
        c = out.setdefault(client, Counter())
        for line in data.split(b"\n"):
            if line.strip():
                msg = json.loads(line)
                res = msg.get("result")
                if msg.get("method") == "job" or (isinstance(res, dict) and "job" in res):
                    c["jobs"] += 1
                if msg.get("method") == "submit":
                    c["shares"] += 1
    return out


def test_xmrig_login_counts_past_the_slab_and_dns_learned_first(tmp_path: Path) -> None:
    cap = CAPS / "xmrig-login.pcap"
    alerts = analyze(cap, tmp_path)
    truth = naive_counts(cap)
    mining = [a for a in alerts if a["alert"]["category"] == "stratum-mining"]
    assert len(mining) == 2 and len(alerts) == 4  # two connections, each mining and to the pool
    for a in mining:
        ev = a["evidence"]
        assert a["alert"]["variant"] == "xmr" and a["dest_port"] == 3333
        assert ev["agent"].startswith("XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12")
        assert ev["algo"] == "rx/0" and ev["worker"].startswith("44AFFq5k")
        want = truth[a["src_port"]]
        assert (ev["jobs"], ev["shares"]) == (want["jobs"], want["shares"])
    long = max(mining, key=lambda a: a["evidence"]["shares"])
    # the slab held only part of the session: the rest was counted from the packet sizes
    assert long["evidence"]["jobs_parsed"] < long["evidence"]["jobs"]
    assert long["evidence"]["shares_parsed"] < long["evidence"]["shares"]
    pools = [a for a in alerts if a["alert"]["category"] == "mining-pool"]
    # the first connection ended (FIN, then 8 s) while both lookups' UDP flows were still open:
    # only an answer learned when it arrived can name its pool
    assert sorted(a["src_port"] for a in pools) == sorted(a["src_port"] for a in mining)
    for a in pools:
        assert a["alert"]["variant"] == "dns" and a["evidence"]["matched"] == "pool.supportxmr.com"
        assert a["dest_ip"] == "203.0.113.10" and a["src_ip"] == INSIDE
    assert any(a["flow"]["state"] == "closed" for a in pools)


def test_nicehash_ethereumstratum(tmp_path: Path) -> None:
    got = by_flow(analyze(CAPS / "nicehash-ethereumstratum.pcap", tmp_path))
    assert set(got) == {(3353, "stratum-mining"), (3353, "mining-pool")}
    m = got[(3353, "stratum-mining")]
    assert m["alert"]["variant"] == "ethereumstratum" and m["evidence"]["difficulty"] == 0.5
    assert m["evidence"]["agent"] == "NiceHashMiner/3.1.0" and m["evidence"]["jobs"] >= 2
    p = got[(3353, "mining-pool")]
    assert p["alert"]["variant"] == "dns" and p["evidence"]["pool"] == "nicehash.com"


def test_tls_to_a_listed_pool_is_encrypted_stratum(tmp_path: Path) -> None:
    alerts = analyze(CAPS / "stratum-tls-sni.pcap", tmp_path)
    assert [(a["dest_port"], a["alert"]["category"], a["alert"]["variant"]) for a in alerts] == [
        (14433, "mining-pool", "sni")]
    ev = alerts[0]["evidence"]
    assert ev["matched"] == "xmr-eu1.nanopool.org" and ev["encrypted"] is True
    assert {"variant": "dns", "matched": "xmr-eu1.nanopool.org"} in ev["also"]


def test_stratum_v1_on_ports_80_and_443_by_protocol_alone(tmp_path: Path) -> None:
    alerts = analyze(CAPS / "stratum-v1-ports-80-443.pcap", tmp_path)
    assert sorted((a["dest_port"], a["alert"]["variant"]) for a in alerts) == [
        (80, "stratum-v1"), (443, "stratum-v1")]  # the pool's name is on no list
    for a in alerts:
        assert a["evidence"]["agent"] == "cgminer/4.10.0" and a["evidence"]["shares"] >= 3


def test_stratum_v2_handshake_sizes(tmp_path: Path) -> None:
    alerts = analyze(CAPS / "stratum-v2-noise-sizes.pcap", tmp_path)
    assert [(a["dest_port"], a["alert"]["variant"]) for a in alerts] == [(34254, "stratum-v2")]
    assert alerts[0]["evidence"]["noise_handshake_bytes"] == {"client": 64, "server": 234}
    assert alerts[0]["alert"]["severity"] == 2 and alerts[0]["alert"]["confidence"] < 0.8


def test_cadence_on_tls_mining_to_an_unlisted_name(tmp_path: Path) -> None:
    alerts = analyze(CAPS / "stratum-tls-cadence.pcap", tmp_path)
    assert [(a["dest_port"], a["alert"]["category"], a["alert"]["variant"]) for a in alerts] == [
        (443, "mining-pool", "cadence")]
    a = alerts[0]
    figs = a["evidence"]["cadence"]
    assert a["alert"]["confidence"] < 0.5 and a["alert"]["severity"] == 2
    assert figs["duration_s"] >= 120 and figs["submits"] >= 8 and figs["pushes"] >= 5
    assert figs["submits_answered"] >= 0.6 and figs["pushes_answered"] <= 0.34
    # judged while the session was still up (a snapshot), at a packet of the flow
    assert a["flow"]["state"] == "open"
    summary = tmp_path / "summary.txt"
    assert main(["analyze", "-o", str(summary), str(CAPS / "stratum-tls-cadence.pcap")]) == 0
    line = next(x for x in summary.read_text().splitlines()
                if "mining-pool/cadence " in x and "cadence=" in x)
    assert f"{figs['pushes']} pushes and {figs['submits']} submits" in line
    # by pool: no pool is named, so the server stands for it (never a blank key)
    server = f"{a['dest_ip']}:{a['dest_port']} (not listed)"
    assert any(x.strip().startswith(server) for x in summary.read_text().splitlines())


@pytest.mark.parametrize("name", BENIGN)
def test_benign_captures_stay_silent(tmp_path: Path, name: str) -> None:
    assert analyze(CAPS / name, tmp_path) == []


def cadence_figures(path: Path) -> list[tuple[int, float, dict | None]]:
    """Cadence figures of every TCP flow of ``path``, every flow watched (port rules), so the
    features are judged even where no watch rule would lease a trace."""
    ports = {80, 443, 1883, 8883, 143, 993}
    rules = [WatchRule(b"", p) for p in ports]
    found: list[tuple[int, float, dict | None]] = []

    def sink(frame) -> None:  # type: ignore[no-untyped-def]
        for i in range(frame.n):
            if frame.cols["protocol"][i] == 6 and i in frame.traces:
                found.append((int(frame.cols["dst_port"][i]),
                              frame.cols["bidirectional_duration_ms"][i] / 1000,
                              cadence.figures(frame, i)))

    pipe = Pipeline(Config(), sink, rules)
    pipe.run_file(str(path))
    pipe.finish()
    return found


@pytest.mark.parametrize("name", BENIGN[1:])
def test_cadence_rejects_long_lived_chatty_sessions_by_their_features(name: str) -> None:
    flows = cadence_figures(CAPS / name)
    assert {port for port, _, _ in flows} >= {1883, 8883} if "mqtt" in name else len(flows) >= 2
    assert sum(dur >= 600 for _, dur, _ in flows) >= 2, "plain and TLS, ten minutes and more"
    # IMAP IDLE carries too few messages to measure; the others are measured and rejected
    measured = [f for _, _, f in flows if f is not None]
    assert "imap" in name or len(measured) >= 2
    assert not any(cadence.matches(f) for f in measured)


def test_cadence_features_hold_on_the_mining_capture() -> None:
    figs = [f for port, _, f in cadence_figures(CAPS / "stratum-tls-cadence.pcap") if port == 443]
    assert len(figs) == 1 and figs[0] is not None and cadence.matches(figs[0])


def test_the_folder_as_one_stream_gives_the_files_alerts(tmp_path: Path) -> None:
    """``analyze pcaps/stratum``: the captures overlap in time (made at once) and share the inside
    host; as one stream they still give each file's alerts and nothing more."""
    whole = Counter((a["source"]["pcap"].rsplit("/", 1)[-1], a["dest_port"],
                     a["alert"]["variant"]) for a in analyze(CAPS, tmp_path))
    each: Counter = Counter()
    for cap in sorted(CAPS.glob("*.pcap")):
        each.update((cap.name, a["dest_port"], a["alert"]["variant"])
                    for a in analyze(cap, tmp_path))
    assert whole == each and sum(each.values()) == 11


# --- synthetic captures -----------------------------------------------------------------------
C, S, R = "10.7.7.9", "203.0.113.77", "192.0.2.53"


def dns_pair(t: float, name: str, addr: str, port: int) -> list[tuple[float, bytes]]:
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    r = dpkt.dns.DNS(id=7, qr=1, qd=q.qd, an=[dpkt.dns.DNS.RR(
        name=name, type=dpkt.dns.DNS_A, ttl=300, rdata=socket.inet_aton(addr))])
    return [(t, udp(C, R, port, 53, bytes(q))), (t + 0.02, udp(R, C, 53, port, bytes(r)))]


def test_dns_answer_known_before_a_connection_that_ends_first(tmp_path: Path) -> None:
    pk = dns_pair(0.0, "xmr-eu1.nanopool.org", S, 53001)
    pk += tcp_session(C, S, 41000, 14433, 1.0, [(0, bytes(range(200))), (1, b"\x17" * 90)])
    pk += dns_pair(12.0, "www.example.com", "192.0.2.80", 53002)  # time moves on: the TCP
    path = write_pcap(tmp_path / "p.pcap", sorted(pk))  # flow ends, the first lookup's doesn't
    flows = [json.loads(line) for line in _flows(path, tmp_path)]
    assert [r["expiration"] for r in flows if r["dst_port"] == 14433] == ["fin"]
    assert [r["expiration"] for r in flows if r["protocol"] == 17] == ["end", "end"]
    alerts = analyze(path, tmp_path)
    assert [(a["dest_port"], a["alert"]["variant"]) for a in alerts] == [(14433, "dns")]


def _flows(path: Path, tmp_path: Path) -> list[str]:
    out = tmp_path / "flows.jsonl"
    assert main(["flows", "-o", str(out), str(path)]) == 0
    return out.read_text().splitlines()


@pytest.mark.parametrize(("port", "client", "server", "fires"), [
    (34254, 64, 234, True), (3336, 64, 170, True), (34254, 65, 234, False),
    (34254, 64, 233, False), (3333, 64, 234, False)])
def test_stratum_v2_sizes(tmp_path: Path, port: int, client: int, server: int,
                          fires: bool) -> None:
    ex = [(0, bytes(client)), (1, bytes(server)), (0, bytes(100)), (1, bytes(60))]
    path = write_pcap(tmp_path / "v2.pcap", tcp_session(C, S, 40100, port, 0.0, ex))
    alerts = analyze(path, tmp_path)
    assert [a["alert"]["variant"] for a in alerts] == (["stratum-v2"] if fires else [])


def test_dns_prefilter_never_misses_a_pool_name(tmp_path: Path) -> None:
    """The vectorised pick of DNS queries that can name a pool against the exact per-row path,
    on names of every kind: listed, their subdomains in mixed case (resolvers randomise it),
    look-alikes and ordinary names."""
    names = ["flypool.org", "eu1-zcash.flypool.org", "XMR-EU1.NanoPool.Org",
             "nanopool.org.evil.com", "notflypool.org", "pool.supportxmr.com", "www.example.com",
             "a.b.c.d.e.f.ethermine.org", "c3pool.com", "xc3pool.com", "moneroocean.stream",
             "x" * 63 + ".kryptex.network", "org", "com"]
    pk = []
    for k, name in enumerate(names):
        pk += dns_pair(float(k), name, "192.0.2.1", 50000 + k)
    path = write_pcap(tmp_path / "names.pcap", pk)
    pools = load_pools()
    det = PoolDetector(Resources(pools=pools))
    checked: list[tuple[str, bool, bool]] = []

    def sink(frame) -> None:  # type: ignore[no-untyped-def]
        rows = np.flatnonzero(frame.cols["dst_port"] == 53)
        pick = det._may_ask_pool(frame, rows)
        for r, p in zip(rows.tolist(), pick.tolist()):
            name = dns_qname(frame.payload(r, 0))
            assert name is not None
            checked.append((name, p, pools.match_name(name) is not None))

    pipe = Pipeline(Config(), sink, [])
    pipe.run_file(str(path))
    pipe.finish()
    assert len(checked) == len(names)
    assert all(p == exact for _, p, exact in checked), checked
    assert sum(exact for _, _, exact in checked) == 8


def test_counts_carry_across_snapshots_past_a_small_trace_ring(tmp_path: Path) -> None:
    """Small batches (a snapshot every 30 s of capture time sees the session while it runs) and
    a 128-packet trace ring, which by the session's end has dropped its first packets: the
    per-flow tally carried between looks still counts every job and share."""
    cfg = tmp_path / "small.yaml"
    cfg.write_text("capture: {batch_packets: 16}\nflows: {trace_packets: 128}\n")
    cap = CAPS / "xmrig-login.pcap"
    truth = naive_counts(cap)
    mining = [a for a in analyze(cap, tmp_path, "--config", str(cfg))
              if a["alert"]["category"] == "stratum-mining"]
    long = max(mining, key=lambda a: truth[a["src_port"]]["shares"])
    assert long["flow"]["state"] == "open"  # first judged while the session was up
    counts = _final_counts(cap, cfg)  # the same tally, read when the flow ended
    for port, want in truth.items():
        assert counts[port] == (want["jobs"], want["shares"])


def _final_counts(cap: Path, cfg: Path) -> dict[int, tuple[int, int]]:
    """Jobs and shares of each Stratum flow as judged when it ended, after every snapshot."""
    from flowsense.config import load_config
    from flowsense.detect.stratum import StratumDetector

    det = StratumDetector()
    out: dict[int, tuple[int, int]] = {}

    def sink(frame) -> None:  # type: ignore[no-untyped-def]
        for a in det.on_frame(frame):
            out[a.flow["src_port"]] = (a.evidence["jobs"], a.evidence["shares"])

    pipe = Pipeline(load_config(str(cfg)), sink, det.watch_rules(), det.on_snapshot)
    pipe.run_file(str(cap))
    pipe.finish()
    return out


@pytest.mark.parametrize(("request_head", "alerted"), [
    (b"GET /proxy HTTP/1.1\r\nUpgrade: websocket\r\nHOST:\tETH-EU1.NanoPool.ORG:8888\r\n\r\n",
     True),
    (b"POST / HTTP/1.1\r\nContent-Length: 40\r\nhost: eth-eu1.nanopool.org\r\n\r\n{}", True),
    (b"POST / HTTP/1.1\r\nHost: example.com\r\n\r\nHost: eth-eu1.nanopool.org\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: nanopool.org.example.com\r\n\r\n", False),
])
def test_http_host_pick(tmp_path: Path, request_head: bytes, alerted: bool) -> None:
    pk = tcp_session(C, S, 40200, 8888, 0.0, [(0, request_head), (1, b"HTTP/1.1 200 OK\r\n\r\n")])
    alerts = analyze(write_pcap(tmp_path / "h.pcap", pk), tmp_path)
    assert [a["alert"]["variant"] for a in alerts] == (["http-host"] if alerted else [])


def test_corpus_counts_past_the_slab(corpus: Path) -> None:
    """The corpus's mining flows: jobs and shares against a naive count of the JSON lines of
    each direction (dpkt, segments de-duplicated by sequence number). The ZCash submits are
    ~2.9 kB each, split over two segments: counted as runs, not packets."""
    from flowsense.detect.stratum import StratumDetector
    from tests.conftest import run_detectors

    cap = corpus / "ndpi" / "mining.pcapng"
    streams: dict[tuple[str, int, str, int], dict[int, bytes]] = {}
    for _, buf in dpkt.pcapng.Reader(open(cap, "rb")):
        ip = dpkt.ethernet.Ethernet(buf).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP) and ip.data.data:
            key = (socket.inet_ntoa(ip.src), ip.data.sport, socket.inet_ntoa(ip.dst),
                   ip.data.dport)
            streams.setdefault(key, {}).setdefault(ip.data.seq, ip.data.data)
    truth: Counter = Counter()
    for (src, sport, dst, dport), segs in streams.items():
        server = (dst, dport) if dport in (3333, 9050, 9999) else (src, sport)
        for line in b"".join(segs[k] for k in sorted(segs)).split(b"\n"):
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            res = msg.get("result") if isinstance(msg, dict) else None
            if msg.get("method") in ("mining.notify", "job") or (
                    isinstance(res, dict) and "job" in res):
                truth[(server, "jobs")] += 1
            if msg.get("method") in ("mining.submit", "submit"):
                truth[(server, "shares")] += 1
    for a in run_detectors([cap], [StratumDetector()]):
        server = (a.flow["dst_ip"], a.flow["dst_port"])
        if a.variant not in ("xmr", "stratum-v1"):
            continue
        assert a.evidence["shares"] == truth[(server, "shares")], server
        # one notify of 116.211.167.195 arrives after a later segment (reordered in the
        # capture): it looks like a retransmission and is not counted past the slab
        slack = 1 if server[0] == "116.211.167.195" else 0
        assert truth[(server, "jobs")] - slack <= a.evidence["jobs"] <= truth[(server, "jobs")]


def test_generator_end_to_end(tmp_path: Path) -> None:
    """Two short captures through the whole generator (root: namespaces, tcpdump): the Stratum
    V2-shaped session alerts, the JSON-RPC controls stay silent, nothing of the labs is left."""
    import subprocess
    import sys

    from tests.conftest import require_root, require_tool

    require_root()
    for tool in ("tcpdump", "ethtool", "openssl", "ip"):
        require_tool(tool)
    r = subprocess.run([sys.executable, "-m", "pcaps.gen.stratum_captures", "--out",
                        str(tmp_path), "--only", "stratum-v2-noise-sizes", "jsonrpc-benign"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = {p.name: analyze(p, tmp_path) for p in sorted(tmp_path.glob("*.pcap"))}
    assert set(got) == {"stratum-v2-noise-sizes.pcap", "jsonrpc-benign.pcap"}
    assert [a["alert"]["variant"] for a in got["stratum-v2-noise-sizes.pcap"]] == ["stratum-v2"]
    assert got["jsonrpc-benign.pcap"] == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "fss-" not in netns
    bad = subprocess.run([sys.executable, "-m", "pcaps.gen.stratum_captures", "--only", "nope"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such capture: nope" in bad.stderr
