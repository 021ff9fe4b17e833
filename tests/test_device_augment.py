"""``--augment-on device``: the parameters follow the PIL path's distributions, the batched
device ops equal torchvision's per-image ops, and the views are exact on resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hub_cutinit.data import build_train_stream, make_train_loader
from hub_cutinit.data.device_augment import (
    PARAM_NAMES,
    AugmentSpec,
    DeviceAugment,
    ViewGroup,
    make_device_view_transform,
    sample_view_params,
)

DRAWS = 600
COL = {name: i for i, name in enumerate(PARAM_NAMES)}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max distance of the empirical CDFs)."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = [np.searchsorted(np.sort(x), grid, side="right") / len(x) for x in (a, b)]
    return float(np.abs(cdf[0] - cdf[1]).max())


#: KS critical value at alpha = 0.001 for two samples of DRAWS each
KS_LIMIT = 1.95 * math.sqrt(2 / DRAWS)


def _draws(spec: AugmentSpec, n: int = DRAWS) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.cat([sample_view_params(spec) for _ in range(n // spec.num_views)])


@pytest.mark.parametrize("side,scale", [(32, (0.2, 1.0)), (32, (0.05, 0.4)), (224, (0.4, 1.0))])
def test_crop_scale_and_aspect_ratio_follow_random_resized_crop(side, scale) -> None:
    spec = AugmentSpec(side, (ViewGroup(2, 16, scale),))
    p = _draws(spec).double().numpy()
    w, h = (p[:, 2] - p[:, 0]) * side, (p[:, 3] - p[:, 1]) * side
    assert (p[:, :4] >= 0).all() and (p[:, :4] <= 1).all() and (w >= 1).all() and (h >= 1).all()
    np.testing.assert_allclose(w, np.round(w), atol=1e-3)  # integer boxes, as torchvision's
    torch.manual_seed(1)
    crop = v2.RandomResizedCrop(16, scale=scale)
    ref = [crop.make_params([torch.zeros(3, side, side)]) for _ in range(DRAWS)]
    rw = np.array([r["width"] for r in ref], dtype=float)
    rh = np.array([r["height"] for r in ref], dtype=float)
    assert _ks(w * h / side**2, rw * rh / side**2) < KS_LIMIT  # area fraction
    assert _ks(np.log(w / h), np.log(rw / rh)) < KS_LIMIT  # aspect ratio
    rx = np.array([r["left"] for r in ref]) / np.maximum(side - rw, 1)
    assert _ks(p[:, 0] * side / np.maximum(side - w, 1), rx) < KS_LIMIT  # position


def test_flip_jitter_grayscale_rates_and_ranges_match_the_pil_path() -> None:
    spec = AugmentSpec(32, (ViewGroup(2, 32, (0.2, 1.0)),), blur_p=0.5, solarize_p=0.2)
    p = _draws(spec).numpy()
    for name, rate in [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2)]:
        assert abs(p[:, COL[name]].mean() - rate) < 4 * math.sqrt(rate * (1 - rate) / len(p))
    assert (
        abs(p[:, COL["blur"]].mean() - 0.5) < 0.1 and abs(p[:, COL["solarize"]].mean() - 0.2) < 0.1
    )
    torch.manual_seed(2)
    jitter = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)
    ref = [jitter.make_params([]) for _ in range(DRAWS)]
    for k, name in enumerate(["brightness", "contrast", "saturation", "hue"]):
        lo, hi = getattr(jitter, name)
        ours = p[:, COL[name]]
        assert lo <= ours.min() < lo + 0.05 * (hi - lo) and hi - 0.05 * (hi - lo) < ours.max() <= hi
        assert _ks(ours, np.array([r[f"{name}_factor"] for r in ref])) < KS_LIMIT
        # each op is equally likely at each position of the random order (ColorJitter's randperm)
        at = p[:, COL["order0"] + k]
        assert sorted(np.unique(at)) == [0, 1, 2, 3] and abs((at == k).mean() - 0.25) < 0.07
    orders = p[:, COL["order0"] : COL["order0"] + 4]
    assert (np.sort(orders, axis=1) == np.arange(4)).all()  # permutations
    sigma = p[:, COL["sigma"]]
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0 and abs(sigma.mean() - 1.05) < 0.1


def _one(p_row: dict[str, float]) -> torch.Tensor:
    row = torch.zeros(len(PARAM_NAMES))
    row[COL["x1"]] = row[COL["y1"]] = 1.0
    row[COL["hue"]] = 0.0
    for name in ("brightness", "contrast", "saturation"):
        row[COL[name]] = 1.0
    row[COL["order0"] : COL["order0"] + 4] = torch.arange(4.0)
    for name, value in p_row.items():
        row[COL[name]] = value
    return row


@pytest.mark.parametrize(
    "params,reference",
    [
        ({"flip": 1}, lambda x: TF.horizontal_flip(x)),
        ({"jitter": 1, "brightness": 1.3}, lambda x: TF.adjust_brightness(x, 1.3)),
        ({"jitter": 1, "contrast": 0.7}, lambda x: TF.adjust_contrast(x, 0.7)),
        ({"jitter": 1, "saturation": 1.35}, lambda x: TF.adjust_saturation(x, 1.35)),
        ({"jitter": 1, "hue": -0.08}, lambda x: TF.adjust_hue(x, -0.08)),
        ({"jitter": 1, "hue": 0.1}, lambda x: TF.adjust_hue(x, 0.1)),
        (
            {"jitter": 1, "hue": 0.05, "saturation": 0.6, "order0": 3, "order3": 0},
            lambda x: TF.adjust_brightness(TF.adjust_saturation(TF.adjust_hue(x, 0.05), 0.6), 1),
        ),
        ({"gray": 1}, lambda x: TF.rgb_to_grayscale(x, num_output_channels=3)),
        ({"solarize": 1}, lambda x: TF.solarize(x, 128 / 255)),
        ({"blur": 1, "sigma": 1.3}, lambda x: TF.gaussian_blur(x, [3, 3], [1.3, 1.3])),
    ],
)
def test_device_ops_equal_torchvision_per_image(params, reference) -> None:
    """Each batched op, with one sample's parameters, equals torchvision's op on that image."""
    spec = AugmentSpec(32, (ViewGroup(1, 32, (0.2, 1.0)),), blur_p=0.5, solarize_p=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    rows = torch.stack([_one(params), _one({}), _one(params)])
    out = DeviceAugment(spec).color(DeviceAugment.crop(x, rows, 32), rows, 32)
    torch.testing.assert_close(out[0], reference(x[0]), rtol=0, atol=2e-5)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=1e-6)  # identity parameters
    torch.testing.assert_close(out[2], reference(x[2]), rtol=0, atol=2e-5)


def test_crops_equal_torchvision_resized_crop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    full = torch.stack([_one({}), _one({})])
    up = DeviceAugment.crop(x, full, 32)  # the whole image, upsampled: plain bilinear
    torch.testing.assert_close(up, TF.resize(x, [32, 32], antialias=True), rtol=0, atol=1e-5)
    # a natural-ish image (smooth plus some texture): the two anti-aliasing filters (bin
    # average vs torchvision's triangle) differ only on the finest detail
    big = TF.resize(torch.rand(1, 3, 8, 8, generator=g), [64, 64], antialias=True)
    big = big + 0.05 * torch.rand(1, 3, 64, 64, generator=g)
    box = _one({"x0": 8 / 64, "y0": 4 / 64, "x1": 56 / 64, "y1": 36 / 64})[None]
    down = DeviceAugment.crop(big, box, 16)  # 48 x 32 -> 16 x 16: bins averaged
    ref = TF.resized_crop(big, 4, 8, 32, 48, [16, 16], antialias=True)
    assert (down - ref).abs().mean() < 0.02


def test_views_shapes_dtypes_and_identical_for_the_same_stream_position() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8))
    t = make_device_view_transform("dino", 32, num_local_views=3, blur_p=0.5, solarize_p=0.2)
    base, params = t(image)
    assert base.dtype == torch.uint8 and tuple(base.shape) == (3, 32, 32)
    assert params.dtype == torch.float32 and tuple(params.shape) == (5, len(PARAM_NAMES))
    views = t.device_augment()([base[None].repeat(4, 1, 1, 1), params[None].repeat(4, 1, 1)])
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    with pytest.raises(ValueError, match="augment_on='device'"):
        t.device_augment()([base[None], params[None, :2]])

    def first_batches(n: int, resume_after: int | None = None) -> list[list[torch.Tensor]]:
        stream = build_train_stream("builtin", method="byol", image_size=16, augment_on="device")
        loader = make_train_loader(stream, batch_size=8)
        loader.set_epoch(1)
        it, out = iter(loader), []
        for i in range(n):
            if resume_after is not None and i == resume_after:
                saved = loader.state_dict()
                stream = build_train_stream(
                    "builtin", method="byol", image_size=16, augment_on="device"
                )
                loader = make_train_loader(stream, batch_size=8)
                loader.set_epoch(1)
                loader.load_state_dict(saved)
                it = iter(loader)
            out.append(stream.transform.device_augment()(next(it)["views"]))
        return out

    straight, resumed = first_batches(3), first_batches(3, resume_after=2)
    for a, b in zip(straight, resumed, strict=True):
        for va, vb in zip(a, b, strict=True):
            assert torch.equal(va, vb)
    assert not torch.equal(straight[0][0], straight[0][1])  # two different views


def test_trainer_trains_with_augment_on_device(tmp_path: Path) -> None:
    from hub_cutinit.training import main

    out = tmp_path / "run"
    flags = ["--backbone", "test_resnet", "--image-size", "16", "--batch-size", "8"]
    flags += ["--eval-max-samples", "32", "--no-baselines", "--max-steps", "2"]
    flags += ["--set", "proj_hidden_dim=16", "proj_dim=8", "--augment-on", "device"]
    main("simclr", [*flags, "--output-dir", str(out)])
    block = json.loads((out / "config.json").read_text())["hub_cutinit"]
    assert ("augment_on", "device") in _items(block)


def _items(tree: object) -> list[tuple[str, object]]:
    found = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            found.append((k, v))
            found.extend(_items(v))
    return found
