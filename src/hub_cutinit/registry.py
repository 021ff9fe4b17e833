"""The method registry: register SSL methods and create cut-initialised SSL models.

Example:
    >>> from hub_cutinit import create_ssl_model, get_method_defaults, list_methods
    >>> list_methods()
    ['byol', 'dino', 'moco', 'simclr', 'simsiam']
    >>> get_method_defaults("byol")["c"]
    9.0
    >>> model = create_ssl_model("simclr", "resnet18", c=1)
    >>> model.cut_init_c
    1.0
"""

from __future__ import annotations

import copy
import difflib
from typing import TYPE_CHECKING, Any

from torch import nn

from hub_cutinit.cut import cut_init, validate_c

if TYPE_CHECKING:
    from hub_cutinit.methods.base import SSLModel

__all__ = [
    "COMMON_DEFAULTS",
    "register_method",
    "list_methods",
    "get_method_class",
    "get_method_defaults",
    "create_ssl_model",
    "create_backbone",
]

#: Hyper-parameters every method accepts (methods add their own in ``defaults``).
COMMON_DEFAULTS: dict[str, Any] = {
    "grad_scale_power": 0.0,  # GradScale p (extended paper); 0 = standard training
    "cut_scope": "all",  # scope passed to cut_init
    "num_global_views": 2,
    "num_local_views": 0,
    "backbone_kwargs": {},  # extra keyword arguments for timm.create_model
    "momentum": None,  # EMA momentum of the teacher (momentum methods only)
    "warmup_fraction": 0.05,  # share of training spent in linear lr warm-up
    "sgd_momentum": 0.9,
}

_METHODS: dict[str, type[SSLModel]] = {}


def register_method(cls: type[SSLModel]) -> type[SSLModel]:
    """Class decorator adding an :class:`~hub_cutinit.methods.base.SSLModel` to the registry.

    The class must define ``name``, ``family`` (``"contrastive"`` or ``"non-contrastive"``) and
    ``defaults`` (with at least ``c``, ``weight_decay``, ``optimizer`` and ``base_lr``).

    Example:
        >>> from hub_cutinit.methods.simclr import SimCLR
        >>> @register_method
        ... class MySimCLR(SimCLR):
        ...     name = "my-simclr"
        >>> "my-simclr" in list_methods()
        True
        >>> _ = unregister_method("my-simclr")
    """
    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str):
        raise ValueError(f"{cls.__name__} needs a non-empty string class attribute `name`.")
    if cls.family not in ("contrastive", "non-contrastive"):
        raise ValueError(f"{cls.__name__}.family must be 'contrastive' or 'non-contrastive'.")
    missing = {"c", "weight_decay", "optimizer", "base_lr"} - set(cls.defaults)
    if missing:
        raise ValueError(f"{cls.__name__}.defaults lacks {sorted(missing)}.")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(
            f"A method named {name!r} is already registered ({_METHODS[name].__name__})."
        )
    _METHODS[name] = cls
    return cls


def unregister_method(name: str) -> type[SSLModel]:
    """Remove a method from the registry and return its class."""
    return _METHODS.pop(name)


def _ensure_builtin_methods() -> None:
    # Importing the modules runs their @register_method decorators.
    from hub_cutinit.methods import byol, dino, moco, simclr  # noqa: F401


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    _ensure_builtin_methods()
    return sorted(_METHODS)


def get_method_class(method: str) -> type[SSLModel]:
    """The :class:`SSLModel` subclass registered as ``method``."""
    _ensure_builtin_methods()
    if method not in _METHODS:
        close = difflib.get_close_matches(str(method), _METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown method {method!r}; known methods: {sorted(_METHODS)}.{hint}")
    return _METHODS[method]


def get_method_defaults(method: str) -> dict[str, Any]:
    """A copy of the method's default hyper-parameters, with its ``family``.

    Example:
        >>> d = get_method_defaults("simclr")
        >>> d["family"], d["c"], d["temperature"]
        ('contrastive', 3.0, 0.5)
    """
    cls = get_method_class(method)
    return {"family": cls.family, **copy.deepcopy(cls.defaults)}


def create_backbone(name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model with ``num_classes=0`` (pooled features), or a clear error for a bad name.

    Example:
        >>> create_backbone("resnet18").num_features
        512
    """
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        candidates = timm.list_models(f"*{name}*")[:8] if isinstance(name, str) else []
        candidates = candidates or difflib.get_close_matches(str(name), timm.list_models(), n=5)
        raise ValueError(
            f"Unknown timm backbone {name!r}. Pick a name from timm.list_models()"
            + (f", e.g. {candidates}." if candidates else ".")
        )
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)


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
        method: a registered method name (see :func:`list_methods`).
        backbone: a timm model name (created with ``num_classes=0``) or an ``nn.Module`` with an
            integer ``num_features``.
        c: the cut factor; ``None`` takes the method's default (3 contrastive, 9
            non-contrastive), ``1`` means no cut.
        pretrained: load timm's pretrained backbone weights (needs the internet or a cache).
        **overrides: hyper-parameters replacing the method's defaults
            (:func:`get_method_defaults` lists them).

    The cut is applied after the heads are built and before the momentum teacher is copied.

    Example:
        >>> m = create_ssl_model("byol", "resnet18", proj_hidden_dim=64, proj_dim=32)
        >>> m.cut_init_c, m.hparams["proj_dim"]
        (9.0, 32)
    """
    cls = get_method_class(method)
    defaults = copy.deepcopy(cls.defaults)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown hyper-parameter(s) {unknown} for method {method!r}; valid ones: "
            f"{sorted(defaults)}."
        )
    hparams = {**defaults, **overrides}
    c = validate_c(hparams["c"] if c is None else c)

    if isinstance(backbone, str):
        backbone_name: str | None = backbone
        module = create_backbone(
            backbone, pretrained=pretrained, **(hparams["backbone_kwargs"] or {})
        )
    elif isinstance(backbone, nn.Module):
        backbone_name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture")
        module = backbone
    else:
        raise ValueError(
            f"backbone must be a timm model name or an nn.Module, got {type(backbone).__name__}."
        )
    model = cls(module, hparams, backbone_name=backbone_name)
    cut_init(model, c, scope=hparams["cut_scope"])
    return model
