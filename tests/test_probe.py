"""Probe: pure parsers on sample outputs, the probe of this machine, capabilities, hygiene, CLI."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from hwtests import probe as pr
from hwtests import probeparse as pp
from hwtests.transport import LocalTransport

DATA = Path(__file__).resolve().parent / "data" / "probe"


def sample(name: str) -> str:
    return (DATA / name).read_text()


# -- kernel config ----------------------------------------------------------------

DEBUG_CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.12.0 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc (GCC) 14.2.0"
CONFIG_MODULES=y
CONFIG_NET_DEVMEM=y
CONFIG_UDMABUF=m
CONFIG_PAGE_POOL=y
CONFIG_PAGE_POOL_STATS=y
CONFIG_IO_URING=y
CONFIG_NETDEVSIM=m
CONFIG_HZ=1000
CONFIG_LOCKDEP=y
CONFIG_PROVE_LOCKING=y
CONFIG_DEBUG_LOCK_ALLOC=y
CONFIG_DEBUG_PREEMPT=y
CONFIG_DEBUG_ATOMIC_SLEEP=y
CONFIG_KASAN=y
CONFIG_UBSAN=y
CONFIG_KFENCE=y
CONFIG_DEBUG_INFO=y
CONFIG_DEBUG_KERNEL=y
CONFIG_DEBUG_FS=y
CONFIG_DEBUG_SOMETHING_NEW=y
# CONFIG_KCSAN is not set
# CONFIG_DEBUG_VM is not set
CONFIG_PREEMPT=y
"""


def test_config_flags_this_machine_sample():
    c = pp.parse_config(sample("local.config.txt"))
    f = c["flags"]
    assert f["NET_DEVMEM"] == "y" and f["IO_URING"] == "y" and f["IO_URING_ZCRX"] == "y"
    assert f["PAGE_POOL"] == "y" and f["PAGE_POOL_STATS"] is None
    assert f["UDMABUF"] is None and f["DMABUF_HEAPS"] is None and f["NETDEVSIM"] is None
    assert f["MODULES"] is None
    assert f["HZ"] == "250"
    assert c["debug"] == {"heavy": [], "light": ["DEBUG_LIST"]}
    assert len(c["hash"]) == 64 and c["options"] > 1000


def test_config_hash_normalized():
    text = sample("local.config.txt")
    h = pp.parse_config(text)["hash"]
    # only CONFIG_ lines, reversed, no comments, no "is not set": the same configuration
    lines = [ln for ln in text.splitlines() if ln.startswith("CONFIG_")]
    assert pp.parse_config("\n".join(reversed(lines)))["hash"] == h
    assert pp.parse_config("# other header\n" + text + "\n# CONFIG_FOO is not set\n")["hash"] == h
    # "=n" is the same as not set
    assert pp.parse_config(text + "CONFIG_FOO=n\n")["hash"] == h
    # a changed option changes it
    assert pp.parse_config(text.replace("CONFIG_HZ=250", "CONFIG_HZ=1000"))["hash"] != h
    assert pp.parse_config(text + "CONFIG_UDMABUF=y\n")["hash"] != h


def test_config_debug_kernel():
    c = pp.parse_config(DEBUG_CONFIG)
    assert c["flags"]["UDMABUF"] == "m" and c["flags"]["NETDEVSIM"] == "m" and c["flags"]["MODULES"] == "y"
    assert c["flags"]["IO_URING_ZCRX"] is None
    assert c["debug"]["heavy"] == ["DEBUG_ATOMIC_SLEEP", "DEBUG_LOCK_ALLOC", "DEBUG_PREEMPT", "KASAN",
                                   "LOCKDEP", "PROVE_LOCKING"]
    # cheap or unknown ones are light; DEBUG_INFO/KERNEL/FS are not reported at all
    assert c["debug"]["light"] == ["DEBUG_SOMETHING_NEW", "KFENCE", "UBSAN"]


@pytest.mark.parametrize("text", [None, "", "   \n", "# just a comment\n", "garbage\n"])
def test_config_unknown(text):
    assert pp.parse_config(text) == {"hash": None, "flags": None, "debug": None, "options": 0}


# -- ethtool ----------------------------------------------------------------------

@pytest.mark.parametrize("nic,expect", [
    ("mlx5", {"driver": "mlx5_core", "version": "6.17.0", "firmware": "28.39.1002 (MT_0000000834)",
              "bus_info": "0000:3b:00.0"}),
    ("bnxt", {"driver": "bnxt_en", "version": "6.18.0", "firmware": "230.0.154.0/pkg 230.1.116.0",
              "bus_info": "0000:41:00.0"}),
    ("netdevsim", {"driver": "netdevsim", "version": "6.12.117+deb12-cloud-amd64", "firmware": None,
                   "bus_info": "netdevsim1"}),
    ("veth", {"driver": "veth", "version": "1.0", "firmware": None, "bus_info": None}),
    ("virtio", {"driver": "virtio_net", "version": "1.0.0", "firmware": None, "bus_info": "0000:00:03.0"}),
])
def test_ethtool_i(nic, expect):
    assert pp.parse_ethtool_i(sample(f"{nic}.ethtool_i.txt")) == expect


