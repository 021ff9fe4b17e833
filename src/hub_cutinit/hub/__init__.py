"""Save SSL models in timm's format, render their model card, push them, load them back.

``model.safetensors`` + ``config.json`` are a plain timm checkpoint (``timm.create_model(
"hf-hub:user/repo", pretrained=True)`` and transformers' ``AutoModel`` load the backbone without
hub_cutinit); ``ssl_heads.safetensors`` and the ``hub_cutinit`` block of ``config.json`` hold the
rest (heads, teacher, c, λ, norm statistics, evaluation).

Example:
    >>> import tempfile
    >>> from hub_cutinit import create_ssl_model
    >>> from hub_cutinit.hub import load_ssl_model, save_pretrained
    >>> model = create_ssl_model("simsiam", "resnet18", proj_hidden_dim=64, proj_dim=32,
    ...                          pred_hidden_dim=16)
    >>> out = save_pretrained(model, tempfile.mkdtemp() + "/simsiam", training_info={"epochs": 1})
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'config.json', 'model.safetensors', 'ssl_heads.safetensors']
    >>> load_ssl_model(out).cut_init_c
    9.0
"""

from hub_cutinit.hub.card import render_model_card
from hub_cutinit.hub.cli import register_cli
from hub_cutinit.hub.format import (
    BACKBONE_WEIGHTS_NAME,
    BLOCK_KEY,
    CARD_NAME,
    CONFIG_NAME,
    FORMAT_VERSION,
    HEADS_WEIGHTS_NAME,
    PLOT_NAME,
)
from hub_cutinit.hub.push import HubAuthError, HubError, push_to_hub
from hub_cutinit.hub.serialization import load_ssl_model, save_pretrained

__all__ = [
    "save_pretrained",
    "load_ssl_model",
    "push_to_hub",
    "render_model_card",
    "register_cli",
    "HubError",
    "HubAuthError",
    "FORMAT_VERSION",
    "BLOCK_KEY",
    "CONFIG_NAME",
    "BACKBONE_WEIGHTS_NAME",
    "HEADS_WEIGHTS_NAME",
    "CARD_NAME",
    "PLOT_NAME",
]
