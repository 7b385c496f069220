"""Make an unpacked Debian headers tree build out-of-tree modules on this machine.

    prep = prepare(dk)               # once per headers tree and machine; cached in the tree
    make -C dk.headers_dir M=... modules  + make_args(dk.headers_dir)

Debian's kbuild helpers (linux-kbuild-VER) are linked against the glibc of the
release that built them: trixie's (2.41) need symbols Debian 12's glibc (2.36)
lacks, so modpost and objtool cannot run here. Those the module build needs
(fixdep, modpost, objtool) are rebuilt from the matching `linux-source-X.Y`
package with the local compiler and put in place of the shipped ones (kept as
`NAME.debian`). When the kernel's compiler (e.g. gcc-14) is not installed, the
local gcc is used and config flags that only the newer compiler understands
are switched off on make's command line (`CONFIG_...=`), so the tree's
fallback is taken (e.g. -falign-functions for -fmin-function-alignment).

The outcome is written into the headers dir: `hwt-make-args` (one make
argument a line, read by `hwtests.pagepool` on any host) and, when the tree
cannot build here, `hwt-build-blocker` (one line saying why). `prepare`
proves the result by building a small module.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import debkernel
from .errors import HwtestsError
from .pagepool import first_error

ARGS_FILE = "hwt-make-args"
BLOCKER_FILE = "hwt-build-blocker"
STATE_FILE = "hwt-kbuild.json"
VERSION = 1
TIMEOUT = 900.0
ARG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9._+/-]*$")

# Config symbols whose flag only newer compilers know: (symbol, flag that tests it).
NEW_COMPILER_FLAGS = (
    ("CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT", "-fmin-function-alignment=16"),   # gcc 14
)
# Kbuild helpers an M= module build runs, by the file the kbuild package ships.
NEEDED_TOOLS = {
    "scripts/basic/fixdep": "fixdep",
    "scripts/mod/modpost": "modpost",
    "scripts/mod/modpost.real-lsb-64": "modpost",
    "tools/objtool/objtool": "objtool",
    "tools/objtool/objtool.real-x86": "objtool",
}

PROBE_C = """#include <linux/module.h>
static int __init hwt_probe_init(void) { return 0; }
static void __exit hwt_probe_exit(void) { }
module_init(hwt_probe_init);
module_exit(hwt_probe_exit);
MODULE_LICENSE("GPL");
"""


@dataclass
class Prep:
    ok: bool
    make_args: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)     # kbuild files replaced by local builds
    reason: str = ""                                     # why the tree cannot build modules here
    machine: str = ""                                    # glibc and gcc this was decided for
    seconds: float = 0.0


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = TIMEOUT) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                           env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise HwtestsError(f"{what}: {cmd[0]} not installed", 4) from None
    except subprocess.TimeoutExpired:
        raise HwtestsError(f"{what}: did not finish within {timeout:g} s", 4) from None
    if p.returncode != 0:
        raise HwtestsError(f"{what} failed: {first_error(p.stderr + chr(10) + p.stdout)}", 4)
    return p.stdout


def machine_key() -> str:
    gcc = shutil.which("gcc")
    ver = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True).stdout.strip() if gcc else "none"
    return f"glibc {platform.libc_ver()[1] or '?'}, gcc {ver}"


def make_args(headers_dir: Path | str) -> list[str]:
    """The make arguments `prepare` decided for this tree (plus no module BTF without pahole)."""
    args = []
    try:
        args = [a for a in Path(headers_dir, ARGS_FILE).read_text().split() if ARG_RE.match(a)]
    except OSError:
        pass
    return args + [a for a in debkernel.kbuild_args() if a not in args]


def blocker(headers_dir: Path | str) -> str | None:
    try:
        return Path(headers_dir, BLOCKER_FILE).read_text().strip() or None
    except OSError:
        return None


# -- what is wrong ---------------------------------------------------------------------------

def _elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def unrunnable(kbuild: Path) -> list[str]:
    """Executables under a kbuild tree (relative paths) this machine's loader cannot run."""
    out = []
    for p in sorted(kbuild.rglob("*")):
        if not (p.is_file() and not p.is_symlink() and os.access(p, os.X_OK) and _elf(p)):
            continue
        r = subprocess.run(["ldd", str(p)], capture_output=True, text=True, timeout=30)
        if "not found" in r.stdout + r.stderr:
            out.append(str(p.relative_to(kbuild)))
    return out


