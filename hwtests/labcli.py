"""`hwtests lab up | down | status`: the virtual labs on this machine."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .errors import InputError

KINDS = {"netns": "hwtests.labnetns", "vm": "hwtests.labvm"}


def default_state_dir(kind: str) -> Path:
    return Path(".hwtests") / "lab" / kind


def add_command(sub) -> None:
    p = sub.add_parser("lab", help="build, tear down or inspect a virtual lab on this machine",
                       description="Virtual labs: 'netns' (two network namespaces per pair, each with a real "
                       "sshd, joined by veth; nothing added to the root namespace; needs root) or 'vm' "
                       "(two QEMU TCG virtual machines running real Debian kernels). `up` prints the path "
                       "of the inventory it wrote.")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--kind", choices=sorted(KINDS), default="netns", help="lab kind (default: netns)")
    p.add_argument("--state-dir", type=Path, help="where the lab keeps its state (default: .hwtests/lab/KIND)")
    p.add_argument("--pairs", type=int, default=1, help="netns lab: number of host pairs (default 1)")
    p.add_argument("--kernels", help="vm lab: comma-separated Debian kernel releases (default: the newest "
                   "6.12 and 6.1 cloud kernels of Debian 12 and the newest 7.x of trixie-backports, "
                   "labelled deb6.12, deb6.1, deb7)")
    p.add_argument("--kernel-build", metavar="LABEL",
                   help="vm lab: the build the VMs boot first (default: the first, deb6.12)")
    p.add_argument("--require", metavar="FEATURES",
                   help="vm lab: comma-separated guest features both VMs must have on the boot build "
                   "(io_uring, zcrx, udmabuf); if one is missing, the lab is taken down and the exit is 4")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mod = importlib.import_module(KINDS[args.kind])
    state_dir = args.state_dir or default_state_dir(args.kind)
    progress = (lambda s: print(s, file=sys.stderr, flush=True))
    if args.action == "up":
        kwargs = {}
        if args.kind == "netns":
            kwargs["pairs"] = args.pairs
            if args.kernels or args.kernel_build or args.require:
                raise InputError("--kernels, --kernel-build and --require are options of the vm lab (--kind vm)")
        else:
            if args.kernels is not None:
                kwargs["kernels"] = [k.strip() for k in args.kernels.split(",") if k.strip()]
                if not kwargs["kernels"]:
                    raise InputError("--kernels: empty list")
            if args.kernel_build is not None:
                kwargs["boot"] = args.kernel_build
            if args.require is not None:
                kwargs["require"] = [f.strip() for f in args.require.split(",") if f.strip()]
        inv = mod.up(state_dir, progress=progress, **kwargs)
        if args.json:
            print(json.dumps({"inventory": str(inv), "kind": args.kind}))
        else:
            print(inv)
        return 0
    if args.action == "down":
        mod.down(state_dir, progress=progress)
        if args.json:
            print(json.dumps({"down": True, "kind": args.kind}))
        return 0
    st = mod.status(state_dir)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(f"{args.kind} lab: {'up' if st.get('up') else 'down'} ({st.get('state_dir')})")
        for name, h in (st.get("hosts") or {}).items():
            print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in h.items()))
        if st.get("inventory"):
            print(f"  inventory: {st['inventory']}")
    return 0 if st.get("up") else 1
