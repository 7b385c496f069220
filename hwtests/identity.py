"""Kernel build identity in the store: one label, one kernel.

`hwtests run` checks a build's declared release and config hash against the hosts
before it runs, but a build declared without them is accepted, and results can be
imported or written by older versions. So the readers (compare, report, history)
look again: when the runs of one label were measured on different kernels
(release or config hash), every figure of that label mixes builds, and they say so,
naming the runs. Pure functions over `Run` records; no I/O.
"""

from __future__ import annotations

from typing import Iterable

MAX_RUNS_NAMED = 6


def run_identity(run) -> tuple[tuple[str, str], ...]:
    """The kernels a run's hosts ran: sorted (release, config hash) pairs; empty when unknown."""
    return tuple(sorted({(h.kernel_release, h.config_hash or "") for h in run.hosts if h.kernel_release}))


def _describe(ident: tuple[tuple[str, str], ...]) -> str:
    return " + ".join(rel + (f" (config {cfg[:12]})" if cfg else "") for rel, cfg in ident)


def _runs(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:MAX_RUNS_NAMED])
    more = len(ids) - MAX_RUNS_NAMED
    return ("run " if len(ids) == 1 else "runs ") + shown + (f" and {more} more" if more > 0 else "")


def conflicts(runs: Iterable) -> list[str]:
    """One warning per label whose runs were measured on more than one kernel identity."""
    by_label: dict[str, dict[tuple, list[int]]] = {}
    for r in runs:
        ident = run_identity(r)
        if ident:                      # runs without host releases (some imports) prove nothing
            by_label.setdefault(r.label, {}).setdefault(ident, []).append(int(r.id))
    out = []
    for label, idents in by_label.items():
        if len(idents) > 1:
            parts = [f"{_describe(ident)} in {_runs(ids)}" for ident, ids in idents.items()]
            out.append(f"build '{label}' was measured on {len(idents)} different kernels: " + "; ".join(parts)
                       + " (its figures mix them)")
    return out
