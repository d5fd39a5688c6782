"""PBUTrainer: the penalty, what is (not) saved or optimised, the stop criterion, non-finite losses."""

import copy

import pytest
import torch
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats
from transformers import TrainerCallback

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.penalty import AnchorPenalty


def config(tmp_path, **overrides) -> PBUConfig:
    values = dict(
        output_dir=str(tmp_path / "out"), fisher_cache_dir="none", report_to="none", disable_tqdm=True,
        save_strategy="no", per_device_train_batch_size=8, fisher_batch_size=8, use_cpu=True,
    )
    return PBUConfig(**{**values, **overrides})


def forget_model_and_data(n=16, forget_class=1, seed=0):
    torch.manual_seed(seed)
    images = random_images(n, seed=seed)
    model = trained_bn_stats(TinyConvNet(3), images)
    # Make the model predict the forget class on the forget images, as a trained model would.
    with torch.no_grad():
        model.head.bias[forget_class] += 5.0
    return model, DictDataset(images, torch.full((n,), forget_class))


def test_penalty_value_and_in_place_gradient():
    model = TinyConvNet(3)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    beta, gamma = 3.0, 7.0
    penalty = AnchorPenalty(model, fisher, beta, gamma)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    other = {n: torch.randn_like(p) for n, p in model.named_parameters()}  # what the CE backward left in .grad
    for n, p in model.named_parameters():
        p.grad = other[n].clone()
    model.head.bias.grad = None  # a parameter the loss did not reach
    value, squared = penalty.value(model)
    penalty.add_gradient_(model, scale=0.5)
    expected_value, expected_squared = 0.0, 0.0
    for n, p in model.named_parameters():
        w = beta * fisher[n] + gamma
        delta = p.detach() - anchors[n]
        before = torch.zeros_like(p) if n == "head.bias" else other[n]
        torch.testing.assert_close(p.grad, before + 0.5 * 2 * w * delta, rtol=1e-5, atol=1e-5)
        expected_value += (w * delta**2).sum()
        expected_squared += (delta**2).sum()
    torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(squared, expected_squared, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(penalty.anchors()["head.weight"], anchors["head.weight"])
    torch.testing.assert_close(penalty.weights()["head.bias"], beta * fisher["head.bias"] + gamma)


class GradientRecorder(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_optimizer_step_sees_the_gradient_of_the_pbu_objective(tmp_path, accumulation):
    """Brute force: autograd through alpha * (-CE) + sum (beta F + gamma) d^2 on the whole step's data."""
    model, forget = forget_model_and_data(n=16)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    args = config(tmp_path, max_steps=1, stop_forget_accuracy=-1, max_grad_norm=0, alpha=3.0, beta=5.0, gamma=7.0,
                  per_device_train_batch_size=16 // accumulation, gradient_accumulation_steps=accumulation)
    recorder = GradientRecorder()
    trainer = PBUTrainer(model=model, args=args, train_dataset=forget, fisher=fisher, callbacks=[recorder])
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # move away from theta* so that the penalty's gradient is not zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = copy.deepcopy(model).eval()  # BatchNorm in eval mode, as freeze_batchnorm does
    loss = -3.0 * torch.nn.functional.cross_entropy(reference(forget.images), forget.labels)
    for n, p in reference.named_parameters():
        loss = loss + ((5.0 * fisher[n] + 7.0) * (p - anchors[n]) ** 2).sum()
    loss.backward()
    trainer.train()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(recorder.grads[n], p.grad, rtol=1e-4, atol=1e-4)


def test_anchor_and_weight_are_outside_state_dict_and_optimizer(tmp_path):
    model, forget = forget_model_and_data()
    keys_before = set(model.state_dict())
    trainer = PBUTrainer(model=model, args=config(tmp_path, max_steps=1, stop_forget_accuracy=-1), train_dataset=forget)
    trainer.train()
    assert set(trainer.model.state_dict()) == keys_before
    flat_size = trainer.penalty.anchor.numel()
    assert trainer.penalty.anchor.dtype == torch.float32 and trainer.penalty.weight.dtype == torch.float32
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in trainer.model.parameters()}
    assert all(p.numel() != flat_size for p in optimised)
    saved = trainer.model.state_dict().values()
    assert all(t.data_ptr() not in (trainer.penalty.anchor.data_ptr(), trainer.penalty.weight.data_ptr())
               for t in saved)


def test_stop_callback_ends_training_once_forget_class_is_gone(tmp_path):
    model, forget = forget_model_and_data()
    args = config(
        tmp_path, learning_rate=0.05, num_train_epochs=50, stop_forget_accuracy=0.0, alpha=10, beta=0, gamma=1e-3
    )
    trainer = PBUTrainer(model=model, args=args, train_dataset=forget)
    assert trainer.forget_accuracy() == 100.0
    trainer.train()
    assert trainer.stopped_at_step is not None
    assert trainer.state.global_step == trainer.stopped_at_step < trainer.state.max_steps
    assert trainer.forget_accuracy() == 0.0
    logged = [entry for entry in trainer.state.log_history if "forget_ce" in entry]
    assert logged and {"fisher_penalty", "l2_penalty", "forget_accuracy", "loss"} <= set(logged[-1])


def test_stop_check_subset_passing_is_confirmed_on_the_whole_forget_set(tmp_path):
    model, forget = forget_model_and_data(n=16)
    args = config(tmp_path, learning_rate=1e-12, max_steps=1, stop_forget_accuracy=1.0, stop_check_max_samples=4)
    # Label the 4 stop-check images with another class: the subset reads 0% while 12 of 16 images are still known.
    subset = PBUTrainer._subset(forget, args.stop_check_max_samples, args.seed)
    forget.labels[torch.tensor(subset.indices)] = 2
    trainer = PBUTrainer(model=model, args=args, train_dataset=forget)
    assert trainer.stop_check_is_subset and trainer.forget_accuracy() == 0.0
    trainer.train()
    assert trainer.stopped_at_step is None
    assert trainer.forget_accuracy_history[0] == (0, 75.0)


def test_unlearning_without_reaching_the_criterion_runs_to_the_step_budget(tmp_path):
    model, forget = forget_model_and_data()
    trainer = PBUTrainer(model=model, args=config(tmp_path, learning_rate=1e-6, max_steps=3), train_dataset=forget)
    trainer.train()
    assert trainer.stopped_at_step is None and trainer.state.global_step == 3


def test_non_finite_loss_stops_with_last_good_weights(tmp_path):
    model, forget = forget_model_and_data()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = PBUTrainer(model=model, args=config(tmp_path, alpha=float("inf"), max_steps=5), train_dataset=forget)
    output = trainer.train()
    assert output.metrics.get("non_finite_loss") == 1.0
    assert trainer.state.global_step == 0
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), before[n])


