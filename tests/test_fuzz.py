"""Mutated captures (bit flips, cuts, length fields overwritten) through the reader and aggregator.

Properties: the only exception is CaptureError (collected in ``FlowsResult.errors``), every call
ends quickly, and no more packets come out than the file can hold. A cut file gives exactly its
complete records. Once per run, the same kind of inputs go through a child process compiled with
``NUMBA_BOUNDSCHECK=1`` (into a private cache, so that the checked code is really compiled), which
must neither raise nor disagree with the unchecked kernels, and its memory must stay flat.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowsense.config import Config
from flowsense.errors import CaptureError
from flowsense.pipeline import FlowsResult, compute_flows

REPO = Path(__file__).resolve().parents[1]
FORMATS = REPO / "tests" / "data" / "formats"
SOURCES = [
    "hassh.pcap",
    "hassh.pcapng",
    "hassh.be.pcap",
    "ng_multi_if.pcapng",
    "ng_sections.pcapng",
    "ng_spb.pcapng",
    "ipv4_frag_opts.pcap",
    "ipv6_ext.pcap",
    "gre.pcap",
    "vxlan.pcap",
    "eth_qinq.pcap",
    "sll2.pcap",
]
PACKET_BLOCKS = (2, 3, 6)  # PB, SPB, EPB


@dataclass(frozen=True)
class Layout:
    """Where a capture's records start and end, and where its length fields are."""

    data: bytes
    records: tuple[tuple[int, int], ...]  # (start, end) of each packet record or block
    boundaries: frozenset[int]  # offsets at which a cut leaves a well-formed file
    length_fields: tuple[tuple[int, str], ...]  # (offset, struct byte order) of u32 lengths
    starts: tuple[int, ...]  # offset of every record header or block, sorted

    def intact_before(self, offset: int) -> int:
        """Packet records wholly before the record or block that contains ``offset``."""
        start = max((s for s in self.starts if s <= offset), default=0)
        return sum(1 for _, end in self.records if end <= start)


def _pcap_layout(data: bytes) -> Layout:
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    recs, fields, off = [], [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from(e + "I", data, off + 8)[0]
        recs.append((off, off + 16 + caplen))
        fields += [(off + 8, e), (off + 12, e)]
        off += 16 + caplen
    assert off == len(data)
    bounds = frozenset([24, *(end for _, end in recs)])
    return Layout(data, tuple(recs), bounds, tuple(fields), tuple(s for s, _ in recs))


def _pcapng_layout(data: bytes) -> Layout:
    recs, fields, bounds, starts, off, e = [], [], set(), [], 0, "<"
    while off < len(data):
        starts.append(off)
        if data[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            e = "<" if data[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, blen = struct.unpack_from(e + "II", data, off)
        fields += [(off + 4, e), (off + blen - 4, e)]
        if btype in PACKET_BLOCKS:
            recs.append((off, off + blen))
            if btype == 6:
                fields += [(off + 20, e), (off + 24, e)]
        off += blen
        bounds.add(off)
    assert off == len(data)
    return Layout(data, tuple(recs), frozenset(bounds), tuple(fields), tuple(starts))


def layout(name: str) -> Layout:
    data = (FORMATS / name).read_bytes()
    return _pcapng_layout(data) if data[:4] == b"\x0a\x0d\x0d\x0a" else _pcap_layout(data)


LAYOUTS = {name: layout(name) for name in SOURCES}

# --- mutations ------------------------------------------------------------------------------------

INTERESTING_U32 = [
    0,
    1,
    3,
    11,
    12,
    13,
    15,
    16,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    0xFFFFFFF0,
    1 << 24,
]


def apply(lay: Layout, ops: list[tuple[str, int, int]]) -> bytes:
    """ops: ("flip", pos, bit), ("byte", pos, value), ("len", field index, u32), ("cut", pos, 0)."""
    data = bytearray(lay.data)
    cut = len(data)
    for kind, a, b in ops:
        if kind == "flip":
            data[a % len(data)] ^= 1 << (b % 8)
        elif kind == "byte":
            data[a % len(data)] = b & 0xFF
        elif kind == "len":
            off, e = lay.length_fields[a % len(lay.length_fields)]
            data[off : off + 4] = struct.pack(e + "I", b & 0xFFFFFFFF)
        elif kind == "cut":
            cut = min(cut, a % (len(data) + 1))
    return bytes(data[:cut])


def u32_values() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from(INTERESTING_U32), st.integers(0, 0xFFFFFFFF), st.integers(0, 2000)
    )


OPS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("len"), st.integers(0, 1 << 16), u32_values()),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
)


