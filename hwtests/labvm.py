"""The VM lab: two QEMU (TCG) virtual machines running real Debian kernels.

    vm-a  mgmt0: QEMU user net (restrict=on), SSH forwarded from 127.0.0.1:PORT_A only
          data0: 198.51.100.1/24 fd42:7774:1::1/64 --+
                                                     | QEMU dgram link over two UNIX sockets
    vm-b  data0: 198.51.100.2/24 fd42:7774:1::2/64 --+   in the state dir: no IP on this machine
          mgmt0: QEMU user net (restrict=on), SSH forwarded from 127.0.0.1:PORT_B only

Nothing is added to this machine's network configuration. Guests reach nothing
outside (`restrict=on`); the data link exists only between the two VMs.

Every kernel build is listed per host in the inventory with its release:
by default deb6.12 and deb6.1 (newest of Debian 12) and deb7 (newest 7.x of
trixie-backports), fetched and cached by `hwtests.debkernel`, their headers
prepared for module builds here by `hwtests.kbuildprep`. The VMs boot the
first build (or the one `boot` names) and `switch_kernel` restarts a VM on
another; `require` checks guest features (io_uring, zcrx, udmabuf) after the
boot and takes the lab down when one is missing. The guest is an
initramfs (`hwtests.vmimage`) with a real OpenSSH server whose host key is made
here, so known_hosts is written before the first boot and host keys are always
verified.

`state.json` is written before anything is started and holds the QEMU PIDs;
`down` kills exactly those (checked against their command line) and removes
the state dir, also after a crashed `up`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from . import debkernel, hostconn, inventory, kbuildprep, vmimage
from .errors import InfraError, InputError

QEMU = "qemu-system-x86_64"
VMS = ("vm-a", "vm-b")
DATA4 = {"vm-a": "198.51.100.1/24", "vm-b": "198.51.100.2/24"}        # TEST-NET-2, inside the VMs only
DATA6 = {"vm-a": "fd42:7774:1::1/64", "vm-b": "fd42:7774:1::2/64"}    # ULA, inside the VMs only
MGMT4 = "10.0.2.15/24"                                                 # QEMU user net's guest address
MAC_MGMT = {"vm-a": "52:54:00:48:57:0a", "vm-b": "52:54:00:48:57:0b"}
MAC_DATA = {"vm-a": "52:54:00:48:44:0a", "vm-b": "52:54:00:48:44:0b"}
MEMORY_MB = 1024
SMP = 1
BOOT_TIMEOUT = 90.0          # launch -> SSH answers (TCG boots take 3-10 s)
STOP_TIMEOUT = 10.0
DEFAULT_BUILDS = ("deb6.12", "deb6.1", "deb7")   # newest of each (debkernel.BUILDS); the VMs boot the first
READY_RE = re.compile(r"hwt-init: READY boot_id=([0-9a-f-]{36})")

logging.getLogger("paramiko").addHandler(logging.NullHandler())   # boot-time retries are expected


# --------------------------------------------------------------------------- state


@dataclass
class VMState:
    name: str
    port: int = 0
    pid: int = 0
    kernel: str = ""           # label the VM runs (or is starting)
    release: str = ""
    boot_id: str = ""
    launched: float = 0.0
    ready_s: float = 0.0       # launch -> SSH ready, seconds
    dir: str = ""


@dataclass
class LabState:
    kind: str = "vm"
    token: str = ""
    created: float = 0.0
    sock_dir: str = ""         # where the data-link sockets live (a short /tmp dir if the state path is long)
    sock_dir_owned: bool = False
    kernels: dict[str, dict[str, str]] = field(default_factory=dict)   # label -> release, image, config, headers
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    inventory: str = ""
    memory_mb: int = MEMORY_MB
    smp: int = SMP


def _state_path(state_dir: Path) -> Path:
    return Path(state_dir) / "state.json"


def _save(state_dir: Path, st: LabState) -> None:
    p = _state_path(state_dir)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=1))
    os.replace(tmp, p)


def load_state(state_dir: Path) -> LabState | None:
    try:
        return LabState(**json.loads(_state_path(state_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_vm(state_dir: Path, st: LabState, vm: VMState) -> None:
    """Record one VM's state; other VMs' entries on disk are kept (switches may run in parallel)."""
    _put_vm(st, vm)
    with open(Path(state_dir) / ".state.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = load_state(state_dir)
        if disk is not None and disk.token == st.token:
            for name, v in disk.vms.items():
                if name != vm.name:
                    st.vms[name] = v
            for label, k in disk.kernels.items():
                st.kernels.setdefault(label, k)
        _save(state_dir, st)


def _vm(st: LabState, name: str) -> VMState:
    return VMState(**st.vms[name])


def _put_vm(st: LabState, vm: VMState) -> None:
    st.vms[vm.name] = asdict(vm)


# --------------------------------------------------------------------------- kernels


def _run(cmd: list[str], timeout: float = 300, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except FileNotFoundError:
        raise InfraError(f"vm lab: command not found: {cmd[0]}") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"vm lab: `{' '.join(cmd[:4])} ...` timed out after {timeout:g} s") from None
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise InfraError(f"vm lab: `{' '.join(cmd[:4])}` failed: {msg[-1] if msg else p.returncode}")
    return p.stdout


def series_of(release: str) -> str:
    m = re.match(r"^(\d+\.\d+)", release)
    return m.group(1) if m else release


def default_builds(progress: Callable[[str], None] = lambda s: None) -> dict[str, str]:
    """label -> release of the lab's default builds (`DEFAULT_BUILDS`), each the newest its archive offers."""
    return {label: debkernel.resolve(label, progress=progress) for label in DEFAULT_BUILDS}


