"""The regression gate: one-sided Mann-Whitney U on raw samples plus a minimum practical change.

A candidate build REGRESSES on a metric when both hold:
  1. a one-sided Mann-Whitney U test in the metric's "worse" direction gives p < fail_p, and
  2. the change is at least the fail threshold: the Hodges-Lehmann shift (median of all
     pairwise candidate-baseline differences) for absolute thresholds, the relative change of
     the medians for relative ones.
It IMPROVES when the same holds in the other direction (the symmetric one-sided test).
It PASSES when the worse-direction change is below the pass threshold or p > pass_p.
Anything else is INCONCLUSIVE, with one bounded piece of advice: how many more runs per side
would decide, or that the cap cannot decide it.

Sequential looks (`Plan`): when an inconclusive comparison is extended with more runs and
tested again, look k of K tests at its own share of fail_p, spent by a Pocock-type function
(`look_level`); the shares add up to fail_p, so the chance of any false regression over all
looks stays below fail_p whatever the looks' dependence (see docs/architecture.md, "The gate").

Defaults (from A/A-calibrated simulations, see docs): cycles fail at p < 0.01 and shift >= 0.5
cycle, pass below 0.25 cycle or p > 0.2; gbps fail at a 1% median drop, pass below 0.5%; ns
3% / 1.5%; other metrics 2% / 1%. Relative thresholds are fractions (0.01 = 1%).

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Sequence

import numpy as np

from .errors import InputError

VERDICTS = ("pass", "regression", "improvement", "inconclusive")
POWER = 0.95              # power aimed at when estimating runs needed
MWU_EFFICIENCY = 0.955    # asymptotic relative efficiency of MWU vs t on normal data
MAX_RUNS = 60             # per side: beyond this, fix the testbed's noise instead of adding runs
MIN_RUNS = 2              # per side, below this no test is run


@dataclass(frozen=True)
class Threshold:
    """Gate parameters of one metric. Exactly one of fail_abs/fail_rel and of pass_abs/pass_rel is set."""
    fail_p: float = 0.01
    pass_p: float = 0.2
    fail_abs: float | None = None
    fail_rel: float | None = None
    pass_abs: float | None = None
    pass_rel: float | None = None

    def fail_delta(self, baseline_median: float) -> float:
        """The fail threshold in the metric's unit."""
        if self.fail_abs is not None:
            return self.fail_abs
        return (self.fail_rel or 0.0) * abs(baseline_median)

    def describe(self) -> str:
        fail = f"{self.fail_abs:g}" if self.fail_abs is not None else f"{self.fail_rel * 100:g}%"
        ok = f"{self.pass_abs:g}" if self.pass_abs is not None else f"{self.pass_rel * 100:g}%"
        return f"fail p<{self.fail_p:g} and change>={fail}; pass change<{ok} or p>{self.pass_p:g}"


DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "cycles": Threshold(fail_abs=0.5, pass_abs=0.25),
    "gbps": Threshold(fail_rel=0.01, pass_rel=0.005),
    "ns": Threshold(fail_rel=0.03, pass_rel=0.015),
}
GENERIC_THRESHOLD = Threshold(fail_rel=0.02, pass_rel=0.01)
KEYS = ("fail_p", "pass_p", "fail_abs", "fail_rel", "pass_abs", "pass_rel")


def describe(thresholds: dict[str, Threshold] | None = None) -> str:
    th = thresholds or DEFAULT_THRESHOLDS
    parts = [f"{m}: {t.describe()}" for m, t in sorted(th.items())]
    parts.append(f"other metrics: {GENERIC_THRESHOLD.describe()}")
    return ("one-sided Mann-Whitney U on raw samples + Hodges-Lehmann shift (absolute) or median change "
            "(relative); " + "; ".join(parts))


