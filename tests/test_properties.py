"""Property-based tests (hypothesis): cut_init's arguments, the registry's overrides, the flags.

Example counts are modest and deadlines off: the machine is shared and slow
(``HUB_CUTINIT_HYPOTHESIS_SCALE=10`` searches ten times deeper).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import math
import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

from hub_cutinit import create_ssl_model, cut_init, get_method_defaults, get_preset, list_methods
from hub_cutinit.cut import cut_targets
from hub_cutinit.methods.base import RunSpec
from hub_cutinit.registry import check_run
from hub_cutinit.training import TrainConfig, parse_args

#: HUB_CUTINIT_HYPOTHESIS_SCALE=10 runs ten times more examples (a deeper local search).
SCALE = float(os.environ.get("HUB_CUTINIT_HYPOTHESIS_SCALE", "1"))
FAST = settings(
    max_examples=max(1, int(40 * SCALE)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOWER = settings(
    max_examples=max(1, int(12 * SCALE)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

finite_positive = st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():  # non-trivial BatchNorm affine values and buffers
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
        net[1].running_mean.uniform_(-1, 1)
    return net


NAMES = [n for n, _ in small_net().named_parameters()]


# -- cut_init ---------------------------------------------------------------------------------------
@FAST
@given(c=finite_positive)
@example(c=1.0)
@example(c=3.0)
@example(c=1e-300)
@example(c=5e-324)
@example(c=1.7e308)
def test_any_finite_positive_c_divides_every_parameter_as_torch_does(c: float) -> None:
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    try:
        cut_init(net, c)
    except ValueError as err:  # c that float32 cannot hold, or that over/underflows a parameter
        assert "does not fit" in str(err)
        assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
        return
    assert net.cut_init_c == c
    for name, p in net.named_parameters():
        torch.testing.assert_close(p, before[name] / c, rtol=0, atol=0, equal_nan=True, msg=name)
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())


@FAST
@given(c=st.floats(min_value=1e-6, max_value=1e6))
def test_reasonable_c_gives_exactly_p_over_c_and_keeps_parameters_finite(c: float) -> None:
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cut_init(net, c)
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name] / c), name
        assert torch.isfinite(p).all()
        nonzero = before[name] != 0
        assert (p[nonzero] != 0).all()  # nothing underflows to 0 in this range


@pytest.mark.parametrize("c", [1e-39, 1e-300, 1e39, 1e300])
def test_extreme_c_is_rejected_instead_of_breaking_the_network(c: float) -> None:
    net = small_net()
    with pytest.raises(ValueError, match="c"):
        cut_init(net, c)


bad_c = st.one_of(
    st.floats(max_value=0.0),  # 0, negatives, -inf
    st.just(math.inf),
    st.just(math.nan),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.lists(st.floats(min_value=1, max_value=9), max_size=2),
    st.just(torch.tensor(3.0)),
)


@FAST
@given(c=bad_c)
def test_invalid_c_raises_value_error_and_leaves_the_model_alone(c: Any) -> None:
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with pytest.raises(ValueError, match=r"c must be a finite number > 0"):
        cut_init(net, c)
    assert not hasattr(net, "cut_init_c")
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())


def _pattern_for(name: str, draw_kind: int) -> str:
    module, _, attr = name.rpartition(".")
    return [name, f"{module}.*", f"*.{attr}", f"{module[0]}*"][draw_kind % 4]


patterns = st.lists(
    st.tuples(st.sampled_from(NAMES), st.integers(0, 3)).map(lambda t: _pattern_for(*t))
    | st.sampled_from(["*", "nothing.*", "?.weight", "[01].bias"]),
    max_size=3,
)


@FAST
@given(include=patterns, exclude=patterns, c=st.floats(min_value=0.01, max_value=100))
def test_include_exclude_cut_exactly_the_selected_subset(
    include: list[str], exclude: list[str], c: float
) -> None:
    def matches(name: str, pats: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in pats)

    expected = [
        n for n in NAMES if (not include or matches(n, include)) and not matches(n, exclude)
    ]
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    if not expected:
        with pytest.raises(ValueError, match="matched no parameter"):
            cut_init(net, c, include=include or None, exclude=exclude or None)
        return
    assert cut_targets(net, include=include or None, exclude=exclude or None) == expected
    cut_init(net, c, include=include or None, exclude=exclude or None)
    for name, p in net.named_parameters():
        want = before[name] / c if name in expected else before[name]
        assert torch.equal(p, want), name


# -- the registry's overrides ------------------------------------------------------------------------
OVERRIDE_VALUES: dict[str, st.SearchStrategy] = {
    "proj_hidden_dim": st.integers(4, 24),
    "proj_dim": st.integers(4, 24),
    "pred_hidden_dim": st.integers(4, 16),
    "head_hidden_dim": st.integers(4, 24),
    "head_bottleneck_dim": st.integers(4, 16),
    "head_out_dim": st.integers(4, 32),
    "head_batch_norm": st.booleans(),
    "temperature": st.floats(0.01, 2.0),
    "teacher_temp": st.floats(0.01, 0.1),
    "warmup_teacher_temp": st.floats(0.01, 0.1),
    "student_temp": st.floats(0.05, 0.5),
    "center_momentum": st.floats(0.5, 0.99),
    "momentum": st.floats(0.5, 0.999),
    "queue_size": st.integers(1, 8).map(lambda k: 8 * k),
    "c": st.floats(0.5, 20.0),
    "weight_decay": st.floats(0.0, 0.1),
    "base_lr": st.floats(1e-4, 1.0),
    "optimizer": st.sampled_from(["sgd", "lars", "adamw"]),
    "sgd_momentum": st.floats(0.0, 0.99),
    "nesterov": st.booleans(),
    "grad_scale_power": st.floats(0.0, 2.0),
    "cut_scope": st.sampled_from(["all", "heads", "last"]),
    "num_local_views": st.integers(0, 2),
}


@st.composite
def method_and_overrides(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Any registered method, its ``tiny`` preset (fast heads) and up to 5 drawn overrides."""
    method = draw(st.sampled_from(list_methods()))
    defaults = get_method_defaults(method)
    keys = sorted(k for k in OVERRIDE_VALUES if k in defaults)
    if not defaults.get("num_local_views"):  # local views only for multi-crop methods
        keys = [k for k in keys if k != "num_local_views"]
    if defaults.get("momentum") is None:
        keys = [k for k in keys if k != "momentum"]
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=5))
    overrides = {**get_preset(method, "tiny"), **{k: draw(OVERRIDE_VALUES[k]) for k in chosen}}
    return method, overrides


