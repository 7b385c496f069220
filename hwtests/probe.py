"""`hwtests probe`: what a host's kernel, NICs and CPU offer, and the capabilities tests need.

One probe is one command on the host (one round trip): a constant shell script
that prints every fact between marker lines; the pure parsers in `probeparse`
read the sections. Each command in the script runs under `timeout 5` when the
host has `timeout`, so a driver stuck on the RTNL lock cannot hang the probe.
A missing tool or an unsupported operation gives None ("unknown"), never an
error; only a host that cannot be reached, or a script that prints nothing
usable, raises (a `RemoteError` / `InfraError`, exit code 4).

Facts and where they come from:

- kernel: `uname -r -m`, /proc/version, boot id, /proc/cmdline, uid;
- config: /proc/config.gz (the running kernel's own), else /boot/config-RELEASE,
  else /lib/modules/RELEASE/build/.config; `config_source` says which;
- netdev generic netlink family: `genl ctrl get name netdev` (iproute2). This
  opens a generic netlink socket and asks the kernel's controller for the family,
  so "reachable" means: this kernel has netdev netlink and userspace can talk to
  it; the ops list says whether BIND_RX (devmem TCP) and page-pool stats exist in
  the running kernel, whatever the config file says. Without `genl` it is unknown;
- /dev/udmabuf, /dev/dma_heap, /proc/modules, modules_disabled,
  /lib/modules/RELEASE/build/Makefile, io_uring_disabled;
- per NIC: ethtool -i/-l/-g/-k/-x and link settings, /sys/class/net/IF
  (queues, numa node, operstate, mtu, speed, driver link);
- CPU: first /proc/cpuinfo block, online CPUs, SMT, governors, boost, TSC rate,
  /sys/devices/system/cpu/vulnerabilities/*.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from . import probeparse as pp
from .errors import EXIT_INFRA, EXIT_OK, HwtestsError, InfraError, InputError
from .transport import Transport

SCHEMA = 1
CMD_TIMEOUT = 5     # seconds per command inside the script

# $1 = marker, $2 = seconds per command, $3.. = interface names. Constant text:
# names arrive as arguments.
PROBE_SCRIPT = r"""
M=$1; W=$2; shift 2
TO=""
if command -v timeout >/dev/null 2>&1; then
  if timeout -k 1 1 true >/dev/null 2>&1; then TO="timeout -k 1"
  elif timeout -t 1 true >/dev/null 2>&1; then TO="timeout -t"; fi
