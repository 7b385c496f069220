"""The page_pool benchmark on a host: build, load, collect, unload — through a Transport only.

    ok, why = can_load_modules(t)
    results = run_bench(t, source, loops=10_000_000, run_flags=0xffffffff, repeat=10)
    for rr in results:                # one per measured load (the warm-up load is not returned)
        rr.records, rr.warnings       # hwtests.timebench records of this load only

Sources (`source_for_host` picks them; the inventory's `pagepool_src` wins over ours):

- ours, `fixtures/pagepool/` (module `hwt_pp_bench`);
- the upstream selftest, `tools/testing/selftests/net/bench/page_pool/` (module
  `bench_page_pool`), given as that directory, a parent of it or a kernel tree;
- the out-of-tree original, a prototype-kernel checkout (`kernel/lib/bench_page_pool_simple.c`,
  `kernel/lib/time_bench.c`, `kernel/include/linux/time_bench.h`): built here as two
  modules, `time_bench` then `bench_page_pool_simple`, with a Kbuild file of our own.

A source directory may be on the controller (uploaded) or on the host (copied).
It is built in the transport's temp dir, never in the source tree, against
`/lib/modules/$(uname -r)/build` or `build_dir`. A prebuilt `.ko` (or a list of
them, in load order) built on the controller against the host kernel's headers
is uploaded instead; its vermagic must name the host's kernel release.

Each load: the last /dev/kmsg sequence number is read first (non-blocking dd),
the module is inserted with `loops` and `run_flags` (insmod returns when every
test ran), only records with a larger sequence number are kept, the module is
removed. Build and load errors are one line holding the compiler's or the
kernel's own message.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import secrets
import shlex
import struct
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import counters, timebench
from .errors import InfraError, InputError
from .transport import Transport

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "pagepool"
DEFAULT_LOOPS = 10_000_000
ALL_FLAGS = 0xFFFFFFFF
BUILD_TIMEOUT = 600.0
LOAD_TIMEOUT = 900.0        # slow-path tests at 1e7 loops take seconds; much more under emulation

SELFTEST_REL = "tools/testing/selftests/net/bench/page_pool"


# -- sources ------------------------------------------------------------------------------

@dataclass
class SourceTree:
    """What to build: files (relative path -> bytes) and the modules they make, in load order."""

    kind: str                      # "hwt" | "upstream" | "oot"
    files: dict[str, bytes]
    modules: list[str]             # load order; the last one takes loops/run_flags
    origin: str = ""               # where it came from (for messages)

    @property
    def bench_module(self) -> str:
        return self.modules[-1]

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name] + b"\0")
        return h.hexdigest()


OOT_KBUILD = b"""# Kbuild for the out-of-tree page_pool benchmark, written by hwtests
obj-m += time_bench.o bench_page_pool_simple.o
ccflags-y += -I$(src)/include
"""

# candidate layouts: (kind, relative dir, the file that identifies it)
_LAYOUTS = (
    ("hwt", ".", "hwt_pp_bench.c"),
    ("upstream", ".", "bench_page_pool_simple.c", ),
    ("upstream", "page_pool", "bench_page_pool_simple.c"),
    ("upstream", SELFTEST_REL, "bench_page_pool_simple.c"),
    ("oot", "kernel/lib", "bench_page_pool_simple.c"),
    ("oot", "lib", "bench_page_pool_simple.c"),
)


def _layout(exists: Callable[[str], bool]) -> tuple[str, str] | None:
    for kind, rel, marker in _LAYOUTS:
        p = posixpath.normpath(posixpath.join(rel, marker))
        if not exists(p):
            continue
        if kind == "upstream" and rel in (".", "page_pool", SELFTEST_REL):
            base = posixpath.normpath(rel)
            if exists(posixpath.normpath(posixpath.join(base, "time_bench.c"))) \
                    and exists(posixpath.normpath(posixpath.join(base, "Makefile"))):
                return "upstream", base
            oot_hdr = posixpath.normpath(posixpath.join(base, "../include/linux/time_bench.h"))
            if exists(oot_hdr):
                return "oot", base
            continue
        return kind, posixpath.normpath(rel)
    return None


def _files_for(kind: str, base: str, read: Callable[[str], bytes], listing: Iterable[str]) -> SourceTree:
    def rel(name: str) -> str:
        return posixpath.normpath(posixpath.join(base, name))

    if kind == "hwt":
        names = [n for n in listing if re.fullmatch(r"[\w.-]+\.(c|h)|Makefile|Kbuild", n)]
        files = {n: read(rel(n)) for n in names}
        return SourceTree("hwt", files, ["hwt_pp_bench"])
    if kind == "upstream":
        names = [n for n in listing if re.fullmatch(r"[\w.-]+\.(c|h)|Makefile|Kbuild", n)]
        files = {n: read(rel(n)) for n in names}
        mk = files.get("Makefile", b"").decode(errors="replace")
        m = re.search(r"obj-m\s*\+?=\s*(\w+)\.o", mk)
        return SourceTree("upstream", files, [m.group(1) if m else "bench_page_pool"])
    files = {
        "bench_page_pool_simple.c": read(rel("bench_page_pool_simple.c")),
        "time_bench.c": read(rel("time_bench.c")),
        "include/linux/time_bench.h": read(rel("../include/linux/time_bench.h")),
        "Kbuild": OOT_KBUILD,
        "Makefile": b"obj-m += time_bench.o bench_page_pool_simple.o\n"
                    b"ccflags-y += -I$(src)/include\n",
    }
    return SourceTree("oot", files, ["time_bench", "bench_page_pool_simple"])


def local_source(path: str | Path) -> SourceTree:
    """A source tree on the controller (ours, upstream selftest or prototype-kernel layout)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"page_pool bench source {root}: not a directory")

    def exists(rel: str) -> bool:
        return (root / rel).exists()

    lay = _layout(exists)
    if lay is None:
        raise InputError(f"page_pool bench source {root}: no hwt_pp_bench.c, {SELFTEST_REL}/ "
                         "or prototype-kernel kernel/lib/bench_page_pool_simple.c in it")
    kind, base = lay
    listing = sorted(p.name for p in (root / base).iterdir() if p.is_file())
    try:
        st = _files_for(kind, base, lambda rel: (root / rel).read_bytes(), listing)
    except OSError as exc:
        raise InputError(f"page_pool bench source {root}: {exc.strerror}: {exc.filename}") from None
    st.origin = f"{root / base}"
    return st


