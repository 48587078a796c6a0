"""One partition's share of a parallel run: its own flow table, fed every packet of the stream
in order, its own flows as packets and everyone else's as clock ticks.

A flow belongs to one partition (a keyed hash of its key, both directions alike), so all of a
flow's packets meet one table in capture order and its record is what one table would make. The
ticks keep every table's clock, time jumps and expiry (idle ends, interim records, the moment of
an active timeout) exactly those of a single table. For the detectors every partition cuts the
stream into the same steps as one process (``pipeline.Steps``: record counts of each file) and
hands back, at each step's end, its share of what the detectors are shown there; the caller
joins the shares (``engine.ParallelPipeline``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flowsense.capture.reader import Decoder, PacketBatch, ReaderStats, Span, iter_batches
from flowsense.config import Config
from flowsense.errors import CaptureError
from flowsense.flows.features import FeatureFrame, in_end_order
from flowsense.flows.table import RECORD_SLICE, FlowTable, WatchRule
from flowsense.parallel.kernels import tick_statuses
from flowsense.parallel.plan import (
    H_DROPS,
    H_ENDED,
    H_FRAG,
    H_INLINE,
    H_NEXT,
    H_START,
    FileMaps,
    InputFile,
    Piece,
    Region,
    assign_partitions,
    table_key,
)
from flowsense.pipeline import FILE_DONE, Counters, Steps, slice_batch
from flowsense.report import flows as flows_out

Item = tuple[Any, ...]
PART_BYTES = 16 << 20  # records a partition holds before it hands them over (``hand_over``)


@dataclass(frozen=True)
class Output:
    """What partitions hand back: ``analyze`` (looks for the detectors), ``frames`` (records as
    FeatureFrames), or text formatted where the records are made: ``jsonl`` or ``csv``; with
    ``heads`` False the records carry no payload heads (the flows command reads none)."""

    kind: str = "frames"
    splt: bool = False
    heads: bool = True  # records with payload heads (flows output writes none: not made)

    @property
    def record_slice(self) -> int:
        """Flows a record frame holds at most (``FlowTable.record_slice``): text is written
        and let go, so a drain of many flows comes in slices; frames a sink keeps come whole."""
        return RECORD_SLICE if self.kind in ("jsonl", "csv") else 0


class _Text:
    """What the flow writers write to, kept as uint8 arrays (handed to the caller as they
    are; Dask pickles them out of band): text rows joined once, the JSON kernel's bytes as they
    are (a view of its buffer, sized for the worst case, about twice what it holds: held only
    until the round is handed over; copying it cost more). No reference cycle (``buffer`` is a
    property): what it holds goes as soon as the round is handed over, not at the next garbage
    collection."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._rows: list[str] = []

    @property
    def buffer(self) -> _Text:
        return self

    def write(self, data: str | bytes | memoryview) -> int:
        if isinstance(data, str):
            self._rows.append(data)
        else:
            self._flush_rows()
            self._parts.append(np.frombuffer(data, dtype=np.uint8))
        return len(data)

    def writelines(self, lines: Iterable[str]) -> None:
        self._rows.extend(lines)

    def _flush_rows(self) -> None:
        if self._rows:
            data = "".join(self._rows).encode("utf-8")
            self._parts.append(np.frombuffer(data, dtype=np.uint8))
            self._rows = []

    def flush(self) -> None:
        pass

    @property
    def parts(self) -> list[np.ndarray]:
        self._flush_rows()
        return self._parts


def _frame_bytes(frame: FeatureFrame) -> int:
    """About what a frame of records holds (its ready columns and first-packet arrays)."""
    arrays = [*dict.values(frame.cols), frame.splt_ps, frame.splt_t_ms, frame.head, frame.addr]
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))


def partition_batch(batch: PacketBatch, part: np.ndarray, hashes: np.ndarray, p: int,
                    status: np.ndarray) -> PacketBatch:
    """What partition ``p``'s table is fed of ``batch``: every packet, the other partitions'
    with status ST_TICK (written into ``status``, room for the batch), each with its flow hash
    (``assign_partitions`` made ``part`` and ``hashes``)."""
    n = batch.n
    tick_statuses(batch.cols["status"], part, n, p, status)
    return PacketBatch(batch.buf, n, {**batch.cols, "status": status[:n], "hash": hashes[:n]},
                       batch.source)


