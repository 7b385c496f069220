"""The results store: runs, the identity of the kernel builds they measured, raw samples, outcomes.

SQLite by default (`.hwtests/results.db` under the current directory, or any path),
PostgreSQL when the URL starts with `postgresql://`. Both backends share one schema
and one code path; the `Dialect` below holds the few differences (parameter style,
auto-increment key, how a write transaction starts, the schema lock).

Run identity: the build label plus, per host, kernel release, /proc/version, config
hash, cmdline, boot id, NIC driver and firmware and the hygiene environment (JSON),
and the sha256 of every deployed artifact.

Writes are transactional: `add_samples` is one transaction that also records the
batch size in `batches`, so a process killed in the middle leaves every committed
batch whole and no part of the one in flight (`check_consistency` verifies it).
SQLite runs in WAL mode with a busy timeout so concurrent writers wait instead of
failing. Nothing secret is stored or printed: `redact_url` hides a URL's password.

The schema is a list of statements (`SCHEMA`) applied on open, versioned in the
`meta` table. Another module can append its own `CREATE ... IF NOT EXISTS`
statements with `register_schema` before the store is opened.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import json
import os
import random
import re
import sqlite3
import time
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import HwtestsError, InfraError, InputError

DEFAULT_PATH = Path(".hwtests") / "results.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
SAMPLE_COLUMNS = ["run_id", "label", "pair", "source", "started", "test", "metric", "value", "unit", "better",
                  "repetition", "boot_id", "host"]

# {pk} is the dialect's auto-increment primary key, {float} its double type.
SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS runs (
        id {pk},
        label TEXT NOT NULL,
        pair TEXT,
        controller TEXT,
        inventory_hash TEXT,
        source TEXT NOT NULL,
        started TEXT NOT NULL,
        finished TEXT,
        status TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS runs_label ON runs (label)",
    """CREATE TABLE IF NOT EXISTS run_hosts (
        id {pk},
        run_id INTEGER NOT NULL REFERENCES runs (id),
        role TEXT,
        name TEXT,
        kernel_release TEXT,
        proc_version TEXT,
        config_hash TEXT,
        cmdline TEXT,
        boot_id TEXT,
        nic_driver TEXT,
        nic_firmware TEXT,
        env TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS run_hosts_run ON run_hosts (run_id)",
    """CREATE TABLE IF NOT EXISTS artifacts (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (run_id, name))""",
    """CREATE TABLE IF NOT EXISTS batches (
        id {pk},
        run_id INTEGER NOT NULL REFERENCES runs (id),
        n INTEGER NOT NULL,
        created TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS samples (
        id {pk},
        run_id INTEGER NOT NULL REFERENCES runs (id),
        batch_id INTEGER NOT NULL REFERENCES batches (id),
        test TEXT NOT NULL,
        metric TEXT NOT NULL,
        value {float} NOT NULL,
        unit TEXT NOT NULL,
        better TEXT NOT NULL,
        repetition INTEGER NOT NULL,
        boot_id TEXT,
        host TEXT,
        extra TEXT)""",
    "CREATE INDEX IF NOT EXISTS samples_run ON samples (run_id)",
    "CREATE INDEX IF NOT EXISTS samples_metric_test ON samples (metric, test)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        id {pk},
        run_id INTEGER NOT NULL REFERENCES runs (id),
        test TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        recorded TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS outcomes_run ON outcomes (run_id)",
]

# Statements that bring a database of version k-1 to version k (applied in order, inside the schema lock).
MIGRATIONS: dict[int, list[str]] = {}


def register_schema(*statements: str) -> None:
    """Add `CREATE ... IF NOT EXISTS` statements (e.g. another module's table) applied on every open."""
    for s in statements:
        if s not in SCHEMA:
            SCHEMA.append(s)


# -- data ----------------------------------------------------------------------------------

@dataclass
class HostInfo:
    role: str
    name: str
    kernel_release: str | None = None
    proc_version: str | None = None
    config_hash: str | None = None
    cmdline: str | None = None
    boot_id: str | None = None
    nic_driver: str | None = None
    nic_firmware: str | None = None
    env: dict = field(default_factory=dict)


