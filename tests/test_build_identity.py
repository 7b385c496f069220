"""Trustworthy results: the kernel a label names is the kernel that ran, the deployed
programs are in every run, and a plan's sessions run under one lease.

Pure checks, then the real netns lab (real sshd in namespaces, real SQLite): a build
whose declared release is not what the hosts run stops `hwtests run` with exit 2,
one line naming each host with both releases, and nothing stored or changed; what a
test deploys after the run began is still stored with the run. Kernel switching
(`--boot`, `hwtests ab` under one lease) needs real kernels: tests/test_vmlab.py.
"""

from __future__ import annotations

import sqlite3
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from hwtests import identity, inventory
from hwtests.errors import EXIT_USAGE, InputError
from hwtests.hostconn import connect
from hwtests.inventory import KernelBuild
from hwtests.journal import Journal
from hwtests.kswitch import identity_mismatch
from hwtests.leases import LeaseBusy, LeaseDB
from hwtests.store import HostInfo, Run, Sample, Store

HASH = "3f" * 32


# -- pure ---------------------------------------------------------------------------------------

def test_identity_mismatch_names_host_and_both_releases():
    kb = KernelBuild("base", release="6.1.0-41-cloud-amd64")
    assert identity_mismatch("a1", "base", kb, "6.1.0-41-cloud-amd64", None) is None
    why = identity_mismatch("a1", "base", kb, "6.12.57+deb12-cloud-amd64", None)
    assert why == ("a1: kernel build 'base' declares release 6.1.0-41-cloud-amd64, "
                   "but a1 runs 6.12.57+deb12-cloud-amd64")
    # nothing declared: accepted; undeclared label on a host: accepted
    assert identity_mismatch("a1", "base", KernelBuild("base"), "anything", None) is None
    assert identity_mismatch("a1", "base", None, "anything", None) is None


def test_identity_mismatch_config_hash_prefix():
    kb = KernelBuild("p", release="7.0", config_hash=HASH[:12].upper())
    assert identity_mismatch("b1", "p", kb, "7.0", HASH) is None
    why = identity_mismatch("b1", "p", kb, "7.0", "ab" * 32)
    assert why and "b1" in why and HASH[:12].upper() in why and "abababab" in why
    why = identity_mismatch("b1", "p", kb, "7.0", None)
    assert why and "no readable config" in why


def _run(rid: int, label: str, *releases: str, cfg: str | None = None) -> Run:
    hosts = [HostInfo(role, f"h{i}", rel, None, cfg, None, None, None, None)
             for i, (role, rel) in enumerate(zip(("rx", "tx"), releases))]
    return Run(label, "p1", "ctl", "inv", "measured", hosts, id=rid)


def test_conflicts_name_the_label_and_runs():
    runs = [_run(1, "base", "6.1", "6.1"), _run(2, "base", "6.1", "6.1"), _run(3, "base", "6.12", "6.12"),
            _run(4, "cand", "6.12", "6.12"), _run(5, "cand", "6.12", "6.12"),
            Run("imp", "", "ctl", "", "import", [], id=6)]
    out = identity.conflicts(runs)
    assert len(out) == 1
    assert out[0].startswith("build 'base' was measured on 2 different kernels: ")
    assert "6.1 in runs 1, 2" in out[0] and "6.12 in run 3" in out[0]
    assert identity.conflicts(runs[3:]) == []


def test_conflicts_see_config_hash_and_mixed_hosts():
    a = _run(1, "x", "7.0", "7.0", cfg="aa" * 32)
    b = _run(2, "x", "7.0", "7.0", cfg="bb" * 32)
    c = _run(3, "y", "7.0", "6.12")
    d = _run(4, "y", "7.0", "7.0")
    out = identity.conflicts([a, b, c, d])
    assert len(out) == 2
    assert "config aaaaaaaaaaaa" in out[0] and "config bbbbbbbbbbbb" in out[0]
    assert "6.12 + 7.0 in run 3" in out[1]
    many = [_run(i, "z", "6.1", "6.1") for i in range(1, 10)] + [_run(10, "z", "6.2", "6.2")]
    assert "runs 1, 2, 3, 4, 5, 6 and 3 more" in identity.conflicts(many)[0]


def test_inventory_config_hash_checked(tmp_path):
    def inv(cfg: str) -> Path:
        p = tmp_path / "inv.yaml"
        p.write_text(textwrap.dedent(f"""\
            hosts:
              a:
                local: true
                nics: {{d: {{ifname: lo, ipv4: 127.0.0.1}}}}
                kernels:
                  base: {{release: "6.1", config_hash: "{cfg}"}}
            """))
        return p
    assert inventory.load(inv(HASH[:16])).hosts["a"].kernels["base"].config_hash == HASH[:16]
    with pytest.raises(InputError) as ei:
        inventory.load(inv("xyz"))
    assert "inv.yaml:6: hosts.a.kernels.base.config_hash: " in str(ei.value)


# -- store and leases (real SQLite) ----------------------------------------------------------------

