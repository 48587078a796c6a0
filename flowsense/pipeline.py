"""Wires the stages: inputs -> batches -> flow table -> feature frames -> detectors.

Owns the counters and the order of work. The inputs form one time-ordered stream: flows carry
across file boundaries (a ring buffer's rotated files). A damaged file is reported and the next
one read; nothing readable is lost.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowsense.capture.reader import (
    Decoder,
    PacketBatch,
    ReaderStats,
    first_timestamp,
    is_capture_magic,
    iter_batches,
)
from flowsense.capture.source import is_mapped
from flowsense.config import Config
from flowsense.errors import CaptureError, InputMissingError
from flowsense.flows.features import FeatureFrame, concat
from flowsense.flows.table import FlowTable, WatchRule
from flowsense.schema import N_STATUS, PF_FRAG_ORPHAN, ST_TRUNCATED, STATUS_NAMES

log = logging.getLogger(__name__)


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """Files as given; folders walked recursively (sorted), keeping what looks like a capture."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    try:
                        with open(full, "rb") as f:
                            head = f.read(4)
                    except OSError:
                        continue
                    if is_capture_magic(head):
                        out.append(full)
        elif path.exists():
            out.append(p)
        else:
            raise InputMissingError(f"{p}: no such file or directory")
    return out


@dataclass
class Counters:
    packets: int = 0
    bytes_wire: int = 0
    status: np.ndarray = field(default_factory=lambda: np.zeros(N_STATUS, dtype=np.int64))
    fragment_orphans: int = 0
    files: int = 0
    files_damaged: int = 0

    def as_dict(self) -> dict[str, int]:
        d = {"packets": self.packets, "bytes": self.bytes_wire, "files": self.files,
             "files_damaged": self.files_damaged, "fragment_orphans": self.fragment_orphans}
        for i, name in enumerate(STATUS_NAMES):
            d[f"packets_{name}"] = int(self.status[i])
        d["decode_errors"] = int(self.status[ST_TRUNCATED:].sum())  # all but ok and not-IP
        return d


@dataclass
class FlowsResult:
    frame: FeatureFrame
    counters: dict[str, int]
    errors: list[CaptureError]

    @property
    def n_flows(self) -> int:
        return self.frame.n


FrameSink = Callable[[FeatureFrame], None]
ProgressHook = Callable[[str, int, int | None], None]
"""Called once a batch with (path, packets in the batch, bytes of ``path`` read so far, or None
where the input is a stream or gzip), and once more with ``FILE_DONE`` when the file ends."""
FILE_DONE = -1


