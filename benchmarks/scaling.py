"""Scaling: throughput and memory against concurrent flows, packet-size mix, capture size and
cores; and what each detector costs on a capture where it has work to do.

Every capture is generated from the seed (``gen_capture``): ``live-N`` holds N TCP flows all open
at the end (the table holds N at once), ``mix-<size>-<packets>`` the realistic mix at another
packet-size mix, ``mixed-<packets>`` the realistic mix at another length. flowsense is measured in
one worker process per capture (``workers.flowsense_scale``: warm, then one timed pass whose peak
RSS growth is the memory the flows cost); nfstream, pinned as in the main table, beside it where
it takes seconds rather than minutes.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import fs_api, measure

DATA = Path(__file__).resolve().parent / "data"
LIVE_FULL = [1_000, 16_384, 65_536, 262_144, 1_048_576]
LIVE_QUICK = [1_000, 16_384]
NFSTREAM_MAX_PACKETS = 1_500_000  # beyond this, nfstream's minute is not worth the point
SIZE_MIXES = ["small", "default", "large"]
log = measure.log


def _warm(seed: int) -> str:
    path = str(DATA / "live-1000.pcap")
    measure.ensure_capture(path, live_flows=1_000, seed=seed)
    return path


def _fs_point(path: str, meta: dict, warm: str, idle_s: int, active_s: int) -> dict[str, Any]:
    r = measure.worker("flowsense-scale", path, idle_s, active_s, warm_capture=warm)
    pkts = meta["packets"]
    return {
        "seconds": round(r["seconds"], 4),
        "pps": round(pkts / r["seconds"]),
        "gbit_s": round(meta["bytes"] * 8 / r["seconds"] / 1e9, 3),
        "flows": r["flows"],
        "flows_expected": meta["flows"],
        "peak_growth_kib": r["peak_growth_kib"],
        "peak_bytes_per_flow": round(r["peak_growth_kib"] * 1024 / max(r["flows"], 1)),
    }


def _nf_point(path: str, meta: dict, idle_s: int, active_s: int) -> dict[str, Any] | None:
    if meta["packets"] > NFSTREAM_MAX_PACKETS:
        return None
    r = measure.worker("nfstream", path, idle_s, active_s)
    return {
        "seconds": round(r["seconds"], 4),
        "process_seconds": round(r["wall_seconds"], 4),
        "pps": round(meta["packets"] / r["seconds"]),
        "flows": r["flows"],
    }


def _point(
    path: str, meta: dict, warm: str, idle_s: int, active_s: int, with_nf: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "capture": os.path.basename(path),
        "packets": meta["packets"],
        "bytes": meta["bytes"],
        "mean_frame_bytes": meta["frame_bytes"]["mean"],
        "max_concurrent_flows": meta["max_concurrent_flows"],
    }
    for tool, fn in (
        ("flowsense", lambda: _fs_point(path, meta, warm, idle_s, active_s)),
        ("nfstream", lambda: _nf_point(path, meta, idle_s, active_s) if with_nf else None),
    ):
        try:
            res = fn()
        except measure.MeasureError as e:
            res = {"error": str(e).splitlines()[0]}
        if res is not None:
            out[tool] = res
    fs = out.get("flowsense", {})
    if "seconds" in fs and "seconds" in out.get("nfstream", {}):
        out["x_nfstream"] = round(out["nfstream"]["seconds"] / fs["seconds"], 2)
    log(f"scaling {out['capture']}: flowsense {fs.get('pps', fs.get('error'))} packets/s")
    return out


def concurrent_flows(
    quick: bool, seed: int, idle_s: int, active_s: int, with_nf: bool
) -> list[dict]:
    warm = _warm(seed)
    rows = []
    for n in LIVE_QUICK if quick else LIVE_FULL:
        path = str(DATA / f"live-{n}.pcap")
        meta = measure.ensure_capture(path, live_flows=n, seed=seed)
        rows.append({"live_flows": n, **_point(path, meta, warm, idle_s, active_s, with_nf)})
    return rows


def size_mix(quick: bool, seed: int, idle_s: int, active_s: int, with_nf: bool) -> list[dict]:
    warm = _warm(seed)
    packets = 20_000 if quick else 500_000
    rows = []
    for mix in SIZE_MIXES:
        name = f"mixed-{packets}.pcap" if mix == "default" else f"mix-{mix}-{packets}.pcap"
        path = str(DATA / name)
        meta = measure.ensure_capture(path, packets=packets, seed=seed, size_mix=mix)
        rows.append({"size_mix": mix, **_point(path, meta, warm, idle_s, active_s, with_nf)})
    return rows


def capture_size(
    quick: bool, seed: int, idle_s: int, active_s: int, with_nf: bool, main: dict[str, Any]
) -> list[dict]:
    """Whole-process time of ``flowsense flows`` (warm cache) and of nfstream on captures of the
    realistic mix at several lengths; the main capture's row comes from the main table."""
    rows = []
    for n in [5_000] if quick else [50_000, 500_000]:
        path = str(DATA / ("quick.pcap" if n == 50_000 else f"mixed-{n}.pcap"))
        meta = measure.ensure_capture(path, packets=n, seed=seed)
        row: dict[str, Any] = {"packets": n, "bytes": meta["bytes"]}
        try:
            fs = measure.flowsense_cli(
                path, idle_s, active_s, None, jobs=fs_api.one_core(sys.executable)
            )
            row["flowsense_process_s"] = round(fs["seconds"], 4)
            if with_nf:
                nf = measure.worker("nfstream", path, idle_s, active_s)
                row["nfstream_process_s"] = round(nf["wall_seconds"], 4)
        except measure.MeasureError as e:
            row["error"] = str(e).splitlines()[0]
        rows.append(row)
    fs_main = main.get("flowsense_process_warm", {}).get("median_s")
    nf_main = main.get("nfstream_process", {}).get("median_s")
    if fs_main:
        rows.append(
            {
                "packets": main["_packets"],
                "bytes": main["_bytes"],
                "flowsense_process_s": fs_main,
                **({"nfstream_process_s": nf_main} if nf_main else {}),
                "from": "main table (medians)",
            }
        )
    for r in rows:
        for k in ("flowsense", "nfstream"):
            if r.get(f"{k}_process_s"):
                r[f"{k}_pps"] = round(r["packets"] / r[f"{k}_process_s"])
    return rows