def test_ethtool_i_unsupported_or_missing():
    assert pp.parse_ethtool_i(sample("lo.ethtool_i.txt"), 71) is None
    assert pp.parse_ethtool_i("sh: 1: ethtool: not found\n", 127) is None
    assert pp.parse_ethtool_i("", None) is None


@pytest.mark.parametrize("nic,mx,cur,rx_max,rx_cur", [
    ("mlx5", {"rx": None, "tx": None, "other": None, "combined": 63},
     {"rx": None, "tx": None, "other": None, "combined": 16}, 63, 16),
    ("bnxt", {"rx": 37, "tx": 37, "other": None, "combined": 74},
     {"rx": 0, "tx": 0, "other": None, "combined": 8}, 111, 8),
    ("veth", {"rx": 2, "tx": 2, "other": None, "combined": None},
     {"rx": 2, "tx": 2, "other": None, "combined": None}, 2, 2),
    ("virtio", {"rx": None, "tx": None, "other": None, "combined": 1},
     {"rx": None, "tx": None, "other": None, "combined": 1}, 1, 1),
    ("netdevsim", {"rx": None, "tx": None, "other": None, "combined": 4},
     {"rx": None, "tx": None, "other": None, "combined": 4}, 4, 4),
])
def test_ethtool_l(nic, mx, cur, rx_max, rx_cur):
    ch = pp.parse_ethtool_l(sample(f"{nic}.ethtool_l.txt"))
    assert ch == {"max": mx, "current": cur}
    assert pp.rx_channels(ch, "max") == rx_max and pp.rx_channels(ch, "current") == rx_cur


@pytest.mark.parametrize("name,rc", [("lo.ethtool_l.txt", 1), ("oldethtool.ethtool_l.txt", 1)])
def test_ethtool_l_unsupported(name, rc):
    assert pp.parse_ethtool_l(sample(name), rc) is None
    assert pp.rx_channels(None) is None


def test_ethtool_g_header_split_states():
    mlx = pp.parse_ethtool_g(sample("mlx5.ethtool_g.txt"))
    assert mlx["tcp_data_split"] == "on"
    assert mlx["max"]["rx"] == 8192 and mlx["current"]["rx"] == 1024
    assert mlx["current"]["hds_thresh"] is None
    bnxt = pp.parse_ethtool_g(sample("bnxt.ethtool_g.txt"))
    assert bnxt["tcp_data_split"] == "off"
    assert bnxt["max"]["hds_thresh"] == 1023 and bnxt["current"]["hds_thresh"] == 0
    assert bnxt["max"]["rx_jumbo"] == 8191
    assert pp.parse_ethtool_g(sample("netdevsim.ethtool_g.txt"))["tcp_data_split"] == "n/a"
    assert pp.parse_ethtool_g(sample("virtio.ethtool_g.txt"))["tcp_data_split"] == "n/a"
    old = pp.parse_ethtool_g(sample("oldethtool.ethtool_g.txt"))
    assert old["max"]["rx"] == 4096 and old["tcp_data_split"] is None      # too old to print it
    assert pp.parse_tcp_data_split(old) is None


def test_ethtool_g_unsupported():
    assert pp.parse_ethtool_g(sample("veth.ethtool_g.txt"), 1) is None     # "netlink error: ..."
    assert pp.parse_ethtool_g(sample("lo.ethtool_g.txt"), 1) is None
    assert pp.parse_ethtool_g("Cannot get device ring settings: Operation not supported\n", 76) is None
    assert pp.parse_tcp_data_split(None) is None


def test_ethtool_k():
    veth = pp.parse_ethtool_k(sample("veth.ethtool_k.txt"))
    assert veth["ntuple-filters"] == {"on": False, "fixed": True, "requested": None}
    assert veth["rx-gro-hw"] == {"on": False, "fixed": True, "requested": None}
    assert veth["generic-receive-offload"] == {"on": False, "fixed": False, "requested": None}
    assert veth["tx-checksum-ipv4"]["fixed"] is True        # indented sub-features too
    assert pp.feature_usable(veth, "ntuple-filters") is False
    assert pp.feature_usable(veth, "generic-receive-offload") is True
    mlx = pp.parse_ethtool_k(sample("mlx5.ethtool_k.txt"))
    assert mlx["ntuple-filters"]["on"] is True and mlx["rx-gro-hw"]["on"] is True
    assert pp.feature_usable(mlx, "ntuple-filters") is True
    assert pp.feature_usable(mlx, "no-such-feature") is None
    req = pp.parse_ethtool_k("Features for x:\nrx-gro-hw: off [requested on]\nhw-tc-offload: on\n")
    assert req["rx-gro-hw"] == {"on": False, "fixed": False, "requested": True}
    assert pp.parse_ethtool_k("sh: ethtool: not found", 127) is None


def test_ethtool_x():
    mlx = pp.parse_ethtool_x(sample("mlx5.ethtool_x.txt"))
    assert mlx == {"supported": True, "rings": 16, "table_size": 128, "hash_function": "toeplitz", "key": True}
    for nic in ("veth", "virtio", "lo"):
        assert pp.parse_ethtool_x(sample(f"{nic}.ethtool_x.txt"), 1)["supported"] is False, nic
    assert pp.parse_ethtool_x(sample("virtio.ethtool_x.txt"), 0)["rings"] == 1
    assert pp.parse_ethtool_x("sh: 1: ethtool: not found\n", 127)["supported"] is None


