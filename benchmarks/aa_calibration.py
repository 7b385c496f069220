#!/usr/bin/env python3
"""A/A calibration of the regression gate: false-alarm rate and detection rate.

From the results store (repeated runs of ONE build):

    python benchmarks/aa_calibration.py --db URL --label net-next --test 'pagepool/*' --metric cycles

  * false alarms: the build's runs are split in two at random many times (runs, not samples,
    are the unit, so boot and load effects stay inside a side); each split goes through the
    gate as baseline vs candidate; a "regression" verdict is a false alarm.
  * detection: the same splits with a synthetic change injected into the candidate half's
    real samples (cycles +0.5 and +1 cycle; gbps -1% and -2%; other metrics 1x and 2x their
    fail threshold in the worse direction); a "regression" verdict is a detection.

Without store data (or to see the gate on the research's noise model):

    python benchmarks/aa_calibration.py --synthetic [--splits 4000] [--runs-per-side 10] [--cap 30]

  cycles per run (one module load) 8.6 + N(0, 0.3) with 5% outlier loads +U(2, 5); gbps per
  run 94 * (1 + N(0, 1%)) with --bad-runs (default 3%) bad runs -U(5%, 20%); a fresh pool of
  runs for every split.

Each split is judged twice: once at --runs-per-side alone (one look at fail_p, the gate of a
single `hwtests compare`), and sequentially as `hwtests ab` does, with looks at
--runs-per-side, + --step, ... up to --cap runs per side, each look at its spent share of
fail_p, stopping at the first look that decides. The sequential figures include the mean
number of runs per side used.

Prints the rates with their counts and a 95% Wilson interval. A script that prints figures,
not a test.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hwtests import gate  # noqa: E402

SHIFTS = {"cycles": [("abs", 0.5), ("abs", 1.0)], "gbps": [("rel", -0.01), ("rel", -0.02)]}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def shifts_for(metric: str, better: str, th: gate.Threshold) -> list[tuple[str, float]]:
    if metric in SHIFTS:
        return SHIFTS[metric]
    sign = 1.0 if better == "lower" else -1.0
    if th.fail_abs is not None:
        return [("abs", sign * th.fail_abs), ("abs", sign * 2 * th.fail_abs)]
    return [("rel", sign * th.fail_rel), ("rel", sign * 2 * th.fail_rel)]


def inject(values: np.ndarray, kind: str, amount: float) -> np.ndarray:
    return values + amount if kind == "abs" else values * (1 + amount)


def describe_shift(kind: str, amount: float, unit: str) -> str:
    return f"{amount:+g} {unit}" if kind == "abs" else f"{amount * 100:+g}%"


# -- synthetic noise model (research: regression-stats, section 9) ---------------------------

def synth_runs(metric: str, n_runs: int, samples_per_run: int, rng: np.random.Generator,
               bad_runs: float = 0.03) -> list[np.ndarray]:
    runs = []
    for _ in range(n_runs):
        if metric == "cycles":
            v = 8.6 + rng.normal(0, 0.3, samples_per_run)
            if rng.random() < 0.05:
                v = v + rng.uniform(2, 5)
        else:
            v = 94 * (1 + rng.normal(0, 0.01, samples_per_run))
            if rng.random() < bad_runs:
                v = v * (1 - rng.uniform(0.05, 0.20))
        runs.append(v)
    return runs


# -- the calibration ---------------------------------------------------------------------------

def sequential(a_runs: list[np.ndarray], b_runs: list[np.ndarray], better: str, th: gate.Threshold,
               plan: gate.Plan, metric: str) -> tuple[str, int]:
    """The verdict of the first look that decides (or the last look's), and the runs per side it used."""
    sizes = plan.sizes()
    for k, n in enumerate(sizes, start=1):
        c = gate.compare_samples(np.concatenate(a_runs[:n]), np.concatenate(b_runs[:n]), better, th,
                                 metric=metric, plan=plan, look=k)
        if gate.decided(c):
            return c.verdict, n
    return c.verdict, sizes[-1]


def calibrate(pool_fn, metric: str, unit: str, better: str, th: gate.Threshold, splits: int, plan: gate.Plan,
              rng: np.random.Generator) -> dict:
    """pool_fn(rng) -> list of per-run sample arrays (>= 2 * plan.cap runs)."""
    per_side = plan.first
    conditions = ["aa"] + shifts_for(metric, better, th)
    single = {s: {v: 0 for v in gate.VERDICTS} for s in conditions}
    seq = {s: {v: 0 for v in gate.VERDICTS} for s in conditions}
    used = {s: 0 for s in conditions}
    n_samples = []
    for _ in range(splits):
        pool = pool_fn(rng)
        idx = rng.permutation(len(pool))[: 2 * plan.cap]
        a_runs = [pool[i] for i in idx[: plan.cap]]
        b_runs = [pool[i] for i in idx[plan.cap:]]
        a = np.concatenate(a_runs[:per_side])
        n_samples.append(len(a))
        for s in conditions:
            cand = b_runs if s == "aa" else [inject(r, *s) for r in b_runs]
            b = np.concatenate(cand[:per_side])
            single[s][gate.compare_samples(a, b, better, th, metric=metric).verdict] += 1
            verdict, n = sequential(a_runs, cand, better, th, plan, metric)
            seq[s][verdict] += 1
            used[s] += n
    return {"metric": metric, "unit": unit, "better": better, "threshold": th.describe(), "fail_p": th.fail_p,
            "splits": splits, "plan": plan, "samples_per_side": float(np.mean(n_samples)), "single": single, "sequential": seq,
            "used": used, "shifts": conditions[1:]}


def _rate(label: str, k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{label}: {k}/{n} = {k / n:.2%}  (95% CI {lo:.2%}..{hi:.2%})"


def report(name: str, res: dict) -> str:
    plan, n = res["plan"], res["splits"]
    levels = ", ".join(f"{gate.look_level(res['fail_p'], plan, k):.4f}" for k in range(1, plan.looks + 1))
    out = [f"{name}  metric {res['metric']} ({res['better']} is better)  gate: {res['threshold']}",
           f"  {n} random splits; first look {plan.first} runs per side ({res['samples_per_side']:.0f} samples), "
           f"sequential looks at {', '.join(map(str, plan.sizes()))} runs per side, p levels {levels}"]
    for kind in ("single", "sequential"):
        head = (f"  one look at {plan.first} runs per side:" if kind == "single"
                else f"  sequential, up to {plan.cap} runs per side:")
        out.append(head)
        v = res[kind]["aa"]
        line = "    " + _rate("A/A false-alarm rate", v["regression"], n)
        line += (f"; pass {v['pass']}, inconclusive {v['inconclusive']}, improvement {v['improvement']}")
        if kind == "sequential":
            line += f"; mean runs per side {res['used']['aa'] / n:.1f}"
        out.append(line)
        for kind_amount in res["shifts"]:
            v = res[kind][kind_amount]
            line = "    " + _rate(f"detection of {describe_shift(*kind_amount, res['unit']):>12}", v["regression"], n)
            line += f"; inconclusive {v['inconclusive']}, pass {v['pass']}"
            if kind == "sequential":
                line += f"; mean runs per side {res['used'][kind_amount] / n:.1f}"
            out.append(line)
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="results store URL (SQLite path or postgresql://...)")
    ap.add_argument("--label", help="the build whose repeated runs are split")
    ap.add_argument("--test", help="test glob (default: all)")
    ap.add_argument("--metric", help="metric (default: all; synthetic: cycles and gbps)")
    ap.add_argument("--pair", help="host pair")
    ap.add_argument("--synthetic", action="store_true", help="use the research's noise model instead of the store")
    ap.add_argument("--splits", type=int, default=2000,
                    help="random splits (default 2000: a 0.5%% rate is then 10 +- 3 false alarms)")
    ap.add_argument("--runs-per-side", type=int, default=10,
                    help="runs per side at the first look (default 10; store: at most half)")
    ap.add_argument("--step", type=int, help="runs per side added per look (default: --runs-per-side)")
    ap.add_argument("--cap", type=int, help="runs per side at the last look (default 3 x --runs-per-side; "
                    "store: at most half the build's runs)")
    ap.add_argument("--bad-runs", type=float, default=0.03,
                    help="synthetic gbps: fraction of bad runs -5..-20%% (default 0.03; 0 for pure 1%% CV)")
    ap.add_argument("--samples-per-run", type=int, default=1, help="synthetic: samples per run (default 1)")
    ap.add_argument("--threshold", action="append", default=[], help="gate override, e.g. cycles:fail_abs=0.5")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    th = gate.build_thresholds({}, args.threshold)
    step = args.step or args.runs_per_side
    cap = args.cap or 3 * args.runs_per_side
    t0 = time.perf_counter()
    if args.synthetic:
        metrics = [args.metric] if args.metric else ["cycles", "gbps"]
        for m in metrics:
            if m not in ("cycles", "gbps"):
                ap.error(f"--synthetic knows cycles and gbps, not {m}")
            better = "lower" if m == "cycles" else "higher"
            plan = gate.Plan(args.runs_per_side, step, cap)
            res = calibrate(lambda r, m=m: synth_runs(m, 2 * cap, args.samples_per_run, r, args.bad_runs), m,
                            "cycles" if m == "cycles" else "Gbit/s", better, gate.threshold_for(m, th),
                            args.splits, plan, rng)
            bad = f", {args.bad_runs:.0%} bad runs" if m == "gbps" else ""
            print(report(f"synthetic ({args.samples_per_run} sample(s) per run{bad})", res))
            print()
    else:
        if not (args.db and args.label):
            ap.error("give --db and --label (or --synthetic)")
        from hwtests.store import Store, redact_url
        store = Store.open(args.db)
        df = store.samples(labels=[args.label], test_glob=args.test, metric=args.metric, pair=args.pair)
        store.close()
        if df.empty:
            print(f"no samples of {args.label} in {redact_url(args.db)} match; use --synthetic", file=sys.stderr)
            return 2
        for (test, m), g in df.groupby(["test", "metric"], sort=True):
            runs = [grp["value"].to_numpy(dtype=float) for _, grp in g.groupby("run_id", sort=True)]
            per_side = min(args.runs_per_side, len(runs) // 2)
            if per_side < 2:
                print(f"{test} {m}: {len(runs)} run(s): need at least 4 runs of one build", file=sys.stderr)
                continue
            plan = gate.Plan(per_side, min(step, len(runs) // 2), max(per_side, min(cap, len(runs) // 2)))
            res = calibrate(lambda r, runs=runs: runs, m, str(g["unit"].iloc[0]), str(g["better"].iloc[0]),
                            gate.threshold_for(m, th), args.splits, plan, rng)
            print(report(f"{args.label} {test} ({len(runs)} runs in the store)", res))
            print()
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
