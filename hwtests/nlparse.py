"""Pure parsers of hwt_nl's JSON lines (fixtures/traffic/hwt_nl.c) and of `ethtool --version`.

hwt_nl prints one JSON object: the answer (`"cmd"` names the request), an
`{"unsupported": ...}` line (exit 4) or an `{"error": ...}` line (exit 1). The
kernel leaves out what a device does not report, so every field but the queue's
id and type may be missing; a missing value is None here, never 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

PROVIDERS = ("dmabuf", "io-uring")    # the memory providers queue-get shows on an RX queue


class NlParseError(ValueError):
    """hwt_nl printed something that is not the answer it should be; the message says what."""


def last_object(stdout: str) -> dict[str, Any] | None:
    """The last line of stdout that is a JSON object, or None."""
    found = None
    for ln in stdout.splitlines():
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                obj = json.loads(ln)
            except ValueError:
                continue
            if isinstance(obj, dict):
                found = obj
    return found


def answer(stdout: str, cmd: str) -> dict[str, Any]:
    """The answer to `cmd`; NlParseError when there is none (an error line is not an answer)."""
    obj = last_object(stdout)
    if obj is None:
        raise NlParseError(f"hwt_nl {cmd}: no JSON answer in {stdout.strip()[:200]!r}")
    if obj.get("cmd") != cmd or "error" in obj or "unsupported" in obj:
        raise NlParseError(f"hwt_nl {cmd}: not an answer: {json.dumps(obj)[:300]}")
    return obj


def _uint(obj: dict, key: str, what: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise NlParseError(f"{what}: {key} is {v!r}, not a non-negative integer")
    return v


def _list(obj: dict, key: str, cmd: str) -> list[dict]:
    v = obj.get(key)
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise NlParseError(f"hwt_nl {cmd}: {key} is not a list of objects")
    return v


def provider_of(dmabuf: int | None, io_uring: bool) -> str | None:
    """The memory provider a queue or pool object names: a devmem binding id or the io-uring nest."""
    if dmabuf is not None:
        return "dmabuf"
    return "io-uring" if io_uring else None


@dataclass
class Queue:
    """One queue of `queue-get`, with the memory provider bound to it, if any."""

    id: int
    type: str                    # "rx" | "tx"
    ifindex: int | None = None
    napi_id: int | None = None
    dmabuf: int | None = None    # devmem binding id
    io_uring: bool = False       # an io_uring zcrx interface queue
    xsk: bool = False

    @property
    def provider(self) -> str | None:
        """"dmabuf" or "io-uring" while a memory provider holds the queue, else None."""
        return provider_of(self.dmabuf, self.io_uring)


def parse_queues(stdout: str) -> list[Queue]:
    obj = answer(stdout, "queue-get")
    out = []
    for i, q in enumerate(_list(obj, "queues", "queue-get")):
        what = f"hwt_nl queue-get: queues[{i}]"
        qid = _uint(q, "id", what)
        if qid is None or q.get("type") not in ("rx", "tx", "other"):
            raise NlParseError(f"{what}: no id or type: {json.dumps(q)[:200]}")
        out.append(Queue(qid, q["type"], _uint(q, "ifindex", what), _uint(q, "napi-id", what),
                         _uint(q, "dmabuf", what), q.get("io-uring") is True, q.get("xsk") is True))
    return out


def providers(queues: list[Queue], ids: list[int] | None = None) -> dict[int, str]:
    """RX queue id -> memory provider, for the queues that have one (among `ids` when given)."""
    return {q.id: p for q in queues if q.type == "rx" and (ids is None or q.id in ids)
            for p in [q.provider] if p}


@dataclass
class PagePool:
    """One page pool of `page-pool-get`: its buffers still out, and the memory provider behind it.

    ifindex None: the pool's netdev is gone (the kernel leaves the attribute out), yet the
    pool lives on until its last buffer comes back; detach_time is set once the driver let go.
    """

    id: int
    ifindex: int | None = None
    napi_id: int | None = None
    inflight: int | None = None
    inflight_mem: int | None = None
    detach_time: int | None = None
    dmabuf: int | None = None    # devmem binding id
    io_uring: bool = False       # an io_uring zcrx interface queue

    @property
    def provider(self) -> str | None:
        """"dmabuf" or "io-uring" when a memory provider backs the pool, else None."""
        return provider_of(self.dmabuf, self.io_uring)


def parse_page_pools(stdout: str) -> list[PagePool]:
    obj = answer(stdout, "page-pool-get")
    out = []
    for i, p in enumerate(_list(obj, "pools", "page-pool-get")):
        what = f"hwt_nl page-pool-get: pools[{i}]"
        pid = _uint(p, "id", what)
        if pid is None:
            raise NlParseError(f"{what}: no id: {json.dumps(p)[:200]}")
        out.append(PagePool(pid, _uint(p, "ifindex", what), _uint(p, "napi-id", what), _uint(p, "inflight", what),
                            _uint(p, "inflight-mem", what), _uint(p, "detach-time", what), _uint(p, "dmabuf", what),
                            p.get("io-uring") is True))
    return out


@dataclass
class QueueStats:
    """Per-queue counters of `qstats`; None where the driver does not count."""

    ifindex: int | None
    type: str
    id: int
    rx_bytes: int | None = None
    rx_packets: int | None = None
    tx_bytes: int | None = None
    tx_packets: int | None = None


def parse_qstats(stdout: str) -> list[QueueStats]:
    obj = answer(stdout, "qstats")
    out = []
    for i, s in enumerate(_list(obj, "qstats", "qstats")):
        what = f"hwt_nl qstats: qstats[{i}]"
        qid = _uint(s, "queue-id", what)
        if qid is None or s.get("queue-type") not in ("rx", "tx", "other"):
            continue      # a device-wide line (no queue): not per queue
        out.append(QueueStats(_uint(s, "ifindex", what), s["queue-type"], qid, _uint(s, "rx-bytes", what),
                              _uint(s, "rx-packets", what), _uint(s, "tx-bytes", what), _uint(s, "tx-packets", what)))
    return out


def rx_bytes(stats: list[QueueStats], queue: int) -> int | None:
    """rx-bytes of RX queue `queue`, or None when the driver does not count it."""
    for s in stats:
        if s.type == "rx" and s.id == queue:
            return s.rx_bytes
    return None


@dataclass
class NlRings:
    """`rings-get` as the kernel answers it (ETHTOOL_MSG_RINGS_GET_REPLY).

    tcp_data_split is the driver's effective state ("on"/"off"), never "auto";
    None: the kernel sent no attribute (the driver reports none). hds_thresh is
    None where the kernel or driver has no threshold (before 6.14, or a driver
    without ETHTOOL_RING_USE_HDS_THRS).
    """

    tcp_data_split: str | None
    hds_thresh: int | None
    hds_thresh_max: int | None
    rx: int | None = None
    rx_max: int | None = None


def _rings(obj: dict, what: str) -> NlRings:
    if not isinstance(obj, dict):
        raise NlParseError(f"{what}: not an object")
    split = obj.get("tcp-data-split")
    if split is not None and split not in ("on", "off", "unknown"):
        raise NlParseError(f"{what}: tcp-data-split is {split!r}")
    return NlRings(None if split in (None, "unknown") else split, _uint(obj, "hds-thresh", what),
                   _uint(obj, "hds-thresh-max", what), _uint(obj, "rx", what), _uint(obj, "rx-max", what))


def parse_rings(stdout: str) -> NlRings:
    return _rings(answer(stdout, "rings-get").get("rings"), "hwt_nl rings-get: rings")


@dataclass
class RingsSet:
    before: NlRings
    after: NlRings
    explicit: bool      # `expect` had to set the state explicitly: auto gave another one


def parse_rings_set(stdout: str) -> RingsSet:
    obj = answer(stdout, "rings-set")
    return RingsSet(_rings(obj.get("before"), "hwt_nl rings-set: before"),
                    _rings(obj.get("rings"), "hwt_nl rings-set: rings"), obj.get("explicit") is True)


def failure(stdout: str) -> dict[str, Any] | None:
    """The `unsupported` or `error` object hwt_nl printed, or None."""
    obj = last_object(stdout)
    return obj if obj is not None and ("unsupported" in obj or "error" in obj) else None


_ETHTOOL_VERSION = re.compile(r"ethtool version (\d+)\.(\d+)")


def ethtool_version(text: str) -> tuple[int, int] | None:
    """`ethtool --version` -> (6, 1); None when it says no version."""
    m = _ETHTOOL_VERSION.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def queue_rx_delta(before: list[QueueStats], after: list[QueueStats], queue: int) -> int | None:
    """rx-bytes RX queue `queue` counted between two qstats answers; None when either lacks it."""
    a, b = rx_bytes(before, queue), rx_bytes(after, queue)
    return None if a is None or b is None else b - a


def zero_copy_shortfall(delta: int, received: int, queue: int) -> str | None:
    """Why `received` payload bytes cannot all have come through the bound queue, or None when they can.

    The queue's rx-bytes count whole frames, so a flow that stayed on it gives at least
    the payload; less means io_uring zcrx copied the rest in from other queues (its copy
    fallback), which a zero-copy test must not pass.
    """
    if delta >= received:
        return None
    return (f"the bound queue {queue} counted {delta} rx-bytes but the receiver got {received} payload bytes: "
            f"at least {received - delta} bytes came through other queues and were copied, not zero-copy")
