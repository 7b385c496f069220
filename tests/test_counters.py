"""Kernel counters: parsers on hand-written captures of the real formats, deltas, snapshots, storage.

The captures below are written by hand in the kernel's formats (net/ipv4/proc.c,
net/core/net-procfs.c, kernel/irq/proc.c, ethtool, perf stat -x,) with values chosen
so every delta is known; the lab tests (netns) read the real files.
"""

from __future__ import annotations

import os
import time

import pytest

from conftest import booted_vm_lab, run_cli
from pgfixture import pg_server, pg_url, store_url  # noqa: F401
from hwtests import counters as C
from hwtests import counterstore
from hwtests import countersnap as S
from hwtests.store import Store

NETSTAT_A = """TcpExt: SyncookiesSent PruneCalled RcvPruned OfoPruned TCPRcvCollapsed TCPBacklogDrop ListenDrops TCPOFOQueue
TcpExt: 0 3 0 0 10 0 1 100
IpExt: InNoRoutes InOctets OutOctets InCsumErrors
IpExt: 0 1000000 2000000 0
"""
NETSTAT_B = """TcpExt: SyncookiesSent PruneCalled RcvPruned OfoPruned TCPRcvCollapsed TCPBacklogDrop ListenDrops TCPOFOQueue
TcpExt: 0 5 0 0 10 2 1 400
IpExt: InNoRoutes InOctets OutOctets InCsumErrors
IpExt: 0 9000000 2100000 0
"""
SNMP_A = """Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors InDiscards OutDiscards
Ip: 1 64 5000 0 0 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts
Tcp: 1 200 120000 -1 10 2 5000 4000 9 0 1
"""
SNMP_B = """Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors InDiscards OutDiscards
Ip: 1 64 8000 0 0 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts
Tcp: 1 200 120000 -1 11 1 8000 6000 36 0 1
"""

# 6.x: 15 columns, the 13th the CPU id (CPU 1 offline: ids 0 and 2)
SOFTNET_15_A = ("0000000a 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 "
                "00000000 00000000 00000000 00000000 00000000 00000000\n"
                "000000f0 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000000 "
                "00000005 00000000 00000003 00000002 00000001 00000002\n")
SOFTNET_15_B = ("0000001a 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 "
                "00000000 00000000 00000000 00000000 00000000 00000000\n"
                "000001f0 00000004 0000000a 00000000 00000000 00000000 00000000 00000000 00000000 "
                "00000005 00000000 00000000 00000002 00000000 00000000\n")
# before 5.10: 11 columns, no CPU id
SOFTNET_11 = ("00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n"
              "00000020 00000000 00000003 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n")

INTERRUPTS_A = """           CPU0       CPU1       CPU2       CPU3
  0:         44          0          0          0  IR-IO-APIC    2-edge      timer
 98:        100          0          0          0  IR-PCI-MSIX-0000:08:00.0    0-edge      mlx5_async0@pci:0000:08:00.0
 99:       1000         10          0          0  IR-PCI-MSIX-0000:08:00.0    1-edge      mlx5_comp0@pci:0000:08:00.0
100:          0       2000          0          0  IR-PCI-MSIX-0000:08:00.0    2-edge      mlx5_comp1@pci:0000:08:00.0
120:          5          5          5          5  IR-PCI-MSIX-0000:3b:00.0    0-edge      eth10-TxRx-0
121:          7          0          0          0  IR-PCI-MSIX-0000:3b:00.0    1-edge      eth1-TxRx-0
NMI:          0          0          0          0   Non-maskable interrupts
LOC:     995380    1166117     100000     100000   Local timer interrupts
ERR:          0
MIS:          0
"""
INTERRUPTS_B = """           CPU0       CPU1       CPU2       CPU3
  0:         44          0          0          0  IR-IO-APIC    2-edge      timer
 98:        101          0          0          0  IR-PCI-MSIX-0000:08:00.0    0-edge      mlx5_async0@pci:0000:08:00.0
 99:       1500         10          0          0  IR-PCI-MSIX-0000:08:00.0    1-edge      mlx5_comp0@pci:0000:08:00.0
100:          0       2900          0          0  IR-PCI-MSIX-0000:08:00.0    2-edge      mlx5_comp1@pci:0000:08:00.0
120:          9          9          9          9  IR-PCI-MSIX-0000:3b:00.0    0-edge      eth10-TxRx-0
121:         17          0          0          0  IR-PCI-MSIX-0000:3b:00.0    1-edge      eth1-TxRx-0
NMI:          0          0          0          0   Non-maskable interrupts
LOC:     995480    1166217     100100     100100   Local timer interrupts
ERR:          0
MIS:          0
"""

ETHTOOL_A = """NIC statistics:
     rx_packets: 1000
     tx_packets: 500
     rx_queue_0_drops: 0
     rx_out_of_buffer: 2
     tx-0.bytes: 77
"""
ETHTOOL_B = """NIC statistics:
     rx_packets: 31000
     tx_packets: 500
     rx_queue_0_drops: 0
     rx_out_of_buffer: 9
     tx-0.bytes: 177
"""