def test_artifacts_added_after_the_run_began(tmp_path):
    st = Store.open(str(tmp_path / "r.db"))
    rid = st.begin_run(Run("b", "p", "c", "i", "measured", [], artifacts={"a1:traffic_src": "11"}))
    st.add_samples(rid, [Sample("t", "gbps", 1.0, "Gbit/s", "higher", 0)])
    st.add_artifacts(rid, {"a1:traffic/hwt_rx": "22", "a1:traffic_src": "99"})
    (run,) = st.runs()
    assert run.artifacts == {"a1:traffic_src": "11", "a1:traffic/hwt_rx": "22"}   # first digest kept
    with pytest.raises(InputError):
        st.add_artifacts(rid + 1, {"x": "1"})


def test_borrowed_lease_is_the_owners(tmp_path):
    st = Store.open(str(tmp_path / "r.db"))
    db = LeaseDB(st.connect, st.placeholder)
    owner = db.acquire(["h1", "h2"], "hwtests ab", ttl=30, wait=0, holder="me@x:1:1")
    b = db.borrow(["h2", "h1"], "me@x:1:1")
    assert b.borrowed
    b.release()                                   # a borrower never releases the owner's lease
    assert sorted(r for r, *_ in db.holders()) == ["h1", "h2"]
    with pytest.raises(LeaseBusy) as ei:          # someone else's holder id borrows nothing
        db.borrow(["h1"], "other@x:2:1")
    assert "held by hwtests ab" in str(ei.value)
    with pytest.raises(LeaseBusy) as ei:          # a resource the plan does not hold
        db.borrow(["h1", "h3"], "me@x:1:1")
    assert "h3 (not held)" in str(ei.value)
    owner.release()
    assert db.holders() == []
    with pytest.raises(LeaseBusy):                # the plan's lease is gone
        db.borrow(["h1"], "me@x:1:1")


# -- the netns lab ------------------------------------------------------------------------------------

def _with_builds(src: str, dst: Path, builds: dict[str, dict]) -> Path:
    doc = yaml.safe_load(Path(src).read_text())
    for h in doc["hosts"].values():
        h["kernels"] = builds
    dst.write_text(yaml.safe_dump(doc))
    return dst


def _pair1_hosts(inv_path: Path) -> list[str]:
    inv = inventory.load(inv_path)
    p = inv.pairs["pair1"]
    return [p.rx.host, p.tx.host]


def test_wrong_release_stops_run_before_anything(netns_lab, tmp_path):
    inv0 = inventory.load(netns_lab)
    host0 = inv0.hosts[_pair1_hosts(netns_lab)[0]]
    t = connect(host0, inv0.defaults, inv0)
    try:
        running = t.run("uname -r", timeout=10).stdout.strip()
    finally:
        t.close()
    inv = _with_builds(netns_lab, tmp_path / "inv.yaml",
                       {"old": {"release": "6.1.0-41-cloud-amd64"}, "now": {"release": running}})
    db = tmp_path / "r.db"
    r = run_cli("run", "--inventory", str(inv), "--kernel-build", "old", "--pair", "pair1", "--db", str(db),
                "-k", "tcp", timeout=120)
    assert r.returncode == EXIT_USAGE, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for h in _pair1_hosts(netns_lab):
        assert f"{h}: kernel build 'old' declares release 6.1.0-41-cloud-amd64, but {h} runs {running}" in lines[0]
    assert "--boot" in lines[0]
    # nothing stored, nothing changed or left on the hosts
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    for h in _pair1_hosts(netns_lab):
        t = connect(inv0.hosts[h], inv0.defaults, inv0)
        try:
            assert Journal(t, owner="test").pending() == []
        finally:
            t.close()
    # the declared build that is running is accepted and its results carry that release
    r = run_cli("run", "--inventory", str(inv), "--kernel-build", "now", "--pair", "pair1", "--db", str(db),
                "-k", "linerate and tcp", timeout=300,
                env=_quick_env())
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
    (run,) = Store.open(str(db)).runs()
    assert {h.kernel_release for h in run.hosts} == {running}


def test_plain_pytest_with_the_plugin_refuses_the_wrong_build(netns_lab, tmp_path):
    """The plugin checks too (plain `pytest --inventory ...`, and each session of a plan): the
    pair's tests fail in one line naming the host, exit 2, nothing stored."""
    inv = _with_builds(netns_lab, tmp_path / "inv.yaml", {"old": {"release": "0.0.1-not-this"}})
    (tmp_path / "test_x.py").write_text("def test_one(hw_pair, hw_record):\n    hw_record('x', 1, 'u', 'lower')\n")
    db = tmp_path / "r.db"
    r = _pytest(tmp_path, "--inventory", str(inv), "--kernel-build", "old", "--pair", "pair1", "--db", str(db))
    assert r.returncode == EXIT_USAGE, (r.returncode, r.stdout[-3000:])
    assert "declares release 0.0.1-not-this, but" in r.stdout and "wrong kernel build" in r.stdout
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_artifacts_stored_whatever_the_test_order(netns_lab, tmp_path):
    """The run row is created by the first sample; programs deployed by a later test still get
    their hashes into it (they used to be kept only for a run not yet created)."""
    (tmp_path / "test_order.py").write_text(textwrap.dedent("""\
        from hwtests import traffic

        def test_a_records_first(hw_pair, hw_record):
            hw_record("x", 1.0, "u", "lower")

        def test_b_deploys_later(hw_pair, hw_session):
            bins = traffic.build(hw_pair.rx.t)
            hw_session.deployed(hw_pair.rx.name, bins.artifacts())
        """))
    db = tmp_path / "r.db"
    r = _pytest(tmp_path, "--inventory", str(netns_lab), "--kernel-build", "order", "--pair", "pair1",
                "--db", str(db))
    assert r.returncode == 0, r.stdout[-3000:]
    (run,) = Store.open(str(db)).runs()
    rx = _pair1_hosts(netns_lab)[0]
    assert f"{rx}:traffic/hwt_rx" in run.artifacts and f"{rx}:traffic_src" in run.artifacts, run.artifacts
    assert all(len(v) == 64 for v in run.artifacts.values())


