"""Faults injected into the netns lab: what the user sees, and that nothing hangs or is lost.

Each test breaks one thing for real (kills a process by its PID inside a lab
namespace, sets the data link down, kills a host's sshd) and checks the message
names the host and the cause, and that the run ends within a bound.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hwtests import hostconn, inventory, journal, traffic
from hwtests.traffic import TrafficError

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def inv(netns_lab):
    return inventory.load(netns_lab)


@pytest.fixture
def pair2(inv):
    """pair2's hosts (rx, tx) and their data address; pair1 stays for the other lab tests."""
    p = inv.pairs["pair2"]
    rx = hostconn.connect(inv.hosts[p.rx.host], inv.defaults, inv)
    tx = hostconn.connect(inv.hosts[p.tx.host], inv.defaults, inv)
    yield rx, tx, inv.hosts[p.rx.host].nics[p.rx.nic]
    rx.close()
    tx.close()


def _pids(t, comm: str) -> list[int]:
    r = t.run(["pgrep", "-x", comm], check=False, timeout=10)     # exact process name, not -f
    return [int(x) for x in r.stdout.split()]


def _later(delay: float, fn):
    th = threading.Timer(delay, fn)
    th.start()
    return th


def test_receiver_killed_reports_status_and_last_lines(pair2):
    rx, tx, nic = pair2
    bins = traffic.build(rx)
    killed = []

    def kill_rx():
        for pid in _pids(rx, "hwt_rx"):
            rx.run(["kill", "-KILL", str(pid)], check=False, timeout=10)
            killed.append(pid)

    timer = _later(2.5, kill_rx)
    t0 = time.monotonic()
    try:
        with pytest.raises(TrafficError) as ei:
            traffic.run_pair(rx, tx, nic.addr, "tcp", "tcp", duration=8, rx_bins=bins, tx_bins=bins)
    finally:
        timer.join()
    took = time.monotonic() - t0
    msg = str(ei.value)
    assert killed, "no hwt_rx was running to kill"
    assert msg.startswith(f"{rx.name}: hwt_rx"), msg
    assert "SIGKILL" in msg, msg
    assert "\n" not in msg
    assert took < 8 + 30, took          # ends soon after the crash, not at the sender's idle timeout
    assert _pids(rx, "hwt_rx") == [] and _pids(tx, "hwt_tx") == []


def test_data_link_down_mid_transfer_fails_clearly(pair2):
    rx, tx, nic = pair2
    bins = traffic.build(rx)
    ifname = nic.ifname
    timer = _later(2.5, lambda: rx.run(["ip", "link", "set", "dev", ifname, "down"], timeout=10))
    t0 = time.monotonic()
    try:
        with pytest.raises(TrafficError) as ei:
            traffic.run_pair(rx, tx, nic.addr, "tcp", "tcp", duration=6, rx_bins=bins, tx_bins=bins,
                             idle_timeout=5)
    finally:
        timer.join()
        rx.run(["ip", "link", "set", "dev", ifname, "up"], timeout=10)
        if nic.ipv6:   # the kernel drops IPv6 addresses on link down (keep_addr_on_down=0): put it back
            rx.run(["ip", "-6", "addr", "replace", nic.ipv6, "dev", ifname, "nodad"], timeout=10)
    took = time.monotonic() - t0
    msg = str(ei.value)
    assert "\n" not in msg and ("hwt_rx" in msg or "hwt_tx" in msg), msg
    assert rx.name in msg or tx.name in msg, msg
    assert took < 6 + 5 + 40, took      # bounded by the idle timeout, no hang
    assert _pids(rx, "hwt_rx") == [] and _pids(tx, "hwt_tx") == []
    # the link works again for whoever comes next
    deadline = time.monotonic() + 20
    for addr in [nic.addr] + ([nic.ipv6.split("/")[0]] if nic.ipv6 else []):
        while not tx.run(["ping", "-c", "1", "-W", "1", addr], check=False, timeout=10).ok:
            assert time.monotonic() < deadline, f"data link did not come back for {addr}"
            time.sleep(0.5)


def _sshd_pids_in(ns: str) -> list[int]:
    """sshd processes (listener and sessions) living in lab namespace `ns`: all ours."""
    return [pid for pid, comm, _ in _ns_procs(ns) if comm.startswith("sshd")]


