"""Evaluation of frozen backbones: feature extraction, weighted kNN, linear probe, norm buckets.

The kNN protocol is the paper's monitor (PAPER §7): l2-normalised features, cosine similarity,
the ``k = 200`` nearest training samples vote for their class with weight ``exp(sim / 0.1)``,
the class with the largest summed weight wins. :func:`norm_confidence` implements the
"norms encode confidence" protocol (PAPER §5) on top of :func:`norm_bucket_accuracy`. For the
honest baselines of PAPER §8 use the same functions on a randomly initialised backbone and on
raw pixels (``extract_features(torch.nn.Flatten(), batches)``).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> centers = torch.randn(3, 8, generator=g) * 5
    >>> labels = torch.arange(60) % 3
    >>> feats = centers[labels] + torch.randn(60, 8, generator=g)
    >>> knn_accuracy(feats[:45], labels[:45], feats[45:], labels[45:], k=5)
    1.0
    >>> linear_probe(feats[:45], labels[:45], feats[45:], labels[45:])
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "extract_features",
    "gather_rows",
    "knn_predict",
    "knn_accuracy",
    "linear_probe",
    "norm_bucket_accuracy",
    "norm_confidence",
    "knn_norm_buckets",
]

_IMAGE_KEYS = ("image", "images", "pixel_values", "img")
_LABEL_KEYS = ("label", "labels", "target", "targets")


# --------------------------------------------------------------------------- validation helpers
def _as_features(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(
            f"{what} must have shape (N, D), got {tuple(x.shape)}; "
            "flatten with feats.reshape(len(feats), -1)"
        )
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def _as_labels(y: Any, n: int, what: str, feats_what: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.ndim != 1:
        raise ValueError(
            f"{what} must be 1-D class indices, got shape {tuple(y.shape)}; use labels.flatten()"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what} must be integer class indices, got {y.dtype}; use labels.long()")
    if len(y) != n:
        raise ValueError(
            f"{feats_what} has {n} rows but {what} has {len(y)} entries; pass one label per row"
        )
    y = y.long()
    if n and int(y.min()) < 0:
        raise ValueError(f"{what} contains negative labels; map them to 0..C-1 first")
    return y


def _check_train(train_feats: Any, train_labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    feats = _as_features(train_feats, "train_feats")
    labels = _as_labels(train_labels, len(feats), "train_labels", "train_feats")
    if len(feats) == 0:
        raise ValueError("the training set is empty; pass at least one training sample")
    return feats, labels


def _check_test_feats(test_feats: Any, dim: int) -> torch.Tensor:
    feats = _as_features(test_feats, "test_feats")
    if feats.shape[1] != dim:
        raise ValueError(
            f"train and test features differ in width ({dim} vs {feats.shape[1]}); "
            "extract both with the same backbone"
        )
    return feats


def _check_test(test_feats: Any, test_labels: Any, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    feats = _check_test_feats(test_feats, dim)
    return feats, _as_labels(test_labels, len(feats), "test_labels", "test_feats")


# --------------------------------------------------------------------------- feature extraction
def _split_batch(batch: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(batch, Mapping):
        image = next((batch[k] for k in _IMAGE_KEYS if k in batch), None)
        label = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        if image is None or label is None:
            raise ValueError(
                f"a dict batch needs an image key {_IMAGE_KEYS} and a label key {_LABEL_KEYS}, "
                f"got keys {sorted(batch)}; rename them or pass (images, labels) tuples"
            )
        return image, label
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"each batch must be (images, labels) or a dict with 'image' and 'label', got "
        f"{type(batch).__name__}; wrap unlabelled images as (images, torch.zeros(len(images)))"
    )


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    for tensor in model.parameters():
        return tensor.device, tensor.dtype if tensor.is_floating_point() else None
    for buffer in model.buffers():
        return buffer.device, None
    return torch.device("cpu"), None


#: ImageNet statistics: what the evaluation loaders' uint8 images are normalised with.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize_uint8(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` images (``C == len(mean)``) as ``ToDtype(float32, scale=True)`` +
    ``Normalize`` give them (``normalize_views``' kernels, on the images' device); other images
    unchanged."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != len(mean):
        return images
    from hub_cutinit.data.transforms import normalize_views

    return normalize_views([images], mean, std)[0]


def extract_features(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device | str | None = None,
    *,
    mean: Sequence[float] = _IMAGENET_MEAN,
    std: Sequence[float] = _IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``batches`` in eval mode without gradients; collect features and labels.

    Args:
        model: a feature extractor, typically a timm backbone created with ``num_classes=0``
            (``SSLModel.backbone``). Outputs of more than two dimensions are flattened per
            sample. ``torch.nn.Flatten()`` gives the raw-pixel baseline.
        batches: an iterable (e.g. a ``DataLoader``) of ``(images, labels)`` pairs or of dicts
            with ``"image"`` and ``"label"`` keys.
        device: where to run; default: the model's device. Floating-point images are cast
            to the model's parameter dtype (e.g. a bfloat16 backbone).
        mean, std: uint8 images (the evaluation loaders' batches) are scaled to [0, 1] and
            normalised with these on ``device`` (default: ImageNet's, as the loaders assume),
            the same numbers the float transform gives; float images are used as they are.

    Returns:
        ``(features, labels)``: float32 ``(N, D)`` and int64 ``(N,)`` tensors on the CPU.
        The model's previous train/eval mode is restored, even on error.

    Example:
        >>> import timm, torch
        >>> net = timm.create_model("resnet18", num_classes=0, pretrained=False)
        >>> data = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
        >>> feats, labels = extract_features(net, data)
        >>> feats.shape, labels.tolist(), net.training
        (torch.Size([2, 512]), [0, 1], True)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model_device, model_dtype = _model_device_dtype(model)
    device = torch.device(device) if device is not None else model_device
    was_training = model.training
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                images, label = _split_batch(batch)
                images = torch.as_tensor(images).to(device, non_blocking=True)
                images = _normalize_uint8(images, mean, std)
                if model_dtype is not None and images.is_floating_point():
                    images = images.to(model_dtype)  # e.g. a bfloat16 backbone
                out = model(images)
                if not isinstance(out, torch.Tensor):
                    raise ValueError(
                        f"model returned {type(out).__name__}, expected a tensor of features; "
                        "pass the backbone (e.g. ssl_model.backbone), not the SSL model"
                    )
                out = out.reshape(out.shape[0], -1).float().cpu()
                label = torch.as_tensor(label).reshape(-1).long().cpu()
                if len(label) != len(out):
                    raise ValueError(
                        f"a batch has {len(out)} images but {len(label)} labels; "
                        "give one label per image"
                    )
                feats.append(out)
                labels.append(label)
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("batches yielded nothing; pass a non-empty loader or list of batches")
    return torch.cat(feats), torch.cat(labels)


# --------------------------------------------------------------------------------------- kNN
def _knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk_size: int,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    train = F.normalize(train_feats.to(device), dim=1)
    train_labels = train_labels.to(device)
    k = min(k, len(train))
    for start in range(0, len(test_feats), chunk_size):
        test = F.normalize(test_feats[start : start + chunk_size].to(device), dim=1)
        sim = test @ train.T  # (B, N_train) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(len(test), num_classes, dtype=weights.dtype, device=device)
        scores.scatter_add_(1, train_labels[top_idx], weights)
        yield scores


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Weighted-kNN class predictions (PAPER §7) for each row of ``test_feats``.

    Features are l2-normalised; each test sample takes the ``k`` training samples of highest
    cosine similarity ``s`` (``k`` is clamped to the training-set size), each votes for its class
    with weight ``exp(s / temperature)``; the class with the largest sum wins (ties: the lowest
    class index). The test set is processed in chunks of ``chunk_size`` rows, so memory is
    ``chunk_size x len(train_feats)``.

    Returns:
        int64 ``(N_test,)`` predicted labels on the CPU.

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(train, torch.tensor([0, 0, 1]), torch.tensor([[0.1, 1.0]]), k=1)
        tensor([1])
    """
    train_feats, train_labels = _check_train(train_feats, train_labels)
    test_feats = _check_test_feats(test_feats, train_feats.shape[1])
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}; the paper uses k=200")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}; the paper uses 0.1")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    inferred = int(train_labels.max()) + 1
    if num_classes is None:
        num_classes = inferred
    elif num_classes < inferred:
        raise ValueError(
            f"num_classes={num_classes} but train_labels go up to {inferred - 1}; "
            "pass num_classes=None to infer it"
        )
    device = torch.device(device) if device is not None else train_feats.device
    preds = [
        scores.argmax(dim=1).cpu()
        for scores in _knn_scores(
            train_feats,
            train_labels,
            test_feats,
            int(k),
            float(temperature),
            int(num_classes),
            int(chunk_size),
            device,
        )
    ]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def gather_rows(tensor: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """Every process's ``(N_r, ...)`` rows, concatenated in rank order, on every process.

    The ranks may hold different numbers of rows: the tensors are padded to the longest for
    ``accelerator.gather`` and the padding rows are cut off again, so each row appears once
    (what ``gather_for_metrics`` does for a prepared loader). A collective: every process calls
    it. The result lies on ``accelerator.device``.

    Example:
        >>> from accelerate import Accelerator
        >>> gather_rows(torch.arange(6.0).reshape(3, 2), Accelerator(cpu=True)).shape
        torch.Size([3, 2])
    """
    tensor = tensor.to(accelerator.device)
    if accelerator.num_processes == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=accelerator.device)
    counts = accelerator.gather(count).tolist()
    padded = accelerator.pad_across_processes(tensor.contiguous(), dim=0)
    rows = accelerator.gather(padded)
    longest = max(counts)
    return torch.cat([rows[r * longest : r * longest + n] for r, n in enumerate(counts)])


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 256,
    device: torch.device | str | None = None,
) -> float:
    """Weighted-kNN accuracy (a fraction in [0, 1]) of the test set; see :func:`knn_predict`.

    Example:
        >>> train = torch.eye(3)
        >>> knn_accuracy(train, torch.arange(3), train * 2, torch.arange(3), k=1)
        1.0
    """
    train_feats, train_labels = _check_train(train_feats, train_labels)
    test_feats, test_labels = _check_test(test_feats, test_labels, train_feats.shape[1])
    if len(test_feats) == 0:
        raise ValueError("the test set is empty; pass at least one test sample")
    preds = knn_predict(
        train_feats,
        train_labels,
        test_feats,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
        device=device,
    )
    return float((preds == test_labels.cpu()).double().mean())


