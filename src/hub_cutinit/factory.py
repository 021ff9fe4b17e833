"""Build SSL models from the registry: a timm backbone, the method's heads, then the cut.

Like timm's ``_factory.py``, this module asks :mod:`hub_cutinit.registry` for the method class
and never names a method itself; importing :mod:`hub_cutinit.methods` only makes sure the
built-in methods are registered.

Example:
    >>> from hub_cutinit.factory import create_ssl_model
    >>> model = create_ssl_model("simclr", "resnet18", c=1)
    >>> model.cut_init_c
    1.0
"""

from __future__ import annotations

import copy
import difflib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import hub_cutinit.methods  # noqa: F401  (registers the built-in methods)
from hub_cutinit.cut import cut_init, validate_c
from hub_cutinit.registry import get_method_class

if TYPE_CHECKING:
    from hub_cutinit.methods.base import SSLModel

__all__ = [
    "backbone_kwargs_for",
    "create_backbone",
    "create_ssl_model",
    "supports_dynamic_img_size",
]


def create_backbone(name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model with ``num_classes=0`` (pooled features), or a clear error for a bad name.

    Example:
        >>> create_backbone("resnet18").num_features
        512
    """
    import timm

    _check_timm_name(name)
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)


def _check_timm_name(name: object) -> None:
    """Raise a ValueError naming close timm models when ``name`` is not one."""
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        candidates = timm.list_models(f"*{name}*")[:8] if isinstance(name, str) else []
        candidates = candidates or difflib.get_close_matches(str(name), timm.list_models(), n=5)
        raise ValueError(
            f"Unknown timm backbone {name!r}. Pick a name from timm.list_models()"
            + (f", e.g. {candidates}." if candidates else ".")
        )


def supports_dynamic_img_size(name: str, **kwargs: Any) -> bool:
    """Whether the timm model ``name`` (built with ``kwargs``) takes ``dynamic_img_size=True``
    and does not have it on yet: timm's ViTs and relatives (``VisionTransformer``, DeiT, EVA,
    Swin). The probe is built on the meta device (no memory, no download).

    Example:
        >>> supports_dynamic_img_size("vit_tiny_patch16_224"), supports_dynamic_img_size("resnet18")
        (True, False)
    """
    import timm

    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception:  # some models cannot be built on the meta device: build on the CPU
        probe = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    return getattr(probe, "dynamic_img_size", None) is False


def backbone_kwargs_for(cls: type[SSLModel], name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """The timm keyword arguments of the backbone ``name`` for a method with ``hparams``.

    ``hparams["backbone_kwargs"]``, plus ``dynamic_img_size=True`` when the method trains on
    local views (multi-crop: smaller than the global ones) and the backbone is a timm ViT that
    would otherwise refuse any input size but the one it was built for. A value the user set
    is kept. The result goes back into ``hparams`` so the saved ``config.json``
    (``model_args``) rebuilds the same model.

    Example:
        >>> from hub_cutinit.methods.dino import DINO
        >>> hp = {**DINO.defaults, "backbone_kwargs": {"img_size": 32, "patch_size": 4}}
        >>> backbone_kwargs_for(DINO, "vit_tiny_patch16_224", hp)
        {'img_size': 32, 'patch_size': 4, 'dynamic_img_size': True}
        >>> backbone_kwargs_for(DINO, "resnet18", {**DINO.defaults})
        {}
    """
    kwargs = dict(hparams.get("backbone_kwargs") or {})
    if (
        cls.view_spec(hparams).num_local > 0
        and "dynamic_img_size" not in kwargs
        and supports_dynamic_img_size(name, **kwargs)
    ):
        kwargs["dynamic_img_size"] = True
    return kwargs


def _resolve_hparams(cls: type[SSLModel], method: str, overrides: dict[str, Any]) -> dict:
    defaults = copy.deepcopy(cls.defaults)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown hyper-parameter(s) {unknown} for method {method!r}; valid ones: "
            f"{sorted(defaults)}."
        )
    return {**defaults, **overrides}


def create_ssl_model(
    method: str,
    backbone: str | nn.Module,
    *,
    c: float | None = None,
    pretrained: bool = False,
    **overrides: Any,
) -> SSLModel:
    """Build a method's SSL model around a backbone and cut-initialise it.

    Args:
        method: a registered method name (see :func:`hub_cutinit.list_methods`).
        backbone: a timm model name (created with ``num_classes=0``) or an ``nn.Module`` with an
            integer ``num_features``.
        c: the cut factor; ``None`` takes the method's default (3 contrastive, 9
            non-contrastive), ``1`` means no cut.
        pretrained: load timm's pretrained backbone weights (needs the internet or a cache).
        **overrides: hyper-parameters replacing the method's defaults
            (:func:`hub_cutinit.get_method_defaults` lists them; :func:`hub_cutinit.registry.get_preset`
            gives named sets such as ``"cpu"``).

    The cut is applied after the heads are built and before the momentum teacher is copied.

    Example:
        >>> m = create_ssl_model("byol", "resnet18", proj_hidden_dim=64, proj_dim=32)
        >>> m.cut_init_c, m.hparams["proj_dim"]
        (9.0, 32)
    """
    cls = get_method_class(method)
    hparams = _resolve_hparams(cls, method, overrides)
    c = validate_c(hparams["c"] if c is None else c)

    if isinstance(backbone, str):
        backbone_name: str | None = backbone
        _check_timm_name(backbone)
        hparams["backbone_kwargs"] = backbone_kwargs_for(cls, backbone, hparams)
        module = create_backbone(backbone, pretrained=pretrained, **hparams["backbone_kwargs"])
    elif isinstance(backbone, nn.Module):
        backbone_name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture")
        module = backbone
    else:
        raise ValueError(
            f"backbone must be a timm model name or an nn.Module, got {type(backbone).__name__}."
        )
    model = cls(module, hparams, backbone_name=backbone_name)
    cut_init(model, c, scope=hparams["cut_scope"], spare=hparams.get("cut_spare") or ())
    return model
