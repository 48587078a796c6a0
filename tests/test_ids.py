"""Identity kernels against their plain-Python twins and the standard library."""

from __future__ import annotations

import socket
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowsense.flows import ids

_v4 = st.tuples(st.just(0), st.integers(0, 2**32 - 1))
_v6 = st.one_of(
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(0), st.integers(0, 2**32 - 1).map(lambda a: (0xFFFF << 32) | a)),
    st.tuples(st.just(0), st.integers(0, 2**32 - 1)),
    st.tuples(st.integers(0, 3).map(lambda a: a << 48), st.integers(0, 3)),
)
_flow = st.integers(0, 1).flatmap(
    lambda v6: st.tuples(
        st.just(6 if v6 else 4), st.sampled_from([1, 6, 17, 47, 58, 132]),
        _v6 if v6 else _v4, _v6 if v6 else _v4,
        st.sampled_from([0, 3, 8, 128, 129, 135, 22, 443, 65535]) | st.integers(0, 65535),
        st.sampled_from([0, 8, 22, 129]) | st.integers(0, 65535),
    )
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_flow, min_size=1, max_size=40))
def test_community_id_kernel_matches_python_twin(flows: list) -> None:
    fam = np.array([f[0] for f in flows], np.uint8)
    proto = np.array([f[1] for f in flows], np.uint8)
    s_hi = np.array([f[2][0] for f in flows], np.uint64)
    s_lo = np.array([f[2][1] for f in flows], np.uint64)
    d_hi = np.array([f[3][0] for f in flows], np.uint64)
    d_lo = np.array([f[3][1] for f in flows], np.uint64)
    sp = np.array([f[4] for f in flows], np.uint16)
    dp = np.array([f[5] for f in flows], np.uint16)
    got = ids.community_ids(fam, proto, s_hi, s_lo, d_hi, d_lo, sp, dp)
    for i, f in enumerate(flows):
        assert got[i] == ids.community_id(f[0], f[1], *f[2], *f[3], f[4], f[5])
    text = ids.addr_text(fam, s_hi, s_lo)
    for i, f in enumerate(flows):
        if f[0] == 4:
            want = socket.inet_ntop(socket.AF_INET, struct.pack(">I", f[2][1]))
        else:
            want = socket.inet_ntop(socket.AF_INET6, struct.pack(">QQ", *f[2]))
        assert text[i] == want


def test_community_id_published_example() -> None:
    # the Community ID spec's README example: TCP 128.232.110.120:34855 -> 66.35.250.204:80
    a = struct.unpack(">I", socket.inet_aton("128.232.110.120"))[0]
    b = struct.unpack(">I", socket.inet_aton("66.35.250.204"))[0]
    assert ids.community_id(4, 6, 0, a, 0, b, 34855, 80) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert ids.community_id(4, 6, 0, b, 0, a, 80, 34855) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789abcdef.:/+=", max_size=12), max_size=40))
def test_text_rows_to_str_keeps_every_row(texts: list[str]) -> None:
    """``rows_text`` (NUL-padded rows joined, decoded and split in one go): one str a row, in
    order, empty rows and rows filling their whole width included."""
    width = 12
    rows = np.zeros((len(texts), width), dtype=np.uint8)
    for i, t in enumerate(texts):
        rows[i, : len(t)] = np.frombuffer(t.encode(), dtype=np.uint8)
    got = ids.rows_text(rows)
    assert got.dtype == object and got.tolist() == texts
