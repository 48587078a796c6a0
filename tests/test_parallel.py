"""Scale-out: ``--jobs N`` and ``--engine dask`` give the records and alerts of one table.

Exactness is the whole point, so every test compares a parallel run with ``--jobs 1`` on the
same inputs, record for record (sorted: parallel output comes in another order) and alert for
alert (EVE lines sorted). Captures are cut into many ranges by a small ``chunk_bytes``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from flowsense.capture.reader import iter_batches
from flowsense.cli import main
from flowsense.config import Config
from flowsense.detect.base import Resources
from flowsense.detect.pools import PoolDetector
from flowsense.detect.stratum import StratumDetector
from flowsense.flows.features import FeatureFrame
from flowsense.flows.table import FlowTable
from flowsense.parallel.engine import ParallelPipeline
from flowsense.parallel.kernels import pcap_resync
from flowsense.parallel.plan import assign_partitions
from flowsense.pipeline import Pipeline, compute_flows, slice_batch
from flowsense.schema import FLOW_COLUMNS
from flowsense.signatures import load_pools
from tests.conftest import corpus_available, write_raw_pcap
from tests.pcapgen import tcp_session, udp, write_pcap

POOL_NAME = "eu1-zcash.flypool.org"  # signatures/pools.yaml: flypool.org
POOL_ADDR = "203.0.113.77"  # not on the address list: only the DNS answer can name it
CLIENT = "10.0.0.5"


def small_chunks(chunk: int = 65536, **capture: int) -> Config:
    cfg = Config()
    return dataclasses.replace(
        cfg, capture=dataclasses.replace(cfg.capture, chunk_bytes=chunk, **capture))


def records(frame: FeatureFrame) -> list[tuple]:
    """Every record as a tuple of its FLOW_COLUMNS, sorted (the documented comparison)."""
    if frame.n == 0:
        return []
    cols = [frame.cols[k].tolist() for k in FLOW_COLUMNS]
    return sorted(zip(*cols), key=repr)


def assert_same_flows(paths: list[str], cfg: Config, **parallel: object) -> int:
    one = compute_flows(paths, cfg)
    many = compute_flows(paths, cfg, **parallel)  # type: ignore[arg-type]
    assert records(one.frame) == records(many.frame)
    skip = {"table_capacity"}  # the partitions' tables add up
    assert {k: v for k, v in one.counters.items() if k not in skip} == {
        k: v for k, v in many.counters.items() if k not in skip}
    assert [str(e) for e in one.errors] == [str(e) for e in many.errors]
    return one.frame.n


def eve(tmp_path: Path, args: list[str], name: str) -> list[str]:
    out = tmp_path / name
    rc = main(["analyze", *args, "--format", "eve", "-o", str(out)])
    assert rc in (0, 1)
    return sorted(out.read_text().splitlines())


def config_file(tmp_path: Path, chunk: int, batch: int = 65536) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_text(f"capture:\n  chunk_bytes: {chunk}\n  batch_packets: {batch}\n")
    return str(p)


# --- the shared corpus, as one stream ------------------------------------------------------------

def test_corpus_records_jobs2_equal_jobs1(corpus: Path) -> None:
    n = assert_same_flows([str(corpus)], small_chunks(65536), jobs=2)
    assert n > 300


def test_corpus_alerts_jobs2_equal_jobs1(corpus: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, 65536)
    one = eve(tmp_path, [str(corpus), "--jobs", "1", "--config", cfg], "one.json")
    two = eve(tmp_path, [str(corpus), "--jobs", "2", "--config", cfg], "two.json")
    assert one == two
    assert len(one) >= 10


# --- the benchmark generator, cut into ranges -------------------------------------------

@pytest.fixture(scope="module")
def bench_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmarks.gen_capture import generate

    out = tmp_path_factory.mktemp("bench") / "mixed.pcap"
    generate(str(out), packets=40_000, seed=3)
    return out


def test_bench_capture_cut_into_ranges(bench_capture: Path, tmp_path: Path) -> None:
    size = bench_capture.stat().st_size
    chunk = 1 << 20
    assert size > 8 * chunk  # many ranges, each found by resync
    n = assert_same_flows([str(bench_capture)], small_chunks(chunk), jobs=2)
    meta = json.loads(Path(str(bench_capture) + ".json").read_text())
    assert n == meta["flows"]
    cfg = config_file(tmp_path, chunk)
    one = eve(tmp_path, [str(bench_capture), "--jobs", "1", "--config", cfg], "one.json")
    for jobs in ("2", "3"):
        assert one == eve(tmp_path, [str(bench_capture), "--jobs", jobs, "--config", cfg],
                          f"jobs{jobs}.json")
    # its SSH sessions and miners stay open: judged at the looks, so alerts exist to compare
    assert any('"stratum-mining"' in line for line in one)


def test_mixed_formats_and_stream_batches(corpus: Path, tmp_path: Path) -> None:
    """A pcap cut in ranges, a pcapng read whole and a .gz read as a stream of small batches,
    as one stream."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(corpus / "zeek" / "ssh.pcap", folder / "a.pcap")
    shutil.copy(corpus / "ndpi" / "mining.pcapng", folder / "b.pcapng")
    with open(corpus / "ndpi" / "quic.pcap", "rb") as src, gzip.open(folder / "c.pcap.gz",
                                                                     "wb") as dst:
        shutil.copyfileobj(src, dst)
    cfg = small_chunks(65536, batch_packets=256)
    assert assert_same_flows([str(folder)], cfg, jobs=2) > 10


