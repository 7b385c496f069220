"""Pinning (issue 16, part 3): the inventory's `pin` section, taskset around the receiver and
sender on the netns lab (checked in /proc while they run), recorded in the run's environment."""

from __future__ import annotations

import random
import threading
import time

import pytest

from hwtests import inventory
from hwtests.errors import InputError

BASE = """
hosts:
  a:
    local: true
    nics: {d: {ifname: eth9, ipv4: 198.51.100.10/24}, e: {ifname: eth8, ipv4: 198.51.100.11/24}}
PIN
pairs:
  - {name: p, rx: {host: a, nic: d}, tx: {host: a, nic: e}}
"""


def _inv(pin: str):
    return inventory.loads(BASE.replace("PIN", pin), "lab.yaml")


def test_default_pins_the_page_pool_load_to_cpu0_only():
    pin = _inv("").hosts["a"].pin
    assert (pin.pagepool_cpu, pin.rx_cpus, pin.tx_cpus) == (0, None, None)


def test_pin_section():
    pin = _inv("    pin: {pagepool_cpu: 3, rx_cpus: '2-3,6', tx_cpus: 1}").hosts["a"].pin
    assert (pin.pagepool_cpu, pin.rx_cpus, pin.tx_cpus) == (3, "2-3,6", "1")
    assert _inv("    pin: {pagepool_cpu: null}").hosts["a"].pin.pagepool_cpu is None


@pytest.mark.parametrize("pin,where", [
    ("    pin: {pagepool_cpu: -1}", "lab.yaml:6: hosts.a.pin.pagepool_cpu: a CPU number"),
    ("    pin: {pagepool_cpu: two}", "lab.yaml:6: hosts.a.pin.pagepool_cpu: expected int"),
    ("    pin: {rx_cpus: '2;reboot'}", "lab.yaml:6: hosts.a.pin.rx_cpus: '2;reboot' is not a CPU list"),
    ("    pin: {irq_cpus: 1}", "lab.yaml:6: hosts.a.pin"),
    ("    pin: 3", "lab.yaml:6: hosts.a.pin: expected a mapping"),
])
def test_bad_pin_is_one_line(pin, where):
    with pytest.raises(InputError) as ei:
        _inv(pin)
    assert str(ei.value).startswith(where) and "\n" not in str(ei.value)


@pytest.mark.lab
def test_receiver_and_sender_run_on_the_pinned_cpus(netns_lab):
    """taskset -c around hwt_rx and hwt_tx in the lab's namespaces: each process's
    Cpus_allowed_list, read from /proc while it runs, is the inventory's list."""
    import os

    from hwtests import hostconn, traffic

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs to tell pinned from unpinned")
    inv = inventory.load(netns_lab)
    ta = hostconn.connect(inv.hosts["a1"], inv.defaults, inv)
    tb = hostconn.connect(inv.hosts["b1"], inv.defaults, inv)
    try:
        rx_bins, tx_bins = traffic.build(ta), traffic.build(tb)
        port = random.randint(42000, 48000)
        addr = inv.hosts["a1"].nics[next(iter(inv.hosts["a1"].nics))].addr
        seen: dict[str, set[str]] = {"hwt_rx": set(), "hwt_tx": set()}
        done = threading.Event()

        def watch():
            # only our receiver and sender: matched by the binary's path and this run's port
            # (the shell wrappers and taskset itself, before its exec, match the pattern too: comm tells)
            script = ('for p in $(pgrep -f -- "$1 --mode tcp --port $2"); do [ "$(cat /proc/$p/comm)" = hwt_rx ] && '
                      'echo "rx $(grep Cpus_allowed_list /proc/$p/status)"; done; '
                      'for p in $(pgrep -f -- "$3 .*--port $2"); do [ "$(cat /proc/$p/comm)" = hwt_tx ] && '
                      'echo "tx $(grep Cpus_allowed_list /proc/$p/status)"; done; true')
            for _ in range(100):                  # bounded: 100 polls, 0.1 s apart
                if done.is_set():
                    break
                r = ta.run(["sh", "-c", script, "sh", rx_bins.rx, str(port), tx_bins.tx], check=False, timeout=10)
                for ln in r.stdout.splitlines():
                    role, _, rest = ln.partition(" ")
                    if "Cpus_allowed_list" in rest:
                        seen["hwt_rx" if role == "rx" else "hwt_tx"].add(rest.split()[-1])
                time.sleep(0.1)

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        try:
            res = traffic.run_pair(ta, tb, addr, "tcp", "tcp", duration=3, port=port, rx_bins=rx_bins,
                                   tx_bins=tx_bins, rx_cpus="1", tx_cpus="0")
        finally:
            done.set()
            th.join(timeout=20)
        assert res.mismatches == 0
        assert seen["hwt_rx"] == {"1"}, seen
        assert seen["hwt_tx"] == {"0"}, seen
    finally:
        ta.close()
        tb.close()
