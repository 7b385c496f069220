"""Functional devmem TCP and io_uring zcrx checks, for NIC driver authors.

For each of `devmem` and `zcrx` on the pair's RX NIC:
- bind / unbind: the receiver's bind-only mode binds a queue and unbinds it; binding
  again afterwards works (the queue was released);
- receive: a validated transfer lands in the bound queue (zero mismatches; devmem:
  no payload in linear skbs, i.e. header split worked);
- invalid binds that the kernel must refuse, quickly (never hang): without header
  split, on a queue index past the last one, twice on one queue.
Where the NIC (or kernel) cannot, the test skips naming the missing capability;
where a NIC has no header split at all, the kernel must still refuse the bind
quickly with its own error (`test_bind_refused_without_nic_support`, runs on veth).

The NIC setup (header split, RSS, flow rule, channels) goes through the restore
journal and is undone after each test.
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
import time

import pytest

from hwtests import nicsetup, nlclient, nlparse
from hwtests.errors import HwtestsError

REQUIRES = {
    "devmem": ("udmabuf", "net_devmem", "header_split", "ntuple", "multiqueue"),
    "zcrx": ("io_uring_zcrx", "header_split", "ntuple", "multiqueue"),
}
BASE_REQUIRES = {"devmem": ("udmabuf", "net_devmem"), "zcrx": ("io_uring_zcrx",)}
QUICK = 10.0          # seconds the kernel may take to refuse a bind
BIND_TIMEOUT = 30.0   # hard cap on one bind-only run
PORT = 5301


def _modes():
    return [pytest.param(m, id=m) for m in REQUIRES]


@pytest.fixture(autouse=True)
def _rx_requires(request):
    """Skip naming what the RX host lacks (only the receiver binds; the sender is plain TCP)."""
    cs = getattr(request.node, "callspec", None)
    if cs is None or "mode" not in cs.params or "hw_pair" not in request.fixturenames:
        return
    mode = cs.params["mode"]
    caps = BASE_REQUIRES[mode] if request.node.originalname == "test_bind_refused_without_nic_support" \
        else REQUIRES[mode]
    rx = request.getfixturevalue("hw_pair").rx
    missing = [f"{c} on {rx.name} ({rx.caps.get(c + '_reason') or 'not available'})"
               for c in caps if rx.caps.get(c) is not True]
    if missing:
        pytest.skip("lacks " + "; ".join(missing))


@pytest.fixture(scope="session")
def rx_bins_cache():
    return {}


@pytest.fixture
def rx_bins(rx_host, rx_bins_cache, hw_session):
    """The traffic programs on the RX host (built once per session; their hashes go into the run)."""
    from hwtests import traffic
    if rx_host.name not in rx_bins_cache:
        try:
            rx_bins_cache[rx_host.name] = traffic.build(rx_host.t)
        except HwtestsError as exc:
            pytest.fail(f"{rx_host.name}: building the traffic programs failed: {exc}", pytrace=False)
        hw_session.deployed(rx_host.name, rx_bins_cache[rx_host.name].artifacts())
    return rx_bins_cache[rx_host.name]


@pytest.fixture
def restore_nic(rx_host):
    yield
    errs = rx_host.journal.restore()
    assert not errs, f"{rx_host.name}: NIC setup not restored: {errs}"


def _zc(rx, tx, mode: str) -> nicsetup.ZcSetup:
    try:
        return nicsetup.prepare_zero_copy(rx, None, PORT, tx.addr, local_addr=rx.addr)
    except nicsetup.Unsupported as exc:
        pytest.skip(f"{mode}: {exc}")


class BindResult:
    def __init__(self, rc: int, doc: dict, seconds: float, unsupported: str = ""):
        self.rc, self.doc, self.seconds, self.unsupported = rc, doc, seconds, unsupported

    @property
    def binds(self) -> list[dict]:
        return list(self.doc.get("binds") or [])

    def describe(self) -> str:
        return f"exit {self.rc} after {self.seconds:.1f} s: {self.unsupported or json.dumps(self.doc)[:400]}"

    def refusal(self, index: int = 0) -> tuple[str, int | None]:
        """(step, errno) of the kernel's refusal: from the exit-4 report, else from bind `index`."""
        d = self.doc if self.rc == 4 else (self.binds[index] if len(self.binds) > index else {})
        eno = d.get("errno")
        return str(d.get("step") or ""), eno if isinstance(eno, int) and not isinstance(eno, bool) else None

    def refusal_text(self, index: int = 0) -> str:
        step, eno = self.refusal(index)
        if eno is None:
            return f"{step or 'no step'}: no errno reported"
        return f"{step}: {errno_mod.errorcode.get(eno, str(eno))} ({os.strerror(eno)})"


