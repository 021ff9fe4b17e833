"""Evaluation loaders: uint8 images decoded in worker processes, normalised on the device.

Issue 20 item 6. The kNN result must not change: the uint8 path normalises with the float
transform's kernels (the same numbers), and workers read the same examples (in another order).
"""

from __future__ import annotations

import timm
import torch

from hub_cutinit.data import SSLImageStream, make_eval_loader, make_eval_transform, resolve_dataset
from hub_cutinit.data.pipeline import build_eval_loaders, eval_source, plan_evaluation
from hub_cutinit.evaluation import extract_features, knn_accuracy

SIZE, SAMPLES = 16, 120


def _float_loader(split: str, max_samples: int) -> object:
    """The evaluation loader as it was before uint8: float images, normalised in-process."""
    ds, image_col, label_col = resolve_dataset("builtin", split, require_label=True)
    stream = SSLImageStream(
        ds.take(max_samples),
        make_eval_transform(SIZE),
        image_column=image_col,
        label_column=label_col,
        shuffle=False,
    )
    return make_eval_loader(stream, 32)


def _ids(loader: object) -> list[int]:
    return sorted(int(i) for batch in loader for i in batch["id"])  # type: ignore[attr-defined]


def test_uint8_batches_normalise_to_the_float_transform() -> None:
    bank, _ = build_eval_loaders("builtin", image_size=SIZE, max_samples=40, batch_size=32)
    batch = next(iter(bank))
    assert batch["image"].dtype == torch.uint8
    old = next(iter(_float_loader("train", 40)))
    pixels, _ = extract_features(torch.nn.Flatten(), [batch])
    want, _ = extract_features(torch.nn.Flatten(), [old])
    assert torch.equal(pixels, want)  # bit for bit: the same kernels


def test_workers_read_the_same_examples() -> None:
    ds, _, _ = resolve_dataset("builtin", "train")
    one = [e["id"] for e in eval_source(ds, 50, 0)]
    split = eval_source(ds, 50, 3)
    assert split.num_shards == 3 and sorted(e["id"] for e in split) == sorted(one)
    bank, test = build_eval_loaders(
        "builtin", image_size=SIZE, max_samples=SAMPLES, batch_size=16, num_workers=2
    )
    assert bank.num_workers == 2 and test.num_workers == 2
    assert _ids(bank) == _ids(_float_loader("train", SAMPLES))
    assert _ids(test) == _ids(_float_loader("test", SAMPLES))


def _by_id(model: torch.nn.Module, loader: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of ``loader`` in id order (workers interleave their shards)."""
    ids = torch.tensor([int(i) for batch in loader for i in batch["id"]])  # type: ignore[attr-defined]
    feats, labels = extract_features(model, loader)  # type: ignore[arg-type]
    order = ids.argsort()
    return feats[order], labels[order]


def test_knn_accuracy_unchanged() -> None:
    """Bit-identical features per image; the same kNN accuracy to the last digit.

    Workers change only the order of the rows (batches come round-robin from the workers'
    shards). Raw pixels give the same accuracy in any order; for a random backbone (cosine
    similarities near 1) the kNN's float sums of the votes depend on the bank order, so it is
    compared in id order, where the result is exactly the old one.
    """
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=0, pretrained=False).eval()
    old = [_float_loader(s, SAMPLES) for s in ("train", "test")]
    new = build_eval_loaders(
        "builtin", image_size=SIZE, max_samples=SAMPLES, batch_size=16, num_workers=2
    )
    pixels = [[extract_features(torch.nn.Flatten(), loader) for loader in x] for x in (old, new)]
    assert knn_accuracy(*pixels[0][0], *pixels[0][1], k=20) == knn_accuracy(
        *pixels[1][0], *pixels[1][1], k=20
    )
    for model in (torch.nn.Flatten(), net):
        before = [_by_id(model, loader) for loader in old]
        after = [_by_id(model, loader) for loader in new]
        for (fa, la), (fb, lb) in zip(after, before, strict=True):
            assert torch.equal(fa, fb) and torch.equal(la, lb)
        assert knn_accuracy(*after[0], *after[1], k=20) == knn_accuracy(
            *before[0], *before[1], k=20
        )


def test_plan_evaluation_passes_workers() -> None:
    plan = plan_evaluation("builtin", image_size=SIZE, max_samples=40, num_workers=2)
    assert plan.loaders is not None
    assert [loader.num_workers for loader in plan.loaders] == [2, 2]
    assert next(iter(plan.loaders[1]))["image"].dtype == torch.uint8
    default = plan_evaluation("builtin", image_size=SIZE, max_samples=40)
    assert default.loaders is not None and default.loaders[0].num_workers == 0  # CPU default