# --- a pool's DNS answer in the first range, its Stratum connection in a later one -------------

def _dns(client_port: int, t: float) -> list[tuple[float, bytes]]:
    q = dpkt.dns.DNS(id=0x1234, qd=[dpkt.dns.DNS.Q(name=POOL_NAME, type=dpkt.dns.DNS_A)])
    r = dpkt.dns.DNS(id=0x1234, qr=1, qd=q.qd, an=[dpkt.dns.DNS.RR(
        name=POOL_NAME, type=dpkt.dns.DNS_A, ttl=600, rdata=bytes(map(int,
                                                                      POOL_ADDR.split(".")))) ])
    return [(t, udp(CLIENT, "10.0.0.53", client_port, 53, bytes(q))),
            (t + 0.01, udp("10.0.0.53", CLIENT, 53, client_port, bytes(r)))]


def _stratum(t: float) -> list[tuple[float, bytes]]:
    subscribe = b'{"id": 1, "method": "mining.subscribe", "params": ["miner/1.0"]}\n'
    authorize = b'{"id": 2, "method": "mining.authorize", "params": ["w1", "x"]}\n'
    notify = (b'{"id": null, "method": "mining.notify", "params": ["1", "ab", "cd", "ef", [], '
              b'"20000000", "1d00ffff", "5a000000", true]}\n')
    reply = b'{"id": 1, "result": [[["mining.notify", "ae6812eb4cd7735a"]], "08000002", 4]}\n'
    ok = b'{"id": 2, "result": true, "error": null}\n'
    return tcp_session(CLIENT, POOL_ADDR, 40000, 3333, t,
                       [(0, subscribe), (1, reply), (0, authorize), (1, ok), (1, notify),
                        (1, notify), (1, notify)], close=False, gap_s=10.0)


def _noise(t0: float, n: int, gap: float = 1.0) -> list[tuple[float, bytes]]:
    return [(t0 + i * gap, udp("10.0.0.9", "10.0.1.9", 5000 + i, 123, b"\x23" + b"\0" * 400))
            for i in range(n)]


def pool_capture(path: Path, late: bool = True
                 ) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]]]:
    """DNS answer at 0 s, 60 filler packets, then a Stratum session to the answered address,
    open for 70 s and judged live (a snapshot at the file's end, or with small steps at the
    looks every 30 s). ``late``: the session starts at 130 s, after the lookup's flow idled out
    (120 s); else at 2 s, while that flow is open: only the reply's prompt record names it."""
    t0 = 1_600_000_000.0
    first = _dns(33333, t0) + _noise(t0 + 0.5, 60, 1.0 if late else 0.02)
    second = _stratum(t0 + (130.0 if late else 2.0))
    write_pcap(path, first + second)
    return first, second


