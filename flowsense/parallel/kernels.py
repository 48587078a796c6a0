"""Kernels of the parallel engines: which partition a packet's flow belongs to, the statuses a
partition's table is fed (other partitions' packets become clock ticks), and finding a pcap
record boundary from an arbitrary byte offset.
"""

from __future__ import annotations

import numpy as np

from flowsense.capture.kernels import rd32
from flowsense.flows.kernels import packet_hash
from flowsense.jit import kernel
from flowsense.schema import ST_OK, ST_TICK


@kernel
def partition_ids(status, fam, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, n,
                  n_parts, key, out, hashes):
    """out[i] (uint8): the partition of packet i's flow: the top 24 bits of the flow table's
    keyed hash (with a key of the run's own, uint64[2]) of the canonical key, scaled to
    ``n_parts`` (multiply and shift, not a division), so both directions agree; ``hashes[i]``
    the hash itself, which the partitions' tables (keyed alike) look the flow up by. Non-IP
    packets get 0. Every packet is hashed and the status picks (their columns hold numbers
    all the same): no branch a packet."""
    k0 = key[0]
    k1 = key[1]
    parts = np.uint64(n_parts)
    for i in range(n):
        h = packet_hash(k0, k1, fam[i], proto[i], src_hi[i], src_lo[i], dst_hi[i], dst_lo[i],
                        sport[i], dport[i])
        ok = status[i] == ST_OK
        hashes[i] = h if ok else np.uint64(0)
        out[i] = np.uint8(((h >> np.uint64(40)) * parts) >> np.uint64(24)) if ok else np.uint8(0)


@kernel
def tick_statuses(status, part, n, p, out):
    """The statuses partition ``p`` is fed: its own IP packets ST_OK, the others' ST_TICK."""
    for i in range(n):
        s = status[i]
        if s == ST_OK and part[i] != p:
            out[i] = ST_TICK
        else:
            out[i] = s


@kernel
def pcap_resync(buf, x, end, swapped, frac_limit, max_caplen, chain):
    """The first offset >= ``x`` where ``chain`` plausible pcap record headers follow each other
    (or reach ``end`` exactly), or -1. Plausible: captured length within the cap, fraction of a
    second below ``frac_limit``, seconds within a day of the first header's. A guess: the caller
    checks it against the previous range's walk, which knows the true boundary."""
    limit = min(end, x + max_caplen + 16)
    for o in range(x, limit):
        p = o
        ok = True
        sec0 = np.int64(-1)
        for _ in range(chain):
            if p == end:
                break
            if end - p < 16:
                ok = False
                break
            sec = rd32(buf, p, swapped)
            frac = rd32(buf, p + 4, swapped)
            cl = rd32(buf, p + 8, swapped)
            if sec0 < 0:
                sec0 = sec
            if cl > max_caplen or frac >= frac_limit or abs(sec - sec0) > 86400:
                ok = False
                break
            p += 16 + cl
            if p > end:
                ok = False
                break
        if ok:
            return o
    return -1
