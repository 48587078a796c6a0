"""The flow table's behaviour on small captures built to exercise one rule each (docs/flows.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from flowsense.capture.reader import iter_batches
from flowsense.config import Config, FlowConfig
from flowsense.flows.features import FeatureFrame
from flowsense.flows.table import FlowTable, WatchRule
from flowsense.pipeline import compute_flows
from tests.pcapgen import ACK, PSH, SYN, tcp, tcp_session, udp, write_pcap

C, S = "10.1.1.1", "198.51.100.7"


def flows(path: Path, **flow_kw: object) -> dict[str, list]:
    cfg = Config()
    if flow_kw:
        cfg = dataclasses.replace(cfg, flows=dataclasses.replace(cfg.flows, **flow_kw))
    res = compute_flows([str(path)], cfg)
    assert not res.errors
    return {k: list(v) for k, v in res.frame.cols.items()}


def test_orientation_from_syn_synack_or_guess(tmp_path: Path) -> None:
    pk = tcp_session(C, S, 40000, 22, 1.0, [(0, b"a"), (1, b"b")])
    # a capture that starts at the SYN-ACK names its receiver the client
    synack_first = tcp_session(C, S, 40001, 22, 2.0, [(0, b"a")])[1:]
    # one that starts mid-flow, with the server speaking first, guesses the sender
    mid = [(3.0, tcp(S, C, 22, 40002, PSH | ACK, 9, b"x")), (3.1, tcp(C, S, 40002, 22, ACK, 5))]
    f = flows(write_pcap(tmp_path / "o.pcap", pk + synack_first + mid))
    by_port = {max(sp, dp): i for i, (sp, dp) in enumerate(zip(f["src_port"], f["dst_port"]))}
    assert len(f["src_ip"]) == 3
    i = f["src_port"].index(40000)
    assert (f["orientation"][i], f["src_ip"][i], f["dst_port"][i]) == ("syn", C, 22)
    i = f["src_port"].index(40001)
    assert (f["orientation"][i], f["src_ip"][i]) == ("syn-ack", C)
    i = by_port[40002]
    assert (f["orientation"][i], f["src_ip"][i], f["src_port"][i]) == ("guessed", S, 22)


def test_idle_timeouts_udp_short_established_tcp_long(tmp_path: Path) -> None:
    pk = [(0.0, udp(C, S, 5000, 53, b"q")), (1.0, udp(S, C, 53, 5000, b"r")),
          (200.0, udp(C, S, 5000, 53, b"q2"))]
    sess = tcp_session(C, S, 41000, 22, 0.0, [(0, b"ls\n"), (1, b"out")], close=False)
    pk += sess + [(1000.0, tcp(C, S, 41000, 22, PSH | ACK, 1004, b"late"))]
    pk.sort(key=lambda x: x[0])
    path = write_pcap(tmp_path / "t.pcap", pk)
    f = flows(path)
    udp_rows = [i for i, p in enumerate(f["protocol"]) if p == 17]
    tcp_rows = [i for i, p in enumerate(f["protocol"]) if p == 6]
    assert len(udp_rows) == 2, "UDP idle 199 s > 120 s: two flows"
    # the second UDP flow idles out too, when the clock reaches t=1000
    assert [f["expiration"][i] for i in udp_rows] == ["idle", "idle"]
    assert len(tcp_rows) == 1, "established TCP idles 3600 s"
    assert f["bidirectional_packets"][tcp_rows[0]] == len(sess) + 1
    # --idle-timeout sets both
    res = compute_flows([str(path)], Config().with_timeouts(idle_s=100.0))
    assert sum(1 for p in res.frame.cols["protocol"] if p == 6) == 2


def test_active_timeout_interim_records_keep_identity(tmp_path: Path) -> None:
    pk = tcp_session(C, S, 42000, 443, 0.0, [], close=False)
    seq = 1001
    for k in range(1, 50):
        pk.append((k * 100.0, tcp(C, S, 42000, 443, PSH | ACK, seq, b"k")))
        seq += 1
    res = compute_flows([str(write_pcap(tmp_path / "a.pcap", pk))],
                        Config().with_timeouts(active_s=1800.0))
    c = res.frame.cols
    interim = [i for i in range(res.n_flows) if c["interim"][i]]
    final = [i for i in range(res.n_flows) if not c["interim"][i]]
    assert len(final) == 1 and len(interim) == 2  # 4900 s of flow: interims at 1800 and 3600
    ids = {c["flow_id"][i] for i in interim + final}
    assert len(ids) == 1
    counts = sorted(c["bidirectional_packets"][i] for i in interim)
    assert counts[0] < counts[1] < c["bidirectional_packets"][final[0]] == len(pk)
    assert all(c["expiration"][i] == "active" for i in interim)


def test_fin_linger_and_port_reuse(tmp_path: Path) -> None:
    first = tcp_session(C, S, 43000, 80, 0.0, [(0, b"GET"), (1, b"200")])
    late_ack = [(first[-1][0] + 1.0, tcp(S, C, 80, 43000, ACK, 7000, ack=1))]
    second = tcp_session(C, S, 43000, 80, first[-1][0] + 2.0, [(0, b"GET")])
    f = flows(write_pcap(tmp_path / "r.pcap", first + late_ack + second))
    assert len(f["flow_id"]) == 2
    assert f["bidirectional_packets"][0] == len(first) + 1, "the trailing ACK stays in the flow"
    assert f["expiration"][0] == "reuse" and f["expiration"][1] == "fin"
    assert f["flow_id"][0] != f["flow_id"][1]


def test_heads_in_sequence_order_and_retransmissions(tmp_path: Path) -> None:
    pk = tcp_session(C, S, 44000, 9999, 0.0, [], close=False)
    t = 1.0
    # second segment first, then the first, then the first again (a retransmission)
    pk.append((t, tcp(C, S, 44000, 9999, PSH | ACK, 1001 + 5, b"WORLD")))
    pk.append((t + 0.1, tcp(C, S, 44000, 9999, PSH | ACK, 1001, b"HELLO")))
    pk.append((t + 0.2, tcp(C, S, 44000, 9999, PSH | ACK, 1001, b"HELLO")))
    res = compute_flows([str(write_pcap(tmp_path / "h.pcap", pk))])
    fr = res.frame
    assert bytes(fr.head[0, 0, : fr.head_len[0, 0]]) == b"HELLOWORLD"
    assert fr.head_len[0, 1] == 0
    # HELLO after WORLD ends below the highest end seen: counted, as is its copy
    assert fr.cols["src2dst_retransmissions"][0] == 2
    assert fr.cols["src2dst_payload_bytes"][0] == 15


def test_growth_keeps_every_flow(tmp_path: Path) -> None:
    pk = [(i * 0.001, udp(C, S, 1024 + i, 53, b"x")) for i in range(3000)]
    res = compute_flows([str(write_pcap(tmp_path / "g.pcap", pk))],
                        dataclasses.replace(Config(), flows=FlowConfig(initial_flows=16)))
    assert res.n_flows == 3000
    assert res.counters["table_capacity"] >= 3000
    assert sorted(res.frame.cols["src_port"]) == list(range(1024, 4024))


def test_record_slices_hold_the_same_records(tmp_path: Path) -> None:
    """With ``record_slice`` (the flows writers' tables), a drain of many flows at once (here
    every flow, at the end of the input) comes in frames of at most that many, and the records
    are those of one frame."""
    from flowsense.flows.features import concat

    pk = [(i * 0.001, udp(C, S, 1024 + i, 53, b"x")) for i in range(3000)]
    path = str(write_pcap(tmp_path / "s.pcap", pk))

    def frames(record_slice: int) -> list[FeatureFrame]:
        table = FlowTable(FlowConfig())
        table.record_slice = record_slice
        out: list[FeatureFrame] = []
        for batch in iter_batches(path):
            table.feed(batch, out.append)
        table.flush(out.append)
        return out

    whole, sliced = frames(0), frames(1000)
    assert [f.n for f in whole] == [3000]
    assert [f.n for f in sliced] == [1000, 1000, 1000]
    joined = concat(sliced)
    for name in ("flow_id", "src_port", "bidirectional_packets", "bidirectional_last_seen_ms"):
        assert joined.cols[name].tolist() == whole[0].cols[name].tolist(), name


def test_other_partitions_packets_move_the_clock_as_in_one_table(tmp_path: Path) -> None:
    """A partition's table is fed every packet: its own (ST_OK) and the other partitions'
    (ST_TICK), whose timestamps move its clock and expiry as they would in one table. The
    kernel steps over a run of those at once when nothing can happen in it
    (``kernels.own_packets``), else packet by packet: an idle end, an interim record (taken at
    the very packet its timeout passes, then Python drains it and the kernel resumes within the
    run) or a jump back in time (the table flushes at that packet). The partitions' tables look
    flows up by the hash each packet was partitioned by (``cols["hash"]``). The partitions'
    records together are one table's; interim records come out at the same clock, and fed one
    packet at a time, interim records and a jump's flush come out at the same packet."""
    from flowsense.parallel.partition import partition_batch
    from flowsense.parallel.plan import assign_partitions, table_key
    from flowsense.pipeline import slice_batch
    from flowsense.schema import FLOW_COLUMNS

    rng = np.random.default_rng(7)
    pk: list[tuple[float, bytes]] = []
    t = 1_700_000_000.0
    for k in range(3000):
        t += float(rng.exponential(0.02))
        port = 1024 + int(rng.integers(0, 80))  # 80 flows, each quiet now and then
        pk.append((t, udp(C, S, port, 53, b"q")))
        if k in (1000, 2000):  # a capture spliced from an hour before
            t -= 3600.0
    path = str(write_pcap(tmp_path / "ticks.pcap", pk))
    cfg = FlowConfig(idle_timeout_s=0.5, active_timeout_s=2.0)
    expiration = list(FLOW_COLUMNS).index("expiration")

    def records(p: int | None, one_at_a_time: bool) -> list[tuple]:
        """Sorted (record..., where it came out): the packet fed (one at a time) or the
        table's clock (whole batches; interim records only)."""
        # a partition's table looks flows up by the hash they were partitioned by
        table = FlowTable(cfg, hash_key=None if p is None else table_key(99))
        out: list[tuple] = []
        at = [0]

        def sink(f: FeatureFrame) -> None:
            for row in zip(*(f.cols[name].tolist() for name in FLOW_COLUMNS)):
                if one_at_a_time:
                    where = at[0] if row[expiration] in ("active", "end") else None
                else:
                    where = table.clock_ns if row[expiration] == "active" else None
                out.append((*row, where))

        for batch in iter_batches(path):
            if p is not None:
                hashes = np.empty(batch.n, np.uint64)
                part = assign_partitions(batch, np.empty(batch.n, np.uint8), 2, 99, hashes)
                batch = partition_batch(batch, part, hashes, p, np.empty(batch.n, np.uint8))
            if not one_at_a_time:
                table.feed(batch, sink)
                continue
            for i in range(batch.n):
                at[0] += 1
                table.feed(slice_batch(batch, i, i + 1), sink)
        at[0] += 1
        table.flush(sink)
        return sorted(out, key=repr)

    for one_at_a_time in (False, True):
        one = records(None, one_at_a_time)
        assert {"idle", "active", "end"} <= {r[expiration] for r in one}  # "end": the jumps'
        if one_at_a_time:  # the two jumps flushed the flows live at them
            assert sum(r[expiration] == "end" and r[-1] <= 3000 for r in one) >= 20
        parts = []
        for p in (0, 1):
            part = records(p, one_at_a_time)
            assert 0 < len(part) < len(one)
            parts += part
        assert sorted(parts, key=repr) == one, one_at_a_time


