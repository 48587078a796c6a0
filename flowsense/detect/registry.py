"""The detectors ``analyze`` and ``watch`` run: a plain literal registry, no import side effects."""

from __future__ import annotations

from flowsense.detect.base import Detector
from flowsense.detect.dns_tunnel import DnsTunnelDetector
from flowsense.detect.pools import PoolDetector
from flowsense.detect.ssh import SshDetector
from flowsense.detect.stratum import StratumDetector

DETECTORS: dict[str, type[Detector]] = {
    "ssh": SshDetector,
    "stratum": StratumDetector,
    "pools": PoolDetector,
    "dns-tunnel": DnsTunnelDetector,
}