PERF_OK = """# started on Fri Dec  4 16:00:00 2026

12345678901,,cycles,2000000000,100.00,,
23456789012,,instructions,2000000000,100.00,1.90,insn per cycle
1234567,,cache-misses,2000000000,100.00,,
4567,,branch-misses:u,2000000000,100.00,,
"""
# this machine (a VM without a PMU), as perf 6.x prints it
PERF_NO_PMU = """<not supported>,,cycles,0,100.00,,
<not supported>,,instructions,0,100.00,,
<not supported>,,cache-misses,0,100.00,,
<not supported>,,branch-misses,0,100.00,,
"""
PERF_HYBRID = """1000,,cpu_core/cycles/,100,100.00,,
<not counted>,,cpu_atom/cycles/,0,0.00,,
200,,cpu_atom/instructions/,100,50.00,,
300,,cpu_core/instructions/,100,50.00,,
<not counted>,,cache-misses,0,0.00,,
"""


# -- netstat / snmp ------------------------------------------------------------------------

def test_netstat_and_snmp_parse_and_key_deltas():
    a = C.parse_netstat(NETSTAT_A) | C.parse_netstat(SNMP_A, "/proc/net/snmp")
    b = C.parse_netstat(NETSTAT_B) | C.parse_netstat(SNMP_B, "/proc/net/snmp")
    assert a["Tcp.MaxConn"] == -1 and a["TcpExt.TCPOFOQueue"] == 100 and a["IpExt.InOctets"] == 1000000
    d = C.deltas(a, b, keep=C.KEY_NETSTAT, skip=C.NETSTAT_GAUGES)
    assert d["Tcp.RetransSegs"].value == 27 and d["TcpExt.TCPOFOQueue"].value == 300
    assert d["TcpExt.PruneCalled"].value == 2 and d["TcpExt.TCPBacklogDrop"].value == 2
    assert d["TcpExt.RcvPruned"].value == 0          # a key counter kept at 0
    assert d["Ip.InReceives"].value == 3000
    assert "Tcp.CurrEstab" not in d and "Tcp.MaxConn" not in d      # gauges and settings: no delta
    assert "TcpExt.SyncookiesSent" not in d                        # quiet and not a key counter
    assert "Tcp.ActiveOpens" in d                                  # changed: kept
    # a key counter this kernel lacks is unavailable, not 0
    assert d["TcpExt.TCPZeroWindowDrop"].value is None and "no such counter" in d["TcpExt.TCPZeroWindowDrop"].reason


def test_this_machines_netstat_parses():
    text = open("/proc/net/netstat").read()
    got = C.parse_netstat(text)
    assert any(k.startswith("TcpExt.") for k in got)


@pytest.mark.parametrize("text,where", [
    ("TcpExt: A B\nTcpExt: 1\n", "line 2: TcpExt: 2 names but 1 values"),
    ("TcpExt: A B\nIpExt: 1 2\n", "line 2"),
    ("TcpExt: A\nTcpExt: x\n", "TcpExt.A: 'x' is not an integer"),
    ("TcpExt: A\n", "header without a values line"),
    ("garbage line here\nmore\n", "line 1"),
])
def test_netstat_bad_input_names_the_line(text, where):
    with pytest.raises(C.CounterFormatError, match="/proc/net/netstat") as ei:
        C.parse_netstat(text)
    assert where in str(ei.value) and "\n" not in str(ei.value)


def test_delta_wraparound_or_reset_is_unavailable_not_negative():
    d = C.delta(4294967290, 5)
    assert d.value is None and "backwards" in d.reason
    assert C.delta(None, 5).value is None
    assert C.delta(5, 5).value == 0
    got = C.deltas({"Tcp.RetransSegs": 100}, {"Tcp.RetransSegs": 3}, keep=("Tcp.RetransSegs",))
    assert got["Tcp.RetransSegs"].value is None


# -- softnet -----------------------------------------------------------------------------------

def test_softnet_15_columns_cpu_ids_from_the_kernel():
    a, b = C.parse_softnet(SOFTNET_15_A), C.parse_softnet(SOFTNET_15_B)
    assert [r.cpu for r in a] == [0, 2] and a[1].received_rps == 5 and a[1].backlog_len == 3
    d = C.softnet_delta(a, b)
    assert d.total["processed"].value == 0x10 + 0x100
    assert d.total["dropped"].value == 3 and d.total["time_squeeze"].value == 8
    assert d.worst["time_squeeze"] == (2, C.Value(8))
    assert d.worst["processed"][0] == 2


