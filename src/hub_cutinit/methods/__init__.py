"""One module per SSL method; importing this package registers them all.

A method of your own subclasses :class:`SSLModel` and is decorated with
:func:`hub_cutinit.register_method`, exactly as the built-ins are.
"""

from hub_cutinit.methods import barlow_twins, byol, dino, moco, mocov3, simclr, vicreg
from hub_cutinit.methods.base import COMMON_DEFAULTS, RunSpec, SSLModel, SSLOutput, ViewSpec

__all__ = [
    "COMMON_DEFAULTS",
    "RunSpec",
    "SSLModel",
    "SSLOutput",
    "ViewSpec",
    "barlow_twins",
    "byol",
    "dino",
    "moco",
    "mocov3",
    "simclr",
    "vicreg",
]