def bind_only(rx, bins, mode: str, queue: int, count: int = 1) -> BindResult:
    """hwt_rx --bind-only on the RX NIC, timed; an "unsupported" refusal is a result here (exit 4)."""
    from hwtests import traffic
    t0 = time.monotonic()
    try:
        doc = traffic.bind_check(rx.t, mode, rx.nic.ifname, queue=queue, count=count, bins=bins)
    except traffic.Unsupported as exc:
        return BindResult(4, exc.summary, time.monotonic() - t0, exc.reason)
    except HwtestsError as exc:
        pytest.fail(f"{mode} bind-only on {rx.name}: {exc}", pytrace=False)
    return BindResult(int(doc.get("exit", 0)), doc, time.monotonic() - t0)


def _refused(res: BindResult, what: str, index: int = 0) -> dict:
    assert res.seconds < QUICK, f"{what}: the kernel took {res.seconds:.1f} s to answer (limit {QUICK:g} s)"
    step, eno = res.refusal(index)
    assert step and eno and eno > 0, f"{what}: the refusal names no step or errno: {res.describe()}"
    print(f"{what}: refused at {res.refusal_text(index)}")
    if res.rc == 4:
        return res.doc       # refused as unsupported: the kernel's error is in res.unsupported
    assert res.rc == 1, f"{what}: expected a refusal, got {res.describe()}"
    b = res.binds[index]
    assert b.get("ok") is False, f"{what}: {res.describe()}"
    return b


@pytest.mark.parametrize("mode", _modes())
def test_bind_unbind(rx_host, tx_host, rx_bins, restore_nic, mode):
    zc = _zc(rx_host, tx_host, mode)
    first = bind_only(rx_host, rx_bins, mode, zc.queue)
    if first.rc == 4:
        pytest.skip(f"{mode} on {rx_host.name}: {first.unsupported}")
    assert first.rc == 0 and first.binds and first.binds[0]["ok"], first.describe()
    # the process exited: the binding is gone and the queue can be bound again
    again = bind_only(rx_host, rx_bins, mode, zc.queue)
    assert again.rc == 0 and again.binds[0]["ok"], f"rebinding after unbind: {again.describe()}"


def _queue_rx_stats(rx, bins, mode: str):
    """Per-queue counters of the RX NIC (zcrx: to tell zero copy from copy fallback); None without them."""
    if mode != "zcrx":
        return None
    try:
        return nlclient.qstats(rx.t, bins.nl, rx.nic.ifname)
    except nlclient.NlUnsupported:
        return None
    except HwtestsError as exc:
        pytest.fail(f"{mode}: {exc}", pytrace=False)


