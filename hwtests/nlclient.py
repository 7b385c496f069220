"""Run hwt_nl (fixtures/traffic/hwt_nl.c) on a host and read its answers.

The binary is deployed with the traffic programs (`traffic.build(t).nl`); the
callers pass its path. Teardown of devmem and zcrx is asynchronous in the
kernel (the io_uring ring's exit work, the binding's release), so
`wait_released` polls `queue-get` until no memory provider holds the queues:
only then may header split or channels be restored, or the queue be bound again.
"""

from __future__ import annotations

import time
from typing import Sequence

from . import nlparse
from .errors import EXIT_INFRA, HwtestsError
from .transport import Transport

NL_TIMEOUT = 20.0          # one hwt_nl run
RELEASE_TIMEOUT = 10.0     # the kernel's selftests give the release 5 s
POLL_INTERVAL = 0.2


class NlError(HwtestsError):
    """hwt_nl failed (the kernel refused, no such device) or printed no answer."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, errno: int | None = None, extack: str = ""):
        self.errno, self.extack = errno, extack
        super().__init__(message)


class NlUnsupported(NlError):
    """The host's kernel has no such netlink family or command, or the device no such operation."""


class ProviderNotReleased(NlError):
    """A memory provider still held a queue when the wait ended."""


def run(t: Transport, nl: str, cmd: str, *args: str, timeout: float = NL_TIMEOUT) -> str:
    """hwt_nl CMD ARGS on the host; its stdout when it answered, else NlUnsupported/NlError naming the host."""
    r = t.run([nl, cmd, *map(str, args)], check=False, timeout=timeout)
    if r.exit_status == 0:
        return r.stdout
    fail = nlparse.failure(r.stdout) or {}
    errno = fail.get("errno") if isinstance(fail.get("errno"), int) else None
    extack = str(fail.get("extack") or "")
    if r.exit_status == 4:
        raise NlUnsupported(f"{t.name}: hwt_nl {cmd}: {fail.get('unsupported') or 'unsupported'}", errno, extack)
    detail = fail.get("error") or (r.stderr.strip() or r.stdout.strip())[-300:] or f"exit {r.exit_status}"
    raise NlError(f"{t.name}: hwt_nl {cmd} {' '.join(map(str, args))}: {detail}", errno, extack)


def _parsed(t: Transport, parse, stdout: str):
    try:
        return parse(stdout)
    except nlparse.NlParseError as exc:
        raise NlError(f"{t.name}: {exc}") from None


def queues(t: Transport, nl: str, iface: str) -> list[nlparse.Queue]:
    return _parsed(t, nlparse.parse_queues, run(t, nl, "queue-get", iface))


def qstats(t: Transport, nl: str, iface: str) -> list[nlparse.QueueStats]:
    return _parsed(t, nlparse.parse_qstats, run(t, nl, "qstats", iface))


def rings(t: Transport, nl: str, ifname: str) -> nlparse.NlRings:
    return _parsed(t, nlparse.parse_rings, run(t, nl, "rings-get", ifname))


def wait_released(t: Transport, nl: str, ifname: str, ids: Sequence[int], timeout: float = RELEASE_TIMEOUT,
                  interval: float = POLL_INTERVAL) -> float:
    """Wait until no memory provider holds RX queues `ids` of `ifname`; the seconds it took.

    Bounded: ProviderNotReleased after `timeout` s, naming the queues and providers.
    NlUnsupported (a kernel without netdev queue-get) is the caller's to judge.
    """
    t0 = time.monotonic()
    want = list(ids)
    while True:
        held = nlparse.providers(queues(t, nl, ifname), want)
        waited = time.monotonic() - t0
        if not held:
            return waited
        if waited >= timeout:
            what = ", ".join(f"queue {q}: {p}" for q, p in sorted(held.items()))
            raise ProviderNotReleased(f"{t.name}: {ifname}: memory provider still bound {waited:.1f} s after the "
                                      f"receiver exited ({what})")
        time.sleep(interval)
