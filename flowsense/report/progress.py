"""A progress bar for long reads: packets, packets a second, input bytes read against the total
and the time left, on stderr, only when stderr is a terminal (and not with ``-q``).

It hooks into ``Pipeline`` as its ``progress`` callback, called once a batch (tens of thousands of
packets), never per packet: ``hook(path, packets, offset)`` with the batch's packets and how far
into ``path`` the reader is (bytes), ``offset`` None where that is not known (gzip, stdin: the bar
then moves a whole file at a time) and ``FILE_DONE`` once a file is finished. rich draws the bar
(its own refresh thread, a few times a second); file names go through ``encoding.shown`` and
``rich.markup.escape`` like any other text.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from flowsense.encoding import shown
from flowsense.pipeline import FILE_DONE, ProgressHook

SHOW_AFTER_S = 1.0  # short runs never flash a bar


class _PacketRate(ProgressColumn):
    def render(self, task: Task) -> Text:
        packets = task.fields.get("packets", 0)
        elapsed = task.elapsed or 0.0
        rate = f"{packets / elapsed:,.0f} pkt/s" if elapsed > 0 else "- pkt/s"
        return Text(f"{packets:,} packets  {rate}")


def input_bytes(paths: list[str]) -> int | None:
    """Total size of the inputs, None when one is a stream (no ETA then)."""
    total = 0
    for p in paths:
        if p == "-" or not os.path.isfile(p):
            return None
        total += os.path.getsize(p)
    return total


class ProgressBar:
    """The hook; draws nothing until ``show_after_s`` has passed."""

    def __init__(self, paths: list[str], stream: TextIO | None = None,
                 show_after_s: float = SHOW_AFTER_S, force_terminal: bool | None = None) -> None:
        console = Console(file=stream or sys.stderr, force_terminal=force_terminal)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                            DownloadColumn(), _PacketRate(), TimeRemainingColumn(),
                            console=console, transient=True, auto_refresh=True,
                            refresh_per_second=4)
        self.task = self.bar.add_task("", total=input_bytes(paths), packets=0, start=True)
        self._done = 0  # bytes of the inputs already finished
        self._file = ""
        self._started = False
        self._t0 = time.monotonic()
        self._show_after = show_after_s

    def __call__(self, path: str, packets: int, offset: int | None) -> None:
        if path != self._file:
            self._file = path
            name = os.path.basename(path) if path != "-" else "<stdin>"
            self.bar.update(self.task, description=escape(shown(name)))
        completed = self._done
        if offset == FILE_DONE:
            self._done += os.path.getsize(path) if os.path.isfile(path) else 0
            completed = self._done
        elif offset is not None:
            completed += offset
        fields = self.bar.tasks[0].fields
        self.bar.update(self.task, completed=completed, packets=fields["packets"] + packets)
        if not self._started and time.monotonic() - self._t0 >= self._show_after:
            self._started = True
            self.bar.start()

    def close(self) -> None:
        if self._started:
            self.bar.stop()


@contextmanager
def progress_bar(paths: list[str], quiet: bool = False,
                 stream: TextIO | None = None) -> Iterator[ProgressHook | None]:
    """A ``ProgressBar`` when ``stream`` (stderr) is a terminal and not ``quiet``, else None."""
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        yield None
        return
    bar = ProgressBar(paths, stream)
    try:
        yield bar
    finally:
        bar.close()
