"""Response policy: validation with file:line, exec without a shell, nftables blocks (dry run and
enforced in a namespace of our own), spoofed and protected addresses never blocked, rate limits,
every action sealed in the chain. Alerts come from the bundled captures."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import dpkt
import pytest

from flowsense.config import Config
from flowsense.errors import SignatureError
from flowsense.report.alerts import eve_record
from flowsense.sidecar.alertlog import SealedLog, verify
from flowsense.sidecar.policy import Actions, load_policy, parse_policy
from tests.conftest import require_root, require_tool, run_detectors

REPO = Path(__file__).resolve().parents[1]
XMR = REPO / "pcaps" / "corpus" / "ndpi-xmr-stak-monero-stratum.pcap"
POOL_IP = "178.32.196.217"
MINER_IP = "192.168.2.92"


def alerts_of(pcap: Path) -> list:
    from flowsense.detect.base import Resources
    from flowsense.detect.registry import DETECTORS
    from flowsense.signatures import load_pools

    res = Resources(pools=load_pools())
    return run_detectors([pcap], [cls(res) for cls in DETECTORS.values()])


@cache
def _xmr_variants(tmp: str) -> dict[str, Path]:
    """The Monero capture as recorded, without its handshake (a capture starting mid-flow), and
    with only the miner's side (what a spoofer sending forged packets produces)."""
    pkts = list(dpkt.pcap.Reader(open(XMR, "rb")))
    out = {"full": XMR}
    for name, keep in (("no-handshake", lambda i, ip: i >= 3),
                       ("one-way", lambda i, ip: ip.src == bytes(map(int, MINER_IP.split("."))))):
        path = Path(tmp) / f"xmr-{name}.pcap"
        with open(path, "wb") as f:
            w = dpkt.pcap.Writer(f, linktype=1, snaplen=262144)
            for i, (ts, buf) in enumerate(pkts):
                if keep(i, dpkt.ethernet.Ethernet(buf).data):
                    w.writepkt(buf, ts)
        out[name] = path
    return out


@pytest.fixture
def xmr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _xmr_variants(str(tmp_path_factory.getbasetemp()))


def eves(pcap: Path) -> list[tuple[object, dict]]:
    return [(a, json.loads(eve_record(a, Config()))) for a in alerts_of(pcap)]


def policy_file(tmp: Path, text: str) -> Path:
    p = tmp / "policy.yaml"
    p.write_text(textwrap.dedent(text))
    return p


BLOCK_ALL = """
version: 1
rules:
  - match: {category: [stratum-mining, mining-pool, reverse-ssh], direction: outbound}
    actions: [log, block]
"""


# --- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,line,what", [
    ("version: 1\nrulez: []\n", 2, "unknown key 'rulez'"),
    ("rules:\n  - match: {category: stratum}\n    actions: [log]\n", 2,
     "unknown category 'stratum'"),
    ("rules:\n  - match: {severity: 4}\n    actions: [log]\n", 2, "severity must be"),
    ("rules:\n  - actions:\n      - exec: notify.sh\n", 3, "argv list"),
    ("rules:\n  - actions:\n      - exec: [notify.sh, --x]\n", 3, "absolute path"),
    ("rules:\n  - actions: [log, reboot]\n", 2, "unknown action 'reboot'"),
    ("rules:\n  - match: {direction: outbound}\n", 2, "needs actions"),
    ("block: {table: 'x;drop'}\n", 1, "not an nftables name"),
    ("allowlist: [10.0.0.0/8, not-an-ip]\n", 1, "not an address"),
    ("rules:\n  - {actions: [log], actions: [block]}\n", 2, "duplicate key"),
    ("rules: [\n", 2, "invalid YAML"),
    ("limits: {exec: {per_minute: -1}}\n", 1, "per_minute must be"),
])
def test_validation_names_file_and_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SignatureError) as exc:
        load_policy(p)
    assert exc.value.line == line and str(exc.value).startswith(f"{p}:{line}: ")
    assert what in str(exc.value)


def test_size_cap_and_first_rule_wins(tmp_path: Path) -> None:
    p = tmp_path / "huge.yaml"
    p.write_text("#" * (2 << 20))
    with pytest.raises(SignatureError, match="larger than"):
        load_policy(p)
    pol = parse_policy("inline", """
rules:
  - match: {category: mining-pool, variant: ip-list}
    actions: [log]
  - match: {category: [mining-pool, stratum-mining]}
    actions: [block]
""")
    decided = {e["alert"]["variant"]: pol.decide(e)[1] for _, e in eves(XMR)}
    assert [a.kind for a in decided["ip-list"]] == ["log"]
    assert [a.kind for a in decided["xmr"]] == ["block"]
    assert [a.kind for a in parse_policy("empty", "").decide(next(iter(eves(XMR)))[1])[1]] == [
        "log"]


