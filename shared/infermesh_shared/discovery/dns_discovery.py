"""Replicas from DNS: one name (a compose service or a headless Kubernetes Service) that resolves
to every replica's address, re-resolved each time it is asked."""

from __future__ import annotations

import socket

from infermesh_shared.discovery.replica_discovery import DiscoveryError, ReplicaDiscovery


def split_host_port(host_port: str) -> tuple[str, int]:
    """Returns (host, port) of "host:port" or "[v6]:port"; raises ValueError with the expected form."""
    host, sep, port_text = host_port.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {host_port!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {host_port!r}")
    return host, port


def join_host_port(host: str, port: int) -> str:
    """Returns "host:port", bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsDiscovery(ReplicaDiscovery):
    """Every A/AAAA record of `dns_name` ("host:port") is one replica on that port."""

    kind = "dns"

    def __init__(self, dns_name: str) -> None:
        if not dns_name:
            raise ValueError("discovery = dns needs dns_name (host:port, e.g. scheduler:50051)")
        try:
            self._host, self._port = split_host_port(dns_name)
        except ValueError as exc:
            raise ValueError(f"dns_name: {exc}") from exc

    def resolve(self) -> frozenset[str]:
        try:
            records = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DiscoveryError(f"cannot resolve {self._host!r}: {exc}") from exc
        return frozenset(join_host_port(str(record[4][0]), self._port) for record in records)
