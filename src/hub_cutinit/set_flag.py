"""The ``--set`` grammar shared by the recipes and the sweep: ``[METHOD.]KEY=VALUE``.

``VALUE`` is read as JSON when it parses (``256``, ``0.2``, ``true``, ``[1, 2]``, ``null``) and
kept as a plain string otherwise (``--set norm_layer=batchnorm``). ``METHOD.KEY=VALUE`` applies
to one method only; ``KEY=VALUE`` to every method (the sweep keeps it for the methods that have
the hyper-parameter).

Example:
    >>> parse_set(["proj_dim=256", "byol.pred_hidden_dim=128", "name=abc"])
    {'*': {'proj_dim': 256, 'name': 'abc'}, 'byol': {'pred_hidden_dim': 128}}
    >>> parse_set(["temperature=0.2", "simclr.proj_dim=64"], method="simclr")
    {'temperature': 0.2, 'proj_dim': 64}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["ALL_METHODS", "parse_set"]

#: The key of :func:`parse_set`'s result for ``KEY=VALUE`` items (no method named).
ALL_METHODS = "*"


def _parse_item(item: str) -> tuple[str, str, Any]:
    key, sep, raw = item.partition("=")
    method, dot, name = key.strip().rpartition(".")
    if not sep or not name or (dot and not method):
        raise ValueError(
            f"--set expects KEY=VALUE or METHOD.KEY=VALUE (e.g. --set proj_dim=256 "
            f"byol.pred_hidden_dim=128), got {item!r}."
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return (method if dot else ALL_METHODS), name, value


def parse_set(items: Sequence[str], *, method: str | None = None) -> dict[str, Any]:
    """Parse ``--set`` items.

    Without ``method``: ``{METHOD or "*": {KEY: VALUE}}`` for a run of several methods.
    With ``method``: the flat ``{KEY: VALUE}`` of that one method (``KEY=VALUE`` items, then
    ``METHOD.KEY=VALUE`` ones, which win); an item naming another method is an error.

    Example:
        >>> parse_set(["byol.proj_dim=64"], method="simclr")
        Traceback (most recent call last):
        ...
        ValueError: --set byol.proj_dim=64 names method 'byol', but this run trains 'simclr'; drop the 'byol.' prefix or the item.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for item in items:
        target, name, value = _parse_item(item)
        if method is not None and target not in (ALL_METHODS, method):
            raise ValueError(
                f"--set {item} names method {target!r}, but this run trains {method!r}; drop "
                f"the {target + '.'!r} prefix or the item."
            )
        grouped.setdefault(target, {})[name] = value
    if method is None:
        return grouped
    return {**grouped.get(ALL_METHODS, {}), **grouped.get(method, {})}
