"""Basic functional checks of a pair's data link: the NICs are up and reach each other."""

import pytest


def test_link_up(hw_pair):
    for he in (hw_pair.rx, hw_pair.tx):
        r = he.t.run(["cat", f"/sys/class/net/{he.nic.ifname}/operstate"], check=False, timeout=10)
        assert r.ok, f"{he.name}: no interface {he.nic.ifname}: {r.stderr.strip()}"
        assert r.stdout.strip() in ("up", "unknown"), f"{he.name}: {he.nic.ifname} is {r.stdout.strip()}"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_peer_reachable(hw_pair, family):
    rx, tx = hw_pair.rx, hw_pair.tx
    dst = getattr(rx.nic, family)
    if not dst or not getattr(tx.nic, family):
        pytest.skip(f"pair {hw_pair.name} has no {family} data addresses")
    addr = dst.split("/")[0]
    r = tx.t.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", addr], check=False, timeout=20)
    if r.exit_status == 127:
        pytest.skip(f"{tx.name}: ping not installed")
    assert r.ok, f"{tx.name} -> {rx.name} {addr}: {(r.stdout + r.stderr).strip().splitlines()[-1:]}"
