"""One-call builders used by the training loop (``hub_cutinit.training``) and recipes.

They only combine :func:`~hub_cutinit.data.resolve.resolve_dataset`, the transforms and
:class:`~hub_cutinit.data.stream.SSLImageStream`; everything stays reachable piece by piece.

Example:
    >>> stream = build_train_stream("builtin", method="simclr", image_size=32, world_size=2)
    >>> count_examples(stream), stream.num_shards
    (10000, 2)
    >>> bank, test = build_eval_loaders("builtin", image_size=28, max_samples=100, batch_size=50)
    >>> [len(b["label"]) for b in test]
    [50, 50]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub_cutinit.data.resolve import num_examples, resolve_dataset
from hub_cutinit.data.stream import SSLDataLoader, SSLImageStream, make_eval_loader
from hub_cutinit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    make_eval_transform,
    make_view_transform,
)


def build_train_stream(
    dataset: str,
    *,
    method: str,
    image_size: int,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    num_local_views: int = 4,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    rank: int = 0,
    world_size: int = 1,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **view_kwargs: Any,
) -> SSLImageStream:
    """The training stream of this process: ``resolve_dataset`` + the method's views + sharding.

    ``view_kwargs`` go to :func:`make_view_transform` (``blur_p``, ``local_size`` ...). Wrap the
    result with :func:`make_train_loader`; call ``stream.set_epoch(epoch)`` every epoch.

    Example:
        >>> s = build_train_stream("builtin", method="dino", image_size=32, num_local_views=2)
        >>> [tuple(v.shape) for v in next(iter(s))["views"]]
        [(3, 32, 32), (3, 32, 32), (3, 16, 16), (3, 16, 16)]
    """
    ds, image_col, label_col = resolve_dataset(
        dataset, split, image_column=image_column, label_column=label_column
    )
    transform = make_view_transform(
        method, image_size, mean=mean, std=std, num_local_views=num_local_views, **view_kwargs
    )
    return SSLImageStream(
        ds,
        transform,
        image_column=image_col,
        label_column=label_col,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )


def build_eval_loaders(
    dataset: str,
    *,
    image_size: int,
    train_split: str = "train",
    eval_split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[SSLDataLoader, SSLDataLoader]:
    """``(bank_loader, test_loader)`` for kNN / linear-probe evaluation in ONE process.

    Both read their whole split (or the first ``max_samples`` examples, in the stored order: a
    fixed subset, the same at every evaluation), unshuffled, through
    :func:`make_eval_transform`; labels are required (``ValueError`` naming
    ``--label-column`` otherwise). Batches are dicts ``image`` / ``label`` / ``num_corrupt``,
    the format :func:`hub_cutinit.evaluation.extract_features` reads. The loaders can be
    iterated again for every evaluation.

    Example:
        >>> bank, test = build_eval_loaders("builtin", image_size=28, max_samples=64)
        >>> next(iter(bank))["image"].shape
        torch.Size([64, 3, 28, 28])
    """
    transform = make_eval_transform(image_size, mean, std)
    loaders = []
    for split in (train_split, eval_split):
        ds, image_col, label_col = resolve_dataset(
            dataset,
            split,
            image_column=image_column,
            label_column=label_column,
            require_label=True,
        )
        if label_col is not None:  # a row without a label cannot be scored by kNN / a probe
            ds = ds.filter(lambda example, col=label_col: example[col] is not None)
        if max_samples is not None:
            ds = ds.take(max_samples)
        stream = SSLImageStream(
            ds, transform, image_column=image_col, label_column=label_col, shuffle=False
        )
        loaders.append(make_eval_loader(stream, batch_size, num_workers=num_workers))
    return loaders[0], loaders[1]


def count_examples(stream_or_dataset: Any) -> int | None:
    """Examples in the whole split (all ranks together) behind a stream or dataset, if known.

    Example:
        >>> count_examples(build_train_stream("builtin", method="byol", image_size=32, split="test"))
        2000
    """
    if isinstance(stream_or_dataset, SSLImageStream):
        return stream_or_dataset.total_examples
    return num_examples(stream_or_dataset)


def corrupt_count(loader: Any) -> int:
    """Corrupt images skipped so far by ``loader`` (an :class:`SSLDataLoader`) in this process.

    Example:
        >>> loader = make_eval_loader(build_train_stream("builtin", method="byol",
        ...                                              image_size=32, split="test"), 500)
        >>> corrupt_count(loader)
        0
    """
    return int(getattr(loader, "num_corrupt", 0))
