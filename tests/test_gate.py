"""The regression gate: verdicts, directions, ties, thresholds, runs-needed estimate, properties."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from hwtests import gate
from hwtests.errors import InputError
from hwtests.gate import Threshold, compare_samples

REPO = Path(__file__).resolve().parent.parent


def cycles(rng, n, mu=8.6, sigma=0.3, outliers=0.1):
    v = mu + rng.normal(0, sigma, n)
    o = rng.random(n) < outliers
    v[o] += rng.uniform(1, 5, o.sum())
    return v


def gbps(rng, n, factor=1.0, cv=0.005):
    return 94 * (1 + rng.normal(0, cv, n)) * factor


def test_cycles_verdicts():
    rng = np.random.default_rng(11)
    base = cycles(rng, 10)
    assert compare_samples(base, cycles(rng, 10, 9.6), "lower", metric="cycles").verdict == "regression"
    clean = cycles(rng, 10, outliers=0)
    assert compare_samples(clean, cycles(rng, 10, 7.6, outliers=0), "lower", metric="cycles").verdict == "improvement"
    c = compare_samples(base, cycles(rng, 10, 8.6), "lower", metric="cycles")
    assert c.verdict == "pass" and c.more_runs is None
    c = compare_samples(base, cycles(rng, 10, 8.7), "lower", metric="cycles")
    assert c.verdict != "regression"


def test_gbps_direction_is_higher_better():
    rng = np.random.default_rng(3)
    base = gbps(rng, 10)
    c = compare_samples(base, gbps(rng, 10, 0.98), "higher", metric="gbps", unit="Gbit/s")
    assert c.verdict == "regression" and c.change_pct < -1.5 and c.shift < 0
    assert compare_samples(base, gbps(rng, 10, 1.02), "higher", metric="gbps").verdict == "improvement"
    assert compare_samples(base, gbps(rng, 10, 1.0), "higher", metric="gbps").verdict == "pass"
    # the same drop on a lower-is-better metric is an improvement
    assert compare_samples(base, gbps(rng, 10, 0.98), "lower", metric="gbps").verdict == "improvement"


def test_significant_but_tiny_change_is_not_a_regression():
    rng = np.random.default_rng(5)
    base = 8.6 + rng.normal(0, 0.02, 30)
    cand = 8.7 + rng.normal(0, 0.02, 30)        # p is tiny, but 0.1 cycle is below the 0.25 pass threshold
    c = compare_samples(base, cand, "lower", metric="cycles")
    assert c.p_value < 1e-6 and c.verdict == "pass"


def test_inconclusive_estimates_more_runs():
    base = [8.6, 8.9, 8.3, 8.7, 8.5]
    cand = [9.0, 9.3, 8.7, 9.2, 8.8]               # +0.4 shift, p just above 0.01 at n=5
    c = compare_samples(base, cand, "lower", metric="cycles")
    assert c.verdict == "inconclusive"
    assert 1 <= c.more_runs <= gate.MAX_RUNS
    assert c.p_value > 0.01


def test_noisy_inconclusive_is_capped_and_says_why():
    base = 8.6 + 3.0 * norm.ppf((np.arange(1, 11) - 0.5) / 10)     # sigma 3 cycles: a broken testbed
    cand = base + 2.0                                               # p ~ 0.07: neither pass nor fail
    c = compare_samples(base, cand, "lower", metric="cycles")
    assert c.verdict == "inconclusive"
    # one message: the cap cannot decide it (no "take 50 more" next to "about N runs would be needed")
    assert c.more_runs is None and "noise" in c.note and f"{gate.MAX_RUNS} runs per side cannot decide" in c.note
    assert gate.advice(c) == f"inconclusive: {c.note}"
    assert gate.decided(c)


def test_too_few_samples():
    c = compare_samples([8.6], [9.6, 9.7, 9.5], "lower", metric="cycles")
    assert c.verdict == "inconclusive" and c.n_base == 1 and math.isnan(c.p_value)
    assert c.more_runs >= 1 and "baseline" in c.note
    c = compare_samples([8.6, 8.7], [], "lower", metric="cycles")
    assert c.verdict == "inconclusive" and c.n_cand == 0 and "candidate" in c.note


def test_integer_cycles_with_ties_work():
    rng = np.random.default_rng(8)
    base = np.floor(cycles(rng, 15, 8.4, 0.35, 0.05))
    cand = np.floor(cycles(rng, 15, 9.4, 0.35, 0.05))
    assert len(np.unique(np.r_[base, cand])) < 6        # heavily tied
    c = compare_samples(base, cand, "lower", metric="cycles")
    assert c.verdict == "regression" and math.isfinite(c.p_value)
    assert compare_samples(base, base.copy(), "lower", metric="cycles").verdict == "pass"


def test_hodges_lehmann_and_iqr():
    assert gate.hodges_lehmann([1, 2, 3], [2, 3, 4]) == 1.0
    assert gate.hodges_lehmann([0, 0, 0, 0], [0, 0, 0, 100]) == 0.0      # robust to one outlier
    assert gate.iqr([1, 2, 3, 4, 5]) == 2.0


def test_mwu_exact_for_small_untied_samples():
    # all candidate values above all baseline values, n=5 each: exact one-sided p = 1/C(10,5)
    p = gate.mwu_p([6, 7, 8, 9, 10], [1, 2, 3, 4, 5], "greater")
    assert p == pytest.approx(1 / math.comb(10, 5))
    assert gate.min_runs_for(0.01) == 5


def test_runs_needed_matches_normal_approximation():
    # samples with an exact robust sigma: normal quantiles
    q = norm.ppf((np.arange(1, 201) - 0.5) / 200)
    for sigma, delta in ((0.35, 1.0), (0.94, 1.88), (3.0, 1.0)):
        x = q * sigma
        x *= sigma / gate.robust_sigma(x)           # make the IQR-based sigma exact
        z = norm.ppf(0.99) + norm.ppf(0.95)
        want = max(5, math.ceil(2 * z * z * (sigma / delta) ** 2 / 0.955))
        assert gate.runs_needed(x, x, delta, 0.01) == want
    # research's figures: sigma 0.35 / delta 1 cycle -> ~4, raised to 5 (MWU's minimum for p < 0.01);
    # CV 1% at 94 Gbit/s against the 1% fail threshold -> 33.02, rounded up
    x = q * 0.35 / gate.robust_sigma(q)
    assert gate.runs_needed(x, x, 1.0, 0.01) == 5
    x = 94 + q * 0.94 / gate.robust_sigma(q)
    assert gate.runs_needed(x, x, 0.94, 0.01) == 34


def test_threshold_overrides():
    th = gate.build_thresholds({"cycles": {"fail_abs": 1.0}, "gbps": {"fail_rel": 0.02, "pass_rel": 0.01},
                                "cpu_per_gb": {"fail_rel": 0.05}},
                               ["cycles:pass_abs=0.3,fail_p=0.005", "ns:fail_abs=0.5"])
    assert th["cycles"] == Threshold(fail_p=0.005, fail_abs=1.0, pass_abs=0.3)
    assert th["gbps"].fail_rel == 0.02 and th["gbps"].pass_rel == 0.01
    assert th["cpu_per_gb"].fail_rel == 0.05 and th["cpu_per_gb"].pass_rel == 0.01   # generic pass kept
    assert th["ns"].fail_abs == 0.5 and th["ns"].fail_rel is None and th["ns"].pass_abs == 0.25
    assert gate.parse_cli_threshold("gbps:fail_rel=2%") == ("gbps", {"fail_rel": 0.02})
    assert gate.threshold_for("unknown_metric", th) == gate.GENERIC_THRESHOLD
    rng = np.random.default_rng(11)
    base, cand = cycles(rng, 10), cycles(rng, 10, 9.6)
    assert compare_samples(base, cand, "lower", gate.build_thresholds(None, ["cycles:fail_abs=2"])["cycles"],
                           metric="cycles").verdict != "regression"


@pytest.mark.parametrize("config,cli,msg", [
    ({"cycles": {"fail_rel": 1.5}}, [], "fractions"),
    ({"cycles": {"nonsense": 1}}, [], "unknown field"),
    ({"cycles": {"pass_abs": 0.9}}, [], "above fail_abs"),
    ({"cycles": {"fail_p": 0.5, "pass_p": 0.1}}, [], "below fail_p"),
    ({}, ["cycles"], "METRIC:FIELD=VALUE"),
    ({}, ["cycles:fail_abs=lots"], "not a number"),
    ({}, ["cycles:bogus=1"], "FIELD one of"),
])
def test_threshold_errors(config, cli, msg):
    with pytest.raises(InputError, match=msg):
        gate.build_thresholds(config, cli)


def test_exit_code():
    def c(v):
        return gate.Comparison("t", "cycles", "cycles", "lower", 10, 10, 8.6, 8.6, 0.3, 0.3, 0.0, 0.0, 0.5, v, None)
    assert gate.exit_code([c("pass"), c("improvement")]) == 0
    assert gate.exit_code([c("pass"), c("inconclusive")]) == 3
    assert gate.exit_code([c("inconclusive"), c("regression")]) == 1
    assert gate.exit_code([]) == 0


samples_st = st.lists(st.floats(min_value=5, max_value=15, allow_nan=False, width=32), min_size=3, max_size=25)


@settings(max_examples=150, deadline=None)
@given(base=samples_st, cand=samples_st, offset=st.floats(min_value=-3, max_value=3, width=32))
def test_properties(base, cand, offset):
    th = gate.DEFAULT_THRESHOLDS["cycles"]
    a = compare_samples(base, cand, "lower", th, metric="cycles")
    assert a.verdict in gate.VERDICTS
    assert 0 <= a.p_value <= 1
    # swapping the sides swaps regression and improvement (absolute thresholds: HL and MWU are antisymmetric)
    b = compare_samples(cand, base, "lower", th, metric="cycles")
    swap = {"regression": "improvement", "improvement": "regression"}
    if a.verdict in swap:
        assert b.verdict == swap[a.verdict]
    # the same data read as higher-is-better flips the direction
    h = compare_samples(base, cand, "higher", th, metric="cycles")
    if a.verdict in swap:
        assert h.verdict == swap[a.verdict]
    # moving both sides by the same amount changes nothing (absolute threshold, rank test)
    s = compare_samples([x + offset for x in base], [x + offset for x in cand], "lower", th, metric="cycles")
    if abs(a.shift - s.shift) < 1e-6:       # float rounding of the offset may move ties
        assert s.verdict == a.verdict or abs(abs(a.shift) - th.fail_abs) < 1e-3 or abs(abs(a.shift) - th.pass_abs) < 1e-3
    if a.verdict == "inconclusive":
        assert (a.more_runs is None and "cannot decide" in a.note) or 1 <= a.more_runs <= gate.MAX_RUNS - min(len(base), len(cand))
        assert_one_number(gate.advice(a), a.more_runs or gate.MAX_RUNS)


def test_aa_calibration_smoke():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "aa_calibration.py"), "--synthetic",
                        "--splits", "20", "--runs-per-side", "5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("A/A false-alarm rate:") == 4          # one look and sequential, cycles and gbps
    assert r.stdout.count("mean runs per side") == 6 and "looks at 5, 10, 15 runs per side" in r.stdout
    assert "detection of" in r.stdout and "+1 cycles" in r.stdout and "-2%" in r.stdout


# -- the sequential rule --------------------------------------------------------------------

PLAN = gate.Plan(10, 10, 30)


def assert_one_number(msg: str, expected: int) -> None:
    """The advice names one count of runs, the expected one (never two different numbers)."""
    numbers = {int(x) for x in re.findall(r"\b\d+\b", msg)}
    assert numbers <= {expected}, msg


def run_plan(base_runs, cand_runs, plan=PLAN, metric="cycles", better="lower"):
    """The looks a caller takes: compare at each planned size until a look decides. -> all looks' comparisons."""
    out = []
    for k, n in enumerate(plan.sizes(), start=1):
        c = compare_samples(base_runs[:n], cand_runs[:n], better, metric=metric, plan=plan, look=k)
        out.append(c)
        if gate.decided(c):
            break
    return out


