"""Debian kernel packages on the controller: image and headers, downloaded and unpacked, never installed.

    dk = fetch("6.12.117+deb12-cloud-amd64", cache_dir)
    dk.vmlinuz, dk.config          # from the image package(s)
    dk.headers_dir                 # KDIR for `make -C KDIR M=... modules`
    dk.modules_dir                 # lib/modules/RELEASE of the image
    rel = resolve("deb7")          # newest 7.x cloud kernel trixie-backports offers (cached)

Packages come from Debian's archive through a *private* apt configuration per
archive (`ARCHIVES`: Debian 12's suites for 6.1 and 6.12, trixie-backports for
7.x): its own sources list, lists, cache and an empty dpkg status under
`<cache>/apt/<archive>/`, so the result is the same on a Debian 12 and a
Debian 13 controller and the machine's apt setup is never read for sources nor
written. The archive's signatures are checked with debian-archive-keyring;
apt checks each download against the signed index, and every .deb is checked
again (sha256 from the index) before it is unpacked.

Packages are unpacked with `dpkg-deb -x` under `cache_dir/RELEASE/`. Up to
Linux 6.x the image is `linux-image-RELEASE[-unsigned]` (boot/vmlinuz-*,
boot/config-*, lib/modules/); from 7.x Debian splits it into
`linux-binary[-unsigned]-RELEASE` (usr/lib/modules/RELEASE/vmlinuz*),
`linux-base-RELEASE` (config) and `linux-modules-RELEASE`. Headers need
`linux-headers-RELEASE`, the `-common` tree and `linux-kbuild-VER` it depends
on (names read from the package's Depends field). The flavour's Makefile
(`include /usr/src/...-common/Makefile`, 7.x also `KBUILD_OUTPUT=/usr/src/...`)
and absolute links are pointed into the cache. An unpacked tree is complete
only once `.complete` exists in it, so an interrupted fetch is redone, never
used. Parallel fetches of one release serialize on a lock file, and so do apt
runs on one private archive.

Building against extracted headers needs make, a gcc and libelf1 (objtool);
`missing_build_tools()` names the Debian packages that are absent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import InfraError, InputError
from .vmimage import cache_root

FLAVOUR = "cloud-amd64"
APT_TIMEOUT = 900.0
LISTS_MAX_AGE = 24 * 3600.0     # older package lists are refreshed before a release is resolved
RESOLVED_MAX_AGE = 7 * 86400.0  # a label's resolved release is looked up again after this
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR = os.environ.get("HWTESTS_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
SECURITY_MIRROR = os.environ.get("HWTESTS_DEBIAN_SECURITY_MIRROR") or "http://deb.debian.org/debian-security"


@dataclass(frozen=True)
class Archive:
    """A set of Debian suites apt reads through its own private configuration."""

    name: str                       # directory name under <cache>/apt/
    sources: tuple[str, ...]        # sources.list lines

    def root(self) -> Path:
        return cache_root() / "apt" / self.name


def _deb_line(uri: str, suite: str) -> str:
    return f"deb [signed-by={KEYRING}] {uri} {suite} main"


ARCHIVES = {
    "bookworm": Archive("bookworm", (_deb_line(MIRROR, "bookworm"), _deb_line(MIRROR, "bookworm-updates"),
                                     _deb_line(SECURITY_MIRROR, "bookworm-security"))),
    "trixie-backports": Archive("trixie-backports", (_deb_line(MIRROR, "trixie-backports"),)),
}

# Lab build labels: (archive, series, lowest release of the series accepted)
BUILDS = {
    "deb6.1": ("bookworm", "6.1", (6, 1)),
    "deb6.12": ("bookworm", "6.12", (6, 12)),
    "deb7": ("trixie-backports", "7", (7, 1)),     # 7.1 brought device-less zcrx
}


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


# -- the private apt configuration ---------------------------------------------------------

def archive_for(release: str) -> Archive:
    """Debian 12's suites for 6.x releases, trixie-backports for 7.x and later (pure)."""
    major = int(re.match(r"\d+", release).group(0)) if re.match(r"\d+", release) else 0
    return ARCHIVES["trixie-backports" if major >= 7 or "+deb13" in release else "bookworm"]


