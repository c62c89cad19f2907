"""Writing results: Markdown + CSV tables, PNG plots, and the paired cluster bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from oirl._atomic import atomic_path, write_text_atomic
from oirl._plots import save_figure


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (no extra dependency); floats rounded to ``digits``."""

    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "—" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_table(frame: pd.DataFrame, out_dir: Path, name: str, title: str, note: str = "") -> str:
    """Write ``name.csv`` and ``name.md``; returns the Markdown (title, note, table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        frame.to_csv(tmp, index=False)
    text = f"### {title}\n\n" + (f"{note}\n\n" if note else "") + markdown_table(frame) + "\n"
    write_text_atomic(out_dir / f"{name}.md", text)
    return text


def plot_success_vs_k(table: pd.DataFrame, methods: list[str], path: Path, title: str, reference: dict[int, float] | None = None) -> None:
    """Success rate vs K with ± std bands; one line per method. ``table`` has columns
    ``K``, ``{method} mean`` and ``{method} std``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in methods:
        mean, std = table[f"{method} mean"].to_numpy(float), table[f"{method} std"].to_numpy(float)
        if np.isnan(mean).all():
            continue
        style = "--" if method.startswith("oracle") else "-"
        ax.plot(table["K"], mean, style, marker="o", markersize=3, label=method)
        ax.fill_between(table["K"], mean - std, mean + std, alpha=0.07)
    if reference:
        ks = sorted(reference)
        ax.plot(ks, [reference[k] for k in ks], "k*", markersize=9, label="Prompt-OIRL (authors)")
    ax.set_xlabel("K (number of training prompts)")
    ax.set_ylabel("test success rate")
    save_figure(fig, ax, path, title, legend_fontsize=7)
