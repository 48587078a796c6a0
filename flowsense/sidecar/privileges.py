"""Dropping root once the capture sockets are open (least privilege).

``drop_to(user, keep_net_admin)``: supplementary groups, gid, then uid (that order: after setuid
the process could no longer change its groups). With ``keep_net_admin`` (``--enforce`` needs
nftables), PR_SET_KEEPCAPS keeps the permitted set across setuid, then capset leaves exactly
CAP_NET_ADMIN permitted, effective and inheritable, and raises it as an ambient capability so
the ``nft`` the policy runs inherits it. Everything else (CAP_NET_RAW included: the open sockets
stay usable, no new one can be made) is gone. capset(2) and prctl(2) through ctypes: the
standard library has no binding.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import pwd

from flowsense.errors import ConfigError

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise ConfigError(f"--user: {what} failed: {os.strerror(ctypes.get_errno())}")


def set_caps(mask: int) -> None:
    """Permitted, effective and inheritable sets to ``mask`` (capabilities 0-31)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask, mask, mask), _CapData(0, 0, 0))
    _check(_libc().capset(ctypes.byref(hdr), data), "capset")


def drop_to(user: str, keep_net_admin: bool = False) -> None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user {user}: no such user") from None
    # the install may be unreadable by the user (a root-owned virtualenv): codecs looked up
    # by name later (open(..., encoding="ascii")) are loaded while we still can
    for name in ("ascii", "latin-1", "utf-8"):
        codecs.lookup(name)
    libc = _libc()
    if keep_net_admin:
        _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    try:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as exc:
        raise ConfigError(f"--user {user}: {exc.strerror}") from None
    if keep_net_admin:
        set_caps(1 << CAP_NET_ADMIN)
        _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN, 0, 0),
               "prctl(PR_CAP_AMBIENT_RAISE)")
    os.environ["HOME"] = pw.pw_dir
    os.environ["USER"] = pw.pw_name
