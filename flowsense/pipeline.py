"""Wires the stages: inputs -> batches -> flow table -> feature frames -> detectors.

Owns the counters and the order of work. The inputs form one time-ordered stream: flows carry
across file boundaries (a ring buffer's rotated files). A damaged file is reported and the next
one read; nothing readable is lost.
"""

from __future__ import annotations

import bisect
import glob
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowsense.capture.decode_kernels import tally_batch
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
from flowsense.flows.features import FeatureFrame, concat, in_end_order
from flowsense.flows.table import FlowTable, WatchRule
from flowsense.schema import N_STATUS, PF_FRAG_ORPHAN, ST_TRUNCATED, STATUS_NAMES

log = logging.getLogger(__name__)


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """Files as given; folders walked recursively (sorted), keeping what looks like a capture;
    glob patterns (``*``, ``?``, ``[...]``, ``**``) expanded (sorted) when no file has that very
    name, each match then taken as a file or folder."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if not path.exists() and any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise InputMissingError(f"{p}: no file matches")
            out.extend(expand_inputs(matches))
            continue
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

    def add(self, batch: PacketBatch, tally: np.ndarray | None = None) -> None:
        """Count ``batch``; ``tally``: its ``tally_counts``, made already (a parallel run's
        producer makes them as it decodes a piece, in its own thread)."""
        t = tally_counts(batch) if tally is None else tally
        self.packets += batch.n
        self.bytes_wire += int(t[0])
        self.fragment_orphans += int(t[1])
        self.status += t[2:]

    def as_dict(self) -> dict[str, int]:
        d = {"packets": self.packets, "bytes": self.bytes_wire, "files": self.files,
             "files_damaged": self.files_damaged, "fragment_orphans": self.fragment_orphans}
        for i, name in enumerate(STATUS_NAMES):
            d[f"packets_{name}"] = int(self.status[i])
        d["decode_errors"] = int(self.status[ST_TRUNCATED:].sum())  # all but ok and not-IP
        return d


def tally_counts(batch: PacketBatch, out: np.ndarray | None = None) -> np.ndarray:
    """A batch's wire bytes, orphan fragments and packets by status (``tally_batch``), in
    ``out`` (zeroed first) or a new array."""
    c = batch.cols
    t = np.empty(2 + N_STATUS, dtype=np.int64) if out is None else out
    t[:] = 0
    tally_batch(batch.n, c["wirelen"], c["status"], c["pflags"], PF_FRAG_ORPHAN, t)
    return t


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


class Steps:
    """Where the detectors are shown what happened, in an analysis of files: the end of each
    *step*, ``batch_packets`` records of a file (counted from its first record) or the rest of
    the file at its end. At a step's end the detectors get, in this order: the DNS replies
    (prompt-ruled flows) that arrived during the step, each record as its flow stands at the
    step's end (or as it ended, if it ended first: ``FlowTable.hold_prompts``), the flows that
    ended (or were interim-recorded) during it, each frame in ``in_end_order``; then, when
    ``snapshot_interval_s`` of capture time has passed since the last look (or the clock went
    back, or at the first step), a snapshot of the live watched flows touched since.

    The steps depend on record counts and packet times only, never on how a reader batches
    records or when a table drains its events: a parallel run (``flowsense.parallel``), whose
    partitions each keep a table fed every packet, cuts the same steps and shows the detectors
    the same frames at the same points. A step is the batch a one-process reader hands on, so a
    step's end is where ``Pipeline`` always looked (the first look right after the first batch:
    a short capture's flows are seen live, before the end flushes them)."""

    def __init__(self, config: Config) -> None:
        self.every = config.capture.batch_packets
        self.snap_ns = int(config.flows.snapshot_interval_s * 1e9)
        self.last_look = 0  # the clock at the last look
        self.done = 0  # records of the current file so far
        self.prompts: list[FeatureFrame] = []
        self.ended: list[FeatureFrame] = []

    def begin_file(self) -> None:
        self.done = 0

    def cut(self, n: int) -> Iterator[tuple[int, int, bool]]:
        """A batch of ``n`` records in (start, stop, whether a step ends at stop)."""
        start = 0
        while start < n:
            stop = min(n, start + self.every - self.done % self.every)
            self.done += stop - start
            yield start, stop, self.done % self.every == 0
            start = stop

    def look_due(self, clock: int) -> bool:
        """Whether the live watched flows are shown at a step's end (updates the last look)."""
        if clock - self.last_look < self.snap_ns and clock >= self.last_look:
            return False
        self.last_look = clock
        return True

    def take(self) -> tuple[FeatureFrame, FeatureFrame]:
        """The step's DNS replies and ended flows, each in ``in_end_order``; held no longer."""
        prompts, ended = in_end_order(self.prompts), in_end_order(self.ended)
        self.prompts.clear()  # in place: a table's prompt_sink is this list's append
        self.ended.clear()
        return prompts, ended


