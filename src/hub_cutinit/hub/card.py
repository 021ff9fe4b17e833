"""The model card: ``README.md`` rendered from ``config.json``, and the ``norms.png`` plot.

The template is ``hub_cutinit/templates/model_card.md`` (a copy sits at the top of the
repository as ``MODEL_CARD_TEMPLATE.md``); it is rendered with huggingface_hub's
``ModelCard.from_template`` so the YAML header is exactly what the Hub expects.

Example:
    >>> from hub_cutinit.hub.card import format_number
    >>> format_number(0.000512), format_number(3.0), format_number(None)
    ('0.000512', '3', '–')
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from hub_cutinit.hub.format import (
    BLOCK_KEY,
    CARD_NAME,
    CONVERGENCE_PLOT_NAME,
    FORMAT_VERSION,
    PLOT_NAME,
    read_config,
    write_text_atomic,
)
from hub_cutinit.registry import get_display_name

__all__ = [
    "render_model_card",
    "build_card",
    "add_evaluation_result",
    "plot_norm_history",
    "load_template",
    "format_number",
    "format_epochs",
    "CARD_TAGS",
]

#: Tags of every card (the method name is added).
CARD_TAGS = ("self-supervised", "cut-init", "hub-cutinit", "timm")
#: Built-in dataset of hub_cutinit.data and its Hub counterpart.
_BUILTIN_DATASET = (
    "built-in Fashion-MNIST subset (10k train / 2k test images)",
    "zalando-datasets/fashion_mnist",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PLACEHOLDER_REPO = "YOUR_USER/{name}"


def load_template() -> str:
    """The packaged model card template (Jinja2 + ``{{ card_data }}`` YAML header)."""
    return (
        resources.files("hub_cutinit")
        .joinpath("templates/model_card.md")
        .read_text(encoding="utf-8")
    )


def format_number(value: Any, digits: int = 4) -> str:
    """A short human-readable number; ``–`` for missing values."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _accuracy(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return format_number(value)
    percent = value * 100 if 0 <= value <= 1 else value
    return f"{percent:.2f} %"


def _dataset(training: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(text for the card, Hub dataset id for the YAML header or ``None``)."""
    dataset = training.get("dataset")
    if dataset is None:
        return None, None
    dataset = str(dataset)
    hub_id = training.get("dataset_id")
    if dataset == "builtin":
        return _BUILTIN_DATASET[0], hub_id or _BUILTIN_DATASET[1]
    if training.get("dataset_is_local") or os.path.isabs(dataset) or dataset.startswith((".", "~")):
        # a local path: show its name only (never the user's directory layout)
        return f"local data `{Path(dataset).name}`", hub_id
    if _HUB_ID.match(dataset):
        return f"[{dataset}](https://huggingface.co/datasets/{dataset})", hub_id or dataset
    return f"`{dataset}`", hub_id


def _norm_rows(norms: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, stats in norms.items():
        if not isinstance(stats, Mapping):
            stats = {"mean": stats}
        rows.append(
            {
                "name": f"`{name}`",
                **{k: format_number(stats.get(k)) for k in ("mean", "std", "min", "max")},
                "count": format_number(stats.get("count")),
            }
        )
    return rows


def plot_norm_history(
    history: list[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = ""
) -> Path | None:
    """Plot the mean embedding norm per epoch (one line per embedding) to a PNG.

    Drawn and written with :mod:`hub_cutinit.plotting` (Agg canvas, no pyplot, atomic).
    Returns the path, or ``None`` when ``history`` has no mean norms to plot.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    for i, entry in enumerate(history):
        x = entry.get("epoch", i + 1)
        for name, stats in (entry.get("norms") or {}).items():
            mean = stats.get("mean") if isinstance(stats, Mapping) else stats
            if isinstance(mean, (int, float)) and isinstance(x, (int, float)):
                series.setdefault(name, []).append((float(x), float(mean)))
    if not series:
        return None
    from hub_cutinit.plotting import new_figure, save_figure

    fig, axes = new_figure(figsize=(6.4, 4.0), dpi=100)
    ax = axes[0][0]
    for name, points in series.items():
        xs = [x for x, _ in sorted(points)]
        ys = [y for _, y in sorted(points)]
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=name)
    values = [y for points in series.values() for _, y in points]
    if min(values) > 0 and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean embedding norm ‖z‖")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=100)


