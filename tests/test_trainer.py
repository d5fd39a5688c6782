"""PBUTrainer: the penalty, what is (not) saved or optimised, the stop criterion, non-finite losses, the step
budget, resuming."""

import copy
import json

import pytest
import torch
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback

from hf_pbu import NonFiniteLossError, PBUConfig, PBUTrainer
from hf_pbu.io.checkpoints import SIGNATURE_FILE
from hf_pbu.objective.penalty import AnchorPenalty


def config(tmp_path, **overrides) -> PBUConfig:
    """The paper's objective (forget term -CE, stop on the forget accuracy), whose mechanics these tests check; the
    bounded default terms are tested in test_forget_losses.py."""
    values = dict(
        output_dir=str(tmp_path / "out"), fisher_cache_dir="none", report_to="none", disable_tqdm=True,
        save_strategy="no", per_device_train_batch_size=8, fisher_batch_size=8, use_cpu=True, forget_loss="neg_ce",
        forget_level="output",
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
    trainer.prepare_penalty()  # theta* taken now, before the weights move
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


class WeightsAtStepEnd(TrainerCallback):
    """The model's parameters after each optimizer step, by global step."""

    def __init__(self):
        self.weights: dict[int, list[torch.Tensor]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights[0] = [p.detach().clone() for p in model.parameters()]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = [p.detach().clone() for p in model.parameters()]


def test_stop_callback_ends_training_with_the_first_weights_that_forget(tmp_path):
    model, forget = forget_model_and_data()
    args = config(
        tmp_path, learning_rate=0.05, num_train_epochs=50, stop_forget_accuracy=0.0, alpha=10, beta=0, gamma=1e-3
    )
    trainer = PBUTrainer(model=model, args=args, train_dataset=forget)
    recorder = WeightsAtStepEnd()
    trainer.add_callback(recorder)
    assert trainer.forget_train_accuracy() == 100.0
    trainer.train()
    stopped = trainer.stop_state.stopped_at_step
    assert stopped is not None and stopped < trainer.state.max_steps
    assert trainer.forget_train_accuracy() == 0.0
    assert trainer.stop_state.forget_train_accuracy_history[-1] == (stopped, 0.0)
    # The weights that passed are those after `stopped` updates: the update of the step that found them is undone.
    assert trainer.state.global_step == stopped + 1
    final = [p.detach() for p in trainer.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(final, recorder.weights[stopped]))
    # ... and the weights one step earlier did not pass (the stop is the first step where the class is gone).
    earlier = copy.deepcopy(trainer.model)
    for p, w in zip(earlier.parameters(), recorder.weights[stopped - 1]):
        p.data.copy_(w)
    assert (earlier(forget.images).argmax(-1) == forget.labels).any()
    logged = [entry for entry in trainer.state.log_history if "forget_ce" in entry]
    assert logged and {"fisher_penalty", "l2_penalty", "stop_signal", "forget_train_accuracy", "loss"} <= set(
        logged[-1]
    )


class InOrderPBUTrainer(PBUTrainer):
    """Batches in dataset order, so that a test knows which images each step sees."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(self.train_dataset)


def test_a_step_whose_batches_pass_is_confirmed_on_the_whole_forget_set_with_back_off(tmp_path):
    model, forget = forget_model_and_data(n=16)
    # The model predicts class 1 on every image; images 0-11 are labelled 2, so it gets them wrong: the batches of
    # steps 1-3 read 0%, step 4's 100%, the whole set 25%.
    forget.labels[:] = 2
    forget.labels[12:] = 1
    args = config(tmp_path, learning_rate=1e-12, max_steps=4, per_device_train_batch_size=4, stop_forget_accuracy=1.0)
    trainer = InOrderPBUTrainer(model=model, args=args, train_dataset=forget)
    output = trainer.train()
    assert trainer.stop_state.stopped_at_step is None and trainer.state.global_step == 4
    # Checked before the updates of steps 1 and 2 (0 and 1 updates applied); the second failure waits 2 steps, so
    # step 3's batches (0% too) are not checked; step 4's do not trigger.
    assert trainer.stop_state.forget_train_accuracy_history == [(0, 25.0), (1, 25.0)]
    seconds = trainer.stop_state.stop_check_seconds
    assert seconds > 0 and output.metrics["stop_check_seconds"] == seconds
    assert output.metrics["train_runtime"] > 0


def test_unlearning_without_reaching_the_criterion_runs_to_the_step_budget(tmp_path):
    model, forget = forget_model_and_data()
    trainer = PBUTrainer(model=model, args=config(tmp_path, learning_rate=1e-6, max_steps=3), train_dataset=forget)
    trainer.train()
    assert trainer.stop_state.stopped_at_step is None and trainer.state.global_step == 3


def test_non_finite_loss_stops_with_last_good_weights_and_raises(tmp_path):
    """An infinite pixel in the third batch: the loss is NaN there; the run raises, keeping step 2's weights (beta 0:
    the Fisher on that image would be refused first, `test_fisher_cache_faults.py`)."""
    model, forget = forget_model_and_data(n=24)
    forget.images[20, 0, 0, 0] = float("inf")
    weights = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            weights.append({n: p.detach().clone() for n, p in model.named_parameters()})

    args = config(tmp_path, max_steps=5, stop_forget_accuracy=-1, learning_rate=0.01, beta=0, save_strategy="steps",
                  save_steps=1)
    trainer = InOrderPBUTrainer(model=model, args=args, train_dataset=forget, callbacks=[Record()])
    with pytest.raises(NonFiniteLossError, match="loss became non-finite at step 2"):
        trainer.train()
    assert trainer.state.global_step == 2 and len(weights) == 2
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), weights[-1][n])
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]  # finite ones only


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


@pytest.mark.parametrize("sharding", [{"fsdp": "full_shard"}, {"deepspeed": {"zero_optimization": {"stage": 2}}}])
def test_deepspeed_and_fsdp_are_refused_by_the_config(tmp_path, sharding):
    with pytest.raises(ValueError, match=r"DDP \(`accelerate launch --multi_gpu`\)"):
        config(tmp_path, **sharding)


def test_fsdp_set_by_accelerate_launch_is_refused_before_any_work(tmp_path, monkeypatch):
    model, forget = forget_model_and_data()
    args = config(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(PBUTrainer, "_fisher", lambda self: pytest.fail("the Fisher was computed"))
    with pytest.raises(ValueError, match="FSDP.*accelerate launch --multi_gpu"):
        PBUTrainer(model=model, args=args, train_dataset=forget)


def test_fisher_is_computed_at_train_start_not_at_init(tmp_path, monkeypatch):
    model, forget = forget_model_and_data()
    calls = []
    original = PBUTrainer._fisher

    def counting_fisher(self):
        calls.append(self.state.global_step)
        return original(self)

    monkeypatch.setattr(PBUTrainer, "_fisher", counting_fisher)
    trainer = PBUTrainer(model=model, args=config(tmp_path, max_steps=1, stop_forget_accuracy=-1), train_dataset=forget)
    assert calls == [] and next(trainer.model.parameters()).device == trainer.args.device
    output = trainer.train()
    seconds = trainer.fisher_record.seconds
    assert calls == [0] and seconds > 0 and output.metrics["fisher_seconds"] == seconds


def test_step_budget_counts_optimizer_steps_as_one_process_would(tmp_path):
    model, forget = forget_model_and_data(n=16)
    args = config(tmp_path, num_train_epochs=3, per_device_train_batch_size=3, gradient_accumulation_steps=2,
                  learning_rate=1e-12, stop_forget_accuracy=-1, save_strategy="steps", min_step_budget=0)
    # 16 images in batches of 3: 6 batches per epoch, 3 optimizer steps; 3 epochs: 9 steps, whatever the number of
    # processes (Trainer alone would give 8 processes ceil(16 / 24) = 1 batch per epoch, so 3 steps).
    assert args.max_steps == -1 and args.step_budget(len(forget)) == 9
    trainer = PBUTrainer(model=model, args=args, train_dataset=forget)
    assert trainer.args.max_steps == 9 and args.max_steps == -1  # the caller's arguments are left alone
    trainer.train()
    assert trainer.state.global_step == 9
    # The default save_steps (a tenth of the budget) checkpoints within the budget; the last one is kept.
    assert (tmp_path / "out" / "checkpoint-9" / SIGNATURE_FILE).exists()


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


@pytest.mark.parametrize("change", ["forget_class", "alpha"])
def test_resuming_a_checkpoint_of_another_run_is_refused(tmp_path, change):
    model, forget = forget_model_and_data(forget_class=1)
    args = config(tmp_path, max_steps=1, save_strategy="steps", save_steps=1, stop_forget_accuracy=-1)
    PBUTrainer(model=model, args=args, train_dataset=forget).train()
    signature = json.loads((tmp_path / "out" / "checkpoint-1" / SIGNATURE_FILE).read_text())
    assert signature["settings"]["alpha"] == args.alpha and signature["forget_samples"] == len(forget)

    fresh, other_forget = forget_model_and_data(forget_class=2 if change == "forget_class" else 1)
    overrides = {"alpha": 1.0} if change == "alpha" else {}
    resumed = PBUTrainer(model=fresh, args=config(tmp_path, max_steps=2, stop_forget_accuracy=-1, **overrides),
                         train_dataset=other_forget)
    difference = "forget_data" if change == "forget_class" else "settings.alpha: 721.0 in the checkpoint, 1.0 now"
    with pytest.raises(ValueError, match=f"Cannot resume .*checkpoint-1.*{difference}.*another --output_dir"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 0


@pytest.mark.parametrize(("max_classes", "expected"), [(3, "exact"), (2, "mc")])
def test_auto_fisher_estimator_is_exact_up_to_the_class_limit_then_mc(tmp_path, max_classes, expected):
    model, forget = forget_model_and_data()  # 3 classes
    args = config(tmp_path, max_steps=1, fisher_estimator="auto", fisher_exact_max_classes=max_classes)
    trainer = PBUTrainer(model=model, args=args, train_dataset=forget)
    trainer.train()
    assert trainer.fisher_record.estimator == expected
    assert config(tmp_path, fisher_estimator="empirical").fisher_estimator_for(1000) == "empirical"
    assert PBUConfig(output_dir=str(tmp_path)).fisher_estimator == "mc"  # the default: one sampled label an image


def test_no_fisher_is_computed_when_beta_is_zero(tmp_path, monkeypatch):
    model, forget = forget_model_and_data()
    trainer = PBUTrainer(model=model, args=config(tmp_path, max_steps=1, beta=0.0), train_dataset=forget)
    monkeypatch.setattr(trainer, "_fisher", lambda: pytest.fail("the Fisher was computed with beta = 0"))
    trainer.train()
    assert torch.all(trainer.penalty.weight == trainer.args.gamma)


def test_fisher_is_estimated_on_a_seeded_sample_of_at_most_fisher_max_samples_images(tmp_path, monkeypatch):
    import hf_pbu.trainer as trainer_module

    seen = []
    real = trainer_module.load_or_compute_fisher

    def spy(model, dataset, *args, **kwargs):
        seen.append([float(dataset[i]["pixel_values"].sum()) for i in range(len(dataset))])
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "load_or_compute_fisher", spy)
    for _ in range(2):
        model, forget = forget_model_and_data(n=16)
        PBUTrainer(model=model, args=config(tmp_path, max_steps=1, fisher_max_samples=5, stop_forget_accuracy=-1),
                   train_dataset=forget).train()
    model, forget = forget_model_and_data(n=16)
    PBUTrainer(model=model, args=config(tmp_path, max_steps=1, fisher_max_samples=None, stop_forget_accuracy=-1),
               train_dataset=forget).train()
    assert len(seen[0]) == 5 and seen[0] == seen[1]  # the same seeded sample each run
    assert len(seen[2]) == 16
