"""SSL views augmented on the training device (``--augment-on device``).

The CPU path (:func:`~hub_cutinit.data.transforms.make_view_transform`) crops, flips and
colour-jitters every view with PIL in the DataLoader workers. Here the workers only decode,
resize the shorter side to ``base_size`` and centre-crop (one uint8 image per sample), and
draw the augmentation *parameters* of every view (a few dozen random numbers); the pixel work
runs on the device, batched, with each sample's own parameters:

- random resized crop: ``torchvision.ops.roi_align`` with one box per view (bilinear, the bins
  averaged when shrinking: an anti-aliased resize);
- horizontal flip, colour jitter (brightness, contrast, saturation, hue, applied in a random
  order per view as ``ColorJitter`` does), grayscale, solarize: elementwise, per sample;
- Gaussian blur: a separable grouped convolution with one kernel per view.

The parameters follow the PIL path's distributions (``RandomResizedCrop``'s ten tries and its
centre-crop fallback, ``ColorJitter``'s factor ranges and random order, the same
probabilities; tests/test_device_augment.py compares them) and are drawn from
``torch.default_generator``, which :class:`~hub_cutinit.data.stream.SSLImageStream` seeds with
the sample's stream position (seed, epoch, rank, worker, block, index): a resumed run gets
exactly the same views. kornia was not used: its batched crops are reported far slower than
torchvision's (kornia issues #1559, #2175).

Example:
    >>> from PIL import Image
    >>> t = make_device_view_transform("simclr", 16)
    >>> base, params = t(Image.new("RGB", (20, 24), (200, 30, 9)))
    >>> base.dtype, tuple(base.shape), tuple(params.shape)
    (torch.uint8, (3, 16, 16), (2, 18))
    >>> views = t.device_augment()([base[None], params[None]])
    >>> [(tuple(v.shape), v.dtype) for v in views]
    [((1, 3, 16, 16), torch.float32), ((1, 3, 16, 16), torch.float32)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import v2

from hub_cutinit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, local_crop_size, to_rgb
from hub_cutinit.registry import get_method_class

if TYPE_CHECKING:
    from hub_cutinit.methods.base import SSLModel

__all__ = [
    "AUGMENT_ON",
    "PARAM_NAMES",
    "AugmentSpec",
    "DeviceAugment",
    "DeviceViewTransform",
    "ViewGroup",
    "make_device_view_transform",
    "sample_view_params",
]

#: The values of ``--augment-on``.
AUGMENT_ON = ("cpu", "device")
#: The columns of a view's parameter row: crop box (fractions of the base image), flip, colour
#: jitter applied, its four factors and its order (op index at each position: 0 brightness,
#: 1 contrast, 2 saturation, 3 hue), grayscale, blur applied and its sigma, solarize.
PARAM_NAMES = (
    "x0", "y0", "x1", "y1", "flip", "jitter", "brightness", "contrast", "saturation", "hue",
    "order0", "order1", "order2", "order3", "gray", "blur", "sigma", "solarize",
)  # fmt: skip
_COL = {name: i for i, name in enumerate(PARAM_NAMES)}
_TRIES = 10  # RandomResizedCrop's attempts before its centre-crop fallback
_RATIO = (3 / 4, 4 / 3)
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class ViewGroup:
    """``count`` views of side ``size`` cropped with area fraction in ``scale``."""

    count: int
    size: int
    scale: tuple[float, float]


@dataclass(frozen=True)
class AugmentSpec:
    """What the CPU side draws and the device side applies (the PIL path's parameters)."""

    base_size: int
    groups: tuple[ViewGroup, ...]
    hflip_p: float = 0.5
    color_jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def num_views(self) -> int:
        return sum(g.count for g in self.groups)

    def jitter_ranges(self) -> list[tuple[float, float]]:
        """``ColorJitter``'s factor ranges: ``[max(0, 1 - x), 1 + x]`` and ``[-hue, hue]``."""
        b, c, s, h = self.color_jitter or (0.0, 0.0, 0.0, 0.0)
        return [(max(0.0, 1 - x), 1 + x) for x in (b, c, s)] + [(-h, h)]


def _sample_crops(u: np.ndarray, side: int, scale: tuple[float, float]) -> np.ndarray:
    """``RandomResizedCrop`` boxes ``(x0, y0, x1, y1)`` in fractions of a ``side``² image,
    from ``u`` (views, 4 × tries) uniforms: the first valid try, else the centre crop."""
    area = side * side
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0:_TRIES])
    lo, hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    aspect = np.exp(lo + (hi - lo) * u[:, _TRIES : 2 * _TRIES])
    w = np.round(np.sqrt(target * aspect))  # Python's and numpy's round agree (half to even)
    h = np.round(np.sqrt(target / aspect))
    ok = (w > 0) & (w <= side) & (h > 0) & (h <= side)
    first = ok.argmax(axis=1)
    rows = np.arange(len(u))
    w, h = w[rows, first], h[rows, first]
    top = np.floor(u[rows, 2 * _TRIES + first] * (side - h + 1))
    left = np.floor(u[rows, 3 * _TRIES + first] * (side - w + 1))
    none = ~ok.any(axis=1)  # a square image is within the ratio range: the whole image
    top[none], left[none], h[none], w[none] = 0, 0, side, side
    return np.stack([left, top, left + w, top + h], axis=1) / side


