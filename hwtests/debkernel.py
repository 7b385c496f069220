"""Debian kernel packages on the controller: image and headers, downloaded and unpacked, never installed.

    dk = fetch("6.12.117+deb12-cloud-amd64", cache_dir)
    dk.vmlinuz, dk.config          # from linux-image-RELEASE-unsigned (or the signed image)
    dk.headers_dir                 # KDIR for `make -C KDIR M=... modules`
    dk.modules_dir                 # lib/modules/RELEASE of the image

Packages come from `apt-get download` (the machine's own apt sources; `apt-get
update` runs once when apt does not know a package) and are unpacked with
`dpkg-deb -x` under `cache_dir/RELEASE/`. Headers need three packages:
`linux-headers-RELEASE` (the flavour's .config, Module.symvers, generated
headers), the `linux-headers-VER-common` tree it depends on, and
`linux-kbuild-VER` (the prebuilt kbuild helpers); the exact names are read
from the downloaded package's Depends field. The flavour's Makefile is a
one-line `include /usr/src/linux-headers-VER-common/Makefile`, and
`lib/modules/RELEASE/build` is an absolute link: both are pointed into the
cache. An unpacked tree is complete only once `.complete` exists in it, so an
interrupted fetch is redone, never used. Parallel fetches of one release
serialize on a lock file.

Building against extracted headers needs make, the compiler the kernel was
built with (`gcc-12` for Debian 12's 6.1 and 6.12) and libelf1 (objtool);
`missing_build_tools()` names the Debian packages that are absent.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import InfraError, InputError

FLAVOUR = "cloud-amd64"
APT_TIMEOUT = 900.0
_updated = False          # `apt-get update` at most once per process


@dataclass
class DebKernel:
    release: str
    vmlinuz: Path | None
    config: Path | None
    headers_dir: Path | None
    modules_dir: Path | None = None
    packages: dict[str, str] = field(default_factory=dict)   # package -> .deb file name it came from


def _say(msg: str) -> None:
    print(f"debkernel: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], what: str, timeout: float = APT_TIMEOUT, cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                           env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise InfraError(f"debkernel: {what}: {cmd[0]} not found (this needs a Debian-based controller)") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"debkernel: {what}: `{' '.join(cmd[:3])}` did not finish within {timeout:g} s") from None
    if check and p.returncode != 0:
        lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip() and not ln.startswith("W: ")]
        tail = next((ln for ln in reversed(lines) if ln.startswith("E: ")), lines[-1] if lines else f"exit {p.returncode}")
        raise InfraError(f"debkernel: {what}: `{' '.join(cmd[:3])}` failed: {tail.strip()}")
    return p


def _apt_opts() -> list[str]:
    # apt drops privileges to _apt for downloads; a cache dir _apt cannot enter only
    # earns a warning, so say up front that root downloads.
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []


def _apt_update(why: str) -> None:
    global _updated
    if _updated:
        return
    _updated = True
    _say(f"apt-get update ({why})")
    _run(["apt-get", *_apt_opts(), "-q", "update"], f"apt-get update ({why})")


def _known(pkg: str) -> bool:
    """apt has a downloadable version of `pkg` (not just a name something refers to)."""
    p = _run(["apt-cache", "show", "--no-all-versions", pkg], pkg, timeout=60, check=False)
    return p.returncode == 0 and "\nVersion:" in "\n" + p.stdout


def _ensure_known(pkgs: list[str]) -> None:
    missing = [p for p in pkgs if not _known(p)]
    if missing:
        _apt_update(f"{missing[0]} not in the package index")
        missing = [p for p in missing if not _known(p)]
    if missing:
        raise InfraError(f"debkernel: package {missing[0]} is not in the package index "
                         "(not offered by this machine's apt sources, even after apt-get update)")


def _size(pkg: str) -> str:
    p = _run(["apt-cache", "show", "--no-all-versions", pkg], pkg, timeout=60, check=False)
    m = re.search(r"^Size: (\d+)", p.stdout, re.M)
    return f" ({int(m.group(1)) / 1e6:.1f} MB)" if m else ""


def _deb_of(debs: Path, pkg: str) -> Path | None:
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    return found[-1] if found else None


def _download(pkgs: list[str], debs: Path, progress: Callable[[str], None]) -> dict[str, Path]:
    debs.mkdir(parents=True, exist_ok=True)
    need = [p for p in pkgs if _deb_of(debs, p) is None]
    if need:
        _ensure_known(need)
        for p in need:
            progress(f"downloading {p}{_size(p)}")
        _run(["apt-get", *_apt_opts(), "-q", "download", *need], f"download {', '.join(need)}", cwd=debs)
    out = {}
    for p in pkgs:
        deb = _deb_of(debs, p)
        if deb is None:
            raise InfraError(f"debkernel: package {p}: apt-get download left no {p}_*.deb")
        out[p] = deb
    return out


def _extract(debs: dict[str, Path], dest: Path, progress: Callable[[str], None]) -> None:
    """Unpack into dest.tmp, then rename: dest exists only when it is complete."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for pkg, deb in debs.items():
        progress(f"unpacking {deb.name}")
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpack {pkg}", timeout=600)
    (tmp / ".packages").write_text("".join(f"{p} {d.name}\n" for p, d in debs.items()))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _complete(dest: Path) -> bool:
    return (dest / ".complete").exists()