fi
T() { if [ -n "$TO" ]; then $TO "$W" "$@"; else "$@"; fi; }
S() { n=$1; shift; printf '%s begin %s\n' "$M" "$n"; "$@" 2>&1; r=$?; printf '\n%s end %s %s\n' "$M" "$n" "$r"; }
rd() { while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; done < "$1"; }
euid() { while read -r k a b c; do [ "$k" = "Uid:" ] && echo "$b" && return 0; done < /proc/self/status; id -u; }
lsq() { for q in "$1"/*; do [ -e "$q" ] && echo "${q##*/}"; done; }
ex() { for f in "$@"; do if [ -e "$f" ]; then echo "$f yes"; else echo "$f no"; fi; done; }
cfg() {
  if [ -r /proc/config.gz ]; then
    echo "source: /proc/config.gz"
    { gzip -dc /proc/config.gz 2>/dev/null || zcat /proc/config.gz; } | grep '^CONFIG_' && return 0
  fi
  for f in "/boot/config-$R" "/lib/modules/$R/build/.config"; do
    if [ -r "$f" ]; then echo "source: $f"; grep '^CONFIG_' "$f"; return $?; fi
  done
  echo "source: none"; return 1
}
U=$(uname -r -m); R=${U%% *}
S uname echo "$U"
S version rd /proc/version
S boot_id rd /proc/sys/kernel/random/boot_id
S uid euid
S cmdline rd /proc/cmdline
S config cfg
S exists ex /dev/udmabuf /dev/dma_heap /proc/modules "/lib/modules/$R/build/Makefile" /dev/kmsg
S genl T genl ctrl get name netdev
S cpuinfo sed '/^$/q' /proc/cpuinfo
C=/sys/devices/system/cpu
S sys grep -H . /proc/sys/kernel/modules_disabled /proc/sys/kernel/io_uring_disabled \
  /sys/module/udmabuf/parameters/size_limit_mb $C/online $C/cpu0/tsc_freq_khz \
  $C/smt/active $C/smt/control $C/cpu[0-9]*/topology/thread_siblings_list \
  $C/cpu[0-9]*/cpufreq/scaling_governor $C/cpufreq/boost $C/cpufreq/policy[0-9]*/boost \
  $C/intel_pstate/no_turbo $C/intel_pstate/status $C/amd_pstate/status $C/cpu0/cpufreq/scaling_driver \
  $C/vulnerabilities/*
i=0
for I in "$@"; do
  D="/sys/class/net/$I"
  if [ -e "$D" ]; then
    S nic$i.sys grep -H . "$D/operstate" "$D/mtu" "$D/speed" "$D/ifindex" "$D/device/numa_node"
    S nic$i.queues lsq "$D/queues"
    S nic$i.driver readlink "$D/device/driver"
    S nic$i.ethtool_i T ethtool -i "$I"
    S nic$i.ethtool_l T ethtool -l "$I"
    S nic$i.ethtool_g T ethtool -g "$I"
    S nic$i.ethtool_k T ethtool -k "$I"
    S nic$i.ethtool_x T ethtool -x "$I"
    S nic$i.ethtool_link T ethtool "$I"
  else
    S nic$i.absent true
  fi
  i=$((i+1))
done
true
"""

_TIMED_OUT = (124, 137, 143)   # coreutils timeout, KILL, TERM


def _ifnames(nics: Iterable[Any]) -> list[str]:
    out = []
    for n in nics:
        name = n if isinstance(n, str) else n.ifname
        if name not in out:
            out.append(name)
    return out


def run_probe_script(t: Transport, ifnames: list[str], cmd_timeout: int = CMD_TIMEOUT) -> tuple[str, str, float]:
    """Run the probe script on the host: (output, marker, seconds). One round trip."""
    marker = "@@hwtests-" + secrets.token_hex(6)
    timeout = 30 + (7 * (cmd_timeout + 1)) * (1 + len(ifnames))
    t0 = time.monotonic()
    r = t.run(["sh", "-c", PROBE_SCRIPT, "hwtests-probe", marker, str(int(cmd_timeout)), *ifnames],
              timeout=timeout, check=False)
    dt = time.monotonic() - t0
    if f"{marker} end uname" not in r.stdout:
        tail = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        raise InfraError(f"{t.name}: probe script printed nothing usable (exit {r.exit_status}): {tail[:200]}")
    return r.stdout, marker, dt


def probe_host(t: Transport, nics: Iterable[Any], cmd_timeout: int = CMD_TIMEOUT) -> dict[str, Any]:
    """Probe one host through `t`; `nics` are objects with `.ifname` (or names).

    Returns a JSON-able dict (see `build_probe`). Raises only when the host cannot
    be reached or the script's output is unusable. `cmd_timeout`: seconds each
    command on the host may take (a command cut short gives "unknown").
    """
    names = _ifnames(nics)
    out, marker, dt = run_probe_script(t, names, cmd_timeout)
    probe = build_probe(pp.split_sections(out, marker), names, host=t.name)
    probe["duration_s"] = round(dt, 4)
    probe["round_trips"] = 1
    return probe


# -- assembling the probe dict (pure) ---------------------------------------------

def _sec(sec: dict, name: str) -> tuple[int | None, str]:
    return sec.get(name, (None, ""))


def _ok(sec: dict, name: str) -> str | None:
    rc, body = _sec(sec, name)
    return body if rc == 0 else None


def _exists(body: str | None) -> dict[str, bool]:
    out = {}
    for line in (body or "").splitlines():
        path, _, yn = line.rpartition(" ")
        if path and yn in ("yes", "no"):
            out[path] = yn == "yes"
    return out


def build_probe(sec: dict[str, tuple[int | None, str]], ifnames: list[str], host: str | None = None) -> dict[str, Any]:
    """Sections of the probe script's output -> the probe dict (pure; see module doc).

    Top-level keys: schema, host, kernel_release, arch, proc_version, boot_id, uid, root,
    cmdline, config_source, config_hash, config {flags, debug, options}, udmabuf_dev,
    udmabuf_size_limit_mb, dma_heap, kmsg, modules {proc_modules, modules_disabled, build_dir},
    io_uring_disabled, netdev_genl {reachable, id, version, ops}, cpu {...}, nics {ifname: {...}}.
    Unknown values are None.
    """
    uname = (_ok(sec, "uname") or "").split()
    release = uname[0] if uname else None
    arch = uname[1] if len(uname) > 1 else None
    version = (_ok(sec, "version") or "").strip() or None
    boot_id = (_ok(sec, "boot_id") or "").strip() or None
    uid_txt = (_ok(sec, "uid") or "").strip()
    uid = int(uid_txt) if uid_txt.isdigit() else None
    cmdline = (_ok(sec, "cmdline") or "").strip() or None

    cfg_rc, cfg_body = _sec(sec, "config")
    src = None
    first = cfg_body.splitlines()[0] if cfg_body else ""
    if first.startswith("source: "):
        src = first[len("source: "):].strip()
        if src == "none":
            src = None
    config = pp.parse_config(cfg_body if cfg_rc == 0 else None)
    if config["hash"] is None:
        src = None

    ex = _exists(_ok(sec, "exists"))

    def exists_any(suffix: str) -> bool | None:
        for p, v in ex.items():
            if p == suffix or p.endswith(suffix):
                return v
        return None

    kv = pp.parse_grep_h(_sec(sec, "sys")[1])
    online = kv.get("/sys/devices/system/cpu/online")
    proc_modules = exists_any("/proc/modules")

    genl_rc, genl_body = _sec(sec, "genl")
    genl = pp.parse_genl_family(genl_body, genl_rc)

    cpu = pp.parse_cpuinfo(_ok(sec, "cpuinfo") or "")
    ckv = kv
    tsc, tsc_src = pp.tsc_khz(cpu, kv.get("/sys/devices/system/cpu/cpu0/tsc_freq_khz"))
    vulns = pp.parse_vulnerabilities(_sec(sec, "sys")[1])
    cpu_out = {
        "model": cpu["model"], "vendor": cpu["vendor"],
        "count": pp._cpulist_len(online) if online else None, "online": online,
        "mhz": cpu["mhz"], "tsc_khz": tsc, "tsc_source": tsc_src,
        "constant_tsc": cpu["constant_tsc"] if cpu["x86"] else None,
        "nonstop_tsc": cpu["nonstop_tsc"] if cpu["x86"] else None,
        "hypervisor": cpu["hypervisor"] if cpu["x86"] else None,
        **pp.parse_governors(ckv),
        "scaling_driver": ckv.get("/sys/devices/system/cpu/cpu0/cpufreq/scaling_driver"),
        "pstate": (ckv.get("/sys/devices/system/cpu/intel_pstate/status")
                   or ckv.get("/sys/devices/system/cpu/amd_pstate/status")),
        **pp.parse_boost(ckv),
        **pp.parse_smt(ckv),
        "vulnerabilities": vulns,
        "mitigations": pp.mitigations_summary(vulns),
    }

    nics = {name: build_nic(sec, i) for i, name in enumerate(ifnames)}
    md = pp._num(kv.get("/proc/sys/kernel/modules_disabled"))
    return {
        "schema": SCHEMA,
        "host": host,
        "kernel_release": release,
        "arch": arch,
        "proc_version": version,
        "boot_id": boot_id,
        "uid": uid,
        "root": None if uid is None else uid == 0,
        "cmdline": cmdline,
        "config_source": src,
        "config_hash": config["hash"],
        "config": {"flags": config["flags"], "debug": config["debug"], "options": config["options"]},
        "udmabuf_dev": exists_any("/dev/udmabuf"),
        "udmabuf_size_limit_mb": pp._num(kv.get("/sys/module/udmabuf/parameters/size_limit_mb")),
        "dma_heap": exists_any("/dev/dma_heap"),
        "kmsg": exists_any("/dev/kmsg"),
        "modules": {
            "proc_modules": proc_modules,
            # the sysctl exists only with CONFIG_MODULES; absent + /proc/modules absent = no modules
            "modules_disabled": md,
            "build_dir": exists_any("/build/Makefile"),
        },
        "io_uring_disabled": pp._num(kv.get("/proc/sys/kernel/io_uring_disabled")),
        "netdev_genl": genl,
        "cpu": cpu_out,
        "nics": nics,
    }


def build_nic(sec: dict, i: int) -> dict[str, Any]:
    """The facts of NIC number `i` of the probe (see build_probe)."""
    p = f"nic{i}."
    if p + "absent" in sec:
        return {"present": False}
    if p + "sys" not in sec:       # the script never got there
        return {"present": None}
    kv = pp.parse_grep_h(_sec(sec, p + "sys")[1])

    def sysv(name: str) -> str | None:
        for path, v in kv.items():
            if path.endswith("/" + name):
                return v
        return None

    ei_rc, ei = _sec(sec, p + "ethtool_i")
    ethtool_missing = ei_rc == 127 or ("not found" in ei and "ethtool" in ei and ei_rc != 0)
    info = pp.parse_ethtool_i(ei, ei_rc) or {}
    driver = info.get("driver")
    drv_link = _ok(sec, p + "driver")
    if not driver and drv_link:
        driver = drv_link.strip().rsplit("/", 1)[-1] or None
    ch = pp.parse_ethtool_l(*reversed(_sec(sec, p + "ethtool_l")))
    rings = pp.parse_ethtool_g(*reversed(_sec(sec, p + "ethtool_g")))
    k_rc, k_body = _sec(sec, p + "ethtool_k")
    feats = pp.parse_ethtool_k(k_body, k_rc)
    x_rc, x_body = _sec(sec, p + "ethtool_x")
    rss = pp.parse_ethtool_x(x_body, x_rc) if not ethtool_missing and x_rc not in _TIMED_OUT \
        else {"supported": None, "rings": None, "table_size": None, "hash_function": None, "key": False}
    l_rc, l_body = _sec(sec, p + "ethtool_link")
    link = pp.parse_ethtool_link(l_body, l_rc)
    speed = link["speed_mbps"]
    if speed is None:
        s = pp._num(sysv("speed"))
        speed = s if s and s > 0 else None
    q = pp.parse_queues(*reversed(_sec(sec, p + "queues")))
    numa = pp._num(sysv("numa_node"))
    ntuple = feats.get("ntuple-filters") if feats else None
    timed_out = [w for w in ("ethtool_i", "ethtool_l", "ethtool_g", "ethtool_k", "ethtool_x", "ethtool_link")
                 if _sec(sec, p + w)[0] in _TIMED_OUT + (None,)]
    return {
        "present": True,
        "incomplete": timed_out,
        "ethtool": not ethtool_missing,
        "driver": driver,
        "driver_version": info.get("version"),
        "firmware": info.get("firmware"),
        "bus_info": info.get("bus_info"),
        "speed_mbps": speed,
        "duplex": link["duplex"],
        "link": link["link"],
        "operstate": sysv("operstate"),
        "mtu": pp._num(sysv("mtu")),
        "ifindex": pp._num(sysv("ifindex")),
        "numa_node": numa,
        "rx_queues": q["rx"],
        "tx_queues": q["tx"],
        "channels": ch,
        "rx_channels_max": pp.rx_channels(ch, "max"),
        "rx_channels": pp.rx_channels(ch, "current"),
        "rings": rings,
        "tcp_data_split": pp.parse_tcp_data_split(rings),
        "ntuple": ntuple,
        "rss": rss,
        "features": feats,
    }


# -- capabilities ------------------------------------------------------------------

HOST_CAPABILITIES = ("root", "modules", "module_build", "udmabuf", "dma_heap", "netdev_genl", "net_devmem",
                     "io_uring_zcrx", "page_pool_stats", "x86_tsc")
NIC_CAPABILITIES = ("nic", "ethtool", "header_split", "ntuple", "rss", "multiqueue")
CAPABILITIES = HOST_CAPABILITIES + NIC_CAPABILITIES


def capabilities(probe: dict[str, Any], nic: Any) -> dict[str, bool | str | None]:
    """What tests may rely on, for one host and one of its NICs (`nic.ifname` or a name).

    Shape: for every name in CAPABILITIES, `caps[name]` is True (usable), False (absent)
    or None (could not be told); for every name that is not True, `caps[name + "_reason"]`
    is a short string saying why ("CONFIG_UDMABUF not set", "ethtool not installed").
    `@pytest.mark.requires(name, ...)` skips unless the value is True, naming the reason.

    - root: the probe ran as uid 0;
    - modules: CONFIG_MODULES, /proc/modules, modules_disabled = 0, root;
    - module_build: /lib/modules/RELEASE/build has a Makefile (headers to build against);
    - udmabuf: /dev/udmabuf exists (a dma-buf source for devmem and zcrx);
    - dma_heap: /dev/dma_heap exists;
    - netdev_genl: `genl` found the netdev generic netlink family;
    - net_devmem: bind-rx in the netdev family's ops when genl could list them, else CONFIG_NET_DEVMEM;
    - io_uring_zcrx: CONFIG_IO_URING + CONFIG_IO_URING_ZCRX, io_uring_disabled = 0;
    - page_pool_stats: page-pool-stats-get in the family's ops, else CONFIG_PAGE_POOL_STATS;
    - x86_tsc: x86 with constant_tsc and nonstop_tsc (page_pool "cycles(tsc)" are comparable);
    - nic: the interface exists; ethtool: ethtool installed and answering;
    - header_split: ethtool -g reports "TCP data split" as on/off/auto (the driver knows it;
      "off" is True: nicsetup turns it on), False on "n/a" or no ring parameters;
    - ntuple: feature ntuple-filters on or changeable (not "off [fixed]");
    - rss: an RSS indirection table is reported;
    - multiqueue: at least 2 RX-capable channels (ethtool -l max), else 2 rx queues in sysfs.
    """
    caps: dict[str, Any] = {}

    def put(name: str, val: bool | None, reason: str = "") -> None:
        caps[name] = val
        if val is not True:
            caps[name + "_reason"] = reason or ("unknown" if val is None else "not available")

    flags = (probe.get("config") or {}).get("flags")

    def flag(name: str) -> str | None:
        return flags.get(name) if flags else None

    def cfg_missing(*names: str) -> tuple[bool | None, str]:
        if flags is None:
            return None, "kernel config not readable"
        off = [n for n in names if flag(n) not in ("y", "m")]
        if off:
            return False, ", ".join(f"CONFIG_{n} not set" for n in off)
        return True, ""

    root = probe.get("root")
    put("root", root, "not running as root" if root is False else "uid unknown")

    # modules
    mods = probe.get("modules") or {}
    if flag("MODULES") is None and flags is not None:
        put("modules", False, "CONFIG_MODULES not set")
    elif mods.get("proc_modules") is False:
        put("modules", False, "/proc/modules absent (no module support)")
    elif mods.get("modules_disabled"):
        put("modules", False, "kernel.modules_disabled = 1")
    elif root is False:
        put("modules", False, "not running as root")
    elif mods.get("proc_modules") and root:
        put("modules", True)
    else:
        put("modules", None, "module support unknown")
    bd = mods.get("build_dir")
    put("module_build", bd, f"/lib/modules/{probe.get('kernel_release')}/build not present" if bd is False
        else "unknown")

    # dma-buf sources
    ud = probe.get("udmabuf_dev")
    if ud:
        put("udmabuf", True)
    elif ud is False:
        why = "/dev/udmabuf absent"
        if flag("UDMABUF") == "m":
            why += "; CONFIG_UDMABUF=m: modprobe udmabuf"
        elif flags is not None and flag("UDMABUF") is None:
            why += "; CONFIG_UDMABUF not set"
        put("udmabuf", False, why)
    else:
        put("udmabuf", None, "unknown")
    dh = probe.get("dma_heap")
    put("dma_heap", dh, "/dev/dma_heap absent" if dh is False else "unknown")

    # netlink / kernel features
    genl = probe.get("netdev_genl") or {}
    reach = genl.get("reachable")
    put("netdev_genl", reach, "kernel has no netdev netlink family" if reach is False
        else "genl (iproute2) not available to check")
    ops = genl.get("ops") if reach else None
    # The running kernel's netdev ops outrank a config file (which may be stale).
    if ops is not None:
        put("net_devmem", "bind-rx" in ops, "netdev netlink has no bind-rx")
    elif reach is False:
        put("net_devmem", False, "kernel has no netdev netlink family")
    else:
        put("net_devmem", *cfg_missing("NET_DEVMEM"))
    ok, why = cfg_missing("IO_URING", "IO_URING_ZCRX")
    dis = probe.get("io_uring_disabled")
    if ok and dis:
        put("io_uring_zcrx", False, f"kernel.io_uring_disabled = {dis}")
    else:
        put("io_uring_zcrx", ok, why)
    if ops is not None:
        put("page_pool_stats", "page-pool-stats-get" in ops, "netdev netlink has no page-pool-stats-get")
    else:
        put("page_pool_stats", *cfg_missing("PAGE_POOL_STATS"))

    cpu = probe.get("cpu") or {}
    ct, ns = cpu.get("constant_tsc"), cpu.get("nonstop_tsc")
    if ct is None:
        put("x86_tsc", False if probe.get("arch") not in (None, "x86_64", "i686", "i386") else None,
            f"no TSC on {probe.get('arch')}" if probe.get("arch") else "unknown")
    else:
        missing = [n for n, v in (("constant_tsc", ct), ("nonstop_tsc", ns)) if not v]
        put("x86_tsc", not missing, "CPU lacks " + ", ".join(missing))

    # the NIC
    ifname = nic if isinstance(nic, str) else nic.ifname
    n = (probe.get("nics") or {}).get(ifname)
    if n is None:
        for name in NIC_CAPABILITIES:
            put(name, None, f"{ifname} was not probed")
        return caps
    if n.get("present") is not True:
        reason = f"no interface {ifname}" if n.get("present") is False else f"{ifname}: probe incomplete"
        for name in NIC_CAPABILITIES:
            put(name, False if n.get("present") is False else None, reason)
        return caps
    put("nic", True)
    has_ethtool = n.get("ethtool")
    put("ethtool", has_ethtool, "ethtool not installed")
    no_tool = "ethtool not installed"
    split = n.get("tcp_data_split")
    cut = n.get("incomplete") or []

    def cut_reason(cmd: str) -> str | None:
        return f"ethtool {cmd} timed out or did not run" if f"ethtool_{cmd.lstrip('-')}" in cut else None

    if split in ("on", "off", "auto"):
        put("header_split", True)
    elif split == "n/a":
        put("header_split", False, f"{n.get('driver') or ifname} does not report TCP data split")
    elif not has_ethtool:
        put("header_split", None, no_tool)
    elif cut_reason("-g"):
        put("header_split", None, cut_reason("-g"))
    elif n.get("rings") is None:
        put("header_split", False, f"{n.get('driver') or ifname} has no ring parameters")
    else:
        put("header_split", None, "ethtool too old to show TCP data split (needs 6.1+)")
    nt = n.get("ntuple")
    if nt is None:
        put("ntuple", None if not has_ethtool or n.get("features") is None else False,
            no_tool if not has_ethtool else (cut_reason("-k") or "no ntuple-filters feature"))
    else:
        put("ntuple", bool(nt["on"] or not nt["fixed"]), "ntuple-filters off [fixed]")
    rss = (n.get("rss") or {}).get("supported")
    put("rss", rss, no_tool if not has_ethtool else
        ("no RSS indirection table" if rss is False else (cut_reason("-x") or "unknown")))
    mx = n.get("rx_channels_max")
    if mx is None:
        mx = n.get("rx_queues")
    put("multiqueue", None if mx is None else mx >= 2,
        "unknown" if mx is None else f"only {mx} RX queue(s)")
    return caps


# -- environment capture and hygiene ----------------------------------------------------

ENV_KEYS = ("kernel_release", "boot_id", "arch", "cmdline", "config_hash", "cpu_model", "cpu_count",
            "tsc_khz", "tsc_source", "constant_tsc", "nonstop_tsc", "hypervisor", "governor", "governors",
            "boost", "smt", "smt_control", "vulnerabilities", "debug_heavy", "debug_light", "preempt")


def env_from_probe(probe: dict[str, Any]) -> dict[str, Any]:
    """The hygiene subset of a probe, stored with every run (pure)."""
    cpu = probe.get("cpu") or {}
    cfg = probe.get("config") or {}
    debug = cfg.get("debug")
    flags = cfg.get("flags")
    preempt = None
    if flags:
        for name in ("PREEMPT_RT", "PREEMPT", "PREEMPT_VOLUNTARY", "PREEMPT_NONE"):
            if flags.get(name) == "y":
                preempt = name.lower().replace("preempt_", "") if name != "PREEMPT" else "full"
                break
        if flags.get("PREEMPT_DYNAMIC") == "y":
            preempt = f"dynamic({preempt})" if preempt else "dynamic"
    return {
        "kernel_release": probe.get("kernel_release"),
        "boot_id": probe.get("boot_id"),
        "arch": probe.get("arch"),
        "cmdline": probe.get("cmdline"),
        "config_hash": probe.get("config_hash"),
        "cpu_model": cpu.get("model"),
        "cpu_count": cpu.get("count"),
        "tsc_khz": cpu.get("tsc_khz"),
        "tsc_source": cpu.get("tsc_source"),
        "constant_tsc": cpu.get("constant_tsc"),
        "nonstop_tsc": cpu.get("nonstop_tsc"),
        "hypervisor": cpu.get("hypervisor"),
        "governor": cpu.get("governor", "none"),
        "governors": cpu.get("governors") or {},
        "boost": cpu.get("boost"),
        "smt": cpu.get("smt"),
        "smt_control": cpu.get("smt_control"),
        "vulnerabilities": cpu.get("vulnerabilities"),
        "debug_heavy": debug.get("heavy") if debug else None,
        "debug_light": debug.get("light") if debug else None,
        "preempt": preempt,
    }


def capture_env(t: Transport, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hygiene facts of the host behind `t`: one round trip, or none when a fresh
    `probe` of the same host (same session, same boot) is passed in."""
    return env_from_probe(probe if probe is not None else probe_host(t, []))


def hygiene_warnings(env: dict[str, Any]) -> list[str]:
    """Why numbers from this host may not be comparable or representative (one line each)."""
    w: list[str] = []
    heavy = env.get("debug_heavy")
    if heavy:
        shown = ", ".join(heavy[:6]) + (f" (+{len(heavy) - 6} more)" if len(heavy) > 6 else "")
        w.append(f"kernel debug options on ({shown}): lock debugging changes results by 10x: 527 vs 51 cycles")
    elif heavy is None:
        w.append("kernel config not readable: debug options unknown")
    gov = env.get("governor")
    if gov == "mixed":
        govs = ", ".join(f"{k} x{v}" for k, v in (env.get("governors") or {}).items())
        w.append(f"CPU frequency governors differ between CPUs ({govs}): set all to performance")
    elif gov not in (None, "none", "performance"):
        w.append(f"CPU frequency governor is {gov}, not performance: frequency scaling adds noise")
    if env.get("boost") is True:
        w.append("turbo/boost is on: clock depends on temperature and load of other cores")
    if env.get("smt") is True:
        w.append("SMT is on: a sibling thread shares the core with the benchmark")
    if env.get("arch") in ("x86_64", "i686", "i386") and (env.get("constant_tsc") is False
                                                         or env.get("nonstop_tsc") is False):
        w.append("TSC is not invariant (constant_tsc/nonstop_tsc missing): cycles(tsc) are not comparable")
    if env.get("hypervisor"):
        w.append("running under a hypervisor: cycle counts differ from bare metal")
    return w


# -- command ------------------------------------------------------------------------------

def add_command(sub) -> None:
    p = sub.add_parser("probe", help="show what the inventory's hosts offer (kernel, config, NICs, CPU)",
                       description="Probe every host of the inventory (or those named with --host): kernel "
                       "release and config flags, NIC driver/firmware/channels/header split/ntuple/RSS, CPU "
                       "governor/boost/SMT/TSC/mitigations, and the capabilities test markers check. "
                       "One round trip per host. Exit 4 when a host cannot be reached (others are still probed).")
    p.add_argument("--inventory", required=True, help="inventory YAML file")
    p.add_argument("--host", action="append", metavar="NAME", help="probe only this host (repeatable)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object {"hosts": {name: probe}} (plus "errors": {name: message} if any)')
    p.set_defaults(func=run)


def _probe_one(host, inv) -> dict[str, Any]:
    from .hostconn import connect
    t = connect(host, inv.defaults, inv)
    try:
        probe = probe_host(t, list(host.nics.values()))
    finally:
        try:
            t.close()
        except HwtestsError:
            pass
    probe["capabilities"] = {nname: capabilities(probe, nic) for nname, nic in host.nics.items()}
    probe["hygiene_warnings"] = hygiene_warnings(env_from_probe(probe))
    return probe


def run(args: argparse.Namespace) -> int:
    from . import inventory
    inv = inventory.load(args.inventory)
    names = list(inv.hosts)
    if args.host:
        unknown = [h for h in args.host if h not in inv.hosts]
        if unknown:
            raise InputError(f"--host: unknown host {', '.join(repr(h) for h in unknown)} "
                             f"(inventory has: {', '.join(names)})")
        names = [h for h in names if h in args.host]
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}

    def work(name: str):
        try:
            return name, _probe_one(inv.hosts[name], inv), None
        except HwtestsError as exc:
            return name, None, str(exc)

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as ex:
        for name, res, err in ex.map(work, names):
            if err is not None:
                errors[name] = err
            else:
                results[name] = res
    for name in names:
        if name in errors:
            msg = errors[name]
            print(f"hwtests: error: {msg if msg.startswith(name + ':') else name + ': ' + msg}", file=sys.stderr)
    if args.json:
        doc: dict[str, Any] = {"hosts": results}
        if errors:
            doc["errors"] = errors
        print(json.dumps(doc, indent=2, sort_keys=False))
    else:
        for name in names:
            if name in results:
                print(format_summary(name, results[name], inv.hosts[name]))
    return EXIT_INFRA if errors else EXIT_OK


def _u(v: Any, unit: str = "") -> str:
    if v is None:
        return "unknown"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return f"{v}{unit}"


def format_summary(name: str, p: dict[str, Any], host=None) -> str:
    """A readable multi-line summary of one host's probe."""
    lines = []
    boot = (p.get("boot_id") or "")[:8] or "unknown"
    lines.append(f"{name}: {_u(p.get('kernel_release'))} {p.get('arch') or ''}  boot {boot}  "
                 f"(probe {1000 * (p.get('duration_s') or 0):.0f} ms, {p.get('round_trips', 1)} round trip)")
    flags = (p.get("config") or {}).get("flags")
    if flags:
        shown = " ".join(f"{k}={flags.get(k) or '-'}" for k in
                         ("NET_DEVMEM", "IO_URING_ZCRX", "UDMABUF", "PAGE_POOL_STATS", "MODULES", "NETDEVSIM"))
        lines.append(f"  config: {p.get('config_source')} sha256 {p['config_hash'][:12]}  {shown}")
        dbg = (p.get("config") or {}).get("debug") or {}
        if dbg.get("heavy") or dbg.get("light"):
            lines.append(f"  debug options: heavy [{', '.join(dbg.get('heavy') or [])}] "
                         f"light [{', '.join(dbg.get('light') or [])}]")
    else:
        lines.append("  config: unknown (no /proc/config.gz, /boot/config-*, or build/.config)")
    c = p.get("cpu") or {}
    tsc = f"{c.get('tsc_khz')} kHz ({c.get('tsc_source')})" if c.get("tsc_khz") else "unknown"
    lines.append(f"  cpu: {_u(c.get('model'))} x{_u(c.get('count'))}, TSC {tsc}, governor {c.get('governor')}, "
                 f"boost {_u(c.get('boost'))}, SMT {_u(c.get('smt'))}"
                 + (", hypervisor" if c.get("hypervisor") else ""))
    m = c.get("mitigations") or {}
    if m:
        lines.append(f"  vulnerabilities: {len(m.get('mitigated', []))} mitigated, "
                     f"{len(m.get('vulnerable', []))} vulnerable"
                     + (f" ({', '.join(m['vulnerable'])})" if m.get("vulnerable") else "")
                     + f", {len(m.get('not_affected', []))} not affected")
    g = p.get("netdev_genl") or {}
    ops = g.get("ops")
    lines.append(f"  netdev netlink: {_u(g.get('reachable'))}"
                 + (f" (ops: {', '.join(ops)})" if ops else "")
                 + f"  /dev/udmabuf: {_u(p.get('udmabuf_dev'))}  /proc/modules: "
                 f"{_u((p.get('modules') or {}).get('proc_modules'))}  root: {_u(p.get('root'))}")
    lines.append(f"  cmdline: {_u(p.get('cmdline'))}")
    nic_names = {n.ifname: k for k, n in host.nics.items()} if host is not None else {}
    all_caps = p.get("capabilities") or {}
    if all_caps:
        lines += _caps_lines(next(iter(all_caps.values())), HOST_CAPABILITIES, "  host capabilities")
    for ifname, n in (p.get("nics") or {}).items():
        label = f"{nic_names[ifname]} ({ifname})" if ifname in nic_names else ifname
        if not n.get("present"):
            lines.append(f"  nic {label}: {'absent' if n.get('present') is False else 'unknown'}")
        else:
            ch = f"{_u(n.get('rx_channels'))}/{_u(n.get('rx_channels_max'))}"
            rss = n.get("rss") or {}
            lines.append(
                f"  nic {label}: {_u(n.get('driver'))} fw {_u(n.get('firmware'))}, "
                f"speed {_u(n.get('speed_mbps'), ' Mb/s')}, rx channels {ch}, "
                f"tcp-data-split {_u(n.get('tcp_data_split'))}, "
                f"ntuple {_u(None if n.get('ntuple') is None else n['ntuple']['on'])}, "
                f"RSS {_u(rss.get('table_size'), ' entries') if rss.get('supported') else _u(rss.get('supported'))}, "
                f"numa {_u(n.get('numa_node'))}, queues rx {_u(n.get('rx_queues'))} tx {_u(n.get('tx_queues'))}")
        caps = all_caps.get(nic_names.get(ifname, ifname))
        if caps and caps.get("nic") is not True:
            lines.append(f"    capabilities: none ({caps.get('nic_reason')})")
        elif caps:
            lines += _caps_lines(caps, NIC_CAPABILITIES, "    capabilities")
    for w in p.get("hygiene_warnings") or []:
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)


def _caps_lines(caps: dict, names: tuple[str, ...], head: str) -> list[str]:
    yes = [k for k in names if caps.get(k) is True]
    no = [f"{k} ({caps.get(k + '_reason')})" for k in names if caps.get(k) is not True]
    out = [f"{head}: {' '.join(yes) or 'none'}"]
    if no:
        out.append(f"{' ' * (len(head) - len(head.lstrip()))}  missing: {'; '.join(no)}")
    return out
