"""`infermesh bench`: load a running frontend and print throughput and latency as one JSON line.

`infermesh bench scheduler` instead times the scheduler's own step against a zero-cost simulated
worker, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
from infermesh_shared.grpc_transport import open_aio_channel

from infermesh_cli.bench_workload import (
    WORKLOADS,
    BenchRequest,
    check_fits,
    fit_to_vocab,
    load_dataset,
    random_workload,
)


@dataclass(slots=True)
class RequestTiming:
    """What one benchmark request measured (seconds, tokens)."""

    ttft_s: float
    e2e_s: float
    output_tokens: int


def add_bench_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark a running frontend (or, with 'scheduler', the scheduler alone)",
        description="Sends requests with random prompt and output lengths (EOS ignored) and prints one JSON "
        "line: output tokens/s, requests/s, TTFT p50/p99, time per output token p50/p99.",
    )
    parser.add_argument(
        "target",
        nargs="?",
        choices=["serving", "scheduler"],
        default="serving",
        help="serving (default): load a frontend; scheduler: time scheduler steps",
    )
    parser.add_argument("--address", default="127.0.0.1:50050", help="frontend host:port")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
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
        help='requests from JSON lines {"prompt_token_ids": [...], "output_len": N}',
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
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    if args.target == "scheduler":
        from infermesh_scheduler.core.bench import run_scheduler_bench

        for size in args.sizes:
            print(json.dumps(run_scheduler_bench(num_running=size, steps=args.steps)), flush=True)
        return 0
    if args.num_requests < 1 or args.concurrency < 1:
        raise SystemExit("error: --num-requests and --concurrency must be >= 1")
    fixed = None
    try:
        if args.workload:
            fixed = WORKLOADS[args.workload]()
        elif args.dataset:
            fixed = load_dataset(args.dataset)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    result = asyncio.run(asyncio.wait_for(_bench_serving(args, fixed), args.timeout_s))
    print(json.dumps(result), flush=True)
    return 0


async def _bench_serving(args: argparse.Namespace, fixed: list[BenchRequest] | None) -> dict:
    async with open_aio_channel(args.address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        info = (await stub.GetModelInfo(frontend_pb2.FrontendServiceGetModelInfoRequest(), timeout=30)).model
        folded = False
        if fixed is None:
            workload = random_workload(
                args.num_requests,
                tuple(args.prompt_len),
                tuple(args.output_len),
                args.shared_prefix_len,
                info.vocab_size,
                info.max_model_len,
                args.seed,
            )
        else:
            try:
                check_fits(fixed, info.max_model_len)
            except ValueError as exc:
                raise SystemExit(f"error: {exc}") from None
            workload, folded = fit_to_vocab(fixed, info.vocab_size)

        gate = asyncio.Semaphore(args.concurrency)

        async def one(prompt: list[int], max_tokens: int) -> RequestTiming:
            async with gate:
                request = frontend_pb2.GenerateStreamRequest(
                    input=frontend_pb2.GenerateInput(
                        token_ids=frontend_pb2.TokenIds(ids=prompt),
                        sampling=frontend_pb2.ClientSamplingParams(
                            temperature=0.0, max_tokens=max_tokens, ignore_eos=True
                        ),
                    )
                )
                start = time.perf_counter()
                first = None
                produced = 0
                async for message in stub.GenerateStream(request):
                    if message.token_ids and first is None:
                        first = time.perf_counter()
                    produced += len(message.token_ids)
                end = time.perf_counter()
                return RequestTiming(ttft_s=(first or end) - start, e2e_s=end - start, output_tokens=produced)

        started = time.perf_counter()
        timings = await asyncio.gather(*(one(r.prompt, r.max_tokens) for r in workload))
        elapsed = time.perf_counter() - started

    total_out = sum(t.output_tokens for t in timings)
    ttfts = [t.ttft_s * 1000 for t in timings]
    tpots = [(t.e2e_s - t.ttft_s) * 1000 / (t.output_tokens - 1) for t in timings if t.output_tokens > 1]
    return {
        "model": info.model_name,
        "workload": args.workload or (str(args.dataset) if args.dataset else "random"),
        "token_ids_folded_into_vocab": folded,
        "num_requests": len(workload),
        "prompt_tokens": sum(len(r.prompt) for r in workload),
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 3),
        "output_tokens": total_out,
        "output_tokens_per_s": round(total_out / elapsed, 2),
        "requests_per_s": round(len(workload) / elapsed, 3),
        "ttft_ms_p50": round(_percentile(ttfts, 50), 2),
        "ttft_ms_p99": round(_percentile(ttfts, 99), 2),
        "tpot_ms_p50": round(_percentile(tpots, 50), 2),
        "tpot_ms_p99": round(_percentile(tpots, 99), 2),
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1] if pct < 100 else max(values)
