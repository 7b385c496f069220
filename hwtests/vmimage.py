"""Guest images for the VM lab: initramfs archives (newc cpio) built on the controller.

One *base* image serves every kernel: busybox-static, a real OpenSSH server,
ethtool, iperf3, iproute2 and GNU rm, each with the shared libraries `ldd`
resolves (and the dynamic loader), plus the guest init and config templates
from `fixtures/lab/vm/`. Per kernel release a small *modules* archive adds the
modules the guest needs (decompressed: busybox insmod cannot read .ko.xz) and
the kernel config; per VM an *identity* archive adds the host key and the
authorized client key. The kernel unpacks concatenated archives in order, so
`assemble()` just concatenates base + modules + identity into one initrd.

Archives are written by this module (no `cpio` binary needed) with fixed
owners and mtimes, and cached under `<cache>/vm/` keyed by the sha256 of every
input (file contents, guest paths, modes, builder version): an unchanged image
is never rebuilt.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import InfraError

BUILDER_VERSION = "1"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lab" / "vm"

# (guest path, candidate controller paths, Debian package) of every real binary the guest gets.
# /bin/sh is dash, not busybox ash: Debian's busybox-static runs its own applets in
# preference to PATH ("standalone shell"), which would hide the real ip/rm below.
BINARIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("/bin/sh", ("/usr/bin/dash", "/bin/dash"), "dash"),
    ("/usr/sbin/sshd", ("/usr/sbin/sshd",), "openssh-server"),
    ("/usr/sbin/ethtool", ("/usr/sbin/ethtool", "/sbin/ethtool"), "ethtool"),
    ("/usr/bin/iperf3", ("/usr/bin/iperf3",), "iperf3"),
    ("/usr/sbin/ip", ("/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip"), "iproute2"),
    ("/usr/bin/ss", ("/usr/bin/ss", "/usr/sbin/ss", "/bin/ss"), "iproute2"),
    ("/usr/bin/rm", ("/usr/bin/rm", "/bin/rm"), "coreutils"),  # busybox rm lacks --one-file-system
)
# Shared libraries that binaries built on the controller and uploaded (traffic tools) may link;
# copied when this machine has them (Debian liburing2, libnuma1).
OPTIONAL_LIBS = ("liburing.so.2", "libnuma.so.1")
LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

# Kernel modules the guest loads when the kernel does not build them in (deps are added).
GUEST_MODULES = ("virtio_pci", "virtio_net", "veth")

DIRS = ("/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/usr/local", "/usr/local/bin", "/etc", "/etc/ssh",
        "/proc", "/sys", "/dev", "/run", "/run/sshd", "/tmp", "/var", "/var/empty", "/var/log",
        "/lib", "/lib64", "/lib/modules", "/mnt", "/boot")


def cache_root() -> Path:
    """Where downloads and images are cached: $HWTESTS_CACHE or ./.hwtests/cache."""
    return Path(os.environ.get("HWTESTS_CACHE") or Path(".hwtests") / "cache").resolve()


# --------------------------------------------------------------------------- cpio


@dataclass
class Entry:
    path: str            # absolute guest path
    mode: int            # full st_mode (type + permissions)
    data: bytes = b""    # file contents or symlink target
    rdev: tuple[int, int] = (0, 0)

    def digest(self) -> str:
        h = hashlib.sha256(self.data).hexdigest()
        return f"{self.path}\0{self.mode:o}\0{self.rdev}\0{h}"


@dataclass
class Tree:
    """The set of guest files an archive holds; later additions replace earlier ones."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def dir(self, path: str, mode: int = 0o755) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, stat.S_IFCHR | mode, b"", (major, minor))

    def _parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = Entry(p, stat.S_IFDIR | 0o755)

    def key(self) -> str:
        h = hashlib.sha256(BUILDER_VERSION.encode())
        for p in sorted(self.entries):
            h.update(self.entries[p].digest().encode() + b"\n")
        return h.hexdigest()

    def cpio(self) -> bytes:
        """The tree as a newc cpio archive: owner root, mtime 0, parents before children."""
        out = io.BytesIO()
        ino = 1
        for p in sorted(self.entries, key=lambda s: (s.count("/"), s)):
            e = self.entries[p]
            _cpio_member(out, p.lstrip("/"), e.mode, e.data, ino, e.rdev)
            ino += 1
        _cpio_member(out, "TRAILER!!!", 0, b"", 0, (0, 0))
        return out.getvalue()


