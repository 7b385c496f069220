"""The line-rate suite on the netns lab, through `hwtests run`, into a throwaway SQLite store.

tcp and zerocopy run and pass (Gbit/s > 0, payload validated with zero
mismatches); devmem and zcrx skip naming the capability veth lacks. Durations
are cut short through the suite's environment knobs.

veth reports a nominal speed, so no % of link is stored. A second run declares a
link speed in the inventory (the inventory's word wins) with pair2 on IPv6 only:
there % of link and % of TCP ceiling are stored, checked against the MTU read
from the lab's veth and the ceiling counted by hand.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from hwtests.store import Store

pytestmark = pytest.mark.lab

MODES = ("tcp", "zerocopy", "devmem", "zcrx", "zcrx-nodev")


@pytest.fixture(scope="module")
def linerate_run(netns_lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("linerate")
    db = tmp / "results.db"
    env = dict(os.environ, HWTESTS_LINERATE_DURATION="3", HWTESTS_LINERATE_REPEAT="2",
               HWTESTS_LINERATE_WARMUP="1", HWTESTS_LINERATE_COOLDOWN="0")
    t0 = time.monotonic()
    r = run_cli("run", "--inventory", str(netns_lab), "--kernel-build", "lab-test", "-k", "linerate",
                "--db", str(db), "-rA", "-p", "no:cacheprovider", env=env, timeout=900)
    return {"r": r, "db": db, "seconds": time.monotonic() - t0}


def _outcomes(db) -> dict[tuple[str, str], tuple[str, str]]:
    st = Store.open(str(db))
    df = st.outcomes(labels=["lab-test"])
    return {(row.pair, row.test): (row.outcome, row.reason) for row in df.itertuples()}


def test_run_exit_and_outcomes(linerate_run):
    r = linerate_run["r"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    got = _outcomes(linerate_run["db"])
    for pair in ("pair1", "pair2"):
        for mode in ("tcp", "zerocopy"):
            assert got[(pair, f"linerate/{mode}")][0] == "passed", got
        out, why = got[(pair, "linerate/devmem")]
        assert out == "skipped" and "udmabuf" in why, why
        out, why = got[(pair, "linerate/zcrx")]
        assert out == "skipped" and "header_split" in why, why
        # device-less zcrx needs no NIC: it runs where the kernel's zcrx query offers ZCRX_REG_NODEV
        out, why = got[(pair, "linerate/zcrx-nodev")]
        assert out == "passed" or (out == "skipped" and "ZCRX_REG_NODEV" in why), (out, why)


def test_store_holds_validated_throughput(linerate_run):
    st = Store.open(str(linerate_run["db"]))
    df = st.samples(labels=["lab-test"], test_glob="linerate/*")
    assert set(df["test"]) == {"linerate/tcp", "linerate/zerocopy"}
    for mode in ("tcp", "zerocopy"):
        d = df[df["test"] == f"linerate/{mode}"]
        g = d[d["metric"] == "gbps"]
        assert len(g) == 2 * 2, g          # 2 pairs x 2 repetitions
        assert (g["value"] > 0).all() and (g["better"] == "higher").all()
        assert set(d["metric"]) >= {"gbps", "cpu_rx_pct", "cpu_tx_pct", "cpu_per_gb"}
        assert "link_pct" not in set(d["metric"])     # veth's 10000Mb/s is nominal: no % of it
        for m in ("cpu_rx_pct", "cpu_tx_pct"):
            v = d[d["metric"] == m]["value"]
            assert ((v > 0) & (v <= 100)).all() and (d[d["metric"] == m]["better"] == "lower").all()
        assert (d[d["metric"] == "cpu_per_gb"]["value"] > 0).all()
    # every gbps sample says the payload was validated with zero mismatches and carries the per-second samples
    con = sqlite3.connect(str(linerate_run["db"]))
    rows = con.execute("SELECT test, extra FROM samples WHERE metric = 'gbps'").fetchall()
    con.close()
    assert rows
    for test, extra in rows:
        x = json.loads(extra)
        assert x["mismatches"] == 0 and x["validated_bytes"] > 0, (test, x)
        assert len(x["per_second_gbps"]) >= 1 and x["traffic_src"], (test, x)


def test_binary_hashes_recorded(linerate_run):
    st = Store.open(str(linerate_run["db"]))
    runs = st.runs(labels=["lab-test"])
    assert runs
    for run in runs:
        assert any(k.endswith("traffic/hwt_rx") for k in run.artifacts), run.artifacts
        assert any(k.endswith("traffic_src") for k in run.artifacts), run.artifacts


DECLARED_MBPS = 10_000


@pytest.fixture(scope="module")
def declared_speed_run(netns_lab, tmp_path_factory):
    """The lab's inventory with a declared link speed on every data NIC and pair2 without IPv4."""
    tmp = tmp_path_factory.mktemp("ceiling")
    inv = yaml.safe_load(Path(netns_lab).read_text())
    pair2 = next(p for p in inv["pairs"] if p["name"] == "pair2")
    v6_only = {pair2["rx"]["host"], pair2["tx"]["host"]}
    for name, host in inv["hosts"].items():
        host["nics"]["data"]["speed"] = DECLARED_MBPS
        if name in v6_only:
            del host["nics"]["data"]["ipv4"]
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    db = tmp / "results.db"
    env = dict(os.environ, HWTESTS_LINERATE_DURATION="3", HWTESTS_LINERATE_REPEAT="2",
               HWTESTS_LINERATE_WARMUP="1", HWTESTS_LINERATE_COOLDOWN="0")
    r = run_cli("run", "--inventory", str(path), "--kernel-build", "lab-ceiling", "-k", "linerate and tcp",
                "--db", str(db), "-rA", "-p", "no:cacheprovider", env=env, timeout=900)
    return {"r": r, "db": db, "inv": inv}


