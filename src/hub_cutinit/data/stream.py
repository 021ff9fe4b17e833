"""Per-process image streams for SSL training and evaluation, with exact resume.

:class:`SSLImageStream` wraps a ``datasets.IterableDataset`` (from
:func:`~hub_cutinit.data.resolve.resolve_dataset`) as a ``torch.utils.data.IterableDataset``:

- **sharding**: ``datasets.distributed.split_dataset_by_node(rank, world_size)`` is the only
  mechanism between processes; do not also pass the loader to ``accelerator.prepare``. Whole
  shards go to each rank when ``num_shards % world_size == 0`` (the built-in dataset has 4
  train shards), otherwise every rank reads the stream and keeps one example in
  ``world_size``. Inside a process, DataLoader workers split the rank's shards (``datasets``
  does it; a worker without a shard yields nothing, so use ``num_workers <= shards per rank``);
- **shuffling**: the shard order is shuffled with ``seed`` (``datasets``' ``shuffle`` with a
  one-example buffer; ``interleave_shards`` shards read round-robin, default 1), then examples are
  permuted inside consecutive blocks of ``shuffle_buffer`` examples with a generator seeded by
  ``(seed, epoch, rank, worker, block)``. :meth:`SSLImageStream.set_epoch` gives a new order
  every epoch; the same seed and epoch give the same order;
- **exact resume**: the state is "the source position at the start of the current block plus
  the number of block items consumed", so ``state_dict()`` / ``load_state_dict()`` (and
  ``torchdata``'s ``StatefulDataLoader``, which calls them in every worker) resume at exactly
  the next example. ``datasets``' own shuffle buffer would drop its content on resume;
- **lazy decode, corrupt images**: images are decoded only when yielded. An image that fails
  to decode (or to convert to RGB) is skipped; the number skipped since the previous yielded
  sample of the same worker rides along as ``sample["num_corrupt"]``, so the count crosses
  process boundaries inside the batches (see :class:`SSLDataLoader`); the names of the first
  ``MAX_CORRUPT_EXAMPLES`` of a worker's epoch (file path, else id, else row: see
  :func:`corrupt_example_name`) ride along as ``sample["corrupt_examples"]``. Under an
  :class:`SSLDataLoader`, those after a worker's last sample come as a marker sample
  (``TRAILING_CORRUPT``) and those in a dropped partial batch are counted too: every corrupt
  row is counted;
- **network errors are not corrupt images**: an HTTP / connection error that survives the
  clients' own retries (``huggingface_hub`` retries 5xx, ``datasets`` retries disconnects),
  while reading a shard or fetching a remote image, raises :class:`StreamReadError` naming the
  dataset and the file; the epoch never ends silently short.

Samples are dicts: ``views`` (list of tensors; ``image`` when the transform returns one tensor),
``label`` (int, -1 when unlabelled or missing), ``id`` (when the dataset has an id column) and
``num_corrupt``.

Example:
    >>> from hub_cutinit.data import resolve_dataset, make_view_transform
    >>> ds, image_col, label_col = resolve_dataset("builtin", "train")
    >>> stream = SSLImageStream(ds, make_view_transform("simclr", 32), image_column=image_col,
    ...                         label_column=label_col, rank=0, world_size=2, seed=0)
    >>> loader = make_train_loader(stream, batch_size=8)
    >>> batch = next(iter(loader))
    >>> [tuple(v.shape) for v in batch["views"]], batch["label"].shape
    ([(8, 3, 32, 32), (8, 3, 32, 32)], torch.Size([8]))
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader

from hub_cutinit.data.resolve import ID_COLUMN_NAMES, num_examples
from hub_cutinit.data.transforms import to_rgb

__all__ = [
    "MAX_CORRUPT_EXAMPLES",
    "SSLDataLoader",
    "SSLImageStream",
    "StreamReadError",
    "TRAILING_CORRUPT",
    "collate_samples",
    "corrupt_example_name",
    "decode_image",
    "make_eval_loader",
    "make_train_loader",
    "shard_eval_loader",
]


logger = logging.getLogger(__name__)

_HF_IMAGE = datasets.Image()  # decoder for {"bytes", "path"} values (local or remote paths)
_STATE_KEY = "hub_cutinit"
#: Key of the marker "sample" carrying the count of corrupt images after a stream's last sample.
TRAILING_CORRUPT = "trailing_corrupt"
#: Corrupt images named (per worker and epoch in the stream, per loader in SSLDataLoader).
MAX_CORRUPT_EXAMPLES = 5
#: torch's warning when torchdata's StatefulDataLoader calls the removed ``torch.set_vital``.
_SET_VITAL_WARNING = "'set_vital' is deprecated"


class _OneExampleBufferFilter(logging.Filter):
    """Drop ``datasets``' warning about resuming a shuffle buffer: ours holds one example."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "shuffle buffer" not in record.getMessage()


