"""Human-readable end-of-run summary printed by the recipes."""

from __future__ import annotations

from typing import Any

from hub_cutinit.training.arguments import TrainConfig

__all__ = ["print_summary", "format_baselines", "format_corrupt", "format_norms"]

#: How a sentence names the baselines the Trainer measures (others: their key, in words).
BASELINE_NAMES = {"random_init_knn": "random-init backbone", "raw_pixels_knn": "raw pixels"}


def format_norms(final_norms: dict[str, Any]) -> list[str]:
    """One line per embedding: count, mean, std, min, p50, max of ‖z‖."""
    lines = []
    for name, s in sorted((final_norms.get("norms") or final_norms).items()):
        if not isinstance(s, dict) or "mean" not in s or s.get("count", 0) == 0:
            continue
        lines.append(
            f"  ‖{name}‖: mean {s['mean']:.4g}  std {s['std']:.3g}  min {s['min']:.3g}  "
            f"p50 {s.get('p50', float('nan')):.3g}  max {s['max']:.3g}  (n={s['count']})"
        )
    return lines


def _percent(value: float) -> str:
    """An accuracy (a fraction; a value above 1 is taken as already in %) as "52.3 %"."""
    return f"{value * 100 if 0 <= value <= 1 else value:.1f} %"


def format_baselines(baselines: dict[str, float]) -> str:
    """The kNN baselines in one sentence (empty when there are none).

    Example:
        >>> format_baselines({"random_init_knn": 0.523, "raw_pixels_knn": 0.71})
        'Baselines (kNN, same protocol): random-init backbone 52.3 %, raw pixels 71.0 %.'
    """
    if not baselines:
        return ""
    parts = [
        f"{BASELINE_NAMES.get(key, key.removesuffix('_knn').replace('_', ' '))} {_percent(value)}"
        for key, value in baselines.items()
    ]
    return "Baselines (kNN, same protocol): " + ", ".join(parts) + "."


def format_corrupt(count: int, examples: list[str] | None = None) -> str:
    """The corrupt-image count, naming the first skipped images when they are known.

    Example:
        >>> format_corrupt(7, ["a.png", "row 12"])
        'corrupt images skipped: 7 (first: a.png, row 12, ...)'
        >>> format_corrupt(0)
        'corrupt images skipped: 0'
    """
    text = f"corrupt images skipped: {count}"
    if not examples:
        return text
    more = ", ..." if count > len(examples) else ""
    return f"{text} (first: {', '.join(map(str, examples))}{more})"


def print_summary(result: dict[str, Any], cfg: TrainConfig) -> None:
    """Print what a user wants to see after a run: accuracy, norms, speed, where the model is."""
    print(
        f"\n== {result['method']} on {result['dataset']} ({result['backbone']}, {cfg.image_size}px) =="
    )
    print(
        f"c = {result['c']:g}, weight decay λ = {result['weight_decay']:g}, lr = {result['lr']:.4g}, "
        f"{result['steps']} steps, {result['epochs']} epoch(s), {result['num_processes']} process(es)"
    )
    if result.get("knn_accuracy") is not None:
        print(
            f"kNN accuracy (k={cfg.knn_k}, T={cfg.knn_temperature}): {result['knn_accuracy']:.4f}"
        )
    if result.get("baselines"):
        print("  " + format_baselines(result["baselines"]))
    if result.get("linear_probe_accuracy") is not None:
        print(f"linear probe accuracy: {result['linear_probe_accuracy']:.4f}")
    print("embedding norms over the last epoch:")
    for line in format_norms(result.get("final_norms") or {}):
        print(line)
    print(
        f"training throughput {result['train_images_per_s']:.1f} images/s (data loading included, "
        f"evaluation excluded), wall time {result['wall_time_s']:.1f} s, "
        + format_corrupt(result["corrupt_images"], result.get("corrupt_examples"))
    )
    print(
        f"saved to {cfg.output_dir}: timm.create_model('local-dir:{cfg.output_dir}', pretrained=True)"
    )
