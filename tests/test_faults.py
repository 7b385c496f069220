"""Faults injected into the netns lab: what the user sees, and that nothing hangs or is lost.

Each test breaks one thing for real (kills a process by its PID inside a lab
namespace, sets the data link down, kills a host's sshd) and checks the message
names the host and the cause, and that the run ends within a bound.
"""

from __future__ import annotations

import threading
import time

import pytest

from hwtests import hostconn, inventory, traffic
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
    import subprocess

    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout.split()
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip().startswith("sshd"):
                    out.append(int(p))
        except OSError:
            pass
    return out


def test_sshd_killed_mid_test(tmp_path):
    """One host loses its sshd mid-run: its tests error naming it, the other pair goes on, results stay."""
    import os
    import signal
    import subprocess

    from conftest import run_cli  # noqa: F401  (same environment as the other CLI tests)
    from hwtests import labnetns
    from hwtests.store import Store

    state = tmp_path / "lab"
    inv_path = labnetns.up(state, pairs=2)
    try:
        st = labnetns.load_state(state)
        ns_a1 = f"{st.prefix}-a1"
        db = tmp_path / "r.db"
        env = dict(os.environ, HWTESTS_LINERATE_DURATION="3", HWTESTS_LINERATE_REPEAT="2",
                   HWTESTS_LINERATE_WARMUP="1", HWTESTS_LINERATE_COOLDOWN="0")
        exe = os.path.join(os.path.dirname(os.sys.executable), "hwtests")
        # pair2 first, then pair1: pair1's host a1 loses sshd while its test runs
        proc = subprocess.Popen([exe, "run", "--inventory", str(inv_path), "--kernel-build", "k", "--db", str(db),
                                 "-k", "linerate and tcp", "-rA", "-p", "no:cacheprovider", "--pair", "pair2",
                                 "--pair", "pair1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        t0 = time.monotonic()
        killed = []
        try:
            # wait until a1 has a session (pair1 started), then kill every sshd in its namespace
            while time.monotonic() - t0 < 240 and proc.poll() is None:
                pids = _sshd_pids_in(ns_a1)
                if len(pids) > 1:       # the listener plus at least one session
                    time.sleep(1.0)
                    for pid in _sshd_pids_in(ns_a1):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    break
                time.sleep(0.2)
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        took = time.monotonic() - t0
        assert killed, "pair1 never connected to a1"
        assert proc.returncode == 1, out[-3000:]
        assert "Traceback" not in out, out[-4000:]
        lines = [ln for ln in out.splitlines() if "a1" in ln and ("connection lost" in ln or "cannot" in ln
                                                                  or "ssh" in ln)]
        assert lines, out[-3000:]
        print("\n".join(lines[:4]))
        assert took < 240, took
        oc = Store.open(str(db)).outcomes(labels=["k"])
        by = {(r.pair, r.test): r.outcome for r in oc.itertuples()}
        assert by[("pair2", "linerate/tcp")] == "passed", by
        assert by.get(("pair1", "linerate/tcp")) in ("failed", None), by
        samples = Store.open(str(db)).samples(labels=["k"])
        assert set(samples[samples["metric"] == "gbps"]["pair"]) >= {"pair2"}     # finished results kept
    finally:
        labnetns.down(state)
