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
