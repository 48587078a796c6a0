"""Damaged and hostile input through the CLI: exit codes, one stderr line, the readable part kept.

ALERTS.md: exit 0 when every file was readable (undecodable packets are counters), exit 1 when a
file is damaged at the container level (one stderr line naming the file and the byte offset; the
flows before the damage still printed), exit 2 for bad usage or a missing path.

Every bad file is made here, in tmp_path, from the committed fixtures in tests/data/formats/.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowsense.config import Config
from flowsense.pipeline import compute_flows

REPO = Path(__file__).resolve().parents[1]
FORMATS = REPO / "tests" / "data" / "formats"
PCAP = (FORMATS / "hassh.pcap").read_bytes()
PCAPNG = (FORMATS / "hassh.pcapng").read_bytes()
CORE = (
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "protocol",
    "bidirectional_packets",
    "src2dst_packets",
    "dst2src_packets",
    "bidirectional_bytes",
    "bidirectional_first_seen_ms",
    "bidirectional_last_seen_ms",
)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    maxrss_kib: int = 0
    seconds: float = 0.0


def cli(*args: str, stdin: bytes = b"", timeout: float = 300, max_address_space: int = 0) -> Run:
    """``python -m flowsense ARGS`` in a child; its own peak RSS from wait4, optionally under
    RLIMIT_AS (a MemoryError then shows as an 'internal error', which the checks reject)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FLOWSENSE_DEBUG", None)

    def limit() -> None:
        if max_address_space:
            resource.setrlimit(resource.RLIMIT_AS, (max_address_space, max_address_space))

    with (
        tempfile.TemporaryFile() as fin,
        tempfile.TemporaryFile() as fout,
        tempfile.TemporaryFile() as ferr,
    ):
        fin.write(stdin)
        fin.seek(0)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowsense", *args],
            cwd=REPO,
            env=env,
            stdin=fin,
            stdout=fout,
            stderr=ferr,
            preexec_fn=limit,
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - t0
        if code == -signal.SIGKILL and seconds >= timeout:
            pytest.fail(f"flowsense {' '.join(args)} ran longer than {timeout} s")
        fout.seek(0)
        ferr.seek(0)
        return Run(code, fout.read().decode(), ferr.read().decode(), usage.ru_maxrss, seconds)


def flow_rows(stdout: str) -> list[tuple[Any, ...]]:
    """The CORE fields of the JSON lines the CLI printed, sorted."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return sorted(tuple(r[k] for k in CORE) for r in rows)


def api_rows(path: Path) -> list[tuple[Any, ...]]:
    """The same fields through the library, for an intact file (cheaper than a child process)."""
    res = compute_flows([str(path)], Config())
    assert res.errors == []
    cols = res.frame.cols
    return sorted(tuple(_plain(cols[k][i]) for k in CORE) for i in range(res.n_flows))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def assert_one_error_line(run: Run, path: Path | str, offsets: set[int] | None) -> int:
    """Exactly one non-empty stderr line, naming the file and a byte offset; no traceback."""
    assert "Traceback" not in run.stderr, run.stderr
    assert "internal error" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert str(path) in lines[0] or Path(path).name in lines[0], lines[0]
    m = re.search(r"byte (\d+)", lines[0])
    assert m, f"no 'byte <offset>' in {lines[0]!r}"
    offset = int(m.group(1))
    if offsets is not None:
        assert offset in offsets, f"offset {offset}, expected one of {sorted(offsets)}: {lines[0]}"
    return offset


# --- container layout helpers -------------------------------------------------------------


def pcap_record_offsets(data: bytes) -> list[int]:
    """Offsets of the record headers of a little-endian classic pcap."""
    out, off = [], 24
    while off + 16 <= len(data):
        out.append(off)
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    return out


def pcapng_blocks(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, total length) of each block of a little-endian pcapng."""
    out, off = [], 0
    while off + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        out.append((off, btype, blen))
        off += blen
    return out


def with_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4 :]


REC = pcap_record_offsets(PCAP)
BLOCKS = pcapng_blocks(PCAPNG)
EPBS = [b for b in BLOCKS if b[1] == 6]


def idb(linktype: int) -> bytes:
    return struct.pack("<IIHHI", 1, 20, linktype, 0, 0) + struct.pack("<I", 20)


def epb(iface: int, frame: bytes) -> bytes:
    body = (
        struct.pack("<IIIII", iface, 0, 0, len(frame), len(frame))
        + frame
        + b"\0" * (-len(frame) % 4)
    )
    return struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


# --- the damaged files: (bytes, acceptable offsets, length of the readable prefix or None) --------

Case = tuple[bytes, set[int], int | None]


def _too_many_interfaces() -> Case:
    """hassh.pcapng (one IDB, then its packets) followed by 100000 more IDBs."""
    cap = Config().capture.max_interfaces
    bad = len(PCAPNG) + (cap - 1) * 20  # the IDB past the cap (the section already has one)
    return PCAPNG + idb(1) * 100_000, {bad}, bad


