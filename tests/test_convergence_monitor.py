"""ConvergenceMonitor in a plain PyTorch loop, its transformers.Trainer callback, its state."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hub_cutinit import ConvergenceMonitor
from hub_cutinit.convergence_monitor import default_embed
from hub_cutinit.monitor import StepAngleMonitor, angle_between


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class MLP(nn.Module):
    """Linear → BatchNorm → ReLU → Dropout → Linear: running statistics and RNG use to protect."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(32, 8)

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.drop(F.relu(self.bn(self.fc1(x))))
        return {"backbone": h, "projection": self.fc2(h)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)["projection"]


def _data(steps: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 16, generator=g), torch.randint(0, 8, (32,), generator=g))]
    batches += [
        (torch.randn(32, 16, generator=g), torch.randint(0, 8, (32,), generator=g))
        for _ in range(steps - 1)
    ]
    return batches, torch.randn(24, 16, generator=g)


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in model.named_buffers()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _direct(before: nn.Module, after: nn.Module, probe: torch.Tensor) -> dict[str, float]:
    """The monitor's reading computed by hand on copies of the model before and after a step."""
    zs = []
    for model in (copy.deepcopy(before), copy.deepcopy(after)):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the monitor's seed: the same dropout masks in both forwards
            zs.append(model.embed(probe))
    out = {}
    for name in zs[0]:
        out[f"angle/{name}"] = angle_between(zs[0][name], zs[1][name]).mean().item()
        out[f"norm/{name}"] = zs[0][name].double().norm(dim=1).mean().item()
    return out


def _train(every: int | None, steps: int = 12) -> tuple[nn.Module, list[float], Any]:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches, probe = _data(steps)
    monitor = ConvergenceMonitor(model, probe, every=every) if every else None
    losses = []
    for step, (x, y) in enumerate(batches, 1):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if monitor is not None:
            monitor.before_step(step)
        opt.step()
        opt.zero_grad()
        if monitor is not None:
            monitor.after_step(step, lr=opt.param_groups[0]["lr"])
        losses.append(loss.item())
    return model, losses, monitor


def test_plain_loop_reads_due_steps_exactly_and_leaves_stats_and_rng_alone() -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches, probe = _data(12)
    monitor = ConvergenceMonitor(model, probe, every=4)
    returned = {}
    for step, (x, y) in enumerate(batches, 1):
        F.cross_entropy(model(x), y).backward()
        before, buffers, rng = copy.deepcopy(model), _buffers(model), torch.get_rng_state()
        monitor.before_step(step)
        assert _same(_buffers(model), buffers) and torch.equal(torch.get_rng_state(), rng)
        opt.step()
        opt.zero_grad()
        after, rng = copy.deepcopy(model), torch.get_rng_state()
        reading = monitor.after_step(step, lr=0.05)
        assert _same(_buffers(model), buffers) and torch.equal(torch.get_rng_state(), rng)
        returned[step] = reading
        if reading is not None:
            truth = _direct(before, after, probe)
            assert reading.keys() == truth.keys()
            for key, value in truth.items():
                assert reading[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
            assert reading["angle/projection"] > 1e-4
    assert [s for s, r in returned.items() if r is not None] == [1, 4, 8, 12]
    assert [r["step"] for r in monitor.history] == [1, 4, 8, 12]
    assert all(r["lr"] == 0.05 and r == {**returned[r["step"]], **r} for r in monitor.history)
    assert monitor.last_seconds is not None and 0 < monitor.last_seconds <= monitor.total_seconds


def test_training_is_bit_identical_with_and_without_the_monitor() -> None:
    plain, plain_losses, _ = _train(every=None)
    watched, watched_losses, monitor = _train(every=3)
    assert [r["step"] for r in monitor.history] == [1, 3, 6, 9, 12]
    assert watched_losses == plain_losses
    assert _same(watched.state_dict(), plain.state_dict())  # weights and BatchNorm statistics


def test_every_changes_at_run_time_and_mismatched_steps_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    monitor = ConvergenceMonitor(model, torch.randn(8, 4), every=5)
    assert [s for s in range(1, 21) if monitor.due(s)] == [1, 5, 10, 15, 20]
    monitor.every = 7
    assert [s for s in range(1, 21) if monitor.due(s)] == [1, 7, 14]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="every"):
            monitor.every = bad
    monitor.before_step(7)
    with pytest.raises(ValueError, match="same step"):
        monitor.after_step(8)
    assert monitor.after_step(8) is None and monitor.history == []
    monitor.before_step(3)  # not due: nothing to measure
    assert monitor.after_step(3) is None