def test_ethtool_link():
    assert pp.parse_ethtool_link(sample("mlx5.ethtool_link.txt")) == {"speed_mbps": 100000, "duplex": "Full",
                                                                       "link": True}
    assert pp.parse_ethtool_link(sample("bnxt.ethtool_link.txt"))["speed_mbps"] == 25000
    assert pp.parse_ethtool_link(sample("veth.ethtool_link.txt"))["speed_mbps"] == 10000
    v = pp.parse_ethtool_link(sample("virtio.ethtool_link.txt"))
    assert v == {"speed_mbps": None, "duplex": None, "link": True}               # Speed: Unknown!
    assert pp.parse_ethtool_link(sample("lo.ethtool_link.txt")) == {"speed_mbps": None, "duplex": None,
                                                                     "link": True}
    assert pp.parse_ethtool_link("", 127) == {"speed_mbps": None, "duplex": None, "link": None}


def test_queues():
    assert pp.parse_queues("rx-0\nrx-1\ntx-0\ntx-1\ntx-2\n") == {"rx": 2, "tx": 3}
    assert pp.parse_queues("ls: cannot access", 2) == {"rx": None, "tx": None}


# -- CPU ------------------------------------------------------------------------------

INTEL_CPUINFO = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 79
model name	: Intel(R) Xeon(R) CPU E5-1650 v4 @ 3.60GHz
cpu MHz		: 1200.000
flags		: fpu vme de pse tsc msr pae mce constant_tsc arch_perfmon nonstop_tsc aperfmperf
processor	: 1
"""

ARM_CPUINFO = """\
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c