def _veth_mtu(netns: str) -> int:
    """The data link's MTU as the kernel has it (read-only look into the lab's namespace)."""
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "dev", "data0"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return int(re.search(r"\bmtu (\d+)", out).group(1))


def test_link_and_ceiling_shares_with_a_declared_speed(declared_speed_run):
    r = declared_speed_run["r"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    inv = declared_speed_run["inv"]
    con = sqlite3.connect(str(declared_speed_run["db"]))
    rows = con.execute("SELECT r.pair, s.repetition, s.metric, s.value, s.unit, s.better, s.extra FROM samples s "
                       "JOIN runs r ON r.id = s.run_id WHERE s.test = 'linerate/tcp'").fetchall()
    con.close()
    by = {(pair, rep, metric): (value, unit, better, json.loads(extra or "{}"))
          for pair, rep, metric, value, unit, better, extra in rows}
    for pair, family, headers in (("pair1", 4, 52), ("pair2", 6, 72)):
        p = next(x for x in inv["pairs"] if x["name"] == pair)
        mtu = min(_veth_mtu(inv["hosts"][p[side]["host"]]["ssh"]["netns"]) for side in ("rx", "tx"))
        fraction = (mtu - headers) / (mtu + 38)          # payload / bytes on the wire per full segment
        for rep in (0, 1):
            gbps = by[(pair, rep, "gbps")][0]
            link, unit, better, lx = by[(pair, rep, "link_pct")]
            share, sunit, sbetter, sx = by[(pair, rep, "ceiling_pct")]
            assert (unit, better, sunit, sbetter) == ("%", "higher", "%", "higher")
            assert link == pytest.approx(100 * gbps * 1000 / DECLARED_MBPS, rel=1e-9)
            assert share == pytest.approx(link / fraction, rel=1e-9)
            assert share > link
            print(f"{pair} rep {rep}: {gbps:.2f} Gbit/s, {link:.1f}% of {DECLARED_MBPS} Mb/s, "
                  f"{share:.1f}% of the TCP ceiling ({100 * fraction:.2f}% at MTU {mtu}, IPv{family})")
            for x in (lx, sx):
                assert x["speed_mbps"] == DECLARED_MBPS and x["family"] == family
                assert x["mtu"] == x["mtu_rx"] == x["mtu_tx"] == mtu
                assert x["ceiling_pct"] == round(100 * fraction, 3)