def test_default_embed_reads_forwards_and_unwraps_embed() -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(4, 6))
    tokens = torch.randn(3, 5, 4)
    z = default_embed(seq, tokens)
    assert list(z) == ["output"] and z["output"].shape == (3, 6)
    torch.testing.assert_close(z["output"], seq(tokens).mean(1))  # 3-D: mean over tokens
    wrapper = nn.Module()
    wrapper.module = MLP()
    assert set(default_embed(wrapper.eval(), torch.randn(4, 16))) == {"backbone", "projection"}
    with pytest.raises(TypeError, match="embed="):
        default_embed(nn.Identity(), torch.ones(2, 2, dtype=torch.long))  # no float output
    # the old StepAngleMonitor contract is unchanged: no embed= means model.embed is required
    with pytest.raises(TypeError, match="unwrap_model"):
        StepAngleMonitor(torch.randn(4, 16)).before_step(wrapper)


def test_state_dict_round_trip_resumes_the_history() -> None:
    _, _, monitor = _train(every=4)
    state = monitor.state_dict()
    assert state["every"] == 4 and [r["step"] for r in state["history"]] == [1, 4, 8, 12]
    state["history"][0]["step"] = -1  # a copy: the monitor is not changed through it
    assert monitor.history[0]["step"] == 1

    resumed = ConvergenceMonitor(MLP(), _data(1)[1], every=1)
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.every == 4 and resumed.history == monitor.history
    assert resumed.total_seconds == pytest.approx(monitor.total_seconds)
    resumed.model.fc2.weight.grad = torch.ones_like(resumed.model.fc2.weight)
    resumed.before_step(16)
    with torch.no_grad():
        resumed.model.fc2.weight.sub_(0.1)
    resumed.after_step(16, lr=torch.tensor(0.1))
    assert [r["step"] for r in resumed.history] == [1, 4, 8, 12, 16]
    assert resumed.history[-1]["lr"] == pytest.approx(0.1)
    assert resumed.history[-1]["angle/projection"] > 0
    assert resumed.history[-1]["angle/backbone"] == 0  # only the head moved
    with pytest.raises(KeyError, match="every"):
        resumed.load_state_dict({"history": []})
    fig = resumed.figure()
    assert [ax.get_ylabel() for ax in fig.axes] == ["angle per step (rad)", "mean ‖z‖", "lr"]


# --- transformers.Trainer ---------------------------------------------------------------------


def _tiny_bert() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def test_trainer_callback_logs_the_exact_angle_of_the_logged_steps(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from hub_cutinit.integrations.transformers import ConvergenceMonitorCallback

    class Witness(transformers.TrainerCallback):
        """Copies the model around the optimiser step of ``step``; records the logs it sees."""

        def __init__(self, step: int) -> None:
            self.step, self.models, self.logs = step, [], []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == self.step:
                self.models.append(copy.deepcopy(model))

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == self.step:
                self.models.append(copy.deepcopy(model))

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 32, (48, 8), generator=g)
    labels = torch.randint(0, 3, (48,), generator=g)
    data = [
        {"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": y}
        for i, y in zip(ids, labels, strict=True)
    ]
    probe = {"input_ids": ids[:16], "attention_mask": torch.ones(16, 8, dtype=torch.long)}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        logging_steps=2,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        optim="sgd",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    witness, callback = Witness(step=4), ConvergenceMonitorCallback(probe)
    trainer = transformers.Trainer(
        model=_tiny_bert(), args=args, train_dataset=data, callbacks=[witness, callback]
    )
    trainer.remove_callback(transformers.PrinterCallback)
    assert callback.attach(trainer) is callback  # first, so the witness sees what it adds
    trainer.train()

    assert callback.monitor.every == 2  # the Trainer's logging_steps
    assert [r["step"] for r in callback.history] == [1, 2, 4, 6]
    assert all(r["lr"] == pytest.approx(0.05) for r in callback.history)
    by_step = {r["step"]: r for r in callback.history}
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == [2, 4, 6]
    for entry in logged:
        reading = by_step[entry["step"]]
        assert entry["convergence/angle/logits"] == reading["angle/logits"]
        assert entry["convergence/norm/logits"] == reading["norm/logits"]
    assert [sorted(k for k in log if k.startswith("convergence/")) for log in witness.logs] == [
        ["convergence/angle/logits", "convergence/norm/logits"]
    ] * 3 + [[]]  # the last one: the end-of-training summary

    before, after = witness.models
    zs = []
    for model in (before, after):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            zs.append(model(**probe).logits)
    assert after.training and not torch.equal(zs[0], zs[1])
    truth = angle_between(zs[0], zs[1]).mean().item()
    assert by_step[4]["angle/logits"] == pytest.approx(truth, rel=1e-6, abs=1e-9)
    assert by_step[4]["norm/logits"] == pytest.approx(zs[0].norm(dim=1).mean().item(), rel=1e-6)
    assert math.isfinite(truth) and truth > 0
