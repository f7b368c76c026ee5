"""Starts a local cluster per named setup, runs `infermesh bench` against it, prints one JSON line each.

Setups run one after another in one invocation, so their figures compare as ratios on the same
(possibly busy) machine. Example:

    .venv/bin/python scripts/bench_matrix.py --setups tp1 tp2 pp2 --num-requests 64 --concurrency 64
    .venv/bin/python scripts/bench_matrix.py --model-preset llama-100m --setups tp1
    .venv/bin/python scripts/bench_matrix.py --setups prefix-on prefix-off --shared-prefix-len 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from infermesh_cli.demo_model import ensure_demo_model, write_llama_checkpoint
from infermesh_cli.local_cluster import ClusterSpec, LocalCluster
from infermesh_cli.make_model_command import PRESETS

SETUPS: dict[str, dict] = {
    "tp1": {},
    "tp2": {"tp_size": 2},
    "pp2": {"pp_size": 2},
    "prefix-on": {"scheduler_args": ["--enable-prefix-cache"]},
    "prefix-off": {"scheduler_args": ["--no-enable-prefix-cache"]},
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=["tp1"])
    parser.add_argument("--model-preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--shared-prefix-len", type=int, default=0)
    parser.add_argument("--prompt-len", nargs=2, default=["32", "512"])
    parser.add_argument("--output-len", nargs=2, default=["16", "128"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="infermesh-bench-"))
    if args.model_preset == "demo":
        model = ensure_demo_model()
    else:
        model = write_llama_checkpoint(work / args.model_preset, seed=0, **PRESETS[args.model_preset])
    for name in args.setups:
        setup = SETUPS[name]
        spec = ClusterSpec(
            model_path=model,
            tp_size=setup.get("tp_size", 1),
            pp_size=setup.get("pp_size", 1),
            scheduler_args=["--dtype", "fp32", *setup.get("scheduler_args", [])],
            log_dir=work / f"logs-{name}",
        )
        with LocalCluster(spec) as cluster:
            bench = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "infermesh_cli",
                    "bench",
                    "--address",
                    cluster.frontend_address,
                    "--num-requests",
                    str(args.num_requests),
                    "--concurrency",
                    str(args.concurrency),
                    "--shared-prefix-len",
                    str(args.shared_prefix_len),
                    "--prompt-len",
                    *args.prompt_len,
                    "--output-len",
                    *args.output_len,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        result = json.loads(bench.stdout.strip().splitlines()[-1])
        print(json.dumps({"setup": name, "model_preset": args.model_preset, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
