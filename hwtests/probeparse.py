"""Pure parsers for what `hwtests probe` reads on a host (no I/O here).

Every parser takes the text a command printed (stdout and stderr merged) and,
where it matters, its exit status. Something a host or driver does not report,
a tool that is missing, an "Operation not supported": all of these give `None`
(printed as "unknown"), never an exception. Parsers accept output of ethtool
5.x-6.x (ioctl and netlink era), kernel configs from /proc/config.gz,
/boot/config-* or a build tree's .config, and x86 or arm64 /proc/cpuinfo.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable

# -- kernel config -------------------------------------------------------------

# Options the suite's capabilities depend on (reported as "y", "m" or None = not set).
CONFIG_FLAGS = (
    "NET_DEVMEM", "UDMABUF", "IO_URING", "IO_URING_ZCRX", "PAGE_POOL", "PAGE_POOL_STATS",
    "DMABUF_HEAPS", "DMABUF_HEAPS_SYSTEM", "NETDEVSIM", "MODULES", "MODULE_UNLOAD", "MODULE_SIG_FORCE",
    "IKCONFIG_PROC", "PREEMPT_DYNAMIC", "PREEMPT_NONE", "PREEMPT_VOLUNTARY", "PREEMPT", "PREEMPT_RT",
    "HZ", "NO_HZ_FULL", "FAIL_FUNCTION", "FUNCTION_ERROR_INJECTION", "DEBUG_INFO_BTF",
)

# Debug options that change hot-path timings a lot (lock debugging made a page_pool
# ptr_ring benchmark 527 cycles instead of 51). A kernel with any of them on is not
# fit for performance numbers.
HEAVY_DEBUG = (
    "LOCKDEP", "PROVE_LOCKING", "DEBUG_LOCK_ALLOC", "LOCK_STAT", "PROVE_RCU", "DEBUG_SPINLOCK",
    "DEBUG_MUTEXES", "DEBUG_RT_MUTEXES", "DEBUG_WW_MUTEX_SLOWPATH", "DEBUG_RWSEMS", "DEBUG_ATOMIC_SLEEP",
    "DEBUG_PREEMPT", "DEBUG_IRQFLAGS", "TRACE_IRQFLAGS", "DEBUG_OBJECTS", "DEBUG_PAGEALLOC_ENABLE_DEFAULT",
    "DEBUG_VM", "DEBUG_NET", "DEBUG_KMEMLEAK", "SLUB_DEBUG_ON", "PAGE_POISONING", "KASAN", "KCSAN",
    "KMSAN", "KCOV", "GCOV_KERNEL", "UBSAN_ALIGNMENT", "UBSAN_SANITIZE_ALL", "PREEMPT_TRACER",
    "IRQSOFF_TRACER", "DEBUG_SG", "DEBUG_NOTIFIERS", "DEBUG_KOBJECT", "DEBUG_PER_CPU_MAPS",
    "DEBUG_VIRTUAL", "PAGE_OWNER", "PAGE_TABLE_CHECK_ENFORCED", "NET_DEV_REFCNT_TRACKER", "NET_NS_REFCNT_TRACKER",
    "KFENCE_STATIC_KEYS", "DEBUG_ENTRY",
)
# On in many production kernels and cheap (checks on rare paths, sampling), or only
# compiled in: recorded so two runs can be told apart, no warning.
LIGHT_DEBUG = ("UBSAN", "UBSAN_BOUNDS", "KFENCE", "DEBUG_LIST", "DEBUG_PAGEALLOC", "DEBUG_KMAP_LOCAL",
               "DEBUG_STACKOVERFLOW", "DEBUG_CREDENTIALS", "DEBUG_PLIST", "SCHED_DEBUG", "DEBUG_NET_SMALL_RTNL")
# CONFIG_DEBUG_* options that do not touch run-time behaviour: never reported.
_HARMLESS_DEBUG = re.compile(
    r"^DEBUG_(INFO.*|KERNEL|FS.*|BUGVERBOSE.*|MISC|MEMORY_INIT|SECTION_MISMATCH|WX|BOOT_PARAMS|RODATA.*|"
    r"STACK_USAGE|FORCE_WEAK_PER_CPU|SET_MODULE_RONX|ALIGN_RODATA|TLBFLUSH|RSEQ|GPIO|SHIRQ|"
    r"TEST_DRIVER_REMOVE|DRIVER|DEVRES|USER|LL.*|UART.*|CORE_ALLOC|ICEDUST.*|NMI_SELFTEST|WQ_FORCE_RR_CPU|"
    r"CGROUP_REF|EFI|TIMEKEEPING|BLOCK_EXT_DEVT|HOTPLUG_CPU0|SEMIHOSTING|PINCTRL|REGMAP.*|FORCE_FUNCTION_ALIGN.*)$"
)

_CONFIG_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


def parse_kconfig(text: str) -> dict[str, str]:
    """`CONFIG_X=val` lines -> {"X": "val"}; "is not set", comments and blanks are dropped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _CONFIG_SET.match(line.strip())
        if m:
            val = m.group(2).strip()
            if val != "n":
                out[m.group(1)] = val
    return out


