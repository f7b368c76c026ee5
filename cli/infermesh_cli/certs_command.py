"""`infermesh certs`: a cluster CA and one certificate per service role, for mutual TLS."""

from __future__ import annotations

import argparse
from pathlib import Path

# cryptography is imported by the handler only: `infermesh --help` stays fast.
CA_KEY = "ca-key.pem"


def add_certs_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="create a cluster CA and a certificate per role (frontend, scheduler, worker, rescheduler)",
        description="Writes ca.pem, ca-key.pem and <role>.pem / <role>-key.pem into --out. Give every "
        "service tls_cert_file / tls_key_file of its role and tls_ca_file = ca.pem. Keep ca-key.pem "
        "off the cluster: it is only needed to sign new certificates (--reuse-ca).",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write the PEM files to")
    parser.add_argument(
        "--hosts",
        nargs="*",
        default=[],
        metavar="HOST",
        help="DNS names / IPs the services are dialled at (loopback is always included), "
        "e.g. --hosts scheduler frontend worker-0 10.0.0.5",
    )
    parser.add_argument("--days", type=int, default=365, help="validity of the role certificates")
    parser.add_argument(
        "--reuse-ca",
        action="store_true",
        help="sign with the CA already in --out (rotate the role certificates, keep the trust anchor)",
    )
    parser.set_defaults(handler=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    from infermesh_cli.cluster_certs import write_cluster_certs

    if args.days < 1:
        raise SystemExit("error: --days must be >= 1")
    if args.reuse_ca and not (args.out / CA_KEY).is_file():
        raise SystemExit(f"error: --reuse-ca needs {args.out / CA_KEY} (from an earlier `infermesh certs`)")
    written = write_cluster_certs(args.out, args.hosts, days=args.days, reuse_ca=args.reuse_ca)
    for files in written.values():
        print(f"{files.role}: {files.cert_file} {files.key_file}")
    print(f"ca: {args.out / 'ca.pem'} (signing key {args.out / CA_KEY}: keep it off the cluster)")
    return 0
