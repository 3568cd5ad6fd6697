"""The load run's figure: throughput, latency (p50 / p99) and the server's RSS over time."""

from __future__ import annotations

from pathlib import Path

from proof.load_gen import LoadResult, percentile


def _bins(result: LoadResult) -> float:
    """About 60 bins over the run, never under a second."""
    return max(1.0, round(result.seconds / 60))


def plot(result: LoadResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = _bins(result)
    count = int(result.seconds // width) + 1
    done: list[list[float]] = [[] for _ in range(count)]  # latencies of calls that ended in each bin
    for s in result.samples:
        if s.code == "OK":
            done[min(count - 1, int((s.start + s.seconds) // width))].append(s.seconds * 1e3)
    times = [i * width for i in range(count)]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    top.bar(times, [len(d) / width for d in done], width=width, align="edge", color="tab:blue")
    top.set_ylabel("successful calls / s")
    top.set_title(f"Load: {len(result.samples)} calls in {result.seconds:.0f} s")
    busy = [(t, d) for t, d in zip(times, done) if d]
    middle.plot([t + width / 2 for t, _ in busy], [percentile(d, 50) for _, d in busy], label="p50", marker=".")
    middle.plot([t + width / 2 for t, _ in busy], [percentile(d, 99) for _, d in busy], label="p99", marker=".")
    middle.set_yscale("log")
    middle.set_ylabel(f"latency, ms (per {width:g} s)")
    middle.legend()
    bottom.plot([r[0] for r in result.rss], [r[1] / 2**20 for r in result.rss], color="tab:red")
    bottom.set_ylabel("server + children RSS, MiB")
    bottom.set_xlabel("seconds since the load began (after it: waiting for queued jobs)")
    bottom.set_ylim(bottom=0)
    for axes in (top, middle, bottom):
        axes.axvline(result.seconds, color="grey", linestyle=":", linewidth=1)  # the clients' last call ended here
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
