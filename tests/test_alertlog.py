"""The sealed alert log: written, verified, and every kind of tampering named."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowsense.errors import ConfigError
from flowsense.sidecar import seal
from flowsense.sidecar.alertlog import SealedLog, state_path, verify

REPO = Path(__file__).resolve().parents[1]


def alert(n: int) -> dict:
    """An EVE-shaped alert; its evidence holds a hostile wire string (stays data)."""
    return {"timestamp": f"2026-11-26T03:20:{n % 60:02d}.000000+00:00", "event_type": "alert",
            "flow_id": 1000 + n, "src_ip": "10.20.30.40", "dest_ip": "203.0.113.7",
            "alert": {"signature_id": 3100101, "category": "reverse-ssh", "severity": 1},
            "evidence": {"banner": "SSH-2.0-x\\x0a\"seal\": {\"seq\": 0}}", "n": n}}


def write_log(tmp: Path, n: int, rotate_bytes: int = 0) -> tuple[Path, Path, dict]:
    path, seed = tmp / "alerts.log", tmp / "seed"
    with SealedLog(str(path), str(seed), rotate_bytes, syslog=False) as lg:
        for i in range(n):
            lg.append(alert(i))
        head = lg.head()
    return path, seed, head


def files(path: Path) -> list[str]:
    return sorted(str(p) for p in path.parent.glob(path.name + "*"))


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_chain_written_and_verified(tmp_path: Path) -> None:
    path, seed, head = write_log(tmp_path, 20)
    recs = [json.loads(x) for x in lines(path)]
    assert [r["seal"]["seq"] for r in recs] == list(range(20))
    assert recs[0]["seal"]["prev"] == "00" * 32
    assert all(b["seal"]["prev"] == a["seal"]["mac"] for a, b in zip(recs, recs[1:]))
    assert recs[5]["evidence"] == alert(5)["evidence"]  # the record itself is untouched
    assert head == {"seq": 19, "hash": recs[-1]["seal"]["mac"], "file": str(path)}
    res = verify([str(path)], str(seed), head=f"19:{head['hash']}")
    assert res.ok and res.records == 20 and res.last_seq == 19, res.report()
    # the seed and the writer's state are private
    assert stat.S_IMODE(os.stat(seed).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_path(str(path))).st_mode) == 0o600


def test_seed_is_needed_once(tmp_path: Path) -> None:
    """After the first start the writer runs on its state: the seed can leave the box, and the
    chain continues across restarts without it."""
    path, seed, _ = write_log(tmp_path, 3)
    off_box = tmp_path / "verifier-seed"
    seed.rename(off_box)
    with SealedLog(str(path), str(seed), syslog=False) as lg:
        assert lg.append(alert(3))["seal"]["seq"] == 3
    assert not seed.exists()  # not re-created: a new seed would start a foreign chain
    assert verify([str(path)], str(off_box)).records == 4
    # with neither state nor seed, a log that has records is refused, not restarted
    os.unlink(state_path(str(path)))
    with pytest.raises(ConfigError, match="neither the seal state"):
        SealedLog(str(path), str(seed), syslog=False)


def test_edited_byte_names_the_record(tmp_path: Path) -> None:
    path, seed, _ = write_log(tmp_path, 10)
    data = bytearray(path.read_bytes())
    at = sum(len(x) for x in lines(path)[:6]) + 40  # a byte inside record 6's body
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    res = verify([str(path)], str(seed))
    assert res.problem is not None and res.problem.kind == "edited-or-forged"
    assert res.problem.where == f"{path}:7" and "record 6" in res.problem.message
    assert res.records == 6


def test_deleted_record(tmp_path: Path) -> None:
    path, seed, _ = write_log(tmp_path, 10)
    ls = lines(path)
    path.write_bytes(b"".join(ls[:4] + ls[5:]))
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "removed"
    assert "record 4 removed" in res.problem.message and res.problem.where == f"{path}:5"
    # the first record removed: the chain no longer starts at 0
    path.write_bytes(b"".join(ls[1:]))
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "removed" and "records 0..0" in res.problem.message


def test_reordered_pair(tmp_path: Path) -> None:
    path, seed, _ = write_log(tmp_path, 10)
    ls = lines(path)
    ls[3], ls[4] = ls[4], ls[3]
    path.write_bytes(b"".join(ls))
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "reordered"
    assert "record 3 is out of order" in res.problem.message
    assert res.problem.where == f"{path}:5"


def test_cut_tail_caught_against_exported_head(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowsense.sidecar.alertlog")
    path, seed, _ = write_log(tmp_path, 12)
    exported = [r.getMessage() for r in caplog.records if "seal head" in r.getMessage()]
    assert exported, "close() exports the head"
    fields = dict(kv.split("=", 1) for kv in exported[-1].split()[3:])
    head = f"{fields['seq']}:{fields['hash']}"
    ls = lines(path)
    path.write_bytes(b"".join(ls[:9]))  # records 9..11 cut at a line boundary
    assert verify([str(path)], str(seed)).ok  # invisible without a head...
    res = verify([str(path)], str(seed), head=head)  # ...caught with one
    assert res.problem.kind == "truncated"
    assert "ends at record 8" in res.problem.message and "records 9..11" in res.problem.message


def test_rechained_without_the_key(tmp_path: Path) -> None:
    """The attacker edits record 5 and recomputes every later link with plain SHA-256."""
    path, seed, _ = write_log(tmp_path, 10)
    ls = [x.rstrip(b"\n") for x in lines(path)]
    out, prev = [], None
    for i, line in enumerate(ls):
        body, s, link, mac = seal.split_line(line)
        if i == 5:
            body = body.replace(b"10.20.30.40", b"10.20.30.41")
        if i >= 5:
            link = prev
            mac = hashlib.sha256(s.to_bytes(8, "big") + link + body).digest()
        out.append(seal.seal_line(body, s, link, mac))
        prev = mac
    path.write_bytes(b"".join(out))
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "edited-or-forged"
    assert "record 5" in res.problem.message and res.problem.where == f"{path}:6"


def test_forged_records(tmp_path: Path) -> None:
    path, seed, _ = write_log(tmp_path, 6)
    ls = lines(path)
    last = json.loads(ls[-1])["seal"]
    # a forged record appended, sealed with a key of the attacker's own
    body = seal.body_of(alert(99))
    mine = seal.key_at(os.urandom(32), 6)
    forged = seal.seal_line(body, 6, bytes.fromhex(last["mac"]),
                            seal.record_mac(mine, 6, bytes.fromhex(last["mac"]), body))
    path.write_bytes(b"".join(ls) + forged)
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "edited-or-forged" and res.problem.where == f"{path}:7"
    # a plain JSON line slipped in between
    path.write_bytes(b"".join(ls[:2]) + b'{"event_type": "alert"}\n' + b"".join(ls[2:]))
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "unsealed" and res.problem.where == f"{path}:3"


def test_stolen_current_key_cannot_rewrite_the_past(tmp_path: Path) -> None:
    """Root at time t reads the writer's state (k_n): records before n stay sealed; only new
    records can be added with it."""
    path, seed, _ = write_log(tmp_path, 8)
    raw = Path(state_path(str(path))).read_bytes()
    n, k_n = int.from_bytes(raw[4:12], "big"), raw[12:44]
    assert n == 8 and k_n == seal.key_at(seal.read_seed(str(seed)), 8)
    ls = [x.rstrip(b"\n") for x in lines(path)]
    body, s, link, _ = seal.split_line(ls[7])
    body = body.replace(b"203.0.113.7", b"192.0.2.1")
    ls[7] = seal.seal_line(body, s, link, seal.record_mac(k_n, s, link, body)).rstrip(b"\n")
    path.write_bytes(b"\n".join(ls) + b"\n")
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "edited-or-forged" and "record 7" in res.problem.message


def test_rotation_continues_the_chain(tmp_path: Path) -> None:
    path, seed, head = write_log(tmp_path, 30, rotate_bytes=2000)
    names = files(path)
    assert len(names) >= 4 and all(os.path.getsize(p) <= 2000 for p in names)
    # the newest file's first record links to the last record of alerts.log.1
    first_new = json.loads(lines(path)[0])["seal"]
    last_old = json.loads(lines(Path(f"{path}.1"))[-1])["seal"]
    assert first_new["prev"] == last_old["mac"] and first_new["seq"] == last_old["seq"] + 1
    with open(f"{path}.3", "rb") as src, gzip.open(f"{path}.3.gz", "wb") as dst:
        dst.write(src.read())  # logrotate's compress
    os.unlink(f"{path}.3")
    shuffled = files(path)
    random.Random(1).shuffle(shuffled)
    res = verify(shuffled, str(seed), head=f"{head['seq']}:{head['hash']}")
    assert res.ok and res.records == 30, res.report()
    # a whole rotated file removed: its records are named
    gone = json.loads(lines(Path(f"{path}.2"))[0])["seal"]["seq"]
    os.unlink(f"{path}.2")
    res = verify(files(path), str(seed))
    assert res.problem.kind == "removed" and f"records {gone}.." in res.problem.message
    # older files pruned on purpose: --partial
    res = verify([str(path), f"{path}.1"], str(seed), partial=True)
    assert res.ok and res.first_seq > 0


def test_reopen_after_logrotate(tmp_path: Path) -> None:
    path, seed = tmp_path / "alerts.log", tmp_path / "seed"
    with SealedLog(str(path), str(seed), syslog=False) as lg:
        for i in range(3):
            lg.append(alert(i))
        path.rename(tmp_path / "alerts.log-20261126")  # logrotate, create mode
        lg.reopen()
        for i in range(3, 5):
            lg.append(alert(i))
    assert len(lines(path)) == 2
    assert verify(files(path), str(seed)).records == 5


KILL_CHILD = """
import sys
from flowsense.sidecar.alertlog import SealedLog
lg = SealedLog(sys.argv[1], sys.argv[2], fsync_interval_s=3600, syslog=False)
blob = "x" * (1 << 20)
i = 0
while True:
    lg.append({"event_type": "alert", "n": i, "evidence": {"blob": blob}})
    i += 1