def _cpio_member(out: io.BytesIO, name: str, mode: int, data: bytes, ino: int, rdev: tuple[int, int]) -> None:
    nb = name.encode() + b"\0"
    hdr = "070701" + "".join(f"{v:08x}" for v in (
        ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
    out.write(hdr.encode() + nb)
    out.write(b"\0" * (-(110 + len(nb)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def _write_cached(tree: Tree, dest_dir: Path, stem: str, compress: bool = True) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{stem}-{tree.key()[:16]}.cpio{'.gz' if compress else ''}"
    if path.exists():
        os.utime(path)   # most recently used
        return path
    raw = tree.cpio()
    data = gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- base image


def _find(cands: Iterable[str]) -> str | None:
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _ldd(binary: str) -> list[tuple[str, str]]:
    """(guest path, controller file) of every shared library and the loader `binary` needs."""
    try:
        p = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise InfraError(f"vm image: cannot run ldd on {binary}: {exc}") from None
    if p.returncode != 0:
        if "not a dynamic executable" in (p.stdout + p.stderr):
            return []
        raise InfraError(f"vm image: ldd {binary} failed: {(p.stderr or p.stdout).strip()}")
    libs = []
    for line in p.stdout.splitlines():
        line = line.strip()
        m = re.match(r"^(\S+)\s+=>\s+(/\S+)\s+\(", line)
        if m:
            libs.append((m.group(2), m.group(2)))
            continue
        m = re.match(r"^(/\S+)\s+\(", line)       # the loader, e.g. /lib64/ld-linux-x86-64.so.2
        if m:
            libs.append((m.group(1), m.group(1)))
            continue
        if "not found" in line:
            raise InfraError(f"vm image: {binary}: library {line.split()[0]} not found on this machine")
    return libs


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        f.seek(0)
        elf = f.read()
    # a static executable has no PT_INTERP program header
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, = struct.unpack_from("<I", elf, phoff + i * phentsize)
        if ptype == 3:
            return False
    return True


def missing_tools() -> list[str]:
    """Debian packages the base image needs that this machine lacks (empty: all there)."""
    missing = []
    bb = _find(BUSYBOX_CANDIDATES)
    if bb is None or not _is_static(bb):
        missing.append("busybox-static")
    for _, cands, pkg in BINARIES:
        if _find(cands) is None and pkg not in missing:
            missing.append(pkg)
    return missing


def base_tree(fixtures: Path = FIXTURES) -> Tree:
    missing = missing_tools()
    if missing:
        raise InfraError(f"vm image: missing on this machine: {', '.join(missing)} "
                         f"(apt-get install {' '.join(missing)})")
    t = Tree()
    for d in DIRS:
        t.dir(d)
    t.dir("/tmp", 0o1777)
    t.dir("/root", 0o700)
    t.dir("/root/.ssh", 0o700)
    t.chardev("/dev/console", 5, 1)
    t.chardev("/dev/null", 1, 3, 0o666)
    bb = _find(BUSYBOX_CANDIDATES)
    t.file("/bin/busybox", Path(bb).read_bytes(), 0o755)
    real = {g for g, _, _ in BINARIES}
    real_names = {posixname(g) for g in real}
    applets = subprocess.run([bb, "--list-full"], capture_output=True, text=True, timeout=30).stdout.split()
    for a in applets:
        gp = "/" + a.lstrip("/")
        if posixname(gp) in real_names or gp == "/bin/busybox":
            continue
        t.symlink(gp, "/bin/busybox")
    libs: dict[str, str] = {}
    for guest, cands, _ in BINARIES:
        src = _find(cands)
        t.file(guest, Path(src).read_bytes(), 0o755)
        for gp, hp in _ldd(src):
            libs[gp] = hp
    for lib in OPTIONAL_LIBS:
        src = next((f"{d}/{lib}" for d in LIB_DIRS if os.path.exists(f"{d}/{lib}")), None)
        if src is not None and f"/lib/x86_64-linux-gnu/{lib}" not in libs:
            libs[f"/lib/x86_64-linux-gnu/{lib}"] = os.path.realpath(src)
            for gp, hp in _ldd(src):
                libs.setdefault(gp, hp)
    for gp, hp in sorted(libs.items()):
        t.file(gp, Path(hp).read_bytes(), 0o755)
    # sbin aliases for the real tools (scripts call /sbin/ip, /sbin/ethtool)
    t.symlink("/sbin/ip", "/usr/sbin/ip")
    t.symlink("/sbin/ethtool", "/usr/sbin/ethtool")
    t.symlink("/bin/rm", "/usr/bin/rm")
    t.symlink("/bin/dash", "/bin/sh")
    t.file("/init", (fixtures / "init").read_bytes(), 0o755)
    t.file("/etc/inittab", (fixtures / "inittab").read_bytes())
    t.file("/etc/ssh/sshd_config.in", (fixtures / "sshd_config.in").read_bytes())
    t.file("/etc/passwd", (fixtures / "passwd").read_bytes())
    t.file("/etc/group", (fixtures / "group").read_bytes())
    t.file("/etc/profile", (fixtures / "profile").read_bytes())
    t.file("/etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n")
    t.file("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files\n")
    t.file("/etc/shells", b"/bin/sh\n/bin/ash\n")
    return t


def posixname(p: str) -> str:
    return p.rsplit("/", 1)[-1]


def build_base(cache_dir: Path | None = None, fixtures: Path = FIXTURES) -> Path:
    """The base initramfs (cached); returns its path.

    Stored uncompressed: inflating ~9 MB of gzip under TCG costs the guest ~0.6 s
    per boot, copying 20 MB costs nothing measurable."""
    return _write_cached(base_tree(fixtures), (cache_dir or cache_root()) / "vm", "base", compress=False)


# --------------------------------------------------------------------------- per-kernel modules


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """Fields of a module's .modinfo ELF section (name, depends, vermagic...)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ValueError("not an ELF64 object")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def sh(i):
        base = shoff + i * shentsize
        name, _typ = struct.unpack_from("<II", ko, base)
        off, size = struct.unpack_from("<QQ", ko, base + 0x18)
        return name, off, size

    _, stroff, _ = sh(shstrndx)
    out: dict[str, list[str]] = {}
    for i in range(shnum):
        name, off, size = sh(i)
        end = ko.index(b"\0", stroff + name)
        if ko[stroff + name:end] == b".modinfo":
            for item in ko[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode(errors="replace").split("=", 1)
                    out.setdefault(k, []).append(v)
    return out


def _read_ko(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        p = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, timeout=60)
        if p.returncode != 0:
            raise InfraError(f"vm image: cannot decompress {path} (install zstd)")
        return p.stdout
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def modules_tree(modules_dir: Path, release: str, config: Path | None,
                 wanted: Iterable[str] = GUEST_MODULES) -> Tree:
    """The modules (with dependencies, load order) and config of one kernel release."""
    modules_dir = Path(modules_dir)
    index: dict[str, Path] = {}
    for p in (modules_dir / "kernel").rglob("*.ko*"):
        n = p.name.split(".ko")[0].replace("-", "_")
        index[n] = p
    builtin = set()
    bf = modules_dir / "modules.builtin"
    if bf.exists():
        for line in bf.read_text().split():
            builtin.add(line.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_"))
    order: list[str] = []
    blobs: dict[str, bytes] = {}

    def add(name: str, stack: tuple[str, ...] = ()) -> None:
        name = name.replace("-", "_")
        if name in order or name in builtin:
            return
        if name not in index:
            if name in wanted and not stack:
                return          # neither module nor built in: the kernel lacks it; the guest copes
            raise InfraError(f"vm image: module {name} (needed by {stack[-1] if stack else '?'}) "
                             f"not found for {release}")
        if name in stack:
            raise InfraError(f"vm image: module dependency loop at {name}")
        ko = _read_ko(index[name])
        for dep in ",".join(modinfo(ko).get("depends", [""])).split(","):
            if dep:
                add(dep, stack + (name,))
        order.append(name)
        blobs[name] = ko

    for w in wanted:
        add(w)
    t = Tree()
    base = f"/lib/modules/{release}"
    t.dir(base)
    for n in order:
        t.file(f"{base}/{n}.ko", blobs[n])
    t.file(f"{base}/load.order", "".join(f"{n}.ko\n" for n in order).encode())
    if config is not None and Path(config).exists():
        t.file(f"/boot/config-{release}", Path(config).read_bytes())
    return t


def build_modules(modules_dir: Path, release: str, config: Path | None,
                  cache_dir: Path | None = None) -> Path:
    return _write_cached(modules_tree(modules_dir, release, config), (cache_dir or cache_root()) / "vm",
                         f"modules-{release}")


# --------------------------------------------------------------------------- per-VM identity


def identity_tree(host_key: Path, authorized_keys: bytes) -> Tree:
    t = Tree()
    t.file("/etc/ssh/ssh_host_ed25519_key", Path(host_key).read_bytes(), 0o600)
    t.file("/etc/ssh/ssh_host_ed25519_key.pub", Path(f"{host_key}.pub").read_bytes())
    t.dir("/root", 0o700)
    t.dir("/root/.ssh", 0o700)
    t.file("/root/.ssh/authorized_keys", authorized_keys, 0o600)
    return t


def build_identity(dest: Path, host_key: Path, authorized_keys: bytes) -> Path:
    """A VM's host key and authorized client key as an (uncompressed) archive at `dest`."""
    dest.write_bytes(identity_tree(host_key, authorized_keys).cpio())
    os.chmod(dest, 0o600)
    return dest


def assemble(dest: Path, parts: Iterable[Path]) -> Path:
    """Concatenate archives into one initrd (each part padded to 4 bytes with zeros)."""
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
            pad = -out.tell() % 512
            out.write(b"\0" * pad)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)
    return dest


def prune(cache_dir: Path | None = None, keep_days: float = 30) -> None:
    """Remove cached images unused for `keep_days`."""
    d = (cache_dir or cache_root()) / "vm"
    if not d.is_dir():
        return
    cutoff = time.time() - keep_days * 86400
    for p in d.glob("*.cpio*"):
        if p.stat().st_mtime < cutoff:
            p.unlink(missing_ok=True)


def describe(path: Path) -> dict:
    return {"path": str(path), "bytes": path.stat().st_size}


if __name__ == "__main__":   # python -m hwtests.vmimage: build the base image, print path and time
    t0 = time.monotonic()
    out = build_base()
    print(json.dumps({**describe(out), "seconds": round(time.monotonic() - t0, 2)}))
