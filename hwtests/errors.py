"""Errors a user sees as one line, and the exit codes scripts can trust."""

from __future__ import annotations

# Exit codes, shared by every command (documented in README).
EXIT_OK = 0            # nothing failed, nothing regressed
EXIT_FAIL = 1          # a test failed or the gate found a regression
EXIT_USAGE = 2         # bad input: arguments, inventory, log file, unknown label
EXIT_INCONCLUSIVE = 3  # the gate could not decide; take more runs
EXIT_INFRA = 4         # the lab or a host could not be reached or set up
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; hosts were restored before exiting


class HwtestsError(Exception):
    """An error with a one-line message meant for the user, never a traceback."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:  # keep it on one line whatever the cause said
        return " ".join(super().__str__().split())


class InputError(HwtestsError):
    """Bad user input: a file, a line, a field or an argument is wrong."""

    exit_code = EXIT_USAGE


class InfraError(HwtestsError):
    """A host, the lab or a service the run needs is not usable."""

    exit_code = EXIT_INFRA