processor	: 1
"""


def test_cpuinfo_and_tsc():
    local = pp.parse_cpuinfo(sample("local.cpuinfo.txt"))
    assert local["model"] == "AMD EPYC" and local["constant_tsc"] and local["nonstop_tsc"]
    assert local["hypervisor"] is True and local["mhz"] == pytest.approx(2245.786)
    assert pp.tsc_khz(local, None) == (2245785, "bogomips")        # bogomips 4491.57 / 2
    assert pp.tsc_khz(local, "2245780") == (2245780, "sysfs")
    intel = pp.parse_cpuinfo(INTEL_CPUINFO)
    assert intel["model"].startswith("Intel(R) Xeon(R) CPU E5-1650") and intel["hypervisor"] is False
    assert pp.tsc_khz(intel, None) == (3600000, "model-name")
    arm = pp.parse_cpuinfo(ARM_CPUINFO)
    assert arm["model"] == "arm implementer 0x41 part 0xd0c" and arm["tsc"] is False
    assert pp.tsc_khz(arm, None) == (None, "unknown")
    assert pp.tsc_khz(pp.parse_cpuinfo(""), None) == (None, "unknown")


def _kv(**files):
    return {"/sys/devices/system/cpu/" + k.replace("__", "/"): v for k, v in files.items()}


def test_governor_boost_smt():
    none = pp.parse_governors({})
    assert none == {"governor": "none", "governors": {}}
    perf = {f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor": "performance" for i in range(4)}
    assert pp.parse_governors(perf) == {"governor": "performance", "governors": {"performance": 4}}
    perf["/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"] = "powersave"
    assert pp.parse_governors(perf) == {"governor": "mixed", "governors": {"performance": 3, "powersave": 1}}

    assert pp.parse_boost(_kv(cpufreq__boost="1")) == {"boost": True, "boost_source": "cpufreq/boost"}
    assert pp.parse_boost(_kv(intel_pstate__no_turbo="1"))["boost"] is False
    assert pp.parse_boost(_kv(intel_pstate__no_turbo="0"))["boost"] is True
    assert pp.parse_boost(_kv(cpufreq__policy0__boost="0", cpufreq__policy1__boost="1"))["boost"] is True
    assert pp.parse_boost({}) == {"boost": None, "boost_source": None}

    assert pp.parse_smt(_kv(smt__active="1", smt__control="on")) == {"smt": True, "smt_control": "on"}
    assert pp.parse_smt(_kv(smt__active="0", smt__control="notsupported"))["smt"] is False
    sib = {"/sys/devices/system/cpu/cpu0/topology/thread_siblings_list": "0,8",
           "/sys/devices/system/cpu/cpu8/topology/thread_siblings_list": "0,8"}
    assert pp.parse_smt(sib)["smt"] is True
    sib = {"/sys/devices/system/cpu/cpu0/topology/thread_siblings_list": "0",
           "/sys/devices/system/cpu/cpu1/topology/thread_siblings_list": "1"}
    assert pp.parse_smt(sib)["smt"] is False
    assert pp.parse_smt({"/sys/devices/system/cpu/cpu0/topology/thread_siblings_list": "0-1"})["smt"] is True
    assert pp.parse_smt({}) == {"smt": None, "smt_control": None}


def test_grep_h_skips_errors():
    text = ("grep: /sys/devices/system/cpu/cpufreq/boost: No such file or directory\n"
            "/sys/devices/system/cpu/smt/active:1\n/sys/x/y:a:b\n")
    assert pp.parse_grep_h(text) == {"/sys/devices/system/cpu/smt/active": "1", "/sys/x/y": "a:b"}


def test_vulnerabilities():
    v = pp.parse_vulnerabilities(sample("local.vulnerabilities.txt"))
    assert v["spectre_v2"].startswith("Mitigation: Retpolines")
    assert v["meltdown"] == "Not affected"
    s = pp.mitigations_summary({**v, "srbds": "Vulnerable: No microcode", "x": "Unknown: no data"})
    assert s["vulnerable"] == ["srbds"] and "retbleed" in s["mitigated"] and s["other"] == ["x"]
    assert pp.parse_vulnerabilities("grep: /sys/...: No such file or directory") is None
    assert pp.mitigations_summary(None) is None


# -- generic netlink ---------------------------------------------------------------------

def test_genl_family():
    g = pp.parse_genl_family(sample("local.genl_netdev.txt"), 0)
    assert g["reachable"] is True and g["id"] == 0x14 and g["version"] == 1
    assert "bind-rx" in g["ops"] and "dev-get" in g["ops"] and "page-pool-stats-get" not in g["ops"]
    assert pp.parse_genl_family("RTNETLINK answers: No such file or directory\nError talking to the kernel\n",
                                255)["reachable"] is False
    for rc in (127, 124, None):          # genl missing, timed out, cut short: unknown
        assert pp.parse_genl_family("sh: genl: not found", rc)["reachable"] is None
    assert pp.parse_genl_family("weird", 0)["reachable"] is None


# -- section framing --------------------------------------------------------------------

def test_split_sections():
    m = "@@hwtests-abc"
    text = (f"{m} begin a\nline1\nline2\n\n{m} end a 0\n"
            f"{m} begin b\nno newline\n{m} end b 3\n"
            f"{m} begin empty\n\n{m} end empty 0\n"
            f"{m} begin cut\npartial\n")
    s = pp.split_sections(text, m)
    assert s["a"] == (0, "line1\nline2")
    assert s["b"] == (3, "no newline")
    assert s["empty"] == (0, "")
    assert s["cut"] == (None, "partial")


# -- capabilities -------------------------------------------------------------------------

def _sections(m: str, parts: dict[str, tuple[int, str]]) -> str:
    return "".join(f"{m} begin {k}\n{body}\n{m} end {k} {rc}\n" for k, (rc, body) in parts.items())


def fake_probe(nic: str = "mlx5", config: str | None = DEBUG_CONFIG, genl: str | None = None, uid: int = 0,
               exists: dict[str, bool] | None = None, sysctl: str = "", ethtool_rc: int = 0,
               cpu: str = "") -> dict:
    """A probe dict assembled from sample command outputs, as the script would print them."""
    ex = {"/dev/udmabuf": True, "/dev/dma_heap": False, "/proc/modules": True,
          "/lib/modules/6.12.0/build/Makefile": True, "/dev/kmsg": True}
    ex.update(exists or {})
    parts: dict[str, tuple[int, str]] = {
        "uname": (0, "6.12.0 x86_64"),
        "version": (0, "Linux version 6.12.0 (x@y) #1 SMP"),
        "boot_id": (0, "0b9f5c2e-0000-4000-8000-000000000001"),
        "uid": (0, str(uid)),
        "cmdline": (0, "BOOT_IMAGE=/vmlinuz root=/dev/sda1 isolcpus=2"),
        "config": (0, "source: /boot/config-6.12.0\n" + config) if config is not None else (1, "source: none"),
        "exists": (0, "\n".join(f"{p} {'yes' if v else 'no'}" for p, v in ex.items())),
        "sys": (0, (sysctl or "/proc/sys/kernel/modules_disabled:0\n/proc/sys/kernel/io_uring_disabled:0\n"
                            "/sys/devices/system/cpu/online:0-15")
                + "\n" + (cpu or "/sys/devices/system/cpu/smt/active:0\n/sys/devices/system/cpu/smt/control:off\n"
                           + "\n".join(f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor:performance"
                                        for i in range(16))
                           + "\n/sys/devices/system/cpu/intel_pstate/no_turbo:1")
                + "\n" + sample("local.vulnerabilities.txt")),
        "genl": (0, genl) if genl is not None else (127, "sh: 1: genl: not found"),
        "cpuinfo": (0, INTEL_CPUINFO.split("processor\t: 1")[0]),
    }
    if nic == "absent":
        parts["nic0.absent"] = (0, "")
    else:
        parts["nic0.sys"] = (0, "/sys/class/net/p0/operstate:up\n/sys/class/net/p0/mtu:9000\n"
                                "/sys/class/net/p0/device/numa_node:1")
        parts["nic0.queues"] = (0, "\n".join([f"rx-{i}" for i in range(16)] + [f"tx-{i}" for i in range(16)]))
        parts["nic0.driver"] = (0, "../../../../bus/pci/drivers/" + nic)
        for what in ("i", "l", "g", "k", "x", "link"):
            f = DATA / f"{nic}.ethtool_{what}.txt"
            if ethtool_rc == 127:
                parts[f"nic0.ethtool_{what}"] = (127, "sh: 1: ethtool: not found")
            elif f.exists():
                body = f.read_text()
                bad = "Operation not supported" in body or "netlink error" in body
                parts[f"nic0.ethtool_{what}"] = (1 if bad else 0, body)
            else:
                parts[f"nic0.ethtool_{what}"] = (0, "")
    m = "@@hwtests-test"
    return pr.build_probe(pp.split_sections(_sections(m, parts), m), ["p0"], host="h")


def test_build_probe_real_nic():
    p = fake_probe("mlx5")
    assert p["kernel_release"] == "6.12.0" and p["arch"] == "x86_64" and p["root"] is True
    assert p["config_source"] == "/boot/config-6.12.0" and len(p["config_hash"]) == 64
    n = p["nics"]["p0"]
    assert n["driver"] == "mlx5_core" and n["firmware"].startswith("28.39") and n["speed_mbps"] == 100000
    assert n["tcp_data_split"] == "on" and n["rx_channels_max"] == 63 and n["numa_node"] == 1
    assert n["rx_queues"] == 16 and n["mtu"] == 9000 and n["rss"]["table_size"] == 128
    c = p["cpu"]
    assert c["count"] == 16 and c["governor"] == "performance" and c["boost"] is False and c["smt"] is False
    assert c["tsc_khz"] == 3600000 and c["tsc_source"] == "model-name"
    json.dumps(p)     # JSON-able


def test_capabilities_real_nic_all_there():
    caps = pr.capabilities(fake_probe("mlx5"), "p0")
    for k in pr.CAPABILITIES:
        if k in ("dma_heap", "io_uring_zcrx", "netdev_genl"):
            continue
        assert caps[k] is True, (k, caps.get(k + "_reason"))
    assert caps["dma_heap"] is False and caps["dma_heap_reason"] == "/dev/dma_heap absent"
    assert caps["io_uring_zcrx"] is False and caps["io_uring_zcrx_reason"] == "CONFIG_IO_URING_ZCRX not set"
    assert caps["netdev_genl"] is None and "genl" in caps["netdev_genl_reason"]
    # every key is a bool or None, every reason a string
    for k, v in caps.items():
        assert (isinstance(v, str) and k.endswith("_reason")) or v in (True, False, None), k


def test_capabilities_header_split_off_is_capable():
    caps = pr.capabilities(fake_probe("bnxt"), "p0")
    assert caps["header_split"] is True and caps["multiqueue"] is True


def test_capabilities_veth_and_netdevsim():
    caps = pr.capabilities(fake_probe("veth"), "p0")
    assert caps["nic"] is True and caps["ethtool"] is True
    assert caps["header_split"] is False and caps["header_split_reason"] == "veth has no ring parameters"
    assert caps["ntuple"] is False and caps["ntuple_reason"] == "ntuple-filters off [fixed]"
    assert caps["rss"] is False and caps["rss_reason"] == "no RSS indirection table"
    assert caps["multiqueue"] is True               # 2 RX channels
    caps = pr.capabilities(fake_probe("netdevsim"), "p0")
    assert caps["header_split"] is False and "does not report TCP data split" in caps["header_split_reason"]
    assert caps["multiqueue"] is True


def test_capabilities_old_ethtool_unknown_split():
    caps = pr.capabilities(fake_probe("oldethtool"), "p0")
    assert caps["header_split"] is None and "too old" in caps["header_split_reason"]


def test_capabilities_no_ethtool():
    p = fake_probe("mlx5", ethtool_rc=127)
    n = p["nics"]["p0"]
    assert n["driver"] == "mlx5" and n["ethtool"] is False     # from the sysfs driver link
    caps = pr.capabilities(p, "p0")
    assert caps["nic"] is True
    for k in ("ethtool", "header_split", "ntuple", "rss"):
        assert caps[k] is None or caps[k] is False
        assert caps[k + "_reason"] == "ethtool not installed", k
    assert caps["multiqueue"] is True                          # from /sys/class/net/p0/queues


def test_capabilities_absent_nic_and_unprobed_nic():
    caps = pr.capabilities(fake_probe("absent"), "p0")
    assert caps["nic"] is False and caps["nic_reason"] == "no interface p0"
    assert caps["header_split"] is False
    caps = pr.capabilities(fake_probe("mlx5"), "eth9")
    assert caps["nic"] is None and caps["nic_reason"] == "eth9 was not probed"


def test_capabilities_config_unknown():
    caps = pr.capabilities(fake_probe("mlx5", config=None), "p0")
    assert caps["net_devmem"] is None and caps["net_devmem_reason"] == "kernel config not readable"
    assert caps["io_uring_zcrx"] is None and caps["page_pool_stats"] is None
    assert caps["udmabuf"] is True                    # /dev/udmabuf exists: no config needed
    # with the netdev family listed, devmem RX and page-pool stats are known anyway
    genl = sample("local.genl_netdev.txt")
    caps = pr.capabilities(fake_probe("mlx5", config=None, genl=genl), "p0")
    assert caps["net_devmem"] is True and caps["netdev_genl"] is True
    assert caps["page_pool_stats"] is False


def test_capabilities_genl_overrules_config():
    genl = sample("local.genl_netdev.txt").replace("#6:  ID-0xd", "#6:  ID-0x63")
    caps = pr.capabilities(fake_probe("mlx5", genl=genl), "p0")
    assert caps["net_devmem"] is False and caps["net_devmem_reason"] == "netdev netlink has no bind-rx"
    # DEBUG_CONFIG says PAGE_POOL_STATS=y, the running kernel's family has no stats op
    assert caps["page_pool_stats"] is False and "page-pool-stats-get" in caps["page_pool_stats_reason"]
    # a stale config without NET_DEVMEM, a running kernel with bind-rx
    stale = DEBUG_CONFIG.replace("CONFIG_NET_DEVMEM=y\n", "")
    caps = pr.capabilities(fake_probe("mlx5", config=stale, genl=sample("local.genl_netdev.txt")), "p0")
    assert caps["net_devmem"] is True
    assert pr.capabilities(fake_probe("mlx5", config=stale), "p0")["net_devmem"] is False   # no genl: config
    nofam = "RTNETLINK answers: No such file or directory\nError talking to the kernel"
    p = fake_probe("mlx5")
    p["netdev_genl"] = pp.parse_genl_family(nofam, 255)
    caps = pr.capabilities(p, "p0")
    assert caps["netdev_genl"] is False and caps["net_devmem"] is False


def test_capabilities_udmabuf_module_and_modules():
    p = fake_probe("mlx5", exists={"/dev/udmabuf": False})
    caps = pr.capabilities(p, "p0")
    assert caps["udmabuf"] is False and "modprobe udmabuf" in caps["udmabuf_reason"]
    caps = pr.capabilities(fake_probe("mlx5", uid=1000), "p0")
    assert caps["root"] is False and caps["modules"] is False and caps["modules_reason"] == "not running as root"
    sysctl = "/proc/sys/kernel/modules_disabled:1\n/proc/sys/kernel/io_uring_disabled:2"
    caps = pr.capabilities(fake_probe("mlx5", sysctl=sysctl, config=DEBUG_CONFIG + "CONFIG_IO_URING_ZCRX=y\n"),
                           "p0")
    assert caps["modules"] is False and caps["modules_reason"] == "kernel.modules_disabled = 1"
    assert caps["io_uring_zcrx"] is False and caps["io_uring_zcrx_reason"] == "kernel.io_uring_disabled = 2"
    caps = pr.capabilities(fake_probe("mlx5", config=sample("local.config.txt"),
                                      exists={"/proc/modules": False, "/lib/modules/6.12.0/build/Makefile": False}),
                           "p0")
    assert caps["modules"] is False and caps["modules_reason"] == "CONFIG_MODULES not set"
    assert caps["module_build"] is False and "/lib/modules/6.12.0/build" in caps["module_build_reason"]
    assert caps["io_uring_zcrx"] is True


# -- environment and hygiene ---------------------------------------------------------------

def test_env_and_hygiene_debug_kernel():
    env = pr.env_from_probe(fake_probe("mlx5"))
    assert set(env) == set(pr.ENV_KEYS)
    assert env["debug_heavy"][:2] == ["DEBUG_ATOMIC_SLEEP", "DEBUG_LOCK_ALLOC"]
    assert env["preempt"] == "full" and env["governor"] == "performance" and env["boost"] is False
    w = pr.hygiene_warnings(env)
    assert len(w) == 1 and "527 vs 51 cycles" in w[0] and "LOCKDEP" in w[0]
    json.dumps(env)


def test_hygiene_clean_and_dirty():
    clean = pr.env_from_probe(fake_probe("mlx5", config=sample("local.config.txt")))
    assert clean["preempt"] == "dynamic(none)"
    assert pr.hygiene_warnings(clean) == []
    cpu = ("/sys/devices/system/cpu/smt/active:1\n/sys/devices/system/cpu/cpufreq/boost:1\n"
           "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor:powersave\n"
           "/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor:powersave")
    dirty = pr.env_from_probe(fake_probe("mlx5", config=sample("local.config.txt"), cpu=cpu))
    w = pr.hygiene_warnings(dirty)
    assert any("governor is powersave" in x for x in w)
    assert any("boost is on" in x for x in w)
    assert any("SMT is on" in x for x in w)
    mixed = dict(clean, governor="mixed", governors={"performance": 3, "powersave": 1})
    assert any("differ between CPUs" in x for x in pr.hygiene_warnings(mixed))
    assert "kernel config not readable" in pr.hygiene_warnings(dict(clean, debug_heavy=None))[0]
    assert any("hypervisor" in x for x in pr.hygiene_warnings(dict(clean, hypervisor=True)))
    assert any("not invariant" in x for x in pr.hygiene_warnings(dict(clean, nonstop_tsc=False)))
    assert pr.hygiene_warnings(dict(clean, governor="none")) == []     # no cpufreq (VM): no warning


# -- this machine ----------------------------------------------------------------------------

class CountingTransport(LocalTransport):
    def __init__(self, *a, env_path: str | None = None, **kw):
        super().__init__(*a, **kw)
        self.calls = 0
        self.env_path = env_path

    def _exec(self, line, timeout, input):
        self.calls += 1
        if self.env_path:
            line = f"PATH={self.env_path}; export PATH; {line}"
        return super()._exec(line, timeout, input)


def _uname_release() -> str:
    return os.uname().release


def test_probe_this_machine_one_round_trip():
    t = CountingTransport("local")
    t0 = time.monotonic()
    p = pr.probe_host(t, ["lo", "hwt-no-such0"])
    dt = time.monotonic() - t0
    assert t.calls == 1 and p["round_trips"] == 1
    assert dt < 10
    assert p["kernel_release"] == _uname_release()
    assert p["arch"] == os.uname().machine
    assert p["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert p["cmdline"] == Path("/proc/cmdline").read_text().strip()
    assert p["uid"] == os.geteuid()
    assert p["nics"]["lo"]["present"] is True and p["nics"]["lo"]["rx_queues"] >= 1
    assert p["nics"]["hwt-no-such0"] == {"present": False}
    assert p["udmabuf_dev"] == os.path.exists("/dev/udmabuf")
    # config may be unknown here; when known, the hash matches its flags
    if p["config_hash"] is None:
        assert p["config"]["flags"] is None and p["config_source"] is None
    else:
        assert p["config_source"] and p["config"]["flags"] is not None
    json.dumps(p)
    caps = pr.capabilities(p, "lo")
    assert caps["nic"] is True and caps["root"] is (os.geteuid() == 0)
    env = pr.capture_env(t)
    assert t.calls == 2 and env["kernel_release"] == _uname_release() and env["boot_id"] == p["boot_id"]
    assert isinstance(pr.hygiene_warnings(env), list)
    assert pr.capture_env(t, p) == dict(env) and t.calls == 2      # from the probe: no round trip


def test_probe_with_tools_missing(tmp_path):
    """No ethtool, genl or timeout on the host: unknown values, no error."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "cat", "grep", "sed", "ls", "readlink", "uname", "id", "gzip", "zcat"):
        real = shutil.which(tool)
        if real:
            (bindir / tool).symlink_to(real)
    t = CountingTransport("bare", env_path=str(bindir))
    p = pr.probe_host(t, ["lo"])
    assert p["kernel_release"] == _uname_release()
    assert p["netdev_genl"]["reachable"] is None
    n = p["nics"]["lo"]
    assert n["present"] is True and n["ethtool"] is False
    assert n["channels"] is None and n["rss"]["supported"] is None and n["tcp_data_split"] is None
    caps = pr.capabilities(p, "lo")
    assert caps["ethtool"] is False and caps["ethtool_reason"] == "ethtool not installed"
    assert caps["netdev_genl"] is None