def test_bounded_table_evicts_but_keeps_watched_flow(tmp_path: Path) -> None:
    ssh = tcp_session(C, S, 45000, 22, 0.0, [(1, b"SSH-2.0-OpenSSH_9.2\r\n")], close=False)
    scans = [(1.0 + i * 0.0001, tcp(C, S, 2000 + i, 80, SYN)) for i in range(5000)]
    tail = [(2.0, tcp(S, C, 22, 45000, PSH | ACK, 5001 + 21, b"more"))]
    path = write_pcap(tmp_path / "b.pcap", ssh + scans + tail)
    cfg = dataclasses.replace(Config(), flows=FlowConfig(max_flows=256, initial_flows=64))
    ended: list[FeatureFrame] = []
    from flowsense.pipeline import Pipeline

    pipe = Pipeline(cfg, ended.append, [WatchRule(b"SSH-")])
    pipe.run_file(str(path))
    stats = pipe.table.stats()
    assert stats["flows_evicted"] >= 5000 - 256
    assert stats["flows_live"] <= 256
    assert stats["watches_active"] == 1
    pipe.finish()
    ssh_rows = [(f, i) for f in ended for i in range(f.n) if f.cols["dst_port"][i] == 22]
    assert len(ssh_rows) == 1, "the watched SSH flow was never evicted"
    f, i = ssh_rows[0]
    assert f.cols["bidirectional_packets"][i] == len(ssh) + 1