def test_softnet_old_kernel_by_position_and_offline_cpu():
    rows = C.parse_softnet(SOFTNET_11)
    assert [r.cpu for r in rows] == [0, 1] and rows[1].time_squeeze == 3 and rows[0].backlog_len is None
    assert rows[0].cpu_from == "position"
    # a CPU that went away between the snapshots: its delta and the sum are unavailable, not short
    d = C.softnet_delta(C.parse_softnet(SOFTNET_15_A), C.parse_softnet(SOFTNET_15_A.splitlines()[0] + "\n"))
    assert d.total["processed"].value is None and "CPU 2" in d.total["processed"].reason
    assert d.worst["processed"] == (0, C.Value(0))


def test_softnet_counter_wrap_is_unavailable():
    a = C.parse_softnet("fffffff0 0 0 0 0 0 0 0 0 0 0 0 00000000\n")
    b = C.parse_softnet("00000010 0 0 0 0 0 0 0 0 0 0 0 00000000\n")
    assert C.softnet_delta(a, b).total["processed"].value is None


def test_softnet_bad_input():
    with pytest.raises(C.CounterFormatError, match="line 1: 3 columns"):
        C.parse_softnet("1 2 3\n")
    with pytest.raises(C.CounterFormatError, match="not hex"):
        C.parse_softnet("zz 0 0 0 0 0 0 0 0 0 0\n")


def test_this_machines_softnet_parses():
    rows = C.parse_softnet(open("/proc/net/softnet_stat").read())
    assert rows and all(r.processed >= 0 for r in rows)


# -- interrupts --------------------------------------------------------------------------------

def test_interrupts_nic_lines_by_name_bus_or_msi():
    ta, tb = C.parse_interrupts(INTERRUPTS_A), C.parse_interrupts(INTERRUPTS_B)
    assert ta.cpus == ["CPU0", "CPU1", "CPU2", "CPU3"]
    assert [ln.irq for ln in ta.lines][-2:] == ["ERR", "MIS"] and ta.lines[-1].counts == (0,)
    # eth1 by name: not eth10
    assert [ln.irq for ln in C.nic_irq_lines(tb, "eth1")] == ["121"]
    # mlx5 names no interface: by the device's bus address, or by its msi_irqs
    assert [ln.irq for ln in C.nic_irq_lines(tb, "enp8s0f0np0", bus_info="0000:08:00.0")] == ["98", "99", "100"]
    assert [ln.irq for ln in C.nic_irq_lines(tb, "enp8s0f0np0", irqs={"99", "100"})] == ["99", "100"]
    lines = ["99", "100"]
    d = C.irq_delta([ln for ln in ta.lines if ln.irq in lines], [ln for ln in tb.lines if ln.irq in lines], tb.cpus)
    assert d.per_line == {"99:mlx5_comp0@pci:0000:08:00.0": C.Value(500), "100:mlx5_comp1@pci:0000:08:00.0": C.Value(900)}
    assert d.per_cpu["CPU0"].value == 500 and d.per_cpu["CPU1"].value == 900 and d.total.value == 1400


def test_interrupts_line_gone_is_unavailable():
    ta, tb = C.parse_interrupts(INTERRUPTS_A), C.parse_interrupts(INTERRUPTS_B)
    d = C.irq_delta([], C.nic_irq_lines(tb, "eth1"), tb.cpus)
    assert d.total.value is None and "not in both" in d.total.reason
    with pytest.raises(C.CounterFormatError, match="/proc/interrupts"):
        C.parse_interrupts("  0: 1 2 timer\n")
    assert ta.lines[0].name == "timer"


# -- ethtool -S --------------------------------------------------------------------------------

def test_ethtool_stats_and_deltas():
    a, b = C.parse_ethtool_stats(ETHTOOL_A), C.parse_ethtool_stats(ETHTOOL_B)
    assert a["tx-0.bytes"] == 77
    d = C.deltas(a, b)
    assert d == {"rx_out_of_buffer": C.Value(7), "rx_packets": C.Value(30000), "tx-0.bytes": C.Value(100)}


def test_ethtool_without_statistics():
    with pytest.raises(C.CounterFormatError, match="ethtool -S lo: no stats available"):
        C.parse_ethtool_stats("no stats available\n", "ethtool -S lo")


# -- perf stat -------------------------------------------------------------------------------------

def test_perf_stat_counts():
    got = C.perf_events(C.parse_perf_stat(PERF_OK))
    assert got["cycles"].value == 12345678901 and got["instructions"].value == 23456789012
    assert got["branch-misses"].value == 4567          # modifier :u dropped
    assert C.per_element(got["cycles"], 1000).value == pytest.approx(12345678.901)


def test_perf_not_supported_is_unavailable_never_zero():
    got = C.perf_events(C.parse_perf_stat(PERF_NO_PMU))
    for e in C.PERF_EVENTS:
        assert got[e].value is None and "not supported" in got[e].reason
    assert C.per_element(got["cycles"], 1000).value is None