class Pipeline:
    """One stream of inputs through one flow table; frames of ended flows go to ``sink``.

    With a ``snapshot_sink`` (the detectors' use), files are analysed in ``Steps``: what ended,
    and the DNS replies, are shown at each step's end, and the live watched flows on a
    capture-time cadence. A live source (``feed``, ``tick``: the sidecar) hands the detectors
    what ended as the table drains it, DNS replies at once, and looks at each tick.
    """

    def __init__(self, config: Config, sink: FrameSink,
                 watch_rules: Iterable[WatchRule] = (),
                 snapshot_sink: FrameSink | None = None, heads: bool = True,
                 record_slice: int = 0) -> None:
        self.config = config
        self.sink = sink
        self.snapshot_sink = snapshot_sink
        self.steps = Steps(config)
        # heads False: the records for ``sink`` carry none (detectors' looks keep theirs)
        self.table = FlowTable(config.flows, list(watch_rules), heads=heads,
                               looked_at=snapshot_sink is not None)
        self.table.record_slice = record_slice  # records in slices (a sink that lets them go)
        # prompt-ruled flows (a DNS answer) reach the detectors as live records when their
        # reply arrives, before any flow that ends later is judged (files: at the step's end)
        self.table.prompt_sink = snapshot_sink
        self.decoder = Decoder(config.capture)
        self.reader_stats = ReaderStats()
        self.counters = Counters()
        self.errors: list[CaptureError] = []
        self._starts: list[tuple[int, str]] = []  # (first packet ns, path) of each input read
        self.progress: ProgressHook | None = None
        self._stepped = False  # files were analysed in steps: the end is shown in one frame
        self._end_clock = 0

    def run_file(self, path: str) -> None:
        c = self.counters
        c.files += 1
        first = first_timestamp(path, self.config.capture)
        self._starts.append((first if first is not None else self.table.clock_ns, path))
        # a file that goes back in time needs no rule of its own: the table restarts its flows
        # at any packet older than the clock by more than the idle timeout (K_TIMEJUMP)
        mapped = self.progress is not None and is_mapped(path)
        stepped = self.snapshot_sink is not None
        if stepped:
            self._stepped = True
            self.steps.begin_file()
            self.table.prompt_sink = self.steps.prompts.append
            self.table.hold_prompts = True
            self.table.end_ordered = True  # kept for the end's flush too
        try:
            for batch in iter_batches(path, self.config.capture, self.reader_stats, self.decoder):
                if stepped:
                    self._feed_steps(batch)
                else:
                    self.feed(batch)
                if self.progress is not None and batch.n:
                    end = int(batch.cols["rec_off"][batch.n - 1]) if mapped else None
                    self.progress(path, batch.n, end)
        except CaptureError as exc:
            c.files_damaged += 1
            # keep the error, not its traceback: the frames would pin the reader's buffers
            self.errors.append(exc.with_traceback(None))
            log.warning("%s", exc)
        if stepped:
            self._step_end()  # the file's end ends its last step
            self.table.prompt_sink = self.snapshot_sink
            self.table.hold_prompts = False
        if self.progress is not None:
            self.progress(path, 0, FILE_DONE)

    def feed(self, batch: PacketBatch) -> None:
        """One decoded batch into the table (a live source)."""
        self.counters.add(batch)
        self.table.feed(batch, self.sink)
        self._maybe_snapshot()

    def _feed_steps(self, batch: PacketBatch) -> None:
        self.counters.add(batch)
        for start, stop, end in self.steps.cut(batch.n):
            part = batch if stop - start == batch.n else slice_batch(batch, start, stop)
            self.table.feed(part, self.steps.ended.append)
            if end:
                self._step_end()

    def _step_end(self) -> None:
        assert self.snapshot_sink is not None
        self.table.release_prompts()
        prompts, ended = self.steps.take()
        if prompts.n:
            self.snapshot_sink(prompts)
        if ended.n:
            self.sink(ended)
        self._maybe_snapshot()

    def tick(self, now_ns: int) -> None:
        """Live input: advance the table's clock to ``now_ns`` (expiring what idled out) and
        show detectors the watched flows touched since the last look, whatever the capture
        time says (a quiet link still ticks)."""
        self.table.tick(now_ns, self.sink)
        if self.snapshot_sink is None:
            return
        self.steps.last_look = self.table.clock_ns
        self._snapshot()

    def _maybe_snapshot(self) -> None:
        """Show detectors the live watched flows touched since the last look, on a capture-time
        cadence (the flows their watch rules picked; the rest are judged when they end)."""
        if self.snapshot_sink is not None and self.steps.look_due(self.table.clock_ns):
            self._snapshot()

    def _snapshot(self) -> None:
        assert self.snapshot_sink is not None
        frame = in_end_order([self.table.snapshot(watched_only=True)])
        if frame.n:
            self.snapshot_sink(frame)

    def run(self, paths: list[str]) -> None:
        """Every input (in time order), then the end."""
        for path in paths:
            self.run_file(path)
        self.finish()

    @property
    def clock_ns(self) -> int:
        """The latest packet time (after the end: the last before it; the end resets the
        table's clock)."""
        return self.table.clock_ns or self._end_clock

    def source_of(self, ts_ns: int) -> str:
        """The input a packet of time ``ts_ns`` came from (inputs are read in time order)."""
        k = bisect.bisect_right(self._starts, (ts_ns, "\U0010ffff")) - 1
        return self._starts[max(k, 0)][1] if self._starts else ""

    def finish(self) -> None:
        """End every live flow. After files analysed in steps, the flows the end closes are
        shown in one frame in ``in_end_order`` (as a parallel run shows them)."""
        self._end_clock = self.table.clock_ns
        if not self._stepped:
            self.table.flush(self.sink)
            return
        self.table.flush(self.steps.ended.append)
        _, ended = self.steps.take()
        if ended.n:
            self.sink(ended)

    def counters_dict(self) -> dict[str, int]:
        d = self.counters.as_dict()
        d.update(self.table.stats())
        d["interface_drops"] = self.reader_stats.interface_drops
        return d


