"""`infermesh migrate` and `infermesh drain`: move running requests between scheduler replicas by
live migration (their KV cache moves with them; the client's stream goes on without a recompute).

Without --address both talk to the source scheduler directly: under mutual TLS give a certificate
the scheduler lets ask for migrations (role frontend or rescheduler; see `infermesh certs`).
With --address they ask a frontend (with an operator API key when it has keys; --tls-ca-file when
it serves TLS) or an infermesh-rescheduler (mutual TLS with the rescheduler certificate) through
ReschedulerService, which acts only on replicas its discovery knows; a drain then needs no --to
(it picks the serving replicas, least loaded first).
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
    parser.add_argument(
        "--address",
        default="",
        help="a frontend or infermesh-rescheduler (host:port) to act through, instead of the scheduler",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="operator API key of the frontend at --address (default: $INFERMESH_API_KEY)",
    )


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
        "--to",
        action="append",
        default=[],
        help="destination scheduler host:port (repeat: round robin); with --address optional",
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


def _rescheduler_stub(args: argparse.Namespace):
    from infermesh.v1 import rescheduler_pb2_grpc
    from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles, open_channel
    from infermesh_shared.peer_roles import RESCHEDULER

    if args.tls_cert_file:  # an infermesh-rescheduler: mutual TLS, its certificate names its role
        tls, role = TlsFiles(args.tls_cert_file, args.tls_key_file, args.tls_ca_file), RESCHEDULER
    else:  # a frontend: server TLS when it serves it (client_tls), else plaintext
        tls, role = (TlsFiles(ca_file=args.tls_ca_file) if args.tls_ca_file else PLAINTEXT), ""
    return rescheduler_pb2_grpc.ReschedulerServiceStub(open_channel(args.address, tls, server_role=role))


def _print_outcome(outcome) -> None:
    if outcome.migrated:
        print(
            f"{outcome.request_id}: migrated to {outcome.destination_address} ({outcome.bytes_copied} KV "
            f"bytes, paused {outcome.downtime_s * 1e3:.1f} ms)"
        )
    else:
        print(f"{outcome.request_id}: stays on its replica: {outcome.reason}", file=sys.stderr)


def _through_address(args: argparse.Namespace, call) -> int:
    import grpc

    from infermesh_cli.frontend_client import call_metadata

    try:
        return call(_rescheduler_stub(args), call_metadata(args))
    except grpc.RpcError as err:
        print(f"Error: {args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1


def _migrate_through(args: argparse.Namespace) -> int:
    from infermesh.v1 import rescheduler_pb2

    def call(stub, metadata) -> int:
        request = rescheduler_pb2.MigrateOneRequest(
            request_id=args.request_id, source_address=args.replica, destination_address=args.to
        )
        outcome = stub.MigrateOne(request, timeout=args.timeout_s, metadata=metadata).outcome
        _print_outcome(outcome)
        return 0 if outcome.migrated else 1

    return _through_address(args, call)


def _drain_through(args: argparse.Namespace) -> int:
    from infermesh.v1 import rescheduler_pb2

    def call(stub, metadata) -> int:
        request = rescheduler_pb2.DrainReplicaRequest(
            replica_address=args.replica, destination_addresses=args.to
        )
        result = stub.DrainReplica(request, timeout=args.timeout_s, metadata=metadata)
        for outcome in result.outcomes:
            _print_outcome(outcome)
        print(
            f"drained {args.replica}: {result.num_migrated} of {result.num_running} running requests "
            "migrated",
            end="",
        )
        print(
            f"; {result.num_not_running} not running (waiting or swapped) stay"
            if result.num_not_running
            else ""
        )
        return 0 if result.num_migrated == result.num_running else 1

    return _through_address(args, call)


def run_migrate(args: argparse.Namespace) -> int:
    import grpc

    if args.address:
        return _migrate_through(args)
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
    if args.address:
        return _drain_through(args)
    if not args.to:
        print(
            "Error: --to is required without --address (which frontend knows the replicas?)", file=sys.stderr
        )
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
