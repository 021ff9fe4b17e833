"""Human-readable end-of-run summary printed by the recipes."""

from __future__ import annotations

from typing import Any

from hub_cutinit.training.config import TrainConfig

__all__ = ["print_summary", "format_norms"]


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
    baselines = result.get("baselines") or {}
    if baselines:
        print(
            "  same kNN protocol, baselines: "
            + ", ".join(
                f"{k.replace('_knn', '').replace('_', ' ')} {v:.4f}" for k, v in baselines.items()
            )
        )
    if result.get("linear_probe_accuracy") is not None:
        print(f"linear probe accuracy: {result['linear_probe_accuracy']:.4f}")
    print("embedding norms over the last epoch:")
    for line in format_norms(result.get("final_norms") or {}):
        print(line)
    print(
        f"training throughput {result['train_images_per_s']:.1f} images/s (data loading included, "
        f"evaluation excluded), wall time {result['wall_time_s']:.1f} s, "
        f"corrupt images skipped: {result['corrupt_images']}"
    )
    print(
        f"saved to {cfg.output_dir}: timm.create_model('local-dir:{cfg.output_dir}', pretrained=True)"
    )
