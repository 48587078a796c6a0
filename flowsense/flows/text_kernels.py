"""Identity text in numba: addresses (as glibc's inet_ntop writes them) and Community ID v1.

Each kernel writes fixed-width rows of ASCII into a uint8 matrix, NUL padded; Python views the
rows as numpy ``S`` strings (which drop the padding) and decodes them in one vectorised step.
SHA-1 follows FIPS 180-4; the messages here are at most 45 bytes, so one 64-byte block.
"""

from __future__ import annotations

import numpy as np

from flowsense.jit import inline_kernel, kernel

ADDR_WIDTH = 48  # longest IPv6 text is 45 characters
CID_WIDTH = 30  # "1:" + 28 base64 characters

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_B64 = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", dtype=np.uint8
)


@kernel
def _put_dec(out, row, pos, v):
    """Write v (0..255) in decimal; returns the new position."""
    if v >= 100:
        out[row, pos] = 48 + v // 100
        pos += 1
    if v >= 10:
        out[row, pos] = 48 + (v // 10) % 10
        pos += 1
    out[row, pos] = 48 + v % 10
    return pos + 1


@kernel
def _put_v4(out, row, pos, a):
    for k in range(4):
        pos = _put_dec(out, row, pos, (a >> (24 - 8 * k)) & 255)
        if k < 3:
            out[row, pos] = 46  # '.'
            pos += 1
    return pos


@kernel
def _put_hex16(out, row, pos, w, hexd):
    started = False
    for shift in (12, 8, 4, 0):
        nib = (w >> shift) & 15
        if nib != 0 or started or shift == 0:
            out[row, pos] = hexd[nib]
            pos += 1
            started = True
    return pos


@kernel
def format_addrs(fam, hi, lo, out, hexd):
    """Addresses as text into out[n, ADDR_WIDTH] (uint8, zeroed by the caller)."""
    words = np.zeros(8, dtype=np.int64)
    for i in range(fam.shape[0]):
        h = np.int64(hi[i] >> np.uint64(32)), np.int64(hi[i] & np.uint64(0xFFFFFFFF))
        low = np.int64(lo[i] >> np.uint64(32)), np.int64(lo[i] & np.uint64(0xFFFFFFFF))
        if fam[i] == 4:
            _put_v4(out, i, 0, np.int64(lo[i] & np.uint64(0xFFFFFFFF)))
            continue
        words[0] = h[0] >> 16
        words[1] = h[0] & 0xFFFF
        words[2] = h[1] >> 16
        words[3] = h[1] & 0xFFFF
        words[4] = low[0] >> 16
        words[5] = low[0] & 0xFFFF
        words[6] = low[1] >> 16
        words[7] = low[1] & 0xFFFF
        # the longest run of two or more zero words is written "::" (the first, if tied)
        best, best_len, cur, cur_len = -1, 0, -1, 0
        for k in range(8):
            if words[k] == 0:
                if cur < 0:
                    cur = k
                    cur_len = 1
                else:
                    cur_len += 1
                if cur_len > best_len:
                    best, best_len = cur, cur_len
            else:
                cur = -1
                cur_len = 0
        if best_len < 2:
            best = -1
        pos = 0
        k = 0
        while k < 8:
            if k == best:
                out[i, pos] = 58
                pos += 1
                if k == 0:
                    out[i, pos] = 58
                    pos += 1
                k += best_len
                continue
            # glibc writes an embedded IPv4 for ::a.b.c.d and ::ffff:a.b.c.d
            if k == 6 and best == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
                _put_v4(out, i, pos, (words[6] << 16) | words[7])
                break
            pos = _put_hex16(out, i, pos, words[k], hexd)
            if k < 7:
                out[i, pos] = 58
                pos += 1
            k += 1


@inline_kernel
def put_text(out, pos, row):
    """Copy a NUL-padded text row (uint8[w]) into ``out`` at ``pos``, without the padding;
    returns the position after it."""
    for j in range(row.shape[0]):
        b = row[j]
        if b == 0:
            break
        out[pos] = b
        pos += 1
    return pos


@kernel
def join_rows(rows, out):
    """The text of NUL-padded rows (uint8[n, w]: no NUL or newline inside a row's text), each
    followed by a newline, into ``out`` (uint8, at least n * (w + 1)); returns the bytes
    written. One decode and split then make every row's str in C (``ids.rows_text``)."""
    k = 0
    for i in range(rows.shape[0]):
        k = put_text(out, k, rows[i])
        out[k] = 10
        k += 1
    return k


@kernel
def _rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF


@kernel
def _sha1_block(msg, mlen, digest, w, block):
    """SHA-1 of msg[:mlen] (mlen <= 55) into digest[20]; w[80] and block[64] are scratch."""
    block[:] = 0
    for k in range(mlen):
        block[k] = msg[k]
    block[mlen] = 0x80
    bits = mlen * 8
    for k in range(8):
        block[63 - k] = (bits >> (8 * k)) & 0xFF
    for t in range(16):
        w[t] = (block[4 * t] << 24) | (block[4 * t + 1] << 16) | (block[4 * t + 2] << 8) \
            | block[4 * t + 3]
    for t in range(16, 80):
        w[t] = _rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)
    a, b, c, d, e = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
    for t in range(80):
        if t < 20:
            f = (b & c) | ((~b) & d)
            k = 0x5A827999
        elif t < 40:
            f = b ^ c ^ d
            k = 0x6ED9EBA1
        elif t < 60:
            f = (b & c) | (b & d) | (c & d)
            k = 0x8F1BBCDC
        else:
            f = b ^ c ^ d
            k = 0xCA62C1D6
        tmp = (_rotl(a, 5) + (f & 0xFFFFFFFF) + e + k + w[t]) & 0xFFFFFFFF
        e = d
        d = c
        c = _rotl(b, 30)
        b = a
        a = tmp
    hs = ((0x67452301 + a) & 0xFFFFFFFF, (0xEFCDAB89 + b) & 0xFFFFFFFF,
          (0x98BADCFE + c) & 0xFFFFFFFF, (0x10325476 + d) & 0xFFFFFFFF,
          (0xC3D2E1F0 + e) & 0xFFFFFFFF)
    for j in range(5):
        for k in range(4):
            digest[4 * j + k] = (hs[j] >> (24 - 8 * k)) & 0xFF