@dataclass
class Comparison:
    test: str
    metric: str
    unit: str
    better: str
    n_base: int
    n_cand: int
    median_base: float
    median_cand: float
    iqr_base: float
    iqr_cand: float
    change_pct: float         # (median_cand - median_base) / |median_base| * 100
    shift: float              # Hodges-Lehmann estimate of candidate - baseline, in the metric's unit
    p_value: float            # one-sided p of the deciding direction (worse, or better for improvements)
    verdict: str
    more_runs: int | None     # inconclusive: additional runs (in runs_unit) to take; None: the cap cannot decide
    env_diff: list[str] = field(default_factory=list)
    pair: str | None = None
    note: str = ""
    threshold: Threshold | None = None
    look: str = ""            # "k/K" in a sequential plan, "" for a single comparison
    fail_level: float | None = None   # the p a regression needed at this look (fail_p, or its share in a plan)
    runs_unit: str = "run(s) per side"

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "threshold"}
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        d["threshold"] = self.threshold.describe() if self.threshold else None
        return d


# -- thresholds ---------------------------------------------------------------------------

def _valid(metric: str, t: Threshold) -> Threshold:
    for k in ("fail_p", "pass_p"):
        v = getattr(t, k)
        if not 0 < v < 1:
            raise InputError(f"threshold {metric}.{k}={v:g}: must be between 0 and 1")
    for k in ("fail_rel", "pass_rel"):
        v = getattr(t, k)
        if v is not None and not 0 < v < 1:
            raise InputError(f"threshold {metric}.{k}={v:g}: relative thresholds are fractions (0.01 = 1%), "
                             "between 0 and 1")
    for k in ("fail_abs", "pass_abs"):
        v = getattr(t, k)
        if v is not None and v < 0:
            raise InputError(f"threshold {metric}.{k}={v:g}: must not be negative")
    if (t.fail_abs is None) == (t.fail_rel is None):
        raise InputError(f"threshold {metric}: give exactly one of fail_abs and fail_rel")
    if (t.pass_abs is None) == (t.pass_rel is None):
        raise InputError(f"threshold {metric}: give exactly one of pass_abs and pass_rel")
    if t.fail_abs is not None and t.pass_abs is not None and t.pass_abs > t.fail_abs:
        raise InputError(f"threshold {metric}: pass_abs {t.pass_abs:g} is above fail_abs {t.fail_abs:g}")
    if t.fail_rel is not None and t.pass_rel is not None and t.pass_rel > t.fail_rel:
        raise InputError(f"threshold {metric}: pass_rel {t.pass_rel:g} is above fail_rel {t.fail_rel:g}")
    if t.pass_p < t.fail_p:
        raise InputError(f"threshold {metric}: pass_p {t.pass_p:g} is below fail_p {t.fail_p:g}")
    return t


