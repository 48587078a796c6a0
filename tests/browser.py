"""Open a page in headless Chromium (Debian's ``chromium``) and read back what a browser made of
it: the DOM after parsing, and every console message (script errors, CSP refusals) from the
browser's log on stderr. Plus a strict HTML parser for the same checks without a browser."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from tests.conftest import require_tool

CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")


def open_in_chromium(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """(serialised DOM, console messages) of ``page`` in headless Chromium."""
    exe = require_tool("chromium")
    r = subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=2000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, timeout=120, text=True, errors="replace",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    console = [m.group(1) for m in map(CONSOLE.search, r.stderr.splitlines()) if m]
    return r.stdout, console


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)


class PageParser(HTMLParser):
    """Every element (tag, attributes, its own text) in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(el)
        if tag not in ("meta", "br", "hr", "img", "input", "link"):  # HTML void elements
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k].tag == tag:
                del self.stack[k:]
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack:
            self.stack[-1].text.append(data)

    def find(self, tag: str, **attrs: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag
                and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def parse(page: str) -> PageParser:
    p = PageParser()
    p.feed(page)
    p.close()
    return p