logging.getLogger("datasets.iterable_dataset").addFilter(_OneExampleBufferFilter())


def decode_image(value: Any) -> Image.Image:
    """Decode one image value, as stored in a dataset column, into a loaded PIL image.

    Accepts ``{"bytes": ..., "path": ...}`` (``datasets.Image(decode=False)``; a path may be
    local or remote), raw bytes, a path string, a PIL image, or an array of pixels (HW, HWC or
    CHW; floats in [0, 1] are scaled to 8 bits). Raises on anything undecodable (truncated or
    corrupt files included).

    Example:
        >>> import io
        >>> buf = io.BytesIO(); Image.new("RGB", (3, 2)).save(buf, format="PNG")
        >>> decode_image({"bytes": buf.getvalue(), "path": None}).size
        (3, 2)
        >>> decode_image(np.zeros((3, 4, 5), dtype=np.uint8)).size  # CHW
        (5, 4)
    """
    if value is None:
        raise ValueError("the image is missing (None)")
    if isinstance(value, Image.Image):
        value.load()
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = {"bytes": bytes(value), "path": None}
    elif isinstance(value, str):
        value = {"bytes": None, "path": value}
    if isinstance(value, dict):
        return _HF_IMAGE.decode_example(value)
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype.kind == "f":
        arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim not in (2, 3):
        raise ValueError(f"cannot make an image of an array of shape {arr.shape}")
    return Image.fromarray(arr)


_NETWORK_MODULES = frozenset({"httpx", "httpx2", "aiohttp", "requests", "urllib3"})
_REMOTE_FILE_RE = re.compile(
    r"/(?:datasets/)?([^/\s'\"]+/[^/\s'\"]+)/resolve/[^/\s'\"]+/([^\s'\"?]+)"
)


class StreamReadError(ConnectionError):
    """Reading the data failed (network / server error after the clients' retries).

    The message names the dataset and the file; the stream stops instead of skipping data.
    """


def _is_network_error(err: BaseException) -> bool:
    """An HTTP or connection error (from ``huggingface_hub``, ``httpx``, ``aiohttp`` ...)."""
    from huggingface_hub.errors import HfHubHTTPError

    for e in (err, err.__cause__, err.__context__):
        if e is None:
            continue
        if isinstance(e, (HfHubHTTPError, ConnectionError, TimeoutError)):
            return True
        if any(c.__module__.split(".")[0] in _NETWORK_MODULES for c in type(e).__mro__[:-2]):
            return True
    return False


def _read_error(err: BaseException, dataset: datasets.IterableDataset) -> StreamReadError:
    """A :class:`StreamReadError` naming the dataset and file (from the failing URL if any)."""
    text = f"{err} {err.__cause__ or ''}"
    match = _REMOTE_FILE_RE.search(text)
    name = match.group(1) if match else (dataset.info.dataset_name or "the dataset")
    where = f"file {match.group(2)!r}" if match else "a data file"
    return StreamReadError(
        f"reading dataset {name!r} failed at {where} after the client's retries "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). The stream "
        "stops here rather than ending the epoch short; check the connection / the Hub status "
        "and rerun (with --resume, training continues from the last checkpoint)."
    )


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def corrupt_example_name(value: Any, example_id: Any = None, row: str = "") -> str:
    """How a report names an undecodable image: its file path when the dataset stores one
    (a local path or a Hub file), else its id (``example_id``), else ``row``.

    Example:
        >>> corrupt_example_name({"bytes": b"junk", "path": "cats/001.jpg"})
        'cats/001.jpg'
        >>> corrupt_example_name({"bytes": b"junk", "path": None}, example_id=17)
        'id 17'
        >>> corrupt_example_name(None, row="row 3")
        'row 3 (image missing)'
    """
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and path:
        return path
    if example_id is not None:
        return f"id {example_id}"
    return f"{row or 'an example'}{' (image missing)' if value is None else ''}"