def apt_options(arch: Archive) -> list[str]:
    """`-o` options that make apt-get/apt-cache use only the archive's private files."""
    r = arch.root()
    opts = {
        "Dir::Etc::sourcelist": r / "sources.list",
        "Dir::Etc::sourceparts": r / "sources.list.d",      # empty: the machine's parts are not read
        "Dir::Etc::preferences": r / "preferences",
        "Dir::Etc::preferencesparts": r / "preferences.d",
        "Dir::Etc::trusted": r / "trusted.gpg",
        "Dir::Etc::trustedparts": r / "trusted.gpg.d",
        "Dir::State::Lists": r / "lists",
        "Dir::State::status": r / "status",                 # empty: nothing counts as installed
        "Dir::State::extended_states": r / "extended_states",
        "Dir::Cache": r / "cache",
        "Acquire::Languages": "none",
    }
    out: list[str] = []
    for k, v in opts.items():
        out += ["-o", f"{k}={v}"]
    # apt drops privileges to _apt for downloads; a cache dir _apt cannot enter only
    # earns a warning, so say up front that root downloads.
    if os.geteuid() == 0:
        out += ["-o", "APT::Sandbox::User=root"]
    return out


def _prepare(arch: Archive) -> Path:
    """Create the archive's private apt tree (idempotent); return its root."""
    if not KEYRING.is_file():
        raise InfraError(f"debkernel: {KEYRING} is missing (apt-get install debian-archive-keyring)")
    r = arch.root()
    for d in ("sources.list.d", "preferences.d", "trusted.gpg.d", "lists/partial", "cache/archives/partial"):
        (r / d).mkdir(parents=True, exist_ok=True)
    text = "".join(f"{ln}\n" for ln in arch.sources)
    sl = r / "sources.list"
    if not sl.is_file() or sl.read_text() != text:
        sl.write_text(text)
        for f in (r / "lists").glob("*"):        # lists of other sources are stale now
            if f.is_file():
                f.unlink()
    if not (r / "status").exists():
        (r / "status").write_text("")
    return r


class _ArchiveLock:
    """Serializes apt runs on one private archive (parallel ups, pytest -n)."""

    def __init__(self, arch: Archive):
        self.path = _prepare(arch) / ".lock"

    def __enter__(self):
        self.f = open(self.path, "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()


_updated: set[str] = set()       # `apt-get update` at most once per archive and process


def _lists_age(arch: Archive) -> float | None:
    """Seconds since the archive's package lists were fetched; None when there are none."""
    pk = [p for p in (arch.root() / "lists").glob("*_Packages*") if p.is_file()]
    return time.time() - min(p.stat().st_mtime for p in pk) if pk else None


def apt_update(arch: Archive, why: str, force: bool = False) -> None:
    """Fetch the archive's package lists into its private lists dir."""
    if arch.name in _updated and not force:
        return
    with _ArchiveLock(arch):
        _say(f"apt-get update of {arch.name} ({why})")
        _run(["apt-get", *apt_options(arch), "-q", "update"], f"apt-get update of {arch.name} ({why})")
    _updated.add(arch.name)


def _fresh(arch: Archive) -> None:
    """Package lists present and not older than LISTS_MAX_AGE (updated otherwise)."""
    age = _lists_age(arch)
    if age is None:
        apt_update(arch, "no package lists yet")
    elif age > LISTS_MAX_AGE:
        apt_update(arch, f"package lists {age / 3600:.0f} h old")


def apt_cache(arch: Archive, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    _prepare(arch)
    return _run(["apt-cache", *apt_options(arch), *args], f"apt-cache {args[0]} in {arch.name}",
                timeout=timeout, check=check)


def index_entry(arch: Archive, pkg: str) -> dict[str, str] | None:
    """The index's fields (Version, Size, SHA256, Depends...) of the candidate version of `pkg`."""
    p = apt_cache(arch, "show", "--no-all-versions", pkg, check=False, timeout=60)
    if p.returncode != 0 or "\nVersion:" not in "\n" + p.stdout:
        return None
    return parse_control(p.stdout)


def parse_control(text: str) -> dict[str, str]:
    """The first stanza of a Debian control text as field -> value (pure; continuation lines joined)."""
    out: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        if line[0] in " \t" and key:
            out[key] += "\n" + line.strip()
            continue
        k, sep, v = line.partition(":")
        if sep:
            key = k.strip()
            out[key] = v.strip()
    return out


def _known(arch: Archive, pkg: str) -> bool:
    return index_entry(arch, pkg) is not None


def _ensure_known(arch: Archive, pkgs: list[str]) -> None:
    missing = [p for p in pkgs if not _known(arch, p)]
    if missing:
        apt_update(arch, f"{missing[0]} not in the package index")
        missing = [p for p in missing if not _known(arch, p)]
    if missing:
        raise InfraError(f"debkernel: package {missing[0]} is not in the package index of {arch.name} "
                         f"({', '.join(s.split(']', 1)[-1].strip() for s in arch.sources)})")


# -- downloads ---------------------------------------------------------------------------------

def _deb_of(debs: Path, pkg: str) -> Path | None:
    found = sorted(debs.glob(f"{pkg.replace('+', '[+]')}_*.deb"))
    return found[-1] if found else None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(arch: Archive, pkg: str, deb: Path) -> None:
    """The .deb's sha256 is the one the signed index names; a bad file is removed."""
    entry = index_entry(arch, pkg)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], f"read {deb.name}", timeout=60,
                   check=False).stdout.strip()
    if entry is None or not version:
        deb.unlink(missing_ok=True)
        raise InfraError(f"debkernel: package {pkg}: {deb.name} is not a readable package of {arch.name}; "
                         "removed it, run again to download it anew")
    if entry.get("Version") != version:
        p = apt_cache(arch, "show", f"{pkg}={version}", check=False, timeout=60)
        entry = parse_control(p.stdout) if p.returncode == 0 else {}
    want = entry.get("SHA256", "")
    got = sha256_of(deb)
    if got != want:
        deb.unlink(missing_ok=True)
        raise InfraError(f"debkernel: package {pkg}: {deb.name} fails its checksum (sha256 {got[:16]}..., "
                         f"the index of {arch.name} says {want[:16] or 'nothing'}...); removed it, "
                         "run again to download it anew")