def sample_view_params(spec: AugmentSpec) -> torch.Tensor:
    """The parameters of every view of one sample, ``(num_views, len(PARAM_NAMES))`` float32.

    Drawn from ``torch.default_generator`` (one ``torch.rand`` call), so seeding it (as the
    stream does per sample) fixes them.

    Example:
        >>> spec = AugmentSpec(32, (ViewGroup(2, 32, (0.2, 1.0)),))
        >>> _ = torch.manual_seed(0)
        >>> p = sample_view_params(spec)
        >>> tuple(p.shape), bool(((p[:, 2] - p[:, 0]) > 0).all())
        ((2, 18), True)
    """
    n = spec.num_views
    u = torch.rand(n, 4 * _TRIES + 14, dtype=torch.float64).numpy()
    out = np.zeros((n, len(PARAM_NAMES)))
    start = 0
    for group in spec.groups:
        rows = slice(start, start + group.count)
        out[rows, 0:4] = _sample_crops(u[rows, : 4 * _TRIES], spec.base_size, group.scale)
        start += group.count
    v = u[:, 4 * _TRIES :]
    out[:, _COL["flip"]] = v[:, 0] < spec.hflip_p
    out[:, _COL["jitter"]] = (v[:, 1] < spec.jitter_p) & (spec.color_jitter is not None)
    for k, (lo, hi) in enumerate(spec.jitter_ranges()):
        out[:, _COL["brightness"] + k] = lo + (hi - lo) * v[:, 2 + k]
    out[:, _COL["order0"] : _COL["order0"] + 4] = np.argsort(v[:, 6:10], axis=1)  # randperm(4)
    out[:, _COL["gray"]] = v[:, 10] < spec.grayscale_p
    out[:, _COL["blur"]] = v[:, 11] < spec.blur_p
    out[:, _COL["sigma"]] = 0.1 + 1.9 * v[:, 12]  # GaussianBlur's sigma=(0.1, 2.0)
    out[:, _COL["solarize"]] = v[:, 13] < spec.solarize_p
    return torch.from_numpy(out.astype(np.float32))


