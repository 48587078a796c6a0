"""Flow records out: JSON lines, CSV, Parquet (pyarrow)."""

from __future__ import annotations

import csv
import json
from typing import TextIO

import numpy as np

from flowsense.encoding import csv_cell
from flowsense.errors import ConfigError
from flowsense.flows.features import FeatureFrame
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
