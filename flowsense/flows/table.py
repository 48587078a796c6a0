"""FlowTable: allocation, growth, eviction and export around the numba kernels.

The kernels never allocate; this wrapper owns every array, checks inputs, grows the table by
doubling (flow slots never move, the index is rebuilt), evicts the least recently seen flows in
bounded mode, and turns the kernels' event lists into FeatureFrames for a sink.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from flowsense.capture.reader import PacketBatch
from flowsense.config import FlowConfig
from flowsense.flows import kernels as K
from flowsense.flows import table_kernels as TK
from flowsense.flows.features import FeatureFrame, gather
from flowsense.flows.memory import zeros
from flowsense.schema import (
    END_ACTIVE,
    EV_PROMPT,
    FI_NFIELDS,
    FI_STATE,
    FI_WATCH,
    FS_LIVE,
    K_DONE,
    K_EVENTS,
    K_GROW,
    K_TIMEJUMP,
    P_ACTIVE_NS,
    P_CLOSE_NS,
    P_EST_IDLE_NS,
    P_IDLE_NS,
    P_MAX_FLOWS,
    P_NFIELDS,
    S_CLOCK,
    S_DEADLINE,
    S_EVICTED,
    S_NEV,
    S_NFIELDS,
    S_NFREE,
    S_NLIVE,
    S_NWATCH,
    S_RETRANS,
    S_REUSED,
    S_SEQ,
    S_WATCH_FULL,
)

log = logging.getLogger(__name__)

Sink = Callable[[FeatureFrame], None]
EVENT_CAPACITY = 65536
RECORD_SLICE = 8192  # flows a record frame holds at most, for a sink that writes and lets go

_PER_SLOT = {  # one value per slot: name -> dtype
    "lprev": np.int32, "lnext": np.int32, "aprev": np.int32, "anext": np.int32,
}


@dataclass(frozen=True)
class NameSuffixes:
    """DNS names, as the hashes of their wire forms (``signatures.suffix_hashes``): ``lengths``
    int64[k] ascending, ``hashes`` uint64[m] sorted, ``weights`` uint64[256]. A question ends
    in one of them when the hash of its last L bytes, for some L in ``lengths``, is listed
    (``kernels.dns_name_listed``; a superset test, exact checks follow in Python)."""

    lengths: np.ndarray
    hashes: np.ndarray
    weights: np.ndarray
    bits: np.ndarray = field(init=False, repr=False, compare=False)  # ``kernels.name_filter``

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", K.name_filter(self.hashes))


@dataclass(frozen=True)
class WatchRule:
    """Lease a watch when a direction's first payload starts with ``prefix`` (at most 8 bytes;
    a first payload shorter than the prefix matches when its bytes agree, so a sender cannot
    slip past by sending its first bytes one at a time) and, unless ``port`` is 0, either port
    equals ``port``. Detectors supply these as data."""

    prefix: bytes
    port: int = 0
    prompt: bool = False
    """No lease: the flow is shown to the detectors (``FlowTable.prompt_sink``, its heads) as
    soon as the server's first payload arrives. For request/response flows whose answer must be
    known before later flows are judged (a DNS answer before the connection it names)."""
    names: NameSuffixes | None = field(default=None, compare=False)
    """Only a DNS message whose first question ends in one of these names matches (the
    lookups a detector needs at once: tens of thousands of others then wait for their end).
    A table holds one set: every rule that has one gives the same."""


def _rule_arrays(watch_rules: Sequence[WatchRule]) -> dict[str, np.ndarray]:
    """The table's rule arrays (``table_kernels`` docstring) for ``watch_rules``."""
    rules = [r for r in watch_rules if 0 < len(r.prefix) <= 8 or r.port]
    sets = {id(r.names): r.names for r in rules if r.names is not None}
    if len(sets) > 1:
        raise ValueError("watch rules with different name sets in one table")
    names = next(iter(sets.values()), None)
    a = {
        "wr_prefix": np.zeros((len(rules), 8), dtype=np.uint8),
        "wr_len": np.zeros(len(rules), dtype=np.uint8),
        "wr_first": np.zeros(256, dtype=np.bool_),  # first bytes of the rules' prefixes
        "wr_port": np.zeros(len(rules), dtype=np.uint16),
        "wr_prompt": np.zeros(len(rules), dtype=np.uint8),
        "wr_names": np.zeros(len(rules), dtype=np.uint8),
        "pn_len": np.zeros(0, np.int64), "pn_hash": np.zeros(0, np.uint64),
        "pn_weights": np.zeros(0, np.uint64), "pn_bits": np.zeros(K.NAME_FILTER_WORDS, np.uint64),
    }
    for i, r in enumerate(rules):
        a["wr_prefix"][i, : len(r.prefix)] = np.frombuffer(r.prefix[:8], dtype=np.uint8)
        a["wr_len"][i] = len(r.prefix[:8])
        if r.prefix:
            a["wr_first"][r.prefix[0]] = True
        a["wr_port"][i] = r.port
        a["wr_prompt"][i] = r.prompt
        a["wr_names"][i] = r.names is not None
    if names is not None:
        lengths = np.ascontiguousarray(names.lengths, dtype=np.int64)
        weights = np.ascontiguousarray(names.weights, dtype=np.uint64)
        if len(lengths) and (lengths.max() > len(weights) or np.any(np.diff(lengths) <= 0)):
            raise ValueError("name lengths must ascend and fit the weights")
        a["pn_len"] = lengths
        a["pn_hash"] = np.ascontiguousarray(names.hashes, dtype=np.uint64)
        a["pn_weights"] = weights
        a["pn_bits"] = names.bits
    return a


