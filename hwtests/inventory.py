"""The inventory: hosts, their NICs and kernel builds, and the pairs tests run on.

Loaded from YAML and validated on load. Every error is one line naming the
file, the line and the field path (`inventory.yaml:14: pairs[0].rx.nic: unknown
NIC 'eth9' on host 'dut1'`), so a lab operator can fix it without a traceback.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
CONFIG_HASH_RE = re.compile(r"^[0-9a-fA-F]{12,64}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_label(value: str, option: str = "--kernel-build") -> str:
    """A kernel build label as given on a command line: stored, shown and compared as is, so it
    must be non-empty, printable and short."""
    if not value.strip():
        raise InputError(f"{option}: an empty label")
    if not value.isprintable() or len(value) > 100:
        raise InputError(f"{option}: {value[:100]!r}: a label is up to 100 printable characters")
    return value


@dataclass
class SSHConfig:
    host: str
    port: int = 22
    user: str = "root"
    key: str | None = None
    known_hosts: str | None = None
    accept_new_host_key: bool = False   # explicit opt-in to trust an unknown key (never a changed one)
    jump: str | None = None             # name of another inventory host to tunnel through
    proxy_command: str | None = None
    netns: str | None = None            # open the TCP socket inside this network namespace
    password_env: str | None = None     # name of an environment variable holding a password
    passphrase_env: str | None = None   # name of an environment variable holding the key's passphrase


@dataclass
class Nic:
    name: str
    ifname: str
    ipv4: str | None = None
    ipv6: str | None = None
    speed_mbps: int | None = None

    @property
    def addr(self) -> str:
        """The data address tests use: IPv4 when present, else IPv6 (without prefix)."""
        return (self.ipv4 or self.ipv6 or "").split("/")[0]


@dataclass
class KernelBuild:
    label: str
    image: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    headers: str | None = None
    release: str | None = None
    config_hash: str | None = None      # sha256 of the build's .config (or a prefix of 12+ hex digits)
    boot_command: str | None = None


CPULIST_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass
class Pin:
    """Where a host runs what it measures: the page_pool module load on one CPU (published
    figures use `taskset -c 0 insmod`), receiver and sender on CPU lists (None: not pinned)."""

    pagepool_cpu: int | None = 0
    rx_cpus: str | None = None
    tx_cpus: str | None = None


@dataclass
class Host:
    name: str
    ssh: SSHConfig | None            # None: this machine (local transport)
    nics: dict[str, Nic]
    kernels: dict[str, KernelBuild] = field(default_factory=dict)
    pagepool_src: str | None = None
    build_dir: str | None = None
    vm: dict[str, Any] | None = None
    line: int = 0
    pin: Pin = field(default_factory=Pin)


@dataclass
class Side:
    host: str
    nic: str


@dataclass
class Pair:
    name: str
    rx: Side
    tx: Side


@dataclass
class Defaults:
    command_timeout: float = 60.0
    connect_timeout: float = 10.0


@dataclass
class Inventory:
    path: Path
    hosts: dict[str, Host]
    pairs: dict[str, Pair]
    defaults: Defaults
    thresholds: dict[str, dict[str, float]]
    sha256: str

    def pair(self, name: str) -> Pair:
        if name not in self.pairs:
            raise InputError(f"{self.path}: unknown pair '{name}'; pairs: {', '.join(self.pairs) or 'none'}")
        return self.pairs[name]


class _Ctx:
    """Walks the YAML node tree keeping the file name for error lines."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, node: yaml.Node | None, where: str, msg: str) -> InputError:
        line = node.start_mark.line + 1 if node is not None else 1
        return InputError(f"{self.path}:{line}: {where}: {msg}" if where else f"{self.path}:{line}: {msg}")

    def mapping(self, node: yaml.Node, where: str, known: set[str], required: set[str] = frozenset()) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, f"expected a mapping, got {_kind(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(k, where, "keys must be names")
            sub = f"{where}.{key}" if where else key
            if key in out:
                raise self.fail(k, sub, "duplicate key")
            if key not in known:
                raise self.fail(k, sub, f"unknown field (expected one of: {', '.join(sorted(known))})")
            out[key] = (k, v)
        for r in sorted(required - out.keys()):
            raise self.fail(node, f"{where}.{r}" if where else r, "missing required field")
        return out

    def scalar(self, node: yaml.Node, where: str, typ: type, allow_none: bool = False):
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            if allow_none:
                return None
            raise self.fail(node, where, "must not be empty")
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, where, f"expected {typ.__name__}, got {_kind(node)}")
        value = yaml.safe_load(yaml.serialize(node)) if node.style is None else node.value
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = node.value
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise self.fail(node, where, f"expected {typ.__name__}, got {node.value!r}")
        return value


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def load(path: str | os.PathLike) -> Inventory:
    """Read and validate an inventory file; raise InputError with one clear line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read inventory: {exc.strerror}") from None
    return loads(raw.decode("utf-8", errors="replace"), str(p), base_dir=p.parent)


def loads(text: str, name: str = "inventory.yaml", base_dir: Path | None = None) -> Inventory:
    ctx = _Ctx(name)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{name}:{line}: invalid YAML: {problem}") from None
    if root is None:
        raise InputError(f"{name}:1: empty inventory (expected 'hosts' and 'pairs')")
    top = ctx.mapping(root, "", {"hosts", "pairs", "defaults", "thresholds", "lab"}, {"hosts"})
    base = base_dir or Path(".")

    defaults = Defaults()
    if "defaults" in top:
        d = ctx.mapping(top["defaults"][1], "defaults", {"command_timeout", "connect_timeout"})
        for key, (_, v) in d.items():
            val = ctx.scalar(v, f"defaults.{key}", float)
            if not 0 < val <= 86400:
                raise ctx.fail(v, f"defaults.{key}", "must be between 0 and 86400 seconds")
            setattr(defaults, key, val)

    hosts: dict[str, Host] = {}
    hnode = top["hosts"][1]
    if not isinstance(hnode, yaml.MappingNode):
        raise ctx.fail(hnode, "hosts", f"expected a mapping of host names, got {_kind(hnode)}")
    for k, v in hnode.value:
        hname = k.value
        if not isinstance(hname, str) or not NAME_RE.match(hname):
            raise ctx.fail(k, f"hosts.{hname}", "host names are letters, digits, '.', '_' and '-'")
        if hname in hosts:
            raise ctx.fail(k, f"hosts.{hname}", "duplicate host")
        hosts[hname] = _host(ctx, hname, v, base)
    for h in hosts.values():
        if h.ssh and h.ssh.jump and h.ssh.jump not in hosts:
            raise InputError(f"{name}:{h.line}: hosts.{h.name}.ssh.jump: unknown host '{h.ssh.jump}'")

    pairs: dict[str, Pair] = {}
    if "pairs" in top:
        pnode = top["pairs"][1]
        if not isinstance(pnode, yaml.SequenceNode):
            raise ctx.fail(pnode, "pairs", f"expected a list, got {_kind(pnode)}")
        for i, item in enumerate(pnode.value):
            where = f"pairs[{i}]"
            m = ctx.mapping(item, where, {"name", "rx", "tx"}, {"name", "rx", "tx"})
            pname = ctx.scalar(m["name"][1], f"{where}.name", str)
            if not NAME_RE.match(pname):
                raise ctx.fail(m["name"][1], f"{where}.name", "pair names are letters, digits, '.', '_' and '-'")
            if pname in pairs:
                raise ctx.fail(m["name"][1], f"{where}.name", f"duplicate pair '{pname}'")
            sides = {}
            for role in ("rx", "tx"):
                sm = ctx.mapping(m[role][1], f"{where}.{role}", {"host", "nic"}, {"host", "nic"})
                hn = ctx.scalar(sm["host"][1], f"{where}.{role}.host", str)
                if hn not in hosts:
                    raise ctx.fail(sm["host"][1], f"{where}.{role}.host",
                                   f"unknown host '{hn}' (hosts: {', '.join(hosts)})")
                nn = ctx.scalar(sm["nic"][1], f"{where}.{role}.nic", str)
                if nn not in hosts[hn].nics:
                    raise ctx.fail(sm["nic"][1], f"{where}.{role}.nic", f"unknown NIC '{nn}' on host '{hn}'")
                sides[role] = Side(hn, nn)
            if sides["rx"].host == sides["tx"].host and sides["rx"].nic == sides["tx"].nic:
                raise ctx.fail(item, where, "rx and tx are the same NIC")
            pairs[pname] = Pair(pname, sides["rx"], sides["tx"])

    thresholds: dict[str, dict[str, float]] = {}
    if "thresholds" in top:
        tm = top["thresholds"][1]
        if not isinstance(tm, yaml.MappingNode):
            raise ctx.fail(tm, "thresholds", f"expected a mapping of metric names, got {_kind(tm)}")
        for k, v in tm.value:
            metric = k.value
            fields = ctx.mapping(v, f"thresholds.{metric}", {"fail_p", "pass_p", "fail_abs", "fail_rel", "pass_abs", "pass_rel"})
            thresholds[metric] = {f: ctx.scalar(n, f"thresholds.{metric}.{f}", float) for f, (_, n) in fields.items()}

    return Inventory(Path(name), hosts, pairs, defaults, thresholds,
                     hashlib.sha256(text.encode()).hexdigest())


def _path(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    v = os.path.expanduser(value)
    return v if os.path.isabs(v) else str((base / v).resolve())


def _pin(ctx: _Ctx, w: str, node: yaml.Node) -> Pin:
    pm = ctx.mapping(node, w, {"pagepool_cpu", "rx_cpus", "tx_cpus"})
    pin = Pin()
    if "pagepool_cpu" in pm:
        pin.pagepool_cpu = ctx.scalar(pm["pagepool_cpu"][1], f"{w}.pagepool_cpu", int, allow_none=True)
        if pin.pagepool_cpu is not None and not 0 <= pin.pagepool_cpu < 8192:
            raise ctx.fail(pm["pagepool_cpu"][1], f"{w}.pagepool_cpu", "a CPU number 0..8191, or null for no pinning")
    for key in ("rx_cpus", "tx_cpus"):
        if key in pm:
            v = ctx.scalar(pm[key][1], f"{w}.{key}", str, allow_none=True)
            if v is not None and not CPULIST_RE.match(v.replace(" ", "")):
                raise ctx.fail(pm[key][1], f"{w}.{key}", f"{v!r} is not a CPU list like 2 or 2-3,6")
            setattr(pin, key, v.replace(" ", "") if v is not None else None)
    return pin


def _host(ctx: _Ctx, hname: str, node: yaml.Node, base: Path) -> Host:
    w = f"hosts.{hname}"
    m = ctx.mapping(node, w, {"ssh", "local", "nics", "kernels", "pagepool_src", "build_dir", "vm",
                                          "pin"}, {"nics"})
    ssh = None
    if "ssh" in m and "local" in m:
        raise ctx.fail(m["local"][0], f"{w}.local", "a host is either 'ssh' or 'local', not both")
    if "ssh" in m:
        sw = f"{w}.ssh"
        sm = ctx.mapping(m["ssh"][1], sw, {"host", "port", "user", "key", "known_hosts", "accept_new_host_key",
                                           "jump", "proxy_command", "netns", "password_env", "passphrase_env"},
                         {"host"})
        s = SSHConfig(host=ctx.scalar(sm["host"][1], f"{sw}.host", str))
        for key in ("user", "key", "known_hosts", "jump", "proxy_command", "netns", "password_env", "passphrase_env"):
            if key in sm:
                setattr(s, key, ctx.scalar(sm[key][1], f"{sw}.{key}", str))
        for key in ("password_env", "passphrase_env"):     # the secret stays in the environment, never here
            if getattr(s, key) is not None and not ENV_NAME_RE.match(getattr(s, key)):
                raise ctx.fail(sm[key][1], f"{sw}.{key}", "the name of an environment variable (letters, digits, "
                               "'_'), not the secret itself")
        if "port" in sm:
            s.port = ctx.scalar(sm["port"][1], f"{sw}.port", int)
            if not 0 < s.port < 65536:
                raise ctx.fail(sm["port"][1], f"{sw}.port", f"port {s.port} out of range 1..65535")
        if "accept_new_host_key" in sm:
            s.accept_new_host_key = ctx.scalar(sm["accept_new_host_key"][1], f"{sw}.accept_new_host_key", bool)
        if s.netns is not None and not NAME_RE.match(s.netns):
            raise ctx.fail(sm["netns"][1], f"{sw}.netns", f"invalid namespace name {s.netns!r}")
        if s.jump and s.proxy_command:
            raise ctx.fail(sm["jump"][1], f"{sw}.jump", "use either 'jump' or 'proxy_command', not both")
        s.key, s.known_hosts = _path(base, s.key), _path(base, s.known_hosts)
        ssh = s
    elif "local" in m:
        if ctx.scalar(m["local"][1], f"{w}.local", bool) is not True:
            raise ctx.fail(m["local"][1], f"{w}.local", "set 'local: true' or give 'ssh'")
    else:
        raise ctx.fail(node, f"{w}.ssh", "missing required field (or 'local: true')")

    nics: dict[str, Nic] = {}
    nnode = m["nics"][1]
    if not isinstance(nnode, yaml.MappingNode) or not nnode.value:
        raise ctx.fail(nnode, f"{w}.nics", "expected a non-empty mapping of NIC names")
    for k, v in nnode.value:
        nname = k.value
        nw = f"{w}.nics.{nname}"
        if not isinstance(nname, str) or not NAME_RE.match(nname):
            raise ctx.fail(k, nw, "NIC names are letters, digits, '.', '_' and '-'")
        nm = ctx.mapping(v, nw, {"ifname", "ipv4", "ipv6", "speed"}, {"ifname"})
        nic = Nic(nname, ctx.scalar(nm["ifname"][1], f"{nw}.ifname", str))
        if not IFNAME_RE.match(nic.ifname):
            raise ctx.fail(nm["ifname"][1], f"{nw}.ifname", f"invalid interface name {nic.ifname!r}")
        for fam, cls in (("ipv4", ipaddress.IPv4Interface), ("ipv6", ipaddress.IPv6Interface)):
            if fam in nm:
                val = ctx.scalar(nm[fam][1], f"{nw}.{fam}", str)
                try:
                    cls(val)
                except ValueError:
                    raise ctx.fail(nm[fam][1], f"{nw}.{fam}", f"not an {fam} address: {val!r}") from None
                setattr(nic, fam, val)
        if "speed" in nm:
            nic.speed_mbps = ctx.scalar(nm["speed"][1], f"{nw}.speed", int)
        if not (nic.ipv4 or nic.ipv6):
            raise ctx.fail(v, nw, "needs an ipv4 or ipv6 data address")
        nics[nname] = nic

    kernels: dict[str, KernelBuild] = {}
    if "kernels" in m:
        knode = m["kernels"][1]
        if not isinstance(knode, yaml.MappingNode):
            raise ctx.fail(knode, f"{w}.kernels", f"expected a mapping of build labels, got {_kind(knode)}")
        for k, v in knode.value:
            label = k.value
            kw = f"{w}.kernels.{label}"
            if not isinstance(label, str) or not NAME_RE.match(label):
                raise ctx.fail(k, kw, "labels are letters, digits, '.', '_' and '-'")
            km = ctx.mapping(v, kw, {"image", "initrd", "cmdline", "headers", "release", "config_hash",
                                     "boot_command"})
            kb = KernelBuild(label)
            for key, (_, n) in km.items():
                setattr(kb, key, ctx.scalar(n, f"{kw}.{key}", str))
            if kb.config_hash is not None and not CONFIG_HASH_RE.match(kb.config_hash):
                raise ctx.fail(km["config_hash"][1], f"{kw}.config_hash",
                               "the sha256 of the build's .config: 12 to 64 hex digits")
            kb.image, kb.initrd, kb.headers = _path(base, kb.image), _path(base, kb.initrd), _path(base, kb.headers)
            kernels[label] = kb

    host = Host(hname, ssh, nics, kernels, line=node.start_mark.line + 1)
    for key in ("pagepool_src", "build_dir"):
        if key in m:
            setattr(host, key, ctx.scalar(m[key][1], f"{w}.{key}", str))
    if "pin" in m:
        host.pin = _pin(ctx, f"{w}.pin", m["pin"][1])
    if "vm" in m:
        vm = yaml.safe_load(yaml.serialize(m["vm"][1]))
        if not isinstance(vm, dict):
            raise ctx.fail(m["vm"][1], f"{w}.vm", "expected a mapping")
        host.vm = vm
    return host
