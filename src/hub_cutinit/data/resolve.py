"""Find a dataset and its image / label columns, always as a streaming ``datasets.IterableDataset``.

:func:`resolve_dataset` accepts

- ``"builtin"``: the Fashion-MNIST subset shipped in the wheel (10,000 train / 2,000 test);
- a local folder: parquet or arrow files (split from the file names, as ``load_dataset``
  does), a ``Dataset.save_to_disk`` folder, or image files (``imagefolder`` conventions:
  ``train/`` and ``test/`` sub-folders or file-name prefixes give the splits, class sub-folders
  give a ``ClassLabel``, the relative path is the ``id``);
- a file or glob (``"data/*.parquet"``, ``"imgs/**/*.jpg"``): all matches form ``split``;
- anything else: a Hugging Face Hub id (``"uoft-cs/cifar10"``, optionally ``config=...``).

Tabular sources go through ``datasets.load_dataset(..., streaming=True)``; image files through
``IterableDataset.from_generator`` with one shard per file, so that shuffling the shard order
shuffles the files and DataLoader workers and ranks can split them (``imagefolder`` streams a
folder as one shard). Either way the result is a streaming ``datasets.IterableDataset`` and the
rest of the pipeline (sharding, shuffling, decoding) is the same code path. The image column is
cast to ``Image(decode=False)``: decoding happens later, in :mod:`hub_cutinit.data.stream`,
where corrupt files are skipped and counted.

Example:
    >>> ds, image_col, label_col = resolve_dataset("builtin", "test")
    >>> image_col, label_col, num_examples(ds)
    ('image', 'label', 2000)
    >>> class_names(ds, label_col)[:3]
    ['T-shirt/top', 'Trouser', 'Pullover']
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import ClassLabel, IterableDataset, Value

__all__ = [
    "BUILTIN_NAMES",
    "ID_COLUMN_NAMES",
    "IMAGE_COLUMN_NAMES",
    "IMAGE_EXTENSIONS",
    "LABEL_COLUMN_NAMES",
    "builtin_dataset_dir",
    "class_names",
    "detect_columns",
    "num_examples",
    "resolve_dataset",
]


BUILTIN_NAMES: tuple[str, ...] = ("builtin", "builtin:fashion_mnist")
IMAGE_COLUMN_NAMES: tuple[str, ...] = ("image", "img", "pixel_values", "images", "jpg", "png")
LABEL_COLUMN_NAMES: tuple[str, ...] = ("label", "labels", "fine_label", "class", "target")
ID_COLUMN_NAMES: tuple[str, ...] = ("id", "idx", "index", "image_id", "__key__")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
_GLOB_CHARS = set("*?[")


def builtin_dataset_dir() -> Path:
    """Folder of the shipped Fashion-MNIST parquet shards (with README.md and LICENSE).

    Example:
        >>> sorted(p.name for p in builtin_dataset_dir().glob("test-*.parquet"))
        ['test-00000-of-00002.parquet', 'test-00001-of-00002.parquet']
    """
    return Path(__file__).resolve().parent.parent / "datasets" / "fashion_mnist"


def _builtin_files(split: str) -> list[str]:
    root = builtin_dataset_dir()
    files = sorted(str(p) for p in root.glob(f"{split}-*.parquet"))
    if not files:
        splits = sorted({p.name.split("-")[0] for p in root.glob("*.parquet")})
        if not splits:
            raise FileNotFoundError(
                f"the built-in dataset is missing from {root}; rebuild it with "
                "`python scripts/build_builtin_dataset.py` or reinstall hub-cutinit"
            )
        raise ValueError(f"split {split!r} not found in 'builtin'; available splits: {splits}")
    return files


def _builder_for(files: Sequence[str], what: str) -> str:
    exts = {Path(f).suffix.lower() for f in files}
    if exts <= {".parquet"}:
        return "parquet"
    if exts <= {".arrow"}:
        return "arrow"
    if exts <= IMAGE_EXTENSIONS:
        return "imagefolder"
    raise ValueError(
        f"{what}: cannot stream files with extensions {sorted(exts)}; expected only parquet, "
        f"only arrow, or only images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    )


def _parquet_rows(files: Sequence[str]) -> int | None:
    try:
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in files)
    except Exception:  # remote or unreadable metadata: the count is only informative
        return None


def _saved_arrow_files(root: Path, split: str) -> list[str] | None:
    """Arrow files of a ``save_to_disk`` folder for ``split``; ``None`` if not such a folder."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise ValueError(f"split {split!r} not found in {root}; available splits: {splits}")
        return sorted(str(p) for p in (root / split).glob("*.arrow"))
    if (root / "state.json").is_file() and any(root.glob("*.arrow")):
        saved_split = json.loads((root / "state.json").read_text()).get("_split")
        if saved_split and saved_split != split:
            raise ValueError(
                f"split {split!r} not found in {root}; it holds one split: [{saved_split!r}]"
            )
        return sorted(str(p) for p in root.glob("*.arrow"))
    return None


