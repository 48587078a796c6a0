"""The naive twin (tests/naive.py) held equal to the numba path, flow by flow.

On every capture of the public corpus (MANIFEST.tsv) and every fixture in tests/data/formats, under
the default timeouts and under short ones that make idle, close, reuse and interim records happen:
the same packet and status counts, the same number of flow records, and per record (matched by the
canonical 5-tuple and first_seen_ms, then creation order) equal integers and text, floats within
rel 1e-6, equal payload heads and first-packet arrays.

Where docs/flows.md is silent the twin chose (marked SPEC-GAP in naive.py):

* a TCP/UDP/ICMP header cut by the snap length: the packet still counts in a flow, with ports 0
  and no payload (the page only drops packets cut inside the IP header);
* a UDP header longer than the IP payload is ``bad_ip`` like the TCP case the page names;
* UDP-Lite (136) and SCTP (132) are "other IP protocols": ports 0, as the page says;
* ``fragments`` counts non-first fragments (the page does not define the column);
* ``tunnel`` is the outermost encapsulation of the flow's first packet; ``vlan_id`` the first
  VLAN tag met, outermost first (a tag inside a tunnel counts when the outside has none);
* PPPoE counts as one encapsulation layer toward ``max_encap_depth``;
* ``now`` advances only on packets that join a flow (non-IP frames do not expire flows), and
  includes the packet being processed;
* the close delay runs from the flow's latest packet; ``duration_ms`` is floor(last - first);
* per-direction ``last_seen`` is the latest packet time of that direction (as the page says for
  ``last_seen``), ``first_seen`` the first packet's time;
* every SYN re-bases its direction's sequence numbers (the page says "the SYN's sequence + 1");
* ``head_len`` is the end of the highest head byte written, so at most ``head_bytes``; bytes of a
  TCP segment before the direction's first byte are not placed, and such a segment counts as a
  retransmission when its end lies at or below the highest end seen;
* an SPB (no timestamp) takes the time of the packet before it in the same file;
* inputs are taken in the order of their first frame, and a file that starts before ``now``
  ends the live flows and restarts the clock (docs/design.md "Time": flows.md only says the
  inputs form one stream, which read literally ends every flow of an overlapping second capture
  idle at each of its packets);
* ICMPv6 139/140 pair like the types flows.md lists ("as Community ID does": pycommunityid and
  Zeek pair them).

Held to the page where the code chose otherwise: at the end of input every live flow ends
``end`` (flows.md), including a TCP flow lingering after FIN/RST.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowsense.config import Config
from flowsense.pipeline import FlowsResult, compute_flows
from flowsense.schema import FLOW_COLUMNS
from tests.conftest import (
    FORMATS_DIR,
    format_fixtures,
    manifest_files,
    write_icmp_types,
    write_tcp_cases,
)
from tests.naive import NaiveResult, naive_flows

REL = 1e-6
ABS = 1e-9

SHORT = Config().with_timeouts(idle_s=2.0, active_s=20.0)
SHORT = dataclasses.replace(
    SHORT, flows=dataclasses.replace(SHORT.flows, established_idle_timeout_s=15.0,
                                     close_delay_s=1.0),
)
CONFIGS = {"default": Config(), "short": SHORT}


def kernel_records(res: FlowsResult) -> list[dict[str, Any]]:
    fr = res.frame
    out: list[dict[str, Any]] = []
    for i in range(fr.n):
        r: dict[str, Any] = {}
        for k, v in fr.cols.items():
            x = v[i]
            r[k] = x.item() if isinstance(x, np.generic) else x
        assert fr.head is not None and fr.head_len is not None
        assert fr.splt_n is not None and fr.splt_ps is not None and fr.splt_t_ms is not None
        r["head"] = [bytes(fr.head[i, d]) for d in (0, 1)]
        r["head_len"] = [int(fr.head_len[i, d]) for d in (0, 1)]
        n = int(fr.splt_n[i])
        r["splt_ps"] = [int(x) for x in fr.splt_ps[i, :n]]
        r["splt_t_ms"] = [float(x) for x in fr.splt_t_ms[i, :n]]
        out.append(r)
    return out


def _key(r: dict[str, Any]) -> tuple:
    ends = sorted([(r["src_ip"], r["src_port"]), (r["dst_ip"], r["dst_port"])])
    return (r["ip_version"], r["protocol"], *ends, r["bidirectional_first_seen_ms"])


def _label(r: dict[str, Any]) -> str:
    return (f"{r['src_ip']}:{r['src_port']} -> {r['dst_ip']}:{r['dst_port']} proto "
            f"{r['protocol']} first_seen_ms {r['bidirectional_first_seen_ms']}"
            f"{' (interim)' if r['interim'] else ''}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=REL, abs_tol=ABS)
    return bool(a == b)


def diff_records(kr: dict[str, Any], tr: dict[str, Any]) -> list[str]:
    """Field-by-field differences of one record (kernel vs twin)."""
    out: list[str] = []
    for col in FLOW_COLUMNS:
        if not _same(kr[col], tr[col]):
            out.append(f"{col}: kernel {kr[col]!r} twin {tr[col]!r}")
    for d in (0, 1):
        if kr["head_len"][d] != tr["head_len"][d]:
            out.append(f"head_len[{d}]: kernel {kr['head_len'][d]} twin {tr['head_len'][d]}")
        if kr["head"][d] != tr["head"][d]:
            at = next(j for j, (x, y) in enumerate(zip(kr["head"][d], tr["head"][d])) if x != y)
            out.append(f"head[{d}] differs from byte {at}: kernel "
                       f"{kr['head'][d][at:at + 16].hex()} twin {tr['head'][d][at:at + 16].hex()}")
    if kr["splt_ps"] != tr["splt_ps"]:
        out.append(f"splt_ps: kernel {kr['splt_ps']} twin {tr['splt_ps']}")
    elif not all(math.isclose(x, y, rel_tol=REL, abs_tol=1e-6)
                 for x, y in zip(kr["splt_t_ms"], tr["splt_t_ms"])):
        out.append(f"splt_t_ms: kernel {kr['splt_t_ms']} twin {tr['splt_t_ms']}")
    return out


def compare(kres: FlowsResult, tres: NaiveResult, limit: int = 40) -> list[str]:
    """Every difference between the numba result and the twin's, as readable lines."""
    problems: list[str] = []
    c = kres.counters
    if c["packets"] != tres.packets:
        problems.append(f"packets: kernel {c['packets']} twin {tres.packets}")
    for name, n in tres.status.items():
        if c[f"packets_{name}"] != n:
            problems.append(f"packets_{name}: kernel {c[f'packets_{name}']} twin {n}")
    if c["fragment_orphans"] != tres.fragment_orphans:
        problems.append(f"fragment_orphans: kernel {c['fragment_orphans']} "
                        f"twin {tres.fragment_orphans}")
    krs = kernel_records(kres)
    if len(krs) != len(tres.records):
        problems.append(f"records: kernel {len(krs)} twin {len(tres.records)}")
    groups: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in krs:
        groups[_key(r)][0].append(r)
    for r in tres.records:
        groups[_key(r)][1].append(r)
    for _, (ks, ts) in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        if len(ks) != len(ts):
            shown = ks[0] if ks else ts[0]
            problems.append(f"{_label(shown)}: kernel {len(ks)} records "
                            f"{[(r['expiration'], r['bidirectional_packets']) for r in ks]}, "
                            f"twin {len(ts)} "
                            f"{[(r['expiration'], r['bidirectional_packets']) for r in ts]}")
            continue
        for kr, tr in zip(ks, ts):
            d = diff_records(kr, tr)
            if d:
                problems.append(f"{_label(kr)}: " + "; ".join(d))
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems


