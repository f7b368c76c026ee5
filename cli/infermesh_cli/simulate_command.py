"""`infermesh simulate`: size a cluster and compare routing policies on one machine.

Runs the real scheduler core and the real frontend routing code on a virtual clock, with workers
whose step time follows a law fitted from `infermesh bench profile` (or given as coefficients),
and prints one JSON summary (one per policy when several are compared).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_simulate_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a cluster (real scheduler core and routing, modelled workers) on a virtual clock",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="simulation config (YAML); flags below override it")
    parser.add_argument("--replicas", type=int, help="scheduler replicas (each with its worker group)")
    parser.add_argument("--frontends", type=int, help="frontends (requests are spread over them in turn)")
    parser.add_argument(
        "--dispatch-policy",
        help="routing policy; a comma-separated list runs one simulation per policy on the same traffic",
    )
    parser.add_argument("--rate", help="requests per second (inf: all at time 0, needs --num-requests)")
    parser.add_argument("--duration", type=float, help="seconds of simulated arrivals")
    parser.add_argument("--num-requests", type=int, help="stop after this many requests")
    parser.add_argument("--profile", type=Path, help="step-time profile written by `infermesh bench profile`")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--check-invariants-every",
        type=int,
        help="run the core's invariant checks every N steps of each replica (0: only at the end)",
    )
    parser.add_argument("--output", type=Path, help="write the JSON summary here too")
    parser.add_argument("--csv", type=Path, help="write one CSV row per request (one file per policy)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write latency CDF and load PNGs into DIR")
    parser.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from infermesh_cli.simulate.engine import Simulation
    from infermesh_cli.simulate.report import summarize, write_csv
    from infermesh_cli.simulate.sim_config import load_sim_config

    policies = [p.strip() for p in (args.dispatch_policy or "").split(",") if p.strip()] or [None]
    rate = None
    if args.rate is not None:
        try:
            rate = float(args.rate)
        except ValueError:
            raise SystemExit(
                f"error: --rate must be a number of requests/s or inf, got {args.rate!r}"
            ) from None
    runs = {}
    summaries = {}
    for policy in policies:
        overrides = {
            "replicas": args.replicas,
            "frontends": args.frontends,
            "dispatch_policy": policy,
            "rate": None if rate is None else ("inf" if math.isinf(rate) else rate),
            "duration_s": args.duration,
            "num_requests": args.num_requests,
            "profile": args.profile,
            "seed": args.seed,
            "check_invariants_every": args.check_invariants_every,
        }
        try:
            config = load_sim_config(args.config, overrides)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        label = config.cluster.dispatch_policy
        print(
            f"simulating {config.cluster.replicas} replicas, {config.cluster.frontends} frontends, "
            f"dispatch_policy={label} ...",
            file=sys.stderr,
            flush=True,
        )
        simulation = Simulation(config)
        simulation.progress = lambda t, n, wall: print(
            f"  t={t:.0f}s simulated, {n} requests, {wall:.0f}s wall", file=sys.stderr, flush=True
        )
        result = simulation.run()
        summary = summarize(config, result)
        runs[label] = result
        summaries[label] = summary
        print(
            f"  {summary['requests']['arrived']} requests, {summary['simulated_s']} s simulated in "
            f"{summary['wall_s']} s wall ({summary['simulated_requests_per_wall_s']} requests/s)",
            file=sys.stderr,
            flush=True,
        )
        if args.csv is not None:
            path = (
                args.csv
                if len(policies) == 1
                else args.csv.with_name(f"{args.csv.stem}_{label}{args.csv.suffix}")
            )
            write_csv(path, result.records)
    document = next(iter(summaries.values())) if len(summaries) == 1 else {"runs": summaries}
    text = json.dumps(document)
    print(text, flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot is not None:
        from infermesh_cli.simulate.plots import write_plots

        for path in write_plots(args.plot, runs):
            print(f"wrote {path}", file=sys.stderr)
    return 0
