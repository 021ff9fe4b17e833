"""One module per SSL method; importing this package registers them all."""

from hub_cutinit.methods import byol, dino, moco, simclr
from hub_cutinit.methods.base import SSLModel, SSLOutput

__all__ = ["SSLModel", "SSLOutput", "byol", "dino", "moco", "simclr"]