# --- block -----------------------------------------------------------------------------------
def test_block_dry_run_prints_nft_and_seals_it(tmp_path: Path) -> None:
    found = eves(XMR)
    assert {e["alert"]["category"] for _, e in found} == {"stratum-mining", "mining-pool"}
    flow = found[0][1]["flow"]
    assert flow["tcp_handshake"] and flow["payload_bytes_toclient"] > 0
    lg = SealedLog(str(tmp_path / "alerts.log"), str(tmp_path / "seed"), syslog=False)
    act = Actions(load_policy(policy_file(tmp_path, BLOCK_ALL)), False, lg, Config())
    done = []
    for alert, eve in found:
        done += act.handle(alert, lg.append(eve))
    act.close()
    lg.close()
    first, second = (d["action"] for d in done)
    assert first["outcome"] == "dry-run" and first["target"] == POOL_IP
    assert first["nft"][0] == "add table inet flowsense"
    assert first["nft"][-1] == f"add element inet flowsense block4 {{ {POOL_IP} timeout 3600s }}"
    assert second["outcome"] == "already-blocked"
    assert done[0]["alert"]["seq"] == 0 and first["rule"].endswith("policy.yaml:4")
    recs = [json.loads(x) for x in (tmp_path / "alerts.log").read_text().splitlines()]
    assert [r["event_type"] for r in recs] == ["alert", "action", "alert", "action"]
    assert verify([str(tmp_path / "alerts.log")], str(tmp_path / "seed")).records == 4
    # the dry run is real nft syntax: the kernel's parser accepts it (check mode, nothing applied)
    if os.geteuid() == 0 and require_tool("nft"):
        ns = f"fsl-chk-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"],
                               input="\n".join(first["nft"]) + "\n", capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stderr
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_enforce_adds_the_element_in_a_namespace(tmp_path: Path) -> None:
    require_root()
    require_tool("nft")
    require_tool("ip")
    ns = f"fsl-enf-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        nft = ["ip", "netns", "exec", ns, "nft"]
        pol = load_policy(policy_file(tmp_path, BLOCK_ALL + "block: {timeout_s: 600}\n"))
        act = Actions(pol, True, None, Config(), nft_argv=nft)
        alert, eve = eves(XMR)[0]
        rec = act.handle(alert, eve)[0]["action"]
        assert rec["outcome"] == "applied", rec
        listed = subprocess.run([*nft, "list", "set", "inet", "flowsense", "block4"],
                                capture_output=True, text=True, check=True).stdout
        assert POOL_IP in listed and "timeout" in listed and "size 65536" in listed
        # the setup is idempotent: a second instance (restart) re-applies it and keeps elements
        act2 = Actions(pol, True, None, Config(), nft_argv=nft)
        other = json.loads(json.dumps(eve).replace(POOL_IP, "198.51.100.9"))
        assert act2.handle(alert, other)[0]["action"]["outcome"] == "applied"
        listed = subprocess.run([*nft, "list", "ruleset"], capture_output=True, text=True,
                                check=True).stdout
        assert POOL_IP in listed and "198.51.100.9" in listed
        assert listed.count("@block4 drop") == 3  # forward daddr, saddr; output daddr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_spoofed_and_protected_addresses_never_blocked(tmp_path: Path, xmr: dict) -> None:
    pol = load_policy(policy_file(tmp_path, BLOCK_ALL))
    for name, why in (("no-handshake", "no TCP handshake"), ("one-way", "no TCP handshake")):
        found = eves(xmr[name])
        assert found, f"{name}: the detectors still fire on it"
        act = Actions(pol, False, None, Config())
        for alert, eve in found:
            rec = act.handle(alert, eve)[0]["action"]
            assert rec["outcome"] == "refused" and why in rec["reason"], (name, rec)
    pol = load_policy(policy_file(tmp_path, "rules: [{actions: [block]}]\n"))
    alert, eve = eves(XMR)[0]
    # the pool inside --home-net: the alert is internal; and the guard checks the address too
    home = dataclasses.replace(Config(), home_net=("192.168.0.0/16", "178.32.196.0/24"))
    internal = json.loads(eve_record(alert, home))
    assert Actions(pol, False, None, home).handle(alert, internal)[0]["action"]["reason"] == \
        "internal flow: no remote address"
    assert Actions(pol, False, None, home).handle(alert, eve)[0]["action"]["reason"] == \
        "a home-net address"
    allow = load_policy(policy_file(tmp_path, BLOCK_ALL + "allowlist: [178.32.196.0/24]\n"))
    assert Actions(pol, False, None, Config()).handle(alert, eve)[0]["action"]["outcome"] == \
        "dry-run"
    assert Actions(allow, False, None, Config()).handle(alert, eve)[0]["action"]["reason"] == \
        "an allowlisted address"
    # Config.allowlist (entries with a network, a port and categories): any entry protects the
    # whole address, whatever its port
    entry = SimpleNamespace(network=ipaddress.ip_network("178.32.196.0/24"), port=22,
                            categories=("reverse-ssh",))
    cfg = SimpleNamespace(home_net=Config().home_net, allowlist=(entry,))
    assert Actions(pol, False, None, cfg).handle(alert, eve)[0]["action"]["reason"] == \
        "an allowlisted address"


