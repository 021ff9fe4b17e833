"""Image views for self-supervised training and evaluation (torchvision.transforms.v2).

Every transform here is a picklable object (DataLoader workers may be spawned) that takes a
PIL image of any mode and returns float tensors normalised with ``mean``/``std``:

- :func:`make_view_transform` -> callable ``PIL.Image -> list[Tensor]`` (the SSL views);
- :func:`make_eval_transform` -> callable ``PIL.Image -> Tensor`` (resize + centre crop).

Example:
    >>> from PIL import Image
    >>> views = make_view_transform("simclr", 32)(Image.new("L", (28, 28)))
    >>> [tuple(v.shape) for v in views]
    [(3, 32, 32), (3, 32, 32)]
    >>> make_eval_transform(32)(Image.new("RGB", (40, 50))).shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from hub_cutinit.registry import get_method_class

__all__ = [
    "EvalTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ViewTransform",
    "local_crop_size",
    "make_eval_transform",
    "make_view_transform",
    "normalize_views",
    "to_rgb",
]


if TYPE_CHECKING:
    from hub_cutinit.methods.base import SSLModel

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    - ``L``, ``1``, ``P`` (without transparency), ``CMYK``, ``YCbCr``, ``RGBX``, ``HSV``,
      ``LAB``: PIL's convert;
    - ``LA``, ``RGBA``, ``PA``, ``P`` with transparency, ``La``, ``RGBa``: alpha-composited on
      ``background`` (white by default), so transparent pixels do not turn black;
    - 16-bit (``I;16*``) is scaled by 255/65535; 32-bit ``I`` likewise when any value exceeds 255
      (else taken as 8-bit); float ``F`` is scaled by 255 when it lies in [0, 1], else clipped.

    Raises ``ValueError`` for a mode PIL cannot turn into RGB.

    Example:
        >>> to_rgb(Image.new("I;16", (4, 4), 65535)).getpixel((0, 0))
        (255, 255, 255)
        >>> to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 0))).getpixel((0, 0))
        (255, 255, 255)
        >>> to_rgb(Image.new("CMYK", (2, 2))).mode
        'RGB'
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        arr = np.asarray(image)
        if arr.dtype.kind == "f":
            arr = np.nan_to_num(arr.astype(np.float64))
            if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
                arr = arr * 255.0
        elif mode in _SIXTEEN_BIT_MODES or (arr.size and arr.max() > 255):
            arr = arr.astype(np.float64) * (255.0 / 65535.0)
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "La":  # premultiplied alpha: PIL converts it to LA only
        image, mode = image.convert("LA"), "LA"
    if mode in ("LA", "PA", "RGBa", "RGBA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode == "1":
        image = image.convert("L")
    try:
        return image.convert("RGB")
    except ValueError as err:  # a mode without a conversion path
        raise ValueError(f"cannot convert a PIL image of mode {mode!r} to RGB") from err


def local_crop_size(image_size: int, fraction: float = 3 / 7) -> int:
    """Side of local crops: ``fraction`` of ``image_size`` rounded to a multiple of 8, >= 16.

    The default ``3/7`` reproduces DINO's 96 px local crops at 224 px.

    Example:
        >>> local_crop_size(224), local_crop_size(32), local_crop_size(96)
        (96, 16, 40)
    """
    return max(16, int(round(image_size * fraction / 8)) * 8)


def _augment(
    size: int,
    scale: tuple[float, float],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    hflip_p: float,
    color_jitter: tuple[float, float, float, float] | None,
    jitter_p: float,
    grayscale_p: float,
    blur_p: float,
    solarize_p: float,
    uint8: bool = False,
) -> v2.Compose:
    ops: list = [
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(p=hflip_p),
    ]
    if color_jitter is not None and jitter_p > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(*color_jitter)], p=jitter_p))
    if grayscale_p > 0:
        ops.append(v2.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, ~10% of the side as in SimCLR
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    ops.append(v2.ToImage())
    if not uint8:  # else normalize_views does these two on the device
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(ops)


def normalize_views(
    views: Sequence[torch.Tensor],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[torch.Tensor]:
    """uint8 views (``make_view_transform(..., uint8=True)``) as the float transform gives them.

    The same ``ToDtype(float32, scale=True)`` and ``Normalize(mean, std)`` kernels, run where
    the views are (the training device: a quarter of the bytes travel, and the arithmetic is
    the GPU's), so the numbers equal the float transform's. Float views pass unchanged.

    Example:
        >>> from PIL import Image
        >>> image = Image.new("RGB", (20, 20), (255, 0, 9))
        >>> fp = make_view_transform("simclr", 16, jitter_p=0, grayscale_p=0)
        >>> u8 = make_view_transform("simclr", 16, jitter_p=0, grayscale_p=0, uint8=True)
        >>> _ = torch.manual_seed(0); a = fp(image)[0]
        >>> _ = torch.manual_seed(0); b = u8(image)[0]
        >>> b.dtype, torch.equal(normalize_views([b[None]])[0][0], a)
        (torch.uint8, True)
    """
    out = []
    for view in views:
        if view.dtype == torch.uint8:
            m, s = _channel_stats(view.device, tuple(mean), tuple(std))
            # torchvision's ToDtype(scale=True) and Normalize kernels, with the statistics
            # cached on the device (a new tensor from a list would be a host sync per step)
            view = view.to(torch.float32).mul_(1.0 / 255).sub_(m).div_(s)
        out.append(view)
    return out


@functools.lru_cache(maxsize=8)
def _channel_stats(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (-1, 1, 1)
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
        torch.tensor(std, dtype=torch.float32, device=device).view(shape),
    )


class ViewTransform:
    """Picklable ``PIL.Image -> list[Tensor]``: ``global`` views first, then ``local`` views.

    Build it with :func:`make_view_transform`. ``num_views`` is ``(global, local)`` as in
    ``SSLModel.num_views()``.
    """

    def __init__(
        self,
        global_transform: v2.Compose,
        num_global_views: int = 2,
        local_transform: v2.Compose | None = None,
        num_local_views: int = 0,
    ) -> None:
        if num_global_views < 1:
            raise ValueError(f"num_global_views must be >= 1, got {num_global_views}")
        if num_local_views < 0 or (num_local_views and local_transform is None):
            raise ValueError("num_local_views must be >= 0 and needs a local_transform")
        self.global_transform = global_transform
        self.local_transform = local_transform
        self.num_views = (num_global_views, num_local_views)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        image = to_rgb(image)
        views = [self.global_transform(image) for _ in range(self.num_views[0])]
        if self.local_transform is not None:
            views += [self.local_transform(image) for _ in range(self.num_views[1])]
        return views

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_views={self.num_views}, global={self.global_transform}, "
            f"local={self.local_transform})"
        )


def make_view_transform(
    method: str | type[SSLModel],
    image_size: int,
    *,
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
    uint8: bool = False,
) -> ViewTransform:
    """The SSL views of one registered method, as a picklable ``PIL.Image -> list[Tensor]``.

    The method's :meth:`~hub_cutinit.methods.base.SSLModel.view_spec` says whether it takes
    local crops and gives the crop scales and the local crop size; the arguments here override
    the counts and the scales.

    Two-view methods (``simclr``, ``moco``, ``byol``, ``simsiam``, paper §7):
    ``num_global_views`` (2) views of ``RandomResizedCrop(image_size, scale=(0.2, 1))``,
    horizontal flip, colour jitter ``(0.4, 0.4, 0.4, 0.1)`` with p 0.8, grayscale p 0.2, then
    ``ToImage``, ``ToDtype(float32)`` and ``Normalize(mean, std)`` (ImageNet statistics).

    Multi-crop methods (``dino``: its spec has local views): the same colour augmentations,
    global crops at ``image_size`` with the spec's scale ((0.4, 1) for DINO), then
    ``num_local_views`` (default 4, cheap; DINO used 6-10) local crops of the spec's
    ``local_scale`` ((0.05, 0.4)) and side ``local_size`` (default :func:`local_crop_size`:
    3/7 of ``image_size``, a multiple of 8, at least 16).

    Gaussian blur (``blur_p``) and solarisation (``solarize_p``) are off by default (at 32 px
    they mostly destroy the image); set them to follow BYOL / DINO more closely.

    Any PIL mode is accepted (see :func:`to_rgb`). Unregistered methods raise ``ValueError``.
    ``uint8=True`` stops after ``ToImage`` (uint8 views: a quarter of the bytes through the
    DataLoader and the host-to-device copy); :func:`normalize_views` finishes them on the device.

    Example:
        >>> from PIL import Image
        >>> t = make_view_transform("dino", 32, num_local_views=3)
        >>> [tuple(v.shape[-2:]) for v in t(Image.new("RGB", (28, 28)))]
        [(32, 32), (32, 32), (16, 16), (16, 16), (16, 16)]
        >>> t.num_views
        (2, 3)
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    cls = method if isinstance(method, type) else get_method_class(str(method).lower())
    spec = cls.view_spec()
    augment = functools.partial(
        _augment,
        mean=mean,
        std=std,
        hflip_p=hflip_p,
        color_jitter=color_jitter,
        jitter_p=jitter_p,
        grayscale_p=grayscale_p,
        blur_p=blur_p,
        solarize_p=solarize_p,
        uint8=uint8,
    )
    glob = augment(image_size, scale or spec.global_scale)
    if spec.num_local == 0:
        return ViewTransform(glob, num_global_views)
    size = local_size or local_crop_size(image_size, spec.local_size_fraction)
    local = augment(size, local_scale or spec.local_scale)
    return ViewTransform(glob, num_global_views, local, num_local_views)


class EvalTransform:
    """Picklable ``PIL.Image -> Tensor``: RGB, resize, centre crop, normalise.

    Build it with :func:`make_eval_transform`.
    """

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(to_rgb(image))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def make_eval_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    crop_pct: float = 1.0,
) -> EvalTransform:
    """Deterministic evaluation transform: shorter side to ``image_size / crop_pct``, centre crop.

    ``crop_pct=1.0`` (default) suits small images (CIFAR, Fashion-MNIST); use 0.875 for the
    ImageNet-style resize 256 / crop 224.

    Example:
        >>> from PIL import Image
        >>> make_eval_transform(224, crop_pct=0.875)(Image.new("L", (300, 400))).shape
        torch.Size([3, 224, 224])
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    resize = int(round(image_size / crop_pct))
    return EvalTransform(
        v2.Compose(
            [
                v2.Resize(resize, antialias=True),
                v2.CenterCrop(image_size),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(mean), std=list(std)),
            ]
        )
    )
