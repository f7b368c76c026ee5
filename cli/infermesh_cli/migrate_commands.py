"""`infermesh migrate` and `infermesh drain`: move running requests between scheduler replicas by
live migration (their KV cache moves with them; the client's stream goes on without a recompute).

Both talk to the source scheduler directly. Under mutual TLS give a certificate the scheduler lets
ask for migrations (role frontend or rescheduler; see `infermesh certs`).
"""

from __future__ import annotations

import argparse
import itertools
import sys


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-cert-file", default="", help="client certificate (role rescheduler or frontend)"
    )
    parser.add_argument("--tls-key-file", default="", help="its private key")
    parser.add_argument("--tls-ca-file", default="", help="the cluster CA; default: plaintext")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="time allowed per migration (s)")


def add_migrate_subcommands(subparsers) -> None:
    migrate = subparsers.add_parser(
        "migrate", help="move one running request to another scheduler replica (live migration)"
    )
    migrate.add_argument("--request-id", required=True, help="the request's id at its scheduler")
    migrate.add_argument("--replica", required=True, help="host:port of the scheduler it runs on")
    migrate.add_argument("--to", required=True, help="host:port of the destination scheduler")
    _add_tls_options(migrate)
    migrate.set_defaults(handler=run_migrate)
    drain = subparsers.add_parser(
        "drain", help="move every running request off a scheduler replica (live migration)"
    )
    drain.add_argument("--replica", required=True, help="host:port of the scheduler to empty")
    drain.add_argument(
        "--to", required=True, action="append", help="destination scheduler host:port (repeat: round robin)"
    )
    _add_tls_options(drain)
    drain.set_defaults(handler=run_drain)


def _stub(address: str, args: argparse.Namespace):
    from infermesh.v1 import scheduler_pb2_grpc
    from infermesh_shared.grpc_transport import TlsFiles, open_channel
    from infermesh_shared.peer_roles import SCHEDULER

    tls = TlsFiles(args.tls_cert_file, args.tls_key_file, args.tls_ca_file)
    return scheduler_pb2_grpc.SchedulerServiceStub(open_channel(address, tls, server_role=SCHEDULER))


def _migrate_one(stub, request_id: str, destination: str, timeout_s: float) -> bool:
    from infermesh.v1 import scheduler_pb2

    result = stub.Migrate(
        scheduler_pb2.MigrateRequest(request_id=request_id, destination_address=destination),
        timeout=timeout_s,
    )
    if result.migrated:
        print(
            f"{request_id}: migrated to {destination} ({result.bytes_copied} KV bytes, "
            f"{result.num_stages}+1 stages, paused {result.downtime_s * 1e3:.1f} ms)"
        )
    else:
        print(f"{request_id}: stays on its replica: {result.reason}", file=sys.stderr)
    return result.migrated


def run_migrate(args: argparse.Namespace) -> int:
    import grpc

    try:
        return 0 if _migrate_one(_stub(args.replica, args), args.request_id, args.to, args.timeout_s) else 1
    except grpc.RpcError as err:
        print(f"Error: scheduler {args.replica}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1


def run_drain(args: argparse.Namespace) -> int:
    import grpc
    from infermesh.v1 import scheduler_pb2

    if args.replica in args.to:
        print("Error: --to names the replica being drained", file=sys.stderr)
        return 2
    stub = _stub(args.replica, args)
    try:
        load = stub.GetLoad(scheduler_pb2.GetLoadRequest(include_requests=True), timeout=args.timeout_s)
        running = [r.request_id for r in load.requests if r.running]
        waiting = len(load.requests) - len(running)
        destinations = itertools.cycle(args.to)
        moved = sum(_migrate_one(stub, rid, next(destinations), args.timeout_s) for rid in running)
    except grpc.RpcError as err:
        print(f"Error: scheduler {args.replica}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    print(f"drained {args.replica}: {moved} of {len(running)} running requests migrated", end="")
    print(f"; {waiting} not running (waiting or swapped) stay" if waiting else "")
    return 0 if moved == len(running) else 1
