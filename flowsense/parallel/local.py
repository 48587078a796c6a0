"""``--jobs N`` on one machine: N forked workers, each a partition, in lockstep rounds.

In round j every worker decodes its piece of round j+1 into its shared-memory region (the
walk and decode run in parallel), then feeds its table every piece of round j in order, sends
the parent what it made, and waits at a barrier for the others. Two sets of regions alternate,
so memory is N x 2 regions whatever the capture's size. Workers are forked after the kernels
are loaded: they reuse the parent's compiled code (and the numba cache), nothing recompiles.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing as mp
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from flowsense.capture.reader import MAX_PCAPNG_BLOCK
from flowsense.config import Config
from flowsense.flows.table import WatchRule
from flowsense.parallel.partition import Item, Output, Partition
from flowsense.parallel.plan import H_ENDED, InputFile, Producer, Region, Rounds, warm_kernels


def _regions(config: Config, n: int) -> list[list[Region]]:
    cap = config.capture
    packets = max(cap.chunk_bytes // 16 + 2, cap.batch_packets)
    inline = cap.read_chunk_bytes + MAX_PCAPNG_BLOCK + (64 << 10)
    return [[Region(packets, inline) for _ in range(n)] for _ in range(2)]


def _die_with_parent(parent: int) -> None:
    """A worker whose parent is killed would wait at the barrier for ever: ask Linux to end it
    with its parent (PR_SET_PDEATHSIG), and end now if the parent is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def _fixed_mmap_threshold() -> None:
    """Large buffers (a round's records, JSON text) straight from and back to the system.
    glibc raises its mmap threshold each time such a buffer is freed, after which they come from
    the heap and fragment it: a worker's memory then creeps up over a long capture."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: fixed at 1 MiB (no longer dynamic)
        libc.mallopt(-1, 4 << 20)  # M_TRIM_THRESHOLD: give back free heap tops past 4 MiB
    except (OSError, AttributeError):
        pass  # not glibc: its own policy


def _worker(p: int, n: int, key: int, config: Config, rules: list[WatchRule], output: Output,
            files: list[InputFile], regions: list[list[Region]], barrier: Any,
            conn: Connection, parent: int) -> None:
    _die_with_parent(parent)
    _fixed_mmap_threshold()
    try:
        part = Partition(p, n, key, config, rules, output, files)
        producer = Producer(files, config, n, key, part.fragments)
        rounds = Rounds(files, n, config.capture.chunk_bytes)
        cur = rounds.next()
        if p < len(cur):
            producer.produce(cur[p], regions[0][p])
        barrier.wait()
        j = 0
        while cur:
            here = regions[j % 2]
            ended = cur[0].kind != "stream" or bool(here[0].hdr[H_ENDED])
            nxt = rounds.next(ended)
            stream_next = bool(nxt) and nxt[0].kind == "stream"
            if nxt and not stream_next and p < len(nxt):
                producer.produce(nxt[p], regions[(j + 1) % 2][p])
            for k, piece in enumerate(cur):
                part.consume(piece, here[k])
            if stream_next and p == 0:
                # after this round: the stream shares this worker's fragment decoder, in order
                producer.produce(nxt[0], regions[(j + 1) % 2][0])
            _send(conn, ("round", part.take()))
            barrier.wait()
            cur = nxt
            j += 1
        _send(conn, ("final", part.finish()))
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the others
        barrier.abort()
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        conn.close()


def _send(conn: Connection, obj: object) -> None:
    """Pickle protocol 5 with the arrays' memory out of band: each array goes into the pipe
    straight from where it lies, and comes out into a writable buffer of its own (no copy into
    or out of a pickle)."""
    bufs: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    conn.send_bytes(pickle.dumps([r.nbytes for r in raws]))
    conn.send_bytes(head)
    for r in raws:
        conn.send_bytes(r)


def _recv(conn: Connection) -> Any:
    """What ``_send`` sent (or a plain ``conn.send``: a worker's error). Every message is read
    straight into a buffer of its own, not zeroed first (``Connection.recv_bytes`` would read
    it into a BytesIO and copy it out again: most of the parent's time in a parallel run)."""
    fd = conn.fileno()
    sizes = pickle.loads(_read_message(fd))
    if not isinstance(sizes, list):
        return sizes
    head = _read_message(fd)
    bufs = [_read_message(fd) for _ in sizes]
    return pickle.loads(head, buffers=bufs)


def _read_message(fd: int) -> np.ndarray:
    """One message in ``Connection.send_bytes``'s framing (a 4-byte big-endian length, or -1
    and an 8-byte one), read from the pipe into a fresh array."""
    word = _read_exact(fd, 4)
    size = int(word.view(">i4")[0])
    if size == -1:
        size = int(_read_exact(fd, 8).view(">u8")[0])
    return _read_exact(fd, size)


def _read_exact(fd: int, size: int) -> np.ndarray:
    buf = np.empty(size, dtype=np.uint8)
    view = memoryview(buf)
    while len(view):
        n = os.readv(fd, [view])
        if n == 0:
            raise EOFError
        view = view[n:]
    return buf


PIPE_BYTES = 64 << 20


def _widen(fd: int) -> None:
    """A large pipe buffer (Linux F_SETPIPE_SZ): a worker hands over a round's records in a few
    writes instead of one 64 KiB handoff after another, each waiting for the parent to be
    scheduled (on a busy machine, most of the run). Past what the system allows, its most."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    for size in (PIPE_BYTES, _pipe_max()):
        try:
            fcntl.fcntl(fd, setpipe, size)
            return
        except OSError:
            continue


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def run_local(files: list[InputFile], config: Config, rules: list[WatchRule], output: Output,
              jobs: int, key: int,
              on_round: Callable[[list[list[Item]]], None]) -> list[dict[str, Any]]:
    """Run the workers; ``on_round`` gets each round's items (worker order); returns the
    workers' closing reports (their last items already passed to ``on_round``)."""
    ctx = mp.get_context("fork")
    warm_kernels(config)
    regions = _regions(config, jobs)
    barrier = ctx.Barrier(jobs)
    pipes = [ctx.Pipe(duplex=False) for _ in range(jobs)]
    for r, _ in pipes:
        _widen(r.fileno())
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(p, jobs, key, config, rules, output, files, regions, barrier,
                               pipes[p][1], os.getpid()))
             for p in range(jobs)]
    for proc in procs:
        proc.start()
    for _, w in pipes:
        w.close()
    conns = [r for r, _ in pipes]
    finals: list[dict[str, Any]] = []
    try:
        while not finals:
            msgs = []
            for c in conns:
                try:
                    kind, body = _recv(c)
                except EOFError:
                    raise RuntimeError("a parallel worker died") from None
                if kind == "error":
                    raise RuntimeError(f"a parallel worker failed:\n{body}")
                msgs.append((kind, body))
            if len({kind for kind, _ in msgs}) != 1:
                raise RuntimeError("parallel workers disagree on the rounds")
            if msgs[0][0] == "final":
                finals = [body for _, body in msgs]
                on_round([body["items"] for body in finals])
            else:
                on_round([body for _, body in msgs])
    finally:
        for proc in procs:
            if proc.is_alive() and not finals:
                proc.terminate()
            proc.join()
        for c in conns:
            c.close()
    return finals