@dataclass
class Sample:
    test: str
    metric: str
    value: float
    unit: str
    better: str            # "lower" | "higher"
    repetition: int = 0
    boot_id: str | None = None
    host: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Run:
    label: str
    pair: str | None
    controller: str | None
    inventory_hash: str | None
    source: str            # "measured" | "import"
    hosts: list[HostInfo] = field(default_factory=list)
    started: _dt.datetime | None = None
    id: int | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    finished: _dt.datetime | None = None
    status: str = "running"


# -- secrets --------------------------------------------------------------------------------

_URL_PW = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@", re.I)
_QUERY_PW = re.compile(r"(?P<k>[?&]password=)[^&]*", re.I)
_KV_PW = re.compile(r"(?P<k>(?<![?&])\bpassword\s*=\s*)('[^']*'|[^\s&]+)", re.I)


def redact_url(url: str | None) -> str:
    """The URL with any password replaced by `***` (user, host and database kept)."""
    if url is None:
        return str(DEFAULT_PATH)
    s = str(url)
    s = _URL_PW.sub(lambda m: f"{m['scheme']}{m['user']}:***@", s)
    s = _QUERY_PW.sub(lambda m: f"{m['k']}***", s)
    s = _KV_PW.sub(lambda m: f"{m['k']}***", s)
    return s


def _password_of(url: str) -> str | None:
    m = _URL_PW.match(url)
    if m and m["pw"]:
        return m["pw"]
    m = re.search(r"[?&]password=([^&]*)", url, re.I)
    return m.group(1) if m and m.group(1) else None


def _scrub(text: str, url: str) -> str:
    """An error text with the URL's password (if any) removed, on one line."""
    pw = _password_of(url)
    if pw:
        text = text.replace(pw, "***")
    return " ".join(redact_url(text).split())


# -- dialects -------------------------------------------------------------------------------

class Dialect:
    name = "?"
    placeholder = "?"
    pk = "INTEGER PRIMARY KEY"
    float_type = "DOUBLE PRECISION"

    def connect(self):
        raise NotImplementedError

    def sql(self, s: str) -> str:
        """Statement text written with `?` in this dialect's parameter style."""
        return s if self.placeholder == "?" else s.replace("?", self.placeholder)

    def ddl(self, s: str) -> str:
        return s.format(pk=self.pk, float=self.float_type)

    def begin(self, cur) -> None:
        cur.execute("BEGIN")

    def schema_lock(self, cur) -> None:
        """Serialize schema creation between processes (inside the transaction)."""


class SQLiteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    pk = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: Path):
        self.path = path

    def connect(self):
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # Switching a new file to WAL needs a moment alone with it and does not wait on the
        # busy handler: xdist workers opening one new store at once would see "locked".
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02 + random.random() * 0.05)
        if str(mode).lower() != "wal":     # e.g. a file system without shared memory: stay safe anyway
            conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = NORMAL")   # WAL + NORMAL: a killed process loses no commit
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def begin(self, cur) -> None:
        cur.execute("BEGIN IMMEDIATE")    # take the write lock now: no upgrade deadlock between writers


class PostgresDialect(Dialect):
    name = "postgresql"
    placeholder = "%s"
    pk = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    SCHEMA_LOCK_KEY = 0x6877746573   # "hwtes"

    def __init__(self, url: str):
        self.url = url

    def connect(self):
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is a dependency
            raise InfraError(f"PostgreSQL results store needs psycopg: {exc}") from None
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=15)
        return conn

    def schema_lock(self, cur) -> None:
        cur.execute(f"SELECT pg_advisory_xact_lock({self.SCHEMA_LOCK_KEY})")


# -- the store ------------------------------------------------------------------------------

def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _ts(t: _dt.datetime | None) -> str:
    t = t or _now()
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")


def _parse_ts(s: str | None) -> _dt.datetime | None:
    return _dt.datetime.fromisoformat(s) if s else None


def _glob_to_like(glob: str) -> str | None:
    """A shell glob as a LIKE pattern (escape '\\'), or None when it needs fnmatch ([...] classes)."""
    if "[" in glob:
        return None
    out = []
    for ch in glob:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


