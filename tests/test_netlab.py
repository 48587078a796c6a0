"""netlab: two namespaces, a delayed TAP relay or a veth pair, tcpdump, address rewriting.

The round-trip figure is read from the tcpdump capture (SYN to SYN-ACK as the inside host
saw them): a fact about the capture the lab made, not a timing of our code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from tests.conftest import require_root, require_tool

# a one-shot TCP echo server and its client, in plain Python so nothing else is needed
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7007)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7007), timeout=10)
c.sendall(b"ping over the lab"); print(c.recv(100).decode())
"""


def _needs() -> None:
    require_root()
    require_tool("ip")
    require_tool("tcpdump")
    require_tool("ethtool")


def _exchange(lab, pcap: Path) -> str:  # type: ignore[no-untyped-def]
    server = lab.popen(lab.outside, [sys.executable, "-c", SERVER, lab.outside_ip],
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    with lab.tcpdump(lab.inside, pcap):
        out = lab.run(lab.inside, [sys.executable, "-c", CLIENT, lab.outside_ip], check=True,
                      timeout=30)
    server.wait(timeout=10)
    return out.stdout.strip()


def _packets(pcap: Path) -> list[tuple[float, dpkt.ip.IP]]:
    with open(pcap, "rb") as f:
        return [(ts, eth.data) for ts, buf in dpkt.pcap.Reader(f)
                if isinstance((eth := dpkt.ethernet.Ethernet(buf)).data, dpkt.ip.IP)]


def _handshake_rtt_ms(pcap: Path) -> float:
    syn = synack = None
    for ts, ip in _packets(pcap):
        if not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        flags = ip.data.flags
        if flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK and syn is None:
            syn = ts
        elif flags & dpkt.tcp.TH_SYN and flags & dpkt.tcp.TH_ACK and synack is None:
            synack = ts
    assert syn is not None and synack is not None, "no TCP handshake in the capture"
    return (synack - syn) * 1000.0


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_delayed_lab_has_its_round_trip_in_the_capture(tmp_path: Path) -> None:
    _needs()
    from pcaps.gen.netlab import Lab, rewrite_addresses

    with Lab("fsct1", rtt_ms=60.0) as lab:
        assert {lab.inside, lab.outside} <= _namespaces()
        assert _exchange(lab, tmp_path / "raw.pcap") == "PING OVER THE LAB"
        offloads = lab.run(lab.inside, ["ethtool", "-k", lab.inside_if], check=True).stdout
        assert "tcp-segmentation-offload: off" in offloads
        inside_ip, outside_ip = lab.inside_ip, lab.outside_ip
    assert not {lab.inside, lab.outside} & _namespaces()

    rtt = _handshake_rtt_ms(tmp_path / "raw.pcap")
    assert 55.0 <= rtt < 1000.0
    packets = _packets(tmp_path / "raw.pcap")
    payload = [bytes(ip.data.data) for _, ip in packets
               if isinstance(ip.data, dpkt.tcp.TCP) and ip.data.data]
    assert payload == [b"ping over the lab", b"PING OVER THE LAB"]

    count = rewrite_addresses(tmp_path / "raw.pcap", tmp_path / "final.pcap",
                              {inside_ip: "10.20.30.40", outside_ip: "203.0.113.7"})
    rewritten = _packets(tmp_path / "final.pcap")
    assert count >= len(rewritten) == len(packets)
    seen = {(dpkt.utils.inet_to_str(ip.src), dpkt.utils.inet_to_str(ip.dst))
            for _, ip in rewritten}
    assert seen == {("10.20.30.40", "203.0.113.7"), ("203.0.113.7", "10.20.30.40")}
    assert [ts for ts, _ in rewritten] == [ts for ts, _ in packets]


def test_rewritten_checksums_are_valid_by_tshark(tmp_path: Path) -> None:
    _needs()
    tshark = require_tool("tshark")
    from pcaps.gen.netlab import Lab, rewrite_addresses

    with Lab("fsct3", rtt_ms=20.0) as lab:
        _exchange(lab, tmp_path / "raw.pcap")
        mapping = {lab.inside_ip: "10.20.30.40", lab.outside_ip: "203.0.113.7"}
    rewrite_addresses(tmp_path / "raw.pcap", tmp_path / "final.pcap", mapping)
    out = subprocess.run(
        [tshark, "-r", str(tmp_path / "final.pcap"), "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status",
         "-e", "tcp.checksum.status"], capture_output=True, text=True, check=True, timeout=60)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) >= 8
    assert all(row == ["1", "1"] for row in rows), rows  # 1: good


def test_veth_lab_without_delay(tmp_path: Path) -> None:
    _needs()
    from pcaps.gen.netlab import Lab

    with Lab("fsct2", rtt_ms=0.0) as lab:
        assert _exchange(lab, tmp_path / "raw.pcap") == "PING OVER THE LAB"
        driver = lab.run(lab.inside, ["ethtool", "-i", lab.inside_if], check=True).stdout
        assert "driver: veth" in driver
    assert _handshake_rtt_ms(tmp_path / "raw.pcap") < 20.0


def test_lab_is_removed_on_error() -> None:
    _needs()
    from pcaps.gen.netlab import Lab

    with pytest.raises(RuntimeError, match="boom"):
        with Lab("fsct4", rtt_ms=10.0) as lab:
            sleeper = lab.popen(lab.inside, ["sleep", "300"])
            raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not {"fsct4-in", "fsct4-out"} & _namespaces()
