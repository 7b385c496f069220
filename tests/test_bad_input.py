"""Bad input everywhere, property-based (hypothesis): inventories, benchmark logs, the traffic
programs' JSON and the command line.

The contract each test checks: bad input is one line naming the file, line, field or
option, with a non-zero exit (2 for input); never a traceback (any exception other than
our one-line errors fails the test); never a partly written result (the store and the
report file are as before a failed command).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from hwtests import cli, inventory, traffic
from hwtests.errors import InputError
from hwtests.store import HostInfo, Run, Sample, Store

DATA = Path(__file__).parent / "data" / "pagepool"
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Values a hostile or careless inventory, log or command line might hold.
HOSTILE = st.sampled_from(["", " ", "-", "--", "$(touch /tmp/hwt-pwned)", "`id`", "a;b", "a b", "'", '"', "\\",
                           "\n", "a\nb", "../../etc/passwd", "/dev/null", "\x00", "\x1b[31m", "é", "💥", "0", "-1",
                           "1e999", "nan", "inf", "99999999999999999999", "true", "null", "~", "{}", "[]", "*", "%s"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30), HOSTILE)
VALUES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                      max_leaves=6)


def one_line(msg: str) -> bool:
    return bool(msg) and "\n" not in msg and "Traceback" not in msg


# -- inventories -----------------------------------------------------------------------------

GOOD_INVENTORY = {
    "defaults": {"command_timeout": 60, "connect_timeout": 10},
    "hosts": {
        "dut1": {"ssh": {"host": "dut1.lab", "port": 22, "user": "root", "key": "keys/id", "known_hosts": "kh",
                         "accept_new_host_key": False},
                 "nics": {"data": {"ifname": "eth1", "ipv4": "198.51.100.1/24", "ipv6": "fd42::1/64",
                                   "speed": 100000}},
                 "kernels": {"base": {"image": "vmlinuz-base", "cmdline": "quiet"}},
                 "build_dir": "/lib/modules/6.12/build"},
        "peer1": {"ssh": {"host": "peer1.lab", "netns": "lab-b", "jump": "dut1"},
                  "nics": {"data": {"ifname": "eth1", "ipv4": "198.51.100.2/24"}}},
    },
    "pairs": [{"name": "p1", "rx": {"host": "dut1", "nic": "data"}, "tx": {"host": "peer1", "nic": "data"}}],
    "thresholds": {"cycles": {"fail_abs": 0.5, "pass_p": 0.2}},
}


def _paths(node, prefix=()):
    """Every path into the tree (dict keys and list indices), the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


PATHS = list(_paths(GOOD_INVENTORY))


def _mutate(doc, path, how, value):
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "rename" and isinstance(parent, dict):
        parent[f"{last}_x" if value is None else str(value)] = parent.pop(last)
    else:
        parent[last] = value


def _check_loads(text: str):
    try:
        inv = inventory.loads(text, "inventory.yaml")
    except InputError as exc:
        msg = str(exc)
        assert one_line(msg), msg
        m = re.match(r"inventory\.yaml:(\d+): ", msg)
        assert m, msg
        assert 1 <= int(m.group(1)) <= text.count("\n") + 2, msg
        return None
    return inv


def test_good_inventory_is_good():
    assert _check_loads(yaml.safe_dump(GOOD_INVENTORY)) is not None


@settings(max_examples=400, **SETTINGS)
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["replace", "delete", "rename"]),
                                    VALUES), min_size=1, max_size=3))
