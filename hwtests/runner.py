"""`hwtests run`: the hardware suite that ships with the package, run by pytest."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_USAGE
from .leases import seconds

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
    p.set_defaults(func=run, accepts_extra=True)


def pytest_args(args: argparse.Namespace) -> list[str]:
    out = [str(SUITE_DIR), "-p", "no:cacheprovider", "--rootdir", str(SUITE_DIR),
           "--inventory", args.inventory, "--kernel-build", args.kernel_build]
    for p in args.pair:
        out += ["--pair", p]
    for opt in ("db", "gate_baseline", "html", "lease_wait", "lease_ttl"):
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
    for p in args.pair:
        inv.pair(p)
    plugin.last_exit_set = None
    return to_hwtests_exit(int(pytest.main(pytest_args(args))), plugin.last_exit_set)


def to_hwtests_exit(rc: int, set_by_plugin: int | None) -> int:
    """pytest's exit code -> ours (see errors.py): 2 interrupted -> 130, 3 internal -> 4, 4 usage -> 2."""
    if set_by_plugin is not None and rc == set_by_plugin:
        return rc
    from pytest import ExitCode

    return {int(ExitCode.INTERRUPTED): EXIT_INTERRUPTED, int(ExitCode.INTERNAL_ERROR): EXIT_INFRA,
            int(ExitCode.USAGE_ERROR): EXIT_USAGE}.get(rc, rc)
