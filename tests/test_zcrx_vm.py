"""io_uring zcrx receiving real bytes on a real 7.x kernel: the VM lab booted on its deb7
build only (QEMU TCG, Debian trixie-backports' cloud kernel), device-less (ZCRX_REG_NODEV)
since virtio-net has no zero-copy queue.

- a small CQ (16 entries) and four flows: the multishot receive ends with -ENOSPC again
  and again; the receiver drains, re-arms and still validates every byte (before the
  re-arm, every flow was abandoned at its first -ENOSPC);
- an area of 16 buffers: -ENOMEM, flush, re-arm, every byte validated;
- over the data link vm-b -> vm-a, twice in one boot (nothing stays registered);
- the NIC path on virtio-net: refused with the kernel's errno; auto falls back and says why;
- a udmabuf above size_limit_mb is refused in one line naming the limit.

Without QEMU or the package archive the lab cannot be built: skipped naming why, a
failure in CI (CI=true).
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import booted_vm_lab, unavailable
from hwtests import hostconn, inventory, labvm, traffic
from hwtests.errors import HwtestsError
from hwtests.journal import Journal

pytestmark = pytest.mark.vmlab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The VM lab with only the 7.x build; yields the loaded inventory."""
    try:
        labvm.preflight()
        rel = labvm.default_builds()["deb7"]
    except (HwtestsError, KeyError) as exc:
        unavailable(f"no 7.x kernel for the VM lab: {exc}")
    with booted_vm_lab(tmp_path_factory.mktemp("zcrx-vmlab") / "state", [rel]) as inv_path:
        yield inventory.load(inv_path)


@pytest.fixture(scope="module")
def hosts(lab):
    ts = {n: hostconn.connect(lab.hosts[n], lab.defaults, lab) for n in ("vm-a", "vm-b")}
    try:
        rel = ts["vm-a"].run("uname -r", timeout=20).stdout.strip()
        assert rel.split(".")[0].isdigit() and int(rel.split(".")[0]) >= 7, rel
        yield ts
    finally:
        for t in ts.values():
            t.cleanup()
            t.close()


@pytest.fixture(scope="module")
def bins(hosts):
    return {n: traffic.build(t) for n, t in hosts.items()}


def _boot_id(t) -> str:
    return t.run("cat /proc/sys/kernel/random/boot_id", timeout=20).stdout.strip()


def _nodev_ok(res, n: int) -> dict:
    rx = res.rx
    assert res.ok, (res.rx_exit, res.tx_exit, res.errors, res.rx_stderr[-800:])
    assert rx["validated_bytes"] == n == rx["bytes"] and res.mismatches == 0, rx
    assert rx["zcrx_path"] == "nodev-copy", rx
    assert rx["refills"] == rx["zcrx_data_cqes"] > 0, rx        # every buffer went back
    assert rx["refill_pending"] == 0 and rx["refill_flushes"] > 0, rx   # ... and the kernel took them
    assert rx["refill_ring_full"] == 0 and rx["zcrx_register_flags"] & 2, rx
    return rx


