"""Detectors' numba kernels: tests over the payload heads of many flows at once.

``pools.PoolDetector`` runs ``may_name_suffix`` over every DNS lookup it was not shown at its
reply (tens of thousands a capture; its prompt rule names the pools, and the flow table makes
the same test on the query packet), so it must cost a few tens of nanoseconds a lookup; the
exact test (``dns_qname``, ``PoolSet.match_name``) follows on the few hits. Its numpy twin,
held to it in the tests, is ``tests/naive.py``'s ``may_name_suffix``. ``pool_picks`` is the pool
detector's first look at every record of a frame in one pass (JSON, ClientHello, an HTTP Host
naming a listed pool by the same suffix test, a listed address, a pair DNS answered), held in
the tests to the exact tests its hits go to (``http_host``, ``match_name``).
"""

from __future__ import annotations

import numpy as np

from flowsense.flows.kernels import dns_name_listed, sorted_has, suffix_listed
from flowsense.jit import inline_kernel, kernel


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


@inline_kernel
def host_listed(buf, n, lengths, listed, weights, bits, wire):
    """Whether the first Host header before the blank line of the HTTP request in ``buf[:n]``
    names a host that ends in a listed suffix. The value is taken as ``pools.http_host``
    takes it (blanks around it dropped, up to the first colon, trailing dots dropped) and
    turned, last byte first, into the DNS wire form the suffixes were hashed in (a dot becomes
    the length of the label after it, the terminating zero leads; ``wire`` uint8[320] is
    scratch): the test ``may_name_suffix`` makes on a DNS question. A superset test: a hit is
    checked exactly (``http_host``, ``PoolSet.match_name``)."""
    if listed.shape[0] == 0:
        return False
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
        return False
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
        return False  # longer than any DNS name
    top = wire.shape[0] - 1  # the wire form is built backwards from here, its zero first
    wire[top] = 0
    t = 1
    label = 0
    for q in range(e - 1, b - 1, -1):
        ch = buf[q]
        if ch == 46:
            wire[top - t] = label
            label = 0
        else:
            wire[top - t] = ch
            label += 1
        t += 1
    wire[top - t] = label
    return suffix_listed(wire, top, top - t, lengths, listed, weights, bits)


@inline_kernel
def v4_listed(lo, shifts, keys, at):
    """Whether the IPv4 address ``lo`` (uint64) falls in a listed network: for each prefix
    length p, the address with its low ``shifts[p]`` bits cleared is among the sorted network
    addresses ``keys[at[p]:at[p + 1]]`` (``signatures.PoolSet``)."""
    for p in range(shifts.shape[0]):
        s = np.uint64(shifts[p])
        if sorted_has(keys, at[p], at[p + 1], (lo >> s) << s):
            return True
    return False


PAIR_MUL = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd


@inline_kernel
def pair_key(client_lo, server_lo):
    """One uint64 for a (client, server) pair of address low halves (equal pairs, equal keys;
    a collision only adds a row for the exact lookup to turn down)."""
    return (np.uint64(client_lo) * PAIR_MUL) ^ np.uint64(server_lo)


@kernel
def pair_keys(client_lo: np.ndarray, server_lo: np.ndarray, out: np.ndarray) -> None:
    """out[i] = ``pair_key(client_lo[i], server_lo[i])``."""
    for i in range(out.shape[0]):
        out[i] = pair_key(client_lo[i], server_lo[i])


@kernel
def pool_picks(start, heads, head_len, proto, dport, fam, addr, json_second, http_first,
               shifts, keys, at, asked, lengths, listed, weights, bits, cand, named, on_list,
               answered):
    """The pool detector's first look at every row of a frame, in one pass. ``cand[i]``: the
    row can carry a connection (TCP, or UDP not to port 53); for those, ``named[i]``: the
    client's payload can name a pool (it opens a JSON object, per ``json_second``; it is a TLS
    ClientHello; or it is an HTTP request, letters up to a space, whose Host ``host_listed``
    finds), ``on_list[i]``: the server's IPv4 address is in a listed network (``v4_listed``),
    ``answered[i]``: the (client, server) pair's ``pair_key`` is among the sorted ``asked``.
    ``start`` is the frame's first bytes (uint8[n, 2, 8]); ``addr`` uint64[n, 4]."""
    wire = np.empty(320, dtype=np.uint8)
    n_asked = asked.shape[0]
    for i in range(start.shape[0]):
        named[i] = False
        on_list[i] = False
        answered[i] = False
        p = proto[i]
        cand[i] = p == 6 or (p == 17 and dport[i] != 53)
        if not cand[i]:
            continue
        b0 = start[i, 0, 0]
        if b0 == 123:  # "{"
            named[i] = json_second[start[i, 0, 1]]
        elif b0 == 0x16:
            named[i] = start[i, 0, 5] == 1
        elif http_first[b0]:
            lead = 0  # letters up to a space, or all eight: an HTTP method
            while lead < 8 and 97 <= (start[i, 0, lead] | 32) <= 122:
                lead += 1
            if lead == 8 or start[i, 0, lead] == 32:
                named[i] = host_listed(heads[i, 0], min(head_len[i, 0], heads.shape[2]),
                                       lengths, listed, weights, bits, wire)
        if fam[i] == 4:
            on_list[i] = v4_listed(addr[i, 3], shifts, keys, at)
        if n_asked:
            answered[i] = sorted_has(asked, 0, n_asked, pair_key(addr[i, 1], addr[i, 3]))