def default_releases() -> list[str]:
    return list(default_builds().values())


def labels_for(releases: list[str]) -> dict[str, str]:
    """label -> release: 'deb6.12' (7.x and later: 'deb7') when that is unique, else the release itself."""
    def short(r: str) -> str:
        s = series_of(r)
        return s.split(".")[0] if debkernel.version_key(r)[:1] >= (7,) else s
    keys = [short(r) for r in releases]
    return {(f"deb{k}" if keys.count(k) == 1 else r): r for r, k in zip(releases, keys)}


@dataclass
class KernelFiles:
    release: str
    vmlinuz: Path
    config: Path | None
    headers_dir: Path | None
    modules_dir: Path


def fetch_kernel(release: str, cache: Path, progress: Callable[[str], None]) -> KernelFiles:
    """Image, modules and headers of a Debian kernel release, downloaded once and cached (hwtests.debkernel)."""
    dk = debkernel.fetch(release, cache / "kernels", what=("image", "headers"),
                         progress=lambda s: progress(f"vm lab: {release}: {s}"))
    if dk.modules_dir is None:
        raise InfraError(f"vm lab: the {release} image packages hold no lib/modules/{release}/kernel")
    # a tree that cannot build modules here is still listed: its blocker file says why
    kbuildprep.prepare(dk, progress=lambda s: progress(f"vm lab: {release}: {s}"))
    return KernelFiles(release, dk.vmlinuz, dk.config, dk.headers_dir, dk.modules_dir)


# --------------------------------------------------------------------------- processes


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _ours(pid: int, token: str) -> bool:
    """A PID still belongs to this lab when its command line carries the lab token."""
    return bool(token) and f"hwt-{token}-".encode() in _cmdline(pid)


def _kill(pid: int, token: str, timeout: float = STOP_TIMEOUT) -> None:
    if not (_alive(pid) and _ours(pid, token)):
        _reap(pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if _alive(pid) and _ours(pid, token):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)


