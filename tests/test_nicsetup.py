"""nicsetup: parsers, and every change and its undo on a simulated NIC through the real journal.

The simulated NIC is this file run as `ethtool` (see `fake_ethtool`): state in a JSON
file, output as ethtool 6.14 prints it for an mlx5-like NIC ("mlx5") or for veth
("veth"), or as ethtool 6.1 / 6.7 print it (no HDS thresh lines, fewer -G
parameters). A NIC with header split cannot exist on this machine, so the same file
also stands in for hwt_nl's rings and queue answers about it (`fake_nl`, the JSON
hwt_nl prints); hwt_nl itself runs for real in tests/test_hwt_nl.py. The journal is
the real one, writing to a temp file through a LocalTransport, so the journaled undo
commands really run. Lab tests at the end run against the netns lab's veth.
"""

from __future__ import annotations

import json
import os
import sys

FEATS = ["rx-checksumming", "generic-receive-offload", "ntuple-filters", "receive-hashing",
         "large-receive-offload"]
ALIAS = {"gro": "generic-receive-offload", "ntuple": "ntuple-filters", "rxhash": "receive-hashing",
         "lro": "large-receive-offload", "rx": "rx-checksumming"}


def default_state(kind="mlx5"):
    # split: the effective state; config: what was set (auto: the driver's default, split_default)
    return {"kind": kind, "split": "off", "config": "auto", "split_default": "off", "ethtool": "6.14",
            "hds": 256, "hds_max": 1023, "rx_ring": 1024,
            "combined": 4, "combined_max": 8, "indir": [i % 4 for i in range(128)], "rxfh_configured": False,
            "features": {"rx-checksumming": [True, False], "generic-receive-offload": [True, False],
                         "ntuple-filters": [False, False], "receive-hashing": [True, False],
                         "large-receive-offload": [False, True]},
            "rules": {}, "next_rule": 1023, "fail": {}}


def out(s):
    sys.stdout.write(s)


def err(s, rc=1):
    sys.stderr.write(s)
    sys.exit(rc)


def set_split(st, v):
    st["config"] = v
    st["split"] = st["split_default"] if v == "auto" else v


def save(st, path):
    tmp = path + ".tmp"
    json.dump(st, open(tmp, "w"))
    os.replace(tmp, path)


def fake_nl(argv):
    """hwt_nl's rings-get / rings-set / queue-get answers for the simulated NIC (JSON as hwt_nl prints)."""
    path = os.environ["FAKE_NIC"]
    with open(path + ".log", "a") as f:
        f.write("hwt_nl " + " ".join(argv) + "\n")
    st = json.load(open(path))
    cmd, ifn, rest = argv[0], argv[1], argv[2:]

    def rings():
        r = {"rx-max": 8192, "rx": st["rx_ring"]}
        if not st.get("driver_no_split"):
            r["tcp-data-split"] = st["split"]
        if not st.get("kernel_no_hds"):
            r.update({"hds-thresh": st["hds"], "hds-thresh-max": st["hds_max"]})
        return r

    if st["kind"] == "veth" and cmd.startswith("rings"):
        out(json.dumps({"unsupported": f"ethtool {cmd}: Operation not supported", "step": f"ethtool {cmd}",
                        "errno": 95}) + "\n")
        return 4
    if cmd == "rings-get":
        out(json.dumps({"cmd": cmd, "ifname": ifn, "rings": rings()}) + "\n")
    elif cmd == "rings-set":
        kv = dict(zip(rest[::2], rest[1::2]))
        before = rings()
        if st.get("providers") and kv.get("tcp-data-split", "on") != "on":
            out(json.dumps({"cmd": cmd, "error": "ethtool rings-set: Invalid argument (can't disable tcp-data-split "
                            "while device has memory provider enabled)", "errno": 22}) + "\n")
            return 1
        if "hds-thresh" in kv and not (kv["hds-thresh"] == "0" and st.get("kernel_no_hds")):
            st["hds"] = int(kv["hds-thresh"])
        if "tcp-data-split" in kv:
            set_split(st, kv["tcp-data-split"])
        explicit = False
        if "expect" in kv and kv.get("tcp-data-split") == "auto" and st["split"] != kv["expect"]:
            set_split(st, kv["expect"])
            explicit = True
        save(st, path)
        out(json.dumps({"cmd": cmd, "ifname": ifn, "before": before, "rings": rings(), "explicit": explicit}) + "\n")
    elif cmd == "queue-get":
        prov = st.get("providers") or {}
        qs = []
        for i in range(st["combined"]):
            q = {"id": i, "type": "rx", "ifindex": 7}
            if prov.get(str(i)) == "dmabuf":
                q["dmabuf"] = 3
            elif prov.get(str(i)) == "io-uring":
                q["io-uring"] = True
            qs.append(q)
        if prov and st.get("release_polls") is not None:      # the kernel's asynchronous release
            st["release_polls"] -= 1
            if st["release_polls"] <= 0:
                st["providers"] = {}
            save(st, path)
        out(json.dumps({"cmd": cmd, "ifindex": 7, "queues": qs}) + "\n")
    else:
        return 2
    return 0


