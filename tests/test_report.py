"""The HTML report, rendered from a real SQLite store filled through the store API.

The browser tier loads the page from file:// in headless Chromium (DevTools over a
pipe), fails on any failed request, console error or exception, and saves a
full-page screenshot. Without Chromium it skips locally and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from hwtests import report
from hwtests.report import fmt_p, fmt_pct, fmt_value, median_ci, thin_sorted, write_report

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REGRESSED = "pagepool/no-softirq-page_pool01"
STABLE = ("pagepool/no-softirq-page_pool02", "pagepool/tasklet_page_pool01_fast_path")
CEILING_1500 = 1448 / 1538


def _host(role: str, name: str, kernel: str, cfg: str, boot: str, governor: str = "performance"):
    from hwtests.store import HostInfo

    return HostInfo(role=role, name=name, kernel_release=kernel, proc_version=f"Linux version {kernel} (gcc 12.2.0)",
                    config_hash=cfg, cmdline=f"BOOT_IMAGE=/boot/vmlinuz-{kernel} root=/dev/vda ro console=ttyS0",
                    boot_id=boot, nic_driver="virtio_net", nic_firmware="",
                    env={"cpu_model": "QEMU TCG CPU version 2.5+", "hypervisor": True, "governor": governor,
                         "vulnerabilities": {"spectre_v2": "Mitigation: Retpolines", "meltdown": "Not affected"},
                         "debug_heavy": [], "smt": False})


def fill(store, runs: int = 10, reps: int = 10, seed: int = 7) -> None:
    """Two builds, interleaved runs; `patched` is +1 cycle on REGRESSED, equal elsewhere."""
    from hwtests.store import Run, Sample

    rng = np.random.default_rng(seed)
    for r in range(runs):
        for label, kernel, cfg, delta in (("base", "6.12.0-1-amd64", "cfg-aaaa", 0.0),
                                          ("patched", "6.12.0-1-amd64+pp", "cfg-bbbb", 1.0)):
            boot = f"{label}-boot-{r}"
            run = Run(label=label, pair="vm-pair", controller="ctl", inventory_hash="inv0123456789abcdef",
                      source="measured", hosts=[_host("rx", "vm1", kernel, cfg, boot),
                                                _host("tx", "vm2", kernel, cfg, boot + "t",
                                                      "schedutil" if label == "patched" else "performance")],
                      artifacts={"page_pool_bench.ko": f"sha256-{label}", "receiver": "sha256-recv"})
            rid = store.begin_run(run)
            samples = []
            for test in (REGRESSED, *STABLE):
                d = delta if test == REGRESSED else 0.0
                cyc = 8.0 + d + rng.normal(0, 0.2, reps)
                for i, c in enumerate(cyc):
                    samples.append(Sample(test=test, metric="cycles", value=float(c), unit="cycles", better="lower",
                                          repetition=i, boot_id=boot, host="vm1"))
                    samples.append(Sample(test=test, metric="ns", value=float(c / 2.9), unit="ns", better="lower",
                                          repetition=i, boot_id=boot, host="vm1"))
            for i, g in enumerate(9.40 + rng.normal(0, 0.02, 3)):
                samples.append(Sample(test="linerate/devmem", metric="gbps", value=float(g), unit="Gbit/s",
                                      better="higher", repetition=i, boot_id=boot, host="vm1"))
                # a 10G link at MTU 1500 (IPv4): 1448 payload bytes in 1538 on the wire
                link = 100 * g * 1000 / 10_000
                for metric, v in (("link_pct", link), ("ceiling_pct", link / CEILING_1500)):
                    samples.append(Sample(test="linerate/devmem", metric=metric, value=float(v), unit="%",
                                          better="higher", repetition=i, boot_id=boot, host="vm1",
                                          extra={"speed_mbps": 10_000, "mtu": 1500, "family": 4}))
            store.add_samples(rid, samples)
            store.add_outcome(rid, REGRESSED, "passed")
            store.add_outcome(rid, "linerate/zcrx", "skipped", "missing capability: io_uring_zcrx")
            store.finish_run(rid)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from hwtests.store import Store

    db = tmp_path_factory.mktemp("store") / "results.db"
    s = Store.open(str(db))
    fill(s)
    s.db_path = db
    return s


@pytest.fixture(scope="module")
def page(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    path = write_report(store, out, builds=["base", "patched"], baseline="base", title="base vs patched")
    assert path == out and out.is_file()
    return out


def _summary_rows(html: str) -> list[str]:
    """The summary's result rows (not the note rows below them), break points taken out."""
    table = re.search(r'<table class="summary">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert table, "no summary table"
    return [r.replace("<wbr>", "") for r in re.findall(r"<tr\b.*?</tr>", table.group(1), re.S)
            if "note-row" not in r.split(">", 1)[0]]


def test_regression_is_first_row_of_summary(page):
    rows = _summary_rows(page.read_text())
    assert rows, "empty summary"
    first = rows[0]
    assert "REGRESSION" in first and REGRESSED in first and ">cycles<" in first.replace(" <span", "<")
    # every regression comes before anything else; stable tests are not regressions
    verdicts = [re.search(r'class="v v-(\w+)"', r).group(1) for r in rows]
    assert verdicts[: verdicts.count("regression")] == ["regression"] * verdicts.count("regression")
    for r in rows:
        if any(t in r for t in STABLE):
            assert "v-regression" not in r


def test_summary_numbers_and_precision(page):
    html = page.read_text()
    first = _summary_rows(html)[0]
    nums = re.findall(r'<td class="num[^"]*">([^<]*)</td>', first)
    med_base, med_cand = float(nums[0]), float(nums[3])
    assert 7.7 < med_base < 8.3 and 8.7 < med_cand < 9.3
    assert re.fullmatch(r"\d+\.\d\d", nums[0]), "cycles with 2 decimals"
    assert "+1" in first and "%" in first


def test_page_is_self_contained(page):
    html = page.read_text()
    # nothing is fetched: no script, no stylesheet link, no external src/href/url()/@import
    assert "<script" not in html.lower()
    assert not re.search(r"<link\b", html, re.I)
    assert not re.search(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"@import", html, re.I)
    # and in this fixture not even a namespace URI remains
    assert "http://" not in html and "https://" not in html
    # figures are inline SVG
    assert html.count("<svg ") >= 4


def test_emulation_banner_and_environment_diff(page):
    html = page.read_text()
    assert "QEMU TCG" in html and 'class="banner emulated"' in html
    env = html[html.index('id="env"'):html.index('id="outcomes"')]
    diff_rows = re.findall(r'<tr class="diff">(.*?)</tr>', env, re.S)
    keys = [re.search(r'class="k fact">([^<]*)<', r).group(1) for r in diff_rows]
    assert "kernel_release" in keys and "config_hash" in keys and "governor" in keys
    assert "page_pool_bench.ko" in keys and "receiver" not in keys
    assert "cfg-aaaa" in env and "cfg-bbbb" in env


def test_skipped_tests_runs_and_inventory(page):
    html = page.read_text()
    out = html[html.index('id="outcomes"'):html.index('id="runs"')]
    assert "linerate/zcrx" in out and "missing capability: io_uring_zcrx" in out and ">skipped<" in out
    runs = html[html.index('id="runs"'):html.index('id="data"')]
    assert "vm-pair" in runs and "inv012345678" in runs


def test_history_figure_when_enough_runs(page):
    html = page.read_text()
    assert "median per run" in html


def test_embedded_csv_decodes_to_every_sample(page, store):
    html = page.read_text()
    m = re.search(r'<a class="btn" download="hwtests-samples.csv" href="data:text/csv;charset=utf-8,([^"]*)"', html)
    assert m, "raw CSV link missing"
    text = urllib.parse.unquote(m.group(1).replace("&amp;", "&"))
    lines = text.strip("\n").split("\n")
    assert lines[0].startswith("label,pair,run_id,test,metric")
    assert len(lines) - 1 == len(store.samples(labels=["base", "patched"]))


def test_csv_cap_names_the_export_command(store, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "CSV_MAX_BYTES", 10_000)
    out = write_report(store, tmp_path / "capped.html", builds=["base", "patched"], baseline="base")
    html = out.read_text()
    assert 'download="hwtests-samples.csv"' not in html
    assert 'download="hwtests-runs.csv"' in html
    assert "--csv samples.csv" in html


def test_cli_writes_report_and_rejects_unknown_build(store, tmp_path):
    exe = Path(sys.executable).with_name("hwtests")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hwtests.cli"]
    out = tmp_path / "cli.html"
    csv = tmp_path / "all.csv"
    p = subprocess.run(cmd + ["report", "--db", str(store.db_path), "--builds", "base,patched", "--out", str(out),
                              "--csv", str(csv)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert out.is_file() and "REGRESSION" in out.read_text()
    assert csv.read_text().count("\n") == len(store.samples(labels=["base", "patched"])) + 1
    p = subprocess.run(cmd + ["report", "--db", str(store.db_path), "--builds", "base,nosuch", "--out",
                              str(tmp_path / "x.html")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "nosuch" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_link_and_ceiling_side_by_side(page, store):
    """linerate/devmem: % of link and % of TCP ceiling in adjacent summary rows, named by what they
    are shares of, and side by side per build in the test's section, with the ceiling they imply."""
    html = page.read_text()
    rows = [r for r in _summary_rows(html) if "linerate/devmem" in r]
    metrics = [re.search(r'<td class="mono">(\w+)', r).group(1) for r in rows]
    assert metrics == ["gbps", "link_pct", "ceiling_pct"]
    assert "[% of link]" in rows[1] and "[% of TCP ceiling]" in rows[2]
    df = store.samples(labels=["base", "patched"], test_glob="linerate/*")
    sec = html[html.index('<section class="test" id="t-linerate-devmem">'):]
    table = re.search(r'<table class="linerate">.*?</table>', sec, re.S).group(0)
    assert re.findall(r"<th[^>]*>([^<]*)</th>", table) == ["build", "Gbit/s", "% of link", "% of TCP ceiling",
                                                          "TCP ceiling, % of link"]
    got = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
           for tr in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)]
    want = []
    for b in ("base", "patched"):
        med = {m: float(df[(df.label == b) & (df.metric == m)]["value"].median()) for m in ("gbps", "link_pct",
                                                                                            "ceiling_pct")}
        want.append([b, f"{med['gbps']:.2f}", f"{med['link_pct']:.1f}", f"{med['ceiling_pct']:.1f}",
                     f"{100 * CEILING_1500:.2f}"])
    assert got == want
    assert want[0][4] == "94.15" and 99 < float(want[0][3]) < 100.5


def test_line_rate_rows():
    med = {("gbps", "a"): 9.4, ("link_pct", "a"): 94.0, ("ceiling_pct", "a"): 94.0 / CEILING_1500,
           ("gbps", "b"): 9.0, ("link_pct", "b"): 90.0, ("gbps", "c"): 1.0}
    rows = report.line_rate_rows(med, ["a", "b", "c"])
    assert [r["build"] for r in rows] == ["a", "b"]              # c has neither share
    assert rows[0]["ceiling"] == pytest.approx(100 * CEILING_1500) and rows[0]["gbps"] == 9.4
    assert rows[1]["ceiling_pct"] is None and rows[1]["ceiling"] is None and rows[1]["link_pct"] == 90.0


def test_break_points():
    assert report.break_points("pagepool/tasklet_page_pool01_fast_path") == [
        "pagepool/", "tasklet_", "page_", "pool01_", "fast_", "path"]
    assert report.break_points("netns-pair") == ["netns-", "pair"] and report.break_points("") == []
    assert "".join(report.break_points("a/b_c-d<x>")) == "a/b_c-d<x>"


def test_formatting():
    assert fmt_value(8.123456, "cycles") == "8.12"
    assert fmt_value(9.4149, "gbps") == "9.41"
    assert fmt_p(0.01234) == "0.012" and fmt_p(0.0001234) == "1.2e-4" and fmt_p(0.5) == "0.50"
    assert fmt_pct(11.2345) == "+11.23%" and fmt_pct(None) == "–"


def test_median_ci_and_thinning():
    v = np.sort(np.random.default_rng(1).normal(8, 0.3, 101))
    lo, hi = median_ci(v)
    assert lo < np.median(v) < hi and hi - lo < 0.3
    assert median_ci(v[:5]) is None
    big = np.sort(np.random.default_rng(2).normal(8, 0.3, 50_000))
    t = thin_sorted(big, 2000)
    assert len(t) <= 2000 and t[0] == big[0] and t[-1] == big[-1]
    assert np.array_equal(t, thin_sorted(big, 2000))          # deterministic


@pytest.mark.browser
@pytest.mark.parametrize("width", [1200, 760])
def test_page_in_headless_chromium(page, tmp_path, width):
    from hwtests import browser

    if browser.find_chromium() is None:
        msg = "headless Chromium not installed (Debian package: chromium)"
        if IN_CI:
            pytest.fail(f"required in CI: {msg}", pytrace=False)
        pytest.skip(msg)
    shot_dir = Path(os.environ.get("HWTESTS_SCREENSHOT_DIR") or tmp_path)
    shot = shot_dir / f"report-{width}.png"
    res = browser.check_page(page, screenshot=shot, width=width)
    assert res.problems == [], "\n".join(res.problems + [res.stderr[-2000:]])
    schemes = {urllib.parse.urlsplit(u).scheme for u in res.requests}
    assert schemes <= {"file", "data", "about"}, res.requests
    assert res.title.startswith("base vs patched")
    assert res.scroll_width <= width, "the page scrolls sideways"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # the regression banner text is in the rendered DOM, above the fold
    assert res.height > 900


def test_figures_drawn_by_child_processes_match(store, tmp_path, monkeypatch):
    """The two-worker path (used when a CPU is idle) gives the same figures as drawing in-process."""
    monkeypatch.setattr(report, "_spare_cpus", lambda: 0.0)
    serial = write_report(store, tmp_path / "serial.html", builds=["base", "patched"], baseline="base").read_text()
    monkeypatch.setattr(report, "_spare_cpus", lambda: 2.0)
    spawned: list = []
    real_spawn = report._Painter._spawn

    def spy(self):
        real_spawn(self)
        spawned.extend(w["p"] for w in self.procs)

    monkeypatch.setattr(report._Painter, "_spawn", spy)
    par = write_report(store, tmp_path / "par.html", builds=["base", "patched"], baseline="base").read_text()
    assert len(spawned) == 2 and all(p.returncode == 0 for p in spawned)
    figs = lambda h: re.findall(r"<svg .*?</svg>", h, re.S)  # noqa: E731
    assert len(figs(par)) == len(figs(serial)) >= 4
    assert figs(par) == figs(serial)


LONG_TESTS = ("pagepool/tasklet_page_pool02_ptr_ring", "pagepool/no-softirq-page_pool03")


def fill_wide(store, runs: int = 6, seed: int = 11) -> None:
    """Two candidates on two pairs: a noisy test (the gate's long 'noisy: ...' note), a test with
    one baseline sample ('baseline has 1 sample(s); ...') and long names: the widest summary."""
    from hwtests.store import Run, Sample

    rng = np.random.default_rng(seed)
    for r in range(runs):
        for label, kernel in (("base", "6.12.0-1-amd64"), ("patched", "6.12.0-1-amd64+pp"),
                              ("patched-v2-with-a-longer-name", "6.12.0-1-amd64+pp2")):
            for pair in ("vm-pair", "netns-pair-with-long-name"):
                boot = f"{label}-{pair}-{r}"
                run = Run(label=label, pair=pair, controller="ctl", inventory_hash="inv0123456789abcdef",
                          source="measured", hosts=[_host("rx", "vm1", kernel, "cfg", boot)])
                rid = store.begin_run(run)
                samples = []
                for test in LONG_TESTS:
                    noisy = test == LONG_TESTS[0]
                    shift = 0.5 if noisy and label != "base" else 0.0
                    for i, c in enumerate(250.0 + shift + rng.normal(0, 3.0 if noisy else 0.2, 5)):
                        samples.append(Sample(test=test, metric="cycles", value=float(c), unit="cycles",
                                              better="lower", repetition=i, boot_id=boot, host="vm1"))
                if label != "base" or r == 0:
                    samples.append(Sample(test="linerate/tcp", metric="gbps", value=float(9.3 + rng.normal(0, 0.01)),
                                          unit="Gbit/s", better="higher", repetition=0, boot_id=boot, host="vm1"))
                store.add_samples(rid, samples)
                store.finish_run(rid)


@pytest.fixture(scope="module")
def wide_page(tmp_path_factory) -> Path:
    from hwtests.store import Store

    tmp = tmp_path_factory.mktemp("wide")
    with Store.open(str(tmp / "results.db")) as st:
        fill_wide(st)
        return write_report(st, tmp / "wide.html", builds=["base", "patched", "patched-v2-with-a-longer-name"],
                            baseline="base", title="wide summary")


def test_long_notes_sit_below_their_row(wide_page):
    """No note column: a row with a note is followed by a note row spanning all but the verdict column."""
    html = wide_page.read_text()
    table = re.search(r'<table class="summary">.*?</table>', html, re.S).group(0)
    head = re.search(r"<thead>(.*?)</thead>", table, re.S).group(1)
    last_head_row = re.findall(r"<tr>(.*?)</tr>", head, re.S)[-1]
    ncols = len(re.findall(r"<th\b", last_head_row))
    assert ">note<" not in head and ncols == 14        # 3 + pair + 3 base + build + 3 cand + change, shift, p
    trs = re.findall(r"<tr\b.*?</tr>", re.search(r"<tbody>(.*?)</tbody>", table, re.S).group(1), re.S)
    notes = [(i, tr) for i, tr in enumerate(trs) if 'class="note-row' in tr]
    assert len(notes) == 6
    for i, tr in notes:
        above = trs[i - 1]
        assert "has-note" in above and "inconclusive" in above
        assert f'colspan="{ncols - 1}"' in tr
        assert re.search(r'class="note-row r-inconclusive"', tr)
    texts = [re.sub(r"<[^>]+>", "", tr) for _, tr in notes]
    assert sum("60 runs per side cannot decide it" in t and len(t) > 120 for t in texts) == 2   # one message, no second count
    assert sum("baseline has 1 sample(s)" in t for t in texts) == 4
    # every result row is a row of its own: 12 of them, none with a note cell
    assert len(trs) - len(notes) == 12 and not any('class="small note"' in tr for tr in trs)


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 1920])
def test_summary_fits_the_window(wide_page, tmp_path, width):
    """Laid out by Chromium: neither the page nor the summary table scrolls sideways, and the
    long notes get the table's width instead of one word per line."""
    from hwtests import browser

    if browser.find_chromium() is None:
        msg = "headless Chromium not installed (Debian package: chromium)"
        if IN_CI:
            pytest.fail(f"required in CI: {msg}", pytrace=False)
        pytest.skip(msg)
    shot = Path(os.environ.get("HWTESTS_SCREENSHOT_DIR") or tmp_path) / f"report-wide-{width}.png"
    measure = {
        "viewport": "document.documentElement.clientWidth",
        "tables": "[...document.querySelectorAll('table.summary')].map(t => ({table: [t.scrollWidth, "
                  "t.clientWidth], box: [t.parentElement.scrollWidth, t.parentElement.clientWidth], "
                  "width: t.getBoundingClientRect().width}))",
        "notes": "[...document.querySelectorAll('table.summary td.note')].map(e => "
                 "({w: e.getBoundingClientRect().width, h: e.getBoundingClientRect().height, "
                 "text: e.textContent.length}))",
        "line": "parseFloat(getComputedStyle(document.querySelector('table.summary td.note')).lineHeight)",
    }
    res = browser.check_page(wide_page, screenshot=shot, width=width, expressions=measure)
    assert res.problems == [], "\n".join(res.problems + [res.stderr[-2000:]])
    v = res.values
    assert v["viewport"] == width
    assert res.scroll_width <= v["viewport"], f"the page scrolls sideways: {res.scroll_width} > {width}"
    assert len(v["tables"]) == 1
    t = v["tables"][0]
    assert t["table"][0] <= t["table"][1] and t["box"][0] <= t["box"][1], f"the summary scrolls sideways: {t}"
    assert len(v["notes"]) == 6
    for n in v["notes"]:
        assert n["w"] >= 0.8 * t["width"], f"a note squeezed into {n['w']:.0f} of {t['width']:.0f} px"
        assert n["h"] <= 2 * v["line"] + 1, f"a note of {n['text']} characters takes {n['h']:.0f} px"


def test_page_shows_the_callers_verdicts(store, tmp_path):
    """`hwtests ab` hands its sequential gate's comparisons to the page, which shows them
    instead of judging the samples again as one look."""
    from hwtests import compare

    comps = compare.compare_labels(store, "base", "patched")
    reg = next(c for c in comps if c.test == REGRESSED and c.metric == "cycles")
    assert reg.verdict == "regression"
    reg.verdict = "inconclusive"                  # as if the plan had not decided it yet
    out = write_report(store, tmp_path / "r.html", builds=["base", "patched"], baseline="base",
                       comparisons={"patched": comps})
    rows = [r for r in _summary_rows(out.read_text()) if REGRESSED in r and ">cycles<" in r.replace(" <span", "<")]
    assert rows and "v-inconclusive" in rows[0] and "v-regression" not in rows[0]