def _stray_pids(token: str) -> list[int]:
    """QEMUs of this lab whose PID never made it into state.json (a crash mid-start)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid() and _ours(int(d), token) and _alive(int(d)):
            out.append(int(d))
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preflight() -> None:
    missing = []
    if shutil.which(QEMU) is None:
        missing.append("qemu-system-x86")
    missing += [m for m in vmimage.missing_tools() if m not in missing]
    if shutil.which("ssh-keygen") is None:
        missing.append("openssh-client")
    if missing:
        raise InfraError(f"vm lab: missing on this machine: {', '.join(missing)} "
                         f"(apt-get install {' '.join(missing)})")
    try:
        import paramiko  # noqa: F401
    except ImportError:
        raise InfraError("vm lab: the Python package paramiko is not installed") from None


# --------------------------------------------------------------------------- QEMU


def _cmdline_for(name: str) -> str:
    return " ".join([
        "console=ttyS0", "quiet", "panic=-1",
        # each saves TCG boot time (measured: -0.6 s together) without touching networking
        "no_timer_check", "tsc=reliable", "8250.nr_uarts=1", "cryptomgr.notests",
        f"hwt.hostname={name}", f"hwt.mgmtmac={MAC_MGMT[name]}", f"hwt.datamac={MAC_DATA[name]}",
        f"hwt.mgmt4={MGMT4}", f"hwt.data4={DATA4[name]}", f"hwt.data6={DATA6[name]}",
    ])


def _sock(st: LabState, name: str) -> str:
    return str(Path(st.sock_dir) / f"{name}.sock")


def qemu_argv(st: LabState, vm: VMState, image: str, initrd: str, cmdline: str) -> list[str]:
    peer = VMS[1 - VMS.index(vm.name)]
    d = Path(vm.dir)
    return [
        QEMU, "-name", f"hwt-{st.token}-{vm.name},process=hwt-{st.token}-{vm.name}",
        "-machine", "pc", "-accel", "tcg", "-cpu", "max", "-smp", str(st.smp), "-m", str(st.memory_mb),
        "-nographic", "-nodefaults", "-no-reboot", "-no-user-config",
        "-kernel", image, "-initrd", initrd, "-append", cmdline,
        "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{vm.port}-:22",
        "-device", f"virtio-net-pci,netdev=mgmt,mac={MAC_MGMT[vm.name]},romfile=",
        "-netdev", (f"dgram,id=data,local.type=unix,local.path={_sock(st, vm.name)},"
                    f"remote.type=unix,remote.path={_sock(st, peer)}"),
        "-device", f"virtio-net-pci,netdev=data,mac={MAC_DATA[vm.name]},mq=on,vectors=10,romfile=",
        "-chardev", f"file,id=con,path={d / 'console.log'}",
        "-serial", "chardev:con",
        "-monitor", "none",
    ]


def _launch(state_dir: Path, st: LabState, vm: VMState, label: str, image: str, initrd: str,
            cmdline: str) -> VMState:
    d = Path(vm.dir)
    for log_name in ("console", "qemu"):
        if (d / f"{log_name}.log").exists():
            os.replace(d / f"{log_name}.log", d / f"{log_name}.prev.log")
    Path(_sock(st, vm.name)).unlink(missing_ok=True)
    vm.kernel, vm.release, vm.boot_id, vm.pid, vm.ready_s = label, st.kernels[label]["release"], "", 0, 0.0
    _save_vm(state_dir, st, vm)          # journal before starting
    log = open(d / "qemu.log", "ab")
    try:
        proc = subprocess.Popen(qemu_argv(st, vm, image, initrd, cmdline), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd=d)
    finally:
        log.close()
    vm.pid = proc.pid
    vm.launched = time.time()
    _save_vm(state_dir, st, vm)
    return vm


def _tail(path: Path, n: int = 6) -> str:
    try:
        txt = path.read_text(errors="replace")
    except OSError:
        return ""
    txt = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc", "", txt)
    lines = [ln.strip() for ln in txt.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _ssh_probe(port: int, key: str, known_hosts: str, timeout: float = 5.0) -> tuple[str, str]:
    """(uname -r, boot id) over SSH, the host key checked against known_hosts."""
    import paramiko
    c = paramiko.SSHClient()
    c.load_host_keys(known_hosts)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        c.connect("127.0.0.1", port=port, username="root", key_filename=key, sock=sock, timeout=timeout,
                  banner_timeout=timeout, auth_timeout=timeout, allow_agent=False, look_for_keys=False)
        _, out, _ = c.exec_command("uname -r; cat /proc/sys/kernel/random/boot_id", timeout=timeout)
        words = out.read().decode().split()
    finally:
        c.close()
        sock.close()
    if len(words) < 2:
        raise OSError("no answer to uname")
    return words[0], words[1]


class _PortBusy(InfraError):
    def __init__(self, name: str, msg: str):
        super().__init__(msg)
        self.name = name


def _wait_ready(state_dir: Path, st: LabState, names: list[str], timeout: float = BOOT_TIMEOUT,
                progress: Callable[[str], None] = lambda s: None) -> None:
    """Wait until each VM's sshd answers for the boot its console announced; verify the release."""
    import paramiko
    pending = {n: _vm(st, n) for n in names}
    t0 = time.monotonic()
    deadline = t0 + timeout
    last: dict[str, str] = {n: "no READY line on the console yet" for n in names}
    while pending:
        for name, vm in list(pending.items()):
            d = Path(vm.dir)
            if not _alive(vm.pid):
                _reap(vm.pid)
                qlog = _tail(d / "qemu.log", 3)
                if "host forwarding" in qlog or "hostfwd" in qlog:
                    raise _PortBusy(name, f"vm lab: {name}: SSH forward port {vm.port} is taken ({qlog})")
                raise InfraError(f"vm lab: {name}: QEMU exited during boot ({_tail(d / 'qemu.log', 3)}; "
                                 f"console: {_tail(d / 'console.log')})")
            m = READY_RE.search((d / "console.log").read_text(errors="replace")) if (d / "console.log").exists() else None
            if m is None:
                continue
            try:
                rel, boot = _ssh_probe(vm.port, str(state_dir / "client_key"), str(d / "known_hosts"))
            except paramiko.BadHostKeyException:
                raise InfraError(f"vm lab: {name}: SSH host key on 127.0.0.1:{vm.port} does not match the one "
                                 "made for this VM: something else answers on that port") from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                last[name] = f"ssh: {exc}"
                continue
            if boot != m.group(1):
                last[name] = "ssh answered for another boot"
                continue
            if vm.release and rel != vm.release:
                raise InfraError(f"vm lab: {name}: booted {rel}, expected {vm.release}")
            vm.release, vm.boot_id = rel, boot
            vm.ready_s = round(time.time() - vm.launched, 2)
            _save_vm(state_dir, st, vm)
            progress(f"vm lab: {name} up on {vm.kernel} ({rel}), SSH 127.0.0.1:{vm.port}, "
                     f"{vm.ready_s:.1f} s after launch")
            del pending[name]
        if not pending:
            break
        if time.monotonic() > deadline:
            why = "; ".join(f"{n}: {last[n]} (console: {_tail(Path(v.dir) / 'console.log', 3)})"
                            for n, v in pending.items())
            raise InfraError(f"vm lab: not reachable over SSH within {timeout:g} s: {why}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- public API


def up(state_dir: Path, kernels: list[str] | None = None, boot: str | None = None,
       require: list[str] | None = None, extra_cmdline: str = "",
       progress: Callable[[str], None] = print) -> Path:
    """Boot the two VMs and write the inventory; return its path.

    `kernels`: Debian kernel releases (default: the newest of each build in
    `DEFAULT_BUILDS`); `boot`: the label of the build the VMs boot (default:
    the first); `require`: guest features (`FEATURES`) both VMs must have on
    that build, else the lab is taken down again; `extra_cmdline`: appended to
    every guest's kernel command line. A label or feature the lab does not
    know is refused before anything is downloaded or started."""
    bad = [f for f in (require or []) if f not in FEATURES]
    if bad:
        raise InputError(f"vm lab: --require {bad[0]}: unknown guest feature (features: {', '.join(FEATURES)})")
    if not re.fullmatch(r"[A-Za-z0-9_.=,/-]*( [A-Za-z0-9_.=,/-]+)*", extra_cmdline):
        raise InputError(f"vm lab: extra kernel command line {extra_cmdline!r}: words of letters, digits, '_.=,/-'")
    preflight()
    state_dir = Path(state_dir).resolve()
    if kernels:
        _check_releases(kernels)
        if boot is not None and boot not in labels_for(list(kernels)):
            raise InputError(f"vm lab: --kernel-build {boot}: no such build in this lab "
                             f"(builds: {', '.join(labels_for(list(kernels)))})")
    elif boot is not None and boot not in DEFAULT_BUILDS:
        raise InputError(f"vm lab: --kernel-build {boot}: no such build in this lab "
                         f"(builds: {', '.join(DEFAULT_BUILDS)})")
    if load_state(state_dir) is not None:
        down(state_dir)
    elif state_dir.exists() and any(state_dir.iterdir()):
        raise InputError(f"vm lab: {state_dir} exists and is not a VM lab state dir; choose an empty path")
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    st = LabState(token=secrets.token_hex(4), created=time.time())
    _save(state_dir, st)
    try:
        _build(state_dir, st, kernels, boot, extra_cmdline, progress)
        if require:
            check_features(Path(st.inventory), require)
    except BaseException:
        down(state_dir)
        raise
    return Path(st.inventory)


def _check_releases(releases: list[str]) -> None:
    if len(set(releases)) != len(releases):
        raise InputError(f"vm lab: kernel listed twice: {', '.join(releases)}")
    for r in releases:
        if not re.match(r"^[0-9][A-Za-z0-9.+~_-]*$", r):
            raise InputError(f"vm lab: not a kernel release: {r!r}")


def _build(state_dir: Path, st: LabState, kernels: list[str] | None, boot: str | None, extra_cmdline: str,
           progress) -> None:
    labels = labels_for(list(kernels)) if kernels else default_builds(progress)
    cache = vmimage.cache_root()

    # sockets: a UNIX socket path must stay under 108 bytes
    sock_dir = state_dir / "sock"
    if len(str(sock_dir)) > 80:
        st.sock_dir, st.sock_dir_owned = tempfile.mkdtemp(prefix=f"hwt-{st.token}-"), True
    else:
        sock_dir.mkdir(mode=0o700)
        st.sock_dir = str(sock_dir)
    _save(state_dir, st)

    files: dict[str, KernelFiles] = {}
    for label, rel in labels.items():
        files[label] = kf = fetch_kernel(rel, cache, progress)
        st.kernels[label] = {"release": rel, "image": str(kf.vmlinuz), "config": str(kf.config or ""),
                             "headers": str(kf.headers_dir or ""), "modules": str(kf.modules_dir)}
    t0 = time.monotonic()
    vmimage.prune(cache)
    base = vmimage.build_base(cache)
    mods = {label: vmimage.build_modules(kf.modules_dir, kf.release, kf.config, cache)
            for label, kf in files.items()}
    progress(f"vm lab: guest images ready in {time.monotonic() - t0:.1f} s ({base.name})")

    client_key = state_dir / "client_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hwtests-vmlab-client", "-f", str(client_key)])
    authorized = Path(f"{client_key}.pub").read_bytes()
    boot_label = boot or next(iter(labels))
    files = {boot_label: files[boot_label], **files}       # the inventory lists the boot build first
    hosts: dict[str, Any] = {}
    for name in VMS:
        d = state_dir / name
        d.mkdir(mode=0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hwtests-{name}",
              "-f", str(d / "host_key")])
        ident = vmimage.build_identity(d / "identity.cpio", d / "host_key", authorized)
        vm = VMState(name=name, port=free_port(), dir=str(d))
        pub = (d / "host_key.pub").read_text().split()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{vm.port} {pub[0]} {pub[1]}\n")
        kb = {}
        for label, kf in files.items():
            initrd = vmimage.assemble(d / f"initrd-{label}.img", [base, mods[label], ident])
            kb[label] = {"image": str(kf.vmlinuz), "initrd": str(initrd),
                         "cmdline": " ".join(filter(None, [_cmdline_for(name), extra_cmdline])),
                         "release": kf.release}
            if kf.headers_dir:
                kb[label]["headers"] = str(kf.headers_dir)
        _put_vm(st, vm)
        hosts[name] = {
            "ssh": {"host": "127.0.0.1", "port": vm.port, "user": "root", "key": str(client_key),
                    "known_hosts": str(d / "known_hosts")},
            "nics": {"data": {"ifname": "data0", "ipv4": DATA4[name], "ipv6": DATA6[name]}},
            "kernels": kb,
            "vm": {"state_dir": str(state_dir), "name": name, "memory_mb": st.memory_mb, "smp": st.smp,
                   "boot_kernel": boot_label, "console": str(d / "console.log"), "machine": "pc", "accel": "tcg"},
        }
    _save(state_dir, st)
    for name in VMS:
        kb = hosts[name]["kernels"][boot_label]
        _launch(state_dir, st, _vm(st, name), boot_label, kb["image"], kb["initrd"], kb["cmdline"])
    for attempt in range(3):
        try:
            _wait_ready(state_dir, st, [n for n in VMS if not _vm(st, n).boot_id], progress=progress)
            break
        except _PortBusy as exc:     # another program bound the port between our pick and QEMU's
            if attempt == 2:
                raise
            vm = _vm(st, exc.name)
            vm.port = free_port()
            pub = (Path(vm.dir) / "host_key.pub").read_text().split()
            (Path(vm.dir) / "known_hosts").write_text(f"[127.0.0.1]:{vm.port} {pub[0]} {pub[1]}\n")
            hosts[exc.name]["ssh"]["port"] = vm.port
            progress(f"vm lab: {exc}; retrying on port {vm.port}")
            kb = hosts[exc.name]["kernels"][boot_label]
            _launch(state_dir, st, vm, boot_label, kb["image"], kb["initrd"], kb["cmdline"])

    inv = {"defaults": {"command_timeout": 120, "connect_timeout": 15}, "hosts": hosts,
           "pairs": [{"name": "vm", "rx": {"host": "vm-a", "nic": "data"}, "tx": {"host": "vm-b", "nic": "data"}}]}
    path = state_dir / "inventory.yaml"
    path.write_text("# written by `hwtests lab up --kind vm`; removed by `hwtests lab down --kind vm`\n"
                    + yaml.safe_dump(inv, sort_keys=False))
    st.inventory = str(path)
    _save(state_dir, st)