def _pool_alerts(path: Path, cfg: Config, **parallel: object) -> list[tuple]:
    """The Stratum and pool detectors' alerts over ``path``: one table, or ``parallel``."""
    found: list = []
    dets = [StratumDetector(), PoolDetector(Resources(pools=load_pools(None)))]

    def sink(frame: FeatureFrame) -> None:
        for d in dets:
            found.extend(d.on_frame(frame))

    def snap(frame: FeatureFrame) -> None:
        for d in dets:
            found.extend(d.on_snapshot(frame))

    rules = [r for d in dets for r in d.watch_rules()]
    pipe = (ParallelPipeline(cfg, sink, rules, snap, **parallel) if parallel  # type: ignore[arg-type]
            else Pipeline(cfg, sink, rules, snap))
    pipe.run([str(path)])
    return sorted((a.category, a.variant, a.timestamp_ns, json.dumps(a.evidence, sort_keys=True),
                   json.dumps(a.flow)) for a in found)


def _split_key(path: Path) -> int:
    """A run key that puts the DNS flow and the Stratum flow in different partitions."""
    batch = next(iter_batches(str(path)))
    ports = batch.cols["dport"][: batch.n]
    return next(k for k in range(1, 200) if len(set(assign_partitions(
        batch, np.empty(batch.n, np.uint8), 2, k)[np.isin(ports, (53, 3333))].tolist())) == 2)


def _pool_case(tmp_path: Path, steps: int, late: bool) -> tuple[Path, Config, int]:
    path = tmp_path / "pool.pcap"
    first, _ = pool_capture(path, late)
    chunk = 4096
    end_of_first = 24 + sum(16 + len(f) for _, f in first)
    assert end_of_first > 4 * chunk  # the Stratum session starts ranges after the answer
    cfg = small_chunks(chunk, batch_packets=steps)
    return path, cfg, _split_key(path)


def _named_by_dns(alerts: list[tuple]) -> None:
    """The session is named by the DNS answer, judged while it was open."""
    dns = [a for a in alerts if a[:2] == ("mining-pool", "dns")]
    assert dns and all(POOL_NAME in a[3] for a in dns)
    assert any(json.loads(a[4])["eve_flow"]["state"] == "open" for a in dns)
    assert any(a[0] == "stratum-mining" for a in alerts)


# one step (the file's end: the answer and the session shown together), or steps of 8
# records (the answer steps before the session, which is judged at the looks); the session
# after the lookup's flow ended, or while it is open (its prompt record alone names it)
STEPS_AND_TIMING = [(65536, True), (8, True), (65536, False), (8, False)]


@pytest.mark.parametrize("steps, late", STEPS_AND_TIMING)
def test_pool_dns_in_first_range_stratum_in_a_later_one(tmp_path: Path, steps: int,
                                                        late: bool) -> None:
    path, cfg, key = _pool_case(tmp_path, steps, late)
    one = _pool_alerts(path, cfg)
    _named_by_dns(one)
    assert one == _pool_alerts(path, cfg, jobs=2, key=key)
    assert one == _pool_alerts(path, cfg, jobs=3, key=key)


