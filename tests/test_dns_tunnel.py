"""The dns-tunnel detector: it fires on every tunnel of the corpus, on the flow that carries it,
and stays silent on every other capture (corpus and bundled) and on long but ordinary names."""

from __future__ import annotations

import base64
import json
import random
import string
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from flowsense.detect.dns_tunnel import DnsTunnelDetector, parse_message, queries
from tests.conftest import REPO, manifest, manifest_files, run_detectors
from tests.pcapgen import tcp_session, udp, write_pcap

# what each corpus tunnel must yield: the client ports of the tunnel's DNS flows (MANIFEST.tsv
# evidence and tshark's conversations) and the domain the tunnel sits under (None: dnscat2's
# direct mode asks for bare "dnscat.<hex>" names, no domain)
TUNNELS = {
    "ndpi/dns-tunnel-iodine.pcap": ({44639}, "pirate.sea"),
    "ndpi/bad-dns-traffic.pcap": ({35966, 46961, 56354}, "skullseclabs.org"),
    "ndpi/dns_exfiltration.pcap": ({56373}, None),
    "ndpi/dns-exf.pcap": ({45290}, "test.txt"),
    "suricata-verify/dns__bug-1158__input.pcap": ({43246}, "tunnel.com"),
}
LABELS = {r["file"]: r["label"] for r in manifest()}


def test_every_corpus_tunnel_is_listed() -> None:
    listed = {f for f, label in LABELS.items() if label == "dns-tunnel"}
    assert not listed or listed == set(TUNNELS)


@pytest.mark.parametrize("name", sorted(TUNNELS))
def test_corpus_tunnel_fires(corpus: Path, name: str) -> None:
    ports, domain = TUNNELS[name]
    alerts = run_detectors([corpus / name], [DnsTunnelDetector()])
    assert {a.flow["src_port"] for a in alerts} == ports
    assert len(alerts) == len(ports)  # one alert a flow
    for a in alerts:
        assert a.category == "dns-tunnel" and a.flow["dst_port"] == 53
        assert a.variant == "encoded-names" and 3500000 <= a.signature_id <= 3599999
        ev = a.evidence
        assert ev["encoded_names"] >= 1 and ev["qnames"] and ev["max_label_length"] >= 40
        assert all(len(q) <= 80 for q in ev["qnames"])
        if domain is not None:
            assert ev["base_domain"] == domain
    if name.endswith("iodine.pcap"):  # NULL queries: the second sign is in the evidence
        assert alerts[0].evidence["qtypes"] == {"NULL": alerts[0].evidence["queries_seen"]}
        assert "tunnel-qtypes" in alerts[0].evidence["also"]
        assert any("\\x" in q for q in alerts[0].evidence["qnames"])  # escaped, not raw bytes


@pytest.mark.parametrize("name", [f for f in manifest_files() if LABELS.get(f) != "dns-tunnel"])
def test_other_corpus_captures_are_silent(corpus: Path, name: str) -> None:
    assert run_detectors([corpus / name], [DnsTunnelDetector()]) == []


BUNDLED = sorted(str(p.relative_to(REPO)) for p in (REPO / "pcaps").rglob("*.pcap*"))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_captures_are_silent(name: str) -> None:
    assert run_detectors([REPO / name], [DnsTunnelDetector()]) == []


# --- synthetic ----------------------------------------------------------------------------------

C, S = "10.0.0.5", "192.0.2.53"


def query(name: str, qtype: int = dpkt.dns.DNS_A, qid: int = 1) -> bytes:
    q = dpkt.dns.DNS(id=qid, qr=dpkt.dns.DNS_Q, rd=1)
    q.qd = [dpkt.dns.DNS.Q(name=name, type=qtype, cls=dpkt.dns.DNS_IN)]
    return bytes(q)


def answer(q: bytes, size: int = 40) -> bytes:
    """The query echoed as a response with one TXT record of ``size`` bytes."""
    qd = q[12:]
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 60, size + 1) + bytes([size]) + b"x" * size
    return q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0) + qd + rr


def dns_capture(tmp_path: Path, names: list[tuple[str, int]], sport: int = 40000,
                dport: int = 53, answer_size: int = 40) -> Path:
    pkts = []
    for k, (name, qtype) in enumerate(names):
        q = query(name, qtype, qid=k + 1)
        pkts.append((1.0 + k * 0.1, udp(C, S, sport, dport, q)))
        pkts.append((1.05 + k * 0.1, udp(S, C, dport, sport, answer(q, answer_size))))
    return write_pcap(tmp_path / "dns.pcap", pkts)