def test_mutated_inventory_is_loaded_or_one_line(mutations):
    doc = copy.deepcopy(GOOD_INVENTORY)
    for path, how, value in mutations:
        try:
            _mutate(doc, path, how, value)
        except (KeyError, IndexError, TypeError):
            pass        # an earlier mutation removed or replaced the way there
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)
    inv = _check_loads(text)
    if inv is not None:
        # what the loader lets through is what the rest of the code relies on
        for h in inv.hosts.values():
            for n in h.nics.values():
                assert inventory.IFNAME_RE.match(n.ifname) and (n.ipv4 or n.ipv6)
            if h.ssh is not None:
                assert 0 < h.ssh.port < 65536 and isinstance(h.ssh.host, str)
                assert h.ssh.netns is None or inventory.NAME_RE.match(h.ssh.netns)
                assert h.ssh.jump is None or h.ssh.jump in inv.hosts
        for p in inv.pairs.values():
            for side in (p.rx, p.tx):
                assert side.nic in inv.hosts[side.host].nics
        assert 0 < inv.defaults.command_timeout <= 86400


@settings(max_examples=300, **SETTINGS)
@given(st.one_of(st.text(max_size=300),
                 st.lists(st.sampled_from(["hosts:", "pairs:", "  - ", "  a:", "    ssh:", "{", "}", "[", "]",
                                           ": ", "- name: p", "\t", "&a", "*a", "!!python/object:os.system",
                                           "? ", "|", ">", "'", '"', "#", "\n", "    nics: {n: {ifname: e}}"]),
                          max_size=30).map("".join)))
def test_garbage_inventory_text_is_one_line(text):
    _check_loads(text)


def test_yaml_tags_are_not_executed(tmp_path):
    canary = tmp_path / "canary"
    text = f"hosts: !!python/object/apply:os.system ['touch {canary}']\n"
    assert _check_loads(text) is None
    assert not canary.exists()


# -- benchmark logs through `hwtests import-log` ----------------------------------------------------

