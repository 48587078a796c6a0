"""Cross-check a generated capture against its sidecar with independent readers.

    python -m benchmarks.verify_capture benchmarks/data/quick.pcap [--tshark] [--no-nfstream]

dpkt (the benchmark's naive loop), nfstream and, optionally, tshark's conversation tables must
all find the sidecar's flow count; exits 1 otherwise. tshark holds every conversation in memory
and takes a minute or more on the 2M-packet capture: use it on small captures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks import peers
from benchmarks.workers import dpkt_flows, nfstream_flows


def tshark_counts(path: str) -> dict[str, int]:
    """TCP and UDP conversations, and ICMP/ICMPv6 address pairs, as tshark sees them."""
    counts = dict(peers.tshark_run(path)["conversations"])
    out = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            path,
            "-Y",
            "icmp || icmpv6",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pairs = {
        tuple(sorted(f for f in line.split("\t") if f)) for line in out.splitlines() if line.strip()
    }
    counts["icmp"] = len(pairs)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.verify_capture")
    ap.add_argument("capture")
    ap.add_argument(
        "--tshark",
        action="store_true",
        help="also count tshark's conversations (slow on big files)",
    )
    ap.add_argument("--no-nfstream", action="store_true")
    args = ap.parse_args(argv)
    with open(args.capture + ".json") as fh:
        meta = json.load(fh)
    expected = meta["flows"]
    found: dict[str, int] = {}
    d = dpkt_flows(args.capture)
    found["dpkt"] = d["flows"]
    ok = d["packets"] == meta["packets"]
    if not ok:
        print(f"dpkt read {d['packets']} packets, sidecar says {meta['packets']}", file=sys.stderr)
    if not args.no_nfstream:
        found["nfstream"] = nfstream_flows(args.capture, 3600, 7200)["flows"]
    if args.tshark:
        t = tshark_counts(args.capture)
        by_proto = meta["flows_by_protocol"]
        want = {
            "tcp": by_proto["tcp"],
            "udp": by_proto["udp"],
            "icmp": by_proto["icmp"] + by_proto["icmpv6"],
        }
        for proto, n in want.items():
            print(f"tshark {proto}: {t.get(proto, 0)} (expected {n})")
            ok &= t.get(proto, 0) == n
        found["tshark"] = sum(t.values())
    for tool, n in found.items():
        print(f"{tool}: {n} flows (expected {expected}){'' if n == expected else '  MISMATCH'}")
        ok &= n == expected
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
