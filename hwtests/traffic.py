"""Deploy and run the C receiver/sender (`fixtures/traffic/`), parse their JSON summaries.

    bins = build(t)                            # TrafficBinaries(rx, tx, source_hash, how, arch, sha256)
    res = run_pair(rx_t, tx_t, "192.0.2.1", "devmem", "tcp", flows=2, duration=10,
                   rx_args=["--ifname", "eth1", "--queue", "3"])
    res.rx["gbps"], res.rx["samples"], res.rx["mismatches"], res.source_hash
    steady_state(res.rx["samples"], warmup=1, cooldown=1)

Building (`build`): when the host's `uname -m` equals the controller's, the
programs are built here as static binaries (`make static`, in a scratch
copy of the sources, never in the source tree) and cached under
`.hwtests/cache/traffic/<source hash>/<arch>/` (static binaries do not
depend on the host's kernel); they are then copied into the host's cache dir.
Otherwise (or when the controller cannot link statically) the sources are
uploaded and built on the host with its `cc`. The host's cache dir is
`/var/cache/hwtests/traffic/<hash>-<arch>-<kernel release>/` when writable,
else a dir in the transport's temp dir. A cached pair is reused when the
SHA-256 of both binaries matches the stamp written next to them.

Running (`run_pair`): the receiver starts in the background (`Transport.start`)
and prints `{"ready": true, "port": P}` once it listens; the sender then runs
in the foreground with a timeout; both print one JSON summary line.
Program exit codes (fixtures/traffic/hwt_common.h): 0 ok, 1 failed, 2 usage,
3 payload mismatches (a result, not an error here: see `TrafficResult.mismatches`),
4 unsupported -> `Unsupported(reason)`; anything else -> `TrafficError` naming
the exit status and the last output lines.
"""

from __future__ import annotations

import errno as errno_mod
import hashlib
import json
import os
import platform
import posixpath
import secrets
import shlex
import signal
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import nlclient
from .errors import HwtestsError, InfraError
from .transport import CommandTimeout, LocalTransport, RemoteError, Transport

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "traffic"
PROGRAMS = ("hwt_rx", "hwt_tx", "hwt_nl")
RX_MODES = ("tcp", "devmem", "zcrx")
TX_MODES = ("tcp", "zerocopy", "devmem")

# exit codes of hwt_rx / hwt_tx
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3
EXIT_UNSUPPORTED = 4

HOST_CACHE = "/var/cache/hwtests/traffic"
BUILD_TIMEOUT = 300.0
READY_TIMEOUT = 20.0
MAX_DURATION = 3600.0


class TrafficError(HwtestsError):
    """A traffic program failed, timed out or printed no summary."""

    exit_code = 1


class Unsupported(HwtestsError):
    """The host, kernel or NIC lacks a feature the mode needs (program exit code 4); tests skip on it."""

    exit_code = 4

    def __init__(self, reason: str, *, host: str = "", role: str = "", step: str = "", errno: int | None = None,
                 summary: dict | None = None):
        self.reason = reason
        self.host = host
        self.role = role
        self.step = step
        self.errno = errno
        self.summary = summary or {}
        super().__init__(f"{host}: {role} unsupported: {reason}" if host else reason)


# -- sources and building -------------------------------------------------------------------

def source_files(root: Path = FIXTURE) -> dict[str, bytes]:
    """The files a build needs: *.c, *.h and the Makefile."""
    names = sorted(p.name for p in root.iterdir()
                   if p.is_file() and (p.suffix in (".c", ".h") or p.name == "Makefile"))
    if "Makefile" not in names or not any(n.endswith(".c") for n in names):
        raise InfraError(f"traffic sources missing in {root}")
    return {n: (root / n).read_bytes() for n in names}


def source_hash(files: dict[str, bytes] | None = None) -> str:
    """SHA-256 over the sorted names and contents of the sources."""
    files = source_files() if files is None else files
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


@dataclass
class TrafficBinaries:
    rx: str                     # path on the host
    tx: str
    source_hash: str
    how: str                    # "controller-static" | "host-cc"
    arch: str
    kernel_release: str
    sha256: dict[str, str] = field(default_factory=dict)   # program -> sha256 of the deployed binary

    @property
    def nl(self) -> str:
        """hwt_nl, next to hwt_rx (netlink queries: queues, qstats, rings)."""
        return posixpath.join(posixpath.dirname(self.rx), "hwt_nl")

    def artifacts(self) -> dict[str, str]:
        """Name -> digest, for `Run.artifacts`."""
        out = {f"traffic/{k}": v for k, v in self.sha256.items()}
        out["traffic_src"] = self.source_hash
        return out


