"""Losses against plain re-implementations, and the gradient-preserving all-gather on 2 ranks."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hub_cutinit.losses import DINOLoss, NTXentLoss, moco_infonce, symmetric_negative_cosine


def naive_ntxent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n = z0.shape[0]
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] / t for k in range(2 * n) if k != i])
        losses.append(-(z[i] @ z[j] / t) + torch.logsumexp(sims, dim=0))
    return torch.stack(losses).mean()


def test_ntxent_matches_the_definition_and_its_gradient() -> None:
    torch.manual_seed(0)
    z0 = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    ours = NTXentLoss(0.5)(z0, z1)
    ref = naive_ntxent(z0.float(), z1.float(), 0.5).double()
    assert math.isclose(ours.item(), ref.item(), rel_tol=1e-5)
    g_ours = torch.autograd.grad(ours, [z0, z1])
    g_ref = torch.autograd.grad(naive_ntxent(z0, z1, 0.5), [z0, z1])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-4, atol=1e-6)


def test_ntxent_gradient_is_orthogonal_to_z_and_scales_as_one_over_norm() -> None:
    torch.manual_seed(1)
    z0, z1 = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    grads = []
    for scale in (1.0, 10.0):
        a = (scale * z0).requires_grad_(True)
        (g,) = torch.autograd.grad(NTXentLoss(0.5)(a, z1), [a])
        assert torch.allclose(
            (g.double() * a.double()).sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-6
        )
        grads.append(g)
    torch.testing.assert_close(grads[1] * 10, grads[0], rtol=1e-4, atol=1e-7)


def test_symmetric_negative_cosine_and_stop_gradient() -> None:
    torch.manual_seed(0)
    p0, p1, z0, z1 = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
    loss = symmetric_negative_cosine(p0, p1, z0, z1)
    ref = -0.5 * (F.cosine_similarity(p0, z1).mean() + F.cosine_similarity(p1, z0).mean())
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-6)
    loss.backward()
    assert z0.grad is None and z1.grad is None and p0.grad is not None


def test_moco_infonce_is_cross_entropy_with_positive_first() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    queue = F.normalize(torch.randn(10, 8), dim=1)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ queue.T], dim=1) / 0.2
    ref = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert math.isclose(moco_infonce(q, k, queue, 0.2).item(), ref.item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="queue must be"):
        moco_infonce(q, k, torch.randn(10, 3), 0.2)


def test_dino_loss_matches_definition_and_updates_center() -> None:
    torch.manual_seed(0)
    fn = DINOLoss(out_dim=6, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9)
    student = [torch.randn(3, 6) for _ in range(3)]
    teacher = [torch.randn(3, 6) for _ in range(2)]
    loss = fn(student, teacher)
    terms = []
    for ti, t in enumerate(teacher):
        p_t = F.softmax(t / 0.04, dim=-1)  # center was zero for this call
        for si, s in enumerate(student):
            if si != ti:
                terms.append((-p_t * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean())
    assert math.isclose(loss.item(), torch.stack(terms).mean().item(), rel_tol=1e-5)
    expected_center = 0.1 * torch.cat(teacher).mean(0, keepdim=True)
    torch.testing.assert_close(fn.center, expected_center)


def test_bad_shapes_name_the_problem() -> None:
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0)


# -- two processes (gloo) against one -----------------------------------------------------------


def _rank_worker(
    rank: int, world: int, init_file: str, z0: torch.Tensor, z1: torch.Tensor, out: dict
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = z0.shape[0] // world
        a = z0[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = NTXentLoss(0.5)(a, b)
        loss.backward()
        # DDP averages gradients over ranks; here each rank owns its rows, so the gradient of
        # the mean loss on its rows is grad / world summed over ranks' losses — all_gather's
        # backward already summed the other ranks' contributions onto ours.
        out[rank] = (loss.detach(), a.grad / world, b.grad / world)
    finally:
        dist.destroy_process_group()


def test_ntxent_two_processes_equal_one_process_with_the_whole_batch() -> None:
    torch.manual_seed(0)
    z0, z1 = torch.randn(8, 5), torch.randn(8, 5)
    a, b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
    full = NTXentLoss(0.5)(a, b)
    full.backward()
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        out = manager.dict()
        mp.spawn(_rank_worker, args=(2, os.path.join(tmp, "init"), z0, z1, out), nprocs=2)
        results = dict(out)
    mean_loss = (results[0][0] + results[1][0]) / 2
    assert math.isclose(mean_loss.item(), full.item(), rel_tol=1e-5)
    torch.testing.assert_close(
        torch.cat([results[0][1], results[1][1]]), a.grad, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        torch.cat([results[0][2], results[1][2]]), b.grad, rtol=1e-4, atol=1e-6
    )