def download(arch: Archive, pkgs: list[str], debs: Path, progress: Callable[[str], None]) -> dict[str, Path]:
    debs.mkdir(parents=True, exist_ok=True)
    need = [p for p in pkgs if _deb_of(debs, p) is None]
    if need:
        _ensure_known(arch, need)
        total = 0
        for p in need:
            size = int((index_entry(arch, p) or {}).get("Size", "0") or 0)
            total += size
            progress(f"downloading {p} from {arch.name}" + (f" ({size / 1e6:.1f} MB)" if size else ""))
        t0 = time.monotonic()
        with _ArchiveLock(arch):
            _run(["apt-get", *apt_options(arch), "-q", "download", *need],
                 f"download {', '.join(need)}", cwd=debs)
        dt = time.monotonic() - t0
        progress(f"downloaded {len(need)} package(s), {total / 1e6:.1f} MB in {dt:.1f} s")
    out = {}
    for p in pkgs:
        deb = _deb_of(debs, p)
        if deb is None:
            raise InfraError(f"debkernel: package {p}: apt-get download left no {p}_*.deb")
        _verify(arch, p, deb)
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
    walk = [root] if full else [root / "lib" / "modules", root / "usr" / "lib" / "modules"]
    for top in walk:
        for dirpath, dirnames, filenames in os.walk(top):
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
    fixed = fix_makefile(text, root)
    if fixed != text:
        mk.write_text(fixed)
    inc = re.search(r"^include\s+(\S+)", fixed, re.M)
    if inc and not Path(inc.group(1)).is_file():
        raise InfraError(f"debkernel: package linux-headers-{release}: its Makefile includes {inc.group(1)}, "
                         "which the headers-common package did not provide")
    return hdir


def fix_makefile(text: str, root: Path) -> str:
    """The flavour Makefile's `include /usr/src/...` and `KBUILD_OUTPUT=/usr/src/...` moved under `root` (pure).

    Shipped paths are absolute; after an earlier fix they carry an older root,
    which is replaced as well."""
    text = re.sub(r"^(include\s+)\S*?(/usr/src/linux-headers-[^/\s]+/Makefile)[ \t]*$",
                  lambda m: f"{m.group(1)}{root}{m.group(2)}", text, flags=re.M)
    return re.sub(r"^(KBUILD_OUTPUT\s*:?=\s*)\S*?(/usr/src/linux-headers-[^/\s]+)[ \t]*$",
                  lambda m: f"{m.group(1)}{root}{m.group(2)}", text, flags=re.M)


