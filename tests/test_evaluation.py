"""Tests of hub_cutinit.evaluation: features, weighted kNN, linear probe, norm buckets."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from hub_cutinit.evaluation import (
    extract_features,
    knn_accuracy,
    knn_norm_buckets,
    knn_predict,
    linear_probe,
    norm_bucket_accuracy,
)


def _numpy_knn(train, train_labels, test, k, temperature, num_classes):
    """Brute-force reference of PAPER §7's weighted kNN, in float64 numpy."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    k = min(k, len(train))
    preds = []
    for row in test:
        sim = train @ row
        nearest = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_labels[j]] += np.exp(sim[j] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def _blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=g) * spread
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centers[labels] + torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return feats[perm], labels[perm]


# ---------------------------------------------------------------------------------------- kNN
@pytest.mark.parametrize(
    ("k", "temperature", "chunk_size"),
    [(1, 0.1, 256), (5, 0.1, 7), (20, 0.5, 3), (200, 0.1, 256), (1000, 0.07, 16)],
)
def test_knn_predict_matches_brute_force_numpy(k, temperature, chunk_size):
    rng = np.random.default_rng(k)
    train = rng.normal(size=(120, 6))
    test = rng.normal(size=(45, 6))
    train_labels = rng.integers(0, 4, size=120)
    expected = _numpy_knn(train, train_labels, test, k, temperature, 4)
    got = knn_predict(
        torch.from_numpy(train),
        torch.from_numpy(train_labels),
        torch.from_numpy(test),
        k=k,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    assert got.dtype == torch.long
    np.testing.assert_array_equal(got.numpy(), expected)


def test_knn_k1_on_duplicated_points_is_perfect():
    feats, labels = _blobs(10, 5, 8, spread=0.1, seed=0)  # overlapping classes
    assert knn_accuracy(feats, labels, feats.clone(), labels, k=1) == 1.0
    # Scaling a test point does not change its cosine neighbours.
    assert knn_accuracy(feats, labels, 3.0 * feats, labels, k=1) == 1.0


def test_knn_k_larger_than_train_set_clamps():
    feats, labels = _blobs(5, 3, 4, spread=3.0, seed=1)
    test, test_labels = _blobs(4, 3, 4, spread=3.0, seed=2)
    assert torch.equal(
        knn_predict(feats, labels, test, k=10_000), knn_predict(feats, labels, test, k=len(feats))
    )
    assert 0.0 <= knn_accuracy(feats, labels, test, test_labels, k=10_000) <= 1.0


def test_knn_accuracy_on_separated_blobs_and_num_classes():
    train, train_labels = _blobs(30, 4, 16, spread=5.0, seed=3)
    test, test_labels = _blobs(10, 4, 16, spread=5.0, seed=3)
    assert knn_accuracy(train, train_labels, test, test_labels, k=20) == 1.0
    # A class that never occurs in the training set can be declared but is never predicted.
    preds = knn_predict(train, train_labels, test, k=20, num_classes=10)
    assert int(preds.max()) < 4


def test_knn_bad_inputs_raise_value_error():
    feats, labels = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="one label per row"):
        knn_accuracy(feats, labels[:5], feats, labels)
    with pytest.raises(ValueError, match="one label per row"):
        knn_accuracy(feats, labels, feats, labels[:3])
    with pytest.raises(ValueError, match="empty"):
        knn_accuracy(feats[:0], labels[:0], feats, labels)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(feats, labels, feats, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(feats, labels, feats, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(feats, labels, feats, temperature=-1.0)
    with pytest.raises(ValueError, match="width"):
        knn_predict(feats, labels, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        knn_predict(feats[0], labels, feats)
    with pytest.raises(ValueError, match="integer"):
        knn_predict(feats, labels.float(), feats)
    with pytest.raises(ValueError, match="negative"):
        knn_predict(feats, labels - 1, feats)
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(feats, labels, feats, num_classes=1)


# ------------------------------------------------------------------------------- linear probe
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_linear_probe_separable_blobs(optimizer):
    train, train_labels = _blobs(50, 4, 32, spread=2.0, seed=4)
    test, test_labels = _blobs(25, 4, 32, spread=2.0, seed=4)
    # Large offsets and scales: the standardisation must handle them.
    train, test = train * 100 + 1e3, test * 100 + 1e3
    kwargs = {"lr": 1e-2, "epochs": 30} if optimizer == "adam" else {}
    acc = linear_probe(train, train_labels, test, test_labels, optimizer=optimizer, **kwargs)
    assert acc >= 0.95


def test_linear_probe_is_deterministic_and_validates():
    train, labels = _blobs(10, 3, 8, spread=1.0, seed=5)
    a = linear_probe(train, labels, train, labels, epochs=20, seed=0)
    b = linear_probe(train, labels, train, labels, epochs=20, seed=0)
    assert a == b
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(train, labels, train, labels, epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe(train, labels, train, labels, optimizer="sgd")
    with pytest.raises(ValueError, match="empty"):
        linear_probe(train[:0], labels[:0], train, labels)
    with pytest.raises(ValueError, match="one label per row"):
        linear_probe(train, labels, train, labels[:-1])


# ------------------------------------------------------------------------------- norm buckets
def test_norm_buckets_hand_computed():
    # Norms 10..30 -> rescaled (n - 10) / 20. Step 0.25 -> buckets [0,.25) [.25,.5) [.5,.75) [.75,1].
    norms = torch.tensor([10.0, 12.0, 14.0, 15.0, 16.0, 20.0, 21.0, 25.0, 29.0, 30.0])
    # rescaled:             0    .1    .2   .25   .3    .5   .55   .75   .95   1.0
    correct = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    rows = norm_bucket_accuracy(norms, correct, step=0.25, min_count=1)
    assert [(r["bucket_low"], r["bucket_high"], r["count"]) for r in rows] == [
        (0.0, 0.25, 3),  # 10, 12, 14
        (0.25, 0.5, 2),  # 15 (on the edge: goes up), 16
        (0.5, 0.75, 2),  # 20 (edge), 21
        (0.75, 1.0, 3),  # 25 (edge), 29, 30 (the maximum joins the last bucket)
    ]
    assert [r["accuracy"] for r in rows] == [1 / 3, 1.0, 0.5, 1.0]
    assert [(r["norm_low"], r["norm_high"]) for r in rows] == [
        (10.0, 15.0),
        (15.0, 20.0),
        (20.0, 25.0),
        (25.0, 30.0),
    ]
    # min_count drops small buckets.
    rows = norm_bucket_accuracy(norms, correct, step=0.25, min_count=3)
    assert [r["bucket_low"] for r in rows] == [0.0, 0.75]


def test_norm_buckets_paper_step_edges_and_embeddings_input():
    # 21 evenly spaced norms: rescaled exactly k * 0.05, each on a bucket edge.
    norms = torch.linspace(1.0, 3.0, 21, dtype=torch.float64)
    rows = norm_bucket_accuracy(norms, torch.ones(21), min_count=1)
    assert len(rows) == 20
    assert [r["count"] for r in rows] == [1] * 19 + [2]
    assert rows[3]["bucket_low"] == 0.15 and rows[3]["bucket_high"] == 0.2
    # (N, D) embeddings are reduced to their row norms.
    emb = torch.zeros(21, 2, dtype=torch.float64)
    emb[:, 1] = norms
    assert norm_bucket_accuracy(emb, torch.ones(21), min_count=1) == rows
    # All norms equal: everything in the first bucket.
    rows = norm_bucket_accuracy(torch.ones(12), torch.ones(12))
    assert len(rows) == 1 and rows[0]["count"] == 12


def test_norm_buckets_validate():
    with pytest.raises(ValueError, match="one entry per norm"):
        norm_bucket_accuracy(torch.ones(5), torch.ones(4))
    with pytest.raises(ValueError, match="step"):
        norm_bucket_accuracy(torch.ones(5), torch.ones(5), step=0.0)
    with pytest.raises(ValueError, match="inf/NaN"):
        norm_bucket_accuracy(torch.tensor([1.0, float("nan")]), torch.ones(2))
    with pytest.raises(ValueError, match="no samples"):
        norm_bucket_accuracy(torch.ones(0), torch.ones(0))


def test_knn_norm_buckets_end_to_end():
    train, train_labels = _blobs(40, 3, 8, spread=0.7, seed=6)
    test, test_labels = _blobs(40, 3, 8, spread=0.7, seed=7)
    rows = knn_norm_buckets(train, train_labels, test, test_labels, k=10, step=0.1, min_count=5)
    assert rows and all(r["count"] >= 5 for r in rows)
    preds = knn_predict(train, train_labels, test, k=10)
    expected = norm_bucket_accuracy(test, preds == test_labels, step=0.1, min_count=5)
    assert rows == expected
    custom = torch.rand(len(test))
    rows = knn_norm_buckets(train, train_labels, test, test_labels, custom, k=10, min_count=1)
    assert sum(r["count"] for r in rows) == len(test)


# -------------------------------------------------------------------------- extract_features
@pytest.fixture(scope="module")
def tiny_backbone():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=0, pretrained=False)


def test_extract_features_matches_model_and_restores_mode(tiny_backbone):
    model = tiny_backbone.train()
    images = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    batches = [(images[:4], labels[:4]), {"image": images[4:], "label": labels[4:].tolist()}]
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    running_before = bn.running_mean.clone()
    feats, got_labels = extract_features(model, batches)
    assert model.training  # restored
    assert torch.equal(bn.running_mean, running_before)  # eval mode: BN statistics untouched
    with torch.no_grad():
        direct = model.eval()(images)
    model.train()
    assert feats.dtype == torch.float32 and feats.shape == (6, model.num_features)
    torch.testing.assert_close(feats, direct, rtol=1e-5, atol=1e-5)
    assert got_labels.dtype == torch.long and got_labels.tolist() == labels.tolist()
    assert not feats.requires_grad

    model.eval()
    extract_features(model, batches[:1])
    assert not model.training  # an eval model stays in eval mode


def test_extract_features_restores_mode_on_error_and_validates(tiny_backbone):
    model = tiny_backbone.train()
    with pytest.raises(ValueError, match="one label per image"):
        extract_features(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0]))])
    assert model.training
    with pytest.raises(ValueError, match="label key"):
        extract_features(model, [{"image": torch.randn(2, 3, 32, 32)}])
    with pytest.raises(ValueError, match="yielded nothing"):
        extract_features(model, [])


def test_extract_features_raw_pixel_baseline():
    images = torch.randn(5, 1, 4, 4)
    feats, labels = extract_features(nn.Flatten(), [(images, torch.arange(5))])
    assert torch.equal(feats, images.reshape(5, -1))
    assert knn_accuracy(feats, labels, feats, labels, k=1) == 1.0


def test_extract_features_casts_images_to_model_dtype():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).to(torch.bfloat16)
    feats, _ = extract_features(model, [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))])
    assert feats.dtype == torch.float32 and feats.shape == (2, 3)
