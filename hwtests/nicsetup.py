"""NIC setup for zero-copy receive: header split, RSS, flow steering, channels, features.

Every change goes through the host's restore journal (`HostEnv.journal.change`):
the command that undoes it is written on the host *before* the change is made,
so teardown, and the next run after a crash, put the NIC back. The undo always
sets the values read from the NIC just before the change (never "defaults"),
except the RSS indirection table, which goes back to `default` only when the
captured table was the default one, and header split, which goes back to `auto`
(the kernel reports only the effective state) and to the captured state only
when auto gives another (see `set_header_split`).

Where the host's ethtool is older than the kernel (it hides hds-thresh or TCP
data split, or cannot set them), header split is read and set over netlink by
hwt_nl, deployed with the traffic programs.

Every value that reaches a shell is an element of a list command (quoted by the
transport); the few `sh -c` scripts here are constants taking positional
arguments.

A setting the NIC, its driver or the host's ethtool cannot do raises
`Unsupported`, naming the host, the interface, the setting and ethtool's own
message (veth: `ethtool -g` -> "netlink error: Operation not supported").
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from . import nlclient, nlparse, traffic
from .errors import EXIT_INFRA, HwtestsError
from .journal import JOURNAL_DIR
from .transport import CommandFailed, CmdResult

ETHTOOL_TIMEOUT = 30.0


class NicSetupError(HwtestsError):
    """A NIC setting could not be read or changed."""

    exit_code = EXIT_INFRA

    def __init__(self, host: str, ifname: str, setting: str, detail: str):
        self.host, self.ifname, self.setting, self.detail = host, ifname, setting, detail
        super().__init__(f"{host}: {ifname}: {setting}: {detail}")


class Unsupported(NicSetupError):
    """The NIC (driver, kernel or ethtool) cannot do this setting; tests skip on it."""


_UNSUPPORTED_HINTS = ("not supported", "operation not supported", "bad command line", "[fixed]",
                      "could not change any device features", "cannot get rx ring count",
                      "cannot get rx class rule count", "cannot insert classification rule",
                      "no such device", "unknown argument")


def _message(r: CmdResult) -> str:
    text = " ".join((r.stderr.strip() or r.stdout.strip()).split())
    return text[-300:] or f"exit status {r.exit_status}"


def _fail(he, setting: str, r: CmdResult, what: str = "") -> NicSetupError:
    msg = (what + ": " if what else "") + _message(r)
    low = msg.lower()
    cls = Unsupported if any(h in low for h in _UNSUPPORTED_HINTS) else NicSetupError
    return cls(he.name, he.nic.ifname, setting, msg)


def _ethtool(he, setting: str, *args: str, check: bool = True) -> CmdResult:
    """Run a read-only ethtool command; raise Unsupported/NicSetupError naming the setting on failure."""
    r = he.t.run(["ethtool", *args], check=False, timeout=ETHTOOL_TIMEOUT)
    if r.exit_status == 127:
        raise Unsupported(he.name, he.nic.ifname, setting, "ethtool not installed")
    if check and not r.ok:
        raise _fail(he, setting, r, "ethtool " + " ".join(args))
    return r


def _change(he, setting: str, desc: str, do: list[str], undo: list[str]) -> None:
    """Journal `undo`, run `do`; a failure becomes Unsupported/NicSetupError (the journal undid it)."""
    try:
        he.journal.change(f"{he.nic.ifname}: {desc}", do, undo, timeout=ETHTOOL_TIMEOUT)
    except CommandFailed as exc:
        raise _fail(he, setting, exc.result, desc) from None


# -- pure parsers of ethtool output ------------------------------------------------

def _num(v: str | None) -> int | None:
    if v is None:
        return None
    v = v.strip()
    return int(v) if v.isdigit() else None


def _blocks(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """`Pre-set maximums:` / `Current hardware settings:` key-value blocks."""
    maxima: dict[str, str] = {}
    current: dict[str, str] = {}
    cur = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Pre-set maximums"):
            cur = maxima
        elif s.startswith("Current hardware settings"):
            cur = current
        elif cur is not None and ":" in s:
            k, _, v = s.partition(":")
            cur[k.strip()] = v.strip()
    return maxima, current


@dataclass
class Rings:
    """`ethtool -g`: the values header split setup touches."""

    tcp_data_split: str | None       # "on" | "off" | "auto" | "n/a"; None: this ethtool does not print it
    hds_thresh: int | None           # None: not reported (old kernel/ethtool or driver without it)
    hds_thresh_max: int | None
    current: dict[str, str] = field(default_factory=dict)


def parse_rings(text: str) -> Rings:
    maxima, current = _blocks(text)
    split = current.get("TCP data split")
    return Rings(split.lower() if split else None, _num(current.get("HDS thresh")),
                 _num(maxima.get("HDS thresh")), current)


_CH_KEYS = (("RX", "rx"), ("TX", "tx"), ("Other", "other"), ("Combined", "combined"))


@dataclass
class Channels:
    max: dict[str, int | None]
    current: dict[str, int | None]

    def rx_queues(self) -> int:
        """RX queues in use: rx + combined channels."""
        return (self.current.get("rx") or 0) + (self.current.get("combined") or 0)

    def settable(self) -> list[str]:
        """Channel kinds this NIC reports a number for (n/a ones cannot be set)."""
        return [k for _, k in _CH_KEYS if k != "other" and self.current.get(k) is not None
                and self.max.get(k) is not None]


def parse_channels(text: str) -> Channels:
    maxima, current = _blocks(text)
    return Channels({k: _num(maxima.get(n)) for n, k in _CH_KEYS},
                    {k: _num(current.get(n)) for n, k in _CH_KEYS})


@dataclass
class Indir:
    rings: int | None
    table: list[int]


_INDIR_HEAD = re.compile(r"indirection table for \S+ with (\d+) RX ring", re.I)
_INDIR_ROW = re.compile(r"^\s*\d+:((?:\s+\d+)+)\s*$")


def parse_indir(text: str) -> Indir:
    """`ethtool -x IF` -> the RX flow hash indirection table and the ring count it names."""
    rings = None
    table: list[int] = []
    in_table = False
    for line in text.splitlines():
        m = _INDIR_HEAD.search(line)
        if m:
            rings, in_table = int(m.group(1)), True
            continue
        if line.strip().startswith("RSS hash"):
            in_table = False
            continue
        if in_table:
            m = _INDIR_ROW.match(line)
            if m:
                table += [int(x) for x in m.group(1).split()]
    return Indir(rings, table)


def weights_fill(n: int, weights: list[int], start: int = 0) -> list[int]:
    """ethtool's `-X weight W0 W1 ...` table of size `n` (same integer arithmetic)."""
    total = sum(weights)
    out: list[int] = []
    j, partial = -1, 0
    for i in range(n):
        while i >= n * partial // total:
            j += 1
            partial += weights[j]
        out.append(start + j)
    return out


