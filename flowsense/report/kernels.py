"""JSON lines in numba: flow records formatted straight into a byte buffer.

Formatting a hundred thousand records of eighty fields in Python costs seconds; here it is one
pass. Columns arrive as a plan: ``kinds[c]`` (K_INT, K_FLOAT, K_BOOL, K_STR) and ``index[c]``,
the column's place among ``ints`` (int64[n_int, n]), ``floats`` (float64[n_float, n]) or
``strs`` (uint8[n_str, n, W], NUL padded, already JSON-safe: the caller checks); one column
after another, as the frame holds them, so building them is a contiguous copy a column.
``keys`` holds every ``"name": `` prefix back to back, ``key_off[c]..key_off[c+1]`` the c-th.
Floats are written as ``repr(round(v, 6))`` would write them for |v| < 1e12 (every float
flowsense emits). Bytes are copied with ``jit.copy_bytes`` (a memcpy, not a slice assignment).
"""

from __future__ import annotations

import numpy as np

from flowsense.flows.text_kernels import put_text
from flowsense.jit import copy_bytes, counted_free_kernel, inline_kernel

K_INT = 0
K_FLOAT = 1
K_BOOL = 2
K_STR = 3
FLOAT_LIMIT = 1e12
_TRUE = np.frombuffer(b"true", dtype=np.uint8)
_FALSE = np.frombuffer(b"false", dtype=np.uint8)


@inline_kernel
def _put_uint(out, pos, v):
    """Write a non-negative integer; returns the new position."""
    if v < 10:
        out[pos] = 48 + v
        return pos + 1
    k = 2
    t = 100
    while v >= t and k < 19:
        t *= 10
        k += 1
    e = pos + k
    while v > 0:
        e -= 1
        out[e] = 48 + v % 10
        v //= 10
    return pos + k


@inline_kernel
def _put_int(out, pos, v):
    if v < 0:
        out[pos] = 45
        pos += 1
        if v == -9223372036854775808:  # cannot be negated: write -(v + 1) then fix the last digit
            pos = _put_uint(out, pos, -(v + 1))
            out[pos - 1] += 1
            return pos
        v = -v
    return _put_uint(out, pos, v)


@inline_kernel
def _put_float(out, pos, x):
    """round(x, 6) as repr writes it: at least one decimal, trailing zeros dropped."""
    if x < 0:
        out[pos] = 45
        pos += 1
        x = -x
    q = np.int64(np.round(x * 1e6))
    ip = q // 1000000
    fp = q % 1000000
    pos = _put_uint(out, pos, ip)
    out[pos] = 46
    pos += 1
    if fp == 0:
        out[pos] = 48
        return pos + 1
    digits = 6
    while fp % 10 == 0:
        fp //= 10
        digits -= 1
    d = 10 ** (digits - 1)
    while d > 0:
        out[pos] = 48 + (fp // d) % 10
        pos += 1
        d //= 10
    return pos


@counted_free_kernel
def write_jsonl(n, kinds, index, keys, key_off, ints, floats, strs, out):
    """Format ``n`` records into ``out`` (uint8, sized by the caller); returns bytes written."""
    pos = 0
    nc = kinds.shape[0]
    for r in range(n):
        out[pos] = 123  # {
        pos += 1
        for c in range(nc):
            if c:
                out[pos] = 44  # ,
                out[pos + 1] = 32
                pos += 2
            a = key_off[c]
            e = key_off[c + 1]
            copy_bytes(out, pos, keys, a, e - a)
            pos += e - a
            k = kinds[c]
            i = index[c]
            if k == K_INT:
                pos = _put_int(out, pos, ints[i, r])
            elif k == K_FLOAT:
                pos = _put_float(out, pos, floats[i, r])
            elif k == K_BOOL:
                if ints[i, r]:
                    copy_bytes(out, pos, _TRUE, 0, 4)
                    pos += 4
                else:
                    copy_bytes(out, pos, _FALSE, 0, 5)
                    pos += 5
            else:
                out[pos] = 34  # "
                pos = put_text(out, pos + 1, strs[i, r])
                out[pos] = 34
                pos += 1
        out[pos] = 125  # }
        out[pos + 1] = 10
        pos += 2
    return pos