@pytest.mark.parametrize("plan", [gate.Plan(10, 10, 30), gate.Plan(2, 2, 6), gate.Plan(10, 5, 22), gate.Plan(4, 1, 4)])
def test_look_levels_spend_exactly_fail_p(plan):
    levels = [gate.look_level(0.01, plan, k) for k in range(1, plan.looks + 1)]
    assert plan.sizes()[-1] == plan.cap and plan.sizes() == sorted(set(plan.sizes()))
    assert math.isclose(sum(levels), 0.01, rel_tol=1e-12)       # union bound: any-look false alarm <= fail_p
    assert all(lv > 0 for lv in levels)
    if plan.looks == 1:
        assert levels == [pytest.approx(0.01)]                 # one look is the fixed-sample gate
    else:
        assert levels[0] > 0.01 / plan.looks                    # Pocock-type: the first look gets the most
    with pytest.raises(InputError, match="look"):
        gate.look_level(0.01, plan, plan.looks + 1)


def test_plan_rejects_nonsense():
    for args in ((0, 1, 5), (5, 0, 10), (10, 5, 8)):
        with pytest.raises(InputError, match="sequential plan"):
            gate.Plan(*args)


def _outlier_heavy(shift: float):
    """+shift cycles, sd 0.3, two outlier loads in the first 10 of the baseline: inconclusive at the first look."""
    z = norm.ppf((np.arange(1, 31) - 0.5) / 30)
    rng = np.random.default_rng(4)
    base = 8.6 + 0.3 * rng.permutation(z)
    cand = 8.6 + shift + 0.3 * rng.permutation(z)
    base[[2, 7]] += [3.5, 4.5]
    return base, cand