# ------------------------------------------------------------------------------- linear probe
def _check_probe_options(epochs: int, lr: float, weight_decay: float, optimizer: str) -> None:
    """Reject linear-probe settings that cannot train, naming the bad value."""
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")


def _fit_linear_head(
    head: nn.Linear,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    seed: int,
    optimizer: str,
    batch_size: int,
) -> None:
    """Minimise cross-entropy + ``weight_decay / 2 * ‖W‖²`` over ``head`` in place."""
    device = x_train.device
    gen = torch.Generator().manual_seed(int(seed))

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(head(x), y)
        return loss + 0.5 * weight_decay * head.weight.square().sum()

    with torch.enable_grad():
        if optimizer == "lbfgs":
            lbfgs = torch.optim.LBFGS(
                head.parameters(),
                lr=lr,
                max_iter=int(epochs),
                history_size=20,
                line_search_fn="strong_wolfe",
                tolerance_grad=1e-9,
                tolerance_change=1e-12,
            )

            def closure() -> torch.Tensor:
                lbfgs.zero_grad()
                loss = objective(x_train, y_train)
                loss.backward()
                return loss

            lbfgs.step(closure)
        else:
            adam = torch.optim.Adam(head.parameters(), lr=lr)
            for _ in range(int(epochs)):
                order = torch.randperm(len(x_train), generator=gen).to(device)
                for idx in order.split(int(batch_size)):
                    adam.zero_grad()
                    objective(x_train[idx], y_train[idx]).backward()
                    adam.step()


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
    *,
    optimizer: str = "lbfgs",
    batch_size: int = 1024,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Test accuracy of a logistic-regression classifier trained on frozen features.

    Features are standardised with the training mean and standard deviation. The loss is the
    mean cross-entropy plus ``weight_decay / 2 * ‖W‖²`` (bias not decayed).

    Args:
        epochs: L-BFGS iterations (``optimizer="lbfgs"``, full batch, strong-Wolfe line search;
            the default) or passes over the data (``optimizer="adam"``, mini-batches of
            ``batch_size`` shuffled with ``seed``; use ``lr`` around 1e-3 there).
        lr: the optimiser's learning rate (L-BFGS: initial step, 1.0 is right).
        weight_decay: the l2 penalty on the weights.
        seed: seeds the Adam shuffling (the weights start at zero, so L-BFGS is deterministic).

    Returns:
        the test accuracy, a fraction in [0, 1].

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> linear_probe(x, torch.tensor([0, 0, 1, 1]), x, torch.tensor([0, 0, 1, 1]))
        1.0
    """
    train_feats, train_labels = _check_train(train_feats, train_labels)
    test_feats, test_labels = _check_test(test_feats, test_labels, train_feats.shape[1])
    if len(test_feats) == 0:
        raise ValueError("the test set is empty; pass at least one test sample")
    _check_probe_options(epochs, lr, weight_decay, optimizer)
    inferred = max(int(train_labels.max()), int(test_labels.max())) + 1
    num_classes = inferred if num_classes is None else int(num_classes)
    if num_classes < inferred:
        raise ValueError(f"num_classes={num_classes} but labels go up to {inferred - 1}")
    device = torch.device(device) if device is not None else train_feats.device

    x_train = train_feats.to(device, torch.float32)
    mean = x_train.mean(dim=0, keepdim=True)
    std = x_train.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
    x_train = (x_train - mean) / std
    x_test = (test_feats.to(device, torch.float32) - mean) / std
    y_train = train_labels.to(device)

    head = nn.Linear(x_train.shape[1], num_classes).to(device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    _fit_linear_head(
        head,
        x_train,
        y_train,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        optimizer=optimizer,
        batch_size=batch_size,
    )
    with torch.no_grad():
        preds = head(x_test).argmax(dim=1).cpu()
    return float((preds == test_labels.cpu()).double().mean())


# ------------------------------------------------------------------------------ norm buckets
def _row_norms(x: Any, what: str) -> torch.Tensor:
    """``(N,)`` float64 CPU norms of ``(N, D)`` embeddings, or ``(N,)`` norms as they are."""
    x = torch.as_tensor(x).detach()
    if x.ndim == 1:
        return x.to("cpu", torch.float64)
    return torch.linalg.vector_norm(_as_features(x, what).to(torch.float64), dim=1).cpu()


def _bucket_inputs(
    norms: Any, correct: Any, step: float, min_count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float64 CPU ``(N,)`` norms and 0/1 ``correct`` (norm_bucket_accuracy)."""
    norms = torch.as_tensor(norms).detach()
    if norms.ndim == 2:
        norms = _row_norms(norms, "norms")
    if norms.ndim != 1:
        raise ValueError(
            f"norms must be (N,) norms or (N, D) embeddings, got shape {tuple(norms.shape)}"
        )
    norms = norms.to("cpu", torch.float64)
    correct = torch.as_tensor(correct).detach().cpu()
    if correct.ndim != 1 or len(correct) != len(norms):
        raise ValueError(
            f"correct must be (N,) with one entry per norm; got shape {tuple(correct.shape)} for "
            f"{len(norms)} norms"
        )
    if len(norms) == 0:
        raise ValueError("no samples; pass at least one norm")
    if not torch.isfinite(norms).all():
        raise ValueError(
            "norms contain inf/NaN; drop those samples first (e.g. norms[norms.isfinite()])"
        )
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step!r}; the paper uses 0.05")
    if int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    return norms, correct.to(torch.float64)