def controller_cache_root() -> Path:
    return Path(os.environ.get("HWTESTS_CACHE", ".hwtests/cache")) / "traffic"


def _host_facts(t: Transport) -> tuple[str, str]:
    r = t.run("uname -m; uname -r", timeout=20)
    lines = r.stdout.split()
    if len(lines) < 2:
        raise InfraError(f"{t.name}: cannot read uname -m / -r: {r.stdout.strip()!r}")
    return lines[0], lines[1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tail(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-600:]


def build_static_local(files: dict[str, bytes], digest: str, cache_root: Path | None = None) -> dict[str, bytes]:
    """Static binaries built on the controller (cached); raises InfraError naming the compiler's message."""
    arch = platform.machine()
    root = (cache_root or controller_cache_root()) / digest / f"{arch}-static"
    stamp = root / "sha256.json"
    if stamp.exists():
        try:
            want = json.loads(stamp.read_text())
            got = {p: (root / p).read_bytes() for p in PROGRAMS}
            if all(_sha256(got[p]) == want.get(p) for p in PROGRAMS):
                return got
        except (OSError, ValueError):
            pass
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=root.parent))
    lt = LocalTransport("controller", BUILD_TIMEOUT)
    try:
        for name, data in files.items():
            (scratch / name).write_bytes(data)
        r = lt.run(["make", "-C", str(scratch), "static"], timeout=BUILD_TIMEOUT, check=False)
        if not r.ok:
            raise InfraError(f"controller: static build of the traffic programs failed "
                             f"(exit {r.exit_status}): {_tail(r.stderr or r.stdout)}")
        got = {p: (scratch / p).read_bytes() for p in PROGRAMS}
        out = scratch / "out"
        out.mkdir()
        for p in PROGRAMS:
            (out / p).write_bytes(got[p])
            (out / p).chmod(0o755)
        (out / "sha256.json").write_text(json.dumps({p: _sha256(got[p]) for p in PROGRAMS}))
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(out, root)           # atomic: a concurrent build may win, both are identical
        except OSError:
            pass
        return got
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# Make the cache dir private (umask 077), then trust it only if every dir of ours on its path
# belongs to the login user and no one else may write there: the binaries in it run as that
# user (root, mostly), so a dir someone else can write would let them swap the programs.
_PRIVATE_DIR = r"""umask 077; mkdir -p "$1" 2>/dev/null || exit 1
u=$(id -u); shift
for d in "$@"; do
    s=$(stat -L -c '%u %a' "$d") || exit 1
    [ "${s%% *}" = "$u" ] || exit 1
    case "${s#* }" in *[2367]? | *[2367]) exit 1;; esac
done"""


def _host_cache_dir(t: Transport, digest: str, arch: str, release: str) -> str:
    """The host's cache dir for these binaries when it is private to the login user, else one in
    the run's temp dir."""
    d = posixpath.join(HOST_CACHE, f"{digest[:16]}-{arch}-{release}")
    ours = [HOST_CACHE.rsplit("/", 1)[0], HOST_CACHE, d]
    r = t.run(["sh", "-c", _PRIVATE_DIR, "sh", d, *ours], check=False, timeout=20)
    if r.ok:
        return d
    d = posixpath.join(t.tmpdir, f"traffic-{digest[:16]}")
    t.run(["mkdir", "-p", d], timeout=20)
    return d


def _remote_sums(t: Transport, d: str) -> dict[str, str]:
    r = t.run(["sh", "-c", 'cd "$1" 2>/dev/null && sha256sum hwt_rx hwt_tx hwt_nl 2>/dev/null; true', "sh", d],
              check=False, timeout=30)
    out = {}
    for ln in r.stdout.splitlines():
        parts = ln.split()
        if len(parts) == 2 and parts[1] in PROGRAMS:
            out[parts[1]] = parts[0]
    return out


def _remote_stamp(t: Transport, d: str) -> dict[str, str]:
    r = t.run(["cat", posixpath.join(d, "sha256.json")], check=False, timeout=20)
    try:
        v = json.loads(r.stdout) if r.ok else {}
        return v if isinstance(v, dict) else {}
    except ValueError:
        return {}


