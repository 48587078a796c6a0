"""Make the bundled mining captures and their benign controls in one command (root):

    python -m pcaps.gen.stratum_captures [--out pcaps/stratum] [--long-minutes 12]

Each capture gets its own netlab ``Lab`` (a 40 ms round trip): our own pool, DNS responder and
servers in the outside namespace, miners and clients in the inside one, tcpdump on the inside
interface. Every outside service sits on a documentation address (203.0.113.0/24) that the
inside host reaches through the lab; before each mining connection the miner looks the pool
name up at the lab's DNS responder, which answers with that address (so the DNS answers and the
connections in a capture agree without rewriting DNS payloads). Afterwards the lab's own two
addresses are rewritten: the inside host becomes 10.20.30.40, the resolver 198.51.100.53.

The long-lived benign sessions (MQTT with 5 s keepalives against Debian's mosquitto, a
WebSocket push channel, IMAP IDLE against Debian's dovecot; each plain and over TLS) run
concurrently with each other and with the short captures, so the whole run takes about
``--long-minutes`` plus a minute. See ``pcaps/stratum/README.md`` for what each capture shows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from pcaps.gen.netlab import Lab, rewrite_addresses

REPO = Path(__file__).resolve().parents[2]
INSIDE, RESOLVER = "10.20.30.40", "198.51.100.53"
POOLS = {  # name -> address of our pool in the outside namespace
    "pool.supportxmr.com": "203.0.113.10",
    "daggerhashimoto.eu-west.nicehash.com": "203.0.113.11",
    "xmr-eu1.nanopool.org": "203.0.113.12",
    "btc.pool-example.net": "203.0.113.13",
    "updates.example.org": "203.0.113.15",
    "sv2.pool-example.net": "203.0.113.16",
}
SERVICES = {"broker.example.com": "203.0.113.20", "push.example.com": "203.0.113.21",
            "mail.example.com": "203.0.113.22", "api.example.com": "203.0.113.30"}
RTT_MS = 40.0


def _peer(*args: str) -> list[str]:
    return [sys.executable, "-m", "pcaps.gen.stratum_peers", *args]


class Net:
    """A lab with the outside addresses, the route to them and the DNS responder up."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.cert, self.key = str(tmp / "cert.pem"), str(tmp / "key.pem")

    def setup(self) -> Net:
        lab = self.lab
        for addr in (*POOLS.values(), *SERVICES.values()):
            lab.run(lab.outside, ["ip", "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
        lab.run(lab.inside, ["ip", "route", "add", "203.0.113.0/24", "via", lab.outside_ip],
                check=True)
        names = [f"{n}={a}" for n, a in (*POOLS.items(), *SERVICES.items())]
        self.start(lab.outside, "dns", "--bind", lab.outside_ip, "--map", *names)
        return self

    def start(self, ns: str, *args: str) -> subprocess.Popen[bytes]:
        return self.lab.popen(ns, _peer(*args), cwd=REPO, env=_env(),
                              stdout=subprocess.DEVNULL)

    def run(self, *args: str, timeout: float = 1800.0) -> None:
        self.lab.run(self.lab.inside, _peer(*args), check=True, timeout=timeout, cwd=REPO,
                     env=_env())

    def tls(self) -> list[str]:
        return ["--cert", self.cert, "--key", self.key]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@contextlib.contextmanager
def captured(prefix: str, out: Path, name: str, certs: Path) -> Iterator[Net]:
    """A lab with a capture running on the inside; the file rewritten into ``out/name``."""
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
        t = Path(tmp)
        os.chmod(t, 0o755)
        for f in ("cert.pem", "key.pem"):
            shutil.copy(certs / f, t / f)
            os.chmod(t / f, 0o644)
        raw = t / "raw.pcap"
        with Lab(prefix, rtt_ms=RTT_MS) as lab:
            net = Net(lab, t).setup()
            time.sleep(1.0)
            with lab.tcpdump(lab.inside, raw):
                yield net
            n = rewrite_addresses(raw, out / name,
                                  {lab.inside_ip: INSIDE, lab.outside_ip: RESOLVER})
        print(f"{name}: {n} packets", flush=True)


# --- the mining captures ---------------------------------------------------------------------
def xmrig(net: Net) -> None:
    """XMRig-style login, jobs and shares past the 4 KiB slab; a second connection after a
    fresh lookup, which also lets the first (closed) flow end while its DNS flow is open."""
    net.start(net.lab.outside, "pool", "--dialect", "xmr", "--bind", POOLS["pool.supportxmr.com"],
              "--port", "3333", "--job-mean", "3", "--seed", "11")
    time.sleep(1.5)
    common = ("miner", "--dialect", "xmr", "--name", "pool.supportxmr.com", "--dns",
              net.lab.outside_ip, "--port", "3333")
    net.run(*common, "--duration", "75", "--share-mean", "2", "--seed", "12")
    time.sleep(8)
    net.run(*common, "--duration", "12", "--share-mean", "2", "--seed", "13")


def nicehash(net: Net) -> None:
    name = "daggerhashimoto.eu-west.nicehash.com"
    net.start(net.lab.outside, "pool", "--dialect", "ethstratum", "--bind", POOLS[name],
              "--port", "3353", "--job-mean", "4", "--seed", "21")
    time.sleep(1.5)
    net.run("miner", "--dialect", "ethstratum", "--name", name, "--dns", net.lab.outside_ip,
            "--port", "3353", "--duration", "30", "--share-mean", "4", "--seed", "22")


def tls_sni(net: Net) -> None:
    name = "xmr-eu1.nanopool.org"
    net.start(net.lab.outside, "pool", "--dialect", "xmr", "--bind", POOLS[name], "--port",
              "14433", "--job-mean", "5", "--seed", "31", *net.tls())
    time.sleep(1.5)
    net.run("miner", "--dialect", "xmr", "--name", name, "--dns", net.lab.outside_ip, "--port",
            "14433", "--tls", "--sni", name, "--duration", "25", "--share-mean", "4",
            "--seed", "32")


def v1_ports(net: Net) -> None:
    name = "btc.pool-example.net"
    for port in ("80", "443"):
        net.start(net.lab.outside, "pool", "--dialect", "v1", "--bind", POOLS[name], "--port",
                  port, "--job-mean", "4", "--seed", "41")
    time.sleep(1.5)
    for k, port in enumerate(("80", "443")):
        net.run("miner", "--dialect", "v1", "--name", name, "--dns", net.lab.outside_ip,
                "--port", port, "--duration", "20", "--share-mean", "3", "--seed", str(42 + k))


def sv2(net: Net) -> None:
    net.start(net.lab.outside, "sv2-pool", "--bind", POOLS["sv2.pool-example.net"],
              "--port", "34254")
    time.sleep(1.5)
    net.run("sv2-miner", "--name", POOLS["sv2.pool-example.net"], "--port", "34254",
            "--shares", "6", "--share-mean", "1.5", "--seed", "51")


def jsonrpc(net: Net) -> None:
    net.start(net.lab.outside, "jsonrpc-server", "--bind", SERVICES["api.example.com"])
    time.sleep(1.5)
    net.run("jsonrpc-clients", "--name", SERVICES["api.example.com"])


def cadence(net: Net, minutes: float) -> None:
    """XMRig-style mining inside TLS to a name no list knows: only the behaviour tells."""
    name = "updates.example.org"
    net.start(net.lab.outside, "pool", "--dialect", "xmr", "--bind", POOLS[name], "--port",
              "443", "--job-mean", "15", "--seed", "61", *net.tls())
    time.sleep(1.5)
    net.run("miner", "--dialect", "xmr", "--name", name, "--dns", net.lab.outside_ip, "--port",
            "443", "--tls", "--sni", name, "--duration", str(60 * minutes), "--share-mean", "10",
            "--seed", "62")


# --- the long-lived benign sessions ----------------------------------------------------------
def mqtt(net: Net, minutes: float) -> None:
    """mosquitto with a plain and a TLS listener; on each a subscriber and a publisher, both
    with 5 s keepalives; the publisher's readings come at irregular times (QoS 1), the
    subscriber takes them at QoS 0."""
    lab, addr = net.lab, SERVICES["broker.example.com"]
    conf = net.tmp / "mosquitto.conf"
    conf.write_text(f"user root\npersistence false\nallow_anonymous true\nlog_dest none\n"
                    f"listener 1883 {addr}\nlistener 8883 {addr}\n"
                    f"certfile {net.cert}\nkeyfile {net.key}\n")
    lab.popen(lab.outside, ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    tls = ["--cafile", net.cert, "--insecure"]
    pubs = []
    for port, extra in (("1883", []), ("8883", tls)):
        lab.popen(lab.inside, ["mosquitto_sub", "-h", addr, "-p", port, "-t", "plant/#",
                               "-k", "5", "-q", "0", *extra], stdout=subprocess.DEVNULL)
        pubs.append(lab.popen(lab.inside, ["mosquitto_pub", "-h", addr, "-p", port, "-t",
                                           "plant/line1/temperature", "-l", "-k", "5", "-q", "1",
                                           *extra], stdin=subprocess.PIPE))
    rng = random.Random(71)
    end = time.monotonic() + 60 * minutes
    while time.monotonic() < end:
        time.sleep(min(rng.uniform(2, 25), max(0.0, end - time.monotonic())))
        for p in pubs:
            assert p.stdin is not None
            p.stdin.write(f'{{"celsius": {rng.uniform(18, 24):.2f}}}\n'.encode())
            p.stdin.flush()
    for p in pubs:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(timeout=10)


def websocket(net: Net, minutes: float) -> None:
    """A ticker pushed every 5 s over ws:// (80) and wss:// (443); websockets' own pings."""
    addr = SERVICES["push.example.com"]
    net.start(net.lab.outside, "ws-server", "--bind", addr, "--port", "80", "--seed", "81")
    net.start(net.lab.outside, "ws-server", "--bind", addr, "--port", "443", "--seed", "82",
              *net.tls())
    time.sleep(1.5)
    plain = net.start(net.lab.inside, "ws-client", "--name", addr, "--port", "80",
                      "--duration", str(60 * minutes))
    net.run("ws-client", "--name", addr, "--port", "443", "--tls", "--sni", "push.example.com",
            "--duration", str(60 * minutes))
    plain.wait(timeout=60)


DOVECOT = """\
instance_name = {prefix}-dovecot
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
protocols = imap
listen = {addr}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{dh}
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{tmp}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {tmp}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={tmp}/mail/%u
}}
"""


def imap(net: Net, minutes: float) -> None:
    """Debian's dovecot with its own config in a temp dir, IMAP (143) and IMAPS (993); a client
    on each sits in IDLE while mail arrives at irregular times (dovecot's own 'Still here'
    every 2 minutes)."""
    lab, t, addr = net.lab, net.tmp, SERVICES["mail.example.com"]
    for d in ("run", "state", "mail/alice/new", "mail/alice/cur", "mail/alice/tmp"):
        (t / d).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", "65534:65534", str(t / "mail")], check=True)
    (t / "passwd").write_text("alice:{PLAIN}wonderland::::::\n")
    dh = "ssl_dh = </usr/share/dovecot/dh.pem" if Path("/usr/share/dovecot/dh.pem").exists() \
        else ""
    conf = t / "dovecot.conf"
    conf.write_text(DOVECOT.format(prefix=lab.prefix, tmp=t, addr=addr, cert=net.cert,
                                   key=net.key, dh=dh))
    lab.popen(lab.outside, ["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    clients = [net.start(lab.inside, "imap-idle", "--name", addr, "--port", "143",
                         "--duration", str(60 * minutes)),
               net.start(lab.inside, "imap-idle", "--name", addr, "--port", "993", "--tls",
                         "--duration", str(60 * minutes))]
    rng = random.Random(91)
    end = time.monotonic() + 60 * minutes
    k = 0
    while time.monotonic() < end - 5:
        time.sleep(min(rng.uniform(30, 100), max(0.0, end - 5 - time.monotonic())))
        k += 1
        mail = t / "mail/alice/new" / f"{int(time.time())}.M{k}P1.mail"
        mail.write_text(f"From: build@example.com\r\nTo: alice@example.com\r\nSubject: build "
                        f"{k} passed\r\n\r\nAll green.\r\n")
        os.chown(mail, 65534, 65534)
    for c in clients:
        c.wait(timeout=120)


# --- the run ---------------------------------------------------------------------------------
def make_certs(where: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650", "-subj",
                    "/CN=pool", "-keyout", str(where / "key.pem"), "-out",
                    str(where / "cert.pem")], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pcaps.gen.stratum_captures")
    ap.add_argument("--out", default=str(REPO / "pcaps" / "stratum"))
    ap.add_argument("--long-minutes", type=float, default=12.0,
                    help="length of each long-lived benign session (three run at once)")
    ap.add_argument("--only", nargs="*", help="make just these captures (file stems)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("stratum_captures: needs root (network namespaces)", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    m = a.long_minutes
    short: list[tuple[str, str, Callable[[Net], None]]] = [
        ("fss-x", "xmrig-login.pcap", xmrig),
        ("fss-nh", "nicehash-ethereumstratum.pcap", nicehash),
        ("fss-sni", "stratum-tls-sni.pcap", tls_sni),
        ("fss-v1", "stratum-v1-ports-80-443.pcap", v1_ports),
        ("fss-v2", "stratum-v2-noise-sizes.pcap", sv2),
        ("fss-rpc", "jsonrpc-benign.pcap", jsonrpc),
    ]
    long: list[tuple[str, str, Callable[[Net], None]]] = [
        ("fss-cad", "stratum-tls-cadence.pcap", lambda n: cadence(n, min(m, 6.0))),
        ("fss-mq", "benign-mqtt-keepalive.pcap", lambda n: mqtt(n, m)),
        ("fss-ws", "benign-websocket-push.pcap", lambda n: websocket(n, m)),
        ("fss-im", "benign-imap-idle.pcap", lambda n: imap(n, m)),
    ]
    if a.only:
        unknown = set(a.only) - {Path(name).stem for _, name, _ in (*short, *long)}
        if unknown:
            print(f"stratum_captures: no such capture: {', '.join(sorted(unknown))}",
                  file=sys.stderr)
            return 2
        short = [s for s in short if Path(s[1]).stem in a.only]
        long = [s for s in long if Path(s[1]).stem in a.only]
    failures: list[str] = []

    with tempfile.TemporaryDirectory(prefix="fss-certs-") as certs:
        make_certs(Path(certs))

        def job(items: list[tuple[str, str, Callable[[Net], None]]]) -> None:
            for prefix, name, fn in items:
                try:
                    with captured(prefix, out, name, Path(certs)) as net:
                        fn(net)
                except Exception:  # noqa: BLE001 - reported below, the others go on
                    failures.append(f"{name}:\n{traceback.format_exc()}")

        threads = [threading.Thread(target=job, args=([item],)) for item in long]
        threads.append(threading.Thread(target=job, args=(short,)))
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for f in failures:
        print(f"stratum_captures: failed: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
