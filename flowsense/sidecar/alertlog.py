"""The sidecar's tamper-evident alert log: EVE JSON lines in a forward-secure MAC chain.

Every line is one JSON object with a ``seal`` member (``seq``, ``prev``, ``mac``; the scheme is in
``flowsense.sidecar.seal``). Record ``i`` is MACed with key ``k_i``, and ``k_{i+1} = H(k_i)``:
the writer holds only the current key (in memory, and in a small state file overwritten in place
so a restart continues the chain, as journald keeps its ``fss`` file). The seed, from which the
verifier derives every key, is written 0600 the first time and is needed again only by
``verify``: move it off the machine.

Why this is sound. Say an attacker gains root at time t, when the next record is ``n``. They
learn ``k_n`` (memory, state file) and so every later key. They still cannot:

* edit, reorder, re-chain or forge any record ``i < n``: its MAC needs ``k_i``, and getting
  ``k_i`` from ``k_n`` means inverting SHA-256 (preimage resistance); recomputing plain hashes
  or MACs with ``k_n`` gives seals the verifier rejects, naming the first such record;
* remove a record from the middle or the start: sequence numbers and ``prev`` links are under
  the MAC, so the gap is named (a deliberate prune of old files is ``verify --partial``);
* cut the tail silently *if* a later head was exported before t: ``head()`` (metrics) and a
  syslog line (``seq``, ``hash``) go off the box on a cadence; ``verify --head`` catches the cut.

They can: append new sealed records after t (anything after a compromise is void), cut the
records written since the last exported head, and delete the whole log (which is loud). Limits:
if the seed stays on the box, root re-derives every key and nothing holds; Python cannot wipe
memory, so an old key may linger in freed memory for a while after it evolved; an old state
file's bytes may survive in a filesystem journal or an SSD's spare blocks.

Crashes are not tampering. Lines go to the kernel as they are written (one ``write`` a record),
``fsync`` runs on a cadence and on close. A record cut by ``kill -9`` (or a full disk) is a
torn line without its newline: the verifier reports a torn tail as such; at the next start the
writer ends the fragment with a newline and seals a ``torn-line`` note naming its offset, length
and SHA-256, so the verifier can tell a crash from an edit.

Rotation: with ``rotate_bytes`` the file is renamed ``path.1`` (older ones shift up) and a new
one begins; the chain runs on, the first record of a file linking to the last of the previous
one. Under logrotate instead, call ``reopen()`` on SIGHUP (``create`` mode, not copytruncate).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import logging.handlers
import os
import struct
import threading
import time
from typing import Any

from flowsense.errors import ConfigError
from flowsense.sidecar import seal
from flowsense.sidecar.verify import VerifyResult, verify

__all__ = ["SealedLog", "VerifyResult", "verify", "state_path"]

log = logging.getLogger(__name__)

_STATE = struct.Struct(">4sQ32s32s")
_STATE_MAGIC = b"FSL1"
_TAIL_BYTES = 4 << 20
_MAX_CATCH_UP = 10_000_000  # steps a restart evolves the key to meet the log's last record


def state_path(path: str) -> str:
    """Where the writer keeps its current key for ``path`` (hidden, beside the log, 0600)."""
    d, name = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{name}.seal-state")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def read_tail(path: str) -> tuple[bytes | None, bytes, int]:
    """(the last complete line without its newline or None, a torn fragment after it (b"" when
    the file ends with a newline), the fragment's offset)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return None, b"", 0
    cut = data.rfind(b"\n") + 1
    frag = data[cut:]
    lines = data[:cut].rstrip(b"\n") if cut else b""
    nl = lines.rfind(b"\n")
    if nl < 0 and start > 0:
        return None, frag, size - len(frag)
    last = lines[nl + 1:] if cut else None
    return last, frag, size - len(frag)


class SealedLog:
    """Append EVE records to ``path`` under the seal; thread-safe.

    ``seed_file`` is read (or created, 0600) only when there is no sealing state yet, i.e. on
    the first start: after that the writer runs on its state file and the seed belongs with
    the verifier. ``rotate_bytes`` (0: never) rotates by size, keeping ``keep`` old files (0:
    all). The chain head is fsynced and then exported (``log`` at INFO and syslog through
    /dev/log when there is one) every ``head_interval_s`` when it moved; call ``tick()`` from
    the event loop so that happens while no alerts come.
    """

    def __init__(self, path: str, seed_file: str, rotate_bytes: int = 0, *, keep: int = 0,
                 fsync_interval_s: float = 1.0, head_interval_s: float = 10.0,
                 syslog: bool = True) -> None:
        if rotate_bytes < 0 or keep < 0:
            raise ConfigError("rotate_bytes and keep must not be negative")
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.fsync_interval_s = fsync_interval_s
        self.head_interval_s = head_interval_s
        self._lock = threading.RLock()
        self._closed = False
        self._fd = -1
        self._size = 0
        self._dirty = False
        self._torn_pending = False
        self._synced_at = self._exported_at = time.monotonic()
        self._exported_seq = -1
        try:
            self._state_fd = os.open(state_path(path), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"{state_path(path)}: cannot open the seal state: "
                              f"{exc.strerror}") from None
        self._open_file()
        last, frag, frag_at = read_tail(path)
        if last is None and not frag:
            last = read_tail(f"{path}.1")[0]
        state = self._read_state()
        if state is None:
            if os.path.exists(seed_file):
                seed = seal.read_seed(seed_file)
            elif last is not None:
                raise ConfigError(f"{path}: holds sealed records but neither the seal state "
                                  f"({state_path(path)}) nor the seed ({seed_file}) is here")
            else:
                seed = seal.create_seed(seed_file)
                log.warning("created the seal seed %s: copy it to the verifier and remove it "
                            "from this machine", seed_file)
            state = (0, seal.first_key(seed), seal.ZERO)
        self._seq, key, self._prev = state
        self._key = bytearray(key)
        self._syslog = self._syslog_handler() if syslog else None
        gap = self._catch_up(last)
        self._head_seq = self._seq - 1
        self._write_state()
        if frag:
            self._recover_torn(frag, frag_at)
        if gap is not None:
            self.append({"timestamp": now_iso(), "event_type": "sealed_log", "sealed_log": {
                "event": "resume-gap", "file": os.path.basename(path),
                "missing_from": gap[0], "missing_to": gap[1]}})
            log.error("%s: records %d..%d missing at restart (lost before an fsync, or removed)",
                      path, gap[0], gap[1])

    # --- state -----------------------------------------------------------------------------
    def _read_state(self) -> tuple[int, bytes, bytes] | None:
        raw = os.pread(self._state_fd, _STATE.size + 32, 0)
        if not raw:
            return None
        if len(raw) != _STATE.size + 32 or raw[_STATE.size:] != hashlib.sha256(
                raw[:_STATE.size]).digest():
            raise ConfigError(f"{state_path(self.path)}: seal state damaged: move the log and "
                              "its state aside to start a new chain")
        magic, seq, key, prev = _STATE.unpack(raw[:_STATE.size])
        if magic != _STATE_MAGIC:
            raise ConfigError(f"{state_path(self.path)}: not a flowsense seal state")
        return seq, key, prev

    def _write_state(self) -> None:
        # in place, not write-and-rename: the old key's bytes are overwritten, not left in a
        # freed block
        raw = _STATE.pack(_STATE_MAGIC, self._seq, bytes(self._key), self._prev)
        os.pwrite(self._state_fd, raw + hashlib.sha256(raw).digest(), 0)

    def _catch_up(self, last: bytes | None) -> tuple[int, int] | None:
        """Meet the log's last record (written before a crash let the state lag behind); the
        range of records missing if the log ends before the state."""
        parts = seal.split_line(last) if last is not None else None
        if parts is None:
            return None
        body, s, prev, mac = parts
        if s < self._seq:
            return (s + 1, self._seq - 1) if s < self._seq - 1 else None
        if s - self._seq > _MAX_CATCH_UP:
            return None
        key = bytes(self._key)
        for _ in range(s - self._seq):
            key = seal.next_key(key)
        if seal.record_mac(key, s, prev, body) != mac:
            log.error("%s: the last record does not verify with the seal state: not continuing "
                      "from it", self.path)
            return None
        self._seq, self._prev = s + 1, mac
        self._key[:] = seal.next_key(key)
        return None

    # --- files -----------------------------------------------------------------------------
    def _open_file(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot open the alert log: {exc.strerror}") from None
        self._size = os.fstat(self._fd).st_size

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _rotate(self) -> None:
        self._close_file()
        n = 1
        while os.path.exists(f"{self.path}.{n}"):
            n += 1
        for i in range(n - 1, 0, -1):
            os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
        if self.keep:
            for i in range(self.keep + 1, n + 1):
                os.unlink(f"{self.path}.{i}")
        self._open_file()

    def _write(self, line: bytes) -> None:
        if self.rotate_bytes and self._size and self._size + len(line) > self.rotate_bytes:
            self._rotate()
        view = memoryview(line)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError:
            self._torn_pending = bool(len(view) < len(line))
            raise
        self._dirty = True

    def _recover_torn(self, frag: bytes, offset: int) -> None:
        """End a torn line and seal a note naming it (a crash, not an edit)."""
        self._write(b"\n")
        log.warning("%s: a torn last line (%d bytes at %d, an interrupted write) was ended and "
                    "noted in the chain", self.path, len(frag), offset)
        self.append({"timestamp": now_iso(), "event_type": "sealed_log", "sealed_log": {
            "event": "torn-line", "file": os.path.basename(self.path), "offset": offset,
            "length": len(frag), "sha256": hashlib.sha256(frag).hexdigest()}})

    # --- the API -----------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Seal and write ``record``; returns it as written, with its ``seal`` member."""
        body = seal.body_of(record)
        with self._lock:
            if self._closed:
                raise ValueError("the sealed log is closed")
            if self._torn_pending:
                self._torn_pending = False
                _, frag, at = read_tail(self.path)
                if frag:
                    self._recover_torn(frag, at)
            seq, prev = self._seq, self._prev
            mac = seal.record_mac(self._key, seq, prev, body)
            self._write(seal.seal_line(body, seq, prev, mac))
            self._seq, self._prev, self._head_seq = seq + 1, mac, seq
            self._key[:] = seal.next_key(self._key)
            self._write_state()
            self.tick()
        out = dict(record)
        out["seal"] = {"seq": seq, "prev": prev.hex(), "mac": mac.hex()}
        return out

    def head(self) -> dict[str, Any]:
        """The chain head: the last record's ``seq`` (-1 before the first) and MAC, and the
        file; what ``verify-log --head SEQ:HASH`` checks a log against."""
        with self._lock:
            return {"seq": self._head_seq, "hash": self._prev.hex() if self._head_seq >= 0
                    else "", "file": self.path}

    def tick(self) -> None:
        """fsync and export the head when their cadence is due; cheap, call it often."""
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            if self._dirty and now - self._synced_at >= self.fsync_interval_s:
                self._sync(now)
            if (self._head_seq != self._exported_seq
                    and now - self._exported_at >= self.head_interval_s):
                self._export_head(now)

    def _sync(self, now: float) -> None:
        os.fsync(self._fd)
        os.fsync(self._state_fd)
        self._dirty = False
        self._synced_at = now

    def _export_head(self, now: float) -> None:
        if self._dirty:
            self._sync(now)
        h = self.head()
        msg = f"flowsense seal head seq={h['seq']} hash={h['hash']} file={h['file']}"
        log.info("%s", msg)
        if self._syslog is not None:
            self._syslog.emit(logging.makeLogRecord({"msg": msg, "levelno": logging.INFO,
                                                     "levelname": "INFO"}))
        self._exported_seq, self._exported_at = self._head_seq, now

    @staticmethod
    def _syslog_handler() -> logging.handlers.SysLogHandler | None:
        if not os.path.exists("/dev/log"):
            return None
        try:
            h = logging.handlers.SysLogHandler(
                "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:
            return None
        h.ident = "flowsense: "
        return h

    def reopen(self) -> None:
        """SIGHUP: logrotate moved the file; continue the chain in a new one at ``path``."""
        with self._lock:
            if self._closed:
                return
            self._close_file()
            self._open_file()

    def close(self) -> None:
        """fsync, export the head, close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._export_head(time.monotonic())
            self._close_file()
            os.fsync(self._state_fd)
            os.close(self._state_fd)
            if self._syslog is not None:
                self._syslog.close()
            self._closed = True

    def __enter__(self) -> SealedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
