"""Generate the seeded benchmark capture and its sidecar of expected figures.

    python -m benchmarks.gen_capture --packets 2000000 --seed 1 -o benchmarks/data/mixed.pcap
    python -m benchmarks.gen_capture --packets 50000 -o benchmarks/data/quick.pcap
    python -m benchmarks.gen_capture --live-flows 200000 -o benchmarks/data/live-200000.pcap

The sidecar ``<capture>.json`` holds what every analyser must find (``flows``) and what the
capture is made of. The same seed and arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.payloads import TemplateBook
from benchmarks.pcap_writer import PCAP_EPOCH_S, frame_lengths, write_pcap
from benchmarks.synth_packets import FIN, KINDS, RST, Flows, Packets
from benchmarks.synth_plan import MixSpec, plan_live, plan_mixed

# --size-mix: shares of the TCP profiles (download: full segments one way; interactive: small
# packets both ways; upload), which set the packet-size mix; "default" is the realistic mix.
SIZE_MIXES = {"small": (0.0, 1.0, 0.0), "default": (0.6, 0.3, 0.1), "large": (1.0, 0.0, 0.0)}
GENERATOR_VERSION = 1  # bump when the same arguments would give different bytes
FLOW_KEY_NOTE = (
    "every flow has its own client (address, port), an ICMP flow its own client address, and a "
    "host keeps one VLAN id: keying with or without the VLAN id gives the same count"
)


def describe(fl: Flows, pk: Packets) -> dict:
    """Figures about the capture that analysers can be checked against (flow-major ``pk``)."""
    new_flow = np.r_[True, pk.flow[1:] != pk.flow[:-1]]
    starts = np.flatnonzero(new_flow)
    ends = np.r_[starts[1:], len(pk)] - 1
    first, last = pk.ts_us[starts], pk.ts_us[ends]
    # Flows live at once: +1 at a flow's first packet, -1 just after its last.
    events = np.r_[first * 2 + 1, (last + 1) * 2]  # at equal times, ends (even) sort before starts
    live = np.cumsum(np.where(np.sort(events) % 2 == 1, 1, -1))
    gaps = np.diff(pk.ts_us)[~new_flow[1:]]
    closed = np.zeros(len(fl.kind), bool)
    closed[pk.flow[(pk.flags & (FIN | RST)) != 0]] = True
    closed &= fl.proto == 6
    ip_len, caplen = frame_lengths(fl, pk)
    n = len(fl.kind)
    v6_pk, vlan_pk = fl.v6[pk.flow], fl.vlan[pk.flow] > 0
    return {
        "packets": len(pk),
        "flows": n,
        "flows_by_kind": {
            k: int(np.sum(fl.kind == i)) for i, k in enumerate(KINDS) if np.any(fl.kind == i)
        },
        "flows_by_protocol": {
            "tcp": int(np.sum(fl.proto == 6)),
            "udp": int(np.sum(fl.proto == 17)),
            "icmp": int(np.sum(fl.proto == 1)),
            "icmpv6": int(np.sum(fl.proto == 58)),
        },
        "tcp_flows_open_at_end": int(np.sum((fl.proto == 6) & ~closed)),
        "ipv6_share_flows": round(float(fl.v6.mean()), 4),
        "ipv6_share_packets": round(float(v6_pk.mean()), 4),
        "vlan_share_flows": round(float((fl.vlan > 0).mean()), 4),
        "vlan_share_packets": round(float(vlan_pk.mean()), 4),
        "vlan_ids": sorted(int(v) for v in np.unique(fl.vlan[fl.vlan > 0])),
        "max_concurrent_flows": int(live.max()),
        "duration_s": round(float(pk.ts_us.max() - pk.ts_us.min()) / 1e6, 3),
        "max_idle_gap_s": round(float(gaps.max(initial=0)) / 1e6, 3),
        "largest_flow_packets": int(np.max(ends - starts + 1)),
        "frame_bytes": {
            "min": int(caplen.min()),
            "max": int(caplen.max()),
            "mean": round(float(caplen.mean()), 1),
        },
        "ip_bytes": {"min": int(ip_len.min()), "max": int(ip_len.max())},
        "first_packet_epoch_s": PCAP_EPOCH_S + int(pk.ts_us.min()) // 1_000_000,
    }


def generate(
    out: str,
    packets: int = 2_000_000,
    seed: int = 1,
    live_flows: int | None = None,
    spec_overrides: dict | None = None,
) -> dict:
    """Write the capture ``out`` and its sidecar ``out + '.json'``; return the sidecar."""
    t0 = time.perf_counter()
    plan_rng, byte_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    spec = MixSpec(packets=packets, seed=seed, **(spec_overrides or {}))
    book = TemplateBook()
    if live_flows:
        fl, pk = plan_live(live_flows, plan_rng, book, spec)
    else:
        fl, pk = plan_mixed(spec, plan_rng, book)
    order = np.argsort(pk.ts_us, kind="stable")  # interleave the flows; ties keep flow order
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = out + ".tmp"
    size = write_pcap(tmp, fl, pk, order, book, byte_rng)
    os.replace(tmp, out)  # a capture that exists is a complete one
    meta = {
        "generator": {
            "version": GENERATOR_VERSION,
            "seed": seed,
            "packets_requested": packets,
            "live_flows": live_flows,
            "spec": {k: v for k, v in vars(spec).items() if k != "seed"},
        },
        "capture": os.path.basename(out),
        "bytes": size,
        **describe(fl, pk),
        "flow_key_note": FLOW_KEY_NOTE,
        "generate_seconds": round(time.perf_counter() - t0, 2),
    }
    with open(out + ".json", "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.gen_capture", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--packets", type=int, default=2_000_000, help="packets in the mixed capture (exact)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", default="benchmarks/data/mixed.pcap")
    ap.add_argument(
        "--live-flows",
        type=int,
        default=None,
        help="instead of the mix: this many TCP flows, all still open at the end (memory probe)",
    )
    ap.add_argument(
        "--duration", type=float, default=None, help="capture length in seconds (default 90)"
    )
    ap.add_argument(
        "--size-mix",
        choices=sorted(SIZE_MIXES),
        default="default",
        help="packet sizes: small (interactive TCP), default, large (bulk downloads)",
    )
    args = ap.parse_args(argv)
    overrides: dict = {"duration_s": args.duration} if args.duration else {}
    if args.size_mix != "default":
        overrides["tcp_profile_p"] = SIZE_MIXES[args.size_mix]
    meta = generate(args.output, args.packets, args.seed, args.live_flows, overrides)
    if args.live_flows:
        load = f"{meta['tcp_flows_open_at_end']} still open at the end"
    else:
        load = f"max {meta['max_concurrent_flows']} live at once"
    print(
        f"{args.output}: {meta['packets']} packets, {meta['flows']} flows ({load}), "
        f"{meta['bytes'] / 1e6:.1f} MB in {meta['generate_seconds']} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
