"""The Stratum detector on the public corpus (where it must fire, flow by flow, and where it must
stay silent) and on JSON-RPC look-alikes built to tempt it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flowsense.detect.base import Alert
from flowsense.detect.stratum import StratumDetector
from tests.conftest import manifest, run_detectors
from tests.pcapgen import tcp_session, write_pcap

C, S = "10.2.3.4", "198.51.100.9"

# the pool endpoints of the corpus's mining captures (MANIFEST evidence) and what each speaks
POOL_VARIANTS = {
    ("94.23.199.191", 3333): "stratum-v1",  # ZCash stratum v1 (EWBF miner)
    ("116.211.167.195", 3333): "stratum-v1",
    ("185.71.66.39", 9999): "eth-proxy",  # eth_submitLogin / eth_getWork
    ("178.32.196.217", 9050): "xmr",  # xmr-stak-cpu login / job / submit
    ("94.23.36.128", 4444): "eth-proxy",
    ("91.121.222.33", 4444): "eth-proxy",
}


def detect(paths: list[Path]) -> list[Alert]:
    return run_detectors(paths, [StratumDetector()])


def _pools(evidence: str) -> list[tuple[str, int]]:
    m = re.search(r"pool servers: ([0-9.:;]+)", evidence)
    assert m, evidence
    return [(ep.rsplit(":", 1)[0], int(ep.rsplit(":", 1)[1])) for ep in m.group(1).split(";")]


def _rows(label: str | None = None) -> list[dict[str, str]]:
    return [r for r in manifest() if label is None or r["label"] == label]


@pytest.mark.parametrize("name", [r["file"] for r in _rows("stratum")])
def test_every_corpus_pool_flow_is_alerted_with_its_variant(corpus: Path, name: str) -> None:
    row = next(r for r in _rows("stratum") if r["file"] == name)
    alerts = detect([corpus / name])
    got = {(a.flow["dst_ip"], a.flow["dst_port"]): a for a in alerts}
    for pool in _pools(row["evidence"]):
        assert pool in got, f"{name}: no alert on the flow to {pool}"
        a = got[pool]
        assert (a.category, a.variant) == ("stratum-mining", POOL_VARIANTS[pool])
        assert a.evidence["methods"] and a.signature_id // 100000 == 33
        # the packet that completed the evidence: inside the flow, before its last packet
        ef = a.flow["eve_flow"]
        assert ef["start_ms"] * 10**6 <= a.timestamp_ns < ef["end_ms"] * 10**6
    assert len(alerts) == len(_pools(row["evidence"])), "one alert a flow, nothing else"


@pytest.mark.parametrize("name", [r["file"] for r in _rows() if r["label"] in
                                  ("benign", "ssh", "other-tunnel", "ssh-reverse")])
def test_silent_on_benign_ssh_and_tunnel_captures(corpus: Path, name: str) -> None:
    assert detect([corpus / name]) == []


def test_evidence_names_agent_wallet_and_counts(corpus: Path) -> None:
    alerts = detect([corpus / "ndpi" / "mining.pcapng"])
    xmr = next(a for a in alerts if a.variant == "xmr")
    assert xmr.evidence["agent"].startswith("xmr-stak-cpu/")
    assert xmr.evidence["worker"].endswith("...") and len(xmr.evidence["worker"]) <= 27
    assert xmr.evidence["jobs"] >= 1 and xmr.evidence["shares"] >= 1
    v1 = next(a for a in alerts if a.variant == "stratum-v1")
    assert v1.evidence["agent"] == "EWBF 0.3.4b"
    assert {"mining.subscribe", "mining.authorize", "mining.notify"} <= set(v1.evidence["methods"])


def _session(tmp_path: Path, name: str, client: list[dict], server: list[dict],
             port: int = 3333) -> Path:
    ex: list[tuple[int, bytes]] = []
    for k in range(max(len(client), len(server))):
        if k < len(client):
            ex.append((0, json.dumps(client[k]).encode() + b"\n"))
        if k < len(server):
            ex.append((1, json.dumps(server[k]).encode() + b"\n"))
    return write_pcap(tmp_path / name, tcp_session(C, S, 40000, port, 0.0, ex))


def test_opening_brace_sent_alone(tmp_path: Path) -> None:
    """A miner whose first segment is the opening brace alone is still watched and parsed past
    the 512-byte head (the watch rules' prefix is the brace and what JSON allows after it; a
    shorter first payload matches when its bytes agree)."""
    sub = json.dumps({"id": 1, "method": "mining.subscribe", "params": ["cgminer/4.10"]})
    auth = json.dumps({"id": 2, "method": "mining.authorize", "params": ["w.1", "x"]})
    pad = json.dumps({"id": 9, "method": "client.note", "params": ["x" * 600]})
    ex = [(0, b"{"), (0, sub[1:].encode() + b"\n" + pad.encode() + b"\n"),
          (1, b"ok\n"), (0, auth.encode() + b"\n"), (1, b"ok\n")]
    split = write_pcap(tmp_path / "split.pcap", tcp_session(C, S, 40001, 3333, 0.0, ex))
    (a,) = detect([split])
    assert a.variant == "stratum-v1"
    assert {"mining.subscribe", "mining.authorize"} <= set(a.evidence["methods"])


def test_key_order_and_nicehash_variants(tmp_path: Path) -> None:
    xmrig = _session(
        tmp_path, "xmrig.pcap",
        [{"id": 1, "jsonrpc": "2.0", "method": "login",
          "params": {"login": "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBY"
                     "BbV7ZCz3Lj4yXYa3rrtvq5ffRk", "pass": "x", "agent": "XMRig/6.21.0",
                     "algo": ["rx/0"]}},
         {"id": 2, "method": "submit", "params": {"id": "1", "job_id": "7", "nonce": "ab"}}],
        [{"id": 1, "jsonrpc": "2.0", "error": None,
          "result": {"id": "1", "job": {"blob": "0707", "job_id": "7", "target": "b88d0600",
                                        "algo": "rx/0"}, "status": "OK"}}],
    )
    (a,) = detect([xmrig])
    assert (a.variant, a.evidence["agent"], a.evidence["algo"]) == ("xmr", "XMRig/6.21.0", "rx/0")
    nicehash = _session(
        tmp_path, "nh.pcap",
        [{"id": 1, "method": "mining.subscribe",
          "params": ["NBMiner/42.3", "EthereumStratum/1.0.0"]},
         {"id": 2, "method": "mining.authorize", "params": ["3Jq.worker1", "x"]}],
        [{"id": 1, "result": [["mining.notify", "ae6812eb4cd7735a", "EthereumStratum/1.0.0"],
                              "080c"], "error": None},
         {"id": None, "method": "mining.set_difficulty", "params": [0.5]}],
        port=443,
    )
    (b,) = detect([nicehash])
    assert b.variant == "ethereumstratum" and b.evidence["difficulty"] == 0.5


LOOKALIKES = {
    "zabbix-login": ([{"jsonrpc": "2.0", "method": "user.login",
                       "params": {"user": "Admin", "password": "zabbix"}, "id": 1},
                      {"jsonrpc": "2.0", "method": "login", "params": {"login": "x"}, "id": 2}],
                     [{"jsonrpc": "2.0", "result": "0424bd59b807674191e7d77572075f33", "id": 1}]),
    "eth-node-api": ([{"jsonrpc": "2.0", "method": "eth_blockNumber", "params": [], "id": 1},
                      {"jsonrpc": "2.0", "method": "eth_getBalance", "params": ["0x1", "latest"],
                       "id": 2}],
                     [{"jsonrpc": "2.0", "id": 1, "result": "0x10d4f"}]),
    "language-server": ([{"jsonrpc": "2.0", "id": 1, "method": "initialize",
                          "params": {"processId": 1}},
                         {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {}}],
                        [{"jsonrpc": "2.0", "id": 1, "result": {"capabilities": {}}}]),
    "electrum": ([{"id": 0, "method": "server.version", "params": ["electrum", "1.4"]},
                  {"id": 1, "method": "blockchain.headers.subscribe", "params": []}],
                 [{"id": 1, "result": {"height": 800000, "hex": "00"}}]),
    "one-subscribe-only": ([{"id": 1, "method": "mining.subscribe", "params": []}], []),
}


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_jsonrpc_lookalikes_stay_silent(tmp_path: Path, name: str) -> None:
    client, server = LOOKALIKES[name]
    assert detect([_session(tmp_path, f"{name}.pcap", client, server)]) == []


def test_mining_words_outside_json_stay_silent(tmp_path: Path) -> None:
    row = (b"D\x00\x00\x00\x40\x00\x01alert tcp any any -> any any (content:\"mining.authorize\"; "
           b"content:\"mining.subscribe\"; content:\"xmrig\";)\n")
    path = write_pcap(tmp_path / "db.pcap", tcp_session(C, S, 40001, 5432, 0.0, [(1, row * 3)]))
    assert detect([path]) == []


def test_pool_names_from_login_and_subscribe_also_when_escaped() -> None:
    """The pool a miner names in its login or subscribe parameters is found whether or not the
    method is spelt with JSON escapes (the quick test for the method's words must not skip
    it); other JSON-RPC names none."""
    from flowsense.detect.stratum import pool_names

    login = {"id": 1, "method": "login", "params": {"login": "4Abc", "pass": "x",
                                                       "agent": "XMRig/6.21.0",
                                                       "pool": "XMR.NanoPool.org"}}
    plain = json.dumps(login).encode() + b"\n"
    escaped = plain.replace(b'"method": "login"', b'"method": "\\u006cogin"')
    assert b'"login"' not in escaped.replace(b'"login": ', b"")
    sub = b'{"id":1,"method":"mining.subscribe","params":["cgminer/4.10","eu.pool.example"]}\n'
    assert pool_names(plain) == ["xmr.nanopool.org"]
    assert pool_names(escaped.replace(b'"login": "4Abc", ', b"")) == ["xmr.nanopool.org"]
    assert pool_names(sub) == ["eu.pool.example"]
    other = b'{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["eu.pool.example"]}\n'
    assert pool_names(other) == []