@SLOWER
@given(drawn=method_and_overrides())
def test_valid_overrides_round_trip_through_get_config(drawn: tuple[str, dict[str, Any]]) -> None:
    method, overrides = drawn
    model = create_ssl_model(method, "test_resnet", **overrides)
    config = model.get_config()
    assert json.loads(json.dumps(config)) == config  # JSON-serialisable as saved
    for key, value in overrides.items():
        assert model.hparams[key] == value, key
    again = create_ssl_model(
        config["method"], config["backbone"], c=config["c"], **config["overrides"]
    )
    assert again.get_config() == config and again.hparams == model.hparams
    assert again.cut_init_c == model.cut_init_c == overrides.get("c", model.hparams["c"])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes


@pytest.mark.parametrize("method", list_methods())
def test_cut_scope_last_works_or_says_why(method: str) -> None:
    try:
        model = create_ssl_model(
            method, "test_resnet", cut_scope="last", **get_preset(method, "tiny")
        )
    except ValueError as err:
        assert "fixed" in str(err) or method in str(err).lower(), str(err)
    else:
        assert model.cut_init_c == get_method_defaults(method)["c"]


identifier = st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True)


@FAST
@given(method=st.sampled_from(list_methods()), key=identifier)
def test_unknown_override_keys_raise_listing_the_valid_ones(method: str, key: str) -> None:
    defaults = get_method_defaults(method)
    assume(key not in defaults)
    with pytest.raises(ValueError) as info:
        create_ssl_model(method, "test_resnet", **{key: 1})
    message = str(info.value)
    assert repr(key) in message and "valid ones" in message
    assert all(repr(k) in message for k in defaults if k != "family")
    with pytest.raises(ValueError, match=r"Unknown --set key") as info:
        TrainConfig(method=method, overrides={key: 1})
    assert all(repr(k) in str(info.value) for k in defaults if k != "family")


