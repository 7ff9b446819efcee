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


def select_c(
    train_x: np.ndarray,
    train_y: np.ndarray,
    groups: np.ndarray,
    cs: list[float],
    *,
    val_size: float = 0.25,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """The inverse regularisation ``C`` of :func:`linear_probe` chosen on held-out groups.

    The training set is split by ``groups`` (lesion, patient: no group on both sides,
    label-stratified), a probe is fitted on one part for each ``C`` in ``cs`` and scored by
    balanced accuracy on the other; ties go to the smaller ``C`` (the stronger regularisation).
    Nothing outside ``train_x`` is looked at, so a probe tested on another site stays blind to it.

    Args:
        train_x: ``(N, D)`` features; train_y: ``(N,)`` class indices; groups: ``(N,)`` ids.
        cs: candidate values (> 0).

    Returns:
        ``(best C, {C: validation balanced accuracy})``.
    """
    from medcl.eval.metrics import classification_metrics
    from medcl.io.splits import group_split

    if not cs or min(cs) <= 0:
        raise ValueError(f"need candidate C values > 0, got {cs}")
    if len(cs) == 1:
        return float(cs[0]), {}
    split = group_split(groups, train_y, test_size=val_size, seed=seed)
    fit, val = split["train"], split["test"]
    n = int(train_y.max()) + 1
    scores = {
        float(c): classification_metrics(
            train_y[val], linear_probe(train_x[fit], train_y[fit], train_x[val], c=c, seed=seed), n
        )["balanced_accuracy"]
        for c in sorted(cs)
    }
    best = max(scores, key=lambda c: (scores[c], -c))
    return best, scores
