"""Distributed evaluation (issue 16, item 2): 2 CPU processes (gloo) give the kNN accuracy of 1.

Each process extracts the features of its share of the bank and test sets; the shares are
gathered (each example once) and the kNN runs on the training device. LayerNorm ``test_vit``
backbone, so no BatchNorm statistics can differ. ~30 s on one thread.
"""

from __future__ import annotations

import torch
from proc_group import run_processes

from hub_cutinit.data import build_eval_loaders, shard_eval_loader
from hub_cutinit.evaluation import gather_rows

SAMPLES = 60  # per evaluation set: 30 + 30 over two processes


def _evaluate(rank: int, world: int, state: dict) -> dict:
    from hub_cutinit.training import TrainConfig, Trainer

    cfg = TrainConfig(
        method="simclr",
        backbone="test_vit",
        image_size=32,
        batch_size=8,
        eval_max_samples=SAMPLES,
        knn_k=5,
        overrides={"backbone_kwargs": {"img_size": 32}},
        convergence_monitor=False,
    )
    trainer = Trainer(cfg)
    trainer.setup_accelerator()
    assert trainer.accelerator.num_processes == world
    trainer.setup_model()
    trainer.raw_model.load_state_dict(state)
    trainer.setup_data()
    share = [sum(len(b["label"]) for b in loader) for loader in trainer.eval_sets]
    model = trainer.evaluate_knn(trainer.raw_model.backbone, probe=True)
    pixels = trainer.evaluate_knn(torch.nn.Flatten())
    return {"share": share, "model": model, "pixels": pixels}


def test_two_processes_give_the_knn_accuracy_of_one() -> None:
    from hub_cutinit import create_ssl_model

    torch.manual_seed(0)
    kwargs = {"backbone_kwargs": {"img_size": 32}}
    state = create_ssl_model("simclr", "test_vit", **kwargs).state_dict()
    (one,) = run_processes(_evaluate, 1, state)
    two = run_processes(_evaluate, 2, state)
    assert one["share"] == [SAMPLES, SAMPLES]
    assert [r["share"] for r in two] == [[SAMPLES // 2] * 2] * 2  # the work is split
    for r in two:  # gathered: every example once, the same result on every process
        assert r["model"]["eval_train_samples"] == r["model"]["eval_test_samples"] == SAMPLES
        assert r["model"]["knn_accuracy"] == one["model"]["knn_accuracy"]
        assert r["pixels"]["knn_accuracy"] == one["pixels"]["knn_accuracy"]
        assert (
            abs(r["model"]["linear_probe_accuracy"] - one["model"]["linear_probe_accuracy"]) < 0.05
        )
    assert 0 < one["pixels"]["knn_accuracy"] <= 1


def _gather(rank: int, world: int) -> tuple:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    rows = torch.full((rank + 1, 2), float(rank))  # 1 row on rank 0, 2 on rank 1
    bank, _ = build_eval_loaders("builtin", image_size=8, max_samples=7, batch_size=4)
    part = shard_eval_loader(bank, rank, world)
    ids = torch.cat([b["id"] for b in part])
    return gather_rows(rows, acc).tolist(), sorted(gather_rows(ids, acc).tolist())


def test_gather_rows_has_no_padding_or_duplicate_rows() -> None:
    (rows, ids), (rows_1, ids_1) = run_processes(_gather, 2)
    bank, _ = build_eval_loaders("builtin", image_size=8, max_samples=7, batch_size=4)
    assert rows == rows_1 == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert ids == ids_1 == sorted(i for b in bank for i in b["id"].tolist())  # 4 + 3 rows


def test_automatic_eval_period_keeps_evaluation_a_small_share() -> None:
    from accelerate import Accelerator

    from hub_cutinit.training import TrainConfig, Trainer
    from hub_cutinit.training.default_callbacks import EVAL_SHARE, EvaluationCallback

    trainer = Trainer(TrainConfig(method="simclr", backbone="test_vit"))
    assert trainer.cfg.eval_every_epochs is None  # the default is automatic
    trainer.accelerator = Accelerator(cpu=True)
    cadence = trainer.callbacks.get(EvaluationCallback)
    assert [cadence.due_at_epoch(trainer.cfg, e) for e in (1, 2)] == [True, True]  # until timed
    trainer.state.epoch, trainer.state.train_seconds = 2, 10.0  # 5 s per epoch
    # a 2 s evaluation: 2 / (4 * 5) = EVAL_SHARE
    cadence.on_evaluate(trainer, trainer.state, None, metrics={"seconds": 2.0})
    assert cadence.period == 4 and 2.0 / (4 * 5.0) <= EVAL_SHARE
    assert [e for e in range(3, 12) if cadence.due_at_epoch(trainer.cfg, e)] == [6, 7, 8, 9, 10, 11]
    assert cadence.state_dict() == {"period": 4, "last_epoch": 2}  # kept in checkpoints
    fixed = Trainer(TrainConfig(method="simclr", backbone="test_vit", eval_every_epochs=1))
    fixed.accelerator, fixed.state = trainer.accelerator, trainer.state
    fixed_cadence = fixed.callbacks.get(EvaluationCallback)
    fixed_cadence.on_evaluate(fixed, fixed.state, None, metrics={"seconds": 2.0})
    assert fixed_cadence.period == 1 and fixed_cadence.due_at_epoch(fixed.cfg, 3)  # N is kept
