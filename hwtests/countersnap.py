"""Counter snapshots of a host over a run, cut to the throughput's steady window.

Like `cpustat.CpuSampler`: a bounded loop on the host takes a snapshot every interval
(default 1 s) while traffic runs; afterwards the first snapshot at/after the window's
start and the last at/before its end are read back, so the counters cover exactly the
seconds the throughput was measured over (warm-up and cool-down dropped). Each snapshot
is one small shell script (every /proc file, `ethtool -S` of the data NIC and, where the
traffic programs are deployed, the NIC's per-queue counters through `hwt_nl qstats`) written
to a file in the transport's private temp dir; the loop prints only `T <epoch> <index>`
after a snapshot is whole, so a snapshot torn by the stop is never used and only two
snapshots cross the wire.

The text of a snapshot is parsed by `parse_snapshot` (pure) into `HostSnapshot`; the
deltas of two snapshots become `CounterRow`s (`host_rows`, pure), each a value or
unavailable with the reason.

Under the netns lab, /proc/net/netstat and snmp are the namespace's own, while
softnet_stat and /proc/interrupts are the whole machine's (shared with everything
else running on it).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from . import counters as C
from . import nlparse
from .cpustat import clock_offset
from .errors import HwtestsError

# One snapshot of every counter source; $1 is the interface, $2 hwt_nl (or ""). Sections
# `@@ name`, each closed by `@@ rc <exit status>` of the command that printed it.
# Hook for page_pool stats (netdev page-pool-stats-get): once hwt_nl answers them, add a
# section `"$NL" <its command> "$IF"` here, its pure parser beside nlparse.parse_qstats, and
# rows `pp.<pool id>.<counter>` in host_rows (deltas through counters.deltas), as qstats does.
SNAPSHOT = r'''IF=$1 NL=$2
sec() { echo "@@ $1"; }
sec netstat; cat /proc/net/netstat 2>&1; echo "@@ rc $?"
sec snmp; cat /proc/net/snmp 2>&1; echo "@@ rc $?"
sec softnet; cat /proc/net/softnet_stat 2>&1; echo "@@ rc $?"
sec interrupts; cat /proc/interrupts 2>&1; echo "@@ rc $?"
sec msi; ls "/sys/class/net/$IF/device/msi_irqs" "/sys/class/net/$IF/device/../msi_irqs" 2>/dev/null; echo "@@ rc 0"
sec device; readlink -f "/sys/class/net/$IF/device" 2>/dev/null; echo "@@ rc 0"
sec ethtool
if command -v ethtool >/dev/null 2>&1; then ethtool -S "$IF" 2>&1; echo "@@ rc $?"
else echo "ethtool not installed"; echo "@@ rc 127"; fi
sec qstats
if [ -n "$NL" ] && [ -x "$NL" ]; then "$NL" qstats "$IF" 2>&1; echo "@@ rc $?"
else echo "hwt_nl not deployed on this host"; echo "@@ rc 127"; fi
'''

# Bounded loop: $1 dir, $2 count, $3 interval, $4 interface, $5 the snapshot script, $6 hwt_nl
# (or ""). A snapshot's time (seconds since boot: busybox's date has no %N) is taken before
# it, its T line printed once its file is whole.
_LOOP = ('d=$1; n=$2; iv=$3; i=0; while [ "$i" -lt "$n" ]; do read t _ < /proc/uptime; '
         'sh -c "$5" sh "$4" "$6" > "$d/s.$i" 2>&1; echo "T $t $i"; i=$((i+1)); sleep "$iv"; done')

SNAPSHOT_TIMEOUT = 30.0


@dataclass
class HostSnapshot:
    """Parsed sources of one snapshot; a source that could not be read is in `missing` with why."""

    time: float | None = None
    netstat: dict[str, int] = field(default_factory=dict)     # netstat and snmp together
    softnet: list[C.SoftnetRow] | None = None
    interrupts: C.IrqTable | None = None
    msi_irqs: frozenset[str] = frozenset()
    device: str = ""                                          # resolved sysfs path of the NIC's device
    ethtool: dict[str, int] | None = None
    qstats: list[nlparse.QueueStats] | None = None            # per-queue counters (netdev qstats-get)
    missing: dict[str, str] = field(default_factory=dict)     # source -> reason


def split_sections(text: str) -> dict[str, tuple[str, int]]:
    """`@@ name` ... `@@ rc N` -> name -> (body, exit status); a section left open gets status -1."""
    out: dict[str, tuple[str, int]] = {}
    name, buf = None, []
    for ln in text.splitlines():
        if ln.startswith("@@ rc ") and name is not None:
            try:
                rc = int(ln[6:].strip())
            except ValueError:
                rc = -1
            out[name] = ("\n".join(buf), rc)
            name, buf = None, []
        elif ln.startswith("@@ "):
            if name is not None:
                out[name] = ("\n".join(buf), -1)
            name, buf = ln[3:].strip(), []
        elif name is not None:
            buf.append(ln)
    if name is not None:
        out[name] = ("\n".join(buf), -1)
    return out


def _why(body: str, rc: int) -> str:
    first = next((ln.strip() for ln in body.splitlines() if ln.strip()), "")
    if first:
        return first
    return "no output (the snapshot was cut short)" if rc == -1 else (f"exit {rc}" if rc else "no output")


def parse_snapshot(text: str, ifname: str = "", time: float | None = None) -> HostSnapshot:
    """The SNAPSHOT script's output -> HostSnapshot (pure); every source's failure kept as a reason."""
    sec = split_sections(text)
    snap = HostSnapshot(time=time)
    for name, path in (("netstat", "/proc/net/netstat"), ("snmp", "/proc/net/snmp")):
        body, rc = sec.get(name, ("", -1))
        if rc != 0:
            snap.missing[name] = f"{path}: {_why(body, rc)}"
            continue
        try:
            snap.netstat.update(C.parse_netstat(body, path))
        except C.CounterFormatError as exc:
            snap.missing[name] = str(exc)
    for name, path, parse in (("softnet", "/proc/net/softnet_stat", C.parse_softnet),
                              ("interrupts", "/proc/interrupts", C.parse_interrupts)):
        body, rc = sec.get(name, ("", -1))
        try:
            if rc != 0:
                raise C.CounterFormatError(f"{path}: {_why(body, rc)}")
            setattr(snap, name, parse(body))
        except C.CounterFormatError as exc:
            snap.missing[name] = str(exc)
    snap.msi_irqs = frozenset(w for w in sec.get("msi", ("", 0))[0].split() if w.isdigit())
    snap.device = sec.get("device", ("", 0))[0].strip()
    body, rc = sec.get("ethtool", ("", -1))
    src = f"ethtool -S {ifname}" if ifname else "ethtool -S"
    try:
        if rc != 0:
            raise C.CounterFormatError(f"{src}: {_why(body, rc)}")
        snap.ethtool = C.parse_ethtool_stats(body, src)
    except C.CounterFormatError as exc:
        snap.missing["ethtool"] = str(exc)
    body, rc = sec.get("qstats", ("", -1))
    try:
        if rc != 0:
            fail = nlparse.failure(body) or {}
            why = fail.get("unsupported") or fail.get("error") or _why(body, rc)
            raise nlparse.NlParseError(f"hwt_nl qstats {ifname}: {why}")
        snap.qstats = nlparse.parse_qstats(body)
    except nlparse.NlParseError as exc:
        snap.missing["qstats"] = str(exc)
    return snap


QSTATS_FIELDS = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")


def qstats_rows(before: list[nlparse.QueueStats], after: list[nlparse.QueueStats]) -> list[CounterRow]:
    """Per-queue deltas `qstats.<type><id>.<field>` and their sums `qstats.<field>` (pure); a field the
    driver does not count is left out, the sum unavailable when a queue's delta is."""
    b = {(q.type, q.id): q for q in before}
    rows: list[CounterRow] = []
    sums: dict[str, list[C.Value]] = {}
    for q in after:
        old = b.get((q.type, q.id))
        for f in QSTATS_FIELDS:
            nv = getattr(q, f)
            if nv is None:
                continue
            d = C.delta(getattr(old, f) if old is not None else None, nv)
            rows.append(_row(f"qstats.{q.type}{q.id}.{f}", d))
            sums.setdefault(f, []).append(d)
    for f, ds in sums.items():
        bad = next((d for d in ds if not d.ok), None)
        rows.append(_row(f"qstats.{f}", bad if bad is not None else C.Value(sum(d.value for d in ds))))
    return rows