def host_source(t: Transport, path: str) -> SourceTree | None:
    """A source tree on the host, read back to the controller (None: no such directory there)."""
    probes = sorted({posixpath.normpath(posixpath.join(rel, f)) for _, rel, _m in _LAYOUTS
                     for f in ("bench_page_pool_simple.c", "hwt_pp_bench.c", "time_bench.c", "Makefile",
                               "../include/linux/time_bench.h")})
    script = ('cd "$1" 2>/dev/null || exit 3; shift; for f in "$@"; do [ -f "$f" ] && echo "F $f"; done; '
              'for d in . page_pool ' + SELFTEST_REL + ' kernel/lib lib; do [ -d "$d" ] && '
              'for f in "$d"/*; do [ -f "$f" ] && echo "L $d ${f##*/}"; done; done; true')
    r = t.run(["sh", "-c", script, "sh", path, *probes], check=False, timeout=30)
    if r.exit_status == 3:
        return None
    present = {ln[2:] for ln in r.stdout.splitlines() if ln.startswith("F ")}
    listing: dict[str, list[str]] = {}
    for ln in r.stdout.splitlines():
        if ln.startswith("L "):
            d, _, name = ln[2:].partition(" ")
            listing.setdefault(posixpath.normpath(d), []).append(name)
    lay = _layout(lambda rel: rel in present)
    if lay is None:
        raise InputError(f"{t.name}: page_pool bench source {path}: no hwt_pp_bench.c, {SELFTEST_REL}/ "
                         "or prototype-kernel kernel/lib/bench_page_pool_simple.c in it")
    kind, base = lay
    st = _files_for(kind, base, lambda rel: t.read_file(posixpath.join(path, rel)), sorted(listing.get(base, [])))
    st.origin = f"{t.name}:{posixpath.join(path, base)}"
    return st


