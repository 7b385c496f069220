"""System CPU accounting from /proc/stat, softirq included.

Tool rusage (iperf3, neper) misses NAPI/softirq work done on other CPUs, which
is exactly what zero-copy receive saves; so CPU here is system-wide: the `cpu`
lines of /proc/stat (USER_HZ ticks: user nice system idle iowait irq softirq
steal guest guest_nice).

- busy = user + nice + system + irq + softirq (guest time is already inside user/nice);
- total = busy + idle + iowait + steal; percentages are of the whole machine (all CPUs);
- `busy_cpus` is the same as a number of CPUs kept busy, `busy_seconds` as CPU seconds.

The parsers and arithmetic are pure. `CpuSampler` samples a host through its
transport: a bounded background loop on the host prints a timestamped /proc/stat
snapshot every interval (default 1 s) while traffic runs. Background sampling
rather than two snapshots around the run: the traffic runner is one blocking
call, and with per-interval snapshots the CPU window can be cut afterwards to
exactly the throughput's steady-state window (warm-up and cool-down dropped),
and per-second CPU samples come for free. One `grep` per second is all it costs
the measured host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
BUSY = ("user", "nice", "system", "irq", "softirq")
CATEGORIES = ("user", "nice", "system", "irq", "softirq", "iowait", "steal", "idle")
DEFAULT_HZ = 100


@dataclass(frozen=True)
class CpuTimes:
    """One cpu line, in ticks; missing trailing fields (old kernels) are 0."""

    user: int = 0
    nice: int = 0
    system: int = 0
    idle: int = 0
    iowait: int = 0
    irq: int = 0
    softirq: int = 0
    steal: int = 0
    guest: int = 0
    guest_nice: int = 0

    @property
    def busy(self) -> int:
        return sum(getattr(self, f) for f in BUSY)

    @property
    def total(self) -> int:
        return self.busy + self.idle + self.iowait + self.steal

    def __sub__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(*(getattr(self, f) - getattr(other, f) for f in FIELDS))


@dataclass
class Snapshot:
    """The cpu lines of one /proc/stat read: `all` (the `cpu` line) and per CPU."""

    all: CpuTimes
    cpus: dict[int, CpuTimes] = field(default_factory=dict)
    time: float | None = None       # when it was taken (seconds, the sampler's clock)


def parse_proc_stat(text: str, time: float | None = None) -> Snapshot:
    """/proc/stat text (or just its cpu lines) -> Snapshot. ValueError without a `cpu` line."""
    total: CpuTimes | None = None
    cpus: dict[int, CpuTimes] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        try:
            vals = [int(x) for x in parts[1:1 + len(FIELDS)]]
        except ValueError:
            continue
        if len(vals) < 4:
            continue
        ct = CpuTimes(*vals)
        name = parts[0][3:]
        if name == "":
            total = ct
        elif name.isdigit():
            cpus[int(name)] = ct
    if total is None:
        if not cpus:
            raise ValueError("no cpu lines in /proc/stat text")
        total = CpuTimes(*(sum(getattr(c, f) for c in cpus.values()) for f in FIELDS))
    return Snapshot(total, cpus, time)


@dataclass
class CpuUsage:
    """CPU use between two snapshots."""

    busy_pct: float                   # of the whole machine, 0..100
    pct: dict[str, float]             # per category (CATEGORIES), of the whole machine
    busy_seconds: float               # CPU seconds of busy time (all CPUs)
    busy_cpus: float                  # busy time as a number of fully busy CPUs
    ncpus: int
    interval: float                   # wall seconds covered (from the ticks)
    softirq_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"busy_pct": self.busy_pct, "pct": dict(self.pct), "busy_seconds": self.busy_seconds,
                "busy_cpus": self.busy_cpus, "ncpus": self.ncpus, "interval": self.interval,
                "softirq_seconds": self.softirq_seconds}


def usage(before: Snapshot, after: Snapshot, hz: int = DEFAULT_HZ) -> CpuUsage:
    """System-wide use between two snapshots; ValueError when no time passed or counters went back."""
    d = after.all - before.all
    if any(getattr(d, f) < 0 for f in FIELDS):
        raise ValueError("CPU counters went backwards (different boots or hosts?)")
    tot = d.total
    if tot <= 0:
        raise ValueError("no CPU time passed between the two snapshots")
    ncpus = max(len(after.cpus), len(before.cpus), 1)
    pct = {c: 100.0 * getattr(d, c) / tot for c in CATEGORIES}
    return CpuUsage(busy_pct=100.0 * d.busy / tot, pct=pct, busy_seconds=d.busy / hz,
                    busy_cpus=ncpus * d.busy / tot, ncpus=ncpus, interval=tot / ncpus / hz,
                    softirq_seconds=d.softirq / hz)


def cpu_per_gb(busy_seconds: float, nbytes: float) -> float | None:
    """CPU seconds per GB (1e9 bytes) moved; None when nothing moved."""
    if nbytes <= 0:
        return None
    return busy_seconds / (nbytes / 1e9)


def window(snaps: list[Snapshot], t0: float, t1: float) -> tuple[Snapshot, Snapshot] | None:
    """The first snapshot at/after t0 and the last at/before t1 (both timed); None if fewer than 2 inside."""
    inside = [s for s in snaps if s.time is not None and t0 - 1e-6 <= s.time <= t1 + 1e-6]
    if len(inside) < 2:
        return None
    return inside[0], inside[-1]


def per_interval(snaps: list[Snapshot], hz: int = DEFAULT_HZ) -> list[tuple[float, CpuUsage]]:
    """(end time, use) of every pair of consecutive snapshots."""
    out = []
    for a, b in zip(snaps, snaps[1:]):
        try:
            out.append((b.time if b.time is not None else 0.0, usage(a, b, hz)))
        except ValueError:
            continue
    return out


# -- sampling a host ---------------------------------------------------------------

# Bounded loop: $1 snapshots, $2 seconds apart; each starts with "T <seconds since boot>"
# (/proc/uptime: busybox's date, as in the VM lab's guests, prints %N literally).
_SNAPSHOT = 'read up _ < /proc/uptime; echo "T $up"; grep "^cpu" /proc/stat'
_LOOP = 'n=$1; i=0; while [ "$i" -lt "$n" ]; do ' + _SNAPSHOT + '; i=$((i+1)); sleep "$2"; done'


def parse_samples(text: str, offset: float = 0.0) -> list[Snapshot]:
    """The sampler's output -> timed snapshots (host time + offset = controller time).

    A snapshot torn by the sampler being stopped is dropped.
    """
    snaps: list[Snapshot] = []
    cur_t: float | None = None
    buf: list[str] = []

    def flush():
        if cur_t is not None and buf:
            try:
                snaps.append(parse_proc_stat("\n".join(buf), cur_t + offset))
            except ValueError:
                pass

    for line in text.splitlines():
        if line.startswith("T "):
            flush()
            buf = []
            try:
                cur_t = float(line[2:].strip())
            except ValueError:
                cur_t = None
        elif line.startswith("cpu"):
            buf.append(line)
    flush()
    # a torn last snapshot has fewer CPU lines than the others
    if len(snaps) >= 2 and len(snaps[-1].cpus) < len(snaps[-2].cpus):
        snaps.pop()
    return snaps


class CpuSampler:
    """Per-interval /proc/stat snapshots of one host, in the background, on the controller's clock.

        s = CpuSampler(he.t, max_seconds=60).start()
        ... run traffic ...
        snaps = s.stop()
        use = s.usage_between(t0, t1)     # controller time.time() values
    """

    def __init__(self, t, interval: float = 1.0, max_seconds: float = 600.0, name: str = "cpustat"):
        self.t = t
        self.interval = float(interval)
        self.count = int(max_seconds / interval) + 2
        self.name = name
        self.offset = 0.0
        self.hz = DEFAULT_HZ
        self.bg = None
        self.snapshots: list[Snapshot] = []

    def start(self) -> "CpuSampler":
        r = self.t.run(["getconf", "CLK_TCK"], check=False, timeout=15)
        if r.ok and r.stdout.strip().isdigit():
            self.hz = int(r.stdout.strip())
        self.offset = clock_offset(self.t)
        self.bg = self.t.start(["sh", "-c", _LOOP, "sh", str(self.count), f"{self.interval:g}"], name=self.name)
        return self

    def stop(self) -> list[Snapshot]:
        if self.bg is None:
            return self.snapshots
        # one last snapshot so the end of the run is covered
        last = self.t.run(_SNAPSHOT, check=False, timeout=15)
        res = self.bg.stop(grace=1.0)
        self.bg = None
        self.snapshots = parse_samples(res.stdout + "\n" + (last.stdout if last.ok else ""), self.offset)
        self.snapshots.sort(key=lambda s: s.time or 0.0)
        return self.snapshots

    def usage_between(self, t0: float, t1: float) -> CpuUsage | None:
        w = window(self.snapshots, t0, t1)
        return usage(*w, hz=self.hz) if w else None

    def per_second(self, t0: float | None = None, t1: float | None = None) -> list[tuple[float, CpuUsage]]:
        snaps = [s for s in self.snapshots if s.time is not None
                 and (t0 is None or s.time >= t0 - 1e-6) and (t1 is None or s.time <= t1 + 1e-6)]
        return per_interval(snaps, self.hz)


def clock_offset(t, tries: int = 3) -> float:
    """controller time - host time since boot (/proc/uptime, what the samplers stamp their
    snapshots with), from the midpoint of the quickest of a few round trips (0 if unreadable)."""
    best: tuple[float, float] | None = None
    for _ in range(tries):
        a = time.time()
        r = t.run(["cat", "/proc/uptime"], check=False, timeout=15)
        b = time.time()
        try:
            host = float((r.stdout.split() or [""])[0])
        except ValueError:
            return 0.0
        rtt = b - a
        if best is None or rtt < best[0]:
            best = (rtt, (a + b) / 2 - host)
    return best[1] if best else 0.0


def summarize(uses: Iterable[CpuUsage]) -> dict[str, float]:
    """Mean busy % and per-category % of several intervals (for per-second listings)."""
    uses = list(uses)
    if not uses:
        return {}
    out = {"busy_pct": sum(u.busy_pct for u in uses) / len(uses)}
    for c in CATEGORIES:
        out[c] = sum(u.pct[c] for u in uses) / len(uses)
    return out
