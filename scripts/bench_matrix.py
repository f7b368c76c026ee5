"""Starts a local cluster per named setup, runs `infermesh bench` against it, prints one JSON line each.

Setups run one after another in one invocation, so their figures compare as ratios on the same
(possibly busy) machine. Example:

    .venv/bin/python scripts/bench_matrix.py --setups tp1 tp2 pp2 --num-requests 64 --concurrency 64
    .venv/bin/python scripts/bench_matrix.py --model-preset llama-100m --setups tp1
    .venv/bin/python scripts/bench_matrix.py --setups prefix-on prefix-off --shared-prefix-len 256
    # two replicas, all arrivals to one, rescheduling off and on:
    .venv/bin/python scripts/bench_matrix.py --setups resched-off resched-on --num-requests 64
    # issue 17's workload on the ~100M preset and the demo model, this tree against an older one:
    .venv/bin/python scripts/bench_matrix.py --workload peers-64 --model-preset llama-100m demo \
        --baseline-src /tmp/infermesh-before

Every setup gets a fresh cluster, so no prefix is cached from an earlier run. With --baseline-src
(a checkout of another commit with its stubs generated: `python scripts/gen_protos.py` there),
each setup runs twice, before (that tree's services, via PYTHONPATH) and after (this tree), and
the line of the second run carries the after/before ratio of output tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from infermesh_cli.bench_workload import WORKLOADS
from infermesh_cli.demo_model import ensure_demo_model, write_llama_checkpoint
from infermesh_cli.local_cluster import ClusterSpec, LocalCluster
from infermesh_cli.make_model_command import PRESETS

RESCHEDULING_ON = [
    "enable_rescheduling=true",
    "rescheduling_policies=decode_load,neutral_failover",
    "rescheduling_interval_ms=200",
    # Act before the pinned replica is full (the seed's 1.0 waits for projected overload).
    "rescheduling_decode_load_threshold=0.3",
    "rescheduling_load_balance_threshold=0.1",
    "rescheduling_req_select_rule=NUM_REQ",
    "rescheduling_req_select_value=4",
]
SETUPS: dict[str, dict] = {
    "tp1": {},
    "tp2": {"tp_size": 2},
    "pp2": {"pp_size": 2},
    "prefix-on": {"scheduler_args": ["--enable-prefix-cache"]},
    "prefix-off": {"scheduler_args": ["--no-enable-prefix-cache"]},
    # Two replicas, every arrival pinned to one of them (one session id, session dispatch): the
    # imbalance seed 001's rescheduler is for, without and with it (decode_load moves running
    # requests, with their KV cache, to the idle replica).
    "resched-off": {"replicas": 2, "pinned": True},
    "resched-on": {"replicas": 2, "pinned": True, "rescheduler_args": RESCHEDULING_ON},
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=["tp1"])
    parser.add_argument("--model-preset", nargs="+", choices=sorted(PRESETS), default=["demo"])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), help="a fixed workload (e.g. peers-64)")
    parser.add_argument(
        "--baseline-src", type=Path, help="also run each setup on the services of this source tree, first"
    )
    parser.add_argument("--scheduler-args", default="", help="extra scheduler flags for every setup")
    parser.add_argument("--worker-args", default="", help="extra worker flags for every setup")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--shared-prefix-len", type=int, default=0)
    parser.add_argument("--prompt-len", nargs=2, default=["32", "512"])
    parser.add_argument("--output-len", nargs=2, default=["16", "128"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="infermesh-bench-"))
    trees = [("before", _tree_env(args.baseline_src))] if args.baseline_src else []
    trees.append(("after" if args.baseline_src else "this", None))
    for preset in args.model_preset:
        if preset == "demo":
            model = ensure_demo_model()
        else:
            model = write_llama_checkpoint(work / preset, seed=0, **PRESETS[preset])
        for name in args.setups:
            before = None
            for tree, env in trees:
                result = _run_setup(args, name, model, work / f"logs-{preset}-{name}-{tree}", env)
                line = {"setup": name, "model_preset": preset, "tree": tree, **result}
                if tree == "before":
                    before = result["output_tokens_per_s"]
                elif before:
                    line["after_over_before"] = round(result["output_tokens_per_s"] / before, 3)
                print(json.dumps(line), flush=True)
    return 0


def _tree_env(src: Path) -> dict[str, str]:
    """An environment whose Python imports every infermesh package from `src` first."""
    src = src.resolve()
    roots = ["shared", "services/scheduler", "services/worker", "services/frontend", "cli"]
    missing = [r for r in roots if not (src / r).is_dir()]
    if missing or not (src / "shared/infermesh/v1").is_dir():
        raise SystemExit(f"error: {src} is not an infermesh checkout with generated stubs ({missing})")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src / r) for r in roots] + [env.get("PYTHONPATH", "")])
    return env


def _run_setup(args: argparse.Namespace, name: str, model: Path, log_dir: Path, env) -> dict:
    from infermesh_cli.rescheduler_args import rescheduler_flags

    setup = SETUPS[name]
    frontend_args = rescheduler_flags(setup.get("rescheduler_args", []))
    if setup.get("pinned"):
        frontend_args += ["--dispatch-policy", "session"]
    spec = ClusterSpec(
        model_path=model,
        tp_size=setup.get("tp_size", 1),
        pp_size=setup.get("pp_size", 1),
        replicas=setup.get("replicas", 1),
        scheduler_args=["--dtype", "fp32", *setup.get("scheduler_args", []), *args.scheduler_args.split()],
        worker_args=args.worker_args.split(),
        frontend_args=frontend_args,
        log_dir=log_dir,
        env=env,
    )
    command = [
        sys.executable,
        "-m",
        "infermesh_cli",
        "bench",
        "--disable-tqdm",
        "--concurrency",
        str(args.concurrency),
    ]
    if args.workload:
        command += ["--workload", args.workload]
    else:
        command += [
            "--num-requests",
            str(args.num_requests),
            "--shared-prefix-len",
            str(args.shared_prefix_len),
        ]
        command += ["--prompt-len", *args.prompt_len, "--output-len", *args.output_len]
    if setup.get("pinned"):
        command += ["--session-id", "pinned"]
    with LocalCluster(spec) as cluster:
        services = {
            "worker": cluster.workers,
            "scheduler": cluster.schedulers,
            "frontend": cluster.frontends,
        }
        before = {name: sum(_cpu_seconds(s) for s in procs) for name, procs in services.items()}
        bench = subprocess.run(
            [*command, "--address", cluster.frontend_address], capture_output=True, text=True, check=True
        )
        used = {name: sum(_cpu_seconds(s) for s in procs) - before[name] for name, procs in services.items()}
    result = json.loads(bench.stdout.strip().splitlines()[-1])
    # CPU seconds each service spent on the workload: on a shared machine the wall time depends on
    # the neighbours, these much less; the scheduler's and frontend's are what the worker loses.
    result["cpu_s"] = {name: round(value, 1) for name, value in used.items()}
    if setup.get("rescheduler_args"):
        log = "".join(path.read_text() for path in log_dir.glob("frontend*.log"))
        result["migrations"] = {
            "moved": len(re.findall(r"decode_load: \S+ moved", log)),
            "stayed": len(re.findall(r"decode_load: \S+ stays on", log)),
        }
    return result


def _cpu_seconds(service) -> float:
    """User + system CPU time of a service process so far (Linux /proc)."""
    fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
