"""Leases on lab hosts, kept in the results database.

A run takes both hosts of its pair in one transaction before touching them,
renews the lease while it runs, and releases it at the end. A second
controller waits up to a timeout and then fails naming the holder. A lease
whose holder stopped renewing (a controller that died) expires and is taken
over; the taker then replays the hosts' restore journals before anything else
(the plugin does that on every acquire anyway).

Works on SQLite and PostgreSQL alike: one conditional upsert per host inside
one transaction, so two controllers can never both hold a host.

A plan of several sessions (`hwtests ab`, `hwtests run --boot`) takes the lease
once, before its first kernel switch, and holds it to its end; each pytest
session it starts is given the holder (`--lease-holder`) and borrows the lease
instead of taking and releasing its own, so no other controller can slip in
between two boots of one plan.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from .errors import InfraError

CREATE = """CREATE TABLE IF NOT EXISTS leases (
    resource TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    info TEXT NOT NULL,
    acquired DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
)"""


def seconds(lo: float):
    """An argparse type: seconds from `lo` to a day (a lease TTL of 0 would renew in a busy loop)."""
    def parse(v: str) -> float:
        try:
            f = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is not a number of seconds") from None
        if not lo <= f <= 86400:
            raise argparse.ArgumentTypeError(f"{v} is not between {lo:g} and 86400 seconds")
        return f
    return parse


def holder_id() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


def host_resource(host) -> str:
    """A host's identity across inventories: where its sshd is, not what the file calls it."""
    if host.ssh is None:
        return f"local://{socket.gethostname()}"
    s = host.ssh
    where = f"ssh://{s.user}@{s.host}:{s.port}"
    if s.netns:
        where += f"/netns={s.netns}"
    if s.jump:
        where += f"/via={s.jump}"
    return where


