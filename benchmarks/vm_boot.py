"""VM lab boot figures: launch -> SSH ready per kernel (median of N), image build time,
cold (download) vs cached `up`.

    python benchmarks/vm_boot.py [--repeat 3] [--kernels R1,R2] [--no-cold] [--json]

"Cold" uses an empty temporary cache (kernels downloaded with apt-get, images
built); "cached" repeats `up` on that cache. Boot times come from restarting
vm-a on each kernel (`switch_kernel`), with vm-b idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hwtests import inventory, labvm, vmimage  # noqa: E402


def timed_up(state: Path, kernels: list[str]) -> float:
    t0 = time.monotonic()
    labvm.up(state, kernels=kernels, progress=lambda s: None)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kernels", help="comma-separated releases (default: newest 6.12 and 6.1 cloud)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (download) run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    labvm.preflight()
    kernels = args.kernels.split(",") if args.kernels else labvm.default_releases()
    out: dict = {"kernels": kernels, "repeat": args.repeat}
    work = Path(tempfile.mkdtemp(prefix="hwt-vmboot-"))
    old_cache = os.environ.get("HWTESTS_CACHE")
    try:
        if not args.no_cold:
            os.environ["HWTESTS_CACHE"] = str(work / "cache")
        t0 = time.monotonic()
        vmimage._write_cached(vmimage.base_tree(), work / "imgtest", "base", compress=False)
        out["image_build_s"] = round(time.monotonic() - t0, 2)
        state = work / "state"
        if not args.no_cold:
            out["up_cold_s"] = round(timed_up(state, kernels), 1)
            labvm.down(state)
        out["up_cached_s"] = round(timed_up(state, kernels), 1)
        st = labvm.status(state)
        out["up_ready_s"] = {n: h["ready_s"] for n, h in st["hosts"].items()}
        inv = inventory.load(st["inventory"])
        host = inv.hosts["vm-a"]
        boots: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for label in host.kernels:
                labvm.switch_kernel(host, label)
                boots.setdefault(label, []).append(labvm.status(state)["hosts"]["vm-a"]["ready_s"])
        out["boot_to_ssh_s"] = {lb: {"release": host.kernels[lb].release, "median": statistics.median(v),
                                     "runs": v} for lb, v in boots.items()}
        t0 = time.monotonic()
        labvm.down(state)
        out["down_s"] = round(time.monotonic() - t0, 2)
    finally:
        labvm.down(work / "state")
        if old_cache is None:
            os.environ.pop("HWTESTS_CACHE", None)
        else:
            os.environ["HWTESTS_CACHE"] = old_cache
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"VM lab (QEMU TCG, -smp {labvm.SMP}, {labvm.MEMORY_MB} MiB), kernels: {', '.join(kernels)}")
    print(f"  base image build (uncached):   {out['image_build_s']:.2f} s")
    if "up_cold_s" in out:
        print(f"  up, cold cache (download):     {out['up_cold_s']:.1f} s")
    print(f"  up, cached:                    {out['up_cached_s']:.1f} s   (both VMs booting at once: "
          + ", ".join(f"{n} {s:.1f} s" for n, s in out["up_ready_s"].items()) + ")")
    for lb, b in out["boot_to_ssh_s"].items():
        print(f"  launch -> SSH ready, {lb:8s} median {b['median']:.2f} s  runs {b['runs']}  ({b['release']})")
    print(f"  down:                          {out['down_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