def test_perf_hybrid_pmus_summed_and_not_counted():
    got = C.perf_events(C.parse_perf_stat(PERF_HYBRID))
    assert got["cycles"].value == 1000                  # cpu_atom not counted: cpu_core's count stands
    assert got["instructions"].value == 500
    assert got["cache-misses"].value is None and "not counted" in got["cache-misses"].reason
    assert got["branch-misses"].value is None and "no line" in got["branch-misses"].reason


# -- a whole snapshot ---------------------------------------------------------------------------------

def _snap(netstat, snmp, softnet, interrupts, ethtool, ethtool_rc=0, msi="", device="", qstats=None):
    return (f"@@ netstat\n{netstat}@@ rc 0\n@@ snmp\n{snmp}@@ rc 0\n@@ softnet\n{softnet}@@ rc 0\n"
            f"@@ interrupts\n{interrupts}@@ rc 0\n@@ msi\n{msi}\n@@ rc 0\n@@ device\n{device}\n@@ rc 0\n"
            f"@@ ethtool\n{ethtool}@@ rc {ethtool_rc}\n"
            + (f"@@ qstats\n{qstats}@@ rc 0\n" if qstats else "@@ qstats\nhwt_nl not deployed on this host\n@@ rc 127\n"))


def test_snapshot_rows_for_a_physical_nic():
    a = S.parse_snapshot(_snap(NETSTAT_A, SNMP_A, SOFTNET_15_A, INTERRUPTS_A, ETHTOOL_A, msi="98\n99\n100",
                               device="/sys/devices/pci0000:00/0000:00:02.0/0000:08:00.0", qstats=QSTATS_A),
                         "enp8s0f0np0")
    b = S.parse_snapshot(_snap(NETSTAT_B, SNMP_B, SOFTNET_15_B, INTERRUPTS_B, ETHTOOL_B, msi="98\n99\n100",
                               device="/sys/devices/pci0000:00/0000:00:02.0/0000:08:00.0", qstats=QSTATS_B),
                         "enp8s0f0np0")
    assert not a.missing
    rows = {r.name: r for r in S.host_rows(a, b, "enp8s0f0np0", "mlx5_core")}
    assert rows["net.Tcp.RetransSegs"].value == 27 and rows["net.TcpExt.TCPOFOQueue"].value == 300
    assert rows["softnet.time_squeeze"].value == 8 and rows["softnet.time_squeeze.worst_cpu"].value == 2
    assert rows["irq.total"].value == 1401 and rows["irq.worst_cpu"].value == 1
    assert rows["irq.99:mlx5_comp0@pci:0000:08:00.0"].value == 500
    assert rows["ethtool.rx_out_of_buffer"].value == 7 and "ethtool.tx_packets" not in rows
    assert rows["qstats.rx_bytes"].value == 1003000


def test_snapshot_veth_no_irq_lines_and_no_ethtool():
    text = _snap(NETSTAT_A, SNMP_A, SOFTNET_11, INTERRUPTS_A, "no stats available\n", ethtool_rc=94)
    a, b = S.parse_snapshot(text, "veth0"), S.parse_snapshot(text, "veth0")
    assert "ethtool -S veth0: no stats available" in a.missing["ethtool"]
    rows = {r.name: r for r in S.host_rows(a, b, "veth0", "veth")}
    assert rows["irq.total"].value is None
    assert rows["irq.total"].reason == "no interrupt lines for veth (veth0) in /proc/interrupts"
    assert rows["ethtool"].value is None and "no stats available" in rows["ethtool"].reason
    assert rows["net.Tcp.RetransSegs"].value == 0
    assert "softnet.processed.worst_cpu" not in rows         # nothing moved: no CPU is the worst
    later = S.parse_snapshot(text.replace("00000020 00000000 00000003", "00000030 00000000 00000003"), "veth0")
    rows = {r.name: r for r in S.host_rows(a, later, "veth0", "veth")}
    assert rows["softnet.processed.worst_cpu"].value == 1 and "line position" in rows["softnet.processed.worst_cpu"].reason


def test_snapshot_missing_files_are_reasons():
    text = ("@@ netstat\ncat: /proc/net/netstat: No such file or directory\n@@ rc 1\n@@ snmp\n" + SNMP_A + "@@ rc 0\n"
            "@@ softnet\ncat: /proc/net/softnet_stat: No such file or directory\n@@ rc 1\n@@ interrupts\n")
    s = S.parse_snapshot(text, "eth0")
    assert "No such file" in s.missing["netstat"] and s.netstat["Tcp.RetransSegs"] == 9
    assert "softnet_stat: cat" in s.missing["softnet"] and "interrupts" in s.missing
    rows = {r.name: r for r in S.host_rows(s, s, "eth0")}
    assert rows["softnet.processed"].value is None and "No such file" in rows["softnet.processed"].reason
    assert rows["irq.total"].value is None


