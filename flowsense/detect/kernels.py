"""Detectors' numba kernels: tests over the payload heads of many flows at once.

``pools.PoolDetector`` runs ``may_name_suffix`` over every DNS lookup a prompt rule shows (tens
of thousands a capture), so it must cost a few tens of nanoseconds a lookup; the exact test
(``dns_qname``, ``PoolSet.match_name``) follows on the few hits. Its numpy twin, held to it in
the tests, is ``tests/naive.py``'s ``may_name_suffix``.
"""

from __future__ import annotations

import numpy as np

from flowsense.jit import kernel

NAME_START = 12  # the first question's name follows the 12-byte DNS header
NAME_WINDOW = 256  # bytes after the header searched for the name's terminating zero


@kernel
def may_name_suffix(heads: np.ndarray, head_len: np.ndarray, rows: np.ndarray,
                    lengths: np.ndarray, listed: np.ndarray, weights: np.ndarray,
                    out: np.ndarray) -> None:
    """For each of ``rows`` (int64[r]) of a frame's client heads (``heads`` uint8[n, 2, W], a
    DNS message from its first byte; ``head_len`` int64[n, 2] bytes of it kept): out[j] (bool)
    = the first question's name, in wire form up to and with its terminating zero, ends in a
    suffix of one of ``lengths`` (int64[k], ascending) bytes whose hash is in ``listed``
    (uint64[m], sorted). The hash of the last L bytes, read last byte first, is
    sum(fold(byte t from the end) * weights[t], t < L) in uint64 with wrap-around, ASCII
    letters folded to lower case (``signatures.suffix_hashes``)."""
    stop = min(heads.shape[2], NAME_START + NAME_WINDOW)
    m = listed.shape[0]
    for j in range(rows.shape[0]):
        i = rows[j]
        out[j] = False
        end = -1
        for p in range(NAME_START, stop):
            if heads[i, 0, p] == 0:
                end = p
                break
        if end < 0 or end >= head_len[i, 0] or m == 0:
            continue
        h = np.uint64(0)
        t = 0
        for k in range(lengths.shape[0]):
            size = lengths[k]
            if end - size + 1 < NAME_START:
                break
            while t < size:
                b = heads[i, 0, end - t]
                if 65 <= b <= 90:
                    b |= 32
                h += np.uint64(b) * weights[t]
                t += 1
            lo, hi = 0, m  # binary search of h in listed
            while lo < hi:
                mid = (lo + hi) // 2
                if listed[mid] < h:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < m and listed[lo] == h:
                out[j] = True
                break
