"""Flow record writers: the numba JSON-lines writer against its Python twin, CSV escaping."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from flowsense.config import Config
from flowsense.encoding import wire_text
from flowsense.pipeline import compute_flows
from flowsense.report.flows import _jsonl_bytes, write_csv, write_jsonl, write_jsonl_python
from tests.conftest import manifest_files

REPO = Path(__file__).resolve().parents[1]
SHORT = Config().with_timeouts(idle_s=2.0, active_s=20.0)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) or isinstance(b[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=2e-6), k  # last-digit rounding
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("name", manifest_files())
def test_kernel_jsonl_equals_python_twin(corpus: Path, name: str) -> None:
    frame = compute_flows([str(corpus / name)], SHORT).frame
    if frame.n == 0:
        return
    data = _jsonl_bytes(frame)
    assert data is not None, "every corpus frame is plain enough for the kernel writer"
    fast = [json.loads(x) for x in bytes(data).decode().splitlines()]
    slow_io = io.StringIO()
    write_jsonl_python(frame, slow_io)
    slow = [json.loads(x) for x in slow_io.getvalue().splitlines()]
    assert len(fast) == len(slow) == frame.n
    for a, b in zip(fast, slow):
        _same(a, b)


def test_kernel_writer_extremes_and_fallback() -> None:
    frame = compute_flows([str(REPO / "pcaps" / "corpus" / "ndpi-dns.pcap")]).frame
    n = frame.n
    frame.cols["src_port"] = np.array([-(2**63), 2**63 - 1][:n], dtype=np.int64)
    frame.cols["bidirectional_mean_ps"] = np.array([0.1 + 0.2, -1234.0000004][:n])
    out = io.StringIO()
    write_jsonl(frame, out)
    recs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["src_port"] for r in recs] == [-(2**63), 2**63 - 1][:n]
    assert [r["bidirectional_mean_ps"] for r in recs] == [0.3, -1234.0][:n]
    # a text cell that would need escaping goes through the Python twin, escaped by json
    frame.cols["app_proto"] = np.array(['say "hi"\\', wire_text(b"\x1b[31m\xff")][:n], dtype=object)
    assert _jsonl_bytes(frame) is None
    out = io.StringIO()
    write_jsonl(frame, out)
    recs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert recs[0]["app_proto"] == 'say "hi"\\'
    assert recs[1]["app_proto"] == "\\x1b[31m\\xff"


def test_csv_cells_never_start_a_formula() -> None:
    frame = compute_flows([str(REPO / "pcaps" / "corpus" / "ndpi-dns.pcap")]).frame
    frame.cols["app_proto"] = np.array(["=cmd|' /C calc'!A0", "@SUM(1)"][: frame.n], dtype=object)
    out = io.StringIO()
    write_csv(frame, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["app_proto"] for r in rows] == ["'=cmd|' /C calc'!A0", "'@SUM(1)"][: frame.n]
