"""page_pool fast-path microbenchmark on the pair's RX host.

The bench module (the inventory's `pagepool_src` if the host has one, else ours,
`fixtures/pagepool/`) is built on the host against its running kernel (or the
host's `build_dir`) — or, when the host has no headers, on the controller
against the inventory's `headers` for the running release (kernels: LABEL:
headers) and uploaded —, loaded once as a warm-up and then `repeat` times; every
result line of every load becomes two samples, `pagepool/<type>` `cycles`
(tsc_interval / invoke count) and `ns`, with the load's repetition index and
the host's boot id. Each load's insmod runs under `perf stat -x,` where the host has a
working perf (cycles, instructions, cache-misses, branch-misses per load and per
element) into the store's `counters` table; without perf or a PMU each is stored
unavailable with the reason (they explain, never gate).

Skips, naming why, when the host cannot build or load modules (no module
support — the netns lab shares the controller's kernel —, modules_disabled,
not root, lockdown, no headers). Warns when the host's kernel has debug
options on or its CPU frequency governor is not `performance`.

Tuning through the environment: HWTESTS_PP_LOOPS (default 10000000),
HWTESTS_PP_REPEAT (10), HWTESTS_PP_RUN_FLAGS (0xffffffff), HWTESTS_PP_CPU (pin
insmod to this CPU; else the inventory's `pin: pagepool_cpu`, default 0 as published:
`taskset -c 0 insmod`), HWTESTS_PP_TIMEOUT (seconds per load, 900). The CPU a load
really ran pinned to (None: no taskset on the host) is in every sample's extra.
"""

from __future__ import annotations

import os
import warnings

import pytest

from hwtests import counterstore, pagepool
from hwtests.errors import HwtestsError


class PagePoolHygieneWarning(UserWarning):
    """The host's setup makes page_pool figures noisy or not comparable."""


class PagePoolLogWarning(UserWarning):
    """A line of the benchmark's log could not be read or is a failure note."""