def source_for_host(t: Transport, pagepool_src: str | None) -> SourceTree:
    """The inventory's `pagepool_src` (on the host if it exists there, else on the controller), else ours."""
    if pagepool_src:
        st = host_source(t, pagepool_src)
        if st is not None:
            return st
        if Path(pagepool_src).is_dir():
            return local_source(pagepool_src)
        raise InputError(f"{t.name}: pagepool_src {pagepool_src} exists neither on the host nor on the controller")
    return local_source(FIXTURE)


# -- .ko metadata ---------------------------------------------------------------------------

def modinfo(data: bytes) -> dict[str, list[str]]:
    """The .modinfo section of an ELF module (pure): key -> values."""
    if data[:4] != b"\x7fELF":
        raise InputError("not an ELF file (a .ko was expected)")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    try:
        if is64:
            shoff, = struct.unpack_from(end + "Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        else:
            shoff, = struct.unpack_from(end + "I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)

        def section(i: int) -> tuple[int, int, int]:
            off = shoff + i * shentsize
            if is64:
                name, _t, _f, _a, offset, size = struct.unpack_from(end + "IIQQQQ", data, off)
            else:
                name, _t, _f, _a, offset, size = struct.unpack_from(end + "IIIIII", data, off)
            return name, offset, size

        _n, stroff, strsize = section(shstrndx)
        out: dict[str, list[str]] = {}
        for i in range(shnum):
            name, offset, size = section(i)
            nm = data[stroff + name: data.index(b"\0", stroff + name)]
            if nm == b".modinfo":
                for item in data[offset: offset + size].split(b"\0"):
                    if b"=" in item:
                        k, _, v = item.decode(errors="replace").partition("=")
                        out.setdefault(k, []).append(v)
                return out
    except (struct.error, ValueError, IndexError):
        raise InputError("a truncated or damaged ELF file (a .ko was expected)") from None
    raise InputError("no .modinfo section (not a kernel module)")


def vermagic_release(data: bytes) -> str:
    vm = modinfo(data).get("vermagic", [""])[0]
    return vm.split()[0] if vm.split() else ""


def headers_release(kdir: str | Path) -> str | None:
    """The kernel release a (controller-side) headers or build tree is for, or None."""
    try:
        return (Path(kdir) / "include" / "config" / "kernel.release").read_text().strip() or None
    except OSError:
        return None


def controller_headers(kernels, release: str) -> str | None:
    """Among an inventory host's kernel builds, the headers dir on the controller for `release`."""
    for kb in (kernels or {}).values():
        hd = getattr(kb, "headers", None)
        if hd and Path(hd, "Makefile").is_file() and (getattr(kb, "release", None) or headers_release(hd)) == release:
            return str(hd)
    return None


# -- capability ----------------------------------------------------------------------------

_CAP_SCRIPT = r'''
R=$(uname -r)
echo "uid=$(id -u)"
echo "release=$R"
[ -e /proc/modules ] && echo proc_modules=1 || echo proc_modules=0
[ -r /proc/sys/kernel/modules_disabled ] && echo "modules_disabled=$(cat /proc/sys/kernel/modules_disabled)"
[ -r /sys/module/module/parameters/sig_enforce ] && echo "sig_enforce=$(cat /sys/module/module/parameters/sig_enforce)"
[ -r /sys/kernel/security/lockdown ] && echo "lockdown=$(cat /sys/kernel/security/lockdown)"
B=${1:-/lib/modules/$R/build}
[ -f "$B/Makefile" ] && echo build=1 || echo build=0
echo "build_dir=$B"
for x in insmod rmmod make gcc pahole dd taskset perf; do command -v $x >/dev/null 2>&1 && echo "have_$x=1"; done
CC=$(sed -n 's/^CC *= *.*\(gcc-[0-9][0-9]*\).*/\1/p' "$B/.kernelvariables" 2>/dev/null | head -n 1)
[ -r "$B/hwt-make-args" ] && { echo "make_args=$(tr '\n' ' ' < "$B/hwt-make-args")";
  C2=$(sed -n 's/^CC=//p' "$B/hwt-make-args" | head -n 1); [ -n "$C2" ] && CC=$C2; }
[ -r "$B/hwt-build-blocker" ] && echo "kbuild_blocker=$(head -n 1 "$B/hwt-build-blocker")"
[ -n "$CC" ] && { echo "kcc=$CC"; command -v "$CC" >/dev/null 2>&1 && echo have_kcc=1; }
[ -r /dev/kmsg ] && echo kmsg=1 || echo kmsg=0
true
'''


def host_facts(t: Transport, build_dir: str | None = None) -> dict[str, str]:
    r = t.run(["sh", "-c", _CAP_SCRIPT, "sh", build_dir or ""], check=False, timeout=30)
    return dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)


def load_blocker(f: dict[str, str]) -> str | None:
    """Why modules cannot be loaded on a host with these facts (pure); None when they can."""
    if f.get("proc_modules") != "1":
        return "kernel without module support (/proc/modules absent)"
    if f.get("modules_disabled", "0").strip() == "1":
        return "kernel.modules_disabled = 1 (no module loading until reboot)"
    if f.get("uid") != "0":
        return f"not root (uid {f.get('uid', '?')}): insmod needs CAP_SYS_MODULE"
    if f.get("sig_enforce", "N").strip() == "Y":
        return "module signatures enforced (module.sig_enforce=Y): an unsigned module is refused"
    lock = f.get("lockdown", "")
    if "[integrity]" in lock or "[confidentiality]" in lock:
        return f"kernel lockdown ({lock.strip()}): unsigned modules are refused"
    if f.get("have_insmod") != "1" or f.get("have_rmmod") != "1":
        return "insmod/rmmod not installed (kmod)"
    if f.get("kmsg") != "1":
        return "/dev/kmsg not readable"
    if f.get("have_dd") != "1":
        return "dd not installed (coreutils)"
    return None


def build_blocker(f: dict[str, str]) -> str | None:
    """Why modules cannot be built on a host with these facts (pure); None when they can."""
    if f.get("build") != "1":
        return (f"no {f.get('build_dir', '/lib/modules/RELEASE/build')}/Makefile "
                f"(install linux-headers-{f.get('release', 'RELEASE')} or set build_dir)")
    if f.get("kbuild_blocker"):
        return f["kbuild_blocker"]
    if f.get("have_make") != "1":
        return "make not installed"
    if f.get("kcc") and f.get("have_kcc") != "1":
        return f"{f['kcc']} (the kernel's compiler) not installed"
    if not f.get("kcc") and f.get("have_gcc") != "1":
        return "gcc not installed"
    return None


_MAKE_ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9._+/-]*$")