def norm_bucket_accuracy(
    norms: torch.Tensor,
    correct: torch.Tensor,
    step: float = 0.05,
    min_count: int = 10,
) -> list[dict[str, float | int]]:
    """Accuracy per bucket of rescaled embedding norm: "norms encode confidence" (PAPER §5).

    Norms are min-max rescaled to [0, 1] over the whole set; bucket ``i`` holds the rescaled
    norms in ``[i * step, (i + 1) * step)`` (the last bucket also holds 1.0); buckets with
    fewer than ``min_count`` samples are left out.

    Args:
        norms: ``(N,)`` embedding norms, or ``(N, D)`` embeddings (their row norms are used).
        correct: ``(N,)`` booleans (or 0/1): whether each sample was classified correctly,
            e.g. ``knn_predict(...) == test_labels``.
        step: the bucket width on the rescaled axis (the paper: 0.05).
        min_count: the smallest bucket reported (the paper: 10).

    Returns:
        rows ``{"bucket_low", "bucket_high", "norm_low", "norm_high", "count", "accuracy"}``
        in increasing norm order; ``norm_low/high`` are the bucket edges in original units.

    Example:
        >>> norms = torch.arange(20.0)          # rescaled: 0, 1/19, ..., 1
        >>> correct = norms >= 10
        >>> rows = norm_bucket_accuracy(norms, correct, step=0.5, min_count=1)
        >>> [(r["bucket_low"], r["count"], r["accuracy"]) for r in rows]
        [(0.0, 10, 0.0), (0.5, 10, 1.0)]
    """
    norms, correct = _bucket_inputs(norms, correct, step, min_count)
    lo, hi = float(norms.min()), float(norms.max())
    span = hi - lo
    scaled = (norms - lo) / span if span > 0 else torch.zeros_like(norms)
    num_buckets = max(1, math.ceil(1.0 / step - 1e-9))
    # A small tolerance so that values on an edge (e.g. 0.15 with step 0.05) land above it.
    index = torch.floor(scaled / step + 1e-9).long().clamp(0, num_buckets - 1)
    counts = torch.bincount(index, minlength=num_buckets)
    hits = torch.bincount(index, weights=correct, minlength=num_buckets)
    rows: list[dict[str, float | int]] = []
    for i in range(num_buckets):
        n = int(counts[i])
        if n < min_count:
            continue
        b_lo, b_hi = round(i * step, 12), round(min((i + 1) * step, 1.0), 12)
        rows.append(
            {
                "bucket_low": b_lo,
                "bucket_high": b_hi,
                "norm_low": lo + b_lo * span,
                "norm_high": lo + b_hi * span,
                "count": n,
                "accuracy": float(hits[i]) / n,
            }
        )
    return rows