@kernel
def _put_addr_bytes(msg, pos, fam, hi, lo):
    if fam == 4:
        for k in range(4):
            msg[pos + k] = (lo >> np.uint64(24 - 8 * k)) & np.uint64(0xFF)
        return pos + 4
    for k in range(8):
        msg[pos + k] = (hi >> np.uint64(56 - 8 * k)) & np.uint64(0xFF)
        msg[pos + 8 + k] = (lo >> np.uint64(56 - 8 * k)) & np.uint64(0xFF)
    return pos + 16


@kernel
def _addr_less(fam, ahi, alo, bhi, blo):
    if fam == 4:
        return alo < blo
    return ahi < bhi or (ahi == bhi and alo < blo)


@kernel
def _icmp_paired(proto, t):
    if proto == 1:
        return t == 0 or t == 8 or t == 9 or t == 10 or (13 <= t <= 18)
    return (128 <= t <= 131) or (133 <= t <= 136) or t == 139 or t == 140 or t == 144 \
        or t == 145


@kernel
def community_ids(fam, proto, s_hi, s_lo, d_hi, d_lo, sport, dport, seed, out, b64):
    """Community ID v1 into out[n, CID_WIDTH] (uint8). Ports as in the flow key (ICMP: type and
    counterpart-or-code); a one-way ICMP type keeps the observed order, as the spec says."""
    msg = np.zeros(64, dtype=np.uint8)
    digest = np.zeros(20, dtype=np.int64)
    w = np.zeros(80, dtype=np.int64)
    block = np.zeros(64, dtype=np.int64)
    for i in range(fam.shape[0]):
        p = proto[i]
        f = fam[i]
        sh, sl, dh, dl = s_hi[i], s_lo[i], d_hi[i], d_lo[i]
        sp, dp = np.int64(sport[i]), np.int64(dport[i])
        icmp = p == 1 or p == 58
        one_way = icmp and not _icmp_paired(p, sp)
        swap = False
        if not one_way:
            if _addr_less(f, dh, dl, sh, sl):
                swap = True
            elif dh == sh and dl == sl and dp < sp:
                swap = True
        if swap:
            sh, sl, dh, dl = dh, dl, sh, sl
            sp, dp = dp, sp
        msg[0] = (seed >> 8) & 0xFF
        msg[1] = seed & 0xFF
        pos = _put_addr_bytes(msg, 2, f, sh, sl)
        pos = _put_addr_bytes(msg, pos, f, dh, dl)
        msg[pos] = p
        msg[pos + 1] = 0
        pos += 2
        if p == 6 or p == 17 or p == 132 or icmp:
            msg[pos] = sp >> 8
            msg[pos + 1] = sp & 0xFF
            msg[pos + 2] = dp >> 8
            msg[pos + 3] = dp & 0xFF
            pos += 4
        _sha1_block(msg, pos, digest, w, block)
        out[i, 0] = 49  # '1'
        out[i, 1] = 58  # ':'
        o = 2
        for j in range(0, 21, 3):
            b0 = digest[j]
            b1 = digest[j + 1] if j + 1 < 20 else 0
            b2 = digest[j + 2] if j + 2 < 20 else 0
            v = (b0 << 16) | (b1 << 8) | b2
            out[i, o] = b64[(v >> 18) & 63]
            out[i, o + 1] = b64[(v >> 12) & 63]
            if j + 1 < 20:
                out[i, o + 2] = b64[(v >> 6) & 63]
            else:
                out[i, o + 2] = 61  # '='
            if j + 2 < 20:
                out[i, o + 3] = b64[v & 63]
            else:
                out[i, o + 3] = 61
            o += 4
