"""The netns lab and the SSH transport, for real: real sshd in namespaces, real paramiko."""

from __future__ import annotations

import subprocess
import time

import pytest

from hwtests import hostconn, inventory, labnetns
from hwtests.transport import CommandFailed, CommandTimeout, HostKeyError

pytestmark = pytest.mark.lab


def _root_ns_view() -> str:
    out = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    return out + routes


def _procs(t) -> set[str]:
    """Command lines of the processes the host sees, whole: a lab host shares this machine's PID
    space, so a substring could match someone else's process (`sleep 40` in `sleep 400`)."""
    return {ln.strip() for ln in t.run(["ps", "-eo", "args"]).stdout.splitlines()}


@pytest.fixture(scope="module")
def inv(netns_lab):
    return inventory.load(netns_lab)


@pytest.fixture
def a1(inv):
    t = hostconn.connect(inv.hosts["a1"], inv.defaults)
    yield t
    t.close()


def test_run_commands(a1, inv):
    r = a1.run(["hostname"])
    assert r.stdout.strip() == "a1"
    r = a1.run(["ip", "-br", "addr", "show", "data0"])
    assert inv.hosts["a1"].nics["data"].ipv4.split("/")[0] in r.stdout
    assert a1.run("exit 7", check=False).exit_status == 7
    with pytest.raises(CommandFailed, match=r"a1: `false` exited 1"):
        a1.run(["false"])
    # quoting: a hostile-looking argument stays one argument
    r = a1.run(["printf", "%s", "$(touch /tmp/pwned); `id`"])
    assert r.stdout == "$(touch /tmp/pwned); `id`"


def test_timeout_names_host_and_kills(a1):
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"a1: `sleep 30.417` did not finish within 0.5 s"):
        a1.run("sleep 30.417", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert "sleep 30.417" not in _procs(a1)


def test_upload_and_tmpdir_removed(a1, tmp_path):
    f = tmp_path / "payload.bin"
    f.write_bytes(bytes(range(256)) * 100)
    remote = a1.upload(f)
    assert a1.read_file(remote) == f.read_bytes()
    tmp = a1.tmpdir
    assert a1.run(["stat", "-c", "%a", tmp]).stdout.strip() == "700"
    a1.cleanup()
    assert not a1.run(["test", "-e", tmp], check=False).ok


def test_background_process_stopped_with_children(a1):
    bg = a1.start(["sh", "-c", "sleep 40.417 & sleep 41.417; wait"], name="tree")
    time.sleep(0.3)
    assert bg.alive()
    ps = _procs(a1)
    assert "sleep 40.417" in ps and "sleep 41.417" in ps
    bg.stop(grace=1)
    assert not bg.alive()
    ps = _procs(a1)
    assert "sleep 40.417" not in ps and "sleep 41.417" not in ps


def test_background_output(a1):
    bg = a1.start(["sh", "-c", "echo out; echo err >&2; exit 3"], name="short")
    r = bg.wait(timeout=10)
    assert r.exit_status == 3 and r.stdout.strip() == "out" and r.stderr.strip() == "err"


def test_data_link_between_hosts(inv):
    a = hostconn.connect(inv.hosts["a1"], inv.defaults)
    b = hostconn.connect(inv.hosts["b1"], inv.defaults)
    try:
        dst = inv.hosts["b1"].nics["data"].ipv4.split("/")[0]
        r = a.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", dst], check=False, timeout=15)
        assert r.ok, r.stdout + r.stderr
    finally:
        a.close()
        b.close()


def test_changed_host_key_refused(inv, tmp_path):
    host = inv.hosts["a1"]
    other_key = (tmp_path / "k")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    pub = other_key.with_suffix(".pub").read_text().split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"127.0.0.1 {pub[0]} {pub[1]}\n")
    host.ssh.known_hosts = str(kh)
    try:
        t = hostconn.connect(host, inv.defaults)
        with pytest.raises(HostKeyError, match="a1: host key for 127.0.0.1:22 has CHANGED"):
            t.run(["true"])
        kh.write_text("")
        t = hostconn.connect(host, inv.defaults)
        with pytest.raises(HostKeyError, match="is unknown"):
            t.run(["true"])
    finally:
        host.ssh.known_hosts = inventory.load(inv.path).hosts["a1"].ssh.known_hosts


def test_lab_up_down_leaves_root_namespace_alone(tmp_path):
    before = _root_ns_view()
    ns_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    state = tmp_path / "lab"
    inv_path = labnetns.up(state, pairs=1)
    try:
        assert _root_ns_view() == before
        st = labnetns.status(state)
        assert st["up"] and set(st["hosts"]) == {"a1", "b1"}
        pids = [h["sshd_pid"] for h in st["hosts"].values()]
        inv = inventory.load(inv_path)
        t = hostconn.connect(inv.hosts["b1"], inv.defaults)
        assert t.run(["hostname"]).stdout.strip() == "b1"
        t.close()
    finally:
        labnetns.down(state)
    assert _root_ns_view() == before
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == ns_before
    assert not state.exists()
    for pid in pids:
        assert not labnetns._alive(pid)


def test_down_after_crashed_up(tmp_path, monkeypatch):
    """`up` dies half-way: `down` still removes what was made (state is written first)."""
    state = tmp_path / "lab"
    real = labnetns._start_host
    calls = []

    def crash(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(labnetns, "_start_host", crash)
    ns_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(KeyboardInterrupt):
        labnetns.up(state, pairs=1)
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == ns_before
    assert not state.exists()


def test_cli_lab_cycle(tmp_path):
    from conftest import run_cli
    state = tmp_path / "clilab"
    r = run_cli("lab", "up", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    inv_path = r.stdout.strip()
    assert inv_path.endswith("inventory.yaml")
    r = run_cli("lab", "status", "--state-dir", str(state), "--json")
    assert r.returncode == 0 and '"up": true' in r.stdout
    r = run_cli("lab", "down", "--state-dir", str(state))
    assert r.returncode == 0
    r = run_cli("lab", "status", "--state-dir", str(state))
    assert r.returncode == 1