def test_small_cq_several_flows_every_byte(hosts, bins):
    t, n = hosts["vm-a"], 48 << 20
    res = traffic.run_pair(t, t, "127.0.0.1", "zcrx", "tcp", flows=4, bytes_=n, duration=90, rx_bins=bins["vm-a"],
                           tx_bins=bins["vm-a"], rx_args=["--zcrx-nodev", "--cq-entries", "16"])
    rx = _nodev_ok(res, n)
    assert rx["cq_entries"] == 16 and rx["cq_full_rearms"] > 0, rx     # the CQ did fill: the path was taken
    assert all(b == n // 4 for b in rx["flow_bytes"]), rx["flow_bytes"]
    print(f"small CQ: {rx['zcrx_data_cqes']} completions, {rx['cq_full_rearms']} re-arms after -ENOSPC")


def test_cq_larger_than_the_refill_ring(hosts, bins):
    """A batch of completions can outnumber the refill ring's entries (the default CQ of 4 flows
    is 8192, the ring 4096): the receiver flushes the ring and leaves the rest of the batch for
    the next round instead of failing with "refill ring full" (it did, in the suite on deb7)."""
    t, n = hosts["vm-a"], 32 << 20
    res = traffic.run_pair(t, t, "127.0.0.1", "zcrx", "tcp", flows=4, bytes_=n, duration=90, rx_bins=bins["vm-a"],
                           tx_bins=bins["vm-a"], rx_args=["--zcrx-nodev", "--cq-entries", "4096", "--rq-entries", "8"])
    rx = _nodev_ok(res, n)
    assert rx["refill_full_flushes"] > 0, rx                 # the ring did run full mid-batch
    print(f"8-entry refill ring: {rx['refill_full_flushes']} flushes of a full ring, {rx['refill_waits']} waits, "
          f"{rx['refill_flushes']} flushes")


def test_tiny_area_no_buffer_rearms(hosts, bins):
    t, n = hosts["vm-a"], 16 << 20
    res = traffic.run_pair(t, t, "127.0.0.1", "zcrx", "tcp", flows=2, bytes_=n, duration=90, rx_bins=bins["vm-a"],
                           tx_bins=bins["vm-a"], rx_args=["--zcrx-nodev", "--area-size", "64K"])
    rx = _nodev_ok(res, n)
    assert rx["area_size"] == 64 << 10 and rx["no_buffer_rearms"] > 0, rx
    print(f"64 KiB area: {rx['no_buffer_rearms']} re-arms after -ENOMEM, {rx['refill_flushes']} flushes")


def test_data_link_twice_in_one_boot(lab, hosts, bins):
    a, b = hosts["vm-a"], hosts["vm-b"]
    addr = lab.hosts["vm-a"].nics["data"].ipv4
    boot = _boot_id(a)
    for i in range(2):
        res = traffic.run_pair(a, b, addr, "zcrx", "tcp", flows=3, bytes_=24 << 20, duration=90,
                               rx_bins=bins["vm-a"], tx_bins=bins["vm-b"], rx_args=["--zcrx-nodev"])
        rx = _nodev_ok(res, 24 << 20)
        print(f"data link run {i}: {rx['bytes'] / 1e9:.3f} GB, {rx['zcrx_data_cqes']} completions, "
              f"{rx['refills']} refills, {rx['refill_flushes']} flushes")
    assert _boot_id(a) == boot


def test_nic_path_refused_and_auto_falls_back(lab, hosts, bins):
    t, ifname = hosts["vm-a"], lab.hosts["vm-a"].nics["data"].ifname
    with pytest.raises(traffic.Unsupported) as ei:
        traffic.run_pair(t, t, "127.0.0.1", "zcrx", "tcp", bytes_=1 << 20, duration=30, ifname=ifname, queue=0,
                         rx_bins=bins["vm-a"], tx_bins=bins["vm-a"], rx_args=["--zcrx-path", "zero-copy"])
    assert ei.value.step == "zcrx: IORING_REGISTER_ZCRX_IFQ" and ei.value.errno, ei.value.reason
    res = traffic.run_pair(t, t, "127.0.0.1", "zcrx", "tcp", bytes_=8 << 20, duration=60, ifname=ifname, queue=0,
                           rx_bins=bins["vm-a"], tx_bins=bins["vm-a"])
    rx = _nodev_ok(res, 8 << 20)
    assert rx["zcrx_fallback"].startswith(f"zcrx: IORING_REGISTER_ZCRX_IFQ on {ifname} queue 0: "), rx
    assert os.strerror(ei.value.errno) in rx["zcrx_fallback"], (rx["zcrx_fallback"], ei.value.reason)
    # the area was sized for the NIC's RX ring (ethtool -g), as the NIC path would need
    assert rx["area_sizing"].startswith("RX ring "), rx["area_sizing"]


LIMIT = "/sys/module/udmabuf/parameters/size_limit_mb"


def test_udmabuf_above_its_limit_is_named(lab, hosts, bins):
    """The module's limit set to 64 MiB (journaled, restored), as Debian 12's kernels have it
    (trixie-backports' 7.x raise it out of reach): 80 MiB is refused naming the limit."""
    t, ifname = hosts["vm-a"], lab.hosts["vm-a"].nics["data"].ifname
    r = t.run(["cat", LIMIT], check=False, timeout=20)
    if not r.ok or not r.stdout.strip().isdigit():
        pytest.skip(f"no udmabuf size limit on this kernel: {r.stderr.strip() or r.stdout.strip()}")
    j = Journal(t, owner="test_zcrx_vm")
    j.change(f"udmabuf size_limit_mb 64 (was {r.stdout.strip()})", ["sh", "-c", 'echo 64 > "$1"', "sh", LIMIT],
             ["sh", "-c", 'echo "$2" > "$1"', "sh", LIMIT, r.stdout.strip()], timeout=20)
    try:
        cmd = [bins["vm-a"].rx, "--mode", "devmem", "--ifname", ifname, "--dmabuf-size", "80M", "--bind-only"]
        r = t.run(cmd, check=False, timeout=30)
    finally:
        assert not j.restore()
    assert r.exit_status == 1, (r.exit_status, r.stdout, r.stderr)
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["errors"] == [f"udmabuf: 80 MiB is above {LIMIT} (64 MiB): {os.strerror(errno.EINVAL)}"], doc