def check(paths: list[Path], config: Config) -> None:
    kres = compute_flows([str(p) for p in paths], config)
    tres = naive_flows(paths, config)
    assert len(kres.errors) == len(tres.errors), (kres.errors, tres.errors)
    problems = compare(kres, tres)
    assert not problems, "numba path and naive twin differ:\n" + "\n".join(problems)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", manifest_files())
def test_twin_corpus(corpus: Path, name: str, config: str) -> None:
    check([corpus / name], CONFIGS[config])


FIXTURES = format_fixtures()


@pytest.mark.skipif(not FIXTURES, reason=f"no format fixtures in {FORMATS_DIR}")
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_twin_formats(path: Path, config: str) -> None:
    check([path], CONFIGS[config])


def split_pcap(src: Path, parts: int, out_dir: Path) -> list[Path]:
    """Cut a classic pcap into ``parts`` files at record boundaries (same header each)."""
    data = src.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    starts = []
    pos = 24
    while pos + 16 <= len(data):
        starts.append(pos)
        pos += 16 + struct.unpack(order + "I", data[pos + 8:pos + 12])[0]
    starts.append(pos)
    cuts = [starts[len(starts) * k // parts] for k in range(parts)] + [pos]
    paths = []
    for k in range(parts):
        path = out_dir / f"{src.stem}.part{k}.pcap"
        path.write_bytes(data[:24] + data[cuts[k]:cuts[k + 1]])
        paths.append(path)
    return paths


SPLIT = ["zeek/ssh_kex_mlkem.pcap", "ndpi/ethereum.pcap", "ndpi-history/c6b427c_zcash.pcap",
         "suricata-verify/vxlan-decoder-03__vxlan.pcap"]


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", SPLIT)
def test_twin_stream_across_files(corpus: Path, name: str, config: str,
                                  tmp_path: Path) -> None:
    """The inputs of one run form one stream: flows carry across file boundaries, so a capture
    cut in three gives the records of the whole (numba path), and the twin agrees."""
    parts = split_pcap(corpus / name, 3, tmp_path)
    check(parts, CONFIGS[config])
    # records come in the order flows end, which lazy expiry may shift at a file boundary
    def order(r: dict[str, Any]) -> tuple:
        return (repr(_key(r)), not r["interim"], r["bidirectional_packets"])

    whole = sorted(kernel_records(compute_flows([str(corpus / name)], CONFIGS[config])), key=order)
    cut = sorted(kernel_records(compute_flows([str(p) for p in parts], CONFIGS[config])), key=order)
    assert len(whole) == len(cut)
    problems = [f"{_label(a)}: " + "; ".join(d)
                for a, b in zip(whole, cut) if (d := diff_records(a, b))]
    assert not problems, "whole capture and its parts differ:\n" + "\n".join(problems[:20])


def test_twin_overlapping_inputs(corpus: Path) -> None:
    """Inputs out of time order and overlapping: the server-side capture covers the same hours
    as the client-side one. Both paths order the inputs by first packet and restart the flows
    where time goes back by more than the idle timeout (docs/flows.md)."""
    names = ["zeek/ssh.server-side-half-duplex.pcap", "ndpi/dns.pcap",
             "zeek/ssh.client-side-half-duplex.pcap"]
    for config in CONFIGS.values():
        check([corpus / n for n in names], config)


def test_twin_icmp_types(tmp_path: Path) -> None:
    """Every ICMP/ICMPv6 type Community ID pairs, and some one-way ones, both ways."""
    path = tmp_path / "icmp_types.pcap"
    write_icmp_types(path)
    for config in CONFIGS.values():
        check([path], config)


def test_twin_tcp_cases(tmp_path: Path) -> None:
    """Reuse of a closed tuple, retransmissions, SYN data, mid-stream starts, idle gaps."""
    path = tmp_path / "tcp_cases.pcap"
    write_tcp_cases(path)
    for config in CONFIGS.values():
        check([path], config)