def _main(argv: list[str]) -> tuple[int, str, str]:
    """cli.main in this process (hypothesis runs hundreds): exit code, stdout, stderr.
    Any exception but SystemExit escapes and fails the test: that would be a traceback."""
    out, err = io.StringIO(), io.StringIO()
    stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""))      # `-` reads an empty standard input
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = stdin
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def sigterm_kept():
    """cli.main turns SIGTERM into KeyboardInterrupt; give pytest its handler back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def _runs(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        con.close()


REAL_LOG = (DATA / "hwt_pp_bench-612-tcg.dmesg").read_bytes()


@settings(max_examples=120, **SETTINGS)
@given(edits=st.lists(st.tuples(st.integers(0, len(REAL_LOG)), st.integers(0, 40),
                                st.binary(max_size=12) | st.sampled_from([b"\n", b" ", b":", b"\xff\xfe", b"-"])),
                      max_size=12),
       cut=st.integers(0, len(REAL_LOG)))
def test_import_log_of_damaged_logs(tmp_path_factory, sigterm_kept, edits, cut):
    """A real benchmark log, cut and edited at random: imported (some records) or refused in one
    line with exit 2 and nothing stored."""
    tmp = tmp_path_factory.mktemp("log")
    data = bytearray(REAL_LOG[:cut] if cut > 100 else REAL_LOG)
    for pos, n, repl in edits:
        data[pos:pos + n] = repl
    log, db = tmp / "bench.log", tmp / "r.db"
    log.write_bytes(bytes(data))
    rc, out, err = _main(["import-log", str(log), "--kernel-build", "k", "--db", str(db), "--json"])
    assert rc in (0, 2), (rc, out, err)
    if rc == 2:
        assert err.startswith("hwtests: error: ") and one_line(err.rstrip("\n")), err
        assert str(log) in err
        assert _runs(db) == 0
    else:
        got = [json.loads(ln) for ln in out.splitlines()]
        assert len(got) == 1 and got[0]["records"] and _runs(db) == 1


@settings(max_examples=60, **SETTINGS)
@given(st.binary(max_size=2000))
def test_import_log_with_one_bad_file_stores_nothing(tmp_path_factory, sigterm_kept, junk):
    tmp = tmp_path_factory.mktemp("logs")
    good, bad, db = tmp / "good.log", tmp / "bad.log", tmp / "r.db"
    good.write_bytes(REAL_LOG)
    bad.write_bytes(junk)
    rc, out, err = _main(["import-log", str(good), str(bad), "--kernel-build", "k", "--db", str(db)])
    if rc == 0:     # the junk happened to hold a result line: both imported
        assert _runs(db) == 2
        return
    assert rc == 2 and str(bad) in err and one_line(err.rstrip("\n")), (rc, err)
    assert _runs(db) == 0, "the good file was stored although the command failed"


# -- the traffic programs' JSON ----------------------------------------------------------------------

SUMMARY_KEYS = ["role", "mode", "bytes", "seconds", "gbps", "samples", "mismatches", "validated_bytes", "errors",
                "flows", "flow_bytes", "port", "version", "unsupported", "step", "errno", "binds", "ready",
                "zc_completions", "tokens_returned", "extra_field"]


@settings(max_examples=500, **SETTINGS)
@given(st.dictionaries(st.sampled_from(SUMMARY_KEYS), VALUES, max_size=8))
def test_summary_fields_checked_or_one_line(obj):
    try:
        got = traffic.check_summary(obj, "dut1", "rx")
    except traffic.TrafficError as exc:
        msg = str(exc)
        assert one_line(msg) and msg.startswith("dut1: hwt_rx printed a summary with "), msg
        return
    # what passed is safe to read the way run_pair's callers read it
    res = traffic.TrafficResult(rx=got, tx=got, source_hash="x")
    assert res.gbps >= 0 and res.mismatches >= 0 and all(isinstance(e, str) for e in res.errors)
    traffic.steady_state(got.get("samples") or [], 1, 1)
    float(got.get("seconds") or 0)
    int(got.get("validated_bytes", 0))


@settings(max_examples=300, **SETTINGS)
@given(text=st.lists(st.one_of(st.text(max_size=60), VALUES.map(json.dumps),
                          st.dictionaries(st.sampled_from(SUMMARY_KEYS), VALUES, max_size=5).map(json.dumps)),
                max_size=6).map("\n".join),
       status=st.integers(-64, 300))
def test_program_output_parsed_or_one_line(text, status):
    summ = traffic.parse_summary(text)
    assert summ is None or isinstance(summ, dict)
    ready = traffic.parse_ready(text)
    assert ready is None or (isinstance(ready, dict) and ready.get("ready"))
    msg = str(traffic._fail("dut1", "rx", status, text, text))
    assert one_line(msg) and msg.startswith("dut1: hwt_rx failed ("), msg
    try:
        traffic._check_unsupported("dut1", "rx", traffic.EXIT_UNSUPPORTED, text)
    except traffic.Unsupported as exc:
        assert one_line(str(exc)) and (exc.errno is None or isinstance(exc.errno, int))


def test_real_summary_line_passes():
    line = ('{"role": "rx", "mode": "tcp", "bytes": 1000, "seconds": 1.5, "gbps": null, "samples": [1.2, 0], '
            '"mismatches": 0, "validated_bytes": 1000, "tokens_returned": 0, "zc_completions": 0, "zc_copied": 0, '
            '"errors": [], "flows": 1, "flow_bytes": [1000], "port": 5201, "version": "1"}')
    assert traffic.check_summary(traffic.parse_summary(line), "h", "rx")["bytes"] == 1000
    with pytest.raises(traffic.TrafficError, match=r"h: hwt_tx printed a summary with samples=\[1, \"x\"\]"):
        traffic.check_summary({"samples": [1, "x"]}, "h", "tx")


# -- the command line --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A store with two builds, an empty one, a file that is no database, a bad inventory."""
    tmp = tmp_path_factory.mktemp("cli")
    full = tmp / "full.db"
    with Store.open(str(full)) as s:
        for label, base in (("base", 8.6), ("cand", 8.7)):
            for i in range(6):
                rid = s.begin_run(Run(label, "p1", "ctl", "inv", "measured", [HostInfo("rx", "dut1")]))
                s.add_samples(rid, [Sample("pagepool/fast", "cycles", base + 0.01 * i, "cycles", "lower", 0)])
                s.finish_run(rid)
    Store.open(str(tmp / "empty.db")).close()
    (tmp / "notadb.db").write_text("not a database\n")
    (tmp / "bad.yaml").write_text("hosts:\n  a:\n    ssh: {host: x}\n    nics: {n: {ifname: 'e;th0', ipv4: 10.0.0.1}}\n")
    (tmp / "log.txt").write_bytes(REAL_LOG)
    return tmp


