"""Bytes in: a memory map for regular files, large reads for streams and gzip.

A ``ByteSource`` hands the walkers a numpy window over the bytes from ``base`` on. For a
memory-mapped file the window is the whole file. For a stream, ``refill(keep_from)`` drops what
the walker has consumed and appends the next read; each window is a fresh array, so a batch that
still points into the previous window stays valid until it is dropped.
"""

from __future__ import annotations

import gzip
import mmap
import os
import stat
import sys
import zlib
from typing import BinaryIO

import numpy as np

from flowsense.config import CaptureConfig
from flowsense.errors import CaptureError, InputMissingError

GZIP_MAGIC = b"\x1f\x8b"


class ByteSource:
    """A window of bytes over a file or stream; ``base`` is the window's offset in the input."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.base = 0
        self.window = np.empty(0, dtype=np.uint8)
        self.eof = False

    def refill(self, keep_from: int) -> bool:
        """Keep bytes from window offset ``keep_from`` on and read more; False at end of input."""
        return False

    def close(self) -> None:
        pass


class BufferSource(ByteSource):
    """Bytes already in memory that another owner keeps (a parallel run's map of an input):
    closing the source leaves them alone."""

    def __init__(self, name: str, buf: np.ndarray) -> None:
        super().__init__(name)
        self.window = buf
        self.eof = True


class MappedSource(ByteSource):
    def __init__(self, name: str, fd: int, size: int) -> None:
        super().__init__(name)
        self._mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            self._mm.madvise(mmap.MADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        self.window = np.frombuffer(self._mm, dtype=np.uint8)
        self.eof = True

    def close(self) -> None:
        self.window = np.empty(0, dtype=np.uint8)
        try:
            self._mm.close()
        except BufferError:
            pass  # a batch still holds a view; the map goes with it


class StreamSource(ByteSource):
    """Large reads from a stream (stdin, a pipe, a gzip member chain)."""

    def __init__(self, name: str, stream: BinaryIO, cfg: CaptureConfig, raw: BinaryIO | None = None,
                 prefix: bytes = b"") -> None:
        super().__init__(name)
        self._stream = stream
        self._raw = raw  # the compressed file under a gzip stream, for the bomb check
        self._chunk = cfg.read_chunk_bytes
        self._ratio = cfg.max_gzip_ratio
        self._floor = cfg.gzip_ratio_floor_bytes
        self._decompressed = 0
        self.window = np.frombuffer(prefix, dtype=np.uint8).copy()

    def refill(self, keep_from: int) -> bool:
        if self.eof:
            return False
        try:
            data = self._read(self._chunk)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.eof = True
            raise CaptureError(
                self.name, self.base + len(self.window), f"cannot decompress: {exc}"
            ) from None
        if not data:
            self.eof = True
            return False
        self._decompressed += len(data)
        if self._raw is not None and self._decompressed > self._floor:
            consumed = max(self._raw.tell(), 1)
            if self._decompressed / consumed > self._ratio:
                self.eof = True
                raise CaptureError(
                    self.name, self.base + len(self.window),
                    f"gzip expands more than {self._ratio}:1 (a decompression bomb?); stopped",
                )
        rest = self.window[keep_from:]
        new = np.empty(len(rest) + len(data), dtype=np.uint8)
        new[: len(rest)] = rest
        new[len(rest):] = np.frombuffer(data, dtype=np.uint8)
        self.base += keep_from
        self.window = new
        return True

    def _read(self, n: int) -> bytes:
        return self._stream.read(n)

    def close(self) -> None:
        for f in (self._stream, self._raw):
            if f is not None and f is not sys.stdin.buffer:
                try:
                    f.close()
                except OSError:
                    pass


def is_mapped(path: str) -> bool:
    """Whether ``open_source`` memory-maps ``path`` (a regular file, not gzip): record offsets
    are then offsets into the file."""
    if path == "-" or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(2) != GZIP_MAGIC
    except OSError:
        return False


def open_source(path: str, cfg: CaptureConfig) -> ByteSource:
    """Open ``path`` (or ``-`` for stdin), choosing a memory map where possible."""
    if path == "-":
        return _stream_source("<stdin>", sys.stdin.buffer, cfg)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputMissingError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputMissingError(f"{path}: is a directory") from None
    except OSError as exc:
        raise InputMissingError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, 2, 0) if stat.S_ISREG(st.st_mode) else b""
        if head == GZIP_MAGIC:
            raw = os.fdopen(fd, "rb")
            fd = -1
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            return StreamSource(path, gz, cfg, raw=raw)  # type: ignore[arg-type]
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            raise CaptureError(path, 0, "empty file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a character device
            raw = os.fdopen(fd, "rb")
            fd = -1
            return _stream_source(path, raw, cfg)
        return MappedSource(path, fd, st.st_size)
    finally:
        if fd >= 0:
            os.close(fd)


def _stream_source(name: str, stream: BinaryIO, cfg: CaptureConfig) -> StreamSource:
    """A pipe: peek for the gzip magic, then hand the peeked bytes back to whoever reads."""
    head = _read_exact(stream, 2)
    if head == GZIP_MAGIC:
        chained = _Prefixed(head, stream)
        gz = gzip.GzipFile(fileobj=chained, mode="rb")
        return StreamSource(name, gz, cfg, raw=chained)  # type: ignore[arg-type]
    return StreamSource(name, stream, cfg, prefix=head)


class _Prefixed:
    """A read-only stream: ``prefix`` then ``rest``; tracks bytes read for the bomb check."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        out = b""
        if self._prefix:
            cut = len(self._prefix) if n < 0 else min(n, len(self._prefix))
            out, self._prefix = self._prefix[:cut], self._prefix[cut:]
        if n < 0:
            out += self._rest.read()
        elif len(out) < n:
            out += self._rest.read(n - len(out))
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        pass


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        part = stream.read(n - len(out))
        if not part:
            break
        out += part
    return out
