"""The peers that run as their own programs: tshark's conversation statistics and nDPI's
``ndpiReader``; whether each is installed, its version, a timed run and what it found.

Both are whole processes (start-up included). ndpiReader also reports its own packet-processing
time, which is the nearest thing it has to a steady state. Neither does quite what
``flowsense flows`` does: tshark dissects every packet fully (then tallies conversations), and
ndpiReader runs nDPI's protocol dissection on the first packets of every flow, a heavier job than
the pinned nfstream's. Their flow counts are reported, compared where the job is comparable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from typing import Any

from benchmarks import measure

TSHARK_ARGS = ["-n", "-q", "-z", "conv,tcp", "-z", "conv,udp"]
NDPI_ARGS: list[str] = []  # defaults: DPI with protocol guessing, flow statistics printed


def installed(tool: str) -> str | None:
    """Path of the executable, or None."""
    return shutil.which({"tshark": "tshark", "ndpi": "ndpiReader"}[tool])


def version(tool: str) -> str | None:
    """The tool's version string, or None when it is not installed."""
    exe = installed(tool)
    if exe is None:
        return None
    cmd = [exe, "--version"] if tool == "tshark" else [exe, "-h"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    text = r.stdout + r.stderr
    pattern = r"TShark \(Wireshark\) (\S+)" if tool == "tshark" else r"nDPI (\d[\w.\-]*)"
    m = re.search(pattern, text)
    return m.group(1) if m else "unknown"


def _exe(tool: str) -> str:
    exe = installed(tool)
    if exe is None:
        raise measure.MeasureError(f"{tool} is not installed")
    return exe


def _timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=measure.CHILD_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        raise measure.MeasureError(f"{' '.join(cmd)} exited with {r.returncode}:\n{tail}")
    return wall, r.stdout


def tshark_conversations(text: str) -> dict[str, int]:
    """TCP and UDP conversations in the output of ``tshark -z conv,tcp -z conv,udp``."""
    counts = {"tcp": 0, "udp": 0}
    section = None
    for line in text.splitlines():
        if "TCP Conversations" in line:
            section = "tcp"
        elif "UDP Conversations" in line:
            section = "udp"
        elif section and "<->" in line:
            counts[section] += 1
    return counts


def tshark_run(path: str) -> dict[str, Any]:
    """Wall time of ``tshark -r PATH -n -q -z conv,tcp -z conv,udp`` and its conversations."""
    wall, out = _timed([_exe("tshark"), "-r", path, *TSHARK_ARGS])
    conv = tshark_conversations(out)
    return {"seconds": wall, "conversations": conv, "flows": conv["tcp"] + conv["udp"]}


def ndpi_run(path: str) -> dict[str, Any]:
    """Wall time of ``ndpiReader -i PATH``, its own packet-processing time, flows and protocols."""
    wall, out = _timed([_exe("ndpi"), "-i", path, *NDPI_ARGS])
    stats = ndpi_stats(out)
    return {"seconds": wall, **stats}


def ndpi_stats(text: str) -> dict[str, Any]:
    """Unique flows, packets, processing time (s) and flows per detected protocol, from
    ndpiReader's summary."""
    out: dict[str, Any] = {"protocols": {}}
    for key, pattern in (
        ("flows", r"Unique flows:\s+(\d+)"),
        ("packets", r"IP packets:\s+(\d+)"),
        ("processing_ms", r"Packet Processing Time:\s+(\d+) msec"),
        ("setup_ms", r"Setup Time:\s+(\d+) msec"),
    ):
        m = re.search(pattern, text)
        out[key] = int(m.group(1)) if m else None
    block = text.split("Detected protocols:", 1)[-1].split("Protocol statistics:", 1)[0]
    row = r"^\s+(\S[^\n]*?)\s+packets: \d+\s+bytes: \d+\s+flows: (\d+)"
    for m in re.finditer(row, block, re.M):
        out["protocols"][m.group(1).strip()] = int(m.group(2))
    return out


# One flow line of ``ndpiReader -v 2``:
#   \t1\tTCP 1.2.3.4:80 <-> 5.6.7.8:1234 [proto: 92/SSH]...[Risk: ** A **** B **]...
_NDPI_FLOW = re.compile(r"^\s+\d+\s+(\w+) (\S+) <-> (\S+) \[proto: ([^\]]+)\](.*)$")


def ndpi_flows(path: str) -> list[dict[str, Any]]:
    """Per-flow verdicts of ``ndpiReader -v 2 -i PATH``: protocol, category and risks."""
    _, out = _timed([_exe("ndpi"), "-i", path, "-v", "2"])
    flows = []
    for line in out.splitlines():
        m = _NDPI_FLOW.match(line)
        if not m:
            continue
        rest = m.group(5)
        cat = re.search(r"\[cat: ([^/\]]+)", rest)
        risk = re.search(r"\[Risk: ((?:\*\* [^*]+ \*\*)+)\]", rest)
        flows.append(
            {
                "l4": m.group(1),
                "a": m.group(2),
                "b": m.group(3),
                "proto": m.group(4).split("/", 1)[-1],
                "category": cat.group(1) if cat else None,
                "risks": re.findall(r"\*\* ([^*]+?) \*\*", risk.group(1)) if risk else [],
            }
        )
    return flows