def config_hash(cfg: dict[str, str]) -> str:
    """sha256 of the normalized config: `CONFIG_X=val` lines of set options, sorted.

    Comments, header lines (compiler, date) and "is not set" lines are ignored, so the
    same configuration read from /proc/config.gz, /boot or a build tree hashes the same.
    """
    norm = "".join(f"CONFIG_{k}={cfg[k]}\n" for k in sorted(cfg))
    return hashlib.sha256(norm.encode()).hexdigest()


def config_flags(cfg: dict[str, str]) -> dict[str, str | None]:
    """The options of interest: "y", "m", a value (HZ) or None when not set."""
    return {k: cfg.get(k) for k in CONFIG_FLAGS}


def debug_options(cfg: dict[str, str]) -> dict[str, list[str]]:
    """Debug options that are on: {"heavy": [...], "light": [...]} (sorted).

    Heavy ones distort timings (see HEAVY_DEBUG); light ones are recorded only. A
    CONFIG_DEBUG_* option neither list knows counts as light unless it is known harmless.
    """
    heavy, light = [], []
    for k, v in cfg.items():
        if v not in ("y", "m"):
            continue
        if k in HEAVY_DEBUG:
            heavy.append(k)
        elif k in LIGHT_DEBUG:
            light.append(k)
        elif k.startswith("DEBUG_") and not _HARMLESS_DEBUG.match(k):
            light.append(k)
    return {"heavy": sorted(heavy), "light": sorted(light)}


def parse_config(text: str | None) -> dict[str, Any]:
    """Config text -> {"hash", "flags", "debug", "options"} (None everywhere when no config)."""
    if not text or not text.strip():
        return {"hash": None, "flags": None, "debug": None, "options": 0}
    cfg = parse_kconfig(text)
    if not cfg:
        return {"hash": None, "flags": None, "debug": None, "options": 0}
    return {"hash": config_hash(cfg), "flags": config_flags(cfg), "debug": debug_options(cfg), "options": len(cfg)}


# -- ethtool -------------------------------------------------------------------

def _kv_lines(text: str) -> Iterable[tuple[str, str]]:
    for line in text.splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            yield k.strip(), v.strip()


def _num(v: str | None) -> int | None:
    if v is None:
        return None
    v = v.strip()
    return int(v) if re.fullmatch(r"-?\d+", v) else None


def failed(text: str, rc: int | None) -> bool:
    """True when a command did not give a usable answer (non-zero or no exit status)."""
    return rc is None or rc != 0


def parse_ethtool_i(text: str, rc: int | None = 0) -> dict[str, str | None] | None:
    """`ethtool -i IF` -> {driver, version, firmware, bus_info}; empty fields are None."""
    if failed(text, rc):
        return None
    kv = dict(_kv_lines(text))
    if "driver" not in kv:
        return None

    def g(key: str) -> str | None:
        v = kv.get(key, "").strip()
        return v if v and v.lower() != "n/a" else None

    return {"driver": g("driver"), "version": g("version"), "firmware": g("firmware-version"),
            "bus_info": g("bus-info")}


