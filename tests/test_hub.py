"""Save / card / push / load round trips against a fake Hub (tests/hub_server.py), offline.

The real huggingface_hub client, timm's ``hf-hub:`` loader and transformers' ``AutoModel`` talk
real HTTP to the fake server started by the ``fake_hub`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import HUB_TOKEN, HUB_USER
from safetensors.torch import load_file, save_file

from hub_cutinit import create_ssl_model, get_preset, list_methods
from hub_cutinit.hub import (
    BLOCK_KEY,
    FORMAT_VERSION,
    HubAuthError,
    HubError,
    load_ssl_model,
    push_to_hub,
    register_cli,
    render_model_card,
    save_pretrained,
)
from hub_cutinit.hub.format import LOAD_FILES, MANAGED_FILES

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_HEADS = {
    "byol": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
    "simclr": {"proj_hidden_dim": 32, "proj_dim": 16},
    "simsiam": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 8},
    "moco": {"proj_hidden_dim": 32, "proj_dim": 16, "queue_size": 64},
    "dino": {
        "head_out_dim": 64,
        "head_hidden_dim": 32,
        "head_bottleneck_dim": 16,
        "num_local_views": 2,
        "backbone_kwargs": {"img_size": 32},
    },
}
TRAINING_INFO = {
    "dataset": "uoft-cs/cifar10",
    "epochs": 2,
    "steps": 40,
    "batch_size": 16,
    "image_size": 32,
    "hardware": "1x CPU",
    "norm_history": {  # as NormHistory.state_dict() gives it
        "version": 1,
        "records": [
            {
                "epoch": 0,
                "step": 20,
                "norms": {"backbone": {"mean": 0.8}, "projection": {"mean": 0.05}},
            },
            {
                "epoch": 1,
                "step": 40,
                "norms": {"backbone": {"mean": 1.1}, "projection": {"mean": 0.07}},
            },
        ],
    },
    "final_norms": {
        "epoch": 1,
        "norms": {
            "backbone": {"count": 640, "mean": 1.1, "std": 0.12, "min": 0.7, "max": 1.6},
            "projection": {"count": 640, "mean": 0.07, "std": 0.01, "min": 0.04, "max": 0.1},
        },
    },
    "knn": [
        {"knn_accuracy": 0.4, "step": 20, "epoch": 0},
        {"knn_accuracy": 0.4321, "step": 40, "epoch": 1},
    ],
    "knn_accuracy": 0.4321,
    "baselines": {"random_init_knn": 0.31, "raw_pixels_knn": 0.29},
}


def small_model(
    method: str = "byol", backbone: str = "test_resnet", **overrides
) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_ssl_model(method, backbone, **{**SMALL_HEADS.get(method, {}), **overrides}).eval()


def images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def views_for(model: torch.nn.Module) -> list[torch.Tensor]:
    n_global, n_local = model.num_views()
    return [images(seed=i) for i in range(n_global)] + [
        images(size=16, seed=10 + i) for i in range(n_local)
    ]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = small_model("byol")
    out = save_pretrained(
        model, tmp_path_factory.mktemp("saved") / "byol", training_info=TRAINING_INFO
    )
    return model, out


# -- template --------------------------------------------------------------------------------------
def test_top_level_template_is_the_packaged_one() -> None:
    from hub_cutinit.hub.card import load_template

    assert (REPO_ROOT / "MODEL_CARD_TEMPLATE.md").read_text(encoding="utf-8") == load_template()


# -- save ------------------------------------------------------------------------------------------
def test_save_writes_timm_config_and_safetensors_only(saved) -> None:
    from timm.models._pretrained import PretrainedCfg

    model, out = saved
    # no convergence-monitor readings in TRAINING_INFO: no convergence.png
    expected = set(MANAGED_FILES) - {"convergence.png"}
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet"
    assert config["num_classes"] == 0
    assert config["num_features"] == model.backbone.num_features
    assert "num_classes" not in config.get("model_args", {})
    cfg = config["pretrained_cfg"]
    assert set(cfg) <= {f.name for f in __import__("dataclasses").fields(PretrainedCfg)}
    assert cfg["num_classes"] == 0 and cfg["input_size"] == [3, 32, 32]
    assert "tag" not in cfg and "hf_hub_id" not in cfg
    block = config[BLOCK_KEY]
    assert block["format_version"] == FORMAT_VERSION
    assert (block["method"], block["family"], block["c"]) == ("byol", "non-contrastive", 9.0)
    assert block["weight_decay"] == model.hparams["weight_decay"]
    assert block["config"] == model.get_config()
    assert block["training"]["dataset"] == "uoft-cs/cifar10" and block["training"]["steps"] == 40
    assert block["norms"]["backbone"]["mean"] == 1.1
    assert [r["epoch"] for r in block["norm_history"]] == [0, 1]
    assert block["evaluation"]["knn_accuracy"] == 0.4321
    assert [r["step"] for r in block["evaluation"]["knn_history"]] == [20, 40]
    assert set(block["versions"]) >= {"hub_cutinit", "torch", "timm"}
    assert block["components"] == {"heads": ["projector", "predictor"], "teacher": True}
    backbone = load_file(str(out / "model.safetensors"))
    assert set(backbone) == set(model.backbone.state_dict())
    heads = load_file(str(out / "ssl_heads.safetensors"))
    assert heads and not any(k.startswith("backbone.") for k in heads)
    assert any(k.startswith("teacher.") for k in heads)


def test_timm_local_dir_gives_identical_features(saved) -> None:
    model, out = saved
    backbone = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(backbone(x), model.backbone(x))


def test_vit_img_size_survives_the_round_trip(tmp_path: Path) -> None:
    model = small_model("dino", "test_vit")
    out = save_pretrained(model, tmp_path / "dino")
    backbone = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(backbone(x), model.backbone(x))
    loaded = load_ssl_model(out)
    torch.manual_seed(3)
    expected = model(views_for(model))
    torch.manual_seed(3)
    got = loaded(views_for(model))
    assert torch.equal(expected.loss, got.loss)
    assert torch.equal(loaded.criterion.center, model.criterion.center)


@pytest.mark.parametrize("method", list_methods())
def test_every_method_round_trips(method: str, tmp_path: Path) -> None:
    backbone = "test_vit" if method == "dino" else "test_resnet"
    heads = {} if method in SMALL_HEADS else get_preset(method, "tiny")  # any new method
    model = small_model(method, backbone, c=2.5, **heads)
    for buffer in model.buffers():  # non-trivial loss buffers (MoCo queue, DINO center)
        if buffer.is_floating_point():
            buffer.normal_()
    loaded = load_ssl_model(save_pretrained(model, tmp_path / method))
    assert loaded.cut_init_c == 2.5 and loaded.method == method
    assert (loaded.teacher is None) == (model.teacher is None)
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_load_restores_c_heads_and_teacher(saved) -> None:
    model, out = saved
    loaded = load_ssl_model(out)
    assert type(loaded) is type(model)
    assert loaded.cut_init_c == 9.0 and loaded.hparams["c"] == 9.0
    assert loaded.get_config() == model.get_config()
    assert loaded.hub_cutinit_info["evaluation"]["knn_accuracy"] == 0.4321
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    views = views_for(model)
    with torch.no_grad():
        a, b = model(views), loaded(views)
    assert torch.equal(a.loss, b.loss)
    assert all(torch.equal(a.embeddings[k], b.embeddings[k]) for k in a.embeddings)


def test_saving_a_loaded_model_again_is_stable(saved, tmp_path: Path) -> None:
    model, out = saved
    again = save_pretrained(load_ssl_model(out), tmp_path / "again", training_info=TRAINING_INFO)
    first, second = (json.loads((d / "config.json").read_text()) for d in (out, again))
    assert first == second
    for name in ("model.safetensors", "ssl_heads.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(again / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_is_atomic_on_failure(saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = saved
    out = save_pretrained(model, tmp_path / "m")
    before = digest(out)
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(small_model("simclr"), out)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left


def test_save_into_folder_with_other_files_keeps_them(saved, tmp_path: Path) -> None:
    model, _ = saved
    out = tmp_path / "run"
    (out / "checkpoints" / "step_10").mkdir(parents=True)
    (out / "checkpoints" / "step_10" / "state.bin").write_bytes(b"x")
    save_pretrained(model, out)
    save_pretrained(small_model("simclr"), out)  # no history: the stale norms.png goes
    assert (out / "checkpoints" / "step_10" / "state.bin").read_bytes() == b"x"
    assert not (out / "norms.png").exists()
    assert json.loads((out / "config.json").read_text())[BLOCK_KEY]["method"] == "simclr"
    assert load_ssl_model(out).method == "simclr"


def test_backbone_changed_after_creation_is_refused(tmp_path: Path) -> None:
    model = small_model("simclr")  # e.g. a CIFAR stem patched in by hand: 5x5 instead of 3x3
    name, conv = next(
        (n, m) for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)
    )
    model.backbone.set_submodule(
        name, torch.nn.Conv2d(conv.in_channels, conv.out_channels, 5, padding=2)
    )
    with pytest.raises(ValueError, match="cannot rebuild this backbone"):
        save_pretrained(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# -- load errors -----------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_unknown_block_fields_warn_but_load(saved, tmp_path: Path) -> None:
    _, out = saved
    copy = _copy(out, tmp_path / "newer")
    config = json.loads((copy / "config.json").read_text())
    config[BLOCK_KEY]["shiny_new_field"] = {"x": 1}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="shiny_new_field"):
        loaded = load_ssl_model(copy)
    assert loaded.cut_init_c == 9.0
    config[BLOCK_KEY]["format_version"] = FORMAT_VERSION + 1
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer hub_cutinit.*pip install -U hub-cutinit"):
        load_ssl_model(copy)


def test_weights_not_matching_config_raise(saved, tmp_path: Path) -> None:
    _, out = saved
    copy = _copy(out, tmp_path / "mixed")
    other = small_model("byol", proj_hidden_dim=48)  # same method, other head width
    heads = {k: v for k, v in other.state_dict().items() if not k.startswith("backbone.")}
    save_file({k: v.contiguous() for k, v in heads.items()}, str(copy / "ssl_heads.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatch: projector\.") as info:
        load_ssl_model(copy)
    assert "do not match its config.json" in str(info.value)
    backbone = load_file(str(copy / "model.safetensors"))
    backbone.pop(sorted(backbone)[0])
    save_file(backbone, str(copy / "model.safetensors"))
    with pytest.raises(ValueError, match="missing in the weight files: backbone."):
        load_ssl_model(copy)


def test_load_explains_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hf-hub:someone/repo"):
        load_ssl_model("someone/repo")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    with pytest.raises(ValueError, match="plain timm checkpoint"):
        load_ssl_model(tmp_path / "plain")


# -- card ------------------------------------------------------------------------------------------
def test_card_yaml_and_content(saved) -> None:
    from huggingface_hub import ModelCard

    _, out = saved
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert data["tags"] == ["self-supervised", "byol", "cut-init", "hub-cutinit", "timm"]
    assert data["datasets"] == ["uoft-cs/cifar10"]
    assert data["license"] == "apache-2.0"
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value, result.dataset_type) == (
        "accuracy",
        0.4321,
        "uoft-cs/cifar10",
    )
    text = card.text
    assert "c = 9" in text and "λ = 0.0005" in text
    assert "| cut-initialisation c | 9 |" in text and "| weight decay λ | 0.0005 |" in text
    assert "| `backbone` | 1.1 | 0.12 | 0.7 | 1.6 | 640 |" in text
    assert "![Mean embedding norm over training](norms.png)" in text
    assert (out / "norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "43.21 %" in text and "random initialisation" in text
    assert 'timm.create_model("hf-hub:' in text and "load_ssl_model(" in text
    assert "arXiv:2406.16468" in text and "arXiv:2502.09252" in text


def test_render_model_card_rerenders_from_config(saved, tmp_path: Path) -> None:
    _, out = saved
    copy = _copy(out, tmp_path / "card")
    (copy / "README.md").unlink()
    (copy / "norms.png").unlink()
    path = render_model_card(copy, repo_id="me/my-byol")
    assert path == copy / "README.md" and (copy / "norms.png").exists()
    assert 'hf-hub:me/my-byol"' in path.read_text()


def test_card_without_training_info(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    out = save_pretrained(small_model("simclr"), tmp_path / "bare")
    assert not (out / "norms.png").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results is None and card.data.datasets is None
    assert "No evaluation results were recorded" in card.text
    assert "c = 3" in card.text


def test_local_dataset_path_is_not_published(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    folder = tmp_path / "secret-user" / "my_images"
    folder.mkdir(parents=True)
    out = save_pretrained(
        small_model("simclr"), tmp_path / "m", training_info={"dataset": str(folder)}
    )
    for name in ("config.json", "README.md"):
        text = (out / name).read_text()
        assert "secret-user" not in text and "my_images" in text
    assert "local data `my_images`" in (out / "README.md").read_text()
    assert ModelCard.load(out / "README.md").data.datasets is None  # not a Hub dataset id


# -- push ------------------------------------------------------------------------------------------
def test_push_then_timm_hf_hub_gives_identical_features(fake_hub, saved) -> None:
    model, out = saved
    repo = f"{HUB_USER}/byol-test"
    before = digest(out)
    url = push_to_hub(out, repo, base_delay=0.01)
    commit = fake_hub.commits(repo)[-1]
    assert url.endswith(f"/{repo}/commit/{commit.oid}")
    assert set(fake_hub.files(repo)) == {".gitattributes", *MANAGED_FILES} - {"convergence.png"}
    assert f'hf-hub:{repo}"' in fake_hub.files(repo)["README.md"].decode()
    assert digest(out) == before  # the local card keeps its placeholder
    backbone = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(backbone(x), model.backbone(x))


def test_transformers_automodel_loads_the_backbone(fake_hub, saved, tmp_path: Path) -> None:
    from transformers import AutoModel

    model, out = saved
    repo = f"{HUB_USER}/byol-transformers"
    push_to_hub(out, repo, base_delay=0.01)
    wrapped = AutoModel.from_pretrained(repo, cache_dir=tmp_path / "tf-cache").eval()
    assert type(wrapped).__name__ == "TimmWrapperModel"
    x = images()
    with torch.no_grad():
        pooled = wrapped(pixel_values=x).pooler_output
        # same weights; the wrapper may pick another kernel (one vs two threads): float rounding
        torch.testing.assert_close(pooled, model.backbone(x), rtol=1e-5, atol=1e-6)


def test_load_ssl_model_from_hub_reads_only_json_and_safetensors(fake_hub, saved) -> None:
    model, out = saved
    repo = f"{HUB_USER}/byol-load"
    push_to_hub(out, repo, base_delay=0.01)
    fake_hub.requests.clear()
    loaded = load_ssl_model(f"hf-hub:{repo}")
    fetched = {r.path.rsplit("/", 1)[-1] for r in fake_hub.requests if "/resolve/" in r.path}
    assert fetched == set(LOAD_FILES)
    assert loaded.cut_init_c == 9.0
    views = views_for(model)
    with torch.no_grad():
        assert torch.equal(model(views).loss, loaded(views).loss)


def test_push_again_updates_the_card(fake_hub, saved, tmp_path: Path) -> None:
    model, _ = saved
    repo = f"{HUB_USER}/byol-update"
    out = save_pretrained(model, tmp_path / "m", training_info=TRAINING_INFO)
    push_to_hub(out, repo, base_delay=0.01)
    first = fake_hub.files(repo)["README.md"].decode()
    save_pretrained(
        model, out, training_info={**TRAINING_INFO, "knn_accuracy": 0.5555, "epochs": 3}
    )
    push_to_hub(out, repo, commit_message="Update card", base_delay=0.01)
    second = fake_hub.files(repo)["README.md"].decode()
    assert "43.21 %" in first and "55.55 %" in second
    assert fake_hub.commits(repo)[-1].title == "Update card"
    assert push_to_hub(out, repo, base_delay=0.01).endswith(
        fake_hub.commits(repo)[-1].oid
    )  # no-op push


def test_push_a_model_directly(fake_hub) -> None:
    repo = f"{HUB_USER}/simclr-direct"
    push_to_hub(
        small_model("simclr"), repo, private=True, training_info={"epochs": 1}, base_delay=0.01
    )
    assert fake_hub.repos[("model", repo)].private
    config = json.loads(fake_hub.files(repo)["config.json"])
    assert config[BLOCK_KEY]["training"] == {"epochs": 1}


def test_push_retries_a_500(fake_hub, saved, caplog: pytest.LogCaptureFixture) -> None:
    _, out = saved
    repo = f"{HUB_USER}/retried"
    fake_hub.fail_next(1, 500, path_contains="/api/repos/create")
    with caplog.at_level(logging.WARNING, logger="hub_cutinit"):
        push_to_hub(out, repo, base_delay=0.01)
    statuses = [r.status for r in fake_hub.requests if r.path == "/api/repos/create"]
    assert statuses == [500, 200]
    assert "retrying" in caplog.text and "attempt 1/5" in caplog.text
    assert "config.json" in fake_hub.files(repo)


def test_push_gives_up_after_bounded_attempts(fake_hub, saved) -> None:
    _, out = saved
    fake_hub.fail_next(10, 503, path_contains="/api/repos/create")
    with pytest.raises(HubError, match="after 3 attempt"):
        push_to_hub(out, f"{HUB_USER}/down", max_attempts=3, base_delay=0.001)
    assert len([r for r in fake_hub.requests if r.path == "/api/repos/create"]) == 3


def test_connection_errors_are_retried(fake_hub, saved, monkeypatch, caplog) -> None:
    import socket

    from hub_server import point_huggingface_hub_at

    _, out = saved
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    point_huggingface_hub_at(dead)  # restored by the fake_hub fixture
    with (
        caplog.at_level(logging.WARNING, logger="hub_cutinit"),
        pytest.raises(HubError, match="after 2 attempt"),
    ):
        push_to_hub(out, f"{HUB_USER}/offline", max_attempts=2, base_delay=0.001)
    assert "retrying" in caplog.text


def test_401_is_explained_and_local_files_are_untouched(fake_hub, saved, monkeypatch) -> None:
    _, out = saved
    bad = "hf_fake-token-unknown-to-the-fake-hub-42"
    monkeypatch.delenv("HF_TOKEN")
    before = digest(out)
    with pytest.raises(HubAuthError) as info:
        push_to_hub(out, f"{HUB_USER}/denied", token=bad, base_delay=0.001)
    message = str(info.value)
    assert "401" in message and "hf auth login" in message and "HF_TOKEN" in message
    assert bad not in message and info.value.__cause__ is None
    assert digest(out) == before
    assert ("model", f"{HUB_USER}/denied") not in fake_hub.repos


def test_offline_mode_fails_fast(fake_hub, saved, monkeypatch) -> None:
    import huggingface_hub.constants as constants

    _, out = saved
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push_to_hub(out, f"{HUB_USER}/offline-mode", base_delay=5.0)  # a retry would take 5 s


def test_403_for_another_namespace(fake_hub, saved) -> None:
    _, out = saved
    with pytest.raises(HubAuthError, match="403"):
        push_to_hub(out, "someone-else/repo", base_delay=0.001)


def test_token_never_reaches_files_or_logs(
    fake_hub, saved, tmp_path: Path, monkeypatch, caplog, capfd
) -> None:
    model, _ = saved
    secret = "hf_fake-secret-that-must-never-leak-987"
    fake_hub.tokens[secret] = HUB_USER
    monkeypatch.delenv("HF_TOKEN")
    out = save_pretrained(model, tmp_path / "m", training_info=TRAINING_INFO)
    repo = f"{HUB_USER}/secret-test"
    fake_hub.fail_next(1, 500, path_contains="/api/repos/create")
    with caplog.at_level(logging.DEBUG):
        push_to_hub(out, repo, token=secret, base_delay=0.001)
        fake_hub.tokens.pop(secret)
        with pytest.raises(HubAuthError) as info:
            push_to_hub(out, repo, token=secret, base_delay=0.001)
    captured = capfd.readouterr()
    assert secret not in caplog.text and secret not in captured.out + captured.err
    assert secret not in str(info.value)
    for path in out.rglob("*"):
        assert secret.encode() not in path.read_bytes(), path
    for content in fake_hub.files(repo).values():
        assert secret.encode() not in content
    assert any(r.authorized for r in fake_hub.requests)


# -- CLI ---------------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hub-cutinit")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_card_and_push(fake_hub, saved, tmp_path: Path, capsys) -> None:
    _, out = saved
    copy = _copy(out, tmp_path / "cli")
    (copy / "README.md").unlink()
    assert _cli(["card", str(copy)]) == 0
    assert (copy / "README.md").exists()
    assert _cli(["push", str(copy), f"{HUB_USER}/cli-repo", "--private", "--token", HUB_TOKEN]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(fake_hub.url)
    assert fake_hub.repos[("model", f"{HUB_USER}/cli-repo")].private
    assert (
        _cli(["push", str(copy), f"{HUB_USER}/cli-repo", "--token", "hf_wrongwrongwrong123"]) == 1
    )
    err = capsys.readouterr().err
    assert "hf auth login" in err and "hf_wrongwrongwrong123" not in err


# -- the fake Hub itself -------------------------------------------------------------------------------
def test_hf_endpoint_before_import_reaches_the_fake_hub(fake_hub, saved) -> None:
    """The other way to point the client: HF_ENDPOINT set before huggingface_hub is imported."""
    _, out = saved
    repo = f"{HUB_USER}/env-endpoint"
    push_to_hub(out, repo, base_delay=0.01)
    code = (
        "import json, huggingface_hub as h; "
        f"p = h.hf_hub_download({repo!r}, 'config.json'); "
        "print(h.constants.ENDPOINT, json.load(open(p))['hub_cutinit']['method'])"
    )
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [fake_hub.url, "byol"]


def test_fake_hub_private_repos_and_programmed_failures(fake_hub) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi()
    api.create_repo(f"{HUB_USER}/private", private=True)
    assert api.model_info(f"{HUB_USER}/private").private
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{HUB_USER}/private", token=False)
    fake_hub.fail_next(1, 502, method="GET")
    with pytest.raises(HfHubHTTPError, match="502"):
        api.model_info(f"{HUB_USER}/private")
    assert api.model_info(f"{HUB_USER}/private").id == f"{HUB_USER}/private"
    assert [r.status for r in fake_hub.requests if r.method == "GET"] == [200, 401, 502, 200]
    assert HUB_TOKEN not in repr(fake_hub.requests)  # the log never holds the token