def partition_config(config: Config, n_parts: int) -> Config:
    """A partition's table: the flow bound shared out (each table evicts on its own); the watch
    quota kept whole in each, so no watch a single table grants is refused."""
    flows = config.flows
    if flows.max_flows:
        flows = replace(flows, max_flows=max(16, -(-flows.max_flows // n_parts)))
    return replace(config, flows=flows)


class Partition:
    """Aggregates partition ``p`` of ``n_parts``; collects what it hands back in ``items``."""

    def __init__(self, p: int, n_parts: int, key: int, config: Config,
                 rules: list[WatchRule], output: Output, files: list[InputFile],
                 maps: FileMaps | None = None) -> None:
        self.p = p
        self.n_parts = n_parts
        self.key = key
        self.config = config
        self.output = output
        self.files = files
        self.maps = maps or FileMaps(files)  # the run's maps (shared by a local run's workers)
        self.table = FlowTable(partition_config(config, n_parts).flows, rules,
                               heads=output.heads, looked_at=output.kind == "analyze",
                               hash_key=table_key(key))
        self.table.record_slice = output.record_slice
        self.fragments = Decoder(config.capture)  # sees every fragment, in order
        self.stats = ReaderStats()
        self.counters = Counters()  # partition 0 counts packets for the run
        self.errors: list[CaptureError] = []
        self.items: list[Item] = []
        # records handed over before the round ends, ``PART_BYTES`` at a time (a local run's
        # worker sets it; the caller writes them at once): a round that ends every live flow
        # (a capture resuming after a gap) held all their records and text until its end
        self.hand_over: Callable[[list[Item]], None] | None = None
        self._held_bytes = 0
        self._offsets = True
        self.steps = Steps(config)
        if output.kind == "analyze":  # DNS replies go with the step they came in
            self.table.prompt_sink = self.steps.prompts.append
            self.table.hold_prompts = True
            self.table.end_ordered = True
        self._damaged: set[int] = set()
        self._next: dict[int, int] = {}  # file -> where its next range starts
        self._part = np.empty(0, dtype=np.uint8)
        self._hash = np.empty(0, dtype=np.uint64)
        self._status = np.empty(0, dtype=np.uint8)

    # --- input ------------------------------------------------------------------------------
    def read_file(self, f: int) -> None:
        """A whole input, read here (Dask, where every partition reads for itself)."""
        self._begin(f)
        self._read_local(f, None)
        self._file_end(f)

    def consume(self, piece: Piece, region: Region | None) -> None:
        """A piece decoded into ``region`` by whichever worker produced it (or read here when
        the region's guess of where the range starts was wrong, or it holds fragments)."""
        f = piece.file
        if f in self._damaged:
            return
        self._consume(piece, region)
        if (f in self._damaged or piece.kind == "whole"
                or (piece.kind == "range" and piece.stop >= self.files[f].size)
                or (piece.kind == "stream" and region is not None and region.hdr[H_ENDED])):
            self._file_end(f)

    def _consume(self, piece: Piece, region: Region | None) -> None:
        f = piece.file
        if piece.first:
            self._begin(f)
        inp = self.files[f]
        h = region.hdr if region is not None else None
        if piece.kind == "range":
            start = piece.start if piece.first else self._next[f]
            if h is None or h[H_START] != start or h[H_FRAG]:
                self._next[f] = self._read_local(f, Span(start, piece.stop, start))
                return
            self._next[f] = int(h[H_NEXT])
        elif piece.kind == "whole" and (h is None or h[H_FRAG]):
            self._read_local(f, None)
            return
        assert region is not None and h is not None
        if h[H_DROPS] >= 0:
            self.stats.interface_drops = int(h[H_DROPS])
        # payload offsets are file offsets, read in the input's map (a stream's batch points
        # into the region's own copy, which ``Region.batch`` takes)
        buf = self.maps.get(f) if h[H_INLINE] < 0 else region.inline
        self._batch(region.batch(buf, inp.path), region)
        err = region.error(inp.path)
        if err is not None:
            self._damage(f, err)

    def _begin(self, f: int) -> None:
        self.counters.files += 1
        self.steps.begin_file()
        self._offsets = self.files[f].mapped  # record offsets are file offsets (not .gz)
        if self.p == 0:
            self.items.append(("start", self.files[f].path, self.table.clock_ns))

    def _read_local(self, f: int, span: Span | None) -> int:
        try:
            for batch in iter_batches(self.files[f].path, self.config.capture, self.stats,
                                      self.fragments, span):
                self._batch(batch, None)
                self._drain()
        except CaptureError as exc:
            self._damage(f, exc.with_traceback(None))
        return span.next_pos if span is not None else -1

    def _damage(self, f: int, exc: CaptureError) -> None:
        self._damaged.add(f)
        self.counters.files_damaged += 1
        self.errors.append(exc)

    # --- aggregation ------------------------------------------------------------------------
    def _batch(self, batch: PacketBatch, region: Region | None) -> None:
        """Feed a batch: ``region``'s, whose partitions, flow hashes and counters were made as
        it was decoded, or one read here (None: they are made here)."""
        n = batch.n
        if len(self._status) < n:
            self._status = np.empty(n, dtype=np.uint8)
            self._part = np.empty(n, dtype=np.uint8)
            self._hash = np.empty(n, dtype=np.uint64)
        if region is None:
            part, hashes, tally = self._part, self._hash[:n], None
            assign_partitions(batch, part, self.n_parts, self.key, hashes)
        else:
            part, hashes, tally = region.part, region.hash[:n], region.tally
        if self.p == 0:  # the run's packet counters (and progress) are partition 0's
            self.counters.add(batch, tally)
            if n:
                end = int(batch.cols["rec_off"][n - 1]) if self._offsets else None
                self.items.append(("progress", batch.source, n, end))
        feed = partition_batch(batch, part, hashes, self.p, self._status)
        if self.output.kind != "analyze":
            self.table.feed(feed, self._records, drain=False)  # drained once a round
            return
        for start, stop, end in self.steps.cut(n):
            sub = feed if stop - start == n else slice_batch(feed, start, stop)
            self.table.feed(sub, self.steps.ended.append, drain=False)
            if end:
                self._step_end()

    def _step_end(self) -> None:
        """This partition's share of what the detectors are shown at a step's end (the step's
        DNS replies, its ended flows, and a snapshot when one is due: ``pipeline.Steps``)."""
        self.table.drain(self.steps.ended.append)
        self.table.release_prompts()
        prompts, ended = self.steps.take()
        clock = self.table.clock_ns
        snap = (in_end_order([self.table.snapshot(watched_only=True)])
                if self.steps.look_due(clock) else None)
        self.items.append(("look", prompts, ended, snap, clock))

    def _file_end(self, f: int) -> None:
        if self.output.kind == "analyze":
            self._step_end()  # a file's end ends its last step
        if self.p == 0:
            self.items.append(("progress", self.files[f].path, 0, FILE_DONE))

    def _records(self, frame: FeatureFrame) -> None:
        kind = self.output.kind
        if kind == "frames":
            self.items.append(("frame", frame))
            self._held_bytes += _frame_bytes(frame)
        else:
            text = _Text()
            if kind == "csv":
                flows_out.write_csv(frame, text, header=False)
            else:
                flows_out.write_jsonl(frame, text, splt=self.output.splt)
            parts = text.parts
            self.items.extend(("bytes", part) for part in parts)
            self._held_bytes += sum(part.nbytes for part in parts)
        if self.hand_over is not None and self._held_bytes >= PART_BYTES:
            self.hand_over(self.take_held())

    def take_held(self) -> list[Item]:
        """What this partition made and holds, now (records in the order they were made)."""
        out, self.items = self.items, []
        self._held_bytes = 0
        return out

    def _drain(self) -> None:
        """Ended flows out (``flows``; for the detectors they wait for their step's end)."""
        if self.output.kind != "analyze":
            self.table.drain(self._records)

    def take(self) -> list[Item]:
        """What this partition made since the last call (ended flows drained first)."""
        self._drain()
        return self.take_held()

    def finish(self) -> dict[str, Any]:
        """End every flow; returns the partition's closing report (its items included)."""
        clock = self.table.clock_ns
        self._drain()
        if self.output.kind == "analyze":
            self.table.drain(self.steps.ended.append)
            self.table.flush(self.steps.ended.append)
            self.items.append(("end", self.steps.take()[1], clock))
        else:
            self.table.flush(self._records)
        return {"items": self.take(), "stats": self.table.stats(),
                "counters": self.counters.as_dict() if self.p == 0 else None,
                "errors": [(e.path, e.offset, e.reason) for e in self.errors],
                "interface_drops": self.stats.interface_drops}
