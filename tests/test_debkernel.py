"""Fetching Debian kernels through hwtests.debkernel's private apt configuration.

The network tests run `apt-get update` into a fresh private lists dir (a
temporary cache) against Debian's archive, for Debian 12's suites and for
trixie-backports, and check that the lab's kernel packages resolve there and
that the machine's own apt setup (/etc/apt, /var/lib/apt/lists) is untouched.
They need the network to Debian's mirror; without it they skip, except in CI
(CI=true), where they fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import unavailable
from hwtests import debkernel, kbuildprep, labvm
from hwtests.errors import InfraError, InputError

MACHINE_APT = (Path("/etc/apt"), Path("/var/lib/apt/lists"))


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file under `roots`: size, mtime and (small files) content hash."""
    out = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = Path(dirpath, name)
                try:
                    st = p.lstat()
                    h = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < (4 << 20) and p.is_file() else ""
                except OSError:
                    continue
                out[str(p)] = (st.st_size, st.st_mtime_ns, h)
    return out


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A fresh HWTESTS_CACHE for this module: private apt lists start empty."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        unavailable("not a Debian-based machine (no apt-get/dpkg-deb)")
    if not debkernel.KEYRING.is_file():
        unavailable(f"{debkernel.KEYRING} missing (apt-get install debian-archive-keyring)")
    cache = tmp_path_factory.mktemp("debcache")
    old = os.environ.get("HWTESTS_CACHE")
    os.environ["HWTESTS_CACHE"] = str(cache)
    saved = set(debkernel._updated)
    debkernel._updated.clear()
    try:
        yield cache
    finally:
        debkernel._updated.clear()
        debkernel._updated.update(saved)
        if old is None:
            os.environ.pop("HWTESTS_CACHE", None)
        else:
            os.environ["HWTESTS_CACHE"] = old


def _update(arch: debkernel.Archive) -> None:
    try:
        debkernel.apt_update(arch, "test", force=True)
    except InfraError as exc:
        unavailable(f"Debian's archive not reachable: {exc}")


# -- the private configuration against Debian's archive --------------------------------------------

@pytest.mark.parametrize("archive,labels", [("bookworm", ("deb6.1", "deb6.12")), ("trixie-backports", ("deb7",))])
def test_private_apt_resolves_the_lab_kernels(private_cache, archive, labels):
    arch = debkernel.ARCHIVES[archive]
    before = snapshot(*MACHINE_APT)
    _update(arch)
    root = arch.root()
    assert root.is_relative_to(private_cache)
    assert any(root.joinpath("lists").glob("*_Packages*")), "no package lists in the private lists dir"
    for label in labels:
        _arch_name, series, minimum = debkernel.BUILDS[label]
        rel = debkernel.newest(series, require=("image", "headers"), archive=arch, minimum=minimum)
        assert debkernel.archive_for(rel) == arch
        assert debkernel.version_key(rel)[:len(minimum)] >= minimum
        pkgs = debkernel.image_packages(rel, arch)
        if series == "7":
            assert pkgs == [f"linux-binary-unsigned-{rel}", f"linux-base-{rel}", f"linux-modules-{rel}"]
        else:
            assert pkgs == [f"linux-image-{rel}-unsigned"]
        hdr = debkernel.index_entry(arch, f"linux-headers-{rel}")
        assert hdr is not None
        deps = debkernel.headers_deps(debkernel.parse_depends(hdr["Depends"]))
        assert any(d.startswith("linux-kbuild-") for d in deps) and any(d.endswith("-common") for d in deps)
        for pkg in pkgs + [f"linux-headers-{rel}"] + deps:
            entry = debkernel.index_entry(arch, pkg)
            assert entry is not None, pkg
            assert len(entry["SHA256"]) == 64 and int(entry["Size"]) > 0, pkg
            pol = debkernel.apt_cache(arch, "policy", pkg).stdout
            assert "Candidate: (none)" not in pol and f"Candidate: {entry['Version']}" in pol, pol
            suites = {s.split()[3] for s in arch.sources}
            assert any(f" {s}/main amd64 Packages" in pol for s in suites), pol
        # the source of the kernel (for rebuilding kbuild helpers) is in the same archive
        assert debkernel.index_entry(arch, f"linux-source-{'.'.join(rel.split('.')[:2])}") is not None
    # the other archive's kernels are not visible: the machine's sources are not read either
    other = debkernel.ARCHIVES["bookworm" if archive != "bookworm" else "trixie-backports"]
    search = debkernel.apt_cache(arch, "search", "--names-only", "^linux-(image|binary-unsigned)-[0-9]").stdout
    rels = set(debkernel.parse_kernel_packages(search))
    assert rels and all(debkernel.archive_for(r) == arch for r in rels), sorted(rels)[:5]
    assert other.root().is_relative_to(private_cache)
    after = snapshot(*MACHINE_APT)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:3]