def _null_sink(frame: FeatureFrame) -> None:
    pass


class FlowTable:
    def __init__(self, cfg: FlowConfig, watch_rules: Sequence[WatchRule] = (),
                 heads: bool = True, looked_at: bool = False,
                 hash_key: np.ndarray | None = None) -> None:
        """With ``heads`` False the records a sink gets carry no payload heads; unless
        detectors look at the table (``looked_at``: prompt records and snapshots carry
        theirs, or there are watch rules) it then keeps none either (the flows command
        writes no heads: placing a kilobyte a flow it never read cost a tenth of its time).
        ``hash_key`` (uint64[2]): the key of the flow hash, else drawn from
        ``cfg.hash_seed`` or at random; batches whose ``cols["hash"]`` holds each packet's
        hash under it (a parallel run's partitions: ``plan.table_key``) are not hashed again."""
        self.cfg = cfg
        keep = heads or looked_at or bool(watch_rules)
        self.head_bytes = cfg.head_bytes if keep else 0
        cap = max(16, cfg.initial_flows)
        if cfg.max_flows:
            cap = min(cap, cfg.max_flows)
        self.capacity = 1 << (cap - 1).bit_length()
        if hash_key is not None:
            hkey = np.array(hash_key, dtype=np.uint64)
        else:
            rng = np.random.default_rng(cfg.hash_seed or secrets.randbits(63))
            hkey = rng.integers(0, 2**63, size=2, dtype=np.int64).astype(np.uint64)
        prm = np.zeros(P_NFIELDS, dtype=np.int64)
        prm[P_IDLE_NS] = int(cfg.idle_timeout_s * 1e9)
        prm[P_EST_IDLE_NS] = int(cfg.established_idle_timeout_s * 1e9)
        prm[P_ACTIVE_NS] = int(cfg.active_timeout_s * 1e9)
        prm[P_CLOSE_NS] = int(cfg.close_delay_s * 1e9)
        prm[P_MAX_FLOWS] = cfg.max_flows
        w = max(1, cfg.watch_quota)
        self.T = self._allocate(self.capacity, None)
        self.T = self.T._replace(
            w_slot=np.full(w, -1, np.int32),
            wfree=np.arange(w, dtype=np.int32),
            w_fill=np.zeros((w, 2), np.int64),
            slab=zeros((w, 2, max(cfg.slab_bytes, cfg.head_bytes)), np.uint8),
            tr_len=zeros((w, cfg.trace_packets), np.int32),
            tr_flags=zeros((w, cfg.trace_packets), np.uint8),
            tr_ts=zeros((w, cfg.trace_packets), np.int64),
            tr_n=np.zeros(w, np.int64),
            **_rule_arrays(watch_rules), prm=prm, hkey=hkey,
        )
        self._dirty_out = np.empty(self.capacity, dtype=np.int64)
        self._releasing = np.zeros(self.capacity, dtype=bool)  # by slot: freed by this drain
        # a batch's own packets and the gaps between them (``kernels.own_packets``), by batch
        self._own = np.empty(0, dtype=np.int64)
        self._gap_hi = np.empty(1, dtype=np.int64)
        self._gap_lo = np.empty(1, dtype=np.int64)
        self._no_hashes = np.empty(0, dtype=np.uint64)
        self.export_heads = heads
        """Whether the records a sink gets carry payload heads."""
        self.prompt_sink: Sink | None = None
        """Where the records of prompt-ruled flows go when their reply arrives (else dropped)."""
        self.hold_prompts = False
        """Hold those records until ``release_prompts`` (the flow as it is then), or until the
        flow ends (as it ended), whichever comes first: then they are the same whenever the
        table drains (drains follow the event list's room and the table's growth, which differ
        between one table and a parallel run's partitions)."""
        self.end_ordered = False
        """Export records in the order detectors are shown them (``gather(end_ordered=True)``):
        where records are shown in steps, a step that drained once then needs no reordering
        copy in ``in_end_order``."""
        self.record_slice = 0
        """Flows a drain's record frame holds at most (0: all of them; ``_gather``)."""
        self._held = np.zeros(0, dtype=np.int64)  # slots whose prompt record is held

    def set_watch_rules(self, watch_rules: Sequence[WatchRule]) -> None:
        """Replace the rules (a reload of the detectors' data): flows already watched or marked
        keep their watch; first payloads from now on meet the new rules."""
        self.T = self.T._replace(**_rule_arrays(watch_rules))

    # --- allocation ---------------------------------------------------------------------------
    def _allocate(self, cap: int, old: TK.TableArrays | None) -> TK.TableArrays:
        cfg = self.cfg
        a: dict[str, np.ndarray] = {}
        for name, dt in _PER_SLOT.items():
            a[name] = zeros(cap, dt)
        a["key"] = zeros((cap, 5), np.uint64)
        a["fi"] = zeros((cap, FI_NFIELDS), np.int64)
        a["splt_ps"] = zeros((cap, cfg.splt_packets), np.int32)
        a["splt_t"] = zeros((cap, cfg.splt_packets), np.float32)
        a["head"] = zeros((cap, 2, self.head_bytes), np.uint8)
        a["dirty_list"] = zeros(cap, np.int32)
        a["free"] = zeros(cap, np.int32)
        a["ix"] = zeros(2 * cap, np.int64)
        if old is None:
            a["lprev"][:] = -1
            a["lnext"][:] = -1
            a["aprev"][:] = -1
            a["anext"][:] = -1
            a["free"][:] = np.arange(cap - 1, -1, -1, dtype=np.int32)
            st = np.zeros(S_NFIELDS, dtype=np.int64)
            st[S_NFREE] = cap
            return TK.TableArrays(
                **a, ff=a["fi"].view(np.float64), lhead=np.full(4, -1, np.int32),
                ltail=np.full(4, -1, np.int32),
                ev_slot=np.zeros(EVENT_CAPACITY, np.int32),
                ev_kind=np.zeros(EVENT_CAPACITY, np.uint8),
                w_slot=np.zeros(0, np.int32), wfree=np.zeros(0, np.int32),
                w_fill=np.zeros((0, 2), np.int64), slab=np.zeros((0, 2, 0), np.uint8),
                tr_len=np.zeros((0, 0), np.int32), tr_flags=np.zeros((0, 0), np.uint8),
                tr_ts=np.zeros((0, 0), np.int64), tr_n=np.zeros(0, np.int64),
                **_rule_arrays(()), st=st,
                prm=np.zeros(P_NFIELDS, np.int64),
                hkey=np.zeros(2, np.uint64), ahead=np.zeros(K.AHEAD_RING, np.uint64),
            )
        n_old = old.fi.shape[0]
        for name in (*_PER_SLOT, "key", "fi", "splt_ps", "splt_t", "head", "dirty_list"):
            a[name][:n_old] = getattr(old, name)
        for name in ("lprev", "lnext", "aprev", "anext"):
            a[name][n_old:] = -1
        nfree = int(old.st[S_NFREE])
        a["free"][:nfree] = old.free[:nfree]
        new_slots = np.arange(cap - 1, n_old - 1, -1, dtype=np.int32)
        a["free"][nfree:nfree + len(new_slots)] = new_slots
        old.st[S_NFREE] = nfree + len(new_slots)
        T = old._replace(**a, ff=a["fi"].view(np.float64))
        TK.reindex(T)
        return T

    def _grow(self) -> None:
        new_cap = self.capacity * 2
        if self.cfg.max_flows:
            new_cap = min(new_cap, 1 << (self.cfg.max_flows - 1).bit_length())
        if new_cap <= self.capacity:
            raise RuntimeError("flow table cannot grow past max_flows")
        log.debug("flow table grows to %d slots", new_cap)
        self.T = self._allocate(new_cap, self.T)
        self.capacity = new_cap
        self._dirty_out = np.empty(new_cap, dtype=np.int64)
        self._releasing = np.zeros(new_cap, dtype=bool)

    # --- feeding ------------------------------------------------------------------------------
    def feed(self, batch: PacketBatch, sink: Sink = _null_sink, drain: bool = True) -> None:
        """Aggregate one batch; ended flows and interim records go to ``sink`` as they occur
        (an interim record at once; ended flows, whose rows no longer change, at the latest
        when the batch is done, or with ``drain=False`` at the next ``drain``)."""
        c = batch.cols
        n = batch.n
        if len(self._own) < n:
            self._own = np.empty(n, dtype=np.int64)
            self._gap_hi = np.empty(n + 1, dtype=np.int64)
            self._gap_lo = np.empty(n + 1, dtype=np.int64)
        n_own = K.own_packets(c["status"], c["ts_ns"], n, self._own, self._gap_hi, self._gap_lo)
        hashes = c.get("hash", self._no_hashes)  # empty: the kernel hashes the packets
        i = 0
        while True:
            status, i = K.process(
                self.T, i, n, self._own, n_own, self._gap_hi, self._gap_lo, hashes,
                c["ts_ns"], c["status"], c["pflags"], c["fam"], c["proto"],
                c["src_hi"], c["src_lo"], c["dst_hi"], c["dst_lo"], c["sport"], c["dport"],
                c["tcp_flags"], c["ip_len"], c["payload_len"], c["pay_off"], c["pay_cap"],
                c["seq"], c["vlan"], c["tunnel"], batch.buf,
            )
            if status == K_DONE:
                break
            self.drain(sink)
            if status == K_GROW:
                self._make_room(sink)
            elif status == K_TIMEJUMP:
                log.info("time goes back by more than the idle timeout: flows restart")
                self.flush(sink)
            elif status != K_EVENTS:
                raise RuntimeError(f"flow kernel returned status {status}")
        if drain:
            self.drain(sink)

    def tick(self, now_ns: int, sink: Sink = _null_sink) -> None:
        """Expire by wall clock (the sidecar on a quiet link)."""
        while TK.expire_until(self.T, now_ns) != K_DONE:
            self.drain(sink)
        self.drain(sink)

    def _make_room(self, sink: Sink) -> None:
        st = self.T.st
        at_bound = self.cfg.max_flows and st[S_NLIVE] >= self.cfg.max_flows
        if st[S_NFREE] > 0 and not at_bound:
            return
        if self.cfg.max_flows and (at_bound or self.capacity >= self.cfg.max_flows):
            self._evict(max(1, self.cfg.max_flows // 64), sink)
        else:
            self._grow()

    def _evict(self, want: int, sink: Sink) -> None:
        """End the least recently seen flows: short-lived first, watched flows last."""
        done = 0
        while done < want:
            k = TK.evict(self.T, want - done)
            done += k
            self.drain(sink)
            if k == 0:
                break

    def drain(self, sink: Sink) -> None:
        """Export queued events: interim records and ended flows (whose slots are then freed)."""
        T = self.T
        n = int(T.st[S_NEV])
        if n == 0:
            return
        slots = T.ev_slot[:n].astype(np.int64)
        kinds = T.ev_kind[:n].copy()
        T.st[S_NEV] = 0
        prompt = kinds == EV_PROMPT
        if prompt.any():  # before the ends: a later flow may need what these replies said
            if self.prompt_sink is not None and self.hold_prompts:
                self._held = np.concatenate([self._held, slots[prompt]])
            elif self.prompt_sink is not None:
                self._show_prompts(slots[prompt])
            slots, kinds = slots[~prompt], kinds[~prompt]
        interim = kinds == END_ACTIVE
        if interim.any():
            self._gather(sink, slots[interim], kinds[interim], interim=True)
        ended = ~interim
        if ended.any():
            rel = slots[ended]
            if len(self._held):  # a held record goes before its slot is freed: as it ended
                # by a mask over the slots (``np.isin`` sorted both, a drain's worth each time)
                self._releasing[rel] = True
                gone = self._releasing[self._held]
                self._releasing[rel] = False
                if gone.any():
                    self._show_prompts(self._held[gone])
                    self._held = self._held[~gone]
            self._gather(sink, rel, kinds[ended], interim=False)
            TK.release_slots(T, rel, len(rel))

    def _gather(self, sink: Sink, slots: np.ndarray, reasons: np.ndarray, interim: bool) -> None:
        """The records of ``slots`` to ``sink``: in frames of ``record_slice`` flows when it is
        set (a sink that writes records and lets them go: a drain of every live flow, at the
        end of the input or when a capture resumes after a gap, made records, the writers'
        copies and text for tens of thousands of flows at once), else in one frame (a sink
        that keeps them would only join the frames again; the detectors' end order)."""
        step = self.record_slice if self.record_slice and not self.end_ordered else len(slots)
        for k in range(0, len(slots), step):
            sink(gather(self.T, slots[k:k + step], reasons[k:k + step], interim=interim,
                        heads=self.export_heads, end_ordered=self.end_ordered))

    def release_prompts(self) -> None:
        """The held prompt records (``hold_prompts``) of the flows still live, as they are now."""
        if len(self._held):
            held, self._held = self._held, np.zeros(0, dtype=np.int64)
            self._show_prompts(held)

    def _show_prompts(self, slots: np.ndarray) -> None:
        assert self.prompt_sink is not None
        # columns as read: a detector that learns from a few of these many lookups pays for
        # the columns it reads alone
        self.prompt_sink(gather(self.T, slots, np.zeros(len(slots), np.int64), interim=False,
                                lazy=True, end_ordered=self.end_ordered))

    def flush(self, sink: Sink) -> None:
        """End every live flow (end of input)."""
        T = self.T
        while TK.end_live(T) > 0:
            self.drain(sink)
        self.drain(sink)
        T.st[S_CLOCK] = 0
        T.st[S_DEADLINE] = 0

    # --- detectors' view ----------------------------------------------------------------------
    def snapshot(self, watched_only: bool = False) -> FeatureFrame:
        """Records of the live flows touched since the last snapshot (flows stay in the table);
        with ``watched_only``, just those a watch rule picked out for the detectors."""
        n = TK.take_dirty(self.T, self._dirty_out)
        slots = self._dirty_out[:n]
        slots = slots[(self.T.fi[slots, FI_STATE] & FS_LIVE) != 0]
        if watched_only:
            slots = slots[self.T.fi[slots, FI_WATCH] >= 0]
        return gather(self.T, slots, np.zeros(len(slots), np.int64), interim=False,
                      end_ordered=self.end_ordered)

    @property
    def clock_ns(self) -> int:
        """The latest packet time seen (0 before the first packet)."""
        return int(self.T.st[S_CLOCK])

    def stats(self) -> dict[str, int]:
        st = self.T.st
        return {
            "flows_live": int(st[S_NLIVE]),
            "flows_created": int(st[S_SEQ]),
            "flows_evicted": int(st[S_EVICTED]),
            "flows_reused_tuple": int(st[S_REUSED]),
            "tcp_retransmissions": int(st[S_RETRANS]),
            "watches_active": int(st[S_NWATCH]),
            "watches_refused": int(st[S_WATCH_FULL]),
            "table_capacity": self.capacity,
        }
