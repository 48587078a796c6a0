"""Throughput of flowsense against dpkt and nfstream, in one run on one capture.

    python -m benchmarks.run                      # 2M-packet capture, 5 runs, results/latest.json
    python -m benchmarks.run --quick              # 50k packets, 3 runs, well under a minute
    python -m benchmarks.run --update-readme      # and rewrite the README's results section

Every measurement runs in its own child process, and the tools take turns within each run (the
order rotates from run to run) so that a noisy neighbour slows them alike. Speed is only ever
reported as ratios between tools measured in the same invocation. Exits 1 if a tool failed or the
flow counts disagree (the capture is built so that they must agree exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import fs_api, measure, report, sysinfo
from benchmarks import memory as mem
from benchmarks.workers import NFSTREAM_JOB

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IDLE_S, ACTIVE_S = 3_600, 7_200  # long enough that no timeout fires in a 90 s capture
FULL_PACKETS, QUICK_PACKETS = 2_000_000, 50_000
# (name, measured row, reference row, target ratio)
TARGETS = [
    ("flowsense steady state vs nfstream", "flowsense_steady", "nfstream", 15),
    (
        "flowsense whole process (warm cache) vs nfstream whole process",
        "flowsense_process_warm",
        "nfstream_process",
        5,
    ),
]
NFSTREAM_SETTINGS = {**NFSTREAM_JOB, "idle_timeout": IDLE_S, "active_timeout": ACTIVE_S}


log = measure.log


def flowsense_problem() -> str | None:
    """Why flowsense cannot be benchmarked (it cannot be imported), or None."""
    r = subprocess.run(
        [sys.executable, "-c", "import flowsense.pipeline, flowsense.config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]


def measure_speed(
    capture: str, runs: int, cold_runs: int, with_flowsense: bool
) -> tuple[dict, dict, dict]:
    """(seconds per row, flow counts per tool, errors per row) over ``runs`` interleaved runs."""
    times: dict[str, list[float]] = {k: [] for k, *_ in report.ROWS}
    counts: dict[str, set[int]] = {}
    errors: dict[str, str] = {}
    extra: dict[str, list[float]] = {"flowsense_warmup_s": [], "detector_cost": []}
    tools = ["dpkt", "nfstream"] + (["flowsense-steady", "flowsense-cli"] if with_flowsense else [])
    warm_cache = None
    tmp_dirs: list[str] = []
    try:
        if with_flowsense:
            # The cold start goes first: its fresh cache is then the warm cache of the later runs.
            for i in range(cold_runs):
                warm_cache = tempfile.mkdtemp(prefix="flowsense-numba-")
                tmp_dirs.append(warm_cache)
                out = os.path.join(warm_cache, "flows.jsonl")
                try:
                    r = measure.flowsense_cli(capture, IDLE_S, ACTIVE_S, warm_cache, out)
                except measure.MeasureError as e:
                    errors["flowsense_process_cold"] = errors["flowsense_process_warm"] = str(e)
                    tools.remove("flowsense-cli")
                    break
                os.remove(out)
                times["flowsense_process_cold"].append(r["seconds"])
                counts.setdefault("flowsense_cli", set()).add(r["flows"])
                log(f"cold start {i + 1}/{cold_runs}: {r['seconds']:.2f} s, {r['flows']} flows")
        for run in range(runs):
            k = run % len(tools)
            for tool in tools[k:] + tools[:k]:
                try:
                    _one(tool, capture, warm_cache, times, counts, extra)
                except measure.MeasureError as e:
                    for key in _ROWS_OF[tool]:
                        errors[key] = str(e)
                    log(f"run {run + 1}/{runs}: {tool} FAILED:\n{e}")
                    tools.remove(tool)
                    continue
                log(f"run {run + 1}/{runs}: {tool} {times[_ROWS_OF[tool][0]][-1]:.2f} s")
    finally:
        for d in tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)
    times.update(extra)
    return times, counts, errors


_ROWS_OF = {
    "dpkt": ["dpkt"],
    "nfstream": ["nfstream", "nfstream_process"],
    "flowsense-steady": ["flowsense_steady"],
    "flowsense-cli": ["flowsense_process_warm"],
}


def _one(
    tool: str, capture: str, warm_cache: str | None, times: dict, counts: dict, extra: dict
) -> None:
    """One timed run of one tool, appended to ``times`` and ``counts``."""
    if tool == "flowsense-cli":
        r = measure.flowsense_cli(capture, IDLE_S, ACTIVE_S, warm_cache or tempfile.gettempdir())
        times["flowsense_process_warm"].append(r["seconds"])
        return
    r = measure.worker(tool, capture, IDLE_S, ACTIVE_S)
    key = _ROWS_OF[tool][0]
    times[key].append(r["seconds"])
    counts.setdefault(key, set()).add(r["flows"])
    if tool == "nfstream":
        times["nfstream_process"].append(r["wall_seconds"])
    if tool == "flowsense-steady":
        extra["flowsense_warmup_s"].append(r["warmup_seconds"])
        if r.get("plain_seconds"):
            extra["detector_cost"].append(r["detect_seconds"] / r["plain_seconds"] - 1)
        if r.get("packets") is not None:
            counts.setdefault("flowsense_packets", set()).add(r["packets"])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split(".")[0])
    ap.add_argument("--quick", action="store_true", help="50k-packet capture, 3 runs")
    ap.add_argument("--capture", help="capture to measure (generated if missing; default by mode)")
    ap.add_argument("--packets", type=int, help="packets when generating the capture")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, help="timed runs per tool (default 5, quick 3)")
    ap.add_argument("--cold-runs", type=int, default=1, help="first starts, empty numba cache")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-per-flow probe")
    ap.add_argument("--out", help="result JSON (default results/latest.json or quick.json)")
    ap.add_argument("--update-readme", action="store_true", help="rewrite README's results")
    return ap.parse_args(argv)


def _summarise(
    times: dict, counts: dict, errors: dict, meta: dict | None, packets: int
) -> tuple[dict, dict]:
    """(per-row statistics, flow counts per tool with ``agree``)."""
    results: dict[str, Any] = {}
    for key, *_ in report.ROWS:
        if times[key]:
            results[key] = measure.summarise(times[key], packets)
        else:
            results[key] = {"error": errors.get(key, "not measured")}
    if times["flowsense_warmup_s"]:
        results["flowsense_steady"]["warmup_s"] = [round(s, 3) for s in times["flowsense_warmup_s"]]
    if times.get("detector_cost"):
        costs = sorted(times["detector_cost"])
        results["detector_cost"] = {"median": round(costs[len(costs) // 2], 4),
                                    "runs": [round(c, 4) for c in costs],
                                    "detectors": fs_api.detector_names()}

    flow_counts: dict[str, Any] = {"expected": meta["flows"] if meta else None}
    for tool, seen in counts.items():
        if tool != "flowsense_packets":
            flow_counts[tool] = sorted(seen)[0] if len(seen) == 1 else sorted(seen)
    found = [v for v in flow_counts.values() if v is not None]
    flow_counts["agree"] = all(v == found[0] for v in found) and "flowsense_steady" in flow_counts
    packets_seen = sorted(counts.get("flowsense_packets", []))
    if meta and packets_seen and packets_seen != [meta["packets"]]:
        errors["flowsense_packets"] = f"flowsense read {packets_seen} packets of {meta['packets']}"
    return results, flow_counts


def _targets(results: dict) -> list[dict[str, Any]]:
    out = []
    for name, row, ref, target in TARGETS:
        a, b = results[row].get("median_s"), results[ref].get("median_s")
        ratio = round(b / a, 2) if a and b else None
        out.append(
            {
                "name": name,
                "row": row,
                "reference": ref,
                "target": target,
                "ratio": ratio,
                "met": ratio is not None and ratio >= target,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mode = "quick" if args.quick else "full"
    capture = args.capture or str(HERE / "data" / ("quick.pcap" if args.quick else "mixed.pcap"))
    runs = args.runs or (3 if args.quick else 5)
    out = args.out or str(HERE / "results" / ("quick.json" if args.quick else "latest.json"))
    packets = args.packets or (QUICK_PACKETS if args.quick else FULL_PACKETS)
    meta = measure.ensure_capture(capture, packets=packets, seed=args.seed)

    sources_before = sysinfo.source_digest(str(REPO / "flowsense"))
    problem = flowsense_problem()
    if problem:
        log(f"flowsense cannot be benchmarked: {problem}")
    times, counts, errors = measure_speed(capture, runs, args.cold_runs, problem is None)
    if problem:
        for key in ("flowsense_steady", "flowsense_process_warm", "flowsense_process_cold"):
            errors[key] = f"flowsense unavailable: {problem}"
    # Packets per second need the packet count: the sidecar's, else what flowsense read.
    n_packets = meta["packets"] if meta else max(counts.get("flowsense_packets", [0]))
    results, flow_counts = _summarise(times, counts, errors, meta, n_packets)

    memory: dict[str, Any] = {}
    if not args.no_memory:
        try:
            if problem:
                raise measure.MeasureError(f"flowsense unavailable: {problem}")
            memory = mem.measure_memory(mode, 1 if args.quick else 3, args.seed, IDLE_S, ACTIVE_S)
        except measure.MeasureError as e:
            memory = {"error": str(e)}
        if memory.get("error"):
            errors["memory"] = memory["error"]

    # Someone editing flowsense mid-run mixes versions and invalidates numba's cache: say so.
    sources_after = sysinfo.source_digest(str(REPO / "flowsense"))
    if sources_after != sources_before:
        errors["flowsense_sources"] = "flowsense changed during the run: figures mix versions"
    # Figures worth quoting: the full capture, enough runs, every tool measured, counts equal.
    conforming = not args.quick and runs >= 5 and not errors and flow_counts["agree"]

    res = {
        "schema": 1,
        "mode": mode,
        "conforming": conforming,
        "date": sysinfo.now(),
        "git": {**sysinfo.git(str(REPO)), "flowsense_sources": sources_after},
        "machine": sysinfo.machine(),
        "versions": sysinfo.versions(),
        "capture": {
            "path": os.path.relpath(capture, REPO),
            "bytes": os.path.getsize(capture),
            "packets": n_packets,
            "flows": meta["flows"] if meta else None,
            "max_concurrent_flows": meta.get("max_concurrent_flows") if meta else None,
            "sidecar": meta,
        },
        "settings": {
            "runs": runs,
            "cold_runs": args.cold_runs,
            "idle_timeout_s": IDLE_S,
            "active_timeout_s": ACTIVE_S,
            "nfstream": NFSTREAM_SETTINGS,
            "flowsense_cli": " ".join(
                fs_api.cli_command("python", "CAPTURE", IDLE_S, ACTIVE_S, os.devnull)
            ),
        },
        "results": results,
        "targets": _targets(results),
        "memory": memory,
        "flow_counts": flow_counts,
        "errors": errors,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out + ".tmp", "w") as fh:
        json.dump(res, fh, indent=2)
        fh.write("\n")
    os.replace(out + ".tmp", out)

    section = report.markdown(res)
    print(section)
    if args.update_readme:
        if conforming:
            report.update_readme(str(HERE / "README.md"), section)
            log("README results section updated")
        else:
            log("not a conforming run (quick, < 5 runs, an error, unequal counts): README kept")
    if not flow_counts["agree"]:
        shown = {k: v for k, v in flow_counts.items() if k != "agree"}
        log(f"FLOW COUNTS DISAGREE: {json.dumps(shown)}")
    for key, err in errors.items():
        log(f"ERROR {key}: {err.splitlines()[0]}")
    log(f"wrote {out}")
    return 0 if flow_counts["agree"] and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
