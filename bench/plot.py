"""PNG plots of benchmark sweeps: throughput and latency against concurrency, one line per server.

matplotlib is an optional dependency (the ``bench`` extra); it is imported only here.
"""

from __future__ import annotations

from pathlib import Path

from lmgate.bench.client import BenchReport


def plot_sweeps(sweeps: dict[str, list[BenchReport]], path: Path, title: str = "") -> None:
    """Three panels (tokens/s, TTFT p50, inter-token latency p50) against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [  # (title, value, log-scale y)
        ("aggregate output tokens/s", lambda r: r.output_tokens_per_s, False),
        ("TTFT p50 (ms)", lambda r: r.ttft_ms["p50"], True),
        ("inter-token latency p50 (ms)", lambda r: r.itl_ms["p50"], False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    for ax, (label, value, log_y) in zip(axes, panels, strict=True):
        for server, reports in sweeps.items():
            ax.plot([r.concurrency for r in reports], [value(r) for r in reports], marker="o", label=server)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
