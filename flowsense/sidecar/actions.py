"""Carry out a policy's actions for an alert: exec a command, block the remote address.

Each action taken, refused or dropped is a record in the sealed chain (``event_type: action``)
and is returned to the caller. Rules of the house:

* ``exec``: the policy's argv as it stands (never a shell, nothing from the alert in it), the
  alert JSON on stdin, a minimal environment, none of our file descriptors (``close_fds``), its
  own process group killed at the timeout. It runs on a worker thread so the capture loop never
  waits; its outcome is a second record.
* ``block``: the remote address of the flow goes into an nftables set with an element timeout
  and a size cap, in a table of our own (``inet <table>``, sets ``block4``/``block6``, dropping
  in the forward and output hooks). With ``enforce`` the commands go to ``nft -f -`` (argv, no
  shell); otherwise they are logged and put in the record (a dry run).
* Spoofed evidence must not drive a block: only a TCP flow whose handshake was seen from its SYN
  (SYN, SYN-ACK, ACK) and that carried payload both ways, so the remote end answered; never an
  address in ``--home-net`` or the allowlist. A blind spoofer cannot complete a handshake
  (it never sees the sequence numbers); one who sees the path can forge anything, which no
  passive sensor can tell apart.
* Token buckets per action kind bound what a flood of alerts can make us do; drops are logged.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from flowsense.encoding import wire_text
from flowsense.sidecar.alertlog import now_iso

if TYPE_CHECKING:
    from flowsense.config import Config
    from flowsense.detect.base import Alert
    from flowsense.sidecar.alertlog import SealedLog
    from flowsense.sidecar.policy import Action, Limit, Network, Policy, Rule

log = logging.getLogger(__name__)

EXEC_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
NFT_TIMEOUT_S = 10.0
_OUTPUT_CHARS = 512


def ambient_caps() -> int:
    """This process's ambient capabilities (systemd's AmbientCapabilities, or kept across the
    drop to --user so nft inherits CAP_NET_ADMIN)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapAmb:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def hook_argv(argv: Sequence[str]) -> list[str]:
    """``argv``, behind util-linux ``setpriv`` clearing the inheritable and ambient sets when we
    hold ambient capabilities: a hook must not inherit CAP_NET_ADMIN or CAP_NET_RAW."""
    if not ambient_caps():
        return list(argv)
    setpriv = shutil.which("setpriv", path=EXEC_ENV["PATH"])
    if setpriv is None:
        raise OSError(errno.ENOENT, "setpriv (util-linux) is needed to drop capabilities")
    return [setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--", *argv]


class TokenBucket:
    def __init__(self, limit: Limit, clock: Callable[[], float]) -> None:
        self.rate = limit.per_minute / 60.0
        self.burst = float(limit.burst)
        self.tokens = self.burst
        self.clock = clock
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _inside(addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
            nets: Sequence[Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def block_target(eve: dict[str, Any], home: Sequence[Network],
                 allow: Sequence[Network]) -> tuple[str | None, str]:
    """(the address to block, "") or (None, why not)."""
    flow = eve.get("flow") or {}
    if eve.get("proto") != "TCP":
        return None, "not TCP: no handshake proves the remote end"
    if flow.get("orientation") != "syn" or not flow.get("tcp_handshake"):
        return None, "no TCP handshake seen from its SYN (possibly spoofed)"
    if not (flow.get("payload_bytes_toserver", 0) > 0
            and flow.get("payload_bytes_toclient", 0) > 0):
        return None, "no payload both ways (possibly spoofed)"
    direction = eve.get("direction")
    if direction == "internal":
        return None, "internal flow: no remote address"
    text = eve.get("src_ip") if direction == "inbound" else eve.get("dest_ip")
    try:
        addr = ipaddress.ip_address(str(text))
    except ValueError:
        return None, "no valid remote address"
    if _inside(addr, home):
        return None, "a home-net address"
    if _inside(addr, allow):
        return None, "an allowlisted address"
    return str(addr), ""


def nft_setup(table: str, max_elements: int) -> list[str]:
    """Idempotent: creates what is missing, keeps set elements, replaces our rules."""
    out = [f"add table inet {table}"]
    for fam in ("ipv4_addr", "ipv6_addr"):
        name = "block4" if fam == "ipv4_addr" else "block6"
        out.append(f"add set inet {table} {name} {{ type {fam}; flags timeout; "
                   f"size {max_elements}; }}")
    for hook in ("forward", "output"):
        out.append(f"add chain inet {table} {hook} {{ type filter hook {hook} priority -10; "
                   "policy accept; }")
        out.append(f"flush chain inet {table} {hook}")
    for hook, sides in (("forward", ("daddr", "saddr")), ("output", ("daddr",))):
        for ipf, name in (("ip", "block4"), ("ip6", "block6")):
            for side in sides:
                out.append(f"add rule inet {table} {hook} {ipf} {side} @{name} drop")
    return out


def nft_element(table: str, addr: str, timeout_s: int) -> str:
    name = "block6" if ":" in addr else "block4"
    return f"add element inet {table} {name} {{ {addr} timeout {timeout_s}s }}"


class Actions:
    """What the sidecar does with an alert beyond logging it (see the module doc).

    ``handle(alert, eve)``: ``eve`` is the alert's EVE record, preferably as the sealed log
    returned it (its ``seal.seq`` is then cited by the action records). Returns the action
    records, already appended to ``log`` when there is one. ``close()`` waits for running
    execs.
    """

    def __init__(self, policy: Policy, enforce: bool, log: SealedLog | None, config: Config,
                 *, nft_argv: Sequence[str] = ("nft",),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enforce = enforce
        self.log = log
        self.nft_argv = tuple(nft_argv)
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._home = tuple(ipaddress.ip_network(n, strict=False) for n in config.home_net)
        self._config_allow = tuple(getattr(config, "allowlist", ()))
        self._blocked: dict[str, float] = {}  # address -> expiry (clock)
        self._table_ready = False
        self._dropping: set[str] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flowsense-exec")
        self._lock = threading.Lock()
        self._use_policy(policy)

    def _use_policy(self, policy: Policy) -> None:
        from flowsense.sidecar.policy import allow_networks

        self.policy = policy
        self._allow = allow_networks(policy, self._config_allow)
        self._buckets = {k: TokenBucket(v, self.clock) for k, v in policy.limits.items()}

    # --- records ---------------------------------------------------------------------------
    def _record(self, eve: dict[str, Any], rule: Rule | None, action: Action,
                outcome: str, **detail: Any) -> dict[str, Any]:
        a = eve.get("alert", {})
        rec: dict[str, Any] = {
            "timestamp": now_iso(), "event_type": "action",
            "flow_id": eve.get("flow_id"), "community_id": eve.get("community_id"),
            "src_ip": eve.get("src_ip"), "dest_ip": eve.get("dest_ip"),
            "action": {"type": action.kind, "outcome": outcome,
                       "rule": rule.origin if rule else "", **detail},
            "alert": {"signature_id": a.get("signature_id"), "category": a.get("category"),
                      "variant": a.get("variant")},
        }
        seq = (eve.get("seal") or {}).get("seq")
        if seq is not None:
            rec["alert"]["seq"] = seq
        self.counters[f"{action.kind}:{outcome}"] += 1
        if self.log is not None:
            return self.log.append(rec)
        return rec

    def _admit(self, kind: str) -> bool:
        bucket = self._buckets.get(kind)
        if bucket is None or bucket.take():
            if kind in self._dropping:
                self._dropping.discard(kind)
                log.warning("%s actions admitted again", kind)
            return True
        if kind not in self._dropping:
            self._dropping.add(kind)
            log.warning("%s actions over their rate limit: dropping (each drop is logged in "
                        "the chain)", kind)
        return False

    # --- the API -----------------------------------------------------------------------------
    def handle(self, alert: Alert | None, eve: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the policy's actions for one alert; the action records, in order."""
        with self._lock:
            rule, actions = self.policy.decide(eve)
            done: list[dict[str, Any]] = []
            for action in actions:
                if action.kind == "block":
                    done.append(self._block(eve, rule, action))
                elif action.kind == "exec":
                    done.append(self._exec(eve, rule, action))
            return done

    def _block(self, eve: dict[str, Any], rule: Rule | None, action: Action) -> dict[str, Any]:
        target, why = block_target(eve, self._home, self._allow)
        if target is None:
            return self._record(eve, rule, action, "refused", reason=why)
        now = self.clock()
        self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        if target in self._blocked:
            return self._record(eve, rule, action, "already-blocked", target=target)
        if not self._admit("block"):
            return self._record(eve, rule, action, "rate-limited", target=target)
        p = self.policy
        if len(self._blocked) >= p.block_max_elements:
            return self._record(eve, rule, action, "set-full", target=target,
                                max_elements=p.block_max_elements)
        lines = [] if self._table_ready else nft_setup(p.block_table, p.block_max_elements)
        lines.append(nft_element(p.block_table, target, p.block_timeout_s))
        if not self.enforce:
            self._table_ready = True  # the dry run shows the setup once
            for line in lines:
                log.warning("dry run (no --enforce): nft %s", line)
            self._blocked[target] = now + p.block_timeout_s
            return self._record(eve, rule, action, "dry-run", target=target, nft=lines)
        error = self._nft(lines)
        if error:
            return self._record(eve, rule, action, "failed", target=target, nft=lines,
                                error=error)
        self._table_ready = True
        self._blocked[target] = now + p.block_timeout_s
        return self._record(eve, rule, action, "applied", target=target, nft=lines,
                            timeout_s=p.block_timeout_s)

    def _nft(self, lines: list[str]) -> str:
        """Run ``nft -f -`` on ``lines``; "" or the error in one line."""
        try:
            r = subprocess.run([*self.nft_argv, "-f", "-"], input="\n".join(lines) + "\n",
                               capture_output=True, text=True, timeout=NFT_TIMEOUT_S,
                               close_fds=True, env=EXEC_ENV)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"nft: {exc}"
        if r.returncode != 0:
            return " ".join(r.stderr.split())[:_OUTPUT_CHARS] or f"nft exit {r.returncode}"
        return ""

    def _exec(self, eve: dict[str, Any], rule: Rule | None, action: Action) -> dict[str, Any]:
        if not self._admit("exec"):
            return self._record(eve, rule, action, "rate-limited", argv=list(action.argv))
        data = (json.dumps(eve, ensure_ascii=False) + "\n").encode("utf-8")
        self._pool.submit(self._run, eve, rule, action, data, self.policy.exec_timeout_s)
        return self._record(eve, rule, action, "queued", argv=list(action.argv))

    def _run(self, eve: dict[str, Any], rule: Rule | None, action: Action, data: bytes,
             timeout_s: float) -> None:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(hook_argv(action.argv), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    close_fds=True, env=EXEC_ENV, start_new_session=True,
                                    cwd="/")
        except OSError as exc:
            self._outcome(eve, rule, action, "failed", argv=list(action.argv),
                          error=f"{exc.strerror}: {action.argv[0]}")
            return
        try:
            out, _ = proc.communicate(data, timeout=timeout_s)
            outcome, code = "done", proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            outcome, code = "timeout", proc.returncode
        self._outcome(eve, rule, action, outcome, argv=list(action.argv), exit_code=code,
                      seconds=round(time.monotonic() - started, 3),
                      output=wire_text(out[:_OUTPUT_CHARS]))

    def _outcome(self, eve: dict[str, Any], rule: Rule | None, action: Action, outcome: str,
                 **detail: Any) -> None:
        """An exec's outcome, from the worker thread (after close: logged only)."""
        with self._lock:
            try:
                self._record(eve, rule, action, outcome, **detail)
            except ValueError:  # the sealed log was closed first
                log.warning("exec %s: %s (the sealed log was already closed)", action.argv[0],
                            outcome)

    def adopt(self, previous: Actions) -> None:
        """Take over a replaced instance's state (a SIGUSR2 reload): blocks in force, whether
        our nft table is set up, bucket levels where the limits did not change; its worker
        finishes what it has queued."""
        with self._lock:
            self._blocked = dict(previous._blocked)
            self._table_ready = previous._table_ready and (
                previous.policy.block_table, previous.policy.block_max_elements) == (
                self.policy.block_table, self.policy.block_max_elements)
            self.counters.update(previous.counters)
            for kind, bucket in previous._buckets.items():
                if previous.policy.limits.get(kind) == self.policy.limits.get(kind):
                    self._buckets[kind] = bucket
        previous._pool.shutdown(wait=False)

    def close(self) -> None:
        """Wait for queued execs (their outcome records are written), then stop the worker.
        Call it before closing the sealed log."""
        self._pool.shutdown(wait=True)
