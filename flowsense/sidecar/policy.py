"""Response policy as code: which alerts get which actions (validated YAML).

A policy file::

    version: 1
    allowlist: [198.51.100.0/24]      # never blocked (besides --home-net)
    limits:                           # token buckets, one per action kind
      exec: {per_minute: 6, burst: 3}
      block: {per_minute: 30, burst: 10}
    block: {table: flowsense, timeout_s: 3600, max_elements: 65536}
    exec: {timeout_s: 10}
    rules:                            # the first rule that matches decides; none: log only
      - name: reverse ssh leaving
        match: {category: reverse-ssh, direction: outbound, severity: [1, 2]}
        actions: [log, block]
      - match: {category: [stratum-mining, mining-pool]}
        actions: [block, {exec: [/usr/local/bin/page-oncall, --team, sec]}]

``match`` keys (each a value or a list; absent: any): ``category``, ``variant``, ``severity``,
``direction``, checked against ALERTS.md's names so a typo is an error, not a rule that never
fires. Actions: ``log`` (every alert is logged anyway: a rule of ``[log]`` means nothing more),
``block`` (the remote address, into an nftables set; see ``actions``), ``exec`` (an argv list, its
program an absolute path; nothing in it comes from the alert, which arrives as JSON on stdin).

Read as pySigma and ``flowsense.signatures`` read rules: ``yaml.compose`` with the safe loader,
so every error names file:line; unknown or duplicate keys are errors; size and count caps.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowsense.signatures import _fail as fail_at
from flowsense.signatures import _scalar as scalar
from flowsense.signatures import compose, read_rule_file

MAX_FILE_BYTES = 1 << 20
MAX_RULES = 1000
MAX_ARGV = 64
MAX_ARG_CHARS = 4096
# ALERTS.md's vocabulary
CATEGORIES = frozenset({"reverse-ssh", "ssh-tunnel", "stratum-mining", "mining-pool",
                        "dns-tunnel", "icmp-tunnel", "beacon"})
VARIANTS = frozenset({
    "reverse-interactive", "reverse-setup", "remote-forward", "reverse-exfil", "role-reversal",
    "idle-tunnel", "odd-port", "multiplexed", "encapsulated",
    "stratum-v1", "xmr", "eth-proxy", "eth-getwork-http", "ethereumstratum", "stratum-v2",
    "dns", "sni", "http-host", "login", "ip-list", "cadence"})
DIRECTIONS = frozenset({"outbound", "inbound", "internal", "external"})
ACTION_KINDS = ("log", "exec", "block")
_TOP_KEYS = {"version", "allowlist", "limits", "block", "exec", "rules"}
_RULE_KEYS = {"name", "match", "actions"}
_MATCH_KEYS = {"category", "variant", "severity", "direction"}
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Action:
    kind: str  # log, exec, block
    argv: tuple[str, ...] = ()
    origin: str = ""  # file:line


@dataclass(frozen=True)
class Rule:
    name: str
    match: dict[str, frozenset[Any]]  # key -> accepted values (absent: any)
    actions: tuple[Action, ...]
    origin: str

    def matches(self, eve: dict[str, Any]) -> bool:
        a = eve.get("alert", {})
        have = {"category": a.get("category"), "variant": a.get("variant"),
                "severity": a.get("severity"), "direction": eve.get("direction")}
        return all(have[k] in accepted for k, accepted in self.match.items())


@dataclass(frozen=True)
class Limit:
    per_minute: float
    burst: int


@dataclass(frozen=True)
class Policy:
    path: str = ""
    rules: tuple[Rule, ...] = ()
    allowlist: tuple[Network, ...] = ()
    limits: dict[str, Limit] = field(default_factory=lambda: {
        "exec": Limit(6.0, 3), "block": Limit(30.0, 10)})
    block_table: str = "flowsense"
    block_timeout_s: int = 3600
    block_max_elements: int = 65536
    exec_timeout_s: float = 10.0

    def decide(self, eve: dict[str, Any]) -> tuple[Rule | None, tuple[Action, ...]]:
        """The first matching rule and its actions; no rule: log only."""
        for rule in self.rules:
            if rule.matches(eve):
                return rule, rule.actions
        return None, (Action("log"),)


def _mapping(path: str, node: yaml.Node, known: set[str], what: str) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise fail_at(path, node, f"{what} must be a mapping")
    seen: dict[str, yaml.Node] = {}
    for k, v in node.value:
        key = scalar(path, k, "a key")
        if key not in known:
            raise fail_at(path, k, f"unknown key {key!r} in {what} "
                          f"(known: {', '.join(sorted(known))})")
        if key in seen:
            raise fail_at(path, k, f"duplicate key {key!r}")
        seen[key] = v
    return seen


def _number(path: str, node: yaml.Node, what: str, lo: float, hi: float,
            integer: bool = False) -> float:
    text = scalar(path, node, what)
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise fail_at(path, node, f"{what} must be {kind} in [{lo:g}, {hi:g}], got {text!r}")
    return value


def _values(path: str, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    if not items:
        raise fail_at(path, node, f"{what}: an empty list matches nothing")
    return [(scalar(path, n, what), n) for n in items]


def _match(path: str, node: yaml.Node) -> dict[str, frozenset[Any]]:
    out: dict[str, frozenset[Any]] = {}
    vocab = {"category": CATEGORIES, "variant": VARIANTS, "direction": DIRECTIONS}
    for key, v in _mapping(path, node, _MATCH_KEYS, "match").items():
        vals: set[Any] = set()
        for text, n in _values(path, v, key):
            if key == "severity":
                vals.add(int(_number(path, n, "severity", 1, 3, integer=True)))
            elif text not in vocab[key]:
                raise fail_at(path, n, f"unknown {key} {text!r} (known: "
                              f"{', '.join(sorted(vocab[key]))})")
            else:
                vals.add(text)
        out[key] = frozenset(vals)
    return out


def _action(path: str, node: yaml.Node) -> Action:
    origin = f"{path}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.ScalarNode):
        kind = node.value
        if kind not in ("log", "block"):
            raise fail_at(path, node, f"unknown action {kind!r} (log, block, or exec: [argv])")
        return Action(kind, (), origin)
    spec = _mapping(path, node, {"exec"}, "an action")
    if "exec" not in spec:
        raise fail_at(path, node, "an action mapping needs exec: [argv]")
    argv_node = spec["exec"]
    if not isinstance(argv_node, yaml.SequenceNode) or not argv_node.value:
        raise fail_at(path, argv_node, "exec takes an argv list (no shell), program first")
    if len(argv_node.value) > MAX_ARGV:
        raise fail_at(path, argv_node, f"exec: more than {MAX_ARGV} arguments")
    argv = tuple(scalar(path, n, "an argument") for n in argv_node.value)
    if not argv[0].startswith("/"):
        raise fail_at(path, argv_node, f"exec: the program must be an absolute path, not "
                      f"{argv[0]!r}")
    for n, a in zip(argv_node.value, argv):
        if len(a) > MAX_ARG_CHARS or "\0" in a:
            raise fail_at(path, n, "exec: an argument too long or holding a NUL")
    return Action("exec", argv, origin)


def _rule(path: str, node: yaml.Node, k: int) -> Rule:
    spec = _mapping(path, node, _RULE_KEYS, "a rule")
    if "actions" not in spec:
        raise fail_at(path, node, "a rule needs actions")
    acts = spec["actions"]
    if not isinstance(acts, yaml.SequenceNode) or not acts.value:
        raise fail_at(path, acts, "actions must be a non-empty list")
    name = scalar(path, spec["name"], "name") if "name" in spec else f"rule {k}"
    match = _match(path, spec["match"]) if "match" in spec else {}
    return Rule(name, match, tuple(_action(path, a) for a in acts.value),
                f"{path}:{node.start_mark.line + 1}")


def _limits(path: str, node: yaml.Node) -> dict[str, Limit]:
    out = dict(Policy().limits)
    for kind, v in _mapping(path, node, {"exec", "block"}, "limits").items():
        spec = _mapping(path, v, {"per_minute", "burst"}, f"limits.{kind}")
        rate = _number(path, spec["per_minute"], "per_minute", 0, 1e6) if "per_minute" in spec \
            else out[kind].per_minute
        burst = int(_number(path, spec["burst"], "burst", 1, 1e6, integer=True)) \
            if "burst" in spec else out[kind].burst
        out[kind] = Limit(rate, burst)
    return out


def parse_policy(path: str, text: str) -> Policy:
    root = compose(path, text)
    if root is None:
        return Policy(path=path)
    top = _mapping(path, root, _TOP_KEYS, "a policy")
    kw: dict[str, Any] = {"path": path}
    if "version" in top and scalar(path, top["version"], "version") != "1":
        raise fail_at(path, top["version"], "unsupported policy version (1 is known)")
    if "allowlist" in top:
        nets = []
        for text_, n in _values(path, top["allowlist"], "allowlist"):
            try:
                nets.append(ipaddress.ip_network(text_.strip(), strict=False))
            except ValueError:
                raise fail_at(path, n, f"not an address or network: {text_!r}") from None
        kw["allowlist"] = tuple(nets)
    if "limits" in top:
        kw["limits"] = _limits(path, top["limits"])
    if "block" in top:
        b = _mapping(path, top["block"], {"table", "timeout_s", "max_elements"}, "block")
        if "table" in b:
            table = scalar(path, b["table"], "table")
            if not _NFT_NAME.match(table):
                raise fail_at(path, b["table"], f"not an nftables name: {table!r}")
            kw["block_table"] = table
        if "timeout_s" in b:
            kw["block_timeout_s"] = int(_number(path, b["timeout_s"], "timeout_s", 1,
                                                30 * 86400, integer=True))
        if "max_elements" in b:
            kw["block_max_elements"] = int(_number(path, b["max_elements"], "max_elements", 1,
                                                   1 << 20, integer=True))
    if "exec" in top:
        e = _mapping(path, top["exec"], {"timeout_s"}, "exec")
        if "timeout_s" in e:
            kw["exec_timeout_s"] = _number(path, e["timeout_s"], "timeout_s", 0.1, 3600)
    if "rules" in top:
        rules = top["rules"]
        if not isinstance(rules, yaml.SequenceNode):
            raise fail_at(path, rules, "rules must be a list")
        if len(rules.value) > MAX_RULES:
            raise fail_at(path, rules, f"more than {MAX_RULES} rules")
        kw["rules"] = tuple(_rule(path, n, k) for k, n in enumerate(rules.value, 1))
    return Policy(**kw)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; ``SignatureError`` (a ConfigError) names file:line."""
    return parse_policy(str(path), read_rule_file(Path(path), MAX_FILE_BYTES))


def allow_networks(policy: Policy, extra: Sequence[Any]) -> tuple[Network, ...]:
    """The policy's allowlist plus ``Config.allowlist`` where the config has one: its entries'
    ``network`` (an entry limited to a port or a category still protects the whole address: a
    block takes every port) or plain CIDR strings."""
    nets = list(policy.allowlist)
    for entry in extra:
        net = getattr(entry, "network", entry)
        nets.append(net if not isinstance(net, str) else ipaddress.ip_network(net, strict=False))
    return tuple(nets)


from flowsense.sidecar.actions import Actions  # noqa: E402  (re-exported: the public API)

__all__ = ["Action", "Actions", "Limit", "Policy", "Rule", "load_policy", "parse_policy"]