# -- recipe flags -------------------------------------------------------------------------------------
POSITIVE_INT_FLAGS = {
    "--batch-size": ("batch_size", st.integers(2, 4096)),
    "--epochs": ("epochs", st.integers(1, 1000)),
    "--max-steps": ("max_steps", st.integers(1, 10**7)),
    "--grad-accum-steps": ("grad_accum_steps", st.integers(1, 64)),
    "--image-size": ("image_size", st.integers(8, 1024)),
    "--knn-k": ("knn_k", st.integers(1, 1000)),
    "--eval-max-samples": ("eval_max_samples", st.integers(1, 10**6)),
    "--num-examples": ("num_examples", st.integers(1, 10**9)),
}
NON_NEGATIVE_INT_FLAGS = {
    "--checkpoint-every": ("checkpoint_every", st.integers(0, 10**6)),
    "--eval-every": ("eval_every", st.integers(0, 10**6)),
    "--num-workers": ("num_workers", st.integers(0, 32)),
    "--seed": ("seed", st.integers(0, 2**32 - 1)),
    "--shuffle-buffer": ("shuffle_buffer", st.integers(1, 10**5)),
}
POSITIVE_FLOAT_FLAGS = {
    "--c": ("c", st.floats(1e-3, 1e3)),
    "--lr": ("lr", st.floats(1e-8, 10.0)),
}
OTHER_FLAGS = {
    "--weight-decay": ("weight_decay", st.floats(0.0, 1.0)),
    "--grad-scale-power": ("grad_scale_power", st.floats(0.0, 2.0)),
    "--optimizer": ("optimizer", st.sampled_from(["sgd", "lars", "adamw"])),
    "--mixed-precision": ("mixed_precision", st.sampled_from(["no", "bf16", "fp16"])),
    "--backbone": (
        "backbone",
        st.sampled_from(["resnet18", "test_resnet", "vit_tiny_patch16_224"]),
    ),
    "--output-dir": ("output_dir", st.from_regex(r"[a-z][a-z0-9_/]{0,20}", fullmatch=True)),
}
SWITCHES = {
    "--resume": ("resume", True),
    "--linear-probe": ("linear_probe", True),
    "--no-baselines": ("baselines", False),
    "--hub-private": ("hub_private", True),
}
VALUED = {**POSITIVE_INT_FLAGS, **NON_NEGATIVE_INT_FLAGS, **POSITIVE_FLOAT_FLAGS, **OTHER_FLAGS}


@st.composite
def flag_sets(draw: st.DrawFn) -> tuple[list[str], dict[str, Any]]:
    argv: list[str] = []
    expected: dict[str, Any] = {}
    for flag in draw(st.lists(st.sampled_from(sorted(VALUED)), unique=True, max_size=8)):
        field_name, strategy = VALUED[flag]
        value = draw(strategy)
        argv += [flag, repr(value) if isinstance(value, float) else str(value)]
        expected[field_name] = value
    for flag in draw(st.lists(st.sampled_from(sorted(SWITCHES)), unique=True, max_size=4)):
        argv.append(flag)
        field_name, value = SWITCHES[flag]
        expected[field_name] = value
    if draw(st.booleans()):
        argv += ["--eval-split", "none"]
        expected["eval_split"] = None
    return argv, expected


