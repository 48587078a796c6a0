"""Where ``watch`` meets the sealed alert log and the policy (``alertlog.py`` and ``policy.py``,
built on their own branch): the only place that names their API, imported lazily so ``watch``
runs without them until ``--log`` or ``--policy`` is asked for.

API relied on: ``alertlog.SealedLog(path, seed_file, rotate_bytes)`` with ``append(record)``,
``reopen()``, ``close()``, ``head()``; ``policy.load_policy(path)`` and
``policy.Actions(policy, enforce, log, config)`` with ``handle(alert, eve_record_dict)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from flowsense.config import Config
from flowsense.errors import ConfigError


def _module(name: str, option: str) -> ModuleType:
    try:
        return importlib.import_module(f"flowsense.sidecar.{name}")
    except ModuleNotFoundError:
        raise ConfigError(f"{option} needs flowsense.sidecar.{name}, which this build lacks") \
            from None


def open_sealed_log(path: str, seed_file: str | None, rotate_bytes: int) -> Any:
    if not seed_file:
        raise ConfigError("--log needs --log-seed FILE (the key the chain starts from)")
    return _module("alertlog", "--log").SealedLog(path, seed_file, rotate_bytes)


def load_policy(path: str) -> Any:
    return _module("policy", "--policy").load_policy(path)


def make_actions(policy: Any, enforce: bool, sealed: Any, config: Config,
                 previous: Any = None) -> Any:
    """Actions for ``policy``; a reload hands over the running rate limits when it can."""
    actions = _module("policy", "--policy").Actions(policy, enforce, sealed, config)
    if previous is not None and hasattr(actions, "adopt"):
        actions.adopt(previous)
    return actions
