"""Counters of two builds side by side, large changes marked: why a verdict came out as it did.

Counters explain and never gate: nothing here feeds `gate` or an exit code. Per test,
pair, host role and counter the median over repetitions of each build (from
`counterstore`), the ratio candidate/baseline, and a mark where the change is large:
at least twice or at most half (and, for event counts, by at least `MIN_EVENTS`
events, so 1 -> 3 retransmits is not news), or a counter that appeared from 0.

A counter row of the store's test `pagepool` (one per module load) belongs to every
`pagepool/<type>` test of the samples.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass

from . import counterstore

MIN_EVENTS = 10
FACTOR = 2.0

# Shown for every test that has them, changed or not; other counters only when marked.
DISPLAY = (
    "net.Tcp.RetransSegs", "net.TcpExt.TCPLostRetransmit", "net.TcpExt.TCPOFOQueue", "net.TcpExt.TCPOFODrop",
    "net.TcpExt.PruneCalled", "net.TcpExt.RcvPruned", "net.TcpExt.TCPRcvCollapsed", "net.TcpExt.TCPBacklogDrop",
    "net.TcpExt.TCPRcvQDrop", "net.TcpExt.TCPZeroWindowDrop", "net.TcpExt.ListenDrops", "net.Ip.InDiscards",
    "net.Tcp.InErrs", "softnet.processed", "softnet.dropped", "softnet.time_squeeze", "softnet.time_squeeze.worst",
    "irq.total", "irq.worst_cpu_count", "ethtool",
    "perf.cycles_per_element", "perf.instructions_per_element", "perf.cache-misses_per_element",
    "perf.branch-misses_per_element",
)
MAX_SHOWN = 30


@dataclass
class Side:
    median: float | None
    n: int
    reason: str = ""


@dataclass
class CounterChange:
    test: str
    pair: str
    role: str
    name: str
    unit: str
    baseline: Side
    candidate: Side
    ratio: float | None        # candidate / baseline median (None: not defined)
    mark: str                  # "" or why it stands out ("x3.0", "appeared", "unavailable in candidate")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["ratio"] is not None and not math.isfinite(d["ratio"]):
            d["ratio"] = None
        return d


def mark(base: Side, cand: Side, unit: str = "count") -> tuple[float | None, str]:
    """(ratio, mark) of one counter's medians (pure)."""
    b, c = base.median, cand.median
    if b is None and c is None:
        return None, ""
    if b is None:
        return None, "unavailable in baseline"
    if c is None:
        return None, "unavailable in candidate"
    floor = MIN_EVENTS if unit == "count" else 0.0
    if b == 0:
        return None, ("appeared" if c >= max(floor, 1e-12) else "")
    ratio = c / b
    if ratio >= FACTOR and c - b >= floor:
        return ratio, f"x{ratio:.1f}"
    if ratio <= 1 / FACTOR and b - c >= floor:
        return ratio, f"x{ratio:.2f}"
    return ratio, ""


def _matches(test: str, glob: str | None) -> bool:
    return glob is None or fnmatch.fnmatchcase(test, glob) or fnmatch.fnmatchcase(test + "/", glob)


def changes(stored: list[dict], baseline: str, candidate: str, test_glob: str | None = None,
            pair: str | None = None) -> list[CounterChange]:
    """Every counter of either build, side by side (pure; `stored` as `counterstore.rows` gives)."""
    rows = [r for r in stored if r["label"] in (baseline, candidate) and _matches(r["test"], test_glob)
            and (pair is None or (r["pair"] or "") == pair)]
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        key = (r["test"], r["pair"] or "", r["role"], r["name"])
        groups.setdefault(key, {}).setdefault(r["label"], []).append(r)
    out = []
    for (test, pr, role, name), by_label in sorted(groups.items()):
        sides = {}
        for lb in (baseline, candidate):
            rs = by_label.get(lb, [])
            m = counterstore.medians(rs).get((lb, test, role, name)) if rs else None
            sides[lb] = Side(m.median, m.n, m.reason) if m else Side(None, 0, "not measured")
        unit = next(r["unit"] for rs in by_label.values() for r in rs)
        ratio, mk = mark(sides[baseline], sides[candidate], unit)
        out.append(CounterChange(test, pr, role, name, unit, sides[baseline], sides[candidate], ratio, mk))
    return out


