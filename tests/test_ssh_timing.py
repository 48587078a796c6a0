"""Keystroke sizes from the framing rules, and the timing detectors (reverse-interactive,
reverse-setup, remote-forward, reverse-exfil, idle-tunnel) on synthetic sessions whose sizes and
timing follow real OpenSSH behaviour, fed live (snapshots) and at the end."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from flowsense.config import CaptureConfig, Config, FlowConfig, SshConfig
from flowsense.detect.base import Alert, Resources
from flowsense.detect.ssh import SshDetector
from flowsense.detect.ssh_framing import (
    COMMON_SUITES,
    keystroke_model,
    keystroke_sizes,
    suite,
    tunnelled_sizes,
)
from flowsense.pipeline import Pipeline
from tests.conftest import manifest
from tests.sshgen import CHACHA, CTR_ETM, CTR_MD5, GCM, Session


def run(path: Path, config: Config | None = None, snapshot_s: float = 1.0) -> list[Alert]:
    """Alerts over ``path`` as ``analyze`` gets them: snapshots of live flows every
    ``snapshot_s`` of capture time, then the ended flows."""
    cfg = config or Config()
    cfg = dataclasses.replace(cfg, flows=dataclasses.replace(cfg.flows,
                                                             snapshot_interval_s=snapshot_s))
    det = SshDetector(Resources(config=cfg))
    alerts: list[Alert] = []
    pipe = Pipeline(cfg, lambda f: alerts.extend(det.on_frame(f)), det.watch_rules(),
                    lambda f: alerts.extend(det.on_snapshot(f)))
    pipe.run_file(str(path))
    pipe.finish()
    return alerts


def variants(alerts: list[Alert]) -> set[str]:
    return {a.variant for a in alerts}


# --- framing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cipher, mac, plain, tunnelled", [
    ("chacha20-poly1305@openssh.com", "hmac-sha2-256", 36, 76),  # AEAD: the MAC is ignored
    ("aes128-gcm@openssh.com", "", 36, 84),
    ("aes256-gcm@openssh.com", "", 36, 84),
    ("aes128-ctr", "hmac-md5", 48, 96),  # MAC-then-encrypt, 16-byte MAC
    ("aes256-ctr", "umac-128@openssh.com", 48, 96),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com", 52, 116),  # encrypt-then-MAC
])
def test_known_keystroke_sizes(cipher: str, mac: str, plain: int, tunnelled: int) -> None:
    s = suite(cipher, mac)
    assert s is not None
    assert keystroke_sizes(s) == {plain}
    assert tunnelled_sizes(s, s) == {tunnelled}


def test_framing_rules_by_hand() -> None:
    # MtE: length inside the aligned part: 4+1+10+17 = 32 with a 20-byte hmac-sha1
    assert keystroke_sizes(suite("aes128-ctr", "hmac-sha1")) == {52}  # type: ignore[arg-type]
    # EtM with an 8-byte MAC: 4 + (1+10+5) + 8
    assert keystroke_sizes(suite("aes128-ctr", "umac-64-etm@openssh.com")) == {28}  # type: ignore[arg-type]
    # 8-byte blocks, MtE: 4+1+10+9 = 24 + hmac-sha2-256
    assert keystroke_sizes(suite("3des-cbc", "hmac-sha2-256")) == {56}  # type: ignore[arg-type]
    assert suite("rot13-cbc", "hmac-md5") is None and suite("aes128-ctr", "crc32") is None
    # minimum padding 4: a payload that fills the block exactly takes a whole extra block
    s = suite("aes128-gcm@openssh.com", "")
    assert s is not None and s.packet_size(11) == 4 + 16 + 16 and s.packet_size(12) == 4 + 32 + 16
    # RFC 4253's 16-byte minimum (Dropbear keeps it, OpenSSH does not): USERAUTH_SUCCESS
    chacha = suite("chacha20-poly1305@openssh.com", "")
    assert chacha is not None and chacha.packet_sizes(1) == {28, 36}
    assert chacha.packet_sizes(10) == {36}  # a keystroke is long enough either way


def test_inner_and_outer_may_differ() -> None:
    outer = suite("aes128-gcm@openssh.com", "")
    inner = suite("chacha20-poly1305@openssh.com", "")
    assert outer is not None and inner is not None
    # a 36-byte chacha keystroke inside gcm: payload 45, aligned 1+45+pad -> 64
    assert tunnelled_sizes(outer, inner) == {84}
    model = keystroke_model(outer, outer)
    assert (84, 84) in model.pairs and model.kind[(36, 36)] == ("plain",)
    ctr = suite("aes128-ctr", "hmac-sha2-256-etm@openssh.com")
    assert ctr is not None and ctr in COMMON_SUITES
    assert "aes128-ctr/hmac-sha2-256-etm@openssh.com" in model.kind[(100, 100)]  # 52 inside
    assert "chacha20-poly1305@openssh.com/aead" in model.kind[(84, 84)]


def test_delayed_compression_widens_the_candidates() -> None:
    s = suite("chacha20-poly1305@openssh.com", "", "zlib@openssh.com")
    assert s is not None and s.compressed
    sizes = keystroke_sizes(s)
    assert 36 in sizes and len(sizes) > 1
    assert keystroke_model(s, s).compressed


# --- reverse-interactive -----------------------------------------------------------------------
@pytest.mark.parametrize("cipher, tunnelled", [(CHACHA, 76), (GCM, 84), (CTR_MD5, 96),
                                               (CTR_ETM, 116)])
def test_reverse_tunnel_into_sshd(tmp_path: Path, cipher: tuple[str, str],
                                  tunnelled: int) -> None:
    s = Session(cipher=cipher)
    s.handshake()
    s.session_channel()
    s.reverse_keys(12, tunnelled)
    s.t += 2
    s.i(200)  # the flow goes on after the evidence
    s.close()
    alerts = run(s.write(tmp_path / "rev.pcap"))
    (a,) = [a for a in alerts if a.variant == "reverse-interactive"]
    assert a.category == "reverse-ssh" and a.signature_id == 3100101 and a.severity == 1
    ev = a.evidence
    assert 4 <= ev["reverse_keystrokes"] <= 12
    assert ev["forward_keystrokes"] == 0
    assert ev["keystroke_sizes_matched"] == {f"{tunnelled}/{tunnelled}": ev["reverse_keystrokes"]}
    assert ev["tunnelled_keystroke_size"] == tunnelled and "plain_keystroke_size" not in ev
    assert f"{cipher[0]}/{'aead' if 'gcm' in cipher[0] or 'chacha' in cipher[0] else cipher[1]}" \
        in ev["inner_suites"]
    assert ev["echo_latency_ms"] < 2 and ev["round_trip_ms"] == pytest.approx(60, abs=1)
    assert ev["bare_acks"]["from_responder"] > ev["bare_acks"]["from_initiator"]
    assert ev["ssh"]["negotiated"]["enc_c2s"] == cipher[0]
    assert ev["ssh"]["client"]["software_version"].startswith("SSH-2.0-OpenSSH_9.2")
    assert len(ev["ssh"]["server"]["hassh"]["hash"]) == 32
    assert a.confidence >= 0.9
    last_ns = int(max(t for t, _ in s.pkts) * 1e9)
    assert a.timestamp_ns < last_ns - 10**9  # the packet that completed it, not the flow's end
    assert "reverse-setup" not in variants(alerts)  # no inner login here


def test_reverse_to_a_raw_shell_uses_plain_sizes(tmp_path: Path) -> None:
    """``ssh -R`` to a socat shell: plain keystroke sizes, still from the responder's side."""
    s = Session(cipher=GCM)
    s.handshake()
    s.reverse_keys(8, 36)
    s.close()
    (a,) = [a for a in run(s.write(tmp_path / "raw.pcap")) if a.variant == "reverse-interactive"]
    assert a.evidence["keystroke_sizes_matched"] == {"36/36": a.evidence["reverse_keystrokes"]}
    assert a.evidence["plain_keystroke_size"] == 36 and "inner_suites" not in a.evidence


