"""The software NIC (fixtures/swnic, hwt_swnic) in the QEMU lab on Debian's 6.12 kernel.

Real parts throughout: the module is built against the 6.12 headers the lab fetched,
loaded into a real 6.12 guest, bound with the real devmem bind-rx of our receiver
(a real udmabuf), and fed real TCP from the other guest. What is software here is the
NIC itself, which is the point: no NIC with header split and queue management exists
in the lab. Figures from it are functional results, never NIC performance.

The pure helpers are tested without a VM. Where the VM lab cannot be built the VM
tests skip naming why, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from pathlib import Path

import pytest
import yaml

from conftest import booted_vm_lab, unavailable
from hwtests import hostconn, inventory, journal, labvm, nlclient, pagepool, swnic, traffic
from hwtests.errors import HwtestsError, InfraError, InputError
from hwtests.store import Store

DATA_BYTES = 8_000_000


# ---------------------------------------------------------------- no VM needed

ETHTOOL_S = """NIC statistics:
     rx0_packets: 4
     rx0_niov_frags: 10
     rx1_packets: 6
     rx1_niov_frags: 0
     rx1_linear_bytes: 120
     tx0_packets: 3
     not a counter
"""


def test_parse_ethtool_stats_and_queue_totals():
    st = swnic.parse_ethtool_stats(ETHTOOL_S)
    assert st["rx0_packets"] == 4 and st["tx0_packets"] == 3 and "not a counter" not in st
    tot = swnic.per_queue_totals(st)
    assert tot == {"packets": 10, "niov_frags": 10, "linear_bytes": 120}
    assert swnic.per_queue_totals(st, "tx") == {"packets": 3}


def test_global_addresses_ipv4_first_without_link_local():
    text = ('[{"ifname":"data0","addr_info":['
            '{"family":"inet6","local":"fd42::1","prefixlen":64,"scope":"global"},'
            '{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},'
            '{"family":"inet","local":"198.51.100.1","prefixlen":24,"scope":"global"}]}]')
    assert swnic.global_addresses(text) == ["198.51.100.1/24", "fd42::1/64"]
    assert swnic.global_addresses("[]") == []
    with pytest.raises(InfraError):
        swnic.global_addresses("Usage: ip")


def test_kernel_problems_finds_warnings_traces_and_stalled_pools():
    log = "\n".join([
        "[  1.0] hwt_swnic hwt_swnic swnic0: stacked on data0",
        "[  2.0] WARNING: CPU: 0 PID: 1 at net/core/devmem.c:120 net_devmem_unbind_dmabuf",
        "[  2.1] Call Trace:",
        "[  3.0] page_pool_release_retry() stalled pool shutdown: id 5, 3 inflight 60 sec",
        "[  4.0] unregister_netdevice: waiting for swnic0 to become free. Usage count = 2",
    ])
    found = swnic.kernel_problems(log)
    assert len(found) == 4 and "stacked" not in " ".join(found)
    assert swnic.kernel_problems("[ 1.0] all good\n") == []


@pytest.mark.parametrize("lower,queues", [("", 4), ("a b", 4), ("x" * 16, 4), ("$(reboot)", 4),
                                          ("data0", 0), ("data0", 9), ("data0", True), ("data0", "4")])
def test_bad_arguments_are_refused_before_the_host_is_touched(lower, queues):
    with pytest.raises(InputError):
        swnic.check_args(lower, queues)


def test_source_tree_is_the_module_alone():
    st = swnic.source()
    assert st.modules == ["hwt_swnic"]
    assert set(st.files) == {"hwt_swnic.c", "Makefile"}
    assert b'MODULE_LICENSE("GPL")' in st.files["hwt_swnic.c"]


def _prepared_7x_headers() -> list[Path]:
    """7.x cloud headers trees in the kernel cache that the deb7 lab build prepared for this
    machine's compiler (their make arguments in hwt-make-args)."""
    cache = Path(os.environ.get("HWTESTS_CACHE") or ".hwtests/cache")
    return sorted(p.parent for p in cache.glob("kernels/7.*/headers/usr/src/linux-headers-*-amd64/hwt-make-args"))