def fake_ethtool(argv):
    path = os.environ["FAKE_NIC"]
    with open(path + ".log", "a") as f:
        f.write(" ".join(argv) + "\n")
    st = json.load(open(path))
    new = st["ethtool"] == "6.14"
    if argv and argv[0] == "--version":
        out(f"ethtool version {st['ethtool']}\n")
        return 0
    if argv and argv[0] in ("-h", "--help"):
        out("ethtool -G|--set-ring DEVNAME\n\t[ rx N ]\n")
        if st["ethtool"] != "6.1":
            out("\t[ tcp-data-split auto|on|off ]\n")
        if new:
            out("\t[ hds-thresh N ]\n")
        return 0
    if len(argv) < 2:
        err("ethtool: bad command line argument(s)\n", 1)
    op, ifn, rest = argv[0], argv[1], argv[2:]
    fail = st.get("fail", {}).get(op)
    if fail:
        err(fail + "\n", 1)
    veth = st["kind"] == "veth"
    if op == "-g":
        if veth:
            err("netlink error: Operation not supported\n", 1)
        hds = not st.get("kernel_no_hds") and new
        split = "n/a" if st.get("driver_no_split") else st["split"]
        out(f"Ring parameters for {ifn}:\nPre-set maximums:\nRX:\t\t\t8192\nRX Mini:\t\tn/a\nRX Jumbo:\t\tn/a\n"
            f"TX:\t\t\t8192\n" + (f"TX push buff len:\tn/a\nHDS thresh:\t\t{st['hds_max']}\n" if new else "")
            + f"Current hardware settings:\nRX:\t\t\t{st['rx_ring']}\nRX Mini:\t\tn/a\nRX Jumbo:\t\tn/a\n"
            f"TX:\t\t\t1024\nRX Buf Len:\t\tn/a\nCQE Size:\t\tn/a\nTX Push:\t\toff\n"
            + ("RX Push:\t\toff\nTX push buff len:\tn/a\n" if new else "")
            + ("" if st.get("no_split_line") else f"TCP data split:\t\t{split}\n")
            + (f"HDS thresh:\t\t{st['hds']}\n" if hds else ""))
    elif op == "-G":
        if veth:
            err("netlink error: Operation not supported\n", 1)
        kv = dict(zip(rest[::2], rest[1::2]))
        for k, v in kv.items():
            if k == "tcp-data-split":
                if v not in ("on", "off", "auto") or st["ethtool"] == "6.1":
                    err("ethtool: bad command line argument(s)\n", 1)
                set_split(st, v)
            elif k == "hds-thresh":
                if not new:
                    err("ethtool: bad command line argument(s)\n", 1)
                if int(v) > st["hds_max"]:
                    err("netlink error: Invalid argument\n", 1)
                st["hds"] = int(v)
            elif k == "rx":
                st["rx_ring"] = int(v)
            else:
                err("ethtool: bad command line argument(s)\n", 1)
    elif op == "-l":
        if veth:
            out(f"Channel parameters for {ifn}:\nPre-set maximums:\nRX:\t\t2\nTX:\t\t2\nOther:\t\tn/a\n"
                f"Combined:\tn/a\nCurrent hardware settings:\nRX:\t\t2\nTX:\t\t2\nOther:\t\tn/a\nCombined:\tn/a\n")
        else:
            out(f"Channel parameters for {ifn}:\nPre-set maximums:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\tn/a\n"
                f"Combined:\t{st['combined_max']}\nCurrent hardware settings:\nRX:\t\tn/a\nTX:\t\tn/a\n"
                f"Other:\t\tn/a\nCombined:\t{st['combined']}\n")
    elif op == "-L":
        kv = dict(zip(rest[::2], rest[1::2]))
        if set(kv) - {"combined"}:
            err("netlink error: Invalid argument\n", 1)
        n = int(kv["combined"])
        if n > st["combined_max"] or n < 1:
            err("netlink error: requested channel count exceeds maximum (offset 36)\n", 1)
        if any(r["action"] >= n for r in st["rules"].values()) or (st["rxfh_configured"] and max(st["indir"]) >= n):
            err("netlink error: requested channel counts are too low for existing ntuple filter settings\n", 1)
        st["combined"] = n
        if not st["rxfh_configured"]:
            st["indir"] = [i % n for i in range(len(st["indir"]))]
    elif op == "-k":
        out(f"Features for {ifn}:\n")
        for k, (on, fixed) in st["features"].items():
            out(f"{k}: {'on' if on else 'off'}{' [fixed]' if fixed else ''}\n")
    elif op == "-K":
        changed = False
        for k, v in zip(rest[::2], rest[1::2]):
            name = ALIAS.get(k, k)
            if name not in st["features"]:
                err(f"ethtool: bad command line argument(s)\n", 1)
            on, fixed = st["features"][name]
            if fixed and on != (v == "on"):
                continue
            st["features"][name][0] = v == "on"
            changed = True
        if not changed:
            err("Could not change any device features\n", 1)
    elif op == "-x":
        if veth:
            err("Cannot get RX ring count: Operation not supported\n", 1)
        out(f"RX flow hash indirection table for {ifn} with {st['combined']} RX ring(s):\n")
        t = st["indir"]
        for i in range(0, len(t), 8):
            out(f"{i:5}: " + "".join(f" {x:5}" for x in t[i:i + 8]) + "\n")
        out("RSS hash key:\n6d:5a:56:da:25:5b:0e:c2\nRSS hash function:\n    toeplitz: on\n    xor: off\n")
    elif op == "-X":
        if veth:
            err("Cannot get RX ring count: Operation not supported\n", 1)
        n = len(st["indir"])
        if rest == ["default"]:
            st["indir"] = [i % st["combined"] for i in range(n)]
            st["rxfh_configured"] = False
        elif rest[:1] == ["equal"]:
            k = int(rest[1])
            if k > st["combined"]:
                err("Cannot set RX flow hash configuration: Invalid argument\n", 1)
            st["indir"] = [i % k for i in range(n)]
            st["rxfh_configured"] = True
        elif rest[:1] == ["weight"]:
            w = [int(x) for x in rest[1:]]
            total, j, partial, t = sum(w), -1, 0, []
            for i in range(n):
                while i >= n * partial // total:
                    j += 1
                    partial += w[j]
                t.append(j)
            st["indir"] = t
            st["rxfh_configured"] = True
        else:
            err("ethtool: bad command line argument(s)\n", 1)
    elif op == "-n":
        out(f"{len(st['rules'])} RX rings available\nTotal {len(st['rules'])} rules\n\n")
        for rid, r in sorted(st["rules"].items()):
            out(f"Filter: {rid}\n\tRule Type: {r['spec'][1]}\n\tAction: Direct to queue {r['action']}\n\n")
    elif op == "-N":
        if veth or not st["features"]["ntuple-filters"][0]:
            err("rxclass: Cannot get RX class rule count: Operation not supported\n"
                "Cannot insert classification rule\n", 1)
        if rest[:1] == ["delete"]:
            if rest[1] not in st["rules"]:
                err("rmgr: Cannot delete RX class rule: No such file or directory\n", 1)
            del st["rules"][rest[1]]
        else:
            kv = dict(zip(rest[::2], rest[1::2]))
            if "src-ip" in kv and st.get("no_src_ip"):
                err("rmgr: Cannot insert RX class rule: Operation not supported\n", 1)
            q = int(kv["action"])
            if q >= st["combined"]:
                err("rmgr: Cannot insert RX class rule: Invalid argument\n", 1)
            rid = st["next_rule"]
            st["next_rule"] -= 1
            st["rules"][str(rid)] = {"spec": rest, "action": q}
            out(f"Added rule with ID {rid}\n")
    else:
        err("ethtool: bad command line argument(s)\n", 1)
    save(st, path)
    return 0


