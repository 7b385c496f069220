"""Inventory validation: one line naming file, line and field; exit code 2 from the CLI."""

import textwrap

import pytest

from hwtests import inventory
from hwtests.errors import InputError

GOOD = textwrap.dedent("""\
    defaults:
      command_timeout: 30
    hosts:
      dut1:
        ssh: {host: 203.0.113.10, user: root, key: keys/id, known_hosts: keys/known_hosts}
        nics:
          eth0: {ifname: eth0, ipv4: 198.51.100.1/24, ipv6: "fd42::1/64", speed: 100000}
        kernels:
          base: {image: /boot/vmlinuz-base, cmdline: "quiet"}
      peer1:
        local: true
        nics:
          p0: {ifname: ens1f0np0, ipv4: 198.51.100.2/24}
    pairs:
      - name: p1
        rx: {host: dut1, nic: eth0}
        tx: {host: peer1, nic: p0}
    thresholds:
      cycles: {fail_abs: 0.4}
    """)


def test_good_inventory(tmp_path):
    f = tmp_path / "inv.yaml"
    f.write_text(GOOD)
    inv = inventory.load(f)
    assert inv.defaults.command_timeout == 30.0
    assert inv.hosts["dut1"].ssh.key == str(tmp_path / "keys/id")
    assert inv.hosts["dut1"].nics["eth0"].speed_mbps == 100000
    assert inv.hosts["peer1"].ssh is None
    assert inv.pairs["p1"].rx.host == "dut1" and inv.pairs["p1"].tx.nic == "p0"
    assert inv.thresholds == {"cycles": {"fail_abs": 0.4}}
    assert inv.hosts["dut1"].kernels["base"].cmdline == "quiet"
    assert len(inv.sha256) == 64


BAD = [
    # (replace this, with this, expected message part)
    ("nic: eth0}\n    tx", "nic: eth9}\n    tx", "inv.yaml:16: pairs[0].rx.nic: unknown NIC 'eth9' on host 'dut1'"),
    ("{host: peer1, nic: p0}", "{host: nosuch, nic: p0}", "inv.yaml:17: pairs[0].tx.host: unknown host 'nosuch'"),
    ("command_timeout: 30", "command_timeout: soon", "inv.yaml:2: defaults.command_timeout: expected float"),
    ("ifname: ens1f0np0, ", "", "inv.yaml:13: hosts.peer1.nics.p0.ifname: missing required field"),
    ("ipv4: 198.51.100.2/24", "ipv4: 198.51.100.300/24", "inv.yaml:13: hosts.peer1.nics.p0.ipv4: not an ipv4 address"),
    ("user: root", "usr: root", "inv.yaml:5: hosts.dut1.ssh.usr: unknown field"),
    ("  - name: p1", "  - name: [p1]", "inv.yaml:15: pairs[0].name: expected str"),
    ("local: true", "local: maybe", "inv.yaml:11: hosts.peer1.local: expected bool"),
    ("  cycles: {fail_abs: 0.4}", "  cycles: {fail_abs: 0.4", "invalid YAML"),
    ("thresholds:\n  cycles: {fail_abs: 0.4}", "thresholds: [1, 2]", "inv.yaml:18: thresholds: expected a mapping"),
]


@pytest.mark.parametrize("old,new,msg", BAD, ids=[b[2].split(": ")[1] if ": " in b[2] else b[2] for b in BAD])
def test_bad_inventory_one_line(tmp_path, old, new, msg):
    assert old in GOOD
    f = tmp_path / "inv.yaml"
    f.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(InputError) as ei:
        inventory.load(f)
    text = str(ei.value)
    assert "\n" not in text
    assert msg in text, text
    assert text.startswith(str(f))


def test_cli_bad_inventory_exit_2(tmp_path):
    from conftest import run_cli
    f = tmp_path / "inv.yaml"
    f.write_text(GOOD.replace("nic: eth0}\n    tx", "nic: eth9}\n    tx"))
    r = run_cli("probe", "--inventory", str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "pairs[0].rx.nic: unknown NIC 'eth9' on host 'dut1'" in lines[0]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read inventory"):
        inventory.load(tmp_path / "nope.yaml")


def test_example_inventory_in_repo_loads():
    from conftest import REPO
    inv = inventory.load(REPO / "inventory.yaml")
    assert inv.pairs
