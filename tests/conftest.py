"""Shared helpers: the public corpus, its manifest, and the skip-or-fail rule for what a test needs.

The rule: a missing corpus, tool or privilege skips the test on a developer's machine, but under
``CI=true`` it fails, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORMATS_DIR = REPO / "tests" / "data" / "formats"


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Skip, or fail under CI=true."""
    if in_ci():
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)


def corpus_dir() -> Path:
    """Where the shared corpus lives: ``shared/corpus`` beside the repository (may not exist)."""
    return REPO.parent / "shared" / "corpus"


def corpus_available() -> bool:
    return (corpus_dir() / "MANIFEST.tsv").is_file()


@pytest.fixture
def corpus() -> Path:
    """The corpus directory; skips when absent (fails under CI=true)."""
    if not corpus_available():
        skip_or_fail(f"corpus not found at {corpus_dir()}")
    return corpus_dir()


@cache
def _manifest(path: str) -> tuple[dict[str, str], ...]:
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            cells = line.split("\t")
            if header is None:
                header = cells
                continue
            rows.append(dict(zip(header, cells)))
    return tuple(rows)


def manifest() -> list[dict[str, str]]:
    """MANIFEST.tsv as dicts (file, source_repo, source_path, size_bytes, packets, label,
    evidence); empty when the corpus is absent (tests parametrized on it then skip or fail
    through the ``corpus`` fixture)."""
    path = corpus_dir() / "MANIFEST.tsv"
    if not path.is_file():
        return []
    return [dict(r) for r in _manifest(str(path))]


def manifest_files() -> list[str]:
    """The manifest's ``file`` column, or one placeholder so a parametrized test still runs
    (and skips or fails through the ``corpus`` fixture) when the corpus is absent."""
    files = [r["file"] for r in manifest()]
    return files or ["<corpus missing>"]


def require_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("needs root")


