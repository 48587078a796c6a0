"""The generated SSH captures in pcaps/ssh: facts about the files that do not depend on the
detector (the detector's own tests pin its alerts on them).

Each capture parses cleanly with flowsense, holds the SSH flows its README row says, in the
right orientation (the inside host 10.20.30.40 sends the SYN to 203.0.113.7), with both
banners, only the rewritten addresses, valid checksums (tshark's check), the round trip of its
scenario in the TCP handshake, the bulk in the direction the scenario moved it, and the
keystroke-sized packets coming from the side that typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dpkt
import pytest

from flowsense.config import Config
from flowsense.pipeline import FlowsResult, compute_flows
from tests.conftest import REPO, require_tool

SSH_DIR = REPO / "pcaps" / "ssh"
INSIDE, OUTSIDE = "10.20.30.40", "203.0.113.7"
OPENSSH = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n"
DROPBEAR = b"SSH-2.0-dropbear_2022.83\r\n"
KiB = 1024


@dataclass(frozen=True)
class Facts:
    rtt_ms: float
    port: int = 22
    banner: bytes = OPENSSH
    flows: int = 1
    typist: str | None = None  # "client" (the inside) or "server" (the outside) typed
    keystroke: frozenset[int] = frozenset()  # TCP payload sizes of a typed key on the wire
    bulk_c2s: int = 0  # at least this many bytes client to server (bulk), summed over flows
    bulk_s2c: int = 0


def keys(*sizes: int) -> frozenset[int]:
    return frozenset(sizes)


FACTS = {
    "reverse-interactive-sshd-chacha": Facts(60, typist="server", keystroke=keys(76)),
    "reverse-interactive-sshd-gcm-443": Facts(80, port=443, typist="server",
                                              keystroke=keys(100)),
    "reverse-interactive-sshd-etm": Facts(40, typist="server", keystroke=keys(100)),
    "reverse-interactive-sshd-mte": Facts(70, typist="server", keystroke=keys(112)),
    "reverse-interactive-raw": Facts(60, typist="server", keystroke=keys(36)),
    "reverse-setup": Facts(60),
    "remote-forward": Facts(50),
    "reverse-exfil": Facts(60, typist="server", keystroke=keys(76), bulk_c2s=1536 * KiB),
    "idle-tunnel": Facts(60),
    "dropbear-reverse-interactive": Facts(60, banner=DROPBEAR, typist="server",
                                          keystroke=keys(100, 108)),
    "dropbear-forward-interactive": Facts(60, banner=DROPBEAR, typist="client",
                                          keystroke=keys(64)),
    "forward-interactive-22": Facts(60, typist="client", keystroke=keys(36)),
    "forward-interactive-443": Facts(80, port=443, typist="client", keystroke=keys(36)),
    "scp-upload": Facts(60, bulk_c2s=1024 * KiB),
    "scp-download": Facts(60, bulk_s2c=1024 * KiB),
    "sftp": Facts(60, bulk_c2s=512 * KiB, bulk_s2c=512 * KiB),
    "git-over-ssh": Facts(60, flows=2, bulk_s2c=40 * KiB),
    "rsync-over-ssh": Facts(60, bulk_c2s=1024 * KiB),
    "local-forward-web": Facts(60, bulk_s2c=200 * 1000),
    "proxyjump": Facts(60, typist="client", keystroke=keys(76)),
    "local-forward-nested": Facts(60, typist="client", keystroke=keys(92)),
}
NAMES = sorted(FACTS)


def path_of(name: str) -> Path:
    return SSH_DIR / f"{name}.pcap"


@cache
def flows(name: str) -> FlowsResult:
    return compute_flows([str(path_of(name))], Config())


@cache
def packets(name: str) -> list[tuple[float, dpkt.ethernet.Ethernet]]:
    with open(path_of(name), "rb") as f:
        return [(ts, dpkt.ethernet.Ethernet(buf)) for ts, buf in dpkt.pcap.Reader(f)]


def test_every_capture_is_described() -> None:
    on_disk = sorted(p.stem for p in SSH_DIR.glob("*.pcap"))
    assert on_disk == NAMES
    readme = (SSH_DIR / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"`{name}.pcap`" in readme, name


@pytest.mark.parametrize("name", NAMES)
def test_flows_orientation_and_banners(name: str) -> None:
    facts = FACTS[name]
    res = flows(name)
    assert res.errors == []
    assert res.n_flows == facts.flows
    cols = res.frame.cols
    for i in range(res.n_flows):
        assert cols["protocol"][i] == 6
        assert (cols["src_ip"][i], cols["dst_ip"][i]) == (INSIDE, OUTSIDE)
        assert cols["dst_port"][i] == facts.port
        assert cols["orientation"][i] == "syn"
        assert res.frame.payload(i, 0).startswith(facts.banner)
        assert res.frame.payload(i, 1).startswith(facts.banner)
    assert sum(int(v) for v in cols["src2dst_bytes"]) >= facts.bulk_c2s
    assert sum(int(v) for v in cols["dst2src_bytes"]) >= facts.bulk_s2c


@pytest.mark.parametrize("name", NAMES)
def test_only_rewritten_addresses(name: str) -> None:
    pkts = packets(name)
    assert pkts
    for _, eth in pkts:
        assert isinstance(eth.data, dpkt.ip.IP)  # no ARP, no IPv6: the lab is quiet
        ends = {dpkt.utils.inet_to_str(eth.data.src), dpkt.utils.inet_to_str(eth.data.dst)}
        assert ends == {INSIDE, OUTSIDE}


@pytest.mark.parametrize("name", NAMES)
def test_handshake_round_trip(name: str) -> None:
    """SYN to SYN-ACK as the inside host saw them: the scenario's round trip (the relay may
    add scheduling delay on a busy machine, never take any away)."""
    rtt = FACTS[name].rtt_ms
    syn: dict[int, float] = {}
    seen = []
    for ts, eth in packets(name):
        tcp = eth.data.data
        if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
            syn[tcp.sport] = ts
        elif tcp.flags & dpkt.tcp.TH_SYN and tcp.dport in syn:
            seen.append((ts - syn[tcp.dport]) * 1000.0)
    assert len(seen) == FACTS[name].flows
    assert all(rtt - 1.0 <= ms <= rtt + 50.0 for ms in seen), seen


@pytest.mark.parametrize("name", [n for n in NAMES if FACTS[n].typist])
def test_keystrokes_come_from_the_typist(name: str) -> None:
    """A typed key is one packet of the scenario's keystroke size from the typist's side."""
    facts = FACTS[name]
    typist_ip = INSIDE if facts.typist == "client" else OUTSIDE
    sizes = [len(eth.data.data.data) for _, eth in packets(name)
             if dpkt.utils.inet_to_str(eth.data.src) == typist_ip]
    typed = sum(1 for s in sizes if s in facts.keystroke)
    assert typed >= 25, (typed, sorted(set(sizes)))


def test_idle_tunnel_is_keepalives_for_a_minute() -> None:
    res = flows("idle-tunnel")
    assert res.frame.cols["bidirectional_duration_ms"][0] >= 60_000
    # after the set-up, the client speaks every 5 s (ServerAliveInterval) and nothing else
    times = [ts for ts, eth in packets("idle-tunnel")
             if eth.data.data.data and dpkt.utils.inet_to_str(eth.data.src) == INSIDE]
    gaps = [b - a for a, b in zip(times, times[1:]) if b - a > 1.0]
    assert len(gaps) >= 10
    assert all(4.5 <= g <= 5.5 for g in gaps[:-1]), gaps  # the last: the client's goodbye


@pytest.mark.parametrize("name", NAMES)
def test_checksums_valid_by_tshark(name: str) -> None:
    import subprocess

    tshark = require_tool("tshark")
    out = subprocess.run(
        [tshark, "-r", str(path_of(name)), "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status",
         "-e", "tcp.checksum.status"], capture_output=True, text=True, check=True, timeout=120)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == len(packets(name))
    assert all(row == ["1", "1"] for row in rows)  # 1: good


def test_generator_lists_and_refuses_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    from pcaps.gen.ssh_captures import main

    assert main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(listed) == NAMES
    assert main(["--only", "no-such-scenario"]) == 2


def test_generator_makes_a_capture_end_to_end(tmp_path: Path) -> None:
    """One short scenario through the whole generator (root, OpenSSH): the capture has the
    facts its row in FACTS says, and the lab is gone afterwards."""
    import subprocess

    from tests.conftest import require_root

    require_root()
    for tool in ("ip", "ss", "ethtool", "tcpdump", "/usr/sbin/sshd", "ssh", "ssh-keygen",
                 "dropbearkey", "dropbearconvert"):
        require_tool(tool)
    from pcaps.gen.ssh_captures import SCENARIOS, generate

    (scenario,) = [s for s in SCENARIOS if s.name == "reverse-setup"]
    out = generate(scenario, tmp_path)
    res = compute_flows([str(out)], Config())
    assert res.errors == [] and res.n_flows == 1
    cols = res.frame.cols
    assert (cols["src_ip"][0], cols["dst_ip"][0], cols["dst_port"][0]) == (INSIDE, OUTSIDE, 22)
    assert cols["orientation"][0] == "syn"
    assert res.frame.payload(0, 0).startswith(OPENSSH)
    assert res.frame.payload(0, 1).startswith(OPENSSH)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "fscg-" not in netns