# -- deltas as rows ---------------------------------------------------------------------------

@dataclass
class CounterRow:
    """One counter's change over the window on one host (value None: unavailable, reason says why)."""

    name: str
    value: float | None
    unit: str = "count"
    reason: str = ""


def _row(name: str, v: C.Value, unit: str = "count") -> CounterRow:
    return CounterRow(name, v.value, unit, v.reason)


def _gone(name: str, reason: str) -> CounterRow:
    return CounterRow(name, None, "count", reason)


def host_rows(before: HostSnapshot, after: HostSnapshot, ifname: str, driver: str = "") -> list[CounterRow]:
    """The counters of one host over the window between two snapshots (pure).

    Names: `net.<Prefix>.<Name>` (netstat/snmp, the kernel's own names), `softnet.<counter>`
    (summed over CPUs) and `softnet.<counter>.worst` / `.worst_cpu`, `irq.total`,
    `irq.worst_cpu_count` / `irq.worst_cpu`, `irq.<n>:<name>` per NIC line, `ethtool.<stat>`,
    `qstats.<rx|tx><queue>.<field>` and `qstats.<field>` summed over queues.
    """
    rows: list[CounterRow] = []
    # TCP/IP
    why = "; ".join(after.missing.get(k) or before.missing.get(k) or "" for k in ("netstat", "snmp")).strip("; ")
    if before.netstat and after.netstat:
        for name, v in C.deltas(before.netstat, after.netstat, keep=C.KEY_NETSTAT, skip=C.NETSTAT_GAUGES).items():
            rows.append(_row(f"net.{name}", v))
    else:
        rows += [_gone(f"net.{n}", why or "no TCP/IP counters") for n in C.KEY_NETSTAT]
    # softnet
    if before.softnet is not None and after.softnet is not None:
        sd = C.softnet_delta(before.softnet, after.softnet)
        by_pos = any(r.cpu_from == "position" for r in after.softnet)
        for c in C.SOFTNET_COUNTERS:
            rows.append(_row(f"softnet.{c}", sd.total[c]))
            if c in sd.worst:
                cpu, v = sd.worst[c]
                rows.append(_row(f"softnet.{c}.worst", v))
                if v.value:             # no CPU is the worst of all zeros
                    rows.append(CounterRow(f"softnet.{c}.worst_cpu", float(cpu), "cpu",
                                           "line position (this kernel prints no CPU id)" if by_pos else ""))
    else:
        why = after.missing.get("softnet") or before.missing.get("softnet") or "not read"
        rows += [_gone(f"softnet.{c}", why) for c in C.SOFTNET_COUNTERS]
    # interrupts of the data NIC's queues
    rows += _irq_rows(before, after, ifname, driver)
    # ethtool -S
    if before.ethtool is not None and after.ethtool is not None:
        for name, v in C.deltas(before.ethtool, after.ethtool).items():
            rows.append(_row(f"ethtool.{name}", v))
        if not any(r.name.startswith("ethtool.") for r in rows):
            rows.append(CounterRow("ethtool.changed", 0.0, "count", ""))
    else:
        rows.append(_gone("ethtool", after.missing.get("ethtool") or before.missing.get("ethtool") or "not read"))
    # per-queue counters over netlink (hwt_nl)
    if before.qstats is not None and after.qstats is not None:
        q = qstats_rows(before.qstats, after.qstats)
        rows += q or [_gone("qstats", "the driver reports no per-queue counters")]
    else:
        rows.append(_gone("qstats", after.missing.get("qstats") or before.missing.get("qstats") or "not read"))
    return rows


