#!/usr/bin/env python
"""Build hub_cutinit's built-in dataset: a small, class-balanced Fashion-MNIST subset.

Reads the original idx files (Debian package ``dataset-fashion-mnist``, MIT licence) and writes
parquet shards that ``datasets`` streams with the right features::

    image  Image()                       PNG bytes, 28x28, mode "L"
    label  ClassLabel(10 class names)
    id     int64                         row index in the original Fashion-MNIST split

Output (committed, shipped in the wheel through package-data ``datasets/**/*``)::

    src/hub_cutinit/datasets/fashion_mnist/
        train-0000{0..3}-of-00004.parquet   10,000 images, 1,000 per class, 2,500 per shard
        test-0000{0..1}-of-00002.parquet     2,000 images,   200 per class, 1,000 per shard
        README.md, LICENSE

Four train shards let 1, 2 or 4 processes split by whole shards; each shard is class-balanced.
The subset is fixed by ``--seed`` (default 0) and the script is deterministic: rerunning it
with the same inputs and library versions rewrites identical files.

Example::

    python scripts/build_builtin_dataset.py                     # default paths
    python scripts/build_builtin_dataset.py --source /usr/share/datasets/fashion-mnist \\
        --out src/hub_cutinit/datasets/fashion_mnist --seed 0

``--full`` writes every image instead (60,000 train in 60 shards, 10,000 test in 4 shards, each
shard class-balanced; about 36 MB) for runs on the whole of Fashion-MNIST, e.g. the GPU
convergence study (``recipes/gpu/``); it must go to another folder than the built-in one::

    python scripts/build_builtin_dataset.py --full --out data/fashion_mnist_full
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
from pathlib import Path

import numpy as np

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/hub_cutinit/datasets/fashion_mnist"
SPLITS = {
    # split: (idx prefix, images per class, number of shards)
    "train": ("train", 1000, 4),
    "test": ("t10k", 200, 2),
}
#: ``--full``: every image (Fashion-MNIST has 6,000 train and 1,000 test images per class);
#: 60 train shards split evenly over 1, 2, 3, 4, 5, 6, 10, 12, 15, 20 or 30 loader workers
FULL_SPLITS = {
    "train": ("train", 6000, 60),
    "test": ("t10k", 1000, 4),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array.

    >>> import tempfile, os
    >>> data = struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 3) + bytes([1, 2, 3])
    >>> with tempfile.NamedTemporaryFile(suffix=".idx", delete=False) as f:
    ...     _ = f.write(data)
    >>> read_idx(Path(f.name)).tolist()
    [1, 2, 3]
    >>> os.unlink(f.name)
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (header {zero}, {dtype_code:#x})")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as a (deterministic) grayscale PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``per_class`` indices of every class, then shuffle them into one order.

    >>> labels = np.array([0, 1] * 10)
    >>> idx = balanced_subset(labels, 3, np.random.default_rng(0))
    >>> sorted(np.bincount(labels[idx]).tolist())
    [3, 3]
    """
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise ValueError(f"class {c} has only {members.size} images, {per_class} requested")
        chosen.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return rng.permutation(np.concatenate(chosen))


def interleave_by_class(indices: np.ndarray, labels: np.ndarray, num_shards: int) -> list:
    """Split ``indices`` into ``num_shards`` equal, class-balanced shards (order kept per class)."""
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    for c in np.unique(labels[indices]):
        members = [int(i) for i in indices if labels[i] == c]
        if len(members) % num_shards:
            raise ValueError(f"class {c}: {len(members)} images do not split into {num_shards}")
        for s in range(num_shards):
            shards[s].extend(members[s::num_shards])
    return shards


