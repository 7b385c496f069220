"""hwt_nl (fixtures/traffic/hwt_nl.c), its parsers (hwtests.nlparse) and the teardown wait.

- Parsers on captured answers: queue-get, qstats and rings-get lines that hwt_nl
  printed on this machine (lo, a virtio NIC), page-pool-get from the software NIC
  in the 6.12 VM lab; the dumps with a memory provider are in the same format,
  written here: no provider can be bound on this machine.
- The teardown wait (`nlclient.wait_released`, `traffic.wait_queues_released`)
  against a stand-in hwt_nl that shows an io_uring provider for a few polls,
  as the kernel's asynchronous release does: a NIC that takes one does not exist here.
- hwt_nl itself for real: on loopback, on a veth pair in a network namespace
  made here (veth has queues but no ring parameters), and in the netns lab.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid

import pytest

from hwtests import nlclient, nlparse, traffic
from hwtests.transport import LocalTransport

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

# -- captured answers -------------------------------------------------------------------------

# hwt_nl queue-get lo / eth0 (virtio_net) on kernel 6.18
Q_LO = '{"cmd": "queue-get", "ifindex": 1, "queues": [{"id": 0, "type": "rx", "ifindex": 1}, ' \
       '{"id": 0, "type": "tx", "ifindex": 1}]}\n'
Q_VIRTIO = '{"cmd": "queue-get", "ifindex": 4, "queues": [{"id": 0, "type": "rx", "ifindex": 4, ' \
           '"napi-id": 257}, {"id": 0, "type": "tx", "ifindex": 4}]}\n'
# four RX queues, queue 2 held by a devmem binding (id 5), queue 3 by an io_uring zcrx ifq
Q_PROVIDERS = json.dumps({"cmd": "queue-get", "ifindex": 9, "queues": [
    {"id": 0, "type": "rx", "ifindex": 9, "napi-id": 8193}, {"id": 1, "type": "rx", "ifindex": 9},
    {"id": 2, "type": "rx", "ifindex": 9, "dmabuf": 5}, {"id": 3, "type": "rx", "ifindex": 9, "io-uring": True},
    {"id": 3, "type": "tx", "ifindex": 9, "xsk": True}]}) + "\n"
# hwt_nl qstats eth0 (virtio_net); attr-33/34 are counters newer than hwt_nl's names
QSTATS_VIRTIO = '{"cmd": "qstats", "ifindex": 4, "qstats": [{"ifindex": 4, "queue-type": "rx", "queue-id": 0, ' \
                '"rx-packets": 9976, "rx-bytes": 418034029}, {"ifindex": 4, "queue-type": "tx", "queue-id": 0, ' \
                '"tx-packets": 5053, "tx-bytes": 505484, "attr-33": 0, "attr-34": 0}]}\n'
# hwt_nl rings-get eth0 (virtio_net: no header split, no threshold)
RINGS_VIRTIO = '{"cmd": "rings-get", "ifname": "eth0", "rings": {"rx-max": 256, "rx": 256, "tx-max": 256, "tx": 256}}\n'
# a 6.14+ kernel and a driver with a threshold (bnxt-like: default 256)
RINGS_HDS = '{"cmd": "rings-get", "ifname": "eth1", "rings": {"rx-max": 2047, "rx": 511, "tcp-data-split": "on", ' \
            '"hds-thresh": 256, "hds-thresh-max": 1023}}\n'
# hwt_nl page-pool-get swnic0 on 6.12 (the VM lab's software NIC, 4 RX queues, nothing bound:
# the values test_swnic printed, in hwt_nl's format; the module's pools have no NAPI id)
PP_SWNIC = '{"cmd": "page-pool-get", "ifindex": 4, "pools": [{"id": 5, "ifindex": 4, "inflight": 0, ' \
           '"inflight-mem": 0}, {"id": 4, "ifindex": 4, "inflight": 0, "inflight-mem": 0}, {"id": 3, "ifindex": 4, ' \
           '"inflight": 0, "inflight-mem": 0}, {"id": 2, "ifindex": 4, "inflight": 0, "inflight-mem": 0}]}\n'
# hwt_nl page-pool-get: every pool of the namespace. Pool 9 is bound to a devmem binding (id 3)
# with buffers out; pool 4's netdev is gone (no ifindex) and it waits for 2 buffers since
# detach-time; pool 12 is backed by an io_uring zcrx ifq. No provider can be bound here: written.
PP_ALL = json.dumps({"cmd": "page-pool-get", "pools": [
    {"id": 12, "ifindex": 5, "napi-id": 8196, "inflight": 64, "inflight-mem": 262144, "io-uring": True},
    {"id": 9, "ifindex": 5, "napi-id": 8194, "inflight": 128, "inflight-mem": 524288, "dmabuf": 3},
    {"id": 8, "ifindex": 5, "napi-id": 8193, "inflight": 0, "inflight-mem": 0},
    {"id": 4, "inflight": 2, "inflight-mem": 8192, "detach-time": 1733329261}]}) + "\n"
UNSUPPORTED_LO = '{"unsupported": "ethtool rings-get: Operation not supported", "step": "ethtool rings-get", ' \
                 '"errno": 95, "error": "Operation not supported", "role": "nl", "mode": "rings-get", "version": "1.0"}\n'


def test_parse_queues_without_provider():
    for text in (Q_LO, Q_VIRTIO):
        qs = nlparse.parse_queues(text)
        assert [(q.id, q.type) for q in qs] == [(0, "rx"), (0, "tx")]
        assert all(q.provider is None for q in qs) and nlparse.providers(qs) == {}
    assert nlparse.parse_queues(Q_VIRTIO)[0].napi_id == 257


def test_parse_queues_with_providers():
    qs = nlparse.parse_queues(Q_PROVIDERS)
    assert nlparse.providers(qs) == {2: "dmabuf", 3: "io-uring"}
    assert nlparse.providers(qs, [3]) == {3: "io-uring"} and nlparse.providers(qs, [0, 1]) == {}
    assert qs[2].dmabuf == 5 and qs[4].xsk and qs[4].provider is None     # AF_XDP on TX: no memory provider


def test_parse_qstats_and_rings():
    st = nlparse.parse_qstats(QSTATS_VIRTIO)
    assert nlparse.rx_bytes(st, 0) == 418034029 and nlparse.rx_bytes(st, 1) is None
    assert st[1].tx_bytes == 505484 and st[1].rx_bytes is None
    r = nlparse.parse_rings(RINGS_VIRTIO)
    assert (r.tcp_data_split, r.hds_thresh, r.hds_thresh_max, r.rx) == (None, None, None, 256)
    r = nlparse.parse_rings(RINGS_HDS)
    assert (r.tcp_data_split, r.hds_thresh, r.hds_thresh_max) == ("on", 256, 1023)


def test_parse_page_pools():
    idle = nlparse.parse_page_pools(PP_SWNIC)
    assert [p.id for p in idle] == [5, 4, 3, 2]
    assert all(p.ifindex == 4 and p.inflight == 0 and p.napi_id is None and p.provider is None for p in idle)
    pools = nlparse.parse_page_pools(PP_ALL)
    assert [(p.id, p.ifindex, p.provider) for p in pools] == \
        [(12, 5, "io-uring"), (9, 5, "dmabuf"), (8, 5, None), (4, None, None)]
    assert (pools[1].dmabuf, pools[1].inflight, pools[1].inflight_mem, pools[1].napi_id) == (3, 128, 524288, 8194)
    assert pools[2].inflight == 0 and pools[2].detach_time is None
    gone = [p for p in pools if p.ifindex is None]
    assert [(p.id, p.inflight, p.detach_time) for p in gone] == [(4, 2, 1733329261)]
    one = nlparse.parse_page_pools('{"cmd": "page-pool-get", "ifindex": 5, "pools": []}\n')
    assert one == []
    with pytest.raises(nlparse.NlParseError, match=r"pools\[0\]: no id"):
        nlparse.parse_page_pools('{"cmd": "page-pool-get", "pools": [{"ifindex": 5}]}')
    with pytest.raises(nlparse.NlParseError, match=r"pools\[0\]: inflight is -1"):
        nlparse.parse_page_pools('{"cmd": "page-pool-get", "pools": [{"id": 1, "inflight": -1}]}')
    with pytest.raises(nlparse.NlParseError, match="not an answer"):
        nlparse.parse_page_pools(Q_LO)                     # another command's answer


def test_parse_rejects_what_is_not_an_answer():
    with pytest.raises(nlparse.NlParseError, match="not an answer"):
        nlparse.parse_rings(UNSUPPORTED_LO)
    assert nlparse.failure(UNSUPPORTED_LO)["errno"] == 95
    with pytest.raises(nlparse.NlParseError, match="no JSON answer"):
        nlparse.parse_queues("hwt_nl: usage error\n")
    with pytest.raises(nlparse.NlParseError, match=r"queues\[0\]: id is True"):
        nlparse.parse_queues('{"cmd": "queue-get", "queues": [{"id": true, "type": "rx"}]}')
    with pytest.raises(nlparse.NlParseError, match="not a list of objects"):
        nlparse.parse_queues('{"cmd": "queue-get", "queues": 3}')
    with pytest.raises(nlparse.NlParseError, match="tcp-data-split is 'maybe'"):
        nlparse.parse_rings('{"cmd": "rings-get", "rings": {"tcp-data-split": "maybe"}}')
    assert nlparse.ethtool_version("ethtool version 6.1\n") == (6, 1)
    assert nlparse.ethtool_version("ethtool: command not found") is None


# -- the teardown wait, against a stand-in hwt_nl ---------------------------------------------

# Shows an io_uring provider on queue 3 while the counter in $2's file is above 0 (decremented per
# call), then none; exit 4 / 1 when the file says "unsupported" / "fail".
FAKE_NL = r"""#!/bin/sh
f=$(dirname "$0")/polls
n=$(cat "$f")
case "$n" in
unsupported) echo '{"unsupported": "genl family netdev: No such file or directory", "errno": 2}'; exit 4;;
fail) echo '{"cmd": "queue-get", "error": "netdev queue-get: No such device", "errno": 19}'; exit 1;;
esac
echo $((n - 1)) > "$f"
if [ "$n" -gt 0 ]; then p=', "io-uring": true'; else p=''; fi
echo "{\"cmd\": \"queue-get\", \"ifindex\": 7, \"queues\": [{\"id\": 3, \"type\": \"rx\"$p}, {\"id\": 2, \"type\": \"rx\"}]}"
"""


@pytest.fixture
def fake_bins(tmp_path):
    nl = tmp_path / "hwt_nl"
    nl.write_text(FAKE_NL)
    nl.chmod(0o755)
    (tmp_path / "polls").write_text("3\n")
    t = LocalTransport("h1")
    yield t, traffic.TrafficBinaries(rx=str(tmp_path / "hwt_rx"), tx=str(tmp_path / "hwt_tx"), source_hash="x",
                                     how="test", arch="x86_64", kernel_release="6.18"), tmp_path / "polls"
    t.cleanup()


def test_wait_released_polls_until_the_provider_is_gone(fake_bins):
    t, bins, polls = fake_bins
    waited = nlclient.wait_released(t, bins.nl, "eth9", [3], timeout=10, interval=0.05)
    assert polls.read_text().strip() == "-1"          # 3 polls saw the provider, the 4th none
    assert 0.1 <= waited < 10


def test_wait_released_is_bounded_and_names_the_queue(fake_bins):
    t, bins, polls = fake_bins
    polls.write_text("1000\n")
    with pytest.raises(nlclient.ProviderNotReleased, match=r"h1: eth9: memory provider still bound .* after the "
                                                           r"receiver exited \(queue 3: io-uring\)"):
        nlclient.wait_released(t, bins.nl, "eth9", [3], timeout=0.3, interval=0.05)
    polls.write_text("1000\n")
    assert nlclient.wait_released(t, bins.nl, "eth9", [2], timeout=0.3) < 0.3     # another queue: not held


def test_traffic_waits_after_a_zero_copy_receiver(fake_bins):
    t, bins, polls = fake_bins
    traffic.wait_queues_released(t, bins, "zcrx", "eth9", 3)
    assert polls.read_text().strip() == "-1"
    polls.write_text("3\n")
    traffic.wait_queues_released(t, bins, "tcp", "eth9", 3)          # plain TCP binds nothing: no poll
    traffic.wait_queues_released(t, bins, "devmem", None, None)       # no NIC queue (device-less)
    assert polls.read_text().strip() == "3"
    polls.write_text("unsupported\n")
    traffic.wait_queues_released(t, bins, "devmem", "eth9", 3)       # a kernel without queue-get: nothing to wait on
    polls.write_text("fail\n")
    with pytest.raises(traffic.TrafficError, match=r"h1: hwt_nl queue-get eth9: netdev queue-get: No such device"):
        traffic.wait_queues_released(t, bins, "devmem", "eth9", 3, num_queues=2)


# -- hwt_nl for real -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_nl(tmp_path_factory):
    if not shutil.which("cc") or not shutil.which("make"):
        pytest.skip("no cc/make on this machine")
    t = LocalTransport("local")
    bins = traffic.build(t, cache_root=tmp_path_factory.mktemp("traffic-cache"))
    yield bins.nl
    t.cleanup()


def _nl(*argv, ns: str | None = None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return r.returncode, r.stdout, r.stderr


def test_real_loopback(real_nl):
    rc, out, _ = _nl(real_nl, "queue-get", "lo")
    assert rc == 0, out
    qs = nlparse.parse_queues(out)
    assert ("rx", 0) in [(q.type, q.id) for q in qs] and nlparse.providers(qs) == {}
    rc, out, _ = _nl(real_nl, "rings-get", "lo")
    assert rc == 4 and nlparse.failure(out)["errno"] == errno.EOPNOTSUPP
    rc, out, err = _nl(real_nl, "rings-get", "nosuchif0")
    assert rc == 1 and nlparse.failure(out)["errno"] == errno.ENODEV and "no device matches name" in out
    rc, _, err = _nl(real_nl, "rings-set", "lo", "hds-thresh", "x")
    assert rc == 2 and "usage error" in err
    rc, _, err = _nl(real_nl, "queue-get")
    assert rc == 2


def test_real_page_pool_get(real_nl):
    """The dump with and without an interface. The kernel reports no ifindex for pools on
    loopback (where it also parks pools whose netdev is gone): asking for lo gives none."""
    rc, out, _ = _nl(real_nl, "page-pool-get")
    assert rc == 0, out
    every = nlparse.parse_page_pools(out)
    assert len({p.id for p in every}) == len(every)
    rc, out, _ = _nl(real_nl, "page-pool-get", "lo")
    assert rc == 0 and json.loads(out)["ifindex"] == 1 and nlparse.parse_page_pools(out) == []
    rc, out, _ = _nl(real_nl, "page-pool-get", "nosuchif0")
    assert rc == 1 and nlparse.failure(out)["errno"] == errno.ENODEV
    for argv in (("page-pool-get", "lo", "lo"), ("page-pool-get", "")):
        rc, _, err = _nl(real_nl, *argv)
        assert rc == 2 and "usage error" in err and err.count("\n") == 1, (argv, err)


@pytest.fixture
def veth_ns():
    """A namespace of our own with a veth pair inside it (nothing in the root namespace)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    ns = f"hwtnl-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "v0", "numrxqueues", "2", "numtxqueues", "2", "type", "veth",
                        "peer", "name", "v1"], check=True, timeout=20)
        for dev in ("v0", "v1"):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True, timeout=20)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=20)


