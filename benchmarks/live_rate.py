"""Live capture rate: the highest replay rate ``flowsense watch`` and tcpdump take without a
kernel drop, and flowsense's alert latency (root; netlab veth pair, tcpreplay).

    sudo python -m benchmarks.live_rate                         # the 2M capture, default steps
    sudo python -m benchmarks.live_rate --packets 600000 --rates 200000,300000,400000,500000,0

For each capturer in turn (never both at once) and each rate (``--pps`` steps, 0 = tcpreplay's
top speed), the capturer is started on the inside end of a veth pair, the first ``--packets``
packets of the capture are replayed into the outside end, and the capturer is stopped:

* flowsense: ``flowsense watch -i IF --buffer-mib B``; packets and kernel drops from its end
  line (PACKET_STATISTICS), alert latency from its EVE records (``flowsense.emitted`` minus
  ``timestamp``, the capture time of the packet that completed the evidence);
* tcpdump: ``tcpdump -i IF -B B*1024 -w /dev/null``; drops from its "dropped by kernel" line.

The capturer's CPU time (user + system, from /proc) over the replay, per packet sent, is
recorded too: where tcpreplay cannot push a capturer to its limit, about 1e6 / (µs a packet)
is what one core would take.

Both get the same ring size. A capturer's clean rate is the highest step at which it dropped
nothing and received every packet tcpreplay sent. tcpreplay's own achieved rate is reported:
on a busy 2-core machine it cannot reach high rates, which then bounds both capturers alike.
Results go to ``benchmarks/results/live_rate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CAPTURE = REPO / "benchmarks" / "data" / "mixed.pcap"
RESULTS = REPO / "benchmarks" / "results" / "live_rate.json"


def _ensure_capture(path: Path) -> None:
    if path.exists():
        return
    print(f"generating {path} (seed 1)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "benchmarks.gen_capture", "--packets", "2000000",
                    "--seed", "1", "-o", str(path)], check=True, cwd=REPO)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


@dataclass(frozen=True)
class Plan:
    capture: Path
    packets: int  # replay only the first N (0: all)
    buffer_mib: int  # ring size, both capturers
    nice: int  # tcpreplay's nice value: below 0 the replayer keeps its rate


def _replay(lab: Any, plan: Plan, pps: int) -> dict[str, float]:
    rate = ["--pps", str(pps)] if pps else ["--topspeed"]
    limit = ["--limit", str(plan.packets)] if plan.packets else []
    nice = ["nice", "-n", str(plan.nice)] if plan.nice else []
    res = lab.run(lab.outside, [*nice, "tcpreplay", "-i", lab.outside_if, *rate, *limit,
                                str(plan.capture)], timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"tcpreplay failed: {res.stderr.strip()[-300:]}")
    sent = int(re.search(r"Actual: (\d+) packets", res.stdout).group(1))  # type: ignore[union-attr]
    secs = float(re.search(r"sent in ([\d.]+) seconds", res.stdout).group(1))  # type: ignore[union-attr]
    return {"sent": sent, "seconds": secs, "achieved_pps": sent / secs if secs else 0.0}


def _wait_line(proc: subprocess.Popen[str], pattern: str, lines: list[str],
               timeout: float) -> None:
    end = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"capturer exited: {''.join(lines)[-500:]}")
        lines.append(line)
        if re.search(pattern, line):
            return
    raise RuntimeError(f"no {pattern!r} within {timeout} s")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round(lab: Any, cmd: list[str], ready: str, stop: int, plan: Plan, pps: int,
           **popen: Any) -> tuple[dict[str, float], str]:
    """Start ``cmd`` in the inside namespace, wait for ``ready`` on its stderr, replay, stop it
    with ``stop``: (tcpreplay's figures, the capturer's stderr)."""
    proc = lab.popen(lab.inside, cmd, stderr=subprocess.PIPE, text=True, **popen)
    err: list[str] = []
    try:
        _wait_line(proc, ready, err, 600)
        cpu0 = _cpu_s(proc.pid)  # `ip netns exec` execs: the pid is the capturer's
        rep = _replay(lab, plan, pps)
        time.sleep(1.0)
        rep["cpu_s"] = _cpu_s(proc.pid) - cpu0
        rep["cpu_us_per_packet"] = rep["cpu_s"] * 1e6 / max(1.0, rep["sent"])
        proc.send_signal(stop)
        _, rest = proc.communicate(timeout=600)
        err.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rep, "".join(err)


def run_flowsense(lab: Any, plan: Plan, pps: int) -> dict:
    out = Path(f"/tmp/fsw-live-rate-{os.getpid()}.json")
    cmd = [sys.executable, "-m", "flowsense", "watch", "-i", lab.inside_if, "--buffer-mib",
           str(plan.buffer_mib), "-o", str(out), "--idle-timeout", "3600"]
    rep, text = _round(lab, cmd, "watching", signal.SIGTERM, plan, pps, env=_env(), cwd=REPO)
    m = re.search(r"watch ended: (\d+) packets, (\d+) dropped by the kernel", text)
    if m is None:
        raise RuntimeError(f"flowsense gave no end line: {text[-500:]}")
    lat = []
    if out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            emitted = datetime.fromisoformat(rec["flowsense"]["emitted"])
            lat.append((emitted - datetime.fromisoformat(rec["timestamp"])).total_seconds())
        out.unlink()
    return {**rep, "received": int(m.group(1)), "dropped": int(m.group(2)), "alerts": len(lat),
            "latency_s_median": statistics.median(lat) if lat else None,
            "latency_s_max": max(lat) if lat else None}


def run_tcpdump(lab: Any, plan: Plan, pps: int) -> dict:
    cmd = ["tcpdump", "-n", "-i", lab.inside_if, "-B", str(plan.buffer_mib * 1024), "-w",
           "/dev/null"]
    rep, text = _round(lab, cmd, "listening on", signal.SIGINT, plan, pps)
    got = re.search(r"(\d+) packets captured", text)
    dropped = re.search(r"(\d+) packets dropped by kernel", text)
    if got is None or dropped is None:
        raise RuntimeError(f"tcpdump gave no statistics: {text[-500:]}")
    return {**rep, "received": int(got.group(1)), "dropped": int(dropped.group(1))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--packets", type=int, default=0, help="replay only the first N (0: all)")
    ap.add_argument("--rates", default="100000,200000,300000,400000,500000,0",
                    help="pps steps, ascending; 0 = top speed")
    ap.add_argument("--buffer-mib", type=int, default=64, help="ring size, both capturers")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--note", default="", help="recorded with the results (e.g. machine load)")
    ap.add_argument("--replay-nice", type=int, default=-15,
                    help="nice value for tcpreplay (default -15: on a small machine the offered "
                         "rate must not yield to the capturer; 0 lets them share)")
    args = ap.parse_args(argv)
    plan = Plan(args.capture, args.packets, args.buffer_mib, args.replay_nice)
    if os.geteuid() != 0:
        print("live_rate: needs root (namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from pcaps.gen.netlab import Lab

    _ensure_capture(args.capture)
    rates = [int(r) for r in args.rates.split(",")]
    results: dict[str, list[dict]] = {"flowsense": [], "tcpdump": []}
    runners = {"flowsense": run_flowsense, "tcpdump": run_tcpdump}
    with Lab("fsw9", rtt_ms=0) as lab:
        for tool, run in runners.items():
            for pps in rates:
                r = run(lab, plan, pps)
                r["pps"] = pps
                r["clean"] = r["dropped"] == 0 and r["received"] >= r["sent"]
                results[tool].append(r)
                print(f"{tool:9s} pps={pps or 'top':>7} achieved={r['achieved_pps']:>9,.0f} "
                      f"sent={r['sent']:,} received={r['received']:,} dropped={r['dropped']:,} "
                      f"cpu={r['cpu_us_per_packet']:.2f} us/packet"
                      + (f" alerts={r['alerts']} latency median={r['latency_s_median']} "
                         f"max={r['latency_s_max']}" if tool == "flowsense" else ""),
                      flush=True)
    best = {t: max((r["achieved_pps"] for r in rs if r["clean"]), default=0.0)
            for t, rs in results.items()}
    summary = {"capture": str(args.capture), "packets": args.packets, "buffer_mib":
               args.buffer_mib, "replay_nice": args.replay_nice,
               "load_average": os.getloadavg(), "note": args.note,
               "when": datetime.now(UTC).isoformat(timespec="seconds"),
               "highest_clean_pps": best, "steps": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"highest clean rate (achieved pps): flowsense {best['flowsense']:,.0f}, "
          f"tcpdump {best['tcpdump']:,.0f}; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
