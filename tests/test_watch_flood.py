"""``watch --max-flows 1000000`` under a flood of a million and a tenth one-packet flows (root,
slow: about a minute, most of it tcpreplay). The watched reverse-SSH flow, its packets spread
through the flood, must survive the evictions and be alerted; resident memory must stay within
the table's stated bytes a flow (benchmarks/README.md: 1,893 B, the RSS slope per live flow)
times the bound, plus 300 MiB for the interpreter, the compiled kernels and the 32 MiB ring."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flood import write_flood
from tests.watchlab import SSH_PCAP, Watch, needs_lab, replay

BYTES_PER_FLOW = 1893
BOUND = 1_000_000
FLOWS = 1_100_000  # past the bound: eviction must happen


@pytest.mark.slow
def test_million_flow_flood_stays_bounded_and_keeps_the_ssh_flow(tmp_path: Path) -> None:
    needs_lab()
    from pcaps.gen.netlab import Lab

    pcap = tmp_path / "flood.pcap"
    n = write_flood(pcap, FLOWS, SSH_PCAP)
    with Lab("fsw4", rtt_ms=0) as lab:
        w = Watch(["-i", lab.inside_if, "--max-flows", str(BOUND), "--buffer-mib", "32"],
                  lab, lab.inside)
        try:
            w.ready()
            assert replay(lab, pcap, pps=20000).wait(600) == 0  # about 55 s
            w.wait_for(lambda: w.has_alert("reverse-ssh"), 30, "reverse-ssh alert")
            status = Path(f"/proc/{w.pid}/status").read_text()
            hwm_kib = int(next(line.split()[1] for line in status.splitlines()
                               if line.startswith("VmHWM:")))
            assert w.stop() == 0
        finally:
            w.kill()
    end = next(line for line in w.err if "watch ended" in line)
    assert hwm_kib * 1024 <= BYTES_PER_FLOW * BOUND + (300 << 20), (hwm_kib, end)
    assert f"watch ended: {n} packets, 0 dropped" in end, end
    evicted = int(end.split("(")[1].split()[0])
    assert evicted >= FLOWS - BOUND, end
    ssh = [a for a in w.alerts() if a["alert"]["category"] == "reverse-ssh"]
    assert len(ssh) == 1 and ssh[0]["alert"]["variant"] == "role-reversal"
