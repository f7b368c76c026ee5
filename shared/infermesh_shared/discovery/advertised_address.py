"""The address a scheduler registers for frontends to dial."""

from __future__ import annotations

import socket

from infermesh_shared.discovery.dns_discovery import join_host_port

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def advertised_address(advertise_address: str, host: str, port: int) -> str:
    """Returns `advertise_address` when set; else host:port, where a wildcard bind host becomes
    this machine's address (in a container: its IP on the container network)."""
    if advertise_address:
        return advertise_address
    if host in _WILDCARDS:
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = socket.getfqdn()
    return join_host_port(host, port)