def make_args(f: dict[str, str]) -> list[str]:
    """make arguments for a host with these facts (pure): those the headers tree was prepared
    with (`hwt-make-args`, hwtests.kbuildprep) and no module BTF without pahole."""
    args = [a for a in f.get("make_args", "").split() if _MAKE_ARG.match(a)]
    if f.get("have_pahole") != "1" and "CONFIG_DEBUG_INFO_BTF_MODULES=" not in args:
        args.append("CONFIG_DEBUG_INFO_BTF_MODULES=")
    return args


def can_load_modules(t: Transport, build_dir: str | None = None, need_build: bool = True) -> tuple[bool, str]:
    """(True, "") when the bench module can be built (if `need_build`) and loaded on the host."""
    f = host_facts(t, build_dir)
    why = load_blocker(f) or (build_blocker(f) if need_build else None)
    return (why is None, why or "")


# -- running --------------------------------------------------------------------------------

@dataclass
class RunResult:
    repetition: int                  # 0.. for measured loads; -1 for the warm-up load
    records: list[timebench.Record]
    warnings: list[timebench.ParseWarning]
    log: str                         # the /dev/kmsg records of this load
    boot_id: str
    kernel_release: str
    module: str                      # the module that ran the tests
    source_kind: str                 # hwt | upstream | oot | prebuilt
    params: dict[str, int] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)   # module file name -> sha256
    duration: float = 0.0            # seconds insmod took
    seq_from: int = -1               # kmsg records with a larger sequence number are this load's
    perf: dict[str, counters.Value] = field(default_factory=dict)   # perf stat of the bench module's insmod
    cpu: int | None = None           # the CPU insmod was pinned to (None: not pinned)

    def perf_rows(self) -> list[tuple[str, counters.Value, str]]:
        """(name, value, unit): `perf.<event>` per load and `perf.<event>_per_element` over the
        elements the load's records counted (setup and teardown of the load included)."""
        elements = sum(r.invoke_count or 0 for r in self.records)
        out = []
        for ev, v in self.perf.items():
            out.append((f"perf.{ev}", v, "count"))
            out.append((f"perf.{ev}_per_element", counters.per_element(v, elements), "per element"))
        return out

    @property
    def discarded(self) -> bool:
        return self.repetition < 0