def _pytest(where: Path, *args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(where),
                           str(where), *args], capture_output=True, text=True, timeout=300, cwd=where)


def _quick_env() -> dict:
    import os
    return dict(os.environ, HWTESTS_LINERATE_DURATION="1", HWTESTS_LINERATE_REPEAT="1",
                HWTESTS_LINERATE_WARMUP="0", HWTESTS_LINERATE_COOLDOWN="0")


def test_lease_borrowed_by_a_session_is_not_released(netns_lab, tmp_path):
    """`--lease-holder` (what ab and run --boot pass): the session runs under the plan's lease and
    leaves it held; without the plan's lease the session refuses to touch the pair."""
    db = tmp_path / "r.db"
    st = Store.open(str(db))
    inv = inventory.load(netns_lab)
    from hwtests.leases import pair_resources
    res = pair_resources(inv, inv.pairs["pair1"])
    owner = LeaseDB(st.connect, st.placeholder).acquire(res, "a plan", ttl=60, wait=0, holder="plan@here:1:1")
    (tmp_path / "test_x.py").write_text("def test_one(hw_pair, hw_record):\n    hw_record('x', 1, 'u', 'lower')\n")
    try:
        r = _pytest(tmp_path, "--inventory", str(netns_lab), "--kernel-build", "b", "--pair", "pair1",
                    "--db", str(db), "--lease-holder", "plan@here:1:1")
        assert r.returncode == 0, r.stdout[-3000:]
        assert sorted(x for x, *_ in LeaseDB(st.connect, st.placeholder).holders()) == res
        t0 = time.monotonic()
        r = _pytest(tmp_path, "--inventory", str(netns_lab), "--kernel-build", "b", "--pair", "pair1",
                    "--db", str(db), "--lease-holder", "someone@else:2:2")
        assert r.returncode == 4 and "held by a plan" in r.stdout, r.stdout[-3000:]
        assert time.monotonic() - t0 < 60
    finally:
        owner.release()


# -- readers warn about a label measured on two kernels (real SQLite, the real CLI) -------------------

def _store_label(url: str, label: str, release: str, values: list[float]) -> list[int]:
    ids = []
    with Store.open(url) as s:
        for i, v in enumerate(values):
            hosts = [HostInfo("rx", "dut1", release, f"Linux {release}", "cfg", None, f"boot-{release}-{i}",
                              None, None), HostInfo("tx", "peer1", release, None, "cfg", None, None, None, None)]
            rid = s.begin_run(Run(label, "p1", "ctl", "inv", "measured", hosts))
            s.add_samples(rid, [Sample("pagepool/fast", "cycles", v, "cycles", "lower", 0)])
            s.finish_run(rid)
            ids.append(rid)
    return ids


def test_compare_history_report_name_the_runs_of_a_mixed_label(tmp_path):
    url = str(tmp_path / "r.db")
    good = _store_label(url, "base", "6.1.0-41-cloud-amd64", [8.6, 8.5, 8.7, 8.6])
    bad = _store_label(url, "base", "6.12.57+deb12-cloud-amd64", [9.9, 9.8])
    _store_label(url, "cand", "6.12.57+deb12-cloud-amd64", [8.6, 8.7, 8.5, 8.6])
    want = (f"build 'base' was measured on 2 different kernels: 6.1.0-41-cloud-amd64 (config cfg) in runs "
            f"{', '.join(map(str, good))}; 6.12.57+deb12-cloud-amd64 (config cfg) in runs "
            f"{', '.join(map(str, bad))}")
    r = run_cli("compare", "--baseline", "base", "--candidate", "cand", "--db", url, "--json")
    assert r.returncode in (0, 1, 3), r.stderr
    assert want in r.stderr
    assert any(want in w for w in __import__("json").loads(r.stdout)["warnings"])
    r = run_cli("history", "--metric", "cycles", "--db", url)
    assert r.returncode == 0 and want in r.stderr, r.stderr
    out = tmp_path / "r.html"
    r = run_cli("report", "--builds", "base,cand", "--db", url, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "measured on 2 different kernels" in out.read_text()
    # a label on one kernel draws no warning
    r = run_cli("compare", "--baseline", "cand", "--candidate", "cand", "--db", url)
    assert "different kernels" not in r.stderr