# --- exec ------------------------------------------------------------------------------------
HOOK = """
import json, os, sys
data = sys.stdin.read()
json.dump({"argv": sys.argv, "stdin": data, "fds": sorted(os.listdir("/proc/self/fd")),
           "env": dict(os.environ), "cwd": os.getcwd()}, open(sys.argv[1], "w"))
"""


def test_exec_gets_json_on_stdin_never_a_shell(tmp_path: Path) -> None:
    hook, seen, pwned = tmp_path / "hook.py", tmp_path / "seen.json", tmp_path / "pwned"
    hook.write_text(HOOK)
    pol = load_policy(policy_file(tmp_path, f"""
        rules:
          - match: {{category: stratum-mining}}
            actions:
              - exec: [{sys.executable}, {hook}, {seen}, "$(touch {pwned})"]
        """))
    lg = SealedLog(str(tmp_path / "alerts.log"), str(tmp_path / "seed"), syslog=False)
    act = Actions(pol, False, lg, Config())
    alert, eve = next((a, e) for a, e in eves(XMR) if e["alert"]["category"] == "stratum-mining")
    hostile = f"x'; touch {pwned}; `touch {pwned}` $(touch {pwned})\n\x1b[2J"
    eve["evidence"]["agent"] = hostile  # as if the miner had sent it
    sealed = lg.append(eve)
    queued = act.handle(alert, sealed)
    act.close()
    lg.close()
    assert queued[0]["action"]["outcome"] == "queued"
    got = json.loads(seen.read_text())
    assert got["argv"][1:] == [str(seen), f"$(touch {pwned})"]  # literal: no shell
    assert json.loads(got["stdin"]) == sealed and json.loads(got["stdin"])["evidence"][
        "agent"] == hostile
    assert not pwned.exists()
    assert got["fds"] == ["0", "1", "2", "3"]  # stdio and listdir's own: none of ours
    assert set(got["env"]) <= {"PATH", "LANG", "LC_CTYPE"} and got["cwd"] == "/"
    recs = [json.loads(x) for x in (tmp_path / "alerts.log").read_text().splitlines()]
    assert [(r["event_type"], r.get("action", {}).get("outcome")) for r in recs] == [
        ("alert", None), ("action", "queued"), ("action", "done")]
    assert recs[2]["action"]["exit_code"] == 0
    assert verify([str(tmp_path / "alerts.log")], str(tmp_path / "seed")).ok


def test_exec_timeout_kills(tmp_path: Path) -> None:
    pol = load_policy(policy_file(tmp_path, f"""
        exec: {{timeout_s: 0.5}}
        rules:
          - actions:
              - exec: [{sys.executable}, -c, "import time; time.sleep(30)"]
        """))
    act = Actions(pol, False, None, Config())
    alert, eve = eves(XMR)[0]
    assert act.handle(alert, eve)[0]["action"]["outcome"] == "queued"
    act.close()
    assert act.counters["exec:timeout"] == 1


