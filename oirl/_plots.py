"""The one way oirl finishes and writes a plot: title, grid, legend, then an atomic PNG."""

from __future__ import annotations

from pathlib import Path

from oirl._atomic import atomic_path
from oirl._outputs import PNG_SOFTWARE


def save_figure(fig, ax, path: str | Path, title: str, *, legend_fontsize: int = 8) -> None:
    """Finish ``ax`` (title, light grid, legend), write ``fig`` to ``path`` as PNG atomically, close it."""
    import matplotlib.pyplot as plt


    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize, loc="best")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png", metadata={"Software": PNG_SOFTWARE})  # marks the file as oirl's (oirl._outputs)
    plt.close(fig)