QSTATS_A = ('{"cmd": "qstats", "ifindex": 4, "qstats": [{"ifindex": 4, "queue-type": "rx", "queue-id": 0, '
            '"rx-packets": 9976, "rx-bytes": 418034029}, {"ifindex": 4, "queue-type": "rx", "queue-id": 1, '
            '"rx-packets": 10, "rx-bytes": 1000}, {"ifindex": 4, "queue-type": "tx", "queue-id": 0, '
            '"tx-packets": 5053, "tx-bytes": 505484, "attr-33": 0}]}\n')
QSTATS_B = ('{"cmd": "qstats", "ifindex": 4, "qstats": [{"ifindex": 4, "queue-type": "rx", "queue-id": 0, '
            '"rx-packets": 10976, "rx-bytes": 419034029}, {"ifindex": 4, "queue-type": "rx", "queue-id": 1, '
            '"rx-packets": 12, "rx-bytes": 4000}, {"ifindex": 4, "queue-type": "tx", "queue-id": 0, '
            '"tx-packets": 5063, "tx-bytes": 506484, "attr-33": 0}]}\n')


def test_snapshot_qstats_per_queue_and_summed():
    a = S.parse_snapshot("@@ qstats\n" + QSTATS_A + "@@ rc 0\n", "eth0")
    b = S.parse_snapshot("@@ qstats\n" + QSTATS_B + "@@ rc 0\n", "eth0")
    rows = {r.name: r.value for r in S.qstats_rows(a.qstats, b.qstats)}
    assert rows["qstats.rx0.rx_bytes"] == 1000000 and rows["qstats.rx1.rx_packets"] == 2
    assert rows["qstats.rx_bytes"] == 1003000 and rows["qstats.tx_packets"] == 10
    assert "qstats.tx0.rx_bytes" not in rows            # not counted by the driver: left out, not 0
    # a queue whose counter went back (reset by a channel change): its sum unavailable
    rows = {r.name: r for r in S.qstats_rows(b.qstats, a.qstats)}
    assert rows["qstats.rx_bytes"].value is None and "backwards" in rows["qstats.rx_bytes"].reason


def test_snapshot_qstats_unsupported_or_not_deployed():
    s = S.parse_snapshot('@@ qstats\n{"unsupported": "netdev qstats-get: Operation not supported", '
                         '"errno": 95}\n@@ rc 4\n', "veth0")
    assert s.qstats is None and s.missing["qstats"] == "hwt_nl qstats veth0: netdev qstats-get: Operation not supported"
    s = S.parse_snapshot("@@ qstats\nhwt_nl not deployed on this host\n@@ rc 127\n", "veth0")
    assert s.missing["qstats"].endswith("hwt_nl not deployed on this host")
    rows = {r.name: r for r in S.host_rows(s, s, "veth0")}
    assert rows["qstats"].value is None and "not deployed" in rows["qstats"].reason


def test_sampler_times_and_window():
    times = S.parse_times("T 100.0 0\nT 100.5 1\nT 101.0 2\nT bad 3\nT 101.5 3\n", offset=10.0)
    assert times == [(110.0, 0), (110.5, 1), (111.0, 2), (111.5, 3)]
    assert S.window(times, 110.2, 111.4) == ((110.5, 1), (111.0, 2))
    assert S.window(times, 110.2, 110.9) is None


def test_sampler_on_this_machine_loopback():
    """The real snapshot script on this machine's /proc: TCP over loopback shows in the counters."""
    import socket
    import threading

    from hwtests.transport import LocalTransport

    t = LocalTransport("local")
    try:
        s = S.CounterSampler(t, "lo", interval=0.2, max_seconds=5).start()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        got = []

        def sink():
            c, _ = srv.accept()
            while True:
                b = c.recv(65536)
                if not b:
                    break
                got.append(len(b))
            c.close()

        th = threading.Thread(target=sink, daemon=True)
        th.start()
        time.sleep(0.5)
        t0 = time.time()
        cl = socket.create_connection(srv.getsockname(), timeout=5)
        for _ in range(200):                       # bounded: 200 x 64 KiB over loopback
            cl.sendall(b"x" * 65536)
        cl.close()
        th.join(timeout=10)
        time.sleep(0.5)
        t1 = time.time()
        times = s.stop()
        assert len(times) >= 3
        rows = {r.name: r for r in s.rows_between(t0 - 0.3, t1)}
        assert sum(got) == 200 * 65536
        assert rows["net.Tcp.InSegs"].value > 0 and rows["net.IpExt.InOctets"].value >= 200 * 65536
        assert rows["softnet.processed"].value is not None
        assert rows["irq.total"].value is None and "no interrupt lines" in rows["irq.total"].reason
        assert rows["ethtool"].value is None and rows["ethtool"].reason.startswith("ethtool -S lo")
        assert 0 < rows["window_seconds"].value <= t1 - t0 + 0.3
        srv.close()
        s.cleanup()
    finally:
        t.close()


# -- the line-rate suite on the netns lab (real sshd, real veth, real SQLite) ----------------------

