"""hub_cutinit: cut-initialisation for self-supervised vision models.

Importing the package registers the built-in methods (:mod:`hub_cutinit.methods`); the
registry (:mod:`hub_cutinit.registry`) is a leaf and :mod:`hub_cutinit.factory` builds models.

Example:
    >>> import timm
    >>> from hub_cutinit import cut_init, create_ssl_model
    >>> backbone = cut_init(timm.create_model("resnet18", num_classes=0), c=3)
    >>> model = create_ssl_model("byol", "resnet18")  # heads + teacher, cut with c = 9
    >>> get_display_name("byol"), list_methods()
    ('BYOL', ['barlow_twins', 'byol', 'dino', 'moco', 'mocov3', 'simclr', 'simsiam', 'vicreg'])
"""

import hub_cutinit.methods  # noqa: F401  (registers the built-in methods)
from hub_cutinit._version import __version__
from hub_cutinit.convergence_monitor import ConvergenceMonitor
from hub_cutinit.cut import cut_init, cut_targets, get_cut_factor
from hub_cutinit.factory import create_backbone, create_ssl_model
from hub_cutinit.methods.base import SSLModel, SSLOutput, ViewSpec
from hub_cutinit.registry import (
    get_display_name,
    get_method_class,
    get_method_defaults,
    get_preset,
    list_methods,
    register_method,
    unregister_method,
)

__all__ = [
    "ConvergenceMonitor",
    "SSLModel",
    "SSLOutput",
    "ViewSpec",
    "__version__",
    "create_backbone",
    "create_ssl_model",
    "cut_init",
    "cut_targets",
    "get_cut_factor",
    "get_display_name",
    "get_method_class",
    "get_method_defaults",
    "get_preset",
    "list_methods",
    "register_method",
    "unregister_method",
]


def __getattr__(name: str):
    # Heavier entry points load lazily so `import hub_cutinit` stays fast.
    if name in ("save_pretrained", "load_ssl_model", "push_to_hub"):
        from hub_cutinit import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'hub_cutinit' has no attribute {name!r}")
