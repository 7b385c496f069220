"""The `hwtests` command: one argparse front for every subcommand.

Each subcommand lives in the module that holds its logic and registers itself
through `add_command(subparsers)`; its handler returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from . import __version__
from .errors import EXIT_USAGE, HwtestsError

# Modules that register a subcommand, in the order `--help` lists them.
COMMAND_MODULES = (
    "hwtests.labcli",
    "hwtests.probe",
    "hwtests.runner",
    "hwtests.abrun",
    "hwtests.report",
    "hwtests.compare",
    "hwtests.history",
    "hwtests.importlog",
)

EPILOG = """exit codes: 0 ok; 1 a test failed or a regression was found; 2 bad input;
3 inconclusive (take more runs); 4 lab or host unusable; 130 interrupted."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command, and exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hwtests",
        description="Hardware-in-the-loop tests and benchmarks for Linux kernel networking: "
        "line rate with devmem TCP / io_uring zero-copy RX, page_pool fast-path cycles, "
        "results across kernel builds with a statistical regression gate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hwtests {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:   # a real import error inside the module
                raise
            continue               # not part of this build
        mod.add_command(sub)
    return parser




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "accepts_extra", False):
        args.extra = extra
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return int(args.func(args) or 0)
    except HwtestsError as exc:
        print(f"hwtests: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hwtests: interrupted", file=sys.stderr)
        return 130


def _sigterm(signum, frame):  # turn SIGTERM into the same clean unwinding as Ctrl-C
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
