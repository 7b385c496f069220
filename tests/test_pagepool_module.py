"""The page_pool bench module and hwtests.pagepool.

- the module builds against the headers of the VM lab's builds (Debian 12's newest
  6.1 and 6.12, trixie-backports' newest 7.x cloud-amd64 kernel; downloaded and
  unpacked with hwtests.debkernel, prepared with hwtests.kbuildprep), without
  compiler warnings, outside the source tree, with the right vermagic;
- `pagepool.build` on a host (here: this machine through LocalTransport) and its
  one-line compiler error;
- `run_bench`'s load/collect/unload sequence against a simulated host (this
  machine's kernel cannot load modules: the simulation stands in for insmod,
  rmmod and /dev/kmsg, everything else runs for real);
- source layouts (ours, upstream selftest, prototype-kernel) and capability checks.

Building needs make, gcc-12 (the compiler of Debian 12's kernels) and libelf1;
7.x (built with gcc-14, its kbuild helpers linked against glibc 2.41) is built
with the local gcc and helpers rebuilt from linux-source (libelf-dev). Where the
package index or the tools are missing the build tests skip naming why, except
in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import booted_vm_lab, unavailable
from hwtests import debkernel, kbuildprep, pagepool, timebench, vmimage
from hwtests.errors import HwtestsError, InfraError, InputError
from hwtests.transport import CmdResult, LocalTransport

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "pagepool"
SERIES = ("6.1", "6.12", "7")
LABELS = {"6.1": "deb6.1", "6.12": "deb6.12", "7": "deb7"}    # the VM lab's builds (hwtests.debkernel.BUILDS)


_kernels: dict[str, debkernel.DebKernel] = {}


def headers(series: str) -> debkernel.DebKernel:
    """Headers of the lab's `series` build (newest 6.1 / 6.12 of Debian 12, newest 7.x of
    trixie-backports), from the shared download cache, prepared for building here
    (hwtests.kbuildprep); a tree that cannot build here skips naming why."""
    if series not in _kernels:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            unavailable("not a Debian-based machine (no apt-get/dpkg-deb)")
        try:
            rel = debkernel.resolve(LABELS[series])
            _kernels[series] = debkernel.fetch(rel, vmimage.cache_root() / "kernels", what=("headers",))
        except HwtestsError as exc:
            unavailable(f"Debian {series} headers: {exc}")
    dk = _kernels[series]
    prep = kbuildprep.prepare(dk)
    if not prep.ok:
        unavailable(prep.reason)
    # the kernel's compiler may be missing when the tree was prepared for the local gcc
    local_cc = any(a.startswith("CC=") for a in prep.make_args)
    kcc = kbuildprep.kernel_compiler(dk.headers_dir)
    missing = [m for m in debkernel.missing_build_tools(dk) if not (local_cc and m == kcc)]
    if missing:
        unavailable(f"building modules needs: apt-get install {' '.join(missing)}")
    return dk


def make_module(dk: debkernel.DebKernel, src: Path, build: Path) -> subprocess.CompletedProcess:
    shutil.copytree(src, build)
    return subprocess.run(["make", "-C", str(dk.headers_dir), f"M={build}", "modules",
                           *kbuildprep.make_args(dk.headers_dir)],
                          capture_output=True, text=True, timeout=600)


def compiler_warnings(stderr: str) -> list[str]:
    """Warning lines of a build log, without kbuild's pahole notice (module BTF is off without pahole)."""
    return [ln for ln in stderr.splitlines() if "warning:" in ln
            and not (ln.startswith("warning: pahole version differs") and shutil.which("pahole") is None)]


# -- the module against Debian's kernels -----------------------------------------------------