@pytest.mark.parametrize("rtt", [0.0004, 0.03, 0.12])
@pytest.mark.parametrize("size", [36, 76])  # plain, and a -L/-J carrying an inner session
def test_forward_typing_is_silent(tmp_path: Path, rtt: float, size: int) -> None:
    s = Session(rtt=rtt)
    s.handshake()
    s.session_channel()
    for gap in (0.08, 0.13, 0.2, 0.35, 0.09, 0.11):  # humans: 80-350 ms between keys
        s.forward_keys(10, size, gap=gap + rtt / 3)
        s.t += 2
    s.close()
    assert [a for a in run(s.write(tmp_path / "fwd.pcap")) if a.category == "reverse-ssh"] == []


@pytest.mark.parametrize("rtt", [0.005, 0.019, 0.06, 0.25])
def test_chaff_forward_is_silent_and_reverse_is_found(tmp_path: Path, rtt: float) -> None:
    """OpenSSH 9.5+ (Debian 12 ships 9.2, so only synthetic): chaff every 20 ms while typing,
    each answered; counted as one burst per typing spell whoever answers."""
    fwd = Session(rtt=rtt)
    fwd.handshake()
    for _ in range(8):
        fwd.chaff(0, 1.5, 36, rtt)
        fwd.t += 1.0
    fwd.close()
    assert [a for a in run(fwd.write(tmp_path / "f.pcap")) if a.category == "reverse-ssh"] == []
    rev = Session(rtt=rtt, cport=40001)
    rev.handshake()
    for _ in range(8):
        rev.chaff(1, 1.5, 76, 0.0006)
        rev.t += 1.0
    rev.close()
    (a,) = [a for a in run(rev.write(tmp_path / "r.pcap")) if a.variant == "reverse-interactive"]
    assert a.evidence["reverse_keystrokes"] == 4  # bursts, not the ~300 chaff pairs


