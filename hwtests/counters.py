"""Kernel counters that explain a result: pure parsers of their text formats, and deltas.

A verdict says a build is slower; the kernel's own counters say why (retransmits,
out-of-order queueing, receive-queue pruning, softirq budget squeezes, backlog drops,
interrupts per queue, cache misses). Everything here is pure (text in, records out):
`countersnap` takes the snapshots on hosts and `counterstore` keeps the deltas.

Formats (as the kernel prints them):

- `/proc/net/netstat`, `/proc/net/snmp`: pairs of lines, `Prefix: Name1 Name2 ...` then
  `Prefix: v1 v2 ...` (decimal, some signed: `Tcp: ... MaxConn -1`);
- `/proc/net/softnet_stat`: one line per online CPU, `%08x` columns: processed, dropped,
  time_squeeze, six zeros (was fastroute, cpu_collision), received_rps, flow_limit_count,
  then from 5.10 the backlog length and the CPU id, from 6.0 input and process queue
  lengths; older kernels print 10 or 11 columns and no CPU id (then the line's position
  is the CPU, which is wrong once a CPU is offline: said in `SoftnetRow.cpu_from`);
- `/proc/interrupts`: a header `CPU0 CPU1 ...`, then `IRQ: count per CPU, chip, hwirq, names`;
- `ethtool -S IF`: `NIC statistics:` then `name: value` lines (names may hold spaces or colons);
- `perf stat -x,`: `value,unit,event,run time,percent,...` per event; `<not supported>` and
  `<not counted>` instead of a value.

A counter that cannot be had is `Value(None, reason)`, never 0. A delta whose counter went
backwards (wrap-around or reset between the snapshots) is unavailable too, never negative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class CounterFormatError(ValueError):
    """Text that is not the format it should be (the message names the line)."""


@dataclass(frozen=True)
class Value:
    """A counter's value or delta; `value` None means unavailable and `reason` says why."""

    value: float | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None


def unavailable(reason: str) -> Value:
    return Value(None, reason)


# -- /proc/net/netstat and /proc/net/snmp -----------------------------------------------------

def parse_netstat(text: str, source: str = "/proc/net/netstat") -> dict[str, int]:
    """`Prefix: names` / `Prefix: values` line pairs -> {'TcpExt.PruneCalled': 3, 'Tcp.RetransSegs': 9, ...}.

    Also reads /proc/net/snmp (same layout). A pair whose counts differ, or a value
    that is no integer, raises CounterFormatError naming the source and line.
    """
    out: dict[str, int] = {}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    i = 0
    while i < len(lines):
        head = lines[i]
        prefix, sep, names = head.partition(":")
        if not sep or " " in prefix.strip() or not prefix.strip():
            raise CounterFormatError(f"{source}: line {i + 1}: expected 'Prefix: names', got {head[:60]!r}")
        if i + 1 >= len(lines):
            raise CounterFormatError(f"{source}: line {i + 1}: {prefix}: header without a values line")
        vprefix, _, values = lines[i + 1].partition(":")
        if vprefix != prefix:
            raise CounterFormatError(f"{source}: line {i + 2}: {prefix}: values line starts with {vprefix[:20]!r}")
        nn, vv = names.split(), values.split()
        if len(nn) != len(vv):
            raise CounterFormatError(f"{source}: line {i + 2}: {prefix}: {len(nn)} names but {len(vv)} values")
        for n, v in zip(nn, vv):
            try:
                out[f"{prefix}.{n}"] = int(v)
            except ValueError:
                raise CounterFormatError(f"{source}: line {i + 2}: {prefix}.{n}: {v!r} is not an integer") from None
        i += 2
    return out


# Values of these are settings or gauges, not event counts: a delta means nothing.
NETSTAT_GAUGES = frozenset({"Tcp.RtoAlgorithm", "Tcp.RtoMin", "Tcp.RtoMax", "Tcp.MaxConn", "Tcp.CurrEstab",
                            "Ip.Forwarding", "Ip.DefaultTTL", "MPTcpExt.MPCurrEstab"})

