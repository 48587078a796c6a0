"""From table slots to a FeatureFrame: named 1-D columns (nfstream names) plus cold arrays.

Everything here is vectorised over the slots being exported; Python touches each flow only to
format its addresses and Community ID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowsense.flows import export_kernels as EK
from flowsense.flows.ids import addr_rows, community_id_rows, rows_text
from flowsense.flows.memory import zeros
from flowsense.flows.table_kernels import TableArrays
from flowsense.schema import (
    D_HEAD_LEN,
    END_NAMES,
    FI_DIR0,
    FI_DSTRIDE,
    FI_LAST_TS,
    FI_SEQ,
    FI_SPLT_N,
    FI_WATCH,
    FLOW_COLUMNS,
    ORIENT_NAMES,
    TUNNEL_NAMES,
)

_TUNNEL = np.array(TUNNEL_NAMES, dtype=object)
_ORIENT = np.array(ORIENT_NAMES, dtype=object)
_END = np.array(END_NAMES, dtype=object)


@dataclass
class FeatureFrame:
    """Flow records as columns. ``cols`` hold the FLOW_COLUMNS; the rest is for detectors."""

    cols: dict[str, np.ndarray] = field(default_factory=dict)  # text columns: object arrays
    n: int = 0
    # cold data, row-aligned with cols
    head: np.ndarray | None = None  # uint8[n, 2, H] payload heads (0: src2dst, 1: dst2src)
    head_len: np.ndarray | None = None  # int64[n, 2]
    # uint8[n, 2, 8], with ``head``: each head's first bytes, apart: a pick over every row reads
    # these, not a cache line of each head (``export_kernels.gather_heads``)
    start: np.ndarray | None = None
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

    def text(self, name: str, i: int) -> str:
        """Row ``i`` of a text column (``src_ip``, ``dst_ip``, ``community_id`` ...): from the
        bytes the table formatted where the column's str objects are not made yet, so a
        detector reading a few rows does not make a str for every row of the frame."""
        cols = self.cols
        rows = self.text_rows.get(name)
        if rows is not None and isinstance(cols, Columns) and not dict.__contains__(cols, name):
            return rows[i].tobytes().split(b"\0", 1)[0].decode("ascii")
        return str(cols[name][i])


def heads_joined(frame: FeatureFrame, rows: np.ndarray, d: int, end: int) -> tuple[bytes, int]:
    """The payload heads of ``rows`` in direction ``d`` laid end to end in one bytes object,
    each followed by the byte ``end`` (so a search for text without it stops at its row's
    end), and the stride: a match at offset ``at`` lies in row ``rows[at // width]``."""
    assert frame.head is not None
    width = frame.head.shape[2] + 1
    heads = np.empty((len(rows), width), dtype=np.uint8)
    heads[:, :-1] = frame.head[rows, d, :]
    heads[:, -1] = end
    return heads.tobytes(), width


@dataclass(frozen=True)
class Trace:
    """A watched flow's packets since its lease (oldest dropped past the ring's size): payload
    length, flags (``table_kernels.TR_*``: bit 0 set for server to client) and time in ns."""

    length: np.ndarray
    flags: np.ndarray
    ts_ns: np.ndarray
    dropped: int


class Columns(dict):
    """A frame's columns, some computed when first read (``gather(..., lazy=True)``): a
    detector that reads a few columns of many rows (the DNS lookups a prompt rule shows at
    once) does not pay for the addresses and Community IDs it never reads. Reading
    the whole mapping (iteration, ``len``, ``keys``, ``items``, ``in``, pickling ...) completes
    it, in FLOW_COLUMNS order; a completed one is an ordinary dict."""

    _deferred: dict[str, Callable[[], np.ndarray]] = {}

    def __missing__(self, name: str) -> np.ndarray:
        make = self._deferred.get(name)
        if make is None:
            raise KeyError(name)
        value = dict.setdefault(self, name, make())
        return value

    def complete(self) -> Columns:
        """Compute what is left; FLOW_COLUMNS order, then any other keys."""
        if self._deferred:
            have = {k: dict.__getitem__(self, k) for k in dict.keys(self)}
            for name, make in self._deferred.items():
                if name not in have:
                    have[name] = make()
            self._deferred = {}
            dict.clear(self)
            dict.update(self, {k: have.pop(k) for k in FLOW_COLUMNS if k in have})
            dict.update(self, have)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self.complete()),))


