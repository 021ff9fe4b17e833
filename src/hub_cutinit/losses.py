"""The cosine-similarity losses of self-supervised learning.

Every loss here sees only l2-normalised embeddings, so (PAPER §1) its gradient with respect to a
raw embedding ``z`` is orthogonal to ``z`` and scales as ``1 / ‖z‖``. Inputs are raw embeddings;
normalisation happens inside.

Example:
    >>> import torch
    >>> z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    >>> loss = NTXentLoss(temperature=0.5)(z0, z1)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hub_cutinit.distributed import all_reduce_mean, gather_with_grad, rank

__all__ = [
    "NTXentLoss",
    "negative_cosine_similarity",
    "symmetric_negative_cosine",
    "moco_infonce",
    "DINOLoss",
    "fp32",
]


def fp32(tensor: torch.Tensor) -> torch.autocast:
    """A context that switches autocast off on ``tensor``'s device, so the similarity matmuls
    inside run in fp32 even under bf16/fp16 mixed precision (inputs must be ``.float()``-ed:
    under autocast a matmul of fp32 tensors still runs in the low precision).

    Example:
        >>> import torch
        >>> a = torch.randn(2, 3)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16), fp32(a):
        ...     (a @ a.T).dtype
        torch.float32
    """
    return torch.autocast(tensor.device.type, enabled=False)


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{names} must be 2-D tensors of the same shape (batch, dim), got {tuple(a.shape)} "
            f"and {tuple(b.shape)}; pass the embeddings of two views of the same images."
        )


class NTXentLoss(nn.Module):
    """NT-Xent / InfoNCE loss of SimCLR with negatives from every process.

    For each anchor (a row of either view) the positive is the other view of the same image and
    the candidates are every other row of both views, gathered from all processes with a
    gradient-preserving all-gather. The loss is the mean over this process's ``2B`` anchors, so
    averaging gradients over processes (DDP) equals one process with the whole batch.

    Args:
        temperature: softmax temperature τ (SimCLR uses 0.5 at CIFAR scale, 0.1–0.2 on ImageNet).
        gather_distributed: take negatives from every process (needs equal batch sizes).

    Example:
        >>> import torch
        >>> z = torch.randn(4, 8)
        >>> float(NTXentLoss(0.5)(z, z)) < float(NTXentLoss(0.5)(z, torch.randn(4, 8)))
        True
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        _check_pair(z0, z1, "z0 and z1")
        with fp32(z0):  # the logits in fp32 under autocast (bf16: ~2 % gradient error at τ=0.1)
            return self._loss(z0, z1)

    def _loss(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        batch = z0.shape[0]
        z0, z1 = F.normalize(z0.float(), dim=1), F.normalize(z1.float(), dim=1)
        if self.gather_distributed:
            all0, all1 = gather_with_grad(z0), gather_with_grad(z1)
            offset = rank() * batch if all0.shape[0] != batch else 0
        else:
            all0, all1, offset = z0, z1, 0
        total = all0.shape[0]
        index = torch.arange(batch, device=z0.device) + offset
        self_mask = F.one_hot(index, total).bool()
        t = self.temperature
        logits_00 = (z0 @ all0.T / t).masked_fill(self_mask, float("-inf"))
        logits_01 = z0 @ all1.T / t
        logits_10 = z1 @ all0.T / t
        logits_11 = (z1 @ all1.T / t).masked_fill(self_mask, float("-inf"))
        logits = torch.cat(
            [torch.cat([logits_01, logits_00], dim=1), torch.cat([logits_10, logits_11], dim=1)]
        )
        labels = torch.cat([index, index])
        return F.cross_entropy(logits, labels)


def negative_cosine_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``−mean cos(p, stopgrad(z))``: the BYOL / SimSiam term.

    Example:
        >>> import torch
        >>> x = torch.randn(3, 5)
        >>> round(float(negative_cosine_similarity(x, 2 * x)), 5)
        -1.0
    """
    _check_pair(p, z, "p and z")
    with fp32(p):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def symmetric_negative_cosine(
    p0: torch.Tensor, p1: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor
) -> torch.Tensor:
    """``−½[cos(p0, sg(z1)) + cos(p1, sg(z0))]`` (PAPER §7), averaged over the batch.

    Example:
        >>> import torch
        >>> p, z = torch.randn(4, 6), torch.randn(4, 6)
        >>> bool(symmetric_negative_cosine(p, p, z, z) >= -1)
        True
    """
    return 0.5 * (negative_cosine_similarity(p0, z1) + negative_cosine_similarity(p1, z0))


def moco_infonce(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo's InfoNCE: the positive is the momentum key, the negatives the queue.

    Args:
        query: raw student embeddings ``(B, d)``.
        key: momentum-encoder embeddings ``(B, d)`` (no gradient flows into them).
        queue: ``(K, d)`` l2-normalised keys of earlier batches.
        temperature: softmax temperature τ.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> q = torch.randn(4, 8)
        >>> bank = F.normalize(torch.randn(16, 8), dim=1)
        >>> moco_infonce(q, q, bank, 0.2).shape
        torch.Size([])
    """
    _check_pair(query, key, "query and key")
    if queue.ndim != 2 or queue.shape[1] != query.shape[1]:
        raise ValueError(f"queue must be (K, {query.shape[1]}), got {tuple(queue.shape)}.")
    with fp32(query):
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(key.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ queue.detach().float().T
        logits = torch.cat([positive, negative], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class DINOLoss(nn.Module):
    """DINO's cross-entropy between a centred, sharpened teacher and the student.

    The teacher's distribution is ``softmax((t − center) / τ_t)``, the student's
    ``softmax(s / τ_s)``; the loss averages ``−Σ p_t log p_s`` over every pair of different
    views (teacher sees only the global views). The center is an EMA of the teacher's mean
    output over all processes, updated after each call in training mode.

    Args:
        out_dim: number of prototypes (the DINO head's output size).
        teacher_temp: final teacher temperature τ_t.
        warmup_teacher_temp: τ_t at the start of training, linearly raised to ``teacher_temp``
            over the first ``warmup_teacher_temp_fraction`` of training (``progress``).
        student_temp: student temperature τ_s.
        center_momentum: EMA momentum of the center.

    Example:
        >>> import torch
        >>> loss_fn = DINOLoss(out_dim=16)
        >>> s = [torch.randn(2, 16) for _ in range(4)]
        >>> t = [torch.randn(2, 16) for _ in range(2)]
        >>> loss_fn(s, t).shape
        torch.Size([])
    """

    center: torch.Tensor  # a buffer: (1, out_dim)

    def __init__(
        self,
        out_dim: int,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_fraction: float = 0.3,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_fraction = warmup_teacher_temp_fraction
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.progress = 0.0

    def current_teacher_temp(self) -> float:
        """Teacher temperature at the current training progress."""
        if self.warmup_teacher_temp_fraction <= 0:
            return self.teacher_temp
        frac = min(1.0, self.progress / self.warmup_teacher_temp_fraction)
        return self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp)

    def forward(
        self, student_out: Sequence[torch.Tensor], teacher_out: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if len(student_out) < 2 or not 1 <= len(teacher_out) <= len(student_out):
            raise ValueError(
                "DINOLoss needs at least two student views and between one and that many teacher "
                f"(global) views; got {len(student_out)} and {len(teacher_out)}."
            )
        with fp32(student_out[0]):
            return self._loss(student_out, teacher_out)

    def _loss(
        self, student_out: Sequence[torch.Tensor], teacher_out: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        teacher_probs = [
            F.softmax((t.detach().float() - self.center) / self.current_teacher_temp(), dim=-1)
            for t in teacher_out
        ]
        student_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        total, terms = student_logp[0].new_zeros(()), 0
        for ti, p_t in enumerate(teacher_probs):
            for si, logp_s in enumerate(student_logp):
                if si == ti:
                    continue
                total = total + torch.sum(-p_t * logp_s, dim=-1).mean()
                terms += 1
        if self.training:
            self.update_center(torch.cat([t.detach().float() for t in teacher_out]))
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA update of the center with the teacher's mean output over every process."""
        batch_center = all_reduce_mean(teacher_output.mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
