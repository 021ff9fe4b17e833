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

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from hub_cutinit.data.device_augment import AUGMENT_ON, make_device_view_transform
from hub_cutinit.data.resolve import (
    BUILTIN_NAMES,
    IMAGE_EXTENSIONS,
    num_examples,
    resolve_dataset,
)
from hub_cutinit.data.stream import SSLDataLoader, SSLImageStream, make_eval_loader
from hub_cutinit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    make_eval_transform,
    make_view_transform,
)

__all__ = [
    "CPU_NUM_WORKERS",
    "DATASET_KINDS",
    "EvalPlan",
    "HeldOut",
    "NO_LABELS_NOTICE",
    "UndecodableImagesError",
    "accepted_datasets",
    "build_eval_loaders",
    "build_train_stream",
    "check_dataset_spec",
    "check_decodable",
    "corrupt_count",
    "corrupt_examples",
    "count_examples",
    "dataset_label",
    "default_num_workers",
    "plan_evaluation",
    "shard_for_workers",
]


logger = logging.getLogger(__name__)


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
    exclude: HeldOut | None = None,
    total_examples: int | None = None,
    num_workers: int = 0,
    augment_on: str = "cpu",
    **view_kwargs: Any,
) -> SSLImageStream:
    """The training stream of this process: ``resolve_dataset`` + the method's views + sharding.

    ``view_kwargs`` go to :func:`make_view_transform` (``blur_p``, ``local_size`` ...). Wrap the
    result with :func:`make_train_loader`; call ``stream.set_epoch(epoch)`` every epoch.
    ``exclude`` (a :class:`HeldOut`) drops its held-out examples from training;
    ``total_examples`` then gives the size of what is left (see :func:`plan_evaluation`).
    A ``dataset`` that is none of the accepted kinds, or whose first images do not decode,
    raises ``ValueError`` naming what to pass. ``num_workers`` (DataLoader workers per process)
    sets how many shards are needed: ``world_size * num_workers``, so that every worker of every
    rank gets data (see :func:`shard_for_workers`; one-file datasets included).
    ``augment_on="device"`` gives a :class:`~hub_cutinit.data.device_augment.DeviceViewTransform`
    (workers decode and resize; ``stream.transform.device_augment()`` makes the views).

    Example:
        >>> s = build_train_stream("builtin", method="dino", image_size=32, num_local_views=2)
        >>> [tuple(v.shape) for v in next(iter(s))["views"]]
        [(3, 32, 32), (3, 32, 32), (3, 16, 16), (3, 16, 16)]
    """
    check_dataset_spec(dataset)
    ds, image_col, label_col = resolve_dataset(
        dataset, split, image_column=image_column, label_column=label_column
    )
    check_decodable(ds, image_col, dataset)
    ds = shard_for_workers(
        ds, dataset, split, image_col, label_col, world_size * max(1, num_workers)
    )
    if exclude is not None:
        ds = ds.filter(exclude.keep)
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
    make = make_device_view_transform if augment_on == "device" else make_view_transform
    transform = make(
        method, image_size, mean=mean, std=std, num_local_views=num_local_views, **view_kwargs
    )
    stream = SSLImageStream(
        ds,
        transform,
        image_column=image_col,
        label_column=label_col,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )
    if exclude is not None:
        stream.total_examples = total_examples
    return stream