# The counters that explain throughput, always kept (also when their delta is 0).
KEY_NETSTAT = (
    "Tcp.RetransSegs", "Tcp.InErrs", "Tcp.InSegs", "Tcp.OutSegs", "Tcp.OutRsts",
    "TcpExt.TCPOFOQueue", "TcpExt.TCPOFODrop", "TcpExt.PruneCalled", "TcpExt.RcvPruned",
    "TcpExt.OfoPruned", "TcpExt.TCPRcvCollapsed", "TcpExt.TCPBacklogDrop", "TcpExt.TCPRcvQDrop",
    "TcpExt.TCPZeroWindowDrop", "TcpExt.ListenDrops", "TcpExt.ListenOverflows", "TcpExt.TCPLostRetransmit",
    "TcpExt.TCPFastRetrans", "TcpExt.TCPSlowStartRetrans", "TcpExt.TCPTimeouts", "TcpExt.TCPSpuriousRTOs",
    "TcpExt.TCPLossProbes", "TcpExt.TCPSackRecovery", "TcpExt.TCPDSACKRecv", "TcpExt.TCPRcvCoalesce",
    "TcpExt.TCPBacklogCoalesce", "TcpExt.TCPMemoryPressures", "TcpExt.TCPToZeroWindowAdv",
    "TcpExt.TCPWantZeroWindowAdv", "TcpExt.TCPAutoCorking", "TcpExt.TCPOrigDataSent", "TcpExt.PFMemallocDrop",
    "Ip.InReceives", "Ip.InDiscards", "Ip.InHdrErrors", "Ip.InAddrErrors", "Ip.OutDiscards",
    "IpExt.InCsumErrors", "IpExt.InOctets", "IpExt.OutOctets",
)


# -- deltas ----------------------------------------------------------------------------------

def delta(before: int | None, after: int | None) -> Value:
    """after - before; unavailable when either is missing or the counter went backwards."""
    if before is None or after is None:
        return unavailable("not in both snapshots")
    if after < before:
        return unavailable(f"went backwards ({before} -> {after}): wrap-around or reset")
    return Value(after - before)


def deltas(before: dict[str, int], after: dict[str, int], keep: tuple[str, ...] = (),
           skip: frozenset[str] = frozenset(), nonzero_only: bool = True) -> dict[str, Value]:
    """Per counter delta. Counters in `keep` always (unavailable when absent); the others only when
    they changed (`nonzero_only`), so a few hundred quiet counters cost nothing."""
    out: dict[str, Value] = {}
    for name in keep:
        if name in before or name in after:
            out[name] = delta(before.get(name), after.get(name))
        else:
            out[name] = unavailable("this kernel has no such counter")
    for name in sorted(set(before) | set(after)):
        if name in out or name in skip:
            continue
        d = delta(before.get(name), after.get(name))
        if not nonzero_only or not d.ok or d.value != 0:
            out[name] = d
    return out


# -- /proc/net/softnet_stat -------------------------------------------------------------------

SOFTNET_COUNTERS = ("processed", "dropped", "time_squeeze", "received_rps", "flow_limit_count")


@dataclass(frozen=True)
class SoftnetRow:
    cpu: int
    processed: int
    dropped: int
    time_squeeze: int
    received_rps: int | None = None        # absent before 2.6.35 (10 columns or fewer)
    flow_limit_count: int | None = None    # absent before 3.11
    backlog_len: int | None = None         # a gauge (5.10+)
    cpu_from: str = "column"               # "column" (the kernel's CPU id) or "position" (line order)


def parse_softnet(text: str, source: str = "/proc/net/softnet_stat") -> list[SoftnetRow]:
    """Rows per online CPU. Column count by kernel: 9-11 (old), 13 (5.10+), 15 (6.0+), more later."""
    rows = []
    for i, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        cols = line.split()
        if len(cols) < 9:
            raise CounterFormatError(f"{source}: line {i + 1}: {len(cols)} columns, at least 9 expected")
        try:
            v = [int(c, 16) for c in cols]
        except ValueError:
            raise CounterFormatError(f"{source}: line {i + 1}: a column that is not hex: {line[:60]!r}") from None
        by_col = len(v) >= 13
        rows.append(SoftnetRow(cpu=v[12] if by_col else i, processed=v[0], dropped=v[1], time_squeeze=v[2],
                               received_rps=v[9] if len(v) > 9 else None,
                               flow_limit_count=v[10] if len(v) > 10 else None,
                               backlog_len=v[11] if len(v) > 11 else None,
                               cpu_from="column" if by_col else "position"))
    if not rows:
        raise CounterFormatError(f"{source}: empty")
    return rows