@pytest.fixture(scope="module")
def linerate_counters(netns_lab, tmp_path_factory):
    db = tmp_path_factory.mktemp("counters") / "results.db"
    env = dict(os.environ, HWTESTS_LINERATE_DURATION="4", HWTESTS_LINERATE_REPEAT="2",
               HWTESTS_LINERATE_WARMUP="1", HWTESTS_LINERATE_COOLDOWN="0")
    r = run_cli("run", "--inventory", str(netns_lab), "--kernel-build", "lab-ctr", "--pair", "pair1",
                "-k", "linerate and tcp", "--db", str(db), "-p", "no:cacheprovider", env=env, timeout=600)
    return {"r": r, "db": db}


@pytest.mark.lab
def test_linerate_stores_counters_of_both_hosts(linerate_counters):
    r = linerate_counters["r"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    st = Store.open(str(linerate_counters["db"]), create=False)
    try:
        got = counterstore.rows(st, labels=["lab-ctr"])
        gbps = st.samples(labels=["lab-ctr"], metric="gbps")
        runs = st.runs(labels=["lab-ctr"])
    finally:
        st.close()
    # the inventory's pinning is in the run's environment (the lab pins nothing but the page_pool load)
    assert [h.env["pin"] for h in runs[0].hosts] == [{"pagepool_cpu": 0, "rx_cpus": None, "tx_cpus": None}] * 2
    assert len(gbps) == 2 and (gbps["value"] > 0).all()
    by = {(c["role"], c["repetition"], c["name"]): c for c in got}
    assert {c["test"] for c in got} == {"linerate/tcp"}
    for rep in (0, 1):
        for role in ("rx", "tx"):
            assert by[(role, rep, "window_seconds")]["value"] >= 1.0
            # veth: TCP/IP counted in the host's namespace, softnet read, no IRQ lines
            assert by[(role, rep, "net.Tcp.InSegs")]["value"] > 0
            assert by[(role, rep, "softnet.processed")]["value"] is not None
            irq = by[(role, rep, "irq.total")]
            assert irq["value"] is None and irq["reason"].startswith("no interrupt lines for veth"), irq
            assert any(n.startswith("ethtool") for (ro, rp, n) in by if ro == role and rp == rep)
            # per-queue counters through the deployed hwt_nl: veth's answer depends on the kernel
            q = [c for (ro, rp, n), c in by.items() if ro == role and rp == rep and n.startswith("qstats")]
            assert q and all(c["value"] is not None or "hwt_nl qstats" in c["reason"] for c in q), q
        # the receiver took in about what the throughput says, over the same window
        rx_bytes = by[("rx", rep, "net.IpExt.InOctets")]["value"]
        g = float(gbps[gbps["repetition"] == rep]["value"].iloc[0])
        secs = by[("rx", rep, "window_seconds")]["value"]
        assert 0.5 < rx_bytes / (g * 1e9 / 8 * secs) < 2.0, (rx_bytes, g, secs)
    # counters are not samples: the gate never sees them
    assert not any(m.startswith(("net.", "softnet.", "irq.")) for m in set(gbps["metric"]))


# -- perf stat around a load ---------------------------------------------------------------------------

def test_perf_stat_for_real_on_this_machine(tmp_path):
    """The real perf here: where it is missing or the CPU has no PMU (a VM), every event is
    unavailable with perf's own reason; where it counts, the counts are positive."""
    from hwtests import pagepool
    from hwtests.transport import LocalTransport

    t = LocalTransport("local")
    try:
        facts = pagepool.host_facts(t)
        why = pagepool.perf_blocker(t, facts)
        if why is not None:
            got = pagepool._perf_counts(t, str(tmp_path / "none.csv"), why)
            assert all(v.value is None and v.reason == why for v in got.values())
            pytest.skip(why)
        out = str(tmp_path / "perf.csv")
        r = t.run(["perf", "stat", "-x,", "-e", ",".join(C.PERF_EVENTS), "-o", out, "--",
                   "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"], timeout=60)
        assert r.ok
        got = pagepool._perf_counts(t, out, None)
        assert set(got) == set(C.PERF_EVENTS)
        for ev, v in got.items():
            assert (v.value is not None and v.value > 0) or (v.value is None and v.reason.startswith("perf: ")), (ev, v)
        assert not (tmp_path / "perf.csv").exists()           # read back and removed
    finally:
        t.close()


def test_perf_rows_per_element():
    from hwtests import pagepool, timebench

    recs = [timebench.Record(type="for_loop", cycles=1, ns=0, invoke_count=1000),
            timebench.Record(type="no-softirq-page_pool01", cycles=20, ns=5, invoke_count=1000)]
    rr = pagepool.RunResult(0, recs, [], "", "b", "6.12", "hwt_pp_bench", "hwt",
                            perf={"cycles": C.Value(40000.0), "instructions": C.unavailable("perf: no PMU")})
    rows = {n: (v, u) for n, v, u in rr.perf_rows()}
    assert rows["perf.cycles"][0].value == 40000 and rows["perf.cycles_per_element"][0].value == 20.0
    assert rows["perf.instructions_per_element"][0].value is None
    assert rows["perf.cycles_per_element"][1] == "per element"


# -- compare: side by side, marked, never gating ---------------------------------------------------------

def test_mark_rules():
    from hwtests.countercmp import Side, mark

    assert mark(Side(9, 3), Side(27, 3)) == (3.0, "x3.0")                   # retransmits tripled
    assert mark(Side(1, 3), Side(3, 3)) == (3.0, "")                        # 1 -> 3: too few events to matter
    assert mark(Side(0, 3), Side(50, 3)) == (None, "appeared")
    assert mark(Side(0, 3), Side(5, 3)) == (None, "")
    assert mark(Side(400, 3), Side(100, 3)) == (0.25, "x0.25")
    assert mark(Side(20.0, 3), Side(45.0, 3), unit="per element") == (2.25, "x2.2")   # no event floor
    assert mark(Side(None, 0, "no PMU"), Side(None, 0, "no PMU")) == (None, "")
    assert mark(Side(5, 3), Side(None, 0, "x")) == (None, "unavailable in candidate")


def _linerate_build(url, label, gbps, retrans, perf_reason=""):
    from hwtests.store import HostInfo, Run, Sample

    with Store.open(url) as s:
        for run in range(2):
            rid = s.begin_run(Run(label, "pair1", "ctl", "inv", "measured",
                                  [HostInfo("rx", "a1", kernel_release=f"6.12-{label}"), HostInfo("tx", "b1")]))
            s.add_samples(rid, [Sample("linerate/tcp", "gbps", g, "Gbit/s", "higher", rep, host="a1")
                                for rep, g in enumerate(gbps)])
            rows = []
            for rep in range(len(gbps)):
                rows += [counterstore.StoredCounter("linerate/tcp", rep, "b1", "tx", "net.Tcp.RetransSegs",
                                                    float(retrans[rep])),
                         counterstore.StoredCounter("linerate/tcp", rep, "a1", "rx", "irq.total", None, "count",
                                                    "no interrupt lines for veth (veth0) in /proc/interrupts"),
                         counterstore.StoredCounter("linerate/tcp", rep, "a1", "rx", "net.TcpExt.TCPOFOQueue",
                                                    float(100 + rep))]
            rows.append(counterstore.StoredCounter("pagepool", 0, "a1", "rx", "perf.cycles_per_element", None,
                                                   "per element", perf_reason or "perf not installed on a1"))
            assert counterstore.add(s, rid, rows) == len(rows)
            s.finish_run(rid)


def test_compare_json_carries_counters_and_they_never_gate(tmp_path):
    import json

    url = str(tmp_path / "results.db")
    gbps = [9.0, 9.1, 8.9, 9.05, 9.02, 8.98]
    _linerate_build(url, "base", gbps, [9, 8, 10, 9, 9, 11])
    _linerate_build(url, "cand", gbps, [27, 30, 25, 28, 29, 26])          # retransmits tripled, same Gbit/s
    r = run_cli("compare", "--baseline", "base", "--candidate", "cand", "--db", url, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr                      # the gate decides on Gbit/s only: nothing regressed
    assert [c["metric"] for c in out["comparisons"]] == ["gbps"]
    by = {(c["role"], c["name"]): c for c in out["counters"]}
    rt = by[("tx", "net.Tcp.RetransSegs")]
    assert rt["baseline"]["median"] == 9.0 and rt["candidate"]["median"] == 27.5 and rt["mark"] == "x3.1"
    assert rt["baseline"]["n"] == 12 and rt["test"] == "linerate/tcp" and rt["pair"] == "pair1"
    irq = by[("rx", "irq.total")]
    assert irq["baseline"]["median"] is None and irq["candidate"]["reason"].startswith("no interrupt lines for veth")
    assert by[("rx", "net.TcpExt.TCPOFOQueue")]["mark"] == ""
    # the text form lists them under the table, marked
    r = run_cli("compare", "--baseline", "base", "--candidate", "cand", "--db", url)
    assert r.returncode == 0
    tail = r.stdout.split("counters (median per build", 1)[1]
    line = next(ln for ln in tail.splitlines() if "net.Tcp.RetransSegs" in ln)
    assert line.split()[-3:] == ["9", "27.5", "x3.1"]
    # --test narrows counters too; pagepool counters follow pagepool/* globs
    r = run_cli("compare", "--baseline", "base", "--candidate", "cand", "--db", url, "--json", "--test", "linerate/*")
    assert {c["test"] for c in json.loads(r.stdout)["counters"]} == {"linerate/tcp"}


def test_report_shows_counters_under_the_verdict(tmp_path):
    import html
    import re

    url = str(tmp_path / "results.db")
    gbps = [9.0, 9.1, 8.9, 9.05, 9.02, 8.98]
    _linerate_build(url, "base", gbps, [9, 8, 10, 9, 9, 11])
    _linerate_build(url, "cand", gbps, [27, 30, 25, 28, 29, 26])
    out = tmp_path / "r.html"
    r = run_cli("report", "--db", url, "--builds", "base,cand", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    sec = page.split('id="linerate-tcp"', 1)[1].split("</section>", 1)[0] if 'id="linerate-tcp"' in page \
        else page.split("<code>linerate/tcp</code>", 1)[1].split("</section>", 1)[0]
    assert "Kernel counters" in sec and "1 changed a lot" in sec
    row = re.search(r"<tr class=\"diff\">.*?net\.Tcp\.RetransSegs.*?</tr>", sec, re.S).group(0)
    cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    assert cells[-3:] == ["9", "27.5", "x3.1"]
    assert "no interrupt lines for veth" in sec


# -- the VM lab: a virtio NIC with interrupt lines and queue counters, a guest without perf -----------------

@pytest.mark.vmlab
def test_vm_lab_virtio_counters_and_no_perf(tmp_path):
    """Real Debian 6.12 guests (QEMU TCG): the line-rate counters find virtio_net's interrupt lines
    (by the device's msi_irqs: their names hold no interface name) and its per-queue qstats;
    the page_pool loads store perf as unavailable (the busybox guests have no perf)."""
    from conftest import unavailable
    from hwtests import labvm
    from hwtests.errors import HwtestsError

    try:
        labvm.preflight()
        rel = next((r for r in labvm.default_releases() if labvm.series_of(r) == "6.12"), None)
    except HwtestsError as exc:
        unavailable(f"VM lab: {exc}")
    if rel is None:
        unavailable("VM lab: no Debian 6.12 kernel among the lab's builds")
    db = tmp_path / "results.db"
    label = next(iter(labvm.labels_for([rel])))
    with booted_vm_lab(tmp_path / "lab", [rel]) as inv:
        env = dict(os.environ, HWTESTS_LINERATE_DURATION="6", HWTESTS_LINERATE_REPEAT="1",
                   HWTESTS_PP_LOOPS="5000", HWTESTS_PP_REPEAT="1")
        r = run_cli("run", "--inventory", str(inv), "--kernel-build", label, "-k", "(linerate and tcp) or pagepool",
                    "--db", str(db), "-p", "no:cacheprovider", env=env, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    st = Store.open(str(db), create=False)
    try:
        got = counterstore.rows(st, labels=[label])
    finally:
        st.close()
    by = {(c["test"], c["role"], c["name"]): c for c in got}
    for role in ("rx", "tx"):
        assert by[("linerate/tcp", role, "irq.total")]["value"] > 0
        lines = [n for (t, ro, n) in by if t == "linerate/tcp" and ro == role and n.startswith("irq.")
                 and "virtio" in n and "-input." in n]
        assert lines, by.keys()
        assert by[("linerate/tcp", role, "softnet.processed")]["value"] > 0
    rx_q = by[("linerate/tcp", "rx", "qstats.rx_bytes")]["value"]
    rx_ip = by[("linerate/tcp", "rx", "net.IpExt.InOctets")]["value"]
    assert 0.5 < rx_q / rx_ip < 1.5, (rx_q, rx_ip)          # the queue counted what IP received
    perf = [c for c in got if c["test"] == "pagepool" and c["name"].startswith("perf.")]
    assert len(perf) == 8 and all(c["value"] is None and c["reason"] == "perf not installed on vm-a" for c in perf)


def test_counter_table_on_both_backends(store_url):
    """Unavailable counters come back as None with their reason, never 0, on SQLite and PostgreSQL;
    the samples the gate reads hold none of them."""
    from hwtests.store import HostInfo, Run, Sample

    with Store.open(store_url) as s:
        rid = s.begin_run(Run("b", "p", "ctl", "inv", "measured", [HostInfo("rx", "a1")]))
        s.add_samples(rid, [Sample("linerate/tcp", "gbps", 9.0, "Gbit/s", "higher", 0)])
        n = counterstore.add(s, rid, [
            counterstore.StoredCounter("linerate/tcp", 0, "a1", "rx", "net.Tcp.RetransSegs", 27.0),
            counterstore.StoredCounter("linerate/tcp", 0, "a1", "rx", "irq.total", None, "count", "no interrupt lines"),
        ])
        assert n == 2
        got = {r["name"]: r for r in counterstore.rows(s, labels=["b"])}
        assert got["net.Tcp.RetransSegs"]["value"] == 27.0 and got["net.Tcp.RetransSegs"]["pair"] == "p"
        assert got["irq.total"]["value"] is None and got["irq.total"]["reason"] == "no interrupt lines"
        assert set(s.samples(labels=["b"])["metric"]) == {"gbps"}
        assert counterstore.rows(s, labels=["other"]) == []
