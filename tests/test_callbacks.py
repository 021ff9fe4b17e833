"""Callbacks: user hooks see every event in order, control the loop, keep their state in
checkpoints; a resumed run evaluates and checkpoints on the steps an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hub_cutinit.training import TrainConfig, TrainerCallback, latest_checkpoint, main, train
from hub_cutinit.training import default_callbacks as defaults_module

TINY: dict[str, Any] = dict(
    method="simclr",
    backbone="test_resnet",
    batch_size=8,
    eval_dataset="builtin",  # kNN on the built-in set; training on the folder below
    eval_max_samples=64,
    baselines=False,
    overrides={"proj_hidden_dim": 32, "proj_dim": 16},
    log_every=2,
)


def _folder(root: Path, n: int) -> str:
    """``n`` small unlabelled PNGs: an epoch of ``n / 8`` steps at batch 8."""
    folder = root / f"images_{n}"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(n)
        for i in range(n):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return str(folder)


@pytest.fixture(scope="module")
def images_96(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _folder(tmp_path_factory.mktemp("data"), 96)


@pytest.fixture(scope="module")
def images_16(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _folder(tmp_path_factory.mktemp("data"), 16)


class Recorder(TrainerCallback):
    """Records every hook call as (hook, step); keeps a counter as its checkpointed state."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.logs = 0

    def _add(self, hook: str, state: Any) -> None:
        self.events.append((hook, state.step))

    def on_train_begin(self, trainer, state, control):
        self._add("train_begin", state)

    def on_step_end(self, trainer, state, control, *, logged):
        self._add("step_end", state)

    def on_log(self, trainer, state, control, *, logs):
        assert {"loss", "lr", "norm/projection"} <= set(logs)
        self.logs += 1
        self._add("log", state)

    def on_evaluate(self, trainer, state, control, *, metrics):
        assert 0.0 <= metrics["knn_accuracy"] <= 1.0
        self._add("evaluate", state)

    def on_save(self, trainer, state, control, *, checkpoint):
        assert (Path(checkpoint) / "trainer_state.json").exists()
        self._add("save", state)

    def on_epoch_end(self, trainer, state, control):
        self._add("epoch_end", state)

    def on_train_end(self, trainer, state, control, *, summary):
        assert summary["steps"] == state.step
        self._add("train_end", state)

    def state_dict(self):
        return {"logs": self.logs}

    def load_state_dict(self, state):
        self.logs = state["logs"]


def _hooks(events: list[tuple[str, int]], hook: str) -> list[int]:
    return [step for name, step in events if name == hook]


def test_every_hook_is_called_in_order_and_state_reaches_the_checkpoint(
    tmp_path: Path, images_96: str
) -> None:
    recorder = Recorder()
    cfg = TrainConfig(
        **TINY, dataset=images_96, max_steps=14, eval_every=5, output_dir=str(tmp_path / "run")
    )
    train(cfg, callbacks=[recorder])
    events = recorder.events
    assert events[0] == ("train_begin", 0) and events[-1] == ("train_end", 14)
    assert _hooks(events, "step_end") == list(range(1, 15))
    assert _hooks(events, "log") == [1, 2, 4, 6, 8, 10, 12, 14]  # step 1 and every --log-every
    assert _hooks(events, "evaluate") == [5, 10, 14]  # --eval-every 5, and the final one
    assert _hooks(events, "epoch_end") == [12]  # 96 images / 8 per step
    assert _hooks(events, "save") == [12, 14]  # the epoch end, the last step
    saved = json.loads((latest_checkpoint(cfg.output_dir) / "trainer_state.json").read_text())
    assert saved["callbacks"]["Recorder"] == {"logs": 8}
    assert saved["callbacks"]["EvaluationCallback"] == {"period": 1, "last_epoch": 0}