def _irq_rows(before: HostSnapshot, after: HostSnapshot, ifname: str, driver: str) -> list[CounterRow]:
    if before.interrupts is None or after.interrupts is None:
        return [_gone("irq.total", after.missing.get("interrupts") or before.missing.get("interrupts") or "not read")]
    bus = posixpath.basename(after.device) if after.device else ""
    la = C.nic_irq_lines(after.interrupts, ifname, after.msi_irqs, bus)
    lb = C.nic_irq_lines(before.interrupts, ifname, before.msi_irqs | after.msi_irqs, bus)
    if not la:
        what = driver or "this NIC"
        return [_gone("irq.total", f"no interrupt lines for {what} ({ifname}) in /proc/interrupts")]
    d = C.irq_delta(lb, la, after.interrupts.cpus)
    rows = [_row("irq.total", d.total)]
    good = [(cpu, v) for cpu, v in d.per_cpu.items() if v.ok]
    if good and d.total.ok:
        cpu, v = max(good, key=lambda cv: cv[1].value)
        rows.append(_row("irq.worst_cpu_count", v))
        if v.value:
            rows.append(CounterRow("irq.worst_cpu", float(cpu[3:]) if cpu[3:].isdigit() else None, "cpu",
                                   "" if cpu[3:].isdigit() else f"CPU named {cpu}"))
    rows += [_row(f"irq.{k}", v) for k, v in d.per_line.items()]
    return rows


