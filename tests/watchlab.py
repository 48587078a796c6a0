"""Helpers for the live tests: a ``flowsense watch`` process in a lab namespace whose output
lines are collected with their arrival times, and tcpreplay into the other end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import REPO, require_root, require_tool

CORPUS = REPO / "pcaps" / "corpus"
SSH_PCAP = CORPUS / "zeek-reverse-ssh.pcap"
STRATUM_PCAP = CORPUS / "ndpi-xmr-stak-monero-stratum.pcap"


def needs_lab() -> None:
    require_root()
    for tool in ("ip", "ethtool", "tcpreplay"):
        require_tool(tool)


def env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO))


class Watch:
    """``flowsense watch ARGS`` (in namespace ``ns`` of ``lab``, or here when lab is None)."""

    def __init__(self, args: Sequence[str], lab: Any = None, ns: str | None = None,
                 stdin: int | None = None) -> None:
        cmd = [*self.command(), *args]
        kw: dict[str, Any] = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
                                  cwd=REPO, stdin=stdin)
        self.proc = lab.popen(ns, cmd, **kw) if lab is not None else subprocess.Popen(cmd, **kw)
        self.out: list[tuple[float, str]] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, True)),
                         threading.Thread(target=self._read, args=(self.proc.stderr, False))]
        for t in self._threads:
            t.daemon = True
            t.start()

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "flowsense", "watch"]

    @staticmethod
    def environment() -> dict[str, str]:
        return env()

    @staticmethod
    def cwd() -> Path:
        return REPO

    def _read(self, stream: Any, is_out: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            if is_out:
                self.out.append((time.monotonic(), line))
            else:
                self.err.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(line) for _, line in list(self.out)]

    def wait_for(self, pred: Callable[[], bool], timeout: float, what: str,
                 also: Callable[[], bool] | None = None) -> None:
        """Until ``pred()``; fails after ``timeout`` s, if the process died, or if ``also``
        (a condition that must hold meanwhile) turns false first."""
        end = time.monotonic() + timeout
        while not pred():
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited ({self.proc.returncode}) before {what}: "
                                     f"{''.join(self.err)[-2000:]}")
            if also is not None and not also():
                if pred():
                    return
                raise AssertionError(f"{what}: too late")
            if time.monotonic() > end:
                raise AssertionError(f"no {what} within {timeout} s: {''.join(self.err)[-2000:]}")
            time.sleep(0.05)

    def ready(self, timeout: float = 300.0) -> None:
        self.wait_for(lambda: any("watching" in line for line in self.err), timeout,
                      "start-up")

    def has_alert(self, category: str) -> bool:
        return any(a["alert"]["category"] == category for a in self.alerts())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def replay(lab: Any, pcap: Path, pps: float | None = None,
           extra: Sequence[str] = ()) -> subprocess.Popen[str]:
    """tcpreplay ``pcap`` out of the lab's outside end (at ``pps`` packets a second, or as
    fast as it goes)."""
    rate = ["--pps", str(pps)] if pps else ["--topspeed"]
    return lab.popen(lab.outside, ["tcpreplay", "-q", "-i", lab.outside_if, *rate, *extra,
                                   str(pcap)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fetch(lab: Any, url: str) -> tuple[int, str]:
    """GET ``url`` from inside the lab's inside namespace: (status, body)."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
            " s, b = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n s, b = e.code, e.read()\n"
            "print(s); sys.stdout.write(b.decode())\n")
    res = lab.run(lab.inside, [sys.executable, "-c", code, url], check=True, timeout=30)
    status, _, body = res.stdout.partition("\n")
    return int(status), body


def free_port() -> int:
    return 9100 + os.getpid() % 800