@FAST
@given(method=st.sampled_from(list_methods()), drawn=flag_sets())
@example(method="dino", drawn=(["--mixed-precision", "fp16"], {"mixed_precision": "fp16"}))
def test_valid_flag_combinations_fill_the_config(
    method: str, drawn: tuple[list[str], dict[str, Any]]
) -> None:
    argv, expected = drawn
    if _refused_by_the_method(method, expected, argv):  # e.g. DINO refuses fp16 at c = 9
        return
    cfg = parse_args(method, argv)
    assert cfg.method == method
    got = cfg.to_dict()
    for field_name, value in expected.items():
        assert got[field_name] == value, (field_name, argv)
    defaults = TrainConfig(method=method).to_dict()
    untouched = set(defaults) - set(expected) - {"method"}
    assert {k: got[k] for k in untouched} == {k: defaults[k] for k in untouched}


def _refused_by_the_method(method: str, expected: dict[str, Any], argv: list[str]) -> bool:
    """True (after checking that the flags exit 2 with its message) when the method's
    ``check_run`` refuses the drawn c and precision; False when it accepts them."""
    c = expected.get("c", get_method_defaults(method)["c"])
    try:
        check_run(method, RunSpec(c=float(c), mixed_precision=expected.get("mixed_precision")))
    except ValueError as refusal:
        err = io.StringIO()
        with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(err):
            parse_args(method, argv)
        assert info.value.code == 2 and str(refusal)[:40] in err.getvalue(), (argv, err.getvalue())
        return True
    return False


def _invalid_values(flag: str) -> st.SearchStrategy[str]:
    # not "--": argparse turns "--flag=--" into [] and TrainConfig then raises a TypeError
    words = st.sampled_from(["abc", "", "1e", "3x", "0x10", "1,5"])
    if flag in POSITIVE_INT_FLAGS:
        low = 2 if flag == "--batch-size" else 1
        return st.one_of(st.integers(max_value=low - 1).map(str), words, st.just("2.5"))
    if flag in ("--checkpoint-every", "--eval-every", "--num-workers"):
        return st.one_of(st.integers(max_value=-1).map(str), words, st.just("1.5"))
    if flag in POSITIVE_FLOAT_FLAGS:
        bad = st.floats(max_value=0.0, allow_nan=False).map(repr)
        return st.one_of(bad, st.sampled_from(["nan", "inf", "-inf", "NaN"]), words)
    if flag == "--weight-decay":
        bad = st.floats(max_value=-1e-300, allow_nan=False).map(repr)
        return st.one_of(bad, st.sampled_from(["nan", "inf"]), words)
    return st.sampled_from(["sgdd", "fp32", "NO"])  # choices


INVALID_FLAGS = sorted(
    [*POSITIVE_INT_FLAGS, *POSITIVE_FLOAT_FLAGS, "--checkpoint-every", "--eval-every"]
    + ["--num-workers", "--weight-decay", "--optimizer", "--mixed-precision"]
)


@st.composite
def one_bad_flag(draw: st.DrawFn) -> tuple[str, str]:
    flag = draw(st.sampled_from(INVALID_FLAGS))
    return flag, draw(_invalid_values(flag))


@FAST
@given(method=st.sampled_from(list_methods()), bad=one_bad_flag(), good=flag_sets())
def test_invalid_numbers_exit_2_naming_the_flag(
    method: str, bad: tuple[str, str], good: tuple[list[str], dict[str, Any]]
) -> None:
    flag, value = bad
    argv = [a for a in good[0]]
    if flag in argv:  # the bad value is the only one for its flag
        i = argv.index(flag)
        del argv[i : i + 2]
    argv += [f"{flag}={value}"] if value.startswith("-") or not value else [flag, value]
    err = io.StringIO()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(err):
        parse_args(method, argv)
    err = err.getvalue()
    assert info.value.code == 2
    assert flag in err, (argv, err)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--seed", "-1"),
        ("--seed", str(2**32)),
        ("--shuffle-buffer", "0"),
        ("--image-size", "4"),
        ("--grad-scale-power", "nan"),
    ],
)
def test_flags_only_checked_at_train_time_exit_2_naming_the_flag(
    flag: str, value: str, capsys
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args("simclr", [f"{flag}={value}"])
    assert info.value.code == 2 and flag in capsys.readouterr().err
