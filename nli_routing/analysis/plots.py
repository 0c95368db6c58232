"""PNG heatmaps of routing analyses (matplotlib, no display needed).

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (no ``pyplot`` state, no
backend switch), so they work in tests, on headless machines and inside other programs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

__all__ = ["plot_heatmap", "plot_dispatch_distribution", "plot_routing_map"]


#: vector formats written beside every PNG (``vector=``)
VECTOR_FORMATS = ("pdf", "svg")


def _save(fig: Figure, path: str | Path, dpi: int = 120, vector: str | None = "pdf") -> Path:
    """Write ``path`` (PNG at ``dpi``) and, with ``vector`` (``pdf`` or ``svg``), the same figure beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if vector is not None:
        if vector not in VECTOR_FORMATS:
            raise ValueError(f"vector format must be one of {VECTOR_FORMATS}, got {vector!r}")
        fig.savefig(path.with_suffix(f".{vector}"), bbox_inches="tight")
    return path


def _fmt(value: float) -> str:
    value = float(value)
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def plot_heatmap(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    annotations: Any = None,
    cmap: Any = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
    colorbar_ticks: Sequence[float] | None = None,
    discrete: bool = False,
    **save: Any,
) -> Path:
    """Write a labelled heatmap of ``matrix [rows, cols]`` to ``path`` (PNG, plus ``save``'s vector
    copy: see :func:`_save`); returns the PNG path.

    Each cell is annotated with its value (or with ``annotations[i][j]`` when given; ``""`` leaves
    a cell blank). NaN cells are drawn blank. ``discrete``: integer counts ``vmin..vmax`` get one
    colour each and a colour bar with one tick per count.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix shape {m.shape} does not match {len(row_labels)} rows x {len(col_labels)} columns")
    rows, cols = m.shape
    fig = Figure(figsize=(max(3.0, 0.6 * cols + 2.0), max(2.5, 0.45 * rows + 1.5)))
    ax = fig.add_subplot()
    if discrete:
        low = int(vmin if vmin is not None else np.nanmin(m))
        high = int(vmax if vmax is not None else np.nanmax(m))
        base = colormaps[cmap] if isinstance(cmap, str) else cmap
        cmap, vmin, vmax = base.resampled(high - low + 1), low - 0.5, high + 0.5
        colorbar_ticks = list(range(low, high + 1))
    image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    bar = fig.colorbar(image, ax=ax)
    if colorbar_label:
        bar.set_label(colorbar_label)
    if colorbar_ticks is not None:
        bar.set_ticks(list(colorbar_ticks))
    ax.set_xticks(range(cols), labels=[str(c) for c in col_labels], rotation=45 if cols > 6 else 0, ha="right" if cols > 6 else "center")
    ax.set_yticks(range(rows), labels=[str(r) for r in row_labels])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if rows * cols <= 900:
        for i in range(rows):
            for j in range(cols):
                finite = bool(np.isfinite(m[i, j]))
                text = annotations[i][j] if annotations is not None else (_fmt(m[i, j]) if finite else "")
                if text != "":
                    color = "black"
                    if finite:  # dark text on light cells, light text on dark ones
                        r, g, b, _ = image.cmap(image.norm(m[i, j]))
                        color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(j, i, str(text), ha="center", va="center", fontsize=8, color=color)
    return _save(fig, path, **save)


def plot_dispatch_distribution(
    record_or_stats: Any, path: str | Path, normalize: bool = True, title: str | None = None,
    ylabel: str = "meta class", **save: Any,
) -> Path:
    """Heatmap of the dispatcher's choices per meta class (thesis Figure 6.5); returns the PNG path.

    ``record_or_stats`` is a :class:`~nli_routing.analysis.records.RoutingRecord` with a
    ``dispatch`` column, or the dict of :func:`~nli_routing.analysis.entropy.dispatch_statistics`
    (its ``distribution``: meta class -> samples sent to each subrouter). Rows are meta classes,
    columns subrouters (classes without samples are left out); with ``normalize`` a cell is the fraction of the class's samples (the
    number of samples is written in the cell), otherwise the count.
    """
    stats = record_or_stats
    if not isinstance(stats, Mapping):
        from .entropy import dispatch_statistics

        if getattr(stats, "dispatch", None) is None:
            raise ValueError("the routing record has no dispatch column (the run had no learned dispatcher)")
        stats = dispatch_statistics(stats)
    distribution: Mapping[str, Sequence[int]] = stats["distribution"]
    names = [n for n in distribution if sum(distribution[n])] or list(distribution)  # classes with samples
    counts = np.array([list(distribution[n]) for n in names], dtype=float)
    k = counts.shape[1] if counts.ndim == 2 else 0
    if normalize:
        values = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        notes = [[str(int(c)) if c else "" for c in row] for row in counts]
    else:
        values, notes = counts, None
    if title is None:
        title = "Dispatch per meta class"
        if "entropy" in stats:
            title += f" (H={stats['entropy']:.2f} bits, per class {stats.get('per_meta_entropy', 0.0):.2f})"
    return plot_heatmap(
        values, names, [str(i) for i in range(k)], path, title=title, xlabel="subrouter (dispatch choice)",
        ylabel=ylabel, annotations=notes, vmin=0.0, vmax=1.0 if normalize else None,
        colorbar_label="fraction of the class" if normalize else "samples", **save,
    )


def plot_routing_map(
    routing_map: Mapping[str, Any], path: str | Path, title: str = "Routing map", ylabel: str = "meta class",
    **save: Any,
) -> Path:
    """Heatmap of the module chosen at each depth for each meta class (thesis Figure 5.6).

    ``routing_map`` is the dict of :func:`~nli_routing.analysis.overlap.routing_map`: ``classes``
    (row names), ``depth_labels`` (column names), ``modules [classes, depths]`` (-1 = stopped /
    no sample) and ``shares`` (fraction of the class's samples that took that module). The colour
    is the module, the text the module and its share.
    """
    modules = np.asarray(routing_map["modules"], dtype=float)
    shares = np.asarray(routing_map["shares"], dtype=float)
    values = np.where(modules < 0, np.nan, modules)
    notes = [
        ["" if modules[i, j] < 0 else f"{int(modules[i, j])}\n{shares[i, j]:.0%}" for j in range(modules.shape[1])]
        for i in range(modules.shape[0])
    ]
    n_actions = int(routing_map.get("num_actions", np.nanmax(values) + 1 if np.isfinite(values).any() else 1))
    base = colormaps["tab10" if n_actions <= 10 else "tab20"]
    cmap = ListedColormap([base(i % base.N) for i in range(max(n_actions, 1))])
    return plot_heatmap(
        values, routing_map["classes"], routing_map["depth_labels"], path, title=title, xlabel="layer / depth",
        ylabel=ylabel, annotations=notes, cmap=cmap, vmin=-0.5, vmax=max(n_actions, 1) - 0.5,
        colorbar_label="module", colorbar_ticks=list(range(max(n_actions, 1))), **save,
    )


def plot_route(
    route: Mapping[str, Sequence[int | str]],
    layers: Mapping[str, tuple[int, int, int | None]],
    title: str = "route",
) -> Figure:
    """One sample's route as a picture: for every routed layer (a row band) and depth (a column),
    the layer's actions as cells, the chosen block filled (``"stop"``: the stop cell), later depths
    after a stop left grey. ``layers``: name -> ``(depth, num_actions, stop_action)``."""
    names = list(layers)
    depth = max((layers[n][0] for n in names), default=1)
    width = max((layers[n][1] for n in names), default=1)
    fig = Figure(figsize=(1.2 + 1.1 * depth, 0.6 + 0.45 * width * max(len(names), 1)))
    axes = fig.subplots(max(len(names), 1), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names or ["(no routed layer)"]):
        d, a, stop = layers.get(name, (1, 1, None))
        chosen = list(route.get(name, []))
        grid = np.zeros((a, d))
        for t in range(d):
            if t >= len(chosen):
                grid[:, t] = -1  # after a stop
                continue
            c = chosen[t]
            grid[stop if c == "stop" else int(c), t] = 1
        ax.imshow(grid, cmap=ListedColormap(["#dddddd", "#f7f7f7", "#d95f02"]), vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(d), [f"depth {t + 1}" for t in range(d)])
        ax.set_yticks(range(a), ["stop" if stop is not None and i == stop else f"block {i}" for i in range(a)])
        ax.set_xticks(np.arange(-0.5, d, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, a, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=2)
        ax.tick_params(which="minor", length=0)
        ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
