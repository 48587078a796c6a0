"""Where ``watch`` meets the sealed alert log (``alertlog.py``) and the response policy
(``policy.py``/``actions.py``): the one place that names their API. Imported lazily, so a
watcher without ``--log`` or ``--policy`` never loads them.
"""

from __future__ import annotations

from typing import Any

from flowsense.config import Config
from flowsense.errors import ConfigError


def open_sealed_log(path: str, seed_file: str | None, rotate_bytes: int) -> Any:
    from flowsense.sidecar.alertlog import SealedLog

    if not seed_file:
        raise ConfigError("--log needs --log-seed FILE (the key the chain starts from)")
    return SealedLog(path, seed_file, rotate_bytes)


def load_policy(path: str) -> Any:
    from flowsense.sidecar.policy import load_policy as load

    return load(path)


def make_actions(policy: Any, enforce: bool, sealed: Any, config: Config,
                 previous: Any = None) -> Any:
    """Actions for ``policy``; a reload hands over the running blocks and rate limits."""
    from flowsense.sidecar.actions import Actions

    actions = Actions(policy, enforce, sealed, config)
    if previous is not None:
        actions.adopt(previous)
    return actions