def _with_count(ds: IterableDataset, split: str, rows: int | None) -> IterableDataset:
    if rows is not None:
        ds.info.splits = datasets.SplitDict(
            {split: datasets.SplitInfo(name=split, num_examples=rows)}
        )
    return ds


def _generate_image_files(paths: list[str], labels: list[int], ids: list[str]):
    """``from_generator`` source of :func:`_image_files_dataset`: one shard per file."""
    for path, label, key in zip(paths, labels, ids, strict=True):
        example: dict[str, object] = {"image": {"bytes": None, "path": path}, "id": key}
        if label >= 0:
            example["label"] = label
        yield example


def _image_files_dataset(
    files: Sequence[str], split: str, root: Path, label_files: Sequence[str] | None = None
) -> IterableDataset:
    """A stream over image files, one shard per file (so shard shuffling shuffles the files).

    Labels follow ``imagefolder``'s rule: the parent folder name, when all images (of every
    split, ``label_files``) sit at the same depth and there is more than one such folder.
    ``id`` is the path relative to ``root``.
    """
    files = sorted(files)
    every = [Path(f) for f in (label_files if label_files is not None else files)]
    names = sorted({p.parent.name for p in every})
    depths = {len(p.parts) for p in every}
    labelled = len(names) > 1 and len(depths) == 1
    index = {n: i for i, n in enumerate(names)}
    feats = {"image": datasets.Image(), "id": Value("string")}
    if labelled:
        feats["label"] = ClassLabel(names=names)
    ds = IterableDataset.from_generator(
        _generate_image_files,
        features=datasets.Features(feats),
        gen_kwargs={
            "paths": list(files),
            "labels": [index[Path(f).parent.name] if labelled else -1 for f in files],
            "ids": [os.path.relpath(f, root) for f in files],
        },
        split=datasets.NamedSplit(split),
    )
    return _with_count(ds, split, len(files))


def _local_splits(root: Path) -> dict[str, list[str]] | None:
    """Split -> data files of a local folder, by ``datasets``' conventions (``train/``,
    ``test-*.parquet`` ...), ignoring README-like files; ``None`` when there is nothing this
    module streams by itself (metadata files, csv, archives ...: ``load_dataset`` decides)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        data_files = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    except Exception:  # no recognisable data files: let load_dataset explain
        return None
    splits: dict[str, list[str]] = {}
    for name, files in data_files.items():
        for f in map(str, files):
            ext = Path(f).suffix.lower()
            if Path(f).stem == "metadata":
                return None
            if ext in IMAGE_EXTENSIONS or ext in (".parquet", ".arrow"):
                splits.setdefault(str(name), []).append(f)
            elif ext not in (".md", ".txt", ".json", ".yaml", ".yml", ""):
                return None
    kinds = {_builder_for(fs, str(root)) for fs in splits.values()} if splits else set()
    return splits if len(kinds) == 1 else None


_ACCEPTED = (
    "--dataset accepts a Hub dataset id (owner/name, e.g. uoft-cs/cifar10), a local folder, "
    "file or glob (parquet, arrow or images), or 'builtin'"
)


def _hub_not_found(repo_id: str) -> str:
    """Why the Hub refused ``repo_id`` (``datasets`` drops the HTTP status: ask once more)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = datasets.config.HF_ENDPOINT
    status = None
    try:
        HfApi(endpoint=endpoint).dataset_info(repo_id, timeout=30)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
    except Exception:  # the endpoint is unreachable now: keep the generic message
        pass
    if status == 401 or get_token() is None:
        return (
            f"dataset {repo_id!r} was not found on the Hub ({endpoint}; HTTP {status or 401}): "
            "it does not exist, or it is private or gated and no token was sent. For a private "
            "dataset log in with `huggingface-cli login` (or `hf auth login`) or set HF_TOKEN. "
            f"Otherwise check the id: {_ACCEPTED}."
        )
    return (
        f"dataset {repo_id!r} does not exist on the Hub ({endpoint}; HTTP {status or 404}), or "
        f"the token in use has no access to it. {_ACCEPTED}."
    )


