"""Memory per live flow: how flowsense's resident memory grows with the flows it holds.

Two captures hold N1 and N2 TCP flows that are all still open at the end. In a full run N1 is the
default table's capacity and N2 four times that (a capacity the table grows to), so that the table
is full in both and the slope is free of half-empty growth steps; ``--quick`` uses a quarter of
the default capacity and the capacity itself. Bytes per flow is
(RSS growth at N2 - RSS growth at N1) / (N2 - N1): constant costs (interpreter, compiled code,
buffers) cancel out. Each figure is the median of a few fresh processes.

- ``table``: every packet fed, no flow ended, nothing exported: the table itself at load.
- ``compute``: a whole ``compute_flows`` call: its peak (table plus exported feature frames)
  and what stays resident with the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import fs_api, measure

WARM_FLOWS = 1_000
TARGET_BYTES = 2_048
DATA = Path(__file__).resolve().parent / "data"


def _median_run(
    path: str, warm: str, phase: str, repeats: int, idle_s: int, active_s: int
) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        r = measure.worker(
            "flowsense-memory", path, idle_s, active_s, warm_capture=warm, extra=["--phase", phase]
        )
        r["growth_kib"] = r["rss_after_kib"] - r["rss_before_kib"]
        r["anon_growth_kib"] = r["anon_after_kib"] - r["anon_before_kib"]
        r["peak_growth_kib"] = r["peak_kib"] - r["rss_before_kib"]
        runs.append(r)
    runs.sort(key=lambda r: r["growth_kib"])
    return runs[len(runs) // 2]


def _slope(rows: list[dict[str, Any]], key: str) -> int:
    """Bytes per flow between the two sizes."""
    d_kib = rows[1][key] - rows[0][key]
    return round(d_kib * 1024 / (rows[1]["flows"] - rows[0]["flows"]))


def measure_memory(
    mode: str,
    repeats: int,
    seed: int,
    idle_s: int,
    active_s: int,
    phases: tuple[str, ...] = ("table", "compute"),
) -> dict[str, Any]:
    """Both phases at both sizes; ``bytes_per_flow`` is the table phase's slope (or, if that
    phase cannot run, the compute phase's peak slope)."""
    cap = fs_api.initial_capacity()
    sizes = (cap, 4 * cap) if mode == "full" else (cap // 4, cap)
    warm = str(DATA / f"live-{WARM_FLOWS}.pcap")
    measure.ensure_capture(warm, live_flows=WARM_FLOWS, seed=seed)
    paths = []
    for n in sizes:
        paths.append(str(DATA / f"live-{n}.pcap"))
        measure.ensure_capture(paths[-1], live_flows=n, seed=seed)
    out: dict[str, Any] = {
        "flows_expected": list(sizes),
        "repeats": repeats,
        "target_bytes": TARGET_BYTES,
    }
    for phase in phases:
        try:
            rows = [_median_run(p, warm, phase, repeats, idle_s, active_s) for p in paths]
        except measure.MeasureError as e:
            out[phase] = {"error": str(e)}
            continue
        res: dict[str, Any] = {
            "flows": [r["flows"] for r in rows],
            "table_capacity": [r["table_capacity"] for r in rows],
            "rss_before_kib": [r["rss_before_kib"] for r in rows],
            "growth_kib": [r["growth_kib"] for r in rows],
            "anon_growth_kib": [r["anon_growth_kib"] for r in rows],
            "peak_growth_kib": [r["peak_growth_kib"] for r in rows],
            "peak_reset": all(r["peak_reset"] for r in rows),
        }
        res["table_full"] = [r["flows"] == r["table_capacity"] for r in rows]
        if res["flows"] != list(sizes):
            res["error"] = f"flowsense holds {res['flows']} flows; the captures have {list(sizes)}"
        else:
            res["bytes_per_flow"] = _slope(rows, "growth_kib")
            # anonymous memory alone: RSS also counts any pages of the memory-mapped capture
            res["bytes_per_flow_anon"] = _slope(rows, "anon_growth_kib")
            res["bytes_per_flow_peak"] = _slope(rows, "peak_growth_kib")
        out[phase] = res
        measure.log(f"memory ({phase}): {res.get('bytes_per_flow', res.get('error'))} B per flow")
    for phase, key in (("table", "bytes_per_flow"), ("compute", "bytes_per_flow_peak")):
        if key in out.get(phase, {}):
            out.update(bytes_per_flow=out[phase][key], basis=f"{phase}.{key}")
            out["met"] = out["bytes_per_flow"] <= TARGET_BYTES
            break
    else:
        out["error"] = (
            "; ".join(
                str(out.get(p, {}).get("error", "")).splitlines()[0]
                for p in ("table", "compute")
                if out.get(p, {}).get("error")
            )
            or "no figure"
        )
    return out