class StopAt(TrainerCallback):
    """Stops the run at a step, asking for an evaluation and a checkpoint there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, state, control, *, logged):
        if state.step == self.step:
            control.should_evaluate = control.should_save = control.should_stop = True


def test_control_stops_evaluates_and_saves_at_the_step_asked(
    tmp_path: Path, images_96: str
) -> None:
    recorder = Recorder()
    cfg = TrainConfig(**TINY, dataset=images_96, max_steps=20, output_dir=str(tmp_path / "run"))
    result = train(cfg, callbacks=[StopAt(7), recorder])
    assert result["steps"] == 7
    assert _hooks(recorder.events, "evaluate") == [7]  # asked for; no second final one
    assert _hooks(recorder.events, "save") == [7]  # once, not twice for the same step
    assert latest_checkpoint(cfg.output_dir).name == "step_00000007"
    assert (Path(cfg.output_dir) / "model.safetensors").exists()  # the run ended normally


def test_user_callback_state_is_restored_on_resume(tmp_path: Path, images_96: str) -> None:
    out, data = str(tmp_path / "run"), {**TINY, "dataset": images_96}
    train(TrainConfig(**data, max_steps=8, checkpoint_every=4, output_dir=out))
    resumed = Recorder()
    resumed.logs = -1  # a fresh instance; the checkpoint has no Recorder state: kept as is
    train(TrainConfig(**data, max_steps=10, resume=True, output_dir=out), callbacks=[resumed])
    assert resumed.logs == 0  # steps 10 only: -1 + 1
    assert _hooks(resumed.events, "step_end") == [9, 10]


def test_callbacks_reject_objects_that_are_not_callbacks() -> None:
    with pytest.raises(TypeError, match="TrainerCallback"):
        train(TrainConfig(**TINY, max_steps=1), callbacks=[object()])  # type: ignore[list-item]


def test_recipe_main_accepts_callbacks(tmp_path: Path) -> None:
    recorder = Recorder()
    argv = ["--backbone", "test_resnet", "--batch-size", "8", "--max-steps", "2", "--no-baselines"]
    argv += ["--set", "proj_hidden_dim=32", "proj_dim=16", "--eval-split", "none"]
    main("simclr", [*argv, "--output-dir", str(tmp_path / "run")], callbacks=[recorder])
    assert _hooks(recorder.events, "step_end") == [1, 2]


@pytest.fixture
def fixed_automatic_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """The automatic evaluation period without the clock: 3 epochs after each evaluation."""
    monkeypatch.setattr(defaults_module, "automatic_period", lambda *_: 3)


class _Crash(Exception):
    pass


class CrashAfterSave(TrainerCallback):
    """Dies right after the checkpoint of a step is written (a killed job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, trainer, state, control, *, checkpoint):
        if state.step == self.step:
            raise _Crash


@pytest.mark.usefixtures("fixed_automatic_period")
def test_resumed_run_evaluates_and_checkpoints_on_the_same_steps(
    tmp_path: Path, images_16: str
) -> None:
    """Automatic evaluation cadence (the period is callback state, kept in checkpoints) and
    epoch-end checkpoints: a run killed after epoch 5 and resumed agrees with one that was not."""
    small = {**TINY, "dataset": images_16, "log_every": 1}  # 2 steps per epoch
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole_saves, parts_saves = Recorder(), Recorder()
    whole_run = train(TrainConfig(**small, epochs=9, output_dir=str(whole)), [whole_saves])
    with pytest.raises(_Crash):
        killed = TrainConfig(**small, epochs=9, output_dir=str(parts))
        train(killed, callbacks=[parts_saves, CrashAfterSave(10)])
    resumed = train(
        TrainConfig(**small, epochs=9, resume=True, output_dir=str(parts)), [parts_saves]
    )
    assert [r["step"] for r in whole_run["knn"]] == [2, 8, 14, 18]  # epoch 1, every 3rd, last
    assert [r["step"] for r in resumed["knn"]] == [2, 8, 14, 18]
    saves = _hooks(whole_saves.events, "save")
    assert saves == _hooks(parts_saves.events, "save") == list(range(2, 19, 2))  # epoch ends


def test_callback_flag_builds_a_callback_by_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_callbacks.py").write_text(
        "from hub_cutinit.training import TrainerCallback\n\n"
        "class StopAtTwo(TrainerCallback):\n"
        "    def on_step_end(self, trainer, state, control, *, logged):\n"
        "        control.should_stop = state.step == 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["--backbone", "test_resnet", "--batch-size", "8", "--max-steps", "3", "--no-baselines"]
    argv += ["--set", "proj_hidden_dim=32", "proj_dim=16", "--eval-split", "none"]
    result = main(
        "simclr",
        [*argv, "--callback", "my_callbacks:StopAtTwo", "--output-dir", str(tmp_path / "run")],
    )
    assert result["steps"] == 2 and result["callbacks"] == ["my_callbacks:StopAtTwo"]
    for bad in ("no_colon_here", "my_callbacks:Missing", "my_callbacks:TrainerCallback"):
        with pytest.raises(SystemExit):  # refused when the flags are parsed, naming the fix
            main("simclr", [*argv, "--callback", bad, "--output-dir", str(tmp_path / "bad")])


