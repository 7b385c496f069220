"""Time and peak memory of `write_report` for 10k, 100k and 1M stored samples.

Each size gets its own SQLite store, filled through the store API: two builds
(`base`, `patched`, 20 interleaved runs each, `patched` +1 cycle on one test) and
30 nightly builds for the history figures; 8 page_pool tests (cycles, ns) and one
line-rate test (gbps, cpu_per_gb). The report (`--builds base,patched`) is
rendered in a fresh child process; its wall time is measured inside the child,
its peak RSS by the parent from the child's rusage (os.wait4), so store filling
and the parent's memory do not count.

    .venv/bin/python benchmarks/report_scale.py [--sizes 10000,100000,1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TESTS = [f"pagepool/no-softirq-page_pool{i:02d}" for i in range(1, 5)] + \
        [f"pagepool/tasklet_page_pool{i:02d}_fast_path" for i in range(1, 5)]
AB_RUNS = 20          # per build
NIGHTLIES = 30        # one run each

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from hwtests.store import Store
from hwtests.report import write_report
t1 = time.perf_counter()
store = Store.open(sys.argv[1])
path = write_report(store, sys.argv[2], builds=["base", "patched"], baseline="base", title="scale benchmark")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "render_s": t2 - t1, "bytes": path.stat().st_size}))
"""


def _host(role, kernel, boot):
    from hwtests.store import HostInfo

    return HostInfo(role=role, name=f"host-{role}", kernel_release=kernel, proc_version=f"Linux version {kernel}",
                    config_hash="cfg-" + kernel[-4:], cmdline="ro quiet", boot_id=boot, nic_driver="mlx5_core",
                    nic_firmware="22.39.1002", env={"cpu_model": "Xeon Gold 6430", "governor": "performance"})


def fill(db: Path, n: int) -> int:
    """About `n` samples; returns the exact count."""
    from hwtests.store import Run, Sample, Store

    store = Store.open(str(db))
    rng = np.random.default_rng(0)
    runs = [("patched" if i % 2 else "base", i // 2) for i in range(2 * AB_RUNS)]
    runs = [(f"net-next-2026-10-{d + 1:02d}", d) for d in range(NIGHTLIES)] + runs
    n_metrics = len(TESTS) * 2 + 2
    reps = max(1, round(n / (len(runs) * n_metrics)))
    t0 = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    total = 0
    for k, (label, i) in enumerate(runs):
        boot = f"{label}-{i}"
        rid = store.begin_run(Run(label=label, pair="pair-a", controller="ctl", inventory_hash="inv-" + "0" * 60,
                                  source="measured", hosts=[_host("rx", label, boot), _host("tx", label, boot + "t")],
                                  started=t0 + dt.timedelta(hours=k), artifacts={"page_pool_bench.ko": "sha-" + label}))
        samples = []
        for j, test in enumerate(TESTS):
            d = 1.0 if (label == "patched" and j == 0) or (label.startswith("net-next") and i > 20 and j == 0) else 0.0
            cyc = 8.0 + d + rng.normal(0, 0.25, reps)
            for r, c in enumerate(cyc.tolist()):
                samples.append(Sample(test=test, metric="cycles", value=c, unit="cycles", better="lower",
                                      repetition=r, boot_id=boot))
                samples.append(Sample(test=test, metric="ns", value=c / 2.9, unit="ns", better="lower",
                                      repetition=r, boot_id=boot))
        for r, g in enumerate((93.5 + rng.normal(0, 0.3, reps)).tolist()):
            samples.append(Sample(test="linerate/devmem", metric="gbps", value=g, unit="Gbit/s", better="higher",
                                  repetition=r, boot_id=boot))
            samples.append(Sample(test="linerate/devmem", metric="cpu_per_gb", value=0.21 + g / 1e4, unit="cpu_s/GB",
                                  better="lower", repetition=r, boot_id=boot))
        store.add_samples(rid, samples)
        store.finish_run(rid)
        total += len(samples)
    return total


def measure(db: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    load = os.getloadavg()[0]
    wall0 = time.perf_counter()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - wall0
    stdout, stderr = p.stdout.read(), p.stderr.read()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"report child failed ({p.returncode}):\n{stderr.decode()[-3000:]}")
    res = json.loads(stdout.decode().strip().splitlines()[-1])
    res["wall_s"] = wall
    res["maxrss_mib"] = ru.ru_maxrss / 1024
    res["cpu_s"] = ru.ru_utime + ru.ru_stime        # the child and the figure processes it reaped
    res["load"] = load
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--keep", metavar="DIR", help="keep stores and reports here")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="hwtests-report-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'samples':>9} {'fill s':>7} {'render s':>9} {'child wall s':>12} {'child CPU s':>11} {'load':>5} "
          f"{'peak RSS MiB':>13} {'HTML MiB':>9}  raw CSV")
    try:
        for size in (int(s) for s in a.sizes.split(",")):
            db = work / f"store-{size}.db"
            if db.exists():
                db.unlink()
            t = time.perf_counter()
            n = fill(db, size)
            fill_s = time.perf_counter() - t
            out = work / f"report-{size}.html"
            r = measure(db, out)
            embedded = 'download="hwtests-samples.csv"' in out.read_text(encoding="utf-8")
            print(f"{n:>9} {fill_s:>7.1f} {r['render_s']:>9.2f} {r['wall_s']:>12.2f} {r['cpu_s']:>11.2f} "
                  f"{r['load']:>5.2f} {r['maxrss_mib']:>13.0f} "
                  f"{r['bytes'] / 2**20:>9.2f}  {'embedded' if embedded else 'not embedded (export command shown)'}",
                  flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("render s: write_report() in the child (store open, queries, figures, HTML); child wall s includes "
          "Python and library imports; child CPU s: user+sys of the child and its figure processes; load: "
          "1-minute load average before the child started (other work on the machine slows wall times); "
          "peak RSS: largest of the child and its figure processes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