def test_sequential_decides_a_clear_shift_after_extension():
    base, cand = _outlier_heavy(1.0)
    single = compare_samples(base[:10], cand[:10], "lower", metric="cycles")
    looks = run_plan(base, cand)
    assert looks[0].verdict == "inconclusive" and looks[0].more_runs == 10 and looks[0].look == "1/3"
    assert gate.advice(looks[0]) == "inconclusive: take 10 more run(s) per side"
    assert looks[-1].verdict == "regression" and len(looks) >= 2
    assert looks[-1].p_value < looks[-1].fail_level == pytest.approx(gate.look_level(0.01, PLAN, len(looks)))
    assert single.verdict != "regression"       # what one look at 10 runs said


def test_sequential_stays_pass_on_aa_data():
    rng = np.random.default_rng(2026)
    verdicts = []
    used = []
    for _ in range(300):
        base, cand = cycles(rng, 30, outliers=0.05), cycles(rng, 30, outliers=0.05)
        looks = run_plan(base, cand)
        verdicts.append(looks[-1].verdict)
        used.append(looks[-1].n_base)
    assert verdicts.count("regression") <= 1            # the bound is 1% = 3 of 300; the effect floor keeps it ~0
    assert verdicts.count("pass") >= 290
    assert np.mean(used) < 13                            # A/A rarely needs the extra looks