# dd stops with EAGAIN at the end of the buffer; a dd without iflag=nonblock (busybox)
# fails at once, and then cat is stopped after a second (it would wait for new records).
_KMSG_READ = ('dd if=/dev/kmsg iflag=nonblock bs=65536 2>"$1" || '
              '{ grep -q "temporarily unavailable" "$1" || timeout 1 cat /dev/kmsg; }; true')
_KMSG_REC = re.compile(r"^(\d+),(\d+),(\d+),[^;]*;")


def read_kmsg(t: Transport) -> str:
    """Every record /dev/kmsg holds now (non-blocking read)."""
    err = posixpath.join(t.tmpdir, "kmsg.err")
    return t.run(["sh", "-c", _KMSG_READ, "sh", err], check=False, timeout=60).stdout


def last_seq(kmsg: str) -> int:
    seq = -1
    for ln in kmsg.splitlines():
        m = _KMSG_REC.match(ln)
        if m:
            seq = max(seq, int(m.group(2)))
    return seq


def records_after(kmsg: str, seq: int) -> str:
    """The kmsg records (and their continuation lines) with a sequence number above `seq` (pure)."""
    out, keep = [], False
    for ln in kmsg.splitlines():
        m = _KMSG_REC.match(ln)
        if m:
            keep = int(m.group(2)) > seq
        if keep:
            out.append(ln)
    return "\n".join(out) + ("\n" if out else "")


def first_error(text: str) -> str:
    """The line of a build log that says what went wrong (the compiler's, not make's)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pat in (r"\berror:", r"fatal error", r"No such file or directory", r"No rule to make target",
                r"undefined!", r"not found", r"ERROR:", r"\*\*\*"):
        for ln in lines:
            if re.search(pat, ln):
                return ln
    return lines[-1] if lines else "no output"


def kernel_msgs(kmsg: str, module: str) -> str:
    """The module's own error lines among new kmsg records (for a failed insmod)."""
    msgs = []
    for ln in kmsg.splitlines():
        m = _KMSG_REC.match(ln)
        if not m:
            continue
        body = ln[m.end():]
        level = int(m.group(1)) & 7
        if body.startswith(module + ":") or level <= 3:
            msgs.append(body.strip())
    msgs = list(dict.fromkeys(msgs))       # busybox insmod tries twice: the kernel says it twice
    return "; ".join(msgs[-2:])