def cores(capture: str, runs: int, idle_s: int, active_s: int, packets: int) -> dict[str, Any]:
    """``flowsense flows --jobs N`` whole process for N = 1 .. usable cores, if the flag exists."""
    if not fs_api.has_jobs_flag(sys.executable):
        return {"skipped": "this flowsense has no --jobs flag (multi-core scale-out not merged)"}
    n_cores = len(os.sched_getaffinity(0))
    out: dict[str, Any] = {"cores": n_cores, "rows": []}
    try:
        for jobs in range(1, n_cores + 1):
            secs = [
                measure.flowsense_cli(capture, idle_s, active_s, None, jobs=jobs)["seconds"]
                for _ in range(runs)
            ]
            out["rows"].append({"jobs": jobs, **measure.summarise(secs, packets)})
            log(f"cores: --jobs {jobs}: {out['rows'][-1]['median_s']:.2f} s")
    except measure.MeasureError as e:
        out["error"] = str(e).splitlines()[0]
    return out


def detectors(capture: str, repeats: int, idle_s: int, active_s: int) -> dict[str, Any]:
    """Each detector alone and all together against the bare pipeline (``workers``)."""
    extra = ["--repeats", str(repeats)]
    try:
        r = measure.worker("flowsense-detectors", capture, idle_s, active_s, extra=extra)
    except measure.MeasureError as e:
        return {"error": str(e).splitlines()[0]}
    base = r["configs"]["none"]["median_s"]
    for cfg in r["configs"].values():
        cfg["extra_pct"] = round((cfg["median_s"] / base - 1) * 100, 1)
    r["capture"] = os.path.basename(capture)
    if "stratum+pools" in r["configs"]:
        r["fresh_process"] = fresh_passes(capture, repeats, idle_s, active_s)
    return r


FRESH_LABELS = ("none", "stratum+pools")


def fresh_passes(capture: str, rounds: int, idle_s: int, active_s: int) -> dict[str, Any]:
    """Issue 4's figure, Stratum and pools over the bare pipeline, one timed pass a fresh
    process after one untimed pass over the same capture, as the steady row times compute_flows
    (``workers flowsense-detector-pass``; a warm-up on a small capture left kernels and code
    paths to load in the timed pass: +16% where this gives +7.5%). ``rounds`` rounds, each
    running both in turn (the order reversed every other round). Wall and CPU time: medians,
    the extra by medians, by the median of the rounds' own ratios and by the fastest passes."""
    runs: dict[str, dict[str, list[float]]] = {
        label: {"seconds": [], "cpu_seconds": []} for label in FRESH_LABELS}
    try:
        for k in range(rounds):
            for label in FRESH_LABELS if k % 2 == 0 else FRESH_LABELS[::-1]:
                r = measure.worker("flowsense-detector-pass", capture, idle_s, active_s,
                                   warm_capture=capture, extra=["--detectors", label])
                for key in ("seconds", "cpu_seconds"):
                    runs[label][key].append(r[key])
    except measure.MeasureError as e:
        return {"error": str(e).splitlines()[0]}
    out: dict[str, Any] = {"rounds": rounds}
    for key in ("seconds", "cpu_seconds"):  # wall time, and CPU time (host steal excluded)
        base, both = runs["none"][key], runs["stratum+pools"][key]
        out[key] = {
            "runs": {label: sorted(runs[label][key]) for label in FRESH_LABELS},
            "median": {label: statistics.median(runs[label][key]) for label in FRESH_LABELS},
            "extra_pct": round(100 * (statistics.median(both) / statistics.median(base) - 1), 1),
            "paired_extra_pct": measure.paired_extra_pct(base, both),
            "fastest_extra_pct": round(100 * (min(both) / min(base) - 1), 1),
        }
    return out
