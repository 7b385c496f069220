"""Switch a host to a named kernel build and prove it happened.

VM hosts of the QEMU lab are restarted with the other kernel; real hosts are
kexec'ed into the build's image (or run the inventory's `boot_command`). Either
way the switch is checked: SSH comes back within the timeout, `uname -r` is the
build's release, and the boot id changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import probe
from .errors import InfraError, InputError
from .hostconn import connect
from .inventory import Host, Inventory, KernelBuild
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


class BuildMismatch(InputError):
    """A host does not run the kernel build its results would be stored under."""

    def __init__(self, problems: list[str], label: str):
        super().__init__("; ".join(problems) + f" (nothing was run; --boot switches to '{label}' first)")


def identity_mismatch(host: str, label: str, kb: KernelBuild | None, release: str | None,
                      config_hash: str | None) -> str | None:
    """Why a host running `release` (with config `config_hash`) is not build `label` as the
    inventory declares it; None when it is, or when the build declares nothing to check."""
    if kb is None:
        return None
    if kb.release and release != kb.release:
        return (f"{host}: kernel build '{label}' declares release {kb.release}, "
                f"but {host} runs {release or 'an unknown release'}")
    if kb.config_hash and not (config_hash or "").lower().startswith(kb.config_hash.lower()):
        running = config_hash[:16] if config_hash else "nothing (no readable config)"
        return (f"{host}: kernel build '{label}' declares config sha256 {kb.config_hash[:16]}, "
                f"but the config {host} runs hashes to {running}")
    return None


def running_identity(t: Transport, with_config: bool) -> tuple[str, str | None]:
    """The release a host runs and, when asked, the hash of its config (as `hwtests probe` shows it)."""
    if not with_config:
        return current(t).release, None
    p = probe.probe_host(t, [])
    return p.get("kernel_release") or "", p.get("config_hash")


def identity_problem(t: Transport, host: Host, label: str) -> str | None:
    """Why the host behind `t` is not running build `label` as declared (reads only), or None."""
    kb = host.kernels.get(label)
    if kb is None or not (kb.release or kb.config_hash):
        return None
    release, cfg = running_identity(t, with_config=bool(kb.config_hash))
    return identity_mismatch(host.name, label, kb, release, cfg)


def check_identity(t: Transport, host: Host, label: str) -> None:
    """Raise BuildMismatch when the host behind `t` does not run build `label` as declared."""
    why = identity_problem(t, host, label)
    if why:
        raise BuildMismatch([why], label)


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