if __name__ == "__main__":      # run as the fake ethtool or hwt_nl: no pytest import, quick start
    if sys.argv[1:2] == ["--nl"]:
        sys.exit(fake_nl(sys.argv[2:]))
    sys.exit(fake_ethtool(sys.argv[1:]))

# ---------------------------------------------------------------------------------------
# The tests (pytest is imported only here, so the fake ethtool above starts quickly).

import stat  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from hwtests import nicsetup  # noqa: E402
from hwtests.inventory import Nic  # noqa: E402
from hwtests.journal import Journal  # noqa: E402
from hwtests.nicsetup import Indir, NicSetupError, Unsupported  # noqa: E402
from hwtests.transport import LocalTransport  # noqa: E402


class FakeNic:
    def __init__(self, path: Path):
        self.path = path

    @property
    def state(self) -> dict:
        return json.loads(self.path.read_text())

    def update(self, **kw) -> None:
        st = self.state
        st.update(kw)
        self.path.write_text(json.dumps(st))

    def calls(self) -> list[str]:
        log = Path(str(self.path) + ".log")
        return log.read_text().splitlines() if log.exists() else []


def _stable(st: dict) -> dict:
    return {k: v for k, v in st.items() if k != "next_rule"}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(HostEnv-like object on this machine with the fake ethtool, FakeNic)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "ethtool"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    nl = bindir / "hwt_nl"
    nl.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} --nl \"$@\"\n")
    nl.chmod(nl.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(nicsetup, "nl_tool", lambda he: str(nl))
    state = tmp_path / "nic.json"
    state.write_text(json.dumps(default_state("mlx5")))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NIC", str(state))
    t = LocalTransport("h1")
    j = Journal(t, owner="test")
    j._path = str(tmp_path / "journal" / "journal.h1.jsonl")
    (tmp_path / "journal").mkdir()
    he = SimpleNamespace(name="h1", t=t, nic=Nic("data", "eth9", "192.0.2.1/24"), journal=j)
    yield he, FakeNic(state)
    t.cleanup()


# -- parsers -------------------------------------------------------------------------

RINGS_614 = """Ring parameters for eth0:
Pre-set maximums:
RX:			8192
RX Mini:		n/a
TX:			8192
HDS thresh:		1023
Current hardware settings:
RX:			1024
RX Mini:		n/a
TX:			1024
TCP data split:		on
HDS thresh:		0
"""

RINGS_61 = """Ring parameters for eth0:
Pre-set maximums:
RX:			4096
Current hardware settings:
RX:			1024
TCP data split:		n/a
"""


def test_parse_rings():
    r = nicsetup.parse_rings(RINGS_614)
    assert (r.tcp_data_split, r.hds_thresh, r.hds_thresh_max) == ("on", 0, 1023)
    r = nicsetup.parse_rings(RINGS_61)
    assert (r.tcp_data_split, r.hds_thresh, r.hds_thresh_max) == ("n/a", None, None)
    assert nicsetup.parse_rings("Ring parameters for x:\nCurrent hardware settings:\nRX: 4\n").tcp_data_split is None


def test_parse_channels():
    ch = nicsetup.parse_channels("Channel parameters for data0:\nPre-set maximums:\nRX:\t\t2\nTX:\t\t2\nOther:\t\tn/a\n"
                                 "Combined:\tn/a\nCurrent hardware settings:\nRX:\t\t1\nTX:\t\t2\nOther:\t\tn/a\n"
                                 "Combined:\tn/a\n")
    assert ch.max == {"rx": 2, "tx": 2, "other": None, "combined": None}
    assert ch.current["rx"] == 1 and ch.rx_queues() == 1 and ch.settable() == ["rx", "tx"]
    ch = nicsetup.parse_channels("Pre-set maximums:\nRX: 0\nTX: 0\nOther: 1\nCombined: 63\n"
                                 "Current hardware settings:\nRX: 0\nTX: 0\nOther: 1\nCombined: 8\n")
    assert ch.rx_queues() == 8 and ch.settable() == ["rx", "tx", "combined"]


def test_parse_indir_and_restore_args():
    text = ("RX flow hash indirection table for eth0 with 4 RX ring(s):\n"
            + "".join(f"{i:5}:      0     1     2     3     0     1     2     3\n" for i in range(0, 16, 8))
            + "RSS hash key:\n12:34:56:78\nRSS hash function:\n    toeplitz: on\n")
    ind = nicsetup.parse_indir(text)
    assert ind.rings == 4 and ind.table == [0, 1, 2, 3] * 4
    assert nicsetup.indir_restore_args(ind) == ["default"]
    assert nicsetup.indir_restore_args(Indir(4, [0, 1, 2] * 5 + [0])) == ["equal", "3"]
    t = nicsetup.weights_fill(128, [1, 3, 0, 4])
    assert t.count(0) == 16 and t.count(1) == 48 and t.count(2) == 0 and t == sorted(t)
    assert nicsetup.indir_restore_args(Indir(4, t)) == ["weight", "1", "3", "0", "4"]
    assert nicsetup.indir_restore_args(Indir(4, [3, 2, 1, 0] * 4)) is None   # not rebuildable with -X
    assert nicsetup.indir_restore_args(Indir(None, [])) is None
    assert nicsetup.parse_indir("Cannot get RX ring count: Operation not supported\n").table == []


def test_weights_fill_matches_ethtool_rounding():
    # ethtool: while (i >= size * partial / sum) { j++; partial += w[j]; }
    assert nicsetup.weights_fill(8, [1, 1, 1]) == [0, 0, 1, 1, 1, 2, 2, 2]
    assert nicsetup.weights_fill(4, [2, 1, 1]) == [0, 0, 1, 2]


def test_parse_features_and_rule_id():
    f = nicsetup.parse_features("Features for x:\nntuple-filters: off [fixed]\ngeneric-receive-offload: on\n"
                                "tx-checksumming: on\n\ttx-checksum-ipv4: off [fixed]\nhighdma: on [requested off]\n")
    assert f["ntuple-filters"] == (False, True) and f["generic-receive-offload"] == (True, False)
    assert f["tx-checksum-ipv4"] == (False, True) and f["highdma"] == (True, False)
    assert nicsetup.parse_rule_id("Added rule with ID 1023\n") == 1023
    assert nicsetup.parse_rule_id("Cannot insert classification rule") is None


# -- changes on the simulated NIC --------------------------------------------------------

def test_header_split_restores_captured_values(fake):
    he, nic = fake
    assert nicsetup.set_header_split(he, True) is True
    assert (nic.state["split"], nic.state["config"], nic.state["hds"]) == ("on", "on", 0)
    pend = he.journal.pending()
    assert len(pend) == 1 and pend[0].undo.endswith(" sh eth9 off hds-thresh 256")
    assert he.journal.restore() == []
    # back to auto (the driver's default), not pinned to the "off" that auto gave
    assert (nic.state["split"], nic.state["config"], nic.state["hds"]) == ("off", "auto", 256)
    assert "-G eth9 tcp-data-split auto hds-thresh 256" in nic.calls()
    assert "-G eth9 tcp-data-split off" not in nic.calls()


def test_header_split_on_by_default_is_set_explicitly(fake):
    """The kernel binds a memory provider only when the configured state is on; an "on" that is
    the driver's default (auto) is not, so on is set anyway, and auto comes back."""
    he, nic = fake
    nic.update(split="on", split_default="on", hds=0)
    assert nicsetup.set_header_split(he, True) is True
    assert nic.state["config"] == "on"
    he.journal.restore()
    assert (nic.state["split"], nic.state["config"]) == ("on", "auto")


def test_header_split_explicit_state_kept_when_auto_differs(fake):
    """Configured off on a driver whose default is on: auto would give on, so off is set explicitly."""
    he, nic = fake
    nic.update(split="off", config="off", split_default="on")
    assert nicsetup.set_header_split(he, True)
    assert nic.state["split"] == "on"
    assert he.journal.restore() == []
    assert (nic.state["split"], nic.state["config"], nic.state["hds"]) == ("off", "off", 256)


def test_header_split_only_threshold(fake):
    he, nic = fake
    nic.update(split="on", config="on", hds=100)
    assert nicsetup.set_header_split(he, True)
    assert nic.state["hds"] == 0
    he.journal.restore()
    assert (nic.state["split"], nic.state["config"], nic.state["hds"]) == ("on", "on", 100)


@pytest.mark.parametrize("version", ["6.1", "6.7"])
def test_header_split_threshold_hidden_by_old_ethtool(fake, version):
    """ethtool 6.1 (Debian 12) and 6.7 (Ubuntu 24.04) print no HDS thresh line on a kernel that has
    one (256 here): the kernel is asked over netlink, the threshold set to 0 and restored."""
    he, nic = fake
    nic.update(ethtool=version)
    assert "HDS" not in nicsetup.read_rings(he).current and nicsetup.read_rings(he).hds_thresh is None
    rings, nl = nicsetup.read_header_split(he)
    assert (rings.tcp_data_split, rings.hds_thresh, rings.hds_thresh_max) == ("off", 256, 1023) and nl
    assert nicsetup.set_header_split(he, True)
    assert (nic.state["split"], nic.state["hds"]) == ("on", 0)
    assert any(c.startswith("hwt_nl rings-set eth9 tcp-data-split on hds-thresh 0") for c in nic.calls())
    pend = he.journal.pending()
    assert len(pend) == 1 and "rings-set eth9 tcp-data-split auto hds-thresh 256 expect off" in pend[0].undo
    # the undo runs a copy of hwt_nl kept next to the journal (the run's temp dir may be gone)
    assert pend[0].undo.startswith(str(Path(he.journal.path).parent / "hwt_nl."))
    assert he.journal.restore() == []
    assert (nic.state["split"], nic.state["config"], nic.state["hds"]) == ("off", "auto", 256)


def test_header_split_hidden_and_no_netlink_names_the_ethtool(fake, monkeypatch):
    he, nic = fake
    nic.update(ethtool="6.1")

    def no_nl(he):
        raise nicsetup.HwtestsError("h1: building the traffic programs failed")
    monkeypatch.setattr(nicsetup, "nl_tool", no_nl)
    with pytest.raises(Unsupported, match=r"eth9: header split.*ethtool 6\.1 -g shows no HDS thresh, and the kernel "
                                          r"could not be asked over netlink: h1: building"):
        nicsetup.set_header_split(he, True)
    assert he.journal.pending() == [] and nic.state["hds"] == 256


def test_header_split_line_missing_asks_netlink(fake):
    """An ethtool that prints no TCP data split line at all: netlink says whether the NIC has it."""
    he, nic = fake
    nic.update(no_split_line=True, kernel_no_hds=True)
    assert nicsetup.set_header_split(he, True)
    assert nic.state["split"] == "on"
    he.journal.restore()
    assert nic.state["config"] == "auto"
    nic.update(driver_no_split=True)
    with pytest.raises(Unsupported, match=r"the driver reports no TCP data split \(netlink rings-get\)"):
        nicsetup.set_header_split(he, True)


def test_header_split_unsupported(fake):
    he, nic = fake
    nic.update(kind="veth")
    with pytest.raises(Unsupported, match=r"h1: eth9: header split.*netlink error: Operation not supported"):
        nicsetup.set_header_split(he, True)
    nic.update(kind="mlx5", driver_no_split=True, ethtool="6.14")
    with pytest.raises(Unsupported, match=r"the driver reports no TCP data split"):
        nicsetup.set_header_split(he, True)
    assert he.journal.pending() == [] and nic.state["split"] == "off"


def test_set_failure_is_undone_and_named(fake):
    he, nic = fake
    nic.update(fail={"-G": "netlink error: Invalid argument"})
    with pytest.raises(NicSetupError, match=r"eth9: header split \(tcp-data-split\): ethtool -G .*Invalid argument"):
        nicsetup.set_header_split(he, True)
    assert he.journal.pending() == []


@pytest.mark.parametrize("setup,expect_undo", [
    (None, ["default"]),
    ({"indir": [i % 3 for i in range(128)], "rxfh_configured": True}, ["equal", "3"]),
    ({"indir": nicsetup.weights_fill(128, [2, 1, 1, 4]), "rxfh_configured": True}, ["weight", "2", "1", "1", "4"]),
])
def test_rss_restores_original_table(fake, setup, expect_undo):
    he, nic = fake
    if setup:
        nic.update(**setup)
    before = nic.state
    assert nicsetup.rss_exclude_queue(he, 2)
    assert nic.state["indir"] == [i % 2 for i in range(128)]
    assert he.journal.pending()[0].undo == "ethtool -X eth9 " + " ".join(expect_undo)
    he.journal.restore()
    assert nic.state["indir"] == before["indir"] and nic.state["rxfh_configured"] == before["rxfh_configured"]


def test_rss_refuses_table_it_cannot_rebuild(fake):
    he, nic = fake
    nic.update(indir=[3, 2, 1, 0] * 32, rxfh_configured=True)
    with pytest.raises(NicSetupError, match="cannot be rebuilt with ethtool -X"):
        nicsetup.rss_exclude_queue(he, 2)
    assert nic.state["indir"] == [3, 2, 1, 0] * 32 and he.journal.pending() == []
    with pytest.raises(NicSetupError, match="needs queues below it"):
        nicsetup.rss_exclude_queue(he, 0)


def test_flow_rule_id_and_crash_safe_undo(fake):
    he, nic = fake
    nicsetup.set_feature(he, "ntuple", True)
    rid = nicsetup.flow_rule(he, "tcp4", 5201, 3, src_ip="192.0.2.2", dst_ip="192.0.2.1")
    assert rid == 1023 and nic.state["rules"]["1023"]["action"] == 3
    assert "src-ip 192.0.2.2 dst-ip 192.0.2.1 dst-port 5201 action 3" in nic.calls()[-1]
    idfiles = list(Path(he.journal.path).parent.glob("rule.*"))
    assert len(idfiles) == 1 and idfiles[0].read_text().strip() == "1023"
    # the controller dies here: a new run's journal (same file) undoes rule then ntuple
    j2 = Journal(he.t, owner="next")
    j2._path = he.journal.path
    assert [e.desc for e in j2.pending()] == ["eth9: ethtool -K ntuple on",
                                             "eth9: ethtool -N flow-type tcp4 src-ip 192.0.2.2 dst-ip 192.0.2.1 "
                                             "dst-port 5201 action 3"]
    assert j2.restore() == []
    assert nic.state["rules"] == {} and nic.state["features"]["ntuple-filters"][0] is False
    assert "-N eth9 delete 1023" in nic.calls()
    assert not list(Path(he.journal.path).parent.glob("rule.*"))


def test_flow_rule_unsupported_leaves_nothing(fake):
    he, nic = fake          # ntuple-filters off
    with pytest.raises(Unsupported, match=r"eth9: flow rule \(tcp6 dst-port 80 -> queue 1\):.*"
                                          r"Cannot get RX class rule count: Operation not supported"):
        nicsetup.flow_rule(he, "tcp6", 80, 1, src_ip="2001:db8::2")
    assert he.journal.pending() == [] and not list(Path(he.journal.path).parent.glob("rule.*"))
    with pytest.raises(ValueError):
        nicsetup.flow_rule(he, "tcp4", 80, 1, src_ip="192.0.2.1; reboot")


def test_channels_capture_and_restore(fake):
    he, nic = fake
    assert nicsetup.set_channels(he, combined=2)
    assert nic.state["combined"] == 2
    assert he.journal.pending()[0].undo == "ethtool -L eth9 combined 4"
    assert nicsetup.set_channels(he, combined=2) is False
    with pytest.raises(Unsupported, match="combined 9 is outside 0..8"):
        nicsetup.set_channels(he, combined=9)
    with pytest.raises(Unsupported, match="no separate rx channels"):
        nicsetup.set_channels(he, rx=2)
    he.journal.restore()
    assert nic.state["combined"] == 4


def test_feature_capture_restore_and_fixed(fake):
    he, nic = fake
    assert nicsetup.set_feature(he, "gro", False)
    assert nic.state["features"]["generic-receive-offload"][0] is False
    assert nicsetup.set_feature(he, "gro", False) is False
    with pytest.raises(Unsupported, match=r"feature lro: large-receive-offload: off \[fixed\]"):
        nicsetup.set_feature(he, "lro", True)
    with pytest.raises(Unsupported, match="does not list"):
        nicsetup.set_feature(he, "no-such-feature", True)
    he.journal.restore()
    assert nic.state["features"]["generic-receive-offload"][0] is True


def test_prepare_zero_copy_and_full_restore(fake):
    he, nic = fake
    before = nic.state
    zc = nicsetup.prepare_zero_copy(he, None, 5201, "192.0.2.2", local_addr="192.0.2.1")
    assert (zc.queue, zc.rule_id) == (3, 1023)
    assert zc.changed == ["header split", "ntuple", "rss", "flow rule"]
    st = nic.state
    assert st["split"] == "on" and st["hds"] == 0 and st["indir"] == [i % 3 for i in range(128)]
    assert st["rules"]["1023"]["spec"][:6] == ["flow-type", "tcp4", "src-ip", "192.0.2.2", "dst-ip", "192.0.2.1"]
    assert he.journal.restore() == []
    assert _stable(nic.state) == _stable(before)


def test_prepare_zero_copy_adds_channels_and_falls_back_to_simpler_rule(fake):
    """One channel: raise to 2; the NIC refuses src-ip matches: dst-ip + dst-port rule.
    LIFO restore deletes the rule before the channel count goes back down (the NIC insists)."""
    he, nic = fake
    nic.update(combined=1, indir=[0] * 128, no_src_ip=True)
    before = nic.state
    zc = nicsetup.prepare_zero_copy(he, 1, 9000, "192.0.2.2", local_addr="192.0.2.1")
    assert zc.queue == 1 and zc.changed[0] == "channels" and "dst-ip=192.0.2.1" in zc.rule
    assert "src-ip=192.0.2.2" not in zc.rule
    assert nic.state["combined"] == 2
    assert he.journal.restore() == []
    assert _stable(nic.state) == _stable(before)


def test_prepare_zero_copy_queue_beyond_channels(fake):
    he, nic = fake
    with pytest.raises(Unsupported, match=r"channels: combined 9 is outside 0..8"):
        nicsetup.prepare_zero_copy(he, 8, 9000, "192.0.2.2")
    assert he.journal.pending() == []
    nicsetup.set_feature(he, "ntuple", True)
    zc = nicsetup.prepare_zero_copy(he, 4, 9000, "192.0.2.2")      # channels raised to 5
    assert zc.queue == 4 and nic.state["combined"] == 5 and zc.changed[0] == "channels"
    he.journal.restore()
    assert nic.state["combined"] == 4


def test_prepare_zero_copy_on_veth_names_what_is_missing(fake):
    he, nic = fake
    nic.update(kind="veth")
    with pytest.raises(Unsupported, match="header split.*Operation not supported"):
        nicsetup.prepare_zero_copy(he, None, 9000, "192.0.2.2")
    assert he.journal.restore() == []


# -- the netns lab's veth --------------------------------------------------------------------

@pytest.fixture
def lab_a1(netns_lab):
    from hwtests import hostconn, inventory
    inv = inventory.load(netns_lab)
    t = hostconn.connect(inv.hosts["a1"], inv.defaults)
    he = SimpleNamespace(name="a1", t=t, nic=inv.hosts["a1"].nics["data"], journal=Journal(t, owner="test_nicsetup"))
    yield he
    he.journal.restore()
    t.close()


@pytest.mark.lab
def test_lab_veth_changes_and_restores(lab_a1):
    he = lab_a1
    t = he.t
    ch0 = nicsetup.read_channels(he)
    assert ch0.current["rx"] == 2
    gro0 = nicsetup.read_features(he)["generic-receive-offload"][0]
    ecn0 = t.run(["cat", "/proc/sys/net/ipv4/tcp_ecn"]).stdout.strip()
    assert nicsetup.set_channels(he, rx=1)
    assert nicsetup.set_feature(he, "gro", not gro0)
    assert nicsetup.sysctl(he, "net.ipv4.tcp_ecn", "1" if ecn0 != "1" else "0")
    assert nicsetup.read_channels(he).current["rx"] == 1
    assert len(he.journal.pending()) == 3
    assert he.journal.restore() == []
    assert nicsetup.read_channels(he).current["rx"] == 2
    assert nicsetup.read_features(he)["generic-receive-offload"][0] == gro0
    assert t.run(["cat", "/proc/sys/net/ipv4/tcp_ecn"]).stdout.strip() == ecn0


@pytest.mark.lab
def test_lab_veth_zero_copy_unsupported(lab_a1):
    he = lab_a1
    with pytest.raises(Unsupported, match=r"a1: data0: header split.*netlink error: Operation not supported"):
        nicsetup.set_header_split(he, True)
    with pytest.raises(Unsupported, match=r"a1: data0: RSS indirection table.*Operation not supported"):
        nicsetup.rss_exclude_queue(he, 1)
    with pytest.raises(Unsupported, match=r"a1: data0: flow rule .*Operation not supported"):
        nicsetup.flow_rule(he, "tcp4", 5201, 1)
    with pytest.raises(Unsupported, match=r"feature ntuple: ntuple-filters: off \[fixed\]"):
        nicsetup.set_feature(he, "ntuple", True)
    with pytest.raises(Unsupported, match=r"header split"):
        nicsetup.prepare_zero_copy(he, None, 5201, "198.51.100.2")
    assert he.journal.pending() == []
