"""Accuracy on labelled captures: what flowsense reports against what each capture holds, side by
side with nDPI's verdicts on the same files.

The labels are ``accuracy_manifest.tsv`` (ours: the bundled ``pcaps/`` and per-label defaults)
and, where the shared corpus is present, its ``MANIFEST.tsv`` labels. Scoring is per capture and
per group (ALERTS.md categories, ``stratum-mining`` and ``mining-pool`` joined as ``mining``): a
group that must fire and did is a hit, one that fired where neither expected nor allowed is a
false alert. nDPI is mapped group by group from its per-flow protocols and risks (``NDPI_GROUPS``);
it has no notion of reverse SSH, so that group has no nDPI verdict.

    python -m benchmarks.accuracy                  # prints the table; JSON with --out
    python -m benchmarks.accuracy --flowsense-worker LIST   # (internal) one process, many files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import fs_api, measure, peers

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = HERE / "accuracy_manifest.tsv"
CORPUS = REPO.parent / "shared" / "corpus"
CAPTURE_EXT = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz")
GROUPS = ["mining", "reverse-ssh", "ssh-tunnel", "dns-tunnel", "icmp-tunnel"]
GROUP_OF = {"stratum-mining": "mining", "mining-pool": "mining"}  # other categories: themselves
# Groups nDPI can express, and how: (protocol names, risks that must be present, or None).
NDPI_GROUPS: dict[str, tuple[set[str], set[str] | None]] = {
    "mining": ({"Mining"}, None),
    "ssh-tunnel": ({"SSH"}, {"Known Protocol on Non Standard Port"}),
    "dns-tunnel": ({"DNS"}, {"Suspicious DNS Traffic", "Suspicious DGA Domain name"}),
    "icmp-tunnel": ({"ICMP", "ICMPV6"}, {"Suspicious Entropy"}),
}
NO_NDPI = {"reverse-ssh": "nDPI has no reverse-SSH verdict (it names SSH, not who drives it)"}


def _split(cell: str) -> list[str]:
    return [] if cell.strip() in ("", "-") else [c.strip() for c in cell.split(",")]


def _read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a tab-separated file whose first non-comment line is the header."""
    rows, header = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if header is None:
            header = cells
            continue
        rows.append(dict(zip(header, cells, strict=False)))
    return rows


def load_manifest(path: Path = MANIFEST) -> dict[str, dict[str, Any]]:
    """Rows keyed by capture; ``expect`` is a list of alternatives sets, ``allow`` a set."""
    rows: dict[str, dict[str, Any]] = {}
    for r in _read_tsv(path):
        expect = [set(alt.split("|")) for alt in _split(r["expect"])]
        for g in {g for alt in expect for g in alt} | set(_split(r["allow"])):
            if g not in GROUPS:
                raise ValueError(f"{path}: {r['capture']}: unknown group {g!r}")
        rows[r["capture"]] = {
            "label": r["label"],
            "expect": expect,
            "allow": set(_split(r["allow"])),
            "note": r["note"],
        }
    return rows


def _corpus_labels(corpus: Path) -> dict[str, str]:
    """file -> label from the corpus's MANIFEST.tsv (empty when the corpus is absent)."""
    path = corpus / "MANIFEST.tsv"
    if not path.is_file():
        return {}
    return {r["file"]: r["label"] for r in _read_tsv(path)}