def test_found_while_open_and_across_ring_wraps(tmp_path: Path) -> None:
    """Hours into a session (here: after 3,000 packets of bulk output that overrun a 256-entry
    trace ring between looks), the reverse keystrokes are found by a snapshot, flow still open."""
    s = Session()
    s.handshake()
    s.session_channel()
    s.bulk(1, 3000, gap=0.05)
    s.t += 1800
    s.i(100)
    s.reverse_keys(10, 76)
    s.t += 5
    s.i(100)  # a packet after the evidence (the snapshot below runs first)
    s.t += 20
    s.i(100)
    cfg = Config(flows=FlowConfig(trace_packets=256),
                 capture=CaptureConfig(batch_packets=500, walk_packets=500))
    alerts = [a for a in run(s.write(tmp_path / "late.pcap"), cfg, snapshot_s=2.0)
              if a.variant == "reverse-interactive"]
    assert len(alerts) == 1
    assert alerts[0].flow["eve_flow"]["state"] == "open"
    assert alerts[0].evidence.get("trace_packets_missed", 0) > 0


# --- remote-forward, reverse-setup, reverse-exfil, idle-tunnel ----------------------------------
def test_remote_forward_request(tmp_path: Path) -> None:
    s = Session(cipher=CTR_MD5)
    s.handshake()
    su = s.suite
    s.r(su.packet_size(600))  # hostkeys-00@openssh.com, from the server, no reply
    s.i(su.packet_size(27 + 9), s.t + 0.001)  # tcpip-forward "localhost" 2222
    s.t += s.rtt
    s.r(su.packet_size(1))  # REQUEST_SUCCESS
    s.t += 0.01
    s.session_channel()
    s.close()
    (a,) = [a for a in run(s.write(tmp_path / "rf.pcap")) if a.variant == "remote-forward"]
    assert a.severity == 2 and a.confidence < 0.8
    lo, hi = a.evidence["bind_address_length"]
    assert lo <= 9 <= hi


