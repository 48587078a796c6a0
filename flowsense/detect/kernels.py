"""Detectors' numba kernels: tests over the payload heads of many flows at once.

``pools.PoolDetector`` runs ``may_name_suffix`` over every DNS lookup it was not shown at its
reply (tens of thousands a capture; its prompt rule names the pools, and the flow table makes
the same test on the query packet), so it must cost a few tens of nanoseconds a lookup; the
exact test (``dns_qname``, ``PoolSet.match_name``) follows on the few hits. Its numpy twin,
held to it in the tests, is ``tests/naive.py``'s ``may_name_suffix``.
"""

from __future__ import annotations

import numpy as np

from flowsense.flows.kernels import dns_name_listed
from flowsense.jit import kernel


@kernel
def may_name_suffix(heads: np.ndarray, head_len: np.ndarray, rows: np.ndarray,
                    lengths: np.ndarray, listed: np.ndarray, weights: np.ndarray,
                    out: np.ndarray) -> None:
    """For each of ``rows`` (int64[r]) of a frame's client heads (``heads`` uint8[n, 2, W], a
    DNS message from its first byte; ``head_len`` int64[n, 2] bytes of it kept): out[j] (bool)
    = the first question's name ends in a listed suffix (``flows.kernels.dns_name_listed``,
    the test the flow table's name rules make on the packet itself)."""
    for j in range(rows.shape[0]):
        i = rows[j]
        out[j] = dns_name_listed(heads[i, 0], 0, head_len[i, 0], lengths, listed, weights)
