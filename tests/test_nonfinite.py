"""A run either succeeds or raises: a non-finite loss or gradient (the anchor penalty's included) stops it with the
last finite weights, non-finite weights are never saved, and weights left exactly as they were are a failure."""

import os

import pytest
import torch
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats
from torch import nn
from transformers import TrainerCallback

from hf_pbu import NonFiniteLossError, PBUConfig, PBUTrainer
from hf_pbu.failures import NonFiniteWeightsError, UnchangedWeightsError


def config(tmp_path, **overrides) -> PBUConfig:
    values = dict(output_dir=str(tmp_path / "out"), fisher_cache_dir="none", report_to="none", disable_tqdm=True,
                  per_device_train_batch_size=8, fisher_batch_size=8, use_cpu=True, forget_loss="neg_ce",
                  stop_forget_accuracy=-1, save_strategy="steps", save_steps=1, max_steps=4)
    return PBUConfig(**{**values, **overrides})


def forget_set(n=16) -> DictDataset:
    return DictDataset(random_images(n), torch.full((n,), 1))


class SqrtNet(TinyConvNet):
    """A layer whose forward is finite everywhere but whose gradient at 0 is not (sqrt): the loss stays finite while
    the backward pass gives NaN, as an unstable custom layer does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        features = torch.cat([features[:, :1] * 0, features[:, 1:]], dim=1)  # a feature that is exactly 0
        return self.head(torch.sqrt(features))


class WeightsAtStepEnd(TrainerCallback):
    def __init__(self, model: nn.Module):
        self.model, self.weights = model, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.weights[state.global_step] = {n: p.detach().clone() for n, p in self.model.named_parameters()}


def checkpoints(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_run_before_it_is_applied(tmp_path):
    torch.manual_seed(0)
    images = random_images(16)
    model = trained_bn_stats(SqrtNet(3), images)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = PBUTrainer(model=model, args=config(tmp_path, beta=0), train_dataset=DictDataset(images, torch.ones(16,
                                                                                           dtype=torch.long)))
    with pytest.raises(NonFiniteLossError, match="gradient of the PBU objective became non-finite at step 0"):
        trainer.train()
    assert all(torch.equal(p, original[n]) for n, p in trainer.model.named_parameters())
    assert checkpoints(tmp_path) == [] and not (tmp_path / "out" / "model.safetensors").exists()


def test_the_anchor_penalty_s_gradient_is_checked_too(tmp_path):
    """A Fisher so large that w = beta * F is finite but 2 w (theta - theta*) overflows once theta has moved: the
    forget term's gradient is finite, the penalty's is not; the run stops with the weights of the step before."""
    torch.manual_seed(0)
    model = trained_bn_stats(TinyConvNet(3), random_images(16))
    huge = {n: torch.full_like(p, 1e36) for n, p in model.named_parameters()}
    recorder = WeightsAtStepEnd(model)
    trainer = PBUTrainer(model=model, args=config(tmp_path, beta=100.0, gamma=0.0, learning_rate=2.0),
                         train_dataset=forget_set(), fisher=huge, callbacks=[recorder])
    with pytest.raises(NonFiniteLossError, match="gradient .* non-finite at step 1 .*anchor penalty"):
        trainer.train()
    assert list(recorder.weights) == [1]
    assert all(torch.equal(p, recorder.weights[1][n]) for n, p in trainer.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert checkpoints(tmp_path) == ["checkpoint-1"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_a_fisher_that_is_not_finite_and_non_negative_is_refused_before_training(tmp_path, value):
    model = TinyConvNet(3)
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    fisher["head.bias"][0] = value
    trainer = PBUTrainer(model=model, args=config(tmp_path), train_dataset=forget_set(), fisher=fisher)
    with pytest.raises(ValueError, match="Fisher holds NaN, infinite or negative values"):
        trainer.train()
    assert trainer.state.global_step == 0 and checkpoints(tmp_path) == []


def test_non_finite_weights_are_never_saved(tmp_path):
    model = TinyConvNet(3)
    trainer = PBUTrainer(model=model, args=config(tmp_path), train_dataset=forget_set())
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="head.weight.*nothing was written"):
        trainer.save_model()
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")
    assert [name for name in os.listdir(tmp_path / "out") if not name.startswith(".")] == []


def test_weights_left_exactly_as_they_were_are_a_failure(tmp_path):
    """Updates too small for fp32 (lr 1e-30 on weights of order 1, the forget rows' own rate too) leave every weight
    as it was."""
    torch.manual_seed(0)
    model = trained_bn_stats(TinyConvNet(3), random_images(16))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    args = config(tmp_path, learning_rate=1e-30, forget_row_learning_rate=1e-30, save_strategy="no")
    trainer = PBUTrainer(model=model, args=args, train_dataset=forget_set())
    with pytest.raises(UnchangedWeightsError, match="exactly the original ones.*4 optimizer step.*raise `learning_r"):
        trainer.train()
    assert trainer.unlearning_results is None


def test_a_forget_set_already_forgotten_before_any_update_is_a_failure(tmp_path):
    """The stop rule passes on the original weights (the model never predicts the class): nothing to unlearn."""
    torch.manual_seed(0)
    model = trained_bn_stats(TinyConvNet(3), random_images(16))
    with torch.no_grad():
        model.head.bias[1] -= 100.0  # class 1, the forget set's label, is never predicted
    trainer = PBUTrainer(model=model, args=config(tmp_path, stop_forget_accuracy=0.5, save_strategy="no"),
                         train_dataset=forget_set())
    with pytest.raises(UnchangedWeightsError, match="stop criterion was met before any update .*0.00%"):
        trainer.train()
