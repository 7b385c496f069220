"""The software NIC (`fixtures/swnic/`, module `hwt_swnic`) on a lab host, through a Transport only.

    sw = load(t, "data0", queues=4, journal=j, controller_build_dir=headers)
    take_addresses(t, sw, j)         # the lower NIC's global addresses move to sw.ifname
    queues(t, sw.ifname)             # netdev queue-get: [nlparse.Queue(id=0, type="rx", napi_id=..), ..]
    pools(t, sw.ifname)              # netdev page-pool-get of its pools: [nlparse.PagePool(inflight=..), ..]
    set_split(t, sw.ifname, False)   # ethtool rings-set tcp-data-split (the guests' ethtool cannot)
    stats(t, sw.ifname)              # ethtool -S: rx0_niov_frags, rx0_linear_bytes, ...
    unload(t)

The module stacks on the host's data NIC (`lower`): while swnicN is up it receives
every frame that arrives there, splits headers from TCP payload in software and puts
the payload into page_pool buffers of its RX queues (net_iovs of a dma-buf when a
queue is bound with devmem bind-rx). Its figures are functional results of a software
NIC, never NIC performance (docs/swnic.md).

The build reuses hwtests.pagepool's machinery (a SourceTree built on the controller
against the host kernel's headers and uploaded, or built on the host). The netlink
requests go through hwt_nl, deployed with the traffic programs (`traffic.build(t).nl`).
Every change (module loaded, link up, addresses moved) is journaled before it is made; the undo
commands tolerate a module already gone, so a journal replay never fails on them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import nlclient, nlparse, pagepool, traffic
from .errors import InfraError, InputError
from .transport import CommandFailed, LocalTransport, Transport

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "swnic"
MODULE = "hwt_swnic"
MAX_QUEUES = 8

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# kernel log lines that mean something went wrong in the kernel (pure check below)
_PROBLEMS = re.compile(r"WARNING:|BUG:|Call Trace|kernel BUG|general protection|Oops|"
                       r"page_pool_release_retry|stalled pool shutdown|unregister_netdevice: waiting")


@dataclass
class SwNic:
    """A loaded software NIC: its netdev, what it stacks on, and what was loaded."""

    ifname: str
    lower: str
    queues: int
    release: str
    ko: str = ""                                                 # the module file on the host
    artifacts: dict[str, str] = field(default_factory=dict)     # hwt_swnic.ko -> sha256


# -- pure helpers ---------------------------------------------------------------------------

def source() -> pagepool.SourceTree:
    """Our module's sources as a SourceTree."""
    files = {p.name: p.read_bytes() for p in sorted(FIXTURE.iterdir())
             if p.is_file() and (p.name == "Makefile" or p.suffix in (".c", ".h"))}
    return pagepool.SourceTree("hwt", files, [MODULE], origin=str(FIXTURE))


