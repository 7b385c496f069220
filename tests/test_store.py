"""The results store on SQLite and PostgreSQL: contract, identity, transactions, kills, secrets."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwtests import store as store_mod
from hwtests.errors import InfraError, InputError
from hwtests.store import HostInfo, Run, Sample, Store, redact_url
from pgfixture import pg_server, pg_url, store_url  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def make_run(label="base", pair="p1", **kw) -> Run:
    hosts = [HostInfo(role="rx", name="dut1", kernel_release="6.12.0-net-next", proc_version="Linux version 6.12.0 #1",
                      config_hash="c0ffee", cmdline="BOOT_IMAGE=/vmlinuz quiet isolcpus=2", boot_id="b-1",
                      nic_driver="mlx5_core", nic_firmware="28.39.1002", env={"governor": "performance", "smt": False}),
             HostInfo(role="tx", name="peer1", kernel_release="6.1.0-28-amd64", env={})]
    return Run(label=label, pair=pair, controller="ctl", inventory_hash="abc123", source="measured", hosts=hosts,
               artifacts={"hwt_pp_bench.ko": "ab" * 32}, **kw)


def samples(test="pagepool/no-softirq-page_pool01", values=(8.6, 8.7, 8.5), metric="cycles") -> list[Sample]:
    return [Sample(test=test, metric=metric, value=v, unit="cycles", better="lower", repetition=i, boot_id="b-1",
                   host="dut1", extra={"tsc_interval": 86000000 + i}) for i, v in enumerate(values)]


def test_round_trip(store_url):
    with Store.open(store_url) as s:
        run = make_run()
        rid = s.begin_run(run)
        assert run.id == rid and run.started is not None
        s.add_samples(rid, samples())
        s.add_samples(rid, samples("linerate/tcp", (93.9, 94.1), "gbps"))
        s.add_outcome(rid, "pagepool/no-softirq-page_pool01", "passed")
        s.add_outcome(rid, "linerate/tcp", "skipped", "no header split")
        s.finish_run(rid)
        rid2 = s.begin_run(make_run("patched", pair="p2"))
        s.add_samples(rid2, samples(values=(9.6,)))

        assert s.labels() == ["base", "patched"]
        df = s.samples()
        assert list(df.columns) == store_mod.SAMPLE_COLUMNS
        assert len(df) == 6
        assert df["value"].dtype == "float64" and str(df["started"].dt.tz) == "UTC"
        assert sorted(df[df.label == "base"]["value"]) == [8.5, 8.6, 8.7, 93.9, 94.1]
        assert set(df["source"]) == {"measured"}

        runs = s.runs()
        assert [r.label for r in runs] == ["base", "patched"]
        r = runs[0]
        assert r.status == "finished" and r.finished is not None and r.id == rid
        assert r.artifacts == {"hwt_pp_bench.ko": "ab" * 32}
        rx = [h for h in r.hosts if h.role == "rx"][0]
        assert (rx.kernel_release, rx.config_hash, rx.nic_driver, rx.nic_firmware, rx.boot_id) == \
            ("6.12.0-net-next", "c0ffee", "mlx5_core", "28.39.1002", "b-1")
        assert rx.env == {"governor": "performance", "smt": False}
        assert [r.label for r in s.runs(labels=["patched"])] == ["patched"]
        assert runs[1].status == "running"

        oc = s.outcomes(labels=["base"])
        assert sorted(oc["outcome"]) == ["passed", "skipped"]
        assert s.metrics() == ["cycles", "gbps"]
        assert s.check_consistency() == []


def test_filters(store_url):
    with Store.open(store_url) as s:
        a = s.begin_run(make_run("a", pair="p1"))
        b = s.begin_run(make_run("b", pair="p2"))
        for rid in (a, b):
            s.add_samples(rid, samples("pagepool/no-softirq-page_pool01"))
            s.add_samples(rid, samples("pagepool/tasklet_page_pool02_ptr_ring"))
            s.add_samples(rid, samples("odd%name_x"))
            s.add_samples(rid, samples("linerate/tcp", (94.0,), "gbps"))
        assert set(s.samples(labels=["a"])["label"]) == {"a"}
        assert s.samples(labels="b")["run_id"].unique().tolist() == [b]
        assert len(s.samples(labels=[])) == 0
        assert set(s.samples(test_glob="pagepool/*")["test"]) == {"pagepool/no-softirq-page_pool01",
                                                                  "pagepool/tasklet_page_pool02_ptr_ring"}
        assert set(s.samples(test_glob="*page_pool0?")["test"]) == {"pagepool/no-softirq-page_pool01"}
        assert set(s.samples(test_glob="pagepool/[nx]*")["test"]) == {"pagepool/no-softirq-page_pool01"}
        # LIKE wildcards in names are literal in globs
        assert set(s.samples(test_glob="odd%name_x")["test"]) == {"odd%name_x"}
        assert len(s.samples(test_glob="odd_name%x")) == 0
        assert set(s.samples(metric="gbps")["test"]) == {"linerate/tcp"}
        assert set(s.samples(pair="p2")["label"]) == {"b"}
        assert len(s.samples(labels=["a"], metric="cycles", test_glob="pagepool/*", pair="p1")) == 6


def test_default_path_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Store.open(None) as s:
        s.begin_run(make_run())
    assert (tmp_path / ".hwtests" / "results.db").is_file()
    with Store.open(f"sqlite:///{'sub/r.db'}") as s:
        assert s.labels() == []
    assert (tmp_path / "sub" / "r.db").is_file()


def test_sqlite_wal_busy_timeout_and_schema_version(tmp_path):
    path = tmp_path / "r.db"
    with Store.open(str(path)) as s:
        with s._read() as cur:
            cur.execute("PRAGMA journal_mode")
            assert cur.fetchone()[0].lower() == "wal"
            cur.execute("PRAGMA busy_timeout")
            assert cur.fetchone()[0] >= 30000
        assert s.schema_version() == store_mod.SCHEMA_VERSION
    with Store.open(str(path)) as s:      # reopen: schema statements are idempotent
        assert s.schema_version() == store_mod.SCHEMA_VERSION


def test_newer_schema_is_refused(store_url):
    with Store.open(store_url) as s:
        with s._tx() as cur:
            cur.execute(s._q("UPDATE meta SET value = ? WHERE key = ?"), (str(store_mod.SCHEMA_VERSION + 1),
                                                                          "schema_version"))
    with pytest.raises(InputError, match="upgrade hwtests"):
        Store.open(store_url)


def test_register_schema_extends_tables(store_url, monkeypatch):
    monkeypatch.setattr(store_mod, "SCHEMA", list(store_mod.SCHEMA))
    store_mod.register_schema("CREATE TABLE IF NOT EXISTS extra_things (id {pk}, v TEXT)")
    with Store.open(store_url) as s:
        with s._tx() as cur:
            cur.execute(s._q("INSERT INTO extra_things (v) VALUES (?)"), ("x",))
        with s._read() as cur:
            cur.execute("SELECT v FROM extra_things")
            assert cur.fetchall() == [("x",)]


def test_leases_share_the_database(store_url):
    from hwtests.leases import LeaseDB

    with Store.open(store_url) as s:
        db = LeaseDB(s.connect, s.placeholder)
        ok, taken, _ = db.try_acquire(["local://a", "local://b"], "me", "test", 30)
        assert ok and taken == []
        ok, _, blocker = db.try_acquire(["local://b"], "other", "test", 30)
        assert not ok and "local://b" in blocker


def test_bad_input_writes_nothing(store_url):
    with Store.open(store_url) as s:
        rid = s.begin_run(make_run())
        bad = samples() + [Sample("t", "cycles", 1.0, "cycles", "sideways")]
        with pytest.raises(InputError, match="better"):
            s.add_samples(rid, bad)
        with pytest.raises(InputError, match="not finite"):
            s.add_samples(rid, [Sample("t", "cycles", math.nan, "cycles", "lower")])
        with pytest.raises(InputError, match="no run with id"):
            s.add_samples(rid + 100, samples())
        with pytest.raises(InputError, match="outcome"):
            s.add_outcome(rid, "t", "exploded")
        with pytest.raises(InputError, match="source"):
            s.begin_run(Run("x", None, None, None, "guessed"))
        assert len(s.samples()) == 0
        assert s.check_consistency() == []


def test_concurrent_writers(store_url):
    """Several connections writing at once: every batch lands (SQLite waits on its busy timeout)."""
    with Store.open(store_url) as s0:
        rid = s0.begin_run(make_run())
    errors = []

    def writer(k):
        try:
            with Store.open(store_url) as s:
                for i in range(15):
                    s.add_samples(rid, samples(f"t{k}", [float(i)] * 20))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with Store.open(store_url) as s:
        assert len(s.samples()) == 4 * 15 * 20
        assert s.check_consistency() == []


KILL_CHILD = textwrap.dedent("""
    import sys
    from hwtests.store import Store, Run, Sample
    s = Store.open(sys.argv[1])
    big_from = int(sys.argv[2])
    rid = s.begin_run(Run("kill", "p1", "ctl", "h", "measured", []))
    i = 0
    while True:
        n = (200000 if i >= big_from else 3000) + 17 * i     # every batch has its own size
        batch = [Sample(f"b{i}", "cycles", float(j), "cycles", "lower", j) for j in range(n)]
        print(f"writing {i}", flush=True)                    # the next statement is add_samples
        s.add_samples(rid, batch)
        i += 1