class SSLImageStream(torch.utils.data.IterableDataset):
    """This process's share of an image dataset, shuffled, decoded and transformed lazily.

    Args:
        dataset: a ``datasets.IterableDataset`` whose ``image_column`` holds images (ideally
            ``Image(decode=False)``, as :func:`resolve_dataset` returns it).
        transform: ``PIL.Image -> list[Tensor]`` (training views; samples get ``views``) or
            ``PIL.Image -> Tensor`` (evaluation; samples get ``image``). Receives RGB images.
        image_column, label_column: column names; ``label_column=None`` gives ``label == -1``.
        id_column: a column copied to ``sample["id"]``; ``"auto"`` picks ``id``/``idx``/
            ``index``/``image_id``/``__key__`` when present, ``None`` disables.
        rank, world_size: this process and the number of processes (e.g.
            ``accelerator.process_index`` and ``accelerator.num_processes``).
        seed: shuffling seed; must be the same on every rank.
        shuffle: ``False`` keeps the source order (evaluation).
        shuffle_buffer: examples permuted together (a block); a block of raw (undecoded)
            examples is held in memory per worker.
        interleave_shards: shards read round-robin by one worker (mixes shards sorted by
            class, at a cost: ``datasets``' interleaving takes ~0.5 ms per example).
        max_initial_failures: raise ``RuntimeError`` when this many images in a row fail to
            decode before any succeeds (almost surely the wrong ``image_column``).

    Call :meth:`set_epoch` before each epoch. ``state_dict()`` / ``load_state_dict()`` resume
    exactly (same epoch, same ``seed``, ``world_size`` and ``num_workers``).

    Example:
        >>> from hub_cutinit.data import resolve_dataset, make_eval_transform
        >>> ds, image_col, label_col = resolve_dataset("builtin", "test")
        >>> stream = SSLImageStream(ds, make_eval_transform(28), image_column=image_col,
        ...                         label_column=label_col, shuffle=False)
        >>> sample = next(iter(stream))
        >>> tuple(sample["image"].shape), sample["label"], sample["num_corrupt"]
        ((3, 28, 28), 7, 0)
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        transform: Callable[[Image.Image], Any],
        *,
        image_column: str = "image",
        label_column: str | None = "label",
        id_column: str | None = "auto",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        interleave_shards: int = 1,
        max_initial_failures: int = 64,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        features = dataset.features or {}
        for flag, col in (("--image-column", image_column), ("--label-column", label_column)):
            if col is not None and features and col not in features:
                raise ValueError(
                    f"column {col!r} not found; available columns: {list(features)}. "
                    f"Pass the right one with {flag}."
                )
        if id_column == "auto":
            id_column = next((c for c in ID_COLUMN_NAMES if c in features), None)
        #: examples of the whole split, all ranks together (``None`` when the source is silent)
        self.total_examples = num_examples(dataset)
        if shuffle:
            # One-example buffer: only the (seeded) shard order and the interleaving of
            # `interleave_shards` shards come from datasets; the example shuffle is ours (blocks),
            # because datasets' buffer content is lost on resume.
            dataset = dataset.shuffle(
                seed=seed, buffer_size=1, max_buffer_input_shards=max(1, interleave_shards)
            )
        if world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        self.dataset = dataset
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.id_column = id_column
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.block_size = shuffle_buffer
        self.max_initial_failures = max_initial_failures
        self._state: dict[str, Any] | None = None  # position after the last yielded sample
        self._resume: dict[str, Any] | None = None  # loaded, used by the next __iter__
        self._last_error: Exception | None = None
        #: yield a ``{TRAILING_CORRUPT: True, "num_corrupt": n}`` marker for corrupt images after
        #: the last sample (set by :class:`SSLDataLoader`, which counts and drops it)
        self.report_trailing_corrupt = False

    # -- epochs and state ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The current epoch (shared with persistent DataLoader workers)."""
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: a new shard order and new permutations, the same on every rank."""
        self.dataset.set_epoch(int(epoch))

    @property
    def num_shards(self) -> int:
        """Shards of this rank: DataLoader workers beyond this number get no data."""
        return self.dataset.num_shards

    def state_dict(self) -> dict[str, Any]:
        """Position after the last yielded sample (in a DataLoader worker: of that worker)."""
        state = self._state or self._resume
        if state is None or state["epoch"] != self.epoch:
            state = {"epoch": self.epoch, "block": 0, "pos": 0, "source": None}
        return dict(state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at ``state_dict`` on the next iteration (ignored if its epoch differs)."""
        missing = {"epoch", "block", "pos", "source"} - set(state_dict)
        if missing:
            raise ValueError(f"not an SSLImageStream state: missing {sorted(missing)}")
        self._resume = dict(state_dict)
        self._state = None

    # -- iteration ----------------------------------------------------------------------------
    def _row_name(self, block: int, index: int) -> str:
        """Names a row of this worker's stream (with no path nor id to name it by)."""
        worker_id, num_workers = _worker()
        where = [f"rank {self.rank}"] if self.world_size > 1 else []
        where += [f"worker {worker_id}"] if num_workers > 1 else []
        row = f"row {block * self.block_size + index}"
        return f"{row} of {', '.join(where)}'s stream" if where else row

    def _corrupt_name(self, example: dict[str, Any], block: int, index: int) -> str:
        """The name of an undecodable example (see :func:`corrupt_example_name`)."""
        example_id = example.get(self.id_column) if self.id_column else None
        return corrupt_example_name(
            example.get(self.image_column), example_id, self._row_name(block, index)
        )

    def _sample(self, example: dict[str, Any], key: list[int]) -> dict[str, Any] | None:
        try:
            image = to_rgb(decode_image(example[self.image_column]))
        except Exception as err:  # any decoding failure is a corrupt image ...
            if _is_network_error(err):  # ... but a remote image that cannot be fetched is not
                raise _read_error(err, self.dataset) from err
            logger.debug("skipping an undecodable image: %r", err)
            self._last_error = err
            return None
        # The augmentation's randomness is seeded by the sample's position, so a resumed run
        # (any number of workers) draws exactly the views an uninterrupted run would have drawn.
        # Only the CPU generator: torch.manual_seed would also seed every CUDA / XPU / MTIA
        # generator (queueing a lazy call with a formatted stack trace for each when they are
        # not initialised, ~90 us per image), and fork_rng(devices=[]) does not restore those.
        with torch.random.fork_rng(devices=[]):
            seed = int(np.random.SeedSequence(key).generate_state(1)[0])
            torch.default_generator.manual_seed(seed)
            out = self.transform(image)
        sample: dict[str, Any] = (
            {"views": list(out)} if isinstance(out, (list, tuple)) else {"image": out}
        )
        label = example.get(self.label_column) if self.label_column else None
        sample["label"] = -1 if label is None else int(label)
        if self.id_column is not None:
            sample["id"] = example.get(self.id_column)
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        worker_id, _ = _worker()
        start = self._resume if self._resume and self._resume["epoch"] == epoch else None
        self._resume = None
        block = start["block"] if start else 0
        pos = start["pos"] if start else 0
        source = start["source"] if start else None
        # `None` clears a state loaded by an earlier resume (datasets only checks truthiness).
        self.dataset.load_state_dict(source)
        self._state = {"epoch": epoch, "block": block, "pos": pos, "source": source}
        examples = iter(self.dataset)
        skipped, yielded_any = 0, start is not None
        names: list[str] = []  # of corrupt images not reported yet
        named = 0  # corrupt images named so far in this iteration (at most MAX_CORRUPT_EXAMPLES)
        while True:
            try:
                items = list(islice(examples, self.block_size))
            except Exception as err:
                if _is_network_error(err):
                    raise _read_error(err, self.dataset) from err
                raise
            if not items:
                break
            order = np.arange(len(items))
            if self.shuffle:
                key = [self.seed, epoch, self.rank, worker_id, block]
                order = np.random.default_rng(key).permutation(len(items))
            for i in range(pos, len(items)):
                sample = self._sample(
                    items[order[i]], [self.seed, epoch, self.rank, worker_id, block, i]
                )
                if sample is None:
                    skipped += 1
                    if named < MAX_CORRUPT_EXAMPLES:
                        names.append(self._corrupt_name(items[order[i]], block, int(order[i])))
                        named += 1
                    if not yielded_any and skipped >= self.max_initial_failures:
                        raise RuntimeError(
                            f"the first {skipped} images of column {self.image_column!r} all "
                            f"failed to decode (last error: {self._last_error!r}); is "
                            "--image-column right?"
                        )
                    continue
                sample["num_corrupt"], skipped, yielded_any = skipped, 0, True
                if names:
                    sample["corrupt_examples"], names = names, []
                self._state = {"epoch": epoch, "block": block, "pos": i + 1, "source": source}
                yield sample
            if len(items) < self.block_size:
                break
            source = self.dataset.state_dict()  # the source position after this block
            block, pos = block + 1, 0
        if skipped and self.report_trailing_corrupt:  # counted by SSLDataLoader
            yield {TRAILING_CORRUPT: True, "num_corrupt": skipped, "corrupt_examples": names}
        elif skipped:
            logger.warning(
                "%d corrupt image(s) at the end of worker %d's stream (%s) were skipped but not "
                "reported in a batch (iterate through an SSLDataLoader to count them)",
                skipped,
                worker_id,
                ", ".join(names),
            )


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch: ``views`` (list of ``(B, 3, H, W)``) or ``image``,
    ``label`` (int64), ``id`` (tensor when numeric, else list) and ``num_corrupt`` (int); the
    samples' ``corrupt_examples`` (names of skipped images) are joined when there are any.

    Example:
        >>> s = {"views": [torch.zeros(3, 4, 4)] * 2, "label": 1, "num_corrupt": 2}
        >>> b = collate_samples([s, dict(s, num_corrupt=0)])
        >>> [tuple(v.shape) for v in b["views"]], b["label"].tolist(), b["num_corrupt"]
        ([(2, 3, 4, 4), (2, 3, 4, 4)], [1, 1], 2)
    """
    num_corrupt = int(sum(s.get("num_corrupt", 0) for s in samples))
    names = [name for s in samples for name in s.get("corrupt_examples", ())]
    samples = [s for s in samples if not s.get(TRAILING_CORRUPT)]
    if not samples:  # only the end-of-stream marker: nothing to train on, a count to report
        empty = {"label": torch.zeros(0, dtype=torch.long), "num_corrupt": num_corrupt}
        return {**empty, "corrupt_examples": names} if names else empty
    first = samples[0]
    batch: dict[str, Any] = {}
    if "views" in first:
        batch["views"] = [
            torch.stack([s["views"][v] for s in samples]) for v in range(len(first["views"]))
        ]
    else:
        batch["image"] = torch.stack([s["image"] for s in samples])
    batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    if "id" in first:
        ids = [s["id"] for s in samples]
        numeric = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids)
        batch["id"] = torch.tensor(ids, dtype=torch.long) if numeric else ids
    batch["num_corrupt"] = num_corrupt
    if names:
        batch["corrupt_examples"] = names
    return batch


class SSLDataLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over an :class:`SSLImageStream` that also counts corrupt images
    in the main process and saves the count and the epoch in its ``state_dict``.

    - ``num_corrupt``: corrupt images this loader skipped (sum of the batches'
      ``num_corrupt``; per process: all-reduce it across ranks for a global count);
    - ``corrupt_examples``: the names of the first ``MAX_CORRUPT_EXAMPLES`` of them (file
      path, else id, else row; per process: gather them across ranks for a global list);
    - ``epoch`` / ``set_epoch(epoch)``: forwarded to the stream (the caller owns the epoch);
    - ``state_dict()`` adds ``{"hub_cutinit": {"epoch", "epoch_finished", "num_corrupt",
      "corrupt_examples"}}``;
    - ``load_state_dict(state)``: call it after ``set_epoch``. When the state was saved in the
      current epoch, the next iteration resumes at exactly the next sample and ``num_corrupt``
      and ``corrupt_examples`` are restored; a state from another epoch (e.g. saved after the
      epoch ended, then the caller moved on) is ignored: the current epoch starts from its
      beginning and the count from 0.

    Build it with :func:`make_train_loader` or :func:`make_eval_loader`.
    """

    def __init__(
        self, dataset: SSLImageStream, *args: Any, full_batches: bool = False, **kwargs: Any
    ) -> None:
        if isinstance(dataset, SSLImageStream):  # before workers copy it
            dataset.report_trailing_corrupt = True
        with warnings.catch_warnings():  # torchdata calls torch's deprecated set_vital here
            warnings.filterwarnings("ignore", message=_SET_VITAL_WARNING, category=UserWarning)
            super().__init__(dataset, *args, **kwargs)
        #: yield only batches of ``batch_size`` samples; the corrupt images reported with a
        #: shorter (last) batch are still counted before it is dropped
        self.full_batches = full_batches
        self.num_corrupt = 0
        #: names of the first ``MAX_CORRUPT_EXAMPLES`` corrupt images this loader skipped
        self.corrupt_examples: list[str] = []
        self._epoch_finished = False

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self._epoch_finished = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iterator = super().__iter__()
        self._epoch_finished = False
        for batch in iterator:
            self.num_corrupt += int(batch.get("num_corrupt", 0))
            self._keep_corrupt_examples(batch.get("corrupt_examples") or [])
            size = len(batch["label"])
            if size == 0 or (self.full_batches and size < (self.batch_size or 0)):
                continue  # counted above; a partial batch (or only the end-of-stream count)
            yield batch
        self._epoch_finished = True

    def _keep_corrupt_examples(self, names: list[str]) -> None:
        """Keep the first ``MAX_CORRUPT_EXAMPLES`` names of skipped images."""
        room = MAX_CORRUPT_EXAMPLES - len(self.corrupt_examples)
        self.corrupt_examples.extend(str(name) for name in names[: max(room, 0)])

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state[_STATE_KEY] = {
            "epoch": self.epoch,
            "epoch_finished": self._epoch_finished,
            "num_corrupt": self.num_corrupt,
            "corrupt_examples": list(self.corrupt_examples),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        ours = state.pop(_STATE_KEY, None)
        if ours is not None and int(ours["epoch"]) != self.epoch:
            logger.info(
                "loader state of epoch %s not applied: the stream is at epoch %s (fresh start)",
                ours["epoch"],
                self.epoch,
            )
            self.num_corrupt = 0
            self.corrupt_examples = []
            super().load_state_dict({})
            return
        if ours is not None:
            self.num_corrupt = int(ours["num_corrupt"])
            self.corrupt_examples = [str(n) for n in ours.get("corrupt_examples", [])]
        super().load_state_dict(state)


def make_train_loader(
    stream: SSLImageStream,
    batch_size: int,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    snapshot_every_n_steps: int = 1,
) -> SSLDataLoader:
    """The training loader: full batches only (a last partial batch is dropped once its
    corrupt images are counted), views stacked.

    Batches are dicts ``views`` (list of ``(batch_size, 3, H, W)``, global views first),
    ``label`` (int64, -1 = unlabelled), ``id`` (when the dataset has one) and ``num_corrupt``.
    Corrupt images are skipped before batching, so every batch is full.

    Do not pass it to ``accelerator.prepare`` (the stream is already sharded). Resume with
    ``loader.load_state_dict(saved)`` on a loader built the same way (same ``num_workers``).

    Example:
        >>> from hub_cutinit.data import resolve_dataset, make_view_transform
        >>> ds, image_col, label_col = resolve_dataset("builtin", "train")
        >>> stream = SSLImageStream(ds, make_view_transform("byol", 32), image_column=image_col,
        ...                         label_column=label_col)
        >>> loader = make_train_loader(stream, batch_size=4)
        >>> loader.set_epoch(0)
        >>> batch = next(iter(loader))
        >>> saved = loader.state_dict()  # resume later with load_state_dict(saved)
        >>> saved["hub_cutinit"]
        {'epoch': 0, 'epoch_finished': False, 'num_corrupt': 0, 'corrupt_examples': []}
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers > stream.num_shards:
        logger.warning(
            "num_workers=%d but this rank has %d shard(s): %d worker(s) will get no data",
            num_workers,
            stream.num_shards,
            num_workers - stream.num_shards,
        )
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return SSLDataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        # the last partial batch is collated so its corrupt-image count is kept, then dropped
        drop_last=False,
        full_batches=True,
        pin_memory=pin_memory,
        snapshot_every_n_steps=snapshot_every_n_steps,
        **kwargs,
    )


def make_eval_loader(
    stream: SSLImageStream,
    batch_size: int,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> SSLDataLoader:
    """The evaluation loader: every sample once (no shuffle expected, ``drop_last=False``).

    Build ``stream`` with ``shuffle=False`` and an eval transform
    (:func:`~hub_cutinit.data.transforms.make_eval_transform`); batches are dicts ``image``
    ``(B, 3, H, W)``, ``label`` (int64), ``id``, ``num_corrupt``. With several ranks, each
    sees its own share: gather the features afterwards.

    Example:
        >>> from hub_cutinit.data import resolve_dataset, make_eval_transform
        >>> ds, image_col, label_col = resolve_dataset("builtin", "test")
        >>> stream = SSLImageStream(ds, make_eval_transform(28), image_column=image_col,
        ...                         label_column=label_col, shuffle=False)
        >>> sum(len(b["label"]) for b in make_eval_loader(stream, batch_size=500))
        2000
    """
    if stream.shuffle:
        logger.info("the evaluation stream shuffles; order does not matter for kNN / probes")
    return SSLDataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        drop_last=False,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def _every_nth(rank: int, world_size: int, example: Any, index: int) -> bool:
    return index % world_size == rank


def shard_eval_loader(loader: SSLDataLoader, rank: int, world_size: int) -> SSLDataLoader:
    """This rank's share of a one-process evaluation loader (the same batch size and workers).

    Rank ``r`` keeps the examples at positions ``r, r + world_size, ...`` of the stream (of each
    worker's stream: the same on every rank), after any ``take`` / ``filter`` of the loader, so
    every example goes to exactly one rank and gathering the ranks' features gives each example
    once: no padding rows, no duplicates. Each rank still reads (not decodes) every example.
    ``world_size == 1`` returns ``loader`` itself.

    Example:
        >>> from hub_cutinit.data import build_eval_loaders
        >>> bank, _ = build_eval_loaders("builtin", image_size=8, max_samples=10, batch_size=4)
        >>> parts = [shard_eval_loader(bank, r, 2) for r in range(2)]
        >>> [sum(len(b["label"]) for b in p) for p in parts]
        [5, 5]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if world_size == 1:
        return loader
    stream: SSLImageStream = loader.dataset
    if stream.world_size != 1:
        raise ValueError("shard_eval_loader takes a one-process loader (world_size=1)")
    part = SSLImageStream(
        stream.dataset.filter(partial(_every_nth, rank, world_size), with_indices=True),
        stream.transform,
        image_column=stream.image_column,
        label_column=stream.label_column,
        id_column=stream.id_column,
        seed=stream.seed,
        shuffle=stream.shuffle,
        shuffle_buffer=stream.block_size,
        max_initial_failures=stream.max_initial_failures,
    )
    part.total_examples = stream.total_examples
    return make_eval_loader(
        part,
        loader.batch_size or 1,
        loader.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
    )