def check_args(lower: str, queues: int) -> None:
    if not isinstance(lower, str) or not _IFNAME.fullmatch(lower):
        raise InputError(f"swnic lower={lower!r}: not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    if isinstance(queues, bool) or not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUES:
        raise InputError(f"swnic queues={queues!r}: must be an integer 1..{MAX_QUEUES}")


def parse_ethtool_stats(text: str) -> dict[str, int]:
    """`ethtool -S` output -> name -> value (pure); lines that are not `name: integer` are skipped."""
    out = {}
    for ln in text.splitlines():
        m = re.fullmatch(r"\s*([\w.-]+):\s*(-?\d+)\s*", ln)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def per_queue_totals(st: dict[str, int], prefix: str = "rx") -> dict[str, int]:
    """Sum `rxN_name` over the queues N -> name -> total (pure)."""
    out: dict[str, int] = {}
    for k, v in st.items():
        m = re.fullmatch(prefix + r"\d+_(\w+)", k)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + v
    return out


def global_addresses(ip_j_addr: str) -> list[str]:
    """`ip -j addr show dev X` -> its global addresses as CIDR strings, IPv4 first (pure)."""
    try:
        links = json.loads(ip_j_addr or "[]")
    except json.JSONDecodeError:
        raise InfraError(f"ip -j addr: not JSON: {ip_j_addr.strip()[:80]!r}") from None
    out4, out6 = [], []
    for link in links if isinstance(links, list) else []:
        for a in link.get("addr_info", []) if isinstance(link, dict) else []:
            if a.get("scope") != "global" or "local" not in a or "prefixlen" not in a:
                continue
            cidr = f"{a['local']}/{int(a['prefixlen'])}"
            (out4 if a.get("family") == "inet" else out6).append(cidr)
    return out4 + out6


def kernel_problems(log: str) -> list[str]:
    """Kernel log lines that report a warning, a bug, a trace or a stalled pool (pure)."""
    return [ln.strip() for ln in log.splitlines() if _PROBLEMS.search(ln)]


# -- on a host ------------------------------------------------------------------------------

def _loaded(t: Transport) -> bool:
    return t.run(["test", "-d", f"/sys/module/{MODULE}"], check=False, timeout=15).ok


def ifname_of(t: Transport) -> str | None:
    """The netdev the loaded module made (None when it is not loaded)."""
    r = t.run(["sh", "-c", f"ls /sys/bus/platform/devices/{MODULE}/net 2>/dev/null"], check=False, timeout=15)
    names = r.stdout.split()
    return names[0] if names else None


def build_modules(t: Transport, facts: dict[str, str], controller_build_dir: str | None) -> dict[str, str]:
    """Module name -> remote .ko path: built on the controller against `controller_build_dir`
    (the host kernel's headers) and uploaded, or built on the host."""
    st = source()
    release = facts.get("release", "")
    if controller_build_dir:
        hdr_rel = pagepool.headers_release(controller_build_dir)
        if hdr_rel and hdr_rel != release:
            raise InputError(f"{t.name}: headers {controller_build_dir} are for {hdr_rel}, the host runs {release}")
        with LocalTransport("controller") as lt:
            built = pagepool.build(lt, st, controller_build_dir)
            return pagepool.upload_prebuilt(t, [built[m] for m in st.modules], release)
    return pagepool.build(t, st, None, facts)


def load(t: Transport, lower: str, *, queues: int = 4, journal=None,
         controller_build_dir: str | None = None) -> SwNic:
    """Build and insert hwt_swnic on `lower`; journaled (undo: rmmod when loaded)."""
    check_args(lower, queues)
    f = pagepool.host_facts(t)
    why = pagepool.load_blocker(f)
    if why:
        raise InfraError(f"{t.name}: cannot load {MODULE}: {why}")
    if not t.run(["test", "-d", f"/sys/class/net/{lower}"], check=False, timeout=15).ok:
        raise InputError(f"{t.name}: swnic lower={lower}: no such interface on the host")
    if _loaded(t):
        raise InfraError(f"{t.name}: {MODULE} is already loaded (another run, or one a journal replay "
                         "should undo first)")
    paths = build_modules(t, f, controller_build_dir)
    ko = paths[MODULE]
    sums = pagepool.module_sha256(t, paths)
    before = pagepool.last_seq(pagepool.read_kmsg(t))
    do = ["insmod", ko, f"lower={lower}", f"queues={int(queues)}"]
    undo = ["sh", "-c", f"[ ! -d /sys/module/{MODULE} ] || rmmod {MODULE}"]
    try:
        if journal is not None:
            journal.change(f"software NIC {MODULE} on {lower}", do, undo, timeout=120)
        else:
            t.run(do, timeout=120)
    except CommandFailed as exc:
        new = pagepool.records_after(pagepool.read_kmsg(t), before)
        kern = pagepool.kernel_msgs(new, MODULE)
        tail = (exc.result.stderr.strip().splitlines() or [f"exit {exc.result.exit_status}"])[-1]
        raise InfraError(f"{t.name}: insmod {MODULE} lower={lower}: {tail.strip()}"
                         + (f" (kernel: {kern})" if kern else "")) from None
    name = ifname_of(t)
    if not name:
        raise InfraError(f"{t.name}: {MODULE} loaded but made no netdev")
    return SwNic(name, lower, queues, f.get("release", ""), ko, sums)


def take_addresses(t: Transport, sw: SwNic, journal) -> list[str]:
    """Bring sw.ifname up and move the lower NIC's global addresses onto it (journaled).

    Frames to those addresses reach the stack through the software NIC either way; the
    addresses must sit on it so that ARP and neighbour discovery answered there resolve.
    """
    q_sw, q_low = sw.ifname, sw.lower
    journal.change(f"link {q_sw} up", ["ip", "link", "set", q_sw, "up"],
                   ["sh", "-c", '[ ! -d "/sys/class/net/$1" ] || ip link set "$1" down', "sh", q_sw])
    addrs = global_addresses(t.run(["ip", "-j", "addr", "show", "dev", q_low], timeout=15).stdout)
    for a in addrs:
        journal.change(f"address {a} off {q_low}", ["ip", "addr", "del", a, "dev", q_low],
                       ["ip", "addr", "replace", a, "dev", q_low] + (["nodad"] if ":" in a else []))
        journal.change(f"address {a} on {q_sw}",
                       ["ip", "addr", "add", a, "dev", q_sw] + (["nodad"] if ":" in a else []),
                       ["sh", "-c", '[ ! -d "/sys/class/net/$1" ] || ip addr del "$2" dev "$1" 2>/dev/null; true',
                        "sh", q_sw, a])
    return addrs


def unload(t: Transport, timeout: float = 120) -> None:
    if not _loaded(t):
        return
    r = t.run(["rmmod", MODULE], check=False, timeout=timeout)
    if not r.ok:
        tail = (r.stderr.strip().splitlines() or [f"exit {r.exit_status}"])[-1]
        raise InfraError(f"{t.name}: rmmod {MODULE}: {tail}")


def refcount(t: Transport) -> int | None:
    """The module's reference count (one per bound queue), None when it is not loaded."""
    r = t.run(["cat", f"/sys/module/{MODULE}/refcnt"], check=False, timeout=15)
    return int(r.stdout.strip()) if r.ok and r.stdout.strip().isdigit() else None


# One bounded cycle a line: load, up, bind one queue and unbind (the receiver's bind-only
# mode), unload. Arguments: ko, lower, queues, hwt_rx, cycles.
CYCLE_SCRIPT = r"""
set -e
i=0
while [ "$i" -lt "$5" ]; do
  i=$((i + 1))
  insmod "$1" lower="$2" queues="$3"
  dev=$(ls /sys/bus/platform/devices/hwt_swnic/net)
  ip link set "$dev" up
  "$4" --mode devmem --ifname "$dev" --queue $((i % $3)) --num-queues 1 --bind-only > /dev/null
  ip link set "$dev" down
  rmmod hwt_swnic
done
echo "cycles=$i"
"""


def cycles(t: Transport, sw: SwNic, rx_binary: str, count: int, journal, per_cycle: float = 20.0) -> int:
    """Unload `sw`, then `count` cycles of load, bind, unbind, unload on the host (journaled:
    the undo removes a module a broken cycle left loaded); the number of cycles done."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        raise InputError(f"swnic cycles={count!r}: must be an integer 1..1000")
    unload(t)
    do = ["sh", "-c", CYCLE_SCRIPT, "sh", sw.ko, sw.lower, str(sw.queues), rx_binary, str(count)]
    undo = ["sh", "-c", f"[ ! -d /sys/module/{MODULE} ] || rmmod {MODULE}"]
    journal.change(f"{count} load/bind/unbind/unload cycles of {MODULE}", do, undo,
                   timeout=30 + per_cycle * count)
    return count


def stats(t: Transport, ifname: str) -> dict[str, int]:
    return parse_ethtool_stats(t.run(["ethtool", "-S", ifname], timeout=30).stdout)


def _nl(t: Transport) -> str:
    """hwt_nl on the host, deployed with the traffic programs (the guests have no compiler)."""
    return traffic.build(t).nl


def queues(t: Transport, ifname: str) -> list[nlparse.Queue]:
    """netdev queue-get of `ifname`: its queues, with the dma-buf binding of a bound RX queue."""
    return nlclient.queues(t, _nl(t), ifname)


def pools(t: Transport, ifname: str | None = None) -> list[nlparse.PagePool]:
    """netdev page-pool-get: pools of `ifname`, or every pool (ifindex None: its netdev is gone)."""
    out = nlclient.run(t, _nl(t), "page-pool-get", *([ifname] if ifname else []))
    try:
        return nlparse.parse_page_pools(out)
    except nlparse.NlParseError as exc:
        raise InfraError(f"{t.name}: {exc}") from None


def set_split(t: Transport, ifname: str, on: bool) -> nlparse.RingsSet:
    """ethtool rings-set tcp-data-split on|off: the ring parameters before and after.

    A refusal raises nlclient.NlError carrying the kernel's errno and extack (a bound
    queue keeps header split on: the caller may expect that).
    """
    out = nlclient.run(t, _nl(t), "rings-set", ifname, "tcp-data-split", "on" if on else "off")
    try:
        return nlparse.parse_rings_set(out)
    except nlparse.NlParseError as exc:
        raise InfraError(f"{t.name}: {exc}") from None
