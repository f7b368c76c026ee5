"""Turns the measured requests into `infermesh bench`'s report: percentiles, throughput, goodput.

Definitions follow `vllm bench serve`: TTFT is request start to first token; ITL the gaps between
token arrivals (a chunk of k tokens after a gap g counts as k gaps of g/k); TPOT (e2e - TTFT) /
(output tokens - 1) per request; goodput the requests per second that met every SLO given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infermesh_cli.bench_backends import RequestResult

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass(slots=True)
class RequestFigures:
    """One successful request's latencies in milliseconds."""

    ttft_ms: float
    e2e_ms: float
    tpot_ms: float | None
    itls_ms: list[float]
    output_tokens: int
    prompt_tokens: int


def figures_of(result: RequestResult) -> RequestFigures:
    first_at = result.chunks[0][0]
    itls = []
    previous = first_at
    first = True
    for arrived, count in result.chunks:
        if first:
            # Tokens beyond the first in the first chunk arrived with it: no gap to count.
            first = False
            previous = arrived
            continue
        itls.extend([(arrived - previous) * 1000.0 / count] * count)
        previous = arrived
    ttft = (first_at - result.start) * 1000.0
    e2e = (result.end - result.start) * 1000.0
    out = result.output_tokens
    return RequestFigures(
        ttft_ms=ttft,
        e2e_ms=e2e,
        tpot_ms=(e2e - ttft) / (out - 1) if out > 1 else None,
        itls_ms=itls,
        output_tokens=out,
        prompt_tokens=result.prompt_tokens,
    )


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def parse_slos(specs: list[str]) -> dict[str, float]:
    """`ttft:200 tpot:50` (milliseconds) -> {"ttft": 200.0, "tpot": 50.0}; ValueError names the bad one."""
    slos = {}
    for spec in specs:
        name, _, value = spec.partition(":")
        if name not in SLO_METRICS:
            raise ValueError(f"--goodput {spec!r}: the metric must be one of {', '.join(SLO_METRICS)}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {spec!r}: give milliseconds, e.g. {name}:200") from None
        if slos[name] <= 0:
            raise ValueError(f"--goodput {spec!r}: the limit must be > 0 ms")
    return slos


def meets(figures: RequestFigures, slos: dict[str, float]) -> bool:
    values = {
        "ttft": figures.ttft_ms,
        "tpot": figures.tpot_ms or 0.0,
        "e2e": figures.e2e_ms,
        "itl": max(figures.itls_ms, default=0.0),
    }
    return all(values[name] <= limit for name, limit in slos.items())


def summarize(results: list[RequestResult], duration_s: float, slos: dict[str, float]) -> dict:
    """The report's numbers (rounded for printing); failed requests are counted, not timed."""
    done = [figures_of(r) for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    series = {
        "ttft": [f.ttft_ms for f in done],
        "tpot": [f.tpot_ms for f in done if f.tpot_ms is not None],
        "itl": [gap for f in done for gap in f.itls_ms],
        "e2e": [f.e2e_ms for f in done],
    }
    output_tokens = sum(f.output_tokens for f in done)
    prompt_tokens = sum(f.prompt_tokens for f in done)
    summary: dict = {
        "completed": len(done),
        "failed": len(failed),
        "duration_s": round(duration_s, 3),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "requests_per_s": round(len(done) / duration_s, 3),
        "output_tokens_per_s": round(output_tokens / duration_s, 2),
        "total_tokens_per_s": round((prompt_tokens + output_tokens) / duration_s, 2),
    }
    for name, values in series.items():
        summary[f"{name}_ms_mean"] = round(sum(values) / len(values), 2) if values else 0.0
        for pct in PERCENTILES:
            summary[f"{name}_ms_p{pct}"] = round(percentile(values, pct), 2)
    if slos:
        good = sum(meets(f, slos) for f in done)
        summary["goodput_slos_ms"] = slos
        summary["goodput_requests"] = good
        summary["goodput_requests_per_s"] = round(good / duration_s, 3)
    if failed:
        summary["first_errors"] = sorted({r.error or "no tokens returned" for r in failed})[:5]
    return summary


def render_table(summary: dict, title: str) -> str:
    """The summary as `vllm bench serve` prints it, for a person reading the terminal."""
    lines = [f"{' ' + title + ' ':=^60}"]

    def row(label: str, value: object) -> None:
        lines.append(f"{label:<44}{value:>16}")

    row("Successful requests:", summary["completed"])
    row("Failed requests:", summary["failed"])
    row("Benchmark duration (s):", f"{summary['duration_s']:.2f}")
    row("Total input tokens:", summary["prompt_tokens"])
    row("Total generated tokens:", summary["output_tokens"])
    row("Request throughput (req/s):", f"{summary['requests_per_s']:.2f}")
    if "goodput_requests_per_s" in summary:
        row("Request goodput (req/s):", f"{summary['goodput_requests_per_s']:.2f}")
    row("Output token throughput (tok/s):", f"{summary['output_tokens_per_s']:.2f}")
    row("Total token throughput (tok/s):", f"{summary['total_tokens_per_s']:.2f}")
    for name, heading in (
        ("ttft", "Time to First Token"),
        ("tpot", "Time per Output Token (excl. 1st token)"),
        ("itl", "Inter-token Latency"),
        ("e2e", "End-to-end Latency"),
    ):
        lines.append(f"{heading:-^60}")
        row(f"Mean {name.upper()} (ms):", f"{summary[f'{name}_ms_mean']:.2f}")
        for pct in PERCENTILES:
            label = "Median" if pct == 50 else f"P{pct}"
            row(f"{label} {name.upper()} (ms):", f"{summary[f'{name}_ms_p{pct}']:.2f}")
    lines.append("=" * 60)
    return "\n".join(lines)


def per_request_record(results: list[RequestResult]) -> dict:
    """Per-request arrays for --save-result (as vllm's --save-detailed), times relative to the run."""
    t0 = min((r.start for r in results), default=0.0)
    records = []
    for result in results:
        entry: dict = {"start_s": round(result.start - t0, 6), "error": result.error}
        if result.ok:
            figures = figures_of(result)
            entry.update(
                ttft_ms=round(figures.ttft_ms, 3),
                e2e_ms=round(figures.e2e_ms, 3),
                tpot_ms=None if figures.tpot_ms is None else round(figures.tpot_ms, 3),
                itls_ms=[round(gap, 3) for gap in figures.itls_ms],
                output_tokens=figures.output_tokens,
                prompt_tokens=figures.prompt_tokens,
                token_times_s=[round(at - t0, 6) for at, _ in result.chunks],
                token_counts=[count for _, count in result.chunks],
            )
        records.append(entry)
    return {"requests": records}
