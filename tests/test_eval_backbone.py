"""`hub-cutinit eval` / evaluate_backbone (issue 22, items 4 and 5): any backbone, the training
monitor's protocol, versioned; BatchNorm in eval mode; hf-hub via the fake Hub; 2 processes
give the 1-process result; --update-card writes model-index. ``test_resnet`` at 16 px, 64
images: about a minute on one thread, most of it the 2-process launch.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import HUB_USER
from torch import nn

from hub_cutinit.eval_backbone import (
    PROTOCOL_RULES,
    PROTOCOL_VERSION,
    EvalProtocol,
    evaluate_backbone,
)

SAMPLES = 64
FAST = {"image_size": 16, "max_samples": SAMPLES}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step SimCLR run on test_resnet, saved with its final kNN in config.json."""
    from hub_cutinit.training import TrainConfig, train

    out = tmp_path_factory.mktemp("eval") / "simclr"
    train(
        TrainConfig(
            method="simclr",
            backbone="test_resnet",
            image_size=16,
            batch_size=8,
            max_steps=2,
            eval_max_samples=SAMPLES,
            convergence_monitor=False,
            output_dir=str(out),
            overrides={"proj_hidden_dim": 32, "proj_dim": 16},
        )
    )
    return out


def _training_protocol(out: Path) -> EvalProtocol:
    """The protocol values the training monitor used (its BatchNorm mode, when recorded)."""
    training = json.loads((out / "config.json").read_text())["hub_cutinit"]["training"]
    return EvalProtocol(
        bn=training.get("knn_bn") or "running", bn_batches=training.get("knn_bn_batches") or 8
    )


def test_protocol_defaults_are_the_library_defaults() -> None:
    """A default changed anywhere without a new PROTOCOL_VERSION fails here."""
    from hub_cutinit.evaluation import knn_accuracy, linear_probe
    from hub_cutinit.training import TrainConfig

    protocol, probe = EvalProtocol(), inspect.signature(linear_probe).parameters
    knn = inspect.signature(knn_accuracy).parameters
    assert (protocol.k, protocol.temperature) == (knn["k"].default, knn["temperature"].default)
    assert (protocol.k, protocol.temperature) == (TrainConfig.knn_k, TrainConfig.knn_temperature)
    assert (protocol.bn, protocol.bn_batches) == (TrainConfig.knn_bn, TrainConfig.knn_bn_batches)
    assert (
        protocol.probe_epochs,
        protocol.probe_lr,
        protocol.probe_weight_decay,
        protocol.probe_optimizer,
        protocol.probe_batch_size,
        protocol.seed,
    ) == tuple(
        probe[n].default
        for n in ("epochs", "lr", "weight_decay", "optimizer", "batch_size", "seed")
    )
    record = protocol.to_dict()
    assert record["version"] == PROTOCOL_VERSION == "knn-v1"
    assert record["rules"] == PROTOCOL_RULES and protocol.changes() == {}
    assert {"k", "temperature", "probe_lr", "bn", "extract_batch_size"} <= set(record)
    with pytest.raises(ValueError, match="bn must be"):
        EvalProtocol(bn="train")


def test_saved_model_gives_the_training_runs_knn(trained: Path) -> None:
    block = json.loads((trained / "config.json").read_text())["hub_cutinit"]
    result = evaluate_backbone(
        f"local-dir:{trained}",
        "builtin",
        max_samples=SAMPLES,
        linear_probe=False,
        protocol=_training_protocol(trained),
    )
    assert result["knn_accuracy"] == block["evaluation"]["knn_accuracy"]
    assert (
        result["baselines"]["raw_pixels_knn"] == block["evaluation"]["baselines"]["raw_pixels_knn"]
    )
    assert result["model"]["image_size"] == 16  # from pretrained_cfg input_size
    assert result["model"]["image_size_source"] == "pretrained_cfg"
    assert result["model"]["spec"] == "local-dir:simclr"  # no local path in the record
    assert result["data"]["source"] == block["training"]["eval_source"]
    assert result["data"]["bank_samples"] == result["data"]["test_samples"] == SAMPLES
    assert result["protocol_version"] == PROTOCOL_VERSION
    json.dumps(result, allow_nan=False)  # strict JSON