def _cached_on_host(t: Transport, d: str) -> dict[str, str] | None:
    stamp = _remote_stamp(t, d)
    if not stamp:
        return None
    sums = _remote_sums(t, d)
    if all(sums.get(p) and sums.get(p) == stamp.get(p) for p in PROGRAMS):
        return sums
    return None


def _install_on_host(t: Transport, d: str, bins: dict[str, bytes]) -> dict[str, str]:
    tag = secrets.token_hex(4)
    for p, data in bins.items():
        tmp = posixpath.join(d, f".{p}.{tag}")
        t.write_file(tmp, data, 0o755)
        t.run(["mv", "-f", tmp, posixpath.join(d, p)], timeout=20)
    sums = {p: _sha256(data) for p, data in bins.items()}
    t.write_file(posixpath.join(d, "sha256.json"), json.dumps(sums).encode(), 0o644)
    got = _remote_sums(t, d)
    if any(got.get(p) != sums[p] for p in PROGRAMS):
        raise InfraError(f"{t.name}: traffic binaries in {d} do not match what was copied")
    return sums


def _build_on_host(t: Transport, files: dict[str, bytes], d: str) -> dict[str, str]:
    r = t.run("command -v cc || command -v gcc", check=False, timeout=20)
    cc = r.stdout.strip().splitlines()[-1] if r.ok and r.stdout.strip() else ""
    if not cc:
        raise InfraError(f"{t.name}: no C compiler (cc) on the host, and its architecture differs from the "
                         f"controller's ({platform.machine()}) so no binary can be copied")
    src = posixpath.join(t.tmpdir, f"traffic-src-{secrets.token_hex(4)}")
    t.run(["mkdir", "-p", src], timeout=20)
    for name, data in files.items():
        t.write_file(posixpath.join(src, name), data, 0o644)
    r = t.run(["make", "-C", src, f"CC={cc}", "all"], timeout=BUILD_TIMEOUT, check=False)
    if not r.ok:
        raise InfraError(f"{t.name}: building the traffic programs failed (exit {r.exit_status}): "
                         f"{_tail(r.stderr or r.stdout)}")
    tag = secrets.token_hex(4)
    for p in PROGRAMS:
        tmp = posixpath.join(d, f".{p}.{tag}")
        t.run(["cp", posixpath.join(src, p), tmp], timeout=20)
        t.run(["mv", "-f", tmp, posixpath.join(d, p)], timeout=20)
    sums = _remote_sums(t, d)
    if set(sums) != set(PROGRAMS):
        raise InfraError(f"{t.name}: traffic binaries missing in {d} after the build")
    t.write_file(posixpath.join(d, "sha256.json"), json.dumps(sums).encode(), 0o644)
    t.run(["rm", "-rf", src], check=False, timeout=20)
    return sums


def build(t: Transport, *, cache_root: Path | None = None, force_host_build: bool = False,
          files: dict[str, bytes] | None = None) -> TrafficBinaries:
    """Make hwt_rx/hwt_tx runnable on the host behind `t`; returns their paths and digests."""
    files = source_files() if files is None else files
    digest = source_hash(files)
    key = "traffic:" + digest + ("-host" if force_host_build else "")
    if key in t.memo:          # built through this connection already (its temp dir still exists)
        return t.memo[key]
    arch, release = _host_facts(t)
    d = _host_cache_dir(t, digest, arch, release)
    how = "controller-static" if (arch == platform.machine() and not force_host_build) else "host-cc"
    sums = _cached_on_host(t, d)
    if sums is None:
        bins = None
        if how == "controller-static":
            try:
                bins = build_static_local(files, digest, cache_root)
            except InfraError:
                how = "host-cc"        # e.g. no static libc here: the host's cc is the fallback
        if bins is not None:
            sums = _install_on_host(t, d, bins)
        else:
            sums = _build_on_host(t, files, d)
    res = TrafficBinaries(rx=posixpath.join(d, "hwt_rx"), tx=posixpath.join(d, "hwt_tx"), source_hash=digest,
                          how=how, arch=arch, kernel_release=release, sha256=dict(sums))
    t.memo[key] = res
    return res


# -- running ----------------------------------------------------------------------------------