def slice_batch(batch: PacketBatch, start: int, stop: int) -> PacketBatch:
    return PacketBatch(batch.buf, stop - start, {k: v[start:stop] for k, v in batch.cols.items()},
                       batch.source)


def order_by_time(paths: list[str], config: Config | None = None) -> list[str]:
    """Inputs in the order of their first packet (a ring buffer's files, whatever their names);
    stdin and unreadable files keep their place at the end."""
    cap = (config or Config()).capture
    keyed = [(first_timestamp(p, cap), i, p) for i, p in enumerate(paths)]
    timed = sorted((t, i, p) for t, i, p in keyed if t is not None)
    return [p for _, _, p in timed] + [p for t, _, p in keyed if t is None]


def compute_flows(paths: list[str], config: Config | None = None, jobs: int = 1,
                  engine: str = "local", scheduler: str | None = None,
                  heads: bool = True) -> FlowsResult:
    """Flow records of ``paths`` (one stream), in the order the flows ended (as nfstream and
    Zeek emit them); ``frame.seq`` gives the order they began. With ``jobs`` > 1 (or the
    ``dask`` engine), the same records from parallel partitions (``flowsense.parallel``), in
    another order, ``seq`` counted per partition. With ``heads`` False the records carry no
    payload heads, and none are kept (the flows command's job)."""
    from flowsense.parallel.engine import ParallelPipeline, can_split
    from flowsense.parallel.partition import Output

    config = config or Config()
    frames: list[FeatureFrame] = []
    paths = order_by_time(expand_inputs(paths), config)
    pipe: Pipeline | ParallelPipeline
    if (jobs > 1 or engine != "local") and can_split(paths):
        pipe = ParallelPipeline(config, frames.append, jobs=jobs, engine=engine,
                                scheduler=scheduler, output=Output(heads=heads))
    else:
        pipe = Pipeline(config, frames.append, heads=heads)
    pipe.run(paths)
    return FlowsResult(concat(frames), pipe.counters_dict(), pipe.errors)
