"""The views as images (--plot FILE.png): an attention map as a heat map, and time per token over the context.

matplotlib is optional (the `viz` extra): nanollm runs without it, and only these functions need it. They draw on a
matplotlib Figure directly, never through pyplot, so no window, no global state and no display are involved; the
PNG's bytes are written with files.write_bytes (a temporary file renamed into place, like every file nanollm writes).
"""
import io
from pathlib import Path

import numpy as np

from ..files import write_bytes
from .attention import AttentionMap

try:
    from matplotlib import colormaps
    from matplotlib.figure import Figure
except ImportError:  # the optional extra is not installed: each plot says how to install it
    colormaps = Figure = None

INSTALL = "pip install 'nanollm[viz]' (or pip install matplotlib)"


def check_can_write(path) -> None:
    """Fail before any work is done when the plot could not be written: no matplotlib, or no such directory."""
    if Figure is None:
        raise ImportError(f"plots need matplotlib, which is not installed: {INSTALL}")
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write the plot {path}: the directory {folder} does not exist")


def new_figure(width: float, height: float):
    """A matplotlib Figure, or an ImportError that says how to get matplotlib."""
    if Figure is None:
        raise ImportError(f"plots need matplotlib, which is not installed: {INSTALL}")
    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig, path) -> None:
    """The figure as PNG bytes, written to path atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())


def plot_attention(m: AttentionMap, path) -> None:
    """Write an attention map (attention.attention_maps) as a PNG heat map labelled with the tokens: rows are the
    tokens' queries, columns the tokens they read; the line marks where the prompt ends and decoding begins."""
    N = len(m.labels)
    size = min(16.0, 3.0 + 0.3 * N)  # inches: readable labels for a few dozen tokens, bounded for long ones
    fig = new_figure(size + 1.5, size)
    ax = fig.add_subplot()
    hidden = np.ma.masked_equal(m.weights, 0.0)  # (N, N): a later token (or a masked one) gets no weight at all
    cmap = colormaps["viridis"].with_extremes(bad="white")  # ... and is drawn blank, so the causal triangle shows
    image = ax.imshow(hidden, cmap=cmap, vmin=0.0, vmax=1.0)
    labels = [f"{i} {label!r}"[:24] for i, label in enumerate(m.labels)]  # repr: "\n" shown as \n
    ax.set_xticks(np.arange(N), labels, rotation=90, fontsize=8)
    ax.set_yticks(np.arange(N), labels, fontsize=8)
    if 0 < m.prompt_len < N:
        ax.axhline(m.prompt_len - 0.5, color="white", linewidth=1)  # prefill rows above, decode rows below
    heads = f"head {m.head}" if m.head is not None else f"mean of {m.n_heads} heads"
    ax.set_title(f"attention weights, layer {m.layer}, {heads}")
    ax.set_xlabel("key: the token read")
    ax.set_ylabel("query: the token reading")
    fig.colorbar(image, ax=ax, label="weight (each row sums to 1)")
    save_png(fig, path)


def plot_step_times(stats_list, path, labels=None) -> None:
    """Write time per token over the context as a PNG, one line per GenerationStats (its step_times_s: the seconds
    of each decode step). With the KV cache a step reads one new position, so its line stays flat; recomputing
    every position (kv_cache=False, --no-kv-cache) makes each step longer than the last.

    labels: one legend entry per stats (default "run 1", "run 2", ...).
    """
    labels = labels or [f"run {n + 1}" for n in range(len(stats_list))]
    if len(labels) != len(stats_list):
        raise ValueError(f"plot_step_times got {len(labels)} labels for {len(stats_list)} runs")
    fig = new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    for stats, label in zip(stats_list, labels):
        # step n reads the n-th new token: the context is then the prompt plus n tokens
        context = stats.prompt_tokens + 1 + np.arange(len(stats.step_times_s))
        ax.plot(context, np.asarray(stats.step_times_s) * 1e3, marker=".", label=label)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("time per token (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("decode: time per token over the context")
    ax.legend()
    ax.grid(alpha=0.3)
    save_png(fig, path)