def _schedule_rows(
    training: Mapping[str, Any], hparams: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Optimiser, learning rate, schedule and EMA rows, from the run record.

    Format 1 saves kept the method's defaults in ``hparams``; they are used only when the
    run record (``training``) lacks the key.
    """
    rows: list[tuple[str, str]] = []
    optimizer = training.get("optimizer", hparams.get("optimizer"))
    if optimizer is not None:
        nesterov = training.get("nesterov")
        suffixes: dict[object, str] = {True: " (Nesterov)", False: " (no Nesterov)"}
        suffix = suffixes.get(nesterov, "")
        rows.append(("optimizer", f"{optimizer}{suffix}"))
    if training.get("lr") is not None:
        rows.append(("peak learning rate", format_number(training["lr"])))
    base_lr = training.get("base_lr", hparams.get("base_lr"))
    if base_lr is not None:
        rows.append(("learning rate per 256 images", format_number(base_lr)))
    if training.get("warmup_steps") is not None:
        rows.append(("warm-up steps", format_number(training["warmup_steps"])))
    if training.get("cosine_steps") is not None:
        rows.append(("cosine horizon (steps)", format_number(training["cosine_steps"])))
    if (training.get("normalized_lr_scale") or 1) != 1:
        rows.append(
            ("lr × on BN-normalised weights", format_number(training["normalized_lr_scale"]))
        )
    momentum = training.get("ema_momentum", hparams.get("momentum"))
    if momentum is not None:
        schedule = training.get("ema_schedule") or hparams.get("momentum_schedule")
        rows.append(
            (
                "teacher EMA momentum",
                format_number(momentum) + (f" ({schedule})" if schedule else ""),
            )
        )
    return rows


def _eval_note(source: Any) -> str:
    """The card's text when a run recorded no evaluation, e.g. on unlabelled data."""
    if not source or not str(source).startswith("no evaluation"):
        return "No evaluation results were recorded for this checkpoint."
    return (
        f"{str(source)[0].upper()}{str(source)[1:]}: this run trained without kNN evaluation. "
        "Add a labelled evaluation set with `--eval-dataset SPEC` (e.g. `--eval-dataset builtin`)."
    )


def format_epochs(training: Mapping[str, Any]) -> str | None:
    """The epochs of a run, as a fraction of an epoch for a run shorter than one
    (``None`` when unknown).

    Example:
        >>> format_epochs({"epochs": 0, "steps": 16, "steps_per_epoch": 64})
        '0.25 epoch (16 of 64 steps)'
        >>> format_epochs({"epochs": 3, "steps": 192, "steps_per_epoch": 64})
        '3'
    """
    epochs = training.get("epochs")
    if epochs is None:
        return None
    steps, per_epoch = training.get("steps"), training.get("steps_per_epoch")
    if (
        epochs == 0
        and isinstance(steps, int)
        and isinstance(per_epoch, int)
        and 0 < steps < per_epoch
    ):
        return f"{steps / per_epoch:.2g} epoch ({steps} of {per_epoch} steps)"
    return format_number(epochs)


def _training_rows(
    config: Mapping[str, Any], architecture: Any, c: str, dataset_text: str | None
) -> list[tuple[str, str]]:
    """The card's "Training" table: method, backbone, cut, λ, schedule, data and scale."""
    block = config[BLOCK_KEY]
    method = str(block.get("method"))
    hparams = dict(block.get("hparams") or {})
    training = dict(block.get("training") or {})
    rows: list[tuple[str, str]] = [
        (
            "method",
            f"{get_display_name(method)} (`{method}`, {block.get('family') or '?'})",
        ),
        ("backbone", f"`{architecture}` ({config.get('num_features')} features)"),
        ("cut-initialisation c", c),
        ("weight decay λ", format_number(block.get("weight_decay"))),
    ]
    if hparams.get("cut_scope") not in (None, "all"):
        rows.append(("cut scope", f"`{hparams['cut_scope']}`"))
    if hparams.get("cut_spare"):
        rows.append(("left uncut", ", ".join(f"`{k}`" for k in hparams["cut_spare"])))
    rows.extend(_schedule_rows(training, hparams))
    if hparams.get("temperature") is not None:
        rows.append(("temperature τ", format_number(hparams["temperature"])))
    if hparams.get("grad_scale_power"):
        rows.append(("GradScale power p", format_number(hparams["grad_scale_power"])))
    if dataset_text:
        rows.append(("dataset", dataset_text))
    if training.get("eval_source"):
        rows.append(("evaluation data", str(training["eval_source"])))
    for key, label in (
        ("image_size", "image size"),
        ("epochs", "epochs"),
        ("steps", "optimiser steps"),
        ("batch_size", "batch size"),
        ("num_processes", "processes"),
        ("hardware", "hardware"),
        ("seeds", "seeds"),
        ("seed", "seed"),
    ):
        if training.get(key) is not None:
            rows.append((label, _training_value(training, key)))
    launch = _launch_row(training)
    if launch:
        rows.append(launch)
    return rows


def _launch_row(training: Mapping[str, Any]) -> tuple[str, str] | None:
    """Machines × processes, the global batch and how the lr was scaled by it.

    Example:
        >>> _launch_row({"num_machines": 2, "num_processes": 8, "batch_size": 64,
        ...              "grad_accum_steps": 1, "global_batch_size": 512, "lr": 0.6,
        ...              "base_lr": 0.3})[1]
        '2 machine(s) × 4 process(es) × batch 64 = global batch 512; lr 0.6 = 0.3 × 512 / 256'
    """
    needed = ("num_machines", "num_processes", "global_batch_size", "batch_size")
    if any(training.get(k) is None for k in needed):
        return None
    machines, processes = int(training["num_machines"]), int(training["num_processes"])
    accum = int(training.get("grad_accum_steps") or 1)
    text = (
        f"{machines} machine(s) × {processes // max(machines, 1)} process(es) × batch "
        f"{training['batch_size']}"
        + (f" × {accum} accumulation" if accum > 1 else "")
        + f" = global batch {training['global_batch_size']}"
    )
    if training.get("lr") is not None and training.get("base_lr") is not None:
        text += (
            f"; lr {format_number(training['lr'])} = {format_number(training['base_lr'])} × "
            f"{training['global_batch_size']} / 256"
        )
    return ("launch", text)


def _training_value(training: Mapping[str, Any], key: str) -> str:
    """A value of the "Training" table (epochs as a fraction for a run shorter than one)."""
    value = training[key]
    if key == "epochs":
        return str(format_epochs(training))
    return ", ".join(map(str, value)) if isinstance(value, list) else format_number(value)


def _eval_rows(evaluation: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The card's "Evaluation" table: kNN, linear probe and the baselines."""
    eval_rows: list[tuple[str, str]] = []
    if evaluation.get("knn_accuracy") is not None:
        k, tau = evaluation.get("knn_k", 200), evaluation.get("knn_temperature", 0.1)
        label = f"kNN accuracy (k = {format_number(k)}, τ = {format_number(tau)}, frozen backbone)"
        eval_rows.append((label, _accuracy(evaluation["knn_accuracy"])))
    if evaluation.get("linear_probe_accuracy") is not None:
        eval_rows.append(
            (
                "linear probe accuracy (frozen backbone)",
                _accuracy(evaluation["linear_probe_accuracy"]),
            )
        )
    baselines = dict(evaluation.get("baselines") or {})
    labels = {
        "random_init_knn": "baseline: kNN, same backbone at random initialisation",
        "raw_pixels_knn": "baseline: kNN on raw pixels",
    }
    for key, value in baselines.items():
        eval_rows.append((labels.get(key, f"baseline: {key}"), _accuracy(value)))
    for record in evaluation.get("evaluations") or []:  # added by `hub-cutinit eval`
        eval_rows.extend(_external_rows(record))
    return eval_rows


def _scale_epochs(training: Mapping[str, Any]) -> str | None:
    """The epochs in the card's scale sentence: "3 epoch(s)" or "0.25 epoch (16 of 64 steps)"."""
    text = format_epochs(training)
    whole = text is not None and text == format_number(training.get("epochs"))
    return f"{text} epoch(s)" if whole else text


def _scale_note(
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    *,
    dataset_text: str | None,
    architecture: Any,
    has_eval_rows: bool,
) -> str:
    """The sentence stating the run's scale, with a warning when it loses to random init."""
    scale = [
        dataset_text,
        _scale_epochs(training),
        f"{format_number(training['steps'])} steps" if training.get("steps") is not None else None,
        f"`{architecture}`",
        training.get("hardware"),
    ]
    parts = [str(part) for part in scale if part]
    scale_note = "Scale: " + ", ".join(parts) + "." if parts else ""
    if has_eval_rows:
        scale_note += (
            " A kNN accuracy means little on its own: compare it with the baselines"
            " (random initialisation, raw pixels) measured with the same protocol."
        )
        baselines = dict(evaluation.get("baselines") or {})
        knn, random_knn = evaluation.get("knn_accuracy"), baselines.get("random_init_knn")
        if (
            isinstance(knn, (int, float))
            and isinstance(random_knn, (int, float))
            and knn <= random_knn
        ):
            scale_note += " **At this scale the trained backbone does not beat the randomly initialised one.**"
    return scale_note


def _components(block: Mapping[str, Any], hparams: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the model has a momentum teacher, and the card's words for its extra parts."""
    components = dict(block.get("components") or {})
    has_teacher = bool(components.get("teacher", hparams.get("momentum") is not None))
    heads = ", ".join(f"`{h}`" for h in components.get("heads") or []) or "heads"
    heads_description = (
        f"heads ({heads})" + (", momentum teacher" if has_teacher else "") + " and loss buffers"
    )
    return has_teacher, heads_description


def _template_vars(config: Mapping[str, Any], repo_id: str | None) -> dict[str, Any]:
    block = config[BLOCK_KEY]
    method = str(block.get("method"))
    hparams = dict(block.get("hparams") or {})
    training = dict(block.get("training") or {})
    evaluation = dict(block.get("evaluation") or {})
    architecture = config.get("architecture") or block.get("architecture")
    c = format_number(float(block.get("c", 1.0)))
    model_name = (
        block.get("model_name")
        or (repo_id or "").split("/")[-1]
        or f"{method}-{architecture}-cut{c}"
    )
    dataset_text, _ = _dataset(training)
    eval_rows = _eval_rows(evaluation)
    scale_note = _scale_note(
        training,
        evaluation,
        dataset_text=dataset_text,
        architecture=architecture,
        has_eval_rows=bool(eval_rows),
    )
    has_teacher, heads_description = _components(block, hparams)
    versions = dict(block.get("versions") or {})
    hparams_json = json.dumps(hparams, indent=2, sort_keys=True)
    return {
        "model_name": model_name,
        "repo_id": repo_id or _PLACEHOLDER_REPO.format(name=model_name),
        "method": method,
        "method_display": get_display_name(method),
        "family": block.get("family") or "?",
        "architecture": architecture,
        "num_features": config.get("num_features"),
        "c": c,
        "c_value": repr(float(block.get("c", 1.0))),
        "weight_decay": format_number(block.get("weight_decay")),
        "training_rows": _training_rows(config, architecture, c, dataset_text),
        "norm_rows": _norm_rows(dict(block.get("norms") or {})),
        "eval_rows": eval_rows,
        "eval_note": _eval_note(training.get("eval_source")),
        "scale_note": scale_note,
        "has_teacher": has_teacher,
        "heads_description": heads_description,
        "versions": {k: versions.get(k, "?") for k in ("hub_cutinit", "torch", "timm")},
        "format_version": block.get("format_version", FORMAT_VERSION),
        "hparams_json": hparams_json,
        "setting_rows": _setting_rows(training),
    }


def _setting_rows(training: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(group, flag, value)`` for every recorded setting, grouped as they are declared
    (``training.setting_groups``, written by the trainer from its one declaration)."""
    rows = []
    for group, names in (training.get("setting_groups") or {}).items():
        for name in names:
            if name in training:
                value = training[name]
                text = format_number(value) if isinstance(value, float) else json.dumps(value)
                rows.append((group, f"--{name.replace('_', '-')}", text))
    return rows


def plot_convergence(
    records: list[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = ""
) -> Path | None:
    """The convergence monitor's readings (angle per step, ‖z‖, lr against step) as a PNG.

    Returns ``None`` (writing nothing) when no step was monitored.
    """
    if not any(k.startswith("angle/") for r in records for k in r):
        return None
    from hub_cutinit.monitor import angle_norm_figure
    from hub_cutinit.plotting import save_figure

    return save_figure(angle_norm_figure(records), path, title=title)


def build_card(
    config: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    plot_file: str | None = None,
    convergence_plot_file: str | None = None,
):
    """The :class:`huggingface_hub.ModelCard` for a saved model's ``config.json`` dict."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    block = config[BLOCK_KEY]
    variables = _template_vars(config, repo_id)
    training = dict(block.get("training") or {})
    evaluation = dict(block.get("evaluation") or {})
    _, dataset_id = _dataset(training)
    dataset_label = Path(str(training.get("dataset") or "custom")).name
    eval_results = []
    for key, name in (
        ("knn_accuracy", f"kNN accuracy (k={evaluation.get('knn_k', 200)})"),
        ("linear_probe_accuracy", "linear probe accuracy"),
    ):
        value = evaluation.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            eval_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image classification on frozen features",
                    dataset_type=dataset_id or "custom",
                    dataset_name=dataset_id or dataset_label,
                    dataset_split=training.get("eval_split", "test"),
                    metric_type="accuracy",
                    metric_name=name,
                    metric_value=float(value),
                )
            )
    eval_results += _external_eval_results(evaluation.get("evaluations") or [])
    card_data = ModelCardData(
        license=str(block.get("license") or "apache-2.0"),
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        tags=[CARD_TAGS[0], variables["method"], *CARD_TAGS[1:]],
        datasets=[dataset_id] if dataset_id else None,
        model_name=variables["model_name"] if eval_results else None,
        eval_results=eval_results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_str=load_template(),
        plot_file=plot_file,
        convergence_plot_file=convergence_plot_file,
        **variables,
    )
    # the template's optional sections leave runs of blank lines: collapse them
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)).rstrip() + "\n")


