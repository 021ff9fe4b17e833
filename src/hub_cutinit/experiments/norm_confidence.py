"""Norms encode confidence (the extended paper, PAPER §5): kNN accuracy per embedding-norm bucket.

Protocol: embed a labelled eval split and a kNN bank with a trained model, classify the eval
samples with the weighted kNN of PAPER §7, rescale each embedding's norms to [0, 1] across the
eval set, bucket them in steps of 0.05 and report the accuracy of every bucket holding at least
10 samples (:func:`hub_cutinit.evaluation.norm_bucket_accuracy`). The paper's finding: samples
with a smaller embedding norm are classified less accurately.

The protocol itself is the library's :func:`hub_cutinit.evaluation.norm_confidence`; this
module is the experiment around it: ``hub-cutinit analyze OUT_DIR --dataset builtin`` runs it
on a model saved by the training loop (:func:`hub_cutinit.hub.load_ssl_model`), for the
backbone features and the projections, and writes ``norm_buckets.csv``, ``norm_buckets.png``
and ``norm_buckets.md``.

Example:
    >>> import tempfile
    >>> from hub_cutinit import create_ssl_model
    >>> from hub_cutinit.hub import save_pretrained
    >>> model = create_ssl_model("simclr", "test_resnet", c=1)
    >>> out = save_pretrained(model, tempfile.mkdtemp() + "/m", training_info={"image_size": 32})
    >>> result = analyze(out, max_samples=64, k=10, min_count=1, plot=False)
    >>> sorted(result["buckets"]), sum(r["count"] for r in result["buckets"]["backbone"])
    (['backbone', 'projection'], 64)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from hub_cutinit.atomic import atomic_path, write_text_atomic
from hub_cutinit.data import normalize_views
from hub_cutinit.evaluation import norm_confidence
from hub_cutinit.plotting import new_figure, save_figure

if TYPE_CHECKING:
    from hub_cutinit.methods.base import SSLModel

__all__ = [
    "BUCKET_COLUMNS",
    "embed",
    "analyze",
    "write_bucket_csv",
    "write_analysis",
    "plot_buckets",
    "format_table",
    "register_cli",
    "main",
]

#: Columns of ``norm_buckets.csv``.
BUCKET_COLUMNS: tuple[str, ...] = (
    "embedding",
    "bucket_low",
    "bucket_high",
    "norm_low",
    "norm_high",
    "count",
    "accuracy",
)


@torch.no_grad()
def embed(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    names: Sequence[str] = ("backbone", "projection"),
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Eval-mode embeddings ``{name: (N, D)}`` and labels ``(N,)`` of an SSL model.

    Each batch goes through the method's own forward (``model(views)``, so "projection" and
    "prediction" mean what the method means): the batch is split into two equal halves passed
    as the two views (eval-mode BatchNorm, so the halves do not interact) and the embeddings
    are re-joined in order; an odd last image is padded by repeating it. ``model`` may also be
    a plain backbone (only ``"backbone"`` is then available).
    """
    if not names:
        raise ValueError("names is empty; ask for at least one embedding, e.g. ('backbone',)")
    was_training = model.training
    model.eval().to(device)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    labels: list[torch.Tensor] = []
    is_ssl = hasattr(model, "num_views") and hasattr(model, "backbone")
    try:
        for batch in batches:
            images, label = batch["image"].to(device), torch.as_tensor(batch["label"]).long()
            images = normalize_views([images])[0]  # uint8 loaders: normalised as in training
            n = len(images)
            if not is_ssl:
                if set(names) != {"backbone"}:
                    raise ValueError(
                        f"a plain backbone only gives 'backbone' embeddings, not {list(names)}; "
                        "pass the SSL model (hub_cutinit.hub.load_ssl_model) for the heads"
                    )
                out["backbone"].append(model(images).reshape(n, -1).float().cpu())
            else:
                ssl = cast("SSLModel", model)  # duck-typed above: num_views and backbone
                if n == 1 and set(names) == {"backbone"}:
                    emb = {"backbone": ssl.backbone(images)}
                else:
                    padded = torch.cat([images, images[-1:]]) if n % 2 else images
                    half = len(padded) // 2
                    views = [padded[:half], padded[half:]]
                    n_global = ssl.num_views()[0]
                    if n_global != 2:
                        views = [padded] * n_global
                    emb = ssl(views).embeddings
                    if n_global != 2:
                        emb = {k: v[: len(padded)] for k, v in emb.items()}
                missing = sorted(set(names) - set(emb))
                if missing:
                    raise ValueError(
                        f"{getattr(model, 'method', type(model).__name__)} has no {missing} "
                        f"embedding; available: {sorted(emb)}"
                    )
                for name in names:
                    out[name].append(emb[name][:n].reshape(n, -1).float().cpu())
            labels.append(label.reshape(-1).cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("the loader yielded no batches; check the dataset split")
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(labels)


def write_bucket_csv(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """One row per (embedding, bucket) with :data:`BUCKET_COLUMNS`."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(BUCKET_COLUMNS))
        writer.writeheader()
        for name, res in results.items():
            for row in res["buckets"]:
                writer.writerow(
                    {
                        "embedding": name,
                        "bucket_low": f"{row['bucket_low']:.2f}",
                        "bucket_high": f"{row['bucket_high']:.2f}",
                        "norm_low": f"{row['norm_low']:.6g}",
                        "norm_high": f"{row['norm_high']:.6g}",
                        "count": row["count"],
                        "accuracy": f"{row['accuracy']:.4f}",
                    }
                )
    return path


def plot_buckets(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Accuracy (line) and sample count (bars) per rescaled-norm bucket, one panel per
    embedding; the dashed line is the overall kNN accuracy."""
    fig, axes = new_figure(1, len(results), figsize=(4.6 * len(results), 3.4))
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        rows = res["buckets"]
        centers = [(r["bucket_low"] + r["bucket_high"]) / 2 for r in rows]
        width = (rows[0]["bucket_high"] - rows[0]["bucket_low"]) * 0.9 if rows else 0.05
        counts = ax.twinx()
        counts.bar(centers, [r["count"] for r in rows], width=width, color="lightgray", zorder=0)
        counts.set_ylabel("samples", color="gray")
        ax.set_zorder(counts.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(centers, [r["accuracy"] for r in rows], marker="o", color="C0")
        ax.axhline(res["accuracy"], color="C0", ls="--", lw=1, label="overall")
        ax.set_xlim(0, 1)
        ax.set_xlabel("embedding norm, rescaled to [0, 1]")
        ax.set_ylabel("kNN accuracy")
        ax.set_title(f"{name} (kNN on {res['knn_on']})", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    return save_figure(fig, path, title=title, title_size=9)


def format_table(results: Mapping[str, Mapping[str, Any]], markdown: bool = False) -> str:
    """The buckets as a printable (or markdown) table, one block per embedding."""
    lines = []
    for name, res in results.items():
        summary = (
            f"{name}: kNN on {res['knn_on']}, overall accuracy {res['accuracy']:.4f} on "
            f"{res['num_samples']} samples; mean norm {res['mean_norm']:.4g} (correct "
            f"{res['mean_norm_correct']:.4g}, wrong {res['mean_norm_wrong']:.4g})"
        )
        if markdown:
            lines += [f"**{summary}**", "", "| rescaled norm | norm | samples | kNN accuracy |"]
            lines.append("|---|---|---|---|")
            for r in res["buckets"]:
                lines.append(
                    f"| [{r['bucket_low']:.2f}, {r['bucket_high']:.2f}) | "
                    f"{r['norm_low']:.4g}–{r['norm_high']:.4g} | {r['count']} | "
                    f"{r['accuracy'] * 100:.1f}% |"
                )
        else:
            lines += [summary, f"  {'bucket':>12s} {'norm range':>21s} {'n':>6s} {'acc':>7s}"]
            for r in res["buckets"]:
                lines.append(
                    f"  [{r['bucket_low']:.2f},{r['bucket_high']:.2f}) "
                    f"{r['norm_low']:10.4g}-{r['norm_high']:<10.4g} {r['count']:6d} "
                    f"{r['accuracy']:7.4f}"
                )
        lines.append("")
    return "\n".join(lines)


def write_analysis(
    results: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    title: str | None = "",
) -> list[Path]:
    """Write ``norm_buckets.csv``, ``norm_buckets.png`` (unless ``title`` is ``None``) and
    ``norm_buckets.md`` of :func:`hub_cutinit.evaluation.norm_confidence` results."""
    out = Path(out_dir)
    files = [write_bucket_csv(results, out / "norm_buckets.csv")]
    if title is not None:
        files.append(plot_buckets(results, out / "norm_buckets.png", title=title))
    files.append(write_text_atomic(out / "norm_buckets.md", format_table(results, markdown=True)))
    return files


def _image_size(model: nn.Module, default: int = 32) -> int:
    info = getattr(model, "hub_cutinit_info", None) or {}
    size = (info.get("training") or {}).get("image_size")
    if size:
        return int(size)
    cfg = getattr(getattr(model, "backbone", model), "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size")
    return int(input_size[-1]) if input_size else default


def analyze(
    model_dir: str | os.PathLike[str],
    dataset: str = "builtin",
    *,
    train_split: str = "train",
    eval_split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    max_samples: int | None = None,
    embeddings: Sequence[str] = ("backbone", "projection"),
    knn_on: str = "same",
    k: int = 200,
    temperature: float = 0.1,
    step: float = 0.05,
    min_count: int = 10,
    batch_size: int = 256,
    out_dir: str | os.PathLike[str] | None = None,
    plot: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Load a saved model, embed ``train_split`` (the kNN bank) and ``eval_split``, and compute
    the norm-bucket accuracies; write ``norm_buckets.csv`` (and ``.png``) to ``out_dir``
    (default ``model_dir/analysis``). Returns ``{"buckets": {name: rows}, "results": ...,
    "files": [...]}``."""
    from hub_cutinit.data import build_eval_loaders
    from hub_cutinit.hub import load_ssl_model

    model = load_ssl_model(model_dir)
    size = image_size or _image_size(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bank_loader, test_loader = build_eval_loaders(
        dataset,
        image_size=size,
        train_split=train_split,
        eval_split=eval_split,
        image_column=image_column,
        label_column=label_column,
        max_samples=max_samples,
        batch_size=batch_size,
    )
    names = list(embeddings)
    if knn_on != "same" and knn_on not in names:
        names = [knn_on, *names]  # embedded for the kNN, not reported
    bank, bank_labels = embed(model, bank_loader, names, device)
    test, test_labels = embed(model, test_loader, names, device)
    results = norm_confidence(
        bank,
        bank_labels,
        test,
        test_labels,
        k=k,
        temperature=temperature,
        step=step,
        min_count=min_count,
        knn_on=knn_on,
    )
    results = {n: results[n] for n in embeddings}
    info = getattr(model, "hub_cutinit_info", None) or {}
    title = (
        f"{info.get('method', '?')} c={info.get('c', '?')} λ={info.get('weight_decay', '?')} "
        f"{info.get('architecture', '')} {size}px; {dataset} {eval_split} "
        f"({len(test_labels)} samples) vs bank {train_split} ({len(bank_labels)}), k={k}"
    )
    out = Path(out_dir) if out_dir is not None else Path(model_dir) / "analysis"
    files = write_analysis(results, out, title=title if plot else None)
    return {
        "buckets": {n: r["buckets"] for n, r in results.items()},
        "results": results,
        "files": files,
        "image_size": size,
    }


def _cli(args: argparse.Namespace) -> int:
    result = analyze(
        args.model_dir,
        args.dataset,
        train_split=args.train_split,
        eval_split=args.eval_split,
        image_column=args.image_column,
        label_column=args.label_column,
        image_size=args.image_size,
        max_samples=args.max_samples,
        embeddings=args.embeddings,
        knn_on=args.knn_on,
        k=args.k,
        step=args.step,
        min_count=args.min_count,
        batch_size=args.batch_size,
        out_dir=args.out,
        plot=not args.no_plot,
    )
    print(format_table(result["results"]))
    for path in result["files"]:
        print(f"wrote {path}")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``analyze MODEL_DIR [--dataset ...]`` to the ``hub-cutinit`` command.

    Example:
        >>> parser = argparse.ArgumentParser(prog="hub-cutinit")
        >>> _ = register_cli(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["analyze", "outputs/run", "--max-samples", "500"])
        >>> args.model_dir, args.dataset, args.max_samples, args.step, args.min_count
        ('outputs/run', 'builtin', 500, 0.05, 10)
    """
    p = subparsers.add_parser(
        "analyze",
        help="norms encode confidence: kNN accuracy per embedding-norm bucket (CSV + PNG)",
        description="Load a saved model (hub_cutinit.hub.load_ssl_model), embed the eval split "
        "and the kNN bank, and report kNN accuracy per bucket of rescaled embedding norm "
        "(extended paper; PAPER §5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", help="a folder written by training / save_pretrained, or hf-hub:id")
    p.add_argument("--dataset", default="builtin")
    p.add_argument("--train-split", default="train", help="the kNN bank")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--image-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--image-size", type=int, default=None, help="default: the training size")
    p.add_argument(
        "--max-samples", type=int, default=None, help="first N images of the bank and eval split"
    )
    p.add_argument(
        "--embeddings",
        nargs="+",
        default=["backbone", "projection"],
        help="backbone, projection, prediction (where the method has one)",
    )
    p.add_argument(
        "--knn-on",
        choices=["same", "backbone"],
        default="same",
        help="classify with a kNN on each embedding itself, or always on the backbone features",
    )
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--step", type=float, default=0.05, help="bucket width on the rescaled axis")
    p.add_argument("--min-count", type=int, default=10, help="smallest bucket reported")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None, help="default: MODEL_DIR/analysis")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=_cli)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hub_cutinit.experiments.norm_confidence MODEL_DIR ...``: the same as
    ``hub-cutinit analyze``."""
    parser = argparse.ArgumentParser(prog="python -m hub_cutinit.experiments.norm_confidence")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
