"""Hostile wire strings through every output: an SSH banner, a Stratum agent and login, an HTTP
Host and a TLS SNI carrying ``</script>``, U+202E, rich markup and spreadsheet formulas. Nothing
may execute or render as markup: in the HTML page (parsed, and in Chromium), in the terminal
summary, in EVE, and in the flows CSV."""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import open_in_chromium, parse
from tests.pcapgen import tcp_session, write_pcap

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "</script><script>alert(1)</script>"
RLO = "\u202e"
MARKUP = "[bold red]x[/] [link=file:///etc/passwd]y[/link]"
FORMULA = '=HYPERLINK("http://e/","x")'
C, S = "10.9.0.5", "198.51.100.20"

ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "p",
                "table", "tr", "th", "td", "details", "summary", "ol", "ul", "li", "section",
                "article", "dl", "dt", "dd", "code", "figure", "figcaption", "span", "a", "svg",
                "rect", "line", "text", "circle", "path"}
ALLOWED_ATTRS = {"lang", "charset", "http-equiv", "content", "name", "id", "class", "href",
                 "data-flow-id", "data-sid", "xmlns", "viewbox", "role", "aria-label", "x", "y",
                 "x1", "x2", "y1", "y2", "cx", "cy", "r", "width", "height", "fill",
                 "fill-opacity", "stroke", "stroke-width", "font-size", "text-anchor",
                 "dominant-baseline", "transform", "d"}


def client_hello(sni: bytes) -> bytes:
    """A TLS 1.2 ClientHello with one cipher suite and a server_name extension."""
    name = struct.pack(">BH", 0, len(sni)) + sni
    ext = struct.pack(">HHH", 0, len(name) + 2, len(name)) + name
    body = (b"\x03\x03" + b"\x11" * 32 + b"\x00" + struct.pack(">HH", 2, 0x1301) + b"\x01\x00"
            + struct.pack(">H", len(ext)) + ext)
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("hostile")
    pk = []
    # SSH on port 80 (odd-port): both banners hostile
    pk += tcp_session(C, S, 41000, 80, 1.0, [
        (0, f"SSH-2.0-{SCRIPT}\r\n".encode()),
        (1, f"SSH-2.0-{MARKUP} {RLO}{FORMULA}\r\n".encode())])
    # Stratum (xmr): the agent and the login (shown as the worker) hostile
    login = {"id": 1, "jsonrpc": "2.0", "method": "login",
             "params": {"login": FORMULA, "pass": "x", "agent": SCRIPT}}
    job = {"id": 1, "jsonrpc": "2.0", "error": None,
           "result": {"id": "1", "job": {"blob": "07", "job_id": "7", "target": "b88d0600"},
                      "status": "OK"}}
    submit = {"id": 2, "method": "submit", "params": {"id": "1", "job_id": "7", "nonce": "ab"}}
    pk += tcp_session(C, S, 41001, 3333, 2.0, [(0, json.dumps(login).encode() + b"\n"),
                                              (1, json.dumps(job).encode() + b"\n"),
                                              (0, json.dumps(submit).encode() + b"\n")])
    # an HTTP Host and a TLS SNI under a listed pool domain
    host = f"{SCRIPT}.{RLO}+cmd.pool.example"
    pk += tcp_session(C, S, 41002, 8080, 3.0, [
        (0, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())])
    sni = f"{MARKUP}.@SUM(1){RLO}.pool.example".encode()
    pk += tcp_session(C, S, 41003, 443, 4.0, [(0, client_hello(sni))])
    pk.sort(key=lambda p: p[0])
    pcap = write_pcap(d / "hostile.pcap", pk)
    pools = d / "pools.txt"
    pools.write_text("pool.example\n")
    page = d / "report.html"

    def run(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "flowsense", *args], capture_output=True,
                           timeout=300, cwd=REPO)
        assert r.returncode == 0, r.stderr
        return r

    common = (str(pcap), "--signatures", str(pools))
    eve = run("analyze", *common, "--format", "eve", "--report", str(page)).stdout.decode()
    summary = run("analyze", *common).stdout.decode()
    flows_csv = run("flows", str(pcap), "--format", "csv").stdout.decode()
    return {"dir": d, "eve": eve, "summary": summary, "csv": flows_csv, "page": page}


def test_the_capture_reaches_every_detector(hostile: dict) -> None:
    alerts = [json.loads(x) for x in hostile["eve"].splitlines()]
    assert sorted((a["alert"]["category"], a["alert"]["variant"]) for a in alerts) == [
        ("mining-pool", "http-host"), ("mining-pool", "sni"), ("ssh-tunnel", "odd-port"),
        ("stratum-mining", "xmr")]
    by = {a["alert"]["variant"]: a for a in alerts}
    # EVE: wire text is data, escaped by the one function (ALERTS.md encoding rule)
    assert by["odd-port"]["evidence"]["ssh"]["client"]["software_version"] == f"SSH-2.0-{SCRIPT}"
    server = by["odd-port"]["evidence"]["ssh"]["server"]["software_version"]
    assert server == f"SSH-2.0-{MARKUP} \\xe2\\x80\\xae{FORMULA}"
    assert by["xmr"]["evidence"]["agent"].startswith("</script><script>")
    assert by["http-host"]["evidence"]["matched"].startswith(SCRIPT.lower())
    assert by["sni"]["evidence"]["matched"].startswith("[bold red]x[/]")
    for line in hostile["eve"].splitlines():
        assert RLO not in line and all(ch >= " " for ch in line)


def test_html_has_no_injected_markup(hostile: dict) -> None:
    text = hostile["page"].read_text(encoding="utf-8")
    doc = parse(text)
    tags = {e.tag for e in doc.elements}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    for e in doc.elements:
        assert set(e.attrs) <= ALLOWED_ATTRS, (e.tag, e.attrs)
        assert e.attrs.get("href", "#").startswith("#")
    assert len(doc.find("style")) == 1 and not doc.find("script")
    # the strings are there as text, whole, where a responder reads them
    shown = "".join(doc.text)
    assert f"SSH-2.0-{SCRIPT}" in shown and MARKUP in shown and FORMULA in shown
    assert RLO not in shown and "\\xe2\\x80\\xae" in shown
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # and attributes (tooltips are titles, aria labels) never break out
    assert SCRIPT not in text and "<script" not in text.lower()


def test_chromium_runs_nothing(hostile: dict, tmp_path: Path) -> None:
    dom, console = open_in_chromium(hostile["page"], tmp_path)
    assert console == []
    doc = parse(dom)
    assert not doc.find("script")
    assert {e.tag for e in doc.elements} <= ALLOWED_TAGS | {"tbody"}  # the parser adds tbody
    assert f"SSH-2.0-{SCRIPT}" in "".join(doc.text)
    assert len(doc.find("article")) == 4


def test_terminal_summary_is_inert(hostile: dict) -> None:
    text = hostile["summary"]
    assert all(ch == "\n" or (ch >= " " and not 0x7F <= ord(ch) <= 0x9F) for ch in text)
    assert RLO not in text and "\x1b" not in text
    assert "by pool:" in text and "pool.example" in text
    # shown literally: plain text, never a console's markup
    assert f"SSH-2.0-{MARKUP} \\xe2\\x80\\xae{FORMULA}" in text
    assert "agent=</script><script>" in text


def test_flows_csv_cells_never_start_a_formula(hostile: dict) -> None:
    rows = list(csv.reader(io.StringIO(hostile["csv"])))
    assert len(rows) == 1 + 4
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), cell
