"""The kNN monitor of a training run: weighted kNN (and a linear probe) on frozen features.

Every process extracts the features of its share of the evaluation sets (with rank 0's
BatchNorm buffers, in eval mode), the features are gathered (each example once) and every
process runs the kNN on its training device, so all return the same result. The baselines
(PAPER §8) use the same protocol on the randomly initialised backbone and on raw pixels.

``bn="precise"`` (the default of ``--knn-bn``) evaluates a copy of the backbone whose BatchNorm
running statistics were re-estimated on the first ``bn_batches`` bank batches
(:func:`hub_cutinit.precise_bn.precise_bn`): a cut network's running variance starts at 1 while
its activations' is ~c⁻⁴, so the statistics as they are would penalise the cut early in a run
(measured in ``recipes/results/bn_artefact/``). ``bn="running"`` uses them as they are.

Example (one process, random features)::

    monitor = KnnMonitor(accelerator, (bank_loader, test_loader), k=200, temperature=0.1)
    monitor.evaluate(model.backbone)["knn_accuracy"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hub_cutinit.evaluation import extract_features, gather_rows, knn_accuracy, linear_probe
from hub_cutinit.precise_bn import precise_bn

__all__ = ["KnnMonitor"]


class KnnMonitor:
    """kNN accuracy of a backbone on ``(bank, test)`` loaders (this process's share of each)."""

    def __init__(
        self,
        accelerator: Any,
        loaders: Sequence[Any],
        *,
        k: int,
        temperature: float,
        bn: str = "precise",
        bn_batches: int = 8,
    ) -> None:
        if bn not in ("precise", "running"):
            raise ValueError(f"bn must be 'precise' or 'running', got {bn!r}.")
        self.accelerator = accelerator
        self.loaders = tuple(loaders)
        self.k = k
        self.temperature = temperature
        self.bn = bn
        self.bn_batches = bn_batches

    @torch.no_grad()
    def evaluate(self, backbone: torch.nn.Module, *, probe: bool = False) -> dict[str, Any]:
        """``knn_accuracy`` (and ``linear_probe_accuracy``), with the bank and test sizes.

        A collective: call it on every process."""
        acc = self.accelerator
        device = acc.device
        if self.bn == "precise":  # a copy with re-estimated statistics (rank 0's, below)
            backbone = precise_bn(backbone, self.loaders[0], num_batches=self.bn_batches)
        if acc.num_processes > 1:
            for buffer in backbone.buffers():  # BN running statistics: rank 0's, as saved
                torch.distributed.broadcast(buffer.data, src=0)
        features = []
        for loader in self.loaders:
            feats, labels = extract_features(backbone, loader, device=device)
            features += [gather_rows(feats, acc), gather_rows(labels, acc)]
        train_feats, train_labels, test_feats, test_labels = features
        result: dict[str, Any] = {
            "knn_accuracy": knn_accuracy(
                train_feats,
                train_labels,
                test_feats,
                test_labels,
                k=self.k,
                temperature=self.temperature,
                device=device,
            ),
            "eval_train_samples": int(train_labels.numel()),
            "eval_test_samples": int(test_labels.numel()),
        }
        if probe:
            result["linear_probe_accuracy"] = linear_probe(
                train_feats, train_labels, test_feats, test_labels
            )
        return result

    def baselines(self, backbone: torch.nn.Module) -> dict[str, float]:
        """The same protocol at random initialisation (``backbone``) and on raw pixels."""
        return {
            "random_init_knn": self.evaluate(backbone)["knn_accuracy"],
            "raw_pixels_knn": self.evaluate(torch.nn.Flatten())["knn_accuracy"],
        }
