#!/usr/bin/env python3
"""Wall time of N host pairs one after another vs in parallel (`-n N`, pytest-xdist).

Builds a netns lab with --pairs pairs (root), writes a small test module whose
tests wait on both hosts of their pair (`sleep` over SSH: waiting, not
computing, so two shared cores are not the limit), and runs it through the
hwtests plugin twice in one go, in alternating order per round: serially and
with `-n N --dist loadgroup` (one worker per pair, each holding its pair's
lease). Every run stores into its own SQLite file; the script checks that all
pairs' results landed in it. Prints both medians and the ratio parallel/serial
(the target is <= 0.35 for 4 pairs).

    .venv/bin/python benchmarks/parallel_pairs.py [--pairs 4] [--tests 3] [--sleep 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwtests import labnetns  # noqa: E402

TEST_MODULE = '''
import pytest

SLEEP = {sleep}


@pytest.mark.parametrize("i", range({tests}))
def test_wait_on_both_hosts(hw_pair, hw_record, i):
    for he in (hw_pair.rx, hw_pair.tx):
        r = he.t.run(["sleep", str(SLEEP)], timeout=SLEEP + 30)
        assert r.ok
    hw_record("waited_s", SLEEP, "s", "lower", repetition=i)
'''


def run_once(inv: Path, tests_dir: Path, db: Path, workers: int) -> float:
    cmd = [sys.executable, "-m", "pytest", str(tests_dir), "-q", "-p", "no:cacheprovider", "--rootdir",
           str(tests_dir), "--inventory", str(inv), "--kernel-build", "bench", "--db", str(db)]
    if workers > 1:
        cmd += ["-n", str(workers), "--dist", "loadgroup"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tests_dir)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"pytest exited {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    return dt


def stored_pairs(db: Path) -> dict[str, int]:
    con = sqlite3.connect(str(db))
    rows = con.execute("SELECT r.pair, COUNT(*) FROM samples s JOIN runs r ON r.id = s.run_id GROUP BY r.pair")
    out = dict(rows.fetchall())
    con.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4, help="lab pairs = xdist workers (default 4)")
    ap.add_argument("--tests", type=int, default=3, help="tests per pair (default 3)")
    ap.add_argument("--sleep", type=float, default=2.0, help="seconds each test waits on each host (default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="serial/parallel rounds, order alternating (default 2)")
    args = ap.parse_args()
    if not (1 <= args.pairs <= 8 and 1 <= args.tests <= 20 and 0 < args.sleep <= 10 and 1 <= args.rounds <= 10):
        ap.error("bounds: pairs 1..8, tests 1..20, sleep 0..10, rounds 1..10")
    with tempfile.TemporaryDirectory(prefix="hwt-par-") as tmp:
        tmp = Path(tmp)
        state = tmp / "lab"
        print(f"building a netns lab with {args.pairs} pairs ...", flush=True)
        inv = labnetns.up(state, pairs=args.pairs)
        try:
            tests_dir = tmp / "suite"
            tests_dir.mkdir()
            (tests_dir / "test_wait.py").write_text(TEST_MODULE.format(sleep=args.sleep, tests=args.tests))
            serial, parallel = [], []
            for rnd in range(args.rounds):
                order = ("serial", "parallel") if rnd % 2 == 0 else ("parallel", "serial")
                for kind in order:
                    db = tmp / f"{kind}-{rnd}.db"
                    dt = run_once(inv, tests_dir, db, 1 if kind == "serial" else args.pairs)
                    got = stored_pairs(db)
                    want = {f"pair{i}": args.tests for i in range(1, args.pairs + 1)}
                    if got != want:
                        sys.exit(f"{kind}: stored samples per pair {got}, expected {want}")
                    (serial if kind == "serial" else parallel).append(dt)
                    print(f"round {rnd + 1} {kind:8s} {dt:6.1f} s  (all {args.pairs} pairs stored)", flush=True)
            s, p = statistics.median(serial), statistics.median(parallel)
            ideal = args.tests * 2 * args.sleep
            print(f"work per pair: {args.tests} tests x 2 hosts x {args.sleep:g} s = {ideal:g} s of waiting")
            print(f"median wall: serial {s:.1f} s, -n {args.pairs} {p:.1f} s; ratio parallel/serial {p / s:.3f} "
                  f"(target <= 0.35); load {os.getloadavg()[0]:.2f}")
        finally:
            labnetns.down(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
