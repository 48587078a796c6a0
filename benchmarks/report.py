"""Render a result as Markdown, and splice it into the READMEs between their markers."""

from __future__ import annotations

import re
import textwrap
from typing import Any

from benchmarks import accuracy

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MAIN_BEGIN, MAIN_END = "<!-- bench:begin -->", "<!-- bench:end -->"

# The table's rows: (result key, tool, what is timed, the nfstream row it is compared to).
ROWS = [
    ("dpkt", "dpkt", "idiomatic Python loop, in-process", "nfstream"),
    (
        "scapy",
        "scapy",
        "idiomatic Python loop, in-process, on a subsample (extrapolated)",
        "nfstream",
    ),
    ("nfstream", "nfstream", "NFStreamer iteration (meter process included)", "nfstream"),
    (
        "nfstream_process",
        "nfstream",
        "whole process: interpreter, import, iteration",
        "nfstream_process",
    ),
    ("tshark_process", "tshark", "whole process: `-q -z conv,tcp -z conv,udp`", "nfstream_process"),
    ("ndpi", "ndpiReader", "its own packet-processing time (nDPI dissection on)", "nfstream"),
    ("ndpi_process", "ndpiReader", "whole process `ndpiReader -i`", "nfstream_process"),
    ("flowsense_steady", "flowsense", "`compute_flows`, warm JIT (steady state)", "nfstream"),
    (
        "flowsense_analyze_steady",
        "flowsense",
        "pipeline with every detector (`analyze`'s job), warm JIT",
        "nfstream",
    ),
    (
        "flowsense_process_warm",
        "flowsense",
        "whole process `flowsense flows`, one core, warm numba cache",
        "nfstream_process",
    ),
    (
        "flowsense_analyze_process_warm",
        "flowsense",
        "whole process `flowsense analyze --format eve`, one core, warm cache",
        "nfstream_process",
    ),
    (
        "flowsense_jobs_process",
        "flowsense",
        "whole process `flowsense flows --jobs <cores>`",
        "nfstream_process",
    ),
    (
        "flowsense_process_cold",
        "flowsense",
        "whole process, cold numba cache (first start)",
        "nfstream_process",
    ),
]
PLOT_TITLES = {
    "throughput": "Throughput on the main capture",
    "concurrent_flows": "Throughput and memory against concurrent flows",
    "size_mix": "Packet-size mix and capture size",
    "detectors": "What each detector costs",
    "accuracy": "Accuracy per group, flowsense and nDPI",
    "cores": "Cores",
}


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _first_line(x: Any, width: int = 90) -> str:
    return str(x).splitlines()[0][:width] if x else ""


def markdown(res: dict[str, Any]) -> str:
    """Every section of a result, as Markdown (no images)."""
    lines = _header(res) + _throughput(res) + _startup(res) + _counts(res)
    lines += _memory_lines(res.get("memory") or {})
    lines += _drift_lines(res)
    scale = res.get("scaling") or {}
    if scale:
        lines += ["", "### Scaling", ""] + _scaling(scale)
    acc = res.get("accuracy") or {}
    if acc:
        lines += ["", "### Accuracy", ""]
        lines += (
            [f"not measured: {acc['error']}"] if "error" in acc else accuracy.markdown_lines(acc)
        )
    lines += _gaps(res)
    return "\n".join(lines) + "\n"


def _header(res: dict[str, Any]) -> list[str]:
    cap, box, git, v = res["capture"], res["machine"], res["git"], res["versions"]
    live = _n(cap.get("max_concurrent_flows") or 0)
    commit = (git["commit"] or "none")[:12] + (" (dirty tree)" if git["dirty"] else "")
    load = box.get("load_at_start"), box.get("load_avg_1_5_15")
    names = ("python", "numpy", "numba", "dpkt", "scapy", "nfstream", "tshark", "ndpiReader")
    vers = ", ".join(f"{k} {v.get(k) or 'absent'}" for k in names)
    return [
        f"Mode `{res['mode']}`{' (conforming)' if res.get('conforming') else ''}. Capture "
        f"`{cap['path']}`: {_n(cap['packets'])} packets, {_n(cap['flows'] or 0)} flows "
        f"(max {live} live at once), {cap['bytes'] / 1e6:,.0f} MB. Measured {res['date']} "
        f"(started {res.get('started', '?')}) on {box['cpu']} ({box['usable_cores']} cores, "
        f"{box['ram_gib']} GiB), load average (1/5/15 min) {load[0]} at the start and "
        f"{load[1]} at the end; commit `{commit}`.",
        "",
        f"Versions: {vers}.",
        "",
    ]


