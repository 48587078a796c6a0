"""``analyze --report``: one self-contained page with the alerts, their evidence and the plots,
checked by parsing it and by opening it in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from tests.browser import open_in_chromium, parse

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps" / "corpus"


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowsense", "analyze", *args],
                          capture_output=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The report of the bundled captures, and the EVE alerts of the same run."""
    out = tmp_path_factory.mktemp("report")
    page = out / "report.html"
    r = analyze(str(PCAPS), "--format", "eve", "--report", str(page))
    assert r.returncode == 0, r.stderr
    return page, [json.loads(x) for x in r.stdout.decode().splitlines()]


def test_page_is_self_contained(bundled: tuple[Path, list[dict]]) -> None:
    page, _ = bundled
    text = page.read_text(encoding="utf-8")
    doc = parse(text)
    assert not doc.find("script") and not doc.find("link") and not doc.find("img")
    assert not doc.find("iframe") and not doc.find("object")
    for el in doc.elements:
        for name, value in el.attrs.items():
            assert not name.startswith("on"), (el.tag, name)
            if name in ("href", "src", "xlink:href", "action"):
                assert value.startswith("#"), (el.tag, name, value)  # in-page links only
    assert "url(" not in text and "@import" not in text
    (csp,) = [m.attrs["content"] for m in doc.find("meta", http_equiv="Content-Security-Policy")]
    assert "default-src 'none'" in csp and "script-src 'none'" in csp
    (style,) = doc.find("style")
    digest = base64.b64encode(hashlib.sha256("".join(style.text).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp  # the one stylesheet, pinned


def test_alerts_by_category_strongest_first(bundled: tuple[Path, list[dict]]) -> None:
    page, alerts = bundled
    doc = parse(page.read_text(encoding="utf-8"))
    articles = doc.find("article")
    shown = [(int(a.attrs["data-flow-id"]), int(a.attrs["data-sid"])) for a in articles]
    assert sorted(shown) == sorted((a["flow_id"], a["alert"]["signature_id"]) for a in alerts)
    # category sections in order of their strongest alert; alerts strongest first within
    strength = {(a["flow_id"], a["alert"]["signature_id"]):
                (a["alert"]["severity"], -a["alert"]["confidence"]) for a in alerts}
    cats = [s.attrs["id"] for s in doc.find("section")]
    assert cats == ["cat-stratum-mining", "cat-reverse-ssh", "cat-ssh-tunnel", "cat-mining-pool"]
    assert [strength[k] for k in shown] == sorted(strength[k] for k in shown)
    # the evidence is there: both SSH versions of the reverse-SSH alert, the miner's agent
    text = "".join(doc.text)
    assert "SSH-2.0-dropbear_2018.76" in text and "SSH-2.0-AsyncSSH_2.8.1" in text
    assert "xmr-stak-cpu/1.3.0-1.5.0" in text
    assert "reverse-ssh/role-reversal" in text


def _payload_packets(pcap: Path) -> dict[int, int]:
    """Payload-carrying packets a direction (0: from the SYN's sender), retransmissions out,
    from the flow's first payload on (where the SSH watch lease begins)."""
    counts = {0: 0, 1: 0}
    client = None
    top: dict[int, int] = {}
    for _, buf in dpkt.pcap.Reader(open(pcap, "rb")):
        seg = dpkt.ethernet.Ethernet(buf).data.data
        if client is None and seg.flags & dpkt.tcp.TH_SYN and not seg.flags & dpkt.tcp.TH_ACK:
            client = seg.sport
        d = 0 if seg.sport == client else 1
        if not seg.data:
            continue
        end = seg.seq + len(seg.data)
        if end <= top.get(d, 0):
            continue
        top[d] = end
        counts[d] += 1
    return counts


def test_reverse_ssh_trace_plot(bundled: tuple[Path, list[dict]]) -> None:
    page, alerts = bundled
    text = page.read_text(encoding="utf-8")
    (rssh,) = [a for a in alerts if a["alert"]["category"] == "reverse-ssh"]
    m = re.search(rf'<article[^>]*data-flow-id="{rssh["flow_id"]}"[^>]*>(.*?)</article>', text,
                  re.S)
    assert m is not None
    fig = parse(m.group(1))
    assert fig.find("figure", **{"class": "trace"})
    stems = {p.attrs["stroke"]: p.attrs["d"].count("M") for p in fig.find("path")}
    want = _payload_packets(PCAPS / "zeek-reverse-ssh.pcap")
    assert stems == {"#1f6fb2": want[0], "#c0392b": want[1]}  # up: to server, down: to client
    zero = set()
    for p in fig.find("path"):  # every stem starts on the zero line and goes its own way
        for _x0, y0, y1 in re.findall(r"M([\d.]+) ([\d.]+)V([\d.]+)", p.attrs["d"]):
            zero.add(y0)
            assert (float(y1) < float(y0)) == (p.attrs["stroke"] == "#1f6fb2")
    assert len(zero) == 1
    # no other alert gets a trace
    assert text.count('class="trace"') == 1


def test_duration_bytes_plot_counts_every_flow(bundled: tuple[Path, list[dict]]) -> None:
    page, alerts = bundled
    text = page.read_text(encoding="utf-8")
    section = text[text.index('id="flows"'):]
    doc = parse(section)
    cells = [int(k) for k in re.findall(r"<rect [^>]*><title>(\d+) flow\(s\)</title></rect>",
                                        section)]
    assert len(cells) == len(doc.find("rect")) - 1  # every cell but the plot's background
    assert sum(cells) == 1 + 1 + 1 + 13 + 2  # pcaps/README.md: the bundled captures' flows
    circles = doc.find("circle")
    assert len(circles) == len({a["flow_id"] for a in alerts})


def test_chromium_opens_it_without_console_errors(bundled: tuple[Path, list[dict]],
                                                  tmp_path: Path) -> None:
    # the check can fail: a page with a script error and a CSP refusal is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><meta http-equiv=\"Content-Security-Policy\" "
                   "content=\"style-src 'none'\"><style>p{}</style><p>x</p>"
                   "<script>missing()</script>")
    _, console = open_in_chromium(bad, tmp_path)
    assert len(console) == 2, console
    assert "Content Security Policy" in console[0] and "ReferenceError" in console[1]
    page, alerts = bundled
    dom, console = open_in_chromium(page, tmp_path)
    assert console == []
    doc = parse(dom)
    assert not doc.find("script")
    shown = sorted((int(a.attrs["data-flow-id"]), int(a.attrs["data-sid"]))
                   for a in doc.find("article"))
    assert shown == sorted((a["flow_id"], a["alert"]["signature_id"]) for a in alerts)
    assert len(doc.find("svg")) == 3  # timeline, one reverse-SSH trace, duration/bytes


def test_report_path_errors_before_reading(tmp_path: Path) -> None:
    r = analyze(str(PCAPS), "--report", str(tmp_path / "missing" / "r.html"))
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1 and "cannot write" in r.stderr.decode()
    r = analyze(str(PCAPS), "--report", "-")
    assert r.returncode == 2 and not r.stdout
