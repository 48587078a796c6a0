"""Detectors' numba kernels: tests over the payload heads of many flows at once.

``pools.PoolDetector`` runs ``may_name_suffix`` over every DNS lookup it was not shown at its
reply (tens of thousands a capture; its prompt rule names the pools, and the flow table makes
the same test on the query packet), so it must cost a few tens of nanoseconds a lookup; the
exact test (``dns_qname``, ``PoolSet.match_name``) follows on the few hits. Its numpy twin,
held to it in the tests, is ``tests/naive.py``'s ``may_name_suffix``. ``may_host_suffix`` makes
the same test on the Host header of every HTTP request (held in the tests to ``http_host`` and
``match_name``, the exact test its hits go to).
"""

from __future__ import annotations

import numpy as np

from flowsense.flows.kernels import dns_name_listed, listed_hash
from flowsense.jit import kernel


@kernel
def may_name_suffix(heads: np.ndarray, head_len: np.ndarray, rows: np.ndarray,
                    lengths: np.ndarray, listed: np.ndarray, weights: np.ndarray,
                    bits: np.ndarray, out: np.ndarray) -> None:
    """For each of ``rows`` (int64[r]) of a frame's client heads (``heads`` uint8[n, 2, W], a
    DNS message from its first byte; ``head_len`` int64[n, 2] bytes of it kept): out[j] (bool)
    = the first question's name ends in a listed suffix (``flows.kernels.dns_name_listed``,
    the test the flow table's name rules make on the packet itself)."""
    for j in range(rows.shape[0]):
        i = rows[j]
        out[j] = dns_name_listed(heads[i, 0], 0, head_len[i, 0], lengths, listed, weights,
                                 bits)


@kernel
def may_host_suffix(heads: np.ndarray, head_len: np.ndarray, rows: np.ndarray,
                    lengths: np.ndarray, listed: np.ndarray, weights: np.ndarray,
                    bits: np.ndarray, out: np.ndarray) -> None:
    """For each of ``rows`` of a frame's client heads (an HTTP request from its first byte):
    out[j] = the first Host header before the blank line names a host that ends in a listed
    suffix. The value is taken as ``pools.http_host`` takes it (blanks around it dropped, up
    to the first colon, trailing dots dropped) and turned, last byte first, into the DNS wire
    form the suffixes were hashed in (a dot becomes the length of the label after it, the
    terminating zero leads): the test ``may_name_suffix`` makes on a DNS question. A superset
    test: a hit is checked exactly (``http_host``, ``PoolSet.match_name``)."""
    wire = np.empty(320, dtype=np.uint8)  # a name, last byte first, in wire form
    m = listed.shape[0]
    for j in range(rows.shape[0]):
        i = rows[j]
        out[j] = False
        if m == 0:
            continue
        buf = heads[i, 0]
        n = min(head_len[i, 0], buf.shape[0])
        at = -1
        p = 0
        while p + 7 <= n:  # "\r\nhost:" (any case), before the blank line
            if buf[p] == 13 and buf[p + 1] == 10:
                if p + 3 < n and buf[p + 2] == 13 and buf[p + 3] == 10:
                    break
                if ((buf[p + 2] | 32) == 104 and (buf[p + 3] | 32) == 111
                        and (buf[p + 4] | 32) == 115 and (buf[p + 5] | 32) == 116
                        and buf[p + 6] == 58):
                    at = p + 7
                    break
            p += 1
        if at < 0:
            continue
        e = at
        while e < n and buf[e] != 13 and buf[e] != 10:
            e += 1
        b = at  # blanks around the value (as bytes.strip)
        while b < e and (buf[b] == 32 or 9 <= buf[b] <= 13):
            b += 1
        while e > b and (buf[e - 1] == 32 or 9 <= buf[e - 1] <= 13):
            e -= 1
        c = b  # up to the first colon (a port)
        while c < e and buf[c] != 58:
            c += 1
        e = c
        while e > b and buf[e - 1] == 46:  # trailing dots
            e -= 1
        if e - b > wire.shape[0] - 2:
            continue  # longer than any DNS name
        wire[0] = 0
        t = 1
        label = 0
        for q in range(e - 1, b - 1, -1):
            ch = buf[q]
            if ch == 46:
                wire[t] = label
                label = 0
            else:
                wire[t] = ch
                label += 1
            t += 1
        wire[t] = label
        t += 1
        h = np.uint64(0)
        k = 0
        for s in range(lengths.shape[0]):
            size = lengths[s]
            if size > t:
                break
            while k < size:
                v = wire[k]
                if 65 <= v <= 90:
                    v |= 32
                h += np.uint64(v) * weights[k]
                k += 1
            if listed_hash(h, listed, bits):
                out[j] = True
                break
