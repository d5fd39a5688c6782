"""Membership-inference attacks (MIA) on the forget set: does the model still treat it as training data?

Both attacks are fitted to tell retained *training* samples (members) from test samples (non-members) by the
model's outputs alone, then applied to the forget-training samples. The figure reported is the percentage of
forget-training samples the attack calls members: high before unlearning, and ideally no higher than on unseen
data after. The attack needs retained training data, which the partially blinded setting may not have: without
it the MIA is skipped.
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from transformers.utils import logging

from ..sampling import seeded_indices

logger = logging.get_logger(__name__)


def entropy(logits: torch.Tensor) -> np.ndarray:
    """Shannon entropy (nats) of the softmax of each row of `logits`."""
    log_probs = F.log_softmax(logits.double(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1).numpy()


def loss_features(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-sample [cross-entropy, entropy, top probability, true-class logit margin] for the logistic attack."""
    logits = logits.double()
    loss = F.cross_entropy(logits, labels, reduction="none")
    top = F.softmax(logits, -1).max(-1).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).max(-1).values
    return torch.stack([loss, torch.from_numpy(entropy(logits)), top, true - others], dim=1).numpy()


def _balanced(members: np.ndarray, non_members: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Attack training set with as many members as non-members (a fixed random subset of the larger side)."""
    rng = np.random.default_rng(seed)
    count = min(len(members), len(non_members))
    members = members[seeded_indices(len(members), count, rng, sort=False)]
    non_members = non_members[seeded_indices(len(non_members), count, rng, sort=False)]
    return np.concatenate([members, non_members]), np.concatenate([np.ones(count), np.zeros(count)])


def member_rate(classifier, members: np.ndarray, non_members: np.ndarray, targets: np.ndarray, seed: int = 0) -> float:
    """Fit `classifier` on members (1) vs non-members (0); percent of `targets` it predicts to be members."""
    features, is_member = _balanced(members, non_members, seed)
    classifier.fit(features, is_member)
    return float(100.0 * classifier.predict(targets).mean())


def membership_inference(
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], seed: int = 0
) -> dict[str, float] | None:
    """Both attacks' member rates (percent) on the forget-training samples, from the model's outputs
    {split: (logits, labels)} (`hf_pbu.evidence.measurement.predictions`) on retain_train (members), retain_test
    (non-members) and forget_train; None when either side to fit them on is missing.

    entropy_svc: the reference code's attack, an RBF SVC (C=3) on the entropy of the softmax.
    loss_logistic: logistic regression on `loss_features`, which sees the labels and is usually the stronger.
    """
    if outputs.get("retain_train") is None or outputs.get("retain_test") is None:
        logger.info("No retained training and test data: skipping the membership-inference attack.")
        return None
    names = ("retain_train", "retain_test", "forget_train")
    entropies = {name: entropy(outputs[name][0])[:, None] for name in names}
    features = {name: loss_features(*outputs[name]) for name in names}
    return {
        "entropy_svc": member_rate(
            SVC(C=3, gamma="auto", kernel="rbf"),
            entropies["retain_train"], entropies["retain_test"], entropies["forget_train"], seed,
        ),
        "loss_logistic": member_rate(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
            features["retain_train"], features["retain_test"], features["forget_train"], seed,
        ),
    }
