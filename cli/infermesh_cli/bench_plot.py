"""`infermesh bench --plot FILE.png`: latency CDFs and throughput over time (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

from infermesh_cli.bench_backends import RequestResult
from infermesh_cli.bench_report import figures_of


def throughput_timeline(results: list[RequestResult], bucket_s: float) -> tuple[list[float], list[float]]:
    """(bucket start times, output tokens/s in that bucket), times from the first request's start."""
    if not results:
        return [], []
    t0 = min(r.start for r in results)
    t_end = max(r.end for r in results)
    buckets = [0.0] * (int((t_end - t0) / bucket_s) + 1)
    for result in results:
        for arrived, count in result.chunks:
            buckets[int((arrived - t0) / bucket_s)] += count
    return [i * bucket_s for i in range(len(buckets))], [tokens / bucket_s for tokens in buckets]


def in_flight_timeline(results: list[RequestResult], times: list[float]) -> list[int]:
    t0 = min((r.start for r in results), default=0.0)
    return [sum(r.start - t0 <= at < r.end - t0 for r in results) for at in times]


def write_plot(results: list[RequestResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    done = [figures_of(r) for r in results if r.ok]
    series = {
        "TTFT": [f.ttft_ms for f in done],
        "TPOT": [f.tpot_ms for f in done if f.tpot_ms is not None],
        "ITL": [gap for f in done for gap in f.itls_ms],
        "End-to-end": [f.e2e_ms for f in done],
    }
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    for axis, (name, values) in zip(axes.flat, series.items(), strict=False):
        ordered = sorted(values)
        if ordered:
            axis.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))])
        axis.set_title(f"{name} CDF")
        axis.set_xlabel("ms")
        axis.set_ylabel("fraction of requests" if name != "ITL" else "fraction of tokens")
        axis.grid(True, alpha=0.3)
    duration = max((r.end for r in results), default=0.0) - min((r.start for r in results), default=0.0)
    bucket = max(duration / 60, 0.1)
    times, rates = throughput_timeline(results, bucket)
    axes.flat[4].plot(times, rates)
    axes.flat[4].set_title("Output throughput over time")
    axes.flat[4].set_xlabel("s since start")
    axes.flat[4].set_ylabel("tokens/s")
    axes.flat[4].grid(True, alpha=0.3)
    axes.flat[5].step(times, in_flight_timeline(results, times), where="post")
    axes.flat[5].set_title("Requests in flight")
    axes.flat[5].set_xlabel("s since start")
    axes.flat[5].grid(True, alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
