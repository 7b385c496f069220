"""`hwtests history`: a metric's per-run medians over time, per test and pair, with change points.

    hwtests history --metric cycles [--test GLOB] [--pair P] [--db URL] [--last N] [--json]

Change points come from `ruptures` (PELT, L1 cost: a piecewise-constant median model that
outliers barely move, as in asv's step detection). The series is scaled by its noise,
estimated robustly from first differences (MAD of y[i+1]-y[i], which steps do not
inflate), and the penalty is BIC-like, PENALTY_PER_LOG_N * log(n) in those units,
calibrated on noise-only series with 5% outliers (few false steps per hundred series).
Segments are at least MIN_SEGMENT runs long, so a single spike (or a two-run blip) can
never be a segment of its own; then every step smaller than the metric's magnitude floor
(research: 5% for cycles, 1% for gbps) is merged away, weakest first.

Why not Apache Otava (the maintained successor of Hunter/E-divisive): its wheel pins
numpy 2.2.0 and scipy <1.17 (a downgrade of what pandas here uses) and pulls BigQuery,
gRPC, Slack and pg8000 clients for its sinks; MongoDB's signal-processing-algorithms
needs an old gevent that does not build. ruptures depends on numpy and scipy only.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from . import identity
from .errors import InputError

MIN_SEGMENT = 3
PENALTY_PER_LOG_N = 3.0
# Minimum relative step per metric (research: nightly history floors).
MAGNITUDE_FLOOR = {"cycles": 0.05, "ns": 0.05, "gbps": 0.01, "cpu_per_gb": 0.02, "link_pct": 0.01,
                   "ceiling_pct": 0.01}
DEFAULT_FLOOR = 0.02


@dataclass
class ChangePoint:
    index: int          # first index of the new segment
    before: float       # median of the segment before
    after: float        # median of the segment from `index` on
    change_pct: float   # (after - before) / |before| * 100


def noise_sigma(values: Sequence[float]) -> float:
    """Robust noise of a piecewise-constant series: 1.4826 * MAD of first differences / sqrt(2)."""
    y = np.asarray(values, dtype=float)
    if len(y) < 3:
        return 0.0
    d = np.diff(y)
    s = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)
    if s <= 0:
        s = float(np.std(d)) / math.sqrt(2)
    return s


def _segments(y: np.ndarray, bkps: list[int]) -> list[tuple[int, int]]:
    edges = [0] + list(bkps) + [len(y)]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def _points(y: np.ndarray, bkps: list[int]) -> list[ChangePoint]:
    segs = _segments(y, bkps)
    out = []
    for (a, b), (c, d) in zip(segs, segs[1:]):
        before, after = float(np.median(y[a:b])), float(np.median(y[c:d]))
        ch = (after - before) / abs(before) * 100 if before != 0 else (math.inf if after != before else 0.0)
        out.append(ChangePoint(index=c, before=before, after=after, change_pct=ch))
    return out


def change_points(values: Sequence[float], metric: str | None = None, min_magnitude: float | None = None,
                  penalty: float | None = None, min_segment: int = MIN_SEGMENT) -> list[ChangePoint]:
    """Steps in a series of per-run medians (oldest first), at least `min_magnitude` (relative) each."""
    import ruptures as rpt

    y = np.asarray([v for v in values], dtype=float)
    if np.isnan(y).any():
        raise InputError("change_points: the series has missing values")
    n = len(y)
    if n < 2 * min_segment:
        return []
    floor = min_magnitude if min_magnitude is not None else MAGNITUDE_FLOOR.get(metric or "", DEFAULT_FLOOR)
    sigma = noise_sigma(y)
    scale = max(sigma, 1e-9 * max(1.0, float(np.median(np.abs(y)))))
    z = (y - float(np.median(y))) / scale
    pen = penalty if penalty is not None else PENALTY_PER_LOG_N * math.log(n)
    algo = rpt.Pelt(model="l1", min_size=min_segment, jump=1).fit(z.reshape(-1, 1))
    bkps = [b for b in algo.predict(pen=pen) if b < n]
    # merge steps below the floor, weakest first, re-measuring the neighbours each time
    while bkps:
        pts = _points(y, bkps)
        weakest = min(range(len(pts)), key=lambda i: abs(pts[i].change_pct))
        if abs(pts[weakest].change_pct) >= floor * 100:
            break
        del bkps[weakest]
    return _points(y, bkps)


# -- command ------------------------------------------------------------------------------

def series(store, metric: str, test_glob: str | None = None, pair: str | None = None,
           last: int | None = None) -> list[dict]:
    """Per test and pair: per-run medians ordered by run start, with change points."""
    df = store.samples(metric=metric, test_glob=test_glob, pair=pair)
    if df.empty:
        return []
    df = df.assign(pair=df["pair"].fillna(""))
    med = (df.groupby(["test", "pair", "run_id"], sort=False)
             .agg(value=("value", "median"), n=("value", "size"), label=("label", "first"),
                  started=("started", "first"), unit=("unit", "first"), better=("better", "first"))
             .reset_index().sort_values(["test", "pair", "started", "run_id"]))
    out = []
    for (test, p), g in med.groupby(["test", "pair"], sort=True):
        if last:
            g = g.tail(last)
        vals = g["value"].to_list()
        better = str(g["better"].iloc[0])
        cps = change_points(vals, metric=metric)
        labels = g["label"].to_list()
        points = []
        for cp in cps:
            worse = (cp.change_pct > 0) if better == "lower" else (cp.change_pct < 0)
            points.append(dict(asdict(cp), label=labels[cp.index], run_id=int(g["run_id"].iloc[cp.index]),
                               started=g["started"].iloc[cp.index].isoformat(), worse=bool(worse)))
        out.append({
            "test": test, "pair": p or None, "metric": metric, "unit": str(g["unit"].iloc[0]), "better": better,
            "floor_pct": MAGNITUDE_FLOOR.get(metric, DEFAULT_FLOOR) * 100,
            "runs": [{"run_id": int(r.run_id), "label": r.label, "started": r.started.isoformat(),
                      "median": float(r.value), "n": int(r.n)} for r in g.itertuples()],
            "change_points": points,
        })
    return out


def format_series(all_series: list[dict]) -> str:
    lines = []
    for s in all_series:
        lines.append(f"{s['test']}  pair {s['pair'] or '-'}  {s['metric']} ({s['unit']}, {s['better']} is better), "
                     f"{len(s['runs'])} runs")
        cps = {c["index"]: c for c in s["change_points"]}
        for i, r in enumerate(s["runs"]):
            mark = ""
            if i in cps:
                c = cps[i]
                mark = (f"  <-- step {c['before']:.4g} -> {c['after']:.4g} ({c['change_pct']:+.2f}%, "
                        f"{'worse' if c['worse'] else 'better'})")
            lines.append(f"  {r['started'][:16].replace('T', ' ')}  {r['label']:<24} {r['median']:>10.4g}  "
                         f"n={r['n']}{mark}")
        if not s["change_points"]:
            lines.append(f"  no change points (floor {s['floor_pct']:g}%, at least {MIN_SEGMENT} runs per segment)")
        lines.append("")
    lines.append(f"change points: ruptures PELT (L1 cost, penalty {PENALTY_PER_LOG_N:g}*log(n) in noise units), "
                 f"segments >= {MIN_SEGMENT} runs, steps below the metric's floor merged")
    return "\n".join(lines)


def add_command(sub) -> None:
    p = sub.add_parser("history", help="per-run medians of a metric over time, with change points",
                       description="The series of per-run medians of one metric, per test and pair, ordered by "
                                   "run time, with change points (steps) detected in it.")
    p.add_argument("--metric", required=True, metavar="NAME", help="cycles, ns, gbps, ...")
    p.add_argument("--test", metavar="GLOB", help="only tests matching this glob")
    p.add_argument("--pair", metavar="NAME", help="only this host pair")
    p.add_argument("--db", metavar="URL", help="results store: SQLite path (default .hwtests/results.db) or postgresql://...")
    p.add_argument("--last", type=int, default=200, metavar="N", help="most recent N runs per series (default 200)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from .store import Store

    if args.last is not None and args.last < 1:
        raise InputError("--last must be at least 1")
    store = Store.open(args.db, create=False)
    try:
        out = series(store, args.metric, test_glob=args.test, pair=args.pair, last=args.last)
        warnings = identity.conflicts(store.runs(labels=sorted({r["label"] for s in out for r in s["runs"]})))
        if not out:
            known = [] if args.metric in store.metrics() else store.metrics()
            raise InputError(f"no samples of metric '{args.metric}'"
                             + (f" matching --test {args.test}" if args.test else "")
                             + (f" on pair {args.pair}" if args.pair else "")
                             + (f"; known metrics: {', '.join(known)}" if known else ""))
    finally:
        store.close()
    for w in warnings:
        print(f"hwtests: WARNING: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps({"metric": args.metric, "series": out, "warnings": warnings}, indent=2))
    else:
        print(format_series(out))
    return 0