@needs_root
def test_real_veth_in_a_namespace(real_nl, veth_ns):
    rc, out, _ = _nl(real_nl, "queue-get", "v0", ns=veth_ns)
    assert rc == 0, out
    qs = nlparse.parse_queues(out)
    rx = sorted(q.id for q in qs if q.type == "rx")
    assert rx and rx[0] == 0 and nlparse.providers(qs) == {}
    # veth has no ring parameters: the kernel says EOPNOTSUPP to get and set alike
    for argv in (("rings-get", "v0"), ("rings-set", "v0", "tcp-data-split", "on", "hds-thresh", "0")):
        rc, out, _ = _nl(real_nl, *argv, ns=veth_ns)
        assert rc == 4, out
        assert nlparse.failure(out)["errno"] == errno.EOPNOTSUPP
    rc, out, _ = _nl(real_nl, "qstats", "v0", ns=veth_ns)
    assert rc in (0, 4), out         # per-queue counters: driver and kernel dependent
    if rc == 0:
        assert all(s.type in ("rx", "tx") for s in nlparse.parse_qstats(out))


@pytest.mark.lab
def test_lab_veth_queues_and_rings(netns_lab):
    """The netns lab's data link, through SSH and the deployed binary."""
    from hwtests import hostconn, inventory
    inv = inventory.load(netns_lab)
    host = inv.hosts["a1"]
    t = hostconn.connect(host, inv.defaults)
    try:
        bins = traffic.build(t)
        ifname = host.nics["data"].ifname
        qs = nlclient.queues(t, bins.nl, ifname)
        assert [q.id for q in qs if q.type == "rx"][:1] == [0] and nlparse.providers(qs) == {}
        with pytest.raises(nlclient.NlUnsupported, match=r"a1: hwt_nl rings-get: ethtool rings-get: Operation not "
                                                         r"supported"):
            nlclient.rings(t, bins.nl, ifname)
        assert nlclient.wait_released(t, bins.nl, ifname, [0]) < 1.0
    finally:
        t.close()


