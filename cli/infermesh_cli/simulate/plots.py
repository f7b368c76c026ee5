"""`--plot DIR`: latency CDFs (every run overlaid) and per-replica load over time (one per run)."""

from __future__ import annotations

from pathlib import Path

from infermesh_cli.simulate.engine import SimResult
from infermesh_cli.simulate.report import completed, e2e_ms, tpot_ms, ttft_ms

_METRICS = (
    ("ttft", "time to first token (ms)", ttft_ms),
    ("tpot", "time per output token (ms)", tpot_ms),
    ("e2e", "end-to-end latency (ms)", e2e_ms),
)


def write_plots(out_dir: Path, runs: dict[str, SimResult]) -> list[Path]:
    """Writes the PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    fig, axes = plt.subplots(1, len(_METRICS), figsize=(5 * len(_METRICS), 4))
    for ax, (_, title, fn) in zip(axes, _METRICS, strict=True):
        low, high = float("inf"), 0.0
        for label, result in runs.items():
            values = sorted(v for v in (fn(r) for r in completed(result.records)) if v == v)
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, ys, where="post", label=label)
                low, high = min(low, values[0]), max(high, values[-1])
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of requests")
        if 0 < low and high > 20 * low:  # a log axis only when the values span decades
            ax.set_xscale("log")
            # Plain numbers at the decades only: minor labels on a log axis overlap.
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("latency CDFs")
    fig.tight_layout()
    path = out_dir / "latency_cdf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    for label, result in runs.items():
        if not result.series_t:
            continue
        fig, (heat, lines) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
        # Rows are replicas, columns are poll ticks: hot rows are replicas that got more work.
        matrix = [list(col) for col in zip(*result.series_requests, strict=True)]
        t0, t1 = result.series_t[0], result.series_t[-1]
        image = heat.imshow(
            matrix,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            extent=(t0, t1, 0, len(matrix)),
            cmap="viridis",
        )
        fig.colorbar(image, ax=heat, label="requests on replica")
        heat.set_ylabel("replica")
        heat.yaxis.set_major_locator(MaxNLocator(integer=True))
        heat.set_title(f"load per replica over time ({label})")
        mins = [min(row) for row in result.series_requests]
        means = [sum(row) / len(row) for row in result.series_requests]
        maxs = [max(row) for row in result.series_requests]
        lines.plot(result.series_t, maxs, label="max")
        lines.plot(result.series_t, means, label="mean")
        lines.plot(result.series_t, mins, label="min")
        lines.set_xlabel("simulated time (s)")
        lines.set_ylabel("requests per replica")
        lines.grid(True, alpha=0.3)
        lines.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"load_per_replica_{_slug(label)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