def _throughput(res: dict[str, Any]) -> list[str]:
    r = res["results"]
    lines = [
        "| tool | what is timed | runs | median s | packets/s median | min | max | x nfstream |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    skipped = res.get("skipped", {})
    for key, tool, what, ref in ROWS:
        row = r.get(key)
        if not row or "median_s" not in row:
            why = next(
                (w for t, w in skipped.items() if key.startswith(t.replace("-", "_"))), None
            ) or (row or {}).get("error", "not measured")
            lines.append(f"| {tool} | {what} | - | - | - | - | - | {_first_line(why, 80)} |")
            continue
        base = r.get(ref, {}).get("median_s")
        ratio = f"{base / row['median_s']:.2f}x" if base else "-"
        lines.append(
            f"| {tool} | {what} | {row['runs']} | {row['median_s']:.3f} | {_n(row['pps_median'])} "
            f"| {_n(row['pps_min'])} | {_n(row['pps_max'])} | {ratio} |"
        )
    s = res.get("settings", {})
    lines += [
        "",
        "x nfstream: in-process rows against nfstream's iteration, whole-process rows against "
        "nfstream's whole process. packets/s min and max come from the slowest and fastest run. "
        f"scapy: the first {_n(s.get('scapy_packets', 0))} packets timed and the time scaled to "
        f"the whole capture. tshark: {s.get('tshark_runs', '?')} run(s) (about a minute and "
        "1.7 GB each on the full capture). ndpiReader does more than the pinned job (nDPI "
        "dissection of every flow's first packets); tshark dissects every packet fully.",
        "",
    ]
    for t in res.get("targets", []):
        got = (
            "not measured"
            if t["ratio"] is None
            else f"{t['ratio']:.2f}x ({'met' if t['met'] else 'NOT met'})"
        )
        lines.append(f"- {t['name']}: target >= {t['target']}x, measured {got}")
    return lines


def _startup(res: dict[str, Any]) -> list[str]:
    st = res.get("startup") or {}
    r = res["results"]
    steady = r.get("flowsense_steady", {})
    lines = ["", "Start-up, JIT and steady state apart (flowsense):", ""]
    parts = [f"bare `python -c pass` {st.get('python', '-')} s"]
    if steady.get("import_s"):
        imp = sorted(steady["import_s"])[len(steady["import_s"]) // 2]
        warm = sorted(steady["warmup_s"])[len(steady["warmup_s"]) // 2]
        parts += [
            f"importing the pipeline {imp:.2f} s",
            f"first pass in a process (loads the cached kernels, warms the page cache) "
            f"{warm:.2f} s",
            f"steady pass {steady['median_s']:.2f} s",
        ]
    cold = r.get("flowsense_process_cold", {})
    if "median_s" in cold:
        parts.append(f"whole first start with an empty cache (compiling) {cold['median_s']:.1f} s")
    lines.append("- " + "; ".join(parts) + ".")
    tools = [(k, v) for k, v in st.items() if k not in ("capture", "python", "packets")]
    if tools:
        cells = ", ".join(
            f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} failed ({_first_line(v, 60)})"
            for k, v in tools
        )
        lines.append(
            f"- whole process on `{st.get('capture')}` (the main capture's first "
            f"{st.get('packets', '?')} packets: start-up alone; flowsense with a warm cache): "
            f"{cells}."
        )
    return lines


def _counts(res: dict[str, Any]) -> list[str]:
    counts = res.get("flow_counts", {})
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "agree")
    lines = [
        f"- flow counts (asserted): {shown} ({'all agree' if counts.get('agree') else 'DISAGREE'})"
    ]
    pc = res.get("peer_counts") or {}
    bits = []
    if "tshark_tcp_udp" in pc:
        bits.append(
            f"tshark {pc['tshark_tcp_udp']:,} TCP+UDP conversations "
            f"(expected {pc.get('expected_tcp_udp', '?'):,})"
        )
    if "ndpi" in pc:
        bits.append(f"ndpiReader {pc['ndpi']:,} flows (expected {pc.get('expected', '?'):,})")
    head = pc.get("scapy_head")
    if head:
        bits.append(
            f"scapy {head['flows']:,} flows in the first {head['packets']:,} packets "
            f"(dpkt {head.get('dpkt_flows', '?')})"
        )
    if bits:
        lines.append("- peers' counts: " + "; ".join(bits))
    alerts = res["results"].get("flowsense_steady", {}).get("alerts")
    if alerts is not None:
        lines.append(f"- alerts on the main capture: {alerts or 'none'}")
    return lines


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


def peak_per_flow_unmapped(row: dict[str, Any]) -> int | None:
    """Peak RSS growth per flow less the capture's size: flowsense memory-maps the capture, and
    every page of it it walked counts in RSS until the map is closed."""
    fs = row.get("flowsense", {})
    if "peak_growth_kib" not in fs or not fs.get("flows"):
        return None
    return round(max(fs["peak_growth_kib"] * 1024 - row["bytes"], 0) / fs["flows"])


def _fs_cells(row: dict[str, Any]) -> str:
    fs = row.get("flowsense", {})
    if "pps" not in fs:
        return f"{_first_line(fs.get('error', 'not measured'), 60)} | - | - | - | - | -"
    nf = row.get("nfstream", {})
    nf_cell = _n(nf["pps"]) if "pps" in nf else "-"
    x = f"{row['x_nfstream']:.1f}x" if "x_nfstream" in row else "-"
    unmapped = peak_per_flow_unmapped(row)
    return (
        f"{_n(fs['pps'])} | {fs['gbit_s']:.2f} | {_n(fs['peak_bytes_per_flow'])} | "
        f"{_n(unmapped) if unmapped is not None else '-'} | {nf_cell} | {x}"
    )


def _scaling(sc: dict[str, Any]) -> list[str]:
    head = (
        "flowsense packets/s (steady) | Gbit/s | peak RSS B per flow | less the mapped capture "
        "| nfstream packets/s | x nfstream |"
    )
    lines: list[str] = []
    cf = sc.get("concurrent_flows")
    if isinstance(cf, list):
        lines += [
            "Concurrent flows (`live-N`: N TCP flows all open at the end, 5 packets each):",
            "",
            "| live flows | packets | " + head,
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {_n(r['live_flows'])} | {_n(r['packets'])} | {_fs_cells(r)} |" for r in cf]
        lines.append("")
    sm = sc.get("size_mix")
    if isinstance(sm, list):
        lines += [
            "Packet-size mix (the realistic mix with more or fewer full segments):",
            "",
            "| mix | packets | mean frame B | " + head,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['size_mix']} | {_n(r['packets'])} | {r['mean_frame_bytes']:.0f} | "
            f"{_fs_cells(r)} |"
            for r in sm
        ]
        lines.append("")
    cs = sc.get("capture_size")
    if isinstance(cs, list):
        lines += [
            "Capture size (whole process, start-up included; warm numba cache):",
            "",
            "| packets | MB | flowsense s | packets/s | nfstream s | packets/s | x |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in cs:
            f, n = r.get("flowsense_process_s"), r.get("nfstream_process_s")
            x = f"{n / f:.1f}x" if f and n else "-"
            lines.append(
                f"| {_n(r['packets'])} | {r['bytes'] / 1e6:,.1f} | {f'{f:.2f}' if f else '-'} | "
                f"{_n(r['flowsense_pps']) if f else '-'} | {f'{n:.2f}' if n else '-'} | "
                f"{_n(r['nfstream_pps']) if n else '-'} | {x} |"
            )
        lines.append("")
    co = sc.get("cores") or {}
    if co.get("rows"):
        lines += [
            "Cores (`flowsense flows --jobs N`, whole process, main capture):",
            "",
            "| jobs | median s | packets/s |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {r['jobs']} | {r['median_s']:.3f} | {_n(r['pps_median'])} |" for r in co["rows"]
        ]
        lines.append("")
    else:
        lines += [f"Cores: not measured: {co.get('skipped') or co.get('error', 'skipped')}.", ""]
    det = sc.get("detectors") or {}
    if "configs" in det:
        lines += [
            f"Detectors on `{det['capture']}` (the pipeline as `analyze` runs it, warm, "
            f"same process; {det.get('rounds', 3)} rounds, each running every configuration "
            "once; extra time: of the medians, and the median of each round's time over the "
            "same round's bare pipeline):",
            "",
            "| detectors | median s | extra time | extra time, by round | alerts raised |",
            "|---|---:|---:|---:|---|",
        ]
        for name, c in det["configs"].items():
            alerts = ", ".join(f"{k} {v}" for k, v in c["alerts"].items()) or "none"
            paired = c.get("paired_extra_pct")
            by_round = "-" if paired is None else f"{paired:+.1f}%"
            lines.append(f"| {name} | {c['median_s']:.3f} | {c['extra_pct']:+.1f}% | "
                         f"{by_round} | {alerts} |")
        lines.append("")
        lines += _fresh_lines(det.get("fresh_process") or {})
    elif det:
        lines += [f"Detectors: not measured: {det.get('error')}", ""]
    return lines


def _fresh_lines(fresh: dict[str, Any]) -> list[str]:
    """Issue 4's figure measured one timed pass a fresh process (``scaling.fresh_passes``)."""
    if "error" in fresh:
        return [f"Stratum and pools, one pass a process: not measured: {fresh['error']}", ""]
    if "seconds" not in fresh:
        return []
    w = fresh["seconds"]
    med = w["median"]
    return [
        f"Stratum and pools over the bare pipeline, one timed pass a fresh process after an "
        f"untimed pass over the same capture (issue 4's figure; {fresh['rounds']} rounds, "
        f"each running both): {med['none']:.3f} s against {med['stratum+pools']:.3f} s, "
        f"{w['extra_pct']:+.1f}% by medians, {w['paired_extra_pct']:+.1f}% by round, "
        f"{w['fastest_extra_pct']:+.1f}% by fastest pass.",
        "",
    ]


def drift(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """How far this run's figures are from a previous result's: per throughput row the ratio of
    medians (new / old packets a second) and of the x-nfstream ratios, flagged beyond 20 %."""
    if old.get("mode") != new.get("mode") or old.get("capture", {}).get("path") != new.get(
        "capture", {}
    ).get("path"):
        return {}
    rows: dict[str, Any] = {}
    o, n = old.get("results", {}), new.get("results", {})
    for key, _, _, ref in ROWS:
        a, b = o.get(key, {}), n.get(key, {})
        if "pps_median" not in a or "pps_median" not in b:
            continue
        row: dict[str, Any] = {"pps": round(b["pps_median"] / a["pps_median"], 3)}
        ra, rb = o.get(ref, {}).get("median_s"), n.get(ref, {}).get("median_s")
        if ra and rb and key != ref:
            row["x_ref"] = round((rb / b["median_s"]) / (ra / a["median_s"]), 3)
        row["beyond_20pct"] = any(abs(v - 1) > 0.2 for k, v in row.items() if k != "beyond_20pct")
        rows[key] = row
    return {
        "against": old.get("date"),
        "commit": (old.get("git") or {}).get("commit"),
        "rows": rows,
    }


def _drift_lines(res: dict[str, Any]) -> list[str]:
    d = res.get("drift") or {}
    if not d.get("rows"):
        return []
    far = {k: v for k, v in d["rows"].items() if v["beyond_20pct"]}
    cells = ", ".join(
        f"{k} {v['pps']:.2f}x" + (f" (ratio {v['x_ref']:.2f}x)" if "x_ref" in v else "")
        for k, v in far.items()
    )
    return [
        "",
        f"- against the previous published run ({d['against']}): "
        + (f"beyond 20 %: {cells}" if far else "every throughput row within 20 %"),
    ]


def _gaps(res: dict[str, Any]) -> list[str]:
    lines = []
    for key, why in (res.get("skipped") or {}).items():
        lines.append(f"- skipped {key}: {why}")
    for key, err in (res.get("errors") or {}).items():
        lines.append(f"- ERROR {key}: {_first_line(err, 150)}")
    secs = res.get("section_seconds")
    if secs:
        lines.append(
            "- wall time per section: " + ", ".join(f"{k} {v:,.0f} s" for k, v in secs.items())
        )
    return ["", "### Skipped, errors and run time", ""] + lines if lines else []


def standalone(res: dict[str, Any], body: str) -> str:
    """``summary.md``: the Markdown with the plots beside it."""
    imgs = [f"![{PLOT_TITLES.get(p, p)}]({p}.png)" for p in res.get("plots", [])]
    return f"# flowsense benchmark ({res['mode']})\n\n{body}\n" + "\n\n".join(imgs) + "\n"


def readme_section(res: dict[str, Any], body: str) -> str:
    """The README's results section: the summary and the committed plots under results/."""
    imgs = [f"![{PLOT_TITLES.get(p, p)}](results/{p}.png)" for p in res.get("plots", [])]
    return body + "\n" + "\n\n".join(imgs) + "\n"


def _splice(path: str, begin: str, end: str, section: str) -> None:
    with open(path) as fh:
        text = fh.read()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {begin} ... {end} section")
    text = pattern.sub(lambda _: f"{begin}\n{section}{end}", text)
    with open(path, "w") as fh:
        fh.write(text)


def update_readme(path: str, section: str) -> None:
    """Replace the text between the results markers of ``path`` with ``section``."""
    _splice(path, BEGIN, END, section)


def update_main_readme(path: str, res: dict[str, Any]) -> None:
    """The figures the project README quotes, regenerated from the same result."""
    r = res["results"]

    def pps(key: str) -> str:
        v = r.get(key, {}).get("pps_median")
        return f"{v / 1e6:.2f} million" if v else "?"

    def ratio(key: str, ref: str) -> str:
        a, b = r.get(key, {}).get("median_s"), r.get(ref, {}).get("median_s")
        return f"{b / a:.1f}x" if a and b else "?"

    mem = res.get("memory", {}).get("bytes_per_flow")
    acc = (res.get("accuracy") or {}).get("groups", {}).get("_all", {})
    text = (
        f"In short, on the machine of the last full run ({res['machine']['cpu']}, "
        f"{res['machine']['usable_cores']} cores, {res['date'][:10]}, load average "
        f"{res['machine']['load_avg_1_5_15'][1]} over its last 5 minutes), flowsense aggregates "
        f"{pps('flowsense_steady')} packets a second in steady state "
        f"({ratio('flowsense_steady', 'nfstream')} the pinned nfstream, "
        f"{ratio('flowsense_steady', 'dpkt')} dpkt), {pps('flowsense_process_warm')} a second "
        f"as a whole `flowsense flows` process "
        f"({ratio('flowsense_process_warm', 'nfstream_process')} nfstream's whole process), "
        f"and holds a live flow in "
        f"{_n(mem) + ' B' if mem else '?'}. On {acc.get('captures', '?')} labelled captures it is "
        f"right on every category in {acc.get('flowsense_correct', '?')}, nDPI 4.2 in "
        f"{acc.get('ndpi_correct', '?')}; the benchmark README lists every gap.\n"
    )
    goals = "; ".join(
        f"{t['name']}: {t['ratio']}x against a goal of {t['target']}x "
        f"({'met' if t['met'] else 'not met'})"
        for t in res.get("targets", [])
    )
    if goals:
        text += f"Goals we set ourselves: {goals}.\n"
    wrapped = "\n".join(textwrap.fill(par, 100) for par in text.strip().split("\n")) + "\n"
    _splice(path, MAIN_BEGIN, MAIN_END, wrapped)
