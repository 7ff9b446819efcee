"""Frozen-feature evaluation of an encoder: weighted k-NN and a linear probe (logistic regression).

Pure functions on feature matrices; features come from :func:`medcl.eval.features.extract_features`
and are scored with :func:`medcl.eval.metrics.classification_metrics`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
