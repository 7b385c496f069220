"""Faults injected into the netns lab: what the user sees, and that nothing hangs or is lost.

Each test breaks one thing for real and checks the message names the host and the
cause, that the run ends within a generous bound, and what is left afterwards:

- the receiver killed with SIGKILL mid-transfer: its exit status (signal) and last lines;
- the data link set down mid-transfer in `hwtests run`: the line-rate test fails naming the
  link, bounded by the idle timeouts; nothing left running; the link works again;
- a remote command interrupted (Ctrl-C) on the controller: killed on the host too;
- a host's sshd killed mid-run (own lab): that pair's test fails naming the host, the other
  pair goes on, results taken before the fault are stored, the host's journal names what the
  next run must remove;
- the controller of `hwtests run` sent SIGINT / SIGTERM mid-transfer: exit 130, no process or
  temp dir left on the hosts, the journaled NIC change undone; SIGKILL: all of it left, and
  the next run removes it first;
- a changed host key (own lab): refused in one line naming the host, nothing run on it.

Processes are listed from this machine per lab namespace (`ip netns pids`), never with
pgrep inside a lab host: the namespaces share the machine's PID space, and other labs may
be running the same programs at the same time.
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


def _pids(ns: str, comm: str) -> list[int]:
    """Processes named `comm` in lab namespace `ns` only. (pgrep on a lab host would see the whole
    machine: the namespaces share one PID space, and other labs may run the same programs.)"""
    return [pid for pid, c, _ in _ns_procs(ns) if c == comm]


def _run_env(**kw: str) -> dict[str, str]:
    """Environment for a `hwtests run` whose short summary lines are read: wide, so pytest does
    not cut them to the terminal width (80 without a terminal)."""
    return dict(os.environ, COLUMNS="1000", **kw)


def _later(delay: float, fn):
    th = threading.Timer(delay, fn)
    th.start()
    return th


def _signal_later(delay: float, pids, sig: signal.Signals) -> tuple[threading.Timer, list[int]]:
    """After `delay` s, send `sig` to each pid `pids()` lists then; the list fills with the pids hit."""
    hit: list[int] = []

    def fire():
        for pid in pids():
            os.kill(pid, sig)
            hit.append(pid)

    return _later(delay, fire), hit


def test_receiver_killed_reports_status_and_last_lines(pair2, inv):
    rx, tx, nic = pair2
    ns_rx, ns_tx = inv.hosts[rx.name].ssh.netns, inv.hosts[tx.name].ssh.netns
    bins = traffic.build(rx)
    timer, killed = _signal_later(2.5, lambda: _pids(ns_rx, "hwt_rx"), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        with pytest.raises(TrafficError) as ei:
            traffic.run_pair(rx, tx, nic.addr, "tcp", "tcp", duration=8, rx_bins=bins, tx_bins=bins)
    finally:
        timer.join()
    took = time.monotonic() - t0
    msg = str(ei.value)
    print(f"after {took:.1f} s: {msg}")
    assert killed, "no hwt_rx was running to kill"
    assert msg.startswith(f"{rx.name}: hwt_rx"), msg
    assert "SIGKILL" in msg, msg
    assert "GB received" in msg, msg     # its last lines: how far it got (progress on stderr)
    assert "\n" not in msg
    assert took < 8 + 30, took          # ends soon after the crash, not at the sender's idle timeout
    assert _pids(ns_rx, "hwt_rx") == [] and _pids(ns_tx, "hwt_tx") == []


def test_data_link_down_mid_transfer_fails_clearly(pair2, inv, netns_lab, tmp_path):
    """`hwtests run` of linerate/tcp on pair2; a2's data link is set down during the timed transfer:
    the test fails in bounded time naming the cause, nothing is left running, the link works again."""
    from hwtests.store import Store

    rx, tx, nic = pair2
    ifname = nic.ifname
    ns = [inv.hosts[h].ssh.netns for h in (rx.name, tx.name)]
    db = tmp_path / "r.db"
    env = _run_env(HWTESTS_LINERATE_DURATION="6", HWTESTS_LINERATE_REPEAT="1",
                   HWTESTS_LINERATE_WARMUP="1", HWTESTS_LINERATE_COOLDOWN="0")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("hwtests")), "run", "--inventory", str(netns_lab),
                             "--kernel-build", "faults-link", "--db", str(db), "--pair", "pair2",
                             "-k", "linerate and tcp", "-rA", "-p", "no:cacheprovider"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    t0 = time.monotonic()
    downed = False
    try:
        # the timed run's sender (--duration, not the functional pass's --bytes) runs: a2's link goes down
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            if any(comm == "hwt_tx" and "--bytes" not in cmd for _, comm, cmd in _ns_procs(ns[1])):
                time.sleep(1.0)
                subprocess.run(["ip", "-n", ns[0], "link", "set", "dev", ifname, "down"], check=True, timeout=10)
                downed = True
                t_down = time.monotonic()
                break
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        subprocess.run(["ip", "-n", ns[0], "link", "set", "dev", ifname, "up"], timeout=10)
        if nic.ipv6:   # the kernel drops IPv6 addresses on link down (keep_addr_on_down=0): put it back
            subprocess.run(["ip", "-n", ns[0], "-6", "addr", "replace", nic.ipv6, "dev", ifname, "nodad"],
                           timeout=10)
    assert downed, f"the timed transfer never started:\n{out[-3000:]}"
    after = time.monotonic() - t_down
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED ")]
    print(f"exit {proc.returncode}, {after:.1f} s after the link went down:\n" + "\n".join(failed))
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert len(failed) == 1 and "[pair2-tcp]" in failed[0], out[-3000:]
    assert f"{rx.name}: hwt_" in failed[0] or f"{tx.name}: hwt_" in failed[0], failed[0]
    assert f"data link: {rx.name} {ifname} is DOWN (set down)" in failed[0], failed[0]      # the cause, named
    assert after < 90, after           # the idle timeouts end it (6 s transfer + 16 s idle), no hang
    oc = Store.open(str(db)).outcomes(labels=["faults-link"])
    assert [(r.test, r.outcome) for r in oc.itertuples()] == [("linerate/tcp", "failed")]
    assert "data link" in oc.iloc[0]["reason"], oc.iloc[0]["reason"]
    assert not [p for n in ns for p in _not_sshd(n)], "processes left on pair2's hosts"
    # the link works again for whoever comes next
    deadline = time.monotonic() + 20
    for addr in [nic.addr] + ([nic.ipv6.split("/")[0]] if nic.ipv6 else []):
        while not tx.run(["ping", "-c", "1", "-W", "1", addr], check=False, timeout=10).ok:
            assert time.monotonic() < deadline, f"data link did not come back for {addr}"
            time.sleep(0.5)


def test_interrupted_command_is_killed_on_the_host(pair2, inv):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same) while a remote command runs:
    the command does not go on on the host after the controller has unwound."""
    import _thread

    rx, _, _ = pair2
    ns = inv.hosts[rx.name].ssh.netns
    marker = "sleep 47.125"
    timer = _later(1.5, _thread.interrupt_main)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            rx.run(f"{marker}; true", timeout=60)
    finally:
        timer.join()
    assert time.monotonic() - t0 < 30
    left = [p for p in _ns_procs(ns) if marker in p[2]]
    assert not left, f"still running on {rx.name} after the interrupt: {left}"
    assert rx.run(["echo", "ok"], timeout=30).stdout.strip() == "ok"     # the connection is still usable


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
        env = _run_env(HWTESTS_LINERATE_DURATION="3", HWTESTS_LINERATE_REPEAT="2",
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
        _forget_lab_journals(ns)
        labnetns.down(state)


def _forget_lab_journals(ns: dict[str, str]) -> None:
    """Before an own lab goes: remove what its hosts' journals say runs left (temp dirs under the
    shared /tmp would outlive the namespaces), then the journals themselves."""
    for h, n in ns.items():
        try:
            f = _journal_file(n, h)
        except OSError:
            continue
        for e in (journal.parse(f.read_text()) if f.exists() else []):
            if e.kind == "run":
                subprocess.run(["ip", "netns", "exec", n, "sh", "-c", e.undo], timeout=60, check=False)
        f.unlink(missing_ok=True)


def test_host_hangs_commands_fail_in_bounded_time(tmp_path):
    """A host stops answering (its sshd, listener and sessions, stopped with SIGSTOP: the TCP
    connection stays open and silent, as with a hung kernel). A command in flight ends at its
    timeout saying the host does not answer, later ones at the connect timeout, and closing the
    transport does not hang. Own lab."""
    from dataclasses import replace

    from hwtests import labnetns
    from hwtests.transport import CommandTimeout, RemoteError

    state = tmp_path / "lab"
    inv_path = labnetns.up(state, pairs=1)
    st = labnetns.load_state(state)
    ns = f"{st.prefix}-a1"
    stopped: list[int] = []
    try:
        lab = inventory.load(inv_path)
        t = hostconn.connect(lab.hosts["a1"], replace(lab.defaults, command_timeout=5, connect_timeout=3))
        t.run(["true"])
        t.start(["sleep", "60"], name="sleeper")
        timer, stopped = _signal_later(0.5, lambda: _sshd_pids_in(ns), signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises(CommandTimeout) as ei:
                t.run("sleep 2; echo done", timeout=6)
        finally:
            timer.join()
        took = time.monotonic() - t0
        print(f"in flight, after {took:.1f} s: {ei.value}")
        assert stopped
        assert str(ei.value) == "a1: `sleep 2; echo done` did not finish within 6 s; the host does not answer"
        assert took < 6 + 3 + 20, took
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as ei:
            t.run(["true"])
        took = time.monotonic() - t0
        print(f"next command, after {took:.1f} s: {ei.value}")
        assert str(ei.value).startswith("a1: ") and "not answering" in str(ei.value), str(ei.value)
        assert took < 3 * 2 + 20, took
        t0 = time.monotonic()
        t.close()                   # cannot clean up the host; must not hang trying
        assert time.monotonic() - t0 < 60
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        _forget_lab_journals({"a1": ns, "b1": f"{st.prefix}-b1"})
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
    # 130 "interrupted" (errors.py); SIGTERM may be reported as 143 (128 + SIGTERM) instead
    assert proc.returncode in ((130,) if sig == signal.SIGINT else (130, 143)), out[-3000:]
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


# -- a host key that changed ---------------------------------------------------------------------

def _wait_sshd(ns: str, timeout: float = 15.0) -> None:
    from hwtests.netns import connect_in_netns
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = connect_in_netns(ns, "127.0.0.1", 22, 2.0)
        except Exception:
            assert time.monotonic() < deadline, f"sshd in {ns} did not listen again"
            time.sleep(0.1)
            continue
        try:
            s.settimeout(5)
            if s.recv(64).startswith(b"SSH-"):
                return
        finally:
            s.close()


@pytest.fixture(scope="module")
def hostkey_run(tmp_path_factory):
    """Own one-pair lab whose a1 logs every login (sshd LogLevel VERBOSE); `hwtests run` with an
    inventory whose known_hosts has another key for a1."""
    import yaml

    from hwtests import labnetns

    tmp = tmp_path_factory.mktemp("hostkey")
    state = tmp / "lab"
    inv_path = labnetns.up(state, pairs=1)
    st = labnetns.load_state(state)
    ns = f"{st.prefix}-a1"
    try:
        cfg = state / "a1" / "sshd_config"
        cfg.write_text(cfg.read_text().replace("LogLevel ERROR", "LogLevel VERBOSE"))
        os.kill(st.sshd_pids["a1"], signal.SIGHUP)       # sshd re-executes itself with the new config
        _wait_sshd(ns)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "other_key")], check=True,
                       timeout=30)
        kt, key = (tmp / "other_key.pub").read_text().split()[:2]
        (tmp / "known_hosts").write_text(f"127.0.0.1 {kt} {key}\n")
        inv = yaml.safe_load(Path(inv_path).read_text())
        inv["hosts"]["a1"]["ssh"]["known_hosts"] = str(tmp / "known_hosts")
        bad_inv = tmp / "inventory.yaml"
        bad_inv.write_text(yaml.safe_dump(inv, sort_keys=False))
        log = state / "a1" / "sshd.log"
        log_start = log.stat().st_size
        t0 = time.monotonic()
        r = subprocess.run([str(Path(sys.executable).with_name("hwtests")), "run", "--inventory", str(bad_inv),
                            "--kernel-build", "hk", "--db", str(tmp / "r.db"), "-k", "linerate and tcp",
                            "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300)
        took = time.monotonic() - t0
        during = log.read_bytes()[log_start:].decode(errors="replace")
        # the positive control: the same sshd, the right key: a login is logged
        good = inventory.load(inv_path)
        t = hostconn.connect(good.hosts["a1"], good.defaults)
        try:
            t.run(["true"], timeout=30)
        finally:
            t.close()
        control = log.read_bytes()[log_start + len(during.encode()):].decode(errors="replace")
        yield {"r": r, "out": r.stdout + r.stderr, "took": took, "during": during, "control": control}
    finally:
        _forget_lab_journals({"a1": ns, "b1": f"{st.prefix}-b1"})
        labnetns.down(state)


def test_changed_host_key_refused_naming_host(hostkey_run):
    out = hostkey_run["out"]
    lines = [ln for ln in out.splitlines() if "host key" in ln]
    print(f"exit {hostkey_run['r'].returncode} after {hostkey_run['took']:.1f} s:\n" + "\n".join(lines))
    assert hostkey_run["r"].returncode == 4, out[-3000:]        # a host unusable
    assert "Traceback" not in out and "During handling" not in out, out[-3000:]
    assert "journal not replayed" not in out, out[-3000:]       # a host never reached has nothing to replay
    assert any("a1: host key for 127.0.0.1:22 has CHANGED" in ln and "refusing to connect" in ln for ln in lines), \
        out[-3000:]
    # nothing ran on a1: it was reached once (the key seen, the connection dropped) and nobody logged in
    assert "Accepted publickey" not in hostkey_run["during"], hostkey_run["during"]
    assert hostkey_run["during"].count("Connection from 127.0.0.1") == 1, hostkey_run["during"]
    assert "Accepted publickey" in hostkey_run["control"], "sshd of a1 does not log logins: the check above is void"

