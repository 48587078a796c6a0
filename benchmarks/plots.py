"""PNG plots of a result (matplotlib, headless). Each plot is drawn only from what was measured;
a section that was skipped gives no plot. Returns the names of the plots written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import measure

SHORT = {  # the throughput rows' labels on the plot
    "dpkt": "Python loop",
    "scapy": "Python loop (extrapolated)",
    "nfstream": "iteration (pinned job)",
    "nfstream_process": "whole process",
    "tshark_process": "conv,tcp+udp, whole process",
    "ndpi": "own processing time (DPI)",
    "ndpi_process": "whole process (DPI)",
    "flowsense_steady": "flows, steady state",
    "flowsense_analyze_steady": "analyze, steady state",
    "flowsense_process_warm": "flows, whole process",
    "flowsense_analyze_process_warm": "analyze, whole process",
    "flowsense_jobs_process": "flows --jobs, whole process",
    "flowsense_process_cold": "flows, first start (compiling)",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stamp(fig: Any, res: dict[str, Any]) -> None:
    box = res["machine"]
    commit = (res["git"].get("commit") or "none")[:10]
    fig.text(
        0.01,
        0.005,
        f"{res['mode']} run {res['date']}, {box['cpu']} "
        f"({box['usable_cores']} cores), commit {commit}",
        fontsize=6,
        color="0.4",
    )


def _save(fig: Any, res: dict[str, Any], path: Path, bottom: float) -> bool:
    """Stamp the run on the figure and write it."""
    _stamp(fig, res)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    return True


def throughput(res: dict[str, Any], plt: Any, path: Path) -> bool:
    from benchmarks.report import ROWS

    rows = [
        (f"{tool}: {SHORT.get(key, key)}", res["results"][key])
        for key, tool, _, _ in ROWS
        if "pps_median" in res["results"].get(key, {})
    ]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    labels = [r[0][:70] for r in rows]
    pps = [r[1]["pps_median"] for r in rows]
    lo = [r[1]["pps_median"] - r[1]["pps_min"] for r in rows]
    hi = [r[1]["pps_max"] - r[1]["pps_median"] for r in rows]
    colors = ["tab:green" if lab.startswith("flowsense") else "tab:gray" for lab in labels]
    ax.barh(range(len(rows)), pps, xerr=[lo, hi], color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("packets per second (median, min-max; log scale)")
    ax.set_title(f"Throughput on {res['capture']['path']} ({res['capture']['packets']:,} packets)")
    return _save(fig, res, path, 0.02)


def concurrent_flows(res: dict[str, Any], plt: Any, path: Path) -> bool:
    rows = [
        r
        for r in (res.get("scaling") or {}).get("concurrent_flows") or []
        if "pps" in r.get("flowsense", {})
    ]
    if not isinstance(rows, list) or not rows:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["live_flows"] for r in rows]
    a1.plot(n, [r["flowsense"]["pps"] for r in rows], "o-", color="tab:green", label="flowsense")
    nf = [(r["live_flows"], r["nfstream"]["pps"]) for r in rows if "pps" in r.get("nfstream", {})]
    if nf:
        a1.plot(*zip(*nf, strict=True), "s--", color="tab:gray", label="nfstream (pinned)")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("flows live at once")
    a1.set_ylabel("packets per second")
    a1.legend()
    a1.set_title("Throughput")
    from benchmarks.report import peak_per_flow_unmapped

    a2.plot(
        n,
        [r["flowsense"]["peak_bytes_per_flow"] for r in rows],
        "o--",
        color="tab:olive",
        label="peak RSS growth",
    )
    a2.plot(
        n,
        [peak_per_flow_unmapped(r) for r in rows],
        "o-",
        color="tab:green",
        label="less the memory-mapped capture",
    )
    a2.set_xscale("log")
    a2.set_ylim(bottom=0)
    a2.set_xlabel("flows live at once")
    a2.set_ylabel("bytes per flow")
    a2.legend(fontsize=8)
    a2.set_title("Memory (whole compute_flows, peak)")
    return _save(fig, res, path, 0.03)


def size_mix(res: dict[str, Any], plt: Any, path: Path) -> bool:
    sc = res.get("scaling") or {}
    mix = [r for r in sc.get("size_mix") or [] if "pps" in r.get("flowsense", {})]
    size = [r for r in sc.get("capture_size") or [] if r.get("flowsense_pps")]
    if not mix and not size:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    if mix:
        x = range(len(mix))
        a1.bar(x, [r["flowsense"]["gbit_s"] for r in mix], color="tab:green")
        a1.set_xticks(
            list(x), [f"{r['size_mix']}\n{r['mean_frame_bytes']:.0f} B/frame" for r in mix]
        )
        a1.set_ylabel("Gbit/s (flowsense steady state)")
        for i, r in enumerate(mix):
            a1.annotate(
                f"{r['flowsense']['pps'] / 1e6:.2f} Mpps",
                (i, r["flowsense"]["gbit_s"]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        a1.set_title("Packet-size mix")
    if size:
        pk = [r["packets"] for r in size]
        a2.plot(
            pk, [r["flowsense_pps"] for r in size], "o-", color="tab:green", label="flowsense flows"
        )
        nf = [(r["packets"], r["nfstream_pps"]) for r in size if r.get("nfstream_pps")]
        if nf:
            a2.plot(*zip(*nf, strict=True), "s--", color="tab:gray", label="nfstream")
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("packets in the capture")
        a2.set_ylabel("packets per second, whole process")
        a2.legend()
        a2.set_title("Capture size (start-up amortised)")
    return _save(fig, res, path, 0.03)


def detectors(res: dict[str, Any], plt: Any, path: Path) -> bool:
    det = (res.get("scaling") or {}).get("detectors") or {}
    if "configs" not in det:
        return False
    names = list(det["configs"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(
        names,
        [det["configs"][n]["median_s"] for n in names],
        color=["tab:gray"] + ["tab:green"] * (len(names) - 1),
    )
    for i, n in enumerate(names):
        c = det["configs"][n]
        ax.annotate(f"{c['extra_pct']:+.0f}%", (i, c["median_s"]), ha="center", va="bottom")
    ax.set_ylabel("seconds per pass")
    ax.set_title(f"Pipeline on {det['capture']}: no detector, all, each alone, Stratum + pools")
    return _save(fig, res, path, 0.04)


def accuracy(res: dict[str, Any], plt: Any, path: Path) -> bool:
    groups = (res.get("accuracy") or {}).get("groups")
    if not groups:
        return False
    names = [g for g in groups if not g.startswith("_") and groups[g]["captures"]]
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.38
    for k, (tool, color) in enumerate((("flowsense", "tab:green"), ("ndpi", "tab:gray"))):
        vals, labels = [], []
        for g in names:
            t = groups[g][tool]
            vals.append(t.get("recall") or 0.0)
            labels.append(
                "no verdict"
                if t.get("verdict") is False
                else f"{t['hits']}/{groups[g]['captures']}"
            )
        xs = [i + (k - 0.5) * w for i in range(len(names))]
        ax.bar(xs, vals, w, color=color, label="flowsense" if k == 0 else "nDPI")
        for x, v, lab in zip(xs, vals, labels, strict=True):
            ax.annotate(lab, (x, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("recall (captures)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Recall per group on the labelled captures")
    return _save(fig, res, path, 0.04)


def cores(res: dict[str, Any], plt: Any, path: Path) -> bool:
    rows = ((res.get("scaling") or {}).get("cores") or {}).get("rows")
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    jobs = [r["jobs"] for r in rows]
    ax.plot(jobs, [r["pps_median"] for r in rows], "o-", color="tab:green")
    for r in rows:
        ax.annotate(
            f"{rows[0]['median_s'] / r['median_s']:.2f}x",
            (r["jobs"], r["pps_median"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(jobs)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("--jobs")
    ax.set_ylabel("packets per second, whole process")
    ax.set_title("flowsense flows on more cores")
    return _save(fig, res, path, 0.04)


PLOTS = {
    "throughput": throughput,
    "concurrent_flows": concurrent_flows,
    "size_mix": size_mix,
    "detectors": detectors,
    "accuracy": accuracy,
    "cores": cores,
}


def write_all(res: dict[str, Any], out_dir: Path) -> list[str]:
    """Every plot the result has data for, as ``out_dir/<name>.png``; stale ones removed."""
    try:
        plt = _plt()
    except ImportError:
        measure.log("matplotlib is not installed (pip install '.[bench]'): no plots")
        res.setdefault("skipped", {})["plots"] = "matplotlib is not installed"
        return []
    written = []
    for name, fn in PLOTS.items():
        path = out_dir / f"{name}.png"
        plt.close("all")
        if fn(res, plt, path):
            written.append(name)
        elif path.exists():
            path.unlink()  # a plot of an older run must not pass for this one's
    plt.close("all")
    return written