"""


def kill_mid_write(path: Path, seed: Path) -> bool:
    """Run a writer and kill -9 it while the file does not end in a newline (mid-write)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(path), str(seed)], env=env)
    try:
        deadline = time.monotonic() + 60
        fd = -1
        while time.monotonic() < deadline and child.poll() is None:
            if fd < 0:
                if not path.exists() or path.stat().st_size < (2 << 20):
                    time.sleep(0.01)
                    continue
                fd = os.open(path, os.O_RDONLY)
            size = os.fstat(fd).st_size
            if os.pread(fd, 1, size - 1) != b"\n":
                os.kill(child.pid, signal.SIGKILL)
                break
        if fd >= 0:
            os.close(fd)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    return not path.read_bytes().endswith(b"\n")


def test_torn_tail_after_kill_9(tmp_path: Path) -> None:
    path, seed = tmp_path / "alerts.log", tmp_path / "seed"
    for _ in range(8):  # the kill can land just after a write ends: try again
        if kill_mid_write(path, seed):
            break
    else:
        pytest.fail("no kill -9 landed inside a write in 8 tries")
    res = verify([str(path)], str(seed))
    assert res.ok, res.report()
    assert res.records >= 2 and any("torn last line" in n for n in res.notes)
    # the next start ends the fragment and seals a note: the crash stays explained
    with SealedLog(str(path), str(seed), syslog=False) as lg:
        rec = lg.append(alert(0))
    res = verify([str(path)], str(seed))
    assert res.ok and res.last_seq == rec["seal"]["seq"], res.report()
    assert any("ended and noted by the writer" in n for n in res.notes)
    # an edited line dressed up as torn is not excused by the note
    ls = lines(path)
    torn_at = next(i for i, x in enumerate(ls) if seal.split_line(x.rstrip(b"\n")) is None)
    ls[torn_at] = b'{"x' + ls[torn_at][3:]
    path.write_bytes(b"".join(ls))
    res = verify([str(path)], str(seed))
    assert res.problem.kind == "unsealed" and res.problem.where == f"{path}:{torn_at + 1}"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowsense", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_verify_log_cli(tmp_path: Path) -> None:
    path, seed, head = write_log(tmp_path, 5)
    r = run_cli("verify-log", str(path), "--seed", str(seed), "--head",
                f"{head['seq']}:{head['hash']}")
    assert r.returncode == 0 and r.stdout.startswith("ok: records 0..4"), r
    ls = lines(path)
    path.write_bytes(b"".join(ls[:2] + ls[3:]))
    r = run_cli("verify-log", str(path), "--seed", str(seed))
    assert r.returncode == 1 and f"TAMPERED: {path}:3: record 2 removed" in r.stdout, r
    r = run_cli("verify-log", str(tmp_path / "nope"), "--seed", str(seed))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    r = run_cli("verify-log", str(path), "--seed", str(seed), "--head", "5:zz")
    assert r.returncode == 2 and "SEQ:HASH" in r.stderr