@dataclass
class SoftnetDelta:
    """Softnet counters over a window: the sum over CPUs and the CPU with the largest delta."""

    total: dict[str, Value]
    worst: dict[str, tuple[int, Value]]           # counter -> (cpu, its delta)
    per_cpu: dict[int, dict[str, Value]] = field(default_factory=dict)


def softnet_delta(before: list[SoftnetRow], after: list[SoftnetRow]) -> SoftnetDelta:
    """Per-CPU deltas of the softnet counters (CPUs matched by id), their sum and worst CPU.

    The sum is unavailable when any CPU's delta is (it would undercount); a CPU that went
    offline or came online between the snapshots makes its own delta unavailable.
    """
    b = {r.cpu: r for r in before}
    a = {r.cpu: r for r in after}
    per_cpu: dict[int, dict[str, Value]] = {}
    for cpu in sorted(set(a) | set(b)):
        rb, ra = b.get(cpu), a.get(cpu)
        per_cpu[cpu] = {}
        for c in SOFTNET_COUNTERS:
            if rb is None or ra is None:
                per_cpu[cpu][c] = unavailable(f"CPU {cpu} not online in both snapshots")
            elif getattr(rb, c) is None or getattr(ra, c) is None:
                per_cpu[cpu][c] = unavailable("not printed by this kernel")
            else:
                per_cpu[cpu][c] = delta(getattr(rb, c), getattr(ra, c))
    total: dict[str, Value] = {}
    worst: dict[str, tuple[int, Value]] = {}
    for c in SOFTNET_COUNTERS:
        vals = [(cpu, d[c]) for cpu, d in per_cpu.items()]
        bad = [(cpu, v) for cpu, v in vals if not v.ok]
        if bad:
            total[c] = unavailable(f"CPU {bad[0][0]}: {bad[0][1].reason}")
        else:
            total[c] = Value(sum(v.value for _, v in vals))
        good = [(cpu, v) for cpu, v in vals if v.ok]
        if good:
            worst[c] = max(good, key=lambda cv: (cv[1].value, -cv[0]))
    return SoftnetDelta(total, worst, per_cpu)


# -- /proc/interrupts -------------------------------------------------------------------------

@dataclass(frozen=True)
class IrqLine:
    irq: str                   # "36", or "NMI", "LOC", ...
    counts: tuple[int, ...]    # per CPU, in header order
    desc: str                  # chip, hwirq and the action names, as printed

    @property
    def name(self) -> str:
        """The last word: the action's name (`mlx5_comp3@pci:0000:08:00.0`, `eth0-TxRx-3`, `virtio2-input.0`)."""
        return self.desc.split()[-1] if self.desc.split() else self.irq


@dataclass
class IrqTable:
    cpus: list[str]
    lines: list[IrqLine]


def parse_interrupts(text: str, source: str = "/proc/interrupts") -> IrqTable:
    """Header of CPU names, then per IRQ its per-CPU counts (lines like `ERR:` hold one count only)."""
    lines = text.splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if head is None or not lines[head].split()[0].startswith("CPU"):
        raise CounterFormatError(f"{source}: line 1: no 'CPU0 CPU1 ...' header")
    cpus = lines[head].split()
    out: list[IrqLine] = []
    for ln in lines[head + 1:]:
        irq, sep, rest = ln.partition(":")
        if not sep or not irq.strip():
            continue
        words = rest.split()
        counts: list[int] = []
        for w in words[:len(cpus)]:
            if not w.isdigit():
                break
            counts.append(int(w))
        desc = " ".join(words[len(counts):])
        if not counts:
            continue
        out.append(IrqLine(irq.strip(), tuple(counts), desc))
    return IrqTable(cpus, out)


def nic_irq_lines(table: IrqTable, ifname: str, irqs: set[str] | frozenset[str] = frozenset(),
                  bus_info: str = "") -> list[IrqLine]:
    """The lines of one NIC: IRQ numbers the device owns (its msi_irqs), else names holding the
    interface name or the device's bus address (`mlx5_comp0@pci:0000:08:00.0`).

    The name match is on word boundaries (`eth1` does not match `eth10-TxRx-0`).
    """
    pat = re.compile(r"(^|[^A-Za-z0-9])" + re.escape(ifname) + r"($|[^A-Za-z0-9])") if ifname else None
    out = []
    for ln in table.lines:
        if ln.irq in irqs:
            out.append(ln)
        elif pat is not None and pat.search(ln.desc):
            out.append(ln)
        elif bus_info and bus_info in ln.desc:
            out.append(ln)
    return out