def random_ops(rng: random.Random, n: int) -> list[tuple[str, int, int]]:
    """The same mutations without hypothesis, for the child process."""
    ops = []
    for _ in range(n):
        kind = rng.choice(["flip", "byte", "len", "len", "cut"])
        if kind == "len":
            value = rng.choice(INTERESTING_U32 + [rng.getrandbits(32), rng.randrange(2000)])
            ops.append((kind, rng.randrange(1 << 16), value))
        else:
            ops.append((kind, rng.randrange(1 << 20), rng.randrange(256)))
    return ops


# --- the properties -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_counter = iter(range(1 << 62))


def run_on(workdir: Path, name: str, data: bytes) -> FlowsResult:
    path = workdir / f"{next(_counter)}{Path(name).suffix}"
    path.write_bytes(data)
    t0 = time.monotonic()
    try:
        res = compute_flows(
            [str(path)], Config()
        )  # CaptureError is collected, anything else raises
    finally:
        path.unlink()
    assert time.monotonic() - t0 < 20, "took too long"
    for err in res.errors:
        assert isinstance(err, CaptureError)
        assert err.path == str(path)
        assert 0 <= err.offset <= max(len(data), 24), f"offset {err.offset} past the end"
    assert res.counters["packets"] <= len(data) // 16, "more packets than the file can hold"
    assert res.n_flows <= res.counters["packets"]
    return res


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SOURCES), ops=st.lists(OPS, min_size=1, max_size=4))
@example(name="ng_multi_if.pcapng", ops=[("flip", 128, 1)])  # if_tsoffset of IDB 1 made huge
@example(name="hassh.pcapng", ops=[("len", 0, 0xFFFFFFFF)])  # the SHB's own length
@example(name="hassh.pcap", ops=[("cut", 23, 0)])  # inside the global header
def test_mutations_raise_only_capture_error(workdir: Path, name: str, ops: list) -> None:
    run_on(workdir, name, apply(LAYOUTS[name], ops))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SOURCES), frac=st.floats(0, 1))
def test_cut_gives_the_complete_records(workdir: Path, name: str, frac: float) -> None:
    lay = LAYOUTS[name]
    cut = int(len(lay.data) * frac)
    res = run_on(workdir, name, lay.data[:cut])
    complete = sum(1 for _, end in lay.records if end <= cut)
    assert res.counters["packets"] == complete
    if cut in lay.boundaries:
        assert res.errors == []
    else:
        assert len(res.errors) == 1, "a cut inside a record or header is damage"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SOURCES), field=st.integers(0, 1 << 16), value=u32_values())
def test_records_before_a_bad_length_survive(
    workdir: Path, name: str, field: int, value: int
) -> None:
    """One length field overwritten: every record wholly before the damaged one is still read."""
    lay = LAYOUTS[name]
    off, _ = lay.length_fields[field % len(lay.length_fields)]
    res = run_on(workdir, name, apply(lay, [("len", field, value)]))
    assert res.counters["packets"] >= lay.intact_before(off)


# --- the same under NUMBA_BOUNDSCHECK=1, in a child -----------------------------------------------

CHILD = """
import json, sys
from flowsense.config import Config
from flowsense.pipeline import compute_flows

def status_kib(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key))

out = []
for i, path in enumerate(sys.argv[1:]):
    res = compute_flows([path], Config())
    out.append([res.counters["packets"], res.n_flows, [e.offset for e in res.errors]])
    if i == 0:  # compiled and warm: from here on, memory must stay flat
        base = status_kib("VmRSS:")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak to the current RSS
print(json.dumps({"results": out, "peak_growth_kib": status_kib("VmHWM:") - base}))
"""


def boundscheck_inputs(rng: random.Random, per_source: int) -> Iterator[tuple[str, bytes]]:
    for name in SOURCES:
        lay = LAYOUTS[name]
        for _ in range(per_source):
            yield name, apply(lay, random_ops(rng, rng.randint(1, 4)))
        yield name, apply(lay, [("len", rng.randrange(1 << 16), 0xFFFFFFFF)])


def test_boundscheck_child(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    paths = []
    for i, (name, data) in enumerate(boundscheck_inputs(rng, 4)):
        p = tmp_path / f"m{i:03d}{Path(name).suffix}"
        p.write_bytes(data)
        paths.append(p)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NUMBA_BOUNDSCHECK": "1",
        "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    checked = report["results"]
    # every mutated capture is a few KiB: memory stays flat however its length fields lie
    assert report["peak_growth_kib"] < 256 * 1024, f"peak grew {report['peak_growth_kib']} KiB"
    unchecked = []
    for p in paths:
        res = compute_flows([str(p)], Config())
        unchecked.append([res.counters["packets"], res.n_flows, [e.offset for e in res.errors]])
    assert checked == unchecked, "bounds-checked and unchecked kernels disagree"