def test_torn_line_in_a_rotated_file(tmp_path: Path) -> None:
    """A crash, then logrotate before the restart: the torn line ends an older file and the
    writer never sees it. Still a crash, not tampering; a record cut at a file's end is not."""
    path, seed, _ = write_log(tmp_path, 4)  # the writer's state: record 4 is next
    path.rename(tmp_path / "alerts.log.1")
    with open(tmp_path / "alerts.log.1", "ab") as f:
        f.write(seal.body_of(alert(4))[:50])  # record 4 torn by the crash
    with SealedLog(str(path), str(seed), syslog=False) as lg:
        assert lg.append(alert(4))["seal"]["seq"] == 4
    res = verify(files(path), str(seed))
    assert res.ok and res.records == 5 and "alerts.log.1:5: torn" in res.notes[0], res.report()
    tmp_path = tmp_path / "second"
    tmp_path.mkdir()
    path, seed, _ = write_log(tmp_path, 6)
    ls = lines(path)
    # the same cut with the chain going on past the cut record: a removal
    (tmp_path / "alerts.log.1").write_bytes(b"".join(ls[:4]) + ls[4][:50])
    path.write_bytes(ls[5])
    res = verify(files(path), str(seed))
    assert res.problem.kind == "removed" and "record 4 removed" in res.problem.message
