"""The SSH detector on the public corpus: role reversal, SSH on odd ports, behind a multiplexer and
inside WebSocket where the captures show them, silence on every other SSH and benign capture."""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest

from flowsense.detect.base import Alert
from flowsense.detect.ssh import SshDetector, negotiated, parse_side
from tests.conftest import manifest, run_detectors

EXPECTED = {  # capture -> (category, variant, server port) of every alert it must give
    "zeek/reverse-ssh.pcap": [("reverse-ssh", "role-reversal", 22)],
    "zeek/ssh-on-port-80.pcap": [("ssh-tunnel", "odd-port", 80)],
    "zeek/ssl-and-ssh-using-sslh.pcap": [("ssh-tunnel", "multiplexed", 443),
                                         ("ssh-tunnel", "odd-port", 443)],
    "zeek/wstunnel-ssh.pcap": [("ssh-tunnel", "encapsulated", 8888)] * 2,
    # ICMP flows carry (type, counterpart) as ports: echo request 8, reply 0
    "ndpi/icmp-tunnel.pcap": [("ssh-tunnel", "encapsulated", 0)],
}


def detect(paths: list[Path]) -> list[Alert]:
    return run_detectors(paths, [SshDetector()])


@pytest.mark.parametrize("name", [r["file"] for r in manifest()])
def test_corpus_alerts_exactly_where_expected(corpus: Path, name: str) -> None:
    got = sorted((a.category, a.variant, a.flow["dst_port"]) for a in detect([corpus / name]))
    assert got == sorted(EXPECTED.get(name, []))


def test_role_reversal_evidence(corpus: Path) -> None:
    (a,) = detect([corpus / "zeek" / "reverse-ssh.pcap"])
    ssh = a.evidence["ssh"]
    assert ssh["client"]["software_version"] == "SSH-2.0-dropbear_2018.76"
    assert ssh["server"]["software_version"] == "SSH-2.0-AsyncSSH_2.8.1"
    assert len(ssh["client"]["hassh"]["hash"]) == 32 and len(ssh["server"]["hassh"]["hash"]) == 32
    assert ssh["negotiated"]["kex"] and ssh["negotiated"]["enc_c2s"]
    assert a.evidence["kex_reply_from_initiator"] is True
    ef = a.flow["eve_flow"]
    assert ef["orientation"] == "syn"
    assert ef["start_ms"] * 10**6 <= a.timestamp_ns <= ef["end_ms"] * 10**6


def test_role_reversal_needs_the_syn(corpus: Path, tmp_path: Path) -> None:
    """Without the SYN the orientation is not known: role reversal must stay silent."""
    src = corpus / "zeek" / "reverse-ssh.pcap"
    out = tmp_path / "no-syn.pcap"
    with open(src, "rb") as f, open(out, "wb") as g:
        r = dpkt.pcap.Reader(f)
        w = dpkt.pcap.Writer(g, linktype=r.datalink())
        for k, (ts, buf) in enumerate(r):
            if k > 0:
                w.writepkt(buf, ts=ts)
    assert [a for a in detect([out]) if a.category == "reverse-ssh"] == []


def test_parse_side_is_bounded_and_rfc_negotiation() -> None:
    banner = b"SSH-2.0-x\r\n"
    assert parse_side(banner + b"\x00\x00\xff\xff\x05").messages == []  # a packet past the data
    assert parse_side(b"junk\r\n" * 3 + banner).banner == "SSH-2.0-x"
    assert parse_side(b"\x16\x03\x01").banner is None
    client = {"kex": ["a", "b"], "enc_c2s": ["x", "y"]}
    server = {"kex": ["b", "a"], "enc_c2s": ["y"]}
    n = negotiated(client, server)
    assert n["kex"] == "a" and n["enc_c2s"] == "y" and n["mac_c2s"] == ""