def _unknown_linktype_ng() -> Case:
    first_epb = EPBS[0][0]
    junk = b"".join(epb(1, bytes(range(60))) for _ in range(3))
    data = PCAPNG[:first_epb] + idb(147) + junk + PCAPNG[first_epb:]
    return data, {first_epb}, None


CASES: dict[str, Callable[[], Case]] = {
    "empty": lambda: (b"", {0}, None),
    "wrong magic": lambda: (b"GIF89a\0\0" + PCAP[8:], {0}, None),
    "truncated global header": lambda: (PCAP[:10], {0, 10}, None),
    "pcap cut mid-record": lambda: (PCAP[: REC[-1] + 16 + 7], {REC[-1]}, REC[-1]),
    "pcap cut mid-record-header": lambda: (PCAP[: REC[-1] + 9], {REC[-1]}, REC[-1]),
    "pcap caplen 0x7fffffff": lambda: (with_u32(PCAP, REC[10] + 8, 0x7FFFFFFF), {REC[10]}, REC[10]),
    "pcap caplen past EOF": lambda: (with_u32(PCAP, REC[10] + 8, 60000), {REC[10]}, REC[10]),
    "pcap unknown link type 147": lambda: (with_u32(PCAP, 20, 147), {20}, None),
    "pcapng cut mid-block": lambda: (PCAPNG[: EPBS[-1][0] + 30], {EPBS[-1][0]}, EPBS[-1][0]),
    "pcapng length not multiple of 4": lambda: (
        with_u32(PCAPNG, EPBS[5][0] + 4, EPBS[5][2] + 2),
        {EPBS[5][0]},
        EPBS[5][0],
    ),
    "pcapng length below 12": lambda: (
        with_u32(PCAPNG, EPBS[5][0] + 4, 8),
        {EPBS[5][0]},
        EPBS[5][0],
    ),
    "pcapng length past EOF": lambda: (
        with_u32(PCAPNG, EPBS[5][0] + 4, 0x00FFFFF0),
        {EPBS[5][0]},
        EPBS[5][0],
    ),
    "pcapng length huge": lambda: (
        with_u32(PCAPNG, EPBS[5][0] + 4, 0xFFFFFFF0),
        {EPBS[5][0]},
        EPBS[5][0],
    ),
    "pcapng trailing length mismatch": lambda: (
        with_u32(PCAPNG, EPBS[5][0] + EPBS[5][2] - 4, EPBS[5][2] + 4),
        {EPBS[5][0]},
        EPBS[5][0],
    ),
    "pcapng caplen beyond block": lambda: (
        with_u32(PCAPNG, EPBS[5][0] + 20, 0x7FFFFFFF),
        {EPBS[5][0]},
        EPBS[5][0],
    ),
    "pcapng bad byte-order magic": lambda: (with_u32(PCAPNG, 8, 0x12345678), {0}, None),
    "pcapng undeclared interface": lambda: (
        with_u32(PCAPNG, EPBS[5][0] + 8, 7),
        {EPBS[5][0]},
        EPBS[5][0],
    ),
    "pcapng 100000 interfaces": _too_many_interfaces,
    "pcapng unknown link type 147": _unknown_linktype_ng,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_file(case: str, tmp_path: Path) -> None:
    data, offsets, prefix = CASES[case]()
    path = tmp_path / ("damaged.pcapng" if "pcapng" in case else "damaged.pcap")
    path.write_bytes(data)
    run = cli("flows", str(path))
    assert run.code == 1, f"exit {run.code}; stderr: {run.stderr}"
    assert_one_error_line(run, path, offsets)
    if prefix is not None:
        intact = tmp_path / ("prefix" + path.suffix)
        intact.write_bytes(data[:prefix])
        assert flow_rows(run.stdout) == api_rows(intact), "flows of the readable part"
        assert flow_rows(run.stdout), "the readable part has flows"
    elif case == "pcapng unknown link type 147":
        want = api_rows(FORMATS / "hassh.pcapng")
        assert flow_rows(run.stdout) == want, "flows of the Ethernet interface"
    else:
        assert flow_rows(run.stdout) == []


@pytest.mark.parametrize("fmt", ["summary", "eve"])
def test_analyze_reports_damage_the_same_way(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    path.write_bytes(PCAP[: REC[-1] + 20])
    run = cli("analyze", "--format", fmt, str(path))
    assert run.code == 1, run.stderr
    assert_one_error_line(run, path, {REC[-1]})


def test_truncated_record_keeps_complete_records(tmp_path: Path) -> None:
    """Through the API: every complete record before the cut counts; the error names the offset."""
    path = tmp_path / "cut.pcap"
    path.write_bytes(PCAP[: REC[-1] + 20])
    res = compute_flows([str(path)], Config())
    assert res.counters["packets"] == len(REC) - 1
    assert [(e.path, e.offset) for e in res.errors] == [(str(path), REC[-1])]
    whole = compute_flows([str(FORMATS / "hassh.pcap")], Config())
    assert res.n_flows == whole.n_flows  # the last record is an ARP or a packet of an existing flow


def test_second_file_still_read_after_damaged_first(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(PCAP[: REC[3] + 5])
    run = cli("flows", str(bad), str(FORMATS / "gre.pcap"))
    assert run.code == 1
    assert_one_error_line(run, bad, {REC[3]})
    assert len(flow_rows(run.stdout)) >= 6  # gre.pcap's six flows


def test_truncated_stream_on_stdin(tmp_path: Path) -> None:
    run = cli("flows", "-", stdin=PCAP[: REC[-1] + 7])
    assert run.code == 1, run.stderr
    assert_one_error_line(run, "<stdin>" if "<stdin>" in run.stderr else "-", {REC[-1]})
    prefix = tmp_path / "prefix.pcap"
    prefix.write_bytes(PCAP[: REC[-1]])
    assert flow_rows(run.stdout) == api_rows(prefix)


def test_missing_path() -> None:
    run = cli("flows", str(REPO / "no" / "such.pcap"))
    assert run.code == 2
    assert "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1
    assert "such.pcap" in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("flows",),
        ("flows", "--bogus", "x.pcap"),
        ("nosuchcommand",),
        ("flows", "--idle-timeout", "-5", str(FORMATS / "hassh.pcap")),
        ("flows", "--format", "xml", str(FORMATS / "hassh.pcap")),
    ],
)
def test_bad_usage(args: tuple[str, ...]) -> None:
    run = cli(*args)
    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


# --- packets the decoder must count, not choke on ---------------------------------------------


def _bad_ip_frames() -> list[bytes]:
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    src, dst = bytes([10, 9, 9, 1]), bytes([10, 9, 9, 2])
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 0x50, 0x02, 1024, 0, 0)

    def ip(ver_ihl: int, total: int) -> bytes:
        return struct.pack("!BBHHHBBH4s4s", ver_ihl, 0, total, 1, 0, 64, 6, 0, src, dst)

    return [
        eth + ip(0x45, 10) + tcp,  # total length below the header
        eth + ip(0x43, 40) + tcp,  # IHL 3
        eth + ip(0x40, 40) + tcp,  # IHL 0
        eth + ip(0x4F, 40) + tcp,  # IHL 15 (60 bytes) but total length 40
        eth + ip(0x75, 40) + tcp,  # version 7
    ]


