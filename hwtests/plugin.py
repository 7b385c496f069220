"""The hwtests pytest plugin: host pairs as fixtures, capability markers, results to the store.

Registered through the `pytest11` entry point, so any pytest run with
`--inventory FILE` gets:

- `hw_pair`: tests that use it are parametrized over the inventory's pairs
  (`--pair NAME` narrows them); `rx_host` / `tx_host` are its two sides;
- `@pytest.mark.requires("udmabuf", "header_split")`: skips naming what the
  pair lacks;
- `hw_record(metric, value, unit, better, ...)`: stores a sample of the current
  test under this session's run for the pair and kernel build label.

A host is acquired once per session: its restore journal is replayed first
(changes a crashed earlier run left behind are undone), then it is probed.
At the end every host's journal is replayed again and its temp dir removed.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import identity, kswitch
from .errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_INFRA, EXIT_USAGE, HwtestsError
from .hostconn import connect
from .inventory import Host, Inventory, Nic, check_label, load
from .journal import Journal
from .leases import LeaseBusy, LeaseDB, pair_resources, seconds
from .transport import Transport

_SESSION = pytest.StashKey["HwSession"]()
INFRA_PROPERTY = "hwtests:unusable"     # user property of a test whose pair could not be set up
EXIT_PROPERTY = "hwtests:exit"          # ... and the exit code its error class carries (4, or 2 for a wrong build)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("hwtests", "hwtests hardware-in-the-loop options")
    g.addoption("--inventory", metavar="FILE", help="hosts and pairs to test (YAML); without it hw tests skip")
    g.addoption("--pair", action="append", default=[], metavar="NAME",
                help="run on this pair only (repeatable; default: every pair in the inventory)")
    g.addoption("--kernel-build", metavar="LABEL", default=None,
                help="label stored with every result: the kernel build under test (e.g. net-next-2026-11-20 or patched)")
    g.addoption("--db", metavar="URL", default=None,
                help="results store: a SQLite path (default .hwtests/results.db) or postgresql://...")
    g.addoption("--gate-baseline", metavar="LABEL", default=None,
                help="after the session compare this run's build against LABEL; exit 1 on a regression, 3 if inconclusive")
    g.addoption("--html", metavar="PATH", default=None, help="write the HTML report of this build (and the baseline) to PATH")
    g.addoption("--no-store", action="store_true", default=False, help="do not store results (dry run)")
    g.addoption("--lease-wait", type=seconds(0), default=600.0, metavar="SECONDS",
                help="how long to wait for a pair another controller holds before failing with its name "
                "(default 600; leases live in the results database, --db)")
    g.addoption("--lease-ttl", type=seconds(1), default=60.0, metavar="SECONDS",
                help="lease expiry, renewed every third of it while the run lives; a controller that died "
                "loses its pair after this long (default 60)")
    g.addoption("--lease-holder", metavar="HOLDER", default=None,
                help="run under the pair lease HOLDER already holds instead of taking one (set by `hwtests ab` "
                "and `hwtests run --boot`, which hold the pair across all their sessions)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*caps): skip unless both hosts of the pair have these capabilities")
    config.addinivalue_line("markers", "hw_test_name(name): the test name samples are stored under")
    config.addinivalue_line("markers", "disruptive: may take the data link down or change NIC settings")
    path = config.getoption("--inventory", default=None)
    if not path:
        return
    try:
        inv = load(path)
        check_label(config.getoption("--kernel-build") or "unlabeled")
    except HwtestsError as exc:
        raise pytest.UsageError(str(exc)) from None
    unknown = [p for p in config.getoption("--pair") if p not in inv.pairs]
    if unknown:
        raise pytest.UsageError(f"--pair: unknown pair {unknown[0]!r}; pairs in {path}: {', '.join(inv.pairs) or 'none'}")
    hs = config.stash[_SESSION] = HwSession(config, inv)
    config.pluginmanager.register(hs, "hwtests-session")     # for its report hook


def _hw(config: pytest.Config) -> "HwSession | None":
    return config.stash.get(_SESSION, None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hw_pair" not in metafunc.fixturenames:
        return
    hs = _hw(metafunc.config)
    names = hs.selected_pairs() if hs else []
    if not names:
        metafunc.parametrize("hw_pair", [pytest.param(None, marks=pytest.mark.skip(
            reason="no --inventory given (hardware tests need host pairs)" if hs is None else "no pair selected"))],
            indirect=True, ids=["no-pair"])
        return
    metafunc.parametrize("hw_pair", names, indirect=True, ids=names, scope="session")


@pytest.hookimpl(tryfirst=True)   # before xdist's worker hook reads the group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (--dist loadgroup) every test of a pair goes to one worker,
    # so a worker owns its pair and two workers never share one.
    for item in items:
        cs = getattr(item, "callspec", None)
        if cs is not None and isinstance(cs.params.get("hw_pair"), str):
            item.add_marker(pytest.mark.xdist_group(cs.params["hw_pair"]))


@dataclass
class HostEnv:
    name: str
    t: Transport
    nic: Nic
    peer_nic: Nic
    host: Host
    journal: Journal
    caps: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return self.nic.addr


@dataclass
class PairEnv:
    name: str
    rx: HostEnv
    tx: HostEnv


class HwSession:
    """Everything one pytest session holds about the lab: transports, journals, runs."""

    def __init__(self, config: pytest.Config, inv: Inventory):
        self.config = config
        self.inv = inv
        self.label = config.getoption("--kernel-build") or "unlabeled"
        self.db = config.getoption("--db")
        self.no_store = config.getoption("--no-store")
        self.transports: dict[str, Transport] = {}
        self.journals: dict[str, Journal] = {}
        self.probes: dict[str, dict] = {}
        self.pairs: dict[str, PairEnv] = {}
        self.runs: dict[str, int] = {}
        self.restored: dict[str, list[str]] = {}
        self.artifacts: dict[str, dict[str, str]] = {}     # pair -> deployed name -> sha256
        self._store = None
        self._lock = threading.RLock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.leases: dict[str, object] = {}
        self.broken: dict[str, HwtestsError] = {}   # pair -> why it could not be set up
        self.unusable: dict[str, int] = {}      # the same as seen in reports (xdist workers' too) -> exit code
        self._lease_db = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A pair that could not be set up sets the session's exit (4, or 2 for hosts on the wrong
        kernel build), also when an xdist worker saw it."""
        props = dict(report.user_properties)
        if INFRA_PROPERTY in props:
            self.unusable.setdefault(str(props[INFRA_PROPERTY]), int(props.get(EXIT_PROPERTY, EXIT_INFRA)))

    def selected_pairs(self) -> list[str]:
        wanted = self.config.getoption("--pair")
        return [p for p in self.inv.pairs if not wanted or p in wanted]

    # -- hosts --------------------------------------------------------------
    def acquire_host(self, name: str) -> Transport:
        """Connect, check the host runs the build under test, undo what a crashed earlier run
        left (journal)."""
        with self._lock:
            if name in self.transports:
                return self.transports[name]
            t = connect(self.inv.hosts[name], self.inv.defaults, self.inv)
            j = Journal(t, owner=self.owner)
            try:
                # the first contact (SSH connects lazily); a wrong build stops here, before any change
                kswitch.check_identity(t, self.inv.hosts[name], self.label)
                left = j.pending()
            except BaseException:
                t.close()                   # never changed: nothing to replay or remove at the end
                raise
            self.transports[name] = t
            self.journals[name] = j
            if left:
                errs = j.restore()
                self.restored[name] = [e.desc for e in left]
                self._say(f"hwtests: {name}: restored {len(left)} change(s) left by an earlier run: "
                          + "; ".join(e.desc for e in left))
                for err in errs:
                    self._say(f"hwtests: WARNING: {err}")
            return t

    def pair_env(self, pname: str) -> PairEnv:
        with self._lock:
            if pname in self.pairs:
                return self.pairs[pname]
            pair = self.inv.pairs[pname]
            self._lease(pname, pair)
            sides = {}
            for role, side, other in (("rx", pair.rx, pair.tx), ("tx", pair.tx, pair.rx)):
                t = self.acquire_host(side.host)
                host = self.inv.hosts[side.host]
                nic = host.nics[side.nic]
                peer = self.inv.hosts[other.host].nics[other.nic]
                he = HostEnv(side.host, t, nic, peer, host, self.journals[side.host])
                self._probe(he)
                sides[role] = he
            env = PairEnv(pname, sides["rx"], sides["tx"])
            self.pairs[pname] = env
            return env

    def _lease(self, pname: str, pair) -> None:
        """Take both hosts of the pair in one step before touching either (see leases.py), or
        borrow the lease of the plan this session runs in (`--lease-holder`)."""
        if self._lease_db is None:
            self._lease_db = LeaseDB(self.store.connect, self.store.placeholder)
        resources = pair_resources(self.inv, pair)
        holder = self.config.getoption("--lease-holder")
        if holder:
            self.leases[pname] = self._lease_db.borrow(resources, holder)
            return
        info = (f"{socket.gethostname()} pid {os.getpid()} (build {self.label}, pair {pname}, "
                f"since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        lease = self._lease_db.acquire(resources, info, ttl=float(self.config.getoption("--lease-ttl")),
                                       wait=float(self.config.getoption("--lease-wait")), progress=self._say)
        self.leases[pname] = lease
        for what in lease.taken_over:   # its journal is replayed by acquire_host, before anything else
            self._say(f"hwtests: pair {pname}: took over {what}")

    def _probe(self, he: HostEnv) -> None:
        from . import probe
        key = f"{he.name}/{he.nic.ifname}"
        if key not in self.probes:
            self.probes[key] = probe.probe_host(he.t, [he.nic])
        he.probe = self.probes[key]
        he.caps = probe.capabilities(he.probe, he.nic)
        he.env = probe.capture_env(he.t) if not he.env else he.env
        he.env.setdefault("pin", asdict(he.host.pin))      # the inventory's pinning, in the run's environment

    def _say(self, msg: str) -> None:
        """Tell the user now, also from inside a test's setup (where output is captured)."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if tr is None:
            print(msg, file=sys.stderr, flush=True)
            return
        if capman is not None:
            with capman.global_and_fixture_disabled():
                tr.ensure_newline()
                tr.write_line(msg)
        else:
            tr.write_line(msg)

    # -- results ------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from .store import Store
            self._store = Store.open(self.db)
        return self._store

    def run_id(self, pname: str) -> int:
        with self._lock:
            if pname in self.runs:
                return self.runs[pname]
            from .store import HostInfo, Run
            pe = self.pair_env(pname)
            hosts = []
            for role, he in (("rx", pe.rx), ("tx", pe.tx)):
                p = he.probe
                nicp = (p.get("nics") or {}).get(he.nic.ifname, {}) if isinstance(p.get("nics"), dict) else {}
                hosts.append(HostInfo(role=role, name=he.name, kernel_release=p.get("kernel_release"),
                                      proc_version=p.get("proc_version"), config_hash=p.get("config_hash"),
                                      cmdline=p.get("cmdline"), boot_id=p.get("boot_id"),
                                      nic_driver=nicp.get("driver"), nic_firmware=nicp.get("firmware"),
                                      env=he.env))
            run = Run(label=self.label, pair=pname, controller=socket.gethostname(),
                      inventory_hash=self.inv.sha256, source="measured", hosts=hosts,
                      artifacts=dict(self.artifacts.get(pname, {})))
            self.runs[pname] = self.store.begin_run(run)
            return self.runs[pname]

    def deployed(self, host: str, artifacts: dict[str, str]) -> None:
        """Note what was deployed on `host` (name -> sha256) in the runs of its pairs: stored at once
        where the run exists, else with the run when it begins, whatever order the tests run in."""
        named = {f"{host}:{k}": v for k, v in artifacts.items()}
        with self._lock:
            for pname, pe in self.pairs.items():
                if host not in (pe.rx.name, pe.tx.name):
                    continue
                self.artifacts.setdefault(pname, {}).update(named)
                if pname in self.runs and not self.no_store:
                    self.store.add_artifacts(self.runs[pname], named)

    def record(self, pname: str, samples: list) -> None:
        if self.no_store:
            return
        self.store.add_samples(self.run_id(pname), samples)

    def outcome(self, pname: str, test: str, outcome: str, reason: str) -> None:
        if self.no_store:
            return
        try:
            self.store.add_outcome(self.run_id(pname), test, outcome, reason)
        except HwtestsError as exc:
            self._say(f"hwtests: WARNING: cannot store outcome of {test}: {exc}")

    def close(self) -> list[str]:
        """Restore every host and end the runs; return restore errors."""
        errors: list[str] = []
        for name, t in list(self.transports.items()):
            try:
                errors += self.journals[name].restore()
            except HwtestsError as exc:
                errors.append(f"{name}: journal not replayed: {exc}")
            t.close()
        if self._store is not None:
            for rid in self.runs.values():
                self._store.finish_run(rid)
        for pname, lease in list(self.leases.items()):
            try:
                lease.release()
            except Exception as exc:   # the DB is gone: the lease expires on its own
                errors.append(f"pair {pname}: lease not released ({exc}); it expires by itself")
            self.leases.pop(pname, None)
        return errors


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="session")
def hw_inventory(pytestconfig: pytest.Config) -> Inventory:
    hs = _hw(pytestconfig)
    if hs is None:
        pytest.skip("no --inventory given")
    return hs.inv


@pytest.fixture(scope="session")
def hw_session(pytestconfig: pytest.Config) -> HwSession:
    hs = _hw(pytestconfig)
    if hs is None:
        pytest.skip("no --inventory given")
    return hs


@pytest.fixture(scope="session")
def hw_pair(request: pytest.FixtureRequest) -> PairEnv:
    hs = _hw(request.config)
    if hs is None or request.param is None:
        pytest.skip("no --inventory given")
    if request.param not in hs.broken:  # failed once: do not wait or connect again per test
        try:
            return hs.pair_env(request.param)
        except HwtestsError as exc:
            hs.broken[request.param] = exc
            if isinstance(exc, (LeaseBusy, kswitch.BuildMismatch)):   # nothing here can run as asked
                request.session.shouldstop = f"pair {request.param}: {exc}"
    # failing outside the except block keeps the cause's chain off the report
    pytest.fail(f"pair {request.param}: {hs.broken[request.param]}", pytrace=False)


@pytest.fixture(autouse=True)
def _hw_requires(request: pytest.FixtureRequest) -> None:
    marks = list(request.node.iter_markers("requires"))
    if not marks or "hw_pair" not in request.fixturenames:
        return
    pe: PairEnv = request.getfixturevalue("hw_pair")
    missing = []
    for m in marks:
        for cap in m.args:
            for he in (pe.rx, pe.tx):
                val = he.caps.get(cap)
                if val is not True:
                    why = he.caps.get(f"{cap}_reason") or ("unknown capability" if cap not in he.caps else "not available")
                    missing.append(f"{cap} on {he.name} ({why})")
    if missing:
        pytest.skip(f"pair {pe.name} lacks " + "; ".join(dict.fromkeys(missing)))


@pytest.fixture
def rx_host(hw_pair: PairEnv) -> HostEnv:
    return hw_pair.rx


@pytest.fixture
def tx_host(hw_pair: PairEnv) -> HostEnv:
    return hw_pair.tx


def test_name(item: pytest.Item) -> str:
    m = item.get_closest_marker("hw_test_name")
    if m is not None and m.args:
        return str(m.args[0])
    cs = getattr(item, "callspec", None)
    base = item.originalname if hasattr(item, "originalname") else item.name
    params = [f"{k}={v}" for k, v in (cs.params.items() if cs else []) if k != "hw_pair"]
    return base + (f"[{','.join(params)}]" if params else "")


@pytest.fixture
def hw_record(request: pytest.FixtureRequest, hw_pair: PairEnv):
    """hw_record(metric, value, unit, better, repetition=0, test=None, boot_id=None, host=None, **extra)."""
    hs = _hw(request.config)
    from .store import Sample

    def record(metric: str, value: float, unit: str, better: str, repetition: int = 0, test: str | None = None,
               boot_id: str | None = None, host: str | None = None, **extra: Any) -> None:
        name = test or test_name(request.node)
        s = Sample(test=name, metric=metric, value=float(value), unit=unit, better=better, repetition=repetition,
                   boot_id=boot_id, host=host, extra=extra)
        hs.record(hw_pair.name, [s])
        request.node.user_properties.append((f"{name}:{metric}[{repetition}]", f"{value:g} {unit}"))

    return record


@pytest.fixture
def hw_record_many(request: pytest.FixtureRequest, hw_pair: PairEnv):
    """Store a list of `Sample`s of this test in one transaction."""
    hs = _hw(request.config)

    def record(samples: list) -> None:
        hs.record(hw_pair.name, samples)
        for s in samples:
            request.node.user_properties.append((f"{s.test}:{s.metric}[{s.repetition}]", f"{s.value:g} {s.unit}"))

    return record


# -- outcomes, gate, teardown ----------------------------------------------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if report.failed and call.excinfo is not None and isinstance(call.excinfo.value, HwtestsError) \
            and not item.config.getoption("fulltrace", False):
        # a host, the lab or the traffic programs failed: their one line says it all
        report.longrepr = f"{item.nodeid}: {call.excinfo.value}"
    hs = _hw(item.config)
    cs = getattr(item, "callspec", None)
    pname = cs.params.get("hw_pair") if cs else None
    if hs is not None and report.when == "setup" and report.failed and pname in hs.broken:
        # the pair is unusable (exit 4, or 2 on the wrong build); the report carries it, so an
        # xdist controller learns it too
        exc = hs.broken[pname]
        report.user_properties += [(INFRA_PROPERTY, f"pair {pname}: {exc}"), (EXIT_PROPERTY, exc.exit_code)]
    if hs is None or not isinstance(pname, str) or pname not in hs.pairs:
        return report
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2])
        elif report.failed:
            reason = (report.longreprtext or "").strip().splitlines()[-1:][0] if report.longreprtext else ""
        hs.outcome(pname, test_name(item), report.outcome, reason[:500])
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    hs = _hw(session.config)
    if hs is None:
        return
    for err in hs.close():
        hs._say(f"hwtests: WARNING: {err}")
    for msg, code in hs.unusable.items():
        hs._say(f"hwtests: {'wrong kernel build' if code == EXIT_USAGE else 'unusable'}: {msg}")
    if hs.unusable:
        session.exitstatus = _ours(next(iter(hs.unusable.values())))
    if hasattr(session.config, "workerinput"):
        return   # an xdist worker: the controller gates and reports once
    _gate_and_report(session, hs)


# pytest's own exit codes (2 interrupted, 3 internal error, 4 usage error) collide with
# ours (2 bad input, 3 inconclusive, 4 infra); `hwtests run` maps pytest's to ours unless
# the plugin set the status itself, which it records here.
last_exit_set: int | None = None


def _ours(code: int) -> int:
    global last_exit_set
    last_exit_set = int(code)
    return int(code)


def _gate_and_report(session: pytest.Session, hs: HwSession) -> None:
    base = session.config.getoption("--gate-baseline")
    html = session.config.getoption("--html")
    if hs.no_store or (not base and not html):
        return
    if base:
        from . import compare
        try:
            comps = compare.compare_labels(hs.store, base, hs.label, thresholds=hs.inv.thresholds)
        except HwtestsError as exc:
            hs._say(f"hwtests: gate: {exc}")
            session.exitstatus = _ours(exc.exit_code)
            return
        for w in identity.conflicts(hs.store.runs(labels=[base, hs.label])):
            hs._say(f"hwtests: WARNING: {w}")
        hs._say(compare.format_table(comps, base, hs.label))
        code = compare.exit_code(comps)
        xml = _junit(session.config)
        if xml is not None:
            for k, v in compare.junit_properties(comps):
                xml.add_global_property(k, v)
        if code in (EXIT_FAIL, EXIT_INCONCLUSIVE) and session.exitstatus == 0:
            session.exitstatus = _ours(code)
    if html:
        from .report import write_report
        builds = [b for b in (base, hs.label) if b]
        path = write_report(hs.store, Path(html), builds=builds, baseline=base, thresholds=hs.inv.thresholds)
        hs._say(f"hwtests: report written to {path}")


def _junit(config: pytest.Config):
    try:
        from _pytest.junitxml import xml_key
    except ImportError:
        return None
    return config.stash.get(xml_key, None)
