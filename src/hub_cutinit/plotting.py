"""The one way figures are written: optional title, tight layout, parent folder, PNG, close.

Example:
    >>> import tempfile, matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> save_figure(fig, tempfile.mkdtemp() + "/a/b.png", title="demo").name
    'b.png'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["save_figure"]


def save_figure(
    fig: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    title_size: int = 10,
    dpi: int = 90,
) -> Path:
    """Add ``title`` (if any), lay out, write ``path`` (creating its folder) and close ``fig``."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
