"""Thin subcommands over the library; each returns an exit code (ALERTS.md)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
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
from flowsense.report.summary import write_summary
from flowsense.schema import FLOW_COLUMNS

log = logging.getLogger("flowsense")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise ConfigError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write the main output here")
    p.add_argument("--home-net", metavar="CIDR,...", help="networks inside the perimeter")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="idle timeout (both kinds)")
    p.add_argument("--active-timeout", type=float, metavar="S", help="interim record period")
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("-v", "--verbose", action="count", default=0)
    g = p.add_argument_group("scale-out (README: Many captures, many cores)")
    g.add_argument("--jobs", type=int, metavar="N",
                   help="partitions in parallel (default: the machine's cores; inputs smaller "
                        "than one chunk run in one process)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: forked workers on this machine; dask: Dask distributed")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler (tcp://host:8786); default: a local cluster on loopback")
    g.add_argument("--independent", action="store_true",
                   help="each file on its own (fresh flows and detector state), not one stream")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flowsense", description="Flow analyzer for reverse SSH tunnels and mining.")
    p.add_argument("--version", action="version", version=f"flowsense {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("analyze", help="read, aggregate, detect")
    a.add_argument("paths", nargs="+", metavar="PATH")
    a.add_argument("--format", choices=("summary", "eve"), default="summary")
    a.add_argument("--signatures", action="append", metavar="PATH",
                   help="signature files or folders (default: the bundled signatures/)")
    _common(a)
    f = sub.add_parser("flows", help="flow records")
    f.add_argument("paths", nargs="+", metavar="PATH")
    f.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    f.add_argument("--splt", action="store_true", help="add the first packets (splt_*) to jsonl")
    _common(f)
    sg = sub.add_parser("signatures", help="check or list signature files")
    sg.add_argument("action", choices=("validate", "list"))
    sg.add_argument("paths", nargs="*", metavar="PATH", help="default: the bundled signatures/")
    return p


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
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
    jobs = args.jobs
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
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
    return Pipeline(cfg, sink or (lambda frame: None), rules, snapshot), False


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
                pipe, _ = _pipeline(args, cfg, paths, frames.append)
                pipe.run(paths)
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
        output = Output("csv" if args.format == "csv" else "jsonl", splt=args.splt)
        for paths in groups:
            pipe, _ = _pipeline(args, cfg, paths, sink, output=output, text_sink=text)
            pipe.run(paths)
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
    from flowsense.signatures import load_pools

    cfg = _config(args)
    groups = _groups(args, cfg)
    resources = Resources(pools=load_pools(args.signatures))
    sig_version = ",".join(resources.pools.versions)
    out = _open_out(args.output)
    alerts: list[Alert] = []
    n_flows = [0]
    pipes: list[AnyPipeline] = []

    def run(paths: list[str]) -> None:
        """One stream: its own detectors (their state), alert gate and flow table(s)."""
        detectors = [cls(resources) for cls in DETECTORS.values()]
        rules = [r for d in detectors for r in d.watch_rules()]
        gate = AlertGate()

        def emit(found: list[Alert]) -> None:
            for alert in found:
                if not gate.admit(alert):
                    continue
                # the input holding the flow's last packet (ms in the record: its last ns within)
                end_ms = alert.flow["eve_flow"]["end_ms"]
                last_ns = pipe.clock_ns if end_ms is None else (end_ms + 1) * 10**6 - 1
                alert.flow["source"] = {"pcap": pipe.source_of(last_ns)}
                alerts.append(alert)
                if args.format == "eve":
                    out.write(eve_record(alert, cfg, sig_version) + "\n")

        def sink(frame: FeatureFrame) -> None:
            n_flows[0] += frame.n
            for d in detectors:
                emit(d.on_frame(frame))

        def snapshot(frame: FeatureFrame) -> None:
            for d in detectors:
                emit(d.on_snapshot(frame))

        pipe, _ = _pipeline(args, cfg, paths, sink, rules, snapshot)
        pipe.run(paths)
        pipes.append(pipe)

    try:
        for paths in groups:
            run(paths)
        rc = _report_errors(pipes)
        if args.format == "summary":
            counters: dict[str, int] = {}
            for pipe in pipes:
                for k, v in pipe.counters_dict().items():
                    counters[k] = counters.get(k, 0) + v
            write_summary(out, [p for g in groups for p in g], counters, n_flows[0], alerts,
                          [e for pipe in pipes for e in pipe.errors])
    finally:
        _close_dask(args)
        if out is not sys.stdout:
            out.close()
    return rc


def cmd_signatures(args: argparse.Namespace) -> int:
    """``validate``: every file loads (exit 1 on a finding, named file:line); ``list``: entries."""
    from flowsense.errors import SignatureError
    from flowsense.signatures import BUNDLED, load_pools, signature_files

    paths = args.paths or [str(BUNDLED)]
    if args.action == "validate":
        findings = 0
        for f in signature_files(paths):
            try:
                pools = load_pools([f])
            except SignatureError as exc:
                print(f"{exc}")
                findings += 1
                continue
            print(f"{f}: ok, {len(pools.entries)} entries")
        return 1 if findings else 0
    pools = load_pools(paths)
    for e in pools.entries:
        what = e.domain or str(e.network)
        ports = ",".join(map(str, e.ports)) or "-"
        print(f"{what}\tports={ports}\tdate={e.date}\tsource={e.source}\t{e.origin}")
    return 0


COMMANDS = {"analyze": cmd_analyze, "flows": cmd_flows, "signatures": cmd_signatures}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
    about 0.4 s, a tenth of a whole run on 2 million packets). No kernel of ours does linear
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
    sys.exit(main())