def require_tool(name: str) -> str:
    """Path of executable ``name``; skips when it is not installed (fails under CI=true)."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed")
        raise AssertionError("unreachable")  # skip_or_fail raises
    return path


def format_fixtures() -> list[Path]:
    """Captures in tests/data/formats (by magic), sorted; empty when the folder is absent."""
    if not FORMATS_DIR.is_dir():
        return []
    magics = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
              b"\x0a\x0d\x0d\x0a")
    out: list[Path] = []
    for p in sorted(FORMATS_DIR.iterdir()):
        if not p.is_file():
            continue
        with open(p, "rb") as f:
            head = f.read(4)
        if head in magics or head[:2] == b"\x1f\x8b":
            out.append(p)
    return out


ICMP4_TYPES = [(8, 0), (0, 0), (13, 0), (14, 0), (15, 0), (16, 0), (10, 0), (9, 0), (17, 0),
               (18, 0), (3, 1), (11, 0), (5, 1)]
ICMP6_TYPES = [(128, 0), (129, 0), (130, 0), (131, 0), (133, 0), (134, 0), (135, 0), (136, 0),
               (139, 0), (140, 0), (144, 0), (145, 0), (1, 4), (146, 0), (3, 0)]


def write_icmp_types(path: Path) -> None:
    """A raw-IP pcap (ns): each ICMP type of ICMP4_TYPES/ICMP6_TYPES once each way between two
    hosts, 1 ms apart (an 8-byte ICMP header with an empty body)."""
    a4, b4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    a6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    b6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    frames: list[bytes] = []
    for typ, code in ICMP4_TYPES:
        for s, d in ((a4, b4), (b4, a4)):
            icmp = struct.pack("!BBHI", typ, code, 0, 0)
            frames.append(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                                      s, d) + icmp)
    for typ, code in ICMP6_TYPES:
        for s, d in ((a6, b6), (b6, a6)):
            icmp = struct.pack("!BBHI", typ, code, 0, 0)
            frames.append(struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, 64, s, d) + icmp)
    t0 = 1_700_000_000 * 10**9
    write_raw_pcap(path, [(t0 + i * 1_000_000, f) for i, f in enumerate(frames)])


def _ip4_packet(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + l4


def _tcp(sport: int, dport: int, seq: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535,
                       0, 0) + data


def write_raw_pcap(path: Path, packets: list[tuple[int, bytes]]) -> None:
    """A nanosecond LINKTYPE_RAW (101) pcap of (time ns, IP packet)."""
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101)]
    for t, f in packets:
        out.append(struct.pack("<IIII", t // 10**9, t % 10**9, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


def write_tcp_cases(path: Path) -> None:
    """TCP and UDP corner cases the corpus lacks: a closed connection whose tuple a new SYN
    reuses within the close delay, a retransmission, a SYN carrying data, a capture that starts
    mid-stream and then sees a segment from before its first byte, a RST, a UDP flow with a
    3 s gap (idle under short timeouts), and a flow that lingers after FIN past the close delay."""
    fin, syn, rst, psh, ack = 1, 2, 4, 8, 16
    a, b = "10.1.0.1", "10.1.0.2"
    t0 = 1_700_000_000 * 10**9
    ms = 1_000_000
    pk: list[tuple[int, bytes]] = []

    def tcp(t: int, src: str, dst: str, sp: int, dp: int, seq: int, flags: int,
            data: bytes = b"") -> None:
        pk.append((t0 + t * ms, _ip4_packet(src, dst, 6, _tcp(sp, dp, seq, flags, data))))

    # connection 1, then its tuple reused 500 ms after the FINs
    tcp(0, a, b, 1000, 80, 100, syn)
    tcp(1, b, a, 80, 1000, 500, syn | ack)
    tcp(2, a, b, 1000, 80, 101, ack)
    tcp(3, a, b, 1000, 80, 101, psh | ack, b"GET / HTTP/1.0\r\n")
    tcp(4, a, b, 1000, 80, 117, psh | ack, b"\r\n")
    tcp(5, a, b, 1000, 80, 101, psh | ack, b"GET / HTTP/1.0\r\n")  # retransmission
    tcp(6, b, a, 80, 1000, 501, psh | ack, b"HTTP/1.0 200 OK\r\n\r\nhello")
    tcp(7, a, b, 1000, 80, 119, fin | ack)
    tcp(8, b, a, 80, 1000, 525, fin | ack)
    tcp(9, a, b, 1000, 80, 120, ack)
    tcp(509, a, b, 1000, 80, 9000, syn)  # reuse
    tcp(510, b, a, 80, 1000, 7000, syn | ack)
    tcp(511, a, b, 1000, 80, 9001, psh | ack, b"second")
    tcp(512, b, a, 80, 1000, 7001, rst)
    # a SYN carrying data (TCP Fast Open)
    tcp(20, a, b, 1001, 443, 300, syn, b"early")
    tcp(21, b, a, 443, 1001, 800, syn | ack)
    tcp(22, a, b, 1001, 443, 306, psh | ack, b"later")
    # mid-stream: the first payload seen is not the lowest
    tcp(30, b, a, 22, 1002, 5000, psh | ack, b"B" * 20)
    tcp(31, b, a, 22, 1002, 4980, psh | ack, b"A" * 20)  # ends where the first began
    tcp(32, b, a, 22, 1002, 5020, psh | ack, b"C" * 10)
    tcp(33, a, b, 1002, 22, 70000, ack)
    # FIN both ways, then trailing packets 7 s later (past the 5 s close delay)
    tcp(40, a, b, 1003, 25, 10, syn)
    tcp(41, b, a, 25, 1003, 20, syn | ack)
    tcp(42, a, b, 1003, 25, 11, fin | ack)
    tcp(43, b, a, 25, 1003, 21, fin | ack)
    tcp(7043, a, b, 1003, 25, 12, ack)
    # UDP with a 3 s gap
    for t, src, dst, sp, dp, data in ((50, a, b, 5353, 53, b"q1"), (51, b, a, 53, 5353, b"r1"),
                                      (3051, a, b, 5353, 53, b"q2"),
                                      (3052, b, a, 53, 5353, b"r2")):
        udp = struct.pack("!HHHH", sp, dp, 8 + len(data), 0) + data
        pk.append((t0 + t * ms, _ip4_packet(src, dst, 17, udp)))
    pk.sort(key=lambda p: p[0])
    write_raw_pcap(path, pk)


def run_detectors(paths: list[Path], detectors: list) -> list:
    """Alerts of ``detectors`` (flowsense.detect.base.Detector) over ``paths`` as one stream."""
    from flowsense.config import Config
    from flowsense.pipeline import Pipeline

    alerts: list = []

    def sink(frame) -> None:  # type: ignore[no-untyped-def]
        for d in detectors:
            alerts.extend(d.on_frame(frame))

    pipe = Pipeline(Config(), sink, [r for d in detectors for r in d.watch_rules()])
    for p in paths:
        pipe.run_file(str(p))
    pipe.finish()
    return alerts