def test_zero_copy_shortfall_from_queue_counters():
    """zcrx: the bound queue's rx-bytes must cover the payload received; less is copy fallback."""
    before = nlparse.parse_qstats(json.dumps({"cmd": "qstats", "qstats": [
        {"queue-type": "rx", "queue-id": 3, "rx-bytes": 1000}, {"queue-type": "rx", "queue-id": 0, "rx-bytes": 5}]}))
    after = nlparse.parse_qstats(json.dumps({"cmd": "qstats", "qstats": [
        {"queue-type": "rx", "queue-id": 3, "rx-bytes": 69_000_000}, {"queue-type": "rx", "queue-id": 0,
                                                                      "rx-bytes": 40_000_000}]}))
    delta = nlparse.queue_rx_delta(before, after, 3)
    assert delta == 68_999_000
    assert nlparse.zero_copy_shortfall(delta, 64 << 20, 3) is None            # headers make it more than the payload
    msg = nlparse.zero_copy_shortfall(nlparse.queue_rx_delta(before, after, 0), 64 << 20, 0)
    assert msg == ("the bound queue 0 counted 39999995 rx-bytes but the receiver got 67108864 payload bytes: at least "
                   "27108869 bytes came through other queues and were copied, not zero-copy")
    assert nlparse.queue_rx_delta(before, after, 7) is None                    # not counted: cannot tell
