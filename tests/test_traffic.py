"""The traffic programs (fixtures/traffic) and hwtests.traffic, on this machine's loopback.

No lab: LocalTransport, 127.0.0.1 and ::1. Transfers are bytes-limited or 1-2 s long.
devmem and zcrx cannot work on loopback (no /dev/udmabuf here, lo has no queue API),
so those paths are checked up to the kernel's refusal: exit 4 naming the step and strerror.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hwtests import traffic
from hwtests.transport import LocalTransport

FIX = traffic.FIXTURE
SUMMARY_KEYS = {"role", "mode", "bytes", "seconds", "gbps", "samples", "mismatches", "tokens_returned",
                "zc_completions", "zc_copied", "errors", "flows", "version"}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="netlink bind and io_uring zcrx need CAP_NET_ADMIN")


def _run(argv, timeout=30):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]


# -- build -----------------------------------------------------------------------------------

def test_build_both(bins, lt, tmp_path):
    for p in (bins.rx, bins.tx):
        assert os.access(p, os.X_OK), p
    assert len(bins.source_hash) == 64 and bins.source_hash == traffic.source_hash()
    assert set(bins.sha256) == {"hwt_rx", "hwt_tx", "hwt_nl"}
    assert bins.how == "controller-static"          # same architecture here
    assert bins.artifacts()["traffic_src"] == bins.source_hash
    # memoised on the connection, and a new connection finds the host cache by its stamp
    assert traffic.build(lt) is bins
    with LocalTransport("local") as other:
        again = traffic.build(other, cache_root=tmp_path)
        assert again is not bins and again.sha256 == bins.sha256 and again.rx == bins.rx


def test_build_memo_dies_with_the_connection(tmp_path):
    """A session's built programs are never handed to a later session's connection, even where
    Python reuses the object's id, nor kept after the temp dir they may live in is gone."""
    if not shutil.which("cc") or not shutil.which("make"):
        pytest.skip("no cc/make on this machine")
    t = LocalTransport("local")
    first = traffic.build(t, cache_root=tmp_path)
    assert traffic.build(t) is first
    t.cleanup()
    assert t.memo == {}
    t2 = LocalTransport("local")
    assert t2.memo == {}
    second = traffic.build(t2, cache_root=tmp_path)
    assert second is not first and second.sha256 == first.sha256
    t2.cleanup()


def test_build_on_host_with_its_cc(lt):
    """The path for hosts of another architecture: sources uploaded, built with the host's cc."""
    files = traffic.source_files()
    files["hwt_common.h"] += b"\n/* host-build test variant */\n"   # another hash: no cache hit
    b = traffic.build(lt, force_host_build=True, files=files)
    assert b.how == "host-cc" and b.source_hash != traffic.source_hash()
    r = _run([b.tx, "--help"])
    assert r.returncode == 0 and "usage: hwt_tx" in r.stdout