def _upload_tree(t: Transport, st: SourceTree, dest: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(st.files.items()):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = int(time.time())
            tar.addfile(ti, io.BytesIO(data))
    tarpath = t.put_bytes(buf.getvalue(), f"pp-src-{secrets.token_hex(3)}.tar")
    t.run(["sh", "-c", 'mkdir -p "$1" && tar -xf "$2" -C "$1" && rm -f "$2"', "sh", dest, tarpath], timeout=60)


def build(t: Transport, st: SourceTree, build_dir: str | None = None, facts: dict[str, str] | None = None,
          timeout: float = BUILD_TIMEOUT) -> dict[str, str]:
    """Build `st` on the host in a fresh temp dir; return module name -> remote .ko path."""
    f = facts if facts is not None else host_facts(t, build_dir)
    why = build_blocker(f)
    if why:
        raise InfraError(f"{t.name}: cannot build {st.bench_module}: {why}")
    kdir = f.get("build_dir") or build_dir or ""
    dest = posixpath.join(t.tmpdir, f"pp-build-{st.digest()[:12]}")
    t.run(["rm", "-rf", dest], timeout=30)
    _upload_tree(t, st, dest)
    cmd = ["make", "-C", kdir, f"M={dest}", "modules", *make_args(f)]
    r = t.run(cmd, check=False, timeout=timeout)
    if not r.ok:
        raise InfraError(f"{t.name}: building {st.bench_module} ({st.origin or st.kind}) against {kdir} failed: "
                         f"{first_error(r.stderr + chr(10) + r.stdout)}")
    out = {}
    for mod in st.modules:
        ko = posixpath.join(dest, mod + ".ko")
        if not t.run(["test", "-f", ko], check=False, timeout=15).ok:
            raise InfraError(f"{t.name}: building {st.bench_module}: make left no {mod}.ko "
                             f"({first_error(r.stderr + chr(10) + r.stdout)})")
        out[mod] = ko
    return out


def upload_prebuilt(t: Transport, kos: Sequence[str | Path], release: str) -> dict[str, str]:
    """Upload .ko files built on the controller; refuse any built for another kernel release."""
    out = {}
    for p in kos:
        path = Path(p)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror}") from None
        try:
            rel = vermagic_release(data)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        if rel != release:
            raise InputError(f"{path.name} was built for kernel {rel or '(no vermagic)'}, "
                             f"but {t.name} runs {release}: build it against that kernel's headers")
        name = (modinfo(data).get("name") or [path.name[:-3] if path.name.endswith(".ko") else path.name])[0]
        out[name] = t.upload(path, f"pp-{secrets.token_hex(3)}-{path.name}")
    return out


def _is_loaded(t: Transport, mod: str) -> bool:
    return t.run(["test", "-d", f"/sys/module/{mod}"], check=False, timeout=15).ok


def _unload(t: Transport, modules: Sequence[str], strict: bool) -> None:
    for mod in reversed(list(modules)):
        if not _is_loaded(t, mod):
            continue
        r = t.run(["rmmod", mod], check=False, timeout=120)
        if not r.ok and strict:
            tail = (r.stderr.strip().splitlines() or [f"exit {r.exit_status}"])[-1]
            raise InfraError(f"{t.name}: rmmod {mod}: {tail}")


def module_sha256(t: Transport, paths: dict[str, str]) -> dict[str, str]:
    """module file name (`hwt_pp_bench.ko`) -> sha256 of what was loaded."""
    r = t.run(["sha256sum", *paths.values()], check=False, timeout=30)
    by_path = {ln.split()[1]: ln.split()[0] for ln in r.stdout.splitlines() if len(ln.split()) == 2}
    return {f"{mod}.ko": by_path.get(p, "") for mod, p in paths.items()}


PERF_TIMEOUT = 30.0


def perf_blocker(t: Transport, facts: dict[str, str]) -> str | None:
    """Why `perf stat` cannot wrap a load on this host (None: it can). Debian's perf is a wrapper
    that refuses a kernel without its linux-perf package: tried once on `true` to find out."""
    if facts.get("have_perf") != "1":
        return f"perf not installed on {t.name}"
    r = t.run(["perf", "stat", "-x,", "-e", ",".join(counters.PERF_EVENTS), "-o", "/dev/null", "--", "true"],
              check=False, timeout=PERF_TIMEOUT)
    if not r.ok:
        tail = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [f"exit {r.exit_status}"])[-1]
        return f"perf stat does not run on {t.name}: {tail.strip()}"
    return None