@dataclass
class TrafficResult:
    rx: dict[str, Any]
    tx: dict[str, Any]
    source_hash: str
    rx_exit: int = 0
    tx_exit: int = 0
    rx_stderr: str = ""
    tx_stderr: str = ""

    @property
    def gbps(self) -> float:
        return float(self.rx.get("gbps") or 0.0)     # null: the program had no finite rate

    @property
    def mismatches(self) -> int:
        return int(self.rx.get("mismatches", 0))

    @property
    def ok(self) -> bool:
        return self.rx_exit == EXIT_OK and self.tx_exit == EXIT_OK and not self.errors

    @property
    def errors(self) -> list[str]:
        return list(self.rx.get("errors", [])) + list(self.tx.get("errors", []))


def parse_summary(stdout: str) -> dict[str, Any] | None:
    """The last JSON object line that is a summary (has "role") or an "unsupported" report."""
    found = None
    for ln in stdout.splitlines():
        ln = ln.strip()
        if not ln.startswith("{"):
            continue
        try:
            obj = json.loads(ln)
        except ValueError:
            continue
        if isinstance(obj, dict) and ("unsupported" in obj or ("role" in obj and "ready" not in obj)):
            found = obj
    return found


# What the programs' JSON lines hold (fixtures/traffic/hwt_common.c): counters are unsigned
# integers, times and rates numbers (null where the program had none), `samples` and
# `flow_bytes` lists of numbers. Fields not named here pass as they are (a newer program).
_COUNTERS = ("bytes", "mismatches", "validated_bytes", "tokens_returned", "zc_sends", "zc_completions",
             "zc_copied", "flows", "corrupted_bytes", "dmabuf_id", "dmabuf_frags", "linear_frags", "linear_bytes",
             "linear_header_bytes", "copied_bytes", "zcrx_cqes", "zcrx_data_cqes", "refills", "refill_flushes",
             "refill_pending", "cq_full_rearms", "no_buffer_rearms", "rearms", "refill_ring_full", "cq_entries",
             "area_size", "rx_buf_len", "zcrx_register_flags", "zcrx_query_errno", "queue", "num_queues", "pid")
_TEXTS = ("role", "mode", "version", "unsupported", "step", "error", "extack", "ifname", "zcrx_path",
          "zcrx_fallback", "area_sizing")
# hwt_rx --mode zcrx: the path its summary names. "nodev-copy" (ZCRX_REG_NODEV) moves every byte
# through the kernel's copy fallback: a functional result, never a zero-copy figure.
ZCRX_PATHS = ("zero-copy", "nodev-copy")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)      # JSON true is no number


def _is_num(v: Any, integer: bool = False) -> bool:
    if integer:
        return _is_int(v) and v >= 0
    return (_is_int(v) or isinstance(v, float)) and v == v and abs(v) != float("inf") and v >= 0


def check_summary(obj: dict[str, Any], host: str, role: str) -> dict[str, Any]:
    """`obj` (a JSON line of hwt_rx/hwt_tx) when its fields have the types the code reading them
    assumes; else TrafficError naming the host, the program and the field (pure)."""
    def bad(k: str, want: str) -> TrafficError:
        return TrafficError(f"{host}: hwt_{role} printed a summary with {k}={json.dumps(obj[k])[:80]} "
                            f"(expected {want}): not a hwt_{role} of this hwtests?")

    for k, v in obj.items():
        if k in _COUNTERS and not _is_num(v, integer=True):
            raise bad(k, "an unsigned integer")
        if k in ("seconds", "gbps") and v is not None and not _is_num(v):
            raise bad(k, "a number >= 0")
        if k in ("samples", "flow_bytes") and not (isinstance(v, list) and all(_is_num(x) for x in v)):
            raise bad(k, "a list of numbers >= 0")
        if k == "port" and not (_is_int(v) and 0 <= v <= 65535):
            raise bad(k, "a port number")
        if k in _TEXTS and not isinstance(v, str):
            raise bad(k, "a string")
        if k == "errno" and not _is_int(v):
            raise bad(k, "an integer")
        if k == "errors" and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise bad(k, "a list of strings")
        if k == "binds" and not (isinstance(v, list) and all(isinstance(x, dict) for x in v)):
            raise bad(k, "a list of objects")
        if k == "zcrx_path" and v not in ZCRX_PATHS:
            raise bad(k, " or ".join(ZCRX_PATHS))
    return obj


def parse_ready(stdout: str) -> dict[str, Any] | None:
    for ln in stdout.splitlines():
        ln = ln.strip()
        if ln.startswith("{") and '"ready"' in ln:
            try:
                obj = json.loads(ln)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("ready"):
                return obj
    return None


