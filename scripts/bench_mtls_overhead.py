"""The step-time cost of mutual TLS: two demo clusters up at once (mTLS, and plaintext), `infermesh
bench` run against them alternately, round after round, in one invocation; prints each round and
the mTLS/plaintext ratio of mean TPOT (per round, median and geometric mean).

    .venv/bin/python scripts/bench_mtls_overhead.py --rounds 8 --num-requests 24 --concurrency 8

Alternating A/B in one run keeps a busy machine's drift out of the ratio as far as it can be.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from infermesh_cli.demo_model import ensure_demo_model
from infermesh_cli.local_cluster import ClusterSpec, LocalCluster


def _bench(address: str, args: argparse.Namespace, seed: int) -> dict:
    command = [
        sys.executable, "-m", "infermesh_cli", "bench",
        "--address", address,
        "--num-requests", str(args.num_requests),
        "--concurrency", str(args.concurrency),
        "--prompt-len", "32", "64",
        "--output-len", str(args.output_len), str(args.output_len),
        "--seed", str(seed),
        "--disable-tqdm",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--num-requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output-len", type=int, default=96)
    args = parser.parse_args()
    model = ensure_demo_model()
    work = Path(tempfile.mkdtemp(prefix="infermesh-mtls-bench-"))
    worker_args = ["--num-threads", "1"]
    mtls_spec = ClusterSpec(model, log_dir=work / "mtls", tls_dir=work / "certs", worker_args=worker_args)
    clusters = {
        "mtls": LocalCluster(mtls_spec),
        "plaintext": LocalCluster(ClusterSpec(model, log_dir=work / "plain", worker_args=worker_args)),
    }
    try:
        for cluster in clusters.values():
            cluster.start()
        ratios = []
        for round_index in range(1, args.rounds + 1):
            tpot = {}
            for name, cluster in clusters.items():
                result = _bench(cluster.frontend_address, args, round_index)
                tpot[name] = result["tpot_ms_mean"]
                print(json.dumps({"round": round_index, "setup": name, **result}), flush=True)
            ratios.append(tpot["mtls"] / tpot["plaintext"])
        print(
            json.dumps(
                {
                    "tpot_ratio_mtls_over_plaintext_per_round": [round(r, 3) for r in ratios],
                    "median": round(statistics.median(ratios), 3),
                    "geometric_mean": round(statistics.geometric_mean(ratios), 3),
                }
            ),
            flush=True,
        )
    finally:
        for cluster in clusters.values():
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
