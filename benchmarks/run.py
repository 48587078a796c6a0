"""The benchmark suite in one command: throughput against the peers, scaling, detector cost,
accuracy; JSON, a Markdown summary and PNG plots.

    python -m benchmarks.run                   # full: 2M-packet capture, 5 runs, results/
    python -m benchmarks.run --quick           # small captures, 1 run, under a minute
    python -m benchmarks.run --update-readme   # full, then rewrite every published figure

Every measurement runs in its own child process, and the tools take turns within each run (the
order rotates from run to run) so that a noisy neighbour slows them alike. Speed is only ever
reported as ratios between tools measured in the same invocation. Exits 1 if a tool failed or the
flow counts disagree (the capture is built so that they must agree exactly); a peer that is not
installed is skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import accuracy, fs_api, measure, peers, plots, report, scaling, speed, sysinfo
from benchmarks import memory as mem
from benchmarks.workers import NFSTREAM_JOB

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IDLE_S, ACTIVE_S = 3_600, 7_200  # long enough that no timeout fires in a 90 s capture
FULL_PACKETS, QUICK_PACKETS = 2_000_000, 50_000
TINY_PACKETS = 20  # the start-up capture: the main capture's first packets
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split(".")[0])
    ap.add_argument("--quick", action="store_true", help="small captures, 1 run: a smoke test")
    ap.add_argument("--capture", help="main capture (generated if missing; default by mode)")
    ap.add_argument("--packets", type=int, help="packets when generating the main capture")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, help="timed runs per tool (default 5, quick 1)")
    ap.add_argument("--cold-runs", type=int, help="first starts, empty numba cache (1, quick 0)")
    ap.add_argument("--tshark-runs", type=int, help="tshark's runs (default 1: a minute each)")
    ap.add_argument("--scapy-packets", type=int, help="scapy's subsample (20,000, quick 2,000)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-per-flow probe")
    ap.add_argument("--no-scaling", action="store_true", help="skip scaling and detector cost")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the accuracy table")
    ap.add_argument(
        "--out-dir", help="where JSON, summary and plots go (results/, quick: results/quick/)"
    )
    ap.add_argument("--update-readme", action="store_true", help="rewrite the READMEs' figures")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: redraw summary, plots (and READMEs) from the out dir's JSON",
    )
    return ap.parse_args(argv)


def _summarise(sp: speed.Speed, meta: dict | None, packets: int) -> tuple[dict, dict]:
    """(per-row statistics, flow counts per tool with ``agree``)."""
    times, counts, errors = sp.times, sp.counts, sp.errors
    times["scapy"] = [s * packets / max(n, 1) for s, n in sp.extra.get("scapy_raw", [])]
    results: dict[str, Any] = {}
    for key, *_ in report.ROWS:
        if times.get(key):
            results[key] = measure.summarise(times[key], packets)
        else:
            results[key] = {"error": errors.get(key, "not measured")}
    if sp.extra.get("scapy_raw"):
        results["scapy"]["subsample"] = sp.extra["scapy_raw"]
        results["scapy"]["extrapolated"] = True
    if sp.extra["flowsense_warmup_s"]:
        results["flowsense_steady"]["warmup_s"] = [
            round(x, 3) for x in sp.extra["flowsense_warmup_s"]
        ]
        results["flowsense_steady"]["import_s"] = [
            round(x, 3) for x in sp.extra["flowsense_import_s"]
        ]
        results["flowsense_steady"]["alerts"] = sp.extra.get("flowsense_alerts")
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


def _peer_counts(sp: speed.Speed, meta: dict | None) -> dict[str, Any]:
    """What the unpinned peers counted, beside what they should find (not asserted: their jobs
    differ), and the scapy subsample against dpkt on the same packets (asserted)."""
    out = dict(sp.peer_counts)
    if meta:
        by = meta["flows_by_protocol"]
        out["expected_tcp_udp"] = by["tcp"] + by["udp"]
        out["expected"] = meta["flows"]
    return out


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


def _versions() -> dict[str, Any]:
    v = sysinfo.versions()
    v["tshark"] = peers.version("tshark")
    v["ndpiReader"] = peers.version("ndpi")
    return v


def _scaling(
    args: argparse.Namespace,
    quick: bool,
    capture: str,
    runs: int,
    results: dict,
    meta: dict | None,
    with_nf: bool,
) -> dict[str, Any]:
    main_rows = {
        **results,
        "_packets": meta["packets"] if meta else 0,
        "_bytes": os.path.getsize(capture),
    }
    out: dict[str, Any] = {}
    steps = {
        "concurrent_flows": lambda: scaling.concurrent_flows(
            quick, args.seed, IDLE_S, ACTIVE_S, with_nf
        ),
        "size_mix": lambda: scaling.size_mix(quick, args.seed, IDLE_S, ACTIVE_S, with_nf),
        "capture_size": lambda: scaling.capture_size(
            quick, args.seed, IDLE_S, ACTIVE_S, with_nf, main_rows
        ),
        "cores": lambda: scaling.cores(
            capture, min(runs, 3), IDLE_S, ACTIVE_S, main_rows["_packets"]
        ),
        "detectors": lambda: scaling.detectors(capture, 1 if quick else 7, IDLE_S, ACTIVE_S),
    }
    for name, fn in steps.items():
        try:
            out[name] = fn()
        except (measure.MeasureError, OSError, subprocess.SubprocessError) as e:
            out[name] = {"error": str(e).splitlines()[0]}
    return out


def publish(res: dict[str, Any], out_dir: Path, update_readme: bool) -> None:
    """Plots, ``latest.json``, ``summary.md`` and, from a conforming run into ``results/``,
    the READMEs' figures."""
    res["plots"] = plots.write_all(res, out_dir)
    json_path = out_dir / "latest.json"
    with open(str(json_path) + ".tmp", "w") as fh:
        json.dump(res, fh, indent=2)
        fh.write("\n")
    os.replace(str(json_path) + ".tmp", json_path)
    summary = report.markdown(res)
    (out_dir / "summary.md").write_text(report.standalone(res, summary))
    print(summary)
    if update_readme:
        if res["conforming"] and out_dir == HERE / "results":
            report.update_readme(str(HERE / "README.md"), report.readme_section(res, summary))
            report.update_main_readme(str(REPO / "README.md"), res)
            log("README figures updated")
        else:
            log(
                "not a conforming run (quick, < 5 runs, an error, unequal counts, another "
                "capture or output folder): README kept"
            )
    log(f"wrote {json_path}, {out_dir / 'summary.md'} and {len(res['plots'])} plots")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    quick = args.quick
    if args.render_only:
        out_dir = Path(args.out_dir or (HERE / "results" / "quick" if quick else HERE / "results"))
        publish(json.loads((out_dir / "latest.json").read_text()), out_dir, args.update_readme)
        return 0
    mode = "quick" if quick else "full"
    capture = args.capture or str(HERE / "data" / ("quick.pcap" if quick else "mixed.pcap"))
    runs = args.runs or (1 if quick else 5)
    cold_runs = args.cold_runs if args.cold_runs is not None else (0 if quick else 1)
    out_dir = Path(args.out_dir or (HERE / "results" / "quick" if quick else HERE / "results"))
    packets = args.packets or (QUICK_PACKETS if quick else FULL_PACKETS)
    meta = measure.ensure_capture(capture, packets=packets, seed=args.seed)
    started = sysinfo.now()
    load_at_start = sysinfo.machine()["load_avg_1_5_15"]

    sources_before = sysinfo.source_digest(str(REPO / "flowsense"))
    problem = flowsense_problem()
    if problem:
        log(f"flowsense cannot be benchmarked: {problem}")
    settings = {
        "idle_s": IDLE_S,
        "active_s": ACTIVE_S,
        "scapy_limit": args.scapy_packets or (2_000 if quick else 20_000),
        "tshark_runs": args.tshark_runs or 1,
    }
    clock = [time.monotonic()]
    sections: dict[str, float] = {}

    def lap(name: str) -> None:  # wall seconds per section: what a full run's budget goes to
        now = time.monotonic()
        sections[name] = round(now - clock[0], 1)
        clock[0] = now

    sp, skipped = speed.measure_speed(capture, runs, cold_runs, problem is None, settings)
    lap("throughput")
    errors = sp.errors
    if problem:
        for key in speed.ALL_ROWS:
            if key.startswith("flowsense"):
                errors[key] = f"flowsense unavailable: {problem}"
    if not cold_runs:
        skipped["flowsense-cold"] = "no cold start measured (--cold-runs 0; --quick's default)"
    n_packets = meta["packets"] if meta else max(sp.counts.get("flowsense_packets", [0]))
    results, flow_counts = _summarise(sp, meta, n_packets)
    tools = [t for t in ("dpkt", "nfstream", "tshark", "ndpi") if t not in skipped]
    tools += [] if problem else ["flowsense-cli"]
    name = f"head{TINY_PACKETS}-{os.path.basename(capture)}"
    tiny = measure.head_capture(capture, str(HERE / "data" / name), TINY_PACKETS)
    start_up = speed.startup(tiny, TINY_PACKETS, 1 if quick else 3, IDLE_S, ACTIVE_S, tools)
    start_up["python"] = speed.python_startup()

    lap("startup")
    memory: dict[str, Any] = {}
    if not args.no_memory:
        try:
            if problem:
                raise measure.MeasureError(f"flowsense unavailable: {problem}")
            # the table at its load; a whole compute_flows call's peak is in the scaling table
            memory = mem.measure_memory(
                mode, 1 if quick else 3, args.seed, IDLE_S, ACTIVE_S, ("table",)
            )
        except measure.MeasureError as e:
            memory = {"error": str(e)}
        if memory.get("error"):
            errors["memory"] = memory["error"]
    lap("memory")
    scale: dict[str, Any] = {}
    if not args.no_scaling and not problem:
        # nfstream beside flowsense in the scaling tables: full runs only (quick stays quick)
        with_nf = "nfstream" not in skipped and not quick
        scale = _scaling(args, quick, capture, runs, results, meta, with_nf)
    lap("scaling")
    acc: dict[str, Any] = {}
    if not args.no_accuracy and not problem:
        try:
            acc = accuracy.evaluate(bundled_only=quick)
        except (measure.MeasureError, OSError, ValueError) as e:
            acc = {"error": str(e).splitlines()[0]}
            errors["accuracy"] = acc["error"]

    lap("accuracy")
    # Someone editing flowsense mid-run mixes versions and invalidates numba's cache: say so.
    sources_after = sysinfo.source_digest(str(REPO / "flowsense"))
    if sources_after != sources_before:
        errors["flowsense_sources"] = "flowsense changed during the run: figures mix versions"
    # Figures worth quoting: the full capture, enough runs, every tool measured, counts equal.
    conforming = (
        not quick and runs >= 5 and not errors and flow_counts["agree"] and args.capture is None
    )
    res = {
        "schema": 2,
        "mode": mode,
        "conforming": conforming,
        "date": sysinfo.now(),
        "started": started,
        "git": {**sysinfo.git(str(REPO)), "flowsense_sources": sources_after},
        "machine": {**sysinfo.machine(), "load_at_start": load_at_start},
        "versions": _versions(),
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
            "cold_runs": cold_runs,
            "tshark_runs": min(runs, settings["tshark_runs"]),
            "scapy_packets": settings["scapy_limit"],
            "idle_timeout_s": IDLE_S,
            "active_timeout_s": ACTIVE_S,
            "nfstream": NFSTREAM_SETTINGS,
            "flowsense_cli": " ".join(
                fs_api.cli_command(
                    "python",
                    "CAPTURE",
                    IDLE_S,
                    ACTIVE_S,
                    os.devnull,
                    jobs=fs_api.one_core(sys.executable),
                )
            ),
            "tshark": " ".join(["tshark", "-r", "CAPTURE", *peers.TSHARK_ARGS]),
            "ndpiReader": " ".join(["ndpiReader", "-i", "CAPTURE", *peers.NDPI_ARGS]),
        },
        "results": results,
        "startup": start_up,
        "targets": _targets(results),
        "memory": memory,
        "flow_counts": flow_counts,
        "peer_counts": _peer_counts(sp, meta),
        "scaling": scale,
        "accuracy": acc,
        "skipped": skipped,
        "errors": errors,
        "section_seconds": sections,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "latest.json"
    if json_path.exists():  # how far from the figures it replaces (the 20 % reproduction goal)
        try:
            res["drift"] = report.drift(json.loads(json_path.read_text()), res)
        except (ValueError, KeyError, TypeError) as e:
            log(f"previous {json_path} not comparable: {e}")
    publish(res, out_dir, args.update_readme)
    if not flow_counts["agree"]:
        shown = {k: v for k, v in flow_counts.items() if k != "agree"}
        log(f"FLOW COUNTS DISAGREE: {json.dumps(shown)}")
    for key, why in skipped.items():
        log(f"skipped {key}: {why}")
    for key, err in errors.items():
        log(f"ERROR {key}: {err.splitlines()[0]}")
    return 0 if flow_counts["agree"] and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
