"""``--jobs`` scaling and memory over capture length (issue 6), measured as ratios in one session.

    python -m benchmarks.scale_jobs                 # 2M capture: steady state and whole process
    python -m benchmarks.scale_jobs --memory        # also the ten-times-longer capture's memory
    python -m benchmarks.scale_jobs --quick         # 200k packets, 2 runs: a smoke test

Steady state: one child process, kernels loaded and the page cache warm, times
``compute_flows(path, jobs=1)`` and ``jobs=N`` in turn (``--runs`` times each), with the CPU
time of the process, of its calling thread and of its busiest worker thread. Whole process:
``python -m flowsense flows PATH --format jsonl -o /dev/null --jobs J`` in turn, wall and CPU
time, unobserved (``timed``). Memory: the peak of anonymous memory (Pss_Anon +
Pss_Shmem, summed over the process tree) for the capture and for the same flows repeated ten
times, shifted in time (each copy starts after every flow of the one before has idled out,
established TCP too). The long run's peak is the highest of ten moments at which a copy's
flows end; the capture's is the highest of as many runs.
Results go to ``results/scale_jobs.json`` (``quick``: ``results/scale_jobs_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.measure import REPO, ensure_capture, log

STEADY = r"""
import json, os, sys, time
from flowsense.cli import main
from flowsense.config import Config
from flowsense.parallel import local
from flowsense.pipeline import compute_flows
path, jobs, runs, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = Config().with_timeouts(3600, 7200)
worker_cpu = []
run = local._Worker._run
def timed_run(self):  # each worker thread's own CPU time
    run(self)
    worker_cpu.append(time.thread_time())
local._Worker._run = timed_run
def job(j):
    if what == "compute_flows":
        return compute_flows([path], cfg, jobs=j, heads=False).n_flows  # the flows job
    return main(["flows", path, "--format", "jsonl", "-o", os.devnull, "--jobs", str(j),
                 "--idle-timeout", "3600", "--active-timeout", "7200"])
counts = {j: job(j) for j in (1, jobs)}  # warm-up
out = {j: {"wall": [], "cpu": [], "cpu_caller": [], "cpu_worker_max": []} for j in (1, jobs)}
for r in range(runs):
    for j in ((1, jobs) if r % 2 == 0 else (jobs, 1)):
        worker_cpu.clear()
        t, c, m = time.perf_counter(), time.process_time(), time.thread_time()
        job(j)
        out[j]["wall"].append(time.perf_counter() - t)
        out[j]["cpu"].append(time.process_time() - c)
        out[j]["cpu_caller"].append(time.thread_time() - m)
        out[j]["cpu_worker_max"].append(max(worker_cpu, default=0.0))