DBS = ["full.db", "empty.db", "notadb.db", "missing.db", "nodir/x.db", "postgresql://u:pw@127.0.0.1:1/x",
       "mysql://a/b", "sqlite://x", "."]
# option -> values (None: a flag); file-ish values are names under cli_files
OPTIONS = {
    "probe": {"--inventory": ["bad.yaml", "missing.yaml", "."], "--host": HOSTILE, "--json": None},
    "run": {"--inventory": ["bad.yaml", "missing.yaml"], "--kernel-build": HOSTILE, "--pair": HOSTILE,
            "--db": DBS, "--gate-baseline": HOSTILE, "--html": ["out.html"], "-k": HOSTILE, "-n": HOSTILE,
            "--lease-wait": HOSTILE | st.floats().map(str), "--lease-ttl": HOSTILE | st.floats().map(str)},
    "ab": {"--inventory": ["bad.yaml", "missing.yaml"], "--pair": HOSTILE, "--baseline": HOSTILE,
           "--candidate": HOSTILE, "--rounds": HOSTILE, "--db": DBS, "--html": ["out.html"],
           "--boot-timeout": HOSTILE},
    "report": {"--db": DBS, "--builds": HOSTILE, "--baseline": HOSTILE,
               "--out": ["out.html", "nodir/out.html", "."], "--title": HOSTILE, "--note": HOSTILE,
               "--csv": ["out.csv"]},
    "compare": {"--baseline": st.sampled_from(["base", "cand"]) | HOSTILE,
                "--candidate": st.sampled_from(["base", "cand"]) | HOSTILE, "--db": DBS, "--test": HOSTILE,
                "--metric": st.sampled_from(["cycles", "gbps"]) | HOSTILE, "--pair": HOSTILE,
                "--threshold": st.sampled_from(["cycles:fail_abs=0.5", "cycles:nope=1", "x", "cycles:fail_p=2"])
                | HOSTILE, "--inventory": ["bad.yaml", "missing.yaml"], "--json": None},
    "history": {"--metric": st.sampled_from(["cycles", "ns"]) | HOSTILE, "--test": HOSTILE, "--pair": HOSTILE,
                "--db": DBS, "--last": st.integers(-5, 5).map(str) | HOSTILE, "--json": None},
    "import-log": {"": ["log.txt", "missing.log", ".", "bad.yaml", "-x"], "--kernel-build": HOSTILE,
                   "--host": HOSTILE, "--db": DBS, "--dry-run": None, "--json": None},
    "lab": {"": ["status"], "--kind": st.sampled_from(["netns", "vm"]) | HOSTILE, "--state-dir": HOSTILE,
            "--json": None},
}


# what each command needs to get past its first check: given most of the time, with a good value
# most of the time, so the later checks (labels, globs, thresholds, files) are reached too
REQUIRED = {
    "probe": {"--inventory": "bad.yaml"}, "run": {"--inventory": "bad.yaml", "--kernel-build": "k"},
    "ab": {"--inventory": "bad.yaml"}, "report": {"--out": "out.html", "--db": "full.db"},
    "compare": {"--baseline": "base", "--candidate": "cand", "--db": "full.db"},
    "history": {"--metric": "cycles", "--db": "full.db"},
    "import-log": {"": "log.txt", "--kernel-build": "k", "--db": "full.db"}, "lab": {"": "status"},
}