def kernel_compiler(headers_dir: Path) -> str | None:
    """The compiler the kernel was built with, as named in .kernelvariables (`gcc-14`)."""
    try:
        m = re.search(r"^\s*CC\s*=.*?\b(gcc-\d+)\b", (headers_dir / ".kernelvariables").read_text(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


def config_flags(config_text: str) -> dict[str, str]:
    """`CONFIG_X=y` lines of a .config as a dict (pure)."""
    return dict(m.groups() for m in re.finditer(r"^(CONFIG_\w+)=(.*)$", config_text, re.M))


def compiler_args(headers_dir: Path) -> list[str]:
    """make arguments for building with the local gcc when the kernel's is not installed."""
    kcc = kernel_compiler(headers_dir)
    if kcc is None or shutil.which(kcc) or shutil.which(f"x86_64-linux-gnu-{kcc}"):
        return []
    gcc = shutil.which("gcc")
    if gcc is None:
        raise HwtestsError(f"the kernel was built with {kcc}; neither it nor any gcc is installed here", 4)
    full = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True, timeout=30).stdout.strip()
    major = full.split(".")[0]
    cc = f"gcc-{major}" if shutil.which(f"gcc-{major}") else "gcc"
    parts = (full.split(".") + ["0", "0"])[:3]
    args = [f"CC={cc}", f"CONFIG_GCC_VERSION={int(parts[0]) * 10000 + int(parts[1]) * 100 + int(parts[2])}"]
    cfg = config_flags((headers_dir / ".config").read_text())
    for sym, flag in NEW_COMPILER_FLAGS:
        if cfg.get(sym) == "y" and not _accepts(cc, flag):
            args.append(f"{sym}=")
    return args


def _accepts(cc: str, flag: str) -> bool:
    p = subprocess.run([cc, "-Werror", flag, "-x", "c", "-c", "-o", os.devnull, "-"], input="int x;\n",
                       capture_output=True, text=True, timeout=60)
    return p.returncode == 0


# -- rebuilding the host tools -----------------------------------------------------------------

def offsets_header(asm: str, guard: str = "__DEVICETABLE_OFFSETS_H__") -> str:
    """A C header from the `.ascii "->SYM VALUE expr"` markers of a compiled offsets file (pure)."""
    out = [f"#ifndef {guard}", f"#define {guard}", "/* generated by hwtests.kbuildprep */"]
    for m in re.finditer(r'^\s*\.ascii\s+"->(\w+) [$#]?(-?\w+) (.*)"', asm, re.M):
        out.append(f"#define {m.group(1)} {m.group(2)} /* {m.group(3)} */")
    out.append("#endif")
    return "\n".join(out) + "\n"


def _source_tree(dk: debkernel.DebKernel, work: Path, progress: Callable[[str], None]) -> Path:
    """tools/, scripts/ and include/ of the kernel's own source (linux-source-X.Y of the same version)."""
    series = ".".join(dk.release.split(".")[:2])
    pkg = f"linux-source-{series}"
    arch = debkernel.archive_for(dk.release)
    want = next((re.sub(r"^[^_]+_([^_]+)_.*$", r"\1", deb) for p, deb in dk.packages.items()
                 if p == f"linux-headers-{dk.release}"), "")
    entry = debkernel.index_entry(arch, pkg)
    if entry is None:
        debkernel.apt_update(arch, f"{pkg} not in the package index")
        entry = debkernel.index_entry(arch, pkg)
    if entry is None:
        raise HwtestsError(f"package {pkg} (the kernel's source) is not in the package index of {arch.name}", 4)
    have = entry.get("Version", "").replace(":", "%3a")
    if want and have != want:
        raise HwtestsError(f"{pkg} in {arch.name} is {have}, the headers are {want}: no matching source", 4)
    debs = debkernel.download(arch, [pkg], work / "debs", progress)
    progress(f"unpacking {debs[pkg].name} (tools/, scripts/, include/)")
    _run(["dpkg-deb", "-x", str(debs[pkg]), str(work / "deb")], f"unpack {pkg}")
    debs[pkg].unlink()
    tarball = next((work / "deb" / "usr" / "src").glob(f"{pkg}.tar.*"), None)
    if tarball is None:
        raise HwtestsError(f"package {pkg} holds no usr/src/{pkg}.tar.*", 4)
    (work / "src").mkdir()
    _run(["tar", "-xf", str(tarball), "-C", str(work / "src"), "--wildcards",
          f"{pkg}/tools/*", f"{pkg}/scripts/*", f"{pkg}/include/*"], f"extract {tarball.name}")
    tarball.unlink()
    return work / "src" / pkg


def _build_objtool(src: Path, progress) -> Path:
    progress("building objtool with the local compiler")
    if not Path("/usr/include/gelf.h").exists():
        raise HwtestsError("rebuilding objtool needs libelf's headers (apt-get install libelf-dev)", 4)
    _run(["make", "-s", "-C", str(src / "tools" / "objtool"), f"-j{os.cpu_count() or 1}", "HOSTCC=gcc", "CC=gcc"],
         "building objtool")
    return src / "tools" / "objtool" / "objtool"


def _build_fixdep(src: Path, progress) -> Path:
    progress("building fixdep with the local compiler")
    out = src / "scripts" / "basic" / "fixdep"
    _run(["gcc", "-O2", "-o", str(out), str(src / "scripts" / "basic" / "fixdep.c")], "building fixdep")
    return out


def _build_modpost(src: Path, headers_dir: Path, args: list[str], work: Path, progress) -> Path:
    """modpost needs elfconfig.h (from an object of the target's ELF class) and the device
    table offsets of this kernel (compiled against the headers tree, like kbuild does)."""
    progress("building modpost with the local compiler")
    mod = src / "scripts" / "mod"
    gen = work / "gen"
    gen.mkdir()
    _run(["gcc", "-O2", "-o", str(gen / "mk_elfconfig"), str(mod / "mk_elfconfig.c")], "building mk_elfconfig")
    _run(["gcc", "-c", "-o", str(gen / "empty.o"), str(mod / "empty.c")], "compiling empty.c")
    with open(gen / "empty.o", "rb") as fin, open(gen / "elfconfig.h", "w") as fout:
        p = subprocess.run([str(gen / "mk_elfconfig")], stdin=fin, stdout=fout, timeout=30)
    if p.returncode != 0:
        raise HwtestsError("mk_elfconfig failed", 4)
    off = work / "offsets"
    off.mkdir()
    shutil.copy(mod / "devicetable-offsets.c", off)
    (off / "Kbuild").write_text("# device table offsets only\n")
    _run(["make", "-s", "-C", str(headers_dir), f"M={off}", *args, "devicetable-offsets.s"],
         "compiling devicetable-offsets.c against the headers")
    (gen / "devicetable-offsets.h").write_text(offsets_header((off / "devicetable-offsets.s").read_text()))
    out = gen / "modpost"
    _run(["gcc", "-O2", f"-I{gen}", f"-I{src / 'scripts' / 'include'}", "-o", str(out),
          *(str(mod / f) for f in ("modpost.c", "file2alias.c", "sumversion.c", "symsearch.c"))],
         "building modpost")
    return out


def _install(built: Path, target: Path) -> None:
    keep = target.with_name(target.name + ".debian")
    if not keep.exists():
        os.replace(target, keep)
    tmp = target.with_name(target.name + ".hwt-tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, target)


def _probe_build(headers_dir: Path, args: list[str], work: Path) -> None:
    d = work / "probe"
    d.mkdir()
    (d / "hwt_probe.c").write_text(PROBE_C)
    (d / "Kbuild").write_text("obj-m := hwt_probe.o\n")
    _run(["make", "-s", "-C", str(headers_dir), f"M={d}", *args, "modules"], "test build of a module")
    if not (d / "hwt_probe.ko").is_file():
        raise HwtestsError("test build of a module left no .ko", 4)


def prepare(dk: debkernel.DebKernel, progress: Callable[[str], None] = lambda s: None,
            force: bool = False) -> Prep:
    """Decide (and cache in the tree) how modules are built against `dk`'s headers here.

    Parallel calls for one tree (parallel lab ups) wait for each other."""
    with open(Path(dk.headers_dir).parents[3] / ".kbuildprep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare_locked(dk, progress, force)


def _prepare_locked(dk: debkernel.DebKernel, progress: Callable[[str], None], force: bool) -> Prep:
    hdir = Path(dk.headers_dir)
    state = hdir / STATE_FILE
    key = machine_key()
    if not force:
        try:
            saved = json.loads(state.read_text())
            if saved.pop("version", None) == VERSION and saved.get("machine") == key:
                return Prep(**saved)
        except (OSError, ValueError, TypeError):
            pass
    t0 = time.monotonic()
    prep = Prep(ok=False, machine=key)
    kbuild = (hdir / "scripts").resolve().parent
    try:
        prep.make_args = compiler_args(hdir)
        broken = unrunnable(kbuild)
        need = sorted({NEEDED_TOOLS[b] for b in broken if b in NEEDED_TOOLS})
        if need:
            progress(f"kbuild helpers cannot run here ({', '.join(broken)}): "
                     f"rebuilding {', '.join(need)} from the kernel's source")
            with tempfile.TemporaryDirectory(prefix="hwt-kbuild-", dir=hdir.parents[3]) as tmp:
                work = Path(tmp)
                src = _source_tree(dk, work, progress)
                built = {}
                if "objtool" in need:
                    built["objtool"] = _build_objtool(src, progress)
                if "fixdep" in need:
                    built["fixdep"] = _build_fixdep(src, progress)
                    _install(built["fixdep"], kbuild / "scripts" / "basic" / "fixdep")
                    prep.rebuilt.append("scripts/basic/fixdep")
                if "modpost" in need:
                    built["modpost"] = _build_modpost(src, hdir, prep.make_args + debkernel.kbuild_args(),
                                                      work, progress)
                for rel in broken:
                    tool = NEEDED_TOOLS.get(rel)
                    if tool in built and rel not in prep.rebuilt:
                        _install(built[tool], kbuild / rel)
                        prep.rebuilt.append(rel)
        # also those replaced by an earlier prepare (their shipped file is kept as NAME.debian)
        prep.rebuilt = sorted(str(p.relative_to(kbuild))[:-len(".debian")] for p in kbuild.rglob("*.debian"))
        with tempfile.TemporaryDirectory(prefix="hwt-kbuild-", dir=hdir.parents[3]) as tmp:
            _probe_build(hdir, prep.make_args + debkernel.kbuild_args(), Path(tmp))
        prep.ok = True
    except HwtestsError as exc:
        prep.reason = f"building modules against the {dk.release} headers on this machine: {exc}"
        progress(prep.reason)
    prep.seconds = round(time.monotonic() - t0, 1)
    (hdir / ARGS_FILE).write_text("".join(f"{a}\n" for a in prep.make_args))
    if prep.ok:
        (hdir / BLOCKER_FILE).unlink(missing_ok=True)
    else:
        (hdir / BLOCKER_FILE).write_text(prep.reason + "\n")
    state.write_text(json.dumps({**asdict(prep), "version": VERSION}, indent=1))
    return prep
