"""Switch a host to a named kernel build and prove it happened.

VM hosts of the QEMU lab are restarted with the other kernel; real hosts are
kexec'ed into the build's image (or run the inventory's `boot_command`). Either
way the switch is checked: SSH comes back within the timeout, `uname -r` is the
build's release, and the boot id changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import InfraError, InputError
from .hostconn import connect
from .inventory import Host, Inventory
from .transport import RemoteError, Transport


@dataclass
class BootState:
    release: str
    boot_id: str


def current(t: Transport) -> BootState:
    r = t.run("uname -r; cat /proc/sys/kernel/random/boot_id", timeout=15)
    lines = r.stdout.split()
    if len(lines) < 2:
        raise RemoteError(f"{t.name}: cannot read kernel release and boot id")
    return BootState(lines[0], lines[1])


def build_of(inv: Inventory, host: Host, label: str):
    if label not in host.kernels:
        raise InputError(f"{inv.path}: host '{host.name}' has no kernel build '{label}' "
                         f"(builds: {', '.join(host.kernels) or 'none'})")
    return host.kernels[label]


def switch(inv: Inventory, host: Host, label: str, timeout: float = 300.0, force: bool = False,
           progress=lambda s: None) -> BootState:
    """Boot `host` into build `label`; return the new boot state."""
    kb = build_of(inv, host, label)
    t = connect(host, inv.defaults, inv)
    try:
        before = current(t)
    except RemoteError:
        before = None
    finally:
        t.close()
    if before is not None and not force and kb.release and before.release == kb.release:
        progress(f"{host.name}: already on {label} ({kb.release})")
        return before
    progress(f"{host.name}: switching to {label} ({kb.release or kb.image})")
    t0 = time.monotonic()
    if host.vm is not None:
        from . import labvm
        labvm.switch_kernel(host, label)
    else:
        _kexec(inv, host, kb)
    after = wait_boot(inv, host, before.boot_id if before else None, timeout)
    if kb.release and after.release != kb.release:
        raise InfraError(f"{host.name}: booted {after.release}, expected {kb.release} for build '{label}'")
    if before is not None and after.boot_id == before.boot_id:
        raise InfraError(f"{host.name}: boot id unchanged after switching to '{label}': the host did not reboot")
    progress(f"{host.name}: on {label} ({after.release}) after {time.monotonic() - t0:.1f} s")
    return after


def _kexec(inv: Inventory, host: Host, kb) -> None:
    t = connect(host, inv.defaults, inv)
    try:
        if kb.boot_command:
            cmd = kb.boot_command
        else:
            if not kb.image:
                raise InputError(f"{inv.path}: hosts.{host.name}.kernels.{kb.label}: needs 'image' or 'boot_command'")
            load = ["kexec", "-l", kb.image]
            if kb.initrd:
                load.append(f"--initrd={kb.initrd}")
            load += [f"--command-line={kb.cmdline}"] if kb.cmdline else ["--reuse-cmdline"]
            t.run(load, timeout=120)
            cmd = "systemctl kexec 2>/dev/null || kexec -e"
        # Detach, so the command returns before the connection dies with the old kernel.
        t.run(["sh", "-c", f"(sleep 1; {cmd}) >/dev/null 2>&1 </dev/null &"], timeout=15)
    finally:
        t.close()


def wait_boot(inv: Inventory, host: Host, old_boot_id: str | None, timeout: float) -> BootState:
    """Poll SSH until the host answers with a boot id other than `old_boot_id`."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        t = connect(host, inv.defaults, inv)
        try:
            st = current(t)
            if st.boot_id != old_boot_id:
                return st
            last = "still on the old boot"
        except RemoteError as exc:
            last = str(exc)
        finally:
            t.close()
        time.sleep(1.0)
    raise InfraError(f"{host.name}: not back within {timeout:g} s after the kernel switch ({last})")
