"""Every capture format, link type and encapsulation the reader supports, on committed fixtures.

The fixtures in tests/data/formats/ and their expected values (expected.json) come from
tests/make_format_captures.py: counts from tshark's dissection, never from flowsense.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowsense.capture.reader import iter_batches
from flowsense.config import Config
from flowsense.pipeline import FlowsResult, compute_flows

REPO = Path(__file__).resolve().parents[1]
FORMATS = REPO / "tests" / "data" / "formats"
EXPECTED: dict[str, Any] = json.loads((FORMATS / "expected.json").read_text())["fixtures"]
NAMES = sorted(EXPECTED)

# columns that depend on how much of each frame was captured (payload heads), not on the packets
SNAPLEN_DEPENDENT = {"app_proto"}
CORE_COLUMNS = (
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "protocol",
    "ip_version",
    "bidirectional_packets",
    "src2dst_packets",
    "dst2src_packets",
    "bidirectional_bytes",
    "src2dst_bytes",
    "dst2src_bytes",
    "bidirectional_first_seen_ms",
    "bidirectional_last_seen_ms",
    "bidirectional_mean_piat_ms",
    "bidirectional_min_piat_ms",
    "bidirectional_max_piat_ms",
    "bidirectional_stddev_piat_ms",
)


@cache
def flows_of(*names: str) -> FlowsResult:
    return compute_flows([str(FORMATS / n) for n in names], Config())


def records(result: FlowsResult) -> list[dict[str, Any]]:
    cols = result.frame.cols
    return [{k: _plain(v[i]) for k, v in cols.items()} for i in range(result.n_flows)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def fact_key(
    src_ip: str, src_port: int | None, dst_ip: str, dst_port: int | None, protocol: int
) -> tuple[Any, ...]:
    """Direction-free flow key; ICMP is matched on addresses alone (ports hold type/code)."""
    if protocol in (1, 58) or src_port is None:
        return (protocol, frozenset({src_ip, dst_ip}))
    return (protocol, frozenset({(src_ip, src_port), (dst_ip, dst_port)}))


def rec_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    return fact_key(rec["src_ip"], rec["src_port"], rec["dst_ip"], rec["dst_port"], rec["protocol"])


@pytest.mark.parametrize("name", NAMES)
def test_packets_and_flows(name: str) -> None:
    exp = EXPECTED[name]
    res = flows_of(name)
    assert [str(e) for e in res.errors] == []
    assert res.counters["packets"] == exp["packets"], "packets read"
    assert res.counters["decode_errors"] == 0
    assert res.n_flows == exp["flows"], "bidirectional flows"
    assert sum(r["bidirectional_packets"] for r in records(res)) == exp["ip_packets"]


@pytest.mark.parametrize("name", NAMES)
def test_flow_facts(name: str) -> None:
    exp = EXPECTED[name]
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records(flows_of(name)):
        by_key.setdefault(rec_key(rec), []).append(rec)
    problems = []
    for fact in exp["flow_facts"]:
        key = fact_key(
            fact["src_ip"], fact["src_port"], fact["dst_ip"], fact["dst_port"], fact["protocol"]
        )
        found = by_key.get(key, [])
        if len(found) != 1:
            problems.append(f"{key}: {len(found)} flow records, expected 1")
            continue
        rec = found[0]
        got: dict[str, Any] = {"bidirectional_packets": rec["bidirectional_packets"]}
        want: dict[str, Any] = {"bidirectional_packets": fact["bidirectional_packets"]}
        if fact["src2dst_packets"] is not None:
            want.update(
                src_ip=fact["src_ip"],
                dst_ip=fact["dst_ip"],
                src2dst_packets=fact["src2dst_packets"],
                dst2src_packets=fact["dst2src_packets"],
            )
            got.update(
                src_ip=rec["src_ip"],
                dst_ip=rec["dst_ip"],
                src2dst_packets=rec["src2dst_packets"],
                dst2src_packets=rec["dst2src_packets"],
            )
        if fact["src_port"] is not None:
            want.update(src_port=fact["src_port"], dst_port=fact["dst_port"])
            got.update(src_port=rec["src_port"], dst_port=rec["dst_port"])
        if fact["first_seen_ns"] is not None:
            want.update(
                first_ms=fact["first_seen_ns"] // 1_000_000,
                last_ms=fact["last_seen_ns"] // 1_000_000,
            )
            got.update(
                first_ms=rec["bidirectional_first_seen_ms"],
                last_ms=rec["bidirectional_last_seen_ms"],
            )
        if got != want:
            problems.append(f"{key}: expected {want}, got {got}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_reader_batches(name: str) -> None:
    assert sum(b.n for b in iter_batches(str(FORMATS / name))) == EXPECTED[name]["packets"]


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in NAMES:
        if EXPECTED[name]["group"]:
            groups.setdefault(EXPECTED[name]["group"], []).append(name)
    return {g: members for g, members in groups.items() if len(members) > 1}


def assert_same_records(
    a: FlowsResult, b: FlowsResult, columns: tuple[str, ...] | None = None
) -> None:
    ra = sorted(records(a), key=lambda r: (r["bidirectional_first_seen_ms"], repr(rec_key(r))))
    rb = sorted(records(b), key=lambda r: (r["bidirectional_first_seen_ms"], repr(rec_key(r))))
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        cols = columns or tuple(k for k in x if k not in SNAPLEN_DEPENDENT)
        diff = {
            k: (x[k], y[k]) for k in cols if x[k] != y[k] and not (x[k] != x[k] and y[k] != y[k])
        }
        assert not diff, f"flow {rec_key(x)} differs: {diff}"


@pytest.mark.parametrize("group", sorted(_groups()))
def test_same_capture_same_flows(group: str) -> None:
    """pcap, nanosecond pcap, pcapng, big-endian and gzip forms of a capture: identical records."""
    first, *rest = _groups()[group]
    for other in rest:
        assert_same_records(flows_of(first), flows_of(other))


def test_cut_snaplen_keeps_flow_counts() -> None:
    """editcap -s 96: frames cut, but sizes come from the IP header, so the counts are unchanged."""
    assert_same_records(flows_of("hassh.pcap"), flows_of("hassh.snap96.pcap"), CORE_COLUMNS)


def test_nano_copy_equals_corpus_original(corpus: Path) -> None:
    """``corpus``: the conftest fixture (skips without the corpus, fails under CI=true)."""
    original = corpus / "zeek" / "ssh_kex_curve25519.pcap"
    assert_same_records(compute_flows([str(original)], Config()), flows_of("curve25519.nano.pcap"))


def test_timestamps_exact_in_every_time_base() -> None:
    """ng_multi_if holds one flow per pair of interfaces whose if_tsresol/if_tsoffset differ: the
    inter-arrival times (exact multiples of 15.625 ms by construction) must come out exact."""
    for name in (
        "ng_multi_if.pcapng",
        "ng_multi_if.be.pcapng",
        "ng_legacy_pb.pcapng",
        "ng_sections.pcapng",
    ):
        for rec in records(flows_of(name)):
            if rec["src_ip"].startswith("192.168."):
                continue  # the editcap section of ng_sections: real traffic
            n = rec["bidirectional_packets"]
            assert rec["bidirectional_duration_ms"] == (n - 1) * 15_625_000 // 1_000_000, (
                name,
                rec["src_ip"],
            )
            for stat in ("min", "mean", "max"):
                assert rec[f"bidirectional_{stat}_piat_ms"] == 15.625, (name, rec["src_ip"], stat)


def test_cli_flows_jsonl(tmp_path: Path) -> None:
    """The CLI prints one JSON line per flow for a multi-section, mixed byte-order pcapng."""
    name = "ng_sections.pcapng"
    out = subprocess.run(
        [sys.executable, "-m", "flowsense", "flows", str(FORMATS / name)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == EXPECTED[name]["flows"]
    assert sum(rec["bidirectional_packets"] for rec in lines) == EXPECTED[name]["ip_packets"]
