"""Throughput of every tool on the main capture, interleaved run by run; and start-up alone.

Each measurement is a fresh child process; within a run the tools take turns, the order rotating
from run to run, so that a noisy neighbour slows them alike. A peer that is not installed is
skipped (and said so), not an error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import fs_api, measure, peers

log = measure.log

# tool -> the result rows it fills (the first is the one it is named by in the log)
ROWS_OF = {
    "dpkt": ["dpkt"],
    "scapy": ["scapy"],
    "nfstream": ["nfstream", "nfstream_process"],
    "tshark": ["tshark_process"],
    "ndpi": ["ndpi_process", "ndpi"],
    "flowsense-steady": ["flowsense_steady", "flowsense_analyze_steady"],
    "flowsense-cli": ["flowsense_process_warm"],
    "flowsense-analyze": ["flowsense_analyze_process_warm"],
    "flowsense-jobs": ["flowsense_jobs_process"],
}
ALL_ROWS = [r for rows in ROWS_OF.values() for r in rows] + ["flowsense_process_cold"]


def available(with_flowsense: bool) -> tuple[list[str], dict[str, str]]:
    """(tools to run, tool -> why it is skipped)."""
    skipped: dict[str, str] = {}
    for mod, tool in (("scapy", "scapy"), ("nfstream", "nfstream")):
        if importlib.util.find_spec(mod) is None:
            skipped[tool] = f"{mod} is not installed (pip install '.[bench]')"
    for tool, pkg in (("tshark", "tshark"), ("ndpi", "libndpi-bin")):
        if peers.installed(tool) is None:
            skipped[tool] = f"not installed (apt-get install {pkg})"
    fs_tools = ["flowsense-steady", "flowsense-cli", "flowsense-analyze", "flowsense-jobs"]
    if not with_flowsense:
        skipped.update({t: "flowsense cannot be imported" for t in fs_tools})
    elif not fs_api.has_jobs_flag(sys.executable):
        skipped["flowsense-jobs"] = (
            "`flowsense flows --jobs` does not exist in this checkout (multi-core not merged)"
        )
    return [t for t in ROWS_OF if t not in skipped], skipped


class Speed:
    """Accumulates the times and flow counts of the interleaved runs."""

    def __init__(self, capture: str, idle_s: int, active_s: int, scapy_limit: int):
        self.capture = capture
        self.idle_s, self.active_s = idle_s, active_s
        self.scapy_limit = scapy_limit
        self.times: dict[str, list[float]] = {k: [] for k in ALL_ROWS}
        self.counts: dict[str, set[int]] = {}
        self.errors: dict[str, str] = {}
        self.extra: dict[str, Any] = {"flowsense_warmup_s": [], "flowsense_import_s": []}
        self.peer_counts: dict[str, Any] = {}
        self.jobs = len(os.sched_getaffinity(0))

    def _count(self, key: str, n: int) -> None:
        self.counts.setdefault(key, set()).add(n)

    def cold(self, runs: int, tmp_dirs: list[str]) -> None:
        """First starts with an empty numba cache (a directory of their own)."""
        for i in range(runs):
            cache = tempfile.mkdtemp(prefix="flowsense-numba-")
            tmp_dirs.append(cache)
            out = os.path.join(cache, "flows.jsonl")
            r = measure.flowsense_cli(
                self.capture,
                self.idle_s,
                self.active_s,
                cache,
                out,
                jobs=fs_api.one_core(sys.executable),
            )
            os.remove(out)
            self.times["flowsense_process_cold"].append(r["seconds"])
            self._count("flowsense_cli", r["flows"])
            log(f"cold start {i + 1}/{runs}: {r['seconds']:.2f} s, {r['flows']} flows")

    def one(self, tool: str) -> float:
        """One timed run of ``tool``; returns the seconds of its first row."""
        cap, idle, active = self.capture, self.idle_s, self.active_s
        t = self.times
        if tool in ("flowsense-cli", "flowsense-analyze", "flowsense-jobs"):
            command = "analyze" if tool == "flowsense-analyze" else "flows"
            one = fs_api.one_core(sys.executable)
            jobs = self.jobs if tool == "flowsense-jobs" else one
            if tool == "flowsense-jobs" and "flowsense_jobs" not in self.counts:
                self._count("flowsense_jobs", self._jobs_flows(jobs))
            r = measure.flowsense_cli(cap, idle, active, None, command=command, jobs=jobs)
            t[ROWS_OF[tool][0]].append(r["seconds"])
        elif tool == "tshark":
            r = peers.tshark_run(cap)
            t["tshark_process"].append(r["seconds"])
            self.peer_counts["tshark_tcp_udp"] = r["flows"]
        elif tool == "ndpi":
            r = peers.ndpi_run(cap)
            t["ndpi_process"].append(r["seconds"])
            if r.get("processing_ms"):
                t["ndpi"].append(r["processing_ms"] / 1000)
            self.peer_counts["ndpi"] = r["flows"]
            self.peer_counts["ndpi_protocols"] = r["protocols"]
        elif tool == "scapy":
            r = measure.worker("scapy", cap, idle, active, extra=["--limit", str(self.scapy_limit)])
            # extrapolated to the whole capture once its packet count is known (run.py)
            self.extra.setdefault("scapy_raw", []).append([r["seconds"], r["packets"]])
            self.peer_counts["scapy_head"] = {"packets": r["packets"], "flows": r["flows"]}
        else:
            r = measure.worker(tool, cap, idle, active)
            key = ROWS_OF[tool][0]
            t[key].append(r["seconds"])
            self._count(key, r["flows"])
            if tool == "nfstream":
                t["nfstream_process"].append(r["wall_seconds"])
            if tool == "flowsense-steady":
                t["flowsense_analyze_steady"].append(r["analyze_seconds"])
                self.extra["flowsense_warmup_s"].append(r["warmup_seconds"])
                self.extra["flowsense_import_s"].append(r["import_seconds"])
                self.extra["flowsense_alerts"] = r["alerts"]
                if r.get("packets") is not None:
                    self._count("flowsense_packets", r["packets"])
        return r["seconds"] if tool == "scapy" else t[ROWS_OF[tool][0]][-1]

    def _jobs_flows(self, jobs: int | None) -> int:
        """Flows that ``flowsense flows --jobs`` writes (an untimed run): chunks aggregated apart
        and merged must give the same flows as one core."""
        with tempfile.TemporaryDirectory(prefix="flowsense-jobs-") as tmp:
            out = os.path.join(tmp, "flows.jsonl")
            r = measure.flowsense_cli(
                self.capture, self.idle_s, self.active_s, None, out=out, jobs=jobs
            )
        return int(r["flows"])

    def check_scapy_head(self) -> None:
        """The scapy loop's subsample must hold as many flows for dpkt as for scapy."""
        head = self.peer_counts.get("scapy_head")
        if not head:
            return
        try:
            extra = ["--limit", str(head["packets"])]
            d = measure.worker("dpkt", self.capture, self.idle_s, self.active_s, extra=extra)
        except measure.MeasureError as e:
            self.errors["scapy_head"] = str(e).splitlines()[0]
            return
        head["dpkt_flows"] = d["flows"]
        if d["flows"] != head["flows"]:
            self.errors["scapy_head"] = f"scapy found {head['flows']} flows, dpkt {d['flows']}"