class Store:
    """The results store. Use `Store.open(url)`; one connection per Store, guarded by a lock."""

    def __init__(self, dialect: Dialect, url: str):
        self.dialect = dialect
        self.url = url
        self._lock = threading.RLock()
        self._conn = None
        self._connect_and_init()

    # -- opening
    @classmethod
    def open(cls, url: str | os.PathLike | None = None, create: bool = True) -> "Store":
        """None: `.hwtests/results.db` under the current directory; a path (or sqlite:///path); or postgresql://...

        Commands that only read (compare, history, report) pass create=False: a SQLite file that
        is not there is a mistyped path, not a store to make (with its directories) and call empty.
        """
        if url is None or str(url) == "":
            path = DEFAULT_PATH
            return cls(SQLiteDialect(cls._sqlite_path(path, create)), str(path))
        s = str(url)
        if s.startswith(("postgresql://", "postgres://")):
            return cls(PostgresDialect(s), s)
        if "://" in s and not s.startswith("sqlite://"):
            raise InputError(f"results store URL {redact_url(s)!r}: use a SQLite path or postgresql://...")
        if s.startswith("sqlite:///"):      # sqlite:///relative.db, sqlite:////absolute.db
            s = s[len("sqlite:///"):]
        elif s.startswith("sqlite://"):
            raise InputError(f"results store URL {s!r}: use sqlite:///relative/path or sqlite:////absolute/path")
        return cls(SQLiteDialect(cls._sqlite_path(Path(s), create)), s)

    @staticmethod
    def _sqlite_path(path: Path, create: bool = True) -> Path:
        if path.is_dir():
            raise InputError(f"results store {path} is a directory; give a file path")
        if not create and not path.exists():
            raise InputError(f"results store {path}: no such file (hwtests run and import-log create it; --db "
                             "names another)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"results store {path}: cannot create {path.parent}: {exc.strerror}") from None
        return path

    def _connect_and_init(self) -> None:
        try:
            self._conn = self.dialect.connect()
        except HwtestsError:
            raise
        except Exception as exc:  # noqa: BLE001 - every driver error becomes one line
            self._not_a_database(exc)
            raise InfraError(f"cannot open results store {redact_url(self.url)}: {_scrub(str(exc), self.url)}") from None
        try:
            self._init_schema()
        except HwtestsError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001
            self.close()
            self._not_a_database(exc)
            raise InfraError(f"results store {redact_url(self.url)}: cannot create the schema: "
                             f"{_scrub(str(exc), self.url)}") from None

    def _not_a_database(self, exc: Exception) -> None:
        """A SQLite path to some other file is bad input (exit 2), not a store that is down."""
        if self.dialect.name == "sqlite" and "not a database" in str(exc):
            raise InputError(f"results store {self.url}: not a SQLite database (--db names another file?)") from None

    def _init_schema(self) -> None:
        with self._tx() as cur:
            self.dialect.schema_lock(cur)
            cur.execute(self.dialect.ddl(SCHEMA[0]))     # meta first: it says which version this is
            cur.execute(self._q("SELECT value FROM meta WHERE key = ?"), ("schema_version",))
            row = cur.fetchone()
            have = int(row[0]) if row else None
            if have is not None and have > SCHEMA_VERSION:
                raise InputError(f"results store {redact_url(self.url)} has schema version {have}; this hwtests "
                                 f"knows up to {SCHEMA_VERSION}: upgrade hwtests")
            if have is not None:
                for v in range(have + 1, SCHEMA_VERSION + 1):
                    for stmt in MIGRATIONS.get(v, []):
                        cur.execute(self.dialect.ddl(stmt))
            for stmt in SCHEMA[1:]:
                cur.execute(self.dialect.ddl(stmt))
            if have is None:
                cur.execute(self._q("INSERT INTO meta (key, value) VALUES (?, ?)"),
                            ("schema_version", str(SCHEMA_VERSION)))
            elif have < SCHEMA_VERSION:
                cur.execute(self._q("UPDATE meta SET value = ? WHERE key = ?"), (str(SCHEMA_VERSION), "schema_version"))

    def schema_version(self) -> int:
        with self._read() as cur:
            cur.execute(self._q("SELECT value FROM meta WHERE key = ?"), ("schema_version",))
            return int(cur.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.dialect.name}: {redact_url(self.url)})"

    # -- for other modules keeping tables in the same database (leases)
    @property
    def placeholder(self) -> str:
        return self.dialect.placeholder

    def connect(self):
        """A new DB-API connection to the same database (the caller closes it)."""
        conn = self.dialect.connect()
        if self.dialect.name == "sqlite":
            conn.isolation_level = ""    # DB-API style: implicit transactions, explicit commit
        else:
            conn.autocommit = False
        return conn

    # -- transactions
    def _q(self, s: str) -> str:
        return self.dialect.sql(s)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """One write transaction; rolled back on any error."""
        with self._lock:
            if self._conn is None:
                raise InfraError(f"results store {redact_url(self.url)} is closed")
            cur = self._conn.cursor()
            self.dialect.begin(cur)
            try:
                yield cur
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                with contextlib.suppress(Exception):
                    cur.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._lock:
            if self._conn is None:
                raise InfraError(f"results store {redact_url(self.url)} is closed")
            cur = self._conn.cursor()
            try:
                yield cur
            finally:
                with contextlib.suppress(Exception):
                    cur.close()

    def _write(self, what: str, fn):
        try:
            with self._tx() as cur:
                return fn(cur)
        except HwtestsError:
            raise
        except Exception as exc:  # noqa: BLE001 - driver errors: one line, no secrets
            raise InfraError(f"results store {redact_url(self.url)}: {what}: {_scrub(str(exc), self.url)}") from None

    def _insert_id(self, cur, sql: str, params: tuple) -> int:
        cur.execute(self._q(sql + " RETURNING id"), params)
        return int(cur.fetchone()[0])

    # -- writes
    def begin_run(self, run: Run) -> int:
        """Store a run and its hosts and artifacts; returns its id (also set on `run.id`)."""
        if not run.label:
            raise InputError("a run needs a label (the kernel build under test)")
        if run.source not in ("measured", "import"):
            raise InputError(f"run source {run.source!r}: use 'measured' or 'import'")
        started = run.started or _now()

        def write(cur):
            rid = self._insert_id(cur, "INSERT INTO runs (label, pair, controller, inventory_hash, source, started, "
                                       "status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  (run.label, run.pair, run.controller, run.inventory_hash, run.source, _ts(started),
                                   "running"))
            for h in run.hosts:
                cur.execute(self._q("INSERT INTO run_hosts (run_id, role, name, kernel_release, proc_version, "
                                    "config_hash, cmdline, boot_id, nic_driver, nic_firmware, env) "
                                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                            (rid, h.role, h.name, h.kernel_release, h.proc_version, h.config_hash, h.cmdline,
                             h.boot_id, h.nic_driver, h.nic_firmware, _json(h.env)))
            for name, sha in sorted((run.artifacts or {}).items()):
                cur.execute(self._q("INSERT INTO artifacts (run_id, name, sha256) VALUES (?, ?, ?)"),
                            (rid, str(name), str(sha)))
            return rid

        rid = self._write("cannot store the run", write)
        run.id = rid
        run.started = started
        return rid

    def add_artifacts(self, run_id: int, artifacts: dict[str, str]) -> None:
        """Add what was deployed after the run began (name -> sha256); a name already stored keeps
        its first digest."""
        run_id = int(run_id)

        def write(cur):
            self._check_run(cur, run_id)
            for name, sha in sorted(artifacts.items()):
                cur.execute(self._q("INSERT INTO artifacts (run_id, name, sha256) VALUES (?, ?, ?) "
                                    "ON CONFLICT (run_id, name) DO NOTHING"), (run_id, str(name), str(sha)))

        self._write("cannot store the artifacts", write)

    def add_samples(self, run_id: int, samples: Iterable[Sample]) -> int:
        """Store samples in one transaction (all or none); returns the batch id."""
        run_id = int(run_id)
        rows = []
        for s in samples:
            if s.better not in ("lower", "higher"):
                raise InputError(f"sample {s.test}:{s.metric}: better must be 'lower' or 'higher', not {s.better!r}")
            try:
                value = float(s.value)
            except (TypeError, ValueError):
                raise InputError(f"sample {s.test}:{s.metric}: value {s.value!r} is not a number") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise InputError(f"sample {s.test}:{s.metric}: value {value} is not finite")
            rows.append((s.test, s.metric, value, s.unit, s.better, int(s.repetition), s.boot_id, s.host,
                         _json(s.extra) if s.extra else None))

        def write(cur):
            self._check_run(cur, run_id)
            bid = self._insert_id(cur, "INSERT INTO batches (run_id, n, created) VALUES (?, ?, ?)",
                                  (run_id, len(rows), _ts(None)))
            if rows:
                cur.executemany(self._q("INSERT INTO samples (run_id, batch_id, test, metric, value, unit, better, "
                                        "repetition, boot_id, host, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                                [(run_id, bid) + r for r in rows])
            return bid

        return self._write("cannot store samples", write)

    def add_outcome(self, run_id: int, test: str, outcome: str, reason: str = "") -> None:
        run_id = int(run_id)
        if outcome not in OUTCOMES:
            raise InputError(f"outcome {outcome!r} of {test}: use one of {', '.join(OUTCOMES)}")

        def write(cur):
            self._check_run(cur, run_id)
            cur.execute(self._q("INSERT INTO outcomes (run_id, test, outcome, reason, recorded) VALUES (?, ?, ?, ?, ?)"),
                        (run_id, test, outcome, reason or "", _ts(None)))

        self._write("cannot store the outcome", write)

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        run_id = int(run_id)
        def write(cur):
            self._check_run(cur, run_id)
            cur.execute(self._q("UPDATE runs SET status = ?, finished = ? WHERE id = ?"), (status, _ts(None), run_id))

        self._write("cannot finish the run", write)

    def _check_run(self, cur, run_id: int) -> None:
        cur.execute(self._q("SELECT 1 FROM runs WHERE id = ?"), (run_id,))
        if cur.fetchone() is None:
            raise InputError(f"results store {redact_url(self.url)}: no run with id {run_id}")

    # -- reads
    def labels(self) -> list[str]:
        """Build labels in the order of their first run."""
        with self._read() as cur:
            cur.execute("SELECT label, MIN(id) AS first FROM runs GROUP BY label ORDER BY first")
            return [r[0] for r in cur.fetchall()]

    def metrics(self) -> list[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT metric FROM samples ORDER BY metric")
            return [r[0] for r in cur.fetchall()]

    def _where(self, labels=None, metric=None, pair=None, test_glob=None, table="s") -> tuple[str, list, str | None]:
        conds, params = [], []
        if labels is not None:
            labels = [labels] if isinstance(labels, str) else list(labels)
            if not labels:
                conds.append("1 = 0")
            else:
                conds.append(f"r.label IN ({', '.join('?' * len(labels))})")
                params += labels
        if metric is not None:
            conds.append(f"{table}.metric = ?")
            params.append(metric)
        if pair is not None:
            conds.append("r.pair = ?")
            params.append(pair)
        post_glob = None
        if test_glob is not None:
            like = _glob_to_like(test_glob)
            if like is None:
                post_glob = test_glob
            else:
                conds.append(f"{table}.test LIKE ? ESCAPE '\\'")
                params.append(like)
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        return where, params, post_glob

    def samples(self, labels=None, test_glob: str | None = None, metric: str | None = None,
                pair: str | None = None):
        """Raw samples joined with their run, as a pandas DataFrame (columns: `SAMPLE_COLUMNS`).

        Ordered by run start, then run id, then insertion. The run columns are mapped
        from the (few) runs in pandas rather than joined per row in SQL: at a million
        samples the per-row join, its sort and the per-row timestamp parsing were most
        of the report's time.
        """
        import numpy as np
        import pandas as pd

        where, params, post = self._where(labels, metric, pair, test_glob)
        run_where, run_params, _ = self._where(labels, None, pair)
        cols = ["run_id", "test", "metric", "value", "unit", "better", "repetition", "boot_id", "host"]
        with self._read() as cur:
            cur.execute(self._q("SELECT r.id, r.label, r.pair, r.source, r.started FROM runs r" + run_where),
                        run_params)
            runs = cur.fetchall()
            join = " JOIN runs r ON r.id = s.run_id" if run_where else ""
            cur.execute(self._q("SELECT " + ", ".join("s." + c for c in cols) + " FROM samples s" + join + where
                                + " ORDER BY s.id"), params)
            rows = cur.fetchall()
        data = dict(zip(cols, map(list, zip(*rows)))) if rows else {c: pd.Series([], dtype=object) for c in cols}
        df = pd.DataFrame(data, columns=cols)
        del rows, data
        if post is not None and len(df):
            df = df[df["test"].map(lambda t: fnmatch.fnmatchcase(t, post))].reset_index(drop=True)
        df["run_id"] = df["run_id"].astype("int64")
        df["value"] = df["value"].astype("float64")
        df["repetition"] = df["repetition"].astype("int64")
        rinfo = pd.DataFrame.from_records(runs, columns=["run_id", "label", "pair", "source", "started"])
        rinfo["run_id"] = rinfo["run_id"].astype("int64")
        rinfo["started"] = pd.to_datetime(rinfo["started"], utc=True, format="ISO8601")
        rinfo = rinfo.sort_values(["started", "run_id"], kind="stable").reset_index(drop=True)
        rinfo["rank"] = np.arange(len(rinfo), dtype="int64")
        idx = pd.Index(rinfo["run_id"]).get_indexer(df["run_id"])
        if len(idx) and (idx < 0).any():   # a run deleted under us; keep the contract: joined rows only
            keep = idx >= 0
            df, idx = df[keep].reset_index(drop=True), idx[keep]
        order = np.argsort(rinfo["rank"].to_numpy()[idx], kind="stable") if len(idx) else idx
        if len(order) and (np.diff(order) != 1).any():
            df, idx = df.take(order).reset_index(drop=True), idx[order]
        for c in ("label", "pair", "source", "started"):
            df[c] = rinfo[c].take(idx).reset_index(drop=True)   # Series.take keeps the tz-aware dtype
        return df[SAMPLE_COLUMNS]

    def outcomes(self, labels=None):
        """Test outcomes joined with their run: run_id, label, pair, test, outcome, reason, recorded."""
        import pandas as pd

        where, params, _ = self._where(labels)
        with self._read() as cur:
            cur.execute(self._q("SELECT o.run_id, r.label, r.pair, o.test, o.outcome, o.reason, o.recorded "
                                "FROM outcomes o JOIN runs r ON r.id = o.run_id" + where + " ORDER BY o.id"), params)
            rows = cur.fetchall()
        return pd.DataFrame.from_records(rows, columns=["run_id", "label", "pair", "test", "outcome", "reason",
                                                        "recorded"])

    def runs(self, labels=None) -> list[Run]:
        """Runs (with hosts and artifacts) ordered by start time."""
        where, params, _ = self._where(labels)
        with self._read() as cur:
            cur.execute(self._q("SELECT r.id, r.label, r.pair, r.controller, r.inventory_hash, r.source, r.started, "
                                "r.finished, r.status FROM runs r" + where + " ORDER BY r.started, r.id"), params)
            runs = [Run(label=row[1], pair=row[2], controller=row[3], inventory_hash=row[4], source=row[5],
                        hosts=[], started=_parse_ts(row[6]), id=int(row[0]), artifacts={},
                        finished=_parse_ts(row[7]), status=row[8]) for row in cur.fetchall()]
            if not runs:
                return []
            by_id = {r.id: r for r in runs}
            cur.execute(self._q("SELECT h.run_id, h.role, h.name, h.kernel_release, h.proc_version, h.config_hash, "
                                "h.cmdline, h.boot_id, h.nic_driver, h.nic_firmware, h.env FROM run_hosts h "
                                "JOIN runs r ON r.id = h.run_id" + where + " ORDER BY h.id"), params)
            for row in cur.fetchall():
                by_id[int(row[0])].hosts.append(HostInfo(*row[1:10], env=json.loads(row[10]) if row[10] else {}))
            cur.execute(self._q("SELECT a.run_id, a.name, a.sha256 FROM artifacts a JOIN runs r ON r.id = a.run_id"
                                + where + " ORDER BY a.name"), params)
            for rid, name, sha in cur.fetchall():
                by_id[int(rid)].artifacts[name] = sha
        return runs

    def check_consistency(self) -> list[str]:
        """Problems found: batches whose stored sample count differs from the count written (none expected)."""
        with self._read() as cur:
            cur.execute("SELECT b.id, b.n, COUNT(s.id) FROM batches b LEFT JOIN samples s ON s.batch_id = b.id "
                        "GROUP BY b.id, b.n HAVING COUNT(s.id) <> b.n")
            bad = [f"batch {bid}: {have} of {n} samples" for bid, n, have in cur.fetchall()]
            cur.execute("SELECT COUNT(*) FROM samples s LEFT JOIN batches b ON b.id = s.batch_id WHERE b.id IS NULL")
            orphans = cur.fetchone()[0]
        if orphans:
            bad.append(f"{orphans} samples without a batch")
        return bad


def _json(d: Any) -> str:
    return json.dumps(d if d is not None else {}, sort_keys=True, default=str)
