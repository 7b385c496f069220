"""Acceptance of `hwtests compare`: page_pool runs of kernel builds through the store, the CLI and import-log."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import norm

from hwtests import abrun, cli, compare, gate
from hwtests.errors import InputError
from hwtests.store import HostInfo, Run, Sample, Store
from pgfixture import pg_server, pg_url, store_url  # noqa: F401

TEST = "pagepool/no-softirq-page_pool01"
ENV = {"governor": "performance", "boost": False, "smt": False, "cpu_model": "Intel(R) Xeon(R) Gold 6338",
       "debug_heavy": [], "vulnerabilities": {"mitigated": ["spectre_v2"], "vulnerable": []}}


def run_values(rng, mu: float, runs: int = 10) -> list[float]:
    """Fractional cycles per run: mu +- 0.3 noise, one or two outlier runs +1..+5 cycles."""
    v = mu + rng.normal(0, 0.3, runs)
    for i in rng.choice(runs, size=int(rng.integers(1, 3)), replace=False):
        v[i] += rng.uniform(1, 5)
    return [float(x) for x in v]


def add_build(url: str, label: str, values: list[float], pair: str = "p1", env: dict | None = None,
              cmdline: str = "quiet isolcpus=2", kernel: str = "6.12.0") -> None:
    with Store.open(url) as s:
        for i, v in enumerate(values):
            hosts = [HostInfo("rx", "dut1", kernel_release=f"{kernel}-{label}", proc_version=f"Linux {label}",
                              config_hash=f"cfg-{label}", cmdline=f"BOOT_IMAGE=/boot/vmlinuz-{label} {cmdline}",
                              boot_id=f"{label}-{i // 5}", nic_driver="mlx5_core", nic_firmware="28.39.1002",
                              env=dict(env or ENV)),
                     HostInfo("tx", "peer1", kernel_release="6.1.0-28-amd64", env=dict(ENV))]
            rid = s.begin_run(Run(label, pair, "ctl", "inv", "measured", hosts, artifacts={"hwt_pp_bench.ko": "00"}))
            s.add_samples(rid, [Sample(TEST, "cycles", v, "cycles", "lower", 0, boot_id=f"{label}-{i // 5}",
                                       host="dut1"),
                                Sample(TEST, "ns", v / 3.6, "ns", "lower", 0)])
            s.add_outcome(rid, TEST, "passed")
            s.finish_run(rid)


@pytest.fixture
def db(tmp_path) -> str:
    """base (8.6), same (8.6, another sample of the same build), plus1 (9.6), plus01 (8.7)."""
    url = str(tmp_path / "results.db")
    rng = np.random.default_rng(20261122)
    add_build(url, "base", run_values(rng, 8.6))
    add_build(url, "same", run_values(rng, 8.6))
    add_build(url, "plus1", run_values(rng, 9.6))
    add_build(url, "plus01", run_values(rng, 8.7))
    return url


def hw(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- acceptance ---------------------------------------------------------------------------

def test_one_cycle_regression_exits_1(db, capsys):
    code, out, err = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus1", "--db", db)
    assert code == 1, out + err
    row = [line for line in out.splitlines() if line.startswith(TEST) and " cycles " in line][0]
    assert row.split()[-1] == "REGRESSION" and "10/10" in row
    assert "gate: one-sided Mann-Whitney U" in out and "cycles: fail p<0.01 and change>=0.5" in out
    assert out.rstrip().endswith("-> exit 1")
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus1", "--db", db, "--json",
                      "--metric", "cycles")
    doc = json.loads(out)
    (c,) = doc["comparisons"]
    assert code == 1 and doc["exit_code"] == 1
    assert c["verdict"] == "regression" and c["test"] == TEST and c["n_base"] == c["n_cand"] == 10
    assert 0.6 < c["shift"] < 1.4 and c["p_value"] < 0.01 and c["better"] == "lower"


def test_two_samples_of_the_same_build_exit_0(db, capsys):
    code, out, err = hw(capsys, "compare", "--baseline", "base", "--candidate", "same", "--db", db)
    assert code == 0, out + err
    assert "REGRESSION" not in out and "environment: no differences" in out


def test_tenth_of_a_cycle_is_not_a_regression(db, capsys):
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus01", "--db", db, "--json")
    doc = json.loads(out)
    assert code in (0, 3)
    assert all(c["verdict"] != "regression" for c in doc["comparisons"])


def test_unknown_label_exits_2_listing_known_labels(db, capsys):
    code, out, err = hw(capsys, "compare", "--baseline", "base", "--candidate", "nosuch", "--db", db)
    assert code == 2 and out == ""
    assert err.strip() == "hwtests: error: unknown label 'nosuch'; known labels: base, same, plus1, plus01"


def test_cli_subprocess_default_db_path(tmp_path, hwtests_bin):
    """The installed entry point in a fresh process, with the default store under the cwd."""
    rng = np.random.default_rng(7)
    default = tmp_path / ".hwtests" / "results.db"
    add_build(str(default), "base", run_values(rng, 8.6))
    add_build(str(default), "plus1", run_values(rng, 9.6))
    r = subprocess.run(hwtests_bin + ["compare", "--baseline", "base", "--candidate", "plus1", "--metric", "cycles"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "REGRESSION" in r.stdout
    r = subprocess.run(hwtests_bin + ["compare", "--baseline", "base", "--candidate", "x"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "known labels: base, plus1" in r.stderr and "Traceback" not in r.stderr


def dmesg(values: list[float], t0: float = 300.0) -> str:
    """A kernel log with one time_bench result line per load (fractional cycles from the counts)."""
    lines = []
    invoke = 10_000_000
    for i, c in enumerate(values):
        tsc = int(round(c * invoke))
        ti = int(round(tsc / 3.6))                 # a 3.6 GHz TSC
        ns_milli = ti * 1000 // invoke
        lines.append(f"[{t0 + i:11.6f}] bench_page_pool: Type:no-softirq-page_pool01 Per elem: {tsc // invoke} "
                     f"cycles(tsc) {ns_milli // 1000}.{ns_milli % 1000:03d} ns (step:0) - (measurement period "
                     f"time:{ti // 10**9}.{ti % 10**9:09d} sec time_interval:{ti}) - (invoke count:{invoke} "
                     f"tsc_interval:{tsc})")
        lines.append(f"[{t0 + i + 0.5:11.6f}] random other kernel line")
    return "\n".join(lines) + "\n"


def test_through_import_log(tmp_path, capsys):
    """Logs imported with `hwtests import-log` (one run per file) go through the same gate."""
    db = str(tmp_path / "imp.db")
    rng = np.random.default_rng(99)
    for label, mu in (("base", 8.6), ("plus1", 9.6), ("same", 8.6)):
        for i, v in enumerate(run_values(rng, mu)):
            f = tmp_path / f"{label}-{i}.log"
            f.write_text(dmesg([v]))
            code, out, err = hw(capsys, "import-log", str(f), "--kernel-build", label, "--db", db)
            assert code == 0, err
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus1", "--db", db,
                      "--metric", "cycles", "--json")
    (c,) = json.loads(out)["comparisons"]
    assert code == 1 and c["verdict"] == "regression" and c["n_base"] == 10
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "same", "--db", db, "--metric", "cycles")
    assert code == 0, out


# -- environment, thresholds, output -----------------------------------------------------

def test_environment_differences_are_listed(tmp_path, capsys):
    url = str(tmp_path / "env.db")
    rng = np.random.default_rng(5)
    add_build(url, "base", run_values(rng, 8.6))
    debug_env = dict(ENV, governor="powersave", debug_heavy=["LOCKDEP", "KASAN"],
                     vulnerabilities={"mitigated": [], "vulnerable": ["spectre_v2"]})
    add_build(url, "debug", run_values(rng, 8.6), env=debug_env, cmdline="quiet mitigations=off")
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "debug", "--db", url)
    assert "environment differs" in out
    assert "rx.governor: baseline performance; candidate powersave" in out
    assert "rx.debug_heavy: baseline -; candidate KASAN,LOCKDEP" in out
    assert "rx.vulnerabilities.vulnerable: baseline -; candidate spectre_v2" in out
    assert "rx.cmdline: baseline quiet isolcpus=2; candidate quiet mitigations=off" in out
    assert "kernel_release" not in out and "BOOT_IMAGE" not in out      # a build's own identity is no "difference"
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "debug", "--db", url, "--json")
    for c in json.loads(out)["comparisons"]:
        assert "rx.governor: baseline performance; candidate powersave" in c["env_diff"]


def test_threshold_overrides_from_cli_and_inventory(db, tmp_path, capsys):
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus1", "--db", db,
                      "--metric", "cycles", "--threshold", "cycles:fail_abs=3")
    assert code in (0, 3) and "REGRESSION" not in out and "cycles: fail p<0.01 and change>=3" in out
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts:\n  dut1:\n    local: true\n    nics:\n      eth0: {ifname: lo, ipv4: 127.0.0.1/8}\n"
                   "      eth1: {ifname: lo2, ipv4: 127.0.0.2/8}\n"
                   "pairs:\n  - name: p1\n    rx: {host: dut1, nic: eth0}\n    tx: {host: dut1, nic: eth1}\n"
                   "thresholds:\n  cycles: {fail_abs: 3.0, pass_abs: 1.5}\n")
    code, out, err = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus1", "--db", db,
                        "--metric", "cycles", "--inventory", str(inv))
    assert code == 0, out + err
    assert "cycles: fail p<0.01 and change>=3; pass change<1.5" in out
    code, _, err = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus1", "--db", db,
                      "--threshold", "cycles:fail_rel=7")
    assert code == 2 and "fractions" in err


def test_no_matching_samples_is_bad_input(db, capsys):
    code, _, err = hw(capsys, "compare", "--baseline", "base", "--candidate", "plus1", "--db", db, "--test", "linerate/*")
    assert code == 2 and "no samples" in err and "--test=linerate/*" in err


def test_api_for_plugin_and_report(db):
    with Store.open(db) as s:
        comps = compare.compare_labels(s, "base", "plus1", thresholds={"ns": {"fail_rel": 0.05}})
    assert [(c.test, c.metric) for c in comps] == [(TEST, "cycles"), (TEST, "ns")]
    assert compare.exit_code(comps) == 1
    props = dict(compare.junit_properties(comps))
    assert re.fullmatch(r"regression \+[01]\.\d{3} cycles p=0\.00\d\d", props[f"gate:{TEST}:cycles"]), props
    assert re.fullmatch(r"\w+ \+\d+\.\d\d% p=\S+", props[f"gate:{TEST}:ns"]), props
    assert comps[1].threshold.fail_rel == 0.05
    text = compare.format_table(comps, "base", "plus1")
    assert "REGRESSION" in text and "ns: fail p<0.01 and change>=5%" in text


def test_several_pairs_get_a_pair_column(tmp_path, capsys):
    url = str(tmp_path / "pairs.db")
    rng = np.random.default_rng(3)
    for pair, shift in (("p1", 0.0), ("p2", 1.0)):
        add_build(url, "base", run_values(rng, 8.6), pair=pair)
        add_build(url, "cand", run_values(rng, 8.6 + shift), pair=pair)
    code, out, _ = hw(capsys, "compare", "--baseline", "base", "--candidate", "cand", "--db", url, "--metric", "cycles")
    assert code == 1
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith(("p1 ", "p2 "))}
    assert rows == {"p1": "pass", "p2": "REGRESSION"}
    with Store.open(url) as s:
        props = dict(compare.junit_properties(compare.compare_labels(s, "base", "cand", metric="cycles")))
    assert set(props) == {f"gate:{TEST}:cycles@p1", f"gate:{TEST}:cycles@p2"}


@pytest.mark.postgres
def test_sqlite_and_postgresql_give_the_same_output(tmp_path, pg_url, pg_server, capsys):
    sqlite_url = str(tmp_path / "same.db")
    for url in (sqlite_url, pg_url):
        rng = np.random.default_rng(42)
        add_build(url, "base", run_values(rng, 8.6))
        add_build(url, "plus1", run_values(rng, 9.6), env=dict(ENV, governor="schedutil"))
        add_build(url, "plus01", run_values(rng, 8.7))
    for cand in ("plus1", "plus01"):
        outs = []
        for url in (sqlite_url, pg_url):
            text = hw(capsys, "compare", "--baseline", "base", "--candidate", cand, "--db", url)
            js = hw(capsys, "compare", "--baseline", "base", "--candidate", cand, "--db", url, "--json")
            outs.append((text, js))
        assert outs[0] == outs[1]
        assert pg_server.password not in repr(outs[1])
    code, _, err = hw(capsys, "compare", "--baseline", "base", "--candidate", "zzz", "--db", pg_url)
    assert code == 2 and "known labels: base, plus1, plus01" in err and pg_server.password not in err


# -- hwtests ab: the sequential extension ---------------------------------------------------
# Kernel boots cannot happen here (the netns lab shares this machine's kernel), so the boot and
# suite step is injected: it stores what the page_pool suite would, 5 loads per boot, into a real
# SQLite store; the loop, the store queries and the gate are the real ones.

LOADS_PER_BOOT = 5
AB_PLAN = gate.Plan(2, 2, 6, unit="boot(s) per build")


def _quantiles(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(norm.ppf((np.arange(1, n + 1) - 0.5) / n))


def ab_series() -> dict[str, dict[str, np.ndarray]]:
    """30 loads per build and test: a clear +1 cycle, a +1 cycle hidden by two baseline outliers, A/A, noise."""
    out = {}
    for i, (test, shift, sd) in enumerate((("pagepool/clear", 1.0, 0.3), ("pagepool/hidden", 1.0, 0.3),
                                           ("pagepool/same", 0.0, 0.3), ("pagepool/noisy", 1.5, 3.0))):
        base = 8.6 + sd * _quantiles(30, 4 + i)
        cand = 8.6 + shift + sd * _quantiles(30, 40 + i)
        if test == "pagepool/hidden":
            base[[2, 7]] += [3.5, 4.5]
        if test == "pagepool/noisy":
            z = np.tile(norm.ppf((np.arange(1, 11) - 0.5) / 10), 3)
            base, cand = 8.6 + sd * z, 8.6 + shift + sd * z
        out[test] = {"A": base, "B": cand}
    return out


class FakeBoots:
    """Stands in for boot_and_suite: one run per boot of the named tests, as the suite stores it."""

    def __init__(self, url: str, series: dict):
        self.url, self.series = url, series
        self.boots = {"A": 0, "B": 0}
        self.calls: list[tuple[int, list[str]]] = []

    def boot(self, label: str, tests) -> None:
        j = self.boots[label]
        self.boots[label] += 1
        with Store.open(self.url) as s:
            rid = s.begin_run(Run(label, "p1", "ctl", "inv", "measured", [HostInfo("rx", "dut1", boot_id=f"{label}{j}")]))
            s.add_samples(rid, [Sample(t, "cycles", float(v), "cycles", "lower", r, boot_id=f"{label}{j}")
                                for t in tests
                                for r, v in enumerate(self.series[t][label][j * LOADS_PER_BOOT:(j + 1) * LOADS_PER_BOOT])])
            s.finish_run(rid)

    def more(self, step: int, tests: list[str]) -> int | None:
        self.calls.append((step, list(tests)))
        for _ in range(step):
            for label in ("A", "B"):
                self.boot(label, tests)
        return None


def _ab(tmp_path, tests):
    url = str(tmp_path / "ab.db")
    fake = FakeBoots(url, ab_series())
    for _ in range(AB_PLAN.first):
        for label in ("A", "B"):
            fake.boot(label, tests)
    store = Store.open(url)

    def at(look):
        return compare.compare_labels(store, "A", "B", plan=AB_PLAN, look=look)
    return fake, store, at


def test_ab_extension_takes_more_boots_of_the_undecided_tests_only(tmp_path):
    fake, store, at = _ab(tmp_path, ["pagepool/clear", "pagepool/hidden", "pagepool/same"])
    try:
        first = at(1)
        assert {c.test: c.verdict for c in first} == {"pagepool/clear": "regression", "pagepool/hidden": "inconclusive",
                                                      "pagepool/same": "pass"}
        said = []
        comps, stop = abrun.extend(AB_PLAN, first, fake.more, at, said.append)
    finally:
        store.close()
    assert stop is None
    assert fake.calls == [(2, ["pagepool/hidden"])]          # two more A B boots, only the undecided test
    got = {c.test: (c.verdict, c.look, c.n_base) for c in comps}
    assert got == {"pagepool/clear": ("regression", "1/3", 10), "pagepool/hidden": ("regression", "2/3", 20),
                   "pagepool/same": ("pass", "1/3", 10)}
    assert said == ["== look 2/3: 1 test(s) undecided (pagepool/hidden): 2 more boot(s) per build, only these"]
    assert compare.exit_code(comps) == 1
    text = compare.format_table(comps, "A", "B")
    assert "sequential look 2/3: cycles regresses at p<0.0031" in text and "inconclusive" not in text.split("gate:")[0]


def test_ab_extension_stops_at_the_cap_and_says_so_once(tmp_path):
    fake, store, at = _ab(tmp_path, ["pagepool/noisy", "pagepool/same"])
    try:
        comps, stop = abrun.extend(AB_PLAN, at(1), fake.more, at)
    finally:
        store.close()
    assert stop is None and fake.calls == [(2, ["pagepool/noisy"]), (2, ["pagepool/noisy"])]
    assert fake.boots == {"A": 6, "B": 6}                     # never past --max-rounds
    (noisy,) = [c for c in comps if c.test == "pagepool/noisy"]
    assert noisy.verdict == "inconclusive" and noisy.more_runs is None and noisy.look == "3/3"
    assert compare.exit_code(comps) == 3
    text = compare.format_table(comps, "A", "B")
    notes = [line for line in text.splitlines() if "pagepool/noisy cycles:" in line]
    assert notes == ["  pagepool/noisy cycles: inconclusive: still undecided at the cap of 6 boot(s) per build; "
                     "reduce the testbed's noise (governor, boost, SMT, pinning) rather than adding runs, or raise the cap"]
    assert dict(compare.junit_properties(comps))["gate:pagepool/noisy:cycles"].endswith(
        "more_runs=none (the cap cannot decide it)")


def test_ab_extension_stops_when_interrupted(tmp_path):
    fake, store, at = _ab(tmp_path, ["pagepool/hidden"])
    calls = []
    try:
        comps, stop = abrun.extend(AB_PLAN, at(1), lambda step, tests: calls.append(tests) or 130, at)
    finally:
        store.close()
    assert stop == 130 and calls == [["pagepool/hidden"]] and comps[0].verdict == "inconclusive"


def test_ab_plan_from_the_options():
    ns = argparse.Namespace
    assert abrun.plan_of(ns(rounds=2, max_rounds=None)).sizes() == [2, 4, 6]
    assert abrun.plan_of(ns(rounds=2, max_rounds=2)).looks == 1          # no extension: the fixed-sample gate
    assert abrun.plan_of(ns(rounds=20, max_rounds=None)).cap == 50
    for bad in (1, 51):
        with pytest.raises(InputError, match="--max-rounds"):
            abrun.plan_of(ns(rounds=2, max_rounds=bad))


def test_only_tests_keeps_the_undecided_items(tmp_path):
    """A real pytest session: items recording an undecided test run, the others are deselected."""
    (tmp_path / "test_items.py").write_text(
        "import pytest\n"
        "@pytest.mark.hw_test_name('pagepool')\n"
        "def test_pp(): pass\n"
        "@pytest.mark.parametrize('mode', [pytest.param(m, marks=pytest.mark.hw_test_name('linerate/' + m))"
        " for m in ('tcp', 'tcpx', 'zerocopy')])\n"
        "def test_lr(mode): pass\n"
        "def test_link(): pass\n")
    code = ("import sys, pytest\nfrom hwtests.abrun import OnlyTests\n"
            f"sys.exit(pytest.main([{str(tmp_path)!r}, '-v', '-p', 'no:cacheprovider'],"
            " plugins=[OnlyTests(['pagepool/no-softirq-page_pool01', 'linerate/tcp'])]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ran = sorted(re.findall(r"::(\S+) PASSED", r.stdout))
    assert ran == ["test_lr[tcp]", "test_pp"] and "3 deselected" in r.stdout


def test_ab_gate_sequentially_drives_boots_and_stops_on_interrupt_or_lost_lease(tmp_path, monkeypatch):
    """gate_sequentially with boot_and_suite replaced (no kernels here): A B per extra boot, only
    the undecided tests, suite failures counted, Ctrl-C and a lost lease stop the plan."""
    from hwtests import plugin
    from hwtests.errors import InfraError

    fake, store, _ = _ab(tmp_path, ["pagepool/hidden", "pagepool/same"])
    rcs = iter([0, 1, 0, 0])                      # the B suite of the first extra round fails a test
    booted = []

    def boot(args, inv, pair, label, holder, tests, say):
        booted.append((label, holder, tuple(tests)))
        fake.boot(label, tests)
        return next(rcs)

    monkeypatch.setattr(abrun, "boot_and_suite", boot)
    args = argparse.Namespace(rounds=2, max_rounds=6)
    inv = argparse.Namespace(thresholds={})
    pair = argparse.Namespace(name="p1")
    try:
        comps, rc = abrun.gate_sequentially(args, inv, pair, "A", "B", store, "holder-1", lambda: None, 0.0,
                                            lambda s: None)
        assert rc == 1 and booted == [(x, "holder-1", ("pagepool/hidden",)) for x in "ABAB"]
        assert {c.test: c.verdict for c in comps} == {"pagepool/hidden": "regression", "pagepool/same": "pass"}

        (tmp_path / "2").mkdir()
        _, store2, _ = _ab(tmp_path / "2", ["pagepool/noisy"])
        rcs = iter([2])                           # pytest's 2 that the plugin did not set: interrupted
        plugin.last_exit_set = None
        monkeypatch.setattr(abrun, "boot_and_suite", lambda *a: next(rcs))
        comps, rc = abrun.gate_sequentially(args, inv, pair, "A", "B", store2, "h", lambda: None, 0.0, lambda s: None)
        assert rc == 130
        with pytest.raises(InfraError, match="lease expired before extra boot 1"):
            abrun.gate_sequentially(args, inv, pair, "A", "B", store2, "h", lambda: "lease expired", 0.0,
                                    lambda s: None)
        store2.close()
    finally:
        store.close()


def test_only_tests_on_the_real_suite_in_the_netns_lab(netns_lab, tmp_path):
    """The extension's pytest session for real (the shipped suite, the netns lab's sshd pairs):
    only the undecided test's items run and store; the rest of the suite is deselected."""
    db = tmp_path / "only.db"
    code = ("import argparse, sys, pytest\nfrom hwtests import abrun, runner\n"
            f"ns = argparse.Namespace(inventory={str(netns_lab)!r}, kernel_build='B', pair=['pair1'], db={str(db)!r},"
            " gate_baseline=None, html=None, extra=['-p', 'no:cacheprovider', '-rA'])\n"
            "sys.exit(pytest.main(runner.pytest_args(ns), plugins=[abrun.OnlyTests(['linerate/tcp'])]))\n")
    env = dict(os.environ, HWTESTS_LINERATE_DURATION="1", HWTESTS_LINERATE_REPEAT="2",
               HWTESTS_LINERATE_WARMUP="0", HWTESTS_LINERATE_COOLDOWN="0")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"\b1 passed\b", r.stdout) and re.search(r"\b\d+ deselected\b", r.stdout), r.stdout[-2000:]
    with Store.open(str(db)) as s:
        outcomes = s.outcomes(labels=["B"])
        samples = s.samples(labels=["B"])
    assert {(o.pair, o.test, o.outcome) for o in outcomes.itertuples()} == {("pair1", "linerate/tcp", "passed")}
    assert set(samples["test"]) == {"linerate/tcp"} and (samples["metric"] == "gbps").sum() == 2


def test_extension_sessions_drop_xdist_options():
    assert abrun.without_xdist(["-k", "pagepool", "-n", "4", "-v", "-n2", "--numprocesses=3", "--dist", "load",
                                "--dist=loadgroup", "--numprocesses", "auto", "-x"]) == ["-k", "pagepool", "-v", "-x"]