def test_watch_rule_leases_slab_and_trace(tmp_path: Path) -> None:
    banner = b"SSH-2.0-OpenSSH_9.2p1\r\n"
    big = bytes(range(256)) * 8  # 2 KiB, past the 512-byte head
    pk = tcp_session(C, S, 46000, 2222, 0.0, [(1, banner), (0, b"SSH-2.0-x\r\n"), (1, big)],
                     close=False)
    table = FlowTable(FlowConfig(), [WatchRule(b"SSH-")])
    for batch in iter_batches(str(write_pcap(tmp_path / "w.pcap", pk))):
        table.feed(batch)
    snap = table.snapshot()
    assert snap.n == 1 and snap.watch[0] >= 0, "live flow visible before it ends, and watched"
    w = int(snap.watch[0])
    T = table.T
    server = bytes(T.slab[w, 1, : T.w_fill[w, 1]])
    assert server == banner + big
    n = int(T.tr_n[w])
    assert n == 3, "the trace starts with the packet that matched the rule (splt has the rest)"
    sizes = T.tr_len[w, :n].tolist()
    dirs = (T.tr_flags[w, :n] & 1).tolist()
    assert sizes[-3:] == [len(banner), 11, len(big)] and dirs[-3:] == [1, 0, 1]
    assert table.snapshot().n == 0, "nothing touched since the last snapshot"


