"""Render a result as Markdown, and splice it into the README between the results markers."""

from __future__ import annotations

import re
from typing import Any

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# The table's rows: (result key, tool, what is timed, the nfstream row it is compared to).
ROWS = [
    ("dpkt", "dpkt", "idiomatic Python loop, in-process", "nfstream"),
    ("nfstream", "nfstream", "NFStreamer iteration (meter process included)", "nfstream"),
    (
        "nfstream_process",
        "nfstream",
        "whole process: interpreter, import, iteration",
        "nfstream_process",
    ),
    ("flowsense_steady", "flowsense", "`compute_flows`, warm JIT (steady state)", "nfstream"),
    (
        "flowsense_process_warm",
        "flowsense",
        "whole process `flowsense flows`, warm numba cache",
        "nfstream_process",
    ),
    (
        "flowsense_process_cold",
        "flowsense",
        "whole process, cold numba cache (first start)",
        "nfstream_process",
    ),
]


def _n(x: float) -> str:
    return f"{x:,.0f}"


def markdown(res: dict[str, Any]) -> str:
    """The results table, the targets, memory per flow and the flow counts, as Markdown."""
    r, cap, box, git = res["results"], res["capture"], res["machine"], res["git"]
    live = _n(cap.get("max_concurrent_flows") or 0)
    commit = (git["commit"] or "none")[:12] + (" (dirty tree)" if git["dirty"] else "")
    lines = [
        f"Capture `{cap['path']}`: {_n(cap['packets'])} packets, {_n(cap['flows'] or 0)} flows "
        f"(max {live} live at once), {cap['bytes'] / 1e6:,.0f} MB. Measured {res['date']} on "
        f"{box['cpu']} ({box['usable_cores']} cores, {box['ram_gib']} GiB), commit `{commit}`.",
        "",
        "| tool | what is timed | runs | median s | packets/s median | min | max | x nfstream |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, tool, what, ref in ROWS:
        row = r.get(key)
        if not row or "median_s" not in row:
            reason = (row or {}).get("error", "not measured").splitlines()[0][:80]
            lines.append(f"| {tool} | {what} | - | - | - | - | - | {reason} |")
            continue
        base = r.get(ref, {}).get("median_s")
        ratio = f"{base / row['median_s']:.2f}x" if base else "-"
        lines.append(
            f"| {tool} | {what} | {row['runs']} | {row['median_s']:.3f} | {_n(row['pps_median'])} "
            f"| {_n(row['pps_min'])} | {_n(row['pps_max'])} | {ratio} |"
        )
    lines += [
        "",
        "x nfstream: in-process rows against nfstream's iteration, whole-process rows against "
        "nfstream's whole process. packets/s min and max come from the slowest and fastest run.",
        "",
    ]
    for t in res.get("targets", []):
        got = (
            "not measured"
            if t["ratio"] is None
            else f"{t['ratio']:.2f}x ({'met' if t['met'] else 'NOT met'})"
        )
        lines.append(f"- {t['name']}: target >= {t['target']}x, measured {got}")
    cost = r.get("detector_cost")
    if cost:
        lines.append(
            f"- detectors ({', '.join(cost['detectors'])}) on top of the aggregation: "
            f"{cost['median'] * 100:+.1f}% time (median of {len(cost['runs'])}; pipeline with "
            "and without them, same process, warm)"
        )
    lines += _memory_lines(res.get("memory") or {})
    counts = res.get("flow_counts", {})
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "agree")
    lines.append(f"- flow counts: {shown} ({'all agree' if counts.get('agree') else 'DISAGREE'})")
    return "\n".join(lines) + "\n"


def _memory_lines(mem: dict[str, Any]) -> list[str]:
    if "bytes_per_flow" not in mem:
        return [f"- memory per live flow: not measured ({mem.get('error', 'skipped')[:100]})"]
    sizes = " and ".join(_n(n) for n in mem["flows_expected"])
    verdict = "met" if mem["met"] else "NOT met"
    lines = [
        f"- memory per live flow (RSS slope between {sizes} live flows, `{mem['basis']}`): "
        f"{_n(mem['bytes_per_flow'])} B (target <= {_n(mem['target_bytes'])} B, {verdict})"
    ]
    anon = mem.get("table", {}).get("bytes_per_flow_anon")
    if anon is not None:
        lines.append(f"- the same slope in anonymous memory alone: {_n(anon)} B")
    comp = mem.get("compute", {})
    if "bytes_per_flow_peak" in comp:
        lines.append(
            f"- whole `compute_flows` per flow: peak {_n(comp['bytes_per_flow_peak'])} B "
            f"(table and exported frames), held with the result {_n(comp['bytes_per_flow'])} B"
        )
    return lines


def update_readme(path: str, section: str) -> None:
    """Replace the text between the results markers of ``path`` with ``section``."""
    with open(path) as fh:
        text = fh.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {BEGIN} ... {END} section")
    text = pattern.sub(lambda _: f"{BEGIN}\n{section}{END}", text)
    with open(path, "w") as fh:
        fh.write(text)
