"""Micro-benchmark of one routing decision per policy (not a test: run it by hand).

    .venv/bin/python -m tests.routing.pick_benchmark [--replicas 4] [--prompt-tokens 512]

Prints microseconds per pick() over a table of replicas with realistic load snapshots, including
the frontend's local-account bookkeeping a request does around a pick.
"""

from __future__ import annotations

import argparse
import random
import time

from infermesh_frontend.routing import LoadReport, ReplicaTable, RouteRequest, make_routing_policy
from infermesh_shared.prefix_hash import first_block_hash


def build_table(num_replicas: int, block_size: int, prompts: list[list[int]]) -> ReplicaTable:
    table = ReplicaTable()
    addresses = [f"10.0.0.{i}:50051" for i in range(num_replicas)]
    table.sync(addresses)
    rng = random.Random(0)
    for index, address in enumerate(addresses):
        held = {first_block_hash(p, block_size) for p in prompts[index::num_replicas]}
        held |= {rng.getrandbits(64) for _ in range(200)}
        report = LoadReport(
            rng.randint(0, 8),
            rng.randint(0, 32),
            0,
            rng.randint(0, 4096),
            500,
            1000,
            True,
            frozenset(held),
            0,
        )
        table.apply_report(address, report)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--picks", type=int, default=20000)
    args = parser.parse_args()
    rng = random.Random(1)
    prompts = [[rng.randrange(32000) for _ in range(args.prompt_tokens)] for _ in range(64)]
    for name in ("round_robin", "least_load", "prefix_aware", "session"):
        table = build_table(args.replicas, args.block_size, prompts)
        policy = make_routing_policy(name, block_size=args.block_size)
        requests = [
            RouteRequest(prompts[i % len(prompts)], session_id=f"s{i % 500}") for i in range(args.picks)
        ]
        start = time.perf_counter()
        for request in requests:
            replica = policy.pick(request, table.candidates())
            table.record_dispatch(replica.address)
            table.record_finish(replica.address)
        elapsed = time.perf_counter() - start
        setup = f"{args.replicas} replicas, {args.prompt_tokens}-token prompts"
        print(f"{name:13s} {elapsed / args.picks * 1e6:7.2f} us/pick  ({setup})")


if __name__ == "__main__":
    main()
