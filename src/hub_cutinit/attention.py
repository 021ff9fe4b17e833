"""Attention entropy of timm ViTs: how far from uniform is each block's attention?

The cut divides LayerNorm's affine, the query/key projections and the patch embedding by ``c``,
so queries and keys shrink by about ``c²`` each and the attention logits by about ``c⁴``;
:func:`attention_entropy` measures what that does to the softmax attention, per block, in nats.
Uniform attention over ``N`` tokens has entropy ``log N`` (:func:`uniform_entropy`).

The statistics come from a forward hook on each timm ``Attention`` module's ``qkv``
projection: its output is reshaped into queries and keys exactly as timm's ``Attention.forward``
does (with ``q_norm`` / ``k_norm`` and the ``head_dim ** -0.5`` scale) and the softmax is
recomputed on the side, so the model's fused kernel (``scaled_dot_product_attention``) and its
output are untouched.

Example:
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2,
    ...                         num_classes=0).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> h = attention_entropy(vit, x)
    >>> len(h), all(0 < v <= uniform_entropy(vit, x) + 1e-6 for v in h)
    (2, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

__all__ = [
    "AttentionStats",
    "attention_entropy",
    "attention_modules",
    "attention_stats",
    "recording_attention",
    "uniform_entropy",
]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every timm self-attention with a fused ``qkv`` projection, in order.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=0)
        >>> [name for name, _ in attention_modules(vit)]
        ['blocks.0.attn', 'blocks.1.attn']
        >>> attention_modules(timm.create_model("resnet18"))
        []
    """
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
        and isinstance(getattr(module, "head_dim", None), int)
    ]


@dataclass
class AttentionStats:
    """Per-block statistics of the softmax attention, averaged over the forward calls seen.

    ``names``: the attention modules in block order; ``entropy``: mean over images, heads and
    query tokens of the attention entropy (nats); ``logit_std``: standard deviation of the
    scaled logits ``q·k/√d``; ``tokens``: the number of tokens ``N`` of the last call (uniform
    attention has entropy ``log N``).
    """

    names: list[str] = field(default_factory=list)
    tokens: int = 0
    calls: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, name: str, entropy: float, logit_std: float, tokens: int) -> None:
        """Record one forward call of block ``name``."""
        if name not in self.calls:
            self.names.append(name)
            self.calls[name] = []
        self.calls[name].append((entropy, logit_std))
        self.tokens = tokens

    @property
    def entropy(self) -> list[float]:
        """Mean attention entropy per block (nats)."""
        return [sum(e for e, _ in self.calls[n]) / len(self.calls[n]) for n in self.names]

    @property
    def logit_std(self) -> list[float]:
        """Mean (over calls) standard deviation of the scaled attention logits per block."""
        return [sum(s for _, s in self.calls[n]) / len(self.calls[n]) for n in self.names]


def _qk(module: nn.Module, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys ``(B, heads, N, head_dim)`` from the ``qkv`` output, as timm does."""
    b, n, _ = qkv.shape
    heads, head_dim = cast(int, module.num_heads), cast(int, module.head_dim)
    parts = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k = parts[0], parts[1]
    q_norm: Callable[[torch.Tensor], torch.Tensor] = getattr(module, "q_norm", nn.Identity())
    k_norm: Callable[[torch.Tensor], torch.Tensor] = getattr(module, "k_norm", nn.Identity())
    return q_norm(q), k_norm(k)


def _block_stats(module: nn.Module, qkv: torch.Tensor) -> tuple[float, float, int]:
    """``(mean entropy, logit std, tokens)`` of one attention block's softmax."""
    q, k = (t.double() for t in _qk(module, qkv.detach()))  # float64: deficits << 1e-7
    scale = float(getattr(module, "scale", q.shape[-1] ** -0.5))
    logits = (q * scale) @ k.transpose(-2, -1)
    log_p = logits.log_softmax(dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return float(entropy.mean()), float(logits.std()), int(logits.shape[-1])


@contextmanager
def recording_attention(model: nn.Module) -> Iterator[AttentionStats]:
    """Within the block, every forward call of ``model`` adds to the yielded
    :class:`AttentionStats`; the hooks are removed on exit. The model's outputs are unchanged.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1,
        ...                         num_classes=0).eval()
        >>> with recording_attention(vit) as stats, torch.no_grad():
        ...     for _ in range(2):
        ...         _ = vit(torch.randn(2, 3, 32, 32))
        >>> stats.names, len(stats.calls["blocks.0.attn"]), stats.tokens
        (['blocks.0.attn'], 2, 65)
    """
    modules = attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no timm self-attention block (a module with a `qkv` "
            "Linear, `num_heads` and `head_dim`); attention entropy is for ViT-like models."
        )
    stats = AttentionStats()
    hooks = []
    for name, module in modules:

        def hook(_lin: nn.Module, _inp: object, out: torch.Tensor, m=module, n=name) -> None:
            stats.add(n, *_block_stats(m, out))

        hooks.append(cast(nn.Module, module.qkv).register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in hooks:
            handle.remove()


@torch.no_grad()
def attention_stats(model: nn.Module, images: torch.Tensor) -> AttentionStats:
    """Run ``model(images)`` once (in its current mode) and return its :class:`AttentionStats`.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1,
        ...                         num_classes=0).eval()
        >>> s = attention_stats(vit, torch.randn(2, 3, 32, 32))
        >>> s.names, s.tokens, s.logit_std[0] > 0
        (['blocks.0.attn'], 65, True)
    """
    with recording_attention(model) as stats:
        model(images)
    return stats


def attention_entropy(model: nn.Module, images: torch.Tensor) -> list[float]:
    """Per-block attention entropy in nats (mean over images, heads and query tokens).

    Compare with :func:`uniform_entropy` (``log N``): the closer, the more uniform.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1,
        ...                         num_classes=0).eval()
        >>> [round(h, 1) for h in attention_entropy(vit, torch.randn(2, 3, 32, 32))]
        [4.2]
    """
    return attention_stats(model, images).entropy


def uniform_entropy(model: nn.Module, images: torch.Tensor) -> float:
    """``log N``: the entropy of uniform attention over the ``N`` tokens ``model`` sees.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1,
        ...                         num_classes=0).eval()
        >>> round(uniform_entropy(vit, torch.randn(1, 3, 32, 32)), 3)  # log 65
        4.174
    """
    return math.log(attention_stats(model, images[:1]).tokens)
