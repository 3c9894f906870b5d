"""The evaluate stage's PNGs (matplotlib, no pyplot state): learning curve, confusion matrix, 2-D maps.
Each is a `draw(table, png path, title)` a lens names in its `Plot` (lenses.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def _figure(width: float = 6.4, height: float = 4.8):
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_learning_curve(curves: pl.DataFrame, path: Path, title: str) -> None:
    """`curves`: train_per_label plus one macro-F1 column per model."""
    fig = _figure()
    ax = fig.subplots()
    sizes = curves["train_per_label"].to_list()
    for model in curves.columns[1:]:
        ax.plot(sizes, curves[model], marker="o", label=model)
    ax.set(xscale="log", xlabel="training papers per label", ylabel="macro-F1", title=title)
    ax.set_xticks(sizes, labels=[*map(str, sizes[:-1]), f"{sizes[-1]} (all)"], minor=False)
    ax.minorticks_off()
    ax.legend()
    fig.savefig(path, dpi=100)


def plot_confusion(predictions: pl.DataFrame, path: Path, title: str) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    n_labels = predictions["actual"].n_unique()
    fig = _figure(max(6.0, 0.35 * n_labels + 3), max(5.0, 0.35 * n_labels + 2))
    ax = fig.subplots()
    # Row-normalised: with imbalanced labels, raw counts show only the largest label.
    ConfusionMatrixDisplay.from_predictions(
        predictions["actual"], predictions["predicted"], normalize="true", ax=ax, xticks_rotation="vertical",
        include_values=n_labels <= 12, values_format=".2f",
    )
    ax.set_title(title)
    fig.savefig(path, dpi=100)


def plot_map(coordinates: pl.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    fig = _figure(8, 6)
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab20"].colors
    for i, (label, points) in enumerate(sorted(coordinates.partition_by("label", as_dict=True).items())):
        # 20 colours x 4 markers keep up to 80 labels apart.
        ax.scatter(points["x"], points["y"], s=10, alpha=0.75, label=label[0], color=colours[i % 20], marker="os^D"[i // 20 % 4])
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5), ncols=1 + len(ax.collections) // 25)
    fig.savefig(path, dpi=100)
