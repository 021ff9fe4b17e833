"""hub_cutinit: cut-initialisation for self-supervised vision models.

Example:
    >>> import timm
    >>> from hub_cutinit import cut_init, create_ssl_model
    >>> backbone = cut_init(timm.create_model("resnet18", num_classes=0), c=3)
    >>> model = create_ssl_model("byol", "resnet18")  # heads + teacher, cut with c = 9
"""

from hub_cutinit.cut import cut_init, cut_targets, get_cut_factor
from hub_cutinit.methods.base import SSLModel, SSLOutput
from hub_cutinit.registry import (
    create_backbone,
    create_ssl_model,
    get_method_defaults,
    list_methods,
    register_method,
)

__version__ = "0.1.0"

__all__ = [
    "SSLModel",
    "SSLOutput",
    "create_backbone",
    "create_ssl_model",
    "cut_init",
    "cut_targets",
    "get_cut_factor",
    "get_method_defaults",
    "list_methods",
    "register_method",
]


def __getattr__(name: str):
    # Heavier entry points load lazily so `import hub_cutinit` stays fast.
    if name in ("save_pretrained", "load_ssl_model", "push_to_hub"):
        from hub_cutinit import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'hub_cutinit' has no attribute {name!r}")