def test_module_compiles_against_7x_headers(tmp_path):
    """Built, not loaded: the 7.x paths (queue config, instance lock, hds-thresh) compile and
    every symbol resolves against the kernel's Module.symvers."""
    trees = _prepared_7x_headers()
    if not trees:
        pytest.skip("no 7.x headers prepared in the kernel cache (the deb7 VM lab build prepares them)")
    if not (shutil.which("make") and shutil.which("gcc")):
        unavailable("building the module needs make and gcc on the controller")
    hdr = trees[-1]
    src = tmp_path / "swnic"
    src.mkdir()
    for name, data in swnic.source().files.items():
        (src / name).write_bytes(data)
    args = [ln.strip() for ln in (hdr / "hwt-make-args").read_text().splitlines() if ln.strip()]
    p = subprocess.run(["make", "-C", str(hdr), f"M={src}", *args, "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "undefined!" not in p.stdout + p.stderr
    ko = (src / "hwt_swnic.ko").read_bytes()
    assert pagepool.vermagic_release(ko) == pagepool.headers_release(hdr)
    assert pagepool.vermagic_release(ko).startswith("7.")


# ---------------------------------------------------------------- the VM lab on 6.12

def _release_612() -> str:
    for rel in labvm.default_releases():
        if labvm.series_of(rel) == "6.12":
            return rel
    raise InfraError("no Debian 6.12 cloud kernel is available")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        labvm.preflight()
        release = _release_612()
    except HwtestsError as exc:
        unavailable(str(exc))
    if not (shutil.which("make") and shutil.which("gcc")):
        unavailable("building the module needs make and gcc on the controller")
    with booted_vm_lab(tmp_path_factory.mktemp("swniclab") / "state", [release]) as inv_path:
        yield inventory.load(inv_path)


class LabJournal(journal.Journal):
    """The lab's own setup journal, kept apart from the suite's: `hwtests run` replays the
    suite's journal of every host it acquires, which would take the software NIC away."""

    @property
    def path(self) -> str:
        return f"{journal.JOURNAL_DIR}/journal.swnic-lab.jsonl"


class Guest:
    """One guest with its transport, journal, data NIC and the headers of its kernel."""

    def __init__(self, inv, name: str):
        self.host = inv.hosts[name]
        self.t = hostconn.connect(self.host, inv.defaults, inv)
        self.j = journal.Journal(self.t, owner="test_swnic")
        self.nic = next(iter(self.host.nics.values()))
        release = self.t.run("uname -r", timeout=20).stdout.strip()
        self.headers = pagepool.controller_headers(self.host.kernels, release)
        assert self.headers, f"the lab lists no headers for {release}"
        self.kmsg_seq = pagepool.last_seq(pagepool.read_kmsg(self.t))

    def new_kernel_log(self) -> str:
        return pagepool.records_after(pagepool.read_kmsg(self.t), self.kmsg_seq)

    def close(self) -> list[str]:
        errors = self.j.restore()
        self.t.close()
        return errors


@pytest.fixture
def guests(lab):
    a, b = Guest(lab, "vm-a"), Guest(lab, "vm-b")
    try:
        yield a, b
    finally:
        errs = a.close() + b.close()
        assert not errs, errs


def _wait_pools_drained(g: Guest, timeout: float = 30.0) -> list:
    """Pools that still hold buffers (detached ones included) after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [p for p in swnic.pools(g.t) if p.inflight]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(1)


@pytest.mark.vmlab
def test_loads_with_header_split_and_queues_and_unloads_cleanly(guests):
    a, _b = guests
    sw = swnic.load(a.t, a.nic.ifname, queues=4, journal=a.j, controller_build_dir=a.headers)
    assert sw.artifacts.get("hwt_swnic.ko")
    swnic.take_addresses(a.t, sw, a.j)
    drv = a.t.run(["ethtool", "-i", sw.ifname], timeout=20).stdout
    assert "driver: hwt_swnic" in drv
    ring = a.t.run(["ethtool", "-g", sw.ifname], timeout=20).stdout
    assert "TCP data split:\ton" in ring or "TCP data split: on" in ring, ring
    qs = swnic.queues(a.t, sw.ifname)
    assert sorted((q.type, q.id) for q in qs) == \
        [("rx", i) for i in range(4)] + [("tx", i) for i in range(4)]
    assert all((q.napi_id or 0) > 0 and q.provider is None for q in qs), qs
    pools = swnic.pools(a.t, sw.ifname)
    assert len(pools) == 4 and all(p.ifindex == qs[0].ifindex and p.provider is None for p in pools), pools
    print(f"page pools of {sw.ifname}: {pools}")
    # header split can be turned off while nothing is bound, and on again
    changed = swnic.set_split(a.t, sw.ifname, False)
    assert (changed.before.tcp_data_split, changed.after.tcp_data_split) == ("on", "off"), changed
    assert "TCP data split:\toff" in a.t.run(["ethtool", "-g", sw.ifname], timeout=20).stdout
    assert swnic.set_split(a.t, sw.ifname, True).after.tcp_data_split == "on"

    assert a.j.restore() == []            # addresses back, link down, module out
    assert swnic.ifname_of(a.t) is None
    back = swnic.global_addresses(a.t.run(["ip", "-j", "addr", "show", "dev", a.nic.ifname], timeout=15).stdout)
    assert a.nic.ipv4 in back and a.nic.ipv6 in back, back
    assert _wait_pools_drained(a) == []
    log = a.new_kernel_log()
    assert "stacked on " + a.nic.ifname in log
    assert swnic.kernel_problems(log) == []


@pytest.mark.vmlab
def test_devmem_bind_and_unbind_on_its_queues(guests):
    a, _b = guests
    sw = swnic.load(a.t, a.nic.ifname, queues=4, journal=a.j, controller_build_dir=a.headers)
    swnic.take_addresses(a.t, sw, a.j)
    bins = traffic.build(a.t)
    for queue, n in ((0, 1), (3, 1), (1, 2), (0, 4)):
        res = traffic.bind_check(a.t, "devmem", sw.ifname, queue=queue, num_queues=n, bins=bins)
        assert res["exit"] == 0 and [b["ok"] for b in res["binds"]] == [True], res
    # a second binding of a bound queue is refused by the kernel (the first one stays)
    res = traffic.bind_check(a.t, "devmem", sw.ifname, queue=2, count=2, bins=bins)
    assert res["binds"][0]["ok"] is True and res["binds"][1]["ok"] is False, res
    assert res["binds"][1]["errno"] == errno.EEXIST, res
    # every binding went with its netlink socket: no queue keeps a dma-buf
    assert all(q.dmabuf is None for q in swnic.queues(a.t, sw.ifname))

    # while a receiver holds queue 1 bound: netdev shows its dma-buf there, header split stays on
    cmd = traffic.rx_command(bins.rx, "devmem", addr=a.nic.ipv4, duration=20, timeout=20,
                             ifname=sw.ifname, queue=1, num_queues=1)
    bg = a.t.start(cmd, name="hwt_rx")
    try:
        deadline = time.monotonic() + 30
        while traffic.parse_ready(bg.output()[0]) is None:
            assert bg.alive() and time.monotonic() < deadline, bg.output()
            time.sleep(0.2)
        bound = {q.id: q.dmabuf for q in swnic.queues(a.t, sw.ifname) if q.type == "rx"}
        assert (bound[1] or 0) > 0 and bound[0] is None and bound[2] is None and bound[3] is None, bound
        held = [p for p in swnic.pools(a.t, sw.ifname) if p.provider == "dmabuf"]
        assert [p.dmabuf for p in held] == [bound[1]], held
        with pytest.raises(nlclient.NlError) as refused:
            swnic.set_split(a.t, sw.ifname, False)
        assert refused.value.errno == errno.EBUSY and "memory provider" in refused.value.extack, refused.value
        assert "TCP data split:\ton" in a.t.run(["ethtool", "-g", sw.ifname], timeout=20).stdout
    finally:
        bg.stop(grace=2.0)
    assert all(q.dmabuf is None for q in swnic.queues(a.t, sw.ifname))
    assert _wait_pools_drained(a) == []
    swnic.unload(a.t)
    assert swnic.kernel_problems(a.new_kernel_log()) == []


@pytest.mark.vmlab
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_devmem_rx_payload_lands_in_net_iovs_with_no_linear_bytes(guests, family):
    a, b = guests
    sw = swnic.load(a.t, a.nic.ifname, queues=4, journal=a.j, controller_build_dir=a.headers)
    swnic.take_addresses(a.t, sw, a.j)
    # RSS spreads flows over every queue and no flow rule is set here: bind them all
    res = traffic.run_pair(a.t, b.t, getattr(a.nic, family), "devmem", "tcp", flows=1, duration=5,
                           bytes_=DATA_BYTES, ifname=sw.ifname, queue=0, num_queues=4, idle_timeout=30)
    rx = res.rx
    assert res.ok, (res.errors, res.rx_stderr[-500:])
    assert rx["mismatches"] == 0 and rx["validated_bytes"] == DATA_BYTES, rx
    assert rx["dmabuf_frags"] > 0 and rx["linear_frags"] == 0 and rx["linear_bytes"] == 0, rx
    st = swnic.per_queue_totals(swnic.stats(a.t, sw.ifname))
    # the NIC's own view: payload went into net_iovs, never into pages or the linear part
    # (a net_iov read in two recvmsg calls is two frags for the receiver: its count can be higher)
    assert st["niov_frags"] > 0 and st["page_frags"] == 0, st
    assert st["payload_bytes"] >= DATA_BYTES and st["errors"] == 0 and st["csum_bad"] == 0, st
    print(f"software NIC devmem RX ({family}): {DATA_BYTES} bytes validated, {rx['dmabuf_frags']} dmabuf frags, "
          f"0 linear bytes, module: {st['niov_frags']} net_iov frags, {st['linear_bytes']} header bytes "
          f"(functional result, not NIC performance)")
    # the receiver unbound at exit: every buffer went back, no pool left holding one
    assert _wait_pools_drained(a) == []
    swnic.unload(a.t)
    assert swnic.kernel_problems(a.new_kernel_log()) == []


@pytest.mark.vmlab
def test_unload_is_refused_while_a_queue_is_bound(guests):
    """A bound dma-buf is attached to the module's DMA device until it is unbound: the
    module holds itself while a queue is bound, so rmmod is refused, then goes through."""
    a, _b = guests
    sw = swnic.load(a.t, a.nic.ifname, queues=4, journal=a.j, controller_build_dir=a.headers)
    swnic.take_addresses(a.t, sw, a.j)
    bins = traffic.build(a.t)
    assert swnic.refcount(a.t) == 0
    cmd = traffic.rx_command(bins.rx, "devmem", addr=a.nic.ipv4, duration=20, timeout=20,
                             ifname=sw.ifname, queue=2, num_queues=2)
    bg = a.t.start(cmd, name="hwt_rx")
    try:
        deadline = time.monotonic() + 30
        while traffic.parse_ready(bg.output()[0]) is None:
            assert bg.alive() and time.monotonic() < deadline, bg.output()
            time.sleep(0.2)
        assert swnic.refcount(a.t) == 2                 # one per bound queue
        r = a.t.run(["rmmod", "hwt_swnic"], check=False, timeout=30)
        assert r.exit_status != 0 and swnic.ifname_of(a.t) == sw.ifname, r.stderr
        # down and up again with the queues bound: still held, still bound
        a.t.run(["ip", "link", "set", sw.ifname, "down"], timeout=20)
        a.t.run(["ip", "link", "set", sw.ifname, "up"], timeout=20)
        assert swnic.refcount(a.t) == 2
    finally:
        bg.stop(grace=2.0)
    assert swnic.refcount(a.t) == 0
    assert _wait_pools_drained(a) == []
    assert a.j.restore() == []
    assert swnic.ifname_of(a.t) is None
    assert swnic.kernel_problems(a.new_kernel_log()) == []


@pytest.mark.vmlab
def test_load_bind_unbind_unload_cycles_leave_no_warning_and_no_pool(guests):
    a, _b = guests
    count = int(os.environ.get("HWTESTS_SWNIC_CYCLES", "20"))
    sw = swnic.load(a.t, a.nic.ifname, queues=4, journal=a.j, controller_build_dir=a.headers)
    bins = traffic.build(a.t)
    t0 = time.monotonic()
    assert swnic.cycles(a.t, sw, bins.rx, count, a.j) == count
    took = time.monotonic() - t0
    assert swnic.ifname_of(a.t) is None
    assert _wait_pools_drained(a) == []
    left = [p for p in swnic.pools(a.t) if p.ifindex is None]   # pools whose netdev is gone
    assert left == [], left
    log = a.new_kernel_log()
    assert log.count("stacked on " + a.nic.ifname) == count + 1
    assert swnic.kernel_problems(log) == []
    print(f"{count} load/bind/unbind/unload cycles in {took:.1f} s, no kernel warning, no pool left")


def _junit_outcomes(path) -> dict[str, str]:
    out = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        state = "passed"
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                state = child.tag
        out[tc.get("name")] = state
    return out


@pytest.mark.vmlab
def test_suite_devmem_passes_on_the_software_nic(lab, guests, tmp_path):
    """`hwtests run -k devmem` with swnic0 as the RX host's NIC: the suite's own NIC setup
    (channels, header split, ntuple, RSS, a flow rule, all journaled by the suite), its bind
    and refusal checks and its validated 64 MiB receive pass instead of skipping. The stored
    run names hwt_swnic as the RX NIC's driver: a software-NIC functional result."""
    a, _b = guests
    labj = LabJournal(a.t, owner="test_swnic-lab")
    assert labj.restore() == []
    try:
        sw = swnic.load(a.t, a.nic.ifname, queues=4, journal=labj, controller_build_dir=a.headers)
        swnic.take_addresses(a.t, sw, labj)
        doc = yaml.safe_load(open(lab.path).read())
        doc["hosts"]["vm-a"]["nics"][next(iter(a.host.nics))]["ifname"] = sw.ifname
        inv = tmp_path / "swnic-inventory.yaml"
        inv.write_text(yaml.safe_dump(doc))
        label = next(lb for lb, kb in a.host.kernels.items() if kb.release == sw.release)
        db, xml = tmp_path / "r.db", tmp_path / "junit.xml"
        # header split cannot be turned off by the guests' ethtool (6.1): that refusal is
        # tested above through hwt_nl; zcrx needs 7.x; line rate is no software-NIC figure
        sel = "devmem and not zcrx and not linerate and not without_header_split"
        r = subprocess.run([sys.executable, "-m", "hwtests.cli", "run", "--inventory", str(inv),
                            "--kernel-build", label, "--db", str(db), "-k", sel, "--junitxml", str(xml), "-rs"],
                           capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-2000:])
        got = _junit_outcomes(xml)
        for name in ("test_bind_unbind[vm-devmem]", "test_receive_validated[vm-devmem]",
                     "test_bind_refused_queue_out_of_range[vm-devmem]",
                     "test_bind_refused_twice_on_one_queue[vm-devmem]"):
            assert got.get(name) == "passed", (name, got)
        runs = Store.open(str(db), create=False).runs()
        rx = [h for run in runs for h in run.hosts if h.role == "rx"]
        assert rx and {h.nic_driver for h in rx} == {"hwt_swnic"}, [(h.role, h.nic_driver) for h in rx]
        st = swnic.per_queue_totals(swnic.stats(a.t, sw.ifname))
        assert st["niov_frags"] > 0 and st["page_frags"] == 0 and st["errors"] == 0, st
        print(f"suite on the software NIC: {sum(v == 'passed' for v in got.values())} passed; module: "
              f"{st['niov_frags']} net_iov frags, {st['payload_bytes']} payload bytes, 0 page frags")
    finally:
        errs = labj.restore()
    assert errs == []
    assert swnic.ifname_of(a.t) is None
    assert swnic.kernel_problems(a.new_kernel_log()) == []


@pytest.mark.vmlab
def test_frames_the_lower_nic_did_not_verify_are_checksummed_in_software(guests):
    """With GRO off on the lower NIC, the lab's virtio frames arrive unverified (the unreadable
    payload cannot be checked by anyone after the NIC): the module checks each TCP checksum
    itself, and the transfer is still validated byte for byte."""
    a, b = guests
    low = a.nic.ifname
    gro = a.t.run(["ethtool", "-k", low], timeout=20).stdout
    if "generic-receive-offload: on" not in gro:
        pytest.skip(f"{low}: GRO is not on to be turned off: {gro.strip()[:120]}")
    a.j.change(f"GRO off on {low}", ["ethtool", "-K", low, "gro", "off"], ["ethtool", "-K", low, "gro", "on"])
    sw = swnic.load(a.t, low, queues=4, journal=a.j, controller_build_dir=a.headers)
    swnic.take_addresses(a.t, sw, a.j)
    res = traffic.run_pair(a.t, b.t, a.nic.ipv4, "devmem", "tcp", flows=1, duration=5, bytes_=DATA_BYTES // 2,
                           ifname=sw.ifname, queue=0, num_queues=4, idle_timeout=30)
    assert res.ok and res.mismatches == 0 and res.rx["validated_bytes"] == DATA_BYTES // 2, res.rx
    assert res.rx["linear_bytes"] == 0, res.rx
    st = swnic.per_queue_totals(swnic.stats(a.t, sw.ifname))
    assert st["csum_ok"] > 0 and st["csum_bad"] == 0 and st["errors"] == 0, st
    assert a.j.restore() == []
    assert "generic-receive-offload: on" in a.t.run(["ethtool", "-k", low], timeout=20).stdout
    assert swnic.kernel_problems(a.new_kernel_log()) == []
