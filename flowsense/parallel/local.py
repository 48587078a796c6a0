"""``--jobs N`` on one machine: N worker threads, each a partition, in rounds.

In round j the workers decode the N pieces of round j+1 into the round's regions (the walk
and decode run in parallel), each taking the next piece no worker has taken yet, so the worker
whose partition has less to aggregate decodes more; then each feeds its table every piece of
round j in order and hands the caller what it made. Three sets of regions take turns, so
memory is N x 3 regions whatever the capture's size, and a worker runs up to a round ahead of
the slowest (``_Sync``): it waits only to consume a round not all decoded yet, or to decode
into a set a worker still reads.

Threads, not processes: every kernel releases the GIL (``nogil``), and the Python between
kernel calls is a few per cent of a worker's time. Threads walk, decode and read payloads
through one map of each input (``plan.FileMaps``: a forked worker mapped and populated every
range it aggregated) and hand their records over as they are (no pickling, no pipe, no copy),
and the caller's detectors and writers run beside them. Forked workers cost more than they
parallelised: on two cores ``--jobs 2`` ran slower than ``--jobs 1`` (benchmarks/README.md,
"Scaling over cores")."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from flowsense.capture.reader import MAX_PCAPNG_BLOCK
from flowsense.config import Config
from flowsense.flows.table import WatchRule
from flowsense.parallel.partition import Item, Output, Partition
from flowsense.parallel.plan import (
    H_ENDED,
    FileMaps,
    InputFile,
    Piece,
    Producer,
    Region,
    Rounds,
    warm_kernels,
)

AHEAD = 2  # rounds a worker may hand over before the caller has taken them (bounds memory)
SETS = 3  # sets of regions: round j's pieces are decoded into set j % SETS


class _Sync:
    """What the workers wait for, round by round: to consume round j, every piece of it
    decoded; to decode round j+1 into its set, every worker done with round j+1-SETS, the
    round that used the set last. In place of a barrier a round, at which the worker with the
    lighter round waited for the other (the rounds' work is uneven: 8-31 ms a worker a pass
    over the 2M capture). ``abort`` breaks every wait (``threading.BrokenBarrierError``)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cv = threading.Condition()
        self._decoded: dict[int, int] = {}  # round -> its pieces decoded so far
        self._consumed: dict[int, int] = {}  # round -> the workers done with it
        self._claimed: dict[int, int] = {}  # round -> its pieces a worker has taken to decode
        self._done_through = -1  # every round up to this one is consumed by every worker
        self._broken = False

    def _wait(self, ready: Callable[[], bool]) -> None:
        with self._cv:
            while not ready():
                if self._broken:
                    raise threading.BrokenBarrierError
                self._cv.wait()

    def claim(self, j: int, pieces: int) -> int | None:
        """A piece of round ``j`` no worker has taken to decode yet (its index), or None."""
        with self._cv:
            k = self._claimed.get(j, 0)
            if k >= pieces:
                return None
            self._claimed[j] = k + 1
            return k

    def decoded(self, j: int) -> None:
        with self._cv:
            self._decoded[j] = self._decoded.get(j, 0) + 1
            self._cv.notify_all()

    def wait_decoded(self, j: int, pieces: int) -> None:
        self._wait(lambda: self._decoded.get(j, 0) >= pieces)

    def consumed(self, j: int) -> None:
        with self._cv:
            k = self._consumed.get(j, 0) + 1
            if k < self.n:
                self._consumed[j] = k
                return
            # each worker consumes the rounds in order: round j is the next one done by all
            self._consumed.pop(j, None)
            self._decoded.pop(j, None)
            self._claimed.pop(j, None)
            self._done_through = j
            self._cv.notify_all()

    def wait_consumed(self, j: int) -> None:
        self._wait(lambda: self._done_through >= j)

    def abort(self) -> None:
        with self._cv:
            self._broken = True
            self._cv.notify_all()


class _Stopped(Exception):
    """The caller gave up on the run (its sink failed): a worker ends quietly."""


