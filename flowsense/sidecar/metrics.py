"""Prometheus metrics and ``/healthz`` for the sidecar (prometheus-client, its own registry).

Served by a small threaded HTTP server bound to 127.0.0.1 unless told otherwise: ``/metrics``
in the text exposition format, ``/healthz`` 200 while the capture loop has turned within the
last ``stale_s`` seconds, else 503. The capture loop sets the values once a tick, never per
packet.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flowsense.errors import ConfigError

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Info,
        generate_latest,
    )
except ImportError:  # pragma: no cover - an optional extra
    CollectorRegistry = None  # type: ignore[assignment,misc]


class Metrics:
    def __init__(self) -> None:
        if CollectorRegistry is None:
            raise ConfigError("--metrics-port needs prometheus-client (pip install "
                              "'flowsense[sidecar]')")
        r = self.registry = CollectorRegistry()
        self.packets = Counter("flowsense_packets", "Packets captured", registry=r)
        self.bytes = Counter("flowsense_bytes", "Bytes captured (on the wire)", registry=r)
        self.kernel_drops = Gauge("flowsense_kernel_drops_total",
                                  "Packets the kernel dropped (ring full) since the start",
                                  registry=r)
        self.flows_active = Gauge("flowsense_flows_active", "Live flows in the table", registry=r)
        self.table_pressure = Gauge("flowsense_table_pressure",
                                    "Live flows over the --max-flows bound (0 when unbounded)",
                                    registry=r)
        self.evictions = Gauge("flowsense_flows_evicted_total",
                               "Flows ended early to keep the table within --max-flows",
                               registry=r)
        self.watches = Gauge("flowsense_watched_flows", "Flows holding a watch lease", registry=r)
        self.watches_refused = Gauge("flowsense_watches_refused_total",
                                     "Watch leases refused (quota spent)", registry=r)
        self.alerts = Counter("flowsense_alerts", "Alerts emitted", ["category"], registry=r)
        self.lag = Gauge("flowsense_lag_seconds",
                         "Wall time minus the capture time of the latest packet processed",
                         registry=r)
        self.alert_latency = Gauge("flowsense_alert_latency_seconds",
                                   "Emit time minus evidence time of the latest alert", registry=r)
        self.reloads = Counter("flowsense_reloads", "SIGUSR2 reloads", ["result"], registry=r)
        self.chain = Info("flowsense_log_chain", "Head of the sealed alert log (seq, hash, file)",
                          registry=r)
        self.chain_seq = Gauge("flowsense_log_chain_seq", "Sequence number of the sealed log's "
                               "last record (-1 before the first)", registry=r)
        self.heartbeat = time.monotonic()
        self._server: ThreadingHTTPServer | None = None

    def serve(self, port: int, bind: str = "127.0.0.1", stale_s: float = 10.0) -> None:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] == "/healthz":
                    ok = time.monotonic() - metrics.heartbeat < stale_s
                    body = b"ok\n" if ok else b"stalled\n"
                    self._reply(200 if ok else 503, "text/plain; charset=utf-8", body)
                elif self.path.split("?")[0] in ("/metrics", "/"):
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
                else:
                    self._reply(404, "text/plain; charset=utf-8", b"not found\n")

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        try:
            self._server = ThreadingHTTPServer((bind, port), Handler)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port} on {bind}: {exc.strerror}") from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
