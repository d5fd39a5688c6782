"""A linear probe on the penultimate features: how well a logistic regression tells the forgotten classes' images
from the retained ones. Output-level forgetting that leaves the features intact still separates here."""

from collections.abc import Sequence

import numpy as np
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from ..sampling import seeded_subset
from .features import head_inputs

logger = logging.get_logger(__name__)


def linear_probe(
    model: nn.Module,
    train: dict[str, Dataset],
    test: dict[str, Dataset],
    forget_classes: Sequence[int],
    *,
    seed: int = 0,
    max_per_side: int = 1000,
    batch_size: int = 64,
) -> dict:
    """How well a linear probe on the penultimate features tells forget-class images from retained ones.

    A logistic regression (standardised features, class_weight="balanced") is fitted on the features of up to
    `max_per_side` seeded random images of train["forget_train"] and of train["retain_train"], and scored on as
    many of test["forget_test"] and test["retain_test"]. An image is positive when its label is in
    `forget_classes`. Returns the balanced accuracy in % (chance is 50) and the ROC AUC (chance is 0.5).

    The features of a model that never saw the class usually still separate it somewhat (features learned on
    neighbouring classes, even random convolutions, carry information about any digit): read it against the
    oracle's, not against 50.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    forget = set(int(c) for c in forget_classes)

    def features(forget_set: Dataset, retain_set: Dataset, offset: int) -> tuple[np.ndarray, np.ndarray, dict]:
        parts = [head_inputs(model, seeded_subset(d, max_per_side, seed + offset + i), batch_size)
                 for i, d in enumerate((forget_set, retain_set))]
        x = np.concatenate([p.features.double().numpy() for p in parts])
        y = np.isin(np.concatenate([p.labels.numpy() for p in parts]), list(forget)).astype(np.int64)
        return x, y, {"forget": int(y.sum()), "retain": int((1 - y).sum())}

    x_train, y_train, n_train = features(train["forget_train"], train["retain_train"], 0)
    x_test, y_test, n_test = features(test["forget_test"], test["retain_test"], 2)
    if len(set(y_train.tolist())) < 2 or len(set(y_test.tolist())) < 2:
        raise ValueError(f"The probe needs forget and retained images in both splits; got train {n_train}, "
                         f"test {n_test}.")
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    probe.fit(scaler.transform(x_train), y_train)
    scores = probe.decision_function(scaler.transform(x_test))
    result = {
        "balanced_accuracy": 100.0 * balanced_accuracy_score(y_test, (scores > 0).astype(np.int64)),
        "auc": float(roc_auc_score(y_test, scores)),
        "train_balanced_accuracy": 100.0 * balanced_accuracy_score(y_train, probe.predict(scaler.transform(x_train))),
        "n_train": n_train,
        "n_test": n_test,
        "feature_dim": int(x_train.shape[1]),
        "forget_classes": sorted(forget),
    }
    logger.info(f"Linear probe on penultimate features: balanced accuracy {result['balanced_accuracy']:.1f}% "
                f"(chance 50), AUC {result['auc']:.3f}")
    return result

