"""A frame's columns (nfstream names), computed from the table rows a gather copied out:
all at once for the frames of ended flows, or each group as it is first read (``Columns``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from flowsense.flows.ids import addr_rows, community_id_rows, flow_ids, rows_text
from flowsense.schema import (
    D_BYTES,
    D_CWR_ECE,
    D_FIRST,
    D_LAST,
    D_MAX_PIAT,
    D_MAX_PS,
    D_MIN_PIAT,
    D_MIN_PS,
    D_PAYLOAD,
    D_PKTS,
    D_RETRANS,
    D_RST_FIN,
    D_SYN_ACK,
    D_URG_PSH,
    DF_M2_PIAT,
    DF_M2_PS,
    DF_MEAN_PIAT,
    DF_MEAN_PS,
    END_NAMES,
    FF_BI_M2_PIAT,
    FF_BI_M2_PS,
    FF_BI_MEAN_PIAT,
    FF_BI_MEAN_PS,
    FF_DIR0,
    FF_DSTRIDE,
    FI_BI_MAX_PIAT,
    FI_BI_MAX_PS,
    FI_BI_MIN_PIAT,
    FI_BI_MIN_PS,
    FI_COUNTS,
    FI_DIR0,
    FI_DSTRIDE,
    FI_FIRST_TS,
    FI_LAST_TS,
    FI_META,
    FI_NFIELDS,
    FLOW_COLUMNS,
    ORIENT_NAMES,
    TUNNEL_NAMES,
)

_NS_PER_MS = 1_000_000
_LOW = 0xFFFFFFFF
_TUNNEL = np.array(TUNNEL_NAMES, dtype=object)
_ORIENT = np.array(ORIENT_NAMES, dtype=object)
_END = np.array(END_NAMES, dtype=object)


def _stats(mean: np.ndarray, m2: np.ndarray, k: np.ndarray, ddof: int) -> np.ndarray:
    """Sample standard deviation from Welford's M2 (nfstream: n-1 for sizes, n-2 for gaps)."""
    denom = k - ddof
    out = np.zeros(len(mean), dtype=np.float64)
    ok = denom > 0
    out[ok] = np.sqrt(np.maximum(m2[ok], 0.0) / denom[ok])
    return out


class Columns(dict):
    """A frame's columns by name, computed when first read (``gather(..., lazy=True)``) from
    the rows copied at gather time: a detector that reads a few columns of many rows (the DNS
    lookups a prompt rule shows at once) pays for those alone. Reading the whole mapping
    (iteration, ``len``, ``keys``, ``items``, ``in``, pickling ...) completes it, in
    FLOW_COLUMNS order; a completed one is an ordinary dict."""

    _rows: Rows | None = None

    def __missing__(self, name: str) -> np.ndarray:
        rows = self._rows
        group = _GROUP_OF.get(name) if rows is not None else None
        if rows is None or group is None:
            raise KeyError(name)
        for key, value in group(rows, self).items():
            dict.setdefault(self, key, value)
        return dict.__getitem__(self, name)

    def complete(self) -> Columns:
        """Compute every column not read yet; FLOW_COLUMNS order, then any other keys."""
        rows = self._rows
        if rows is not None:
            have = all_columns(rows, {k: dict.__getitem__(self, k) for k in dict.keys(self)})
            dict.clear(self)
            dict.update(self, have)
            self._rows = None
        return self

    def __reduce__(self) -> tuple:
        return (dict, (dict(self.complete()),))


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


