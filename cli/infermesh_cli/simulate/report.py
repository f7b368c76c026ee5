"""What a simulation run reports: one JSON summary, and optionally one CSV row per request."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from infermesh_cli.simulate.engine import RequestRecord, SimResult
from infermesh_cli.simulate.sim_config import SimConfig

_PERCENTILES = (50, 90, 99)
CSV_FIELDS = (
    "index",
    "class",
    "prefix_group",
    "replica",
    "arrival_s",
    "prompt_len",
    "output_len",
    "cached_prompt_tokens",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "error",
)


def ttft_ms(r: RequestRecord) -> float:
    return (r.first_token_s - r.arrival_s) * 1000.0


def tpot_ms(r: RequestRecord) -> float:
    """Mean time between output tokens after the first (NaN with fewer than two tokens)."""
    if r.output_tokens < 2:
        return math.nan
    return (r.finish_s - r.first_token_s) * 1000.0 / (r.output_tokens - 1)


def e2e_ms(r: RequestRecord) -> float:
    return (r.finish_s - r.arrival_s) * 1000.0


def completed(records: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if not r.error and not math.isnan(r.finish_s)]


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return {}
    out = {f"p{p}": round(_pct(values, p), 3) for p in _PERCENTILES}
    out["mean"] = round(statistics.fmean(values), 3)
    out["max"] = round(values[-1], 3)
    return out


def _pct(ordered: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, `infermesh bench`'s too)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(config: SimConfig, result: SimResult) -> dict[str, Any]:
    records = result.records
    done = completed(records)
    start = min((r.arrival_s for r in records), default=0.0)
    end = max((r.finish_s for r in done), default=start)
    span = max(end - start, 1e-9)
    out_tokens = sum(r.output_tokens for r in done)
    prompt_tokens = sum(r.prompt_len for r in done)
    errors: dict[str, int] = {}
    for r in records:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    per_replica = [rep.requests for rep in result.replicas]
    mean_requests = statistics.fmean(per_replica) if per_replica else 0.0
    busy = [rep.busy_s / max(result.simulated_s, 1e-9) for rep in result.replicas]
    cores = [rep.scheduler for rep in result.replicas]
    queries = sum(c.prefix_cache_queries for c in cores)
    hits = sum(c.prefix_cache_hits for c in cores)
    summary: dict[str, Any] = {
        "simulated_s": round(result.simulated_s, 3),
        "wall_s": round(result.wall_s, 3),
        "simulated_requests_per_wall_s": round(len(records) / max(result.wall_s, 1e-9), 1),
        "speedup_vs_real_time": round(result.simulated_s / max(result.wall_s, 1e-9), 2),
        "wall_breakdown_s": {k: round(v, 3) for k, v in result.wall_breakdown.items()},
        "requests": {
            "arrived": len(records),
            "completed": len(done),
            "failed": errors,
            "unfinished": result.unfinished,
        },
        "throughput": {
            "requests_per_s": round(len(done) / span, 3),
            "output_tokens_per_s": round(out_tokens / span, 2),
            "total_tokens_per_s": round((out_tokens + prompt_tokens) / span, 2),
            "duration_s": round(span, 3),
        },
        "latency_ms": {
            "ttft": percentiles([ttft_ms(r) for r in done]),
            "tpot": percentiles([tpot_ms(r) for r in done]),
            "e2e": percentiles([e2e_ms(r) for r in done]),
        },
        "slo": _slo(config, records),
        "queue": {
            "cluster_waiting_mean": round(statistics.fmean(result.series_waiting), 2)
            if result.series_waiting
            else 0,
            "cluster_waiting_max": max(result.series_waiting, default=0),
            "replica_requests_max": max((max(row) for row in result.series_requests if row), default=0),
        },
        "kv_usage": _kv(result),
        "preemptions": sum(c.num_preemptions for c in cores),
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else 0.0,
        "cached_prompt_token_share": round(
            sum(r.cached_prompt_tokens for r in done) / max(prompt_tokens, 1), 4
        ),
        "load_imbalance": {
            "requests_max_over_mean": round(max(per_replica) / mean_requests, 3) if mean_requests else 0.0,
            "requests_cv": round(statistics.pstdev(per_replica) / mean_requests, 3) if mean_requests else 0.0,
            "busy_fraction_min": round(min(busy), 3),
            "busy_fraction_max": round(max(busy), 3),
            "in_flight_cv_mean": _mean_cv(result.series_requests),
        },
        "replica_steps": sum(rep.steps for rep in result.replicas),
        "kv_blocks_leaked": result.leaked_blocks,
        "config": config.describe(),
    }
    return summary


def _slo(config: SimConfig, records: list[RequestRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for klass in config.workload.classes:
        mine = [r for r in records if r.klass == klass.name]
        if not mine:
            continue
        met = 0
        for r in mine:
            ok = not r.error and not math.isnan(r.finish_s)
            if ok and klass.ttft_slo_ms:
                ok = ttft_ms(r) <= klass.ttft_slo_ms
            if ok and klass.tpot_slo_ms and r.output_tokens > 1:
                ok = tpot_ms(r) <= klass.tpot_slo_ms
            met += ok
        done = completed(mine)
        out[klass.name] = {
            "requests": len(mine),
            "ttft_slo_ms": klass.ttft_slo_ms,
            "tpot_slo_ms": klass.tpot_slo_ms,
            "attainment": round(met / len(mine), 4),
            "ttft_ms_p50": percentiles([ttft_ms(r) for r in done]).get("p50"),
            "tpot_ms_p50": percentiles([tpot_ms(r) for r in done]).get("p50"),
        }
    return out


def _kv(result: SimResult) -> dict[str, float]:
    flat = [v for row in result.series_kv_used for v in row]
    if not flat:
        return {}
    return {"mean": round(statistics.fmean(flat), 4), "max": round(max(flat), 4)}


def _mean_cv(rows: list[list[int]]) -> float:
    """Mean over poll ticks of the spread (stdev / mean) of in-flight requests across replicas."""
    cvs = []
    for row in rows:
        mean = statistics.fmean(row) if row else 0.0
        if mean > 0:
            cvs.append(statistics.pstdev(row) / mean)
    return round(statistics.fmean(cvs), 3) if cvs else 0.0


def write_csv(path: Path, records: list[RequestRecord]) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for r in records:
            writer.writerow(
                [
                    r.index,
                    r.klass,
                    r.prefix_group,
                    r.replica,
                    f"{r.arrival_s:.6f}",
                    r.prompt_len,
                    r.output_len,
                    r.cached_prompt_tokens,
                    _fmt(ttft_ms(r)),
                    _fmt(tpot_ms(r)),
                    _fmt(e2e_ms(r)),
                    r.error,
                ]
            )


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"
