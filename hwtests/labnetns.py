"""The netns lab: host pairs on this machine, each host a network namespace
running its own real OpenSSH server, joined by a veth data link.

Nothing is added to the root network namespace: both veth ends are created
inside the lab namespaces, sshd listens on 127.0.0.1 inside its namespace, and
the controller reaches it through a socket opened in that namespace
(`hwtests.netns`). Everything `up` creates is written to `state.json` before
it is created, so `down` can remove it even after a crashed `up`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .errors import InfraError, InputError

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")
DATA4_NET = "198.51.100.{}"          # TEST-NET-2, only ever inside lab namespaces
DATA6_NET = "fd42:7774:{:x}::{}"     # ULA, only ever inside lab namespaces


@dataclass
class LabState:
    kind: str = "netns"
    prefix: str = ""
    pairs: int = 1
    namespaces: list[str] = field(default_factory=list)
    sshd_pids: dict[str, int] = field(default_factory=dict)
    inventory: str = ""
    created: float = 0.0


def _state_path(state_dir: Path) -> Path:
    return state_dir / "state.json"


def _save(state_dir: Path, st: LabState) -> None:
    tmp = _state_path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=1))
    os.replace(tmp, _state_path(state_dir))


def load_state(state_dir: Path) -> LabState | None:
    try:
        return LabState(**json.loads(_state_path(state_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _run(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise InfraError(f"lab: command not found: {cmd[0]}") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"lab: `{' '.join(cmd)}` timed out after {timeout} s") from None
    if check and p.returncode != 0:
        raise InfraError(f"lab: `{' '.join(cmd)}` failed: {(p.stderr or p.stdout).strip()}")
    return p


def _prefix(state_dir: Path) -> str:
    return "hwt" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]


def host_names(pairs: int) -> list[tuple[str, str]]:
    return [(f"a{i}", f"b{i}") for i in range(1, pairs + 1)]


def _sshd() -> str:
    for c in SSHD_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    raise InfraError("lab: OpenSSH server not found (install the Debian package openssh-server)")


def preflight() -> None:
    if os.geteuid() != 0:
        raise InfraError("lab: needs root (network namespaces and sshd); run as root")
    _sshd()
    for tool in ("ip", "ssh-keygen", "unshare"):
        if shutil.which(tool) is None:
            raise InfraError(f"lab: '{tool}' not found (Debian packages iproute2, openssh-client, util-linux)")


def up(state_dir: Path, pairs: int = 1, progress: Callable[[str], None] = lambda s: None,
       password: str | None = None) -> Path:
    """Build the lab and write its inventory; return the inventory path.

    `password`: the lab's sshds also take root's password login with it (for tests of
    password authentication). Each host sees a shadow file of its own, bound over
    /etc/shadow in the host's private mount namespace: the machine's is never touched.
    """
    if not 1 <= pairs <= 16:
        raise InputError(f"lab: --pairs must be 1..16, got {pairs}")
    preflight()
    state_dir = Path(state_dir).resolve()
    old = load_state(state_dir)
    if old is not None:
        down(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    st = LabState(prefix=_prefix(state_dir), pairs=pairs, created=time.time())
    _save(state_dir, st)
    try:
        _build(state_dir, st, progress, password)
    except BaseException:
        down(state_dir)
        raise
    return Path(st.inventory)


def _build(state_dir: Path, st: LabState, progress, password: str | None = None) -> None:
    sshd = _sshd()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation dir
    client_key = state_dir / "client_key"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hwtests-lab-client", "-f", str(client_key))
    shadow = None
    if password is not None:
        shadow = state_dir / "shadow"
        h = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True,
                           timeout=20, check=True).stdout.strip()
        fd = os.open(shadow, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"root:{h}:20000:0:99999:7:::\n")
    bashrc = Path("/root/.bashrc")
    empty = state_dir / "empty_bashrc"
    empty.write_text("")
    hosts: dict = {}
    inv_pairs: list = []
    for i, (a, b) in enumerate(host_names(st.pairs), start=1):
        ns = {h: f"{st.prefix}-{h}" for h in (a, b)}
        for h in (a, b):
            st.namespaces.append(ns[h])
            _save(state_dir, st)                       # journal before creating
            _run("ip", "netns", "add", ns[h])
            _run("ip", "-n", ns[h], "link", "set", "lo", "up")
        # Both ends are born inside the namespaces: the root namespace never sees them.
        _run("ip", "-n", ns[a], "link", "add", "data0", "numtxqueues", "2", "numrxqueues", "2", "type", "veth",
             "peer", "name", "data0", "netns", ns[b], "numtxqueues", "2", "numrxqueues", "2")
        for j, h in enumerate((a, b), start=1):
            v4 = f"{DATA4_NET.format(4 * (i - 1) + j)}/30"
            v6 = f"{DATA6_NET.format(i, j)}/64"
            _run("ip", "-n", ns[h], "addr", "add", v4, "dev", "data0")
            _run("ip", "-n", ns[h], "addr", "add", v6, "dev", "data0", "nodad")
            _run("ip", "-n", ns[h], "link", "set", "data0", "up")
            hosts[h] = _start_host(state_dir, st, h, ns[h], sshd, client_key, bashrc, empty, v4, v6, shadow)
            progress(f"lab: host {h} up (netns {ns[h]}, sshd pid {st.sshd_pids[h]}, data {v4.split('/')[0]})")
        inv_pairs.append({"name": f"pair{i}", "rx": {"host": a, "nic": "data"}, "tx": {"host": b, "nic": "data"}})
    for h, pid in st.sshd_pids.items():
        _wait_listen(f"{st.prefix}-{h}", pid, h)
    inv = {"defaults": {"command_timeout": 60, "connect_timeout": 10}, "hosts": hosts, "pairs": inv_pairs}
    path = state_dir / "inventory.yaml"
    path.write_text("# written by `hwtests lab up --kind netns`; removed by `hwtests lab down`\n"
                    + yaml.safe_dump(inv, sort_keys=False))
    st.inventory = str(path)
    _save(state_dir, st)


def _start_host(state_dir: Path, st: LabState, h: str, ns: str, sshd: str, client_key: Path,
                bashrc: Path, empty: Path, v4: str, v6: str, shadow: Path | None = None) -> dict:
    d = state_dir / h
    d.mkdir(mode=0o700)
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hwtests-lab-{h}", "-f", str(d / "host_key"))
    shutil.copy(f"{client_key}.pub", d / "authorized_keys")
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort 22\nHostKey {d}/host_key\nPidFile none\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n"
        f"PasswordAuthentication {'yes' if shadow else 'no'}\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin {'yes' if shadow else 'prohibit-password'}\n"
        "UsePAM no\nStrictModes no\n"
        "PrintMotd no\nUseDNS no\nLogLevel ERROR\nMaxStartups 64\nMaxSessions 64\n"
        "Subsystem sftp internal-sftp\n")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"127.0.0.1 {host_pub[0]} {host_pub[1]}\n")
    # Own mount and UTS namespace per host: its own hostname, and root's .bashrc
    # masked (it would cost ~120 ms per command on a machine that runs pyenv there).
    mask = f"mount --bind {empty} {bashrc} && " if bashrc.exists() else ""
    if shadow is not None:
        mask += f"mount --bind {shadow} /etc/shadow && "
    script = f"hostname {h} && {mask}exec {sshd} -D -e -f {d}/sshd_config"
    log = open(d / "sshd.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--propagation", "private",
                             "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    log.close()
    st.sshd_pids[h] = proc.pid        # ip netns exec, unshare and sh all exec: this pid is sshd
    _save(state_dir, st)
    return {"ssh": {"host": "127.0.0.1", "port": 22, "user": "root", "key": str(client_key),
                    "known_hosts": str(d / "known_hosts"), "netns": ns},
            "nics": {"data": {"ifname": "data0", "ipv4": v4, "ipv6": v6}}}


def _wait_listen(ns: str, pid: int, h: str, timeout: float = 10.0) -> None:
    """sshd is ready once 127.0.0.1:22 is in LISTEN state inside its namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise InfraError(f"lab: sshd of host {h} exited at start (see its sshd.log)")
        p = _run("ip", "netns", "exec", ns, "cat", "/proc/net/tcp", check=False)
        if any(line.split()[1] == "0100007F:0016" and line.split()[3] == "0A"
               for line in p.stdout.splitlines()[1:] if len(line.split()) > 3):
            return
        time.sleep(0.02)
    raise InfraError(f"lab: sshd of host {h} did not listen within {timeout:g} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(state_dir: Path, progress: Callable[[str], None] = lambda s: None) -> None:
    """Remove every namespace, process and file the lab made."""
    state_dir = Path(state_dir).resolve()
    st = load_state(state_dir)
    if st is None:
        if state_dir.exists():
            shutil.rmtree(state_dir, ignore_errors=True)
        return
    for h, pid in st.sshd_pids.items():
        if _alive(pid) and _is_ours(pid, state_dir):
            os.kill(pid, signal.SIGTERM)
    for ns in st.namespaces:
        # sshd's per-connection children and anything a test left behind in the namespace
        p = _run("ip", "netns", "pids", ns, check=False)
        for tok in p.stdout.split():
            if tok.isdigit():
                try:
                    os.kill(int(tok), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    deadline = time.monotonic() + 5
    for pid in st.sshd_pids.values():
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.01)
        _reap(pid)
    for ns in st.namespaces:
        if Path(f"/run/netns/{ns}").exists():
            _run("ip", "netns", "del", ns, check=False)
            progress(f"lab: removed netns {ns}")
    shutil.rmtree(state_dir, ignore_errors=True)


def _is_ours(pid: int, state_dir: Path) -> bool:
    """Only signal a pid whose command line still names our state dir (pids get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(state_dir).encode() in f.read()
    except OSError:
        return False


def status(state_dir: Path) -> dict:
    state_dir = Path(state_dir).resolve()
    st = load_state(state_dir)
    if st is None:
        return {"kind": "netns", "up": False, "state_dir": str(state_dir)}
    hosts = {}
    for h, pid in st.sshd_pids.items():
        hosts[h] = {"netns": f"{st.prefix}-{h}", "netns_exists": Path(f"/run/netns/{st.prefix}-{h}").exists(),
                    "sshd_pid": pid, "sshd_alive": _alive(pid)}
    ok = bool(hosts) and all(v["netns_exists"] and v["sshd_alive"] for v in hosts.values())
    return {"kind": "netns", "up": ok, "state_dir": str(state_dir), "inventory": st.inventory,
            "pairs": st.pairs, "hosts": hosts}
