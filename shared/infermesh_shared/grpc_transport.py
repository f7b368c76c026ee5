"""The one door to gRPC transport: every server and every channel in infermesh is made here.

Servers never share a port (`grpc.so_reuseport = 0`: a second process on a taken port fails
instead of silently splitting the traffic), a bind failure is a `PortInUseError` naming the
address, and TLS credentials (mutual TLS between services) are applied in one place.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

logger = logging.getLogger(__name__)

# Exit status of a service that cannot bind its port (issue 11: "exit status 1").
EXIT_PORT_IN_USE = 1

ChannelOptions = Sequence[tuple[str, Any]]


class PortInUseError(OSError):
    """A server could not bind its address; the message names it and says what to do."""

    def __init__(self, address: str, what: str = "") -> None:
        label = f" ({what})" if what else ""
        super().__init__(
            f"cannot listen on {address}{label}: the port is in use by another process "
            "(or the address is not on this machine); stop that process or choose another port"
        )
        self.address = address


class TlsConfigError(ValueError):
    """TLS files that are missing, unreadable or given only in part."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one service: its certificate and key, and the CA that signs its peers.

    All empty means plaintext. A server with `ca_file` asks its clients for a certificate signed
    by that CA (mutual TLS); a channel with `cert_file`/`key_file` presents one.
    """

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> TlsFiles:
        """The `tls_cert_file` / `tls_key_file` / `tls_ca_file` options of a loaded config."""
        return cls(
            getattr(cfg, "tls_cert_file", "") or "",
            getattr(cfg, "tls_key_file", "") or "",
            getattr(cfg, "tls_ca_file", "") or "",
        )

    def paths(self) -> tuple[str, str, str]:
        return (self.cert_file, self.key_file, self.ca_file)

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file or self.ca_file)

    def _read(self, path: str, option: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise TlsConfigError(f"{option} {path!r} cannot be read: {err.strerror or err}") from None

    def server_credentials(self, require_client_cert: bool = True) -> grpc.ServerCredentials:
        """Credentials for a server port; with `require_client_cert`, clients need a CA-signed cert."""
        if not (self.cert_file and self.key_file):
            raise TlsConfigError("a TLS server needs both tls_cert_file and tls_key_file")
        if require_client_cert and not self.ca_file:
            raise TlsConfigError("mutual TLS needs tls_ca_file (the CA that signs the peers' certificates)")
        pair = (self._read(self.key_file, "tls_key_file"), self._read(self.cert_file, "tls_cert_file"))
        root = self._read(self.ca_file, "tls_ca_file") if self.ca_file else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=root, require_client_auth=require_client_cert
        )

    def server_ssl_context(self) -> ssl.SSLContext:
        """An ssl context for a TLS HTTP server with this certificate (clients need none)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            raise TlsConfigError(f"tls_cert_file / tls_key_file cannot be loaded: {err}") from None
        return context

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a channel: trust `ca_file` (system roots if empty), present the cert if set."""
        if bool(self.cert_file) != bool(self.key_file):
            raise TlsConfigError("tls_cert_file and tls_key_file go together: give both or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca_file, "tls_ca_file") if self.ca_file else None,
            private_key=self._read(self.key_file, "tls_key_file") if self.key_file else None,
            certificate_chain=self._read(self.cert_file, "tls_cert_file") if self.cert_file else None,
        )


PLAINTEXT = TlsFiles()
_TLS_OPTIONS = ("tls_cert_file", "tls_key_file", "tls_ca_file")


def is_loopback(host: str) -> bool:
    """True when `host` is reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def internal_tls(cfg: Any, service: str) -> TlsFiles:
    """The mutual-TLS files of a service's config, checked: all three or none, readable, and no
    plaintext on a non-loopback `host` unless `insecure_plaintext` says so."""
    tls = TlsFiles.from_config(cfg)
    if tls.enabled:
        missing = [name for name, value in zip(_TLS_OPTIONS, tls.paths(), strict=True) if not value]
        if missing:
            raise TlsConfigError(
                f"mutual TLS needs tls_cert_file, tls_key_file and tls_ca_file together; missing: "
                f"{', '.join(missing)}"
            )
        for name, value in zip(_TLS_OPTIONS, tls.paths(), strict=True):
            tls._read(value, name)
    require_tls_off_loopback(cfg.host, tls, bool(getattr(cfg, "insecure_plaintext", False)), service)
    return tls