def _two_blocks(text: str, first: str, second: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """Split ethtool "Pre-set maximums:" / "Current hardware settings:" output into two dicts."""
    maxima: dict[str, str] = {}
    current: dict[str, str] = {}
    block = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(first):
            block = maxima
            continue
        if s.startswith(second):
            block = current
            continue
        if block is not None and ":" in s:
            k, _, v = s.partition(":")
            block[k.strip()] = v.strip()
    if not maxima and not current:
        return None
    return maxima, current


def parse_ethtool_l(text: str, rc: int | None = 0) -> dict[str, Any] | None:
    """`ethtool -l IF` -> {"max": {rx, tx, other, combined}, "current": {...}}; n/a -> None.

    None as a whole when the driver has no channel ops ("Operation not supported").
    """
    if failed(text, rc):
        return None
    blocks = _two_blocks(text, "Pre-set maximums", "Current hardware settings")
    if blocks is None:
        return None
    out = {}
    for name, b in zip(("max", "current"), blocks):
        out[name] = {k.lower(): _num(b.get(k)) for k in ("RX", "TX", "Other", "Combined")}
    return out


def rx_channels(ch: dict[str, Any] | None, which: str = "max") -> int | None:
    """RX-capable channels: rx + combined (n/a counts as 0); None when unknown."""
    if not ch:
        return None
    b = ch.get(which) or {}
    vals = [b.get("rx"), b.get("combined")]
    if all(v is None for v in vals):
        return None
    return sum(v or 0 for v in vals)


_RING_KEYS = {"RX": "rx", "RX Mini": "rx_mini", "RX Jumbo": "rx_jumbo", "TX": "tx",
              "RX Buf Len": "rx_buf_len", "CQE Size": "cqe_size", "HDS thresh": "hds_thresh",
              "TX push buff len": "tx_push_buf_len"}


def parse_ethtool_g(text: str, rc: int | None = 0) -> dict[str, Any] | None:
    """`ethtool -g IF` -> {"max": {...}, "current": {...}, "tcp_data_split": str|None}.

    `tcp_data_split` is "on", "off", "auto" or "n/a" as ethtool prints it (n/a: the driver
    does not report header split), None when this ethtool does not print the line (older
    than 6.1) or the command failed. The whole result is None on "Operation not supported".
    """
    if failed(text, rc):
        return None
    blocks = _two_blocks(text, "Pre-set maximums", "Current hardware settings")
    if blocks is None:
        return None
    maxima, current = blocks
    split = current.get("TCP data split")
    out: dict[str, Any] = {
        "max": {v: _num(maxima.get(k)) for k, v in _RING_KEYS.items() if k in maxima},
        "current": {v: _num(current.get(k)) for k, v in _RING_KEYS.items() if k in current},
        "tcp_data_split": split.lower() if split else None,
    }
    return out


def parse_tcp_data_split(rings: dict[str, Any] | None) -> str | None:
    """"on" / "off" / "auto" / "n/a" (driver does not do it), None when unknown."""
    if not rings:
        return None
    return rings.get("tcp_data_split")


_FEATURE = re.compile(r"^\s*([a-z0-9][a-z0-9_-]*):\s+(on|off)(?:\s+\[(.*)\])?\s*$")


def parse_ethtool_k(text: str, rc: int | None = 0) -> dict[str, dict[str, bool]] | None:
    """`ethtool -k IF` -> {feature: {"on": bool, "fixed": bool, "requested": bool|None}}.

    "[fixed]" means the driver does not let it change; "[requested on]" means it was
    asked for but is off now (a dependency is missing).
    """
    if failed(text, rc):
        return None
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        m = _FEATURE.match(line)
        if not m:
            continue
        name, state, note = m.group(1), m.group(2), (m.group(3) or "")
        req = None
        if note.startswith("requested "):
            req = note.split()[1] == "on"
        out[name] = {"on": state == "on", "fixed": note == "fixed", "requested": req}
    return out or None


def feature_usable(features: dict | None, name: str) -> bool | None:
    """A feature that is on or can be turned on; None when unknown."""
    if not features or name not in features:
        return None
    f = features[name]
    return bool(f["on"] or not f["fixed"])


def parse_ethtool_x(text: str, rc: int | None = 0) -> dict[str, Any]:
    """`ethtool -x IF` -> {"supported": bool|None, "rings": int|None, "table_size": int|None,
    "hash_function": str|None, "key": bool}.

    supported is True when an indirection table is printed, False when the driver says
    "Operation not supported", None when ethtool itself is missing or failed otherwise.
    """
    out: dict[str, Any] = {"supported": None, "rings": None, "table_size": None, "hash_function": None,
                           "key": False}
    lines = text.splitlines()
    m = re.search(r"indirection table for \S+ with (\d+) RX ring", text)
    if m:
        out["rings"] = int(m.group(1))
    entries = 0
    section = None
    for line in lines:
        s = line.strip()
        if s.startswith("RX flow hash indirection table"):
            section = "table"
            continue
        if s.startswith("RSS hash key"):
            section = "key"
            continue
        if s.startswith("RSS hash function"):
            section = "func"
            continue
        if s.startswith("RSS input transformation"):
            section = "xform"
            continue
        if section == "table" and re.match(r"^\d+:\s", s):
            entries += len(s.split(":", 1)[1].split())
        elif section == "key" and re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2})+", s):
            out["key"] = True
        elif section == "func":
            mm = re.match(r"^(\S+):\s+on$", s)
            if mm:
                out["hash_function"] = mm.group(1)
    if entries:
        out["supported"] = True
        out["table_size"] = entries
    elif re.search(r"Operation not supported", text):
        out["supported"] = False
    elif rc == 0 and out["rings"] is not None:
        out["supported"] = False   # a header but no table
    return out