def test_probe_command_timeout_gives_unknown(tmp_path):
    """A hung ethtool -g (RTNL held by a stuck driver) costs one timeout, not the probe."""
    if shutil.which("timeout") is None or shutil.which("ethtool") is None:
        pytest.skip("needs timeout and ethtool")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "ethtool"
    fake.write_text(f'#!/bin/sh\n[ "$1" = -g ] && exec sleep 30\nexec {shutil.which("ethtool")} "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    t = CountingTransport("slow", env_path=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    t0 = time.monotonic()
    p = pr.probe_host(t, ["lo"], cmd_timeout=1)
    assert time.monotonic() - t0 < 8
    n = p["nics"]["lo"]
    assert n["rings"] is None and n["tcp_data_split"] is None and n["incomplete"] == ["ethtool_g"]
    assert n["present"] is True and n["ntuple"] is not None       # the other commands still ran
    caps = pr.capabilities(p, "lo")
    assert caps["header_split"] is None and caps["header_split_reason"] == "ethtool -g timed out or did not run"


def test_probe_unusable_output_is_infra_error():
    from hwtests.errors import InfraError

    class Broken(LocalTransport):
        def _exec(self, line, timeout, input):
            return super()._exec("echo nope; exit 3", timeout, input)

    with pytest.raises(InfraError, match="probe script printed nothing usable"):
        pr.probe_host(Broken("b"), [])


# -- command ------------------------------------------------------------------------------------

INV = """\
hosts:
  me:
    local: true
    nics:
      lo: {ifname: lo, ipv4: 198.51.100.1/24}
      gone: {ifname: hwt-no-such0, ipv4: 198.51.100.5/24}
  dead:
    ssh: {host: 127.0.0.1, port: 1, known_hosts: KH, accept_new_host_key: true}
    nics:
      p0: {ifname: eth0, ipv4: 198.51.100.2/24}
pairs:
  - name: p
    rx: {host: me, nic: lo}
    tx: {host: dead, nic: p0}
"""


@pytest.fixture
def inv_file(tmp_path):
    f = tmp_path / "inv.yaml"
    f.write_text(INV.replace("KH", str(tmp_path / "known_hosts")))
    return f


def test_cli_summary_and_unreachable_host(inv_file):
    from conftest import run_cli
    r = run_cli("probe", "--inventory", str(inv_file))
    assert r.returncode == 4, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hwtests: error: dead: ") and "Traceback" not in r.stderr
    assert r.stdout.startswith(f"me: {_uname_release()} ")
    assert "nic lo (lo):" in r.stdout and "nic gone (hwt-no-such0): absent" in r.stdout
    assert "host capabilities:" in r.stdout


def test_cli_json_one_host(inv_file):
    from conftest import run_cli
    r = run_cli("probe", "--inventory", str(inv_file), "--host", "me", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == ["hosts"] and list(doc["hosts"]) == ["me"]
    me = doc["hosts"]["me"]
    assert me["kernel_release"] == _uname_release() and me["round_trips"] == 1
    assert me["capabilities"]["lo"]["nic"] is True and me["capabilities"]["gone"]["nic"] is False
    assert isinstance(me["hygiene_warnings"], list)


def test_cli_json_with_error_and_unknown_host(inv_file):
    from conftest import run_cli
    r = run_cli("probe", "--inventory", str(inv_file), "--json")
    assert r.returncode == 4
    doc = json.loads(r.stdout)
    assert set(doc["hosts"]) == {"me"} and set(doc["errors"]) == {"dead"}
    r = run_cli("probe", "--inventory", str(inv_file), "--host", "nope")
    assert r.returncode == 2 and "unknown host 'nope'" in r.stderr


# -- over SSH, on the netns lab ----------------------------------------------------------------

def test_probe_netns_lab_over_ssh(netns_lab):
    from hwtests import hostconn, inventory
    inv = inventory.load(netns_lab)
    pair = next(iter(inv.pairs.values()))
    for side in (pair.rx, pair.tx):
        host = inv.hosts[side.host]
        t = hostconn.connect(host, inv.defaults, inv)
        calls = []
        orig = t._exec
        t._exec = lambda line, timeout, input: (calls.append(line), orig(line, timeout, input))[1]
        try:
            t0 = time.monotonic()
            p = pr.probe_host(t, list(host.nics.values()))
            dt = time.monotonic() - t0
        finally:
            t.close()
        assert len(calls) == 1 and dt < 10
        assert p["kernel_release"] == _uname_release()
        n = p["nics"][host.nics[side.nic].ifname]
        assert n["present"] is True and n["driver"] == "veth" and n["rx_queues"] == 2
        caps = pr.capabilities(p, host.nics[side.nic])
        assert caps["nic"] is True and caps["multiqueue"] is True
        assert caps["header_split"] is False and caps["ntuple"] is False and caps["rss"] is False


# -- whole script outputs captured on real systems -----------------------------------------------

def _captured(name: str, ifnames: list[str]) -> dict:
    return pr.build_probe(pp.split_sections(sample(name), "@@hwtests-sample"), ifnames, host="x")


def test_captured_busybox_vm_debian_612():
    """A QEMU TCG guest: Debian 6.12 cloud kernel, busybox userland, no genl."""
    p = _captured("vm-deb612.probe.txt", ["data0", "nosuch0"])
    assert p["kernel_release"] == "6.12.117+deb12-cloud-amd64" and p["root"] is True
    assert p["config_source"] == "/boot/config-6.12.117+deb12-cloud-amd64"
    f = p["config"]["flags"]
    assert f["NET_DEVMEM"] == "y" and f["UDMABUF"] == "y" and f["IO_URING_ZCRX"] is None and f["MODULES"] == "y"
    assert p["udmabuf_dev"] is True and p["modules"]["proc_modules"] is True
    assert p["netdev_genl"]["reachable"] is None                   # busybox timeout: can't execute 'genl'
    assert p["cpu"]["model"].startswith("QEMU TCG") and p["cpu"]["hypervisor"] is True
    assert p["cpu"]["tsc_khz"] is None and p["cpu"]["tsc_source"] == "unknown"
    n = p["nics"]["data0"]
    assert n["driver"] == "virtio_net" and n["rx_queues"] == 1 and n["tcp_data_split"] == "n/a"
    assert p["nics"]["nosuch0"] == {"present": False}
    caps = pr.capabilities(p, "data0")
    assert caps["udmabuf"] is True and caps["net_devmem"] is True and caps["modules"] is True
    assert caps["io_uring_zcrx"] is False and caps["x86_tsc"] is False
    assert caps["header_split"] is False and caps["multiqueue"] is False
    w = pr.hygiene_warnings(pr.env_from_probe(p))
    assert any("not invariant" in x for x in w) and any("hypervisor" in x for x in w)


def test_captured_this_machine():
    """This project machine: 6.18 firecracker guest, /proc/config.gz, genl present, no modules."""
    p = _captured("local.probe.txt", ["eth0", "lo"])
    assert p["config_source"] == "/proc/config.gz"
    assert p["config_hash"] == pp.parse_config(sample("local.config.txt"))["hash"]
    assert p["netdev_genl"]["reachable"] is True and "bind-rx" in p["netdev_genl"]["ops"]
    assert p["cpu"]["tsc_source"] == "bogomips" and p["cpu"]["smt"] is False and p["cpu"]["governor"] == "none"
    assert p["nics"]["eth0"]["driver"] == "virtio_net" and p["nics"]["lo"]["driver"] is None
    caps = pr.capabilities(p, "eth0")
    assert caps["net_devmem"] is True and caps["io_uring_zcrx"] is True
    assert caps["modules"] is False and caps["modules_reason"] == "CONFIG_MODULES not set"
    assert caps["udmabuf"] is False and caps["page_pool_stats"] is False
