"""The one way figures are made and written: a pyplot-free Agg figure, saved atomically.

:func:`new_figure` builds a :class:`matplotlib.figure.Figure` on the Agg canvas directly, so no
module touches pyplot's global state or switches matplotlib's backend (a notebook or GUI that
imports hub_cutinit keeps its own); :func:`save_figure` adds the title, lays the figure out and
writes the PNG through :func:`hub_cutinit.atomic.atomic_path` (never a half-written file, a
normal file's permissions). No PNG metadata carries the matplotlib version, so the same figure
gives the same bytes.

Example:
    >>> import tempfile
    >>> fig, axes = new_figure(1, 2, figsize=(6, 3))
    >>> _ = axes[0][0].plot([0, 1], [1, 0])
    >>> save_figure(fig, tempfile.mkdtemp() + "/a/b.png", title="demo").read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hub_cutinit.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure", "colormap"]


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float] = (6.4, 4.0),
    dpi: int = 100,
    layout: Literal["constrained", "compressed", "tight"] | None = None,
) -> tuple[Figure, Any]:
    """A figure on the Agg canvas and its ``(nrows, ncols)`` array of axes (always 2-D).

    Example:
        >>> fig, axes = new_figure(2, 3)
        >>> axes.shape, type(fig.canvas).__name__
        ((2, 3), 'FigureCanvasAgg')
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def colormap(name: str) -> Any:
    """A registered matplotlib colormap by name, without pyplot (``colormap("viridis")(0.5)``)."""
    from matplotlib import colormaps

    return colormaps[name]


def save_figure(
    fig: Figure,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    title_size: int = 10,
    dpi: int = 90,
) -> Path:
    """Add ``title`` (if any), lay out (``tight_layout`` unless the figure has a layout engine),
    write ``path`` as a PNG atomically (creating its folder) and return the path."""
    if title:
        fig.suptitle(title, fontsize=title_size)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path
