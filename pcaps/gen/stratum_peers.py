"""The programs the Stratum captures are made of: our own small pool, miners, a DNS responder and
the benign JSON-RPC and WebSocket peers. Run inside a netlab namespace as
``python -m pcaps.gen.stratum_peers ROLE [options]`` (``stratum_captures`` does that).

Message shapes follow the public protocol descriptions, written anew here:

- Monero-style (XMRig): ``login`` with ``agent``/``algo``, the ``job`` in the login result and
  pushed as ``method: job``, ``submit``, ``keepalived`` (XMRig's ``doc/STRATUM.md`` and
  xmrig-proxy's protocol notes). The agent string has XMRig's real format
  ``XMRig/<version> (<os> <arch>) libuv/<version> gcc/<version>`` (XMRig ``src/base/kernel/
  Platform_unix.cpp`` builds it so).
- Stratum v1 (Bitcoin): ``mining.subscribe``, ``mining.authorize``, ``mining.set_difficulty``,
  ``mining.notify``, ``mining.submit`` (slush pool's Stratum mining protocol description).
- NiceHash EthereumStratum/1.0.0 (NiceHash's published specification): ``mining.subscribe`` with
  ``EthereumStratum/1.0.0``, the notify/extranonce result, ``mining.notify`` with seed and header
  hashes, ``mining.submit`` of worker, job and nonce.
- Stratum V2: only the sizes of the Noise NX handshake of stratum-mining/sv2-spec
  ``04-Protocol-Security.md`` (client 64 bytes, server 64 + 80 + 90 = 234) filled with random
  bytes: not a real Noise handshake, the sizes are all a flow meter sees.

Job pushes and share submits come at exponentially distributed times (seeded), as a pool's
new blocks and a miner's found shares do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import select
import socket
import ssl
import sys
import time

import dpkt

XMRIG_AGENT = "XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"
WALLET = ("44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBY"
          "BbV7ZCz3Lj4yXYa3rrtvq5ffRk")


def _hex(n: int, rng: random.Random) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(2 * n))


# --- the pool --------------------------------------------------------------------------------
class Pool:
    """One dialect (xmr, v1, ethstratum) for every connection; jobs pushed at random times."""

    def __init__(self, dialect: str, job_mean_s: float, seed: int) -> None:
        self.dialect = dialect
        self.job_mean_s = job_mean_s
        self.rng = random.Random(seed)
        self.height = 3_100_000

    def xmr_job(self) -> dict:
        self.height += 1
        return {"blob": _hex(76, self.rng), "job_id": _hex(4, self.rng), "target": "b88d0600",
                "algo": "rx/0", "height": self.height, "seed_hash": _hex(32, self.rng)}

    def v1_notify(self) -> dict:
        return {"id": None, "method": "mining.notify",
                "params": [_hex(4, self.rng), _hex(32, self.rng), _hex(48, self.rng),
                           _hex(24, self.rng), [_hex(32, self.rng) for _ in range(4)],
                           "20000000", "1705ae3a", f"{int(time.time()):08x}", True]}

    def eth_notify(self) -> dict:
        return {"id": None, "method": "mining.notify",
                "params": [_hex(4, self.rng), _hex(32, self.rng), _hex(32, self.rng), True]}

    def reply(self, msg: dict) -> list[dict]:
        """The pool's answers to one client message."""
        mid, method = msg.get("id"), msg.get("method")
        if self.dialect == "xmr":
            if method == "login":
                return [{"id": mid, "jsonrpc": "2.0", "error": None,
                         "result": {"id": _hex(8, self.rng), "job": self.xmr_job(),
                                    "extensions": ["algo", "nicehash", "connect", "tls",
                                                   "keepalive"], "status": "OK"}}]
            status = "KEEPALIVED" if method == "keepalived" else "OK"
            return [{"id": mid, "jsonrpc": "2.0", "error": None, "result": {"status": status}}]
        if method == "mining.subscribe":
            if self.dialect == "ethstratum":
                result = [["mining.notify", _hex(16, self.rng), "EthereumStratum/1.0.0"], "080c"]
            else:
                result = [[["mining.set_difficulty", "1"], ["mining.notify", "1"]], "08000002", 4]
            return [{"id": mid, "result": result, "error": None}]
        if method == "mining.authorize":
            diff = 0.5 if self.dialect == "ethstratum" else 8192
            first = self.eth_notify() if self.dialect == "ethstratum" else self.v1_notify()
            return [{"id": mid, "result": True, "error": None},
                    {"id": None, "method": "mining.set_difficulty", "params": [diff]}, first]
        return [{"id": mid, "result": True, "error": None}]

    def push(self) -> dict:
        if self.dialect == "xmr":
            return {"jsonrpc": "2.0", "method": "job", "params": self.xmr_job()}
        return self.eth_notify() if self.dialect == "ethstratum" else self.v1_notify()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(obj: dict) -> None:
            writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

        async def pusher() -> None:
            while True:
                await asyncio.sleep(min(self.rng.expovariate(1 / self.job_mean_s),
                                        4 * self.job_mean_s) + 0.3)
                send(self.push())
                await writer.drain()

        task = None
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                for out in self.reply(msg):
                    send(out)
                await writer.drain()
                if task is None and msg.get("method") in ("login", "mining.authorize"):
                    task = asyncio.create_task(pusher())
        except (ConnectionError, ValueError):
            pass
        finally:
            if task:
                task.cancel()
            writer.close()