@dataclass
class IrqDelta:
    per_line: dict[str, Value]                 # line name (irq:name) -> interrupts in the window
    per_cpu: dict[str, Value]                  # CPU name -> interrupts of these lines
    total: Value


def irq_delta(before: list[IrqLine], after: list[IrqLine], cpus: list[str]) -> IrqDelta:
    """Interrupts of the given lines between two reads, per line and per CPU (lines matched by IRQ number)."""
    b = {ln.irq: ln for ln in before}
    per_line: dict[str, Value] = {}
    per_cpu_sum = [0] * len(cpus)
    broken = ""
    for ln in after:
        key = f"{ln.irq}:{ln.name}"
        old = b.get(ln.irq)
        if old is None or len(old.counts) != len(ln.counts):
            per_line[key] = unavailable("IRQ not in both snapshots")
            broken = broken or f"{key}: IRQ not in both snapshots"
            continue
        ds = [delta(x, y) for x, y in zip(old.counts, ln.counts)]
        bad = next((d for d in ds if not d.ok), None)
        if bad is not None:
            per_line[key] = bad
            broken = broken or f"{key}: {bad.reason}"
            continue
        per_line[key] = Value(sum(d.value for d in ds))
        for i, d in enumerate(ds[:len(cpus)]):
            per_cpu_sum[i] += d.value
    per_cpu = {cpu: (unavailable(broken) if broken else Value(per_cpu_sum[i])) for i, cpu in enumerate(cpus)}
    total = unavailable(broken) if broken else Value(sum(per_cpu_sum))
    return IrqDelta(per_line, per_cpu, total)


# -- ethtool -S ---------------------------------------------------------------------------------

def parse_ethtool_stats(text: str, source: str = "ethtool -S") -> dict[str, int]:
    """`NIC statistics:` then `name: value` -> {name: value}. CounterFormatError when no statistics."""
    lines = text.splitlines()
    if not any(ln.strip().startswith("NIC statistics") for ln in lines):
        first = next((ln.strip() for ln in lines if ln.strip()), "no output")
        raise CounterFormatError(f"{source}: {first}")
    out: dict[str, int] = {}
    for ln in lines:
        name, sep, val = ln.rpartition(":")
        if not sep or not name.strip() or name.strip().startswith("NIC statistics"):
            continue
        try:
            out[name.strip()] = int(val.strip())
        except ValueError:
            continue            # a section title or a non-numeric field: not a counter
    return out


# -- perf stat -x, --------------------------------------------------------------------------------

PERF_EVENTS = ("cycles", "instructions", "cache-misses", "branch-misses")


def parse_perf_stat(text: str, source: str = "perf stat") -> dict[str, Value]:
    """CSV lines of `perf stat -x,` -> event -> count; `<not supported>`/`<not counted>` unavailable.

    An event name may carry a modifier (`cycles:u`) or a PMU (`cpu_core/cycles/` on hybrid
    CPUs): it is stored under its bare name, counts of several PMUs summed.
    """
    out: dict[str, Value] = {}
    for ln in text.splitlines():
        s = ln.strip()
        if not s or s.startswith("#") or s.count(",") < 2:
            continue
        cols = s.split(",")
        raw, event = cols[0].strip(), cols[2].strip()
        if not event:
            continue
        bare = event.rstrip("/").split("/")[-1] if "/" in event else event
        bare = bare.split(":")[0]
        if raw.startswith("<"):
            why = raw.strip("<>")
            reason = {"not supported": "not supported here (no hardware PMU event: a VM or emulator?)",
                      "not counted": "not counted (the event was never scheduled on the PMU)"}.get(why, why)
            if bare not in out:
                out[bare] = unavailable(f"perf: {event}: {reason}")
            continue
        try:
            v = float(raw)
        except ValueError:
            continue
        prev = out.get(bare)
        out[bare] = Value((prev.value if prev is not None and prev.ok else 0.0) + v)
    return out


def perf_events(parsed: dict[str, Value], events: tuple[str, ...] = PERF_EVENTS,
                missing: str = "perf printed no line for it") -> dict[str, Value]:
    """The wanted events, each a count or unavailable with the reason."""
    return {e: parsed.get(e, unavailable(missing)) for e in events}


def per_element(v: Value, elements: int) -> Value:
    """A count divided by the elements it covers (unavailable stays so)."""
    if not v.ok:
        return v
    if elements <= 0:
        return unavailable("no element count")
    return Value(v.value / elements)
