"""``flowsense watch --read -``: a pcap stream on stdin (as ``tcpdump -U -w -`` gives it). No
root needed: the stream is written by the test, and left open and quiet so that only the
wall-clock tick can bring the alert out."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.watchlab import SSH_PCAP, STRATUM_PCAP, Watch


def _records(pcap: Path) -> bytes:
    return pcap.read_bytes()[24:]


def test_quiet_stream_still_alerts_and_sighup_reopens(tmp_path: Path) -> None:
    out = tmp_path / "alerts.json"
    w = Watch(["--read", "-", "-o", str(out)], stdin=subprocess.PIPE)
    try:
        assert w.proc.stdin is not None
        w.proc.stdin.write(SSH_PCAP.read_bytes())
        w.proc.stdin.flush()
        # the stream stays open and silent: the tick must judge the live flow
        w.wait_for(lambda: out.exists() and "reverse-ssh" in out.read_text(), 30,
                   "reverse-ssh alert on a quiet stream")
        rotated = tmp_path / "alerts.json.1"
        out.rename(rotated)  # what logrotate does before it signals
        w.proc.send_signal(signal.SIGHUP)
        w.wait_for(lambda: out.exists(), 10, "the output reopened after SIGHUP")
        w.proc.stdin.write(_records(STRATUM_PCAP))
        w.proc.stdin.flush()
        w.wait_for(lambda: "stratum-mining" in out.read_text(), 30, "stratum alert after SIGHUP")
        w.proc.stdin.close()  # end of stream: the watcher ends by itself, flushing
        assert w.proc.wait(60) == 0
    finally:
        w.kill()
    assert "reverse-ssh" in rotated.read_text() and "stratum" not in rotated.read_text()
    assert "reverse-ssh" not in out.read_text()
    assert not w.alerts()  # -o: nothing on stdout


def test_damaged_stream_exits_1_after_what_was_readable(tmp_path: Path) -> None:
    data = SSH_PCAP.read_bytes()
    res = subprocess.run(
        [*Watch.command(), "--read", "-"], input=data[:-30], capture_output=True, timeout=300,
        env=Watch.environment(), cwd=Watch.cwd(),
    )
    assert res.returncode == 1, res.stderr
    assert b"reverse-ssh" in res.stdout  # the readable part was analysed and reported
    err = res.stderr.decode().strip().splitlines()
    assert any("<stdin>: at byte" in line for line in err) and b"Traceback" not in res.stderr


def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, says in ((["--read", str(SSH_PCAP)], "--read takes '-'"),
                       (["--read", "-", "--log", str(tmp_path / "a.log")], "--log-seed"),
                       (["--read", "-", "--enforce"], "--enforce needs --policy"),
                       (["--read", "-", "--tick", "0"], "--tick"),
                       (["--read", "-", "--max-flows", "-1"], "--max-flows"),
                       ([], "--interface")):
        res = subprocess.run([*Watch.command(), *args], input=b"", capture_output=True,
                             timeout=300, env=Watch.environment(), cwd=Watch.cwd())
        err = res.stderr.decode().strip().splitlines()
        assert res.returncode == 2 and len(err) == 1 and says in err[0], (args, res.stderr)
