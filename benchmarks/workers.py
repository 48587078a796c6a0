"""One measurement per process: ``python -m benchmarks.workers TOOL CAPTURE [options]``.

Each tool runs in a fresh interpreter so that no run inherits another's heap, page cache state
in Python objects, or nfstream's child processes; the worker prints one JSON object on stdout.
Timed sections use ``time.perf_counter`` around the work only (imports and setup excluded).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import fs_api, measure

# nfstream doing what ``flowsense flows`` does: one meter process, no nDPI dissection,
# statistical features on, no SPLT. Tunnel decoding is off: the capture holds no tunnels, and
# nfstream 6.6 looks for a tunnel's UDP header at the IPv6 *payload length* past the IPv6 header
# instead of its 40-byte header length, so random payload bytes that read as a GTP, TZSP or
# CAPWAP port (about 1 IPv6 UDP datagram in 10,000) split a flow.
NFSTREAM_JOB = {
    "n_meters": 1,
    "n_dissections": 0,
    "statistical_analysis": True,
    "splt_analysis": 0,
    "decode_tunnels": False,
}


def dpkt_flows(path: str, limit: int = 0) -> dict[str, Any]:
    """The idiomatic dpkt loop: decode every frame, key by the sorted 5-tuple, keep simple stats.

    VLAN tags are decoded by dpkt and not part of the key (the capture keeps one VLAN per host).
    ICMP flows are keyed by the address pair, as nfstream does. ``limit``: stop after that many
    packets (0: read everything), to count the flows of the scapy loop's subsample.
    """
    import dpkt

    flows: dict[tuple, list] = {}
    packets = 0
    limit = limit or -1
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            if packets == limit:
                break
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
                # first/last ts, packets, bytes, min/max/mean size, M2, forward packets
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
    """nfstream pinned to the same job as ``flowsense flows`` (see ``NFSTREAM_JOB``)."""
    from nfstream import NFStreamer

    streamer = NFStreamer(
        source=path, idle_timeout=int(idle_s), active_timeout=int(active_s), **NFSTREAM_JOB
    )
    flows = packets = 0
    t0 = time.perf_counter()
    for flow in streamer:  # the meter process starts here, so it is timed
        flows += 1
        packets += flow.bidirectional_packets
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "packets": packets, "flows": flows}


def scapy_flows(path: str, limit: int) -> dict[str, Any]:
    """The idiomatic scapy loop over the first ``limit`` packets: ``PcapReader``, ``IP in pkt``,
    the same sorted 5-tuple key and statistics as the dpkt loop. scapy dissects every layer in
    Python (tens of microseconds a packet), so the runner times a subsample and extrapolates."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    flows: dict[tuple, list] = {}
    packets = 0
    limit = limit or -1
    t0 = time.perf_counter()
    with PcapReader(path) as reader:
        for pkt in reader:
            if packets == limit:
                break
            packets += 1
            if IP in pkt:
                ip, proto = pkt[IP], pkt[IP].proto
            elif IPv6 in pkt:
                ip, proto = pkt[IPv6], pkt[IPv6].nh
            else:
                continue
            l4 = ip.payload
            if isinstance(l4, (TCP, UDP)):
                a, b = (ip.src, l4.sport), (ip.dst, l4.dport)
            else:
                a, b = (ip.src, 0), (ip.dst, 0)
            key = (a, b, proto) if a <= b else (b, a, proto)
            size = len(pkt)
            ts = float(pkt.time)
            st = flows.get(key)
            if st is None:
                flows[key] = [ts, ts, 1, size, size, size]
                continue
            st[1] = ts
            st[2] += 1
            st[3] += size
            st[4] = min(st[4], size)
            st[5] = max(st[5], size)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "packets": packets, "flows": len(flows)}


