"""The one way wire bytes become text.

``wire_text`` keeps valid UTF-8 and escapes everything else as ``\\xNN`` text; C0 and C1 control
characters, DEL, and the bidi overrides and isolates (U+202A-U+202E, U+2066-U+2069) are escaped
the same way (as their UTF-8 bytes), so a wire string can neither forge lines in a log nor turn
text around in a terminal. Terminal, HTML and CSV output escape again for their medium.
"""

from __future__ import annotations

_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _escape_char(ch: str) -> str:
    return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8"))


def wire_text(data: bytes) -> str:
    """Text for bytes that came off the wire (see the module doc)."""
    if data.isascii():  # the common case, without the loop: printable ASCII stays as it is
        text = data.decode("ascii")
        if text.isprintable():
            return text
    text = data.decode("utf-8", errors="backslashreplace")
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or ch in _BIDI:
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def shown(value: object) -> str:
    """Text for a human medium (terminal, HTML): ``wire_text``'s rules applied again (they are
    idempotent on text that went through them) and every other non-printable character (format
    marks such as U+200F, line and paragraph separators) escaped the same way. HTML adds
    ``html.escape``, a rich console ``rich.markup.escape``, on top."""
    text = wire_text(str(value).encode("utf-8", "surrogatepass"))
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet will not read as a formula."""
    return "'" + text if text.startswith(_CSV_FORMULA) else text