def indir_restore_args(ind: Indir) -> list[str] | None:
    """The `ethtool -X IF ...` arguments that rebuild this exact table, or None when ethtool cannot.

    `default` only when the table is the kernel's default spread over all rings,
    else `equal K` or `weight W0 W1 ...` when one of them yields the same table.
    """
    t, n = ind.table, len(ind.table)
    if not n:
        return None
    if ind.rings and t == [i % ind.rings for i in range(n)]:
        return ["default"]
    k = max(t) + 1
    if t == [i % k for i in range(n)]:
        return ["equal", str(k)]
    weights = [t.count(j) for j in range(k)]
    g = math.gcd(*weights)
    weights = [w // g for w in weights]
    if weights_fill(n, weights) == t:
        return ["weight", *map(str, weights)]
    return None


FEATURE_ALIASES = {
    "gro": "generic-receive-offload", "gso": "generic-segmentation-offload", "tso": "tcp-segmentation-offload",
    "lro": "large-receive-offload", "ntuple": "ntuple-filters", "rxhash": "receive-hashing",
    "rx": "rx-checksumming", "tx": "tx-checksumming", "sg": "scatter-gather", "rxvlan": "rx-vlan-offload",
    "txvlan": "tx-vlan-offload", "rx-gro-hw": "rx-gro-hw", "ufo": "udp-fragmentation-offload",
}

_FEATURE_LINE = re.compile(r"^\s*([a-z0-9][a-z0-9_-]*):\s+(on|off)(?:\s+\[(.*?)\])?\s*$")


def parse_features(text: str) -> dict[str, tuple[bool, bool]]:
    """`ethtool -k IF` -> {long name: (on, fixed)}."""
    out: dict[str, tuple[bool, bool]] = {}
    for line in text.splitlines():
        m = _FEATURE_LINE.match(line)
        if m:
            out[m.group(1)] = (m.group(2) == "on", bool(m.group(3) and "fixed" in m.group(3)))
    return out


_RULE_ID = re.compile(r"Added rule with ID (\d+)")


def parse_rule_id(text: str) -> int | None:
    m = _RULE_ID.search(text)
    return int(m.group(1)) if m else None


# -- changes -------------------------------------------------------------------

def read_rings(he) -> Rings:
    r = _ethtool(he, "header split", "-g", he.nic.ifname)
    return parse_rings(r.stdout)


def nl_tool(he) -> str:
    """hwt_nl on the host, built and cached with the traffic programs."""
    return traffic.build(he.t).nl


def ethtool_name(he) -> str:
    """'ethtool 6.1' as the host's `ethtool --version` says, for messages."""
    r = he.t.run(["ethtool", "--version"], check=False, timeout=ETHTOOL_TIMEOUT)
    v = nlparse.ethtool_version(r.stdout)
    return f"ethtool {v[0]}.{v[1]}" if v else "the host's ethtool"


def read_header_split(he) -> tuple[Rings, str | None]:
    """tcp-data-split and hds-thresh as the kernel reports them, and hwt_nl's path when it was asked.

    `ethtool -g` first; where it shows no "TCP data split" (or "n/a") or no "HDS thresh"
    line, the kernel is asked over netlink: an ethtool older than the kernel (Debian 12's
    6.1, Ubuntu 24.04's 6.7) hides a threshold the kernel has, and a bind then fails.
    """
    setting = "header split (tcp-data-split)"
    rings = read_rings(he)
    if rings.tcp_data_split not in (None, "n/a") and rings.hds_thresh is not None:
        return rings, None
    missing = " and ".join(n for n, v in (("TCP data split", rings.tcp_data_split not in (None, "n/a")),
                                          ("HDS thresh", rings.hds_thresh is not None)) if not v)
    try:
        nl = nl_tool(he)
        got = nlclient.rings(he.t, nl, he.nic.ifname)
    except HwtestsError as exc:
        raise Unsupported(he.name, he.nic.ifname, setting,
                          f"{ethtool_name(he)} -g shows no {missing}, and the kernel could not be asked over "
                          f"netlink: {exc}") from None
    return Rings(got.tcp_data_split, got.hds_thresh, got.hds_thresh_max, rings.current), nl


# Undo of a header split change made with ethtool: auto (the driver's default) with the
# old threshold, then the captured state explicitly when auto gives another one.
_SPLIT_RESTORE = ('i=$1; want=$2; shift 2; ethtool -G "$i" tcp-data-split auto "$@" || exit 1; '
                  'ethtool -g "$i" | grep -Eq "^TCP data split:[[:space:]]+$want[[:space:]]*$" || '
                  'ethtool -G "$i" tcp-data-split "$want"')


def _kept_nl(he, nl: str) -> str:
    """A copy of hwt_nl next to the journal: an undo journaled with it must still run after a crash
    removed the run's temp dir (run entries are undone first)."""
    jdir = posixpath.dirname(he.journal.path) or JOURNAL_DIR
    dst = posixpath.join(jdir, "hwt_nl." + hashlib.sha256(nl.encode()).hexdigest()[:12])
    script = ('umask 077 && mkdir -p "$1" && { [ -x "$3" ] || { cp "$2" "$3.tmp" && chmod 700 "$3.tmp" && '
              'mv "$3.tmp" "$3"; }; }')
    he.t.run(["sh", "-c", script, "sh", jdir, nl, dst], timeout=15)
    return dst


def set_header_split(he, on: bool = True) -> bool:
    """tcp-data-split on (and hds-thresh 0 where the kernel has one) or off; True when a change was journaled.

    On is set even when the NIC already shows on: the kernel binds a memory provider only
    when the *configured* state is on, and an "on" that is the driver's default (auto) is not.
    The kernel reports the effective state, never auto, so the undo sets auto (with the old
    threshold) and then the captured state explicitly only when auto gives another one, as
    the kernel's selftests restore it. Netlink (hwt_nl) stands in where ethtool cannot.
    """
    setting = "header split (tcp-data-split)"
    rings, nl = read_header_split(he)
    if rings.tcp_data_split in (None, "n/a"):
        raise Unsupported(he.name, he.nic.ifname, setting,
                          "the driver reports no TCP data split" + (" (netlink rings-get)" if nl else " (n/a)"))
    was = "on" if rings.tcp_data_split == "on" else "off"
    if not on and was == "off":
        return False
    hds = on and rings.hds_thresh is not None and rings.hds_thresh != 0
    args = ["tcp-data-split", "on" if on else "off"] + (["hds-thresh", "0"] if hds else [])
    old_hds = ["hds-thresh", str(rings.hds_thresh)] if hds else []
    desc = " ".join(args)
    ifn = he.nic.ifname
    if nl is None:
        helptext = he.t.run(["sh", "-c", "ethtool -h 2>&1; true"], check=False, timeout=ETHTOOL_TIMEOUT).stdout
        if "tcp-data-split" in helptext and (not hds or "hds-thresh" in helptext):
            _change(he, setting, "ethtool -G " + desc, ["ethtool", "-G", ifn, *args],
                    ["sh", "-c", _SPLIT_RESTORE, "sh", ifn, was, *old_hds])
            return True
        try:
            nl = nl_tool(he)
        except HwtestsError as exc:
            raise Unsupported(he.name, ifn, setting, f"{ethtool_name(he)} cannot set {desc} (`ethtool -G` lacks it), "
                                                     f"and netlink could not be asked: {exc}") from None
    kept = _kept_nl(he, nl)
    _change(he, setting, "netlink rings-set " + desc, [nl, "rings-set", ifn, *args],
            [kept, "rings-set", ifn, "tcp-data-split", "auto", *old_hds, "expect", was])
    return True


def read_indir(he) -> Indir:
    r = _ethtool(he, "RSS indirection table", "-x", he.nic.ifname)
    ind = parse_indir(r.stdout)
    if not ind.table:
        raise Unsupported(he.name, he.nic.ifname, "RSS indirection table",
                          "ethtool -x shows no indirection table: " + " ".join(r.stdout.split())[:200])
    return ind


def rss_exclude_queue(he, q: int) -> bool:
    """`ethtool -X IF equal q`: RSS spreads over queues 0..q-1 only, so queue q gets only steered flows.

    The undo rebuilds the captured table (`default` only when it was the default);
    a table ethtool -X cannot rebuild is left alone (NicSetupError).
    """
    setting = "RSS indirection table"
    if q < 1:
        raise NicSetupError(he.name, he.nic.ifname, setting, f"cannot keep RSS off queue {q}: it needs queues below it")
    ind = read_indir(he)
    want = [i % q for i in range(len(ind.table))]
    if ind.table == want:
        return False
    restore = indir_restore_args(ind)
    if restore is None:
        raise NicSetupError(he.name, he.nic.ifname, setting,
                            "the current indirection table cannot be rebuilt with ethtool -X (not default, equal "
                            "or weight); not changing it")
    ifn = he.nic.ifname
    _change(he, setting, f"ethtool -X equal {q}", ["ethtool", "-X", ifn, "equal", str(q)],
            ["ethtool", "-X", ifn, *restore])
    return True


def read_channels(he) -> Channels:
    r = _ethtool(he, "channels", "-l", he.nic.ifname)
    return parse_channels(r.stdout)


def set_channels(he, combined: int | None = None, rx: int | None = None, tx: int | None = None) -> bool:
    """`ethtool -L`; the undo sets every channel count the NIC reported before. False when nothing changes."""
    setting = "channels"
    ch = read_channels(he)
    want = {k: v for k, v in (("combined", combined), ("rx", rx), ("tx", tx)) if v is not None}
    if not want:
        raise ValueError("set_channels: give combined= or rx=/tx=")
    for k, v in want.items():
        if ch.max.get(k) is None:
            raise Unsupported(he.name, he.nic.ifname, setting, f"the NIC has no separate {k} channels (n/a)")
        if v > (ch.max[k] or 0) or v < 0:
            raise Unsupported(he.name, he.nic.ifname, setting,
                              f"{k} {v} is outside 0..{ch.max[k]} (ethtool -l pre-set maximum)")
    if all(ch.current.get(k) == v for k, v in want.items()):
        return False
    args = [x for k, v in want.items() for x in (k, str(v))]
    undo = [x for k in ch.settable() for x in (k, str(ch.current[k]))]
    ifn = he.nic.ifname
    _change(he, setting, "ethtool -L " + " ".join(args), ["ethtool", "-L", ifn, *args], ["ethtool", "-L", ifn, *undo])
    return True


def read_features(he) -> dict[str, tuple[bool, bool]]:
    r = _ethtool(he, "features", "-k", he.nic.ifname)
    return parse_features(r.stdout)


def set_feature(he, feature: str, on: bool) -> bool:
    """`ethtool -K IF feature on|off`; the undo sets the value read before. False when already so."""
    long = FEATURE_ALIASES.get(feature, feature)
    setting = f"feature {feature}"
    feats = read_features(he)
    if long not in feats:
        raise Unsupported(he.name, he.nic.ifname, setting, f"ethtool -k does not list {long}")
    cur, fixed = feats[long]
    if cur == on:
        return False
    if fixed:
        raise Unsupported(he.name, he.nic.ifname, setting, f"{long}: {'on' if cur else 'off'} [fixed]")
    ifn = he.nic.ifname
    w, old = ("on" if on else "off"), ("on" if cur else "off")
    _change(he, setting, f"ethtool -K {feature} {w}", ["ethtool", "-K", ifn, feature, w],
            ["ethtool", "-K", ifn, feature, old])
    return True


def sysctl(he, name: str, value: str | int) -> bool:
    """A sysctl through the journal (which captures the old value); False when already set."""
    key = "/proc/sys/" + name.replace(".", "/")
    r = he.t.run(["cat", key], check=False, timeout=15)
    if not r.ok:
        raise Unsupported(he.name, he.nic.ifname, f"sysctl {name}", _message(r))
    if r.stdout.split() == str(value).split():
        return False
    he.journal.sysctl(name, str(value))
    return True


# Adds the rule (args after the id file go to `ethtool -N`) and keeps the rule id in a
# file on the host, so an undo journaled before the id was known can delete it.
_ADD_RULE = ('f=$1; shift; out=$(ethtool -N "$@" 2>&1); rc=$?; printf "%s\\n" "$out"; [ $rc -eq 0 ] || exit $rc; '
             'id=$(printf "%s\\n" "$out" | sed -n "s/.*Added rule with ID \\([0-9][0-9]*\\).*/\\1/p" | head -n 1); '
             '[ -n "$id" ] || { echo "no rule id in ethtool output" >&2; exit 1; }; '
             'umask 077; printf "%s\\n" "$id" > "$f.tmp" && mv "$f.tmp" "$f" && sync "$f"')
_DEL_RULE = ('[ -f "$1" ] || exit 0; id=$(cat "$1"); '
             'if [ -n "$id" ]; then ethtool -N "$2" delete "$id" || exit 1; fi; rm -f "$1"')


def flow_rule(he, proto: str, dst_port: int, queue: int, src_ip: str | None = None, dst_ip: str | None = None,
              src_port: int | None = None) -> int:
    """`ethtool -N IF flow-type tcp4|tcp6|udp4|udp6 ... action queue`; return the rule id.

    The undo (`ethtool -N IF delete ID`) is journaled before the rule exists: the rule
    id is written to a file on the host as soon as ethtool prints "Added rule with ID N".
    """
    setting = f"flow rule ({proto} dst-port {dst_port} -> queue {queue})"
    if proto not in ("tcp4", "tcp6", "udp4", "udp6"):
        raise ValueError(f"flow_rule: proto must be tcp4/tcp6/udp4/udp6, not {proto!r}")
    spec = ["flow-type", proto]
    if src_ip:
        spec += ["src-ip", str(ipaddress.ip_address(src_ip))]
    if dst_ip:
        spec += ["dst-ip", str(ipaddress.ip_address(dst_ip))]
    if src_port is not None:
        spec += ["src-port", str(int(src_port))]
    spec += ["dst-port", str(int(dst_port)), "action", str(int(queue))]
    ifn = he.nic.ifname
    jdir = posixpath.dirname(he.journal.path) or JOURNAL_DIR
    idfile = posixpath.join(jdir, f"rule.{secrets.token_hex(6)}")
    he.t.run(["sh", "-c", 'umask 077 && mkdir -p "$1"', "sh", jdir], timeout=15)
    _change(he, setting, "ethtool -N " + " ".join(spec), ["sh", "-c", _ADD_RULE, "sh", idfile, ifn, *spec],
            ["sh", "-c", _DEL_RULE, "sh", idfile, ifn])
    rid = he.t.run(["cat", idfile], check=False, timeout=15).stdout.strip()
    if not rid.isdigit():
        raise NicSetupError(he.name, ifn, setting, "rule added but its id could not be read back")
    return int(rid)


# -- the whole zero-copy setup ---------------------------------------------------------

@dataclass
class ZcSetup:
    queue: int
    rule_id: int
    changed: list[str] = field(default_factory=list)
    rule: list[str] = field(default_factory=list)


def prepare_zero_copy(he, queue: int | None, port: int, peer_addr: str, local_addr: str | None = None) -> ZcSetup:
    """Make `queue` receive the flow from `peer_addr` to `port`, and only it, with header split on.

    Channels first (at least 2 RX queues, enough for `queue`; None picks the last
    queue), then header split, ntuple filters, RSS kept below `queue`, then a
    flow rule (5-tuple-less: src-ip, dst-ip, dst-port; falls back to dst-ip and
    dst-port, then dst-port alone, for NICs with fewer match fields).
    All changes are journaled; the caller's journal restore undoes them LIFO.
    """
    changed: list[str] = []
    ch = read_channels(he)
    need = max(2, (queue + 1) if queue is not None else 2)
    if ch.rx_queues() < need:
        if ch.max.get("combined"):
            if set_channels(he, combined=max(need - (ch.current.get("rx") or 0), 1)):
                changed.append("channels")
        elif ch.max.get("rx"):
            if set_channels(he, rx=need):
                changed.append("channels")
        else:
            raise Unsupported(he.name, he.nic.ifname, "channels",
                              f"{ch.rx_queues()} RX queue(s) and no way to add more; zero-copy RX needs {need}")
        ch = read_channels(he)
    nq = ch.rx_queues()
    q = nq - 1 if queue is None else queue
    if not 1 <= q < nq:
        raise Unsupported(he.name, he.nic.ifname, "queue", f"queue {q} is not in 1..{nq - 1} ({nq} RX queues)")
    if set_header_split(he, True):
        changed.append("header split")
    if set_feature(he, "ntuple", True):
        changed.append("ntuple")
    if rss_exclude_queue(he, q):
        changed.append("rss")
    fam6 = ipaddress.ip_address(peer_addr).version == 6
    proto = "tcp6" if fam6 else "tcp4"
    tries: list[dict[str, Any]] = [dict(src_ip=peer_addr, dst_ip=local_addr)] if local_addr else []
    tries += [dict(src_ip=peer_addr), dict(dst_ip=local_addr) if local_addr else None, {}]
    last: NicSetupError | None = None
    seen: list[dict] = []
    for kw in tries:
        if kw is None or kw in seen:
            continue
        seen.append(kw)
        try:
            rid = flow_rule(he, proto, port, q, **kw)
        except NicSetupError as exc:
            last = exc
            continue
        changed.append("flow rule")
        rule = [f"{k.replace('_', '-')}={v}" for k, v in kw.items()] + [f"dst-port={port}", f"queue={q}"]
        return ZcSetup(q, rid, changed, rule)
    assert last is not None
    raise last