def test_keepalives_and_session_open_are_not_remote_forward(tmp_path: Path) -> None:
    s = Session(cipher=GCM)
    s.handshake()
    s.r(s.suite.packet_size(600))  # hostkeys-00
    s.t += 0.01
    s.session_channel()
    for _ in range(5):  # ServerAliveInterval: keepalive@openssh.com, answered with a failure
        s.t += 15
        s.i(s.suite.packet_size(27))
        s.r(s.suite.packet_size(1), s.t + s.rtt)
    s.close()
    assert "remote-forward" not in variants(run(s.write(tmp_path / "ka.pcap")))


def _forwarded_open(s: Session) -> None:
    su = s.suite
    s.r(su.packet_size(48 + 9 + 9))  # CHANNEL_OPEN forwarded-tcpip "localhost" / "127.0.0.1"
    s.i(su.packet_size(17) + su.channel_data(40), s.t + 0.0009)  # confirmation + sshd banner
    s.t += 0.01
    s.r(su.channel_data(23))  # the inner client's banner
    s.r(su.channel_data(1500), s.t + 0.001)  # its KEXINIT
    s.i(su.channel_data(1100), s.t + 0.0015)  # the inner server's KEXINIT
    s.t += 0.05


def test_reverse_setup_then_exfil(tmp_path: Path) -> None:
    s = Session()
    s.handshake()
    s.session_channel()
    s.t += 30
    _forwarded_open(s)
    s.r(s.suite.channel_data(60))  # inner KEX init
    s.i(s.suite.channel_data(300), s.t + 0.002)  # inner KEX reply + NEWKEYS
    s.t += 1
    s.bulk(0, 900)  # `cat` of a 1.3 MB file through the inner session
    s.close()
    alerts = run(s.write(tmp_path / "setup.pcap"))
    (setup,) = [a for a in alerts if a.variant == "reverse-setup"]
    assert setup.evidence["confirmation_after_ms"] < 2
    (ex,) = [a for a in alerts if a.variant == "reverse-exfil"]
    assert ex.evidence["bytes_initiator_to_responder"] >= 1 << 20
    assert setup.timestamp_ns < ex.timestamp_ns


@pytest.mark.parametrize("cipher", [CHACHA, GCM, CTR_MD5])
def test_agent_forwarding_is_not_reverse_setup(tmp_path: Path, cipher: tuple[str, str]) -> None:
    """``ssh -A``: the server opens an auth-agent@openssh.com channel (a smaller open than
    forwarded-tcpip's), the client confirms at once and answers RSA sign requests at once."""
    s = Session(cipher=cipher)
    s.handshake()
    s.session_channel()
    su = s.suite
    for _ in range(3):
        s.t += 5
        s.r(su.packet_size(1 + 4 + 22 + 12))  # CHANNEL_OPEN auth-agent@openssh.com
        s.i(su.packet_size(17), s.t + 0.0008)
        s.t += 0.01
        s.r(su.channel_data(620))  # sign request: an RSA key and the session data
        s.i(su.channel_data(400), s.t + 0.002)  # the signature
    s.close()
    assert [a for a in run(s.write(tmp_path / "agent.pcap")) if a.category == "reverse-ssh"] == []


def test_forward_bulk_and_local_forward_are_silent(tmp_path: Path) -> None:
    """scp up and down, and a -L forward carrying web requests: no reverse-ssh alert."""
    s = Session()
    s.handshake()
    s.session_channel()
    s.bulk(0, 1500)
    s.bulk(1, 1500)
    for _ in range(20):  # browser through -L: request, response, next request at once
        s.t += 0.3
        s.i(s.suite.channel_data(420))
        s.r(s.suite.channel_data(1400), s.t + s.rtt)
        s.i(s.suite.channel_data(380), s.t + s.rtt + 0.001)
    s.close()
    assert [a for a in run(s.write(tmp_path / "bulk.pcap")) if a.category == "reverse-ssh"] == []


def _keepalive_session(tmp_path: Path, minutes: int, active_at: float | None = None) -> Path:
    s = Session()
    s.handshake()
    s.session_channel()
    start = s.t
    for _ in range(minutes):
        s.t += 60
        if active_at is not None and s.t - start >= active_at:
            s.i(s.suite.channel_data(30))
            active_at = None
        s.i(s.suite.packet_size(27))  # keepalive@openssh.com
        s.r(s.suite.packet_size(1), s.t + s.rtt)
    s.close()
    return s.write(tmp_path / f"idle{minutes}.pcap")