def test_sequential_respects_the_cap_and_says_so():
    z = np.tile(norm.ppf((np.arange(1, 11) - 0.5) / 10), 3)   # every look sees the same spread
    base = 8.6 + 3.0 * z                                        # sigma 3 cycles: a broken testbed
    cand = base + 1.5                                           # p 0.13, 0.06, 0.03 at 10, 20, 30 runs
    looks = run_plan(base, cand)
    assert [c.look for c in looks] == ["1/3", "2/3", "3/3"]
    assert [c.n_base for c in looks] == [10, 20, 30]
    for c in looks[:-1]:
        assert c.verdict == "inconclusive" and c.more_runs == 10 and not gate.decided(c)
    last = looks[-1]
    assert last.verdict == "inconclusive" and last.more_runs is None and gate.decided(last)
    assert "still undecided at the cap of 30 run(s) per side" in last.note
    assert_one_number(gate.advice(last), 30)
    with pytest.raises(InputError):
        compare_samples(base, cand, "lower", metric="cycles", plan=PLAN, look=4)


def test_plan_units_reach_the_advice():
    plan = gate.Plan(2, 2, 6, unit="boot(s) per build")
    base, cand = _outlier_heavy(1.0)
    c = compare_samples(base[:10], cand[:10], "lower", metric="cycles", plan=plan, look=1)
    assert c.verdict == "inconclusive" and gate.advice(c) == "inconclusive: take 2 more boot(s) per build"


@settings(max_examples=120, deadline=None)
@given(base=samples_st, cand=samples_st)
def test_advice_is_one_bounded_number(base, cand):
    c = compare_samples(base, cand, "lower", metric="cycles")
    n = min(len(base), len(cand))
    said = gate.advice(c)
    if c.verdict != "inconclusive":
        assert said == ""
    elif c.more_runs is None:
        assert_one_number(said, gate.MAX_RUNS)
    else:
        assert n + c.more_runs <= gate.MAX_RUNS and said == f"inconclusive: take {c.more_runs} more run(s) per side"
        assert_one_number(said + " " + c.note if "sample(s)" not in c.note else said, c.more_runs)
    for k in range(1, PLAN.looks + 1):
        s = compare_samples(base, cand, "lower", metric="cycles", plan=PLAN, look=k)
        if s.verdict == "inconclusive":
            bound = PLAN.sizes()[k - 1] + (s.more_runs or 0)
            assert bound <= PLAN.cap and (s.more_runs is None) == (k == PLAN.looks)
            assert_one_number(gate.advice(s), s.more_runs or PLAN.cap)
