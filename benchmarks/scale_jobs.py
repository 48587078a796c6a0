"""``--jobs`` scaling and memory over capture length (issue 6), measured as ratios in one session.

    python -m benchmarks.scale_jobs                 # 2M capture: steady state and whole process
    python -m benchmarks.scale_jobs --memory        # also the ten-times-longer capture's memory
    python -m benchmarks.scale_jobs --quick         # 200k packets, 2 runs: a smoke test

Steady state: one child process, kernels loaded and the page cache warm, times
``compute_flows(path, jobs=1)`` and ``jobs=N`` in turn (``--runs`` times each). Whole process:
``python -m flowsense flows PATH --format jsonl -o /dev/null --jobs J`` in turn. Memory: the
peak of anonymous memory (RssAnon, plus RssShmem for the workers' shared regions) summed over
the process and its workers, sampled every 20 ms, for the capture and for the same flows
repeated ten times, shifted in time (each copy after the previous one's flows idled out).
Results go to ``results/scale_jobs.json`` (``quick``: ``results/scale_jobs_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.measure import REPO, ensure_capture, log

STEADY = r"""
import json, sys, time
from flowsense.config import Config
from flowsense.pipeline import compute_flows
path, jobs, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = Config().with_timeouts(3600, 7200)
counts = {j: compute_flows([path], cfg, jobs=j).n_flows for j in (1, jobs)}  # warm-up
times = {1: [], jobs: []}
for r in range(runs):
    for j in ((1, jobs) if r % 2 == 0 else (jobs, 1)):
        t = time.perf_counter()
        compute_flows([path], cfg, jobs=j)
        times[j].append(time.perf_counter() - t)
print(json.dumps({"flows": counts, "times": times}))
"""


def steady(path: str, jobs: int, runs: int) -> dict:
    r = subprocess.run([sys.executable, "-c", STEADY, path, str(jobs), str(runs)], cwd=REPO,
                       capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    return {"flows": out["flows"], "times": {int(k): v for k, v in out["times"].items()}}


def cli(path: str, jobs: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "flowsense", "flows", path, "--format", "jsonl", "-o",
            os.devnull, "--jobs", str(jobs), *extra]


def whole(path: str, jobs: int, runs: int) -> dict[int, list[float]]:
    times: dict[int, list[float]] = {1: [], jobs: []}
    timeouts = ("--idle-timeout", "3600", "--active-timeout", "7200")
    for r in range(runs):
        for j in ((1, jobs) if r % 2 == 0 else (jobs, 1)):
            t = time.perf_counter()
            subprocess.run(cli(path, j, timeouts), cwd=REPO, check=True)
            times[j].append(time.perf_counter() - t)
    return times


def _anon_kib(pid: int) -> int:
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssShmem:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def peak_anon(cmd: list[str]) -> int:
    """Peak of RssAnon + RssShmem (bytes) summed over a command and its children. Shared
    regions are counted once per process mapping them: an upper bound."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=REPO)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            pids = [proc.pid] + [c.pid for c in ps.children(recursive=True)]
        except psutil.Error:
            pids = [proc.pid]
        peak = max(peak, sum(_anon_kib(p) for p in pids))
        time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return peak * 1024


def repeated(src: str, dst: str, times: int, gap_s: int = 300) -> None:
    """``src`` (a little-endian µs pcap) ``times`` times over, each copy's timestamps shifted
    past the previous copy's last packet by ``gap_s`` (past the idle timeout: the copies' flows
    are the original's again, not older flows grown longer)."""
    from flowsense.capture.reader import ReaderStats, iter_records
    from flowsense.config import CaptureConfig

    data = np.fromfile(src, dtype=np.uint8)
    offs, first, last = [], None, 0
    for rb in iter_records(src, CaptureConfig(), ReaderStats()):
        offs.append(rb.cols["rec_off"].copy())
        first = int(rb.cols["ts_ns"][0]) if first is None else first
        last = int(rb.cols["ts_ns"][rb.n - 1])
    rec = np.concatenate(offs)
    shift = (last - (first or 0)) // 1_000_000_000 + gap_s
    idx = rec[:, None] + np.arange(4)  # the seconds field of each record header
    sec = data[idx].astype(np.uint32) @ (np.uint32(1) << np.arange(0, 32, 8, dtype=np.uint32))
    with open(dst + ".tmp", "wb") as out:
        out.write(data[:24].tobytes())
        body = data[24:].copy()
        for k in range(times):
            s = (sec + np.uint32(k * shift)).astype("<u4").view(np.uint8).reshape(-1, 4)
            body[idx - 24] = s
            out.write(body.tobytes())
    os.replace(dst + ".tmp", dst)


def summary(times: dict[int, list[float]], jobs: int) -> dict:
    m1, mj = statistics.median(times[1]), statistics.median(times[jobs])
    return {"median_s": {1: round(m1, 3), jobs: round(mj, 3)}, "speedup": round(m1 / mj, 2),
            "runs": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_jobs",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--capture", default=os.path.join(REPO, "benchmarks/data/mixed.pcap"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", action="store_true", help="also the ten-times-longer capture")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.capture = os.path.join(REPO, "benchmarks/data/quick200k.pcap")
        args.runs = min(args.runs, 2)
    ensure_capture(args.capture, packets=200_000 if args.quick else 2_000_000)
    res: dict = {"capture": os.path.relpath(args.capture, REPO), "jobs": args.jobs,
                 "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    log("steady state")
    st = steady(args.capture, args.jobs, args.runs)
    res["steady"] = summary(st["times"], args.jobs) | {"flows": st["flows"]}
    log("whole process")
    res["whole_process"] = summary(whole(args.capture, args.jobs, args.runs), args.jobs)
    if args.memory:
        longer = args.capture.replace(".pcap", f"-x{args.repeat}.pcap")
        if not os.path.exists(longer):
            log(f"writing {longer}")
            repeated(args.capture, longer, args.repeat)
        mem = {}
        for j in sorted({1, args.jobs}):
            base, long_ = peak_anon(cli(args.capture, j)), peak_anon(cli(longer, j))
            mem[j] = {"peak_anon_bytes": base, f"peak_anon_bytes_x{args.repeat}": long_,
                      "ratio": round(long_ / base, 3)}
        res["memory"] = mem
    res["load_after"] = os.getloadavg()
    name = "scale_jobs_quick.json" if args.quick else "scale_jobs.json"
    with open(os.path.join(REPO, "benchmarks/results", name), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