def render_model_card(out_dir: str | os.PathLike[str], *, repo_id: str | None = None) -> Path:
    """(Re-)render ``README.md`` and ``norms.png`` of a saved model from its ``config.json``.

    Args:
        out_dir: a folder written by :func:`hub_cutinit.hub.save_pretrained`.
        repo_id: the Hub repository used in the card's usage snippets (a placeholder when
            ``None``).

    Returns:
        The path of ``README.md``.
    """
    out_dir = Path(out_dir)
    config = read_config(out_dir)
    block = config[BLOCK_KEY]
    title = f"{block.get('method')} · {config.get('architecture')} · c = {format_number(block.get('c'))}"
    plot = plot_norm_history(
        list(block.get("norm_history") or []), out_dir / PLOT_NAME, title=title
    )
    if plot is None:
        (out_dir / PLOT_NAME).unlink(missing_ok=True)
    convergence = plot_convergence(
        list((block.get("training") or {}).get("convergence") or []),
        out_dir / CONVERGENCE_PLOT_NAME,
        title=title,
    )
    if convergence is None:
        (out_dir / CONVERGENCE_PLOT_NAME).unlink(missing_ok=True)
    card = build_card(
        config,
        repo_id=repo_id,
        plot_file=PLOT_NAME if plot else None,
        convergence_plot_file=CONVERGENCE_PLOT_NAME if convergence else None,
    )
    return write_text_atomic(out_dir / CARD_NAME, str(card))