# Guest features `up(require=...)` checks, and what the guest reports for them.
FEATURES = ("io_uring", "zcrx", "udmabuf")
FEATURE_SCRIPT = r'''
C=/boot/config-$(uname -r)
echo "release=$(uname -r)"
[ -r "$C" ] && echo config=1
grep -q '^CONFIG_IO_URING=y' "$C" 2>/dev/null && echo io_uring_config=1
grep -q '^CONFIG_IO_URING_ZCRX=y' "$C" 2>/dev/null && echo zcrx_config=1
[ -r /proc/sys/kernel/io_uring_disabled ] && echo "io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled)"
[ -e /dev/udmabuf ] && echo udmabuf=1
true
'''


def feature_gaps(facts: dict[str, str], wanted: list[str]) -> list[str]:
    """Why a guest with these facts lacks each of the `wanted` features (pure); empty: it has them all."""
    gaps = []
    io_uring_gap = None
    if facts.get("config") != "1":
        io_uring_gap = "io_uring: the guest has no kernel config to tell"
    elif facts.get("io_uring_config") != "1":
        io_uring_gap = "io_uring: not built into this kernel (CONFIG_IO_URING)"
    elif facts.get("io_uring_disabled", "0") != "0":
        io_uring_gap = f"io_uring: disabled (kernel.io_uring_disabled={facts['io_uring_disabled']})"
    for f in wanted:
        if f == "io_uring" and io_uring_gap:
            gaps.append(io_uring_gap)
        elif f == "zcrx":
            if io_uring_gap:
                gaps.append("zcrx: needs " + io_uring_gap)
            elif facts.get("zcrx_config") != "1":
                gaps.append("zcrx: not in this kernel (CONFIG_IO_URING_ZCRX; Linux 6.15 and later)")
        elif f == "udmabuf" and facts.get("udmabuf") != "1":
            gaps.append("udmabuf: no /dev/udmabuf (CONFIG_UDMABUF)")
    return gaps