def flowsense_steady(path: str, idle_s: float, active_s: float) -> dict[str, Any]:
    """compute_flows over an already-warm JIT: the first pass compiles or loads kernels and warms
    the page cache, the second is timed (the flows command's job: records without payload
    heads, as nfstream's without dissection); then one pass of the pipeline with every detector
    (``analyze``'s job, in-process)."""
    t0 = time.perf_counter()
    compute = fs_api.compute_flows()
    imported = time.perf_counter() - t0
    cfg = fs_api.make_config(idle_s, active_s)
    t0 = time.perf_counter()
    compute([path], cfg)
    warm = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    result = compute([path], cfg)
    seconds = time.perf_counter() - t0
    analyze = fs_api.pipeline_run(path, cfg, None)  # kernels and page cache warm already
    return {
        "seconds": seconds,
        "import_seconds": imported,
        "warmup_seconds": warm,
        "analyze_seconds": analyze["seconds"],
        "alerts": analyze["alerts"],
        "packets": fs_api.packet_count(result),
        "flows": fs_api.flow_count(result),
    }


def flowsense_detectors(path: str, idle_s: float, active_s: float, repeats: int) -> dict[str, Any]:
    """Each detector's cost: the pipeline alone, with every detector, with each alone, and with
    Stratum and pools together (issue 4's figure), all warm in this process. ``repeats`` rounds,
    each running every configuration once (the order reversed every other round), so a slow
    spell of a shared machine falls on all of them: medians of the passes, each configuration's
    time over the bare pipeline's of the same round (``paired_extra_pct``: the median over the
    rounds), and the alerts each raised (proof that the detector had work to do)."""
    cfg = fs_api.make_config(idle_s, active_s)
    names = fs_api.detector_names()
    configs: dict[str, list[str] | None] = {"none": [], "all": None}
    configs.update({n: [n] for n in names})
    if {"stratum", "pools"} <= set(names):
        configs["stratum+pools"] = ["stratum", "pools"]
    fs_api.pipeline_run(path, cfg, None)  # warm: kernels, page cache, signatures
    labels = list(configs)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for k in range(repeats):
        for label in labels if k % 2 == 0 else labels[::-1]:
            runs[label].append(fs_api.pipeline_run(path, cfg, configs[label]))
    base = [r["seconds"] for r in runs["none"]]
    out: dict[str, Any] = {}
    for label in labels:
        secs = [r["seconds"] for r in runs[label]]
        out[label] = {"median_s": statistics.median(secs), "seconds": sorted(secs),
                      "paired_extra_pct": measure.paired_extra_pct(base, secs),
                      "alerts": runs[label][0]["alerts"]}
    return {"detectors": names, "configs": out, "rounds": repeats}


def flowsense_detector_pass(path: str, warm_path: str, idle_s: float, active_s: float,
                            label: str) -> dict[str, Any]:
    """One timed pass of the pipeline with the detectors of ``label`` (``none``, a detector's
    name, or names joined by ``+``), in this fresh process, after an untimed pass over
    ``warm_path`` with the same detectors (kernels loaded, page cache warm). One timed pass a
    process: in a process that runs many, about every third pass is slower on this machine's
    huge pages (benchmarks/README.md, "What helped"), whichever configuration it falls on."""
    cfg = fs_api.make_config(idle_s, active_s)
    names = [] if label == "none" else label.split("+")
    unknown = set(names) - set(fs_api.detector_names())
    if unknown:
        raise SystemExit(f"no such detector: {', '.join(sorted(unknown))}")
    fs_api.pipeline_run(warm_path, cfg, names)
    gc.collect()
    r = fs_api.pipeline_run(path, cfg, names)
    return {"label": label, "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
            "alerts": r["alerts"]}