def _override(metric: str, base: Threshold, values: dict[str, float]) -> Threshold:
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise InputError(f"threshold {metric}: unknown field(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    ch = dict(values)
    if "fail_abs" in ch and "fail_rel" not in ch:
        ch["fail_rel"] = None
    if "fail_rel" in ch and "fail_abs" not in ch:
        ch["fail_abs"] = None
    if "pass_abs" in ch and "pass_rel" not in ch:
        ch["pass_rel"] = None
    if "pass_rel" in ch and "pass_abs" not in ch:
        ch["pass_abs"] = None
    t = replace(base, **ch)
    if "pass_abs" not in values and "pass_rel" not in values:   # fail kind changed alone: pass = half of fail
        if t.fail_abs is not None and t.pass_abs is None:
            t = replace(t, pass_abs=t.fail_abs / 2, pass_rel=None)
        elif t.fail_rel is not None and t.pass_rel is None:
            t = replace(t, pass_rel=t.fail_rel / 2, pass_abs=None)
        elif t.fail_abs is not None and t.pass_abs is not None and t.pass_abs > t.fail_abs:
            t = replace(t, pass_abs=t.fail_abs / 2)
        elif t.fail_rel is not None and t.pass_rel is not None and t.pass_rel > t.fail_rel:
            t = replace(t, pass_rel=t.fail_rel / 2)
    return _valid(metric, t)


def parse_cli_threshold(spec: str) -> tuple[str, dict[str, float]]:
    """'cycles:fail_abs=0.5,pass_abs=0.2' -> ('cycles', {'fail_abs': 0.5, 'pass_abs': 0.2})."""
    metric, sep, rest = spec.partition(":")
    if not sep or not metric or not rest:
        raise InputError(f"--threshold {spec!r}: expected METRIC:FIELD=VALUE[,FIELD=VALUE] "
                         "(e.g. cycles:fail_abs=0.5)")
    out: dict[str, float] = {}
    for item in rest.split(","):
        k, eq, v = item.partition("=")
        k = k.strip()
        if not eq or k not in KEYS:
            raise InputError(f"--threshold {spec!r}: {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(KEYS)}")
        try:
            out[k] = float(v.rstrip("%")) / 100 if v.strip().endswith("%") else float(v)
        except ValueError:
            raise InputError(f"--threshold {spec!r}: {v!r} is not a number") from None
    return metric.strip(), out


def build_thresholds(config: dict | None = None, cli: Iterable[str] = ()) -> dict[str, Threshold]:
    """Defaults, then the inventory's `thresholds:` mapping, then `--threshold` specs (last wins)."""
    th = dict(DEFAULT_THRESHOLDS)
    for metric, values in (config or {}).items():
        if isinstance(values, Threshold):
            th[metric] = _valid(metric, values)
            continue
        if not isinstance(values, dict):
            raise InputError(f"thresholds.{metric}: expected a mapping of {', '.join(KEYS)}")
        th[metric] = _override(metric, th.get(metric, GENERIC_THRESHOLD), {k: float(v) for k, v in values.items()})
    for spec in cli:
        metric, values = parse_cli_threshold(spec)
        th[metric] = _override(metric, th.get(metric, GENERIC_THRESHOLD), values)
    return th


def threshold_for(metric: str, thresholds: dict[str, Threshold] | None = None) -> Threshold:
    th = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    return th.get(metric) or DEFAULT_THRESHOLDS.get(metric) or GENERIC_THRESHOLD


# -- statistics ---------------------------------------------------------------------------

def hodges_lehmann(base: Sequence[float], cand: Sequence[float]) -> float:
    """Median of all pairwise differences cand_j - base_i."""
    b = np.asarray(base, dtype=float)
    c = np.asarray(cand, dtype=float)
    if len(b) == 0 or len(c) == 0:
        return float("nan")
    if len(b) * len(c) > 4_000_000:    # huge sides: subsample deterministically, the estimate barely moves
        rng = np.random.default_rng(0)
        b = rng.choice(b, size=min(len(b), 2000), replace=False)
        c = rng.choice(c, size=min(len(c), 2000), replace=False)
    return float(np.median(np.subtract.outer(c, b)))


def mwu_p(x: Sequence[float], y: Sequence[float], alternative: str) -> float:
    """One-sided Mann-Whitney U p-value that x is stochastically `alternative` ('greater'/'less') than y.

    Exact distribution for small samples without ties; otherwise the normal approximation with
    tie correction and continuity correction (exact p-values are wrong under ties).
    """
    from scipy.stats import mannwhitneyu

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    both = np.concatenate([x, y])
    ties = len(np.unique(both)) < len(both)
    method = "exact" if (not ties and min(len(x), len(y)) <= 8 and len(x) + len(y) <= 40) else "asymptotic"
    res = mannwhitneyu(x, y, alternative=alternative, method=method, use_continuity=True)
    p = float(res.pvalue)
    return min(1.0, p) if math.isfinite(p) else 1.0


def iqr(v: Sequence[float]) -> float:
    a = np.asarray(v, dtype=float)
    if len(a) == 0:
        return float("nan")
    q1, q3 = np.percentile(a, [25, 75])
    return float(q3 - q1)


def robust_sigma(v: Sequence[float]) -> float:
    """IQR/1.349, or 1.4826*MAD when the IQR is 0 (heavily tied), else 0."""
    a = np.asarray(v, dtype=float)
    if len(a) < 2:
        return 0.0
    s = iqr(a) / 1.349
    if s <= 0:
        s = 1.4826 * float(np.median(np.abs(a - np.median(a))))
    if s <= 0:
        s = float(np.std(a, ddof=1))
    return s


def min_runs_for(p: float) -> int:
    """Smallest n per side for which a one-sided MWU can reach p (1/C(2n, n) < p)."""
    n = 2
    while 1.0 / math.comb(2 * n, n) >= p and n < 50:
        n += 1
    return n


def runs_needed(base: Sequence[float], cand: Sequence[float], delta: float, alpha: float, power: float = POWER) -> int:
    """Runs per side to detect a shift of `delta` at one-sided `alpha` with `power` (normal approximation)."""
    from scipy.stats import norm

    nb, nc = len(base), len(cand)
    sb, sc = robust_sigma(base), robust_sigma(cand)
    dof = max(1, (nb - 1) + (nc - 1))
    sigma = math.sqrt((sb ** 2 * max(nb - 1, 0) + sc ** 2 * max(nc - 1, 0)) / dof)
    floor = min_runs_for(alpha)
    if delta <= 0 or not math.isfinite(delta):
        return MAX_RUNS
    if sigma <= 0:
        return floor
    z = norm.ppf(1 - alpha) + norm.ppf(power)
    n = 2 * z * z * (sigma / delta) ** 2 / MWU_EFFICIENCY
    return max(floor, int(math.ceil(n)))


# -- sequential plan ------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Looks at `first`, `first + step`, ... up to `cap` runs (in `unit`), fixed before any data.

    Fixing the looks in advance fixes each look's share of fail_p in advance (`look_level`),
    which is what lets a comparison stop at its first decisive look without inflating false alarms.
    """
    first: int
    step: int
    cap: int
    unit: str = "run(s) per side"

    def __post_init__(self) -> None:
        if self.first < 1 or self.step < 1 or self.cap < self.first:
            raise InputError(f"sequential plan: first {self.first}, step {self.step}, cap {self.cap}: "
                             "need first >= 1, step >= 1 and cap >= first")

    def sizes(self) -> list[int]:
        out = [self.first]
        while out[-1] < self.cap:
            out.append(min(self.cap, out[-1] + self.step))
        return out

    @property
    def looks(self) -> int:
        return len(self.sizes())


def spent(alpha: float, t: float) -> float:
    """Pocock-type alpha spending (Lan-DeMets): alpha * ln(1 + (e - 1) t) at information fraction t.

    It spends more early than O'Brien-Fleming's, so the first look, where most comparisons
    stop, keeps most of its power; spent(alpha, 1) == alpha.
    """
    t = min(1.0, max(0.0, t))
    return alpha * math.log(1 + (math.e - 1) * t)


def look_level(alpha: float, plan: Plan, look: int) -> float:
    """One-sided level of look `look` (1-based): the alpha spent since the previous look.

    The levels add up to alpha, so by the union bound the chance of a false regression at any
    look is at most alpha, however the looks' statistics depend on each other.
    """
    sizes = plan.sizes()
    if not 1 <= look <= len(sizes):
        raise InputError(f"sequential plan: look {look} of {len(sizes)} does not exist")
    prev = sizes[look - 2] / plan.cap if look > 1 else 0.0
    return spent(alpha, sizes[look - 1] / plan.cap) - spent(alpha, prev)


NOISE_HINT = "reduce the testbed's noise (governor, boost, SMT, pinning) rather than adding runs"


def _more_runs(b: np.ndarray, c: np.ndarray, t: Threshold, level: float, plan: Plan | None,
               look: int) -> tuple[int | None, str]:
    """The one piece of advice of an inconclusive comparison: (runs to add, "") or (None, why more won't do).

    Without a plan the cap is MAX_RUNS per side and the runs come from the normal-approximation
    estimate; in a plan they are the plan's next step, up to its last look. (No futility stop
    inside a plan: from the first look's 10 runs, outliers inflate the noise estimate enough to
    stop comparisons that the next look would decide; the calibration showed it costing 3% of
    the detections of a 2% throughput drop.)
    """
    n = min(len(b), len(c))
    if plan is None:
        need = runs_needed(b, c, t.fail_delta(float(np.median(b))), level) if n >= MIN_RUNS else min_runs_for(level)
        if n >= MAX_RUNS or need > MAX_RUNS:
            return None, f"{MAX_RUNS} runs per side cannot decide it; {NOISE_HINT}"
        return min(MAX_RUNS - n, max(1, need - n)), ""
    sizes = plan.sizes()
    if look >= len(sizes):
        return None, f"still undecided at the cap of {plan.cap} {plan.unit}; {NOISE_HINT}, or raise the cap"
    return sizes[look] - sizes[look - 1], ""


def decided(c: Comparison) -> bool:
    """True when more runs are not to be taken: a verdict, or an inconclusive the cap cannot decide."""
    return c.verdict != "inconclusive" or not c.more_runs


def advice(c: Comparison) -> str:
    """The one line an inconclusive comparison gives: how many more runs, or why more runs won't decide."""
    if c.verdict != "inconclusive":
        return ""
    if c.more_runs:
        return f"inconclusive: take {c.more_runs} more {c.runs_unit}"
    return f"inconclusive: {c.note}" if c.note else "inconclusive"


def compare_samples(base: Sequence[float], cand: Sequence[float], better: str,
                    threshold: Threshold | None = None, *, test: str = "", metric: str = "", unit: str = "",
                    env_diff: list[str] | None = None, pair: str | None = None,
                    plan: Plan | None = None, look: int = 1) -> Comparison:
    """The gate's verdict on raw samples of one test and metric (at look `look` of `plan`, if given)."""
    if better not in ("lower", "higher"):
        raise InputError(f"{test}:{metric}: better must be 'lower' or 'higher', not {better!r}")
    t = threshold or threshold_for(metric)
    level = look_level(t.fail_p, plan, look) if plan else t.fail_p
    b = np.asarray([x for x in base if x is not None and math.isfinite(x)], dtype=float)
    c = np.asarray([x for x in cand if x is not None and math.isfinite(x)], dtype=float)
    nb, nc = len(b), len(c)
    med_b = float(np.median(b)) if nb else float("nan")
    med_c = float(np.median(c)) if nc else float("nan")
    change = (med_c - med_b) / abs(med_b) * 100 if nb and nc and med_b != 0 else float("nan")
    shift = hodges_lehmann(b, c)
    common = dict(test=test, metric=metric, unit=unit, better=better, n_base=nb, n_cand=nc,
                  median_base=med_b, median_cand=med_c, iqr_base=iqr(b), iqr_cand=iqr(c), change_pct=change,
                  shift=shift, env_diff=list(env_diff or []), pair=pair, threshold=t,
                  look=f"{look}/{plan.looks}" if plan else "", fail_level=level,
                  runs_unit=plan.unit if plan else "run(s) per side")
    floor = min_runs_for(level)
    if nb < MIN_RUNS or nc < MIN_RUNS:
        missing = "baseline" if nb < MIN_RUNS else "candidate"
        more, why = _more_runs(b, c, t, level, plan, look)
        return Comparison(**common, p_value=float("nan"), verdict="inconclusive", more_runs=more,
                          note=why or f"{missing} has {nb if missing == 'baseline' else nc} sample(s); "
                                      f"the gate needs at least {floor} per side")

    worse_alt = "greater" if better == "lower" else "less"
    better_alt = "less" if better == "lower" else "greater"
    p_worse = mwu_p(c, b, worse_alt)
    p_better = mwu_p(c, b, better_alt)
    sign = 1.0 if better == "lower" else -1.0            # positive = worse
    worse_abs = sign * shift
    worse_rel = sign * change / 100 if math.isfinite(change) else float("nan")

    def magnitude(abs_thr, rel_thr) -> tuple[float, float]:
        return (worse_abs, abs_thr) if abs_thr is not None else (worse_rel, rel_thr)

    mag, fail = magnitude(t.fail_abs, t.fail_rel)
    pmag, passthr = magnitude(t.pass_abs, t.pass_rel)
    note = ""
    if p_worse < level and mag >= fail:
        verdict, p = "regression", p_worse
    elif p_better < level and -mag >= fail:
        verdict, p = "improvement", p_better
    elif pmag < passthr or p_worse > t.pass_p:
        verdict, p = "pass", p_worse
    else:
        verdict, p = "inconclusive", p_worse
    more = None
    if verdict == "inconclusive":
        more, note = _more_runs(b, c, t, level, plan, look)
    elif min(nb, nc) < floor and verdict == "pass" and p_worse <= t.pass_p:
        note = f"fewer than {floor} runs per side: MWU cannot reach p<{level:.2g}"
    return Comparison(**common, p_value=p, verdict=verdict, more_runs=more, note=note)


def exit_code(comparisons: Iterable[Comparison]) -> int:
    """0 nothing regressed, 1 any regression, 3 only inconclusive results stand in the way."""
    from .errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_OK

    verdicts = {c.verdict for c in comparisons}
    if "regression" in verdicts:
        return EXIT_FAIL
    if "inconclusive" in verdicts:
        return EXIT_INCONCLUSIVE
    return EXIT_OK