class Rows:
    """The table rows of one gather, copied out (slots may be reused once it returns), with
    the flow keys decoded; what every column group starts from."""

    def __init__(self, fi: np.ndarray, key: np.ndarray, reasons: np.ndarray,
                 interim: bool) -> None:
        self.n = len(fi)
        self.fi = fi
        self.ff = fi.view(np.float64)
        k0 = key[:, 0]
        self.fam = (k0 & np.uint64(0xFF)).astype(np.uint8)
        self.proto = ((k0 >> np.uint64(8)) & np.uint64(0xFF)).astype(np.uint8)
        self.pa = pa = ((k0 >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.uint16)
        self.pb = pb = ((k0 >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16)
        cli_a = ((k0 >> np.uint64(48)) & np.uint64(1)) == 1
        self.a_hi, self.a_lo, self.b_hi, self.b_lo = a_hi, a_lo, b_hi, b_lo = (
            key[:, 1], key[:, 2], key[:, 3], key[:, 4])
        self.s_hi = np.where(cli_a, a_hi, b_hi)
        self.s_lo = np.where(cli_a, a_lo, b_lo)
        self.d_hi = np.where(cli_a, b_hi, a_hi)
        self.d_lo = np.where(cli_a, b_lo, a_lo)
        self.sp = np.where(cli_a, pa, pb)
        self.dp = np.where(cli_a, pb, pa)
        self.first = fi[:, FI_FIRST_TS]
        self.reasons = reasons
        self.interim = interim
        # the text columns as the ASCII rows they were formatted from (FeatureFrame.text_rows),
        # filled as those columns are computed
        self.text_rows: dict[str, np.ndarray] = {}


def _flow_id(r: Rows, c: dict) -> dict[str, np.ndarray]:
    return {"flow_id": flow_ids(r.fam, r.proto, r.a_hi, r.a_lo, r.b_hi, r.b_lo, r.pa, r.pb,
                                r.first)}


def _text(r: Rows, name: str, ascii_rows: np.ndarray) -> dict[str, np.ndarray]:
    r.text_rows[name] = ascii_rows
    return {name: rows_text(ascii_rows)}


def _community_id(r: Rows, c: dict) -> dict[str, np.ndarray]:
    return _text(r, "community_id", community_id_rows(r.fam, r.proto, r.s_hi, r.s_lo, r.d_hi,
                                                      r.d_lo, r.sp, r.dp))


def _src_ip(r: Rows, c: dict) -> dict[str, np.ndarray]:
    return _text(r, "src_ip", addr_rows(r.fam, r.s_hi, r.s_lo))


def _dst_ip(r: Rows, c: dict) -> dict[str, np.ndarray]:
    return _text(r, "dst_ip", addr_rows(r.fam, r.d_hi, r.d_lo))


def _endpoints(r: Rows, c: dict) -> dict[str, np.ndarray]:
    return {"src_port": r.sp.astype(np.int64), "dst_port": r.dp.astype(np.int64),
            "protocol": r.proto.astype(np.int64), "ip_version": r.fam.astype(np.int64)}


def _meta(r: Rows, c: dict) -> dict[str, np.ndarray]:
    meta = r.fi[:, FI_META]
    return {
        "vlan_id": meta & 0xFFFF,
        "tunnel": _TUNNEL[(meta >> 16) & 0xFF],
        "orientation": _ORIENT[(meta >> 24) & 0xFF],
        "app_proto": np.full(r.n, "", dtype=object),
        "expiration": _END[np.asarray(r.reasons, dtype=np.int64)],
        "interim": np.full(r.n, r.interim),
    }


def _bi_times(r: Rows, c: dict) -> dict[str, np.ndarray]:
    last = r.fi[:, FI_LAST_TS]
    return {
        "bidirectional_first_seen_ms": r.first // _NS_PER_MS,
        "bidirectional_last_seen_ms": last // _NS_PER_MS,
        "bidirectional_duration_ms": (last - r.first) // _NS_PER_MS,
    }


def _direction(d: int) -> Callable[[Rows, dict], dict[str, np.ndarray]]:
    prefix = ("src2dst_", "dst2src_")[d]
    b = FI_DIR0 + d * FI_DSTRIDE
    fb = FF_DIR0 + d * FF_DSTRIDE

    def group(r: Rows, c: dict) -> dict[str, np.ndarray]:
        fi, ff = r.fi, r.ff
        k = fi[:, b + D_PKTS]
        has = k > 0
        dfirst = np.where(has, fi[:, b + D_FIRST], 0)
        dlast = np.where(has, fi[:, b + D_LAST], 0)
        dc = {
            "first_seen_ms": dfirst // _NS_PER_MS,
            "last_seen_ms": dlast // _NS_PER_MS,
            "duration_ms": (dlast - dfirst) // _NS_PER_MS,
            "packets": k,
            "bytes": fi[:, b + D_BYTES],
            "payload_bytes": fi[:, b + D_PAYLOAD],
            "min_ps": fi[:, b + D_MIN_PS],
            "mean_ps": ff[:, fb + DF_MEAN_PS],
            "stddev_ps": _stats(ff[:, fb + DF_MEAN_PS], ff[:, fb + DF_M2_PS], k, 1),
            "max_ps": fi[:, b + D_MAX_PS],
            "min_piat_ms": fi[:, b + D_MIN_PIAT] / _NS_PER_MS,
            "mean_piat_ms": ff[:, fb + DF_MEAN_PIAT],
            "stddev_piat_ms": _stats(ff[:, fb + DF_MEAN_PIAT], ff[:, fb + DF_M2_PIAT], k, 2),
            "max_piat_ms": fi[:, b + D_MAX_PIAT] / _NS_PER_MS,
            "syn_packets": fi[:, b + D_SYN_ACK] & _LOW,
            "cwr_packets": fi[:, b + D_CWR_ECE] & _LOW,
            "ece_packets": fi[:, b + D_CWR_ECE] >> 32,
            "urg_packets": fi[:, b + D_URG_PSH] & _LOW,
            "ack_packets": fi[:, b + D_SYN_ACK] >> 32,
            "psh_packets": fi[:, b + D_URG_PSH] >> 32,
            "rst_packets": fi[:, b + D_RST_FIN] & _LOW,
            "fin_packets": fi[:, b + D_RST_FIN] >> 32,
        }
        out = {prefix + key: col for key, col in dc.items()}
        out[prefix + "retransmissions"] = fi[:, b + D_RETRANS]
        return out

    return group


_FLAGS = ("syn", "cwr", "ece", "urg", "ack", "psh", "rst", "fin")
_SUMMED = ("packets", "bytes", "payload_bytes", *(f"{f}_packets" for f in _FLAGS))


def _bidirectional(r: Rows, c: dict) -> dict[str, np.ndarray]:
    """The sums of both directions (read through ``c``: computed there if not yet) and the
    statistics the table keeps over both."""
    fi, ff = r.fi, r.ff
    both = {f"bidirectional_{k}": c[f"src2dst_{k}"] + c[f"dst2src_{k}"] for k in _SUMMED}
    bi_pk = both["bidirectional_packets"]
    return {
        **both,
        "bidirectional_min_ps": fi[:, FI_BI_MIN_PS],
        "bidirectional_mean_ps": ff[:, FF_BI_MEAN_PS],
        "bidirectional_stddev_ps": _stats(ff[:, FF_BI_MEAN_PS], ff[:, FF_BI_M2_PS], bi_pk, 1),
        "bidirectional_max_ps": fi[:, FI_BI_MAX_PS],
        "bidirectional_min_piat_ms": fi[:, FI_BI_MIN_PIAT] / _NS_PER_MS,
        "bidirectional_mean_piat_ms": ff[:, FF_BI_MEAN_PIAT],
        "bidirectional_stddev_piat_ms": _stats(ff[:, FF_BI_MEAN_PIAT], ff[:, FF_BI_M2_PIAT],
                                               bi_pk, 2),
        "bidirectional_max_piat_ms": fi[:, FI_BI_MAX_PIAT] / _NS_PER_MS,
        "fragments": fi[:, FI_COUNTS] >> 32,
    }


# in the order a complete frame computes them (the direction groups before the sums of both)
_GROUPS: tuple[Callable[[Rows, dict], dict[str, np.ndarray]], ...] = (
    _flow_id, _community_id, _src_ip, _dst_ip, _endpoints, _meta, _bi_times,
    _direction(0), _direction(1), _bidirectional,
)
_GROUP_OF: dict[str, Callable[[Rows, dict], dict[str, np.ndarray]]] = {}


def all_columns(rows: Rows, have: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every column, those in ``have`` kept: FLOW_COLUMNS order, then any other keys."""
    for group in _GROUPS:
        if any(key not in have for key in _KEYS_OF[group]):
            for key, value in group(rows, have).items():
                have.setdefault(key, value)
    out = {k: have.pop(k) for k in FLOW_COLUMNS if k in have}
    out.update(have)
    return out


_KEYS_OF: dict[Callable[[Rows, dict], dict[str, np.ndarray]], tuple[str, ...]] = {}


def _index_groups() -> None:
    """Which columns each group makes (run once, over zero rows)."""
    empty = Rows(np.zeros((0, FI_NFIELDS), np.int64), np.zeros((0, 5), np.uint64),
                  np.zeros(0, np.int64), False)
    have: dict[str, np.ndarray] = {}
    for group in _GROUPS:
        made = group(empty, have)
        have.update(made)
        _KEYS_OF[group] = tuple(made)
        _GROUP_OF.update(dict.fromkeys(made, group))
    assert set(have) == set(FLOW_COLUMNS), set(have) ^ set(FLOW_COLUMNS)


_index_groups()


