"""hwtests.goodput: the TCP goodput ceiling, checked against figures worked out by hand.

Expected values come from counting the bytes of one full segment, written out here:
MTU 1500 over IPv4 carries 1500 - 20 (IP) - 20 (TCP) - 12 (timestamps) = 1448 bytes of
payload in 1500 + 38 = 1538 bytes on the wire (94.15%; 941.5 Mbit/s on gigabit Ethernet).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, strategies as st

from hwtests import goodput
from hwtests.suite import test_linerate as lr
from hwtests.transport import LocalTransport


@pytest.mark.parametrize("mtu,family,payload,wire", [
    (1500, 4, 1448, 1538),
    (1500, 6, 1428, 1538),
    (9000, 4, 8948, 9038),
    (9000, 6, 8928, 9038),
    (4096, 4, 4044, 4134),
    (1280, 6, 1208, 1318),          # IPv6's minimum MTU
    (576, 4, 524, 614),
])
def test_ceiling_by_hand(mtu, family, payload, wire):
    c = goodput.tcp_ceiling(mtu, family)
    assert (c.mtu, c.family, c.payload, c.wire) == (mtu, family, payload, wire)
    assert c.fraction == payload / wire and c.pct == pytest.approx(100 * payload / wire, abs=1e-12)


def test_the_formula_of_the_research_notes():
    """(MTU - 52) / (MTU + 38) for IPv4, (MTU - 72) / (MTU + 38) for IPv6."""
    for mtu in (68 + 1, 1500, 1501, 2000, 8192, 9000, 9216, 65535):
        assert Fraction(goodput.tcp_ceiling(mtu, 4).fraction) == pytest.approx(Fraction(mtu - 52, mtu + 38))
        if mtu > 72:
            assert goodput.tcp_ceiling(mtu, 6).fraction == pytest.approx((mtu - 72) / (mtu + 38))


def test_familiar_figures():
    assert round(goodput.tcp_ceiling(1500).pct, 2) == 94.15
    assert round(goodput.tcp_ceiling(1500, 6).pct, 2) == 92.85
    assert round(goodput.tcp_ceiling(9000).pct, 2) == 99.0
    # iperf's well-known best over gigabit Ethernet with timestamps: 941.5 Mbit/s
    assert 1000 * goodput.tcp_ceiling(1500).fraction == pytest.approx(941.48, abs=0.01)


def test_share_of_ceiling():
    c = goodput.tcp_ceiling(1500)
    assert goodput.share_of_ceiling(0.94148, 1000, c) == pytest.approx(100 * 0.94148 / (1448 / 1538))
    assert goodput.share_of_ceiling(1000 * 1448 / 1538 / 1000, 1000, c) == pytest.approx(100.0)
    # 90 Gbit/s on 100G at MTU 9000: 90% of the link, 90.9% of the ceiling
    assert goodput.share_of_ceiling(90.0, 100_000, goodput.tcp_ceiling(9000)) == pytest.approx(9000 / 99.004, rel=1e-4)
    with pytest.raises(ValueError, match="link speed"):
        goodput.share_of_ceiling(1.0, 0, c)


def test_family_of():
    assert goodput.family_of("10.0.0.1") == 4 and goodput.family_of("fd42::1") == 6


@pytest.mark.parametrize("mtu,family,msg", [
    (52, 4, "outside 53..65535"), (72, 6, "outside 73..65535"), (65536, 4, "outside"), (0, 4, "outside"),
    (1500.0, 4, "integer"), (True, 4, "integer"), ("1500", 4, "integer"), (1500, 5, "family"),
])
def test_nonsense_is_refused(mtu, family, msg):
    with pytest.raises(ValueError, match=msg):
        goodput.tcp_ceiling(mtu, family)


@given(st.integers(73, 65535), st.sampled_from([4, 6]))
def test_ceiling_grows_with_the_mtu_and_stays_below_one(mtu, family):
    a, b = goodput.tcp_ceiling(mtu - 1 if mtu > 73 else mtu, family), goodput.tcp_ceiling(mtu, family)
    assert 0 < a.fraction <= b.fraction < 1
    if family == 6:
        assert b.fraction < goodput.tcp_ceiling(mtu, 4).fraction


# -- where the suite takes the MTU from ------------------------------------------------------

def _host(ifname: str, probe: dict, addr: str = "10.0.0.1"):
    return SimpleNamespace(name="local", t=LocalTransport("local"), probe=probe, addr=addr,
                           nic=SimpleNamespace(ifname=ifname))


def test_suite_mtu_from_the_probe_else_from_sysfs():
    """The probe's MTU is used as is; without it the suite reads the real one (loopback here)."""
    real = int(Path("/sys/class/net/lo/mtu").read_text())
    assert lr._mtu(_host("lo", {"nics": {"lo": {"mtu": 9000}}})) == 9000
    assert lr._mtu(_host("lo", {"nics": {"lo": {"mtu": None}}})) == real
    assert lr._mtu(_host("lo", {})) == real
    assert lr._mtu(_host("no-such-nic0", {})) is None           # no sysfs entry: unknown, not a crash


def test_suite_ceiling_takes_the_smaller_mtu_and_the_family():
    rx = _host("eth9", {"nics": {"eth9": {"mtu": 9000}}}, addr="fd00:1::2")
    tx = _host("eth9", {"nics": {"eth9": {"mtu": 1500}}})
    c, facts = lr._ceiling(rx, tx)
    assert (c.mtu, c.family, c.payload, c.wire) == (1500, 6, 1428, 1538)
    assert facts == {"mtu_rx": 9000, "mtu_tx": 1500, "mtu": 1500, "family": 6, "ceiling_pct": round(142800 / 1538, 3)}
    none = _host("no-such-nic0", {})
    c, facts = lr._ceiling(none, none)
    assert c is None and facts["ceiling_error"] == "MTU unknown on both hosts"
