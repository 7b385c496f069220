"""`hwtests ab`: compare two kernel builds on one pair, boots interleaved A B A B.

Boot-to-boot differences (memory layout, IRQ placement) are a variance
component of their own, and drift over an evening hits whichever build runs
last. Alternating the builds per boot spreads both over A and B equally; every
sample keeps its boot id. After the rounds the gate compares the builds and the
HTML report is written.

The pair's lease is taken before the first switch and held, renewed, across every
boot, suite, the gate and the report; the suites borrow it (`--lease-holder`), so
no other controller can take, reboot or use the pair between two boots of the plan.

When the gate leaves tests inconclusive, more A B boots run only those tests, one look of a
sequential plan at a time (`--rounds` more boots per build per look, up to `--max-rounds`),
and each look is judged at its share of the gate's fail_p (gate.Plan), so extending does not
raise the false-alarm rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable

from . import gate, identity, kswitch, runner
from .errors import EXIT_FAIL, EXIT_INTERRUPTED, InfraError, InputError
from .gate import Comparison
from .inventory import load
from .leases import seconds


def add_command(sub) -> None:
    p = sub.add_parser(
        "ab", help="compare two kernel builds on a pair: interleaved boots, suite, gate, report",
        description="Switch the pair's hosts between two kernel builds of the inventory (A B A B ...), run the "
        "suite on each boot with --kernel-build set to the build's label, then compare the builds with the "
        "regression gate and write the HTML report. Extra arguments go to pytest (e.g. -k pagepool).",
        epilog="exit codes as `hwtests compare`: 0 no regression, 1 regression or a test failed, 2 bad input, "
        "3 inconclusive, 4 lab unusable.")
    p.add_argument("--inventory", required=True, metavar="FILE")
    p.add_argument("--pair", metavar="NAME", help="pair to use (default: the first)")
    p.add_argument("--baseline", metavar="LABEL", help="build A (default: the first build the hosts share)")
    p.add_argument("--candidate", metavar="LABEL", help="build B (default: the second build the hosts share)")
    p.add_argument("--rounds", type=int, default=2, help="boots per build, interleaved (default 2: A B A B)")
    p.add_argument("--max-rounds", type=int, metavar="N",
                   help="cap on boots per build: inconclusive tests get --rounds more A B boots, running only "
                   "them, per look of a sequential gate, up to N (default 3 x --rounds; N = --rounds: no extension)")
    p.add_argument("--db", metavar="URL", help="results store (default .hwtests/results.db)")
    p.add_argument("--html", metavar="PATH", help="write the HTML report here")
    p.add_argument("--boot-timeout", type=float, default=300.0, help="seconds a host may take to come back")
    p.add_argument("--lease-wait", type=seconds(0), metavar="SECONDS",
                   help="wait this long for a pair another controller holds, then fail naming it (default 600)")
    p.add_argument("--lease-ttl", type=seconds(1), metavar="SECONDS",
                   help="lease expiry, renewed from the first switch to the end of the plan (default 60)")
    p.set_defaults(func=run, accepts_extra=True)


def shared_builds(inv, pair) -> list[str]:
    rx, tx = inv.hosts[pair.rx.host], inv.hosts[pair.tx.host]
    return [k for k in rx.kernels if k in tx.kernels]


def schedule(a: str, b: str, rounds: int) -> list[str]:
    """A B A B ...: each build once per round, alternating."""
    return [x for _ in range(rounds) for x in (a, b)]


def run(args: argparse.Namespace) -> int:
    inv = load(args.inventory)
    if not inv.pairs:
        raise InputError(f"{args.inventory}: no pairs")
    pair = inv.pair(args.pair) if args.pair else next(iter(inv.pairs.values()))
    builds = shared_builds(inv, pair)
    a = args.baseline or (builds[0] if builds else None)
    b = args.candidate or (builds[1] if len(builds) > 1 else None)
    if not a or not b:
        raise InputError(f"{args.inventory}: pair '{pair.name}' needs two kernel builds on both hosts "
                         f"(shared builds: {', '.join(builds) or 'none'})")
    for label in (a, b):
        for h in (pair.rx.host, pair.tx.host):
            kswitch.build_of(inv, inv.hosts[h], label)
    if not 1 <= args.rounds <= 50:
        raise InputError("--rounds must be 1..50")
    plan_of(args)       # a bad --max-rounds is one line here, before any boot
    with ExitStack() as stack:
        lease = runner.plan_lease(stack, inv, [pair], args, f"ab {a} vs {b}")
        return _plan(args, inv, pair, a, b, lease.holder, lambda: lease.lost)


def _plan(args: argparse.Namespace, inv, pair, a: str, b: str, holder: str, lost) -> int:
    """Boots, suites, gate and report, all under the lease `holder` holds."""
    import pytest

    from . import plugin      # with pytest: deferred, `hwtests` starts without them

    say = (lambda s: print(s, file=sys.stderr, flush=True))
    worst = 0
    plan = schedule(a, b, args.rounds)
    t_start = time.monotonic()
    for i, label in enumerate(plan, start=1):
        if lost():
            raise InfraError(f"pair {pair.name}: {lost()} before boot {i}/{len(plan)}; no comparison made")
        say(f"== boot {i}/{len(plan)}: {label} ({time.monotonic() - t_start:.0f} s elapsed)")
        rc = boot_and_suite(args, inv, pair, label, holder, None, say, force=i > 1)
        # Ctrl-C / SIGTERM: stop here (the hosts were restored); no comparison of half a plan
        if rc == int(pytest.ExitCode.INTERRUPTED) and plugin.last_exit_set != rc:
            say(f"hwtests ab: interrupted during boot {i}/{len(plan)} ({label}); no comparison made")
            return EXIT_INTERRUPTED
        if rc not in (0, 5):      # 5: nothing collected under -k; not a failure of the builds
            say(f"hwtests ab: suite on {label} exited {rc}")
            worst = max(worst, EXIT_FAIL)
    from . import compare
    from .store import Store

    store = Store.open(args.db)
    comps, extra_rc = gate_sequentially(args, inv, pair, a, b, store, holder, lost, t_start, say)
    if extra_rc == EXIT_INTERRUPTED:
        return EXIT_INTERRUPTED
    worst = max(worst, extra_rc)
    for w in identity.conflicts(store.runs(labels=[a, b])):
        say(f"hwtests: WARNING: {w}")
    print(compare.format_table(comps, a, b))
    code = compare.exit_code(comps)
    if args.html:
        from .report import write_report
        path = write_report(store, Path(args.html), builds=[a, b], baseline=a,
                            title=f"{a} vs {b} on {pair.name}", thresholds=inv.thresholds,
                            comparisons={b: comps})   # the page shows the sequential gate's verdicts
        print(f"report: {Path(path).resolve()}")
    say(f"hwtests ab: {len(plan)} boots in {time.monotonic() - t_start:.0f} s")
    return code if code else worst


# -- extension: more boots for the undecided tests, a sequential gate ------------------------

def plan_of(args: argparse.Namespace) -> gate.Plan:
    """Looks at --rounds, 2 x --rounds, ... boots per build, up to --max-rounds (default 3 x --rounds)."""
    cap = args.max_rounds if getattr(args, "max_rounds", None) is not None else min(50, 3 * args.rounds)
    if not args.rounds <= cap <= 50:
        raise InputError(f"--max-rounds {cap}: must be between --rounds ({args.rounds}) and 50")
    return gate.Plan(args.rounds, args.rounds, cap, unit="boot(s) per build")


def undecided_tests(comparisons: Iterable[Comparison]) -> list[str]:
    """Tests with a metric the gate wants more runs of."""
    return sorted({c.test for c in comparisons if not gate.decided(c)})


class OnlyTests:
    """pytest plugin object: keep only the items that record the named tests' samples.

    A sample's test is the item's name (plugin.test_name) or, for items that record several
    tests (page_pool: one test per benchmark type), the item's name + "/" + something.
    """

    def __init__(self, tests: Iterable[str]):
        self.tests = set(tests)

    def wanted(self, name: str) -> bool:
        return any(t == name or t.startswith(name + "/") for t in self.tests)

    def pytest_collection_modifyitems(self, config, items) -> None:
        from .plugin import test_name

        keep = [it for it in items if self.wanted(test_name(it))]
        drop = [it for it in items if not self.wanted(test_name(it))]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


def extend(plan: gate.Plan, first: list[Comparison], more_boots: Callable[[int, list[str]], int | None],
           compare_at: Callable[[int], list[Comparison]], say=lambda s: None) -> tuple[list[Comparison], int | None]:
    """Looks 2.. of `plan` after the `first` look's comparisons.

    While tests are undecided and looks remain: more_boots(boots per build, tests) takes the
    next step (returns an exit code to stop, e.g. 130 when interrupted, or None), then
    compare_at(look) judges at that look. A comparison decided at one look keeps that look's
    verdict: stopping there is what the plan's false-alarm bound assumes. Returns the final
    comparisons (in the first look's order) and the stop code, if any.
    """
    def key(c: Comparison) -> tuple:
        return (c.pair, c.test, c.metric)

    final = {key(c): c for c in first}
    sizes = plan.sizes()
    for look in range(2, plan.looks + 1):
        tests = undecided_tests(final.values())
        if not tests:
            break
        step = sizes[look - 1] - sizes[look - 2]
        say(f"== look {look}/{plan.looks}: {len(tests)} test(s) undecided ({', '.join(tests)}): "
            f"{step} more {plan.unit}, only these")
        stop = more_boots(step, tests)
        if stop is not None:
            return list(final.values()), stop
        for c in compare_at(look):
            k = key(c)
            if k in final and not gate.decided(final[k]):
                final[k] = c
    return list(final.values()), None


def boot_and_suite(args: argparse.Namespace, inv, pair, label: str, holder: str, tests: list[str] | None,
                   say, force: bool = True) -> int:
    """Boot the pair into `label` (not when it runs it already, unless `force`) and run the suite under
    the plan's lease (only `tests`' items, if given).

    Returns pytest's exit code.
    """
    import pytest

    from . import plugin

    for h in (pair.rx.host, pair.tx.host):
        kswitch.switch(inv, inv.hosts[h], label, timeout=args.boot_timeout, force=force, progress=say)
    extra = list(getattr(args, "extra", []))
    ns = argparse.Namespace(inventory=args.inventory, kernel_build=label, pair=[pair.name], db=args.db,
                            gate_baseline=None, html=None, lease_holder=holder,
                            extra=without_xdist(extra) if tests else extra)
    plugin.last_exit_set = None
    return int(pytest.main(runner.pytest_args(ns), plugins=[OnlyTests(tests)] if tests else None))


def without_xdist(extra: list[str]) -> list[str]:
    """pytest arguments minus -n/--numprocesses/--dist: xdist workers collect on their own and never
    see a plugin object handed to pytest.main, so OnlyTests would select nothing there (and one
    pair runs on one worker anyway)."""
    out: list[str] = []
    skip = False
    for a in extra:
        if skip:
            skip = False
        elif a in ("-n", "--numprocesses", "--dist"):
            skip = True
        elif not a.startswith(("-n", "--numprocesses=", "--dist=")):
            out.append(a)
    return out


def gate_sequentially(args: argparse.Namespace, inv, pair, a: str, b: str, store, holder: str, lost,
                      t_start: float, say) -> tuple[list[Comparison], int]:
    """The gate at look 1 after the planned rounds, then extension boots while tests are undecided.

    Returns the final comparisons and 0, EXIT_FAIL (a suite run failed) or EXIT_INTERRUPTED;
    raises InfraError when the plan's lease is lost before an extra boot.
    """
    import pytest

    from . import compare, plugin

    plan = plan_of(args)
    worst = 0
    boots = 0

    def compare_at(look: int) -> list[Comparison]:
        return compare.compare_labels(store, a, b, thresholds=inv.thresholds, plan=plan, look=look)

    def more_boots(step: int, tests: list[str]) -> int | None:
        nonlocal worst, boots
        for _ in range(step):
            for label in (a, b):
                boots += 1
                if lost():
                    raise InfraError(f"pair {pair.name}: {lost()} before extra boot {boots}; no comparison made")
                say(f"== extra boot {boots}: {label} ({time.monotonic() - t_start:.0f} s elapsed)")
                rc = boot_and_suite(args, inv, pair, label, holder, tests, say)
                if rc == int(pytest.ExitCode.INTERRUPTED) and plugin.last_exit_set != rc:
                    say(f"hwtests ab: interrupted during extra boot {boots} ({label}); no comparison made")
                    return EXIT_INTERRUPTED
                if rc not in (0, 5):
                    say(f"hwtests ab: suite on {label} exited {rc}")
                    worst = max(worst, EXIT_FAIL)
        return None

    comps, stop = extend(plan, compare_at(1), more_boots, compare_at, say)
    if boots:
        say(f"hwtests ab: {boots} extra boot(s) for the undecided tests")
    return comps, stop if stop is not None else worst
