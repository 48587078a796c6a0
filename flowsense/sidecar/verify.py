"""Check a sealed alert log (``flowsense verify-log``): name the first sign of tampering.

Files are put in chain order by their first record's ``seq`` (so ``alerts.log*`` in any order
works; ``.gz`` files are read as they are), then read as one stream. The first problem found is
reported and the walk stops there: an edited or forged record (its MAC does not match), a
removed one (a gap in ``seq``), records out of order, a line that is not a sealed record, a
chain that does not start at record 0 (unless ``partial``: older files pruned on purpose), and,
against an exported head (``seq``, ``hash``), a cut tail or a rewritten one. A torn last line (a
write interrupted by a crash) and torn lines the writer noted at its next start are reported as
such: not tampering.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from flowsense.errors import ConfigError
from flowsense.sidecar import seal

_MAX_SKIP = 10_000_000  # a claimed seq further ahead than this is taken as forged


@dataclass
class Problem:
    kind: str  # edited-or-forged, removed, reordered, unsealed, truncated, head-mismatch
    where: str  # file:line ("" for a truncation)
    message: str


@dataclass
class VerifyResult:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str = ""
    files: list[str] = field(default_factory=list)
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def report(self) -> list[str]:
        """The verdict as lines of text (the CLI prints them)."""
        span = ("no records" if self.first_seq is None
                else f"records {self.first_seq}..{self.last_seq}")
        out = [f"note: {n}" for n in self.notes]
        if self.problem is not None:
            out.append(f"TAMPERED: {self.problem.where + ': ' if self.problem.where else ''}"
                       f"{self.problem.message}")
            out.append(f"verified before it: {span} ({self.records} records)")
        else:
            out.append(f"ok: {span} ({self.records} records) in {len(self.files)} file(s); "
                       f"head {self.last_seq}:{self.last_hash}")
        return out


def parse_head(text: str) -> tuple[int, bytes]:
    seq, _, digest = text.partition(":")
    try:
        n, h = int(seq), bytes.fromhex(digest)
    except ValueError:
        n, h = -1, b""
    if n < 0 or len(h) != 32:
        raise ConfigError(f"--head {text!r}: expected SEQ:HASH (64 hex digits)")
    return n, h


@dataclass
class _Line:
    file: str
    lineno: int
    offset: int
    raw: bytes  # without its newline
    ended: bool  # had a newline

    @property
    def where(self) -> str:
        return f"{self.file}:{self.lineno}"


def _lines(path: str) -> Iterator[_Line]:
    offset = 0
    opener = gzip.open if path.endswith(".gz") else open  # logrotate's compress
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            ended = raw.endswith(b"\n")
            yield _Line(path, n, offset, raw[:-1] if ended else raw, ended)
            offset += len(raw)


def _first_seq(path: str) -> float:
    for line in _lines(path):
        parts = seal.split_line(line.raw)
        if parts is not None:
            return parts[1]
    return float("inf")


def _order(paths: Iterable[str]) -> list[str]:
    files = []
    for p in paths:
        try:
            files.append((_first_seq(p), p))
        except (OSError, EOFError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"{p}: cannot read: {why}") from None
    return [p for _, p in sorted(files)]


class _Keys:
    """k_seq for any seq, evolving forward from the nearest key known (seed, or the last)."""

    def __init__(self, seed: bytes) -> None:
        self.k0 = seal.first_key(seed)
        self.seq, self.key = 0, self.k0

    def at(self, seq: int) -> bytes:
        if seq < self.seq:
            self.seq, self.key = 0, self.k0
        for _ in range(seq - self.seq):
            self.key = seal.next_key(self.key)
        self.seq = seq
        return self.key


def _is_torn_note(body: bytes, torn: _Line) -> bool:
    try:
        rec = json.loads(body)
        note = rec["sealed_log"]
        return (note["event"] == "torn-line" and note["offset"] == torn.offset
                and note["length"] == len(torn.raw)
                and note["sha256"] == hashlib.sha256(torn.raw).hexdigest())
    except (ValueError, KeyError, TypeError):
        return False


def verify(paths: Iterable[str], seed_file: str, head: tuple[int, bytes] | str | None = None,
           partial: bool = False) -> VerifyResult:
    """Check the log files ``paths`` with the seed; ``head`` is an exported (seq, hash) or its
    ``SEQ:HASH`` text. Stops at the first problem (``result.problem``)."""
    if isinstance(head, str):
        head = parse_head(head)
    keys = _Keys(seal.read_seed(seed_file))
    res = VerifyResult(files=_order(paths))
    stream = (line for p in res.files for line in _lines(p))
    expect: int | None = None
    prev = seal.ZERO
    torn: _Line | None = None
    where_last = ""

    def fail(kind: str, where: str, message: str) -> VerifyResult:
        res.problem = Problem(kind, where, message)
        return res

    for line in stream:
        parts = seal.split_line(line.raw)
        if parts is None:
            if torn is not None:
                return fail("unsealed", torn.where, "not a sealed record (edited or inserted)")
            if not line.raw and line.ended:
                return fail("unsealed", line.where, "an empty line (inserted)")
            if not line.ended:  # the end of a file: a write cut short (what follows is checked)
                res.notes.append(f"{line.where}: torn last line ({len(line.raw)} bytes, a write "
                                 "interrupted by a crash or a full disk): not a record")
                continue
            torn = line
            continue
        body, s, link, mac = parts
        ok_mac = 0 <= s - (expect or 0) <= _MAX_SKIP or s < (expect or 0)
        if ok_mac:
            ok_mac = hmac.compare_digest(seal.record_mac(keys.at(s), s, link, body), mac)
        if not ok_mac:
            return fail("edited-or-forged", line.where, f"record {s}: the seal does not match "
                        "(edited, forged, or re-chained without the key)")
        if torn is not None:
            if not _is_torn_note(body, torn):
                return fail("unsealed", torn.where, "not a sealed record (edited or inserted)")
            res.notes.append(f"{torn.where}: a torn line ({len(torn.raw)} bytes, an interrupted "
                             f"write) ended and noted by the writer in record {s}")
            torn = None
        if expect is None:
            expect = s
            res.first_seq = s
            if s == 0:
                if link != seal.ZERO:
                    return fail("edited-or-forged", line.where, "record 0 links to a record "
                                "before it")
            elif partial:
                res.notes.append(f"the chain starts at record {s} (older files pruned)")
            else:
                return fail("removed", line.where, f"the chain starts at record {s}: records "
                            f"0..{s - 1} are not in these files (--partial if older files were "
                            "pruned on purpose)")
            prev = link
        if s < expect:
            return fail("reordered", line.where, f"record {s} is out of order or duplicated "
                        f"(after record {expect - 1})")
        if s > expect:
            for later in stream:
                p = seal.split_line(later.raw)
                if p is not None and p[1] == expect:
                    return fail("reordered", later.where, f"record {expect} is out of order "
                                f"(after record {s}, {line.where})")
            gone = f"record {expect}" if s == expect + 1 else f"records {expect}..{s - 1}"
            return fail("removed", line.where, f"{gone} removed: record {s} follows record "
                        f"{expect - 1}")
        if link != prev:
            return fail("edited-or-forged", line.where, f"record {s} does not link to record "
                        f"{s - 1} (a record from another chain)")
        if head is not None and s == head[0] and mac != head[1]:
            return fail("head-mismatch", line.where, f"record {s} is not the exported head "
                        f"{head[0]}:{head[1].hex()} (the chain was rewritten after it)")
        prev, expect = mac, s + 1
        res.records += 1
        res.last_seq, res.last_hash = s, mac.hex()
        where_last = line.where
    if torn is not None:
        return fail("unsealed", torn.where, "not a sealed record (edited or inserted)")
    if head is not None and (res.last_seq is None or res.last_seq < head[0]):
        last = -1 if res.last_seq is None else res.last_seq
        return fail("truncated", where_last, f"the log ends at record {last} but the exported "
                    f"head is record {head[0]}: records {last + 1}..{head[0]} were cut")
    return res