def status_text(status: int | None) -> str:
    """'exit 1', or 'killed by SIGKILL (exit 137)' for a process a signal ended (shell: 128+N)."""
    if status is None:
        return "no exit status"
    sig = -status if status < 0 else status - 128 if 128 < status <= 128 + 64 else 0
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name} (exit {status})"
        except ValueError:
            pass
    return f"exit {status}"


def _fail(host: str, role: str, status: int, stdout: str, stderr: str, what: str = "") -> TrafficError:
    summ = parse_summary(stdout)
    detail = ""
    if summ and isinstance(summ.get("errors"), list):
        detail = "; ".join(str(e) for e in summ["errors"][:3])
    tail = _tail(stderr) or _tail(stdout)
    msg = f"{host}: hwt_{role} {what or 'failed'} ({status_text(status)})"
    if detail:
        msg += f": {detail}"
    elif tail:
        msg += f": {tail}"
    return TrafficError(msg)


def _check_unsupported(host: str, role: str, status: int, stdout: str) -> None:
    if status != EXIT_UNSUPPORTED:
        return
    summ = parse_summary(stdout) or {}
    reason = str(summ.get("unsupported") or "unsupported (no reason printed)")
    errno = summ.get("errno")
    raise Unsupported(reason, host=host, role=role, step=str(summ.get("step", "")),
                      errno=errno if _is_int(errno) else None, summary=summ)


def _addr_arg(addr: str) -> str:
    a = addr.split("/")[0]
    if a.startswith("[") and a.endswith("]"):
        a = a[1:-1]
    return a


def rx_command(binary: str, mode: str, *, addr: str | None = None, port: int = 0, flows: int = 1,
               duration: float = 5.0, bytes_: int | None = None, timeout: float | None = None,
               ifname: str | None = None, queue: int | None = None, num_queues: int | None = None,
               extra: Sequence[str] = ()) -> list[str]:
    if mode not in RX_MODES:
        raise ValueError(f"receiver mode {mode!r} is not one of {', '.join(RX_MODES)}")
    cmd = [binary, "--mode", mode, "--port", str(int(port)), "--flows", str(int(flows)),
           "--duration", f"{float(duration):g}"]
    if addr:
        cmd += ["--addr", _addr_arg(addr)]
    if bytes_:
        cmd += ["--bytes", str(int(bytes_))]
    if timeout:
        cmd += ["--timeout", f"{float(timeout):g}"]
    if ifname:
        cmd += ["--ifname", ifname]
    if queue is not None:
        cmd += ["--queue", str(int(queue))]
    if num_queues is not None:
        cmd += ["--num-queues", str(int(num_queues))]
    return cmd + [str(x) for x in extra]


def tx_command(binary: str, mode: str, addr: str, port: int, *, flows: int = 1, duration: float = 5.0,
               bytes_: int | None = None, timeout: float | None = None, ifname: str | None = None,
               extra: Sequence[str] = ()) -> list[str]:
    if mode not in TX_MODES:
        raise ValueError(f"sender mode {mode!r} is not one of {', '.join(TX_MODES)}")
    cmd = [binary, "--mode", mode, "--addr", _addr_arg(addr), "--port", str(int(port)),
           "--flows", str(int(flows))]
    if bytes_:
        cmd += ["--bytes", str(int(bytes_))]
        if duration:
            cmd += ["--duration", f"{float(duration):g}"]
    else:
        cmd += ["--duration", f"{float(duration):g}"]
    if timeout:
        cmd += ["--timeout", f"{float(timeout):g}"]
    if ifname:
        cmd += ["--ifname", ifname]
    return cmd + [str(x) for x in extra]


