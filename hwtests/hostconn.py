"""Open the transport an inventory host asks for."""

from __future__ import annotations

from .inventory import Defaults, Host, Inventory
from .transport import LocalTransport, SSHTransport, Transport


def connect(host: Host, defaults: Defaults, inventory: Inventory | None = None) -> Transport:
    """A transport for `host`; SSH connects lazily on the first command."""
    if host.ssh is None:
        return LocalTransport(host.name, defaults.command_timeout)
    jump = None
    if host.ssh.jump:
        if inventory is None:
            raise ValueError("a jump host needs the inventory")
        jhost = inventory.hosts[host.ssh.jump]
        jump = connect(jhost, defaults, inventory)
    return SSHTransport(host.name, host.ssh, connect_timeout=defaults.connect_timeout,
                        default_timeout=defaults.command_timeout, jump=jump)