def test_idle_tunnel(tmp_path: Path) -> None:
    alerts = run(_keepalive_session(tmp_path, 14))
    (a,) = [a for a in alerts if a.variant == "idle-tunnel"]
    assert a.category == "ssh-tunnel" and a.signature_id == 3200001
    assert 600 <= a.evidence["idle_seconds"] < 700
    assert [a for a in alerts if a.category == "reverse-ssh"] == []
    # activity resets the clock; a longer configured idle time stays silent
    assert "idle-tunnel" not in variants(run(_keepalive_session(tmp_path, 14, active_at=300)))
    cfg = Config(ssh=SshConfig(idle_tunnel_s=1200))
    assert "idle-tunnel" not in variants(run(_keepalive_session(tmp_path, 14), cfg))


def test_idle_tunnel_under_delayed_compression(tmp_path: Path) -> None:
    """Dropbear negotiates zlib@openssh.com: after login a keepalive's size no longer names it,
    but a small request seconds after the last, answered small, still does; typing does not."""
    def session(typing: bool) -> Path:
        s = Session(comp="zlib@openssh.com", cport=40002 + typing)
        s.handshake()
        for minute in range(12):
            s.t += 60
            if typing and minute == 6:
                s.forward_keys(5, 36)
            s.i(s.suite.packet_size(14))  # keepalive@openssh.com as a back-reference
            s.r(s.suite.packet_size(6), s.t + s.rtt)
        s.close()
        return s.write(tmp_path / f"z{typing}.pcap")

    (a,) = [a for a in run(session(False)) if a.variant == "idle-tunnel"]
    assert a.evidence["compressed"] is True and a.evidence["keepalive_requests"] >= 10
    assert "idle-tunnel" not in variants(run(session(True)))


@pytest.mark.parametrize("reverse", [True, False])
def test_guessed_orientation_takes_roles_from_ssh(tmp_path: Path, reverse: bool) -> None:
    """A capture that missed the TCP handshake and begins with the server's banner: the flow's
    guessed client is the SSH server; the timing is judged with the SSH client as initiator."""
    s = Session(server_first=True)
    s.handshake()
    s.session_channel()
    if reverse:
        s.reverse_keys(10, 76)
    else:
        s.forward_keys(30, 76)
    s.close()
    alerts = run(s.write(tmp_path / "late.pcap", skip=3))
    got = [a for a in alerts if a.category == "reverse-ssh"]
    if not reverse:
        assert got == []
        return
    (a,) = got
    assert a.variant == "reverse-interactive" and a.evidence["roles_from"] == "ssh"
    assert a.flow["eve_flow"]["orientation"] == "guessed"
    assert a.flow["src_ip"] == s.server  # the guess, as ALERTS.md defines it
    assert a.evidence["round_trip_ms"] is None


def test_home_net_does_not_change_detection(tmp_path: Path) -> None:
    s = Session(client="198.51.100.9")  # neither end inside the default home net
    s.handshake()
    s.reverse_keys(8, 76)
    s.close()
    path = s.write(tmp_path / "ext.pcap")
    a = variants(run(path))
    b = variants(run(path, Config(home_net=("198.51.100.0/24",))))
    assert "reverse-interactive" in a and a == b


@pytest.mark.parametrize("name", [r["file"] for r in manifest() if r["label"] in
                                  ("ssh", "ssh-reverse", "benign")] or ["<corpus missing>"])
def test_corpus_ssh_and_benign_silent_when_judged_live(corpus: Path, name: str) -> None:
    """Judged the way ``analyze`` does (snapshots every second of capture time, then the ended
    flows): no reverse-ssh alert but Zeek's role reversal, and no idle tunnel."""
    got = {(a.category, a.variant) for a in run(corpus / name)}
    expected = {("reverse-ssh", "role-reversal")} if name == "zeek/reverse-ssh.pcap" else set()
    assert {g for g in got if g[0] == "reverse-ssh" or g[1] == "idle-tunnel"} == expected


