"""Two CPU processes (gloo) with batch B each = one process with batch 2B on the same samples."""

from __future__ import annotations

import pytest
import torch
from proc_group import run_processes

# test_vit has LayerNorm only: without BatchNorm the per-process batch statistics cannot differ,
# so the equivalence is exact up to float rounding. (BatchNorm models need SyncBatchNorm, which
# the trainer enables on multi-GPU runs; it does not exist on CPU.)
BACKBONE_KWARGS = {"img_size": 32}
CASES = {
    "simclr": {"backbone_kwargs": BACKBONE_KWARGS},
    "byol": {
        "backbone_kwargs": BACKBONE_KWARGS,
        "head_batch_norm": False,
        "proj_hidden_dim": 64,
        "proj_dim": 32,
        "pred_hidden_dim": 16,
    },
}


def _one_step(rank: int, world: int, method: str, views: list[torch.Tensor], state: dict) -> tuple:
    from hub_cutinit.training import TrainConfig, Trainer

    torch.manual_seed(0)
    batch = views[0].shape[0] // world
    cfg = TrainConfig(
        method=method,
        backbone="test_vit",
        batch_size=batch,
        optimizer="sgd",
        lr=0.5,
        weight_decay=5e-4,
        warmup_epochs=0,
        overrides=CASES[method],
        convergence_monitor=False,
    )
    trainer = Trainer(cfg)
    trainer.setup_accelerator()
    assert trainer.accelerator.num_processes == world
    trainer.setup_model()
    trainer.raw_model.load_state_dict(state)
    trainer.setup_optimizer(total_steps=10)
    local = [v[rank * batch : (rank + 1) * batch] for v in views]
    result = trainer.training_step(local)  # forward, backward, step, EMA: the trainer's own step
    raw = trainer.raw_model
    return result.log["loss"], {k: v.detach().clone() for k, v in raw.state_dict().items()}


@pytest.mark.parametrize("method", list(CASES))
def test_two_processes_equal_one_process_with_twice_the_batch(method: str) -> None:
    from hub_cutinit import create_ssl_model

    torch.manual_seed(0)
    state = create_ssl_model(method, "test_vit", **CASES[method]).state_dict()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]

    ((loss_one, params_one),) = run_processes(_one_step, 1, method, views, state)
    (loss_a, params_a), (loss_b, params_b) = run_processes(_one_step, 2, method, views, state)

    assert loss_a == loss_b  # reduced across processes
    assert loss_a == pytest.approx(loss_one, rel=1e-5)
    changed = 0
    for name, before in state.items():
        torch.testing.assert_close(params_a[name], params_b[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(params_a[name], params_one[name], rtol=1e-4, atol=1e-6, msg=name)
        changed += int(not torch.equal(params_one[name], before))
    assert changed > len(state) // 2  # the step really updated the model (and the teacher)
