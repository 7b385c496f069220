"""Change points in per-run medians, and `hwtests history`."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from hwtests import cli
from hwtests.history import ChangePoint, change_points, noise_sigma
from hwtests.store import Run, Sample, Store


def noisy(rng, n, mu=8.6, sigma=0.3):
    return mu + rng.normal(0, sigma, n)


def test_step_is_found_where_it_is():
    rng = np.random.default_rng(1)
    y = np.r_[noisy(rng, 20), noisy(rng, 15, 9.6)]
    (cp,) = change_points(y, "cycles")
    assert isinstance(cp, ChangePoint)
    assert abs(cp.index - 20) <= 1
    assert cp.before == pytest.approx(8.6, abs=0.2) and cp.after == pytest.approx(9.6, abs=0.2)
    assert cp.change_pct == pytest.approx(11.6, abs=3)


def test_two_steps_and_a_recovery():
    rng = np.random.default_rng(2)
    y = np.r_[noisy(rng, 15), noisy(rng, 15, 9.6), noisy(rng, 15, 8.6)]
    cps = change_points(y, "cycles")
    assert len(cps) == 2 and [abs(c.index - i) <= 3 for c, i in zip(cps, (15, 30))] == [True, True]
    assert cps[0].change_pct > 0 > cps[1].change_pct


def test_single_spikes_and_short_blips_are_not_change_points():
    rng = np.random.default_rng(3)
    y = noisy(rng, 40)
    y[10] += 5
    y[25] += 3
    y[31:33] += 4          # a two-run blip: shorter than a segment
    assert change_points(y, "cycles") == []


def test_magnitude_floor_per_metric():
    rng = np.random.default_rng(4)
    base = 94 + rng.normal(0, 0.05, 20)
    y = np.r_[base, base[:15] * 0.97]            # a clean 3% step
    assert len(change_points(y, "gbps")) == 1    # floor 1%
    assert change_points(y, "cycles") == []      # floor 5%
    assert len(change_points(y, "cycles", min_magnitude=0.02)) == 1


def test_noise_only_series_has_no_change_points():
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(40):
        y = noisy(rng, 30)
        o = rng.random(30) < 0.05
        y[o] += rng.uniform(1, 5, o.sum())
        hits += bool(change_points(y, "cycles"))
    assert hits <= 2


def test_short_and_flat_series():
    assert change_points([8.6] * 5) == []
    assert change_points([]) == []
    assert change_points([8.6] * 30) == []
    assert change_points([8.6] * 10 + [9.6] * 10, "cycles")[0].index == 10
    assert noise_sigma([1.0, 1.0]) == 0.0


def fill(url, series: dict[tuple[str, str], list[float]], metric="cycles", better="lower"):
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    with Store.open(url) as s:
        for (test, pair), values in series.items():
            for i, v in enumerate(values):
                label = f"nightly-{i:02d}"
                rid = s.begin_run(Run(label, pair, "ctl", "inv", "measured", [], started=t0 + dt.timedelta(days=i)))
                s.add_samples(rid, [Sample(test, metric, v + d, metric, better, r) for r, d in
                                    enumerate((-0.05, 0.0, 0.05))])


def test_history_command(tmp_path, capsys):
    url = str(tmp_path / "h.db")
    rng = np.random.default_rng(6)
    step = list(np.r_[noisy(rng, 12), noisy(rng, 10, 9.6)])
    flat = list(noisy(rng, 22))
    fill(url, {("pagepool/no-softirq-page_pool01", "p1"): step, ("pagepool/no-softirq-page_pool01", "p2"): flat,
               ("pagepool/tasklet_page_pool01_fast_path", "p1"): flat})
    code = cli.main(["history", "--metric", "cycles", "--db", url, "--test", "pagepool/no-softirq*"])
    out = capsys.readouterr().out
    assert code == 0
    assert "pagepool/no-softirq-page_pool01  pair p1  cycles (cycles, lower is better), 22 runs" in out
    marked = [line for line in out.splitlines() if "<-- step" in line]
    assert len(marked) == 1 and "nightly-12" in marked[0] and "worse" in marked[0]
    assert "pair p2" in out and "no change points" in out and "tasklet" not in out

    code = cli.main(["history", "--metric", "cycles", "--db", url, "--pair", "p1", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and [s["test"] for s in doc["series"]] == ["pagepool/no-softirq-page_pool01",
                                                               "pagepool/tasklet_page_pool01_fast_path"]
    s0 = doc["series"][0]
    assert [r["label"] for r in s0["runs"]] == [f"nightly-{i:02d}" for i in range(22)]
    assert s0["runs"][0]["n"] == 3 and s0["runs"][0]["median"] == pytest.approx(step[0])
    (cp,) = s0["change_points"]
    assert cp["index"] == 12 and cp["label"] == "nightly-12" and cp["worse"] is True
    assert doc["series"][1]["change_points"] == []

    code = cli.main(["history", "--metric", "cycles", "--db", url, "--last", "8", "--json"])
    assert all(len(s["runs"]) == 8 for s in json.loads(capsys.readouterr().out)["series"])


def test_history_unknown_metric(tmp_path, capsys):
    url = str(tmp_path / "h.db")
    fill(url, {("linerate/tcp", "p1"): [94.0] * 3}, metric="gbps", better="higher")
    code = cli.main(["history", "--metric", "cycels", "--db", url])
    err = capsys.readouterr().err
    assert code == 2 and "no samples of metric 'cycels'; known metrics: gbps" in err