def test_flow_id_stable_across_hash_seeds_and_runs(tmp_path: Path) -> None:
    pk = tcp_session(C, S, 47000, 22, 0.0, [(0, b"a")]) + [(0.5, udp(C, S, 1, 2, b"u"))]
    path = str(write_pcap(tmp_path / "s.pcap", pk))
    ids = []
    for seed in (1, 2):
        cfg = dataclasses.replace(Config(), flows=FlowConfig(hash_seed=seed))
        ids.append(sorted(compute_flows([path], cfg).frame.cols["flow_id"].tolist()))
    assert ids[0] == ids[1] and len(set(ids[0])) == 2
    assert all(0 < i < 2**63 for i in ids[0])


def test_flows_carry_across_files(tmp_path: Path) -> None:
    pk = tcp_session(C, S, 48000, 22, 0.0, [(0, b"a"), (1, b"b"), (0, b"c")])
    a = write_pcap(tmp_path / "1.pcap", pk[:4])
    b = write_pcap(tmp_path / "2.pcap", pk[4:])
    res = compute_flows([str(a), str(b)])
    assert res.n_flows == 1 and res.frame.cols["bidirectional_packets"][0] == len(pk)
    assert res.counters["files"] == 2


def test_ipv6_and_icmp_pairing(tmp_path: Path) -> None:
    import dpkt

    def icmp(src: str, dst: str, type_: int) -> bytes:
        import socket

        m = dpkt.icmp.ICMP(type=type_, data=dpkt.icmp.ICMP.Echo(id=7, seq=1, data=b"ping"))
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=1, data=m)
        ip.len = 20 + len(bytes(m))
        return bytes(dpkt.ethernet.Ethernet(type=0x0800, data=ip))

    pk = [(0.0, icmp(C, S, 8)), (0.1, icmp(S, C, 0)), (0.2, icmp(C, S, 8)),
          (0.3, udp("2001:db8::1", "2001:db8::2", 5353, 5353, b"v6"))]
    f = flows(write_pcap(tmp_path / "i.pcap", pk))
    assert f["protocol"] == [1, 17]
    assert f["bidirectional_packets"] == [3, 1]
    assert (f["src_ip"][0], f["src_port"][0], f["dst_port"][0]) == (C, 8, 0)
    assert f["ip_version"][1] == 6 and f["src_ip"][1] == "2001:db8::1"
    assert np.all(np.array(f["bidirectional_bytes"]) > 0)


