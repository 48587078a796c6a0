"""``flowsense watch`` on a live veth (root): real captures replayed with tcpreplay into one end
of a netlab veth pair, the sidecar capturing on the other through its TPACKET_V3 ring.

The replays are slowed down (``--pps``) so that each lasts several seconds: an alert that
arrives while tcpreplay is still running was raised while the flow was up, not at the end.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.watchlab import SSH_PCAP, STRATUM_PCAP, Watch, env, fetch, needs_lab, replay

METRICS_PORT = 9464


@pytest.fixture
def lab():  # type: ignore[no-untyped-def]
    needs_lab()
    from pcaps.gen.netlab import Lab

    with Lab("fsw1", rtt_ms=0) as lab:
        yield lab


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def _alert_during_replay(w: Watch, lab, pcap: Path, pps: float,  # type: ignore[no-untyped-def]
                         *categories: str) -> None:
    """Replay ``pcap`` slowly; the alerts of ``categories`` must arrive before it ends."""
    tr = replay(lab, pcap, pps=pps)
    w.wait_for(lambda: all(w.has_alert(c) for c in categories), 30,
               f"{'/'.join(categories)} alert during the replay", also=lambda: tr.poll() is None)
    assert tr.wait(60) == 0


def test_alerts_arrive_while_the_replay_runs(lab) -> None:  # type: ignore[no-untyped-def]
    w = Watch(["-i", lab.inside_if, "--metrics-port", str(METRICS_PORT)], lab, lab.inside)
    try:
        w.ready()
        status, body = fetch(lab, f"http://127.0.0.1:{METRICS_PORT}/healthz")
        assert (status, body.strip()) == (200, "ok")

        _alert_during_replay(w, lab, SSH_PCAP, 8, "reverse-ssh")  # 74 packets: about 9 s
        _alert_during_replay(w, lab, STRATUM_PCAP, 12, "stratum-mining", "mining-pool")  # 12 s

        # the counters move on the watcher's tick (1 s): wait for the replay's last packets
        deadline = time.monotonic() + 10
        while True:
            status, text = fetch(lab, f"http://127.0.0.1:{METRICS_PORT}/metrics")
            assert status == 200
            if (_metric(text, "flowsense_packets_total") >= 74 + 145 - 10
                    or time.monotonic() > deadline):
                break
            time.sleep(0.5)
        assert _metric(text, "flowsense_packets_total") >= 74 + 145 - 10
        assert _metric(text, "flowsense_bytes_total") > 0
        assert _metric(text, "flowsense_kernel_drops_total") == 0
        assert _metric(text, 'flowsense_alerts_total{category="reverse-ssh"}') == 1
        assert _metric(text, "flowsense_flows_active") >= 1
        assert 0 <= _metric(text, "flowsense_alert_latency_seconds") < 5
        assert "flowsense_flows_evicted_total" in text and "flowsense_lag_seconds" in text
        assert fetch(lab, f"http://127.0.0.1:{METRICS_PORT}/nothing")[0] == 404
        assert w.stop() == 0
    finally:
        w.kill()
    alerts = w.alerts()
    ssh = [a for a in alerts if a["alert"]["category"] == "reverse-ssh"]
    assert len(ssh) == 1
    a = ssh[0]
    assert (a["src_ip"], a["dest_ip"], a["dest_port"]) == ("10.0.0.1", "13.13.13.37", 22)
    assert a["alert"]["variant"] == "role-reversal"
    assert a["flow"]["state"] == "open"
    assert a["source"] == {"interface": lab.inside_if}
    stratum = [a for a in alerts if a["alert"]["category"] == "stratum-mining"]
    assert stratum[0]["dest_ip"] == "178.32.196.217" and stratum[0]["dest_port"] == 9050
    assert any("watch ended" in line and "0 dropped" in line for line in w.err)


def test_sigterm_flushes_what_is_pending(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # no snapshot, by wall clock (an hour's tick) nor by capture time (past the clock's
    # range): the alert can only come from SIGTERM's flush
    cfg = tmp_path / "config.yaml"
    cfg.write_text("flows: {snapshot_interval_s: 1.0e+10}\n", encoding="utf-8")
    w = Watch(["-i", lab.inside_if, "--tick", "3600", "--config", str(cfg)], lab, lab.inside)
    try:
        w.ready()
        tr = replay(lab, SSH_PCAP, pps=60)
        assert tr.wait(60) == 0
        assert not w.alerts()
        assert w.stop() == 0
    finally:
        w.kill()
    cats = [a["alert"]["category"] for a in w.alerts()]
    assert cats == ["reverse-ssh"]
    assert any("watch ended: 74 packets" in line for line in w.err)


def test_sigusr2_with_a_broken_signature_file_keeps_the_old_set(
        lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sigs = tmp_path / "signatures"
    shutil.copytree(Path(__file__).resolve().parents[1] / "signatures", sigs)
    pools = sigs / "pools.yaml"
    good = pools.read_text(encoding="utf-8")
    w = Watch(["-i", lab.inside_if, "--signatures", str(sigs)], lab, lab.inside)
    try:
        w.ready()
        pools.write_text(good + "\n  - {domain: [unclosed\n", encoding="utf-8")
        w.proc.send_signal(signal.SIGUSR2)
        w.wait_for(lambda: any("reload failed" in e and "pools.yaml" in e for e in w.err), 20,
                   "the reload failure report")
        # the pool list is still the old one: the pool's address is still known
        _alert_during_replay(w, lab, STRATUM_PCAP, 40, "mining-pool")
        pools.write_text(good, encoding="utf-8")
        w.proc.send_signal(signal.SIGUSR2)
        w.wait_for(lambda: any("reloaded" in e for e in w.err), 20, "the reload report")
        assert w.stop() == 0
    finally:
        w.kill()
    pool = [a for a in w.alerts() if a["alert"]["category"] == "mining-pool"]
    assert pool and pool[0]["alert"]["variant"] == "ip-list"


def test_bpf_filter_and_bad_usage(lab) -> None:  # type: ignore[no-untyped-def]
    w = Watch(["-i", lab.inside_if, "--bpf", "tcp port 9050"], lab, lab.inside)
    try:
        w.ready()
        for pcap, pps in ((SSH_PCAP, 200), (STRATUM_PCAP, 200)):
            assert replay(lab, pcap, pps=pps).wait(60) == 0
        assert w.stop() == 0
    finally:
        w.kill()
    cats = {a["alert"]["category"] for a in w.alerts()}
    assert cats == {"stratum-mining", "mining-pool"}  # the SSH flow never passed the filter
    assert any("watch ended: 145 packets" in line for line in w.err)

    for args, says in ((["-i", lab.inside_if, "--bpf", "tcp port"], "--bpf"),
                       (["-i", "fsw-nosuch0"], "cannot capture on fsw-nosuch0"),
                       ([], "--interface")):
        res = lab.run(lab.inside, [sys.executable, "-m", "flowsense", "watch", *args],
                      timeout=120, env=env())
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "Traceback" not in res.stderr


def test_ring_batches_match_the_file_reader(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The ring walker is held to the file reader: the same frames, replayed and captured,
    decode to the same columns, VLAN ids included (the kernel strips the outer tag into
    tp_vlan_tci; the walker must give it back)."""
    from flowsense.capture.reader import iter_batches
    from flowsense.sidecar.warm import synthetic_pcap

    pcap = tmp_path / "vlan.pcap"
    pcap.write_bytes(synthetic_pcap(flows=30))
    script = tmp_path / "ring.py"
    script.write_text(RING_DUMP, encoding="utf-8")
    dump = lab.popen(lab.inside, [sys.executable, str(script), lab.inside_if, "44"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     env=env())
    assert dump.stdout is not None
    assert dump.stdout.readline().strip() == "ready", dump.stderr.read() if dump.stderr else ""
    assert replay(lab, pcap, pps=200).wait(60) == 0
    out, err = dump.communicate(timeout=60)
    assert dump.returncode == 0, err
    got = [tuple(int(x) for x in line.split()) for line in out.splitlines()]
    want = []
    for b in iter_batches(str(pcap)):
        c = b.cols
        for i in range(b.n):
            want.append(tuple(int(c[k][i]) for k in COLS))
    assert len(want) == 44 and got == want
    assert sum(1 for row in got if row[COLS.index("vlan")] == 7) == 6  # the tagged replies


COLS = ("status", "fam", "proto", "src_lo", "dst_lo", "sport", "dport", "tcp_flags", "ip_len",
        "payload_len", "vlan")
RING_DUMP = f"""
import sys, time
from flowsense.capture.reader import Decoder
from flowsense.config import CaptureConfig
from flowsense.sidecar.ring import RingConfig
from flowsense.sidecar.sources import RingSource
from flowsense.config import Config
from flowsense.sidecar.warm import warm
warm(Config())  # compiled before the ring opens: a stalled reader lets the kernel drop
cap = CaptureConfig()
src = RingSource([sys.argv[1]], RingConfig(buffer_bytes=16 << 20, promisc=True), cap)
want = int(sys.argv[2]); rows = []; end = time.monotonic() + 60
print("ready", flush=True)
def idle():
    return len(rows) < want and time.monotonic() < end
for b in src.batches(Decoder(cap), idle):
    c = b.cols
    for i in range(b.n):
        if c["fam"][i] == 4:
            rows.append(" ".join(str(int(c[k][i])) for k in {COLS!r}))
print("\\n".join(rows))
assert src.kernel_drops() == 0
"""


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_drops_to_user_and_keeps_capturing(lab) -> None:  # type: ignore[no-untyped-def]
    import pwd

    nobody = pwd.getpwnam("nobody")
    w = Watch(["-i", lab.inside_if, "--user", "nobody"], lab, lab.inside)
    try:
        w.ready()
        st = _status(w.pid)  # `ip netns exec` execs: the pid is the watcher's
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert st["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert st["Groups"].strip() == ""
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
        _alert_during_replay(w, lab, SSH_PCAP, 20, "reverse-ssh")
        assert w.stop() == 0
    finally:
        w.kill()


def test_enforce_keeps_only_cap_net_admin() -> None:
    from tests.conftest import require_root

    require_root()
    code = ("from flowsense.sidecar.privileges import drop_to\n"
            "import sys\n"
            "drop_to('nobody', keep_net_admin=sys.argv[1] == '1')\n"
            "st = dict(l.split(b':\\t') for l in open('/proc/self/status', 'rb') if b':\\t' in l)\n"
            "print(int(st[b'CapEff'], 16), int(st[b'CapAmb'], 16))\n")
    for keep, want in (("1", (1 << 12, 1 << 12)), ("0", (0, 0))):
        res = subprocess.run([sys.executable, "-c", code, keep], capture_output=True, text=True,
                             env=env(), timeout=120, check=True)
        assert tuple(int(x) for x in res.stdout.split()) == want


def test_scapy_backend_where_af_packet_is_missing(lab) -> None:  # type: ignore[no-untyped-def]
    w = Watch(["-i", lab.inside_if, "--backend", "scapy"], lab, lab.inside)
    try:
        w.ready()
        _alert_during_replay(w, lab, SSH_PCAP, 20, "reverse-ssh")
        assert w.stop() == 0
    finally:
        w.kill()
    assert any("watch ended: 74 packets" in line for line in w.err)


def test_sealed_log_and_policy_wired_in(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Alerts go through the sealed log and the policy's actions (a dry-run block and an exec
    hook); after SIGTERM the log verifies and holds every alert and action."""
    import json

    got = tmp_path / "hook.json"
    policy = tmp_path / "policy.yaml"
    hook = f"import sys; open({str(got)!r}, 'w').write(sys.stdin.read())"
    policy.write_text(json.dumps({
        "version": 1,
        "rules": [{"name": "miners", "match": {"category": "stratum-mining"},
                   "actions": ["block", {"exec": [sys.executable, "-c", hook]}]}],
    }), encoding="utf-8")
    log, seed = tmp_path / "alerts.log", tmp_path / "seal.seed"
    w = Watch(["-i", lab.inside_if, "--log", str(log), "--log-seed", str(seed),
               "--policy", str(policy), "--metrics-port", str(METRICS_PORT)], lab, lab.inside)
    try:
        w.ready()
        _alert_during_replay(w, lab, STRATUM_PCAP, 40, "stratum-mining")
        w.wait_for(lambda: got.exists() and got.stat().st_size > 0, 20, "the exec hook's input")
        _, text = fetch(lab, f"http://127.0.0.1:{METRICS_PORT}/metrics")
        assert _metric(text, "flowsense_log_chain_seq") >= 1
        good = policy.read_text(encoding="utf-8")
        policy.write_text(good.replace('"rules"', '"rulez"'), encoding="utf-8")
        w.proc.send_signal(signal.SIGUSR2)  # a bad policy: the running one stays
        w.wait_for(lambda: any("reload failed" in e and "policy.yaml" in e for e in w.err), 20,
                   "the policy reload failure")
        policy.write_text(good, encoding="utf-8")
        w.proc.send_signal(signal.SIGUSR2)
        w.wait_for(lambda: any("reloaded" in e and "policy" in e for e in w.err), 20,
                   "the policy reload")
        assert w.stop() == 0
    finally:
        w.kill()
    hooked = json.loads(got.read_text())
    assert hooked["alert"]["category"] == "stratum-mining"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    alerts = [r for r in records if r["event_type"] == "alert"]
    actions = [r for r in records if r["event_type"] == "action"]
    assert {a["flow_id"] for a in alerts} == {a["flow_id"] for a in w.alerts()}
    kinds = {a["action"]["type"] for a in actions}
    assert {"block", "exec"} <= kinds, actions
    res = subprocess.run([sys.executable, "-m", "flowsense", "verify-log", str(log), "--seed",
                          str(seed)], capture_output=True, text=True, env=env(), timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stdout + res.stderr


def test_several_interfaces(lab) -> None:  # type: ignore[no-untyped-def]
    """Two rings in one watcher: the lab's veth, and a second veth pair made inside the inside
    namespace (gone with it), each replayed into from its other end."""
    for cmd in (["ip", "link", "add", "fsw1-x", "type", "veth", "peer", "name", "fsw1-y"],
                ["ip", "link", "set", "fsw1-x", "up"], ["ip", "link", "set", "fsw1-y", "up"]):
        lab.run(lab.inside, cmd, check=True)
    for dev in ("fsw1-x", "fsw1-y"):
        for feature in ("tso", "gso", "gro", "tx", "rx"):
            lab.run(lab.inside, ["ethtool", "-K", dev, feature, "off"])
    w = Watch(["-i", lab.inside_if, "-i", "fsw1-x"], lab, lab.inside)
    try:
        w.ready()
        other = lab.popen(lab.inside, ["tcpreplay", "-q", "-i", "fsw1-y", "--pps", "40",
                                       str(STRATUM_PCAP)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _alert_during_replay(w, lab, SSH_PCAP, 20, "reverse-ssh")
        assert other.wait(60) == 0
        w.wait_for(lambda: w.has_alert("stratum-mining"), 30, "stratum alert on the second ring")
        assert w.stop() == 0
    finally:
        w.kill()
    assert any("watch ended: 219 packets, 0 dropped" in line for line in w.err), w.err
    assert {a["source"]["interface"] for a in w.alerts()} == {f"{lab.inside_if},fsw1-x"}


def test_interface_down_then_away(lab) -> None:  # type: ignore[no-untyped-def]
    """Down: a warning, and capture resumes when it is up again. Removed: the watcher flushes
    what it has and exits 1 (a service manager restarts it)."""
    w = Watch(["-i", lab.inside_if], lab, lab.inside)
    try:
        w.ready()
        lab.run(lab.inside, ["ip", "link", "set", lab.inside_if, "down"], check=True)
        w.wait_for(lambda: any("capture resumes" in e for e in w.err), 20, "the down warning")
        lab.run(lab.inside, ["ip", "link", "set", lab.inside_if, "up"], check=True)
        lab.run(lab.outside, ["ip", "link", "set", lab.outside_if, "up"], check=True)
        _alert_during_replay(w, lab, SSH_PCAP, 20, "reverse-ssh")
        lab.run(lab.inside, ["ip", "link", "del", lab.inside_if], check=True)
        assert w.proc.wait(60) == 1
    finally:
        w.kill()
    assert any("went away" in e for e in w.err), w.err
    assert [a["alert"]["category"] for a in w.alerts()] == ["reverse-ssh"]
