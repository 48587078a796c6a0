"""From table slots to a FeatureFrame: named 1-D columns (nfstream names) plus cold arrays.

Everything here is vectorised over the slots being exported; Python touches each flow only to
format its addresses and Community ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flowsense.flows.columns import Columns, Rows, all_columns
from flowsense.flows.table_kernels import TableArrays
from flowsense.schema import (
    D_HEAD_LEN,
    FI_DIR0,
    FI_DSTRIDE,
    FI_SEQ,
    FI_SPLT_N,
    FI_WATCH,
)


@dataclass
class FeatureFrame:
    """Flow records as columns. ``cols`` hold the FLOW_COLUMNS; the rest is for detectors."""

    cols: dict[str, np.ndarray] = field(default_factory=dict)  # text columns: object arrays
    n: int = 0
    # cold data, row-aligned with cols
    head: np.ndarray | None = None  # uint8[n, 2, H] payload heads (0: src2dst, 1: dst2src)
    head_len: np.ndarray | None = None  # int64[n, 2]
    splt_ps: np.ndarray | None = None  # int32[n, N] signed sizes, 0 padded
    splt_t_ms: np.ndarray | None = None  # float32[n, N] offsets from the first packet
    splt_n: np.ndarray | None = None  # int64[n]
    seq: np.ndarray | None = None  # creation order, for stable output
    watch: np.ndarray | None = None  # watch id or -1
    addr: np.ndarray | None = None  # uint64[n, 4]: client hi, lo, server hi, lo (IPv4 in lo)
    # watched flows only, by row: their payload slabs (client, server) and packet traces
    slabs: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    traces: dict[int, Trace] = field(default_factory=dict)
    # the text columns the table formats (addresses, Community ID) as the ASCII rows they were
    # made from (uint8[n, W], NUL padded, JSON-safe): writers take them as they are
    text_rows: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def payload(self, i: int, d: int) -> bytes:
        """The payload bytes kept for row ``i``, direction ``d`` (0: from the client): the slab
        of a watched flow, else the head. TCP bytes sit at their sequence offsets."""
        if i in self.slabs:
            return self.slabs[i][d]
        assert self.head is not None and self.head_len is not None
        return bytes(self.head[i, d, : self.head_len[i, d]])


@dataclass(frozen=True)
class Trace:
    """A watched flow's packets since its lease (oldest dropped past the ring's size): payload
    length, flags (``table_kernels.TR_*``: bit 0 set for server to client) and time in ns."""

    length: np.ndarray
    flags: np.ndarray
    ts_ns: np.ndarray
    dropped: int


def gather(T: TableArrays, slots: np.ndarray, reasons: np.ndarray, interim: bool,
           lazy: bool = False) -> FeatureFrame:
    """Build the records of ``slots``; ``reasons`` are END_* codes (one per slot). With
    ``lazy``, the columns are computed as they are first read (``Columns``); the cold arrays
    (heads, first packets, slabs, traces) are copied out either way."""
    slots = np.asarray(slots, dtype=np.int64)
    rows = Rows(T.fi[slots], T.key[slots], reasons, interim)
    cols: dict[str, np.ndarray]
    if lazy:
        cols = Columns()
        cols._rows = rows
    else:
        cols = all_columns(rows, {})
    fi = rows.fi
    n = rows.n

    # heads and first packets, oriented to the client
    # the table already keeps heads by client direction (0: from the client)
    head = T.head[slots]
    head_len = np.stack(
        [fi[:, FI_DIR0 + D_HEAD_LEN], fi[:, FI_DIR0 + FI_DSTRIDE + D_HEAD_LEN]], axis=1
    )
    watch = fi[:, FI_WATCH]
    slabs: dict[int, tuple[bytes, bytes]] = {}
    traces: dict[int, Trace] = {}
    for i in np.flatnonzero(watch >= 0).tolist():
        w = int(watch[i])
        slabs[i] = (bytes(T.slab[w, 0, : T.w_fill[w, 0]]), bytes(T.slab[w, 1, : T.w_fill[w, 1]]))
        traces[i] = _trace(T, w)
    return FeatureFrame(
        cols=cols, n=n, head=head, head_len=head_len, splt_ps=T.splt_ps[slots],
        splt_t_ms=T.splt_t[slots], splt_n=fi[:, FI_SPLT_N], seq=fi[:, FI_SEQ],
        watch=watch, slabs=slabs, traces=traces,
        addr=np.stack([rows.s_hi, rows.s_lo, rows.d_hi, rows.d_lo], axis=1),
        text_rows=rows.text_rows,
    )


def _trace(T: TableArrays, w: int) -> Trace:
    """The ring of watch ``w`` in packet order (slices: no index arrays)."""
    total = int(T.tr_n[w])
    cap = T.tr_len.shape[1]
    if total <= cap:
        return Trace(T.tr_len[w, :total].copy(), T.tr_flags[w, :total].copy(),
                     T.tr_ts[w, :total].copy(), 0)
    at = total % cap  # the oldest packet kept
    return Trace(*(np.concatenate((a[w, at:], a[w, :at])) for a in (T.tr_len, T.tr_flags, T.tr_ts)),
                 total - cap)


def concat(frames: list[FeatureFrame]) -> FeatureFrame:
    """Join frames row-wise (keeps cold arrays)."""
    frames = [f for f in frames if f.n]
    if not frames:
        return FeatureFrame()
    if len(frames) == 1:
        return frames[0]
    cols = {key: np.concatenate([f.cols[key] for f in frames]) for key in frames[0].cols}

    slabs: dict[int, tuple[bytes, bytes]] = {}
    traces: dict[int, Trace] = {}
    base = 0
    for f in frames:
        slabs.update({base + i: v for i, v in f.slabs.items()})
        traces.update({base + i: v for i, v in f.traces.items()})
        base += f.n

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(f, name) for f in frames])

    shared = set.intersection(*(set(f.text_rows) for f in frames))
    text_rows = {k: np.concatenate([f.text_rows[k] for f in frames]) for k in shared}
    return FeatureFrame(
        cols=cols, n=sum(f.n for f in frames), head=cat("head"), head_len=cat("head_len"),
        splt_ps=cat("splt_ps"), splt_t_ms=cat("splt_t_ms"), splt_n=cat("splt_n"), seq=cat("seq"),
        watch=cat("watch"), slabs=slabs, traces=traces, addr=cat("addr"), text_rows=text_rows,
    )
