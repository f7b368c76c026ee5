"""Soak and fault run: saturating mixed gRPC load with random cancels while services are killed -9.

    .venv/bin/python scripts/soak.py                      # 10 min against its own `up --replicas 2`
    .venv/bin/python scripts/soak.py --minutes 3 --kill-every-s 20
    .venv/bin/python scripts/soak.py --short              # 60 s, one kill of each kind (e2e test)
    .venv/bin/python scripts/soak.py --address 127.0.0.1:50050 --scheduler-address 127.0.0.1:PORT
                                                           # load only, against any plaintext cluster

Without --address it starts `infermesh up --replicas 2` (plaintext, 127.0.0.1) and every
--kill-every-s seconds kills -9 a random worker, scheduler replica or frontend under it; `up`
restarts it on the same port. Load: --concurrency clients each send streaming or unary Generate
(greedy, ignore_eos, exactly --max-tokens tokens), cancelling ~--cancel-fraction of them at a random
moment. At the end it prints one JSON line:
  sent, completed_exact (OK with exactly max_tokens), completed_wrong_count, cancelled (by us),
  by_status (other clear statuses), lost (stream closed without its final message), hung (open past
  their deadline), kv_blocks_in_use (per scheduler after the load is gone; must be 0: only
  cached-but-free prefix blocks may remain, reported as kv_blocks_cached), rss_growth_mb per service,
  kills (by kind), restarts (lines `up` printed).
Exit status 1 when anything was lost, hung, or KV blocks leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

_KINDS = {"worker": "infermesh_worker", "scheduler": "infermesh_scheduler", "frontend": "infermesh_frontend"}
_PROMPTS = ["Once upon a time in a small village", "The quick brown fox", "In the beginning", "Hello, world"]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.address:
        return _report(_run(args, args.address, args.scheduler_address, None, None))
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="infermesh-soak-"))
    up = subprocess.Popen(
        [sys.executable, "-m", "infermesh_cli", "up", "--replicas", str(args.replicas), "--port", "0",
         "--http-port", "0", "--insecure-plaintext", "--log-dir", str(log_dir),
         f"--worker-arg=--num-threads={args.worker_threads}", "--max-restarts", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        output: list[str] = []
        address = _wait_frontend(up, output, timeout_s=300)
        threading.Thread(target=lambda: output.extend(up.stdout), daemon=True).start()  # type: ignore[arg-type]
        schedulers = [_announced(log_dir, "scheduler", "scheduler")]
        schedulers += [_announced(log_dir, f"scheduler-{r}", "scheduler") for r in range(1, args.replicas)]
        result = _run(args, address, schedulers, up, output)
        result["up_alive"] = up.poll() is None
        return _report(result)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(10)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    p.add_argument("--kill-every-s", type=float, default=30.0, help="seconds between kills (default 30)")
    p.add_argument("--short", action="store_true", help="60 s with one kill of each kind")
    p.add_argument("--address", help="frontend of an existing plaintext cluster (no kills)")
    p.add_argument("--scheduler-address", action="append", default=[], help="its schedulers, for KV checks")
    p.add_argument("--replicas", type=int, default=2, help="scheduler replicas of the started cluster")
    p.add_argument("--concurrency", type=int, default=6, help="clients sending at once (default 6)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--cancel-fraction", type=float, default=0.3)
    p.add_argument("--deadline-s", type=float, default=120.0, help="per-request deadline")
    p.add_argument("--worker-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", help="logs of the started cluster (default: a temp dir)")
    args = p.parse_args(argv)
    if args.short:
        args.minutes, args.kill_every_s = 1.0, 15.0
    if args.minutes <= 0 or args.kill_every_s <= 0 or args.concurrency < 1 or args.max_tokens < 1:
        p.error("--minutes, --kill-every-s, --concurrency and --max-tokens must be positive")
    return args


def _wait_frontend(up: subprocess.Popen, output: list[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    assert up.stdout is not None
    while time.monotonic() < deadline:
        line = up.stdout.readline()
        if not line:
            break
        output.append(line)
        match = re.match(r"frontend listening on (\S+:\d+)$", line.strip())
        if match:
            return match.group(1)
    raise SystemExit("infermesh up did not start:\n" + "".join(output[-30:]))


def _announced(log_dir: Path, log_name: str, service: str) -> str:
    match = re.search(rf"{service} listening on (\S+:\d+)", (log_dir / f"{log_name}.log").read_text())
    assert match, f"no address in {log_name}.log"
    return match.group(1)


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.by_status: Counter = Counter()

    def add(self, key: str, status: str = "") -> None:
        with self.lock:
            self.counts[key] += 1
            if status:
                self.by_status[status] += 1


def _client(
    address: str, args: argparse.Namespace, stop_at: float, rng: random.Random, tally: _Tally
) -> None:
    sampling = frontend_pb2.ClientSamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    with grpc.insecure_channel(address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        while time.monotonic() < stop_at:
            data = frontend_pb2.GenerateInput(
                text=rng.choice(_PROMPTS) + f" {rng.random():.6f}", sampling=sampling
            )
            # Within the first half second: most requests last longer, so most cancels land mid-request.
            cancel_after = rng.uniform(0.0, 0.5) if rng.random() < args.cancel_fraction else None
            tally.add("sent")
            if cancel_after is not None:
                tally.add("cancel_requested")
            if rng.random() < 0.5:
                call = stub.GenerateStream(
                    frontend_pb2.GenerateStreamRequest(input=data), timeout=args.deadline_s
                )
                outcome = _stream(call, args, cancel_after, tally)
            else:
                future = stub.Generate.future(
                    frontend_pb2.GenerateRequest(input=data), timeout=args.deadline_s
                )
                outcome = _unary(future, args, cancel_after, tally)
            # Back off after UNAVAILABLE as a client would (the frontend restarting), else a short pause.
            time.sleep(0.2 if outcome == "UNAVAILABLE" else 0.01)


def _classify_error(err: grpc.RpcError, cancelled: bool, tally: _Tally) -> str:
    code = err.code()
    if code == grpc.StatusCode.CANCELLED and cancelled:
        tally.add("cancelled")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        tally.add("hung")  # the cluster kept it open past its deadline
    else:
        tally.add("clear_status", code.name)
    return code.name


def _stream(call, args: argparse.Namespace, cancel_after: float | None, tally: _Tally) -> str:
    timer = threading.Timer(cancel_after, call.cancel) if cancel_after is not None else None
    if timer:
        timer.start()
    tokens, final = 0, False
    try:
        for chunk in call:
            tokens += len(chunk.token_ids)
            final = final or chunk.HasField("usage")
        if not final:
            tally.add("lost")
        elif tokens == args.max_tokens:
            tally.add("completed_exact")
        else:
            tally.add("completed_wrong_count")
        return "OK"
    except grpc.RpcError as err:
        return _classify_error(err, cancel_after is not None, tally)
    finally:
        if timer:
            timer.cancel()


def _unary(future, args: argparse.Namespace, cancel_after: float | None, tally: _Tally) -> str:
    timer = threading.Timer(cancel_after, future.cancel) if cancel_after is not None else None
    if timer:
        timer.start()
    try:
        response = future.result()
        tokens = sum(len(c.token_ids) for c in response.completions)
        tally.add("completed_exact" if tokens == args.max_tokens else "completed_wrong_count")
        return "OK"
    except grpc.FutureCancelledError:
        tally.add("cancelled")
        return "CANCELLED"
    except grpc.RpcError as err:
        return _classify_error(err, cancel_after is not None, tally)
    finally:
        if timer:
            timer.cancel()


def _services(up: subprocess.Popen) -> dict[int, str]:
    """pid -> kind of every service process under `up`."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(up.pid)], capture_output=True, text=True).stdout
    found = {}
    for pid in (int(p) for p in out.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        for kind, module in _KINDS.items():
            if module.encode() in cmdline:
                found[pid] = kind
    return found


def _listen_ports(pid: int) -> list[int]:
    """The TCP ports `pid` listens on (from /proc; no extra dependency)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return []
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _snapshot(up: subprocess.Popen, grpc_ports: set[int]) -> dict[str, float]:
    """RSS by service, keyed so a restarted service keeps its key: workers by --worker-name,
    schedulers and the frontend by their gRPC port (restarts reuse it; other ports may change)."""
    rss = {}
    for pid, kind in _services(up).items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-name" in cmdline:
            key = cmdline[cmdline.index(b"--worker-name") + 1].decode()
        else:
            ports = [p for p in _listen_ports(pid) if p in grpc_ports]
            key = f"{kind}:{ports[0] if ports else pid}"
        rss[key] = _rss_mb(pid)
    return rss


def _run(args, address: str, schedulers: list[str], up, output) -> dict:
    rng = random.Random(args.seed)
    tally = _Tally()
    stop_at = time.monotonic() + args.minutes * 60
    clients = [
        threading.Thread(
            target=_client, args=(address, args, stop_at, random.Random(rng.random()), tally), daemon=True
        )
        for _ in range(args.concurrency)
    ]
    grpc_ports = {int(a.rsplit(":", 1)[1]) for a in [address, *schedulers]}
    rss_start = _snapshot(up, grpc_ports) if up else {}
    for client in clients:
        client.start()
    kills: Counter = Counter()
    if up is not None:
        plan = list(_KINDS) if args.short else []
        rng.shuffle(plan)
        next_kill = time.monotonic() + args.kill_every_s
        # Bounded: at most one kill per interval, none in the last interval (time to recover).
        while next_kill < stop_at - args.kill_every_s / 2 and not (args.short and not plan):
            time.sleep(max(0.0, next_kill - time.monotonic()))
            services = _services(up)
            kind = plan.pop() if args.short else rng.choice(list(_KINDS))
            pids = [pid for pid, k in services.items() if k == kind]
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills[kind] += 1
            next_kill += args.kill_every_s
    for client in clients:
        client.join(args.deadline_s + 30)
    still_open = sum(client.is_alive() for client in clients)
    blocks = _blocks_after(schedulers, timeout_s=60)
    rss_end = _snapshot(up, grpc_ports) if up else {}
    counts = tally.counts
    return {
        "minutes": args.minutes,
        "kill_every_s": args.kill_every_s,
        "sent": counts["sent"],
        "completed_exact": counts["completed_exact"],
        "completed_wrong_count": counts["completed_wrong_count"],
        "cancel_requested": counts["cancel_requested"],
        "cancelled": counts["cancelled"],
        "by_status": dict(tally.by_status),
        "lost": counts["lost"],
        "hung": counts["hung"] + still_open,
        "kv_blocks_in_use": {a: b[0] for a, b in blocks.items()},
        "kv_blocks_cached": {a: b[1] for a, b in blocks.items()},
        "rss_growth_mb": {k: round(rss_end[k] - v, 1) for k, v in rss_start.items() if k in rss_end},
        "kills": dict(kills),
        "restarts": sum("restarting in" in line for line in output or []),
    }


def _blocks_after(schedulers: list[str], timeout_s: float) -> dict[str, tuple[int, int]]:
    """(blocks held by sequences, cached-but-free blocks) per scheduler once it is idle and serving."""
    result: dict[str, tuple[int, int]] = {}
    for address in schedulers:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            in_use = -1
            while time.monotonic() < deadline:
                try:
                    load = stub.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=5)
                except grpc.RpcError:
                    time.sleep(0.5)  # restarting
                    continue
                in_use = load.total_blocks - load.free_blocks - load.cached_blocks
                result[address] = (in_use, load.cached_blocks)
                if in_use == 0 and load.num_running == 0 and load.num_waiting == 0:
                    break
                time.sleep(0.5)
            result.setdefault(address, (in_use, 0))
    return result


def _report(result: dict) -> int:
    print(json.dumps(result, sort_keys=True), flush=True)
    leaked = any(v != 0 for v in result["kv_blocks_in_use"].values())
    return 1 if result["lost"] or result["hung"] or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