def run_bench(t: Transport, source: str | Path | SourceTree | Sequence[str | Path] | None = None,
              loops: int = DEFAULT_LOOPS, run_flags: int = ALL_FLAGS, repeat: int = 10,
              discard_first: bool = True, build_dir: str | None = None, *, cpu: int | None = None,
              journal=None, load_timeout: float = LOAD_TIMEOUT, keep_warmup: bool = False,
              controller_build_dir: str | None = None, perf: bool = True,
              progress: Callable[[str], None] | None = None) -> list[RunResult]:
    """Build (or upload) the bench module, then load it `repeat` times and collect each load's results.

    `source`: a SourceTree; a directory on the controller; a prebuilt `.ko` path or a
    list of them (load order); None for ours. With `discard_first` one extra warm-up
    load runs first and is dropped (kept as repetition -1 when `keep_warmup`).
    `cpu` pins insmod (and so the no-softirq tests and the tasklet) with taskset.
    `journal` (hwtests.journal.Journal): records that the module must be unloaded if
    the controller dies mid-run. `controller_build_dir`: build the sources on the
    controller against these headers of the host's kernel (e.g. from
    hwtests.debkernel) and upload the modules, for hosts without headers or a compiler.
    `perf`: wrap the bench module's insmod in `perf stat -x,` (cycles, instructions,
    cache-misses, branch-misses) where the host has a working perf; each load's counts
    (or why there are none) in `RunResult.perf`.
    """
    if repeat < 1:
        raise InputError(f"repeat must be at least 1, not {repeat}")
    if not 1000 <= int(loops) <= 0xFFFFFFFF:
        raise InputError(f"loops must be 1000..4294967295 (the modules refuse others), not {loops}")
    say = progress or (lambda s: None)
    f = host_facts(t, build_dir)
    why = load_blocker(f)
    if why:
        raise InfraError(f"{t.name}: cannot load the page_pool bench module: {why}")
    release = f.get("release", "")

    if isinstance(source, (list, tuple)) or (isinstance(source, (str, Path)) and str(source).endswith(".ko")):
        kos = list(source) if isinstance(source, (list, tuple)) else [source]
        say(f"{t.name}: uploading {', '.join(Path(k).name for k in kos)}")
        paths = upload_prebuilt(t, kos, release)
        kind = "prebuilt"
    elif controller_build_dir:
        from .transport import LocalTransport
        st = source if isinstance(source, SourceTree) else local_source(source if source is not None else FIXTURE)
        say(f"{t.name}: building {st.bench_module} ({st.kind}) on the controller against {controller_build_dir}")
        with LocalTransport("controller") as lt:
            built = build(lt, st, controller_build_dir)
            paths = upload_prebuilt(t, [built[m] for m in st.modules], release)
        kind = st.kind
    else:
        st = source if isinstance(source, SourceTree) else local_source(source if source is not None else FIXTURE)
        say(f"{t.name}: building {st.bench_module} ({st.kind}) against {f.get('build_dir')}")
        paths = build(t, st, build_dir, f)
        kind = st.kind
    modules = list(paths)
    bench = modules[-1]
    artifacts = module_sha256(t, paths)
    boot_id = t.run(["cat", "/proc/sys/kernel/random/boot_id"], timeout=15).stdout.strip()

    if journal is not None:
        undo = "for m in " + " ".join(shlex.quote(m) for m in reversed(modules)) + \
               '; do [ -d "/sys/module/$m" ] && rmmod "$m"; done; true'
        journal.change(f"page_pool bench module {bench} (unloaded if left loaded)", "true", ["sh", "-c", undo])
    _unload(t, modules, strict=True)          # left loaded by an earlier run

    no_perf = perf_blocker(t, f) if perf else "perf stat not asked for"
    pinned = int(cpu) if cpu is not None and f.get("have_taskset") == "1" else None
    perf_out = posixpath.join(t.tmpdir, "pp-perf-stat.csv")

    params = {"loops": int(loops), "run_flags": int(run_flags)}
    out: list[RunResult] = []
    total = repeat + (1 if discard_first else 0)
    try:
        for k in range(total):
            rep = k - 1 if discard_first else k
            before = last_seq(read_kmsg(t))
            t0 = time.monotonic()
            for mod in modules:
                cmd = ["insmod", paths[mod]]
                if mod == bench:
                    cmd += [f"loops={int(loops)}", f"run_flags={int(run_flags)}"]
                    if no_perf is None:
                        cmd = ["perf", "stat", "-x,", "-e", ",".join(counters.PERF_EVENTS), "-o", perf_out,
                               "--"] + cmd
                    if pinned is not None:
                        cmd = ["taskset", "-c", str(pinned)] + cmd
                r = t.run(cmd, check=False, timeout=load_timeout)
                if not r.ok:
                    new = records_after(read_kmsg(t), before)
                    _unload(t, modules, strict=False)
                    tail = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or
                            [f"exit {r.exit_status}"])[-1]
                    kern = kernel_msgs(new, mod)
                    raise InfraError(f"{t.name}: {tail.strip()}" + (f" (kernel: {kern})" if kern else ""))
            dur = time.monotonic() - t0
            log = records_after(read_kmsg(t), before)
            _unload(t, modules, strict=True)
            parsed = timebench.parse(log)
            rr = RunResult(rep, parsed.records, parsed.warnings, log, boot_id, release, bench, kind,
                           dict(params), dict(artifacts), dur, before, _perf_counts(t, perf_out, no_perf), pinned)
            say(f"{t.name}: {bench} load {k + 1}/{total}: {timebench.summary(parsed)} in {dur:.1f} s")
            if rep >= 0 or keep_warmup:
                out.append(rr)
    finally:
        try:
            _unload(t, modules, strict=False)
        except InfraError:
            pass
    return out