def run_pair(rx_t: Transport, tx_t: Transport, rx_addr: str, mode_rx: str = "tcp", mode_tx: str = "tcp",
             flows: int = 1, duration: float = 5.0, port: int = 0, *, bytes_: int | None = None,
             rx_bins: TrafficBinaries | None = None, tx_bins: TrafficBinaries | None = None,
             ifname: str | None = None, queue: int | None = None, num_queues: int | None = None,
             tx_ifname: str | None = None, rx_args: Sequence[str] = (), tx_args: Sequence[str] = (),
             idle_timeout: float | None = None, ready_timeout: float = READY_TIMEOUT,
             check: bool = True, rx_cpus: str | None = None, tx_cpus: str | None = None) -> TrafficResult:
    """Receiver on rx_t listening on rx_addr, sender on tx_t connecting to it; both summaries.

    `rx_cpus`/`tx_cpus` (CPU lists like "2-3"): run that side under `taskset -c`.

    Raises Unsupported (exit 4 of either side) and, when `check`, TrafficError for any other
    failure (exit 1/2/other, no summary, timeouts). Payload mismatches (exit 3) are returned.
    A TrafficError names a data link found down on either host (the likely cause).
    """
    try:
        return _run_pair(rx_t, tx_t, rx_addr, mode_rx, mode_tx, flows, duration, port, bytes_=bytes_,
                         rx_bins=rx_bins, tx_bins=tx_bins, ifname=ifname, queue=queue, num_queues=num_queues,
                         tx_ifname=tx_ifname, rx_args=rx_args, tx_args=tx_args, idle_timeout=idle_timeout,
                         ready_timeout=ready_timeout, check=check, rx_cpus=rx_cpus, tx_cpus=tx_cpus)
    except TrafficError as exc:
        note = link_note(rx_t, tx_t, rx_addr)
        if not note:
            raise
        raise TrafficError(f"{exc}; {note}") from None


def link_note(rx_t: Transport, tx_t: Transport, rx_addr: str) -> str:
    """'data link: a2 data0 is DOWN, ...' for data-path links not up on either host; '' if all are
    up or nothing could be read (best effort: only called once a transfer has failed)."""
    addr = _addr_arg(rx_addr)
    bad = []
    for t, cmd in ((rx_t, "ip -o addr show; echo ---; ip -o link show"),
                   (tx_t, f"ip route get {shlex.quote(addr)}; echo ---; ip -o link show")):
        try:
            r = t.run(cmd, check=False, timeout=10)
        except HwtestsError:
            continue
        top, _, links = r.stdout.partition("\n---\n")
        dev = addr_ifname(top, addr) if t is rx_t else route_ifname(top)
        state = link_states(links).get(dev) if dev else None
        if state and state != "UP":
            bad.append(f"{t.name} {dev} is {state}")
    return ("data link: " + ", ".join(bad)) if bad else ""


def addr_ifname(ip_addr_o: str, addr: str) -> str | None:
    """The interface holding `addr`, from `ip -o addr show` (pure)."""
    for ln in ip_addr_o.splitlines():
        f = ln.split()
        if len(f) >= 4 and f[2] in ("inet", "inet6") and f[3].split("/")[0] == addr:
            return f[1].rstrip(":")
    return None


def route_ifname(ip_route_get: str) -> str | None:
    """The interface `ip route get ADDR` says the traffic leaves by (pure)."""
    f = ip_route_get.split()
    return f[f.index("dev") + 1] if "dev" in f[:-1] else None


def link_states(ip_link_o: str) -> dict[str, str]:
    """ifname -> 'UP', 'DOWN (set down)', 'DOWN (no carrier)'... from `ip -o link show` (pure).

    A link with operstate UNKNOWN (loopback, some virtual devices) counts as up when the
    interface is administratively up and has carrier.
    """
    out = {}
    for ln in ip_link_o.splitlines():
        f = ln.split()
        if len(f) < 3 or not f[0].rstrip(":").isdigit():
            continue
        name = f[1].rstrip(":").split("@")[0]
        flags = f[2].strip("<>").split(",")
        state = f[f.index("state") + 1] if "state" in f[:-1] else "UNKNOWN"
        if state == "UNKNOWN" and "UP" in flags and "NO-CARRIER" not in flags:
            state = "UP"
        if "UP" not in flags:
            state += " (set down)"
        elif "NO-CARRIER" in flags:
            state += " (no carrier)"
        out[name] = state
    return out


