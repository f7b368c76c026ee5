"""A worker obeys only the scheduler it registered with, not any `scheduler` certificate of the CA.

Before each RegisterWorker the worker opens a TLS connection to the scheduler address with its
own certificate, checks the scheduler's certificate against the cluster CA and its role name, and
pins the SHA-256 fingerprint of that certificate. From then on the scheduler-only WorkerService
RPCs (LoadModel, InitKVCache, Execute, Reset, SendKVBlocks) answer only a caller presenting
exactly that certificate; any other gets PERMISSION_DENIED. The pin is taken before registering
because the scheduler calls LoadModel while RegisterWorker is still in flight; registering again
(a restarted scheduler, perhaps with a rotated certificate) pins again.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from typing import Any

import grpc
from infermesh_shared.grpc_transport import TlsFiles
from infermesh_shared.peer_roles import SCHEDULER, guard_handler

_WORKER_SERVICE = "/infermesh.v1.WorkerService/"
# Blocks of a live migration come from the same rank of another group, not from a scheduler.
_NOT_PINNED = frozenset({f"{_WORKER_SERVICE}ReceiveKVBlocks"})


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _split(address: str) -> tuple[str, int]:
    target = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"scheduler address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def scheduler_fingerprint(address: str, tls: TlsFiles, timeout_s: float = 5.0) -> str:
    """The fingerprint of the certificate the scheduler at `address` presents, verified against
    the cluster CA and the `scheduler` role name. Raises OSError (ssl.SSLError) when it cannot."""
    host, port = _split(address)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        context.wrap_socket(raw, server_hostname=SCHEDULER) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"scheduler {address} presented no certificate")
    return fingerprint(der)


def caller_fingerprint(context: Any) -> str:
    """The fingerprint of the caller's verified certificate; "" without one."""
    pems = (context.auth_context() or {}).get("x509_pem_cert") or []
    if not pems:
        return ""
    return fingerprint(ssl.PEM_cert_to_DER_cert(pems[0].decode("ascii")))


class SchedulerPin:
    """The fingerprint of this worker's scheduler; empty until the first registration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fingerprint = ""

    def set(self, value: str) -> None:
        with self._lock:
            self._fingerprint = value

    def get(self) -> str:
        with self._lock:
            return self._fingerprint

    def refusal(self, method: str, context: Any) -> str | None:
        pinned = self.get()
        if not pinned:
            return f"{method}: this worker has not registered with a scheduler yet"
        caller = caller_fingerprint(context)
        if caller != pinned:
            return (
                f"{method}: this worker serves the scheduler it registered with (certificate "
                f"sha256 {pinned[:16]}...), not the caller (sha256 {caller[:16] or 'none'}...)"
            )
        return None


class PinnedSchedulerInterceptor(grpc.ServerInterceptor):
    """Refuses (PERMISSION_DENIED) scheduler-only WorkerService calls from any other certificate."""

    def __init__(self, pin: SchedulerPin) -> None:
        self._pin = pin

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_WORKER_SERVICE) or method in _NOT_PINNED:
            return handler
        return guard_handler(handler, lambda context: self._pin.refusal(method, context))