def test_rate_limit_drops_and_logs(tmp_path: Path) -> None:
    now = [0.0]
    pol = load_policy(policy_file(tmp_path, """
        limits: {exec: {per_minute: 1, burst: 2}}
        rules:
          - actions:
              - exec: [/bin/true]
        """))
    lg = SealedLog(str(tmp_path / "alerts.log"), str(tmp_path / "seed"), syslog=False)
    act = Actions(pol, False, lg, Config(), clock=lambda: now[0])
    alert, eve = eves(XMR)[0]
    outcomes = [act.handle(alert, eve)[0]["action"]["outcome"] for _ in range(4)]
    assert outcomes == ["queued", "queued", "rate-limited", "rate-limited"]
    now[0] += 60.0  # one token a minute
    assert [act.handle(alert, eve)[0]["action"]["outcome"] for _ in range(2)] == [
        "queued", "rate-limited"]
    act.close()
    lg.close()
    recs = [json.loads(x) for x in (tmp_path / "alerts.log").read_text().splitlines()]
    assert sum(r["action"]["outcome"] == "rate-limited" for r in recs) == 3
    assert sum(r["action"]["outcome"] == "done" for r in recs) == 3
    assert verify([str(tmp_path / "alerts.log")], str(tmp_path / "seed")).ok


def test_reload_adopts_blocks_and_buckets(tmp_path: Path) -> None:
    pol = load_policy(policy_file(tmp_path, BLOCK_ALL + "limits: {block: {burst: 1}}\n"))
    old = Actions(pol, False, None, Config())
    alert, eve = eves(XMR)[0]
    assert old.handle(alert, eve)[0]["action"]["outcome"] == "dry-run"
    new = Actions(load_policy(policy_file(tmp_path, BLOCK_ALL + "limits: {block: {burst: 1}}\n")),
                  False, None, Config())
    new.adopt(old)
    assert new.handle(alert, eve)[0]["action"]["outcome"] == "already-blocked"
    other = json.loads(json.dumps(eve).replace(POOL_IP, "198.51.100.9"))
    assert new.handle(alert, other)[0]["action"]["outcome"] == "rate-limited"  # bucket kept
    new.close()


CAPS_CHILD = """
import json, sys
from flowsense.config import Config
from flowsense.sidecar.policy import Actions, parse_policy
hook = ["/bin/sh", "-c", 'grep ^Cap /proc/self/status > "$0"', sys.argv[1]]
pol = parse_policy("p", json.dumps({"rules": [{"actions": [{"exec": hook}]}]}))
own = [l for l in open("/proc/self/status") if l.startswith("CapAmb")][0]
act = Actions(pol, False, None, Config())
act.handle(None, {"alert": {}})
act.close()
print(own.split()[1])
"""


def test_exec_hook_does_not_inherit_capabilities(tmp_path: Path) -> None:
    """Running as a user with CAP_NET_ADMIN ambient (--enforce after the drop, or systemd's
    AmbientCapabilities), the hook gets no capabilities."""
    require_root()
    require_tool("setpriv")
    out = tmp_path / "caps.txt"
    # uid 0 without root's implicit capabilities (SECBIT_NOROOT): only the ambient one, as a
    # dropped --user would hold it
    r = subprocess.run(
        ["setpriv", "--securebits=+noroot,+noroot_locked", "--inh-caps=-all,+net_admin",
         "--ambient-caps=+net_admin", "--",
         sys.executable, "-c", CAPS_CHILD, str(out)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1], 16) == 1 << 12  # we held CAP_NET_ADMIN ambient
    caps = dict(line.split(":") for line in out.read_text().splitlines())
    assert all(int(v, 16) == 0 for k, v in caps.items() if k != "CapBnd"), caps


def test_shipped_example_policy(tmp_path: Path) -> None:
    """deploy/policy.example.yaml loads and does what its comments say on the real alerts."""
    pol = load_policy(REPO / "deploy" / "policy.example.yaml")
    kinds = {e["alert"]["variant"]: [a.kind for a in pol.decide(e)[1]] for _, e in eves(XMR)}
    assert kinds == {"xmr": ["block", "exec"], "ip-list": ["log"]}
    r = subprocess.run([sys.executable, "-m", "flowsense", "policy", "validate",
                        str(REPO / "deploy" / "policy.example.yaml")], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.endswith(": ok, 3 rules\n"), r
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - match: {category: [reverse-ssh, stratum]}\n    actions: [log]\n")
    r = subprocess.run([sys.executable, "-m", "flowsense", "policy", "validate", str(bad)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1 and r.stdout.startswith(f"{bad}:2: unknown category 'stratum'"), r
