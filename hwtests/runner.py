"""`hwtests run`: the hardware suite that ships with the package, run by pytest.

Results are stored under `--kernel-build`, so before anything runs each host of the
selected pairs is checked to run that build as the inventory declares it (release,
config hash); `--boot` switches the pairs to it first, under the pairs' leases, which
the suite then borrows.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from . import kswitch
from .errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_USAGE
from .hostconn import connect
from .inventory import Inventory
from .leases import holding, pair_resources, seconds
from .store import Store

SUITE_DIR = Path(__file__).parent / "suite"


def add_command(sub) -> None:
    p = sub.add_parser(
        "run", help="run the shipped hardware suite on the inventory's pairs",
        description="Run the hardware suite (line rate, devmem/zcrx functional checks, page_pool fast path) on "
        "every pair of the inventory, store the results under --kernel-build, and optionally gate against a "
        "baseline build. Any other argument goes to pytest: -k EXPR, -x, -v, --junitxml FILE, -n N "
        "(pairs in parallel, one worker per pair).",
        epilog="example: hwtests run --inventory lab.yaml --kernel-build patched --gate-baseline base "
        "-k pagepool --junitxml out.xml")
    p.add_argument("--inventory", required=True, metavar="FILE", help="hosts and pairs (YAML)")
    p.add_argument("--kernel-build", required=True, metavar="LABEL", help="label of the kernel build under test")
    p.add_argument("--pair", action="append", default=[], metavar="NAME", help="only this pair (repeatable)")
    p.add_argument("--db", metavar="URL", help="results store (SQLite path or postgresql://...)")
    p.add_argument("--gate-baseline", metavar="LABEL", help="compare against this build after the run")
    p.add_argument("--html", metavar="PATH", help="write the HTML report here")
    p.add_argument("--lease-wait", type=seconds(0), metavar="SECONDS",
                   help="wait this long for a pair another controller holds, then fail naming it (default 600)")
    p.add_argument("--lease-ttl", type=seconds(1), metavar="SECONDS",
                   help="lease expiry, renewed while the run lives; a dead controller's pair is free after it "
                   "(default 60)")
    p.add_argument("--boot", action="store_true",
                   help="switch the pairs' hosts to --kernel-build first (kexec, boot_command, or a VM restart), "
                   "holding the pairs' leases from the switch to the end of the run; without it a host that "
                   "runs another release than the build declares stops the run (exit 2) before anything is changed")
    p.add_argument("--boot-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="with --boot: how long a host may take to come back (default 300)")
    p.set_defaults(func=run, accepts_extra=True)


def pytest_args(args: argparse.Namespace) -> list[str]:
    out = [str(SUITE_DIR), "-p", "no:cacheprovider", "--rootdir", str(SUITE_DIR),
           "--inventory", args.inventory, "--kernel-build", args.kernel_build]
    for p in args.pair:
        out += ["--pair", p]
    for opt in ("db", "gate_baseline", "html", "lease_wait", "lease_ttl", "lease_holder"):
        val = getattr(args, opt, None)
        if val is not None and val != "":
            out += ["--" + opt.replace("_", "-"), str(val)]
    extra = list(getattr(args, "extra", []))
    if any(a == "-n" or a.startswith("-n") or a.startswith("--numprocesses") for a in extra):
        out += ["--dist", "loadgroup"]
    return out + extra


def run(args: argparse.Namespace) -> int:
    import pytest

    from . import plugin
    from .inventory import check_label, load

    check_label(args.kernel_build)
    inv = load(args.inventory)      # bad input is one line here, before pytest starts
    pairs = [inv.pair(p) for p in args.pair] or list(inv.pairs.values())
    with ExitStack() as stack:
        if getattr(args, "boot", False):
            args.lease_holder = boot_pairs(inv, pairs, args, stack)
        else:
            check_builds(inv, pairs, args.kernel_build)
        plugin.last_exit_set = None
        return to_hwtests_exit(int(pytest.main(pytest_args(args))), plugin.last_exit_set)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_builds(inv: Inventory, pairs, label: str) -> None:
    """Raise BuildMismatch (exit 2) naming every host of `pairs` that does not run build `label`
    as declared; reads only (uname, config), changes nothing."""
    why = []
    for name in dict.fromkeys(h for p in pairs for h in (p.rx.host, p.tx.host)):
        host = inv.hosts[name]
        if not host.kernels.get(label):
            continue                  # nothing declared for it: nothing to check, no connection
        with connect(host, inv.defaults, inv) as t:
            why.append(kswitch.identity_problem(t, host, label))
    if any(why):
        raise kswitch.BuildMismatch([w for w in why if w], label)


def plan_lease(stack: ExitStack, inv: Inventory, pairs, args, what: str):
    """Take the leases of `pairs` for the whole plan, held (renewed) until `stack` closes; the
    plan's pytest sessions borrow it under `lease.holder`."""
    store = stack.enter_context(Store.open(getattr(args, "db", None)))
    resources = sorted({r for p in pairs for r in pair_resources(inv, p)})
    info = (f"{socket.gethostname()} pid {os.getpid()} ({what}, pairs {', '.join(p.name for p in pairs)}, "
            f"since {time.strftime('%Y-%m-%d %H:%M:%S')})")
    wait = getattr(args, "lease_wait", None)
    ttl = getattr(args, "lease_ttl", None)
    lease = stack.enter_context(holding(store, resources, info, ttl=60.0 if ttl is None else ttl,
                                        wait=600.0 if wait is None else wait, progress=_say))
    for taken in lease.taken_over:
        _say(f"hwtests: took over {taken}")
    return lease


def boot_pairs(inv: Inventory, pairs, args, stack: ExitStack) -> str:
    """--boot: hold the pairs, switch their hosts to the build, return the lease holder."""
    for p in pairs:
        for h in (p.rx.host, p.tx.host):
            kswitch.build_of(inv, inv.hosts[h], args.kernel_build)
    lease = plan_lease(stack, inv, pairs, args, f"run --boot {args.kernel_build}")
    for name in dict.fromkeys(h for p in pairs for h in (p.rx.host, p.tx.host)):
        kswitch.switch(inv, inv.hosts[name], args.kernel_build, timeout=args.boot_timeout, progress=_say)
    return lease.holder


def to_hwtests_exit(rc: int, set_by_plugin: int | None) -> int:
    """pytest's exit code -> ours (see errors.py): 2 interrupted -> 130, 3 internal -> 4, 4 usage -> 2."""
    if set_by_plugin is not None and rc == set_by_plugin:
        return rc
    from pytest import ExitCode

    return {int(ExitCode.INTERRUPTED): EXIT_INTERRUPTED, int(ExitCode.INTERNAL_ERROR): EXIT_INFRA,
            int(ExitCode.USAGE_ERROR): EXIT_USAGE}.get(rc, rc)
