"""cpustat: /proc/stat parsing, busy and per-category %, CPU per GB, the background sampler."""

from __future__ import annotations

import time

import pytest

from hwtests import cpustat
from hwtests.transport import LocalTransport

STAT_A = """cpu  1000 10 500 8000 100 20 370 0 0 0
cpu0 500 5 250 4000 50 10 185 0 0 0
cpu1 500 5 250 4000 50 10 185 0 0 0
intr 123456 0 0
ctxt 999
btime 1700000000
"""

# +1 s on two CPUs at 100 Hz: 200 ticks; user 40, system 30, softirq 50, irq 10, idle 60, iowait 10
STAT_B = """cpu  1040 10 530 8060 110 30 420 0 0 0
cpu0 520 5 265 4030 55 15 210 0 0 0
cpu1 520 5 265 4030 55 15 210 0 0 0
"""


def test_parse_proc_stat():
    s = cpustat.parse_proc_stat(STAT_A)
    assert s.all.user == 1000 and s.all.softirq == 370 and s.all.steal == 0
    assert sorted(s.cpus) == [0, 1] and s.cpus[1].system == 250
    assert s.all.busy == 1000 + 10 + 500 + 20 + 370
    assert s.all.total == s.all.busy + 8000 + 100


def test_old_kernel_short_lines_and_no_aggregate():
    s = cpustat.parse_proc_stat("cpu0 1 2 3 4\ncpu1 1 2 3 4\n")
    assert s.all.user == 2 and s.all.idle == 8 and s.all.softirq == 0
    with pytest.raises(ValueError):
        cpustat.parse_proc_stat("intr 1 2 3\n")


def test_usage_includes_softirq():
    u = cpustat.usage(cpustat.parse_proc_stat(STAT_A), cpustat.parse_proc_stat(STAT_B))
    assert u.ncpus == 2
    assert u.busy_pct == pytest.approx(100 * 130 / 200)
    assert u.pct["softirq"] == pytest.approx(25.0)
    assert u.pct["irq"] == pytest.approx(5.0)
    assert u.pct["idle"] == pytest.approx(30.0) and u.pct["iowait"] == pytest.approx(5.0)
    assert sum(u.pct.values()) == pytest.approx(100.0)
    assert u.busy_seconds == pytest.approx(1.3) and u.busy_cpus == pytest.approx(1.3)
    assert u.interval == pytest.approx(1.0) and u.softirq_seconds == pytest.approx(0.5)


def test_steal_is_not_busy_and_guest_not_double_counted():
    a = cpustat.parse_proc_stat("cpu 100 0 0 100 0 0 0 0 50 0\ncpu0 100 0 0 100 0 0 0 0 50 0\n")
    b = cpustat.parse_proc_stat("cpu 150 0 0 130 0 0 0 20 90 0\ncpu0 150 0 0 130 0 0 0 20 90 0\n")
    u = cpustat.usage(a, b)
    assert u.busy_pct == pytest.approx(50.0) and u.pct["steal"] == pytest.approx(20.0)


def test_usage_refuses_nonsense():
    a = cpustat.parse_proc_stat(STAT_A)
    with pytest.raises(ValueError, match="no CPU time passed"):
        cpustat.usage(a, a)
    with pytest.raises(ValueError, match="backwards"):
        cpustat.usage(cpustat.parse_proc_stat(STAT_B), a)


def test_cpu_per_gb():
    assert cpustat.cpu_per_gb(2.0, 4e9) == pytest.approx(0.5)
    assert cpustat.cpu_per_gb(2.0, 0) is None


def test_sampler_output_window_and_torn_tail():
    text = ("T 100.0\n" + STAT_A + "T 101.0\n" + STAT_B
            + "T 102.0\ncpu  1080 10 560 8120 120 40 470 0 0 0\ncpu0 540 5 280 4060 60 20 235 0 0 0\n")
    snaps = cpustat.parse_samples(text, offset=5.0)
    assert [s.time for s in snaps] == [105.0, 106.0]           # the torn third one (one CPU line) dropped
    assert cpustat.window(snaps, 104.5, 106.5) == (snaps[0], snaps[1])
    assert cpustat.window(snaps, 105.5, 106.5) is None
    per = cpustat.per_interval(snaps)
    assert len(per) == 1 and per[0][0] == 106.0 and per[0][1].busy_pct == pytest.approx(65.0)
    assert cpustat.summarize([per[0][1]])["softirq"] == pytest.approx(25.0)


def test_sampler_on_this_machine():
    t = LocalTransport("local")
    try:
        s = cpustat.CpuSampler(t, interval=0.2, max_seconds=5).start()
        with open("/proc/uptime") as f:      # host clock (since boot) + offset = controller clock
            assert abs(float(f.read().split()[0]) + s.offset - time.time()) < 1.0
        t0 = time.time()
        end = t0 + 0.8
        x = 0
        while time.time() < end:        # bounded busy loop: something to measure
            x += 1
        t1 = time.time()
        snaps = s.stop()
        assert s.bg is None and len(snaps) >= 3
        assert all(a.time <= b.time for a, b in zip(snaps, snaps[1:]))
        u = s.usage_between(t0 - 0.3, t1 + 0.5)
        assert u is not None and 0 < u.busy_pct <= 100 and u.interval > 0.3
        assert len(s.per_second()) >= 2
    finally:
        t.cleanup()