@pytest.mark.parametrize("series", SERIES)
def test_module_builds_for_debian_kernel(series, tmp_path):
    dk = headers(series)
    before = subprocess.run(["git", "status", "--porcelain", "--ignored", "--", "fixtures/pagepool"],
                            cwd=REPO, capture_output=True, text=True).stdout
    p = make_module(dk, pagepool.FIXTURE, tmp_path / "build")
    assert p.returncode == 0, f"make failed: {pagepool.first_error(p.stderr + p.stdout)}"
    assert compiler_warnings(p.stderr) == [], p.stderr
    ko = tmp_path / "build" / "hwt_pp_bench.ko"
    info = pagepool.modinfo(ko.read_bytes())
    assert info["vermagic"][0].split()[0] == dk.release
    assert info["license"] == ["GPL"]
    assert {x.split(":")[0] for x in info["parm"]} == {"loops", "run_flags"}
    assert pagepool.vermagic_release(ko.read_bytes()) == dk.release
    if shutil.which("modinfo"):
        out = subprocess.run(["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True).stdout
        assert out.split()[0] == dk.release
    # the build stayed out of the source tree
    after = subprocess.run(["git", "status", "--porcelain", "--ignored", "--", "fixtures/pagepool"],
                           cwd=REPO, capture_output=True, text=True).stdout
    assert after == before
    assert sorted(p.name for p in pagepool.FIXTURE.iterdir()) == ["Makefile", "hwt_pp_bench.c"]


def test_headers_tree_is_fixed_and_reused(tmp_path):
    dk = headers("6.12")
    mk = (dk.headers_dir / "Makefile").read_text()
    inc = re.match(r"include (\S+)$", mk.strip())
    assert inc and Path(inc.group(1)).is_file() and not inc.group(1).startswith("/usr/src/")
    build_link = dk.headers_dir.parent.parent.parent / "lib" / "modules" / dk.release / "build"
    assert build_link.resolve() == dk.headers_dir.resolve()
    again = debkernel.fetch(dk.release, dk.headers_dir.parents[4], what=("headers",))   # cached: no download
    assert again.headers_dir == dk.headers_dir
    assert set(again.packages) == {f"linux-headers-{dk.release}"} | {
        p for p in again.packages if p.startswith(("linux-headers-", "linux-kbuild-"))}
    assert any(p.startswith("linux-kbuild-") for p in again.packages)
    assert any(p.endswith("-common") for p in again.packages)



def test_deb7_headers_prepared_for_this_machine():
    """What kbuildprep did to the 7.x tree is what this machine needs, and the shipped helpers it
    replaced really cannot run here."""
    dk = headers("7")
    prep = kbuildprep.prepare(dk)
    kbuild = (dk.headers_dir / "scripts").resolve().parent
    assert not [b for b in kbuildprep.unrunnable(kbuild) if b in kbuildprep.NEEDED_TOOLS]
    for rel in prep.rebuilt:
        shipped = kbuild / (rel + ".debian")
        assert shipped.is_file()
        r = subprocess.run(["ldd", str(shipped)], capture_output=True, text=True, timeout=30)
        assert "not found" in r.stdout + r.stderr, rel          # the reason it was rebuilt
    kcc = kbuildprep.kernel_compiler(dk.headers_dir)
    if shutil.which(kcc) or shutil.which(f"x86_64-linux-gnu-{kcc}"):
        assert not any(a.startswith("CC=") for a in prep.make_args)
    else:
        cc = next(a for a in prep.make_args if a.startswith("CC="))[3:]
        assert shutil.which(cc) and any(a.startswith("CONFIG_GCC_VERSION=") for a in prep.make_args)
        rejects = subprocess.run([cc, "-Werror", "-fmin-function-alignment=16", "-x", "c", "-c", "-o", os.devnull,
                                  "-"], input="int x;\n", capture_output=True, text=True).returncode != 0
        assert ("CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=" in prep.make_args) == rejects
    assert (dk.headers_dir / kbuildprep.ARGS_FILE).read_text().split() == prep.make_args


def test_tree_that_cannot_build_is_a_blocker_naming_why(tmp_path):
    """pagepool's host facts read the blocker kbuildprep leaves in a headers dir, and its make arguments."""
    kdir = tmp_path / "headers"
    kdir.mkdir()
    (kdir / "Makefile").write_text("# a headers tree\n")
    (kdir / kbuildprep.ARGS_FILE).write_text("CC=gcc-12\nCONFIG_X=\nbad arg;rm\n")
    why = "building modules against the 7.9.9 headers on this machine: objtool: did not finish within 900 s"
    (kdir / kbuildprep.BLOCKER_FILE).write_text(why + "\n")
    with LocalTransport("local") as t:
        f = pagepool.host_facts(t, str(kdir))
    assert pagepool.build_blocker(f) == why
    assert f["kcc"] == "gcc-12"
    args = pagepool.make_args(f)
    assert args[:2] == ["CC=gcc-12", "CONFIG_X="] and not any(";" in a for a in args)
    assert kbuildprep.blocker(kdir) == why and kbuildprep.make_args(kdir)[:2] == ["CC=gcc-12", "CONFIG_X="]

def test_host_build_and_compiler_error_line():
    """pagepool.build on a host (this machine) against a given build dir."""
    dk = headers("6.12")
    with LocalTransport("local") as t:
        st = pagepool.local_source(pagepool.FIXTURE)
        kos = pagepool.build(t, st, str(dk.headers_dir))
        assert list(kos) == ["hwt_pp_bench"]
        data = t.read_file(kos["hwt_pp_bench"])
        assert pagepool.vermagic_release(data) == dk.release
        assert kos["hwt_pp_bench"].startswith(t.tmpdir)
        st.files["hwt_pp_bench.c"] += b"\nint hwt_broken(void) { return no_such_symbol; }\n"
        with pytest.raises(InfraError) as ei:
            pagepool.build(t, st, str(dk.headers_dir))
        msg = str(ei.value)
        assert "\n" not in msg and "error:" in msg and "no_such_symbol" in msg and msg.startswith("local: building")


# -- pure helpers ----------------------------------------------------------------------------------

def test_kmsg_sequence_filter():
    text = (DATA / "hwt_pp_bench-612-tcg.kmsg").read_text()
    assert pagepool.last_seq(text) == 367
    new = pagepool.records_after(text, 357)
    assert new.splitlines()[0].startswith("6,358,")
    r = timebench.parse(new)
    assert len(r.records) == 7 and not r.warnings
    # continuation lines go with their record
    assert pagepool.records_after("6,10,1,-;a\n SUBSYSTEM=x\n6,11,2,-;b\n DEVICE=y\n", 10) == "6,11,2,-;b\n DEVICE=y\n"
    assert pagepool.records_after("", 3) == "" and pagepool.last_seq("") == -1


def test_blockers():
    ok = {"uid": "0", "proc_modules": "1", "modules_disabled": "0", "have_insmod": "1", "have_rmmod": "1",
          "kmsg": "1", "have_dd": "1", "build": "1", "have_make": "1", "have_gcc": "1", "release": "6.12.1"}
    assert pagepool.load_blocker(ok) is None and pagepool.build_blocker(ok) is None
    assert "/proc/modules" in pagepool.load_blocker({**ok, "proc_modules": "0"})
    assert "modules_disabled" in pagepool.load_blocker({**ok, "modules_disabled": "1"})
    assert "not root" in pagepool.load_blocker({**ok, "uid": "1000"})
    assert "sig_enforce" in pagepool.load_blocker({**ok, "sig_enforce": "Y"})
    assert "lockdown" in pagepool.load_blocker({**ok, "lockdown": "none [integrity] confidentiality"})
    assert pagepool.load_blocker({**ok, "lockdown": "[none] integrity confidentiality"}) is None
    assert "kmod" in pagepool.load_blocker({**ok, "have_insmod": "0"})
    assert "linux-headers-6.12.1" in pagepool.build_blocker({**ok, "build": "0", "build_dir": "/lib/modules/6.12.1/build"})
    assert "gcc-12" in pagepool.build_blocker({**ok, "kcc": "gcc-12"})
    assert pagepool.build_blocker({**ok, "kcc": "gcc-12", "have_kcc": "1"}) is None


def test_this_machine_cannot_load_modules():
    with LocalTransport("local") as t:
        f = pagepool.host_facts(t)
        ok, why = pagepool.can_load_modules(t)
        if f.get("proc_modules") != "1":
            assert not ok and "/proc/modules" in why
        assert ok == (pagepool.load_blocker(f) is None and pagepool.build_blocker(f) is None)
        if not ok:
            with pytest.raises(InfraError) as ei:
                pagepool.run_bench(t, None, loops=1000, repeat=1)
            assert str(ei.value).startswith("local: cannot load the page_pool bench module: ")


def test_modinfo_rejects_non_modules(tmp_path):
    with pytest.raises(InputError):
        pagepool.modinfo(b"not an elf")
    with pytest.raises(InputError):
        pagepool.modinfo(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    elf = Path("/bin/true").read_bytes()
    with pytest.raises(InputError, match="no .modinfo"):
        pagepool.modinfo(elf)


def test_sample_values():
    full = timebench.parse("time_bench: Type:x Per elem: 19 cycles(tsc) 5.279 ns (step:0) - (measurement period "
                           "time:0.052792911 sec time_interval:52792911) - (invoke count:10000000 "
                           "tsc_interval:190054880)").records[0]
    assert pagepool.sample_values(full) == {"cycles": (190054880 / 10000000, True), "ns": (52792911 / 10000000, True)}
    grepd = timebench.parse("x Per elem: 19 cycles(tsc) 5.279 ns").records[0]
    assert pagepool.sample_values(grepd) == {"cycles": (19.0, False), "ns": (5.279, False)}
    s = pagepool.to_samples([full], repetition=3, boot_id="b", host="h")
    assert [(x.test, x.metric, x.unit, x.better, x.repetition, x.boot_id, x.host) for x in s] == [
        ("pagepool/x", "cycles", "cycles", "lower", 3, "b", "h"), ("pagepool/x", "ns", "ns", "lower", 3, "b", "h")]


# -- source layouts --------------------------------------------------------------------------------

def _touch(root: Path, rel: str, text: str = "/* placeholder */\n") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _upstream_tree(root: Path) -> Path:
    d = root / pagepool.SELFTEST_REL
    for f in ("bench_page_pool_simple.c", "time_bench.c", "time_bench.h"):
        _touch(d, f)
    _touch(d, "Makefile", "obj-m += bench_page_pool.o\nbench_page_pool-y += bench_page_pool_simple.o time_bench.o\n")
    _touch(root, "Makefile", "# a kernel tree\n")
    return root


def _oot_tree(root: Path) -> Path:
    for f in ("kernel/lib/bench_page_pool_simple.c", "kernel/lib/time_bench.c", "kernel/include/linux/time_bench.h",
              "kernel/lib/Kbuild"):
        _touch(root, f)
    return root


def test_layouts_on_the_controller(tmp_path):
    ours = pagepool.local_source(pagepool.FIXTURE)
    assert (ours.kind, ours.modules, sorted(ours.files)) == ("hwt", ["hwt_pp_bench"], ["Makefile", "hwt_pp_bench.c"])
    up = _upstream_tree(tmp_path / "linux")
    for given in (up, up / "tools/testing/selftests/net/bench", up / pagepool.SELFTEST_REL):
        st = pagepool.local_source(given)
        assert st.kind == "upstream" and st.modules == ["bench_page_pool"], given
        assert sorted(st.files) == ["Makefile", "bench_page_pool_simple.c", "time_bench.c", "time_bench.h"]
    oot = _oot_tree(tmp_path / "prototype-kernel")
    for given in (oot, oot / "kernel", oot / "kernel/lib"):
        st = pagepool.local_source(given)
        assert st.kind == "oot" and st.modules == ["time_bench", "bench_page_pool_simple"], given
        assert sorted(st.files) == ["Kbuild", "Makefile", "bench_page_pool_simple.c", "include/linux/time_bench.h",
                                    "time_bench.c"]
    with pytest.raises(InputError, match="no hwt_pp_bench.c"):
        pagepool.local_source(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        pagepool.local_source(tmp_path / "nope")


def test_layouts_on_the_host_take_precedence(tmp_path):
    up = _upstream_tree(tmp_path / "linux")
    with LocalTransport("local") as t:
        st = pagepool.source_for_host(t, str(up))
        assert st.kind == "upstream" and st.origin == f"local:{up / pagepool.SELFTEST_REL}"
        assert st.files["Makefile"].startswith(b"obj-m += bench_page_pool.o")
        assert pagepool.source_for_host(t, None).kind == "hwt"
        oot = _oot_tree(tmp_path / "pk")
        assert pagepool.host_source(t, str(oot / "kernel")).kind == "oot"
        assert pagepool.host_source(t, str(tmp_path / "missing")) is None
        with pytest.raises(InputError, match="neither on the host nor on the controller"):
            pagepool.source_for_host(t, str(tmp_path / "missing"))


# -- run_bench against a simulated host ---------------------------------------------------------

class SimHost(LocalTransport):
    """This machine, except that insmod/rmmod, /sys/module and /dev/kmsg are simulated
    (they are what this kernel lacks); uploads, temp dirs, sha256sum run for real."""

    def __init__(self, template: str, release: str, fail_insmod: str | None = None):
        super().__init__("sim")
        self.release = release
        self.kmsg: list[str] = [f"6,{i},{i * 1000},-;boot line {i}" for i in range(1, 40)]
        self.loaded: set[str] = set()
        self.template = [ln for ln in template.splitlines() if ln.startswith("6,") and re.search(r"hwt_pp_bench: (Type:|Done)", ln)]
        self.fail_insmod = fail_insmod
        self.commands: list[str] = []

    def _seq(self) -> int:
        return int(self.kmsg[-1].split(",")[1])

    def _log(self, msg: str, level: int = 6) -> None:
        n = self._seq() + 1
        self.kmsg.append(f"{level},{n},{n * 1000},-;{msg}")

    def _exec(self, line, timeout, input):
        argv = shlex.split(line) if not line.startswith("sh -c") or "dd if=/dev/kmsg" not in line else ["kmsg"]
        if "_CAP" in line or "echo \"uid=$(id -u)\"" in line:
            out = (f"uid=0\nrelease={self.release}\nproc_modules=1\nmodules_disabled=0\nbuild=1\n"
                   f"build_dir=/lib/modules/{self.release}/build\nhave_insmod=1\nhave_rmmod=1\n"
                   "have_make=1\nhave_gcc=1\nhave_dd=1\nkmsg=1\n")
            return CmdResult(line, 0, out, "", 0.0)
        if argv == ["kmsg"]:
            return CmdResult(line, 0, "\n".join(self.kmsg) + "\n", "", 0.0)
        if argv and argv[0] == "insmod":
            self.commands.append(line)
            name = "hwt_pp_bench"
            if self.fail_insmod:
                self._log("hwt_pp_bench: Module param loops(10) outside 1000..4294967295", 3)
                return CmdResult(line, 1, "", f"insmod: ERROR: could not insert module {argv[1]}: "
                                              f"{self.fail_insmod}\n", 0.0)
            self._log("random: crng reseeded")                          # noise before and between
            self._log(f"{name}: Loaded ({' '.join(argv[2:])})")
            for ln in self.template:
                self._log(ln.split(";", 1)[1])
            self.loaded.add(name)
            return CmdResult(line, 0, "", "", 0.0)
        if argv and argv[0] == "rmmod":
            self.commands.append(line)
            self.loaded.discard(argv[1])
            self._log(f"{argv[1]}: Unloaded")
            return CmdResult(line, 0, "", "", 0.0)
        if argv[:2] == ["test", "-d"] and argv[2].startswith("/sys/module/"):
            return CmdResult(line, 0 if argv[2].rsplit("/", 1)[1] in self.loaded else 1, "", "", 0.0)
        if argv[:1] == ["cat"] and argv[1] == "/proc/sys/kernel/random/boot_id":
            return CmdResult(line, 0, "0e3b1c2d-aaaa-bbbb-cccc-000000000001\n", "", 0.0)
        return super()._exec(line, timeout, input)


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory) -> tuple[Path, str]:
    """hwt_pp_bench.ko built on the controller for Debian's newest 6.12 kernel, and that release."""
    dk = headers("6.12")
    build = tmp_path_factory.mktemp("ko") / "build"
    p = make_module(dk, pagepool.FIXTURE, build)
    assert p.returncode == 0, pagepool.first_error(p.stderr)
    return build / "hwt_pp_bench.ko", dk.release


def test_run_bench_sequence_on_simulated_host(prebuilt):
    prebuilt_ko, release = prebuilt
    sim = SimHost((DATA / "hwt_pp_bench-612-tcg.kmsg").read_text(), release)
    sim.loaded.add("hwt_pp_bench")                  # left loaded by an earlier run
    with sim:
        res = pagepool.run_bench(sim, prebuilt_ko, loops=200000, run_flags=0x7f, repeat=3, cpu=1)
    assert [r.repetition for r in res] == [0, 1, 2]
    assert sim.commands[0] == "rmmod hwt_pp_bench"   # cleaned up first
    inserts = [c for c in sim.commands if c.startswith(("insmod", "taskset"))]
    assert len(inserts) == 4                         # warm-up + 3
    assert all(re.search(r"insmod \S+hwt_pp_bench\.ko loops=200000 run_flags=127$", c) for c in inserts)
    assert sim.loaded == set()
    for r in res:
        assert r.module == "hwt_pp_bench" and r.source_kind == "prebuilt" and r.boot_id.endswith("0001")
        assert len(r.records) == 7 and r.warnings == []
        assert r.params == {"loops": 200000, "run_flags": 127}
        assert r.artifacts["hwt_pp_bench.ko"] == __import__("hashlib").sha256(prebuilt_ko.read_bytes()).hexdigest()
        # only this load's records: starts at its own Loaded line, no Unloaded of the previous load
        assert "Loaded (loops=200000" in r.log.splitlines()[1] and r.log.count("Loaded (") == 1
        assert "Unloaded" not in r.log
        assert int(r.log.splitlines()[0].split(",")[1]) == r.seq_from + 1
    assert len({r.seq_from for r in res}) == 3


def test_run_bench_insmod_error_is_one_line(prebuilt):
    prebuilt_ko, release = prebuilt
    sim = SimHost((DATA / "hwt_pp_bench-612-tcg.kmsg").read_text(), release, fail_insmod="Operation not permitted")
    with sim, pytest.raises(InfraError) as ei:
        pagepool.run_bench(sim, prebuilt_ko, loops=1000, repeat=1)
    msg = str(ei.value)
    assert msg.startswith("sim: insmod: ERROR: could not insert module ") and "Operation not permitted" in msg
    assert "(kernel: hwt_pp_bench: Module param loops(10) outside" in msg and "\n" not in msg


def test_prebuilt_for_another_kernel_is_refused(prebuilt, tmp_path):
    prebuilt_ko, release = prebuilt
    sim = SimHost("", release)
    wrong = tmp_path / "hwt_pp_bench.ko"
    other = ("9.9.9-" + "x" * len(release))[:len(release)]         # same length: the ELF layout stays valid
    wrong.write_bytes(prebuilt_ko.read_bytes().replace(f"vermagic={release}".encode(), f"vermagic={other}".encode()))
    with sim, pytest.raises(InputError, match=f"was built for kernel {other}, but sim runs {re.escape(release)}"):
        pagepool.run_bench(sim, wrong, loops=1000, repeat=1)
    with sim, pytest.raises(InputError, match="loops must be"):
        pagepool.run_bench(sim, prebuilt_ko, loops=10, repeat=1)


# -- a real load: Debian 6.12 in the QEMU (TCG) VM lab ----------------------------------------------

@pytest.mark.vmlab
def test_run_bench_in_a_debian_guest(prebuilt, tmp_path):
    """Build on the controller, upload, insmod/collect/rmmod over SSH in a Debian 6.12 guest."""
    from hwtests import hostconn, inventory
    prebuilt_ko, release = prebuilt
    with booted_vm_lab(tmp_path / "lab", [release]) as inv_path:
        inv = inventory.load(inv_path)
        t = hostconn.connect(inv.hosts["vm-a"], inv.defaults, inv)
        try:
            assert pagepool.can_load_modules(t, need_build=False) == (True, "")
            ok, why = pagepool.can_load_modules(t)             # the guest has no headers
            assert not ok and f"/lib/modules/{release}/build" in why
            res = pagepool.run_bench(t, prebuilt_ko, loops=5000, run_flags=0x7f, repeat=2)
            assert [r.repetition for r in res] == [0, 1]
            for r in res:
                assert [x.type for x in r.records] == [
                    "for_loop", "no-softirq-page_pool01", "no-softirq-page_pool02", "no-softirq-page_pool03",
                    "tasklet_page_pool01_fast_path", "tasklet_page_pool02_ptr_ring", "tasklet_page_pool03_slow"]
                assert r.warnings == [] and r.kernel_release == release
                assert all(x.invoke_count == 5000 and x.tsc_interval > 0 for x in r.records)
            assert res[0].seq_from < res[1].seq_from
            assert not t.run(["test", "-d", "/sys/module/hwt_pp_bench"], check=False).ok     # unloaded
            # the kernel's own reason comes back on one line
            bad = tmp_path / "bad.ko"
            bad.write_bytes(prebuilt_ko.read_bytes().replace(b"mod_unload", b"mod_unlaad"))
            with pytest.raises(InfraError) as ei:
                pagepool.run_bench(t, bad, loops=1000, repeat=1, discard_first=False)
            assert "invalid module format" in str(ei.value).lower() and "version magic" in str(ei.value)
        finally:
            t.close()


@pytest.mark.vmlab
def test_run_bench_in_a_deb7_guest(tmp_path):
    """Debian's 7.x kernel (gcc-14, glibc 2.41 helpers): built on the controller with the local gcc
    and rebuilt helpers, as the suite does (controller_build_dir), then loaded in a 7.x guest."""
    from hwtests import hostconn, inventory
    dk = headers("7")
    with booted_vm_lab(tmp_path / "lab", [dk.release]) as inv_path:
        inv = inventory.load(inv_path)
        host = inv.hosts["vm-a"]
        kdir = pagepool.controller_headers(host.kernels, dk.release)
        assert kdir is not None and Path(kdir).resolve() == dk.headers_dir.resolve()
        t = hostconn.connect(host, inv.defaults, inv)
        try:
            res = pagepool.run_bench(t, pagepool.local_source(pagepool.FIXTURE), loops=5000, run_flags=0x7f,
                                     repeat=1, controller_build_dir=kdir)
            assert len(res) == 1 and res[0].kernel_release == dk.release and res[0].warnings == []
            assert len(res[0].records) == 7 and all(x.invoke_count == 5000 for x in res[0].records)
            dmesg = t.run("dmesg", timeout=20).stdout
            assert "hwt_pp_bench" in dmesg
            for bad in ("BUG:", "WARNING:", "Oops", "invalid module format", "Unknown symbol"):
                assert bad not in dmesg, bad
        finally:
            t.close()