# -- public API ----------------------------------------------------------------------------

def image_packages(release: str, arch: Archive | None = None) -> list[str]:
    """The packages that hold a release's kernel image, config and modules.

    6.x: the unsigned image when the index has it, else the signed one. 7.x:
    `linux-binary[-unsigned]-R` plus `linux-base-R` and `linux-modules-R`."""
    arch = arch or archive_for(release)
    for attempt in range(2):
        # 7.x: linux-image-R is a package depending on linux-binary-R, so the binaries come first
        for cand in (f"linux-image-{release}-unsigned", f"linux-binary-unsigned-{release}",
                     f"linux-binary-{release}", f"linux-image-{release}"):
            if not _known(arch, cand):
                continue
            if cand.startswith("linux-binary-"):
                rest = [f"linux-base-{release}", f"linux-modules-{release}"]
                _ensure_known(arch, rest)
                return [cand, *rest]
            return [cand]
        if attempt == 0:
            apt_update(arch, f"no image package of {release} in the package index")
    raise InfraError(f"debkernel: package linux-image-{release}-unsigned (or linux-binary-unsigned-{release}) "
                     f"is not in the package index of {arch.name}")


def _image_files(img: Path, release: str) -> tuple[Path | None, Path | None, Path | None]:
    """(vmlinuz, config, modules dir) in an unpacked image, in either package layout."""
    mods = next((d for d in (img / "lib" / "modules" / release, img / "usr" / "lib" / "modules" / release)
                 if d.is_dir()), None)
    cands = [img / "boot" / f"vmlinuz-{release}"]
    if mods is not None:
        cands += [mods / "vmlinuz", mods / "vmlinuz.unsigned"]
    vz = next((c for c in cands if c.is_file()), None)
    cfgs = [img / "boot" / f"config-{release}"] + ([mods / "config"] if mods is not None else [])
    cfg = next((c for c in cfgs if c.is_file()), None)
    if mods is not None and not (mods / "kernel").is_dir():
        mods = None
    return vz, cfg, mods


def fetch(release: str, cache_dir: Path, what: Iterable[str] = ("image", "headers"),
          progress: Callable[[str], None] | None = None, archive: Archive | None = None) -> DebKernel:
    """Download (once) and unpack the image and/or headers of a Debian kernel release.

    `what` holds "image" and/or "headers"; the other fields are None. Errors are
    one-line InfraErrors naming the package."""
    what = tuple(what)
    bad = [w for w in what if w not in ("image", "headers")]
    if bad or not what:
        raise InputError(f"debkernel: what= takes 'image' and/or 'headers', not {bad or 'nothing'}")
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~-]*", release):
        raise InputError(f"debkernel: not a kernel release: {release!r}")
    arch = archive or archive_for(release)
    say = progress or _say
    root = Path(cache_dir).resolve() / release
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dk = DebKernel(release, None, None, None)
        if "image" in what:
            img = root / "image"
            if not _complete(img):
                debs = download(arch, image_packages(release, arch), root / "debs", say)
                _extract(debs, img, say)
                _mark_complete(img)
                _drop(debs)
            dk.packages.update(_packages_of(img))
            vz, cfg, mods = _image_files(img, release)
            if vz is None:
                raise InfraError(f"debkernel: package {next(iter(_packages_of(img)), 'linux-image-' + release)} "
                                 f"has no kernel image (boot/vmlinuz-{release} or lib/modules/{release}/vmlinuz)")
            dk.vmlinuz, dk.config, dk.modules_dir = vz, cfg, mods
        if "headers" in what:
            hroot = root / "headers"
            if not _complete(hroot):
                main = f"linux-headers-{release}"
                debs = download(arch, [main], root / "debs", say)
                deps = headers_deps(depends_of(debs[main]))
                if not any(d.startswith("linux-kbuild-") for d in deps):
                    raise InfraError(f"debkernel: package {main}: no linux-kbuild-* in its Depends")
                debs.update(download(arch, deps, root / "debs", say))
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


