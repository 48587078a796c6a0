"""Signature files: mining-pool indicators as data, validated at load.

Two forms are read:

* YAML (``*.yaml``, ``*.yml``): a mapping with ``version`` and ``pools``, a list of entries, each
  exactly one of ``domain`` (matched as a suffix on label boundaries) or ``cidr`` (an address or
  network), plus ``source`` and ``date`` (where the indicator came from, and when) and optionally
  ``ports``, ``coins`` and ``note``. Parsed with PyYAML's safe loader (composed, so every error
  names its file and line); unknown keys are errors.
* Plain lists (``*.txt``, ``*.list``): one domain or address a line, ``#`` comments, so users can
  drop in the lists they already keep.

Files are capped in size and entries; nothing in them is ever executed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from flowsense.errors import SignatureError

MAX_FILE_BYTES = 8 << 20
MAX_ENTRIES = 200_000
ENTRY_KEYS = {"domain", "cidr", "ports", "coins", "source", "date", "note"}
TOP_KEYS = {"version", "pools"}
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
def _bundled() -> Path:
    """The shipped ``signatures/``: beside the package in a checkout (or editable install),
    under ``<prefix>/share/flowsense`` in a regular one (pyproject's data-files)."""
    here = Path(__file__).resolve().parent.parent / "signatures"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "flowsense" / "signatures"


BUNDLED = _bundled()


@dataclass(frozen=True)
class PoolEntry:
    domain: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    ports: tuple[int, ...]
    coins: tuple[str, ...]
    source: str
    date: str
    origin: str  # file:line


HASH_WEIGHTS = np.random.default_rng(20261126).integers(
    1, 2**63, size=256, dtype=np.int64).astype(np.uint64) | np.uint64(1)
MEMO_NAMES = 65536


def suffix_hashes(rev: np.ndarray) -> np.ndarray:
    """For a uint8[n, m] array of byte strings given last byte first (m <= 256): uint64[n, m]
    whose column k is a 64-bit hash of each string's last k + 1 bytes, ASCII letters folded to
    lower case (DNS names compare without case; resolvers randomise it). One cumulative sum
    gives every suffix length at once."""
    upper = (rev >= 65) & (rev <= 90)
    folded = np.where(upper, rev | np.uint8(32), rev).astype(np.uint64)
    with np.errstate(over="ignore"):
        return np.cumsum(folded * HASH_WEIGHTS[: rev.shape[1]], axis=1, dtype=np.uint64)


def sorted_members(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``values`` (any shape) found in the sorted ``table`` (repeats do no harm): a binary
    search each, no sort of the values (``np.isin`` sorts both)."""
    if not len(table):
        return np.zeros(np.shape(values), dtype=bool)
    at = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return table[at] == values


@dataclass
class PoolSet:
    """Indicators from every loaded file, with fast lookups."""

    entries: list[PoolEntry] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    _domains: dict[str, PoolEntry] = field(default_factory=dict)
    _nets: dict[int, dict[int, dict[int, PoolEntry]]] = field(default_factory=dict)
    # the IPv4 networks for ``detect.kernels.v4_listed``: for each prefix length, the bits to
    # clear and the sorted network addresses keys[at[p]:at[p + 1]]
    _v4_shift: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _v4_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    _v4_at: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    _memo: dict[str, PoolEntry | None] = field(default_factory=dict)  # names seen lately

    def add(self, e: PoolEntry) -> None:
        self.entries.append(e)
        self._memo.clear()
        if e.domain is not None:
            self._domains.setdefault(e.domain, e)

    def freeze(self) -> PoolSet:
        for e in self.entries:
            if e.network is not None:
                net = e.network
                table = self._nets.setdefault(net.version, {}).setdefault(net.prefixlen, {})
                table.setdefault(int(net.network_address), e)
        v4 = sorted(self._nets.get(4, {}).items())
        keys = [np.sort(np.fromiter(table, dtype=np.uint64, count=len(table))) for _, table in v4]
        self._v4_shift = np.array([32 - plen for plen, _ in v4], dtype=np.int64)
        self._v4_keys = np.concatenate([np.zeros(0, np.uint64), *keys])
        self._v4_at = np.cumsum([0, *(len(k) for k in keys)], dtype=np.int64)
        return self

    @property
    def v4_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shifts, keys, at) of the listed IPv4 networks (``detect.kernels.v4_listed``)."""
        return self._v4_shift, self._v4_keys, self._v4_at

    @property
    def has_v6(self) -> bool:
        return bool(self._nets.get(6))

    def match_name(self, name: str) -> PoolEntry | None:
        """The entry whose domain is ``name`` or a parent of it (on label boundaries)."""
        if name in self._memo:  # the same hosts come back again and again
            return self._memo[name]
        labels = name.lower().rstrip(".").split(".")
        found = None
        for k in range(len(labels) - 1):
            found = self._domains.get(".".join(labels[k:]))
            if found is not None:
                break
        if len(self._memo) >= MEMO_NAMES:
            self._memo.clear()
        self._memo[name] = found
        return found

    def wire_suffixes(self) -> dict[int, np.ndarray]:
        """The listed domains in DNS wire form (length-prefixed labels and the final zero),
        hashed with ``suffix_hashes`` and grouped by length: a vectorised first test of which
        DNS questions can name a listed pool (a hit is then checked exactly)."""
        by_len: dict[int, list[int]] = {}
        for domain in self._domains:
            wire = b"".join(bytes([len(lb)]) + lb.encode() for lb in domain.split(".")) + b"\0"
            rev = np.frombuffer(wire[::-1], dtype=np.uint8)[None, :]
            by_len.setdefault(len(wire), []).append(int(suffix_hashes(rev)[0, -1]))
        return {n: np.unique(np.array(h, dtype=np.uint64)) for n, h in by_len.items()}

    def listed_v6(self, fam: np.ndarray, hi: np.ndarray, lo: np.ndarray,
                  hit: np.ndarray) -> None:
        """Set ``hit`` where an IPv6 address (family, high and low 64 bits) is in a listed
        network (few lists have any: a plain lookup each; IPv4 is ``v4_tables``' kernel)."""
        if not self.has_v6:
            return
        for k in np.flatnonzero(fam == 6).tolist():
            hit[k] = self.match_ip(str(ipaddress.IPv6Address(
                (int(hi[k]) << 64) | int(lo[k])))) is not None

    def match_ip(self, addr: str) -> PoolEntry | None:
        """The most specific network holding ``addr``."""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return None
        bits = ip.max_prefixlen
        value = int(ip)
        by_len = self._nets.get(ip.version, {})
        for plen in sorted(by_len, reverse=True):
            shift = bits - plen
            hit = by_len[plen].get((value >> shift) << shift)
            if hit is not None:
                return hit
        return None


def _fail(path: str, node: yaml.Node | None, message: str) -> SignatureError:
    line = node.start_mark.line + 1 if node is not None else 0
    return SignatureError(path, line, message)


def _scalar(path: str, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise _fail(path, node, f"{what} must be a scalar")
    return str(node.value)


def _domain(path: str, node: yaml.Node, text: str) -> str:
    name = text.strip().lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(lb) for lb in labels):
        raise _fail(path, node, f"not a domain name: {text!r}")
    return name


def _network(
    path: str, node: yaml.Node, text: str
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _fail(path, node, f"not an address or network: {text!r}") from None


def _entry(path: str, node: yaml.Node) -> PoolEntry:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, "a pool entry must be a mapping")
    seen: dict[str, yaml.Node] = {}
    for k, v in node.value:
        key = _scalar(path, k, "a key")
        if key not in ENTRY_KEYS:
            raise _fail(path, k, f"unknown key {key!r} (known: {', '.join(sorted(ENTRY_KEYS))})")
        if key in seen:
            raise _fail(path, k, f"duplicate key {key!r}")
        seen[key] = v
    if ("domain" in seen) == ("cidr" in seen):
        raise _fail(path, node, "an entry needs exactly one of domain or cidr")
    for req in ("source", "date"):
        if req not in seen:
            raise _fail(path, node, f"an entry needs {req}: where and when it was learnt")
    date = _scalar(path, seen["date"], "date")
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise _fail(path, seen["date"], f"date must be YYYY-MM-DD, got {date!r}") from None
    ports: tuple[int, ...] = ()
    if "ports" in seen:
        pn = seen["ports"]
        if not isinstance(pn, yaml.SequenceNode):
            raise _fail(path, pn, "ports must be a list")
        vals = []
        for p in pn.value:
            s = _scalar(path, p, "a port")
            if not s.isdigit() or not 0 < int(s) < 65536:
                raise _fail(path, p, f"not a port: {s!r}")
            vals.append(int(s))
        ports = tuple(vals)
    coins: tuple[str, ...] = ()
    if "coins" in seen:
        cn = seen["coins"]
        if not isinstance(cn, yaml.SequenceNode):
            raise _fail(path, cn, "coins must be a list")
        coins = tuple(_scalar(path, c, "a coin") for c in cn.value)
    origin = f"{path}:{node.start_mark.line + 1}"
    source = _scalar(path, seen["source"], "source")
    if "domain" in seen:
        d = _domain(path, seen["domain"], _scalar(path, seen["domain"], "domain"))
        return PoolEntry(d, None, ports, coins, source, date, origin)
    net = _network(path, seen["cidr"], _scalar(path, seen["cidr"], "cidr"))
    return PoolEntry(None, net, ports, coins, source, date, origin)


def compose(path: str, text: str) -> yaml.Node | None:
    """The YAML node tree (safe loader; nodes keep their lines), or SignatureError(path:line)."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SignatureError(path, mark.line + 1 if mark else 0, "invalid YAML") from None


def load_yaml(path: str, text: str, into: PoolSet) -> None:
    root = compose(path, text)
    if root is None:
        return
    if not isinstance(root, yaml.MappingNode):
        raise _fail(path, root, "a signature file is a mapping with version and pools")
    pools = None
    for k, v in root.value:
        key = _scalar(path, k, "a key")
        if key not in TOP_KEYS:
            raise _fail(path, k, f"unknown key {key!r} (known: version, pools)")
        if key == "version":
            into.versions.append(_scalar(path, v, "version"))
        else:
            pools = v
    if pools is None:
        return
    if not isinstance(pools, yaml.SequenceNode):
        raise _fail(path, pools, "pools must be a list")
    if len(into.entries) + len(pools.value) > MAX_ENTRIES:
        raise _fail(path, pools, f"more than {MAX_ENTRIES} entries")
    for node in pools.value:
        into.add(_entry(path, node))


def load_list(path: str, text: str, into: PoolSet) -> None:
    """One domain or address a line; the file itself is the source, today the date."""
    today = dt.date.today().isoformat()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(into.entries) >= MAX_ENTRIES:
            raise SignatureError(path, n, f"more than {MAX_ENTRIES} entries")
        origin = f"{path}:{n}"
        try:
            net = ipaddress.ip_network(line, strict=False)
        except ValueError:
            net = None
        if net is not None:
            into.add(PoolEntry(None, net, (), (), path, today, origin))
            continue
        name = line.lower().rstrip(".")
        labels = name.split(".")
        if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(lb) for lb in labels):
            raise SignatureError(path, n, f"not a domain or address: {line[:80]!r}")
        into.add(PoolEntry(name, None, (), (), path, today, origin))


def signature_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*")
                          if q.suffix in (".yaml", ".yml", ".txt", ".list") and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise SignatureError(str(p), 0, "no such file or directory")
    return out


def read_rule_file(f: Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A signature or policy file's text: UTF-8, at most ``max_bytes`` (SignatureError)."""
    name = str(f)
    try:
        if f.stat().st_size > max_bytes:
            raise SignatureError(name, 0, f"larger than {max_bytes} bytes")
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SignatureError(name, 0, "not UTF-8 text") from None
    except OSError as exc:
        raise SignatureError(name, 0, f"cannot read: {exc.strerror}") from None


def load_pools(paths: Iterable[str | Path] | None = None) -> PoolSet:
    """Every signature file under ``paths`` (default: the bundled ``signatures/``)."""
    pools = PoolSet()
    for f in signature_files([BUNDLED] if paths is None else paths):
        name = str(f)
        text = read_rule_file(f)
        if f.suffix in (".yaml", ".yml"):
            load_yaml(name, text, pools)
        else:
            load_list(name, text, pools)
    return pools.freeze()
