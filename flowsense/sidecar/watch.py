"""``flowsense watch``: live capture, streaming detection, alerts while the flow is still up.

One thread does the work: the source hands decoded batches to the pipeline (flow table and
detectors); between batches, and whenever the poll interval passes with nothing captured, the
idle hook runs the wall-clock duties: every ``tick_s`` the table's clock is advanced by the wall
time that went by without packets (a quiet link still expires flows) and the watched flows
touched since the last look are shown to the detectors, so an alert leaves within
``tick_s`` + the ring's block timeout of the packet that completed its evidence. Signals only
set flags the idle hook reads (as Suricata handles them): SIGTERM/SIGINT end the capture after
what is captured, flush every flow through the detectors and exit 0; SIGHUP reopens the output
files (logrotate); SIGUSR2 reloads signatures (and the policy) all at once, keeping the old set
if a file is bad. Metrics and ``/healthz`` are served from a side thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from flowsense.capture.reader import PacketBatch
from flowsense.config import Config
from flowsense.detect.base import Alert, Resources
from flowsense.detect.registry import DETECTORS
from flowsense.errors import ConfigError, FlowsenseError, SignatureError
from flowsense.flows.features import FeatureFrame
from flowsense.pipeline import Pipeline
from flowsense.report.alerts import AlertGate, eve_dict, iso_ts
from flowsense.sidecar.sources import LiveSource
from flowsense.signatures import load_pools

log = logging.getLogger(__name__)

PRESSURE_REPORT_S = 60.0


@dataclass
class WatchOptions:
    interfaces: list[str] = field(default_factory=list)
    read: str | None = None
    bpf: str | None = None
    backend: str = "auto"
    """``ring`` (AF_PACKET), ``scapy``, or ``auto`` (the ring where it exists)."""
    output: str | None = None
    signatures: list[str] | None = None
    max_flows: int = 0
    tick_s: float = 1.0
    buffer_bytes: int = 64 << 20
    promisc: bool = True
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"
    user: str | None = None
    enforce: bool = False
    policy: str | None = None
    log_path: str | None = None
    log_seed: str | None = None
    log_rotate_bytes: int = 0


class _Output:
    """EVE lines to stdout or to ``-o FILE`` (appended; reopened on SIGHUP for logrotate)."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path in (None, "-") else path
        self.f: TextIO = self._open()

    def _open(self) -> TextIO:
        if self.path is None:
            return sys.stdout
        try:
            return open(self.path, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write: {exc.strerror}") from None

    def write(self, line: str) -> None:
        self.f.write(line + "\n")

    def flush(self) -> None:
        self.f.flush()

    def reopen(self) -> None:
        """The new file first: if it cannot be opened, the old one stays in use."""
        if self.path is None:
            return
        new = self._open()
        self.f.close()
        self.f = new

    def close(self) -> None:
        self.f.flush()
        if self.f is not sys.stdout:
            self.f.close()


def open_source(opts: WatchOptions, config: Config) -> LiveSource:
    """The capture source the options name (opened now: before privileges are dropped)."""
    from flowsense.sidecar import sources

    if opts.read is not None:
        if opts.read != "-":
            raise ConfigError("watch --read takes '-' (a pcap stream on stdin); "
                              "use 'flowsense analyze' for files")
        if opts.interfaces:
            raise ConfigError("watch: --read - and --interface are exclusive")
        return sources.StreamSource(config.capture)
    if not opts.interfaces:
        raise ConfigError("watch needs --interface IFACE (repeatable) or --read -")
    backend = opts.backend
    if backend == "auto":
        backend = "ring" if sources.has_af_packet() else "scapy"
    if backend == "scapy":
        return sources.ScapySource(opts.interfaces, config.capture, opts.bpf)
    if not sources.has_af_packet():
        raise ConfigError("AF_PACKET capture needs Linux (use --backend scapy)")
    from flowsense.sidecar.ring import RingConfig

    ring_cfg = RingConfig(buffer_bytes=opts.buffer_bytes, promisc=opts.promisc)
    return sources.RingSource(opts.interfaces, ring_cfg, config.capture, opts.bpf)


class Watcher:
    def __init__(self, opts: WatchOptions, config: Config) -> None:
        if opts.max_flows:
            # the whole bound at once: untouched slots cost no memory, and the table never
            # grows, whose copy would briefly hold the old and the new arrays
            config = dataclasses.replace(config, flows=dataclasses.replace(
                config.flows, max_flows=opts.max_flows, initial_flows=opts.max_flows))
        self.opts = opts
        self.config = config
        self.resources = Resources(pools=load_pools(opts.signatures), config=config)
        self.detectors = [cls(self.resources) for cls in DETECTORS.values()]
        self.gate = AlertGate(config)
        self.policy: Any = None
        self.actions: Any = None
        self.sealed: Any = None
        self.metrics: Any = None
        self.source: LiveSource | None = None
        self.out: _Output | None = None
        self.alerts_out = 0
        self.reload_failures = 0
        self._stop = False
        self._hup = False
        self._usr2 = False
        self._last_tick = time.monotonic()
        self._packets_since_tick = 0
        self._pending = 0
        self._last_pressure = time.monotonic()
        self._evicted_reported = 0
        self._counted = (0, 0)
        rules = [r for d in self.detectors for r in d.watch_rules()]
        self.pipe = Pipeline(config, self._on_frame, rules, self._on_snapshot)

    # --- start-up -----------------------------------------------------------------------------
    def open(self) -> None:
        """Everything that needs root, in order: outputs, capture sockets, metrics port, the
        compiled kernels; then drop to --user."""
        from flowsense.sidecar import integration

        o = self.opts
        self.out = _Output(o.output)
        if o.log_path:
            self.sealed = integration.open_sealed_log(o.log_path, o.log_seed, o.log_rotate_bytes)
        if o.policy:
            self.policy = integration.load_policy(o.policy)
            self.actions = integration.make_actions(self.policy, o.enforce, self.sealed,
                                                    self.config)
        elif o.enforce:
            raise ConfigError("--enforce needs --policy FILE")
        self.source = open_source(o, self.config)
        if o.metrics_port is not None:
            from flowsense.sidecar.metrics import Metrics

            self.metrics = Metrics()
            self.metrics.serve(o.metrics_port, o.metrics_bind)
        from flowsense.sidecar.warm import warm

        warm(self.config)
        if o.user:
            from flowsense.sidecar.privileges import drop_to

            drop_to(o.user, keep_net_admin=o.enforce)
            log.info("running as %s%s", o.user, " with CAP_NET_ADMIN" if o.enforce else "")

    def install_signals(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self._stop = True

        def hup(signum: int, frame: Any) -> None:
            self._hup = True

        def usr2(signum: int, frame: Any) -> None:
            self._usr2 = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        signal.signal(signal.SIGUSR2, usr2)

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        assert self.source is not None
        print(f"flowsense: watching {self.source.name}", file=sys.stderr, flush=True)
        try:
            for batch in self.source.batches(self.pipe.decoder, self._idle):
                self._feed(batch)
        finally:
            self.pipe.finish()  # every live flow through the detectors: nothing lost
            self._flush()
            self._report_end()
            self.close()
        return 0

    def _feed(self, batch: PacketBatch) -> None:
        self.pipe.feed(batch)
        self._packets_since_tick += batch.n
        if self.metrics is not None and batch.n:
            self.metrics.lag.set(time.time() - int(batch.cols["ts_ns"][:batch.n].max()) / 1e9)
        if self._pending:
            self._flush()

    def _idle(self) -> bool:
        if self._hup:
            self._hup = False
            self._reopen()
        if self._usr2:
            self._usr2 = False
            self.reload()
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.heartbeat = now  # /healthz: the loop turns
        if now - self._last_tick >= self.opts.tick_s:
            self._tick(now)
        return not self._stop

    def _tick(self, now: float) -> None:
        clock = self.pipe.table.clock_ns
        if clock:
            if self._packets_since_tick == 0:  # a quiet link: wall time moves the clock on
                clock += int((now - self._last_tick) * 1e9)
            self.pipe.tick(clock)
        self._packets_since_tick = 0
        self._last_tick = now
        self._flush()
        if self.sealed is not None:
            self.sealed.tick()  # fsync and export the chain head on their cadence
        self._report_pressure(now)
        self._update_metrics()

    # --- alerts -------------------------------------------------------------------------------
    def _on_frame(self, frame: FeatureFrame) -> None:
        for d in self.detectors:
            self._emit(d.on_frame(frame))

    def _on_snapshot(self, frame: FeatureFrame) -> None:
        for d in self.detectors:
            self._emit(d.on_snapshot(frame))

    def _emit(self, found: list[Alert]) -> None:
        for alert in found:
            if not self.gate.admit(alert):
                continue
            key = "pcap" if self.opts.read is not None else "interface"
            assert self.source is not None
            alert.flow["source"] = {key: self.source.name}
            rec = eve_dict(alert, self.config, ",".join(self.resources.pools.versions))
            now_ns = time.time_ns()
            rec["flowsense"]["emitted"] = iso_ts(now_ns)
            assert self.out is not None
            self.out.write(json.dumps(rec, ensure_ascii=False))
            if self.sealed is not None:
                rec = self.sealed.append(rec)  # with its seal: the actions cite its seq
            if self.actions is not None:
                try:
                    self.actions.handle(alert, rec)
                except (FlowsenseError, OSError) as exc:
                    log.error("action failed: %s", exc)
            self.alerts_out += 1
            self._pending += 1
            if self.metrics is not None:
                self.metrics.alerts.labels(alert.category).inc()
                self.metrics.alert_latency.set((now_ns - alert.timestamp_ns) / 1e9)

    def _flush(self) -> None:
        if self.out is not None:
            self.out.flush()
        self._pending = 0

    # --- signals' work ------------------------------------------------------------------------
    def _reopen(self) -> None:
        log.warning("SIGHUP: reopening outputs")
        try:
            if self.out is not None:
                self.out.reopen()
            if self.sealed is not None:
                self.sealed.reopen()
        except (OSError, FlowsenseError) as exc:  # e.g. a directory the --user cannot write
            log.error("SIGHUP: cannot reopen: %s", exc)

    def reload(self) -> bool:
        """Signatures and policy, all or nothing: on any error the running set stays."""
        from flowsense.sidecar import integration

        try:
            pools = load_pools(self.opts.signatures)
            policy = integration.load_policy(self.opts.policy) if self.opts.policy else None
        except (SignatureError, ConfigError) as exc:
            self.reload_failures += 1
            log.error("SIGUSR2: reload failed, keeping the previous signatures and policy: %s",
                      exc)
            if self.metrics is not None:
                self.metrics.reloads.labels("failed").inc()
            return False
        self.resources.pools = pools
        # the detectors' rules are data made of the signatures (the DNS names a prompt needs)
        self.pipe.table.set_watch_rules([r for d in self.detectors for r in d.watch_rules()])
        if policy is not None:
            self.policy = policy
            self.actions = integration.make_actions(policy, self.opts.enforce, self.sealed,
                                                    self.config, previous=self.actions)
        log.warning("SIGUSR2: reloaded %d signature entries%s", len(pools.entries),
                    " and the policy" if policy is not None else "")
        if self.metrics is not None:
            self.metrics.reloads.labels("ok").inc()
        return True

    # --- reporting ----------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        d = self.pipe.counters_dict()
        d["kernel_drops"] = self.source.kernel_drops() if self.source is not None else 0
        d["alerts"] = self.alerts_out
        return d

    def _report_pressure(self, now: float) -> None:
        if now - self._last_pressure < PRESSURE_REPORT_S:
            return
        self._last_pressure = now
        st = self.pipe.table.stats()
        new = st["flows_evicted"] - self._evicted_reported
        if new:
            self._evicted_reported = st["flows_evicted"]
            log.warning("flow table at its bound (%d flows): %d evicted in the last %.0f s",
                        self.config.flows.max_flows, new, PRESSURE_REPORT_S)

    def _update_metrics(self) -> None:
        m = self.metrics
        if m is None:
            return
        d = self.stats()
        m.packets.inc(d["packets"] - self._counted[0])
        m.bytes.inc(d["bytes"] - self._counted[1])
        self._counted = (d["packets"], d["bytes"])
        m.kernel_drops.set(d["kernel_drops"])
        m.flows_active.set(d["flows_live"])
        bound = self.config.flows.max_flows
        m.table_pressure.set(d["flows_live"] / bound if bound else 0.0)
        m.evictions.set(d["flows_evicted"])
        m.watches.set(d["watches_active"])
        m.watches_refused.set(d["watches_refused"])
        if self.sealed is not None:
            head = self.sealed.head()
            m.chain.info({k: str(v) for k, v in head.items()})
            m.chain_seq.set(head["seq"])

    def _report_end(self) -> None:
        d = self.stats()
        print(
            f"flowsense: watch ended: {d['packets']} packets, {d['kernel_drops']} dropped by the "
            f"kernel, {d['flows_created']} flows ({d['flows_evicted']} evicted), "
            f"{self.alerts_out} alerts", file=sys.stderr, flush=True,
        )

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        if self.out is not None:
            self.out.close()
        if self.actions is not None:
            self.actions.close()  # running execs write their outcome records first
        if self.sealed is not None:
            self.sealed.close()
        if self.metrics is not None:
            self.metrics.close()


def watch(opts: WatchOptions, config: Config) -> int:
    w = Watcher(opts, config)
    w.install_signals()
    try:
        w.open()
    except BaseException:
        w.close()
        raise
    return w.run()