# -- results of `hub-cutinit eval --update-card` ------------------------------------------------
#: The metrics of an evaluation record, as the card names them.
_EXTERNAL_METRICS = (
    ("knn_accuracy", "kNN accuracy (k={k}, τ={temperature}, protocol {version})"),
    ("linear_probe_accuracy", "linear probe accuracy (protocol {version})"),
)


def _metric_name(template: str, record: Mapping[str, Any]) -> str:
    """A metric's name with the protocol version and any value changed from its defaults."""
    changes = dict(record.get("protocol_changes") or {})
    changes.pop("k", None)  # named in the kNN metric already
    changes.pop("temperature", None)
    suffix = "".join(f", {k}={v}" for k, v in sorted(changes.items()))
    return template.format(**(record.get("protocol") or {})).replace(")", suffix + ")", 1)


def _external_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The card table's rows for one ``hub-cutinit eval`` record."""
    data = record.get("data") or {}
    source = str(data.get("source", data.get("dataset"))).removeprefix("kNN: ")
    where = (
        f"`hub-cutinit eval`, {source}, {data.get('bank_samples')} / "
        f"{data.get('test_samples')} images"
    )
    rows = []
    for key, name in _EXTERNAL_METRICS:
        if isinstance(record.get(key), (int, float)):
            rows.append((f"{_metric_name(name, record)}; {where}", _accuracy(record[key])))
    names = {"random_init_knn": "random initialisation", "raw_pixels_knn": "raw pixels"}
    for key, value in (record.get("baselines") or {}).items():
        label = _metric_name(f"baseline: kNN, {names.get(key, key)} (protocol {{version}})", record)
        rows.append((f"{label}; {where}", _accuracy(value)))
    return rows