def _load(
    name_or_path: str, split: str, config: str | None, streaming: bool, num_shards: int = 24
) -> IterableDataset:
    """Open any source as a ``datasets.IterableDataset`` (see the module docstring)."""
    path = Path(os.path.expanduser(name_or_path))
    files: list[str] | None = None
    builder = None
    if name_or_path in BUILTIN_NAMES:
        files, builder = _builtin_files(split), "parquet"
    elif _GLOB_CHARS & set(name_or_path) or path.is_file():
        pattern = os.path.expanduser(name_or_path)
        files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"no file matches {name_or_path!r}")
        builder = _builder_for(files, name_or_path)
        if builder == "imagefolder":
            return _image_files_dataset(files, split, Path(os.path.commonpath(files)).parent)
    elif path.is_dir():
        files = _saved_arrow_files(path, split)
        builder = "arrow" if files is not None else None
        local = _local_splits(path) if files is None else None
        if local is not None:
            if split not in local:
                raise ValueError(
                    f"split {split!r} not found in {path}; available splits: {sorted(local)}"
                )
            files, builder = local[split], _builder_for(local[split], str(path))
            if builder == "imagefolder":
                every = [f for fs in local.values() for f in fs]
                return _image_files_dataset(files, split, path, label_files=every)
    if files is not None:
        args: tuple = (builder,)
        kwargs: dict = {"data_files": {split: files}}
    else:
        args, kwargs = (str(path) if path.is_dir() else name_or_path, config), {}
    try:
        ds = datasets.load_dataset(*args, **kwargs, split=split, streaming=streaming)
    except datasets.exceptions.DatasetNotFoundError as err:
        if files is not None or path.is_dir():
            raise
        raise datasets.exceptions.DatasetNotFoundError(_hub_not_found(name_or_path)) from err
    except ValueError as err:
        if "split" in str(err).lower():
            raise ValueError(
                f"split {split!r} not found in {name_or_path!r} ({err}); pass another split"
            ) from err
        raise
    if not streaming:  # an Arrow-backed Dataset: continue as a stream like every source
        rows = len(ds)
        shards = max(1, min(num_shards, rows))
        return _with_count(ds.to_iterable_dataset(num_shards=shards), split, rows)
    if builder == "parquet":
        return _with_count(ds, split, _parquet_rows(files or []))
    return ds


def _resolve_features(ds: IterableDataset) -> IterableDataset:
    if ds.features is None and hasattr(ds, "_resolve_features"):
        ds = ds._resolve_features()  # reads the first example; needed for untyped sources
    if ds.features is None:
        raise ValueError(
            "the dataset does not declare its columns; pass --image-column and --label-column"
        )
    return ds


def _pick(features: datasets.Features, names: Sequence[str], kind: type) -> str | None:
    typed = [c for c, f in features.items() if isinstance(f, kind)]
    for name in names:  # a conventional name among the typed columns first
        if name in typed:
            return name
    if typed:
        return typed[0]
    for name in names:
        if name in features:
            return name
    return None


def detect_columns(
    features: datasets.Features,
    image_column: str | None = None,
    label_column: str | None = None,
    *,
    require_label: bool = False,
) -> tuple[str, str | None]:
    """Choose the image and label columns of ``features``.

    Image: ``image_column`` if given, else a ``datasets.Image`` column (preferring the names in
    ``IMAGE_COLUMN_NAMES``), else a column named like one of ``IMAGE_COLUMN_NAMES``.
    Label: ``label_column`` if given, else a ``ClassLabel`` column, else a column named like one of
    ``LABEL_COLUMN_NAMES``, else ``None`` (unless ``require_label``).

    A missing column raises ``ValueError`` naming the available columns and the flag to pass.

    Example:
        >>> from datasets import Features, Image, ClassLabel, Value
        >>> detect_columns(Features({"img": Image(), "fine_label": ClassLabel(names=["a"])}))
        ('img', 'fine_label')
        >>> detect_columns(Features({"image": Image(), "caption": Value("string")}))
        ('image', None)
    """
    available = list(features)
    image: str | None
    label: str | None
    if image_column is not None:
        if image_column not in features:
            raise ValueError(
                f"image column {image_column!r} not found; available columns: {available}. "
                "Pass the right one with --image-column."
            )
        image = image_column
    else:
        image = _pick(features, IMAGE_COLUMN_NAMES, datasets.Image)
        if image is None:
            raise ValueError(
                f"no image column found; available columns: {available}. Pass --image-column NAME."
            )
    if label_column is not None:
        if label_column not in features:
            raise ValueError(
                f"label column {label_column!r} not found; available columns: {available}. "
                "Pass the right one with --label-column."
            )
        label = label_column
    else:
        rest = datasets.Features({k: v for k, v in features.items() if k != image})
        label = _pick(rest, LABEL_COLUMN_NAMES, ClassLabel)
        if label is None and require_label:
            raise ValueError(
                f"no label column found; available columns: {available}. "
                "Pass --label-column NAME (evaluation needs integer class labels)."
            )
    if label is not None:
        feat = features[label]
        integer = isinstance(feat, ClassLabel) or (
            isinstance(feat, Value) and (feat.dtype.startswith("int") or feat.dtype == "bool")
        )
        if not integer:
            raise ValueError(
                f"label column {label!r} has type {feat}, not integer class ids; pass an integer "
                "or ClassLabel column with --label-column"
            )
    return image, label