def test_compiles_warning_free_and_static(tmp_path):
    for f in FIX.iterdir():
        if f.suffix in (".c", ".h") or f.name == "Makefile":
            shutil.copy(f, tmp_path / f.name)
    r = _run(["make", "-C", tmp_path, "CFLAGS=-O2 -Werror", "all"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning:" not in r.stderr.lower()
    r = _run(["make", "-C", tmp_path, "CFLAGS=-O2 -Werror", "static"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning:" not in r.stderr.lower()
    assert not any(p.suffix == ".o" or p.name in traffic.PROGRAMS for p in FIX.iterdir()), \
        "build products in the source tree"


# -- transfers -------------------------------------------------------------------------------

def test_tcp_to_tcp_bytes(lt, bins):
    n = 64 << 20
    r = traffic.run_pair(lt, lt, "127.0.0.1", "tcp", "tcp", flows=1, duration=10, bytes_=n,
                         rx_bins=bins, tx_bins=bins)
    assert r.ok, r
    assert r.rx["bytes"] == n == r.tx["bytes"] and r.rx["validated_bytes"] == n
    assert r.gbps > 0 and r.mismatches == 0
    assert SUMMARY_KEYS <= set(r.rx) and SUMMARY_KEYS <= set(r.tx)
    assert r.rx["role"] == "rx" and r.tx["role"] == "tx" and r.source_hash == bins.source_hash


def test_tcp_to_tcp_duration_samples(lt, bins):
    r = traffic.run_pair(lt, lt, "127.0.0.1", "tcp", "tcp", flows=2, duration=2, rx_bins=bins, tx_bins=bins)
    assert r.ok, r
    assert r.gbps > 0 and r.mismatches == 0 and r.rx["validated_bytes"] == r.rx["bytes"]
    assert 1.5 < r.rx["seconds"] < 4 and 1.5 < r.tx["seconds"] < 2.5
    assert len(r.rx["samples"]) in (2, 3) and all(s > 0 for s in r.rx["samples"][:2])
    assert len(r.rx["flow_bytes"]) == 2 and all(b > 0 for b in r.rx["flow_bytes"])
    assert r.rx["flow_bytes"] == r.tx["flow_bytes"]


def test_zerocopy_to_tcp_ipv6(lt, bins):
    r = traffic.run_pair(lt, lt, "::1", "tcp", "zerocopy", flows=2, duration=1, rx_bins=bins, tx_bins=bins)
    assert r.ok, r
    assert r.gbps > 0 and r.mismatches == 0
    assert r.tx["zc_sends"] > 0 and r.tx["zc_completions"] == r.tx["zc_sends"]
    # loopback hands zerocopy skbs to a local socket: the kernel copies and says so
    assert 0 < r.tx["zc_copied"] <= r.tx["zc_completions"]


def test_corrupted_stream_is_detected(lt, bins):
    r = traffic.run_pair(lt, lt, "127.0.0.1", "tcp", "tcp", duration=10, bytes_=4 << 20, rx_bins=bins,
                         tx_bins=bins, tx_args=["--corrupt-every", "1000"])
    assert r.rx_exit == traffic.EXIT_MISMATCH and r.tx_exit == 0
    assert r.tx["corrupted_bytes"] == (4 << 20) // 1000
    assert r.mismatches == r.tx["corrupted_bytes"]
    assert r.rx["errors"] == []
    assert r.rx_stderr.count("mismatch:") == 5      # details stop after a few


def test_receiver_idle_timeout(bins):
    t0 = time.monotonic()
    r = _run([bins.rx, "--mode", "tcp", "--addr", "127.0.0.1", "--timeout", "1"], timeout=20)
    assert r.returncode == 1 and time.monotonic() - t0 < 5
    ready, summ = _json_lines(r.stdout)
    assert ready["ready"] is True and ready["port"] > 0
    assert summ["bytes"] == 0 and "idle timeout" in summ["errors"][0]


def test_receiver_sigterm_prints_summary(bins):
    p = subprocess.Popen([bins.rx, "--mode", "tcp", "--addr", "::1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(p.stdout.readline())["ready"] is True
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1
    assert any("interrupted" in e for e in json.loads(out.strip().splitlines()[-1])["errors"])


# -- unsupported features: exit 4 with the kernel's error -------------------------------------

def _unsupported(r) -> dict:
    assert r.returncode == traffic.EXIT_UNSUPPORTED, (r.returncode, r.stdout, r.stderr)
    lines = _json_lines(r.stdout)
    assert len(lines) == 1, r.stdout
    u = lines[0]
    assert u["unsupported"].startswith(u["step"] + ": ")
    assert os.strerror(u["errno"]) in u["unsupported"]
    return u


@needs_root
def test_devmem_receiver_unsupported(bins, lt):
    u = _unsupported(_run([bins.rx, "--mode", "devmem", "--ifname", "lo", "--port", "0"]))
    if not Path("/dev/udmabuf").exists():
        assert u["step"] == "udmabuf: open /dev/udmabuf" and u["errno"] == errno.ENOENT
    else:
        assert u["step"] == "bind-rx"
    with pytest.raises(traffic.Unsupported) as ei:
        traffic.run_pair(lt, lt, "127.0.0.1", "devmem", "tcp", duration=1, ifname="lo", rx_bins=bins, tx_bins=bins)
    assert ei.value.role == "rx" and ei.value.reason == u["unsupported"]


@needs_root
def test_devmem_bind_rx_reaches_the_kernel(bins, lt):
    """Our netlink client resolves "netdev" and sends a well-formed bind-rx: lo refuses with EOPNOTSUPP."""
    u = _unsupported(_run([bins.rx, "--mode", "devmem", "--ifname", "lo", "--fake-dmabuf", "--bind-only"]))
    assert u["step"] == "bind-rx" and u["errno"] == errno.EOPNOTSUPP
    assert u["unsupported"].startswith("bind-rx: Operation not supported")
    with pytest.raises(traffic.Unsupported, match="bind-rx: Operation not supported"):
        traffic.bind_check(lt, "devmem", "lo", bins=bins, extra=["--fake-dmabuf"])


@needs_root
def test_zcrx_receiver_unsupported(bins, lt):
    u = _unsupported(_run([bins.rx, "--mode", "zcrx", "--ifname", "lo", "--port", "0"]))
    assert u["step"].startswith(("zcrx:", "io_uring"))
    with pytest.raises(traffic.Unsupported) as ei:
        traffic.bind_check(lt, "zcrx", "lo", bins=bins)
    assert ei.value.step == u["step"] and ei.value.errno == u["errno"]


@needs_root
def test_devmem_sender_unsupported(bins, lt):
    u = _unsupported(_run([bins.tx, "--mode", "devmem", "--ifname", "lo", "--addr", "127.0.0.1", "--port", "9"]))
    if not Path("/dev/udmabuf").exists():
        assert u["step"] == "udmabuf: open /dev/udmabuf" and u["errno"] == errno.ENOENT
    u = _unsupported(_run([bins.tx, "--mode", "devmem", "--ifname", "lo", "--fake-dmabuf",
                           "--addr", "127.0.0.1", "--port", "9"]))
    assert u["step"] == "bind-tx" and u["errno"] == errno.EOPNOTSUPP
    with pytest.raises(traffic.Unsupported) as ei:
        traffic.run_pair(lt, lt, "127.0.0.1", "tcp", "devmem", duration=1, tx_ifname="lo", rx_bins=bins,
                         tx_bins=bins)
    assert ei.value.role == "tx"


# -- usage errors: exit 2, one line on stderr, nothing on stdout -------------------------------

@pytest.mark.parametrize("prog,args", [
    ("hwt_rx", []),
    ("hwt_rx", ["--mode", "udp"]),
    ("hwt_rx", ["--mode", "tcp", "--flows", "0"]),
    ("hwt_rx", ["--mode", "tcp", "--flows", "many"]),
    ("hwt_rx", ["--mode", "tcp", "--duration", "3601"]),
    ("hwt_rx", ["--mode", "tcp", "--port"]),
    ("hwt_rx", ["--mode", "tcp", "--bogus"]),
    ("hwt_rx", ["--mode", "tcp", "extra"]),
    ("hwt_rx", ["--mode", "tcp", "--addr", "example.org"]),
    ("hwt_rx", ["--mode", "devmem"]),
    ("hwt_rx", ["--mode", "devmem", "--ifname", "no-such-if0"]),
    ("hwt_rx", ["--mode", "tcp", "--bind-only"]),
    ("hwt_tx", ["--mode", "tcp", "--port", "5000"]),
    ("hwt_tx", ["--mode", "tcp", "--addr", "127.0.0.1"]),
    ("hwt_tx", ["--mode", "tcp", "--addr", "127.0.0.1", "--port", "70000"]),
    ("hwt_tx", ["--mode", "tcp", "--addr", "127.0.0.1", "--port", "5000", "--duration", "4000"]),
    ("hwt_tx", ["--mode", "tcp", "--addr", "127.0.0.1", "--port", "5000", "--bytes", "-1"]),
    ("hwt_tx", ["--mode", "zerocopy", "--addr", "127.0.0.1", "--port", "5000", "--corrupt-every", "7"]),
    ("hwt_tx", ["--mode", "devmem", "--addr", "127.0.0.1", "--port", "5000"]),
])
def test_bad_arguments_exit_2_with_one_line(bins, prog, args):
    r = _run([getattr(bins, prog[-2:]), *args])
    assert r.returncode == traffic.EXIT_USAGE, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(f"{prog}: usage error: "), r.stderr


def test_usage_error_maps_to_traffic_error(lt, bins):
    with pytest.raises(traffic.TrafficError, match=r"hwt_tx failed \(exit 2\).*--chunk"):
        traffic.run_pair(lt, lt, "127.0.0.1", "tcp", "tcp", duration=1, rx_bins=bins, tx_bins=bins,
                         tx_args=["--chunk", "0"], idle_timeout=1)


# -- pure helpers ------------------------------------------------------------------------------

def test_steady_state():
    s = [1.0, 5.0, 6.0, 7.0, 2.0]
    assert traffic.steady_state(s) == [5.0, 6.0, 7.0]
    assert traffic.steady_state(s, warmup=2, cooldown=0) == [6.0, 7.0, 2.0]
    assert traffic.steady_state(s, warmup=0, cooldown=0) == s
    assert traffic.steady_state([1.0, 2.0]) == []
    assert traffic.steady_state([]) == []
    with pytest.raises(ValueError):
        traffic.steady_state(s, warmup=-1)


def test_parse_summary_and_ready():
    out = ('{"ready": true, "port": 4242, "role": "rx"}\n'
           'noise\n{"role": "rx", "mode": "tcp", "bytes": 1}\n')
    assert traffic.parse_ready(out)["port"] == 4242
    assert traffic.parse_summary(out)["bytes"] == 1
    assert traffic.parse_summary('{"ready": true, "port": 1, "role": "rx"}\n') is None
    assert traffic.parse_summary('{"unsupported": "bind-rx: x", "step": "bind-rx"}')["step"] == "bind-rx"
    assert traffic.parse_summary("{broken\n") is None


# -- data-link diagnosis for a failed transfer (pure) ------------------------------------------

IP_LINK_O = (
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\"
    "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
    "3: data0@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP,M-DOWN> mtu 1500 qdisc noqueue state LOWERLAYERDOWN "
    "mode DEFAULT group default qlen 1000\\    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n"
    "4: eth1: <BROADCAST,MULTICAST> mtu 1500 qdisc mq state DOWN mode DEFAULT group default qlen 1000\\"
    "    link/ether 02:00:00:00:00:02 brd ff:ff:ff:ff:ff:ff\n"
    "5: eth2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9000 qdisc mq state UP mode DEFAULT qlen 1000\\ link/ether\n")


def test_link_states():
    assert traffic.link_states(IP_LINK_O) == {"lo": "UP", "data0": "LOWERLAYERDOWN (no carrier)",
                                              "eth1": "DOWN (set down)", "eth2": "UP"}
    assert traffic.link_states("") == {}


def test_addr_and_route_ifname():
    addrs = ("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
             "3: data0    inet 198.51.100.5/30 scope global data0\\       valid_lft forever\n"
             "3: data0    inet6 fd42:7774:2::1/64 scope global nodad \\       valid_lft forever\n")
    assert traffic.addr_ifname(addrs, "198.51.100.5") == "data0"
    assert traffic.addr_ifname(addrs, "fd42:7774:2::1") == "data0"
    assert traffic.addr_ifname(addrs, "198.51.100.6") is None
    assert traffic.route_ifname("198.51.100.5 dev data0 src 198.51.100.6 uid 0 \n    cache \n") == "data0"
    assert traffic.route_ifname("RTNETLINK answers: Network is unreachable") is None
    assert traffic.route_ifname("x dev") is None
