"""The terminal summary: alerts by category, by host, by pool, strongest evidence first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps" / "corpus"


def summary(*args: str) -> dict[str, list[str]]:
    r = subprocess.run([sys.executable, "-m", "flowsense", "analyze", str(PCAPS), *args],
                       capture_output=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    sections: dict[str, list[str]] = {}
    current = "head"
    for line in r.stdout.decode().splitlines():
        if not line.startswith("  "):
            current = line.rstrip(":")
            sections[current] = []
        else:
            sections[current].append(line.split())
    return sections


def test_groups_strongest_first() -> None:
    s = summary()
    assert [row[0] for row in s["by category"]] == [
        "stratum-mining", "reverse-ssh", "ssh-tunnel", "mining-pool"]  # severity, confidence
    hosts = {row[0]: int(row[1]) for row in s["by host"]}
    assert hosts == {"192.168.2.92": 2, "10.0.0.1": 1, "172.16.238.1": 1}
    # the Stratum flow is listed under the pool its pool alert names, with that alert
    (pool,) = s["by pool"]
    assert pool[:5] == ["178.32.196.217/32", "2", "alert(s)", "1", "flow(s)"]
    assert pool[-2:] == ["mining-pool/ip-list,", "stratum-mining/xmr"]
    ranked = [(row[0], float(row[row.index("conf") + 1])) for row in s["strongest first"]]
    assert ranked == sorted(ranked, key=lambda r: (r[0], -r[1]))


def test_host_is_the_side_inside_home_net() -> None:
    s = summary("--home-net", "13.13.13.0/24")
    hosts = [row[0] for row in s["by host"]]
    # 10.0.0.1 -> 13.13.13.37 is inbound now: the responder looks at 13.13.13.37
    assert "13.13.13.37" in hosts and "10.0.0.1" not in hosts