def _run_pair(rx_t: Transport, tx_t: Transport, rx_addr: str, mode_rx: str, mode_tx: str, flows: int,
              duration: float, port: int, *, bytes_: int | None, rx_bins: TrafficBinaries | None,
              tx_bins: TrafficBinaries | None, ifname: str | None, queue: int | None, num_queues: int | None,
              tx_ifname: str | None, rx_args: Sequence[str], tx_args: Sequence[str],
              idle_timeout: float | None, ready_timeout: float, check: bool, rx_cpus: str | None = None,
              tx_cpus: str | None = None) -> TrafficResult:
    if duration > MAX_DURATION:
        raise ValueError(f"duration {duration} s is longer than {MAX_DURATION:g} s")
    rx_bins = rx_bins or build(rx_t)
    tx_bins = tx_bins or build(tx_t)
    idle = idle_timeout if idle_timeout is not None else max(10.0, min(duration, 60.0) + 10.0)
    rx_cmd = rx_command(rx_bins.rx, mode_rx, addr=rx_addr, port=port, flows=flows, duration=duration,
                        bytes_=bytes_, timeout=idle, ifname=ifname, queue=queue, num_queues=num_queues,
                        extra=rx_args)
    rx_cmd = (["taskset", "-c", rx_cpus] if rx_cpus else []) + rx_cmd
    bg = rx_t.start(rx_cmd, name="hwt_rx")
    try:
        ready = None
        deadline = time.monotonic() + ready_timeout
        while ready is None:
            out, err = bg.output()
            ready = parse_ready(out)
            if ready is not None:
                check_summary(ready, rx_t.name, "rx")
                break
            if not bg.alive():
                res = bg.wait(5)
                _check_unsupported(rx_t.name, "rx", res.exit_status, res.stdout)
                raise _fail(rx_t.name, "rx", res.exit_status, res.stdout, res.stderr, "exited before it was ready")
            if time.monotonic() > deadline:
                raise TrafficError(f"{rx_t.name}: hwt_rx printed no ready line within {ready_timeout:g} s"
                                   + (f": {_tail(err)}" if err.strip() else ""))
            time.sleep(0.05)
        tx_cmd = tx_command(tx_bins.tx, mode_tx, rx_addr, int(ready["port"]), flows=flows, duration=duration,
                            bytes_=bytes_, timeout=idle, ifname=tx_ifname, extra=tx_args)
        tx_cmd = (["taskset", "-c", tx_cpus] if tx_cpus else []) + tx_cmd
        send_time = (60.0 if bytes_ and not duration else duration)
        try:
            txr = tx_t.run(tx_cmd, timeout=send_time + idle + 30, check=False)
        except CommandTimeout as exc:
            raise TrafficError(f"{tx_t.name}: hwt_tx did not finish: {exc}") from None
        _check_unsupported(tx_t.name, "tx", txr.exit_status, txr.stdout)
        try:
            # a failed sender may leave the receiver waiting for connections: short grace only
            rxr = bg.wait(idle + 30 if txr.exit_status == EXIT_OK else 5.0)
        except CommandTimeout:
            if txr.exit_status != EXIT_OK:
                bg.stop()
                raise _fail(tx_t.name, "tx", txr.exit_status, txr.stdout, txr.stderr) from None
            rxr = bg.stop()
            raise TrafficError(f"{rx_t.name}: hwt_rx did not finish after the sender ended "
                               f"(tx exit {txr.exit_status}): {_tail(rxr.stderr)}") from None
    except BaseException:
        try:
            bg.stop(grace=1.0)
            wait_queues_released(rx_t, rx_bins, mode_rx, ifname, queue, num_queues)
        except (HwtestsError, RemoteError):
            pass
        raise
    wait_queues_released(rx_t, rx_bins, mode_rx, ifname, queue, num_queues)
    _check_unsupported(rx_t.name, "rx", rxr.exit_status, rxr.stdout)
    rx_sum = parse_summary(rxr.stdout)
    tx_sum = parse_summary(txr.stdout)
    if check:
        if txr.exit_status != EXIT_OK and (rxr.exit_status or 0) not in range(0, 129):
            # the receiver was killed (a signal) or crashed: that is the cause, the sender saw only the reset
            err = _fail(rx_t.name, "rx", rxr.exit_status, rxr.stdout, rxr.stderr)
            raise TrafficError(f"{err}; meanwhile {tx_t.name}: hwt_tx {status_text(txr.exit_status)}: "
                               f"{_tail(txr.stderr, 1) or _tail(txr.stdout, 1)}")
        if txr.exit_status != EXIT_OK:
            raise _fail(tx_t.name, "tx", txr.exit_status, txr.stdout, txr.stderr)
        if rxr.exit_status not in (EXIT_OK, EXIT_MISMATCH):
            raise _fail(rx_t.name, "rx", rxr.exit_status, rxr.stdout, rxr.stderr)
        if rx_sum is None:
            raise _fail(rx_t.name, "rx", rxr.exit_status, rxr.stdout, rxr.stderr, "printed no summary")
        if tx_sum is None:
            raise _fail(tx_t.name, "tx", txr.exit_status, txr.stdout, txr.stderr, "printed no summary")
    for summ, t, role in ((rx_sum, rx_t, "rx"), (tx_sum, tx_t, "tx")):
        if summ is not None:
            check_summary(summ, t.name, role)
    return TrafficResult(rx=rx_sum or {}, tx=tx_sum or {}, source_hash=rx_bins.source_hash,
                         rx_exit=rxr.exit_status, tx_exit=txr.exit_status, rx_stderr=rxr.stderr,
                         tx_stderr=txr.stderr)