def test_tick_expires_by_wall_clock_on_a_quiet_link(tmp_path: Path) -> None:
    pk = [(100.0, udp(C, S, 6000, 53, b"q")), (100.5, udp(S, C, 53, 6000, b"a"))]
    table = FlowTable(FlowConfig())
    for batch in iter_batches(str(write_pcap(tmp_path / "q.pcap", pk))):
        table.feed(batch)
    ended: list[FeatureFrame] = []
    table.tick(int(200e9), ended.append)
    assert not ended, "80 s of silence is within the 120 s idle timeout"
    table.tick(int(221e9), ended.append)
    assert sum(f.n for f in ended) == 1 and ended[0].cols["expiration"][0] == "idle"
    assert table.stats()["flows_live"] == 0


def test_flows_ended_by_a_quiet_spell_give_their_slots_back_first(tmp_path: Path) -> None:
    """Thousands of flows idle out at once when traffic resumes after a quiet spell (a ring
    buffer's next file): they are exported and their slots freed before the next packets'
    flows take slots, so the table's memory in use follows the live flows (the new burst
    reuses the old burst's slots), not live plus ended."""
    from flowsense.flows.kernels import DRAIN_ENDED
    from flowsense.flows.table import FI_STATE, FS_LIVE

    burst = DRAIN_ENDED + 2000
    first = [(i * 1e-3, udp(C, S, 1024 + i % 60000, 53, b"q")) for i in range(burst)]
    later = [(600.0 + i * 1e-3, udp(S, C, 2000 + i % 60000, 5353, b"r")) for i in range(burst)]
    path = write_pcap(tmp_path / "spell.pcap", first + later)
    table = FlowTable(FlowConfig(initial_flows=4 * burst))
    ended: list[FeatureFrame] = []
    for batch in iter_batches(str(path)):
        table.feed(batch, ended.append)
    assert sum(f.n for f in ended) == burst  # the first burst, idle past 120 s
    live = np.flatnonzero(table.T.fi[:, FI_STATE] & FS_LIVE)
    assert len(live) == burst
    assert live.max() < burst  # the slots the first burst gave back


def test_prompt_records_are_lazy_and_equal_to_the_full_ones(tmp_path: Path) -> None:
    """A prompt rule's records reach the sink at the reply with their addresses and Community
    IDs computed as read (``Columns``); read or not, they equal the records a full gather makes
    of the same slots, in FLOW_COLUMNS order, and pickle as a plain dict."""
    import pickle

    from flowsense.flows.features import Columns, gather
    from flowsense.schema import FI_STATE, FLOW_COLUMNS, FS_LIVE

    pk = []
    for k in range(5):
        t = 1.0 + k
        pk += [(t, udp(C, S, 5000 + k, 53, b"q" * (20 + k))),
               (t + 0.01, udp(S, C, 53, 5000 + k, b"r" * (40 + k)))]
    pk += tcp_session(C, S, 48000, 443, 0.5, [(0, b"\x16\x03\x01hello")], close=False)
    prompts: list[FeatureFrame] = []
    table = FlowTable(FlowConfig(), [WatchRule(b"", 53, prompt=True)])
    table.prompt_sink = prompts.append
    for batch in iter_batches(str(write_pcap(tmp_path / "p.pcap", pk))):
        table.feed(batch)
    assert sum(f.n for f in prompts) == 5
    frame = prompts[0]
    deferred = ("community_id", "src_ip", "dst_ip")
    assert isinstance(frame.cols, Columns)
    assert dict.__len__(frame.cols) == len(FLOW_COLUMNS) - len(deferred)
    assert frame.cols["dst_port"].tolist() == [53] * frame.n
    assert frame.cols["src_ip"].tolist() == [C] * frame.n
    assert dict.__len__(frame.cols) == len(FLOW_COLUMNS) - len(deferred) + 1, "src_ip alone"
    assert list(frame.text_rows) == ["src_ip"]
    slots = np.flatnonzero((table.T.fi[:, FI_STATE] & FS_LIVE) != 0)
    assert len(slots) == 6, "the five lookups and the TLS flow"
    full = gather(table.T, slots, np.zeros(len(slots), np.int64), interim=False)
    lazy = gather(table.T, slots, np.zeros(len(slots), np.int64), interim=False, lazy=True)
    assert lazy.cols["src2dst_bytes"].tolist() == full.cols["src2dst_bytes"].tolist()
    assert list(lazy.cols) == list(full.cols) == list(FLOW_COLUMNS)
    assert sorted(full.cols["protocol"].tolist()) == [6, 17, 17, 17, 17, 17]
    for name in FLOW_COLUMNS:
        a, b = full.cols[name], lazy.cols[name]
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name
    again = pickle.loads(pickle.dumps(gather(table.T, slots, np.zeros(len(slots), np.int64),
                                             interim=False, lazy=True).cols))
    assert type(again) is dict and list(again) == list(FLOW_COLUMNS)
    assert again["flow_id"].tolist() == full.cols["flow_id"].tolist()


