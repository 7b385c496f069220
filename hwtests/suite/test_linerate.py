"""Line rate of one TCP stream, RX host <- TX host, per receive/send mode.

Modes (test names `linerate/<mode>`):
- `tcp`:      RX plain recv, TX plain send;
- `zerocopy`: RX plain recv, TX MSG_ZEROCOPY;
- `devmem`:   RX devmem TCP into a udmabuf (header split, RSS and a flow rule steer the
              stream to a dedicated queue, all through the restore journal);
- `zcrx`:     RX io_uring zero-copy receive (same NIC setup, host memory area), on the NIC
              queue only (`--zcrx-path zero-copy`: never a copy-fallback figure);
- `zcrx-nodev`: RX io_uring zcrx registered without a NIC (ZCRX_REG_NODEV, Linux 7.1+): every
              byte goes through the kernel's copy fallback, so its figures are functional
              ("copy fallback, functional" in the report), stored apart from `zcrx`. Several
              flows; each run checks the path, that every buffer went back (refills equal
              data completions, none left unflushed). Skips naming what the kernel lacks,
              as its zcrx query answers (no NIC setup, no capability from the probe).

Each mode first runs a short functional pass whose payload the receiver validates
(zero mismatches, else fail), then `repeat` timed runs. For each timed run:
throughput of the steady-state window (warm-up and cool-down seconds dropped) and
its per-second samples; system CPU of both hosts from /proc/stat (softirq
included) over the same window; CPU seconds per GB; % of the link speed where
the NIC reports one. Stored as samples of `linerate/<mode>`: `gbps` (higher),
`cpu_rx_pct` and `cpu_tx_pct` (lower), `cpu_per_gb` (lower; RX host),
`link_pct` (higher) and, beside it, `ceiling_pct` (higher): the share of the TCP
goodput ceiling at the data path's MTU (hwtests.goodput; MTU and ceiling in the
sample's extra). The traffic programs' source hash goes into the run's
artifacts and on every sample. Kernel counters of both hosts over the same window
(TCP/IP, softnet, the data NIC's interrupts, `ethtool -S` and per-queue qstats;
`hwtests.countersnap`)
go to the store's `counters` table: they explain a result and never gate.

Knobs (environment; short defaults for the lab, every run bounded):
HWTESTS_LINERATE_DURATION (s per timed run, 5), HWTESTS_LINERATE_REPEAT (3),
HWTESTS_LINERATE_WARMUP (1), HWTESTS_LINERATE_COOLDOWN (1),
HWTESTS_LINERATE_FUNCTIONAL_BYTES (16 MiB), HWTESTS_LINERATE_PORT (base port, 5201).
The inventory's `pin: rx_cpus / tx_cpus` run the receiver and sender under `taskset -c`.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from hwtests import counterstore, countersnap, cpustat, goodput, nicsetup
from hwtests.errors import HwtestsError

MODES = {
    #  name        rx mode   tx mode     capabilities the RX host needs
    "tcp": ("tcp", "tcp", ()),
    "zerocopy": ("tcp", "zerocopy", ()),
    "devmem": ("devmem", "tcp", ("udmabuf", "net_devmem", "header_split", "ntuple", "multiqueue")),
    "zcrx": ("zcrx", "tcp", ("io_uring_zcrx", "header_split", "ntuple", "multiqueue")),
    "zcrx-nodev": ("zcrx", "tcp", ()),
}
ZERO_COPY_RX = ("devmem", "zcrx")
# modes that need the NIC set up (header split, RSS, flow rule) on the RX host
NIC_SETUP = ("devmem", "zcrx")
# receiver arguments per mode; flows per run where one is not enough to exercise the mode
RX_ARGS = {"zcrx": ("--zcrx-path", "zero-copy"), "zcrx-nodev": ("--zcrx-nodev",)}
FLOWS = {"zcrx-nodev": 4}
MAX_DURATION = 600.0


def _env_num(name: str, default: float, lo: float, hi: float) -> float:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        x = float(v)
    except ValueError:
        raise pytest.UsageError(f"{name}={v!r} is not a number") from None
    if not lo <= x <= hi:
        raise pytest.UsageError(f"{name}={v} is outside {lo:g}..{hi:g}")
    return x


def settings() -> dict:
    return {
        "duration": _env_num("HWTESTS_LINERATE_DURATION", 5, 1, MAX_DURATION),
        "repeat": int(_env_num("HWTESTS_LINERATE_REPEAT", 3, 1, 100)),
        "warmup": _env_num("HWTESTS_LINERATE_WARMUP", 1, 0, 120),
        "cooldown": _env_num("HWTESTS_LINERATE_COOLDOWN", 1, 0, 120),
        "functional_bytes": int(_env_num("HWTESTS_LINERATE_FUNCTIONAL_BYTES", 16 << 20, 1, 1 << 34)),
        "port": int(_env_num("HWTESTS_LINERATE_PORT", 5201, 1024, 65000)),
    }


def _params():
    out = []
    for mode, (_, _, caps) in MODES.items():
        marks = [pytest.mark.hw_test_name(f"linerate/{mode}")]
        out.append(pytest.param(mode, marks=marks, id=mode))
    return out


# -- traffic programs, built once per host and session ------------------------------------

@pytest.fixture(scope="session")
def traffic_bins():
    """host name -> deployed traffic programs (built on first use, per host)."""
    return {}


def _deploy(request, traffic_bins, he):
    from hwtests import traffic
    if he.name not in traffic_bins:
        try:
            traffic_bins[he.name] = traffic.build(he.t)
        except traffic.Unsupported as exc:
            pytest.skip(f"{he.name}: traffic programs cannot be built: {exc}")
        except HwtestsError as exc:
            pytest.fail(f"{he.name}: building the traffic programs failed: {exc}", pytrace=False)
        try:
            hs = request.getfixturevalue("hw_session")
            hs.deployed(he.name, traffic_bins[he.name].artifacts())
        except pytest.FixtureLookupError:
            pass
    return traffic_bins[he.name]


# -- helpers ---------------------------------------------------------------------------------

def need_rx_caps(rx, caps) -> None:
    """Skip naming what the RX host lacks (the TX side of these modes is plain TCP, so only RX matters)."""
    missing = [f"{c} on {rx.name} ({rx.caps.get(c + '_reason') or 'not available'})"
               for c in caps if rx.caps.get(c) is not True]
    if missing:
        pytest.skip("lacks " + "; ".join(missing))


# Software devices report a nominal speed (veth says 10000Mb/s) that says nothing about
# what the link can carry; a percentage of it would only mislead.
NOMINAL_SPEED_DRIVERS = {"veth", "virtio_net", "tun", "dummy", "netkit", "bridge", "loopback"}


def _link_speed_mbps(he) -> int | None:
    if he.nic.speed_mbps:           # the inventory's word wins
        return int(he.nic.speed_mbps)
    nic = ((he.probe or {}).get("nics") or {}).get(he.nic.ifname) or {}
    driver = nic.get("driver") or ""
    if driver in NOMINAL_SPEED_DRIVERS:
        return None
    s = nic.get("speed_mbps")
    return int(s) if isinstance(s, (int, float)) and s > 0 else None


MTU_TIMEOUT = 10.0


def _mtu(he) -> int | None:
    """The data NIC's MTU: the probe's, else read from sysfs (the probe's read may have timed out)."""
    nic = ((he.probe or {}).get("nics") or {}).get(he.nic.ifname) or {}
    m = nic.get("mtu")
    if isinstance(m, int) and not isinstance(m, bool) and m > 0:
        return m
    try:
        r = he.t.run(["cat", f"/sys/class/net/{he.nic.ifname}/mtu"], timeout=MTU_TIMEOUT, check=False)
    except HwtestsError:
        return None
    out = r.stdout.strip()
    return int(out) if r.exit_status == 0 and out.isdigit() and int(out) > 0 else None


def _ceiling(rx, tx) -> tuple[goodput.Ceiling | None, dict]:
    """The TCP goodput ceiling of the data path (the smaller MTU of the two ends) and what it rests on."""
    mtus = {"mtu_rx": _mtu(rx), "mtu_tx": _mtu(tx)}
    known = [m for m in mtus.values() if m]
    if not known:
        return None, dict(mtus, ceiling_error="MTU unknown on both hosts")
    try:
        c = goodput.tcp_ceiling(min(known), goodput.family_of(rx.addr))
    except ValueError as exc:
        return None, dict(mtus, ceiling_error=str(exc))
    return c, dict(mtus, mtu=c.mtu, family=c.family, ceiling_pct=round(c.pct, 3))


def _same_machine(rx, tx) -> bool:
    a, b = (rx.probe or {}).get("boot_id"), (tx.probe or {}).get("boot_id")
    return bool(a) and a == b


def _zero_copy_setup(rx, tx, mode: str, port: int):
    """NIC setup on the RX host for devmem/zcrx; skip naming what the NIC cannot."""
    try:
        return nicsetup.prepare_zero_copy(rx, None, port, tx.addr, local_addr=rx.addr)
    except nicsetup.Unsupported as exc:
        pytest.skip(f"{mode}: {exc}")
    except nicsetup.NicSetupError as exc:
        pytest.fail(f"{mode}: NIC setup failed: {exc}", pytrace=False)


def _run(rx, tx, bins, rx_mode, tx_mode, port, zc, **kw):
    from hwtests import traffic
    zkw = dict(ifname=rx.nic.ifname, queue=zc.queue) if zc is not None else {}
    try:
        return traffic.run_pair(rx.t, tx.t, rx.addr, rx_mode, tx_mode, port=port, rx_bins=bins[0], tx_bins=bins[1],
                                rx_cpus=rx.host.pin.rx_cpus, tx_cpus=tx.host.pin.tx_cpus, **zkw, **kw)
    except traffic.Unsupported as exc:
        if rx_mode == "zcrx" and exc.role == "rx":
            pytest.skip(traffic.zcrx_unsupported_reason(exc, (rx.probe or {}).get("kernel_release") or "?"))
        pytest.skip(f"{rx_mode}/{tx_mode}: {exc}")
    except HwtestsError as exc:
        pytest.fail(f"{rx_mode}/{tx_mode}: {exc}", pytrace=False)


def check_zcrx(test: str, mode: str, rx: dict) -> dict:
    """The receiver's zcrx counters, after checking that the path is the one the mode stands for
    and that every buffer went back: refill entries equal data completions and, device-less,
    the kernel consumed them all (flushed). Returns the counters to store with the samples."""
    want = "nodev-copy" if mode == "zcrx-nodev" else "zero-copy"
    assert rx.get("zcrx_path") == want, f"{test}: receiver took the {rx.get('zcrx_path')} path, not {want}"
    assert rx.get("refill_ring_full", 0) == 0, f"{test}: refill ring overflowed ({rx.get('refill_ring_full')} times)"
    assert rx.get("refills") == rx.get("zcrx_data_cqes"), \
        f"{test}: {rx.get('refills')} buffers returned of {rx.get('zcrx_data_cqes')} received"
    if want == "nodev-copy":
        assert rx.get("refill_flushes", 0) > 0 and rx.get("refill_pending") == 0, \
            f"{test}: refill ring not drained: {rx.get('refill_pending')} entries left after {rx.get('refill_flushes')} flushes"
    keys = ("zcrx_path", "zcrx_cqes", "zcrx_data_cqes", "refills", "refill_flushes", "refill_pending", "rearms",
            "cq_full_rearms", "no_buffer_rearms", "cq_entries", "area_size", "rx_buf_len", "zcrx_register_flags")
    return {k: rx[k] for k in keys if k in rx}


def steady_window(samples: list[float], seconds: float, t_end: float, warmup: int, cooldown: int):
    """Steady-state Gbit/s samples, their mean, and their time window on the controller's clock.

    The receiver's samples are per second from its first accepted connection, and it
    ran `seconds` until the end; `t_end` is when the run returned on the controller
    (a few SSH round trips late, well under the CPU sampler's resolution).
    """
    from hwtests import traffic
    steady = traffic.steady_state(samples, warmup, cooldown)
    if not steady:
        return [], 0.0, (t_end - seconds, t_end)
    t0 = t_end - seconds + warmup
    return steady, sum(steady) / len(steady), (t0, t0 + len(steady))


def _driver(he) -> str:
    return (((he.probe or {}).get("nics") or {}).get(he.nic.ifname) or {}).get("driver") or ""


def _counter_rows(test, rep, samplers, rx, tx, w0, w1) -> list:
    """Both hosts' counter deltas over the steady window, as rows of the counters table."""
    out = []
    for role, he in (("rx", rx), ("tx", tx)):
        s = samplers[role]
        rows = s.rows_between(w0, w1, driver=_driver(he))
        s.cleanup()
        out += counterstore.from_rows(test, rep, he.name, role, rows)
    return out


def _session(request):
    try:
        return request.getfixturevalue("hw_session")
    except pytest.FixtureLookupError:
        return None


# -- the test ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", _params())
def test_linerate(request, hw_pair, mode, traffic_bins, hw_record_many):
    from hwtests.store import Sample

    cfg = settings()
    rx, tx = hw_pair.rx, hw_pair.tx
    rx_mode, tx_mode, _ = MODES[mode]
    test = f"linerate/{mode}"
    need_rx_caps(rx, MODES[mode][2])
    run_kw = dict(rx_args=RX_ARGS.get(mode, ()), flows=FLOWS.get(mode, 1))
    bins = (_deploy(request, traffic_bins, rx), _deploy(request, traffic_bins, tx))
    src = bins[0].source_hash
    zc = None
    port = 0                       # the receiver picks a free port ...
    try:
        if mode in NIC_SETUP:
            port = cfg["port"] + list(MODES).index(mode)   # ... except where a flow rule must name it
            zc = _zero_copy_setup(rx, tx, mode, port)

        # functional pass: a short transfer the receiver validates byte by byte
        fres = _run(rx, tx, bins, rx_mode, tx_mode, port, zc, bytes_=cfg["functional_bytes"], duration=30, **run_kw)
        fval = int(fres.rx.get("validated_bytes", 0))
        assert fres.mismatches == 0, f"{test}: {fres.mismatches} payload mismatches in the functional pass"
        assert fval >= cfg["functional_bytes"], f"{test}: functional pass validated {fval} bytes only"
        if rx_mode == "zcrx":
            fz = check_zcrx(test, mode, fres.rx)
            request.node.user_properties.append((f"{test}:functional", json.dumps(fz, sort_keys=True)))

        speed = _link_speed_mbps(rx)
        ceiling, ceiling_facts = _ceiling(rx, tx) if speed else (None, {})
        shared = _same_machine(rx, tx)
        samples: list = []
        counters: list = []
        summary = []
        for rep in range(cfg["repeat"]):
            srx = cpustat.CpuSampler(rx.t, interval=0.5, max_seconds=cfg["duration"] + 90, name="cpustat-rx").start()
            stx = cpustat.CpuSampler(tx.t, interval=0.5, max_seconds=cfg["duration"] + 90, name="cpustat-tx").start()
            ctr = {role: countersnap.CounterSampler(he.t, he.nic.ifname, interval=0.5, max_seconds=cfg["duration"] + 90,
                                                    name=f"counters-{role}", nl=b.nl).start()
                   for role, he, b in (("rx", rx, bins[0]), ("tx", tx, bins[1]))}
            done = False
            try:
                res = _run(rx, tx, bins, rx_mode, tx_mode, port, zc, duration=cfg["duration"], **run_kw)
                t_end = time.time()
                done = True
            finally:
                for sampler in (srx, stx, *ctr.values()):
                    try:
                        sampler.stop()
                    except HwtestsError:
                        if done:
                            raise
                        # the transfer failed already (a host gone, say): that is the error to report
            assert res.mismatches == 0, f"{test}: repetition {rep}: {res.mismatches} payload mismatches"
            zcrx = check_zcrx(f"{test}: repetition {rep}", mode, res.rx) if rx_mode == "zcrx" else None
            steady, gbps, (w0, w1) = steady_window(res.rx.get("samples") or [], float(res.rx.get("seconds") or 0),
                                                   t_end, int(cfg["warmup"]), int(cfg["cooldown"]))
            assert steady, (f"{test}: repetition {rep}: no steady-state samples left of "
                            f"{res.rx.get('samples')} (warm-up {cfg['warmup']:g}, cool-down {cfg['cooldown']:g})")
            assert gbps > 0, f"{test}: repetition {rep}: no throughput in the steady-state window"
            nbytes = gbps * 1e9 / 8 * len(steady)
            cpu_rx = srx.usage_between(w0, w1)
            cpu_tx = stx.usage_between(w0, w1)
            extra = {"mismatches": res.mismatches, "validated_bytes": int(res.rx.get("validated_bytes", 0)),
                     "functional_validated_bytes": fval, "traffic_src": src,
                     "per_second_gbps": [round(x, 4) for x in res.rx.get("samples") or []],
                     "steady_gbps": [round(x, 4) for x in steady], "duration": cfg["duration"],
                     "warmup": cfg["warmup"], "cooldown": cfg["cooldown"], "rx_mode": rx_mode, "tx_mode": tx_mode,
                     "shared_cpu": shared, "pin": {"rx_cpus": rx.host.pin.rx_cpus, "tx_cpus": tx.host.pin.tx_cpus}, "zc_completions": res.tx.get("zc_completions"),
                     "zc_copied": res.tx.get("zc_copied")}
            if zc is not None:
                extra.update({"queue": zc.queue, "flow_rule": zc.rule, "nic_changes": zc.changed})
            if zcrx is not None:
                extra["zcrx"] = zcrx
                extra["flows"] = run_kw["flows"]
            common = dict(test=test, repetition=rep, boot_id=(rx.probe or {}).get("boot_id"), host=rx.name)
            if cpu_rx is not None:
                extra["cpu_rx"] = {k: round(v, 2) for k, v in cpu_rx.pct.items()}
                extra["cpu_rx_per_interval"] = [round(u.busy_pct, 2) for _, u in srx.per_second(w0, w1)]
            if cpu_tx is not None:
                extra["cpu_tx"] = {k: round(v, 2) for k, v in cpu_tx.pct.items()}
            samples.append(Sample(metric="gbps", value=gbps, unit="Gbit/s", better="higher", extra=extra, **common))
            if cpu_rx is not None:
                samples.append(Sample(metric="cpu_rx_pct", value=cpu_rx.busy_pct, unit="%", better="lower",
                                      extra={"traffic_src": src, "pct": extra["cpu_rx"]}, **common))
                per_gb = cpustat.cpu_per_gb(cpu_rx.busy_seconds, nbytes)
                if per_gb is not None:
                    samples.append(Sample(metric="cpu_per_gb", value=per_gb, unit="CPU s/GB", better="lower",
                                          extra={"traffic_src": src, "host_role": "rx"}, **common))
            if cpu_tx is not None:
                samples.append(Sample(metric="cpu_tx_pct", value=cpu_tx.busy_pct, unit="%", better="lower",
                                      extra={"traffic_src": src, "pct": extra["cpu_tx"]},
                                      **dict(common, host=tx.name, boot_id=(tx.probe or {}).get("boot_id"))))
            if speed and mode != "zcrx-nodev":     # copies every byte: no share of a line rate
                link_extra = {"speed_mbps": speed, "traffic_src": src, **ceiling_facts}
                samples.append(Sample(metric="link_pct", value=100.0 * gbps * 1000 / speed, unit="%",
                                      better="higher", extra=link_extra, **common))
                if ceiling is not None:
                    samples.append(Sample(metric="ceiling_pct", value=goodput.share_of_ceiling(gbps, speed, ceiling),
                                          unit="%", better="higher", extra=link_extra, **common))
            counters += _counter_rows(test, rep, ctr, rx, tx, w0, w1)
            retrans = next((c.value for c in counters if c.repetition == rep and c.role == "tx"
                            and c.name == "net.Tcp.RetransSegs"), None)
            summary.append(f"{gbps:.2f} Gbit/s"
                           + (f", CPU rx {cpu_rx.busy_pct:.0f}% (softirq {cpu_rx.pct['softirq']:.0f}%)"
                              if cpu_rx else ", CPU rx n/a")
                           + (f", tx {cpu_tx.busy_pct:.0f}%" if cpu_tx else ", tx n/a")
                           + (f", {int(res.rx.get('bytes', 0)) / 1e9:.3f} GB in {zcrx.get('zcrx_data_cqes')} completions, "
                              f"{zcrx.get('refills')} refills, {zcrx.get('refill_flushes')} flushes, "
                              f"{zcrx.get('rearms')} re-arms" if zcrx else "")
                           + (f", retransmits {retrans:.0f}" if retrans is not None else ""))
        hw_record_many(samples)
        counterstore.record(_session(request), hw_pair.name, counters)
        request.node.user_properties.append((f"{test}:summary", "; ".join(summary)))
        print(f"{test} on {hw_pair.name}: " + "; ".join(summary))
    finally:
        if zc is not None:
            errs = rx.journal.restore()
            assert not errs, f"{rx.name}: NIC setup not restored: {errs}"
