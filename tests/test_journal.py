"""The restore journal: its parser, and crashes of a real run on the netns lab.

A `hwtests run` (subprocess, own process group) turns on GRO on lab host a1's
data0 through the journal, then waits. It is killed with SIGKILL once the change
is visible on the host: the setting stays changed, and the next run restores it
before doing anything else. Killed with SIGTERM or SIGINT instead, the run
itself restores the setting on its way out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hwtests import journal
from hwtests.journal import Entry

# -- parse (pure) ------------------------------------------------------------------------


def _do(eid: str, desc: str = "d", undo: str = "true", boot: str = "b1") -> str:
    return json.dumps({"op": "do", "id": eid, "desc": desc, "undo": undo, "owner": "o", "time": 1.5, "boot": boot})


def test_parse_pending_entries_in_order():
    text = "\n".join([_do("1", "gro on", "ethtool -K data0 gro off"), _do("2", "rx 1", "ethtool -L data0 rx 2")]) + "\n"
    got = journal.parse(text)
    assert [(e.id, e.desc, e.undo) for e in got] == [("1", "gro on", "ethtool -K data0 gro off"),
                                                      ("2", "rx 1", "ethtool -L data0 rx 2")]
    assert got[0] == Entry("1", "gro on", "ethtool -K data0 gro off", "o", 1.5, "b1")


def test_parse_drops_undone_entries():
    text = "\n".join([_do("1"), _do("2"), json.dumps({"op": "undone", "id": "1"}), _do("3")])
    assert [e.id for e in journal.parse(text)] == ["2", "3"]
    # an "undone" before its "do" (out of order after a rewrite) still cancels it
    assert journal.parse(json.dumps({"op": "undone", "id": "9"}) + "\n" + _do("9")) == []


def test_parse_skips_torn_last_line():
    """A crash while appending leaves half a line; the change after it never ran."""
    full = _do("1", "kept")
    torn = _do("2", "torn")[:37]
    got = journal.parse(full + "\n" + torn)
    assert [e.desc for e in got] == ["kept"]
    assert journal.parse(torn) == []
    assert journal.parse("") == []


def test_parse_skips_garbage_and_incomplete_records():
    text = "\n".join(["[1, 2]", "null", "not json", json.dumps({"op": "do", "id": "x"}),   # no undo
                      json.dumps({"op": "do", "id": "y", "undo": 5}), json.dumps({"op": "other", "id": "z"}),
                      "", _do("ok")])
    assert [e.id for e in journal.parse(text)] == ["ok"]


def test_parse_tolerates_missing_optional_fields():
    got = journal.parse(json.dumps({"op": "do", "id": 7, "undo": "true", "time": None}))
    assert got == [Entry("7", "", "true", "", 0.0, "")]


def test_describe_quotes():
    es = journal.parse("\n".join([_do("1", "data0: gro on"), _do("2", "x")]))
    assert journal.describe(es) == "'data0: gro on'; x"


# -- crashes on the netns lab ------------------------------------------------------------------

HOLD_TEST = textwrap.dedent('''
    """Turn GRO on on the pair's RX NIC through the journal, note what it was, then wait."""
    import os
    import time

    from hwtests import nicsetup


    def _gro(he):
        return nicsetup.read_features(he)["generic-receive-offload"][0]


    def test_hold(hw_pair):
        he = hw_pair.rx
        with open(os.environ["HWT_NOTES"], "a") as f:
            f.write(f"{os.environ['HWT_MODE']} start gro={_gro(he)}\\n")
        if os.environ["HWT_MODE"] != "hold":
            return
        nicsetup.set_feature(he, "gro", True)
        for _ in range(1200):          # bounded: 120 s at most, the test kills us long before
            time.sleep(0.1)