def norm_confidence(
    bank: Mapping[str, torch.Tensor],
    bank_labels: torch.Tensor,
    test: Mapping[str, torch.Tensor],
    test_labels: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    step: float = 0.05,
    min_count: int = 10,
    knn_on: str = "same",
    **knn_kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The PAPER §5 protocol for several embeddings of the same samples: kNN-classify the test
    set, then report the accuracy per bucket of each embedding's rescaled norm.

    ``knn_on="same"`` classifies with a kNN on each embedding itself (``bank`` needs every
    name of ``test``); another value names the embedding of ``bank`` / ``test`` whose kNN
    decides correctness for all of them (e.g. ``"backbone"``: the other embeddings' norms are
    then only the bucketing key; a ``test`` entry may then also be ``(N,)`` norms). Each kNN is
    run once. ``knn_kwargs`` go to :func:`knn_predict` (``num_classes``, ``chunk_size``, ...).

    Returns:
        ``{name: {"buckets": rows, "accuracy": overall, "num_samples": N, "mean_norm": ...,
        "mean_norm_correct": ..., "mean_norm_wrong": ..., "knn_on": source}}``; rows as in
        :func:`norm_bucket_accuracy`; a mean over no sample is NaN.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(50, 4, generator=g); y = torch.arange(50) % 2
        >>> out = norm_confidence({"backbone": x}, y, {"backbone": x}, y, k=1, min_count=1)
        >>> out["backbone"]["accuracy"], out["backbone"]["knn_on"]
        (1.0, 'backbone')
    """
    sources = set(test) if knn_on == "same" else {knn_on}
    missing = sorted(s for s in sources if s not in bank or s not in test)
    if missing:
        raise ValueError(
            f"knn_on={knn_on!r} needs {missing} embeddings in both bank and test (they have "
            f"{sorted(bank)} and {sorted(test)}); knn_on is 'same' or the name of an embedding"
        )
    correct: dict[str, torch.Tensor] = {}
    for source in sorted(sources):
        feats, labels = _check_test(
            test[source], test_labels, _as_features(bank[source], "bank").shape[1]
        )
        preds = knn_predict(
            bank[source], bank_labels, feats, k=k, temperature=temperature, **knn_kwargs
        )
        correct[source] = preds == labels.cpu()
    results: dict[str, dict[str, Any]] = {}
    for name, feats in test.items():
        source = name if knn_on == "same" else knn_on
        hit, norms = correct[source], _row_norms(feats, f"test[{name!r}]")
        rows = norm_bucket_accuracy(norms, hit, step=step, min_count=min_count)
        results[name] = {
            "buckets": rows,
            "accuracy": float(hit.double().mean()),
            "num_samples": int(len(hit)),
            "mean_norm": float(norms.mean()),
            "mean_norm_correct": float(norms[hit].mean()) if hit.any() else math.nan,
            "mean_norm_wrong": float(norms[~hit].mean()) if (~hit).any() else math.nan,
            "knn_on": source,
        }
    return results


def knn_norm_buckets(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    test_norms: torch.Tensor | None = None,
    *,
    k: int = 200,
    temperature: float = 0.1,
    step: float = 0.05,
    min_count: int = 10,
    **knn_kwargs: Any,
) -> list[dict[str, float | int]]:
    """The PAPER §5 protocol for one embedding (:func:`norm_confidence`'s bucket rows).

    ``test_norms`` defaults to the norms of ``test_feats`` (the raw backbone features); pass the
    norms of another embedding of the same samples (e.g. the projection) to study that one.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> feats, labels = torch.randn(40, 4, generator=g), torch.arange(40) % 2
        >>> rows = knn_norm_buckets(feats, labels, feats, labels, k=1, step=0.5, min_count=1)
        >>> sum(r["count"] for r in rows), all(r["accuracy"] == 1.0 for r in rows)
        (40, True)
    """
    test = {"features": test_feats}
    if test_norms is not None:
        test["norms"] = test_norms
    results = norm_confidence(
        {"features": train_feats},
        train_labels,
        test,
        test_labels,
        k=k,
        temperature=temperature,
        step=step,
        min_count=min_count,
        knn_on="features",
        **knn_kwargs,
    )
    return results["norms" if test_norms is not None else "features"]["buckets"]
