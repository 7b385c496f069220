"""Counter deltas in the results database, in a table of their own, so they never gate.

The gate, history and the report's verdicts read `samples` only; counters live in
`counters` (one row per run, test, repetition, host and counter), so no verdict can
ever be decided on one, and a counter a host lacks is a row with a NULL value and the
reason instead of a made-up 0. A set of counters is written in one transaction (whole
or not at all), after the samples it explains.

`medians(store, labels)` gives, per label, test and counter, the median over the
repetitions (unavailable counters left out, with their reason kept when no value
exists): what compare and the report show next to a verdict.
"""

from __future__ import annotations

import fnmatch
import json
import statistics
from contextlib import closing
from dataclasses import dataclass

from .errors import InfraError
from .store import _scrub, redact_url, register_schema

CREATE = """CREATE TABLE IF NOT EXISTS counters (
    run_id INTEGER NOT NULL,
    test TEXT NOT NULL,
    repetition INTEGER NOT NULL,
    host TEXT,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    value DOUBLE PRECISION,
    unit TEXT NOT NULL,
    reason TEXT NOT NULL,
    extra TEXT)"""
INDEX = "CREATE INDEX IF NOT EXISTS counters_run ON counters (run_id)"

register_schema(CREATE, INDEX)


@dataclass
class StoredCounter:
    """One counter of one host for one repetition of a test."""

    test: str
    repetition: int
    host: str | None
    role: str                 # rx | tx | host
    name: str
    value: float | None       # None: unavailable
    unit: str = "count"
    reason: str = ""
    extra: dict | None = None


def _sql(store, s: str) -> str:
    return s.replace("?", store.placeholder)


def add(store, run_id: int, rows: list[StoredCounter]) -> int:
    """Write the rows in one transaction; returns how many."""
    if not rows:
        return 0
    try:
        with closing(store.connect()) as conn:
            cur = conn.cursor()
            cur.execute("BEGIN")
            try:
                cur.execute(CREATE)
                cur.executemany(_sql(store, "INSERT INTO counters (run_id, test, repetition, host, role, name, "
                                            "value, unit, reason, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                                [(run_id, r.test, r.repetition, r.host, r.role, r.name, r.value, r.unit, r.reason,
                                  json.dumps(r.extra, sort_keys=True) if r.extra else None) for r in rows])
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
    except Exception as exc:  # noqa: BLE001 - driver errors: one line, no secrets
        raise InfraError(f"results store {redact_url(store.url)}: storing counters: {_scrub(str(exc), store.url)}") \
            from None
    return len(rows)


def rows(store, labels=None, test_glob: str | None = None) -> list[dict]:
    """Stored counters joined with their run's label and pair."""
    where, params = "", []
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        if not labels:
            return []
        where = f" WHERE r.label IN ({', '.join('?' * len(labels))})"
        params = labels
    try:
        with closing(store.connect()) as conn:
            cur = conn.cursor()
            cur.execute(CREATE)
            cur.execute(_sql(store, "SELECT r.label, r.pair, c.run_id, c.test, c.repetition, c.host, c.role, "
                                    "c.name, c.value, c.unit, c.reason FROM counters c JOIN runs r ON r.id = c.run_id"
                                    + where + " ORDER BY c.run_id, c.repetition"), params)
            out = [dict(zip(("label", "pair", "run_id", "test", "repetition", "host", "role", "name", "value",
                             "unit", "reason"), row)) for row in cur.fetchall()]
    except Exception as exc:  # noqa: BLE001 - driver errors: one line, no secrets
        raise InfraError(f"results store {redact_url(store.url)}: reading counters: {_scrub(str(exc), store.url)}") \
            from None
    if test_glob:
        out = [r for r in out if fnmatch.fnmatchcase(r["test"], test_glob)]
    return out


@dataclass
class CounterMedian:
    label: str
    test: str
    role: str
    name: str
    median: float | None       # None: unavailable in every repetition
    n: int                     # repetitions with a value
    unit: str
    reason: str = ""           # why unavailable (when median is None)


def medians(stored: list[dict]) -> dict[tuple[str, str, str, str], CounterMedian]:
    """(label, test, role, name) -> median over repetitions and runs (pure)."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in stored:
        groups.setdefault((r["label"], r["test"], r["role"], r["name"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        vals = [float(r["value"]) for r in rs if r["value"] is not None]
        reason = "" if vals else next((r["reason"] for r in rs if r["reason"]), "unavailable")
        out[key] = CounterMedian(*key, statistics.median(vals) if vals else None, len(vals), rs[0]["unit"], reason)
    return out


def from_rows(test: str, repetition: int, host: str | None, role: str, rows) -> list[StoredCounter]:
    """countersnap.CounterRow (or anything with name/value/unit/reason) -> rows to store."""
    return [StoredCounter(test, repetition, host, role, r.name, r.value, r.unit, r.reason) for r in rows]


def record(hs, pair_name: str, counters: list[StoredCounter]) -> None:
    """Store counters under the plugin session's (`hw_session`) run of this pair; nothing with
    --no-store or without a session."""
    if hs is None or hs.no_store or not counters:
        return
    add(hs.store, hs.run_id(pair_name), counters)
