"""The command line as users run it: exit codes, streams, closed pipes, output formats."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import flowsense
from tests.conftest import require_root, require_tool
from tests.pcapgen import tcp_session, udp, write_pcap

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps" / "corpus"


def run(*args: str, stdin: bytes | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowsense", *args], input=stdin, capture_output=True,
        timeout=timeout, cwd=REPO,
    )


def jsonl(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_flows_jsonl_on_bundled_capture() -> None:
    r = run("flows", str(PCAPS / "zeek-reverse-ssh.pcap"))
    assert r.returncode == 0, r.stderr
    recs = jsonl(r.stdout)
    assert len(recs) == 1
    rec = recs[0]
    assert (rec["src_ip"], rec["dst_ip"], rec["dst_port"]) == ("10.0.0.1", "13.13.13.37", 22)
    assert rec["bidirectional_packets"] == 74 and rec["orientation"] == "syn"
    assert rec["community_id"].startswith("1:")


def test_folder_is_one_stream_and_formats_agree(tmp_path: Path) -> None:
    r = run("flows", str(PCAPS), "--format", "csv", "-o", str(tmp_path / "f.csv"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "f.csv")))
    r2 = run("flows", str(PCAPS))
    recs = jsonl(r2.stdout)
    assert len(rows) == len(recs) == 1 + 1 + 1 + 13 + 2
    assert sorted(int(x["flow_id"]) for x in rows) == sorted(x["flow_id"] for x in recs)
    pq = pytest.importorskip("pyarrow.parquet")
    r3 = run("flows", str(PCAPS), "--format", "parquet", "-o", str(tmp_path / "f.parquet"))
    assert r3.returncode == 0, r3.stderr
    assert pq.read_table(tmp_path / "f.parquet").num_rows == len(recs)


def test_stdin_stream_and_gzip(tmp_path: Path) -> None:
    src = PCAPS / "suricata-vxlan-ssh.pcap"
    whole = jsonl(run("flows", str(src)).stdout)
    piped = run("flows", "-", stdin=src.read_bytes())
    assert piped.returncode == 0, piped.stderr
    gz = tmp_path / "v.pcap.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    gzipped = run("flows", str(gz))
    gz_stdin = run("flows", "-", stdin=gz.read_bytes())

    def key(recs: list[dict]) -> list[tuple]:
        return sorted((r["flow_id"], r["bidirectional_packets"], r["bidirectional_bytes"])
                      for r in recs)

    assert key(jsonl(piped.stdout)) == key(whole)
    assert key(jsonl(gzipped.stdout)) == key(whole)
    assert key(jsonl(gz_stdin.stdout)) == key(whole)


def test_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    r = run("flows", str(tmp_path / "missing.pcap"))
    assert r.returncode == 2 and r.stdout == b""
    assert len(r.stderr.decode().strip().splitlines()) == 1 and b"Traceback" not in r.stderr
    r = run("flows", "--idle-timeout", "-5", str(PCAPS))
    assert r.returncode == 2
    r = run("frobnicate")
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    bad_cfg = tmp_path / "c.yaml"
    bad_cfg.write_text("flows:\n  idle_timeout_s: 10\n  nonsense: 1\n")
    r = run("flows", "--config", str(bad_cfg), str(PCAPS))
    assert r.returncode == 2 and b"nonsense" in r.stderr
    # a damaged capture: what was readable is reported, exit 1, the offset named
    data = (PCAPS / "zeek-reverse-ssh.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-100])
    r = run("flows", str(cut), str(PCAPS / "ndpi-dns.pcap"))
    assert r.returncode == 1
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "cut.pcap" in err[0] and "byte" in err[0]
    recs = jsonl(r.stdout)
    assert len(recs) == 3, "the damaged file's flow and the next file's flows are all reported"


def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    pk = [(i * 0.001, udp("10.0.0.1", "10.0.0.2", 1024 + i, 53, b"x")) for i in range(20000)]
    path = write_pcap(tmp_path / "many.pcap", pk)
    p1 = subprocess.Popen([sys.executable, "-m", "flowsense", "flows", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert p1.stdout is not None
    first = p1.stdout.readline()
    p1.stdout.close()  # `| head -1`
    _, err = p1.communicate(timeout=300)
    assert json.loads(first)["protocol"] == 17
    assert p1.returncode == 0 and err == b""


def test_analyze_summary_and_eve() -> None:
    r = run("analyze", str(PCAPS))
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert "packets" in text and "flows" in text and "damaged files" in text
    assert "stratum-mining/xmr 192.168.2.92:55190 -> 178.32.196.217:9050" in text
    r = run("analyze", str(PCAPS), "--format", "eve")
    assert r.returncode == 0
    alerts = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert sorted((a["alert"]["category"], a["alert"]["variant"]) for a in alerts) == [
        ("mining-pool", "ip-list"), ("reverse-ssh", "role-reversal"), ("ssh-tunnel", "odd-port"),
        ("stratum-mining", "xmr")]
    pool = next(a for a in alerts if a["alert"]["category"] == "mining-pool")
    assert pool["alert"]["variant"] == "ip-list" and pool["alert"]["severity"] == 2
    alert = next(a for a in alerts if a["alert"]["category"] == "stratum-mining")
    # the contract's fields (ALERTS.md)
    assert alert["event_type"] == "alert" and alert["proto"] == "TCP"
    assert (alert["src_ip"], alert["dest_ip"], alert["dest_port"]) == (
        "192.168.2.92", "178.32.196.217", 9050)
    assert alert["direction"] == "outbound" and alert["community_id"].startswith("1:")
    assert alert["alert"]["category"] == "stratum-mining" and alert["alert"]["variant"] == "xmr"
    assert 3300000 <= alert["alert"]["signature_id"] < 3400000
    # judged from a snapshot while the flow was still open (the capture is one batch)
    assert alert["flow"]["state"] == "open" and alert["flow"]["end"] is None
    assert alert["flow"]["pkts_toserver"] == 83
    assert alert["source"]["pcap"].endswith("ndpi-xmr-stak-monero-stratum.pcap")
    assert alert["timestamp"].startswith("2017-12-25T10:01:")
    bundled = yaml.safe_load((REPO / "signatures" / "pools.yaml").read_text())["version"]
    assert alert["flowsense"] == {"version": flowsense.__version__, "signatures": bundled}


def test_live_tcpdump_stream_on_loopback(tmp_path: Path) -> None:
    """`tcpdump -U -w - | flowsense flows -`: a real tcpdump on lo, real TCP on 127.0.0.1."""
    require_root()
    tcpdump = require_tool("tcpdump")
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    dump = subprocess.Popen([tcpdump, "-U", "-w", "-", "-i", "lo", f"tcp port {port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    fs = subprocess.Popen([sys.executable, "-m", "flowsense", "flows", "-"], stdin=dump.stdout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert dump.stdout is not None
    dump.stdout.close()
    time.sleep(1.5)  # let tcpdump attach its filter

    def serve() -> None:
        conn, _ = srv.accept()
        while data := conn.recv(4096):
            conn.sendall(data.upper())
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    cli = socket.create_connection(("127.0.0.1", port))
    for _ in range(5):
        cli.sendall(b"hello\n")
        cli.recv(100)
    cli.close()
    t.join(5)
    srv.close()
    time.sleep(1.0)
    dump.send_signal(signal.SIGINT)
    dump.wait(10)
    out, err = fs.communicate(timeout=300)
    assert fs.returncode == 0, err
    recs = [r for r in jsonl(out) if port in (r["src_port"], r["dst_port"])]
    assert len(recs) == 1
    rec = recs[0]
    assert rec["dst_port"] == port and rec["orientation"] == "syn"
    assert rec["src2dst_payload_bytes"] == 30 and rec["dst2src_payload_bytes"] == 30
    assert rec["expiration"] == "fin"


@pytest.mark.skipif(shutil.which("editcap") is None and os.environ.get("CI") != "true",
                    reason="editcap (Debian wireshark-common) missing")
def test_synthetic_session_through_cli(tmp_path: Path) -> None:
    pk = tcp_session("10.9.9.9", "192.0.2.1", 50000, 443, 0.0, [(0, b"a" * 100), (1, b"b" * 50)])
    path = write_pcap(tmp_path / "s.pcap", pk)
    ng = tmp_path / "s.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(path), str(ng)], check=True)
    a, b = jsonl(run("flows", str(path)).stdout), jsonl(run("flows", str(ng)).stdout)
    assert a == b and a[0]["src2dst_payload_bytes"] == 100 and a[0]["dst2src_payload_bytes"] == 50


def test_alerts_while_open_once_per_flow_and_signature() -> None:
    from flowsense.detect.base import Alert
    from flowsense.report.alerts import AlertGate

    def alert(conf: float, ts_s: float) -> Alert:
        return Alert(3300003, "s", "stratum-mining", "xmr", 1, conf, int(ts_s * 1e9),
                     {"flow_id": 7})

    gate = AlertGate()
    assert gate.admit(alert(0.85, 0))
    assert not gate.admit(alert(0.85, 120)), "same strength: no second record"
    assert not gate.admit(alert(0.95, 30)), "stronger, but within a minute"
    later = alert(0.95, 90)
    assert gate.admit(later) and later.update