def _perf_counts(t: Transport, path: str, blocker: str | None) -> dict[str, counters.Value]:
    """The load's perf stat counts, read back and removed; each event unavailable with the reason if none."""
    if blocker is not None:
        return {e: counters.unavailable(blocker) for e in counters.PERF_EVENTS}
    try:
        text = t.read_file(path).decode(errors="replace")
    except (InfraError, OSError) as exc:
        return {e: counters.unavailable(f"perf stat output not read: {exc}") for e in counters.PERF_EVENTS}
    t.run(["rm", "-f", path], check=False, timeout=15)
    return counters.perf_events(counters.parse_perf_stat(text))


# -- results as samples ----------------------------------------------------------------------

def sample_values(rec: timebench.Record) -> dict[str, tuple[float, bool]]:
    """metric -> (value, exact): cycles = tsc_interval/invoke count when printed, else the
    printed (floored) cycles; ns = time_interval/invoke count, else the printed ns (pure)."""
    cyc = (rec.cycles_exact, True) if rec.cycles_exact is not None else (float(rec.cycles), False)
    ns = (rec.ns_exact, True) if rec.ns_exact is not None else (float(rec.ns), False)
    return {"cycles": cyc, "ns": ns}


def to_samples(records: Iterable[timebench.Record], repetition: int = 0, boot_id: str | None = None,
               host: str | None = None, **extra) -> list:
    """hwtests.store Samples (tests `pagepool/<type>`, metrics cycles and ns, lower is better)."""
    from .store import Sample
    out = []
    for rec in records:
        for metric, (value, exact) in sample_values(rec).items():
            out.append(Sample(test=f"pagepool/{rec.type}", metric=metric, value=float(value),
                              unit="cycles" if metric == "cycles" else "ns", better="lower",
                              repetition=repetition, boot_id=boot_id, host=host,
                              extra={"exact": exact, "printed": rec.cycles if metric == "cycles" else rec.ns,
                                     "invoke_count": rec.invoke_count, "step": rec.step, **extra}))
    return out
