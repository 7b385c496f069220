#!/usr/bin/env python3
"""Per-command latency on an open SSH connection and cold connect time to a lab host.

Builds a netns lab (or uses --inventory), then measures, interleaved in one run:
cold connect (TCP + key exchange + auth + one `true`), and `true` on an open
connection, with TCP_NODELAY (what hwtests does) and without (paramiko's default),
so the figures are comparable on this shared, noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hwtests import hostconn, inventory, labnetns, transport  # noqa: E402


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(host, defaults, n_cold: int, n_exec: int, nodelay: bool) -> tuple[list[float], list[float]]:
    orig = transport.nodelay
    if not nodelay:
        transport.nodelay = lambda s: s
    try:
        cold, hot = [], []
        for _ in range(n_cold):
            t0 = time.perf_counter()
            t = hostconn.connect(host, defaults)
            t.run(["true"])
            cold.append(time.perf_counter() - t0)
            t.close()
        t = hostconn.connect(host, defaults)
        t.run(["true"])
        for _ in range(n_exec):
            t0 = time.perf_counter()
            t.run(["true"])
            hot.append(time.perf_counter() - t0)
        t.close()
        return cold, hot
    finally:
        transport.nodelay = orig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inventory", help="use this inventory instead of building a netns lab")
    ap.add_argument("--host", help="host to measure (default: the first)")
    ap.add_argument("--cold", type=int, default=20, help="cold connects per round (default 20)")
    ap.add_argument("--exec", type=int, default=200, help="commands per round (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = ap.parse_args()
    tmp = None
    inv_path = args.inventory
    if not inv_path:
        tmp = tempfile.mkdtemp(prefix="hwt-bench-")
        inv_path = labnetns.up(Path(tmp) / "lab")
    try:
        inv = inventory.load(inv_path)
        host = inv.hosts[args.host or next(iter(inv.hosts))]
        res = {True: ([], []), False: ([], [])}
        for r in range(args.rounds):
            for nd in (True, False):
                c, h = measure(host, inv.defaults, args.cold, args.exec if nd else max(10, args.exec // 10), nd)
                res[nd][0].extend(c)
                res[nd][1].extend(h)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        print(f"host {host.name} ({'netns ' + host.ssh.netns if host.ssh and host.ssh.netns else 'ssh'}), "
              f"{args.rounds} interleaved rounds")
        print(f"{'':34} {'median':>9} {'p10':>9} {'p90':>9} {'n':>5}")
        for nd in (True, False):
            for kind, xs in (("cold connect", res[nd][0]), ("command on open conn", res[nd][1])):
                label = f"{kind} ({'nodelay' if nd else 'default'})"
                print(f"{label:34} "
                      f"{statistics.median(xs) * 1e3:8.2f}ms {_pct(xs, .1) * 1e3:8.2f}ms {_pct(xs, .9) * 1e3:8.2f}ms {len(xs):5}")
        ratio = statistics.median(res[False][1]) / statistics.median(res[True][1])
        print(f"per-command latency ratio default/nodelay: {ratio:.1f}x")
    finally:
        if tmp:
            labnetns.down(Path(tmp) / "lab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