# -- sampling a host ----------------------------------------------------------------------------

class CounterSampler:
    """Counter snapshots of one host every interval, in the background, on the controller's clock.

        s = CounterSampler(he.t, he.nic.ifname, max_seconds=60).start()
        ... run traffic ...
        s.stop()
        rows = s.rows_between(t0, t1, driver="veth")     # controller time.time() values
    """

    def __init__(self, t, ifname: str, interval: float = 1.0, max_seconds: float = 600.0, name: str = "counters",
                 nl: str = ""):
        self.t = t
        self.ifname = ifname
        self.nl = nl                      # hwt_nl on the host (per-queue qstats), "" without
        self.interval = float(interval)
        self.count = int(max_seconds / interval) + 2
        self.name = name
        self.offset = 0.0
        self.dir = ""
        self.bg = None
        self.times: list[tuple[float, int]] = []     # (controller time, snapshot index)
        self.error = ""

    def start(self) -> "CounterSampler":
        self.offset = clock_offset(self.t)
        self.dir = posixpath.join(self.t.tmpdir, f"{self.name}-{id(self):x}")
        self.t.run(["mkdir", "-p", self.dir], timeout=15)
        self.bg = self.t.start(["sh", "-c", _LOOP, "sh", self.dir, str(self.count), f"{self.interval:g}",
                                self.ifname, SNAPSHOT, self.nl], name=self.name)
        return self

    def stop(self) -> list[tuple[float, int]]:
        if self.bg is None:
            return self.times
        res = self.bg.stop(grace=1.0)
        self.bg = None
        self.times = parse_times(res.stdout, self.offset)
        return self.times

    def snapshot(self, index: int, time: float | None = None) -> HostSnapshot:
        text = self.t.read_file(posixpath.join(self.dir, f"s.{index}")).decode(errors="replace")
        return parse_snapshot(text, self.ifname, time)

    def rows_between(self, t0: float, t1: float, driver: str = "") -> list[CounterRow]:
        """The counters over [t0, t1]; one unavailable row saying why when fewer than two snapshots fit."""
        w = window(self.times, t0, t1)
        if w is None:
            return [_gone("counters", f"fewer than two counter snapshots in the {t1 - t0:.1f} s window "
                                      f"({len(self.times)} taken)")]
        try:
            a = self.snapshot(w[0][1], w[0][0])
            b = self.snapshot(w[1][1], w[1][0])
        except HwtestsError as exc:
            return [_gone("counters", f"snapshot not read back: {exc}")]
        rows = host_rows(a, b, self.ifname, driver)
        rows.append(CounterRow("window_seconds", round(w[1][0] - w[0][0], 3), "s"))
        return rows

    def cleanup(self) -> None:
        if self.dir:
            self.t.run(["rm", "-rf", self.dir], check=False, timeout=30)


def parse_times(text: str, offset: float = 0.0) -> list[tuple[float, int]]:
    """`T <epoch> <index>` lines -> sorted (controller time, index)."""
    out = []
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[0] == "T":
            try:
                out.append((float(parts[1]) + offset, int(parts[2])))
            except ValueError:
                continue
    return sorted(out)


def window(times: list[tuple[float, int]], t0: float, t1: float):
    """The first snapshot at/after t0 and the last at/before t1; None if fewer than two inside."""
    inside = [x for x in times if t0 - 1e-6 <= x[0] <= t1 + 1e-6]
    if len(inside) < 2:
        return None
    return inside[0], inside[-1]
