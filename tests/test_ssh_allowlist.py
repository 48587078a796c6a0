"""The policy allowlist (``allowlist:`` in the YAML config): validated at load, and alerts on a
sanctioned endpoint suppressed where ``analyze`` emits them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowsense.config import load_config
from flowsense.errors import ConfigError
from tests.sshgen import Session

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_allowlist_loads_and_matches(tmp_path: Path) -> None:
    cfg = load_config(str(_cfg(tmp_path, """
allowlist:
  - cidr: 203.0.113.0/28
    port: 22
    categories: [reverse-ssh]
    note: sanctioned jump host
  - cidr: 2001:db8::/32
ssh:
  idle_tunnel_s: 900
""")))
    assert cfg.ssh.idle_tunnel_s == 900
    assert cfg.allowed("203.0.113.7", 22, "reverse-ssh")
    assert not cfg.allowed("203.0.113.7", 22, "ssh-tunnel")  # not that category
    assert not cfg.allowed("203.0.113.7", 2222)
    assert not cfg.allowed("203.0.113.99", 22)
    assert cfg.allowed("2001:db8::5", 443, "stratum-mining")
    assert not cfg.allowed("::ffff:203.0.113.7", 22)
    assert cfg.allows_flow("10.0.0.5", 40000, "203.0.113.7", 22, "reverse-ssh")
    assert cfg.allowlist[0].note == "sanctioned jump host"


@pytest.mark.parametrize("text, message", [
    ("allowlist: {cidr: 10.0.0.0/8}", "expected a list"),
    ("allowlist: [10.0.0.0/8]", "expected a mapping"),
    ("allowlist: [{cidr: 10.0.0.300/8}]", "cidr"),
    ("allowlist: [{cidr: 10.0.0.0/8, port: 70000}]", "port"),
    ("allowlist: [{cidr: 10.0.0.0/8, port: true}]", "port"),
    ("allowlist: [{cidr: 10.0.0.0/8, categories: [nope]}]", "categories"),
    ("allowlist: [{cidr: 10.0.0.0/8, ports: 22}]", "unknown key"),
    ("ssh: {reverse_bursts: 0}", "at least 1"),
    ("ssh: {idle_tunnel_s: 0}", "positive"),
    ("ssh: {idle_tunnels: 5}", "unknown key"),
])
def test_bad_allowlist_and_ssh_config_are_rejected(tmp_path: Path, text: str,
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(str(_cfg(tmp_path, text)))


def _analyze(path: Path, *extra: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "flowsense", "analyze", str(path), "--format",
                          "eve", *extra], capture_output=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return [json.loads(x) for x in out.stdout.decode().splitlines() if x.strip()]


def test_analyze_suppresses_allowlisted_endpoints(tmp_path: Path) -> None:
    s = Session(sport=443)  # a reverse shell over port 443: reverse-ssh and odd-port
    s.handshake()
    s.reverse_keys(8, 76)
    s.close()
    pcap = s.write(tmp_path / "rev443.pcap")
    base = _analyze(pcap)
    cats = {(r["alert"]["category"], r["alert"]["variant"]) for r in base}
    assert ("reverse-ssh", "reverse-interactive") in cats and ("ssh-tunnel", "odd-port") in cats
    only_reverse = _cfg(tmp_path, "allowlist: [{cidr: 203.0.113.7/32, port: 443, "
                                  "categories: [reverse-ssh]}]\n")
    left = _analyze(pcap, "--config", str(only_reverse))
    assert {r["alert"]["category"] for r in left} == {"ssh-tunnel"}
    wrong_port = _cfg(tmp_path, "allowlist: [{cidr: 203.0.113.7/32, port: 22}]\n")
    assert len(_analyze(pcap, "--config", str(wrong_port))) == len(base)


def test_watch_applies_the_same_allowlist(tmp_path: Path) -> None:
    """The sidecar shares the gate: an allowlisted endpoint raises nothing live either."""
    from tests.watchlab import Watch

    s = Session(sport=443)
    s.handshake()
    s.reverse_keys(8, 76)
    s.close()
    pcap = s.write(tmp_path / "rev443.pcap")
    only_reverse = _cfg(tmp_path, "allowlist: [{cidr: 203.0.113.7/32, port: 443, "
                                  "categories: [reverse-ssh]}]\n")
    runs = {}
    for name, extra in (("plain", []), ("allowed", ["--config", str(only_reverse)])):
        res = subprocess.run([*Watch.command(), "--read", "-", *extra], input=pcap.read_bytes(),
                             capture_output=True, timeout=300, env=Watch.environment(),
                             cwd=Watch.cwd())
        assert res.returncode == 0, res.stderr
        runs[name] = {json.loads(x)["alert"]["category"] for x in res.stdout.splitlines()}
    assert runs["plain"] == {"reverse-ssh", "ssh-tunnel"}
    assert runs["allowed"] == {"ssh-tunnel"}


def test_gate_memory_is_bounded() -> None:
    from flowsense.detect.base import Alert
    from flowsense.report.alerts import AlertGate

    gate = AlertGate(capacity=3)

    def alert(flow_id: int) -> Alert:
        return Alert(1, "s", "c", "v", 1, 0.5, 0, {"flow_id": flow_id, "src_ip": "10.0.0.1",
                                                  "src_port": 1, "dst_ip": "10.0.0.2",
                                                  "dst_port": 2})

    assert all(gate.admit(alert(k)) for k in range(5))
    assert not gate.admit(alert(4))  # remembered: one alert a flow and signature
    assert gate.admit(alert(0))  # forgotten past the bound (least recently alerted first)