class _TinyBN(nn.Module):
    """conv -> BatchNorm with absurd running statistics -> pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.bn.running_mean.fill_(50.0)
            self.bn.running_var.fill_(1e-4)
        self.seen: list[tuple[bool, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)
        self.seen.append((self.bn.training, x, out))
        return out


def test_batchnorm_is_in_eval_mode_and_the_mode_restored() -> None:
    torch.manual_seed(0)
    net = _TinyBN().train()
    precise = evaluate_backbone(net, "builtin", k=5, linear_probe=False, baselines=False, **FAST)
    assert net.training and net.bn.running_mean.eq(50.0).all() and not net.seen  # a copy ran
    assert precise["protocol"]["bn"] == "precise"
    running = EvalProtocol(bn="running")  # the saved statistics: this network itself
    result = evaluate_backbone(
        net, "builtin", k=5, linear_probe=False, baselines=False, protocol=running, **FAST
    )
    assert net.training and net.bn.training  # restored
    assert net.bn.running_mean.eq(50.0).all()  # the statistics untouched
    assert net.seen and not any(training for training, _, _ in net.seen)
    _, x, out = net.seen[0]
    net.seen.clear()
    with torch.no_grad():
        train_mode = net.train()(x)
        eval_mode = net.eval()(x)
    assert torch.equal(out, eval_mode) and not torch.allclose(out, train_mode)
    assert result["model"]["source"] == "module" and result["model"]["image_size"] == 16


def test_timm_name_from_the_command_line(tmp_path: Path, capsys) -> None:
    from hub_cutinit.cli import main

    out = tmp_path / "r.json"
    argv = ["eval", "test_resnet", "--image-size", "16", "--max-samples", "32", "--k", "5"]
    assert main([*argv, "--no-linear-probe", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kNN accuracy (k = 5, τ = 0.1)" in printed and "protocol knn-v1" in printed
    result = json.loads(out.read_text())
    assert result["protocol_changes"] == {"k": 5} and result["protocol"]["k"] == 5
    assert "linear_probe_accuracy" not in result
    assert result["model"]["source"] == "timm" and result["model"]["num_features"] == 96
    # a timm name is random init with the protocol's seed: the random-init baseline itself
    assert result["knn_accuracy"] == result["baselines"]["random_init_knn"]
    assert main(["eval", "test_resnet", "--update-card", "--image-size", "16"]) == 2
    assert "--update-card needs a saved model folder" in capsys.readouterr().err


def test_update_card_writes_model_index(trained: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from hub_cutinit.cli import main
    from hub_cutinit.hub import load_ssl_model

    out = Path(shutil.copytree(trained, tmp_path / "model"))
    argv = ["eval", str(out), "--max-samples", str(SAMPLES), "--json", str(tmp_path / "r.json")]
    for _ in range(2):  # the same evaluation twice: one record
        assert main([*argv, "--update-card"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    block = json.loads((out / "config.json").read_text())["hub_cutinit"]
    (record,) = block["evaluation"]["evaluations"]
    assert record["protocol_version"] == PROTOCOL_VERSION
    assert record["knn_accuracy"] == result["knn_accuracy"]
    assert record["protocol"]["k"] == 200 and "spec" not in record["model"]
    card = ModelCard.load(out / "README.md")
    metrics = {r.metric_name: r for r in card.data.eval_results}
    knn = metrics[f"kNN accuracy (k=200, τ=0.1, protocol {PROTOCOL_VERSION})"]
    assert knn.metric_value == result["knn_accuracy"]
    assert knn.metric_args["protocol_version"] == PROTOCOL_VERSION
    assert knn.dataset_type == "zalando-datasets/fashion_mnist" and knn.dataset_split == "test"
    probe = metrics[f"linear probe accuracy (protocol {PROTOCOL_VERSION})"]
    assert probe.metric_value == result["linear_probe_accuracy"]
    assert "`hub-cutinit eval`" in (out / "README.md").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown-field warning: the block stays format 2
        load_ssl_model(out)


def test_hf_hub_checkpoint_gives_the_local_result(fake_hub, trained: Path) -> None:
    from hub_cutinit.hub import push_to_hub

    repo = f"{HUB_USER}/simclr-eval"
    push_to_hub(trained, repo, base_delay=0.01)
    kwargs = {"max_samples": SAMPLES, "linear_probe": False, "baselines": False}
    remote = evaluate_backbone(f"hf-hub:{repo}", **kwargs)
    local = evaluate_backbone(f"local-dir:{trained}", **kwargs)
    assert remote["model"]["source"] == "hf-hub" and remote["model"]["spec"] == f"hf-hub:{repo}"
    assert remote["knn_accuracy"] == local["knn_accuracy"]


def test_two_processes_give_the_one_process_result(tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2 -m hub_cutinit.cli eval` on CPU."""
    args = ["test_resnet", "--image-size", "16", "--max-samples", "37", "--k", "20"]
    out = tmp_path / "two.json"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "hub_cutinit.cli",
        "eval",
        *args,
        "--json",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("kNN accuracy (k = 20") == 1  # printed by the main process only
    two = json.loads(out.read_text())
    one = evaluate_backbone("test_resnet", image_size=16, max_samples=37, k=20)
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["data"] == one["data"]  # every image once: 37 + 37
    assert two["knn_accuracy"] == one["knn_accuracy"]
    assert two["baselines"] == one["baselines"]
    assert two["linear_probe_accuracy"] == pytest.approx(one["linear_probe_accuracy"], abs=0.03)
