"""Frozen-feature evaluation of an encoder: weighted k-NN and a linear probe (logistic regression).

Pure functions on feature matrices (``knn_predict``, ``linear_probe``, ``classification_metrics``)
plus :func:`extract_features`, which runs a frozen encoder over a dataset with a progress bar.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``encoder`` over ``(images, labels)`` batches.

    Returns:
        features ``(N, D)`` float32 and labels ``(N,)`` int64.
    """
    encoder.eval().to(device)
    feats, labels = [], []
    for images, targets in tqdm(loader, desc="features", disable=not progress, leave=False):
        feats.append(encoder(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Weighted k-NN on cosine similarity (the DINO / InstDisc evaluation).

    Each of the ``k`` nearest training samples votes for its class with weight
    ``exp(similarity / temperature)``.

    Args:
        train_x: ``(N, D)`` features; train_y: ``(N,)`` class indices.
        test_x: ``(M, D)`` features.

    Returns:
        ``(M,)`` predicted class indices.
    """
    if train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"{train_x.shape[0]} training features but {train_y.shape[0]} labels")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    c = int(num_classes if num_classes is not None else train_y.max() + 1)
    k = min(k, train_x.shape[0])
    bank = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.int64)
    out = []
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(torch.as_tensor(test_x[start : start + chunk], dtype=torch.float32), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], c)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out).numpy()


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    c: float = 1.0,
    balanced: bool = True,
    max_iter: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Logistic regression on standardised frozen features; returns ``(M,)`` predictions.

    ``balanced=True`` weights classes inversely to their frequency (class-imbalanced sets such as
    HAM10000, where a plain probe predicts the majority class).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(
            C=c,
            max_iter=max_iter,
            class_weight="balanced" if balanced else None,
            random_state=seed,
        ),
    )
    model.fit(train_x, train_y)
    return np.asarray(model.predict(test_x), dtype=np.int64)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None
) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over the classes present in ``y_true``).

    Example:
        >>> classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]))
        {'accuracy': 0.75, 'balanced_accuracy': 0.5}
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    classes = np.unique(y_true) if num_classes is None else np.arange(num_classes)
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in classes if (y_true == c).any()]
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(np.mean(recalls)),
    }