''')


def _lab_host(inv_path, name="a1"):
    from hwtests import hostconn, inventory
    inv = inventory.load(inv_path)
    return hostconn.connect(inv.hosts[name], inv.defaults)


def _gro_on(t) -> bool:
    out = t.run(["ethtool", "-k", "data0"], timeout=15).stdout
    return "generic-receive-offload: on" in out


def _pending(t) -> list:
    j = journal.Journal(t)
    return j.pending()


@pytest.fixture
def crash_env(netns_lab, tmp_path):
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(HOLD_TEST)
    notes = tmp_path / "notes.txt"
    t = _lab_host(netns_lab)
    assert not _gro_on(t), "lab host a1 should start with GRO off"
    assert _pending(t) == [], "lab host a1 has journal entries before the test"
    yield {"inv": str(netns_lab), "file": test_file, "notes": notes, "t": t, "tmp": tmp_path}
    # never leave the lab changed, whatever happened above
    j = journal.Journal(t)
    j.restore()
    if _gro_on(t):
        t.run(["ethtool", "-K", "data0", "gro", "off"], check=False, timeout=15)
    t.close()


def _hwtests() -> list[str]:
    exe = Path(sys.executable).with_name("hwtests")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hwtests.cli"]


def _start_run(env, mode: str) -> subprocess.Popen:
    # -s: the plugin says "restored ..." while acquiring a host in fixture setup, where
    # pytest captures output; without -s the message only shows for failed tests.
    cmd = _hwtests() + ["run", "--inventory", env["inv"], "--kernel-build", "journal-crash", "--pair", "pair1",
                        "--db", str(env["tmp"] / "results.db"), str(env["file"]), "-k", "test_hold", "-p",
                        "no:cacheprovider", "-q", "-s"]
    e = dict(os.environ, HWT_NOTES=str(env["notes"]), HWT_MODE=mode, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e,
                            start_new_session=True)


def _wait_changed(env, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before changing the host:\n{proc.stdout.read()}")
        if _gro_on(env["t"]):
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"GRO not on within {timeout:g} s:\n{proc.communicate(timeout=30)[0]}")


def _finish(proc: subprocess.Popen, timeout: float = 90.0) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=30)[0]
        pytest.fail(f"the run did not exit within {timeout:g} s of the signal:\n{out}")


@pytest.mark.lab
def test_sigkill_then_next_run_restores_first(crash_env):
    env = crash_env
    proc = _start_run(env, "hold")
    _wait_changed(env, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    out = _finish(proc, 30)
    assert proc.returncode == -signal.SIGKILL
    # the setting stays changed, and the host's journal says how to undo it
    assert _gro_on(env["t"])
    left = _pending(env["t"])
    assert [e.desc for e in left] == ["data0: ethtool -K gro on"]
    assert left[0].undo == "ethtool -K data0 gro off"
    # the next run restores it before doing anything else
    proc = _start_run(env, "check")
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert "hwtests: a1: restored 1 change(s) left by an earlier run: data0: ethtool -K gro on" in out
    assert env["notes"].read_text().splitlines() == ["hold start gro=False", "check start gro=False"]
    assert not _gro_on(env["t"]) and _pending(env["t"]) == []


@pytest.mark.lab
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_restores_at_exit(crash_env, sig):
    env = crash_env
    proc = _start_run(env, "hold")
    _wait_changed(env, proc)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)       # Ctrl-C reaches the whole foreground group
    else:
        os.kill(proc.pid, sig)         # a CI runner's timeout signals the process
    out = _finish(proc)
    assert proc.returncode != 0, out
    assert not _gro_on(env["t"]), f"GRO still on after {sig.name}:\n{out}"
    assert _pending(env["t"]) == []
    # nothing left for the next run to restore
    proc = _start_run(env, "check")
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert "restored" not in out
    assert env["notes"].read_text().splitlines()[-1] == "check start gro=False"


def test_parse_keeps_run_entries():
    rec = json.loads(_do("r1", "temp dir /tmp/hwtests.abcdefgh and the processes of its run", "rm -rf x"))
    rec.update(kind="run", run="0123abcd")
    got = journal.parse(json.dumps(rec) + "\n" + _do("2"))
    assert [(e.id, e.kind, e.run) for e in got] == [("r1", "run", "0123abcd"), ("2", "", "")]


@pytest.mark.lab
def test_run_tracking_own_run_kept_other_run_removed(netns_lab):
    """A journal tracks its transport's temp dir and processes; its own restore leaves them (the run
    is live), another transport's restore (the next run after a crash) kills them and removes the dir."""
    t1 = _lab_host(netns_lab, "b1")
    j1 = journal.Journal(t1, owner="first")
    assert t1.tracker is j1
    t2 = None
    try:
        bg = t1.start(["sleep", "61.5"], name="sleeper")
        tmp = t1.tmpdir
        assert j1.restore() == []
        assert bg.alive() and t1.run(["test", "-d", tmp], check=False).ok, "own live run was undone"
        t2 = _lab_host(netns_lab, "b1")
        j2 = journal.Journal(t2, owner="second")
        left = j2.pending()
        assert [(e.kind, e.run) for e in left] == [("run", t1.run_token)]
        assert tmp in left[0].desc
        assert j2.restore() == []
        assert not t2.run(["test", "-d", tmp], check=False).ok
        assert not bg.alive(), "the crashed run's process is still running"
        assert j2.pending() == []
    finally:
        t1.close()
        if t2 is not None:
            assert journal.Journal(t2).pending() == []      # close marked the (already removed) dir undone
            t2.close()
