#!/usr/bin/env python3
"""What one counter snapshot costs the measured host, and how much it weighs.

    python benchmarks/counter_snapshot_cost.py [--ifname lo] [--count 50]

Runs the line-rate counter snapshot (`hwtests.countersnap.SNAPSHOT`: /proc/net/netstat and
snmp, softnet_stat, /proc/interrupts, msi_irqs, `ethtool -S`, `hwt_nl qstats` when given)
`--count` times on this machine, one after another, and prints the wall time per snapshot
(median and 90th percentile), the CPU time its processes used (from the children's
rusage) and the bytes it writes. The sampler takes one every 0.5 s while traffic runs, so
the CPU time per snapshot x 2 is the share of one CPU it takes from the measured host.
A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

from hwtests.countersnap import SNAPSHOT


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ifname", default="lo", help="interface whose ethtool -S and IRQ lines are read (default lo)")
    ap.add_argument("--nl", default="", help="path of hwt_nl for qstats (default: none)")
    ap.add_argument("--count", type=int, default=50, help="snapshots to take (1..1000, default 50)")
    a = ap.parse_args(argv)
    if not 1 <= a.count <= 1000:
        print("counter_snapshot_cost: --count must be 1..1000", file=sys.stderr)
        return 2
    walls, sizes = [], []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(a.count):
        t0 = time.perf_counter()
        p = subprocess.run(["sh", "-c", SNAPSHOT, "sh", a.ifname, a.nl], capture_output=True, timeout=30)
        walls.append(time.perf_counter() - t0)
        sizes.append(len(p.stdout) + len(p.stderr))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / a.count
    walls.sort()
    print(f"snapshots: {a.count} of {a.ifname}")
    print(f"wall per snapshot: median {statistics.median(walls) * 1e3:.1f} ms, "
          f"p90 {walls[int(0.9 * (len(walls) - 1))] * 1e3:.1f} ms")
    print(f"CPU per snapshot: {cpu * 1e3:.1f} ms (at 2 per second: {cpu * 2 * 100:.2f}% of one CPU)")
    print(f"bytes per snapshot: {statistics.median(sizes):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