def version_key(release: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", release))


_IMAGE_KINDS = {"image": "image", "binary": "image", "binary-unsigned": "image", "headers": "headers"}


def parse_kernel_packages(lines: str, flavour: str = FLAVOUR) -> dict[str, set[str]]:
    """`apt-cache search` output -> release -> {"image", "headers"} it has packages for (pure)."""
    fl = re.escape(flavour)
    rx = re.compile(rf"^linux-(image|headers|binary-unsigned|binary)-([0-9]\S*?-{fl})(-unsigned)?\s")
    have: dict[str, set[str]] = {}
    for line in lines.splitlines():
        m = rx.match(line)
        if m:
            have.setdefault(m.group(2), set()).add(_IMAGE_KINDS[m.group(1)])
    return have


def available_releases(flavour: str = FLAVOUR, require: Iterable[str] = ("image",),
                       archive: Archive | None = None) -> list[str]:
    """Releases of `flavour` the archive offers (default: Debian 12's suites), oldest first.

    `require` ("image", "headers"): only releases with all of these packages
    (an image is the unsigned or the signed package)."""
    require = tuple(require)
    arch = archive or ARCHIVES["bookworm"]
    pat = rf"^linux-(image|headers|binary|binary-unsigned)-[0-9].*-{re.escape(flavour)}(-unsigned)?$"
    _fresh(arch)
    out = apt_cache(arch, "search", "--names-only", pat).stdout
    if not out.strip():
        apt_update(arch, f"no {flavour} kernel in the package index")
        out = apt_cache(arch, "search", "--names-only", pat).stdout
    have = parse_kernel_packages(out, flavour)
    rel = [r for r, kinds in have.items() if all(k in kinds for k in require)]
    return sorted(rel, key=version_key)


def pick_newest(releases: Iterable[str], series: str, minimum: tuple = ()) -> str | None:
    """The newest release of `series` ("6.1", "7") not below `minimum` (pure)."""
    s = re.escape(series)
    cands = [r for r in releases if re.match(rf"^{s}(\.|-)", r) and not re.match(rf"^{s}\d", r)
             and version_key(r)[:len(minimum)] >= tuple(minimum)]
    return max(cands, key=version_key) if cands else None


def newest(series: str, flavour: str = FLAVOUR, require: Iterable[str] = ("image",),
           archive: Archive | None = None, minimum: tuple = ()) -> str:
    """The newest release of a series ("6.1", "6.12", "7") the archive offers; InfraError if none."""
    arch = archive or archive_for(series)
    rel = pick_newest(available_releases(flavour, require, arch), series, minimum)
    if rel is None:
        low = f" (at least {'.'.join(map(str, minimum))})" if minimum else ""
        raise InfraError(f"debkernel: no {series}{low} {flavour} kernel with {'+'.join(require)} "
                         f"in the package index of {arch.name}")
    return rel


def resolve(label: str, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None,
            max_age: float = RESOLVED_MAX_AGE) -> str:
    """The release a lab build label (`BUILDS`) stands for, resolved once and cached.

    The newest release with image and headers is looked up when the label was
    never resolved or its entry is older than `max_age`; if that lookup fails
    (no network), the cached release is used."""
    if label not in BUILDS:
        raise InputError(f"debkernel: no kernel build '{label}' (builds: {', '.join(BUILDS)})")
    arch_name, series, minimum = BUILDS[label]
    path = Path(cache_dir or cache_root() / "kernels") / "resolved.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        entry = known.get(label) if isinstance(known.get(label), dict) else None
        if entry and time.time() - float(entry.get("at", 0)) < max_age and entry.get("release"):
            return entry["release"]
        try:
            rel = newest(series, require=("image", "headers"), archive=ARCHIVES[arch_name], minimum=minimum)
        except InfraError as exc:
            if entry and entry.get("release"):
                (progress or _say)(f"{label}: keeping {entry['release']} ({exc})")
                return entry["release"]
            raise
        if not entry or entry.get("release") != rel:
            (progress or _say)(f"{label} is {rel} (newest in {arch_name})")
        known[label] = {"release": rel, "archive": arch_name, "at": time.time()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return rel


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