def column_names(cols: dict[str, np.ndarray]) -> list[str]:
    """The names of a frame's columns, in the order reading them all gives, without computing
    what a ``Columns`` has not computed yet."""
    if not isinstance(cols, Columns) or not cols._deferred:
        return list(cols)
    have = [*dict.keys(cols), *(k for k in cols._deferred if not dict.__contains__(cols, k))]
    known = set(have)
    return [k for k in FLOW_COLUMNS if k in known] + [k for k in have if k not in FLOW_COLUMNS]


def _completing(name: str) -> Callable[..., Any]:
    base = getattr(dict, name)

    def method(self: Columns, *args: Any, **kwargs: Any) -> Any:
        return base(self.complete(), *args, **kwargs)

    method.__name__ = name
    return method


for _name in ("__iter__", "__len__", "__contains__", "__repr__", "__eq__", "__ne__",
              "__reversed__", "__or__", "__ror__", "__delitem__", "keys", "values", "items",
              "get", "copy", "pop", "popitem", "setdefault"):
    setattr(Columns, _name, _completing(_name))


def derive_columns(sources: list[dict[str, np.ndarray]],
                   fn: Callable[[list[np.ndarray]], np.ndarray]) -> dict[str, np.ndarray]:
    """Columns made of the same column of each source (``concat``, ``take``), without
    completing a lazy source: what a source has not computed yet stays deferred in the result
    (made from the sources when first read), so joining and reordering prompt records keeps
    them cheap until a detector reads their text."""
    first = sources[0]
    lazy = [c for c in sources if isinstance(c, Columns) and c._deferred]
    if not lazy:
        return {k: fn([c[k] for c in sources]) for k in first}
    names = list(dict.keys(first)) if isinstance(first, Columns) else list(first)
    if isinstance(first, Columns):
        names += [k for k in first._deferred if k not in names]
    ready = [k for k in names if all(dict.__contains__(c, k) for c in sources)]
    out = Columns({k: fn([dict.__getitem__(c, k) for c in sources]) for k in ready})
    out._deferred = {k: (lambda k=k: fn([c[k] for c in sources])) for k in names
                     if k not in ready}
    return out


