"""Precise BatchNorm: re-estimate a network's running statistics before evaluating it.

Cut-initialisation divides the weights by ``c`` but not BatchNorm's running variance, which
starts at 1 while a cut network's true pre-BN variance is about ``c⁻⁴``; with momentum 0.1 the
initial value still weighs ``0.9ᵗ`` after ``t`` steps. Eval-mode features taken early in a run
are then normalised with statistics that belong to another network. :func:`precise_bn` returns a
copy whose running statistics are the plain average over a few batches of training images
(``torch.optim.swa_utils.update_bn``), so an evaluation sees the network as it is now. The
weights are untouched and the original model is not changed.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    >>> batches = [{"image": torch.randn(16, 4) * 5, "label": torch.zeros(16)} for _ in range(4)]
    >>> fresh = precise_bn(net, batches, num_batches=4)
    >>> bool(net[1].running_var.mean() == 1), bool(fresh[1].running_var.mean() > 2)
    (True, True)
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from hub_cutinit.data import normalize_views

__all__ = ["has_batchnorm", "precise_bn"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer that tracks running statistics."""
    return any(isinstance(m, _BATCHNORMS) and m.track_running_stats for m in model.modules())


def _images(batches: Iterable[Any], num_batches: int, device: torch.device) -> Iterator:
    """The first ``num_batches`` batches' images, on ``device``, normalised as training's."""
    for batch in itertools.islice(batches, num_batches):
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        images = torch.as_tensor(images).to(device)
        if images.dtype == torch.uint8:  # the loaders' uint8 views: as training normalises
            images = normalize_views([images])[0]
        yield images


def precise_bn(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    num_batches: int = 8,
    device: torch.device | str | None = None,
) -> nn.Module:
    """A copy of ``model`` with every BatchNorm's running statistics re-estimated.

    Args:
        model: the network (a backbone); left unchanged.
        batches: batches of images (dicts with ``"image"``, or ``(images, labels)``), uint8
            (normalised as training does) or float (used as they are).
        num_batches: how many batches to average over (equal weights).
        device: where to run; default: the model's device.

    Returns:
        The copy, in eval mode; ``model`` itself when it has no BatchNorm.
    """
    if not has_batchnorm(model):
        return model
    param = next(model.parameters(), None)
    device = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        update_bn(_images(batches, num_batches, device), fresh)
    return fresh.eval()