def _tls_server(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def _tls_client(use: bool) -> ssl.SSLContext | None:
    if not use:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # our own self-signed pool
    return ctx


async def run_pool(a: argparse.Namespace) -> None:
    pool = Pool(a.dialect, a.job_mean, a.seed)
    server = await asyncio.start_server(pool.serve, a.bind, a.port,
                                        ssl=_tls_server(a.cert, a.key))
    async with server:
        await server.serve_forever()


# --- the DNS responder and the client's lookup ------------------------------------------------
async def run_dns(a: argparse.Namespace) -> None:
    names = dict(item.split("=", 1) for item in a.map)

    class Responder(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            try:
                q = dpkt.dns.DNS(data)
            except (dpkt.UnpackError, IndexError):
                return
            r = dpkt.dns.DNS(id=q.id, qr=1, opcode=q.opcode, rd=q.rd, ra=1, qd=q.qd)
            name = q.qd[0].name.lower() if q.qd else ""
            if name in names and q.qd[0].type == dpkt.dns.DNS_A:
                r.an = [dpkt.dns.DNS.RR(name=q.qd[0].name, type=dpkt.dns.DNS_A, ttl=300,
                                        rdata=socket.inet_aton(names[name]))]
            elif name not in names:
                r.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
            self.t.sendto(bytes(r), addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Responder, local_addr=(a.bind, 53))
    await asyncio.Event().wait()


def resolve(name: str, server: str) -> str:
    """An A lookup of ``name`` at ``server`` (one query, as a stub resolver sends it)."""
    q = dpkt.dns.DNS(id=secrets.randbelow(65536), rd=1,
                     qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(bytes(q), (server, 53))
        r = dpkt.dns.DNS(s.recv(2048))
    for an in r.an:
        if an.type == dpkt.dns.DNS_A:
            return socket.inet_ntoa(an.rdata)
    raise SystemExit(f"{name}: no address")


# --- miners ----------------------------------------------------------------------------------
def _client_messages(dialect: str) -> list[dict]:
    if dialect == "xmr":
        return [{"id": 1, "jsonrpc": "2.0", "method": "login",
                 "params": {"login": WALLET, "pass": "x", "agent": XMRIG_AGENT,
                            "algo": ["rx/0", "rx/wow", "cn/r", "cn-pico", "argon2/chukwav2"],
                            "rigid": ""}}]
    agent = ["NiceHashMiner/3.1.0", "EthereumStratum/1.0.0"] if dialect == "ethstratum" \
        else ["cgminer/4.10.0"]
    worker = "3Jq8vNqJd9F6QmVvT9nZz8x8hLk5TtJ8Qp.rig1" if dialect == "ethstratum" \
        else "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh.rig1"
    return [{"id": 1, "method": "mining.subscribe", "params": agent},
            {"id": 2, "method": "mining.authorize", "params": [worker, "x"]}]


async def run_miner(a: argparse.Namespace) -> None:
    rng = random.Random(a.seed)
    addr = resolve(a.name, a.dns) if a.dns else a.name
    reader, writer = await asyncio.open_connection(
        addr, a.port, ssl=_tls_client(a.tls), server_hostname=a.sni if a.tls else None)
    session = {"id": "", "job": "00000000"}
    mid = 10

    def send(obj: dict) -> None:
        writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def read() -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            res = msg.get("result")
            if isinstance(res, dict) and "job" in res:
                session["id"], session["job"] = res["id"], res["job"]["job_id"]
            params = msg.get("params")
            if msg.get("method") == "job":
                session["job"] = params["job_id"]
            elif msg.get("method") == "mining.notify":
                session["job"] = params[0]

    for m in _client_messages(a.dialect):
        send(m)
        await writer.drain()
        await asyncio.sleep(0.05)
    reading = asyncio.create_task(read())
    end = time.monotonic() + a.duration
    last_keepalive = time.monotonic()
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, rng.expovariate(1 / a.share_mean) + 0.2))
        if time.monotonic() >= end:
            break
        mid += 1
        if a.dialect == "xmr":
            if time.monotonic() - last_keepalive > 60:
                send({"id": mid, "jsonrpc": "2.0", "method": "keepalived",
                      "params": {"id": session["id"]}})
                last_keepalive = time.monotonic()
                mid += 1
            send({"id": mid, "jsonrpc": "2.0", "method": "submit",
                  "params": {"id": session["id"], "job_id": session["job"],
                             "nonce": _hex(4, rng), "result": _hex(32, rng), "algo": "rx/0"}})
        elif a.dialect == "ethstratum":
            send({"id": mid, "method": "mining.submit",
                  "params": ["rig1", session["job"], _hex(6, rng)]})
        else:
            send({"id": mid, "method": "mining.submit",
                  "params": ["rig1", session["job"], _hex(4, rng), f"{int(time.time()):08x}",
                             _hex(4, rng)]})
        await writer.drain()
    await asyncio.sleep(0.5)
    reading.cancel()
    writer.close()
    await writer.wait_closed()


# --- Stratum V2: handshake sizes only --------------------------------------------------------
async def run_sv2_pool(a: argparse.Namespace) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(64)  # -> e (EllSwift public key)
            writer.write(os.urandom(234))  # <- e, ee, s, es, SIGNATURE_NOISE_MESSAGE
            while data := await reader.read(4096):  # SetupConnection, channel, shares
                writer.write(os.urandom(22 + 16 + max(8, len(data) // 2)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, a.bind, a.port)
    async with server:
        await server.serve_forever()


async def run_sv2_miner(a: argparse.Namespace) -> None:
    rng = random.Random(a.seed)
    reader, writer = await asyncio.open_connection(a.name, a.port)
    writer.write(os.urandom(64))
    await reader.readexactly(234)
    for size in [22 + 16 + 70, 22 + 16 + 40] + [22 + 16 + 48] * a.shares:
        writer.write(os.urandom(size))
        await writer.drain()
        await reader.read(4096)
        await asyncio.sleep(rng.expovariate(1 / a.share_mean))
    writer.close()
    await writer.wait_closed()


# --- benign JSON-RPC: an Ethereum node API, a language server, an Electrum wallet, Zabbix ----
def _http_post(sock: socket.socket, host: str, path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return _read_http(sock)


def _read_http(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length")))
    while len(body) < n:
        body += sock.recv(4096)
    return body


ETH_NODE = {"eth_blockNumber": "0x12a05f2", "net_version": "1", "eth_chainId": "0x1",
            "eth_getBalance": "0x1bc16d674ec80000", "eth_gasPrice": "0x4a817c800",
            "eth_call": "0x" + "00" * 31 + "2a", "eth_getTransactionCount": "0x7"}


async def run_jsonrpc_server(a: argparse.Namespace) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                n = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                             if line.lower().startswith(b"content-length")))
                req = json.loads(await reader.readexactly(n))
                if req["method"] in ETH_NODE:
                    result: object = ETH_NODE[req["method"]]
                elif req["method"] in ("user.login", "login"):
                    result = secrets.token_hex(16)
                else:
                    result = [{"hostid": "10084", "host": "web01", "status": "0"}]
                body = json.dumps({"jsonrpc": "2.0", "result": result, "id": req["id"]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def lsp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                n = int(head.split(b":")[1].strip().split(b"\r\n")[0])
                req = json.loads(await reader.readexactly(n))
                if "id" not in req:
                    if req["method"] == "textDocument/didOpen":
                        out = {"jsonrpc": "2.0", "method": "textDocument/publishDiagnostics",
                               "params": {"uri": req["params"]["textDocument"]["uri"],
                                          "diagnostics": []}}
                    else:
                        continue
                elif req["method"] == "initialize":
                    out = {"jsonrpc": "2.0", "id": req["id"], "result": {"capabilities": {
                        "textDocumentSync": 1, "completionProvider": {"triggerCharacters": ["."]},
                        "hoverProvider": True}, "serverInfo": {"name": "pylsp", "version": "1.9"}}}
                elif req["method"] == "textDocument/completion":
                    out = {"jsonrpc": "2.0", "id": req["id"], "result": {"isIncomplete": False,
                           "items": [{"label": w, "kind": 3} for w in ("join", "split", "strip")]}}
                else:
                    out = {"jsonrpc": "2.0", "id": req["id"], "result": None}
                body = json.dumps(out).encode()
                writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def electrum(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answers = {"server.version": ["ElectrumX 1.16.0", "1.4"],
                   "server.banner": "Welcome to Electrum!",
                   "blockchain.headers.subscribe": {"height": 820000, "hex": "00" * 80},
                   "blockchain.scripthash.get_balance": {"confirmed": 150000, "unconfirmed": 0},
                   "blockchain.scripthash.subscribe": "ab" * 32,
                   "blockchain.estimatefee": 0.00012, "server.ping": None}
        try:
            while line := await reader.readline():
                req = json.loads(line)
                out = {"jsonrpc": "2.0", "id": req["id"], "result": answers.get(req["method"])}
                writer.write(json.dumps(out).encode() + b"\n")
                if req["method"] == "server.ping":  # a new block arrives meanwhile
                    note = {"jsonrpc": "2.0", "method": "blockchain.headers.subscribe",
                            "params": [{"height": 820001, "hex": "01" * 80}]}
                    writer.write(json.dumps(note).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    servers = [await asyncio.start_server(http, a.bind, 8545),
               await asyncio.start_server(http, a.bind, 80),
               await asyncio.start_server(lsp, a.bind, 2087),
               await asyncio.start_server(electrum, a.bind, 50001)]
    await asyncio.gather(*(s.serve_forever() for s in servers))


def run_jsonrpc_clients(a: argparse.Namespace) -> None:
    host = a.name
    with socket.create_connection((host, 8545)) as s:  # an Ethereum node's JSON-RPC API
        for k, m in enumerate(["net_version", "eth_chainId", "eth_blockNumber", "eth_gasPrice"]):
            _http_post(s, f"{host}:8545", "/", {"jsonrpc": "2.0", "method": m, "params": [],
                                                "id": k + 1})
        _http_post(s, f"{host}:8545", "/", {"jsonrpc": "2.0", "method": "eth_getBalance",
                                            "params": ["0x" + "d3" * 20, "latest"], "id": 9})
        _http_post(s, f"{host}:8545", "/", {"jsonrpc": "2.0", "method": "eth_call", "params": [
            {"to": "0x" + "a0" * 20, "data": "0x70a08231" + "00" * 32}, "latest"], "id": 10})
    with socket.create_connection((host, 80)) as s:  # a Zabbix-style API login, then a call
        auth = json.loads(_http_post(s, host, "/api_jsonrpc.php", {
            "jsonrpc": "2.0", "method": "user.login",
            "params": {"username": "Admin", "password": "zabbix"}, "id": 1}))["result"]
        _http_post(s, host, "/api_jsonrpc.php", {"jsonrpc": "2.0", "method": "login",
                                                 "params": {"login": "Admin", "pass": "zabbix"},
                                                 "id": 2})
        _http_post(s, host, "/api_jsonrpc.php", {"jsonrpc": "2.0", "method": "host.get",
                                                 "params": {"output": ["hostid", "host"]},
                                                 "auth": auth, "id": 3})
    with socket.create_connection((host, 2087)) as s:  # a language server exchange
        def lsp(msg: dict, answer: bool = True) -> None:
            body = json.dumps(msg).encode()
            s.sendall(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            if answer:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += s.recv(4096)
                head, _, rest = buf.partition(b"\r\n\r\n")
                n = int(head.split(b":")[1])
                while len(rest) < n:
                    rest += s.recv(4096)
        lsp({"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"processId": 4242, "rootUri": "file:///home/dev/project",
                        "capabilities": {}}})
        lsp({"jsonrpc": "2.0", "method": "initialized", "params": {}}, answer=False)
        lsp({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///home/dev/project/main.py", "languageId": "python", "version": 1,
            "text": "import os\nprint(os.getcwd())\n"}}})
        lsp({"jsonrpc": "2.0", "id": 2, "method": "textDocument/completion", "params": {
            "textDocument": {"uri": "file:///home/dev/project/main.py"},
            "position": {"line": 1, "character": 9}}})
        lsp({"jsonrpc": "2.0", "id": 3, "method": "shutdown"})
        lsp({"jsonrpc": "2.0", "method": "exit"}, answer=False)
    with socket.create_connection((host, 50001)) as s:  # an Electrum wallet
        f = s.makefile("rb")
        calls = [("server.version", ["Electrum 4.4.6", "1.4"]), ("server.banner", []),
                 ("blockchain.headers.subscribe", []),
                 ("blockchain.scripthash.get_balance", ["ab" * 32]),
                 ("blockchain.scripthash.subscribe", ["ab" * 32]),
                 ("blockchain.estimatefee", [2]), ("server.ping", [])]
        for k, (m, p) in enumerate(calls):
            s.sendall(json.dumps({"jsonrpc": "2.0", "id": k, "method": m, "params": p}).encode()
                      + b"\n")
            f.readline()
            time.sleep(0.2)
        f.readline()  # the header notification


# --- a WebSocket push channel ------------------------------------------------------------------
async def run_ws_server(a: argparse.Namespace) -> None:
    import websockets

    async def feed(ws: websockets.WebSocketServerProtocol) -> None:
        rng = random.Random(a.seed)
        seq = 0
        price = 100.0
        try:
            while True:
                await asyncio.sleep(a.period)
                seq += 1
                price += rng.uniform(-0.5, 0.5)
                await ws.send(json.dumps({"type": "ticker", "seq": seq, "symbol": "ACME",
                                          "price": round(price, 2), "ts": time.time()}))
        except websockets.ConnectionClosed:
            pass

    async with websockets.serve(feed, a.bind, a.port, ssl=_tls_server(a.cert, a.key)):
        await asyncio.Event().wait()


async def run_ws_client(a: argparse.Namespace) -> None:
    import websockets

    scheme = "wss" if a.tls else "ws"
    async with websockets.connect(f"{scheme}://{a.name}:{a.port}/feed", ssl=_tls_client(a.tls),
                                  server_hostname=a.sni if a.tls else None) as ws:
        end = time.monotonic() + a.duration
        while (left := end - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(ws.recv(), timeout=left)
            except TimeoutError:
                break


# --- IMAP IDLE -------------------------------------------------------------------------------
def run_imap_idle(a: argparse.Namespace) -> None:
    import imaplib

    cls = imaplib.IMAP4_SSL if a.tls else imaplib.IMAP4
    kwargs = {"ssl_context": _tls_client(True)} if a.tls else {}
    m = cls(a.name, a.port, **kwargs)
    m.login("alice", "wonderland")
    m.select("INBOX")
    tag = m._new_tag().decode()  # type: ignore[attr-defined]
    m.send(f"{tag} IDLE\r\n".encode())
    m.readline()  # + idling
    end = time.monotonic() + a.duration
    while (left := end - time.monotonic()) > 0:
        pending = getattr(m.sock, "pending", lambda: 0)()
        if pending or select.select([m.sock], [], [], min(left, 1.0))[0]:
            m.readline()  # * N EXISTS, * OK Still here
    m.send(b"DONE\r\n")
    while not m.readline().startswith(tag.encode()):
        pass
    m.logout()


# --- entry point -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pcaps.gen.stratum_peers")
    ap.add_argument("role", choices=["pool", "miner", "dns", "sv2-pool", "sv2-miner",
                                     "jsonrpc-server", "jsonrpc-clients", "ws-server",
                                     "ws-client", "imap-idle"])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=3333)
    ap.add_argument("--dialect", choices=["xmr", "v1", "ethstratum"], default="xmr")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--sni", default=None)
    ap.add_argument("--name", default="")
    ap.add_argument("--dns", default="", help="resolve --name at this DNS server first")
    ap.add_argument("--map", nargs="*", default=[], help="name=address for the DNS responder")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--share-mean", type=float, default=5.0)
    ap.add_argument("--job-mean", type=float, default=8.0)
    ap.add_argument("--shares", type=int, default=6)
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    sync = {"jsonrpc-clients": run_jsonrpc_clients, "imap-idle": run_imap_idle}
    if a.role in sync:
        sync[a.role](a)
        return
    coro = {"pool": run_pool, "miner": run_miner, "dns": run_dns, "sv2-pool": run_sv2_pool,
            "sv2-miner": run_sv2_miner, "jsonrpc-server": run_jsonrpc_server,
            "ws-server": run_ws_server, "ws-client": run_ws_client}[a.role]
    try:
        asyncio.run(coro(a))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