def test_held_prompt_records_do_not_depend_on_drains(tmp_path: Path) -> None:
    """A DNS flow keeps asking after its first reply: its prompt record, held to the step's
    end, is the same whether the table drained after every packet or once; shown at the drain
    instead (a live source's way), it depends on when that happened."""
    t0 = 1_600_000_000.0
    packets = [pkt for k in range(6) for pkt in _dns(33333, t0 + k)]
    path = write_pcap(tmp_path / "dns.pcap", packets)
    batch = next(iter_batches(str(path)))
    rules = PoolDetector(Resources(pools=load_pools(None))).watch_rules()
    cfg = Config().flows

    def prompts(hold: bool, each_packet: bool) -> list[tuple]:
        got: list[FeatureFrame] = []
        table = FlowTable(cfg, list(rules))
        table.prompt_sink, table.hold_prompts = got.append, hold
        cuts = range(batch.n + 1) if each_packet else (0, batch.n)
        for a, b in zip(cuts, cuts[1:]):
            table.feed(slice_batch(batch, a, b))  # each feed drains at its end
        table.release_prompts()
        return [r for f in got for r in records(f)]

    held = prompts(True, False)
    assert len(held) == 1 and held == prompts(True, True)
    assert prompts(False, True) != prompts(False, False)  # what holding makes the same


# --- --independent and globs ------------------------------------------------------------------

def test_independent_files_forget_flows_and_dns(tmp_path: Path) -> None:
    first, second = pool_capture(tmp_path / "whole.pcap")
    folder = tmp_path / "ring"
    folder.mkdir()
    write_pcap(folder / "ring-1.pcap", first)
    write_pcap(folder / "ring-2.pcap", second)
    # the Stratum session also continues across the cut: one flow as a stream, two alone
    late = [(1_600_000_300.0 + i, pkt) for i, (_, pkt) in enumerate(_stratum(0)[3:5])]
    write_pcap(folder / "ring-3.pcap", late)
    cfg = config_file(tmp_path, 4096)
    for jobs in ("1", "2"):
        stream = eve(tmp_path, [str(folder), "--jobs", jobs, "--config", cfg], f"s{jobs}")
        alone = eve(tmp_path, [str(folder), "--jobs", jobs, "--config", cfg, "--independent"],
                    f"i{jobs}")
        assert any('"variant": "dns"' in line for line in stream)
        assert not any('"variant": "dns"' in line for line in alone)
    flows = {}
    for mode in ([], ["--independent"]):
        out = tmp_path / f"flows{len(mode)}.jsonl"
        assert main(["flows", str(folder), "--jobs", "2", "-o", str(out), *mode]) == 0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        flows[bool(mode)] = [r for r in rows if r["dst_port"] == 3333]
    assert len(flows[False]) == 1 and len(flows[True]) == 2


def test_globs(corpus: Path, tmp_path: Path) -> None:
    pattern = str(corpus / "zeek" / "ssh*.pcap")
    out_glob, out_list = tmp_path / "g.jsonl", tmp_path / "l.jsonl"
    assert main(["flows", pattern, "--jobs", "1", "-o", str(out_glob)]) == 0
    files = sorted(str(p) for p in (corpus / "zeek").glob("ssh*.pcap"))
    assert len(files) > 1
    assert main(["flows", *files, "--jobs", "1", "-o", str(out_list)]) == 0
    assert out_glob.read_text() == out_list.read_text()
    recursive = str(corpus / "**" / "*.pcapng")
    out_rec = tmp_path / "r.jsonl"
    assert main(["flows", recursive, "--jobs", "2", "-o", str(out_rec)]) == 0
    assert out_rec.read_text()
    assert main(["flows", str(tmp_path / "nothing-*.pcap")]) == 2


# --- Dask (one local cluster for the module: starting one is slow) ------------------------------

@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[object]:
    pytest.importorskip("distributed")
    from flowsense.parallel.dask_engine import local_cluster

    cluster = local_cluster(2, processes=False)
    yield cluster
    cluster.close()


def test_dask_equals_jobs1(dask_cluster: object, bench_capture: Path, tmp_path: Path) -> None:
    address = dask_cluster.scheduler_address  # type: ignore[attr-defined]
    from distributed import Client

    with Client(address) as client:
        assert_same_flows([str(bench_capture)], small_chunks(1 << 20), jobs=2, engine="dask",
                          scheduler=client)
        if corpus_available():
            from tests.conftest import corpus_dir

            assert_same_flows([str(corpus_dir())], small_chunks(), jobs=3, engine="dask",
                              scheduler=client)
    cfg = config_file(tmp_path, 1 << 20)
    one = eve(tmp_path, [str(bench_capture), "--jobs", "1", "--config", cfg], "one.json")
    dask = eve(tmp_path, [str(bench_capture), "--jobs", "2", "--engine", "dask", "--scheduler",
                          address, "--config", cfg], "dask.json")
    assert one == dask
    assert any('"stratum-mining"' in line for line in one)