class Pipeline:
    """One stream of inputs through one flow table; frames of ended flows go to ``sink``."""

    def __init__(self, config: Config, sink: FrameSink,
                 watch_rules: Iterable[WatchRule] = (),
                 snapshot_sink: FrameSink | None = None, heads: bool = True) -> None:
        self.config = config
        self.sink = sink
        self.snapshot_sink = snapshot_sink
        self._snap_ns = int(config.flows.snapshot_interval_s * 1e9)
        self._last_snap = 0
        self.table = FlowTable(config.flows, list(watch_rules))
        self.table.export_heads = heads  # the records for ``sink``; detectors' looks keep theirs
        # prompt-ruled flows (a DNS answer) reach the detectors as live records the moment
        # their reply arrives, before any flow that ends later is judged
        self.table.prompt_sink = snapshot_sink
        self.decoder = Decoder(config.capture)
        self.reader_stats = ReaderStats()
        self.counters = Counters()
        self.errors: list[CaptureError] = []
        self._starts: list[tuple[int, str]] = []  # (first packet ns, path) of each input read
        self.progress: ProgressHook | None = None

    def run_file(self, path: str) -> None:
        c = self.counters
        c.files += 1
        first = first_timestamp(path, self.config.capture)
        self._starts.append((first if first is not None else self.table.clock_ns, path))
        # a file that goes back in time needs no rule of its own: the table restarts its flows
        # at any packet older than the clock by more than the idle timeout (K_TIMEJUMP)
        mapped = self.progress is not None and is_mapped(path)
        try:
            for batch in iter_batches(path, self.config.capture, self.reader_stats, self.decoder):
                self.feed(batch)
                if self.progress is not None and batch.n:
                    end = int(batch.cols["rec_off"][batch.n - 1]) if mapped else None
                    self.progress(path, batch.n, end)
        except CaptureError as exc:
            c.files_damaged += 1
            # keep the error, not its traceback: the frames would pin the reader's buffers
            self.errors.append(exc.with_traceback(None))
            log.warning("%s", exc)
        if self.progress is not None:
            self.progress(path, 0, FILE_DONE)

    def feed(self, batch: PacketBatch) -> None:
        """One decoded batch into the table (files and live sources alike)."""
        c = self.counters
        c.packets += batch.n
        c.bytes_wire += int(batch.cols["wirelen"].sum())
        c.status += np.bincount(batch.cols["status"], minlength=N_STATUS)[:N_STATUS]
        c.fragment_orphans += int(np.count_nonzero(batch.cols["pflags"] & PF_FRAG_ORPHAN))
        self.table.feed(batch, self.sink)
        self._maybe_snapshot()

    def tick(self, now_ns: int) -> None:
        """Live input: advance the table's clock to ``now_ns`` (expiring what idled out) and
        show detectors the watched flows touched since the last look, whatever the capture
        time says (a quiet link still ticks)."""
        self.table.tick(now_ns, self.sink)
        if self.snapshot_sink is None:
            return
        self._last_snap = self.table.clock_ns
        frame = self.table.snapshot(watched_only=True)
        if frame.n:
            self.snapshot_sink(frame)

    def _maybe_snapshot(self) -> None:
        """Show detectors the live watched flows touched since the last look, on a capture-time
        cadence (the flows their watch rules picked; the rest are judged when they end)."""
        if self.snapshot_sink is None:
            return
        clock = self.table.clock_ns
        if clock - self._last_snap < self._snap_ns and clock >= self._last_snap:
            return
        self._last_snap = clock
        frame = self.table.snapshot(watched_only=True)
        if frame.n:
            self.snapshot_sink(frame)

    def source_of(self, ts_ns: int) -> str:
        """The input a packet of time ``ts_ns`` came from (inputs are read in time order)."""
        k = bisect.bisect_right(self._starts, (ts_ns, "\U0010ffff")) - 1
        return self._starts[max(k, 0)][1] if self._starts else ""

    def finish(self) -> None:
        self.table.flush(self.sink)

    def counters_dict(self) -> dict[str, int]:
        d = self.counters.as_dict()
        d.update(self.table.stats())
        d["interface_drops"] = self.reader_stats.interface_drops
        return d


def order_by_time(paths: list[str], config: Config | None = None) -> list[str]:
    """Inputs in the order of their first packet (a ring buffer's files, whatever their names);
    stdin and unreadable files keep their place at the end."""
    cap = (config or Config()).capture
    keyed = [(first_timestamp(p, cap), i, p) for i, p in enumerate(paths)]
    timed = sorted((t, i, p) for t, i, p in keyed if t is not None)
    return [p for _, _, p in timed] + [p for t, _, p in keyed if t is None]


def compute_flows(paths: list[str], config: Config | None = None) -> FlowsResult:
    """Flow records of ``paths`` (one stream), in the order the flows ended (as nfstream and
    Zeek emit them); ``frame.seq`` gives the order they began."""
    config = config or Config()
    frames: list[FeatureFrame] = []
    pipe = Pipeline(config, frames.append)
    for path in order_by_time(expand_inputs(paths), config):
        pipe.run_file(path)
    pipe.finish()
    return FlowsResult(concat(frames), pipe.counters_dict(), pipe.errors)
