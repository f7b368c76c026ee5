"""A loopback port nobody listens on right now, for options whose 0 means "off" rather than "any"."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