""")


def batch_size(i: int, big_from: int) -> int:
    return (200000 if i >= big_from else 3000) + 17 * i


@pytest.mark.parametrize("big_from,delay", [(5, 0.25), (10**9, 0.0), (10**9, 0.011), (10**9, 0.023)],
                         ids=["in-big-batch", "small-0ms", "small-11ms", "small-23ms"])
def test_sigkill_mid_write_keeps_committed_batches_only(store_url, tmp_path, big_from, delay):
    """A writer killed while add_samples runs leaves all earlier batches whole and nothing of the one in flight.

    in-big-batch: killed 0.25 s into a 200k-row insert (which takes seconds), so certainly mid-write;
    small-*: killed at some point of a loop of ~30 ms batches.
    """
    script = tmp_path / "writer.py"
    script.write_text(KILL_CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, str(script), store_url, str(big_from)], stdout=subprocess.PIPE,
                         text=True, env=env)
    want = 5
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            assert line, "writer died on its own"
            if int(line.split()[1]) >= want:
                break
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        rest = p.stdout.read().split()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    in_flight = int(rest[-1]) if rest else int(line.split()[1])   # the last batch announced before the kill
    with Store.open(store_url) as s:
        assert s.check_consistency() == []
        df = s.samples(labels=["kill"])
        counts = df.groupby("test").size().to_dict()
        done = sorted(int(t[1:]) for t in counts)
        assert done == list(range(len(done)))               # no gap: batches commit in order
        if big_from < 10**9:
            assert done == list(range(big_from))            # the 200k batch in flight left nothing
        else:
            assert len(done) in (in_flight, in_flight + 1)  # batch `in_flight` is all there or not at all
        for i in done:
            assert counts[f"b{i}"] == batch_size(i, big_from)
        s.add_samples(df["run_id"].iloc[0], samples())      # the store is still writable afterwards
        assert s.check_consistency() == []


# -- secrets ------------------------------------------------------------------------------

def test_redact_url_examples():
    assert redact_url("postgresql://hw:s3cret@db.lab:5432/results") == "postgresql://hw:***@db.lab:5432/results"
    assert redact_url("postgresql://hw@db/results") == "postgresql://hw@db/results"
    assert redact_url("postgresql://db/r?user=hw&password=s3cret&sslmode=require") == \
        "postgresql://db/r?user=hw&password=***&sslmode=require"
    assert redact_url("host=db password=s3cret user=hw") == "host=db password=*** user=hw"
    assert redact_url("/tmp/results.db") == "/tmp/results.db"
    assert redact_url(None) == ".hwtests/results.db"


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pw=st.text(alphabet=st.characters(blacklist_characters="@/?#&", blacklist_categories=("Cs", "Zs", "Cc")),
                  min_size=4, max_size=30),
       user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True))
def test_redact_url_never_shows_the_password(pw, user):
    for url in (f"postgresql://{user}:{pw}@db.example:5432/results",
                f"postgresql://db.example/results?user={user}&password={pw}"):
        out = redact_url(url)
        assert "***" in out
        assert pw not in out.replace(user, "").replace("db.example", "").replace("postgresql", "").replace("results", "")


def test_connection_error_hides_password():
    with pytest.raises(InfraError) as ei:
        Store.open("postgresql://hw:Sup3rS3cretPw@127.0.0.1:1/results")
    msg = str(ei.value)
    assert "Sup3rS3cretPw" not in msg and "***" in msg and "\n" not in msg


@pytest.mark.postgres
def test_pg_store_repr_and_errors_hide_password(pg_url, pg_server):
    assert pg_server.password in pg_url
    with Store.open(pg_url) as s:
        assert pg_server.password not in repr(s)
    wrong = pg_url.replace(pg_server.password, "wrong-" + pg_server.password[:4])
    with pytest.raises(InfraError) as ei:
        Store.open(wrong)
    assert "wrong-" not in str(ei.value) and "authentication" in str(ei.value)


def test_unknown_scheme_and_directory(tmp_path):
    with pytest.raises(InputError, match="postgresql://"):
        Store.open("mysql://u:pw@h/db")
    with pytest.raises(InputError, match="directory"):
        Store.open(str(tmp_path))
