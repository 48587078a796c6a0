"""The few flowsense library calls the benchmark makes, in one place.

The benchmark codes against ``flowsense.pipeline.compute_flows(paths, config) -> FlowsResult``
(with ``.n_flows``, ``.counters["packets"]`` and ``.frame``) and ``flowsense.config.Config``. If a
name changes, this is the only module to adapt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

# Unit suffixes of timeout fields (house style puts the unit in the name), as multipliers of a second.
_UNITS = {"_s": 1, "_ms": 1_000, "_us": 1_000_000, "_ns": 1_000_000_000}


def _with_timeouts(cfg: Any, idle_s: float, active_s: float) -> tuple[Any, int]:
    """Copy of a (possibly nested) frozen dataclass with every idle/active timeout field set."""
    changes: dict[str, Any] = {}
    found = 0
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value, n = _with_timeouts(value, idle_s, active_s)
            if n:
                changes[f.name], found = value, found + n
            continue
        name = f.name.lower()
        if "timeout" not in name or not ("idle" in name or "active" in name):
            continue
        unit = next((m for sfx, m in _UNITS.items() if name.endswith(sfx)), 1)
        seconds = idle_s if "idle" in name else active_s
        changes[f.name] = type(value)(seconds * unit) if isinstance(value, (int, float)) else seconds * unit
        found += 1
    return (dataclasses.replace(cfg, **changes) if changes else cfg), found


def make_config(idle_s: float, active_s: float) -> Any:
    """flowsense's default Config with the given idle and active timeouts."""
    from flowsense.config import Config

    cfg, found = _with_timeouts(Config(), idle_s, active_s)
    if found < 2:
        raise RuntimeError("flowsense.config.Config has no idle/active timeout fields the benchmark recognises; "
                           "adapt benchmarks/fs_api.py")
    return cfg


def compute_flows() -> Callable[[list[str], Any], Any]:
    """The in-process aggregation entry point."""
    from flowsense.pipeline import compute_flows as fn

    return fn


def flow_count(result: Any) -> int:
    """Flows in a result (final records; interim records, if any, are not extra flows)."""
    return int(result.n_flows)


def packet_count(result: Any) -> int | None:
    """Packets the aggregation read, if it reports them."""
    counters = getattr(result, "counters", None) or {}
    return int(counters["packets"]) if "packets" in counters else None


def version() -> str | None:
    """flowsense's version, or None when the package cannot be imported."""
    try:
        import flowsense
    except ImportError:
        return None
    return str(getattr(flowsense, "__version__", "unknown"))


def cli_command(python: str, path: str, idle_s: float, active_s: float, out: str) -> list[str]:
    """The whole-process run: the ``flows`` subcommand writing JSON lines to ``out``."""
    return [python, "-m", "flowsense", "flows", path, "--format", "jsonl", "-o", out,
            "--idle-timeout", str(idle_s), "--active-timeout", str(active_s)]
