"""The one way oirl finishes and writes a plot: title, grid, legend, then an atomic PNG."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, ax, path: str | Path, title: str, *, legend_fontsize: int = 8) -> None:
    """Finish ``ax`` (title, light grid, legend), write ``fig`` to ``path`` as PNG atomically, close it."""
    import matplotlib.pyplot as plt

    from oirl._atomic import atomic_path

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize, loc="best")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