def test_headless_table_gives_the_same_records() -> None:
    """A table that keeps no payload heads (the flows command's: no detector reads them) makes
    the same records, column for column, as one that keeps them, on real captures (TCP with
    retransmissions, UDP, a VXLAN tunnel, Stratum), and allocates no head bytes."""
    from flowsense.schema import FLOW_COLUMNS

    repo = Path(__file__).resolve().parent.parent / "pcaps"
    paths = [str(repo / "corpus" / n) for n in
             ("ndpi-dns.pcap", "ndpi-xmr-stak-monero-stratum.pcap", "suricata-vxlan-ssh.pcap",
              "zeek-reverse-ssh.pcap")] + [str(repo / "ssh" / "reverse-exfil.pcap")]
    for path in paths:
        full = compute_flows([path], heads=True)
        bare = compute_flows([path], heads=False)
        assert full.frame.head is not None and full.frame.head_len.max() > 0, path
        assert bare.frame.head is None and bare.frame.head_len is None
        assert bare.n_flows == full.n_flows > 0
        for name in FLOW_COLUMNS:
            a, b = full.frame.cols[name], bare.frame.cols[name]
            assert a.tolist() == b.tolist(), (path, name)
    table = FlowTable(FlowConfig(), heads=False)
    assert table.T.head.nbytes == 0 and not table.export_heads
    looked = FlowTable(FlowConfig(), heads=False, looked_at=True)  # detectors' looks keep theirs
    assert looked.T.head.shape[2] == FlowConfig().head_bytes and not looked.export_heads


def test_text_of_a_row_without_making_the_column() -> None:
    """``FeatureFrame.text``: a row of an address or Community ID column read from the bytes
    the table formatted, equal to the column's own str, and the column not made by it."""
    repo = Path(__file__).resolve().parent.parent / "pcaps"
    frame = compute_flows([str(repo / "corpus" / "suricata-vxlan-ssh.pcap")]).frame
    names = ("src_ip", "dst_ip", "community_id")
    got = {name: [frame.text(name, i) for i in range(frame.n)] for name in names}
    assert not any(dict.__contains__(frame.cols, name) for name in names)
    for name in names:
        assert got[name] == frame.cols[name].tolist() and all(got[name]), name
        assert frame.text(name, 0) == got[name][0]  # and from the made column


def test_watch_rule_on_a_first_payload_shorter_than_its_prefix(tmp_path: Path) -> None:
    """A first segment shorter than a rule's prefix leases the watch when its bytes agree (a
    sender cannot slip past by sending its first byte alone); one whose bytes differ does not."""
    rest = b'"id": 1, "method": "mining.subscribe", "params": []}\n'
    table = FlowTable(FlowConfig(), [WatchRule(b'{"')])
    pk = tcp_session(C, S, 46001, 3333, 0.0, [(0, b"{"), (0, rest), (1, b"ok\n")],
                     close=False)
    pk += tcp_session(C, S, 46002, 3333, 0.0, [(0, b"{x" + rest), (1, b"ok\n")], close=False)
    for batch in iter_batches(str(write_pcap(tmp_path / "short.pcap", pk))):
        table.feed(batch)
    snap = table.snapshot()
    watched = {int(snap.cols["src_port"][i]): int(snap.watch[i]) for i in range(snap.n)}
    assert watched[46002] < 0, "a brace and then no JSON: not watched"
    w = watched[46001]
    assert w >= 0
    assert bytes(table.T.slab[w, 0, : table.T.w_fill[w, 0]]) == b"{" + rest
