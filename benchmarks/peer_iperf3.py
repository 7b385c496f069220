#!/usr/bin/env python3
"""Our sender/receiver (fixtures/traffic) against iperf3 on the same link, interleaved.

Default: loopback on this machine (127.0.0.1, or ::1 with --ipv6). With
`--inventory F --pair P` it runs on a lab pair instead: receivers on the pair's
rx host listening on its data address, senders on the tx host (hosts opened
with hwtests.hostconn.connect).

Each round runs both tools for --seconds (default 5), alternating which goes
first, for --rounds rounds (default 5). Per tool it prints the per-round Gbit/s
(bytes received / receive time, as each tool reports it) and the steady-state
median of the per-second samples (first --warmup and last --cooldown seconds
dropped), then the medians and the ratio ours/iperf3. Ours validates every
received byte; iperf3 does not look at the payload.

iperf3 is Debian's package; when it is missing on this machine and we are
root, `apt-get install -y iperf3` is run; on lab hosts it must be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hwtests import hostconn, inventory, traffic  # noqa: E402
from hwtests.errors import HwtestsError  # noqa: E402
from hwtests.transport import LocalTransport, Transport  # noqa: E402


def ensure_local_iperf3() -> None:
    if shutil.which("iperf3"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("iperf3 is not installed (apt-get install -y iperf3)")
    print("installing iperf3 (Debian package) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-q", "iperf3"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        r = subprocess.run(["apt-get", "install", "-y", "-q", "iperf3"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"apt-get install iperf3 failed: {r.stderr.strip().splitlines()[-1:]}")


def require_iperf3(t: Transport) -> None:
    if not t.run("command -v iperf3", check=False, timeout=20).ok:
        raise SystemExit(f"{t.name}: iperf3 is not installed there (apt-get install -y iperf3)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_iperf3(rx_t: Transport, tx_t: Transport, addr: str, seconds: float, flows: int, port: int,
               warmup: int, cooldown: int) -> tuple[float, list[float]]:
    """(Gbit/s received over the whole test, per-second Gbit/s samples)."""
    srv = rx_t.start(["iperf3", "-s", "-1", "--forceflush", "-p", str(port), "-B", addr], name="iperf3-s")
    try:
        deadline = time.monotonic() + 10
        while "listening" not in srv.output()[0].lower():
            if not srv.alive() or time.monotonic() > deadline:
                out, err = srv.output()
                raise HwtestsError(f"{rx_t.name}: iperf3 server did not start: {(err or out).strip()[-300:]}")
            time.sleep(0.05)
        r = tx_t.run(["iperf3", "-c", addr, "-p", str(port), "-t", f"{seconds:g}", "-P", str(flows), "-J"],
                     timeout=seconds + 60, check=False)
        d = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        if r.exit_status != 0 or "end" not in d:
            raise HwtestsError(f"{tx_t.name}: iperf3 client failed (exit {r.exit_status}): "
                               f"{d.get('error') or r.stderr.strip()[-300:]}")
        total = d["end"]["sum_received"]["bits_per_second"] / 1e9
        samples = [iv["sum"]["bits_per_second"] / 1e9 for iv in d.get("intervals", [])
                   if iv["sum"].get("seconds", 0) >= 0.2]
        srv.wait(15)
        return total, samples
    finally:
        srv.stop(grace=1.0)


def run_ours(rx_t: Transport, tx_t: Transport, addr: str, seconds: float, flows: int, rx_bins, tx_bins,
             mode_rx: str, mode_tx: str) -> tuple[float, list[float], dict]:
    res = traffic.run_pair(rx_t, tx_t, addr, mode_rx, mode_tx, flows=flows, duration=seconds,
                           rx_bins=rx_bins, tx_bins=tx_bins)
    if res.mismatches:
        raise HwtestsError(f"payload mismatches: {res.mismatches}")
    return res.gbps, list(res.rx["samples"]), res.rx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inventory", help="lab inventory (default: loopback on this machine)")
    ap.add_argument("--pair", help="pair name in the inventory (default: the first)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per run (default 5)")
    ap.add_argument("--flows", type=int, default=1, help="parallel connections for both tools (default 1)")
    ap.add_argument("--mode-rx", default="tcp", choices=traffic.RX_MODES, help="our receiver mode (default tcp)")
    ap.add_argument("--mode-tx", default="tcp", choices=traffic.TX_MODES, help="our sender mode (default tcp)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds dropped at the start (default 1)")
    ap.add_argument("--cooldown", type=int, default=0, help="seconds dropped at the end (default 0)")
    ap.add_argument("--ipv6", action="store_true", help="loopback: use ::1")
    args = ap.parse_args()
    if not (1 <= args.rounds <= 50 and 1 <= args.seconds <= 60 and 1 <= args.flows <= 16):
        ap.error("bounds: rounds 1..50, seconds 1..60, flows 1..16")

    opened: list[Transport] = []
    if args.inventory:
        inv = inventory.load(args.inventory)
        pair = inv.pair(args.pair) if args.pair else next(iter(inv.pairs.values()))
        rx_host, tx_host = inv.hosts[pair.rx.host], inv.hosts[pair.tx.host]
        rx_t = hostconn.connect(rx_host, inv.defaults, inv)
        tx_t = hostconn.connect(tx_host, inv.defaults, inv)
        opened += [rx_t, tx_t]
        nic = rx_host.nics[pair.rx.nic]
        addr = (nic.ipv6 or "").split("/")[0] if args.ipv6 else nic.addr
        if not addr:
            ap.error(f"pair {pair.name}: the rx NIC has no {'IPv6' if args.ipv6 else ''} address")
        where = f"pair {pair.name}: {tx_host.name} -> {rx_host.name} {addr}"
        for t in (rx_t, tx_t):
            require_iperf3(t)
        iperf_port = 5201 + (os.getpid() % 1000)
    else:
        ensure_local_iperf3()
        rx_t = tx_t = LocalTransport("local")
        opened.append(rx_t)
        addr = "::1" if args.ipv6 else "127.0.0.1"
        where = f"loopback {addr}"
        iperf_port = 0

    try:
        rx_bins = traffic.build(rx_t)
        tx_bins = rx_bins if tx_t is rx_t else traffic.build(tx_t)
        iperf_ver = rx_t.run("iperf3 --version", check=False, timeout=20).stdout.split("\n")[0].strip()
        print(f"{where}; {args.rounds} rounds x {args.seconds:g} s, {args.flows} flow(s); "
              f"ours {args.mode_tx}->{args.mode_rx} (src {rx_bins.source_hash[:12]}, {rx_bins.how}); {iperf_ver}")
        print(f"load before: {os.getloadavg()[0]:.2f} (1-min)", flush=True)
        ours_tot, ours_ss, ip_tot, ip_ss = [], [], [], []
        for rnd in range(args.rounds):
            order = ("ours", "iperf3") if rnd % 2 == 0 else ("iperf3", "ours")
            line = []
            for tool in order:
                if tool == "ours":
                    g, s, _ = run_ours(rx_t, tx_t, addr, args.seconds, args.flows, rx_bins, tx_bins,
                                       args.mode_rx, args.mode_tx)
                    ss = traffic.steady_state(s, args.warmup, args.cooldown)
                    ours_tot.append(g)
                    ours_ss.append(statistics.median(ss) if ss else g)
                    line.append(f"ours {g:6.2f} (steady {ours_ss[-1]:6.2f})")
                else:
                    port = iperf_port or free_port()
                    g, s = run_iperf3(rx_t, tx_t, addr, args.seconds, args.flows, port, args.warmup, args.cooldown)
                    ss = traffic.steady_state(s, args.warmup, args.cooldown)
                    ip_tot.append(g)
                    ip_ss.append(statistics.median(ss) if ss else g)
                    line.append(f"iperf3 {g:6.2f} (steady {ip_ss[-1]:6.2f})")
            print(f"round {rnd + 1}: " + "   ".join(line) + "  Gbit/s", flush=True)
        mo, mi = statistics.median(ours_tot), statistics.median(ip_tot)
        so, si = statistics.median(ours_ss), statistics.median(ip_ss)
        print(f"median Gbit/s: ours {mo:.2f}  iperf3 {mi:.2f}  ratio ours/iperf3 {mo / mi:.3f}")
        print(f"median steady-state Gbit/s: ours {so:.2f}  iperf3 {si:.2f}  ratio {so / si:.3f}")
        print(f"load after: {os.getloadavg()[0]:.2f} (1-min)")
        return 0
    except HwtestsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        for t in opened:
            t.close()


if __name__ == "__main__":
    sys.exit(main())