def _regions(config: Config, n: int) -> list[list[Region]]:
    cap = config.capture
    packets = max(cap.chunk_bytes // 16 + 2, cap.batch_packets)
    inline = cap.read_chunk_bytes + MAX_PCAPNG_BLOCK + (64 << 10)
    return [[Region(packets, inline) for _ in range(n)] for _ in range(SETS)]


class _Worker:
    """Partition ``p``'s thread: its table, its decoder for the pieces it produces, and the
    queue it hands each round's items to the caller through."""

    def __init__(self, p: int, n: int, key: int, config: Config, rules: list[WatchRule],
                 output: Output, files: list[InputFile], maps: FileMaps,
                 regions: list[list[Region]], sync: _Sync, stop: threading.Event) -> None:
        self.p = p
        self.args = (n, key, config, rules, output, files, maps)
        self.regions = regions
        self.sync = sync
        self.stop = stop
        self.out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=AHEAD)
        self.thread = threading.Thread(target=self._run, name=f"flowsense-partition-{p}",
                                       daemon=True)

    def _run(self) -> None:
        try:
            self._rounds()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            self.sync.abort()
            try:
                self._put(("error", exc))
            except _Stopped:
                pass

    def _put(self, msg: tuple[str, Any]) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.out.put(msg)  # the caller drains the queue when it stops, so this never hangs

    def _rounds(self) -> None:
        n, key, config, rules, output, files, maps = self.args
        p, regions, sync = self.p, self.regions, self.sync
        part = Partition(p, n, key, config, rules, output, files, maps)
        if output.kind != "analyze":  # the detectors' looks go by round; records need not
            part.hand_over = lambda items: self._put(("part", items))
        producer = Producer(files, config, n, key, part.fragments, maps)
        rounds = Rounds(files, n, config.capture.chunk_bytes)
        walked: dict[int, list[Piece]] = {}  # round -> the ranges this worker walked in it

        def produce(j: int, k: int, piece: Piece) -> None:
            # every worker is done with the set's last round, so with every range this worker
            # walked up to it (rounds it decoded nothing in release none: a later piece does)
            sync.wait_consumed(j - SETS)
            for r in [r for r in walked if r <= j - SETS]:
                for old in walked.pop(r):
                    maps.release(old)
            producer.produce(piece, regions[j % SETS][k])
            if piece.kind == "range":
                walked.setdefault(j, []).append(piece)
            sync.decoded(j)

        def produce_any(j: int, pieces: list[Piece]) -> None:
            """Decode what is left of round ``j``'s pieces, one at a time: a worker whose
            partition had less to do takes more of the decoding (the partitions' shares of
            the packets differ by a few per cent a run)."""
            while (k := sync.claim(j, len(pieces))) is not None:
                produce(j, k, pieces[k])

        cur = rounds.next()
        if cur and cur[0].kind != "stream":
            produce_any(0, cur)
        elif cur and p == 0:
            produce(0, 0, cur[0])
        j = 0
        while cur:
            here = regions[j % SETS]
            sync.wait_decoded(j, len(cur))
            ended = cur[0].kind != "stream" or bool(here[0].hdr[H_ENDED])
            nxt = rounds.next(ended)
            stream_next = bool(nxt) and nxt[0].kind == "stream"
            if nxt and not stream_next:
                produce_any(j + 1, nxt)
            for k, piece in enumerate(cur):
                part.consume(piece, here[k])
            if stream_next and p == 0:
                # after this round: the stream shares this worker's fragment decoder, in order
                produce(j + 1, 0, nxt[0])
            self._put(("round", part.take()))
            sync.consumed(j)
            cur = nxt
            j += 1
        self._put(("final", part.finish()))
        sync.wait_consumed(j - 1)  # the last rounds' ranges: released here, not at the close
        for pieces in walked.values():
            for piece in pieces:
                maps.release(piece)


def _message(w: _Worker, on_round: Callable[[list[list[Item]]], None]) -> tuple[str, Any]:
    """Worker ``w``'s next message that is not a part: its round, its error or its closing
    report. The parts it sent before that go to ``on_round`` as they come; the caller takes
    the workers one after the other, so the records go out in the order of whole rounds."""
    while True:
        kind, body = w.out.get()
        if kind != "part":
            return kind, body
        on_round([body])


def run_local(files: list[InputFile], config: Config, rules: list[WatchRule], output: Output,
              jobs: int, key: int,
              on_round: Callable[[list[list[Item]]], None]) -> list[dict[str, Any]]:
    """Run the workers; ``on_round`` gets each round's items (worker order), in this thread,
    and before them what a worker hands over within a round (``Partition.hand_over``: records,
    for ``flows`` and ``compute_flows``) as a list of one; returns the workers' closing
    reports (their last items passed to ``on_round`` and taken out)."""
    warm_kernels(config)
    maps = FileMaps(files)
    regions = _regions(config, jobs)
    sync = _Sync(jobs)
    stop = threading.Event()
    workers = [_Worker(p, jobs, key, config, rules, output, files, maps, regions, sync, stop)
               for p in range(jobs)]
    for w in workers:
        w.thread.start()
    finals: list[dict[str, Any]] = []
    try:
        while not finals:
            msgs = [_message(w, on_round) for w in workers]
            errors = [body for kind, body in msgs if kind == "error"]
            if errors:  # the first cause, not a worker that found its wait broken
                first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                             errors[0])
                raise RuntimeError(f"a parallel worker failed: {first!r}") from first
            if len({kind for kind, _ in msgs}) != 1:
                raise RuntimeError("parallel workers disagree on the rounds")
            if msgs[0][0] == "final":
                finals = [body for _, body in msgs]
                on_round([body.pop("items") for body in finals])
            else:
                on_round([body for _, body in msgs])
            # the round's records go once they are passed on: held here, they stayed alive
            # while the workers made the next round (a flows run's ten-times capture held each
            # copy's last records, every live flow's, beside the next round's)
            del msgs
    finally:
        if not finals:  # stop the workers: free any worker waiting for another or to hand over
            stop.set()
            sync.abort()
        for w in workers:  # ended, or ending: what a stopped worker still hands over is dropped
            while w.thread.is_alive():
                try:
                    w.out.get_nowait()
                except queue.Empty:
                    w.thread.join(0.01)  # returns as soon as the thread ends
    return finals