class _Clock:
    """A fake ``time.perf_counter`` the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeMonitor:
    """A monitor whose every reading costs ``cost`` seconds of the fake clock."""

    def __init__(self, clock: _Clock, cost: float) -> None:
        self.clock, self.cost, self.readings = clock, cost, []
        self.last_seconds = None

    def before_step(self, step: int) -> None:
        self.clock.now += self.cost / 2

    def after_step(self, step: int) -> dict[str, float]:
        self.clock.now += self.cost / 2
        self.last_seconds = self.cost
        self.readings.append(step)
        return {"angle/projection": 0.1}


class _FakeTrainer:
    """What the monitor callback reads of the Trainer: the log cadence and ``log_values``."""

    def __init__(self, log_every: int) -> None:
        self.log_every, self.values = log_every, {}

    def logged(self, step: int) -> bool:
        return step == 1 or step % self.log_every == 0

    def log_values(self, values: dict[str, float]) -> None:
        self.values.update(values)


def _run_monitor(
    callback: Any, clock: _Clock, monitor: _FakeMonitor, steps: range, step_seconds: float
) -> None:
    """Drive the callback's hooks as the Trainer does, ``step_seconds`` of training per step."""
    from types import SimpleNamespace

    trainer, control = _FakeTrainer(log_every=10), None
    state = SimpleNamespace(step=steps.start - 1, epoch=0, convergence=[])
    callback.monitor = monitor
    for step in steps:
        clock.now += step_seconds
        callback.on_pre_optimizer_step(trainer, state, control, flag=None)
        state.step = step
        logged = trainer.logged(step)
        callback.on_step_end(trainer, state, control, logged=logged)
        if logged:
            logs, trainer.values = {"lr": 0.1, **trainer.values}, {}
            callback.on_log(trainer, state, control, logs=logs)


def test_monitor_keeps_a_running_time_budget_and_resumes_its_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The monitor reads on step 1, then only when its cumulative cost (the next reading
    included) fits in --monitor-budget of the cumulative training time; a resumed callback
    reads on the same steps as an uninterrupted one."""
    clock = _Clock()
    monkeypatch.setattr(defaults_module.time, "perf_counter", clock)
    budget, cost, step_seconds = 0.01, 0.16, 0.4  # a reading costs 40 % of a step
    callback = defaults_module.ConvergenceMonitorCallback(budget=budget)
    monitor = _FakeMonitor(clock, cost)
    _run_monitor(callback, clock, monitor, range(1, 2001), step_seconds)
    readings = monitor.readings
    assert readings[0] == 1 and all(step % 10 == 0 for step in readings[1:])
    training = 2000 * step_seconds
    # within budget at every reading, once the first one is paid for
    for step in readings[1:]:
        spent = cost * (readings.index(step) + 1)
        assert spent <= budget * (step * step_seconds + spent) + 1e-9, step
    # and not far below it: one reading per cost / (budget * step) = 40 steps, rounded up to 10
    assert len(readings) == pytest.approx(budget * training / cost, abs=2)
    assert readings[1] > 10  # the second reading waits for the first one to be paid for

    # resume at step 1000 from the state at step 1000: the same readings after it
    clock2 = _Clock()
    monkeypatch.setattr(defaults_module.time, "perf_counter", clock2)
    first = defaults_module.ConvergenceMonitorCallback(budget=budget)
    first_monitor = _FakeMonitor(clock2, cost)
    _run_monitor(first, clock2, first_monitor, range(1, 1001), step_seconds)
    resumed = defaults_module.ConvergenceMonitorCallback(budget=budget)
    resumed.load_state_dict(first.state_dict())
    resumed_monitor = _FakeMonitor(clock2, cost)
    _run_monitor(resumed, clock2, resumed_monitor, range(1001, 2001), step_seconds)
    assert first_monitor.readings + resumed_monitor.readings == readings


def test_monitor_budget_one_reads_every_logged_step(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(defaults_module.time, "perf_counter", clock)
    callback = defaults_module.ConvergenceMonitorCallback(budget=1.0)
    monitor = _FakeMonitor(clock, cost=1.0)
    _run_monitor(callback, clock, monitor, range(1, 51), step_seconds=0.1)
    assert monitor.readings == [1, 10, 20, 30, 40, 50]