def bind_check(t: Transport, mode: str, ifname: str, *, queue: int = 0, num_queues: int = 1,
               count: int = 1, bins: TrafficBinaries | None = None, extra: Sequence[str] = ()) -> dict[str, Any]:
    """hwt_rx --bind-only: bind (devmem) or register (zcrx) `count` times without traffic.

    Returns the program's JSON ({"binds": [{"ok": ..., "errno": ..., "error": ..., "extack": ...}]})
    with "exit" added; raises Unsupported on exit 4 and TrafficError when there is no JSON.
    """
    bins = bins or build(t)
    cmd = [bins.rx, "--mode", mode, "--ifname", ifname, "--queue", str(queue), "--bind-only",
           "--bind-count", str(count)]
    if mode == "devmem":
        cmd += ["--num-queues", str(num_queues)]
    r = t.run(cmd + list(extra), check=False, timeout=60)
    wait_queues_released(t, bins, mode, ifname, queue, num_queues if mode == "devmem" else 1)
    _check_unsupported(t.name, "rx", r.exit_status, r.stdout)
    summ = parse_summary(r.stdout)
    if summ is None or "binds" not in summ:
        raise _fail(t.name, "rx", r.exit_status, r.stdout, r.stderr, "bind check printed no result")
    check_summary(summ, t.name, "rx")
    summ["exit"] = r.exit_status
    return summ


def wait_queues_released(t: Transport, bins: TrafficBinaries, mode: str, ifname: str | None, queue: int | None,
                         num_queues: int | None = None) -> None:
    """After a devmem/zcrx receiver exited: wait (bounded) until the kernel has detached its memory
    provider from the queues, which it does asynchronously; restoring header split or channels,
    or binding again, is refused until then. A kernel without netdev queue-get has nothing to wait on."""
    if mode not in ("devmem", "zcrx") or not ifname or queue is None:
        return
    ids = range(int(queue), int(queue) + max(1, int(num_queues or 1)))
    try:
        nlclient.wait_released(t, bins.nl, ifname, ids)
    except nlclient.NlUnsupported:
        return
    except nlclient.NlError as exc:
        raise TrafficError(str(exc)) from None


# -- analysis (pure) ------------------------------------------------------------------------

def zcrx_unsupported_reason(exc: Unsupported, kernel_release: str) -> str:
    """One line saying what the kernel lacks for io_uring zcrx, from hwt_rx's exit-4 report (pure):
    'io_uring zcrx: kernel 6.12.57 has no ZCRX_REG_NODEV (query EINVAL)'."""
    extack = str(exc.summary.get("extack") or "")
    if exc.step.endswith("IORING_REGISTER_QUERY"):
        if "register_flags" in extack:
            why = "query: " + extack.rsplit(": ", 1)[-1]
        else:
            why = "query " + (errno_mod.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "failed")
        return f"io_uring zcrx: kernel {kernel_release} has no ZCRX_REG_NODEV ({why})"
    return f"io_uring zcrx: kernel {kernel_release}: {exc.reason}"


def steady_state(samples: Sequence[float], warmup: int = 1, cooldown: int = 1) -> list[float]:
    """Per-second samples without the first `warmup` and the last `cooldown` ones.

    Empty when nothing is left; callers decide whether that is an error.
    """
    if warmup < 0 or cooldown < 0:
        raise ValueError("warmup and cooldown must be >= 0")
    vals = [float(s) for s in samples]
    end = len(vals) - cooldown
    return vals[warmup:end] if end > warmup else []


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def describe(cmd: Sequence[str]) -> str:
    """A command line as it would be typed (for messages and logs)."""
    return shlex.join(str(c) for c in cmd)