print(json.dumps({"flows": counts, "runs": out}))
"""


def steady(path: str, jobs: int, runs: int, what: str = "compute_flows") -> dict:
    """``what``: ``compute_flows`` (every record gathered in the calling process) or ``flows``
    (the CLI's job in a warm process: records formatted as JSON lines where they are made)."""
    r = subprocess.run([sys.executable, "-c", STEADY, path, str(jobs), str(runs), what],
                       cwd=REPO, capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    return {"flows": out["flows"], "runs": {int(k): v for k, v in out["runs"].items()}}


def cli(path: str, jobs: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "flowsense", "flows", path, "--format", "jsonl", "-o",
            os.devnull, "--jobs", str(jobs), *extra]


def _anon_kib(pid: int) -> int:
    """Proportional anonymous memory (Pss_Anon + Pss_Shmem, KiB): a forked worker's RssAnon
    counts the parent's pages it shares, Pss divides them among the sharers, so the sum over a
    process tree is the tree's real footprint. Serial runs: Pss_Anon = RssAnon."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def monitored(cmd: list[str], every_s: float = 0.01) -> dict:
    """Run ``cmd``, sampling its process tree every ``every_s``: wall seconds, the peak of its
    anonymous memory (``_anon_kib`` summed over the tree), and its CPU seconds (the last
    sample before each process exits)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    root = psutil.Process(proc.pid)
    peak = 0
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = [root]
        peak = max(peak, sum(_anon_kib(p.pid) for p in procs))
        for p in procs:
            try:
                ct = p.cpu_times()
                cpu[p.pid] = ct.user + ct.system
            except psutil.Error:
                pass
        time.sleep(every_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return {"wall": wall, "peak_anon_bytes": peak * 1024, "cpu": sum(cpu.values())}


def timed(cmd: list[str]) -> dict:
    """Run ``cmd`` unobserved: wall seconds and its CPU seconds (``RUSAGE_CHILDREN``). The
    memory sampler (``monitored``) reads the process's ``smaps_rollup`` every 10 ms, which
    holds its memory map's lock while it walks it: the whole process's time was measured
    under it until 2026-11-26 (medians of 4 alternating runs: ``--jobs 2`` 1.42 s sampled
    against 1.19 s not, ``--jobs 1`` 1.48 s against 1.41 s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def whole(path: str, jobs: int, runs: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {1: [], jobs: []}
    timeouts = ("--idle-timeout", "3600", "--active-timeout", "7200")
    for r in range(runs):
        for j in ((1, jobs) if r % 2 == 0 else (jobs, 1)):
            out[j].append(timed(cli(path, j, timeouts)))
    return out


def repeat_gap_s() -> int:
    """Seconds between one copy's last packet and the next one's first: past every idle
    timeout (established TCP's is the longest), so a copy's flows are the original's again, new
    flows, not older flows grown longer. (Until 2026-11-27 the gap was 300 s, past the 120 s
    idle timeout but not established TCP's hour: a connection the capture cut off mid-way went
    on through the copies.)"""
    from flowsense.config import Config

    flows = Config().flows
    return int(max(flows.idle_timeout_s, flows.established_idle_timeout_s)) + 300


def ensure_repeated(src: str, dst: str, times: int) -> None:
    """``dst``: ``src`` ``times`` times over (``repeated``), made again when its sidecar
    (``dst.json``) says it was made another way."""
    want = {"source": os.path.basename(src), "copies": times, "gap_s": repeat_gap_s()}
    try:
        with open(dst + ".json") as f:
            if json.load(f) == want and os.path.exists(dst):
                return
    except (OSError, ValueError):
        pass
    log(f"writing {dst}")
    repeated(src, dst, times, want["gap_s"])
    with open(dst + ".json", "w") as f:
        json.dump(want, f)


def repeated(src: str, dst: str, times: int, gap_s: int) -> None:
    """``src`` (a little-endian µs pcap) ``times`` times over, each copy's timestamps shifted
    past the previous copy's last packet by ``gap_s``."""
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


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def summary(runs: dict[int, list[dict]], jobs: int, keys: tuple[str, ...]) -> dict:
    """Medians, and the wall-time ratio two ways: of the medians, and the median of each
    round's ratio (a round's two runs are next to each other in time, so a drift of the shared
    host's speed over the session moves both)."""
    med = {j: {k: _median(runs[j], k) for k in keys} for j in (1, jobs)}
    rounds = [a["wall"] / b["wall"] for a, b in zip(runs[1], runs[jobs])]
    return {"median": med, "speedup_wall": round(med[1]["wall"] / med[jobs]["wall"], 2),
            "speedup_wall_by_round": round(statistics.median(rounds), 2),
            "speedup_wall_rounds": [round(r, 2) for r in rounds], "runs": len(runs[1])}


def cpu_bound(med: dict, jobs: int) -> float:
    """The most the wall-time ratio could be on an otherwise idle machine, given the CPU the
    parallel run spent: serial CPU over the parallel run's CPU spread evenly over ``jobs`` cores
    (its threads share one process: what is not spread, the caller's joining, only lowers it)."""
    return round(med[1]["cpu"] / (med[jobs]["cpu"] / jobs), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_jobs",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--capture", default=os.path.join(REPO, "benchmarks/data/mixed.pcap"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", action="store_true", help="also the ten-times-longer capture")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-process runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.capture = os.path.join(REPO, "benchmarks/data/quick200k.pcap")
        args.runs = min(args.runs, 2)
    ensure_capture(args.capture, packets=200_000 if args.quick else 2_000_000)
    res: dict = {"capture": os.path.relpath(args.capture, REPO), "jobs": args.jobs,
                 "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    for what, name in (("compute_flows", "steady"), ("flows", "steady_flows_cli")):
        log(f"steady state: {what}")
        st = steady(args.capture, args.jobs, args.runs, what)
        runs = {j: [dict(zip(v, x)) for x in zip(*v.values())] for j, v in st["runs"].items()}
        res[name] = summary(runs, args.jobs, ("wall", "cpu", "cpu_caller", "cpu_worker_max"))
        res[name]["flows_or_rc"] = st["flows"]
        res[name]["speedup_cpu_bound"] = cpu_bound(res[name]["median"], args.jobs)
    if not args.no_whole:
        log("whole process")
        res["whole_process"] = summary(whole(args.capture, args.jobs, args.runs), args.jobs,
                                       ("wall", "cpu"))
        res["whole_process"]["speedup_cpu_bound"] = cpu_bound(res["whole_process"]["median"],
                                                              args.jobs)
    if args.memory:
        longer = args.capture.replace(".pcap", f"-x{args.repeat}.pcap")
        ensure_repeated(args.capture, longer, args.repeat)
        mem = {}
        for j in sorted({1, args.jobs}):
            log(f"memory, --jobs {j}")
            # the peak comes when a drain ends every live flow at once (the original's end, each
            # copy's end in the long run) and varies from one such moment to the next (the text
            # the workers hold then, 230-300 MB with --jobs 2): the long run has ten of them,
            # so the original's peak is the highest of as many runs (of three until
            # 2026-11-27: a ratio then said as much of which runs were low as of growth)
            bases = [monitored(cli(args.capture, j))["peak_anon_bytes"]
                     for _ in range(args.repeat)]
            base = max(bases)
            long_ = monitored(cli(longer, j))["peak_anon_bytes"]
            mem[j] = {"peak_anon_bytes": base, "peak_anon_bytes_runs": bases,
                      f"peak_anon_bytes_x{args.repeat}": long_, "ratio": round(long_ / base, 3)}
        res["memory"] = mem
    res["load_after"] = os.getloadavg()
    name = "scale_jobs_quick.json" if args.quick else "scale_jobs.json"
    old = os.path.join(REPO, "benchmarks/results", name)
    if "memory" not in res and os.path.exists(old):  # keep the last memory figures
        with open(old) as f:
            prior = json.load(f)
        if "memory" in prior:
            res["memory"] = prior["memory"] | {"measured_in_an_earlier_run": True}
    with open(os.path.join(REPO, "benchmarks/results", name), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
