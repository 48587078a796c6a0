"""Payload templates for the synthetic capture.

Most payload bytes are random (what encrypted traffic looks like); a few packets carry real
protocol text so that the capture also exercises payload heads: DNS queries and answers, HTTP
request and response headers, SSH banners and Stratum JSON-RPC lines. A template is written at
the start of a packet's payload; the packet's payload may be longer (the rest stays random).
"""

from __future__ import annotations

import json
import struct

import numpy as np


class TemplateBook:
    """Interns payload templates: each distinct byte string gets a small integer id."""

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}
        self.templates: list[bytes] = []

    def add(self, data: bytes) -> int:
        """Return the id of ``data``, registering it on first use."""
        tid = self._ids.get(data)
        if tid is None:
            tid = len(self.templates)
            self._ids[data] = tid
            self.templates.append(data)
        return tid

    def lengths(self) -> np.ndarray:
        """Template lengths in bytes, indexed by id (int64)."""
        return np.array([len(t) for t in self.templates], dtype=np.int64)


DNS_NAMES = (
    "www.example.com",
    "api.github.com",
    "fonts.gstatic.com",
    "update.mozilla.org",
    "cdn.jsdelivr.net",
    "login.microsoftonline.com",
    "ocsp.digicert.com",
    "time.cloudflare.com",
    "registry.npmjs.org",
    "pypi.org",
    "slack.com",
    "zoom.us",
    "s3.amazonaws.com",
    "clients4.google.com",
    "pool.supportxmr.com",
    "archive.ubuntu.com",
)


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def dns_query(name: str) -> bytes:
    """A recursive A query; the transaction id (first two bytes) is overwritten per flow."""
    return struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + _qname(name) + struct.pack("!HH", 1, 1)


def dns_answer(name: str, address: int) -> bytes:
    """The response to :func:`dns_query` with one A record (name compressed to the question)."""
    head = struct.pack("!HHHHHH", 0, 0x8180, 1, 1, 0, 0) + _qname(name) + struct.pack("!HH", 1, 1)
    return head + struct.pack("!HHHIHI", 0xC00C, 1, 1, 300, 4, address)


# NTPv4 client (mode 3) and server (mode 4, stratum 2) packets; timestamps are fixed, which no
# flow analyser looks at.
NTP_REQUEST = bytes([0x23, 0, 6, 0xE9]) + bytes(36) + bytes.fromhex("eb0f2a1c5a3b9e00")
NTP_RESPONSE = (
    bytes([0x24, 2, 6, 0xE9])
    + bytes.fromhex("0000004e000000a8")
    + b"\xa2\x9f\xc8\x01"
    + bytes.fromhex("eb0f2a0b1c2d3e4f")
    + bytes.fromhex("eb0f2a1c5a3b9e00")
    + bytes.fromhex("eb0f2a1c5b0c1d2e")
    + bytes.fromhex("eb0f2a1c5b0c9f30")
)

HTTP_REQUEST = (
    b"GET /static/js/app.7f3c2e.js HTTP/1.1\r\nHost: cdn.example.net\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n"
)
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\nContent-Length: 48213\r\n"
    b"Cache-Control: max-age=31536000\r\nConnection: keep-alive\r\n\r\n"
)
SSH_CLIENT_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n"
SSH_SERVER_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"


def _line(message: dict) -> bytes:
    # Stratum is newline-delimited JSON: one message per line, compact as miners send it.
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def _hex(rng: np.random.Generator, n: int) -> str:
    return rng.bytes(n).hex()


def stratum_v1_open(worker: str) -> list[tuple[bool, bytes]]:
    """The opening exchange of a Bitcoin-style Stratum v1 session: (from_client, line) pairs."""
    subscribed = [
        [
            ["mining.set_difficulty", "b4b6693b72a50c7116db18d6497cac52"],
            ["mining.notify", "ae6812eb4cd7735a302a8a9dd95cf71f"],
        ],
        "08000002",
        4,
    ]
    return [
        (True, _line({"id": 1, "method": "mining.subscribe", "params": ["cgminer/4.12.1"]})),
        (False, _line({"id": 1, "result": subscribed, "error": None})),
        (True, _line({"id": 2, "method": "mining.authorize", "params": [worker, "x"]})),
        (False, _line({"id": 2, "result": True, "error": None})),
        (False, _line({"id": None, "method": "mining.set_difficulty", "params": [16384]})),
    ]


def stratum_v1_notify(job: int, rng: np.random.Generator) -> bytes:
    """A ``mining.notify`` push: a new job with random hashes, about 500 bytes."""
    branches = [_hex(rng, 32) for _ in range(3)]
    params = [
        f"{job:x}",
        _hex(rng, 32),
        _hex(rng, 40),
        _hex(rng, 24),
        branches,
        "20000000",
        "1703a8c7",
        f"{0x65A1F2B3 + job:08x}",
        True,
    ]
    return _line({"id": None, "method": "mining.notify", "params": params})


def stratum_v1_submit(msg_id: int, worker: str, job: int, rng: np.random.Generator) -> bytes:
    """A share submitted by the miner."""
    params = [worker, f"{job:x}", _hex(rng, 4), f"{0x65A1F2B3 + job:08x}", _hex(rng, 4)]
    return _line({"id": msg_id, "method": "mining.submit", "params": params})


def stratum_result(msg_id: int) -> bytes:
    """The pool's reply to a submit (or any request)."""
    return _line({"id": msg_id, "result": True, "error": None})


XMRIG_AGENT = "XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"


def xmr_open(wallet: str) -> list[tuple[bool, bytes]]:
    """The opening of a Monero-style (XMRig) Stratum session: login, then the first job."""
    login = {"login": wallet, "pass": "x", "agent": XMRIG_AGENT, "algo": ["rx/0"]}
    job = {
        "blob": "0e" * 38,
        "job_id": "1",
        "target": "b88d0600",
        "algo": "rx/0",
        "height": 3012345,
    }
    return [
        (True, _line({"id": 1, "jsonrpc": "2.0", "method": "login", "params": login})),
        (
            False,
            _line(
                {
                    "id": 1,
                    "jsonrpc": "2.0",
                    "error": None,
                    "result": {"id": "7f1c", "job": job, "status": "OK"},
                }
            ),
        ),
    ]


def xmr_job(job: int, rng: np.random.Generator) -> bytes:
    """A pushed Monero job."""
    params = {
        "blob": _hex(rng, 76),
        "job_id": str(job),
        "target": "b88d0600",
        "algo": "rx/0",
        "height": 3012345 + job // 4,
    }
    return _line({"jsonrpc": "2.0", "method": "job", "params": params})


def xmr_submit(msg_id: int, job: int, rng: np.random.Generator) -> bytes:
    """A share submitted by an XMRig miner."""
    params = {"id": "7f1c", "job_id": str(job), "nonce": _hex(rng, 4), "result": _hex(rng, 32)}
    return _line({"id": msg_id, "jsonrpc": "2.0", "method": "submit", "params": params})
