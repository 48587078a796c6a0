"""Running one measurement in a child process, and summarising repeated ones."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks import fs_api

CHILD_TIMEOUT_S = 1_800
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the results table."""
    print(msg, file=sys.stderr, flush=True)


def ensure_capture(
    path: str,
    packets: int | None = None,
    live_flows: int | None = None,
    seed: int = 1,
    size_mix: str = "default",
) -> dict | None:
    """The capture's sidecar, generating capture and sidecar first if the capture is missing."""
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "benchmarks.gen_capture", "--seed", str(seed), "-o", path]
        cmd += ["--live-flows", str(live_flows)] if live_flows else ["--packets", str(packets)]
        cmd += ["--size-mix", size_mix]
        log(f"generating {path}")
        subprocess.run(cmd, check=True, cwd=REPO)
    if not os.path.exists(path + ".json"):
        return None  # someone else's capture: no expected figures
    with open(path + ".json") as fh:
        return json.load(fh)


def head_capture(src: str, dst: str, n: int) -> str:
    """``dst``: the first ``n`` records of the classic pcap ``src`` (made once), for start-up
    timings on a capture every tool reads; another format gives the bundled 5-packet capture."""
    if os.path.exists(dst):
        return dst
    import struct

    with open(src, "rb") as fh:
        out = [fh.read(24)]
        little = out[0][:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
        if not little and out[0][:4] not in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            return os.path.join(REPO, "pcaps", "corpus", "ndpi-dns.pcap")
        for _ in range(n):
            rec = fh.read(16)
            if len(rec) < 16:
                break
            caplen = struct.unpack("<I" if little else ">I", rec[8:12])[0]
            out += [rec, fh.read(caplen)]
    with open(dst + ".tmp", "wb") as fh:
        fh.write(b"".join(out))
    os.replace(dst + ".tmp", dst)
    return dst


class MeasureError(RuntimeError):
    """A child process failed; the message carries the end of its stderr."""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd`` to completion; (wall seconds, stdout). Raises MeasureError on a non-zero exit."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        raise MeasureError(f"{' '.join(cmd)} exited with {r.returncode}:\n{tail}")
    return wall, r.stdout


def worker(
    tool: str,
    capture: str,
    idle_s: int,
    active_s: int,
    warm_capture: str | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """One ``benchmarks.workers`` run; its JSON plus ``wall_seconds`` of the whole child process."""
    cmd = [sys.executable, "-m", "benchmarks.workers", tool, capture]
    cmd += ["--idle-timeout", str(idle_s), "--active-timeout", str(active_s)]
    if warm_capture:
        cmd += ["--warm-capture", warm_capture]
    wall, out = _run(cmd + (extra or []))
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    return result


def cache_env(cache_dir: str) -> dict[str, str]:
    """The environment with numba's (and flowsense's) compiled-kernel cache in ``cache_dir``."""
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = cache_dir
    env["FLOWSENSE_CACHE_DIR"] = cache_dir
    return env


def flowsense_cli(
    capture: str,
    idle_s: int,
    active_s: int,
    cache_dir: str | None,
    out: str = os.devnull,
    command: str = "flows",
    jobs: int | None = None,
) -> dict[str, Any]:
    """Wall time of ``python -m flowsense flows`` (or ``analyze``); with a real ``out`` file and
    ``flows``, its flow count too. ``cache_dir`` None: the usual compiled-kernel cache."""
    cmd = fs_api.cli_command(sys.executable, capture, idle_s, active_s, out, command, jobs)
    wall, _ = _run(cmd, cache_env(cache_dir) if cache_dir else None)
    result: dict[str, Any] = {"seconds": wall}
    if out != os.devnull and command == "flows":
        flows = interim = 0
        with open(out) as fh:
            for line in fh:
                if line.strip():
                    if json.loads(line).get("interim"):
                        interim += 1
                    else:
                        flows += 1
        result.update(flows=flows, interim_records=interim)
    return result


def summarise(seconds: list[float], packets: int) -> dict[str, Any]:
    """Median, min and max of the times, and the same as packets per second."""
    med = statistics.median(seconds)
    return {
        "runs": len(seconds),
        "seconds": [round(s, 4) for s in seconds],
        "median_s": round(med, 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "pps_median": round(packets / med),
        "pps_min": round(packets / max(seconds)),
        "pps_max": round(packets / min(seconds)),
    }


def paired_extra_pct(base: list[float], other: list[float]) -> float:
    """``other`` over ``base``, in per cent, as the median of each round's own ratio (a round's
    runs are next to each other in time, so a drift of a shared host's speed moves both)."""
    return round(100 * statistics.median(b / a - 1 for a, b in zip(base, other)), 1)