def _mark_complete(dest: Path) -> None:
    (dest / ".complete").write_text("")


def _packages_of(dest: Path) -> dict[str, str]:
    try:
        return dict(ln.split(" ", 1) for ln in (dest / ".packages").read_text().splitlines() if " " in ln)
    except OSError:
        return {}


def depends_of(deb: Path) -> list[str]:
    """Package names in a .deb's Depends field (alternatives included, versions dropped)."""
    p = _run(["dpkg-deb", "-f", str(deb), "Depends"], f"read Depends of {deb.name}", timeout=60)
    return parse_depends(p.stdout)


def parse_depends(field_text: str) -> list[str]:
    """`a (>= 1), b | c, d:any` -> [a, b, c, d] (pure)."""
    names = []
    for alt in re.split(r"[,|]", field_text):
        m = re.match(r"\s*([a-z0-9][a-z0-9+.-]+)", alt)
        if m:
            names.append(m.group(1))
    return names


def headers_deps(depends: Iterable[str]) -> list[str]:
    """The headers-common and kbuild packages among a linux-headers package's dependencies (pure)."""
    return [d for d in depends if re.fullmatch(r"linux-headers-.+-common(-rt)?|linux-kbuild-.+", d)]


# -- fixes for an unpacked (not installed) headers tree ----------------------------------

def fix_tree(root: Path, release: str, full: bool = True) -> Path:
    """Point the flavour Makefile and absolute links into `root`; return the headers dir.

    Idempotent: runs on every fetch (`full=False`: only lib/modules and the
    Makefile, not a walk of the whole tree), so a moved cache is fixed again."""
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root if full else root / "lib" / "modules"):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                if target.startswith("/"):
                    p.unlink()
                    p.symlink_to(os.path.relpath(root / target.lstrip("/"), p.parent))
    hdir = root / "usr" / "src" / f"linux-headers-{release}"
    mk = hdir / "Makefile"
    if not mk.is_file():
        raise InfraError(f"debkernel: package linux-headers-{release} has no usr/src/linux-headers-{release}/Makefile")
    text = mk.read_text()
    # Shipped: `include /usr/src/linux-headers-VER-common/Makefile` (after a fix: our absolute path).
    fixed = re.sub(r"^(include\s+)\S*?(/usr/src/linux-headers-[^/\s]+/Makefile)[ \t]*$",
                   lambda m: f"{m.group(1)}{root}{m.group(2)}", text, flags=re.M)
    if fixed != text:
        mk.write_text(fixed)
    inc = re.search(r"^include\s+(\S+)", fixed, re.M)
    if inc and not Path(inc.group(1)).is_file():
        raise InfraError(f"debkernel: package linux-headers-{release}: its Makefile includes {inc.group(1)}, "
                         "which the headers-common package did not provide")
    return hdir


# -- public API ----------------------------------------------------------------------------

def image_package(release: str) -> str:
    """The unsigned image when apt offers it, else the signed one."""
    for cand in (f"linux-image-{release}-unsigned", f"linux-image-{release}"):
        if _known(cand):
            return cand
    _apt_update(f"linux-image-{release} not in the package index")
    for cand in (f"linux-image-{release}-unsigned", f"linux-image-{release}"):
        if _known(cand):
            return cand
    raise InfraError(f"debkernel: package linux-image-{release}-unsigned (or linux-image-{release}) "
                     "is not in the package index")