def _int_env(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        return int(v, 0)
    except ValueError:
        raise pytest.UsageError(f"{name}={v!r} is not an integer") from None


def _hygiene(he) -> list[str]:
    """Debug-option and governor warnings for the host (from the plugin's env capture)."""
    env = getattr(he, "env", None) or {}
    try:
        from hwtests import probe
        if not env:
            env = probe.capture_env(he.t)
        msgs = probe.hygiene_warnings(env)
    except (ImportError, AttributeError, HwtestsError):
        msgs = _minimal_hygiene(he)
    return [m for m in msgs if "debug" in m or "governor" in m]


def _minimal_hygiene(he) -> list[str]:
    """Without hwtests.probe: read the governors and the kernel config ourselves."""
    script = (r'R=$(uname -r); cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort -u | '
              r'sed "s/^/gov=/"; { cat "/boot/config-$R" 2>/dev/null || zcat /proc/config.gz 2>/dev/null; } | '
              r'grep -E "^CONFIG_(PROVE_LOCKING|DEBUG_LOCK_ALLOC|LOCKDEP|KASAN|DEBUG_PAGEALLOC|DEBUG_OBJECTS|'
              r'DEBUG_ATOMIC_SLEEP|DEBUG_PREEMPT|KMSAN|KCSAN|DEBUG_NET)=y" ; true')
    out = he.t.run(["sh", "-c", script], check=False, timeout=30).stdout.splitlines()
    govs = [ln[4:] for ln in out if ln.startswith("gov=")]
    dbg = [ln.split("=")[0][7:] for ln in out if ln.startswith("CONFIG_")]
    msgs = []
    if dbg:
        msgs.append(f"kernel debug options on ({', '.join(dbg)}): lock debugging changes results by 10x")
    if govs and govs != ["performance"]:
        msgs.append(f"CPU frequency governor is {'/'.join(govs)}, not performance: frequency scaling adds noise")
    return msgs


@pytest.mark.hw_test_name("pagepool")
def test_pagepool_fast_path(request, rx_host, hw_record_many):
    he = rx_host
    build_dir = he.host.build_dir
    try:
        facts = pagepool.host_facts(he.t, build_dir)
    except HwtestsError as exc:
        pytest.fail(f"{he.name}: {exc}", pytrace=False)
    why = pagepool.load_blocker(facts)
    if why:
        pytest.skip(f"{he.name}: cannot load kernel modules: {why}")
    # Build on the host; without headers there, on the controller against the inventory's
    # headers for the host's running kernel (the VM lab lists Debian's), then upload.
    controller_kdir = None
    why = pagepool.build_blocker(facts)
    if why:
        controller_kdir = pagepool.controller_headers(he.host.kernels, facts.get("release", ""))
        if controller_kdir is None:
            pytest.skip(f"{he.name}: cannot build the page_pool bench module: {why}; and the inventory "
                        f"lists no headers for {facts.get('release')} on the controller")

    for msg in _hygiene(he):
        warnings.warn(PagePoolHygieneWarning(f"{he.name}: {msg}"))

    loops = _int_env("HWTESTS_PP_LOOPS", pagepool.DEFAULT_LOOPS)
    repeat = _int_env("HWTESTS_PP_REPEAT", 10)
    run_flags = _int_env("HWTESTS_PP_RUN_FLAGS", pagepool.ALL_FLAGS)
    cpu = os.environ.get("HWTESTS_PP_CPU", "").strip() or (
        str(he.host.pin.pagepool_cpu) if he.host.pin.pagepool_cpu is not None else "")
    timeout = _int_env("HWTESTS_PP_TIMEOUT", int(pagepool.LOAD_TIMEOUT))
    try:
        src = pagepool.source_for_host(he.t, he.host.pagepool_src)
        results = pagepool.run_bench(he.t, src, loops=loops, run_flags=run_flags, repeat=repeat,
                                     discard_first=True, build_dir=build_dir, cpu=int(cpu) if cpu else None,
                                     journal=he.journal, load_timeout=timeout,
                                     controller_build_dir=controller_kdir)
    except HwtestsError as exc:
        pytest.fail(f"{he.name}: {exc}", pytrace=False)

    # module hashes into the run's artifacts and every sample
    try:
        hs = request.getfixturevalue("hw_session")
        for rr in results[:1]:
            hs.deployed(he.name, rr.artifacts)
    except pytest.FixtureLookupError:
        pass

    samples = []
    seen: set[tuple[str, str]] = set()
    for rr in results:
        samples += pagepool.to_samples(rr.records, repetition=rr.repetition, boot_id=rr.boot_id, host=he.name,
                                       module=rr.module, source=rr.source_kind, kernel=rr.kernel_release,
                                       loops=rr.params["loops"], cpu=rr.cpu)
        for w in rr.warnings:
            key = (w.reason, " ".join(w.text.split()[-4:]))
            if key not in seen:
                seen.add(key)
                warnings.warn(PagePoolLogWarning(f"{he.name}: load {rr.repetition}: {w.reason}: {w.text.strip()[:200]}"))
    if samples:
        hw_record_many(samples)
    perf_rows = [counterstore.StoredCounter("pagepool", rr.repetition, he.name, "rx", name, v.value, unit, v.reason)
                 for rr in results for name, v, unit in rr.perf_rows()]
    try:
        counterstore.record(request.getfixturevalue("hw_session"), request.getfixturevalue("hw_pair").name,
                            perf_rows)
    except pytest.FixtureLookupError:
        pass

    empty = [rr.repetition for rr in results if not rr.records]
    assert not empty, (f"{he.name}: {results[0].module} printed no result in load(s) {empty}; "
                       f"last log lines: {' | '.join(results[empty[0]].log.strip().splitlines()[-3:])}")
    types = [tuple(r.type for r in rr.records) for rr in results]
    assert len(set(types)) == 1, f"{he.name}: loads printed different tests: {sorted(set(types))}"