def check_features(inv_path: Path, wanted: list[str]) -> None:
    """Both VMs have the `wanted` features on the kernel they run; InfraError naming the first gap."""
    inv = inventory.load(inv_path)
    for name in VMS:
        t = hostconn.connect(inv.hosts[name], inv.defaults, inv)
        try:
            out = t.run(["sh", "-c", FEATURE_SCRIPT], timeout=30).stdout
        finally:
            t.close()
        facts = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
        gaps = feature_gaps(facts, wanted)
        if gaps:
            raise InfraError(f"vm lab: {name} on {inv.hosts[name].vm.get('boot_kernel')} "
                             f"({facts.get('release', '?')}) lacks {gaps[0]}")


def down(state_dir: Path, progress: Callable[[str], None] = lambda s: None) -> None:
    """Stop exactly the QEMUs this lab started and remove the state dir."""
    state_dir = Path(state_dir).resolve()
    st = load_state(state_dir)
    if st is not None:
        pids = [VMState(**v).pid for v in st.vms.values()]
        for pid in pids:
            if pid:
                _kill(pid, st.token)
        for pid in _stray_pids(st.token):
            _kill(pid, st.token)
        if st.sock_dir_owned and st.sock_dir:
            shutil.rmtree(st.sock_dir, ignore_errors=True)
        progress(f"vm lab: stopped {', '.join(str(p) for p in pids if p) or 'nothing'}")
    elif state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / "client_key").exists():
        return          # not ours: never remove a directory the lab did not make
    if state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)


