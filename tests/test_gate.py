"""The regression gate: verdicts, directions, ties, thresholds, runs-needed estimate, properties."""

from __future__ import annotations

import math
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
    assert c.more_runs <= gate.MAX_RUNS - 10 and "noisy" in c.note


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
        assert a.more_runs and a.more_runs >= 1


def test_aa_calibration_smoke():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "aa_calibration.py"), "--synthetic",
                        "--splits", "20", "--runs-per-side", "5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("A/A false-alarm rate:") == 2
    assert "detection of" in r.stdout and "+1 cycles" in r.stdout and "-2%" in r.stdout