def shown(chs: list[CounterChange]) -> list[CounterChange]:
    """What a reader sees: the DISPLAY counters and any other marked one, marked first; at most MAX_SHOWN."""
    keep = [c for c in chs if c.name in DISPLAY or (c.mark and not c.mark.startswith("unavailable"))]
    order = {n: i for i, n in enumerate(DISPLAY)}
    keep.sort(key=lambda c: (c.mark == "", c.test, c.pair, c.role, order.get(c.name, len(DISPLAY)), c.name))
    return keep[:MAX_SHOWN]


def for_test(chs: list[CounterChange], test: str) -> list[CounterChange]:
    """The counters that belong to a samples test (`pagepool` counters to every `pagepool/<type>`)."""
    return [c for c in chs if c.test == test or test.startswith(c.test + "/")]


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v)}"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def format_text(chs: list[CounterChange], baseline: str, candidate: str) -> str:
    """The text `hwtests compare` prints below the gate's table."""
    rows = shown(chs)
    if not rows:
        return ""
    several = len({c.pair for c in rows}) > 1
    lines = [f"counters (median per build; they explain, never gate; marked: x{FACTOR:g} or more either way)"]
    head = ["test"] + (["pair"] if several else []) + ["host", "counter", baseline, candidate, "mark"]
    body = []
    for c in rows:
        base = fmt(c.baseline.median) if c.baseline.median is not None else "n/a"
        cand = fmt(c.candidate.median) if c.candidate.median is not None else "n/a"
        note = c.mark or ("" if c.baseline.median is not None or c.candidate.median is not None
                          else (c.candidate.reason or c.baseline.reason)[:70])
        body.append([c.test] + ([c.pair] if several else []) + [c.role, c.name, base, cand, note])
    w = [max(len(str(r[i])) for r in body + [head]) for i in range(len(head))]
    for r in [head] + body:
        lines.append("  " + "  ".join(str(v).ljust(x) for v, x in zip(r, w)).rstrip())
    return "\n".join(lines)


def for_labels(store, baseline: str, candidate: str, test_glob: str | None = None,
               pair: str | None = None) -> list[CounterChange]:
    """Read the two builds' counters from the store and put them side by side."""
    return changes(counterstore.rows(store, labels=[baseline, candidate]), baseline, candidate, test_glob, pair)


def table(stored: list[dict], builds: list[str], baseline: str | None) -> dict[str, list[dict]]:
    """Per counters test: rows of one counter each, medians of every build in `builds` order and
    the marks of each candidate against the baseline (pure; for the HTML report)."""
    cands = [b for b in builds if b != baseline]
    per: dict[tuple, dict] = {}
    order: list[tuple] = []
    for cand in (cands if baseline else builds):
        base = baseline if baseline else cand
        for ch in changes(stored, base, cand):
            key = (ch.test, ch.pair, ch.role, ch.name)
            if key not in per:
                per[key] = {"test": ch.test, "pair": ch.pair, "role": ch.role, "name": ch.name, "unit": ch.unit,
                            "medians": {}, "marks": [], "reason": "", "change": ch}
                order.append(key)
            row = per[key]
            row["medians"][base] = ch.baseline.median
            row["medians"][cand] = ch.candidate.median
            if baseline and ch.mark:
                row["marks"].append(ch.mark if len(cands) == 1 else f"{cand}: {ch.mark}")
                row["change"] = ch if not row["change"].mark else row["change"]
            row["reason"] = row["reason"] or ch.candidate.reason or ch.baseline.reason
    keep = {id(c) for c in shown([per[k]["change"] for k in order])}
    out: dict[str, list[dict]] = {}
    for k in order:
        r = per[k]
        if id(r["change"]) not in keep:
            continue
        out.setdefault(r["test"], []).append({
            "pair": r["pair"], "role": r["role"], "name": r["name"], "unit": r["unit"],
            "cells": [fmt(r["medians"].get(b)) for b in builds], "mark": "; ".join(r["marks"]),
            "reason": r["reason"] if all(r["medians"].get(b) is None for b in builds) else ""})
    for rows in out.values():
        rows.sort(key=lambda r: (r["mark"] == "",))
    return out


def attach_to_tests(store, tests: list[dict], builds: list[str], baseline: str | None) -> None:
    """Set `counters` (rows for the report's template) on each report test dict; [] where none."""
    tab = table(counterstore.rows(store, labels=builds), builds, baseline)
    for tt in tests:
        tt["counters"] = [r for name, rows in tab.items() if tt["name"] == name or tt["name"].startswith(name + "/")
                          for r in rows]