def captures(
    corpus: Path = CORPUS, bundled_only: bool = False
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(labelled captures to score, bundled captures with no row, problems)."""
    rows = load_manifest()
    todo: list[dict[str, Any]] = []
    problems: list[str] = []
    for key, r in rows.items():
        if key.startswith(("label:", "corpus:")):
            continue
        path = REPO / key
        if path.is_file():
            todo.append({"capture": key, "path": str(path), "source": "bundled", **r})
        else:
            problems.append(f"{key}: listed in the manifest, not found")
    for file, label in sorted(({} if bundled_only else _corpus_labels(corpus)).items()):
        r = rows.get(f"corpus:{file}") or rows.get(f"label:{label}")
        if r is None:
            problems.append(f"corpus {file}: label {label!r} has no row in the manifest")
            continue
        if r["label"] != label:
            problems.append(f"corpus {file}: MANIFEST says {label!r}, our row {r['label']!r}")
        todo.append(
            {"capture": f"corpus:{file}", "path": str(corpus / file), "source": "corpus", **r}
        )
    listed = {k for k in rows if not k.startswith(("label:", "corpus:"))}
    unlabelled = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "pcaps").rglob("*")
        if p.is_file() and p.name.endswith(CAPTURE_EXT) and str(p.relative_to(REPO)) not in listed
    )
    return todo, unlabelled, problems


def flowsense_worker(paths: list[str]) -> dict[str, Any]:
    """In one process: ``flowsense analyze --format eve`` on each file apart; per file its exit
    status and alert counts by category and by category/variant."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        eve = os.path.join(tmp, "eve.json")
        for path in paths:
            rc = fs_api.analyze_eve(path, eve)
            cats: dict[str, int] = {}
            variants: dict[str, int] = {}
            if os.path.exists(eve):
                with open(eve, encoding="utf-8") as fh:
                    for line in fh:
                        a = json.loads(line)["alert"]
                        cats[a["category"]] = cats.get(a["category"], 0) + 1
                        v = f"{a['category']}/{a.get('variant', '')}"
                        variants[v] = variants.get(v, 0) + 1
                os.remove(eve)
            out[path] = {"rc": rc, "categories": cats, "variants": variants}
    return out


def _run_flowsense(paths: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(paths))
    try:
        cmd = [sys.executable, "-m", "benchmarks.accuracy", "--flowsense-worker", fh.name]
        r = subprocess.run(
            cmd, capture_output=True, text=True, cwd=REPO, timeout=measure.CHILD_TIMEOUT_S
        )
    finally:
        os.remove(fh.name)
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-10:])
        raise measure.MeasureError(f"flowsense accuracy worker failed:\n{tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ndpi_groups(flows: list[dict[str, Any]]) -> dict[str, int]:
    """Flows per group nDPI's verdicts map to."""
    out: dict[str, int] = {}
    for f in flows:
        for g, (protos, risks) in NDPI_GROUPS.items():
            if (f["proto"] in protos or f["category"] in protos) and (
                risks is None or risks & set(f["risks"])
            ):
                out[g] = out.get(g, 0) + 1
    return out


def _score(
    fired: dict[str, int], expect: list[set[str]], allow: set[str], expressible: set[str]
) -> dict[str, Any]:
    """Hits, misses and false alerts of one tool on one capture (groups it cannot express are
    neither missed nor false)."""
    hits, missed = [], []
    for alt in expect:
        alt_ok = alt & expressible
        if not alt_ok:
            continue
        (hits if alt & set(fired) else missed).append("|".join(sorted(alt)))
    wanted = {g for alt in expect for g in alt} | allow
    false = {g: n for g, n in fired.items() if g not in wanted and g in expressible}
    return {
        "fired": fired,
        "hits": hits,
        "missed": missed,
        "false": false,
        "false_alerts": sum(false.values()),
        "correct": not missed and not false,
    }


def _worse(fs: dict[str, Any], nd: dict[str, Any]) -> list[str]:
    """Where nDPI is right and flowsense wrong: an expectation nDPI met and flowsense missed, or a
    group flowsense raised falsely on which nDPI (able to say it) stayed silent."""
    if "fired" not in nd:
        return []
    missed = [m for m in fs["missed"] if m in nd["hits"]]
    false = [g for g in fs["false"] if g in NDPI_GROUPS and g not in nd["false"]]
    return sorted(missed + false)


def evaluate(
    corpus: Path = CORPUS, with_ndpi: bool = True, bundled_only: bool = False
) -> dict[str, Any]:
    """Score every labelled capture; the per-capture rows and the per-group summary."""
    todo, unlabelled, problems = captures(corpus, bundled_only)
    fs = _run_flowsense([c["path"] for c in todo])
    ndpi_ok = with_ndpi and peers.installed("ndpi") is not None
    rows = []
    for c in todo:
        f = fs[c["path"]]
        fs_groups: dict[str, int] = {}
        for cat, n in f["categories"].items():
            g = GROUP_OF.get(cat, cat)
            fs_groups[g] = fs_groups.get(g, 0) + n
        row: dict[str, Any] = {
            "capture": c["capture"],
            "source": c["source"],
            "label": c["label"],
            "expect": ["|".join(sorted(a)) for a in c["expect"]],
            "allow": sorted(c["allow"]),
            "note": c["note"],
            "flowsense_rc": f["rc"],
            "flowsense_variants": f["variants"],
            "flowsense": _score(fs_groups, c["expect"], c["allow"], set(GROUPS)),
        }
        if ndpi_ok:
            try:
                nflows = peers.ndpi_flows(c["path"])
                row["ndpi_protocols"] = sorted({n["proto"] for n in nflows})
                row["ndpi"] = _score(ndpi_groups(nflows), c["expect"], c["allow"], set(NDPI_GROUPS))
            except measure.MeasureError as e:
                row["ndpi"] = {"error": str(e).splitlines()[0]}
        row["worse_than_ndpi"] = _worse(row["flowsense"], row.get("ndpi", {}))
        rows.append(row)
    return {
        "captures": rows,
        "groups": _summary(rows, ndpi_ok),
        "unlabelled": unlabelled,
        "problems": problems,
        "ndpi": {
            "installed": ndpi_ok,
            "version": peers.version("ndpi"),
            "mapping": {
                g: {"protocols": sorted(p), "risks": sorted(r) if r else None}
                for g, (p, r) in NDPI_GROUPS.items()
            },
            "no_verdict": NO_NDPI,
        },
        "corpus": None if bundled_only or not corpus.is_dir() else str(corpus),
    }


def _summary(rows: list[dict[str, Any]], ndpi_ok: bool) -> dict[str, Any]:
    """Per group: captures that must fire it, hits (recall) and captures with false alerts, for
    flowsense and nDPI."""
    out: dict[str, Any] = {}
    for g in GROUPS:
        pos = [r for r in rows if any(g in alt.split("|") for alt in r["expect"])]
        s: dict[str, Any] = {"captures": len(pos)}
        for tool in ("flowsense", "ndpi"):
            if tool == "ndpi" and (not ndpi_ok or g in NO_NDPI):
                s[tool] = {"verdict": False, "why": NO_NDPI.get(g, "nDPI not run")}
                continue
            hit = sum(
                any(g in h.split("|") for h in r[tool]["hits"])
                for r in pos
                if "hits" in r.get(tool, {})
            )
            false = [r["capture"] for r in rows if g in r.get(tool, {}).get("false", {})]
            s[tool] = {
                "hits": hit,
                "recall": round(hit / len(pos), 3) if pos else None,
                "false_captures": len(false),
                "false_in": false,
            }
        out[g] = s
    scored = [r for r in rows if "fired" in r.get("ndpi", {})]
    out["_all"] = {
        "captures": len(rows),
        "flowsense_correct": sum(r["flowsense"]["correct"] for r in rows),
        "ndpi_correct": sum(r["ndpi"]["correct"] for r in scored) if scored else None,
        "worse_than_ndpi": [r["capture"] for r in rows if r["worse_than_ndpi"]],
    }
    return out


def _cell(score: dict[str, Any] | None) -> str:
    if not score:
        return "not run"
    if "error" in score:
        return f"error: {score['error'][:40]}"
    fired = ", ".join(f"{g} {n}" for g, n in sorted(score["fired"].items())) or "nothing"
    marks = [f"MISSED {m}" for m in score["missed"]] + [f"FALSE {g}" for g in score["false"]]
    return fired + (f" ({'; '.join(marks)})" if marks else " (ok)")


def _recall(t: dict[str, Any], n: int) -> str:
    if t.get("verdict") is False:
        return "no verdict"
    return "-" if t["recall"] is None else f"{t['hits']}/{n}"


def markdown_lines(res: dict[str, Any]) -> list[str]:
    """The per-group summary, then one row per capture, as Markdown."""
    groups = res["groups"]
    nd = res["ndpi"]
    ndpi_name = f"nDPI {nd['version']}" if nd["installed"] else "nDPI (not run)"
    lines = [
        f"Per group (captures that must raise it; recall; captures with a false alert), "
        f"flowsense against {ndpi_name}:",
        "",
        "| group | captures | flowsense recall | flowsense false | nDPI recall | nDPI false |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g in GROUPS:
        s = groups[g]
        f, n = s["flowsense"], s["ndpi"]

        nfalse = "-" if n.get("verdict") is False else str(n["false_captures"])
        lines.append(
            f"| {g} | {s['captures']} | {_recall(f, s['captures'])} | {f['false_captures']} "
            f"| {_recall(n, s['captures'])} | {nfalse} |"
        )
    a = groups["_all"]
    nd_ok = "-" if a["ndpi_correct"] is None else a["ndpi_correct"]
    lines += [
        "",
        f"Captures scored: {a['captures']}; flowsense right on all groups in "
        f"{a['flowsense_correct']}, nDPI in {nd_ok} "
        "(nDPI judged only on the groups it can express). Captures where flowsense is worse than "
        f"nDPI: {', '.join(a['worse_than_ndpi']) or 'none'}.",
    ]
    for g, why in nd["no_verdict"].items():
        lines.append(f"- {g}: {why}.")
    lines += ["", "| capture | label | expected | flowsense | nDPI |", "|---|---|---|---|---|"]
    for r in res["captures"]:
        exp = ", ".join(r["expect"]) or "nothing"
        lines.append(
            f"| `{r['capture']}` | {r['label']} | {exp} | {_cell(r['flowsense'])} "
            f"| {_cell(r.get('ndpi'))} |"
        )
    if res["unlabelled"]:
        lines.append(
            f"\nBundled captures with no row in the manifest (not scored): "
            f"{', '.join(res['unlabelled'])}."
        )
    for p in res["problems"]:
        lines.append(f"- manifest problem: {p}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accuracy")
    ap.add_argument("--flowsense-worker", metavar="LIST", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="write the result JSON here")
    ap.add_argument("--no-ndpi", action="store_true")
    args = ap.parse_args(argv)
    if args.flowsense_worker:
        paths = Path(args.flowsense_worker).read_text().splitlines()
        json.dump(flowsense_worker(paths), sys.stdout)
        sys.stdout.write("\n")
        return 0
    res = evaluate(with_ndpi=not args.no_ndpi)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("\n".join(markdown_lines(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
