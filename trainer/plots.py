"""PNG figures of the bench results (matplotlib, Agg backend: no display needed). Each function writes one file and
returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def strips(groups: Mapping[str, Sequence[float]], title: str, xlabel: str, path: str | Path) -> Path:
    """One row of jittered points per group, its median marked: per-seed values side by side."""
    fig, ax = plt.subplots(figsize=(7, 0.7 * len(groups) + 1.3))
    rng = np.random.default_rng(0)
    names = list(groups)
    for i, name in enumerate(names):
        v = np.asarray(groups[name], dtype=float)
        ax.scatter(v, i + rng.uniform(-0.2, 0.2, len(v)), s=12, alpha=0.6, color=COLORS[i % len(COLORS)])
        med = float(np.median(v))
        ax.plot([med, med], [i - 0.35, i + 0.35], color="black", lw=2)
    # The median goes in the row's label: any spot beside the points collides with them in some data set.
    ax.set_yticks(range(len(names)), [f"{n}\nmedian {np.median(groups[n]):.3f}, n={len(groups[n])}" for n in names])
    ax.set_ylim(-0.6, len(names) - 0.2)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def bars(panels: Mapping[str, Mapping[str, float]], title: str, xlabel: str, path: str | Path) -> Path:
    """Horizontal bars, one panel per key of `panels` (e.g. per experiment), each bar labelled with its value."""
    rows = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, (0.45 * rows + 1.3) * len(panels)), squeeze=False,
                             layout="constrained")  # each panel's title clear of the x label above it
    for ax, (name, values) in zip(axes[:, 0], panels.items()):
        labels, v = list(values), list(values.values())
        ax.barh(range(len(v)), v, color=COLORS[:len(v)])
        for i, x in enumerate(v):
            ax.annotate(f"{x:,.0f}" if x >= 100 else f"{x:.3g}", (x, i), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)
        ax.set_yticks(range(len(v)), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, max(v) * 1.15)
        ax.set_title(f"{title}\n{name}" if ax is axes[0, 0] else name, fontsize=9)
        ax.set_xlabel(xlabel)
    return _save(fig, path)


def histograms(series: Mapping[str, Sequence[float]], title: str, xlabel: str, path: str | Path,
               bins: int = 30) -> Path:
    """Overlaid density histograms on shared bins, medians as dashed lines."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    everything = np.concatenate([np.asarray(v, dtype=float) for v in series.values()])
    edges = np.histogram_bin_edges(everything, bins=bins)
    for i, (name, v) in enumerate(series.items()):
        v = np.asarray(v, dtype=float)
        color = COLORS[i % len(COLORS)]
        ax.hist(v, bins=edges, density=True, alpha=0.45, color=color,
                label=f"{name} (n={len(v)}, median {np.median(v):.3g})")
        ax.axvline(float(np.median(v)), color=color, ls="--", lw=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes: never over the bars
    return _save(fig, path)


def curves(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], title: str, xlabel: str,
           ylabel: str, path: str | Path, logx: bool = False) -> Path:
    """Line plots with markers, one panel per key of `panels`, each a mapping label -> (x, y) or (x, y, error bars)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.8, 3.8), squeeze=False,
                             layout="constrained")
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for i, (label, (x, y, *err)) in enumerate(lines.items()):
            ax.errorbar(x, y, yerr=err[0] if err else None, marker="o", capsize=3, color=COLORS[i % len(COLORS)],
                        label=label)
        if logx:
            ax.set_xscale("log", base=2)
            xs = sorted({float(v) for xv, *_ in lines.values() for v in xv})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    # One legend for all panels, under them: inside a panel it hides points of some data set.
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", fontsize=8,
               ncol=min(2, len(next(iter(panels.values())))))
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
