"""Detokenization cost of 64 concurrent streams: DecodeStream against the Python window path.

Each round hands every stream one new token (a decode step of a 64-sequence batch), as the
frontend does; both implementations run in the same process on the same ids, alternating
rounds A/B/A/B so machine load hits both alike. Prints one JSON line with the ratio.

    .venv/bin/python scripts/bench_detokenize.py --streams 64 --tokens 256 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import random
import time

from infermesh_cli.demo_tokenizer import build_demo_tokenizer
from infermesh_frontend.detokenizer import IncrementalDetokenizer, StreamDetokenizer

_TEXT = (
    "The quick brown fox jumps over the lazy dog. Ünïcödé, 日本語のテキスト, emoji 🙂🎉 and code: "
    "def f(x): return x * 2  # doubled\n"
)


def _streams(tokenizer, streams: int, tokens: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    corpus = tokenizer.encode(_TEXT * (tokens // 8 + 4)).ids
    out = []
    for _ in range(streams):
        start = rng.randrange(0, len(corpus) - tokens - 8)
        out.append((corpus[start : start + 8], corpus[start + 8 : start + 8 + tokens]))
    return out


def _run(make, work: list[tuple[list[int], list[int]]]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    detokenizers = [make(context) for context, _ in work]
    texts = [[] for _ in work]
    for step in range(len(work[0][1])):
        for i, (_, ids) in enumerate(work):
            texts[i].append(detokenizers[i].add_tokens([ids[step]]))
    for i, detokenizer in enumerate(detokenizers):
        texts[i].append(detokenizer.finish())
    return time.perf_counter() - started, ["".join(parts) for parts in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tokenizer = build_demo_tokenizer(2048)
    work = _streams(tokenizer, args.streams, args.tokens, seed=0)
    implementations = {
        "decode_stream": lambda context: StreamDetokenizer(tokenizer, context, skip_special_tokens=True),
        "python_window": lambda context: IncrementalDetokenizer(tokenizer.decode, context),
    }
    seconds: dict[str, list[float]] = {name: [] for name in implementations}
    outputs = {}
    for _ in range(args.repeats):
        for name, make in implementations.items():
            elapsed, texts = _run(make, work)
            seconds[name].append(elapsed)
            outputs[name] = texts
    assert outputs["decode_stream"] == outputs["python_window"], "the two paths disagree"
    best = {name: min(values) for name, values in seconds.items()}
    tokens = args.streams * args.tokens
    print(
        json.dumps(
            {
                "streams": args.streams,
                "tokens_per_stream": args.tokens,
                "best_of": args.repeats,
                "us_per_token": {name: round(value / tokens * 1e6, 2) for name, value in best.items()},
                "python_window_over_decode_stream": round(best["python_window"] / best["decode_stream"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
