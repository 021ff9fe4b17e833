"""The cut variants (``--cut-spare``) and the kNN monitor's precise BatchNorm (``--knn-bn``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hub_cutinit import create_ssl_model, cut_init
from hub_cutinit.cut import cut_targets
from hub_cutinit.precise_bn import precise_bn
from hub_cutinit.training import TrainConfig, main, parse_args


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 8),
        nn.LayerNorm(8),
    )  # fmt: skip


def test_spare_leaves_each_kind_of_parameter_uncut() -> None:
    all_names = cut_targets(_net())
    assert len(all_names) == 8
    assert cut_targets(_net(), spare=["bias"]) == [
        "0.weight", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias",
    ]  # fmt: skip
    assert cut_targets(_net(), spare=["norm_shift"]) == [
        "0.weight", "0.bias", "1.weight", "3.weight", "3.bias", "4.weight",
    ]  # fmt: skip
    assert cut_targets(_net(), spare=["bias", "norm_shift", "norm_scale"]) == [
        "0.weight",
        "3.weight",
    ]
    with pytest.raises(ValueError, match="spare must be a list of"):
        cut_targets(_net(), spare=["biases"])


def test_bias_sparing_cut_divides_the_weights_and_keeps_the_biases() -> None:
    torch.manual_seed(0)
    plain = create_ssl_model("simclr", "test_resnet", c=1, proj_hidden_dim=16, proj_dim=8)
    torch.manual_seed(0)
    spared = create_ssl_model(
        "simclr", "test_resnet", c=3, proj_hidden_dim=16, proj_dim=8, cut_spare=["bias"]
    )
    for (name, p), q in zip(plain.named_parameters(), spared.parameters(), strict=True):
        is_linear_bias = name.startswith("projector") and name.endswith("bias")
        expected = p if is_linear_bias else p / 3
        torch.testing.assert_close(q, expected, msg=name)
    assert spared.hparams["cut_spare"] == ["bias"]


def test_cut_spare_and_knn_bn_reach_config_and_card(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--backbone", "test_resnet", "--batch-size", "8", "--max-steps", "2"]
    argv += ["--set", "proj_hidden_dim=16", "proj_dim=8", "--eval-max-samples", "64"]
    argv += ["--cut-spare", "bias", "--knn-bn", "running", "--no-baselines"]
    result = main("simclr", [*argv, "--output-dir", str(out)])
    assert result["cut_spare"] == ["bias"] and result["knn_bn"] == "running"
    block = json.loads((out / "config.json").read_text())["hub_cutinit"]
    assert block["hparams"]["cut_spare"] == ["bias"]
    card = (out / "README.md").read_text()
    assert '| model and cut | `--cut-spare` | `["bias"]` |' in card
    assert '| evaluation | `--knn-bn` | `"running"` |' in card
    with pytest.raises(SystemExit):
        parse_args("simclr", ["--cut-spare", "weights"])


def test_precise_bn_is_the_plain_average_of_the_batch_statistics() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    cut_init(net, c=9)  # running variance 1, true variance ~9⁻⁴
    batches = [(torch.randn(32, 3) + 2, torch.zeros(32)) for _ in range(4)]
    fresh = precise_bn(net, batches, num_batches=3)
    with torch.no_grad():
        outputs = [net[0](x) for x, _ in batches[:3]]
    mean = torch.stack([o.mean(0) for o in outputs]).mean(0)
    var = torch.stack([o.var(0) for o in outputs]).mean(0)  # unbiased, per batch, averaged
    torch.testing.assert_close(fresh[1].running_mean, mean)
    torch.testing.assert_close(fresh[1].running_var, var)
    assert torch.all(net[1].running_var == 1)  # the model itself is untouched
    assert not fresh.training and fresh[0].weight.data_ptr() != net[0].weight.data_ptr()
    flat = nn.Flatten()
    assert precise_bn(flat, batches) is flat  # no BatchNorm: nothing to do


def test_precise_bn_is_the_default_and_recorded() -> None:
    assert TrainConfig(method="simclr").knn_bn == "precise"
    assert parse_args("simclr", []).knn_bn_batches == 8


def test_c_paper_is_the_papers_value_one_flag_away() -> None:
    assert parse_args("simclr", ["--c", "paper"]).c == 3.0
    assert parse_args("simsiam", ["--c", "paper"]).c == 9.0
    assert parse_args("byol", ["--c", "paper"]).c == 9.0
    with pytest.raises(SystemExit):  # no paper value for a redundancy-reduction method
        parse_args("vicreg", ["--c", "paper"])