def require_tls_off_loopback(host: str, tls: TlsFiles, insecure_plaintext: bool, service: str) -> None:
    """Refuses a plaintext internal port on a non-loopback address unless explicitly allowed."""
    if tls.enabled or is_loopback(host):
        return
    if insecure_plaintext:
        logger.warning(
            "INSECURE: %s serves plaintext gRPC on %s without authentication "
            "(insecure_plaintext = true); anyone who reaches this address can call it",
            service,
            host,
        )
        return
    raise TlsConfigError(
        f"{service} binds {host}, which is not loopback, without TLS: give tls_cert_file, tls_key_file "
        "and tls_ca_file (see `infermesh certs`), bind 127.0.0.1, or set insecure_plaintext = true "
        "to accept an unauthenticated port"
    )


def server_options(max_receive_bytes: int, extra: ChannelOptions = ()) -> list[tuple[str, Any]]:
    """Options every server gets: no port sharing, and a receive bound sized to the hop."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_receive_bytes),
        *extra,
    ]


def aio_server(
    max_receive_bytes: int,
    *,
    interceptors: Sequence[Any] | None = None,
    options: ChannelOptions = (),
    **kwargs: Any,
) -> grpc.aio.Server:
    """A grpc.aio server that refuses to share its port."""
    return grpc.aio.server(
        interceptors=list(interceptors) if interceptors else None,
        options=server_options(max_receive_bytes, options),
        **kwargs,
    )


def sync_server(
    executor: Executor,
    max_receive_bytes: int,
    *,
    interceptors: Sequence[Any] | None = None,
    options: ChannelOptions = (),
) -> grpc.Server:
    """A thread-pool gRPC server that refuses to share its port."""
    return grpc.server(
        executor,
        interceptors=list(interceptors) if interceptors else None,
        options=server_options(max_receive_bytes, options),
    )


def bind(
    server: grpc.Server | grpc.aio.Server,
    address: str,
    tls: TlsFiles = PLAINTEXT,
    *,
    require_client_cert: bool = True,
    what: str = "",
) -> int:
    """Adds a listening port (TLS when `tls` is set); returns the bound port or raises PortInUseError."""
    try:
        if tls.enabled:
            port = server.add_secure_port(address, tls.server_credentials(require_client_cert))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise PortInUseError(address, what)
    return port


def _tls_options(options: ChannelOptions, server_role: str) -> list[tuple[str, Any]]:
    # Inside the cluster a server is checked for its role, not the name it is dialled by (pod
    # IPs, container names and loopback all change): every role certificate names its role.
    extra = [("grpc.ssl_target_name_override", server_role)] if server_role else []
    return [*options, *extra]


def open_channel(
    target: str,
    tls: TlsFiles = PLAINTEXT,
    *,
    server_role: str = "",
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A sync channel to `target`, over TLS when `tls` is set (then the server's certificate
    must name `server_role`, when given, instead of the host dialled)."""
    if tls.enabled:
        return grpc.secure_channel(
            target, tls.channel_credentials(), options=_tls_options(options, server_role)
        )
    return grpc.insecure_channel(target, options=list(options))


def open_aio_channel(
    target: str,
    tls: TlsFiles = PLAINTEXT,
    *,
    server_role: str = "",
    options: ChannelOptions = (),
    interceptors: Sequence[Any] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`, over TLS when `tls` is set (see open_channel)."""
    intercept = list(interceptors) if interceptors else None
    if tls.enabled:
        return grpc.aio.secure_channel(
            target,
            tls.channel_credentials(),
            options=_tls_options(options, server_role),
            interceptors=intercept,
        )
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=intercept)
