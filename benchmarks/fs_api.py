"""The few flowsense library calls the benchmark makes, in one place.

The benchmark codes against ``flowsense.pipeline.compute_flows(paths, config) -> FlowsResult``
(with ``.n_flows`` and ``.counters["packets"]``) and ``flowsense.config.Config`` (its
``with_timeouts(idle_s, active_s)``, else any ``*idle*timeout*``/``*active*timeout*`` fields).
If a name changes, this is the only module to adapt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

# Unit suffixes of timeout fields (house style puts the unit in the name), in units per second.
_UNITS = {"_s": 1, "_ms": 1_000, "_us": 1_000_000, "_ns": 1_000_000_000}


def _with_timeouts(cfg: Any, idle_s: float, active_s: float) -> tuple[Any, int]:
    """Copy of a (possibly nested) frozen dataclass with every idle/active timeout field set."""
    changes: dict[str, Any] = {}
    found = 0
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value, n = _with_timeouts(value, idle_s, active_s)
            if n:
                changes[f.name], found = value, found + n
            continue
        name = f.name.lower()
        if "timeout" not in name or not ("idle" in name or "active" in name):
            continue
        unit = next((m for sfx, m in _UNITS.items() if name.endswith(sfx)), 1)
        seconds = idle_s if "idle" in name else active_s
        changes[f.name] = (
            type(value)(seconds * unit) if isinstance(value, (int, float)) else seconds * unit
        )
        found += 1
    return (dataclasses.replace(cfg, **changes) if changes else cfg), found


def make_config(idle_s: float, active_s: float) -> Any:
    """flowsense's default Config with the given idle and active timeouts."""
    from flowsense.config import Config

    if hasattr(Config, "with_timeouts"):  # the CLI's own mapping of --idle/--active-timeout
        return Config().with_timeouts(idle_s, active_s)
    cfg, found = _with_timeouts(Config(), idle_s, active_s)
    if found < 2:
        raise RuntimeError(
            "flowsense.config.Config has no idle/active timeout fields the benchmark recognises; "
            "adapt benchmarks/fs_api.py"
        )
    return cfg


def compute_flows(heads: bool = False) -> Callable[[list[str], Any], Any]:
    """The in-process aggregation entry point. By default the flows command's job, which is the
    job nfstream is pinned to (``n_dissections=0``): records without payload heads, none kept
    (``heads=False``, where ``compute_flows`` takes it); ``heads`` True keeps and exports the
    default heads (what ``analyze`` gathers for its detectors)."""
    import inspect

    from flowsense.pipeline import compute_flows as fn

    if "heads" not in inspect.signature(fn).parameters:
        return fn
    return functools.partial(fn, heads=heads)


def fill_table(path: str, cfg: Any) -> tuple[Any, dict[str, int]]:
    """Feed every packet of ``path`` to a flow table without ending the stream: (a handle that
    keeps the table alive, the table's stats with ``flows_live`` and ``table_capacity``).

    Uses ``flowsense.pipeline.Pipeline(config, sink)`` with ``run_file`` and ``table.stats()``;
    frames of flows that end on their own go to a sink that drops them."""
    from flowsense.pipeline import Pipeline

    pipe = Pipeline(cfg, lambda frame: None)
    pipe.run_file(path)
    return pipe, dict(pipe.table.stats())


@contextlib.contextmanager
def _environment_kept() -> Iterator[None]:
    """Importing flowsense sets NUMBA_CACHE_DIR in os.environ; the runner must not pass that on
    to the children it starts with a cache directory of their own."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def initial_capacity() -> int:
    """Flow slots of a new table with the default configuration (a power of two)."""
    with _environment_kept():
        from flowsense.config import Config

        n = int(getattr(Config().flows, "initial_flows", 16_384))
    return 1 << max(n - 1, 1).bit_length()


def flow_count(result: Any) -> int:
    """Flows in a result (final records; interim records, if any, are not extra flows)."""
    return int(result.n_flows)


def packet_count(result: Any) -> int | None:
    """Packets the aggregation read, if it reports them."""
    counters = getattr(result, "counters", None) or {}
    return int(counters["packets"]) if "packets" in counters else None


def version() -> str | None:
    """flowsense's version, or None when the package cannot be imported."""
    try:
        with _environment_kept():
            import flowsense
    except ImportError:
        return None
    return str(getattr(flowsense, "__version__", "unknown"))


def cli_command(
    python: str,
    path: str,
    idle_s: float,
    active_s: float,
    out: str,
    command: str = "flows",
    jobs: int | None = None,
) -> list[str]:
    """The whole-process run: ``flows`` writing JSON lines to ``out``, or ``analyze`` writing
    EVE alerts there; ``jobs`` adds ``--jobs N`` (only where the flag exists)."""
    fmt = "jsonl" if command == "flows" else "eve"
    cmd = [python, "-m", "flowsense", command, path, "--format", fmt, "-o", out]
    cmd += ["--idle-timeout", str(idle_s), "--active-timeout", str(active_s)]
    return cmd + (["--jobs", str(jobs)] if jobs else [])


def pipeline_run(path: str, cfg: Any, names: list[str] | None) -> dict[str, Any]:
    """One pass of the pipeline over ``path`` as ``analyze`` runs it (ended flows and snapshots
    to the detectors), with the registered detectors named in ``names`` (None: all of them);
    its seconds (wall and CPU) and the alerts raised per category."""
    import time

    from flowsense.detect.base import Resources
    from flowsense.detect.registry import DETECTORS
    from flowsense.pipeline import Pipeline
    from flowsense.signatures import load_pools

    chosen = [n for n in DETECTORS if names is None or n in names]
    res = Resources(pools=load_pools()) if chosen else None
    dets = [DETECTORS[n](res) for n in chosen]
    alerts: dict[str, int] = {}

    def count(found: list) -> None:
        for a in found:
            alerts[a.category] = alerts.get(a.category, 0) + 1

    def sink(frame: Any) -> None:
        for d in dets:
            count(d.on_frame(frame))

    def snapshot(frame: Any) -> None:
        for d in dets:
            count(d.on_snapshot(frame))

    pipe = Pipeline(cfg, sink, [r for d in dets for r in d.watch_rules()], snapshot)
    t0, c0 = time.perf_counter(), time.process_time()
    pipe.run_file(path)
    pipe.finish()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "alerts": alerts}


def detector_names() -> list[str]:
    from flowsense.detect.registry import DETECTORS

    return list(DETECTORS)


def analyze_eve(path: str, out: str) -> int:
    """``flowsense analyze --format eve -o OUT PATH`` run in this process; its exit status."""
    from flowsense.cli import main

    return int(main(["analyze", "--format", "eve", "-o", out, path]))


@functools.cache
def has_jobs_flag(python: str) -> bool:
    """Whether ``flowsense flows`` takes ``--jobs`` (several cores) in this checkout."""
    import subprocess

    r = subprocess.run(
        [python, "-m", "flowsense", "flows", "--help"], capture_output=True, text=True
    )
    return r.returncode == 0 and "--jobs" in r.stdout


def one_core(python: str) -> int | None:
    """``--jobs`` for a one-core whole-process run: 1 where the flag exists (its default is every
    core), else None (no flag: one core is all there is)."""
    return 1 if has_jobs_flag(python) else None
