"""Membership-inference attacks: features, the fitted attacks, and the skip without retained data."""

import logging
import math

import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_pbu.evidence.measurement import UNLEARNING_ACCURACY_METRIC, predictions
from hf_pbu.evidence.mia import entropy, loss_features, member_rate, membership_inference

CLASSES = 4


def test_entropy_of_uniform_and_peaked_outputs():
    logits = torch.tensor([[0.0] * CLASSES, [50.0, 0.0, 0.0, 0.0]])
    values = entropy(logits)
    assert values[0] == pytest.approx(math.log(CLASSES))
    assert values[1] == pytest.approx(0.0, abs=1e-12)


def test_loss_features_match_their_definitions():
    logits, labels = torch.randn(6, CLASSES), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, ent, top, margin = loss_features(logits, labels).T
    np.testing.assert_allclose(loss, F.cross_entropy(logits.double(), labels, reduction="none").numpy())
    np.testing.assert_allclose(top, F.softmax(logits.double(), -1).max(-1).values.numpy())
    correct = (logits.argmax(-1) == labels).numpy()
    assert ((margin > 0) == correct).all()
    np.testing.assert_allclose(ent, entropy(logits))


def test_member_rate_calls_member_like_targets_members():
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    members, non_members = rng.normal(0, 0.1, (40, 1)), rng.normal(1, 0.1, (30, 1))
    assert member_rate(SVC(), members, non_members, rng.normal(0, 0.1, (20, 1))) > 90
    assert member_rate(SVC(), members, non_members, rng.normal(1, 0.1, (20, 1))) < 10


def _items(labels: list[int], strength: float) -> list[dict]:
    """Samples whose logits (through `nn.Identity`) are `strength` on the true class: high = confident/"seen"."""
    return [{"pixel_values": strength * F.one_hot(torch.tensor(y), CLASSES).float(), "labels": y} for y in labels]


class Scaled(nn.Module):
    num_classes = CLASSES

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x


def _outputs(labels: list[int], strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of `_items` through `Scaled`, as `predictions` returns them."""
    return predictions(Scaled(), _items(labels, strength), batch_size=16)


def test_predictions_keep_dataset_order():
    items = _items([3, 1, 2, 0, 1], 2.0)
    logits, labels = predictions(Scaled(), items, batch_size=2)
    assert labels.tolist() == [3, 1, 2, 0, 1]
    assert logits.argmax(-1).tolist() == [3, 1, 2, 0, 1]


def test_attacks_flag_a_remembered_forget_set_and_not_a_forgotten_one():
    rng = np.random.default_rng(0)

    def labels(n):
        return rng.integers(1, CLASSES, n).tolist()

    outputs = {"retain_train": _outputs(labels(40), 8.0), "retain_test": _outputs(labels(40), 1.0)}
    remembered = membership_inference({**outputs, "forget_train": _outputs([0] * 20, 8.0)})
    forgotten = membership_inference({**outputs, "forget_train": _outputs([0] * 20, -4.0)})
    for attack in ("entropy_svc", "loss_logistic"):
        assert remembered[attack] > 90
    assert forgotten["loss_logistic"] < 10


def test_mia_is_skipped_without_retained_training_data(caplog):
    caplog.set_level(logging.INFO, logger="hf_pbu.evidence.mia")
    assert membership_inference({"forget_train": _outputs([0] * 4, 8.0)}) is None
    assert "skipping the membership-inference attack" in caplog.text


def test_unlearning_accuracy_evaluate_module_loads_by_path_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(UNLEARNING_ACCURACY_METRIC)  # the package's own copy, by path
    result = metric.compute(predictions=[0, 1, 0, 2, 2, 1], references=[0, 1, 1, 2, 1, 0], forget_classes=[1])
    assert result == {"forget_accuracy": pytest.approx(100 / 3), "retain_accuracy": pytest.approx(200 / 3),
                      "forget_samples": 3, "retain_samples": 3}