def _journal_file(ns: str, host: str) -> Path:
    """Where `hwtests.journal` keeps the journal of lab host `host` (hostname + netns inode)."""
    return Path(journal.JOURNAL_DIR) / f"journal.{host}.{os.stat(f'/run/netns/{ns}').st_ino}.jsonl"


def _journal_entries(ns: str, host: str) -> list:
    f = _journal_file(ns, host)
    return journal.parse(f.read_text()) if f.exists() else []


def test_sshd_killed_mid_test(tmp_path):
    """One host loses its sshd mid-run: its test errors naming it, the other pair goes on, results stay.

    Own lab (a1 cannot be used afterwards). pair1's tcp test finishes and is stored; a1's
    sshd (listener and sessions) is killed while pair1's zerocopy transfer runs; pair2 runs
    after it. What a1's run left (its temp dir, its receiver) is named in a1's journal, so
    the next run that reaches a1 removes it: done here as that run would.
    """
    from hwtests import labnetns
    from hwtests.store import Store

    state = tmp_path / "lab"
    inv_path = labnetns.up(state, pairs=2)
    st = labnetns.load_state(state)
    hosts = [h for pair in labnetns.host_names(2) for h in pair]
    ns = {h: f"{st.prefix}-{h}" for h in hosts}
    try:
        db = tmp_path / "r.db"
        env = dict(os.environ, HWTESTS_LINERATE_DURATION="3", HWTESTS_LINERATE_REPEAT="2",
                   HWTESTS_LINERATE_WARMUP="1", HWTESTS_LINERATE_COOLDOWN="0")
        exe = Path(sys.executable).with_name("hwtests")
        proc = subprocess.Popen([str(exe), "run", "--inventory", str(inv_path), "--kernel-build", "k", "--db", str(db),
                                 "-k", "linerate and (tcp or zerocopy)", "-rA", "-p", "no:cacheprovider"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        t0 = time.monotonic()
        killed: list[int] = []
        try:
            # pair1-tcp passes first; once pair1's zerocopy sender runs, a1 loses every sshd
            while time.monotonic() - t0 < 240 and proc.poll() is None:
                if any(comm == "hwt_tx" and "zerocopy" in cmd for _, comm, cmd in _ns_procs(ns["b1"])):
                    for pid in _sshd_pids_in(ns["a1"]):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    t_kill = time.monotonic()
                    break
                time.sleep(0.1)
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        took = time.monotonic() - t0
        assert len(killed) >= 2, f"pair1's zerocopy test never ran with a1 connected:\n{out[-3000:]}"
        after_kill = time.monotonic() - t_kill
        lines = [ln for ln in out.splitlines() if "a1: " in ln and "connection lost" in ln]
        print(f"run ended {after_kill:.1f} s after the kill ({took:.1f} s in all), exit {proc.returncode}:\n"
              + "\n".join(lines))
        assert proc.returncode == 1, out[-3000:]
        assert "Traceback" not in out, out[-4000:]
        assert any(ln.startswith("FAILED ") and "[pair1-zerocopy]" in ln for ln in lines), out[-3000:]
        assert after_kill < 120, after_kill        # the transfer is 3 s: no waiting out a long timeout
        store = Store.open(str(db))
        oc = store.outcomes(labels=["k"])
        by = {(r.pair, r.test): r.outcome for r in oc.itertuples()}
        assert by == {("pair1", "linerate/tcp"): "passed", ("pair1", "linerate/zerocopy"): "failed",
                      ("pair2", "linerate/tcp"): "passed", ("pair2", "linerate/zerocopy"): "passed"}, by
        gbps = store.samples(labels=["k"], metric="gbps")
        got = {(r.pair, r.test) for r in gbps.itertuples()}
        # pair1's tcp result, taken before the fault, is kept; pair2 went on
        assert got == {("pair1", "linerate/tcp"), ("pair2", "linerate/tcp"), ("pair2", "linerate/zerocopy")}, got
        assert len(gbps) == 6
        # a1's run could not clean up: its journal says what to remove; the others' journals are clean
        left = [e for e in _journal_entries(ns["a1"], "a1") if e.kind == "run"]
        assert len(left) == 1, _journal_entries(ns["a1"], "a1")
        tmp_a1 = TMPDIR_RE.search(left[0].undo).group(0)
        assert os.path.isdir(tmp_a1)
        for h in ("b1", "a2", "b2"):
            assert _journal_entries(ns[h], h) == [], h
        # what the next run that reaches a1 does first (its sshd is gone, so do it from here)
        subprocess.run(["ip", "netns", "exec", ns["a1"], "sh", "-c", left[0].undo], timeout=60, check=True)
        assert not os.path.exists(tmp_a1)
        assert _ns_procs(ns["a1"]) == [], "processes of the interrupted run are still on a1"
    finally:
        for h in hosts:
            try:
                _journal_file(ns[h], h).unlink(missing_ok=True)    # its namespace goes away with the lab
            except OSError:
                pass
        labnetns.down(state)


# -- the controller is signalled during `hwtests run` ------------------------------------------

BUSY_TEST = '''
"""A test that does what the suite does: a journaled NIC change, a background CPU sampler, traffic."""
import os

from hwtests import cpustat, nicsetup, traffic


def test_busy(hw_pair):
    rx, tx = hw_pair.rx, hw_pair.tx
    mode = os.environ["HWT_MODE"]
    with open(os.environ["HWT_NOTES"], "a") as f:
        f.write(f"{mode} gro={nicsetup.read_features(rx)['generic-receive-offload'][0]}\\n")
    if mode != "busy":
        return
    nicsetup.set_feature(rx, "gro", True)
    bins = traffic.build(rx.t), traffic.build(tx.t)
    sampler = cpustat.CpuSampler(tx.t, interval=0.5, max_seconds=120, name="cpustat-tx").start()
    try:
        traffic.run_pair(rx.t, tx.t, rx.addr, "tcp", "tcp", duration=60, rx_bins=bins[0], tx_bins=bins[1])
    finally:
        sampler.stop()
'''

TMPDIR_RE = re.compile(r"/tmp/hwtests\.[A-Za-z0-9]{8}")


def _ns_procs(ns: str) -> list[tuple[int, str, str]]:
    """(pid, comm, command line) of every process in lab namespace `ns`, seen from here (no SSH)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout.split()
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append((int(p), comm, cmd))
    return out


def _not_sshd(ns: str) -> list[tuple[int, str, str]]:
    """What runs in the namespace besides its sshd (listener and the sessions of live connections)."""
    return [p for p in _ns_procs(ns) if not p[1].startswith("sshd")]


def _host_tmpdirs() -> set[str]:
    return {str(p) for p in Path("/tmp").glob("hwtests.*") if TMPDIR_RE.fullmatch(str(p))}


@pytest.fixture
def ctl_env(inv, netns_lab, tmp_path):
    """pair2's namespaces, a test file to run, and GRO on a2 checked off before and after."""
    p = inv.pairs["pair2"]
    hosts = {role: inv.hosts[side.host] for role, side in (("rx", p.rx), ("tx", p.tx))}
    rx = hostconn.connect(hosts["rx"], inv.defaults, inv)
    test_file = tmp_path / "test_busy.py"
    test_file.write_text(BUSY_TEST)
    env = {"inv": str(netns_lab), "file": test_file, "notes": tmp_path / "notes.txt", "db": tmp_path / "r.db",
           "rx": rx, "rx_name": hosts["rx"].name, "ifname": hosts["rx"].nics[p.rx.nic].ifname,
           "ns": [h.ssh.netns for h in hosts.values()]}
    assert not _gro_on(rx, env["ifname"]), "a2 should start with GRO off"
    assert journal.Journal(rx).pending() == [], "a2 has journal entries before the test"
    assert not [p for ns in env["ns"] for p in _not_sshd(ns)], "pair2's hosts run something before the test"
    yield env
    # never hand the lab on changed, whatever happened above
    journal.Journal(rx).restore()
    if _gro_on(rx, env["ifname"]):
        rx.run(["ethtool", "-K", env["ifname"], "gro", "off"], check=False, timeout=15)
    for ns in env["ns"]:
        for pid, comm, _ in _not_sshd(ns):
            if comm.startswith("hwt_") or comm in ("sh", "sleep"):
                os.kill(pid, signal.SIGKILL)
    rx.close()


def _gro_on(t, ifname: str) -> bool:
    return "generic-receive-offload: on" in t.run(["ethtool", "-k", ifname], timeout=15).stdout


def _start_ctl(env, mode: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("hwtests")
    cmd = [str(exe), "run", "--inventory", env["inv"], "--kernel-build", "faults-ctl", "--pair", "pair2",
           "--db", str(env["db"]), str(env["file"]), "-k", "test_busy", "-p", "no:cacheprovider", "-q", "-s"]
    e = dict(os.environ, HWT_NOTES=str(env["notes"]), HWT_MODE=mode, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e,
                            start_new_session=True)


def _wait_traffic(env, proc: subprocess.Popen, timeout: float = 90.0) -> set[str]:
    """Wait until both traffic programs run; return the run's temp dirs seen on pair2's hosts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before its traffic started:\n{proc.stdout.read()}")
        procs = [p for ns in env["ns"] for p in _ns_procs(ns)]
        comms = {p[1] for p in procs}
        if {"hwt_rx", "hwt_tx"} <= comms:
            assert _gro_on(env["rx"], env["ifname"])
            return {m for p in procs for m in TMPDIR_RE.findall(p[2])}
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no traffic within {timeout:g} s:\n{proc.communicate(timeout=30)[0]}")


def _finish_ctl(proc: subprocess.Popen, timeout: float = 90.0) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=30)[0]
        pytest.fail(f"the run did not exit within {timeout:g} s of the signal:\n{out}")


def _left_behind(env, tmpdirs: set[str], within: float = 10.0) -> tuple[list, set[str]]:
    """Processes (besides sshd) still in pair2's namespaces and temp dirs still there, after a short grace
    for processes that are already dying (a killed process group takes a moment to be reaped)."""
    deadline = time.monotonic() + within
    while True:
        procs = [p for ns in env["ns"] for p in _not_sshd(ns)]
        dirs = {d for d in tmpdirs if os.path.exists(d)}
        if (not procs and not dirs) or time.monotonic() > deadline:
            return procs, dirs
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_controller_signal_mid_transfer_cleans_up(ctl_env, sig):
    env = ctl_env
    proc = _start_ctl(env, "busy")
    tmpdirs = _wait_traffic(env, proc)
    assert len(tmpdirs) == 2, f"expected a temp dir on each of pair2's hosts, saw {tmpdirs}"
    t0 = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)       # Ctrl-C reaches the whole foreground group
    else:
        os.kill(proc.pid, sig)         # a CI runner's timeout signals the process
    out = _finish_ctl(proc)
    took = time.monotonic() - t0
    print(f"{sig.name}: exit {proc.returncode} after {took:.1f} s; last lines:\n" + "\n".join(out.splitlines()[-4:]))
    assert proc.returncode == 130, out[-3000:]
    assert took < 60, took            # not waiting for the 60 s transfer to end
    assert "Traceback" not in out, out[-4000:]
    procs, dirs = _left_behind(env, tmpdirs)
    assert not procs, f"left running after {sig.name}: {procs}"
    assert not dirs, f"temp dirs left after {sig.name}: {dirs}"
    assert not _gro_on(env["rx"], env["ifname"]), f"GRO still on after {sig.name}"
    assert journal.Journal(env["rx"]).pending() == []


def test_controller_sigkill_next_run_cleans_up(ctl_env):
    env = ctl_env
    proc = _start_ctl(env, "busy")
    tmpdirs = _wait_traffic(env, proc)
    assert len(tmpdirs) == 2, f"expected a temp dir on each of pair2's hosts, saw {tmpdirs}"
    os.killpg(proc.pid, signal.SIGKILL)
    _finish_ctl(proc, 30)
    assert proc.returncode == -signal.SIGKILL
    # nobody cleaned up: the setting is still changed and the run's temp dirs are still there
    assert _gro_on(env["rx"], env["ifname"])
    assert {d for d in tmpdirs if os.path.exists(d)} == tmpdirs
    t0 = time.monotonic()
    proc = _start_ctl(env, "check")
    out = _finish_ctl(proc)
    took = time.monotonic() - t0
    restored = [ln for ln in out.splitlines() if "left by an earlier run" in ln]
    print(f"next run: exit {proc.returncode} after {took:.1f} s:\n" + "\n".join(restored))
    assert proc.returncode == 0, out[-3000:]
    assert any(ln.startswith(f"hwtests: {env['rx_name']}: restored ") and "ethtool -K gro on" in ln
               for ln in restored), out[-3000:]
    # the next run's test saw the host as it was before the killed run
    assert env["notes"].read_text().splitlines() == ["busy gro=False", "check gro=False"]
    procs, dirs = _left_behind(env, tmpdirs)
    assert not procs, f"left running after the next run: {procs}"
    assert not dirs, f"temp dirs of the killed run left after the next run: {dirs}"
    assert not _gro_on(env["rx"], env["ifname"])
    assert journal.Journal(env["rx"]).pending() == []