def test_batchnorm_statistics_are_frozen_while_unlearning(tmp_path):
    model, forget = forget_model_and_data()
    running_mean = model.features[1].running_mean.clone()
    PBUTrainer(model=model, args=config(tmp_path, max_steps=2, stop_forget_accuracy=-1), train_dataset=forget).train()
    assert torch.equal(model.features[1].running_mean, running_mean)


def test_empty_forget_set_is_refused(tmp_path):
    model, _ = forget_model_and_data()
    empty = DictDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="forget set is empty"):
        PBUTrainer(model=model, args=config(tmp_path), train_dataset=empty)


def test_config_rejects_unknown_estimator(tmp_path):
    with pytest.raises(ValueError, match="fisher_estimator"):
        config(tmp_path, fisher_estimator="diagonal")


def test_interrupted_run_resumes_from_its_checkpoint_with_the_original_anchor(tmp_path):
    from safetensors.torch import load_file

    model, forget = forget_model_and_data()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = config(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, stop_forget_accuracy=-1,
                  learning_rate=0.01)
    PBUTrainer(model=model, args=args, train_dataset=forget).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = load_file(checkpoint / "model.safetensors")
    assert set(saved) == set(model.state_dict())  # theta* and w are not in checkpoints

    # A new process: the model is loaded from its source again and the run resumes from the last checkpoint.
    fresh, _ = forget_model_and_data()
    resumed = PBUTrainer(model=fresh, args=config(tmp_path, max_steps=4, save_strategy="no", learning_rate=0.01,
                                                  stop_forget_accuracy=-1), train_dataset=forget)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    torch.testing.assert_close(resumed.penalty.anchors()["head.weight"], original["head.weight"])
    assert not torch.equal(resumed.model.head.weight, original["head.weight"])