def parse_ethtool_link(text: str, rc: int | None = 0) -> dict[str, Any]:
    """`ethtool IF` -> {"speed_mbps": int|None, "duplex": str|None, "link": bool|None}.

    `Speed: Unknown!` (virtio, link down) gives None.
    """
    out: dict[str, Any] = {"speed_mbps": None, "duplex": None, "link": None}
    for k, v in _kv_lines(text):
        if k == "Speed":
            m = re.match(r"^(\d+)\s*Mb/s", v)
            out["speed_mbps"] = int(m.group(1)) if m else None
        elif k == "Duplex":
            out["duplex"] = None if v.lower().startswith("unknown") else v
        elif k == "Link detected":
            out["link"] = {"yes": True, "no": False}.get(v.lower())
    return out


def parse_queues(text: str, rc: int | None = 0) -> dict[str, int | None]:
    """`ls /sys/class/net/IF/queues` -> {"rx": n, "tx": n} (None when not listed)."""
    if failed(text, rc):
        return {"rx": None, "tx": None}
    names = text.split()
    rx = sum(1 for n in names if re.fullmatch(r"rx-\d+", n))
    tx = sum(1 for n in names if re.fullmatch(r"tx-\d+", n))
    return {"rx": rx, "tx": tx}


# -- "path:value" listings (grep -H . FILES) -----------------------------------