def test_impossible_ip_lengths_are_counted(tmp_path: Path) -> None:
    bad = _bad_ip_frames()
    recs = b"".join(
        struct.pack("<IIII", 1591180160, i, len(f), len(f)) + f for i, f in enumerate(bad)
    )
    path = tmp_path / "badip.pcap"
    path.write_bytes(PCAP + recs)
    res = compute_flows([str(path)], Config())
    assert res.errors == []
    assert res.counters["packets"] == len(REC) + len(bad)
    assert res.counters["decode_errors"] == len(bad)
    whole = compute_flows([str(FORMATS / "hassh.pcap")], Config())
    assert res.n_flows == whole.n_flows, "no flow from an impossible IP header"
    run = cli("flows", str(path))
    assert run.code == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert len(flow_rows(run.stdout)) == whole.n_flows


# --- a decompression bomb ---------------------------------------------------------------------


def test_gzip_bomb_stops_quickly_in_bounded_memory(tmp_path: Path) -> None:
    """hassh.pcap then 4 GiB of zeros (zero-length records), gzipped member by member (4 MB on
    disk, never inflated to disk). The reader must report the flows of the real records, then give
    up with exit 1, fast and in bounded memory (RLIMIT_AS 2 GiB, peak RSS under 1 GiB)."""
    member_size = 64 << 20
    path = tmp_path / "bomb.pcap.gz"
    zeros = gzip.compress(bytes(member_size), 9, mtime=0)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(PCAP + bytes(member_size - len(PCAP)), 9, mtime=0))
        for _ in range(63):
            fh.write(zeros)
    assert path.stat().st_size < 5 << 20
    run = cli("flows", str(path), timeout=120, max_address_space=2 << 30)
    assert run.code == 1, f"exit {run.code}: {run.stderr}"
    offset = assert_one_error_line(run, path, None)
    assert offset > len(PCAP), "the error must come from the zeros, not the gzip container"
    assert flow_rows(run.stdout) == api_rows(FORMATS / "hassh.pcap")
    assert run.seconds < 60, f"took {run.seconds:.0f} s"
    assert run.maxrss_kib < 1 << 20, f"peak RSS {run.maxrss_kib >> 10} MiB"