def measure_speed(
    capture: str,
    runs: int,
    cold_runs: int,
    with_flowsense: bool,
    settings: dict[str, Any],
) -> tuple[Speed, dict[str, str]]:
    """Every available tool ``runs`` times (tshark ``settings['tshark_runs']``), interleaved."""
    sp = Speed(capture, settings["idle_s"], settings["active_s"], settings["scapy_limit"])
    tools, skipped = available(with_flowsense)
    budget = {t: runs for t in tools}
    budget["tshark"] = min(runs, settings["tshark_runs"])
    tmp_dirs: list[str] = []
    try:
        if with_flowsense and cold_runs:
            try:
                sp.cold(cold_runs, tmp_dirs)
            except measure.MeasureError as e:
                sp.errors["flowsense_process_cold"] = str(e)
        if with_flowsense:  # the usual cache, filled (or checked) by one untimed run
            measure.flowsense_cli(capture, sp.idle_s, sp.active_s, None)
        for run in range(runs):
            order = [t for t in tools if budget.get(t, 0) > 0]
            k = run % max(len(order), 1)
            for tool in order[k:] + order[:k]:
                try:
                    secs = sp.one(tool)
                except measure.MeasureError as e:
                    for key in ROWS_OF[tool]:
                        sp.errors[key] = str(e)
                    log(f"run {run + 1}/{runs}: {tool} FAILED:\n{e}")
                    tools.remove(tool)
                    continue
                budget[tool] -= 1
                log(f"run {run + 1}/{runs}: {tool} {secs:.2f} s")
        sp.check_scapy_head()
    finally:
        for d in tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)
    return sp, skipped


def startup(
    tiny: str, tiny_packets: int, repeats: int, idle_s: int, active_s: int, tools: list[str]
) -> dict:
    """Whole-process seconds on a capture of a few packets: start-up and imports, nothing else
    (flowsense with a warm numba cache)."""
    out: dict[str, Any] = {"capture": os.path.basename(tiny), "packets": tiny_packets}
    runners = {
        "dpkt": lambda: measure.worker("dpkt", tiny, idle_s, active_s)["wall_seconds"],
        "nfstream": lambda: measure.worker("nfstream", tiny, idle_s, active_s)["wall_seconds"],
        "tshark": lambda: peers.tshark_run(tiny)["seconds"],
        "ndpi": lambda: peers.ndpi_run(tiny)["seconds"],
        "flowsense-cli": lambda: measure.flowsense_cli(
            tiny, idle_s, active_s, None, jobs=fs_api.one_core(sys.executable)
        )["seconds"],
    }
    for tool, fn in runners.items():
        if tool not in tools:
            continue
        try:
            secs = sorted(fn() for _ in range(repeats))
            out[tool] = round(secs[len(secs) // 2], 3)
        except (measure.MeasureError, subprocess.SubprocessError) as e:
            out[tool] = {"error": " ".join(str(e).split())[-200:]}
    return out


def python_startup() -> float:
    """Seconds of a bare ``python -c pass``: the interpreter's share of every Python row."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return round(time.perf_counter() - t0, 3)