def test_a_tunnel_is_judged_at_its_first_answer(tmp_path: Path) -> None:
    """The detector asks for every DNS flow at its first answer (a prompt rule of its own, not
    the pool detector's, which names the pools): a sidecar alerts while the tunnel's flow is
    still open, not when it idles out."""
    from flowsense.config import Config
    from flowsense.pipeline import Pipeline

    rng = random.Random(11)
    name = f"{_random_label(rng, string.ascii_lowercase + '234567', 52)}.t.example.net"
    cap = dns_capture(tmp_path, [(name, dpkt.dns.DNS_A), ("www.example.com", dpkt.dns.DNS_A)])
    det = DnsTunnelDetector()
    shown: list = []
    pipe = Pipeline(Config(), lambda frame: None, det.watch_rules(), shown.append)
    pipe.run_file(str(cap))  # not finished: the flow is still open
    alerts = [a for frame in shown for a in det.on_snapshot(frame)]
    assert [(a.variant, a.flow["eve_flow"]["state"]) for a in alerts] == [("encoded-names",
                                                                            "open")]


def alerts_for(path: Path) -> list:
    return run_detectors([path], [DnsTunnelDetector()])


def _random_label(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.mark.parametrize("alphabet", ["base32", "hex", "base64"])
def test_one_long_random_label_fires(tmp_path: Path, alphabet: str) -> None:
    rng = random.Random(7)
    chars = {"base32": string.ascii_lowercase + "234567", "hex": "0123456789abcdef",
             "base64": string.ascii_letters + string.digits}[alphabet]
    name = f"{_random_label(rng, chars, 52)}.t.example.net"
    (a,) = alerts_for(dns_capture(tmp_path, [(name, dpkt.dns.DNS_A)]))
    assert a.variant == "encoded-names" and a.evidence["base_domain"] == "example.net"
    assert a.evidence["encodings"] == [alphabet] and a.confidence < 0.85  # one name only
    assert a.timestamp_ns == 1_000_000_000  # the query, not its answer 50 ms later


def test_exfiltrated_file_in_base64_fires(tmp_path: Path) -> None:
    blob = base64.b32encode(b"secret payroll figures 2026 q3 " * 2).decode().rstrip("=").lower()
    names = [(f"{blob[k:k + 50]}.{k}.x.exfil.example.org", dpkt.dns.DNS_TXT)
             for k in range(0, len(blob), 50)]
    (a,) = alerts_for(dns_capture(tmp_path, names))
    assert a.variant == "encoded-names" and a.confidence == 0.85


def test_null_queries_fire(tmp_path: Path) -> None:
    names = [(f"p{k}a.t.pirate.example", 10) for k in range(3)]  # short names: qtype alone
    (a,) = alerts_for(dns_capture(tmp_path, names))
    assert a.variant == "tunnel-qtypes" and a.evidence["qtypes"] == {"NULL": 3}
    assert a.timestamp_ns == 1_100_000_000  # the second NULL query completed the sign


def test_one_null_query_is_silent(tmp_path: Path) -> None:
    assert alerts_for(dns_capture(tmp_path, [("www.example.com", 10)])) == []


def test_volume_fires(tmp_path: Path) -> None:
    rng = random.Random(5)  # names too short to look encoded, but each new and filled
    names = [(f"{_random_label(rng, string.ascii_lowercase, 26)}.t.example.com", dpkt.dns.DNS_TXT)
             for _ in range(40)]
    (a,) = alerts_for(dns_capture(tmp_path, names, answer_size=200))
    assert a.variant == "volume" and a.evidence["queries_in_flow"] == 40
    assert a.severity == 2


def test_cluster_search_expansions_are_silent(tmp_path: Path) -> None:
    """A cluster resolver's persistent upstream socket: many names under cluster.local."""
    names = [(f"{svc}{k}.{sfx}cluster.local", dpkt.dns.DNS_A) for k in range(10)
             for svc in ("api", "db") for sfx in ("default.svc.", "svc.")]
    assert alerts_for(dns_capture(tmp_path, names, answer_size=200)) == []


def test_many_short_names_under_one_domain_are_silent(tmp_path: Path) -> None:
    names = [(f"host{k}.example.com", dpkt.dns.DNS_A) for k in range(40)]
    assert alerts_for(dns_capture(tmp_path, names, answer_size=200)) == []


def test_a_forwarder_asking_many_domains_is_silent(tmp_path: Path) -> None:
    names = [(f"www.site{k}.example{k % 7}.com", dpkt.dns.DNS_A) for k in range(40)]
    assert alerts_for(dns_capture(tmp_path, names, answer_size=200)) == []


ORDINARY = [
    ("ec2-203-0-113-25.eu-west-1.compute.amazonaws.com", dpkt.dns.DNS_A),
    ("r4---sn-p5qlsnsk.googlevideo.com", dpkt.dns.DNS_AAAA),
    ("5f3c2a1b-9d8e-4f7a-b6c5-1234567890ab.prod.azure-devices.net", dpkt.dns.DNS_A),
    ("1avvqn74sg75ukfvf25dgcethgq638ek.example.com", 50),  # an NSEC3-style hash label
    ("_esni.cloudflare.com", dpkt.dns.DNS_TXT),
    ("selector1-contoso-com._domainkey.contoso.onmicrosoft.com", dpkt.dns.DNS_TXT),
    ("b.a.9.8.7.6.5.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", dpkt.dns.DNS_PTR),
    ("this-is-a-rather-long-but-ordinary-marketing-subdomain.example.co.uk", dpkt.dns.DNS_A),
    ("d2ykvmkh5ajl5y.cloudfront.net", dpkt.dns.DNS_A),
    ("MyCompany-Prod-WebServer01-EastUS2-Cluster.corp.example.com", dpkt.dns.DNS_A),
    ("mYcOmPaNyPrOdWeBsErVeR01eAsTuS2cLuStErV2.corp.example.com", dpkt.dns.DNS_A),  # DNS 0x20
    ("prod-eu-central-1-telemetry-ingest-collector-v2.monitoring.example.com", dpkt.dns.DNS_A),
]


@pytest.mark.parametrize("name,qtype", ORDINARY)
def test_long_ordinary_names_are_silent(tmp_path: Path, name: str, qtype: int) -> None:
    assert alerts_for(dns_capture(tmp_path, [(name, qtype)] * 3)) == []


def test_mdns_names_are_not_candidates(tmp_path: Path) -> None:
    name = f"{'a1B2c3D4' * 6}._airplay._tcp.local"
    assert alerts_for(dns_capture(tmp_path, [(name, 16)], sport=5353, dport=5353)) == []


def test_dns_over_tcp_fires(tmp_path: Path) -> None:
    rng = random.Random(3)
    q = query(f"{_random_label(rng, '0123456789abcdef', 60)}.c2.example.org", 16)
    msgs = [(0, struct.pack(">H", len(q)) + q), (1, struct.pack(">H", len(q) + 10) + answer(q, 8))]
    path = write_pcap(tmp_path / "tcp.pcap", tcp_session(C, S, 41000, 53, 1.0, msgs))
    (a,) = alerts_for(path)
    assert a.variant == "encoded-names" and a.flow["protocol"] == 6


def test_parser_is_bounded() -> None:
    head = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert parse_message(head + b"\xc0\x0c\x00\x01\x00\x01") is None  # a pointer to itself
    assert parse_message(head + b"\xc0\x20\x00\x01\x00\x01") is None  # a forward pointer
    assert parse_message(head + b"\x05abc") is None  # cut short
    good = query("www.example.com")
    assert queries(good + good[:20], tcp=False)[0].labels == (b"www", b"example", b"com")
    assert len(queries(good * 3, tcp=False)) == 3
    rng = random.Random(1)
    for _ in range(2000):  # never raises on garbage
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        queries(data, tcp=bool(rng.randrange(2)))


def test_analyze_reports_the_tunnel(corpus: Path, tmp_path: Path) -> None:
    """Through the CLI: one EVE alert on the iodine flow, names escaped in JSON and in the HTML
    report, and the summary lists the category."""
    cap = str(corpus / "ndpi/dns-tunnel-iodine.pcap")
    html = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "flowsense", "analyze", cap, "--format", "eve",
                        "--report", str(html)], capture_output=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    (alert,) = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
    assert alert["alert"]["category"] == "dns-tunnel" and alert["app_proto"] == "dns"
    assert (alert["src_port"], alert["dest_port"], alert["proto"]) == (44639, 53, "UDP")
    assert "J\\xe4germeister" in alert["evidence"]["qnames"][0]
    page = html.read_text(encoding="utf-8")
    assert "pirate.sea" in page and "J\\xe4germeister" in page and "J\u00e4germeister" not in page
    r = subprocess.run([sys.executable, "-m", "flowsense", "analyze", cap], capture_output=True,
                       cwd=REPO, timeout=300)
    assert "dns-tunnel/encoded-names 10.0.2.30:44639 -> 10.0.2.20:53" in r.stdout.decode()


def test_a_flow_judged_again_keeps_its_signature(tmp_path: Path) -> None:
    """A live flow looked at twice (its first answer, then its end) that shows a new sign the
    second time is reported under the first signature: one alert a flow through the gate."""
    from flowsense.pipeline import compute_flows
    from flowsense.report.alerts import AlertGate

    rng = random.Random(9)
    names = [("a1.t.pirate.example", 10), ("a2.t.pirate.example", 10),
             (f"{_random_label(rng, '0123456789abcdef', 56)}.t.pirate.example", 10)]
    (tmp_path / "early").mkdir()
    early = dns_capture(tmp_path / "early", names[:2])
    late = dns_capture(tmp_path, names)
    det, gate = DnsTunnelDetector(), AlertGate()
    (first,) = det.on_frame(compute_flows([str(early)]).frame)
    (second,) = det.on_frame(compute_flows([str(late)]).frame)
    assert first.flow["flow_id"] == second.flow["flow_id"]
    assert first.variant == second.variant == "tunnel-qtypes"
    assert second.evidence["also"] == ["encoded-names"]
    assert [gate.admit(a) for a in (first, second)] == [True, False]