@pytest.mark.parametrize("mode", _modes())
def test_receive_validated(hw_pair, rx_host, tx_host, rx_bins, restore_nic, mode):
    from hwtests import traffic
    zc = _zc(rx_host, tx_host, mode)
    before = _queue_rx_stats(rx_host, rx_bins, mode)
    try:
        res = traffic.run_pair(rx_host.t, tx_host.t, rx_host.addr, mode, "tcp", port=PORT, bytes_=64 << 20,
                               duration=30, ifname=rx_host.nic.ifname, queue=zc.queue)
    except traffic.Unsupported as exc:
        pytest.skip(f"{mode}: {exc}")
    except HwtestsError as exc:
        pytest.fail(f"{mode}: {exc}", pytrace=False)
    got = int(res.rx.get("validated_bytes", 0))
    assert got >= 64 << 20 and res.mismatches == 0, f"{mode}: {got} bytes validated, {res.mismatches} mismatches"
    rx = res.rx
    if mode == "devmem":
        assert rx.get("linear_frags", 0) == 0, f"payload landed in linear skbs (header split?): {rx}"
        assert rx.get("dmabuf_frags", 1) > 0, f"no dmabuf frags: the flow missed the bound queue: {rx}"
    if mode == "zcrx":
        after = _queue_rx_stats(rx_host, rx_bins, mode)
        delta = None if before is None or after is None else nlparse.queue_rx_delta(before, after, zc.queue)
        if delta is None:
            pytest.skip(f"zcrx: {got} bytes validated, but zero copy not verified: {rx_host.name} "
                        f"{rx_host.nic.ifname} reports no per-queue rx-bytes (netdev qstats)")
        short = nlparse.zero_copy_shortfall(delta, int(rx.get("bytes", got)), zc.queue)
        assert short is None, f"zcrx on {rx_host.name} {rx_host.nic.ifname}: {short}"


@pytest.mark.parametrize("mode", _modes())
def test_bind_refused_without_header_split(rx_host, tx_host, rx_bins, restore_nic, mode):
    zc = _zc(rx_host, tx_host, mode)
    nicsetup.set_header_split(rx_host, False)
    res = bind_only(rx_host, rx_bins, mode, zc.queue)
    _refused(res, f"{mode} bind with header split off")


@pytest.mark.parametrize("mode", _modes())
def test_bind_refused_queue_out_of_range(rx_host, tx_host, rx_bins, restore_nic, mode):
    _zc(rx_host, tx_host, mode)
    nq = nicsetup.read_channels(rx_host).rx_queues()
    res = bind_only(rx_host, rx_bins, mode, nq)        # one past the last queue
    _refused(res, f"{mode} bind to queue {nq} of {nq}")


@pytest.mark.parametrize("mode", _modes())
def test_bind_refused_twice_on_one_queue(rx_host, tx_host, rx_bins, restore_nic, mode):
    zc = _zc(rx_host, tx_host, mode)
    res = bind_only(rx_host, rx_bins, mode, zc.queue, count=2)
    if res.rc == 4:
        pytest.skip(f"{mode} on {rx_host.name}: {res.unsupported}")
    assert res.binds and res.binds[0].get("ok"), f"first bind failed: {res.describe()}"
    _refused(res, f"{mode} second bind on queue {zc.queue}", index=1)


@pytest.mark.parametrize("mode", _modes())
def test_bind_refused_without_nic_support(request, rx_host, rx_bins, mode):
    """A NIC without header split (e.g. veth, virtio-net): the kernel refuses the bind at once; the
    report names the step that was refused and the kernel's errno (kept as the test's 'refusal')."""
    if rx_host.caps.get("header_split") is True:
        pytest.skip(f"{rx_host.name}: {rx_host.nic.ifname} has header split (the other tests cover it)")
    res = bind_only(rx_host, rx_bins, mode, 0)
    assert res.seconds < QUICK, f"took {res.seconds:.1f} s: {res.describe()}"
    assert res.rc in (1, 4), f"expected a refusal: {res.describe()}"
    step, eno = res.refusal()
    assert step and eno and eno > 0, f"no step or errno reported: {res.describe()}"
    text = (f"{mode} on {rx_host.name} {rx_host.nic.ifname} ({(rx_host.probe or {}).get('kernel_release')}): "
            f"refused at {res.refusal_text()}")
    request.node.user_properties.append(("refusal", text))
    print(text)