def fetch(release: str, cache_dir: Path, what: Iterable[str] = ("image", "headers"),
          progress: Callable[[str], None] | None = None) -> DebKernel:
    """Download (once) and unpack the image and/or headers of a Debian kernel release.

    `what` holds "image" and/or "headers"; the other fields are None. Errors are
    one-line InfraErrors naming the package."""
    what = tuple(what)
    bad = [w for w in what if w not in ("image", "headers")]
    if bad or not what:
        raise InputError(f"debkernel: what= takes 'image' and/or 'headers', not {bad or 'nothing'}")
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~-]*", release):
        raise InputError(f"debkernel: not a kernel release: {release!r}")
    say = progress or _say
    root = Path(cache_dir).resolve() / release
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dk = DebKernel(release, None, None, None)
        if "image" in what:
            img = root / "image"
            if not _complete(img):
                pkg = image_package(release)
                debs = _download([pkg], root / "debs", say)
                _extract(debs, img, say)
                _mark_complete(img)
                _drop(debs)
            dk.packages.update(_packages_of(img))
            vz = img / "boot" / f"vmlinuz-{release}"
            if not vz.is_file():
                raise InfraError(f"debkernel: package {next(iter(_packages_of(img)), 'linux-image-' + release)} "
                                 f"has no boot/vmlinuz-{release}")
            cfg = img / "boot" / f"config-{release}"
            mods = img / "lib" / "modules" / release
            dk.vmlinuz, dk.config = vz, (cfg if cfg.is_file() else None)
            dk.modules_dir = mods if mods.is_dir() else None
        if "headers" in what:
            hroot = root / "headers"
            if not _complete(hroot):
                main = f"linux-headers-{release}"
                debs = _download([main], root / "debs", say)
                deps = headers_deps(depends_of(debs[main]))
                if not any(d.startswith("linux-kbuild-") for d in deps):
                    raise InfraError(f"debkernel: package {main}: no linux-kbuild-* in its Depends")
                debs.update(_download(deps, root / "debs", say))
                _extract(debs, hroot, say)
                fix_tree(hroot, release)
                _mark_complete(hroot)
                _drop(debs)
            dk.headers_dir = fix_tree(hroot, release, full=False)
            dk.packages.update(_packages_of(hroot))
            if dk.config is None and (dk.headers_dir / ".config").is_file():
                dk.config = dk.headers_dir / ".config"
        return dk


def _drop(debs: dict[str, Path]) -> None:
    """The unpacked tree is the cache; the .deb files are not needed any more."""
    for deb in debs.values():
        try:
            deb.unlink()
        except OSError:
            pass


def _version_key(release: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", release))


def available_releases(flavour: str = FLAVOUR, require: Iterable[str] = ("image",)) -> list[str]:
    """Releases of `flavour` apt can download, oldest first.

    `require` ("image", "headers"): only releases with all of these packages
    (an image is the unsigned or the signed package)."""
    require = tuple(require)
    fl = re.escape(flavour)
    pat = rf"^linux-(image|headers)-[0-9].*-{fl}(-unsigned)?$"

    def search() -> str:
        return _run(["apt-cache", "search", "--names-only", pat], "apt-cache search", timeout=120).stdout

    out = search()
    if not out.strip():
        _apt_update(f"no {flavour} kernel in the package index")
        out = search()
    have: dict[str, set[str]] = {}
    rx = re.compile(rf"^linux-(image|headers)-([0-9]\S*?-{fl})(-unsigned)?\s")
    for line in out.splitlines():
        m = rx.match(line)
        if m:
            have.setdefault(m.group(2), set()).add(m.group(1))
    rel = [r for r, kinds in have.items() if all(k in kinds for k in require)]
    return sorted(rel, key=_version_key)


def newest(series: str, flavour: str = FLAVOUR, require: Iterable[str] = ("image",)) -> str:
    """The newest release of a series ("6.1", "6.12") apt offers; InfraError if none."""
    cands = [r for r in available_releases(flavour, require)
             if re.match(rf"^{re.escape(series)}(\.|-)", r) and not re.match(rf"^{re.escape(series)}\d", r)]
    if not cands:
        raise InfraError(f"debkernel: no {series} {flavour} kernel with {'+'.join(require)} in the package index")
    return cands[-1]


def missing_build_tools(dk: DebKernel | None = None) -> list[str]:
    """Debian packages needed to build modules against `dk`'s headers that are absent here."""
    need = {"make": "make", "dpkg-deb": "dpkg"}
    cc = "gcc"
    if dk is not None and dk.headers_dir is not None:
        kv = dk.headers_dir / ".kernelvariables"
        if kv.is_file():
            m = re.search(r"^\s*CC\s*=.*?\b(gcc-\d+)\b", kv.read_text(), re.M)
            if m:
                cc = m.group(1)
    need[cc] = cc
    missing = [pkg for exe, pkg in need.items() if shutil.which(exe) is None]
    if not any(Path(d, "libelf.so.1").exists() for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu",
                                                         "/usr/lib64", "/usr/lib", "/lib64")):
        missing.append("libelf1")
    return missing


def kbuild_args() -> list[str]:
    """make arguments for an M= build here: without pahole, no BTF for modules."""
    return [] if shutil.which("pahole") else ["CONFIG_DEBUG_INFO_BTF_MODULES="]
