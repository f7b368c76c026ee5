"""`infermesh bench profile`: measure step times of a running cluster over a grid, for
`infermesh simulate --profile FILE`.

Two kinds of measurement, both through the frontend with token-id prompts and EOS ignored:

* prefill: one request at a time with a prompt of P tokens (a fresh prompt, so no prefix-cache
  hit) and one output token. Its time to first token is one prefill step of P tokens (keep P at
  most the scheduler's chunk_size) plus the request's overhead outside the steps. With a prefix
  length L, a prompt of L tokens goes first and then the same L tokens followed by P fresh ones:
  the second computes P tokens after L cached ones, which tells the cost of a prefill token apart
  from the cost of the keys it attends to (their counts grow together when L is 0).
* decode: D requests at once with prompts of C tokens. Once the last of them has its first token
  all D decode in lock step until the first one ends; in that window a stream's mean time per
  token is one step of D decodes (the mean, not single gaps: a message may carry several tokens).
  Streams ask for enough tokens to outlast the other prompts' prefill (--chunk-size per step).

Each measurement becomes a sample (step features, milliseconds); the simulator fits its step-time
law, and the request overhead, to them by least squares.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

# The first tokens of a decode stream overlap other streams' prefills: they are not lock-step decodes.
_SKIP_GAPS = 2


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("profile target only")
    group.add_argument("--prefill-lens", type=int, nargs="+", default=[32, 128, 256, 512])
    group.add_argument(
        "--prefix-lens",
        type=int,
        nargs="+",
        default=[0, 512],
        help="cached tokens before a prefill (0: none)",
    )
    group.add_argument("--decode-counts", type=int, nargs="+", default=[1, 4, 16, 64])
    group.add_argument("--context-lens", type=int, nargs="+", default=[64, 512])
    group.add_argument(
        "--decode-tokens", type=int, default=16, help="lock-step decode tokens measured per stream"
    )
    group.add_argument(
        "--chunk-size", type=int, default=512, help="the scheduler's chunk_size (prefill tokens per step)"
    )
    group.add_argument("--repeats", type=int, default=3, help="times each grid point is measured")
    group.add_argument("--profile-output", type=Path, default=Path("step_profile.json"))


def run_profile(args: argparse.Namespace) -> int:
    grids = (args.prefill_lens, args.decode_counts, args.context_lens)
    if (
        any(not g or min(g) < 1 for g in grids)
        or not args.prefix_lens
        or min(args.prefix_lens) < 0
        or args.decode_tokens < _SKIP_GAPS + 2
        or args.repeats < 1
        or args.chunk_size < 1
    ):
        raise SystemExit(
            f"error: grid values must be >= 1, --decode-tokens >= {_SKIP_GAPS + 2}, "
            "--repeats and --chunk-size >= 1"
        )
    profile = asyncio.run(asyncio.wait_for(_profile(args), args.timeout_s))
    args.profile_output.write_text(json.dumps(profile, indent=1) + "\n")
    print(
        json.dumps(
            {
                "profile": str(args.profile_output),
                "samples": len(profile["samples"]),
                "model": profile["model"]["model_name"],
            }
        ),
        flush=True,
    )
    return 0


async def _profile(args: argparse.Namespace) -> dict:
    # Imported here: `infermesh --help` and the other commands do not load gRPC for this one.
    from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
    from infermesh_shared.grpc_transport import open_aio_channel

    # A fresh token per request start keeps prompts from hitting each other's cached blocks.
    fresh = itertools.count(1)
    async with open_aio_channel(args.address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        info = (await stub.GetModelInfo(frontend_pb2.FrontendServiceGetModelInfoRequest(), timeout=30)).model
        vocab = max(2, info.vocab_size)
        limit = info.max_model_len or (1 << 30)

        def prompt(length: int) -> list[int]:
            start = next(fresh) * 7919
            return [(start + i) % (vocab - 1) + 1 for i in range(length)]

        samples: list[dict] = []
        await _stream(stub, prompt(8), 2)  # warm-up: first-request costs are not step costs
        for prefix_len in args.prefix_lens:
            for length in args.prefill_lens:
                if prefix_len + length + 1 > limit:
                    print(
                        f"skipping prefill {prefix_len}+{length}: over max_model_len {limit}", file=sys.stderr
                    )
                    continue
                for _ in range(args.repeats):
                    prefix = prompt(prefix_len)
                    if prefix:
                        await _stream(stub, prefix, 1)  # now cached: the next prompt starts with it
                    start, stamps = await _stream(stub, prefix + prompt(length), 1)
                    if stamps:
                        attended = length * (prefix_len + (length + 1) / 2)
                        samples.append(_sample(length, 1, 0, attended, stamps[0] - start, True))
        for count in args.decode_counts:
            for context in args.context_lens:
                # Steps the other prompts' prefill may take while the first streams already decode.
                max_tokens = args.decode_tokens + -(-count * context // args.chunk_size) + _SKIP_GAPS
                if context + max_tokens > limit:
                    print(f"skipping context {context}: over max_model_len {limit}", file=sys.stderr)
                    continue
                for _ in range(args.repeats):
                    streams = await asyncio.gather(
                        *(_stream(stub, prompt(context), max_tokens) for _ in range(count))
                    )
                    sample = _lock_step_sample(count, context, [stamps for _, stamps in streams])
                    if sample is not None:
                        samples.append(sample)
    return {
        "kind": "infermesh-step-profile",
        "version": 1,
        "created_unix_s": round(time.time(), 3),
        "address": args.address,
        "model": {
            "model_name": info.model_name,
            "dtype": info.dtype,
            "tp_size": info.tp_size,
            "pp_size": info.pp_size,
            "block_size": info.block_size,
            "num_blocks": info.total_blocks,
            "max_model_len": info.max_model_len,
        },
        "grid": {
            "prefill_lens": args.prefill_lens,
            "prefix_lens": args.prefix_lens,
            "decode_counts": args.decode_counts,
            "context_lens": args.context_lens,
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
        },
        "samples": samples,
    }


def _lock_step_sample(count: int, context: int, streams: list[list[float]]) -> dict | None:
    """One step of `count` decodes, from the window in which every stream was decoding."""
    if any(len(stamps) < 2 for stamps in streams):
        return None
    start = max(stamps[0] for stamps in streams)  # the last prefill has produced its token
    end = min(stamps[-1] for stamps in streams)  # the first stream ends
    per_token: list[float] = []
    contexts: list[float] = []
    for stamps in streams:
        window = [i for i, t in enumerate(stamps) if start < t <= end]
        # Skip the window's first tokens: a prefill may still share their step.
        window = window[_SKIP_GAPS:]
        if len(window) >= 2 and stamps[window[-1]] > stamps[window[0]]:
            per_token.append((stamps[window[-1]] - stamps[window[0]]) / (window[-1] - window[0]))
            contexts.append(context + (window[0] + window[-1]) / 2 + 1)
    if not per_token:
        return None
    return _sample(count, count, count * statistics.fmean(contexts), 0, statistics.median(per_token), False)


def _sample(
    tokens: int,
    sequences: int,
    decode_context: float,
    prefill_attended: float,
    seconds: float,
    overhead: bool,
) -> dict:
    return {
        "tokens": tokens,
        "sequences": sequences,
        "kilo_decode_context": round(decode_context / 1000.0, 4),
        "kilo_prefill_attended": round(prefill_attended / 1000.0, 4),
        "ms": round(seconds * 1000.0, 4),
        "includes_request_overhead": overhead,
    }


async def _stream(stub, prompt: list[int], max_tokens: int) -> tuple[float, list[float]]:
    """Sends one request to a FrontendServiceStub; returns when it was sent and when each output
    token arrived."""
    from infermesh.v1 import frontend_pb2

    request = frontend_pb2.GenerateStreamRequest(
        input=frontend_pb2.GenerateInput(
            token_ids=frontend_pb2.TokenIds(ids=prompt),
            sampling=frontend_pb2.ClientSamplingParams(
                temperature=0.0, max_tokens=max_tokens, ignore_eos=True
            ),
        )
    )
    stamps: list[float] = []
    start = time.perf_counter()
    async for message in stub.GenerateStream(request):
        now = time.perf_counter()
        stamps.extend(now for _ in message.token_ids)
    return start, stamps