def test_dask_alerts_on_the_corpus(dask_cluster: object, corpus: Path, tmp_path: Path) -> None:
    address = dask_cluster.scheduler_address  # type: ignore[attr-defined]
    cfg = config_file(tmp_path, 65536)
    one = eve(tmp_path, [str(corpus), "--jobs", "1", "--config", cfg], "one.json")
    dask = eve(tmp_path, [str(corpus), "--jobs", "2", "--engine", "dask", "--scheduler",
                          address, "--config", cfg], "dask.json")
    assert one == dask
    assert len(one) >= 10


@pytest.mark.parametrize("steps, late", STEPS_AND_TIMING)
def test_dask_pool_dns_then_stratum(dask_cluster: object, tmp_path: Path, steps: int,
                                    late: bool) -> None:
    from distributed import Client

    path, cfg, key = _pool_case(tmp_path, steps, late)
    one = _pool_alerts(path, cfg)
    _named_by_dns(one)
    with Client(dask_cluster.scheduler_address) as client:  # type: ignore[attr-defined]
        assert one == _pool_alerts(path, cfg, jobs=2, key=key, engine="dask", scheduler=client)


# --- what decoding in pieces must not change -----------------------------------------------------

def _ip4(src: str, dst: str, proto: int, body: bytes, ipid: int = 1, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ipid, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + body


def test_fragments_across_ranges(tmp_path: Path) -> None:
    """UDP datagrams in three fragments each, the pieces far apart: later fragments take their
    ports from a first fragment that another worker decoded (every worker decodes such pieces
    again, with a decoder that saw every fragment before)."""
    t0 = 1_700_000_000 * 10**9
    packets: list[tuple[int, bytes]] = []
    for k in range(6):
        dgram = struct.pack("!HHHH", 4000 + k, 9000, 8 + 2992, 0) + bytes([k]) * 2992
        parts = [dgram[i:i + 1480] for i in range(0, len(dgram), 1480)]
        for j, part in enumerate(parts):
            more = 0x2000 if j < len(parts) - 1 else 0
            t = t0 + (k * 40 + j * 12) * 10**6
            packets.append((t, _ip4("10.2.0.1", "10.2.0.2", 17, part, 100 + k,
                                    more | (j * 1480 // 8))))
    for i in range(240):  # filler between the fragments: they land in different ranges
        packets.append((t0 + i * 10**6 + 1, _ip4("10.3.0.1", "10.3.0.2", 17,
                                                 struct.pack("!HHHH", 7000, 53, 208, 0)
                                                 + b"\0" * 200)))
    packets.sort(key=lambda p: p[0])
    path = tmp_path / "frag.pcap"
    write_raw_pcap(path, packets)
    cfg = small_chunks(2048)
    one = compute_flows([str(path)], cfg)
    assert one.counters["fragment_orphans"] == 0
    frag_flows = one.frame.cols["fragments"] > 0
    assert int(frag_flows.sum()) == 6
    assert_same_flows([str(path)], cfg, jobs=2)
    assert_same_flows([str(path)], cfg, jobs=3)


def test_capture_inside_a_capture_misleads_resync(tmp_path: Path) -> None:
    """Payloads that are themselves pcap records: the guessed start of a range lands on them,
    the aggregating worker sees it disagree with the previous range's walk and reads the range
    itself."""
    t0 = 1_700_000_000 * 10**9
    inner = b"".join(struct.pack("<IIII", 1_700_000_000 + i, 0, 48, 48) + b"\xab" * 48
                     for i in range(20))  # 20 plausible 64-byte records
    packets = [(t0 + i * 10**6, _ip4("10.4.0.1", "10.4.0.2", 17,
                                     struct.pack("!HHHH", 5000 + i % 7, 6000, 8 + len(inner), 0)
                                     + inner))
               for i in range(300)]
    path = tmp_path / "nested.pcap"
    write_raw_pcap(path, packets)
    chunk = 4096
    buf = np.fromfile(path, dtype=np.uint8)
    true_starts = set()
    pos = 24
    while pos < len(buf):
        true_starts.add(pos)
        pos += 16 + int(struct.unpack_from("<I", buf, pos + 8)[0])
    guesses = [int(pcap_resync(buf, r * chunk, len(buf), False, 1_000_000_000, 1 << 20, 16))
               for r in range(1, len(buf) // chunk)]
    assert any(g not in true_starts for g in guesses)  # the mismatch path is exercised
    assert assert_same_flows([str(path)], small_chunks(chunk), jobs=2) == 7


def test_stdin_and_pipes_run_whole(corpus: Path, tmp_path: Path) -> None:
    """stdin cannot be split: ``--jobs 2`` reads it in one process, with the same records."""
    import os
    import subprocess
    import sys

    capture = corpus / "zeek" / "ssh.pcap"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    piped = subprocess.run([sys.executable, "-m", "flowsense", "flows", "-", "--jobs", "2"],
                           input=capture.read_bytes(), capture_output=True, env=env, timeout=600)
    assert piped.returncode == 0, piped.stderr
    out = tmp_path / "file.jsonl"
    assert main(["flows", str(capture), "--jobs", "1", "-o", str(out)]) == 0
    assert sorted(piped.stdout.decode().splitlines()) == sorted(out.read_text().splitlines())


def test_records_handed_over_within_a_round(bench_capture: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition hands its records over as they pass ``PART_BYTES`` (a round that ends every
    live flow no longer holds them all to its end); the caller writes them worker by worker,
    so the output is the same bytes in the same order as with whole rounds."""
    from types import SimpleNamespace

    from flowsense.parallel import engine, partition

    # one partitioning key for both runs (it is drawn per run), so their orders can compare
    monkeypatch.setattr(engine, "secrets", SimpleNamespace(randbits=lambda bits: 12345))
    cfg = config_file(tmp_path, 1 << 20)
    args = [str(bench_capture), "--jobs", "2", "--config", cfg, "--format", "jsonl"]
    whole = tmp_path / "whole.jsonl"
    assert main(["flows", *args, "-o", str(whole)]) == 0
    parts = {"n": 0}
    take_held = partition.Partition.take_held

    def counted(self: partition.Partition) -> list:
        parts["n"] += self._held_bytes >= partition.PART_BYTES
        return take_held(self)

    monkeypatch.setattr(partition, "PART_BYTES", 4096)
    monkeypatch.setattr(partition.Partition, "take_held", counted)
    in_parts = tmp_path / "parts.jsonl"
    assert main(["flows", *args, "-o", str(in_parts)]) == 0
    assert parts["n"] >= 10
    assert in_parts.read_bytes() == whole.read_bytes()
    one = tmp_path / "one.jsonl"
    assert main(["flows", str(bench_capture), "--jobs", "1", "-o", str(one)]) == 0
    assert sorted(in_parts.read_text().splitlines()) == sorted(one.read_text().splitlines())


# --- the worker threads' failures --------------------------------------------------------------

def _partition_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("flowsense-partition")]


def _slowed_run(bench_capture: Path, monkeypatch: pytest.MonkeyPatch,
                slow: Callable[[int], bool]) -> dict[str, Any]:
    """A run whose partition 1 sleeps 4 ms a piece while ``slow(pieces it has started)``:
    when each partition started a piece and ended a round, who decoded each piece, and who
    unmapped each range (its start, the worker, whether after its last round)."""
    import sys
    import threading
    import time

    from flowsense.parallel.partition import Partition
    from flowsense.parallel.plan import FileMaps, Producer

    log: list[tuple[int, str, float]] = []
    decoded: list[tuple[int, str]] = []  # a piece's start, the worker that decoded it
    released: list[tuple[int, str, bool]] = []
    consume, take = Partition.consume, Partition.take
    produce, release = Producer.produce, FileMaps.release

    def slowed(self: Partition, piece: object, region: object) -> None:
        log.append((self.p, "start", time.perf_counter()))
        if self.p == 1 and slow(sum(1 for q, kind, _ in log if q == 1 and kind == "start")):
            time.sleep(0.004)
        consume(self, piece, region)  # type: ignore[arg-type]

    def took(self: Partition) -> list:
        log.append((self.p, "round", time.perf_counter()))
        return take(self)

    def produced(self: Producer, piece: object, region: object) -> None:
        decoded.append((piece.start, threading.current_thread().name))  # type: ignore[attr-defined]
        produce(self, piece, region)  # type: ignore[arg-type]

    def released_by(self: FileMaps, piece: object) -> None:
        at_end = sys._getframe(1).f_code.co_name == "_rounds"  # not a piece's decoding
        start = piece.start  # type: ignore[attr-defined]
        released.append((start, threading.current_thread().name, at_end))
        release(self, piece)  # type: ignore[arg-type]

    monkeypatch.setattr(Partition, "consume", slowed)
    monkeypatch.setattr(Partition, "take", took)
    monkeypatch.setattr(Producer, "produce", produced)
    monkeypatch.setattr(FileMaps, "release", released_by)
    assert_same_flows([str(bench_capture)], small_chunks(1 << 18), jobs=2)
    assert _partition_threads() == []
    return {"ends": {p: [t for q, kind, t in log if q == p and kind == "round"] for p in (0, 1)},
            "starts": {p: [t for q, kind, t in log if q == p and kind == "start"]
                       for p in (0, 1)},
            "decoded": decoded, "released": released}


def test_a_worker_runs_a_round_ahead_of_a_slow_one(bench_capture: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers wait for each other only for a round's pieces to be decoded and for a set of
    regions to be free (``local._Sync``): with partition 1 slowed down, partition 0 starts
    consuming round j+1 while partition 1 is still in round j, decodes into the third set,
    takes on more than its half of the decoding (a round's pieces go to whichever worker
    gets to them first), and the records are still one table's."""
    run = _slowed_run(bench_capture, monkeypatch, lambda k: True)
    ends, starts = run["ends"], run["starts"]
    decoders = [w for _, w in run["decoded"]]
    rounds = len(ends[1]) - 1  # the last "round" is the final flush's
    assert rounds > 15
    # partition 0 began a round's pieces before partition 1 had ended the round before
    ahead = sum(any(ends[1][j] > t for t in starts[0][2 * (j + 1):2 * (j + 2)])
                for j in range(rounds - 1))
    assert ahead > rounds // 2
    # every piece decoded once; the faster worker decoded most of them
    assert len(decoders) == len(starts[0]) == len(starts[1])
    assert decoders.count("flowsense-partition-0") > 0.7 * len(decoders)


def test_ranges_are_unmapped_as_the_run_goes(bench_capture: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every range is unmapped once, by the worker that walked it, once every worker is done
    with it: as the run goes, not at its end, also for a worker that decodes in some rounds
    and not in others (partition 1 slowed down every other dozen pieces). After its last
    round a worker unmaps at most the last rounds' (three sets of two pieces)."""
    from flowsense.parallel.local import SETS

    run = _slowed_run(bench_capture, monkeypatch, lambda k: (k // 12) % 2 == 0)
    decoded, released = run["decoded"], run["released"]
    assert sorted((start, w) for start, w, _ in released) == sorted(decoded)  # each once
    for worker in ("flowsense-partition-0", "flowsense-partition-1"):
        assert any(w == worker for _, w in decoded)  # both decode in this run
        assert sum(at_end for _, w, at_end in released if w == worker) <= SETS * 2


def _resident(a: np.ndarray) -> int:
    """How many of the pages under ``a`` are in memory (``/proc/self/pagemap``'s present bit,
    which a process may read for itself)."""
    import mmap
    import os

    lo = a.__array_interface__["data"][0] // mmap.PAGESIZE
    hi = -(-(a.__array_interface__["data"][0] + a.nbytes) // mmap.PAGESIZE)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        entries = np.frombuffer(os.pread(fd, (hi - lo) * 8, lo * 8), dtype=np.uint64)
    finally:
        os.close(fd)
    return int((entries >> np.uint64(63)).sum())


def test_a_region_gives_back_what_a_denser_piece_took() -> None:
    """A region keeps pages for the packets of the piece decoded into it: after a denser
    piece, a piece thousands of packets lighter gives the rest back (``Region.settle``: a
    longer capture's regions would each keep pages for its densest piece), what the piece
    holds stays, and a piece a little lighter leaves them be (no fault churn)."""
    from flowsense.parallel.plan import SETTLE_PACKETS, Region

    region = Region(200_000, 4096)
    ts = region.cols["ts_ns"]
    for col in (*region.cols.values(), region.hash, region.part):
        col[:120_000] = 1
    ts[:120_000] = np.arange(120_000)
    region.settle(120_000)
    full = _resident(ts[:120_000])
    assert full >= 120_000 * 8 // 4096  # every page it wrote
    region.settle(60_000)  # 60,000 packets lighter: the pages past its packets go back
    for col in (*region.cols.values(), region.hash, region.part):
        # but the page the cut falls in and the last, which the next array's first packets share
        assert _resident(col[60_000:]) <= 2
    assert _resident(ts[:60_000]) >= full // 2 - 1
    assert (ts[:60_000] == np.arange(60_000)).all()
    assert not ts[61_000:120_000].any()  # given back: zero when read again
    ts[:64_000] = 1
    region.settle(64_000)
    kept = _resident(ts)
    assert 4_000 < SETTLE_PACKETS
    region.settle(60_000)  # lighter by less than SETTLE_PACKETS: nothing is given back
    assert _resident(ts) == kept


def test_a_failing_sink_stops_the_workers(bench_capture: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's sink raising mid-run ends the run with its error: the workers stop within
    a few rounds (not at the capture's end), and none is left waiting for another or to hand
    a round over."""
    from flowsense.parallel.partition import Partition

    take = Partition.take
    rounds = {"n": 0}

    def counted(self: Partition) -> list:
        rounds["n"] += 1
        return take(self)

    monkeypatch.setattr(Partition, "take", counted)
    seen: list[int] = []

    def sink(frame: FeatureFrame) -> None:
        seen.append(frame.n)
        if len(seen) == 3:
            raise OSError("disk full")

    pipe = ParallelPipeline(small_chunks(1 << 18), sink, jobs=2)
    with pytest.raises(OSError, match="disk full"):
        pipe.run([str(bench_capture)])
    assert len(seen) == 3
    assert _partition_threads() == []
    size = bench_capture.stat().st_size
    assert size // (1 << 18) > 30  # rounds of two ranges: more than 15 a worker
    assert rounds["n"] <= 2 * 8  # the sink failed in the third round


def test_a_failing_worker_ends_the_run_with_its_cause(bench_capture: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One partition failing in its first piece (while the other already waits for it) stops
    the other and the run raises the failure, not the other's broken wait."""
    import threading

    from flowsense.parallel.plan import Producer

    produce = Producer.produce

    def failing(self: Producer, piece: object, region: object) -> None:
        if threading.current_thread().name == "flowsense-partition-1":
            raise ValueError("partition 1 gave up")
        produce(self, piece, region)  # type: ignore[arg-type]

    monkeypatch.setattr(Producer, "produce", failing)
    pipe = ParallelPipeline(small_chunks(1 << 18), lambda frame: None, jobs=2)
    with pytest.raises(RuntimeError, match="partition 1 gave up") as info:
        pipe.run([str(bench_capture)])
    assert isinstance(info.value.__cause__, ValueError)
    assert _partition_threads() == []
