"""A linear probe on the penultimate features: a multinomial logistic regression fitted on k training images of every
class, scored on the forgotten classes' test images. Output-level forgetting that leaves the features intact lets
the probe find the class as well as on the original model; a model retrained without the class lets it find the
class from k images too, as far as its features set it apart (read the figure against the oracle's)."""

from collections.abc import Sequence

import numpy as np
from transformers.utils import logging

from .features import HeadInputs

logger = logging.get_logger(__name__)


def k_shot_probe(
    train: HeadInputs,
    forget_test: HeadInputs,
    retain_test: HeadInputs | None = None,
    *,
    forget_classes: Sequence[int] | None = None,
    seed: int = 0,
) -> dict:
    """Fit a multinomial logistic regression (standardised features, lbfgs) on `train` (the features of k images of
    every class, e.g. of `hf_pbu.evidence.relearn_set`) and measure its accuracy on `forget_test` (A_Df: the share of
    the forgotten classes' test images it labels with their class) and on `retain_test`.

    Returns {"k" (training images of the least represented forget class), "forget_classes", "forget_test_accuracy",
    and "retain_test_accuracy" when `retain_test` is given}; accuracies in %."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    labels = train.labels.numpy()
    forget_classes = sorted({int(c) for c in (forget_test.labels.tolist() if forget_classes is None
                                              else forget_classes)})
    missing = [c for c in forget_classes if c not in set(labels.tolist())]
    if missing or len(set(labels.tolist())) < 2:
        raise ValueError(f"The probe needs training images of every forget class and of a retained class; got "
                         f"classes {sorted(set(labels.tolist()))} for forget classes {forget_classes}.")
    scaler = StandardScaler().fit(train.features.double().numpy())
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    probe.fit(scaler.transform(train.features.double().numpy()), labels)

    def accuracy(inputs: HeadInputs | None) -> float | None:
        if inputs is None or len(inputs) == 0:
            return None
        predicted = probe.predict(scaler.transform(inputs.features.double().numpy()))
        return 100.0 * float(np.mean(predicted == inputs.labels.numpy()))

    result = {"k": min(int((labels == c).sum()) for c in forget_classes), "forget_classes": forget_classes,
              "forget_test_accuracy": accuracy(forget_test)}
    if retain_test is not None:
        result["retain_test_accuracy"] = accuracy(retain_test)
    logger.info(f"Linear probe (k={result['k']}): A_Df {result['forget_test_accuracy']:.1f}%")
    return result