def holder_dead(holder: str) -> bool:
    """True when `holder` (see holder_id) ran on this machine and its process is gone.

    A controller killed with SIGKILL cannot release its lease; on the same machine we
    can tell at once instead of making the next run wait for the expiry.
    """
    try:
        who, pid, _thread = holder.rsplit(":", 2)
        host = who.split("@", 1)[1]
        pid_n = int(pid)
    except (ValueError, IndexError):
        return False
    if host != socket.gethostname() or pid_n == os.getpid():
        return False
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:   # a zombie (killed, not yet reaped) is dead too
        with open(f"/proc/{pid_n}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class LeaseBusy(InfraError):
    pass


@dataclass
class Lease:
    db: "LeaseDB"
    resources: list[str]
    holder: str
    ttl: float
    taken_over: list[str] = field(default_factory=list)
    lost: str | None = None
    borrowed: bool = False     # held by the plan this session runs in: its owner renews and releases it
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_renewing(self) -> None:
        def loop():
            while not self._stop.wait(self.ttl / 3):
                try:
                    if not self.db.renew(self):
                        self.lost = "lease taken by another controller"
                        return
                except Exception as exc:   # DB unreachable: keep trying until expiry
                    self.lost = f"lease renewal failed: {exc}"
        self._thread = threading.Thread(target=loop, name="hwtests-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if self.borrowed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.db.release(self)


class LeaseDB:
    """Lease operations over a DB-API connection factory of the results store."""

    def __init__(self, connect, placeholder: str):
        self._connect = connect      # returns a new DB-API connection
        self.ph = placeholder        # '?' (sqlite) or '%s' (psycopg)
        with self._conn() as c:
            cur = c.cursor()
            cur.execute(CREATE)
            c.commit()

    def _conn(self):
        return closing(self._connect())

    def _sql(self, s: str) -> str:
        return s.replace("?", self.ph)

    def try_acquire(self, resources: list[str], holder: str, info: str, ttl: float) -> tuple[bool, list[str], str]:
        """All resources or none. Returns (ok, taken_over, blocking holder info)."""
        now = time.time()
        with self._conn() as c:
            cur = c.cursor()
            taken = []
            try:
                for r in sorted(resources):   # a fixed order: no lock-order deadlock between controllers
                    cur.execute(self._sql("SELECT holder, info, expires FROM leases WHERE resource = ?"), (r,))
                    row = cur.fetchone()
                    stale_before = now
                    if row and row[0] != holder and row[2] >= now and holder_dead(row[0]):
                        stale_before = row[2] + 1          # its controller died on this machine
                        taken.append(f"{r} (lease of {row[1]}, whose process is gone)")
                    elif row and row[0] != holder and row[2] < now:
                        taken.append(f"{r} (expired lease of {row[1]})")
                    cur.execute(self._sql(
                        "INSERT INTO leases (resource, holder, info, acquired, expires) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (resource) DO UPDATE SET holder = excluded.holder, info = excluded.info, "
                        "acquired = excluded.acquired, expires = excluded.expires "
                        "WHERE leases.expires < ? OR leases.holder = ?"),
                        (r, holder, info, now, now + ttl, stale_before, holder))
                    if cur.rowcount != 1:
                        cur.execute(self._sql("SELECT info, expires FROM leases WHERE resource = ?"), (r,))
                        row = cur.fetchone()
                        c.rollback()
                        who = f"{row[0]} (until {time.strftime('%H:%M:%S', time.localtime(row[1]))})" if row else "?"
                        return False, [], f"{r} is held by {who}"
                c.commit()
            except Exception:
                c.rollback()
                raise
        return True, taken, ""

    def acquire(self, resources: list[str], info: str, ttl: float = 60.0, wait: float = 600.0,
                progress=lambda s: None, holder: str | None = None) -> Lease:
        holder = holder or holder_id()
        deadline = time.monotonic() + wait
        said = False
        while True:
            ok, taken, blocker = self.try_acquire(resources, holder, info, ttl)
            if ok:
                lease = Lease(self, list(resources), holder, ttl, taken_over=taken)
                lease.start_renewing()
                return lease
            if time.monotonic() >= deadline:
                raise LeaseBusy(f"lease not acquired within {wait:g} s: {blocker}")
            if not said:
                progress(f"hwtests: waiting up to {wait:g} s for {blocker}")
                said = True
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def borrow(self, resources: list[str], holder: str) -> Lease:
        """The lease `holder` holds on all of `resources`, for a session run inside its plan.

        Raises LeaseBusy when any of them is not (or no longer) held by `holder`: the plan
        lost its lease, and running now could share the hosts with another controller."""
        now = time.time()
        with self._conn() as c:
            cur = c.cursor()
            missing = []
            for r in sorted(resources):
                cur.execute(self._sql("SELECT holder, info, expires FROM leases WHERE resource = ?"), (r,))
                row = cur.fetchone()
                if not row or row[0] != holder or row[2] < now:
                    missing.append(f"{r} ({'held by ' + row[1] if row and row[0] != holder else 'not held'})")
        if missing:
            raise LeaseBusy(f"the lease of the plan this run belongs to ({holder}) does not hold "
                            + ", ".join(missing))
        return Lease(self, list(resources), holder, ttl=0.0, borrowed=True)

    def renew(self, lease: Lease) -> bool:
        now = time.time()
        with self._conn() as c:
            cur = c.cursor()
            n = 0
            for r in lease.resources:
                cur.execute(self._sql("UPDATE leases SET expires = ? WHERE resource = ? AND holder = ?"),
                            (now + lease.ttl, r, lease.holder))
                n += cur.rowcount
            c.commit()
        return n == len(lease.resources)

    def release(self, lease: Lease) -> None:
        with self._conn() as c:
            cur = c.cursor()
            for r in lease.resources:
                cur.execute(self._sql("DELETE FROM leases WHERE resource = ? AND holder = ?"), (r, lease.holder))
            c.commit()

    def holders(self) -> list[tuple[str, str, float]]:
        with self._conn() as c:
            cur = c.cursor()
            cur.execute("SELECT resource, info, expires FROM leases ORDER BY resource")
            return [tuple(r) for r in cur.fetchall()]


def pair_resources(inv, pair) -> list[str]:
    """The lease resources of a pair's hosts, sorted."""
    return sorted({host_resource(inv.hosts[pair.rx.host]), host_resource(inv.hosts[pair.tx.host])})


@contextmanager
def holding(store, resources: list[str], info: str, ttl: float = 60.0, wait: float = 600.0,
            progress=lambda s: None) -> Iterator[Lease]:
    """Hold `resources` for the whole block (renewed), released at its end whatever happens."""
    lease = LeaseDB(store.connect, store.placeholder).acquire(resources, info, ttl=ttl, wait=wait, progress=progress)
    try:
        yield lease
    finally:
        lease.release()
