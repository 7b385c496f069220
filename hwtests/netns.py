"""Open a TCP socket inside a named network namespace.

The netns lab adds nothing to the root namespace, so the controller reaches a
lab host's sshd through a socket created inside that host's namespace: the
calling thread enters the namespace, creates the socket and returns; the socket
keeps the namespace it was born in.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

from .errors import InfraError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in_netns(netns: str, family: int = socket.AF_INET) -> socket.socket:
    """A new unconnected TCP socket that lives in namespace `netns`."""
    path = f"/run/netns/{netns}"
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InfraError(f"network namespace '{netns}': {exc.strerror} ({path})") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _lock:
            try:
                _setns(target)
            except OSError as exc:
                raise InfraError(f"network namespace '{netns}': cannot enter: {exc.strerror}") from None
            try:
                return socket.socket(family, socket.SOCK_STREAM)
            finally:
                _setns(own)  # must not fail: we came from there
    finally:
        os.close(target)
        os.close(own)


def connect_in_netns(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket_in_netns(netns, family)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except OSError as exc:
        s.close()
        raise InfraError(f"{host}:{port} in netns '{netns}': {exc.strerror or exc}") from None
    return s
