"""Flow records out: JSON lines, CSV, Parquet (pyarrow)."""

from __future__ import annotations

import csv
import json
from typing import TextIO

import numpy as np

from flowsense.encoding import csv_cell
from flowsense.errors import ConfigError
from flowsense.flows.features import FeatureFrame, column_names
from flowsense.report import kernels as RK
from flowsense.schema import FLOW_COLUMNS


def splt_columns(frame: FeatureFrame) -> dict[str, list[list]]:
    """nfstream's splt_direction / splt_ps / splt_piat_ms, -1 padded."""
    assert frame.splt_ps is not None and frame.splt_t_ms is not None and frame.splt_n is not None
    n_max = frame.splt_ps.shape[1]
    direction, sizes, piat = [], [], []
    for ps, t, k in zip(frame.splt_ps.tolist(), frame.splt_t_ms.tolist(), frame.splt_n.tolist()):
        pad = [-1] * (n_max - k)
        direction.append([0 if v > 0 else 1 for v in ps[:k]] + pad)
        sizes.append([abs(v) for v in ps[:k]] + pad)
        gaps = [0.0] + [round(t[j] - t[j - 1], 3) for j in range(1, k)] if k else []
        piat.append(gaps + pad)
    return {"splt_direction": direction, "splt_ps": sizes, "splt_piat_ms": piat}


def _text_values(name: str, col: np.ndarray | list) -> list[str]:
    dt = FLOW_COLUMNS.get(name, "")
    if isinstance(col, list):  # splt lists
        return [json.dumps(v) for v in col]
    if col.dtype == object:
        return [json.dumps(v, ensure_ascii=False) for v in col.tolist()]
    if dt == "?":
        return ["true" if v else "false" for v in col.tolist()]
    if dt == "f8":
        return [repr(round(v, 6)) for v in col.tolist()]
    return [str(v) for v in col.tolist()]


def write_jsonl(frame: FeatureFrame, out: TextIO, splt: bool = False) -> None:
    """One JSON object a flow. Formatted in numba (``report/kernels.py``); frames the kernel
    cannot take as they are (first packets asked for, a text cell that would need escaping, a
    float out of its range) go through ``write_jsonl_python``, its plain twin."""
    if frame.n == 0:
        return
    data = None if splt else _jsonl_bytes(frame)
    if data is None:
        write_jsonl_python(frame, out, splt)
    elif hasattr(out, "buffer"):  # a text file over a binary one: skip decoding and re-encoding
        out.flush()
        out.buffer.write(data)
    else:
        out.write(bytes(data).decode("ascii"))


def _jsonl_bytes(frame: FeatureFrame) -> memoryview | None:
    names = column_names(frame.cols)  # text the table formatted is taken as bytes: no str made
    n = frame.n
    kinds = np.empty(len(names), dtype=np.int64)
    index = np.empty(len(names), dtype=np.int64)
    ints: list[np.ndarray] = []
    floats: list[np.ndarray] = []
    strs: list[np.ndarray] = []
    for c, name in enumerate(names):
        if name in frame.text_rows:  # formatted by the table: ASCII, nothing to escape
            kinds[c], index[c] = RK.K_STR, len(strs)
            strs.append(frame.text_rows[name])
            continue
        col = frame.cols[name]
        if col.dtype == object:
            try:
                b = col.astype("S")
            except UnicodeEncodeError:
                return None
            raw = b.view(np.uint8).reshape(len(b), -1) if b.itemsize else np.zeros((len(b), 1),
                                                                                 np.uint8)
            if np.any((raw < 32) & (raw != 0)) or np.any((raw == 34) | (raw == 92) | (raw > 126)):
                return None
            kinds[c], index[c] = RK.K_STR, len(strs)
            strs.append(raw)
        elif col.dtype.kind == "f":
            if not np.all(np.abs(col) < RK.FLOAT_LIMIT):
                return None
            kinds[c], index[c] = RK.K_FLOAT, len(floats)
            floats.append(col)
        else:
            kinds[c], index[c] = (RK.K_BOOL if col.dtype == np.bool_ else RK.K_INT), len(ints)
            ints.append(col)
    width = max([s.shape[1] for s in strs], default=1)
    str_mat = np.zeros((max(len(strs), 1), n, width), dtype=np.uint8)
    for i, s in enumerate(strs):
        str_mat[i, :, : s.shape[1]] = s
    # one column a row of each matrix: every column is one contiguous copy (casting as it goes)
    int_mat = np.empty((max(len(ints), 1), n), dtype=np.int64)
    for i, col in enumerate(ints):
        int_mat[i] = col
    flt_mat = np.empty((max(len(floats), 1), n), dtype=np.float64)
    for i, col in enumerate(floats):
        flt_mat[i] = col
    keys = b"".join(json.dumps(k).encode() + b": " for k in names)
    key_off = np.cumsum([0] + [len(json.dumps(k)) + 2 for k in names]).astype(np.int64)
    per_row = len(keys) + 2 * len(names) + 24 * (len(ints) + len(floats)) + width * len(strs) + 8
    buf = np.empty(per_row * n, dtype=np.uint8)
    used = RK.write_jsonl(n, kinds, index, np.frombuffer(keys, dtype=np.uint8), key_off, int_mat,
                          flt_mat, str_mat, buf)
    return memoryview(buf[:used])


def write_jsonl_python(frame: FeatureFrame, out: TextIO, splt: bool = False) -> None:
    cols = dict(frame.cols)
    if splt:
        cols.update(splt_columns(frame))
    names = list(cols)
    template = "{" + ", ".join(json.dumps(k) + ": %s" for k in names) + "}\n"
    values = [_text_values(k, cols[k]) for k in names]
    out.writelines(template % row for row in zip(*values))


def write_csv(frame: FeatureFrame, out: TextIO, header: bool = True) -> None:
    w = csv.writer(out, lineterminator="\n")
    names = list(frame.cols)
    if header:
        w.writerow(names)
    values = []
    for k in names:
        col = frame.cols[k]
        if col.dtype == object:
            values.append([csv_cell(str(v)) for v in col.tolist()])
        elif FLOW_COLUMNS.get(k) == "f8":
            values.append([repr(round(v, 6)) for v in col.tolist()])
        else:
            values.append(col.tolist())
    w.writerows(zip(*values))


def write_parquet(frame: FeatureFrame, path: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("--format parquet needs pyarrow (the parquet extra)") from None
    cols = {k: v.tolist() if v.dtype == object else v for k, v in frame.cols.items()}
    table = pa.table(cols)
    pq.write_table(table, path)