def shard_for_workers(
    ds: Any,
    dataset: str,
    split: str,
    image_column: str,
    label_column: str | None,
    wanted: int,
) -> Any:
    """``ds`` with at least ``wanted`` shards (ranks x workers per rank) when it can be done.

    Shards are what ranks and DataLoader workers split; a worker without one gets no data. In
    order: ``ds`` itself when it has enough; ``ds.reshard()`` (Parquet: one shard per row
    group); for a local or built-in source, the same split loaded as Arrow (a memory-mapped
    cache on disk) and cut into row ranges, ``to_iterable_dataset(num_shards=k * wanted)``
    (k * wanted >= 24). A Hub dataset that still has too few shards is returned as is, with a
    warning naming the fix (fewer ``--num-workers``).

    Example:
        >>> ds, image_col, label_col = resolve_dataset("builtin", "test")
        >>> more = shard_for_workers(ds, "builtin", "test", image_col, label_col, wanted=8)
        >>> ds.num_shards, more.num_shards
        (2, 24)
    """
    if ds.num_shards >= wanted:
        return ds
    try:
        resharded = ds.reshard()
    except (NotImplementedError, ValueError, TypeError):
        resharded = ds
    if resharded.num_shards >= wanted:
        return resharded
    path = os.path.expanduser(dataset)
    if dataset in BUILTIN_NAMES or os.path.exists(path) or set("*?[") & set(dataset):
        shards = wanted * -(-24 // wanted)
        ds, _, _ = resolve_dataset(
            dataset,
            split,
            image_column=image_column,
            label_column=label_column,
            streaming=False,
            num_shards=shards,
        )
        return ds
    logger.warning(
        "%s has %d shard(s) for %d rank x worker(s): some DataLoader workers will get no data; "
        "pass --num-workers %d or fewer per process",
        dataset,
        resharded.num_shards,
        wanted,
        resharded.num_shards,
    )
    return resharded


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

    With the default (ImageNet) ``mean`` / ``std`` the images are uint8 (decoded, resized and
    cropped in ``num_workers`` DataLoader workers; :func:`~hub_cutinit.evaluation.extract_features`
    normalises them on the model's device, as training does with ``normalize_views``: the same
    numbers, a quarter of the bytes); other statistics give float images normalised in the
    workers. Workers read the same examples as one process (see :func:`eval_source`).

    Example:
        >>> bank, test = build_eval_loaders("builtin", image_size=28, max_samples=64)
        >>> batch = next(iter(bank))
        >>> batch["image"].shape, batch["image"].dtype
        (torch.Size([64, 3, 28, 28]), torch.uint8)
    """
    loaders = []
    for split in (train_split, eval_split):
        ds, image_col, label_col = resolve_dataset(
            dataset,
            split,
            image_column=image_column,
            label_column=label_column,
            require_label=True,
        )
        loaders.append(
            _eval_loader(
                ds,
                image_col,
                label_col,
                image_size,
                max_samples,
                batch_size,
                num_workers,
                mean,
                std,
            )
        )
    return loaders[0], loaders[1]


def eval_image_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> EvalTransform:
    """The evaluation loaders' transform: RGB, resize, centre crop, as uint8 ``(3, H, W)``
    for the default (ImageNet) statistics, else :func:`make_eval_transform`'s float tensor.

    :func:`~hub_cutinit.evaluation.extract_features` normalises uint8 images on the device with
    the default statistics (``normalize_views``' kernels: the numbers of the float transform).

    Example:
        >>> from PIL import Image
        >>> image = Image.new("L", (28, 28), 200)
        >>> u8 = eval_image_transform(32)(image)
        >>> u8.dtype, tuple(u8.shape)
        (torch.uint8, (3, 32, 32))
        >>> from hub_cutinit.data.transforms import normalize_views
        >>> torch.equal(normalize_views([u8[None]])[0][0], make_eval_transform(32)(image))
        True
    """
    if tuple(mean) != IMAGENET_MEAN or tuple(std) != IMAGENET_STD:
        return make_eval_transform(image_size, mean, std)
    ops = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.ToImage()]
    return EvalTransform(v2.Compose(ops))


def eval_source(ds: Any, max_samples: int | None, num_workers: int) -> Any:
    """``ds`` (its first ``max_samples`` examples) split into enough shards for ``num_workers``
    DataLoader workers, holding the same examples whatever ``num_workers`` is.

    ``datasets`` splits a ``take(n)`` between workers (``n / workers`` from each worker's
    shards: other images than the first ``n``), so with workers the first ``max_samples``
    raw (undecoded) rows are read once into memory and cut into row ranges. Without
    ``max_samples``, a source with fewer shards than workers is resharded when it can be
    (Parquet: one shard per row group); workers beyond its shards get no data.

    Example:
        >>> ds, _, _ = resolve_dataset("builtin", "test")
        >>> eval_source(ds, 100, num_workers=4).num_shards, eval_source(ds, None, 4).num_shards
        (4, 4)
    """
    if max_samples is not None:
        ds = ds.take(max_samples)
        if num_workers < 1:
            return ds
        import datasets
        import pyarrow as pa

        tables = list(ds.with_format("arrow").iter(batch_size=1024))
        features = ds.features
        table = pa.concat_tables(tables) if tables else None
        if table is None or len(table) == 0:
            return ds
        rows = datasets.Dataset(table, info=datasets.DatasetInfo(features=features))
        return rows.to_iterable_dataset(num_shards=min(len(rows), num_workers))
    if ds.num_shards < num_workers:
        try:
            ds = ds.reshard()
        except (NotImplementedError, ValueError, TypeError):
            pass
    return ds


def _eval_loader(
    ds: Any,
    image_col: str,
    label_col: str | None,
    image_size: int,
    max_samples: int | None,
    batch_size: int,
    num_workers: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SSLDataLoader:
    """An evaluation loader: labelled rows only, the first ``max_samples``, uint8 images
    (default statistics) decoded in ``num_workers`` workers (at most one per shard)."""
    if label_col is not None:  # a row without a label cannot be scored by kNN / a probe
        ds = ds.filter(lambda example, col=label_col: example[col] is not None)
    ds = eval_source(ds, max_samples, num_workers)
    stream = SSLImageStream(
        ds,
        eval_image_transform(image_size, mean, std),
        image_column=image_col,
        label_column=label_col,
        shuffle=False,
    )
    workers = min(num_workers, stream.num_shards)
    return make_eval_loader(stream, batch_size, num_workers=workers)


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


def corrupt_examples(loader: Any) -> list[str]:
    """Names of the first few corrupt images ``loader`` skipped in this process (file path,
    else id, else row; at most ``MAX_CORRUPT_EXAMPLES``), for a report next to
    :func:`corrupt_count`. Gather them across ranks for a global list.

    Example:
        >>> loader = make_eval_loader(build_train_stream("builtin", method="byol",
        ...                                              image_size=32, split="test"), 500)
        >>> corrupt_examples(loader)
        []
    """
    return [str(name) for name in getattr(loader, "corrupt_examples", None) or []]


# -- what --dataset accepts, and early checks ---------------------------------------------------
#: The kinds of dataset spec that ``--dataset`` / ``--eval-dataset`` accept (for messages).
DATASET_KINDS = (
    "'builtin' (the Fashion-MNIST subset shipped with hub_cutinit)",
    "a Hugging Face Hub dataset id such as user/name (e.g. uoft-cs/cifar10)",
    "a local folder of images (class sub-folders give labels; train/ and test/ give splits)",
    "a folder or glob of parquet or arrow files (e.g. 'data/*.parquet')",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DATA_SUFFIXES = frozenset(IMAGE_EXTENSIONS | {".parquet", ".arrow"})


def accepted_datasets(flag: str = "--dataset") -> str:
    """One sentence listing what ``flag`` accepts."""
    return f"{flag} accepts: " + "; ".join(DATASET_KINDS) + "."


def check_dataset_spec(spec: str, flag: str = "--dataset") -> None:
    """Raise a clear error when ``spec`` cannot name a dataset; do nothing otherwise.

    A path that does not exist raises ``FileNotFoundError``; a folder without any image, parquet
    or arrow file, or a string that is neither a path nor a Hub id, raises ``ValueError``. Each
    message lists what ``flag`` accepts. Whether a Hub id exists is left to the Hub.

    Example:
        >>> check_dataset_spec("builtin"); check_dataset_spec("uoft-cs/cifar10")
        >>> check_dataset_spec("no such thing!")
        Traceback (most recent call last):
        ...
        ValueError: --dataset 'no such thing!' is not a dataset. --dataset accepts: ...
    """
    if spec in BUILTIN_NAMES:
        return
    path = Path(os.path.expanduser(spec))
    if set("*?[") & set(spec) or path.is_file():
        return  # a glob or a file: resolve_dataset checks the matches
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return
        files = (p for p in path.rglob("*") if p.suffix.lower() in _DATA_SUFFIXES)
        if next(files, None) is None:
            raise ValueError(
                f"{flag} {spec!r}: the folder doesn't contain any data files (no image with a "
                f"suffix in {sorted(IMAGE_EXTENSIONS)}, no parquet or arrow file). "
                + accepted_datasets(flag)
            )
        return
    if spec.startswith((".", "/", "~")) or path.suffix.lower() in _DATA_SUFFIXES:
        raise FileNotFoundError(
            f"Couldn't find any data file at {spec!r} ({flag}: no such file or folder). "
            + accepted_datasets(flag)
        )
    if not _HUB_ID.match(spec):
        raise ValueError(f"{flag} {spec!r} is not a dataset. " + accepted_datasets(flag))


class UndecodableImagesError(ValueError, RuntimeError):
    """No image of a dataset's image column decodes (almost surely the wrong column)."""


def check_decodable(ds: Any, image_column: str, dataset: str, *, first: int = 16) -> None:
    """Raise :class:`UndecodableImagesError` when none of the first ``first`` images decodes.

    Reads only those examples (undecoded, as :func:`resolve_dataset` returns them).

    Example:
        >>> ds, image_col, _ = resolve_dataset("builtin", "test")
        >>> check_decodable(ds, image_col, "builtin")
    """
    from itertools import islice

    from hub_cutinit.data.stream import decode_image

    last_error: Exception | None = None
    seen = 0
    for example in islice(iter(ds), first):
        seen += 1
        try:
            decode_image(example[image_column])
            return
        except Exception as err:  # any failure: try the next one
            last_error = err
    if seen == 0:
        raise ValueError(f"{dataset!r} has no examples in this split; pass another dataset.")
    columns = list(ds.features or {})
    raise UndecodableImagesError(
        f"{dataset!r}: the first {seen} images of column {image_column!r} all failed to decode "
        f"(last error: {last_error!r}); is --image-column right? Pass --image-column NAME with "
        f"the column that holds the images (columns: {columns}), or fix the files: training "
        "needs at least --batch-size decodable images per process."
    )


# -- where evaluation data comes from -----------------------------------------------------------
@dataclass(frozen=True)
class HeldOut:
    """A seeded, order-free choice of held-out examples: ``fraction`` of them, by a hash.

    Membership depends only on the example's key (its id column when there is one, else the
    image's bytes or path) and ``seed``: the same on every process, worker, epoch and resume,
    so the training stream can exclude exactly the examples that evaluation tests on.

    Example:
        >>> h = HeldOut(fraction=0.5, seed=0, image_column="image", key_column="id")
        >>> [h.held({"id": i}) for i in range(6)] == [not h.keep({"id": i}) for i in range(6)]
        True
    """

    fraction: float
    seed: int
    image_column: str
    key_column: str | None = None

    def _key(self, example: dict[str, Any]) -> bytes:
        if self.key_column is not None:
            return str(example[self.key_column]).encode()
        value = example[self.image_column]
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        return value if isinstance(value, bytes) else repr(value).encode()

    def held(self, example: dict[str, Any]) -> bool:
        """True for a held-out (evaluation) example."""
        digest = hashlib.blake2b(self._key(example), digest_size=8, key=str(self.seed).encode())
        return int.from_bytes(digest.digest(), "big") < self.fraction * 2**64

    def keep(self, example: dict[str, Any]) -> bool:
        """True for a training example (the complement of :meth:`held`)."""
        return not self.held(example)


@dataclass
class EvalPlan:
    """What :func:`plan_evaluation` decided.

    ``loaders``: ``(bank, test)`` for kNN, or ``None`` (no evaluation). ``source``: one line
    for the run record, ``config.json`` and the card. ``held_out`` / ``train_examples``: when
    the test set is a held-out slice of the training split, the examples to exclude from
    training and the number left. ``notice``: a message for the user (printed once).
    """

    loaders: tuple[SSLDataLoader, SSLDataLoader] | None
    source: str
    held_out: HeldOut | None = None
    held_out_examples: int | None = None
    train_examples: int | None = None
    notice: str | None = None


NO_LABELS_NOTICE = (
    "{dataset!r} has no labels: training runs without evaluation (the norms and the "
    "convergence statistics are still tracked). To measure kNN accuracy, add a labelled set "
    "with --eval-dataset SPEC (e.g. --eval-dataset builtin; any dataset spec, separate from "
    "the training data) and, if needed, --eval-split / --eval-bank-split / --eval-image-column "
    "/ --eval-label-column."
)


def dataset_label(spec: str) -> str:
    """A dataset spec as recorded: a local path by its last component (config.json is public).

    Example:
        >>> dataset_label("builtin"), dataset_label("/")
        ('builtin', '')
    """
    path = os.path.expanduser(spec)
    return Path(path).name if os.path.exists(path) else spec


def _eval_workers(num_workers: int | None) -> int:
    """``num_workers``, or :func:`default_num_workers` of this machine (CUDA when it has one)."""
    if num_workers is not None:
        return max(0, int(num_workers))
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return default_num_workers(device_type, processes_per_node=per_node)


def _split_missing(err: Exception, split: str) -> bool:
    return isinstance(err, ValueError) and f"split {split!r} not found" in str(err)


def plan_evaluation(
    dataset: str,
    *,
    image_size: int,
    train_split: str = "train",
    eval_split: str | None = "test",
    eval_dataset: str | None = None,
    eval_bank_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    eval_image_column: str | None = None,
    eval_label_column: str | None = None,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    max_samples: int | None = None,
    batch_size: int = 256,
    num_workers: int | None = None,
) -> EvalPlan:
    """Choose the kNN evaluation data from what the data offers; never fail on unlabelled data.

    The evaluation data is ``eval_dataset`` (with its own split and column flags) or, by
    default, the training data. Then:

    - labels and an ``eval_split``: bank = ``eval_bank_split`` (default: ``train_split`` of the
      training data, ``"train"`` of an ``eval_dataset``), test = ``eval_split``;
    - labels, the default ``eval_split="test"`` missing: test = a seeded held-out slice
      (:class:`HeldOut`, ``held_out_fraction``) of the bank split, bank = the rest; on the
      training data the slice is excluded from training (``EvalPlan.held_out``);
    - no labels in the training data (default flags): no evaluation, and a notice on how to
      add ``--eval-dataset``. Labels asked for explicitly (``label_column``, a non-default
      ``eval_split``, an ``eval_dataset``) but absent raise ``ValueError`` naming the flag;
    - ``eval_split=None``: no evaluation.

    The loaders yield uint8 images decoded in ``num_workers`` DataLoader workers per process
    (default: :func:`default_num_workers` of this machine's device, ``LOCAL_WORLD_SIZE``
    processes per node; 0 on CPU), normalised on the device by
    :func:`~hub_cutinit.evaluation.extract_features`.

    Example:
        >>> plan = plan_evaluation("builtin", image_size=28, max_samples=64)
        >>> plan.source
        "kNN: bank 'train', test 'test' of builtin"
    """
    if eval_split is None:
        return EvalPlan(None, "no evaluation (--eval-split none)")
    separate = eval_dataset is not None
    source = dataset
    if eval_dataset is not None:
        source = eval_dataset
        check_dataset_spec(eval_dataset, "--eval-dataset")
        image_column, label_column = eval_image_column, eval_label_column
    bank_split = eval_bank_split or ("train" if separate else train_split)
    explicit = separate or label_column is not None or eval_split != "test"
    bank, image_col, label_col = resolve_dataset(
        source,
        bank_split,
        image_column=image_column,
        label_column=label_column,
        require_label=explicit,
    )
    if label_col is None:
        return EvalPlan(
            None,
            "no evaluation (unlabelled data)",
            notice=NO_LABELS_NOTICE.format(dataset=dataset_label(dataset)),
        )
    return _labelled_plan(
        source,
        bank,
        (bank_split, eval_split),
        image_col,
        label_col,
        held_out_fraction,
        seed,
        (image_size, max_samples, batch_size, _eval_workers(num_workers)),
        train_data=not separate,
    )


def _labelled_plan(
    source: str,
    bank: Any,
    splits: tuple[str, str],
    image_col: str,
    label_col: str,
    fraction: float,
    seed: int,
    loader_args: tuple[int, int | None, int, int],
    *,
    train_data: bool,
) -> EvalPlan:
    """Test on the ``(bank, test)`` ``splits``, or on a held-out slice when 'test' is missing."""
    bank_split, eval_split = splits
    try:
        test, test_image, test_label = resolve_dataset(
            source,
            eval_split,
            image_column=image_col,
            label_column=label_col,
            require_label=True,
        )
    except ValueError as err:
        if eval_split != "test" or not _split_missing(err, eval_split):
            raise
        return _held_out_plan(
            source,
            bank,
            bank_split,
            image_col,
            label_col,
            fraction,
            seed,
            loader_args,
            train_data=train_data,
        )
    loaders = (
        _eval_loader(bank, image_col, label_col, *loader_args),
        _eval_loader(test, test_image, test_label, *loader_args),
    )
    return EvalPlan(
        loaders, f"kNN: bank {bank_split!r}, test {eval_split!r} of {dataset_label(source)}"
    )


def _held_out_plan(
    source: str,
    bank: Any,
    bank_split: str,
    image_col: str,
    label_col: str,
    fraction: float,
    seed: int,
    loader_args: tuple[int, int | None, int, int],
    *,
    train_data: bool,
) -> EvalPlan:
    """Test on a held-out slice of ``bank_split`` (one pass over it counts the slice)."""
    from hub_cutinit.data.resolve import ID_COLUMN_NAMES

    key = next((c for c in ID_COLUMN_NAMES if c in (bank.features or {})), None)
    held_out = HeldOut(fraction, seed, image_col, key)
    total = held = 0
    for example in bank:
        total += 1
        held += held_out.held(example)
    percent = f"{fraction:.0%}"
    if held == 0 or held == total:
        source_text = f"no evaluation (held-out {percent} of {bank_split!r}: {held} of {total})"
        notice = (
            f"{dataset_label(source)!r} has no 'test' split and its {total} labelled "
            f"{bank_split!r} images are too few to hold {percent} out; add a labelled set "
            "with --eval-dataset SPEC, or pass --eval-split NAME."
        )
        return EvalPlan(None, source_text, notice=notice)
    text = f"held-out {percent} of {bank_split} ({held:,} images, seed {seed})"
    loaders = (
        _eval_loader(bank.filter(held_out.keep), image_col, label_col, *loader_args),
        _eval_loader(bank.filter(held_out.held), image_col, label_col, *loader_args),
    )
    notice = (
        f"{dataset_label(source)!r} has no 'test' split: kNN tests on a {text}"
        + (", excluded from training" if train_data else "")
        + "; the kNN bank is the rest. Pass --eval-split NAME to use a split instead."
    )
    return EvalPlan(
        loaders,
        text + (", not trained on" if train_data else f" of {dataset_label(source)}"),
        held_out=held_out if train_data else None,
        held_out_examples=held,
        train_examples=total - held,
        notice=notice,
    )


#: Data workers per process on CPU by default (see :func:`default_num_workers`).
CPU_NUM_WORKERS = 0


def default_num_workers(
    device_type: str,
    *,
    processes_per_node: int = 1,
    num_shards: int | None = None,
    cpus: int | None = None,
) -> int:
    """The ``--num-workers`` default: on CUDA ``min(8, CPUs per process - 1)`` (decoding and
    augmenting must keep up with the GPU); elsewhere :data:`CPU_NUM_WORKERS` (the model and the
    loader compete for the same cores). Never more than ``num_shards`` (a worker without a shard
    gets no data).

    Example:
        >>> default_num_workers("cuda", processes_per_node=2, cpus=16)
        7
        >>> default_num_workers("cuda", cpus=64, num_shards=4), default_num_workers("cpu", cpus=64)
        (4, 0)
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_process = (cpus or 1) // max(1, processes_per_node)
    workers = min(8, per_process - 1) if device_type == "cuda" else CPU_NUM_WORKERS
    if num_shards is not None:
        workers = min(workers, num_shards)
    return max(0, workers)
