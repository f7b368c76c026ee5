"""`infermesh bench`: load a running server like `vllm bench serve` and report what it measured.

Sends a workload (random lengths, a named workload or a JSONL dataset) to infermesh's gRPC
frontend or to any OpenAI-compatible server (`--backend openai`), at a Poisson request rate or
all at once under a concurrency cap, with a progress bar; prints a table on stderr and one JSON
line on stdout (TTFT, TPOT, ITL and end-to-end p50/p90/p99, throughput, goodput against
optional SLOs); `--save-result` and `--plot` keep the details.

`infermesh bench scheduler` instead times the scheduler's own step against a zero-cost simulated
worker, in this process; `infermesh bench profile` measures a running cluster's step times over a
grid for `infermesh simulate --profile`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from infermesh_cli.bench_backends import BACKENDS
from infermesh_cli.bench_profile import add_profile_arguments
from infermesh_cli.bench_workload import WORKLOADS


class BenchUsageError(Exception):
    """A benchmark that cannot run as asked (unreachable server, workload the model cannot hold)."""


def add_bench_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark a running server like `vllm bench serve` (or, with 'scheduler', the scheduler alone)",
        description="Sends requests (EOS ignored) and prints a table on stderr and one JSON line on stdout: "
        "throughput, TTFT/TPOT/ITL/end-to-end mean and p50/p90/p99, goodput against --goodput SLOs.",
    )
    parser.add_argument(
        "target",
        nargs="?",
        choices=["serving", "scheduler", "profile"],
        default="serving",
        help="serving (default): load a frontend; scheduler: time scheduler steps; "
        "profile: measure step times over a grid (writes --profile-output)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="infermesh",
        help="infermesh (gRPC frontend, default), openai (/v1/completions of any OpenAI-compatible "
        "server), openai-chat (/v1/chat/completions; text prompts only)",
    )
    parser.add_argument("--address", default="127.0.0.1:50050", help="infermesh backend: frontend host:port")
    parser.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000",
        help="openai backends: server URL (with or without /v1)",
    )
    parser.add_argument("--model", help="openai backends: model id (default: the first of /v1/models)")
    parser.add_argument(
        "--api-key",
        help="sent as 'Authorization: Bearer KEY' (gRPC metadata or HTTP header); default $INFERMESH_API_KEY",
    )
    parser.add_argument(
        "--tls-ca-file", default="", help="infermesh backend: CA of a frontend serving TLS (client_tls)"
    )
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="most requests in flight at once (vllm's --max-concurrency; default 64)",
    )
    parser.add_argument(
        "--request-rate",
        type=float,
        default=float("inf"),
        help="requests per second, sent as a Poisson process; inf (default) sends all at once",
    )
    parser.add_argument(
        "--goodput",
        nargs="+",
        default=[],
        metavar="METRIC:MS",
        help="SLOs for goodput, e.g. ttft:200 tpot:50 (metrics: ttft, tpot, itl, e2e; milliseconds)",
    )
    parser.add_argument(
        "--save-result", type=Path, metavar="FILE.json", help="write summary and per-request data"
    )
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="latency CDFs and throughput over time")
    parser.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    parser.add_argument(
        "--prompt-len",
        type=int,
        nargs=2,
        default=(32, 512),
        metavar=("MIN", "MAX"),
        help="prompt length range in tokens (default 32 512)",
    )
    parser.add_argument(
        "--output-len",
        type=int,
        nargs=2,
        default=(16, 128),
        metavar=("MIN", "MAX"),
        help="output length range in tokens (default 16 128)",
    )
    parser.add_argument(
        "--shared-prefix-len",
        type=int,
        default=0,
        help="every prompt starts with the same this many tokens (prefix-cache workloads)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random workload")
    parser.add_argument(
        "--session-id",
        default="",
        help="infermesh backend: send every request with this session id (a frontend with "
        "--dispatch-policy session then routes them all to one replica: an imbalanced arrival)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        help="a fixed, named workload instead of random lengths (peers-64: issue 17's 64 requests, "
        "14,946 prompt / 4,444 output tokens; run it on a fresh cluster so no prefix is cached)",
    )
    source.add_argument(
        "--dataset",
        type=Path,
        metavar="FILE.jsonl",
        help='requests from JSON lines {"prompt_token_ids": [...], "output_len": N} or '
        '{"prompt": "text", "output_len": N}',
    )
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="give up after this long")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[16, 64, 256, 1024],
        help="scheduler target only: running-sequence counts to time",
    )
    parser.add_argument("--steps", type=int, default=200, help="scheduler target only: steps per size")
    parser.add_argument(
        "--waiting",
        type=int,
        default=0,
        help="scheduler target only: requests queued behind the full batch, looked at every step",
    )
    add_profile_arguments(parser)
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    if args.target == "scheduler":
        from infermesh_scheduler.gc_policy import settle_after_startup

        from infermesh_cli.scheduler_bench import run_scheduler_bench

        settle_after_startup()  # the collector settings the scheduler process runs with
        for size in args.sizes:
            result = run_scheduler_bench(num_running=size, steps=args.steps, num_waiting=args.waiting)
            print(json.dumps(result), flush=True)
        return 0
    if args.target == "profile":
        from infermesh_cli.bench_profile import run_profile

        return run_profile(args)
    import asyncio

    from infermesh_cli.bench_report import parse_slos
    from infermesh_cli.bench_workload import load_dataset

    if args.num_requests < 1 or args.concurrency < 1:
        raise SystemExit("error: --num-requests and --concurrency must be >= 1")
    if not args.request_rate > 0:
        raise SystemExit("error: --request-rate must be > 0 (inf sends every request at once)")
    fixed = None
    try:
        slos = parse_slos(args.goodput)
        if args.workload:
            fixed = WORKLOADS[args.workload]()
        elif args.dataset:
            fixed = load_dataset(args.dataset)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        result = asyncio.run(asyncio.wait_for(_bench_serving(args, fixed, slos), args.timeout_s))
    except BenchUsageError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(result), flush=True)
    return 0


async def _bench_serving(args: argparse.Namespace, fixed: list | None, slos: dict[str, float]) -> dict:
    import sys

    from infermesh_cli.bench_backends import make_backend
    from infermesh_cli.bench_report import per_request_record, render_table, summarize
    from infermesh_cli.bench_runner import run_load
    from infermesh_cli.bench_workload import check_fits, fit_to_vocab, random_workload
    from infermesh_cli.frontend_client import resolve_api_key

    api_key = resolve_api_key(args.api_key)
    try:
        backend = make_backend(
            args.backend, args.address, args.base_url, args.model, api_key, args.tls_ca_file, args.session_id
        )
    except ValueError as err:
        raise BenchUsageError(str(err)) from None
    try:
        try:
            model = await backend.model()
        except Exception as exc:  # noqa: BLE001 - an unreachable server is a usage error, not a traceback
            raise BenchUsageError(
                f"cannot ask {args.address if args.backend == 'infermesh' else args.base_url} "
                f"for its model: {exc}"
            ) from None
        folded = False
        if fixed is None:
            if not model.vocab_size and args.backend != "infermesh":
                raise BenchUsageError(
                    "random token-id prompts need the vocabulary size, which an OpenAI server does "
                    "not report; give --dataset with text prompts"
                )
            workload = random_workload(
                args.num_requests,
                tuple(args.prompt_len),
                tuple(args.output_len),
                args.shared_prefix_len,
                model.vocab_size,
                model.max_model_len,
                args.seed,
            )
        else:
            try:
                check_fits(fixed, model.max_model_len)
            except ValueError as exc:
                raise BenchUsageError(str(exc)) from None
            workload, folded = fit_to_vocab(fixed, model.vocab_size) if model.vocab_size else (fixed, False)
        if args.backend == "openai-chat" and any(r.text is None for r in workload):
            raise BenchUsageError('--backend openai-chat needs text prompts: a --dataset of {"prompt": ...}')
        results, elapsed = await run_load(
            backend, workload, args.request_rate, args.concurrency, args.seed, progress=not args.disable_tqdm
        )
    finally:
        await backend.close()

    summary = {
        "backend": args.backend,
        "model": model.name,
        "workload": args.workload or (str(args.dataset) if args.dataset else "random"),
        "token_ids_folded_into_vocab": folded,
        "num_requests": len(workload),
        "concurrency": args.concurrency,
        "request_rate": "inf" if args.request_rate == float("inf") else args.request_rate,
        **summarize(results, elapsed, slos),
    }
    print(render_table(summary, "Serving Benchmark Result"), file=sys.stderr, flush=True)
    if args.save_result:
        args.save_result.write_text(json.dumps({**summary, **per_request_record(results)}, indent=1) + "\n")
    if args.plot:
        from infermesh_cli.bench_plot import write_plot

        write_plot(
            results, args.plot, f"infermesh bench: {model.name}, {args.backend}, {summary['workload']}"
        )
    return summary