def status(state_dir: Path) -> dict:
    state_dir = Path(state_dir).resolve()
    st = load_state(state_dir)
    if st is None:
        return {"kind": "vm", "up": False, "state_dir": str(state_dir)}
    hosts = {}
    for name, v in st.vms.items():
        vm = VMState(**v)
        alive = _alive(vm.pid) and _ours(vm.pid, st.token)
        hosts[name] = {"pid": vm.pid, "alive": alive, "ssh_port": vm.port, "kernel": vm.kernel,
                       "release": vm.release, "boot_id": vm.boot_id, "ready_s": vm.ready_s}
    ok = bool(st.inventory) and len(hosts) == len(VMS) and all(h["alive"] for h in hosts.values())
    return {"kind": "vm", "up": ok, "state_dir": str(state_dir), "inventory": st.inventory,
            "kernels": {k: v["release"] for k, v in st.kernels.items()}, "hosts": hosts}


def switch_kernel(inventory_host, label: str, timeout: float = BOOT_TIMEOUT,
                  progress: Callable[[str], None] = lambda s: None) -> None:
    """Restart one VM on kernel build `label`; wait for SSH; check release and a new boot id."""
    vmcfg = getattr(inventory_host, "vm", None) or {}
    if "state_dir" not in vmcfg or "name" not in vmcfg:
        raise InputError(f"host '{inventory_host.name}' is not a VM of the VM lab (no vm.state_dir/vm.name)")
    kernels = inventory_host.kernels
    if label not in kernels:
        raise InputError(f"host '{inventory_host.name}' has no kernel build '{label}' "
                         f"(builds: {', '.join(kernels)})")
    kb = kernels[label]
    state_dir = Path(vmcfg["state_dir"])
    st = load_state(state_dir)
    if st is None:
        raise InfraError(f"vm lab: no lab state in {state_dir} (is the lab up?)")
    name = vmcfg["name"]
    if name not in st.vms:
        raise InfraError(f"vm lab: {state_dir} has no VM '{name}'")
    vm = _vm(st, name)
    old_boot = vm.boot_id
    if label not in st.kernels:
        st.kernels[label] = {"release": kb.release or "", "image": kb.image}
    elif kb.release:
        st.kernels[label]["release"] = kb.release
    if vm.pid:
        _kill(vm.pid, st.token)
    vm = _launch(state_dir, st, vm, label, kb.image, kb.initrd, kb.cmdline or _cmdline_for(name))
    _wait_ready(state_dir, st, [name], timeout=timeout, progress=progress)
    vm = _vm(st, name)
    if old_boot and vm.boot_id == old_boot:
        raise InfraError(f"vm lab: {name}: boot id unchanged after the restart")
    if kb.release and vm.release != kb.release:
        raise InfraError(f"vm lab: {name}: runs {vm.release}, expected {kb.release}")