def gather(T: TableArrays, slots: np.ndarray, reasons: np.ndarray, interim: bool,
           heads: bool = True, lazy: bool = False, end_ordered: bool = False) -> FeatureFrame:
    """Build the records of ``slots``; ``reasons`` are END_* codes (one per slot). Without
    ``heads`` the frame carries no payload heads (``head`` and ``head_len`` are None). With
    ``lazy``, the text the table formats (addresses, Community IDs) is computed as it is
    first read (``Columns``); without, its bytes are computed at once, and
    only the text columns' str objects wait to be read (the flows writers take the text's
    bytes, ``text_rows``; boxing every address cost 4% of a flows run). With ``end_ordered``,
    the records come in ``in_end_order``'s order (last packet in ms, then ``flow_id``), so a
    look made of one such frame needs no reordering copy."""
    slots = np.asarray(slots, dtype=np.int64)
    reasons = np.asarray(reasons, dtype=np.int64)
    n = len(slots)
    if end_ordered:
        ids = np.empty(n, dtype=np.int64)
        EK.slot_flow_ids(T.key, T.fi, slots, ids)
        order = np.lexsort((ids, T.fi[slots, FI_LAST_TS] // 1_000_000))
        slots, reasons = slots[order], reasons[order]
    ints = np.empty((EK.N_INT_ROWS, n), dtype=np.int64)
    floats = np.empty((len(EK.FLOAT_COLUMNS), n), dtype=np.float64)
    splt_ps = np.empty((n, T.splt_ps.shape[1]), dtype=T.splt_ps.dtype)
    splt_t = np.empty((n, T.splt_t.shape[1]), dtype=T.splt_t.dtype)
    addr = np.empty((n, 4), dtype=np.uint64)
    fids = np.empty(n, dtype=np.int64)
    EK.export_numbers(T.fi, T.ff, T.key, T.splt_ps, T.splt_t, slots, ints, floats, splt_ps,
                      splt_t, addr, fids)
    num = dict(zip(EK.INT_COLUMNS, ints))
    num.update(zip(EK.FLOAT_COLUMNS, floats))
    s_hi, s_lo, d_hi, d_lo = addr.T
    fam, proto = num["ip_version"].astype(np.uint8), num["protocol"].astype(np.uint8)
    text_rows: dict[str, np.ndarray] = {}  # filled as the text columns are made
    row_makers: dict[str, Callable[[], np.ndarray]] = {
        "community_id": lambda: community_id_rows(fam, proto, s_hi, s_lo, d_hi, d_lo,
                                                  num["src_port"], num["dst_port"]),
        "src_ip": lambda: addr_rows(fam, s_hi, s_lo),
        "dst_ip": lambda: addr_rows(fam, d_hi, d_lo),
    }

    def text(name: str) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            if name not in text_rows:
                text_rows[name] = row_makers[name]()
            return rows_text(text_rows[name])
        return make

    made = {**num, "flow_id": fids, "tunnel": _TUNNEL[ints[EK.I_TUNNEL]],
            "orientation": _ORIENT[ints[EK.I_ORIENT]],
            "app_proto": np.full(n, "", dtype=object),
            "expiration": _END[reasons],
            "interim": np.full(n, interim)}
    if not lazy:  # the text's bytes now; a str a row only when read
        text_rows.update({name: rows() for name, rows in row_makers.items()})
    c = Columns(made)
    c._deferred = {name: text(name) for name in row_makers}

    # heads and first packets, oriented to the client
    # the table already keeps heads by client direction (0: from the client)
    head = head_len = start = None
    if heads:
        head = np.empty((n, 2, T.head.shape[2]), dtype=np.uint8)
        start = np.empty((n, 2, EK.START_BYTES), dtype=np.uint8)
        EK.gather_heads(T.head, slots, head, start)
        head_len = T.fi[slots[:, None], [FI_DIR0 + D_HEAD_LEN, FI_DIR0 + FI_DSTRIDE + D_HEAD_LEN]]
    watch = T.fi[slots, FI_WATCH]
    slabs: dict[int, tuple[bytes, bytes]] = {}
    traces: dict[int, Trace] = {}
    for i in np.flatnonzero(watch >= 0).tolist():
        w = int(watch[i])
        slabs[i] = (bytes(T.slab[w, 0, : T.w_fill[w, 0]]), bytes(T.slab[w, 1, : T.w_fill[w, 1]]))
        traces[i] = _trace(T, w)
    return FeatureFrame(
        cols=c, n=n, head=head, head_len=head_len, start=start, splt_ps=splt_ps,
        splt_t_ms=splt_t, splt_n=T.fi[slots, FI_SPLT_N], seq=T.fi[slots, FI_SEQ],
        watch=watch, slabs=slabs, traces=traces, addr=addr, text_rows=text_rows,
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


class _Joined:
    """``np.concatenate`` for ``concat``'s columns, into rows of one 2-D array a dtype: a few
    large allocations on huge pages (``memory.zeros``), rather than one a column faulted in a
    page at a time (that was most of joining a capture's records: 50-190 ms for the 2M
    capture's 103,087 records from malloc, 45-50 ms on huge pages)."""

    def __init__(self, frames: list[FeatureFrame]) -> None:
        n = sum(f.n for f in frames)
        counts: dict[np.dtype, int] = {}
        for v in dict.values(frames[0].cols):
            if v.dtype != object and v.ndim == 1:
                counts[v.dtype] = counts.get(v.dtype, 0) + 1
        self.free = {dt: list(zeros((k, n), dt)) for dt, k in counts.items()}

    def __call__(self, parts: list[np.ndarray]) -> np.ndarray:
        rows = self.free.get(parts[0].dtype)
        if not rows or any(p.dtype != parts[0].dtype or p.ndim != 1 for p in parts):
            return np.concatenate(parts)
        return np.concatenate(parts, out=rows.pop())


def concat(frames: list[FeatureFrame]) -> FeatureFrame:
    """Join frames row-wise (keeps cold arrays)."""
    frames = [f for f in frames if f.n]
    if not frames:
        return FeatureFrame()
    if len(frames) == 1:
        return frames[0]
    cols = derive_columns([f.cols for f in frames], _Joined(frames))

    slabs: dict[int, tuple[bytes, bytes]] = {}
    traces: dict[int, Trace] = {}
    base = 0
    for f in frames:
        slabs.update({base + i: v for i, v in f.slabs.items()})
        traces.update({base + i: v for i, v in f.traces.items()})
        base += f.n

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(f, name) for f in frames]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    shared = set.intersection(*(set(f.text_rows) for f in frames))
    text_rows = {k: np.concatenate([f.text_rows[k] for f in frames]) for k in shared}
    return FeatureFrame(
        cols=cols, n=sum(f.n for f in frames), head=cat("head"), head_len=cat("head_len"),
        start=cat("start"),
        splt_ps=cat("splt_ps"), splt_t_ms=cat("splt_t_ms"), splt_n=cat("splt_n"), seq=cat("seq"),
        watch=cat("watch"), slabs=slabs, traces=traces, addr=cat("addr"), text_rows=text_rows,
    )


def take(frame: FeatureFrame, rows: np.ndarray) -> FeatureFrame:
    """The rows ``rows`` of a frame, in that order (keeps cold arrays, slabs and traces)."""
    rows = np.asarray(rows, dtype=np.int64)
    at = np.full(frame.n, -1, dtype=np.int64)  # old row -> new row (slabs, traces: few)
    at[rows] = np.arange(len(rows))
    where = {i: int(at[i]) for i in (*frame.slabs, *frame.traces) if at[i] >= 0}

    def sub(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[rows]

    return FeatureFrame(
        cols=derive_columns([frame.cols], lambda parts: parts[0][rows]), n=len(rows),
        head=sub(frame.head),
        head_len=sub(frame.head_len), start=sub(frame.start), splt_ps=sub(frame.splt_ps),
        splt_t_ms=sub(frame.splt_t_ms),
        splt_n=sub(frame.splt_n), seq=sub(frame.seq), watch=sub(frame.watch), addr=sub(frame.addr),
        slabs={where[i]: v for i, v in frame.slabs.items() if i in where},
        traces={where[i]: v for i, v in frame.traces.items() if i in where},
    )


def in_end_order(frames: list[FeatureFrame]) -> FeatureFrame:
    """Frames joined and put in one order that does not depend on how flows were spread over
    tables or drains: by last packet (ms), then ``flow_id``; a flow's own rows (interim records,
    then its end) keep their order. What detectors are shown at each look."""
    f = concat(frames)
    if f.n < 2:
        return f
    order = np.lexsort((f.cols["flow_id"], f.cols["bidirectional_last_seen_ms"]))
    if (order == np.arange(f.n)).all():  # in order already (``gather(end_ordered=True)``)
        return f
    return take(f, order)
