"""`hwtests run -n 2`: one xdist worker per pair of the netns lab, one store, one run per pair."""

from __future__ import annotations

import sqlite3

import pytest

from conftest import run_cli
from hwtests.store import Store

pytestmark = pytest.mark.lab


def test_two_workers_two_pairs_one_store(netns_lab, tmp_path):
    db = tmp_path / "r.db"
    html = tmp_path / "r.html"
    r = run_cli("run", "--inventory", str(netns_lab), "--kernel-build", "par", "--db", str(db), "-k", "link",
                "-n", "2", "--html", str(html), "-p", "no:cacheprovider", timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "2 workers" in out or "gw1" in out, out[-2000:]
    runs = Store.open(str(db)).runs(labels=["par"])
    assert sorted(run.pair for run in runs) == ["pair1", "pair2"]           # one run per pair, not per worker
    assert all(run.status == "finished" for run in runs), runs
    oc = Store.open(str(db)).outcomes(labels=["par"])
    assert set(oc["pair"]) == {"pair1", "pair2"}
    assert (oc.groupby("pair").size() == 3).all(), oc                        # link_up + ping v4 + v6, each pair
    # one report, written once by the controller after the workers finished
    assert html.is_file() and out.count("report written to") == 1, out[-2000:]
    con = sqlite3.connect(str(db))
    assert con.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0      # every worker released its pair
    con.close()


def test_busy_pair_under_xdist_exits_4_and_other_pair_goes_on(netns_lab, tmp_path):
    """pair2 is held by another controller (a live lease in the store): with -n 2 its worker fails
    naming the holder, pair1's worker runs and stores, and the run's exit is 4 (a pair unusable),
    which the controller learns from the worker's reports."""
    import time

    from hwtests import inventory
    from hwtests.leases import LeaseDB, host_resource

    db = tmp_path / "r.db"
    st = Store.open(str(db))
    LeaseDB(st.connect, st.placeholder)         # the leases table
    inv = inventory.load(str(netns_lab))
    p2 = inv.pairs["pair2"]
    con = sqlite3.connect(str(db))
    for h in (p2.rx.host, p2.tx.host):
        con.execute("INSERT INTO leases VALUES (?, 'ci@lab-ctl-7:999:1', 'lab-ctl-7 pid 999 (build nightly)', ?, ?)",
                    (host_resource(inv.hosts[h]), time.time(), time.time() + 600))
    con.commit()
    r = run_cli("run", "--inventory", str(netns_lab), "--kernel-build", "busy", "--db", str(db), "-k", "link",
                "-n", "2", "--lease-wait", "1", "-p", "no:cacheprovider", timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 4, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "lab-ctl-7 pid 999 (build nightly)" in out, out[-3000:]
    oc = Store.open(str(db)).outcomes(labels=["busy"])
    assert set(oc["pair"]) == {"pair1"} and (oc["outcome"] == "passed").all(), oc
    # the other controller's lease is untouched; ours is released
    assert con.execute("SELECT DISTINCT holder FROM leases").fetchall() == [("ci@lab-ctl-7:999:1",)]
    con.close()