def resolve_dataset(
    name_or_path: str,
    split: str = "train",
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = True,
    config: str | None = None,
    require_label: bool = False,
    num_shards: int = 24,
) -> tuple[IterableDataset, str, str | None]:
    """Open ``name_or_path`` as a streaming dataset and find its image / label columns.

    Returns ``(dataset, image_column, label_column_or_None)``. The dataset keeps only the image,
    label and (when present) id columns (``id``, ``idx``, ``index``, ``image_id``, ``__key__``);
    its image column is ``Image(decode=False)`` (``{"bytes", "path"}`` dicts) so that
    :class:`~hub_cutinit.data.stream.SSLImageStream` decodes lazily and can skip corrupt images.

    ``streaming=False`` loads the data with ``load_dataset`` first (an Arrow cache on disk) and
    converts it with ``to_iterable_dataset(num_shards=num_shards)`` (row ranges: one file still
    gives ``num_shards`` shards); the default streams directly.
    ``config`` is the Hub configuration name. With ``require_label=True`` a dataset without a
    label column raises ``ValueError`` (evaluation needs labels).

    Errors: an unknown split raises ``ValueError`` listing the splits when they are known; a
    missing column raises ``ValueError`` naming the available columns and ``--image-column`` /
    ``--label-column``.

    Example:
        >>> ds, image_col, label_col = resolve_dataset("builtin", "train")
        >>> (image_col, label_col, ds.num_shards, num_examples(ds))
        ('image', 'label', 4, 10000)
        >>> sorted(next(iter(ds))["image"])  # undecoded
        ['bytes', 'path']
    """
    ds = _load(name_or_path, split, config, streaming, num_shards)
    ds = _resolve_features(ds)
    image, label = detect_columns(
        ds.features, image_column, label_column, require_label=require_label
    )
    keep = [image] + ([label] if label else [])
    keep += [c for c in ID_COLUMN_NAMES if c in ds.features and c not in keep][:1]
    info_splits = ds.info.splits
    ds = ds.select_columns(keep)
    feat = ds.features[image]
    if isinstance(feat, datasets.Image) or (
        isinstance(feat, Value)
        and feat.dtype in ("binary", "large_binary", "string", "large_string")
    ):
        ds = ds.cast_column(image, datasets.Image(decode=False))
    # Otherwise (arrays of pixels) the stream decodes them with numpy.
    if info_splits and ds.info.splits is None:
        ds.info.splits = info_splits
    return ds, image, label


def num_examples(ds: IterableDataset) -> int | None:
    """Number of examples of the split ``ds`` streams, when the source declares it, else ``None``.

    Known for the built-in dataset, local parquet files and most Hub datasets (from their card).

    Example:
        >>> num_examples(resolve_dataset("builtin", "train")[0])
        10000
    """
    splits = ds.info.splits
    if not splits:
        return None
    if ds.split is None:  # e.g. after Dataset.to_iterable_dataset: a single split is unambiguous
        info = next(iter(splits.values())) if len(splits) == 1 else None
    else:
        info = splits.get(str(ds.split))
    return int(info.num_examples) if info is not None and info.num_examples else None


def class_names(ds: IterableDataset, label_column: str | None) -> list[str] | None:
    """Names of the classes when ``label_column`` is a ``ClassLabel``, else ``None``.

    Example:
        >>> ds, _, label_col = resolve_dataset("builtin", "test")
        >>> len(class_names(ds, label_col))
        10
    """
    if label_column is None or ds.features is None:
        return None
    feat = ds.features.get(label_column)
    return list(feat.names) if isinstance(feat, ClassLabel) else None