def parse_grep_h(text: str) -> dict[str, str]:
    """`grep -H . FILES` -> {path: first line}; error lines ("grep: ...") are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("/"):
            continue
        path, sep, val = line.partition(":")
        if sep and path not in out:
            out[path] = val.strip()
    return out


def _basename_map(kv: dict[str, str], prefix: str) -> dict[str, str]:
    return {p[len(prefix):]: v for p, v in kv.items() if p.startswith(prefix)}


def parse_vulnerabilities(text: str) -> dict[str, str] | None:
    """grep -H . /sys/devices/system/cpu/vulnerabilities/* -> {name: status}; None if absent."""
    kv = parse_grep_h(text)
    out = {p.rsplit("/", 1)[1]: v for p, v in kv.items() if "/vulnerabilities/" in p}
    return dict(sorted(out.items())) or None


def mitigations_summary(vulns: dict[str, str] | None) -> dict[str, list[str]] | None:
    """{"vulnerable": [...], "mitigated": [...], "not_affected": [...]} from the sysfs strings."""
    if not vulns:
        return None
    out: dict[str, list[str]] = {"vulnerable": [], "mitigated": [], "not_affected": [], "other": []}
    for name, v in vulns.items():
        low = v.lower()
        if low.startswith("not affected"):
            out["not_affected"].append(name)
        elif low.startswith("vulnerable"):
            out["vulnerable"].append(name)
        elif low.startswith("mitigation"):
            out["mitigated"].append(name)
        else:
            out["other"].append(name)
    return out


def _cpu_index(path: str) -> int | None:
    m = re.search(r"/cpu(\d+)/", path)
    return int(m.group(1)) if m else None


def parse_governors(kv: dict[str, str]) -> dict[str, Any]:
    """scaling_governor per CPU -> {"governor": one name | "mixed" | "none", "governors": {name: count}}.

    "none" when no CPU has cpufreq (VMs, some ARM boards): the frequency is not
    under the kernel's control, which is not the same as "performance".
    """
    govs: dict[int, str] = {}
    for p, v in kv.items():
        if p.endswith("/cpufreq/scaling_governor"):
            i = _cpu_index(p)
            if i is not None and v:
                govs[i] = v
    counts: dict[str, int] = {}
    for v in govs.values():
        counts[v] = counts.get(v, 0) + 1
    if not counts:
        gov = "none"
    elif len(counts) == 1:
        gov = next(iter(counts))
    else:
        gov = "mixed"
    return {"governor": gov, "governors": dict(sorted(counts.items()))}


def parse_boost(kv: dict[str, str]) -> dict[str, Any]:
    """Turbo/boost: {"boost": True/False/None, "boost_source": path basename or None}.

    Sources, first found wins: cpufreq/boost (acpi-cpufreq, amd-pstate), intel_pstate/no_turbo
    (inverted), per-policy cpufreq/policy*/boost (newer amd-pstate).
    """
    base = "/sys/devices/system/cpu/"
    g = kv.get(base + "cpufreq/boost")
    if g in ("0", "1"):
        return {"boost": g == "1", "boost_source": "cpufreq/boost"}
    nt = kv.get(base + "intel_pstate/no_turbo")
    if nt in ("0", "1"):
        return {"boost": nt == "0", "boost_source": "intel_pstate/no_turbo"}
    per = [v for p, v in kv.items() if re.search(r"/cpufreq/policy\d+/boost$", p) and v in ("0", "1")]
    if per:
        return {"boost": any(v == "1" for v in per), "boost_source": "cpufreq/policy*/boost"}
    return {"boost": None, "boost_source": None}


def _cpulist_len(s: str) -> int:
    n = 0
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, _, b = part.partition("-")
            if a.isdigit() and b.isdigit():
                n += int(b) - int(a) + 1
        elif part.isdigit():
            n += 1
    return n


def parse_smt(kv: dict[str, str]) -> dict[str, Any]:
    """SMT from /sys/devices/system/cpu/smt/{active,control}, else thread siblings.

    {"smt": True/False/None, "smt_control": "on"|"off"|"forceoff"|"notsupported"|... or None}
    """
    base = "/sys/devices/system/cpu/smt/"
    active = kv.get(base + "active")
    control = kv.get(base + "control")
    smt: bool | None = None
    if active in ("0", "1"):
        smt = active == "1"
    else:
        sib = [v for p, v in kv.items() if p.endswith("/topology/thread_siblings_list")]
        if sib:
            smt = any(_cpulist_len(v) > 1 for v in sib)
    return {"smt": smt, "smt_control": control or None}


# -- /proc/cpuinfo -------------------------------------------------------------

def parse_cpuinfo(text: str) -> dict[str, Any]:
    """First processor block of /proc/cpuinfo -> model, MHz, flags of interest, bogomips.

    arm64 has no "model name": the implementer/part numbers are reported instead.
    """
    block: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if block:
                break
            continue
        k, sep, v = line.partition(":")
        if sep:
            block.setdefault(k.strip(), v.strip())
    flags = set((block.get("flags") or block.get("Features") or "").split())
    model = block.get("model name")
    if not model and "CPU implementer" in block:
        model = f"arm implementer {block.get('CPU implementer')} part {block.get('CPU part')}"
    mhz = block.get("cpu MHz")
    bogo = block.get("bogomips") or block.get("BogoMIPS")
    return {
        "model": model or None,
        "vendor": block.get("vendor_id"),
        "mhz": float(mhz) if mhz and _is_float(mhz) else None,
        "bogomips": float(bogo) if bogo and _is_float(bogo) else None,
        "tsc": "tsc" in flags,
        "constant_tsc": "constant_tsc" in flags,
        "nonstop_tsc": "nonstop_tsc" in flags,
        "tsc_known_freq": "tsc_known_freq" in flags,
        "hypervisor": "hypervisor" in flags,
        "x86": "tsc" in flags or block.get("vendor_id") is not None,
    }


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def tsc_khz(cpu: dict[str, Any], sysfs_khz: str | None) -> tuple[int | None, str]:
    """The TSC rate in kHz and where it came from, without dmesg.

    1. /sys/devices/system/cpu/cpu0/tsc_freq_khz (present on some kernels);
    2. x86 with an invariant TSC: bogomips / 2. The kernel calibrates the delay loop
       from the TSC (lpj = tsc_khz * 1000 / HZ), so bogomips = 2 * tsc_khz / 1000 to 10 kHz;
    3. the nominal "@ 3.60GHz" of an Intel model name (the TSC runs at nominal);
    otherwise (None, "unknown"). Not x86: no TSC, always unknown.
    """
    v = _num(sysfs_khz) if sysfs_khz else None
    if v:
        return v, "sysfs"
    if not cpu.get("tsc"):
        return None, "unknown"
    if cpu.get("constant_tsc") and cpu.get("bogomips"):
        return int(round(cpu["bogomips"] * 500)), "bogomips"
    m = re.search(r"@\s*([\d.]+)\s*GHz", cpu.get("model") or "")
    if m and cpu.get("constant_tsc"):
        return int(round(float(m.group(1)) * 1e6)), "model-name"
    return None, "unknown"


# -- generic netlink -----------------------------------------------------------

# netdev family commands (include/uapi/linux/netdev.h).
NETDEV_CMDS = {1: "dev-get", 5: "page-pool-get", 9: "page-pool-stats-get", 10: "queue-get", 11: "napi-get",
               12: "qstats-get", 13: "bind-rx", 14: "napi-set", 15: "bind-tx", 16: "queue-create"}


def parse_genl_family(text: str, rc: int | None) -> dict[str, Any]:
    """`genl ctrl get name netdev` -> {"reachable": bool|None, "id", "version", "ops": [names]}.

    reachable True: a generic netlink socket could be opened and the kernel has the
    netdev family (so netdev netlink, and BIND_RX if listed, exist in this kernel).
    False: genl ran and the kernel has no such family. None: genl is missing, timed
    out, or said something we do not understand.
    """
    out: dict[str, Any] = {"reachable": None, "id": None, "version": None, "ops": None}
    if rc == 0:
        m = re.search(r"ID:\s*0x([0-9a-fA-F]+)\s+Version:\s*0x([0-9a-fA-F]+)", text)
        if not m:
            return out
        out["reachable"] = True
        out["id"] = int(m.group(1), 16)
        out["version"] = int(m.group(2), 16)
        ops = []
        in_cmds = False
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("commands supported"):
                in_cmds = True
                continue
            if s.startswith("multicast groups"):
                in_cmds = False
            if in_cmds:
                mm = re.match(r"^#\d+:\s+ID-0x([0-9a-fA-F]+)", s)
                if mm:
                    n = int(mm.group(1), 16)
                    ops.append(NETDEV_CMDS.get(n, str(n)))
        out["ops"] = ops
        return out
    if rc in (127, 126, 124, 137, 143) or rc is None:
        return out
    if "No such file or directory" in text or "Error talking to the kernel" in text:
        out["reachable"] = False
    return out


# -- section framing -----------------------------------------------------------

def split_sections(text: str, marker: str) -> dict[str, tuple[int | None, str]]:
    """Split probe script output into {name: (exit status, body)}.

    The script prints `MARKER begin NAME` and `MARKER end NAME RC` lines around each
    command. A section that began but never ended (the script was cut short) gets
    status None.
    """
    out: dict[str, tuple[int | None, str]] = {}
    cur: str | None = None
    buf: list[str] = []
    b, e = marker + " begin ", marker + " end "
    for line in text.split("\n"):
        if line.startswith(b):
            if cur is not None:
                out[cur] = (None, "\n".join(buf))
            cur, buf = line[len(b):].strip(), []
            continue
        if line.startswith(e) and cur is not None:
            parts = line[len(e):].split()
            rc = int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else None
            body = "\n".join(buf)
            if body.endswith("\n"):
                body = body[:-1]
            out[cur] = (rc, body)
            cur, buf = None, []
            continue
        if cur is not None:
            buf.append(line)
    if cur is not None:
        out[cur] = (None, "\n".join(buf).rstrip("\n"))
    return out