def _feed_random(seed: int, reverse: bool, chaff: bool) -> tuple[list[str], int]:
    """A session typed with random human timing over a random round trip, straight into the
    timing state (no capture): the variants found, and the keys typed before the first."""
    from flowsense.detect.ssh_timing import Session as Timing
    from flowsense.flows.features import Trace

    rng = random.Random(seed)
    rtt = rng.uniform(0.001, 0.3)
    chacha = suite("chacha20-poly1305@openssh.com", "")
    assert chacha is not None
    t = Timing(chacha, chacha, (1, 1), int(rtt * 1e9), SshConfig())
    rows: list[tuple[float, int, int]] = [(0.0, 1, 0), (0.0, 1, 1)]  # ends the cleartext
    now, keys, size = 1.0, 0, rng.choice([36, 76])
    typist, other = (1, 0) if reverse else (0, 1)
    for _ in range(8):  # commands
        for _ in range(rng.randint(3, 9)):
            now += rng.uniform(0.08, 0.35)
            keys += 1
            answer = rng.uniform(0.0002, 0.004) if reverse else rtt + rng.uniform(0, 0.025)
            rows += [(now, size, typist), (now + answer, size, other),
                     (now + answer + rtt + 0.04, 0, typist)]
            if chaff:  # 9.5+: chaff every 20 ms until the next key, each answered
                for k in range(1, 12):
                    rows += [(now + 0.02 * k, size, typist), (now + 0.02 * k + answer, size, other)]
        now += rng.uniform(0.6, 1.8)  # Enter, output, a pause
        rows += [(now, 44, typist), (now + 0.01, 900, other)]
        now += 0.5
    rows.sort()
    ts = np.array([int(r[0] * 1e9) for r in rows])
    tr = Trace(np.array([r[1] for r in rows], np.int32),
               np.array([r[2] | (32 if r[1] == 0 else 0) for r in rows], np.uint8), ts, 0)
    found = t.feed(tr)
    first = next((f.ts_ns for f in found if f.variant == "reverse-interactive"), None)
    typed = sum(1 for r in rows if r[2] == typist and r[1] == size and first is not None
                and int(r[0] * 1e9) <= first)
    return [f.variant for f in found], typed


@pytest.mark.parametrize("seed", range(40))
def test_random_sessions(seed: int) -> None:
    """Forward sessions stay silent and reverse ones are found within 12 keys, over round trips
    of 1-300 ms, typing gaps of 80-350 ms, a 25 ms relay jitter, with and without chaff."""
    chaff = seed % 2 == 1
    fwd, _ = _feed_random(seed, reverse=False, chaff=chaff)
    assert "reverse-interactive" not in fwd
    rev, typed = _feed_random(seed, reverse=True, chaff=chaff)
    assert "reverse-interactive" in rev
    if not chaff:
        assert typed <= 12


def test_state_is_bounded_and_forgotten(tmp_path: Path) -> None:
    """Timing state lives while the flow does: at most ``ssh.max_sessions`` flows at once (the
    least recently seen dropped), none left once every flow has ended."""
    sessions = []
    for k in range(5):
        s = Session(cport=41000 + k, t=1_700_000_000.0 + k * 0.001)
        s.handshake()
        s.forward_keys(3, 36)
        sessions.append(s)
    merged = Session()
    merged.pkts = sorted(p for s in sessions for p in s.pkts)
    path = merged.write(tmp_path / "five.pcap")
    cfg = Config(ssh=SshConfig(max_sessions=2))
    det = SshDetector(Resources(config=cfg))
    sizes: list[int] = []
    pipe = Pipeline(cfg, det.on_frame, det.watch_rules(),
                    lambda f: (det.on_snapshot(f), sizes.append(len(det._sessions))))
    pipe.run_file(str(path))
    assert sizes and max(sizes) == 2  # five live SSH flows, two kept
    pipe.finish()
    assert len(det._sessions) == 0