def test_resolve_caches_the_label(private_cache):
    _update(debkernel.ARCHIVES["trixie-backports"])
    rel = debkernel.resolve("deb7", progress=lambda s: None)
    assert rel.startswith("7.") and rel.endswith("+deb13-cloud-amd64")
    saved = (private_cache / "kernels" / "resolved.json").read_text()
    assert rel in saved
    # a cached entry is used without asking apt: break the private sources to prove it
    sl = debkernel.ARCHIVES["trixie-backports"].root() / "sources.list"
    text = sl.read_text()
    try:
        sl.write_text("")
        assert debkernel.resolve("deb7", progress=lambda s: None) == rel
    finally:
        sl.write_text(text)
    with pytest.raises(InputError, match="no kernel build 'deb9'"):
        debkernel.resolve("deb9")


def _fake_deb(path: Path, package: str, version: str) -> None:
    """A real .deb (dpkg-deb --build) named like the index's package, with other contents."""
    d = path.parent / "fake-pkg"
    (d / "DEBIAN").mkdir(parents=True)
    (d / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: hwtests <x@example.org>\n"
        "Description: not the real package\n")
    (d / "boot").mkdir()
    (d / "boot" / "vmlinuz-x").write_bytes(b"not a kernel")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(d), str(path)], check=True,
                   capture_output=True, timeout=60)
    shutil.rmtree(d)


def test_package_failing_its_checksum_is_refused_and_removed(private_cache):
    arch = debkernel.ARCHIVES["bookworm"]
    _update(arch)
    rel = debkernel.newest("6.1", require=("image", "headers"), archive=arch)
    pkg = f"linux-image-{rel}-unsigned"
    version = debkernel.index_entry(arch, pkg)["Version"]
    kernels = private_cache / "kernels"
    debs = kernels / rel / "debs"
    debs.mkdir(parents=True)
    fake = debs / f"{pkg}_{version}_amd64.deb"
    _fake_deb(fake, pkg, version)
    with pytest.raises(InfraError) as ei:
        debkernel.fetch(rel, kernels, what=("image",), progress=lambda s: None)
    msg = str(ei.value)
    assert "\n" not in msg and f"package {pkg}: {fake.name} fails its checksum" in msg
    assert not fake.exists() and not (kernels / rel / "image").exists()


def test_missing_kernel_package_is_one_line(private_cache):
    _update(debkernel.ARCHIVES["bookworm"])
    with pytest.raises(InfraError) as ei:
        debkernel.fetch("6.1.0-999-cloud-amd64", private_cache / "kernels", what=("image",), progress=lambda s: None)
    msg = str(ei.value)
    assert "\n" not in msg and "6.1.0-999-cloud-amd64" in msg and "package index of bookworm" in msg
    assert ei.value.exit_code == 4


def test_keyring_holds_the_bookworm_and_trixie_keys():
    if shutil.which("gpg") is None:
        pytest.skip("gpg not installed: cannot list the keyring's keys")
    if not debkernel.KEYRING.is_file():
        unavailable(f"{debkernel.KEYRING} missing (apt-get install debian-archive-keyring)")
    p = subprocess.run(["gpg", "--show-keys", "--with-colons", str(debkernel.KEYRING)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "GNUPGHOME": str(Path(os.environ.get("TMPDIR", "/tmp")))})
    uids = [ln.split(":")[9] for ln in p.stdout.splitlines() if ln.startswith("uid:")]
    assert any("Archive Automatic Signing Key (12/bookworm)" in u for u in uids), uids
    assert any("Archive Automatic Signing Key (13/trixie)" in u for u in uids), uids


# -- pure ---------------------------------------------------------------------------------------------

def test_archive_for_release():
    assert debkernel.archive_for("6.1.0-57-cloud-amd64").name == "bookworm"
    assert debkernel.archive_for("6.12.118+deb12-cloud-amd64").name == "bookworm"
    assert debkernel.archive_for("7.3.4+deb13-cloud-amd64").name == "trixie-backports"
    assert debkernel.archive_for("7").name == "trixie-backports"