@st.composite
def argvs(draw):
    cmd = draw(st.sampled_from(sorted(OPTIONS)))
    opts = OPTIONS[cmd]

    def value(name):
        vals = opts[name]
        return draw(vals if isinstance(vals, st.SearchStrategy) else st.sampled_from(vals))

    argv = [cmd]
    for name, good in REQUIRED[cmd].items():
        if draw(st.integers(0, 9)) < 9:
            v = good if draw(st.integers(0, 9)) < 7 or name not in opts else value(name)
            argv += [name, v] if name else [v]
    for name in draw(st.lists(st.sampled_from(sorted(opts)), max_size=5)):
        if opts[name] is None:
            argv.append(name)
        else:
            argv += [name, value(name)] if name else [value(name)]
    if draw(st.integers(0, 3)) == 0:     # a stray token somewhere
        argv.insert(draw(st.integers(1, len(argv))), draw(HOSTILE | st.sampled_from(["--bogus", "-z", "--db"])))
    return argv


FILE_VALUES = {"bad.yaml", "missing.yaml", "out.html", "nodir/out.html", "out.csv", "log.txt", "missing.log",
               "full.db", "empty.db", "notadb.db", "missing.db", "nodir/x.db"}


@settings(max_examples=400, **SETTINGS)
@given(argv=argvs())
def test_cli_arguments_exit_cleanly(cli_files, sigterm_kept, argv, tmp_path_factory):
    assume("\x00" not in "".join(argv))       # no argv can hold NUL
    work = tmp_path_factory.mktemp("argv")
    for name in ("full.db", "empty.db", "notadb.db", "bad.yaml", "log.txt"):
        (work / name).write_bytes((cli_files / name).read_bytes())
    argv = [str(work / a) if a in FILE_VALUES else a for a in argv]
    before = {p.name: p.stat().st_size for p in work.iterdir()}
    full_runs = _runs(work / "full.db")
    rc, out, err = _main(argv)
    event(f"{argv[0]} exit {rc}")
    assert rc in (0, 1, 2, 3, 4, 5), (argv, rc, err)
    assert "Traceback" not in out + err, (argv, err)
    if rc == 2:
        errs = [ln for ln in err.splitlines() if ln.strip()]
        # the last line says what is wrong; commands print warnings before it at most
        assert errs and re.match(r"(hwtests: error: |hwtests [a-z-]+: error: )", errs[-1]), (argv, err)
    if rc != 0 and rc != 1 and rc != 3:
        # a failed command wrote no result: no report, no CSV, no new database, no new run
        after = {p.name for p in work.iterdir()}
        assert after <= set(before) | {"nodir"}, (argv, rc, err, after - set(before))
        assert not (work / "nodir").exists() or not any((work / "nodir").iterdir()), (argv, err)
        assert _runs(work / "full.db") == full_runs, (argv, err)


@pytest.mark.parametrize("argv,code,fragment", [
    (["history", "--metric", "cycles", "--last", "0"], 2, "--last"),
    (["compare", "--baseline", "base", "--candidate", "x;id", "--db", "{full}"], 2, "x;id"),
    (["report", "--out", "{tmp}/r.html", "--db", "{tmp}/missing.db"], 2, "missing.db"),
    (["import-log", "{tmp}/nope.log", "--kernel-build", "k"], 2, "nope.log"),
    (["run", "--inventory", "{bad}", "--kernel-build", "k"], 2, "ifname"),
    (["lab", "up", "--pairs", "17", "--state-dir", "{tmp}/lab"], 2, "--pairs"),
    (["compare", "--baseline", "a", "--candidate", "b", "--db", "postgresql://u:Hunter2pw@127.0.0.1:1/x"], 4,
     "u:***@"),
])
def test_cli_subprocess_one_line(cli_files, tmp_path, argv, code, fragment):
    """The same through the installed `hwtests` (a real process: exit code and stderr as a script sees them)."""
    from conftest import run_cli
    argv = [a.format(full=cli_files / "full.db", bad=cli_files / "bad.yaml", tmp=tmp_path) for a in argv]
    r = run_cli(*argv, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert one_line(err) and fragment in err, err
    assert "Hunter2pw" not in r.stdout + r.stderr
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "lab").exists()
