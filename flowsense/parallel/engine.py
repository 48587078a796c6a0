"""The parallel run seen from the caller: the same interface as ``pipeline.Pipeline``.

``ParallelPipeline`` picks the engine (``local``: worker threads on this machine; ``dask``:
Dask distributed), joins what the partitions hand back and calls the same sinks a Pipeline
would: for the detectors, at each step's end (``pipeline.Steps``) one frame of DNS replies, one
of ended flows and, when due, one snapshot, each in ``in_end_order``; records as frames, or
already formatted text.

What is the same as one table, and what is not (docs/design.md): every flow record and every
alert (given the sorts below); ``flows`` output order (per round, partition by partition: sort
by ``flow_id``, then ``bidirectional_first_seen_ms`` and ``interim``, to compare); the
``seq`` column (creation order within a partition); ``table_capacity`` (the sum of the
partitions'); a bound ``max_flows`` (shared out, each partition evicts on its own); the watch
quota (whole in each partition: more watches may be granted than one table grants, never fewer).
"""

from __future__ import annotations

import bisect
import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from flowsense.config import Config
from flowsense.errors import CaptureError, ConfigError
from flowsense.flows.features import FeatureFrame, in_end_order
from flowsense.flows.table import WatchRule
from flowsense.parallel.partition import Item, Output
from flowsense.parallel.plan import classify
from flowsense.pipeline import ProgressHook

log = logging.getLogger(__name__)

FrameSink = Callable[[FeatureFrame], None]
ENGINES = ("local", "dask")


def default_jobs() -> int:
    """The machine's cores (those this process may run on)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def can_split(paths: Iterable[str]) -> bool:
    """Whether the inputs can be read in pieces: regular files (stdin and pipes cannot)."""
    return all(p != "-" and os.path.isfile(p) for p in paths)


class ParallelPipeline:
    """Runs ``paths`` (already in time order) over ``jobs`` partitions."""

    def __init__(self, config: Config, sink: FrameSink | None = None,
                 watch_rules: Iterable[WatchRule] = (),
                 snapshot_sink: FrameSink | None = None, *, jobs: int = 2,
                 engine: str = "local", scheduler: str | None = None,
                 output: Output | None = None,
                 text_sink: Callable[[np.ndarray], None] | None = None,
                 key: int | None = None) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs}")
        if engine not in ENGINES:
            raise ConfigError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        self.config = config
        self.sink = sink
        self.snapshot_sink = snapshot_sink
        self.rules = list(watch_rules)
        self.jobs = jobs
        self.engine = engine
        self.scheduler = scheduler
        self.output = Output("analyze") if snapshot_sink is not None else (output or Output())
        self.text_sink = text_sink
        self.key = key  # the partitioning hash's key (drawn per run unless given: floods)
        self.errors: list[CaptureError] = []
        self.progress: ProgressHook | None = None  # as Pipeline's: called once a piece
        self._counters: dict[str, int] = {}
        self._starts: list[tuple[int, str]] = []
        self._clock = 0

    # --- the Pipeline interface ---------------------------------------------------------------
    @property
    def clock_ns(self) -> int:
        """The clock at the current look (the detectors' ``now``)."""
        return self._clock

    def source_of(self, ts_ns: int) -> str:
        k = bisect.bisect_right(self._starts, (ts_ns, "\U0010ffff")) - 1
        return self._starts[max(k, 0)][1] if self._starts else ""

    def counters_dict(self) -> dict[str, int]:
        return dict(self._counters)

    def run(self, paths: list[str]) -> None:
        from flowsense.capture.reader import first_timestamp

        files = classify(paths, self.config)
        self._first = {p: first_timestamp(p, self.config.capture) for p in paths}
        key = self.key if self.key is not None else secrets.randbits(63)
        if self.engine == "dask":
            from flowsense.parallel.dask_engine import run_dask

            finals = run_dask(files, self.config, self.rules, self.output, self.jobs, key,
                              self.scheduler, self._round)
        else:
            from flowsense.parallel.local import run_local

            finals = run_local(files, self.config, self.rules, self.output, self.jobs, key,
                               self._round)
        self._close(finals)

    # --- joining ------------------------------------------------------------------------------
    def _round(self, msgs: list[list[Item]]) -> None:
        if self.output.kind != "analyze":
            for items in msgs:
                for item in items:
                    if item[0] == "frame" and self.sink is not None:
                        self.sink(item[1])
                    elif item[0] == "bytes" and self.text_sink is not None:
                        self.text_sink(item[1])
                    elif item[0] == "progress" and self.progress is not None:
                        self.progress(*item[1:])
            return
        queues = [deque(items) for items in msgs]
        while True:
            for q in queues:  # what partition 0 says of the inputs
                while q and q[0][0] in ("start", "progress"):
                    item = q.popleft()
                    if item[0] == "progress":
                        if self.progress is not None:
                            self.progress(*item[1:])
                        continue
                    _, path, clock = item
                    first = self._first.get(path)
                    self._starts.append((first if first is not None else clock, path))
            if not queues[0]:
                if any(queues):
                    raise RuntimeError("partitions disagree on where detectors look")
                return
            looks = [q.popleft() for q in queues]
            kinds = {lk[0] for lk in looks}
            if len(kinds) != 1 or len({lk[-1] for lk in looks}) != 1:
                raise RuntimeError("partitions disagree on where detectors look")
            if looks[0][0] == "end":  # the flows the end closed
                self._clock = looks[0][2]
                self._show(self.sink, [lk[1] for lk in looks])
                continue
            # a step's end (pipeline.Steps): its DNS replies, its ended flows, maybe a snapshot
            self._clock = looks[0][4]
            self._show(self.snapshot_sink, [lk[1] for lk in looks])
            self._show(self.sink, [lk[2] for lk in looks])
            snaps = [lk[3] for lk in looks]
            if any(s is None for s in snaps):
                if not all(s is None for s in snaps):
                    raise RuntimeError("partitions disagree on where detectors look")
                continue
            self._show(self.snapshot_sink, snaps)

    @staticmethod
    def _show(sink: FrameSink | None, frames: list[FeatureFrame]) -> None:
        frame = in_end_order(frames)
        if frame.n and sink is not None:
            sink(frame)

    def _close(self, finals: list[dict[str, Any]]) -> None:
        first = finals[0]
        counters = dict(first["counters"])
        for key in first["stats"]:
            counters[key] = sum(int(f["stats"][key]) for f in finals)
        counters["interface_drops"] = int(first["interface_drops"])
        self._counters = counters
        self.errors = [CaptureError(*e) for e in first["errors"]]
        for exc in self.errors:
            log.warning("%s", exc)
