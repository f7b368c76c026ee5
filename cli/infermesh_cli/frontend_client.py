"""How the CLI's clients (`generate`, `bench`) reach a frontend: API key and TLS trust."""

from __future__ import annotations

import argparse
import os

API_KEY_ENV = "INFERMESH_API_KEY"


def add_frontend_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"API key sent as 'authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--tls-ca-file",
        default="",
        help="CA certificate of a frontend that serves TLS (client_tls); default: plaintext",
    )


def resolve_api_key(given: str | None) -> str:
    """The key to send: --api-key, else $INFERMESH_API_KEY, else none ("")."""
    return given if given is not None else os.environ.get(API_KEY_ENV, "")


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """gRPC metadata for every call: the API key, when there is one."""
    key = resolve_api_key(args.api_key)
    return (("authorization", f"Bearer {key}"),) if key else ()


def frontend_tls(args: argparse.Namespace):
    """TLS files for the channel to the frontend (plaintext without --tls-ca-file)."""
    from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles

    return TlsFiles(ca_file=args.tls_ca_file) if args.tls_ca_file else PLAINTEXT
