"""One measurement per process: ``python -m benchmarks.workers TOOL CAPTURE [options]``.

Each tool runs in a fresh interpreter so that no run inherits another's heap, page cache state
in Python objects, or nfstream's child processes; the worker prints one JSON object on stdout.
Timed sections use ``time.perf_counter`` around the work only (imports and setup excluded).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

from benchmarks import fs_api


def dpkt_flows(path: str) -> dict[str, Any]:
    """The idiomatic dpkt loop: decode every frame, key by the sorted 5-tuple, keep simple stats.

    VLAN tags are decoded by dpkt and not part of the key (the capture keeps one VLAN per host).
    ICMP flows are keyed by the address pair, as nfstream does.
    """
    import dpkt

    flows: dict[tuple, list] = {}
    packets = 0
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            packets += 1
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                a, b = (ip.src, l4.sport), (ip.dst, l4.dport)
            else:
                a, b = (ip.src, 0), (ip.dst, 0)
            forward = a <= b
            key = (a, b, ip.p) if forward else (b, a, ip.p)
            size = len(buf)
            st = flows.get(key)
            if st is None:
                # first ts, last ts, packets, bytes, min size, max size, mean size, M2, forward packets
                flows[key] = [ts, ts, 1, size, size, size, float(size), 0.0, int(forward)]
                continue
            st[1] = ts
            st[2] += 1
            st[3] += size
            st[4] = min(st[4], size)
            st[5] = max(st[5], size)
            delta = size - st[6]  # Welford's running mean and variance
            st[6] += delta / st[2]
            st[7] += delta * (size - st[6])
            st[8] += forward
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "packets": packets, "flows": len(flows)}


def nfstream_flows(path: str, idle_s: float, active_s: float) -> dict[str, Any]:
    """nfstream pinned to the same job: one meter, no dissection, statistics on, no SPLT."""
    from nfstream import NFStreamer

    streamer = NFStreamer(source=path, n_meters=1, n_dissections=0, statistical_analysis=True,
                          splt_analysis=0, idle_timeout=idle_s, active_timeout=active_s)
    flows = packets = 0
    t0 = time.perf_counter()
    for flow in streamer:  # the meter process starts here, so it is timed
        flows += 1
        packets += flow.bidirectional_packets
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "packets": packets, "flows": flows}


def flowsense_steady(path: str, idle_s: float, active_s: float) -> dict[str, Any]:
    """compute_flows over an already-warm JIT: the first pass compiles or loads kernels and warms
    the page cache, the second is timed."""
    compute = fs_api.compute_flows()
    cfg = fs_api.make_config(idle_s, active_s)
    t0 = time.perf_counter()
    compute([path], cfg)
    warm = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    result = compute([path], cfg)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "warmup_seconds": warm, "packets": fs_api.packet_count(result),
            "flows": fs_api.flow_count(result)}


def _status_kib() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        rows = (line.split() for line in fh if line.startswith(("VmRSS:", "VmHWM:")))
        return {r[0].rstrip(":"): int(r[1]) for r in rows}


def flowsense_memory(path: str, warm_path: str, idle_s: float, active_s: float) -> dict[str, Any]:
    """Resident memory around one compute_flows call, after a warm-up on a small capture so that
    compiled code and imports are already resident and do not count as per-flow memory."""
    compute = fs_api.compute_flows()
    cfg = fs_api.make_config(idle_s, active_s)
    compute([warm_path], cfg)
    gc.collect()
    try:  # reset VmHWM to the current RSS (Linux >= 4.0), so the peak is this call's
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        peak_reset = True
    except OSError:
        peak_reset = False
    before = _status_kib()
    result = compute([path], cfg)
    after = _status_kib()  # the result is still referenced: its frame counts too
    return {"flows": fs_api.flow_count(result), "packets": fs_api.packet_count(result),
            "rss_before_kib": before["VmRSS"], "rss_after_kib": after["VmRSS"],
            "peak_kib": after["VmHWM"], "peak_reset": peak_reset}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.workers")
    ap.add_argument("tool", choices=["dpkt", "nfstream", "flowsense-steady", "flowsense-memory"])
    ap.add_argument("capture")
    ap.add_argument("--idle-timeout", type=float, default=3600.0)
    ap.add_argument("--active-timeout", type=float, default=7200.0)
    ap.add_argument("--warm-capture", help="flowsense-memory: small capture for the warm-up")
    args = ap.parse_args(argv)
    if args.tool == "dpkt":
        out = dpkt_flows(args.capture)
    elif args.tool == "nfstream":
        out = nfstream_flows(args.capture, args.idle_timeout, args.active_timeout)
    elif args.tool == "flowsense-steady":
        out = flowsense_steady(args.capture, args.idle_timeout, args.active_timeout)
    else:
        out = flowsense_memory(args.capture, args.warm_capture or args.capture, args.idle_timeout,
                               args.active_timeout)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