class DeviceViewTransform:
    """Picklable CPU half: ``PIL.Image -> [base uint8 (3, S, S), params (V, P) float32]``.

    The loader stacks them into ``batch["views"] == [(B, 3, S, S), (B, V, P)]``;
    :meth:`device_augment` gives the device half that turns that into the ``V`` views.
    """

    def __init__(self, spec: AugmentSpec) -> None:
        self.spec = spec
        self.resize = v2.Compose(
            [v2.Resize(spec.base_size, antialias=True), v2.CenterCrop(spec.base_size), v2.ToImage()]
        )
        counts = [g.count for g in spec.groups]
        self.num_views = (counts[0], sum(counts[1:]))

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        base = self.resize(to_rgb(image)).as_subclass(torch.Tensor)
        return [base, sample_view_params(self.spec)]

    def device_augment(self) -> DeviceAugment:
        """The batched device half for this transform's views."""
        return DeviceAugment(self.spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _shift_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, ``h += f`` (mod 1), back (torchvision's ``adjust_hue``, per sample)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    d = torch.where(delta == 0, torch.ones_like(delta), delta)
    s = delta / torch.where(delta == 0, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    h = (h / 6 + f.view(-1, 1, 1)).remainder(1.0)
    out = []
    for n in (5, 3, 1):  # the branch-free HSV -> RGB formula
        k = (n + 6 * h).remainder(6)
        out.append(maxc - maxc * s * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(out, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-sample Gaussian blur (reflect padding), as ``GaussianBlur(kernel, sigma)``."""
    n, c, hgt, wid = x.shape
    offsets = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    weights = torch.softmax(-(offsets / sigma.view(-1, 1)).pow(2) / 2, dim=1)  # (N, k)
    weights = weights.repeat_interleave(c, 0)  # one kernel per channel of each sample
    pad = kernel // 2
    y = F.pad(x.reshape(1, n * c, hgt, wid), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weights.view(n * c, 1, 1, kernel), groups=n * c)
    y = F.conv2d(y, weights.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


class DeviceAugment:
    """Device half: ``[base (B, 3, S, S) uint8, params (B, V, P)] -> V`` normalised views.

    Runs where the tensors are (the training device), in float32, with no host sync. The
    views come out as :func:`~hub_cutinit.data.transforms.normalize_views` would give them
    (float, ``(x - mean) / std``), global views first.
    """

    def __init__(self, spec: AugmentSpec) -> None:
        self.spec = spec
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        base, params = views
        if params.ndim != 3 or params.shape[1:] != (self.spec.num_views, len(PARAM_NAMES)):
            raise ValueError(
                f"expected [base (B, 3, S, S), params (B, {self.spec.num_views}, "
                f"{len(PARAM_NAMES)})] from a DeviceViewTransform, got shapes "
                f"{[tuple(v.shape) for v in views]}; build the stream with augment_on='device'"
            )
        x = base.to(torch.float32).div_(255)
        params = params.to(device=x.device, dtype=torch.float32)
        out, start = [], 0
        for group in self.spec.groups:
            p = params[:, start : start + group.count].transpose(0, 1).reshape(-1, params.shape[2])
            crops = self.crop(x, p, group.size)
            out += list(self.color(crops, p, group.size).chunk(group.count))
            start += group.count
        if x.device not in self._stats:  # cached: a tensor from a list is a copy per step
            self._stats[x.device] = tuple(  # type: ignore[assignment]
                torch.tensor(s, device=x.device).view(1, -1, 1, 1)
                for s in (self.spec.mean, self.spec.std)
            )
        mean, std = self._stats[x.device]
        return [v.sub_(mean).div_(std) for v in out]

    @staticmethod
    def crop(x: torch.Tensor, p: torch.Tensor, size: int) -> torch.Tensor:
        """Resized crops of ``x`` (B images) for ``p`` (view-major rows: view v of image b is
        row ``v * B + b``), then the flips."""
        b, side = x.shape[0], x.shape[-1]
        index = torch.arange(b, device=x.device, dtype=x.dtype).repeat(p.shape[0] // b)
        boxes = torch.cat([index[:, None], p[:, 0:4] * side], dim=1)
        crops = roi_align(x, boxes, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        flip = p[:, _COL["flip"]].view(-1, 1, 1, 1) > 0.5
        return torch.where(flip, crops.flip(-1), crops)

    def color(self, x: torch.Tensor, p: torch.Tensor, size: int) -> torch.Tensor:
        """Colour jitter (per-view random order), grayscale, blur, solarize."""
        spec = self.spec
        if spec.color_jitter is not None and spec.jitter_p > 0:
            applied = p[:, _COL["jitter"]] > 0.5
            for k in range(4):
                at_k = p[:, _COL["order0"] + k]
                for op in range(4):
                    if spec.color_jitter[op] == 0:
                        continue  # ColorJitter skips a zero-strength op
                    chosen = applied & (at_k == op)
                    identity = 0.0 if op == 3 else 1.0
                    f = torch.where(chosen, p[:, _COL["brightness"] + op], identity)
                    x = self._jitter(x, op, f)
        if spec.grayscale_p > 0:
            gray = p[:, _COL["gray"]].view(-1, 1, 1, 1) > 0.5
            x = torch.where(gray, _gray(x).expand_as(x), x)
        if spec.blur_p > 0:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # as the CPU path
            blurred = _blur(x, p[:, _COL["sigma"]], kernel)
            x = torch.where(p[:, _COL["blur"]].view(-1, 1, 1, 1) > 0.5, blurred, x)
        if spec.solarize_p > 0:
            sol = (p[:, _COL["solarize"]].view(-1, 1, 1, 1) > 0.5) & (x >= 128 / 255)
            x = torch.where(sol, 1 - x, x)
        return x

    @staticmethod
    def _jitter(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
        if op == 3:
            return _shift_hue(x, f)
        f4 = f.view(-1, 1, 1, 1)
        if op == 0:
            return (x * f4).clamp_(0, 1)
        if op == 1:
            return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f4)
        return _blend(x, _gray(x), f4)


def _pair(scale: Sequence[float]) -> tuple[float, float]:
    """``scale`` (a tuple, or a list from a config) as a tuple of two floats."""
    low, high = scale
    return float(low), float(high)


def make_device_view_transform(
    method: str | type[SSLModel],
    image_size: int,
    *,
    base_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] | None = None,
    num_global_views: int = 2,
    num_local_views: int = 4,
    local_size: int | None = None,
    local_scale: tuple[float, float] | None = None,
    color_jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    hflip_p: float = 0.5,
    blur_p: float = 0.0,
    solarize_p: float = 0.0,
    uint8: bool = True,
) -> DeviceViewTransform:
    """:func:`~hub_cutinit.data.transforms.make_view_transform`'s views, augmented on the device.

    The same arguments and the method's ``view_spec``; ``base_size`` (default ``image_size``)
    is the side the workers resize to (shorter side, then centre crop): crops are taken from
    it, so raise it to keep detail from large images. ``uint8`` is accepted for symmetry (the
    base image is always uint8). Use ``transform.device_augment()`` on the batches.

    Example:
        >>> t = make_device_view_transform("dino", 32, num_local_views=3)
        >>> t.num_views, [g.size for g in t.spec.groups]
        ((2, 3), [32, 16])
    """
    del uint8
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    cls = method if isinstance(method, type) else get_method_class(str(method).lower())
    spec = cls.view_spec()
    groups = [ViewGroup(num_global_views, image_size, _pair(scale or spec.global_scale))]
    if spec.num_local and num_local_views:
        size = local_size or local_crop_size(image_size, spec.local_size_fraction)
        groups.append(ViewGroup(num_local_views, size, _pair(local_scale or spec.local_scale)))
    return DeviceViewTransform(
        AugmentSpec(
            base_size=base_size or image_size,
            groups=tuple(groups),
            hflip_p=hflip_p,
            color_jitter=color_jitter,
            jitter_p=jitter_p,
            grayscale_p=grayscale_p,
            blur_p=blur_p,
            solarize_p=solarize_p,
            mean=tuple(mean),
            std=tuple(std),
        )
    )
