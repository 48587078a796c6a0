"""The benchmark suite runs end to end: ``python -m benchmarks.run --quick`` into a temporary
folder writes its JSON, Markdown summary and plots, with content that makes sense.

No timing is asserted (speed is only ever a ratio inside one benchmark run); what is asserted is
that every section was measured or says why not, that the tools agree on the flow count of the
generated capture, and that the accuracy table scores the bundled captures against their labels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return out, r.returncode, r.stderr


def test_quick_run_succeeds(quick_run: tuple[Path, int, str]) -> None:
    out, rc, stderr = quick_run
    assert rc == 0, stderr[-3000:]
    assert {"latest.json", "summary.md"} <= {p.name for p in out.iterdir()}


def test_result_json_is_complete(quick_run: tuple[Path, int, str]) -> None:
    out, _, _ = quick_run
    res = json.loads((out / "latest.json").read_text())
    assert res["mode"] == "quick" and res["conforming"] is False
    # machine, versions and date recorded with every result
    assert res["date"][:2] == "20" and res["machine"]["usable_cores"] >= 1
    assert res["versions"]["python"] and res["versions"]["numba"] and res["versions"]["dpkt"]
    assert res["git"]["flowsense_sources"]
    # the generated capture: every asserted tool found the sidecar's flows
    fc = res["flow_counts"]
    assert fc["agree"] is True
    assert fc["expected"] == res["capture"]["flows"] > 1_000
    assert fc["flowsense_steady"] == fc["dpkt"] == fc["expected"]
    r = res["results"]
    for row in ("dpkt", "flowsense_steady", "flowsense_analyze_steady", "flowsense_process_warm"):
        assert r[row]["median_s"] > 0 and r[row]["pps_median"] > 0, row
    # a peer is measured, or skipped with a reason: never silently absent
    for tool, rows in (("scapy", ["scapy"]), ("nfstream", ["nfstream", "nfstream_process"]),
                       ("tshark", ["tshark_process"]), ("ndpi", ["ndpi_process"])):
        for row in rows:
            assert "median_s" in r[row] or tool in res["skipped"], row
    if "scapy" not in res["skipped"]:
        head = res["peer_counts"]["scapy_head"]
        assert head["flows"] == head["dpkt_flows"] > 0
    if "tshark" not in res["skipped"]:
        assert res["peer_counts"]["tshark_tcp_udp"] == res["peer_counts"]["expected_tcp_udp"]
    assert "median_s" in r["flowsense_jobs_process"] or "flowsense-jobs" in res["skipped"]
    assert res["startup"]["flowsense-cli"] > 0
    assert res["memory"]["bytes_per_flow"] > 0


def test_scaling_and_detectors_measured(quick_run: tuple[Path, int, str]) -> None:
    out, _, _ = quick_run
    sc = json.loads((out / "latest.json").read_text())["scaling"]
    live = sc["concurrent_flows"]
    assert [r["live_flows"] for r in live] == [r["flowsense"]["flows"] for r in live]
    assert all(r["flowsense"]["pps"] > 0 for r in live)
    mixes = {r["size_mix"]: r["mean_frame_bytes"] for r in sc["size_mix"]}
    assert mixes["small"] < mixes["default"] < mixes["large"]
    det = sc["detectors"]["configs"]
    assert set(det) >= {"none", "all", "stratum"}
    # the stratum detector had work to do on the generated capture: its miners
    assert det["stratum"]["alerts"].get("stratum-mining", 0) > 0
    assert det["none"]["alerts"] == {}
    # issue 4's figure, one timed pass a fresh process: both configurations, every round
    fresh = sc["detectors"]["fresh_process"]
    rounds = fresh["rounds"]
    assert rounds >= 1
    for label in ("none", "stratum+pools"):
        assert len(fresh["seconds"]["runs"][label]) == rounds
        assert min(fresh["seconds"]["runs"][label]) > 0


def test_accuracy_scores_bundled_captures(quick_run: tuple[Path, int, str]) -> None:
    out, _, _ = quick_run
    acc = json.loads((out / "latest.json").read_text())["accuracy"]
    rows = {r["capture"]: r for r in acc["captures"]}
    assert "pcaps/corpus/zeek-reverse-ssh.pcap" in rows
    reverse = rows["pcaps/corpus/zeek-reverse-ssh.pcap"]
    assert reverse["expect"] == ["reverse-ssh"]
    assert "reverse-ssh" in reverse["flowsense"]["fired"]
    miner = rows["pcaps/corpus/ndpi-xmr-stak-monero-stratum.pcap"]["flowsense"]
    assert miner["fired"].get("mining", 0) >= 1 and miner["false"] == {}
    assert acc["groups"]["reverse-ssh"]["ndpi"]["verdict"] is False  # nDPI has none
    assert acc["groups"]["_all"]["captures"] == len(rows)


def test_summary_and_plots(quick_run: tuple[Path, int, str]) -> None:
    out, _, _ = quick_run
    res = json.loads((out / "latest.json").read_text())
    md = (out / "summary.md").read_text()
    for needle in ("| tool | what is timed", "### Scaling", "### Accuracy", "flowsense"):
        assert needle in md
    assert res["versions"]["numba"] in md
    if importlib.util.find_spec("matplotlib") is None:
        # without the bench extra the run still completes, and says what it left out
        assert res["plots"] == [] and "matplotlib" in res["skipped"]["plots"]
        assert "skipped plots: matplotlib" in md
        return
    assert {"throughput", "concurrent_flows", "size_mix", "detectors", "accuracy"} <= set(
        res["plots"]
    )
    for name in res["plots"]:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, name
        assert f"({name}.png)" in md