def build(
    source: Path, out: Path, seed: int = 0, splits: dict[str, tuple[str, int, int]] | None = None
) -> dict[str, int]:
    """Write the parquet shards, README.md and LICENSE; return the number of rows per split.

    ``splits`` maps a split to (idx prefix, images per class, shards); default :data:`SPLITS`.
    """
    splits = SPLITS if splits is None else splits
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    features = Features(
        {"image": Image(), "label": ClassLabel(names=CLASS_NAMES), "id": Value("int64")}
    )
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    counts: dict[str, int] = {}
    for split, (prefix, per_class, num_shards) in splits.items():
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
        rng = np.random.default_rng([seed, len(split)])
        subset = balanced_subset(labels, per_class, rng)
        for s, shard in enumerate(interleave_by_class(subset, labels, num_shards)):
            shard = [shard[i] for i in rng.permutation(len(shard))]  # mix classes inside a shard
            ds = Dataset.from_dict(
                {
                    "image": [{"bytes": png_bytes(images[i]), "path": None} for i in shard],
                    "label": [int(labels[i]) for i in shard],
                    "id": shard,
                },
                features=features,
            )
            # row groups of 500 rows: `IterableDataset.reshard()` can split a shard further
            ds.to_parquet(str(out / f"{split}-{s:05d}-of-{num_shards:05d}.parquet"), batch_size=500)
        counts[split] = int(subset.size)
    write_docs(out, counts, seed, full=splits is FULL_SPLITS)
    return counts


LICENSE_TEXT = """\
The MIT License (MIT)

Copyright © 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def write_docs(out: Path, counts: dict[str, int], seed: int, full: bool = False) -> None:
    """Write LICENSE (the Fashion-MNIST MIT licence) and a README describing the subset."""
    if full:
        write_full_docs(out, counts, seed)
        return
    (out / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    names = "\n".join(f"| {i} | {n} |" for i, n in enumerate(CLASS_NAMES))
    files = "\n".join(
        f"- `{p.name}` ({p.stat().st_size:,} bytes)" for p in sorted(out.glob("*.parquet"))
    )
    readme = f"""\
# Built-in dataset: Fashion-MNIST subset

The default dataset of `hub_cutinit` (`--dataset builtin`), small enough to ship in the wheel
and to train on a laptop CPU.

- **Source**: Fashion-MNIST by Zalando Research (Xiao, Rasul and Vollgraf, 2017,
  arXiv:1708.07747), read from the original idx files as packaged by Debian
  (`dataset-fashion-mnist`, `/usr/share/datasets/fashion-mnist`).
- **Licence**: MIT, copyright 2017 Zalando SE; see `LICENSE` in this folder.
- **Content**: {counts["train"]:,} train images (1,000 per class) drawn from the 60,000 training
  images and {counts["test"]:,} test images (200 per class) drawn from the 10,000 test images;
  28×28 grayscale, stored as PNG.
- **Columns**: `image` (`datasets.Image`, PNG bytes), `label` (`datasets.ClassLabel`, 10
  classes below), `id` (int64, the row index in the original Fashion-MNIST split).
- **How it was built**: `python scripts/build_builtin_dataset.py --seed {seed}`: per split and
  class a seeded `numpy.random.default_rng` sample without replacement; every shard holds the
  same number of images of each class, rows shuffled inside the shard. Deterministic.
- **Shards**: 4 train shards so 1, 2 or 4 processes split the data by whole shards; 2 test
  shards.

| label | class |
|---|---|
{names}

Files:

{files}
"""
    (out / "README.md").write_text(readme, encoding="utf-8")


def write_full_docs(out: Path, counts: dict[str, int], seed: int) -> None:
    """LICENSE and a short README for the ``--full`` build (every Fashion-MNIST image)."""
    (out / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    readme = f"""\
# Fashion-MNIST, every image

{counts["train"]:,} train images in 60 class-balanced shards and {counts["test"]:,} test images in
4 shards, 28×28 grayscale PNG; columns `image`, `label` (10 classes), `id` (row in the original
split). Source: Fashion-MNIST by Zalando Research (arXiv:1708.07747), MIT licence (see
`LICENSE`), read from Debian's `dataset-fashion-mnist`. Built with
`python scripts/build_builtin_dataset.py --full --out <this folder> --seed {seed}`.
"""
    (out / "README.md").write_text(readme, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="folder of idx .gz files"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--full",
        action="store_true",
        help="every image (60,000 train in 60 shards, 10,000 test in 4) instead of the subset; "
        "give --out another folder than the built-in dataset's",
    )
    args = parser.parse_args(argv)
    if args.full and args.out.resolve() == DEFAULT_OUT.resolve():
        parser.error(
            "--full would overwrite the built-in dataset; pass --out, e.g. "
            "--out data/fashion_mnist_full"
        )
    splits = FULL_SPLITS if args.full else SPLITS
    counts = build(args.source, args.out, seed=args.seed, splits=splits)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {counts} to {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
