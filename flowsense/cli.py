"""Thin subcommands over the library; each returns an exit code (ALERTS.md)."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TextIO

import numpy as np

from flowsense import __version__
from flowsense.config import Config, load_config, parse_home_net
from flowsense.errors import ConfigError, FlowsenseError
from flowsense.flows.features import FeatureFrame, concat
from flowsense.flows.table import WatchRule
from flowsense.parallel.engine import ENGINES, ParallelPipeline, can_split, default_jobs
from flowsense.parallel.partition import Output
from flowsense.pipeline import FrameSink, Pipeline, expand_inputs, order_by_time
from flowsense.report import flows as flows_out
from flowsense.report.progress import progress_bar
from flowsense.report.summary import write_summary
from flowsense.schema import FLOW_COLUMNS

log = logging.getLogger("flowsense")


class _Parser(argparse.ArgumentParser):
    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> None:  # one line, exit 2
        raise ConfigError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write the main output here")
    p.add_argument("--home-net", metavar="CIDR,...", help="networks inside the perimeter")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="idle timeout (both kinds)")
    p.add_argument("--active-timeout", type=float, metavar="S", help="interim record period")
    p.add_argument("--config", metavar="FILE",
                   help="YAML config file (its commands section sets any of these flags)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0)
    g = p.add_argument_group("scale-out (README: Many captures, many cores)")
    g.add_argument("--jobs", type=_jobs, metavar="N",
                   help="partitions in parallel (default: the machine's cores; inputs smaller "
                        "than one chunk run on one core)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: worker threads on this machine; dask: Dask distributed")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler (tcp://host:8786); default: a local cluster on loopback")
    g.add_argument("--independent", action="store_true",
                   help="each file on its own (fresh flows and detector state), not one stream")


def _jobs(text: str) -> int:
    """``--jobs`` (flag or config file): a whole number, at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flowsense", description="Flow analyzer for reverse SSH tunnels and mining.")
    p.add_argument("--version", action="version", version=f"flowsense {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("analyze", help="read, aggregate, detect")
    a.add_argument("paths", nargs="+", metavar="PATH")
    a.add_argument("--format", choices=("summary", "eve"), default="summary")
    a.add_argument("--signatures", action="append", metavar="PATH",
                   help="signature files or folders (default: the bundled signatures/)")
    a.add_argument("--report", metavar="FILE", help="also write a self-contained HTML report")
    _common(a)
    f = sub.add_parser("flows", help="flow records")
    f.add_argument("paths", nargs="+", metavar="PATH")
    f.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    f.add_argument("--splt", action="store_true", help="add the first packets (splt_*) to jsonl")
    _common(f)
    w = sub.add_parser("watch", help="live capture: the egress sidecar (EVE alerts)")
    w.add_argument("-i", "--interface", action="append", default=[], metavar="IFACE",
                   help="capture here (repeatable)")
    w.add_argument("--read", metavar="-", help="a pcap stream on stdin instead (tcpdump -U -w -)")
    w.add_argument("--bpf", metavar="FILTER", help="capture filter (compiled by tcpdump)")
    w.add_argument("--backend", choices=("auto", "ring", "scapy"), default="auto",
                   help="AF_PACKET ring (Linux) or scapy (portable, slow)")
    w.add_argument("--buffer-mib", type=int, default=64, metavar="MIB",
                   help="capture ring per interface (default 64)")
    w.add_argument("--no-promisc", action="store_true", help="leave promiscuous mode off")
    w.add_argument("--max-flows", type=int, default=0, metavar="N",
                   help="bound the flow table (evicting the least recently seen)")
    w.add_argument("--tick", type=float, default=1.0, metavar="S",
                   help="wall-clock cadence of snapshots and expiry (default 1 s)")
    w.add_argument("--signatures", action="append", metavar="PATH",
                   help="signature files or folders (default: the bundled signatures/)")
    w.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics")
    w.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDR")
    w.add_argument("--user", metavar="USER", help="drop to this user once the capture is open")
    w.add_argument("--policy", metavar="FILE", help="YAML policy: actions for alerts")
    w.add_argument("--enforce", action="store_true", help="carry out blocking actions")
    w.add_argument("--log", metavar="FILE", help="tamper-evident alert log")
    w.add_argument("--log-seed", metavar="FILE", help="the sealed log's key seed")
    w.add_argument("--log-rotate-bytes", type=int, default=0, metavar="N")
    _common(w)
    sg = sub.add_parser("signatures", help="check or list signature files")
    sg.add_argument("action", choices=("validate", "list"))
    sg.add_argument("paths", nargs="*", metavar="PATH", help="default: the bundled signatures/")
    po = sub.add_parser("policy", help="check response policy files")
    po.add_argument("action", choices=("validate",))
    po.add_argument("paths", nargs="+", metavar="FILE")
    vl = sub.add_parser("verify-log", help="check a sealed alert log (exit 1: tampered)")
    vl.add_argument("paths", nargs="+", metavar="FILE", help="the log and its rotated files")
    vl.add_argument("--seed", required=True, metavar="FILE", help="the seal seed")
    vl.add_argument("--head", metavar="SEQ:HASH", help="a chain head exported earlier: a log "
                    "that ends before it was cut")
    vl.add_argument("--partial", action="store_true",
                    help="older files were pruned: the chain may start after record 0")
    p.commands = {"analyze": a, "flows": f}  # the commands a config file can set flags of
    return p


def parse_args(parser: _Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags, with the config file's ``commands`` section as their defaults (a flag given on
    the command line wins): parsed once to find the command and the file, then again."""
    args = parser.parse_args(argv)
    sub = parser.commands.get(args.command)
    if sub is None or not args.config:
        return args
    flags = {name: list(p._actions) for name, p in parser.commands.items()}
    cfg = load_config(args.config, flags)
    given = cfg.commands.get(args.command, {})
    appended = {a.dest for a in sub._actions if isinstance(a, argparse._AppendAction)}
    sub.set_defaults(**{k: v for k, v in given.items() if k not in appended})
    args = parser.parse_args(argv)
    for k in appended & given.keys():
        if getattr(args, k) is None:  # argparse would append to a list default
            setattr(args, k, list(given[k]))
    args.loaded_config = cfg
    return args


def _config(args: argparse.Namespace) -> Config:
    cfg = getattr(args, "loaded_config", None) or load_config(args.config)
    cfg = cfg.with_timeouts(args.idle_timeout, args.active_timeout)
    if args.home_net:
        cfg = dataclasses.replace(cfg, home_net=parse_home_net(args.home_net))
    return cfg


def _open_out(path: str | None) -> TextIO:
    if path is None or path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None


def _drive(pipe: Pipeline | ParallelPipeline, paths: list[str], quiet: bool) -> None:
    """Run one stream to its end, with the progress bar (a parallel run moves it once a piece
    its first partition has aggregated; a Dask run at the end)."""
    with progress_bar(paths, quiet) as hook:
        pipe.progress = hook
        pipe.run(paths)


AnyPipeline = Pipeline | ParallelPipeline


def _groups(args: argparse.Namespace, cfg: Config) -> list[list[str]]:
    """The streams to run: all inputs as one (in time order), or each file on its own. With
    ``--engine dask`` and no scheduler, several streams share one local cluster (starting one
    takes seconds): ``args.scheduler`` becomes its client (closed by ``_close_dask``)."""
    paths = order_by_time(expand_inputs(args.paths), cfg)
    groups = [[p] for p in paths] if args.independent else [paths]
    if args.engine == "dask" and not args.scheduler and len(groups) > 1:
        from distributed import Client

        from flowsense.parallel.dask_engine import local_cluster

        cluster = local_cluster(args.jobs or default_jobs())
        args.scheduler = Client(cluster)
        args.dask_cluster = cluster
    return groups


def _close_dask(args: argparse.Namespace) -> None:
    cluster = getattr(args, "dask_cluster", None)
    if cluster is not None:
        args.scheduler.close()
        cluster.close()


def _pipeline(args: argparse.Namespace, cfg: Config, paths: list[str], sink: FrameSink | None,
              rules: list[WatchRule] = (), snapshot: FrameSink | None = None,
              output: Output | None = None,
              text_sink: object = None) -> tuple[AnyPipeline, bool]:
    """A parallel pipeline when asked for (or by default, when the inputs are worth it and can
    be split), else one table; the flag says which."""
    jobs = args.jobs  # at least 1 (_jobs)
    if jobs is None:
        jobs = default_jobs()
        small = sum(os.path.getsize(p) for p in paths if p != "-" and os.path.isfile(p))
        if small <= cfg.capture.chunk_bytes:
            jobs = 1
    parallel = (jobs > 1 or args.engine == "dask") and can_split(paths)
    if parallel:
        return ParallelPipeline(cfg, sink, rules, snapshot, jobs=jobs, engine=args.engine,
                                scheduler=args.scheduler, output=output,
                                text_sink=text_sink), True  # type: ignore[arg-type]
    if args.engine == "dask" or (args.jobs or 1) > 1:
        log.info("stdin and pipes cannot be split: one process reads them")
    output = output or Output()  # records with heads, in whole drains
    return Pipeline(cfg, sink or (lambda frame: None), rules, snapshot, heads=output.heads,
                    record_slice=output.record_slice), False


def _report_errors(pipes: list[AnyPipeline]) -> int:
    errors = [err for pipe in pipes for err in pipe.errors]
    for err in errors:
        print(f"flowsense: {err}", file=sys.stderr)
    return 1 if errors else 0


def _write_bytes(out: TextIO, data: bytes | np.ndarray) -> None:
    if hasattr(out, "buffer"):
        out.flush()
        out.buffer.write(data)
    else:
        out.write(bytes(data).decode("utf-8"))


def cmd_flows(args: argparse.Namespace) -> int:
    cfg = _config(args)
    groups = _groups(args, cfg)
    pipes: list[AnyPipeline] = []
    if args.format == "parquet":
        if not args.output or args.output == "-":
            raise ConfigError("--format parquet needs -o FILE")
        frames: list[FeatureFrame] = []
        try:
            for paths in groups:
                pipe, _ = _pipeline(args, cfg, paths, frames.append,
                                    output=Output("frames", heads=False))
                _drive(pipe, paths, args.quiet)
                pipes.append(pipe)
        finally:
            _close_dask(args)
        flows_out.write_parquet(concat(frames), args.output)
        return _report_errors(pipes)
    out = _open_out(args.output)
    first = [True]

    def sink(frame: FeatureFrame) -> None:
        if args.format == "csv":
            flows_out.write_csv(frame, out, header=first[0])
            first[0] = False
        else:
            flows_out.write_jsonl(frame, out, splt=args.splt)

    def text(data: bytes) -> None:
        if first[0] and args.format == "csv":
            _empty_csv(out)
        first[0] = False
        _write_bytes(out, data)

    try:
        output = Output("csv" if args.format == "csv" else "jsonl", splt=args.splt, heads=False)
        for paths in groups:
            pipe, _ = _pipeline(args, cfg, paths, sink, output=output, text_sink=text)
            _drive(pipe, paths, args.quiet)
            pipes.append(pipe)
        if args.format == "csv" and first[0]:
            _empty_csv(out)
    finally:
        _close_dask(args)
        if out is not sys.stdout:
            out.close()
    return _report_errors(pipes)


def _empty_csv(out: TextIO) -> None:
    """The header alone (what a CSV of no flows holds, and what parallel text follows)."""
    empty = {k: np.empty(0, dtype=object) for k in FLOW_COLUMNS}
    flows_out.write_csv(FeatureFrame(cols=empty), out)



def cmd_analyze(args: argparse.Namespace) -> int:
    from flowsense.detect.base import Alert, Resources
    from flowsense.detect.registry import DETECTORS
    from flowsense.report.alerts import AlertGate, eve_record
    from flowsense.report.html import ReportBuilder
    from flowsense.signatures import load_pools

    cfg = _config(args)
    groups = _groups(args, cfg)
    resources = Resources(pools=load_pools(args.signatures), config=cfg)
    sig_version = ",".join(resources.pools.versions)
    if args.report == "-":
        raise ConfigError("--report needs a file name")
    report_out = _open_out(args.report) if args.report else None
    report = ReportBuilder() if report_out else None
    out = _open_out(args.output)
    alerts: list[Alert] = []
    n_flows = [0]
    pipes: list[AnyPipeline] = []

    def run(paths: list[str]) -> None:
        """One stream: its own detectors (their state), alert gate and flow table(s)."""
        detectors = [cls(resources) for cls in DETECTORS.values()]
        rules = [r for d in detectors for r in d.watch_rules()]
        gate = AlertGate(cfg)  # the allowlist, and one alert a flow and signature

        def emit(found: list[Alert]) -> None:
            for alert in found:
                if not gate.admit(alert):
                    continue
                # the input holding the flow's last packet (ms in the record: its last ns within)
                end_ms = alert.flow["eve_flow"]["end_ms"]
                last_ns = pipe.clock_ns if end_ms is None else (end_ms + 1) * 10**6 - 1
                alert.flow["source"] = {"pcap": pipe.source_of(last_ns)}
                alerts.append(alert)
                if report:
                    report.note(alert)
                if args.format == "eve":
                    out.write(eve_record(alert, cfg, sig_version) + "\n")

        def sink(frame: FeatureFrame) -> None:
            n_flows[0] += frame.n
            for d in detectors:
                emit(d.on_frame(frame))
            if report:
                report.observe(frame, ended=True)

        def snapshot(frame: FeatureFrame) -> None:
            for d in detectors:
                emit(d.on_snapshot(frame))
            if report:
                report.observe(frame, ended=False)

        pipe, _ = _pipeline(args, cfg, paths, sink, rules, snapshot)
        _drive(pipe, paths, args.quiet)
        pipes.append(pipe)

    try:
        for paths in groups:
            run(paths)
        rc = _report_errors(pipes)
        counters: dict[str, int] = {}
        for pipe in pipes:
            for k, v in pipe.counters_dict().items():
                counters[k] = counters.get(k, 0) + v
        inputs = [p for g in groups for p in g]
        errors = [e for pipe in pipes for e in pipe.errors]
        if args.format == "summary":
            write_summary(out, inputs, counters, n_flows[0], alerts, errors, cfg.home_net)
        if report and report_out:
            report_out.write(report.render(inputs, counters, n_flows[0], alerts, errors,
                                           cfg.home_net))
    finally:
        _close_dask(args)
        for f in (out, report_out):
            if f is not None and f is not sys.stdout:
                f.close()
    return rc


def _validate(paths: Sequence[object], count: Callable[[object], int], what: str) -> int:
    """Load each file; print ``ok`` with ``count`` of it, or its file:line finding (exit 1)."""
    from flowsense.errors import SignatureError

    findings = 0
    for path in paths:
        try:
            n = count(path)
        except SignatureError as exc:
            print(f"{exc}")
            findings += 1
            continue
        print(f"{path}: ok, {n} {what}")
    return 1 if findings else 0


def cmd_signatures(args: argparse.Namespace) -> int:
    """``validate``: every file loads (exit 1 on a finding, named file:line); ``list``: entries."""
    from flowsense.signatures import BUNDLED, load_pools, signature_files

    paths = args.paths or [str(BUNDLED)]
    if args.action == "validate":
        return _validate(signature_files(paths), lambda f: len(load_pools([f]).entries),
                         "entries")
    pools = load_pools(paths)
    for e in pools.entries:
        what = e.domain or str(e.network)
        ports = ",".join(map(str, e.ports)) or "-"
        print(f"{what}\tports={ports}\tdate={e.date}\tsource={e.source}\t{e.origin}")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    """``validate``: each file loads (exit 1 on a finding, named file:line)."""
    from flowsense.sidecar.policy import load_policy

    return _validate(args.paths, lambda f: len(load_policy(str(f)).rules), "rules")


def cmd_verify_log(args: argparse.Namespace) -> int:
    """The verdict on stdout; exit 1 when the log was tampered with (the record named)."""
    from flowsense.errors import InputMissingError
    from flowsense.sidecar.verify import verify

    for path in args.paths:
        if not os.path.isfile(path):
            raise InputMissingError(f"{path}: no such file")
    result = verify(args.paths, args.seed, head=args.head, partial=args.partial)
    for line in result.report():
        print(line)
    return 0 if result.ok else 1


def cmd_watch(args: argparse.Namespace) -> int:
    from flowsense.sidecar.watch import WatchOptions, watch

    for name in ("max_flows", "buffer_mib", "log_rotate_bytes"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    if args.tick <= 0:
        raise ConfigError("--tick must be positive")
    opts = WatchOptions(
        interfaces=args.interface, read=args.read, bpf=args.bpf, backend=args.backend,
        output=args.output, signatures=args.signatures, max_flows=args.max_flows,
        tick_s=args.tick, buffer_bytes=max(1, args.buffer_mib) << 20,
        promisc=not args.no_promisc, metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind, user=args.user, enforce=args.enforce,
        policy=args.policy, log_path=args.log, log_seed=args.log_seed,
        log_rotate_bytes=args.log_rotate_bytes,
    )
    return watch(opts, _config(args))


COMMANDS = {"analyze": cmd_analyze, "flows": cmd_flows, "watch": cmd_watch,
            "signatures": cmd_signatures, "policy": cmd_policy, "verify-log": cmd_verify_log}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
        logging.basicConfig(
            level=logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2),
            format="flowsense: %(levelname)s: %(message)s",
            stream=sys.stderr,
        )
        # damaged files are reported once, by the command, as one line each
        logging.getLogger("flowsense.pipeline").setLevel(logging.ERROR)
        return COMMANDS[args.command](args)
    except FlowsenseError as exc:
        print(f"flowsense: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `| head`: end quietly; stop Python from complaining when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # argparse --help / --version
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        if os.environ.get("FLOWSENSE_DEBUG"):
            raise
        print(f"flowsense: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _skip_blas_probe() -> None:
    """numba probes for SciPy's BLAS when its CPU target first loads (importing scipy.linalg:
    0.25 s of CPU here, a tenth of a whole run on 2 million packets). No kernel of ours does linear
    algebra, so in our own process (never when imported as a library) the probe is answered
    "absent"; the module is unblocked afterwards for anything else that wants SciPy."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules:
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        import numba.np.arraymath  # noqa: F401  (runs the probe once)
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


def entry() -> None:
    """The console script and ``python -m flowsense``: a process of its own."""
    _skip_blas_probe()
    _leave(main())


def _leave(rc: int) -> None:
    """End the process without tearing the interpreter down: freeing every module, numba's
    compiled code and the last records one object at a time took 0.2 s, a tenth of a run on 2
    million packets. Exit handlers still run and the standard streams are flushed; with a
    thread still running (none should be) the ordinary exit waits for it."""
    if threading.active_count() > 1:
        sys.exit(rc)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, or a closed stream
            pass
    os._exit(rc)
