"""`infermesh up`: frontend, scheduler and workers as local processes on one machine."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path


def add_up_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start frontend, scheduler and workers locally",
        description="Starts frontend, scheduler and tp·pp workers as separate local processes and "
        "stops them all on Ctrl-C or SIGTERM; the OpenAI API is on port 8000. Without MODEL it serves the "
        "built-in demo model.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        help="model directory or Hugging Face hub id (org/name, from the local HF cache); "
        "default: the built-in demo model",
    )
    parser.add_argument("--model-path", help="same as MODEL")
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        metavar="NAME",
        help="names the OpenAI API answers to (default: MODEL as given; the demo model's name without MODEL)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="OpenAI-compatible HTTP API port (default 8000; 0 = off)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address every service binds to (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=50050, help="frontend gRPC port (default 50050; 0 = any free port)"
    )
    parser.add_argument("--tp-size", type=int, default=1, help="tensor-parallel workers per pipeline stage")
    parser.add_argument("--pp-size", type=int, default=1, help="pipeline stages")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="scheduler replicas, each with its own tp·pp workers, behind the one frontend (default 1)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="weights and KV dtype (default auto: the checkpoint's where the device computes it "
        "natively, e.g. bf16 on a CPU with AVX512-BF16/AMX, else fp32)",
    )
    parser.add_argument("--log-dir", type=Path, help="where service logs go (default: a new temp dir)")
    parser.add_argument(
        "--scheduler-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra scheduler flag, repeatable, e.g. --scheduler-arg=--max-batch-size=64",
    )
    parser.add_argument(
        "--worker-arg", action="append", default=[], metavar="ARG", help="extra worker flag, repeatable"
    )
    parser.add_argument(
        "--frontend-arg", action="append", default=[], metavar="ARG", help="extra frontend flag, repeatable"
    )
    parser.add_argument(
        "--rescheduler-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a rescheduling option of seed 001 for the frontend's colocated rescheduler, repeatable, "
        "e.g. --rescheduler-arg enable_rescheduling=true --rescheduler-arg "
        "rescheduling_policies=decode_load,neutral_failover (enable_rescheduling=true starts it)",
    )
    parser.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="INSECURE: run the internal hops without mutual TLS (default: a throw-away CA and "
        "certificates are written to the log dir and every service uses them)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="API key clients must send (Authorization: Bearer KEY); handed to the frontend in "
        "INFERMESH_API_KEY, never on its command line",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="a service that dies more often than this within --restart-window-s is not restarted "
        "again and up exits non-zero (default 5)",
    )
    parser.add_argument(
        "--restart-window-s",
        type=float,
        default=60.0,
        help="window for --max-restarts in seconds (default 60)",
    )
    parser.set_defaults(handler=run_up)


def run_up(args: argparse.Namespace) -> int:
    from infermesh_shared.grpc_transport import is_loopback

    from infermesh_cli.local_cluster import ClusterSpec, LocalCluster, ServiceStartError
    from infermesh_cli.model_reference import ModelNotFoundError, resolve_model
    from infermesh_cli.supervisor import Supervisor

    if args.model and args.model_path and args.model != args.model_path:
        print("error: give the model once, as MODEL or as --model-path", file=sys.stderr)
        return 2
    if args.replicas < 1:
        print(f"error: --replicas must be at least 1, got {args.replicas}", file=sys.stderr)
        return 2
    reference = args.model or args.model_path
    served = list(args.served_model_name or [])
    if reference is None:
        from infermesh_cli.demo_model import ensure_demo_model

        print("preparing the demo model (first use writes it to the cache)...", flush=True)
        model_path = ensure_demo_model()
    else:
        try:
            model_path, _ = resolve_model(reference)
        except ModelNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not served:
            served = [reference]  # as vLLM: the model is served under the name it was given by
    from infermesh_cli.rescheduler_args import rescheduler_flags

    try:
        frontend_args = [*rescheduler_flags(args.rescheduler_arg), *args.frontend_arg]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.http_port:
        frontend_args += ["--http-port", str(args.http_port)]
    if served:
        frontend_args += ["--served-model-name", ",".join(served)]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="infermesh-up-"))
    # The services refuse plaintext off loopback unless told, each of them, explicitly.
    insecure = ["--insecure-plaintext"] if args.insecure_plaintext and not is_loopback(args.host) else []
    spec = ClusterSpec(
        model_path=model_path,
        frontend_port=args.port,
        tp_size=args.tp_size,
        pp_size=args.pp_size,
        replicas=args.replicas,
        host=args.host,
        scheduler_args=["--dtype", args.dtype, *insecure, *args.scheduler_arg],
        worker_args=[*insecure, *args.worker_arg],
        # Reflection on the client port only (grpcurl against a local cluster just works).
        frontend_args=[*insecure, "--enable-reflection", *frontend_args],
        log_dir=log_dir,
        tls_dir=None if args.insecure_plaintext else log_dir / "certs",
        env={**os.environ, "INFERMESH_API_KEY": args.api_key} if args.api_key else None,
    )
    if args.insecure_plaintext:
        print("WARNING: internal hops run without TLS (--insecure-plaintext)", file=sys.stderr, flush=True)
    stop = threading.Event()
    cluster = LocalCluster(spec, on_stage=lambda line: print(line, flush=True))
    print(f"model: {model_path}\nlogs: {log_dir}", flush=True)
    if spec.tls_dir is not None:
        print(f"mTLS between the services: certificates in {spec.tls_dir}", flush=True)
    # Ctrl-C / SIGTERM during start-up interrupts whatever start() waits on; start() stops what it
    # started. (Start-up stays on the main thread: services die with the thread that started them.)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        cluster.start()
    except _Interrupted:
        cluster.kill()  # a second Ctrl-C cut start()'s own orderly stop short
        print("stopped during start-up", flush=True)
        return 130
    except ServiceStartError as err:
        # The first line says why; the services' full output is in their logs.
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr, flush=True)
        print(f"(service logs: {log_dir})", file=sys.stderr, flush=True)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: _first_stops_second_forces(stop))
    print(f"frontend listening on {cluster.frontend_address}", flush=True)
    http = _http_address(cluster)
    if http:
        print(f"OpenAI-compatible HTTP API on http://{http}/v1", flush=True)
    supervisor = Supervisor(cluster, args.max_restarts, args.restart_window_s)
    status = 0
    try:
        while not stop.wait(0.5):
            reason = supervisor.check()
            if reason:
                print(f"error: giving up: {reason}", file=sys.stderr, flush=True)
                status = 1
                break
        # Services drain what they run (each up to its drain_timeout_s) before they exit.
        print("stopping (Ctrl-C again to stop at once)...", flush=True)
        stop.set()
        cluster.stop()
    except _Interrupted:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        cluster.kill()
        print("killed", flush=True)
        return 130
    print("stopped", flush=True)
    return status


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM while the cluster starts, or a second one while it stops."""


def _interrupt(*_: object) -> None:
    raise _Interrupted()


def _first_stops_second_forces(stop: threading.Event) -> None:
    # As uvicorn and vLLM: the first signal stops gracefully, the next one stops at once.
    if stop.is_set():
        raise _Interrupted()
    stop.set()


def _http_address(cluster) -> str:
    import re

    for line in cluster.frontends[0].output_tail(200).splitlines():
        match = re.search(r"frontend http listening on (\S+:\d+)", line)
        if match:
            return match.group(1)
    return ""