def _read_through(path: str) -> None:
    """Bring the file into the page cache (a sequential read, far cheaper than a pass)."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 24):
            pass


def flowsense_scale(path: str, warm_path: str, idle_s: float, active_s: float) -> dict[str, Any]:
    """Throughput and peak memory of ``compute_flows`` on ``path`` after a warm-up on a small
    capture (kernels loaded) and a read of ``path`` (page cache): one timed pass whose peak RSS
    growth over the pre-call RSS is the memory the flows cost."""
    compute = fs_api.compute_flows()
    cfg = fs_api.make_config(idle_s, active_s)
    compute([warm_path], cfg)
    _read_through(path)
    gc.collect()
    peak_reset = _reset_peak()
    before = _status_kib()
    t0 = time.perf_counter()
    result = compute([path], cfg)
    seconds = time.perf_counter() - t0
    after = _status_kib()
    return {
        "seconds": seconds,
        "packets": fs_api.packet_count(result),
        "flows": fs_api.flow_count(result),
        "rss_before_kib": before["VmRSS"],
        "peak_growth_kib": after["VmHWM"] - before["VmRSS"],
        "peak_reset": peak_reset,
    }


def _status_kib() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        rows = (
            line.split()
            for line in fh
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:"))
        )
        return {r[0].rstrip(":"): int(r[1]) for r in rows}


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that the next peak is our own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def flowsense_memory(
    path: str, warm_path: str, idle_s: float, active_s: float, phase: str
) -> dict[str, Any]:
    """Resident memory of flowsense holding the flows of ``path``.

    A warm-up on a small capture first makes compiled code and imports resident, so they do not
    count as per-flow memory. Phase ``table``: RSS once every packet is in the flow table and no
    flow has ended (the table at its load, before any export). Phase ``compute``: RSS around a
    whole ``compute_flows`` call, its peak and what stays resident with the result (records
    with their default payload heads, as ``analyze`` gathers them).
    """
    compute = fs_api.compute_flows(heads=True)
    cfg = fs_api.make_config(idle_s, active_s)
    compute([warm_path], cfg)
    gc.collect()
    peak_reset = _reset_peak()
    before = _status_kib()
    out: dict[str, Any] = {
        "phase": phase,
        "rss_before_kib": before["VmRSS"],
        "anon_before_kib": before["RssAnon"],
        "peak_reset": peak_reset,
    }
    if phase == "table":
        handle, stats = fs_api.fill_table(path, cfg)
        loaded = _status_kib()
        out.update(
            flows=stats.get("flows_live"),
            table_capacity=stats.get("table_capacity"),
            rss_after_kib=loaded["VmRSS"],
            anon_after_kib=loaded["RssAnon"],
            peak_kib=loaded["VmHWM"],
        )
        del handle
        return out
    result = compute([path], cfg)
    after = _status_kib()  # the result is still referenced: its frame counts too
    out.update(
        flows=fs_api.flow_count(result),
        table_capacity=(getattr(result, "counters", None) or {}).get("table_capacity"),
        rss_after_kib=after["VmRSS"],
        anon_after_kib=after["RssAnon"],
        peak_kib=after["VmHWM"],
    )
    return out


TOOLS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "dpkt": lambda a: dpkt_flows(a.capture, a.limit),
    "scapy": lambda a: scapy_flows(a.capture, a.limit),
    "nfstream": lambda a: nfstream_flows(a.capture, a.idle_timeout, a.active_timeout),
    "flowsense-steady": lambda a: flowsense_steady(a.capture, a.idle_timeout, a.active_timeout),
    "flowsense-detectors": lambda a: flowsense_detectors(
        a.capture, a.idle_timeout, a.active_timeout, a.repeats
    ),
    "flowsense-detector-pass": lambda a: flowsense_detector_pass(
        a.capture, a.warm_capture or a.capture, a.idle_timeout, a.active_timeout, a.detectors
    ),
    "flowsense-scale": lambda a: flowsense_scale(
        a.capture, a.warm_capture or a.capture, a.idle_timeout, a.active_timeout
    ),
    "flowsense-memory": lambda a: flowsense_memory(
        a.capture, a.warm_capture or a.capture, a.idle_timeout, a.active_timeout, a.phase
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.workers")
    ap.add_argument("tool", choices=sorted(TOOLS))
    ap.add_argument("capture")
    ap.add_argument("--idle-timeout", type=float, default=3600.0)
    ap.add_argument("--active-timeout", type=float, default=7200.0)
    ap.add_argument("--warm-capture",
                    help="flowsense-memory/-scale/-detector-pass: the capture to warm up on")
    ap.add_argument("--limit", type=int, default=0, help="dpkt, scapy: packets to read (0: all)")
    ap.add_argument("--repeats", type=int, default=3, help="flowsense-detectors: rounds")
    ap.add_argument("--detectors", default="none",
                    help="flowsense-detector-pass: none, a detector, or names joined by +")
    ap.add_argument(
        "--phase",
        choices=["table", "compute"],
        default="compute",
        help="flowsense-memory: the loaded table, or a whole compute_flows call",
    )
    args = ap.parse_args(argv)
    out = TOOLS[args.tool](args)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
