"""Pair leases: unit behaviour on SQLite, racing controllers on SQLite and PostgreSQL, and two
real controllers on the netns lab.

The lab tests start real `hwtests run` processes against the same pair and the
same results database: the second one waits, then fails naming the holder
(exit 4), or runs once the first is done; a lease whose controller died is
taken over and the host's restore journal replayed before anything else.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import run_cli
from hwtests import inventory
from hwtests.errors import EXIT_INFRA
from hwtests.hostconn import connect
from hwtests.journal import Journal
from hwtests.leases import Lease, LeaseBusy, LeaseDB, holder_dead, host_resource
from hwtests.store import Store
from pgfixture import pg_server, pg_url, store_url  # noqa: F401


def _db(tmp_path):
    st = Store.open(str(tmp_path / "r.db"))
    return LeaseDB(st.connect, st.placeholder)


def test_all_or_nothing_and_release(tmp_path):
    db = _db(tmp_path)
    a = db.acquire(["h1", "h2"], "controller A", ttl=30, wait=0, holder="a@x:1:1")
    with pytest.raises(LeaseBusy) as ei:
        db.acquire(["h2", "h3"], "controller B", ttl=30, wait=0.3, holder="b@x:2:1")
    assert "controller A" in str(ei.value) and "h2" in str(ei.value)
    # B got nothing, not even the free h3
    assert [r for r, *_ in db.holders()] == ["h1", "h2"]
    a.release()
    b = db.acquire(["h2", "h3"], "controller B", ttl=30, wait=0, holder="b@x:2:1")
    assert sorted(r for r, *_ in db.holders()) == ["h2", "h3"]
    b.release()
    assert db.holders() == []


def test_expired_lease_is_taken_over(tmp_path):
    db = _db(tmp_path)
    con = sqlite3.connect(str(tmp_path / "r.db"))
    con.execute("INSERT INTO leases VALUES ('h1', 'ghost@elsewhere:1:1', 'a dead controller', ?, ?)",
                (time.time() - 100, time.time() - 1))
    con.commit()
    con.close()
    lease = db.acquire(["h1"], "me", ttl=30, wait=0)
    assert lease.taken_over and "a dead controller" in lease.taken_over[0]
    lease.release()


def test_lease_of_a_dead_local_process_is_taken_at_once(tmp_path):
    db = _db(tmp_path)
    p = subprocess.Popen(["sleep", "0"])
    p.wait()
    holder = f"root@{os.uname().nodename}:{p.pid}:1"
    assert holder_dead(holder)
    con = sqlite3.connect(str(tmp_path / "r.db"))
    con.execute("INSERT INTO leases VALUES ('h1', ?, 'killed controller', ?, ?)",
                (holder, time.time(), time.time() + 3600))
    con.commit()
    con.close()
    lease = db.acquire(["h1"], "me", ttl=30, wait=0)
    assert "process is gone" in lease.taken_over[0]
    lease.release()


def test_live_holder_is_not_dead():
    assert not holder_dead(f"root@{os.uname().nodename}:{os.getpid()}:1")
    assert not holder_dead(f"root@{os.uname().nodename}:1:1")        # init lives
    assert not holder_dead("root@some-other-machine:999999:1")       # cannot tell: wait for expiry
    assert not holder_dead("garbage")


def test_racing_controllers_one_wins_each_round(store_url):  # noqa: F811
    """Six controllers (own connections, started together) want overlapping host sets, twenty
    rounds, on SQLite and PostgreSQL: whoever wins holds all its hosts and no one else holds any
    of them; the losers hold nothing."""
    import threading

    with Store.open(store_url) as st:
        db = LeaseDB(st.connect, st.placeholder)
        wants = [["h1", "h2"], ["h2", "h3"], ["h3", "h1"], ["h1"], ["h2", "h3", "h1"], ["h3"]]
        for rnd in range(20):
            go = threading.Barrier(len(wants))
            got: dict[int, bool] = {}

            def race(i):
                go.wait()
                got[i] = db.try_acquire(wants[i], f"c{i}@x:{rnd}:1", f"controller {i}", 30)[0]

            threads = [threading.Thread(target=race, args=(i,)) for i in range(len(wants))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            winners = [i for i, ok in got.items() if ok]
            held = {r: info for r, info, _ in db.holders()}
            assert len(got) == len(wants) and winners, got
            for i in winners:
                assert all(held.get(r) == f"controller {i}" for r in wants[i]), (rnd, winners, held)
            claimed = [r for i in winners for r in wants[i]]
            assert len(claimed) == len(set(claimed)) == len(held), (rnd, winners, held)
            for i in winners:
                Lease(db, wants[i], f"c{i}@x:{rnd}:1", 30).release()
            assert db.holders() == []


def test_renewal_extends_expiry(tmp_path):
    db = _db(tmp_path)
    lease = db.acquire(["h1"], "me", ttl=0.6, wait=0)
    first = db.holders()[0][2]
    time.sleep(0.5)
    assert db.holders()[0][2] > first        # renewed every ttl/3
    lease.release()


# -- two real controllers on the netns lab --------------------------------------------------

ENV = dict(os.environ, HWTESTS_LINERATE_DURATION="4", HWTESTS_LINERATE_REPEAT="1",
           HWTESTS_LINERATE_WARMUP="1", HWTESTS_LINERATE_COOLDOWN="0")


def _hwtests(*args):
    exe = os.path.join(os.path.dirname(os.sys.executable), "hwtests")
    return [exe] + list(args)


def _wait_for_lease(db_path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            con = sqlite3.connect(str(db_path))
            rows = con.execute("SELECT holder FROM leases").fetchall()
            con.close()
            if rows:
                return rows
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError("the first run never took its lease")


@pytest.mark.lab
def test_second_controller_waits_then_fails_naming_holder(netns_lab, tmp_path):
    db = tmp_path / "r.db"
    first = subprocess.Popen(_hwtests("run", "--inventory", str(netns_lab), "--pair", "pair1", "--kernel-build",
                                      "A", "--db", str(db), "-k", "linerate and tcp", "-p", "no:cacheprovider"),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        _wait_for_lease(db)
        t0 = time.monotonic()
        r = run_cli("run", "--inventory", str(netns_lab), "--pair", "pair1", "--kernel-build", "B", "--db", str(db),
                    "-k", "link", "--lease-wait", "2", "-p", "no:cacheprovider", env=ENV, timeout=120)
        waited = time.monotonic() - t0
        out = r.stdout + r.stderr
        assert r.returncode == EXIT_INFRA, out[-3000:]
        assert f"pid {first.pid}" in out and "build A" in out, out[-3000:]
        assert "waiting up to 2 s" in out
        assert waited >= 2
        assert "Traceback" not in out
        # a patient second controller runs once the first is done
        r2 = run_cli("run", "--inventory", str(netns_lab), "--pair", "pair1", "--kernel-build", "B", "--db",
                     str(db), "-k", "link", "--lease-wait", "300", "-p", "no:cacheprovider", env=ENV, timeout=400)
        out1, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out1[-3000:]
        assert r2.returncode == 0, (r2.stdout + r2.stderr)[-3000:]
        st = Store.open(str(db))
        runs = {r.label: r for r in st.runs()}
        # the patient one started its run only after the first one finished
        assert runs["B"].started >= runs["A"].finished, (runs["A"], runs["B"])
        con = sqlite3.connect(str(db))
        assert con.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0     # both released
        con.close()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
            first.wait(60)


@pytest.mark.lab
def test_expired_lease_taken_over_and_journal_replayed_first(netns_lab, tmp_path):
    db = tmp_path / "r.db"
    inv = inventory.load(str(netns_lab))
    pair = inv.pairs["pair2"]
    host = inv.hosts[pair.rx.host]
    # a controller that died: its lease expired, and it left a changed sysctl journaled on the host
    st = Store.open(str(db))
    leases = LeaseDB(st.connect, st.placeholder)
    con = sqlite3.connect(str(db))
    for h in (pair.rx.host, pair.tx.host):
        con.execute("INSERT INTO leases VALUES (?, 'ghost@other-controller:4242:1', 'other-controller pid 4242', ?, ?)",
                    (host_resource(inv.hosts[h]), time.time() - 600, time.time() - 5))
    con.commit()
    con.close()
    t = connect(host, inv.defaults, inv)
    try:
        before = t.run(["sysctl", "-n", "net.ipv4.tcp_min_tso_segs"], timeout=10).stdout.strip()
        changed = "7" if before != "7" else "9"
        Journal(t, owner="other-controller:4242").sysctl("net.ipv4.tcp_min_tso_segs", changed)
        assert t.run(["sysctl", "-n", "net.ipv4.tcp_min_tso_segs"], timeout=10).stdout.strip() == changed
        r = run_cli("run", "--inventory", str(netns_lab), "--pair", "pair2", "--kernel-build", "C", "--db", str(db),
                    "-k", "link", "--lease-wait", "5", "-p", "no:cacheprovider", env=ENV, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-3000:]
        assert "took over" in out and "expired lease of other-controller pid 4242" in out, out[-3000:]
        assert f"{pair.rx.host}: restored 1 change(s)" in out, out[-3000:]
        assert t.run(["sysctl", "-n", "net.ipv4.tcp_min_tso_segs"], timeout=10).stdout.strip() == before
        assert leases.holders() == []
    finally:
        Journal(t, owner="test-cleanup").restore()
        t.close()