def test_apt_options_are_all_private(monkeypatch, tmp_path):
    monkeypatch.setenv("HWTESTS_CACHE", str(tmp_path))
    opts = debkernel.apt_options(debkernel.ARCHIVES["trixie-backports"])
    pairs = dict(o.split("=", 1) for o in opts[1::2])
    for key in ("Dir::Etc::sourcelist", "Dir::Etc::sourceparts", "Dir::State::Lists", "Dir::Cache",
                "Dir::State::status", "Dir::Etc::preferencesparts", "Dir::Etc::trustedparts"):
        assert Path(pairs[key]).is_relative_to(tmp_path / "apt" / "trixie-backports"), key
    assert all(s.startswith(f"deb [signed-by={debkernel.KEYRING}] ") for s in debkernel.ARCHIVES["bookworm"].sources)


def test_kernel_package_names():
    out = ("linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1\n"
           "linux-headers-6.1.0-57-cloud-amd64 - Linux 6.1\n"
           "linux-binary-unsigned-7.3.4+deb13-cloud-amd64 - Linux 7.3.4\n"
           "linux-headers-7.3.4+deb13-cloud-amd64 - Linux 7.3.4\n"
           "linux-binary-7.2.12+deb13-cloud-amd64 - Linux 7.2.12\n"
           "linux-image-7.3.4+deb13-cloud-amd64-dbg - debug\n"
           "linux-headers-7.3.4+deb13-amd64 - other flavour\n")
    have = debkernel.parse_kernel_packages(out)
    assert have == {"6.1.0-57-cloud-amd64": {"image", "headers"}, "7.3.4+deb13-cloud-amd64": {"image", "headers"},
                    "7.2.12+deb13-cloud-amd64": {"image"}}
    rels = ["7.0.13+deb13-cloud-amd64", "7.1.13+deb13-cloud-amd64", "7.10.1+deb13-cloud-amd64",
            "7.3.4+deb13-cloud-amd64", "6.12.118+deb12-cloud-amd64", "6.1.0-57-cloud-amd64"]
    assert debkernel.pick_newest(rels, "7", (7, 1)) == "7.10.1+deb13-cloud-amd64"
    assert debkernel.pick_newest(rels[:1], "7", (7, 1)) is None
    assert debkernel.pick_newest(rels, "6.1") == "6.1.0-57-cloud-amd64"
    assert debkernel.pick_newest(rels, "6.12") == "6.12.118+deb12-cloud-amd64"
    assert debkernel.parse_control("Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\n") == {
        "Package": "a", "Version": "1", "Description": "x\nmore"}


def test_headers_makefile_moved_into_the_cache():
    shipped = ("KBUILD_OUTPUT=/usr/src/linux-headers-7.3.4+deb13-cloud-amd64\n"
               "include /usr/src/linux-headers-7.3.4+deb13-common/Makefile\n")
    once = debkernel.fix_makefile(shipped, Path("/c/a"))
    assert once == ("KBUILD_OUTPUT=/c/a/usr/src/linux-headers-7.3.4+deb13-cloud-amd64\n"
                    "include /c/a/usr/src/linux-headers-7.3.4+deb13-common/Makefile\n")
    assert debkernel.fix_makefile(once, Path("/c/b")) == once.replace("/c/a/", "/c/b/")


def test_lab_labels():
    assert labvm.labels_for(["6.12.118+deb12-cloud-amd64", "6.1.0-57-cloud-amd64", "7.3.4+deb13-cloud-amd64"]) == {
        "deb6.12": "6.12.118+deb12-cloud-amd64", "deb6.1": "6.1.0-57-cloud-amd64", "deb7": "7.3.4+deb13-cloud-amd64"}
    assert list(labvm.labels_for(["7.2.12+deb13-cloud-amd64", "7.3.4+deb13-cloud-amd64"])) == [
        "7.2.12+deb13-cloud-amd64", "7.3.4+deb13-cloud-amd64"]
    assert set(labvm.DEFAULT_BUILDS) == set(debkernel.BUILDS)


def test_offsets_header():
    asm = ('\t.ascii "->SIZE_usb_device_id $32 sizeof(struct usb_device_id)"\t#\n'
           'foo:\n\t.ascii "->OFF_x_y $2 offsetof(struct x, y)"\n')
    h = kbuildprep.offsets_header(asm)
    assert "#define SIZE_usb_device_id 32 /* sizeof(struct usb_device_id) */" in h
    assert "#define OFF_x_y 2 /* offsetof(struct x, y) */" in h
    assert h.startswith("#ifndef __DEVICETABLE_OFFSETS_H__") and h.rstrip().endswith("#endif")