def _external_eval_results(records: list[Mapping[str, Any]]) -> list[Any]:
    """model-index entries (``EvalResult``) for the ``hub-cutinit eval`` records."""
    from huggingface_hub import EvalResult

    results = []
    for record in records:
        protocol, data = record.get("protocol") or {}, record.get("data") or {}
        _, dataset_id = _dataset({"dataset": data.get("dataset")})
        args = {"k": protocol.get("k"), "temperature": protocol.get("temperature")}
        for key, name in _EXTERNAL_METRICS:
            value = record.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image classification on frozen features",
                    dataset_type=dataset_id or "custom",
                    dataset_name=dataset_id or str(data.get("dataset") or "custom"),
                    dataset_split=data.get("eval_split"),
                    metric_type="accuracy",
                    metric_name=_metric_name(name, record),
                    metric_value=float(value),
                    metric_args={"protocol_version": protocol.get("version"), **args}
                    if key == "knn_accuracy"
                    else {"protocol_version": protocol.get("version")},
                )
            )
    return results


#: What an evaluation record in config.json keeps of a result (no local paths, no timings).
_RECORD_KEYS = (
    "protocol_version",
    "protocol",
    "protocol_changes",
    "data",
    "knn_accuracy",
    "linear_probe_accuracy",
    "baselines",
    "num_processes",
    "versions",
)


