"""The QEMU (TCG) VM lab: real Debian kernels, real sshd, a VM-to-VM data link.

The lab boots once per session (`vm_lab`). Where it cannot be built (no QEMU,
no package index, ...) its tests skip naming why, except in CI (CI=true), where
an unavailable VM lab is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import booted_vm_lab, unavailable
from hwtests import hostconn, inventory, labvm, vmimage
from hwtests.errors import HwtestsError
from hwtests.store import Store
from hwtests.transport import HostKeyError

CLI = [sys.executable, "-m", "hwtests.cli"]


class Lab:
    def __init__(self, inv_path: Path, state: Path):
        self.inv_path = inv_path
        self.state = state
        self.inv = inventory.load(inv_path)

    def host(self, name: str):
        return self.inv.hosts[name]

    def t(self, name: str):
        return hostconn.connect(self.host(name), self.inv.defaults, self.inv)

    def run(self, name: str, cmd, **kw):
        t = self.t(name)
        try:
            return t.run(cmd, **kw)
        finally:
            t.close()

    def label_of(self, series: str) -> str:
        return next(lb for lb, kb in self.host("vm-a").kernels.items() if labvm.series_of(kb.release) == series)


@pytest.fixture(scope="session")
def lab_releases() -> list[str]:
    try:
        labvm.preflight()
        return labvm.default_releases()
    except HwtestsError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def vm_lab(tmp_path_factory, lab_releases):
    state = tmp_path_factory.mktemp("vmlab") / "state"
    with booted_vm_lab(state, lab_releases) as inv:
        yield Lab(inv, state)


def _boot_id(lab: Lab, name: str) -> str:
    return lab.run(name, "cat /proc/sys/kernel/random/boot_id", timeout=20).stdout.strip()


# ---------------------------------------------------------------- no VM needed


def test_qemu_argv_keeps_the_lab_off_the_network(tmp_path):
    st = labvm.LabState(token="t0k3n", sock_dir=str(tmp_path / "s"), kernels={"k": {"release": "6.12.1"}})
    vm = labvm.VMState(name="vm-a", port=40022, dir=str(tmp_path))
    argv = labvm.qemu_argv(st, vm, "/k/vmlinuz", "/k/initrd", "console=ttyS0")
    line = " ".join(argv)
    assert "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22" in line
    assert "dgram,id=data,local.type=unix" in line and "remote.type=unix" in line
    for banned in ("tap", "bridge", "hostfwd=tcp::", "0.0.0.0", "-accel kvm", "vhost"):
        assert banned not in line, banned
    assert "hwt-t0k3n-vm-a" in line          # how down() recognises its own processes


def test_cpio_archive_is_readable_by_cpio(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed")
    t = vmimage.Tree()
    t.file("/etc/x/y.txt", b"hello", 0o600)
    t.symlink("/bin/sh", "/bin/busybox")
    t.chardev("/dev/console", 5, 1)
    data = t.cpio()
    p = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, timeout=10)
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert "etc/x/y.txt" in out and "bin/sh -> /bin/busybox" in out and "dev/console" in out
    assert vmimage.Tree(dict(t.entries)).key() == t.key()     # stable key for the cache


def test_labels_for_releases():
    assert labvm.labels_for(["6.12.117+deb12-cloud-amd64", "6.1.0-56-cloud-amd64"]) == {
        "deb6.12": "6.12.117+deb12-cloud-amd64", "deb6.1": "6.1.0-56-cloud-amd64"}
    two = labvm.labels_for(["6.1.0-55-cloud-amd64", "6.1.0-56-cloud-amd64"])
    assert list(two) == ["6.1.0-55-cloud-amd64", "6.1.0-56-cloud-amd64"]


def test_down_leaves_foreign_directories_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    labvm.down(tmp_path)
    assert (tmp_path / "keep.txt").exists()


# ---------------------------------------------------------------- the lab


@pytest.mark.vmlab
def test_up_both_vms_reachable_with_verified_host_keys(vm_lab, lab_releases):
    boot_release = lab_releases[0]
    for name in labvm.VMS:
        r = vm_lab.run(name, "uname -r; hostname", timeout=20)
        release, hostname = r.stdout.split()
        assert release == boot_release
        assert hostname == name
        ssh = vm_lab.host(name).ssh
        assert ssh.host == "127.0.0.1" and ssh.known_hosts and Path(ssh.known_hosts).exists()
    # a known_hosts holding another key for the same port is refused
    other = vm_lab.state / "other_known_hosts"
    a, b = vm_lab.host("vm-a").ssh, vm_lab.host("vm-b").ssh
    b_key = Path(b.known_hosts).read_text().split()[1:]
    other.write_text(f"[127.0.0.1]:{a.port} {' '.join(b_key)}\n")
    a.known_hosts = str(other)
    try:
        with pytest.raises(HostKeyError):
            vm_lab.run("vm-a", "true", timeout=20)
    finally:
        vm_lab.inv = inventory.load(vm_lab.inv_path)


@pytest.mark.vmlab
def test_inventory_lists_every_kernel_build(vm_lab, lab_releases):
    for name in labvm.VMS:
        h = vm_lab.host(name)
        assert sorted(kb.release for kb in h.kernels.values()) == sorted(lab_releases)
        for kb in h.kernels.values():
            assert Path(kb.image).is_file() and Path(kb.initrd).is_file()
            assert f"hwt.hostname={name}" in kb.cmdline
            assert kb.headers is None or Path(kb.headers).is_dir()
        assert h.vm["name"] == name and h.vm["memory_mb"] > 0 and h.vm["smp"] >= 1
        assert h.nics["data"].ifname == "data0"
    assert list(vm_lab.inv.pairs) == ["vm"]


@pytest.mark.vmlab
def test_status_reports_running_vms(vm_lab):
    st = labvm.status(vm_lab.state)
    assert st["up"] is True
    for name in labvm.VMS:
        h = st["hosts"][name]
        assert h["alive"] and h["pid"] > 0 and h["ssh_port"] == vm_lab.host(name).ssh.port


@pytest.mark.vmlab
def test_data_link_between_the_vms(vm_lab):
    a, b = vm_lab.host("vm-a").nics["data"], vm_lab.host("vm-b").nics["data"]
    r = vm_lab.run("vm-b", ["ping", "-c", "3", "-W", "3", a.addr], timeout=30)
    assert " 0% packet loss" in r.stdout
    r = vm_lab.run("vm-b", ["ping", "-6", "-c", "2", "-W", "3", a.ipv6.split("/")[0]], timeout=30)
    assert " 0% packet loss" in r.stdout
    ta, tb = vm_lab.t("vm-a"), vm_lab.t("vm-b")
    try:
        srv = ta.start(["iperf3", "-s", "-1", "-B", a.addr, "-p", "5201"], name="iperf3-server")
        deadline = time.monotonic() + 20
        while f"{a.addr}:5201" not in ta.run(["ss", "-ltn"], timeout=10).stdout:
            assert time.monotonic() < deadline, "iperf3 server did not listen"
            time.sleep(0.2)
        r = tb.run(["iperf3", "-c", a.addr, "-p", "5201", "-t", "2", "-J"], timeout=60)
        res = json.loads(r.stdout)
        assert res["end"]["sum_received"]["bytes"] > 1_000_000
        srv.wait(timeout=20)
        # the data address is not reachable from the management side: sshd listens on mgmt0 only
        r = tb.run(f"nc -w 2 {a.addr} 22 </dev/null; echo rc=$?", timeout=20, check=False)
        assert "SSH-2.0" not in r.stdout
    finally:
        ta.close()
        tb.close()


@pytest.mark.vmlab
def test_switch_kernel_and_back(vm_lab, lab_releases):
    by_series = {labvm.series_of(r): r for r in lab_releases}
    if not {"6.1", "6.12"} <= by_series.keys():
        pytest.skip("needs a 6.1 and a 6.12 kernel")
    l61, l612 = vm_lab.label_of("6.1"), vm_lab.label_of("6.12")
    host = vm_lab.host("vm-a")
    start = vm_lab.run("vm-a", "uname -r", timeout=20).stdout.strip()
    plan = [l61, l612] if start == by_series["6.12"] else [l612, l61]
    for label in plan:
        before = _boot_id(vm_lab, "vm-a")
        labvm.switch_kernel(host, label)
        r = vm_lab.run("vm-a", "uname -r; cat /proc/sys/kernel/random/boot_id; "
                       "test -e /dev/udmabuf && echo udmabuf=yes || echo udmabuf=no", timeout=20)
        release, boot, udma = r.stdout.split()
        assert release == host.kernels[label].release
        assert boot != before
        assert udma == ("udmabuf=yes" if label == l612 else "udmabuf=no")
        # the peer still reaches the restarted VM over the data link
        r = vm_lab.run("vm-b", ["ping", "-c", "2", "-W", "3", host.nics["data"].addr], timeout=30)
        assert " 0% packet loss" in r.stdout
        assert labvm.status(vm_lab.state)["hosts"]["vm-a"]["kernel"] == label


@pytest.mark.vmlab
def test_parallel_switches_keep_both_vms_recorded(vm_lab, lab_releases):
    """Both VMs restarted at once: state.json ends up with both new PIDs (down needs them)."""
    import threading
    target = vm_lab.label_of("6.1") if any(labvm.series_of(r) == "6.1" for r in lab_releases) \
        else next(iter(vm_lab.host("vm-a").kernels))
    before = {n: labvm.status(vm_lab.state)["hosts"][n]["pid"] for n in labvm.VMS}
    errors: list[BaseException] = []

    def switch(name):
        try:
            labvm.switch_kernel(vm_lab.host(name), target)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=switch, args=(n,)) for n in labvm.VMS]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=2 * labvm.BOOT_TIMEOUT)
    assert not errors, errors
    st = labvm.status(vm_lab.state)
    assert st["up"]
    for n in labvm.VMS:
        h = st["hosts"][n]
        assert h["pid"] != before[n] and h["alive"] and h["kernel"] == target
        assert not labvm._alive(before[n])


@pytest.mark.vmlab
def test_udmabuf_on_6_12_not_6_1(vm_lab, lab_releases):
    rels = {labvm.series_of(r) for r in lab_releases}
    if not {"6.1", "6.12"} <= rels:
        pytest.skip("needs a 6.1 and a 6.12 kernel")
    for name in labvm.VMS:
        r = vm_lab.run(name, "uname -r; test -e /dev/udmabuf && echo yes || echo no", timeout=20)
        release, udma = r.stdout.split()
        assert udma == ("no" if labvm.series_of(release) == "6.1" else "yes"), release


HELLO_C = """#include <linux/module.h>
static int __init hwt_hello_init(void) { pr_info("hwt-hello loaded\\n"); return 0; }
static void __exit hwt_hello_exit(void) { }
module_init(hwt_hello_init);
module_exit(hwt_hello_exit);
MODULE_LICENSE("GPL");
"""


@pytest.mark.vmlab
def test_module_built_against_inventory_headers_loads(vm_lab, tmp_path):
    """The headers dir the inventory lists builds modules the VM's running kernel accepts."""
    if not (shutil.which("make") and shutil.which("gcc")):
        unavailable("module builds need make and gcc on the controller")
    release = vm_lab.run("vm-b", "uname -r", timeout=20).stdout.strip()
    kb = next(kb for kb in vm_lab.host("vm-b").kernels.values() if kb.release == release)
    assert kb.headers and Path(kb.headers).is_dir()
    src = tmp_path / "hello"
    src.mkdir()
    (src / "hwt_hello.c").write_text(HELLO_C)
    (src / "Kbuild").write_text("obj-m := hwt_hello.o\n")
    # no pahole on the controller: skip BTF for the module
    p = subprocess.run(["make", "-s", "-C", kb.headers, f"M={src}", "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    t = vm_lab.t("vm-b")
    try:
        ko = t.upload(src / "hwt_hello.ko")
        t.run(["insmod", ko], timeout=30)
        assert "hwt_hello" in t.run("cat /proc/modules", timeout=10).stdout
        assert "hwt-hello loaded" in t.run("dmesg | tail -20", timeout=10).stdout
        t.run(["rmmod", "hwt_hello"], timeout=30)
    finally:
        t.close()


def _procs_mentioning(text: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        with open(f"/proc/{d}/stat") as s:
                            if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                                out.append(int(d))
            except OSError:
                pass
    return out


@pytest.mark.vmlab
def test_cli_up_status_down_leaves_nothing(tmp_path, lab_releases):
    state = tmp_path / "cli-lab"
    pids: list[int] = []
    one = [r for r in lab_releases if labvm.series_of(r) == "6.1"] or lab_releases[:1]
    try:
        p = subprocess.run(CLI + ["lab", "up", "--kind", "vm", "--state-dir", str(state), "--kernels", one[0],
                                  "--json"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        inv = Path(json.loads(p.stdout)["inventory"])
        assert inv.is_file()
        p = subprocess.run(CLI + ["lab", "status", "--kind", "vm", "--state-dir", str(state), "--json"],
                           capture_output=True, text=True, timeout=60)
        st = json.loads(p.stdout)
        assert p.returncode == 0 and st["up"]
        pids = [h["pid"] for h in st["hosts"].values()]
        assert len(pids) == 2 and set(pids) <= set(_procs_mentioning(str(state)))
    finally:
        p = subprocess.run(CLI + ["lab", "down", "--kind", "vm", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for pid in pids:
        assert not labvm._alive(pid), f"QEMU {pid} still running"
    assert _procs_mentioning(str(state)) == []
    assert not state.exists()


@pytest.mark.vmlab
def test_down_after_a_crashed_up(tmp_path, lab_releases):
    """`up` killed while QEMU boots: `down` still stops exactly its QEMUs and removes everything."""
    state = tmp_path / "crash-lab"
    one = [r for r in lab_releases if labvm.series_of(r) == "6.1"] or lab_releases[:1]
    proc = subprocess.Popen(CLI + ["lab", "up", "--kind", "vm", "--state-dir", str(state), "--kernels", one[0]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(pids) < 2:
            st = labvm.load_state(state)
            pids = [v["pid"] for v in (st.vms.values() if st else []) if v.get("pid")]
            time.sleep(0.1)
        assert len(pids) == 2, "up never started both VMs"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # only the CLI's own group; QEMU runs in its own session
        proc.wait(timeout=20)
    assert all(labvm._alive(p) for p in pids)      # orphaned, still running
    labvm.down(state)
    for pid in pids:
        assert not labvm._alive(pid)
    assert _procs_mentioning(str(state)) == []
    assert not state.exists()


@pytest.mark.vmlab
def test_up_retries_when_the_ssh_port_is_taken(tmp_path, lab_releases, monkeypatch):
    import socket
    one = [r for r in lab_releases if labvm.series_of(r) == "6.1"] or lab_releases[:1]
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    real = labvm.free_port
    calls = []
    monkeypatch.setattr(labvm, "free_port", lambda: calls.append(1) or (taken if len(calls) == 1 else real()))
    state = tmp_path / "port-lab"
    try:
        inv = inventory.load(labvm.up(state, kernels=one, progress=lambda s: None))
        assert inv.hosts["vm-a"].ssh.port != taken
        lab = Lab(state / "inventory.yaml", state)
        assert lab.run("vm-a", "uname -r", timeout=20).stdout.strip() == one[0]
    finally:
        labvm.down(state)
        squatter.close()


def _on(lab: Lab, name: str, series: str) -> None:
    """Make sure VM `name` runs the kernel of `series` (switching if needed)."""
    from hwtests import kswitch

    if labvm.series_of(lab.run(name, "uname -r", timeout=20).stdout.strip()) != series:
        kswitch.switch(lab.inv, lab.host(name), lab.label_of(series), timeout=300)


@pytest.mark.vmlab
def test_devmem_and_zcrx_refusals_of_real_kernels(vm_lab, lab_releases):
    """On 6.12 a real udmabuf is created and bind-rx reaches the kernel, which refuses it on the
    virtual NIC; io_uring zcrx is not in 6.12 at all. On 6.1 there is no udmabuf. Each refusal is
    reported as `unsupported` with the step and the kernel's errno, never as a crash."""
    import errno

    from hwtests import traffic

    rels = {labvm.series_of(r) for r in lab_releases}
    if not {"6.1", "6.12"} <= rels:
        pytest.skip("needs a 6.1 and a 6.12 kernel")
    host = vm_lab.host("vm-a")
    ifname = next(iter(host.nics.values())).ifname
    for series in ("6.12", "6.1"):
        _on(vm_lab, "vm-a", series)
        t = vm_lab.t("vm-a")
        try:
            bins = traffic.build(t)
            with pytest.raises(traffic.Unsupported) as ei:
                traffic.bind_check(t, "devmem", ifname, bins=bins)
            u = ei.value
            if series == "6.12":
                # the udmabuf was made for real: the refusal comes from the kernel's netdev bind-rx
                assert u.step == "bind-rx", (u.step, u.reason)
                assert u.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV, errno.ERANGE), u.reason
                assert u.reason.startswith("bind-rx: "), u.reason
            else:
                assert u.step.startswith("udmabuf"), (u.step, u.reason)
                assert u.errno == errno.ENOENT, u.reason
            with pytest.raises(traffic.Unsupported) as ei:
                traffic.bind_check(t, "zcrx", ifname, bins=bins)
            z = ei.value
            # 6.1 and 6.12 predate zcrx: the kernel answers the registration with an errno
            assert z.step.startswith(("zcrx", "io_uring")), (z.step, z.reason)
            assert z.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS), z.reason
            print(f"{series}: devmem -> {u.reason}; zcrx -> {z.reason}")
        finally:
            t.close()
    _on(vm_lab, "vm-a", "6.12")


def _quick_env() -> dict:
    return dict(os.environ, HWTESTS_LINERATE_DURATION="1", HWTESTS_LINERATE_REPEAT="1",
                HWTESTS_LINERATE_WARMUP="0", HWTESTS_LINERATE_COOLDOWN="0")


@pytest.mark.vmlab
def test_run_refuses_a_build_the_hosts_do_not_run_and_boot_switches(vm_lab, lab_releases, tmp_path):
    """Booted on 6.12, results asked to be stored as the 6.1 build: exit 2 naming both hosts and
    both releases, nothing stored; with --boot the pair is switched first and the stored run
    carries 6.1's release."""
    if not {"6.1", "6.12"} <= {labvm.series_of(r) for r in lab_releases}:
        pytest.skip("needs a 6.1 and a 6.12 kernel")
    for name in ("vm-a", "vm-b"):
        _on(vm_lab, name, "6.12")
    l61, l612 = vm_lab.label_of("6.1"), vm_lab.label_of("6.12")
    rel61, rel612 = vm_lab.host("vm-a").kernels[l61].release, vm_lab.host("vm-a").kernels[l612].release
    db = tmp_path / "r.db"
    base = CLI + ["run", "--inventory", str(vm_lab.inv_path), "--kernel-build", l61, "--db", str(db),
                  "-k", "linerate and tcp"]
    r = subprocess.run(base, capture_output=True, text=True, timeout=120, env=_quick_env())
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    (line,) = r.stderr.strip().splitlines()
    for h in ("vm-a", "vm-b"):
        assert f"{h}: kernel build '{l61}' declares release {rel61}, but {h} runs {rel612}" in line
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    before = _boot_id(vm_lab, "vm-a")
    r = subprocess.run(base + ["--boot"], capture_output=True, text=True, timeout=900, env=_quick_env())
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-2000:])
    assert _boot_id(vm_lab, "vm-a") != before
    runs = Store.open(str(db)).runs()
    assert runs and all(r.label == l61 for r in runs)
    assert {h.kernel_release for run in runs for h in run.hosts} == {rel61}
    assert f"vm-a: switching to {l61}" in r.stderr


def _lease_rows(db: Path) -> list[tuple[str, str]]:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT resource, info FROM leases ORDER BY resource").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:     # not created yet
        return []


@pytest.mark.vmlab
def test_ab_holds_the_pair_from_its_first_switch_to_its_end(vm_lab, lab_releases, tmp_path):
    """Two real controllers: `hwtests ab` holds the pair's lease before its first switch, between
    its boots and through the gate; a second controller that wants the pair between two boots
    waits, then fails naming ab as the holder (exit 4); at the end the lease is gone."""
    import threading

    if not {"6.1", "6.12"} <= {labvm.series_of(r) for r in lab_releases}:
        pytest.skip("needs a 6.1 and a 6.12 kernel")
    l61, l612 = vm_lab.label_of("6.1"), vm_lab.label_of("6.12")
    db = tmp_path / "r.db"
    Store.open(str(db)).close()
    ab = subprocess.Popen(CLI + ["ab", "--inventory", str(vm_lab.inv_path), "--baseline", l612, "--candidate", l61,
                                 "--rounds", "1", "--max-rounds", "1", "--db", str(db), "-k", "linerate and tcp"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_quick_env())
    seen: list[tuple[float, list]] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            seen.append((time.monotonic(), _lease_rows(db)))
            time.sleep(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    at_start = at_first_switch = None
    rival = None
    try:
        for line in ab.stderr:
            if at_start is None and line.startswith("== boot 1/2"):
                at_start = _lease_rows(db)
            if at_first_switch is None and "switching to" in line:
                at_first_switch = _lease_rows(db)
            if line.startswith("== boot 2/2") and rival is None:
                rival = subprocess.run(CLI + ["run", "--inventory", str(vm_lab.inv_path), "--kernel-build", l61,
                                              "--boot", "--db", str(db), "--lease-wait", "3", "-k", "tcp"],
                                       capture_output=True, text=True, timeout=120)
        rc = ab.wait(timeout=1200)
    finally:
        if ab.poll() is None:
            ab.kill()
            ab.wait()
        done.set()
        poller.join(timeout=5)
    assert rc in (0, 1, 3), (rc, ab.stdout.read()[-3000:])
    assert at_start is not None and len(at_start) == 2, at_start      # both hosts, before the first switch
    assert at_first_switch is not None and len(at_first_switch) == 2, at_first_switch
    assert rival is not None and rival.returncode == 4, (rival and rival.stderr[-2000:])
    assert "held by" in rival.stderr and f"ab {l612} vs {l61}" in rival.stderr, rival.stderr[-2000:]
    held = [i for i, (_, rows) in enumerate(seen) if rows]
    during = [rows for _, rows in seen[held[0]:held[-1] + 1]]      # no gap from the first sight to the last
    assert len(during) > 8 and all(len(rows) == 2 and all(f"ab {l612} vs {l61}" in info for _, info in rows)
                                   for rows in during), [rows for rows in during if len(rows) != 2][:3]
    assert _lease_rows(db) == []


@pytest.mark.vmlab
def test_hwt_nl_queues_and_rings_on_virtio(vm_lab, lab_releases):
    """deb6.12 with virtio_net: queue-get lists the data NIC's queues with no memory provider,
    rings-get answers without header split or threshold (the driver has neither), and header
    split setup reports Unsupported after asking the kernel, since the guest's ethtool shows n/a."""
    import errno
    from types import SimpleNamespace

    from hwtests import nicsetup, nlclient, nlparse, traffic
    from hwtests.journal import Journal

    if "6.12" not in {labvm.series_of(r) for r in lab_releases}:
        pytest.skip("needs a 6.12 kernel")
    _on(vm_lab, "vm-a", "6.12")
    host = vm_lab.host("vm-a")
    nic = next(iter(host.nics.values()))
    t = vm_lab.t("vm-a")
    try:
        bins = traffic.build(t)
        qs = nlclient.queues(t, bins.nl, nic.ifname)
        rx = sorted(q.id for q in qs if q.type == "rx")
        assert rx and rx[0] == 0 and nlparse.providers(qs) == {}, qs
        assert nlclient.wait_released(t, bins.nl, nic.ifname, rx) < 1.0
        rings = nlclient.rings(t, bins.nl, nic.ifname)
        assert rings.rx and rings.tcp_data_split is None and rings.hds_thresh is None, rings
        he = SimpleNamespace(name="vm-a", t=t, nic=nic, journal=Journal(t, owner="test_vmlab"))
        with pytest.raises(nicsetup.Unsupported, match=r"the driver reports no TCP data split \(netlink rings-get\)"):
            nicsetup.set_header_split(he, True)
        assert he.journal.pending() == []
        # the request reaches the kernel's rings-set, which refuses it for this driver
        with pytest.raises(nlclient.NlUnsupported) as ei:
            nlclient.run(t, bins.nl, "rings-set", nic.ifname, "tcp-data-split", "on")
        assert ei.value.errno == errno.EOPNOTSUPP, ei.value
        print(f"6.12 virtio_net: {len(rx)} rx queue(s), rings {rings}; rings-set: {ei.value} [{ei.value.extack}]")
    finally:
        t.close()


# ---------------------------------------------------------------- deb7: Debian's 7.x kernel (trixie-backports)


def _features(lab: Lab, name: str) -> dict[str, str]:
    out = lab.run(name, ["sh", "-c", labvm.FEATURE_SCRIPT], timeout=30).stdout
    return dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)


def _error_line(stderr: str) -> str:
    """The one error line of a failed command (progress lines may precede it; no traceback)."""
    assert "Traceback" not in stderr, stderr
    errs = [ln for ln in stderr.splitlines() if ln.startswith("hwtests: error:")]
    assert len(errs) == 1, stderr
    return errs[0]


@pytest.mark.vmlab
def test_inventory_offers_deb7(vm_lab, lab_releases):
    from hwtests import debkernel, kbuildprep
    for name in labvm.VMS:
        kernels = vm_lab.host(name).kernels
        assert set(kernels) == {"deb6.1", "deb6.12", "deb7"}
        rel = kernels["deb7"].release
        assert debkernel.version_key(rel)[:2] >= (7, 1) and rel.endswith("+deb13-cloud-amd64"), rel
        assert rel == debkernel.resolve("deb7") and rel in lab_releases
        assert Path(kernels["deb7"].headers, kbuildprep.ARGS_FILE).is_file()


@pytest.mark.vmlab
def test_switch_to_deb7_and_back(vm_lab):
    """kswitch (what `hwtests ab` uses) takes a VM to deb7 and back; 7.x has io_uring, zcrx, udmabuf."""
    from hwtests import kswitch
    host = vm_lab.host("vm-a")
    start = vm_lab.run("vm-a", "uname -r", timeout=20).stdout.strip()
    back = next(lb for lb, kb in host.kernels.items() if kb.release == start)
    if back == "deb7":
        back = "deb6.12"
    before = _boot_id(vm_lab, "vm-a")
    st = kswitch.switch(vm_lab.inv, host, "deb7", timeout=300)
    assert st.release == host.kernels["deb7"].release and st.boot_id != before
    facts = _features(vm_lab, "vm-a")
    assert facts["release"] == st.release
    assert labvm.feature_gaps(facts, list(labvm.FEATURES)) == []
    r = vm_lab.run("vm-b", ["ping", "-c", "2", "-W", "3", host.nics["data"].addr], timeout=30)
    assert " 0% packet loss" in r.stdout
    assert labvm.status(vm_lab.state)["hosts"]["vm-a"]["kernel"] == "deb7"
    st2 = kswitch.switch(vm_lab.inv, host, back, timeout=300)
    assert st2.release == host.kernels[back].release and st2.boot_id != st.boot_id
    assert labvm.feature_gaps(_features(vm_lab, "vm-a"), ["zcrx"]), "zcrx on a kernel before 7.x?"


@pytest.mark.vmlab
def test_cli_up_boots_the_kernel_build_asked_for(tmp_path, lab_releases):
    state = tmp_path / "deb7-lab"
    pids: list[int] = []
    try:
        p = subprocess.run(CLI + ["lab", "up", "--kind", "vm", "--state-dir", str(state), "--kernel-build", "deb7",
                                  "--require", "io_uring,zcrx,udmabuf", "--json"],
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr
        lab = Lab(Path(json.loads(p.stdout)["inventory"]), state)
        for name in labvm.VMS:
            h = lab.host(name)
            assert list(h.kernels)[0] == "deb7" and set(h.kernels) == {"deb6.1", "deb6.12", "deb7"}
            assert h.vm["boot_kernel"] == "deb7"
            assert lab.run(name, "uname -r", timeout=20).stdout.strip() == h.kernels["deb7"].release
        st = labvm.status(state)
        assert st["up"] and {h["kernel"] for h in st["hosts"].values()} == {"deb7"}
        pids = [h["pid"] for h in st["hosts"].values()]
    finally:
        p = subprocess.run(CLI + ["lab", "down", "--kind", "vm", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert pids and not any(labvm._alive(pid) for pid in pids)
    assert _procs_mentioning(str(state)) == [] and not state.exists()


def test_cli_bad_kernel_build_or_feature_is_refused_before_anything_starts(tmp_path):
    state = tmp_path / "bad-lab"
    for args, needle in ((["--kernel-build", "deb9"], "--kernel-build deb9: no such build in this lab"),
                         (["--kernels", "6.1.0-57-cloud-amd64", "--kernel-build", "deb7"],
                          "--kernel-build deb7: no such build in this lab (builds: deb6.1)"),
                         (["--require", "io_uring,warp"], "--require warp: unknown guest feature")):
        p = subprocess.run(CLI + ["lab", "up", "--kind", "vm", "--state-dir", str(state), *args],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in _error_line(p.stderr)
        assert p.stderr.strip().count("\n") == 0, p.stderr          # nothing fetched, nothing printed before
        assert not state.exists() and _procs_mentioning(str(state)) == []


@pytest.mark.vmlab
def test_cli_missing_kernel_package_leaves_nothing(tmp_path):
    state = tmp_path / "missing-lab"
    p = subprocess.run(CLI + ["lab", "up", "--kind", "vm", "--state-dir", str(state),
                              "--kernels", "6.1.0-999-cloud-amd64"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 4, p.stderr
    line = _error_line(p.stderr)
    assert "6.1.0-999-cloud-amd64" in line and "not in the package index of bookworm" in line
    assert not state.exists() and _procs_mentioning(str(state)) == []


@pytest.mark.vmlab
def test_cli_missing_guest_feature_takes_the_lab_down(tmp_path, lab_releases):
    """6.1 has no udmabuf: `--require udmabuf` boots, finds it missing, stops both QEMUs, exits 4."""
    state = tmp_path / "feature-lab"
    rel61 = next(r for r in lab_releases if labvm.series_of(r) == "6.1")
    p = subprocess.run(CLI + ["lab", "up", "--kind", "vm", "--state-dir", str(state), "--kernels", rel61,
                              "--require", "udmabuf"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 4, p.stderr
    assert _error_line(p.stderr).endswith(f"vm-a on deb6.1 ({rel61}) lacks udmabuf: no /dev/udmabuf (CONFIG_UDMABUF)")
    assert not state.exists() and _procs_mentioning(str(state)) == []


@pytest.mark.vmlab
def test_guest_without_io_uring_is_refused(tmp_path, lab_releases):
    """A real 7.x guest with io_uring switched off (kernel.io_uring_disabled=2 on its command line)."""
    state = tmp_path / "no-uring-lab"
    rel7 = next(r for r in lab_releases if r.startswith("7."))
    with pytest.raises(HwtestsError) as ei:
        labvm.up(state, kernels=[rel7], require=["zcrx"], extra_cmdline="sysctl.kernel.io_uring_disabled=2",
                 progress=lambda s: None)
    msg = str(ei.value)
    assert ei.value.exit_code == 4 and "\n" not in msg
    assert msg.endswith(f"({rel7}) lacks zcrx: needs io_uring: disabled (kernel.io_uring_disabled=2)"), msg
    assert not state.exists() and _procs_mentioning(str(state)) == []


def test_feature_gaps():
    full = {"config": "1", "io_uring_config": "1", "zcrx_config": "1", "io_uring_disabled": "0", "udmabuf": "1"}
    assert labvm.feature_gaps(full, list(labvm.FEATURES)) == []
    assert labvm.feature_gaps({**full, "io_uring_disabled": "1"}, ["io_uring"]) == [
        "io_uring: disabled (kernel.io_uring_disabled=1)"]
    no_uring = {k: v for k, v in full.items() if k not in ("io_uring_config", "zcrx_config")}
    assert labvm.feature_gaps(no_uring, ["zcrx", "udmabuf"]) == [
        "zcrx: needs io_uring: not built into this kernel (CONFIG_IO_URING)"]
    assert labvm.feature_gaps({**full, "zcrx_config": "0", "udmabuf": "0"}, ["zcrx", "udmabuf"])[1].startswith("udmabuf")
    assert "no kernel config" in labvm.feature_gaps({}, ["io_uring"])[0]
