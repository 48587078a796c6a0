"""What a result was measured on: machine, library versions, date and commit."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import fs_api


def machine() -> dict[str, Any]:
    """CPU model, cores usable by this process, RAM and OS."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    try:
        import psutil

        ram = psutil.virtual_memory().total
        physical = psutil.cpu_count(logical=False)
    except ImportError:
        ram, physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "ram_gib": round(ram / 2**30, 1),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    """Versions of the interpreter and of every library the benchmark compares or relies on."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("numpy", "numba", "llvmlite", "dpkt", "scapy", "nfstream", "psutil", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    try:
        out["flowsense"] = importlib.metadata.version("flowsense")
    except importlib.metadata.PackageNotFoundError:
        out["flowsense"] = fs_api.version()  # run from a checkout, not installed
    return out


def git(repo: str) -> dict[str, Any]:
    """The checked-out commit and whether the tree had local changes (None outside a repository)."""

    def run(*cmd: str) -> str | None:
        r = subprocess.run(["git", "-C", repo, *cmd], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    status = run("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": run("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def source_digest(package: str) -> str | None:
    """A digest of every .py file under ``package``: tells whether the code changed mid-run."""
    root = Path(package)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def now() -> str:
    """The current time, ISO 8601 UTC to the second."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