def _record_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    data, protocol = record.get("data") or {}, record.get("protocol") or {}
    values = {k: v for k, v in protocol.items() if k != "rules"}
    return (json.dumps(values, sort_keys=True), json.dumps(data, sort_keys=True))


def add_evaluation_result(out_dir: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Add a :func:`hub_cutinit.eval_backbone.evaluate_backbone` result to a saved model.

    The record goes into ``config.json`` (``hub_cutinit.evaluation.evaluations``, with its
    protocol and version; a record of the same protocol values and data replaces the older
    one) and the card is re-rendered: a row of the Evaluation table and a model-index entry per
    metric. Returns the path of ``README.md``.
    """
    from hub_cutinit.hub.format import CONFIG_NAME

    out_dir = Path(out_dir)
    config = read_config(out_dir)
    record = {k: result[k] for k in _RECORD_KEYS if k in result}
    record["model"] = {k: v for k, v in (result.get("model") or {}).items() if k != "spec"}
    evaluation = config[BLOCK_KEY]["evaluation"] = dict(config[BLOCK_KEY].get("evaluation") or {})
    old = [r for r in evaluation.get("evaluations") or [] if _record_key(r) != _record_key(record)]
    evaluation["evaluations"] = [*old, record]
    text = json.dumps(config, indent=2, allow_nan=False)
    write_text_atomic(out_dir / CONFIG_NAME, text + "\n")
    return render_model_card(out_dir)
