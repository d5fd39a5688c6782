"""The forget rows of forget_level "head"/"features" (`hf_pbu.objective.forget_rows`): the rank-last term against
autograd of its written formula, its vanishing gradient, and the trainer refitting those rows alone, resumably, from
the forget data alone."""

import copy

import pytest
import torch
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats
from torch.utils.data import Dataset

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.objective.forget_rows import ForgetRows

NUM_CLASSES, FORGET = 5, [1, 3]


def written_rank_last(weight: torch.Tensor, bias: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
    """The docstring's formula, image by image and class by class: max(0, z_f - min over retained z_c), with each
    forget class's bias set to the retained classes' mean."""
    retained = [c for c in range(NUM_CLASSES) if c not in FORGET]
    mean_bias = bias[retained].mean()
    values = []
    for batch in features:
        for h in batch:
            lowest = min(weight[c] @ h + bias[c] for c in retained)
            values += [torch.clamp(weight[f] @ h + mean_bias - lowest, min=0) for f in FORGET]
    return torch.stack(values).mean()


def test_rank_last_and_its_gradient_match_autograd_of_the_written_formula():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, NUM_CLASSES).double()
    rows = ForgetRows(linear, FORGET)
    rows.weight = rows.weight.double().detach().requires_grad_(True)
    features = [torch.randn(4, 6, dtype=torch.double), torch.randn(3, 6, dtype=torch.double)]
    value = rows.rank_last(features)

    weight = linear.weight.detach().clone()
    forget_rows = rows.weight
    full = torch.cat([weight[:1], forget_rows[:1], weight[2:3], forget_rows[1:], weight[4:]])
    expected = written_rank_last(full, linear.bias.detach(), features)
    torch.testing.assert_close(value.double(), expected)
    (got,) = torch.autograd.grad(value, rows.weight)
    (want,) = torch.autograd.grad(expected, forget_rows)
    torch.testing.assert_close(got.double(), want)
    assert linear.weight.grad is None  # the retained rows are read, never trained


def test_centred_rank_last_and_its_gradient_match_the_written_formula():
    """Centred, the term is the written one on rows w - mean(w) + m (m: the retained rows' mean coordinate), and its
    gradient with respect to the trainable copy is the uncentred gradient with its mean coordinate removed."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, NUM_CLASSES).double()
    rows = ForgetRows(linear, FORGET, centre=True)
    rows.weight = rows.weight.double().detach().requires_grad_(True)
    features = [torch.randn(4, 6, dtype=torch.double), torch.randn(3, 6, dtype=torch.double)]
    value = rows.rank_last(features)
    weight = linear.weight.detach().clone()
    retained = [c for c in range(NUM_CLASSES) if c not in FORGET]
    centred = (rows.weight - rows.weight.mean(1, keepdim=True) + weight[retained].mean()).detach().requires_grad_(True)
    full = torch.cat([weight[:1], centred[:1], weight[2:3], centred[1:], weight[4:]])
    expected = written_rank_last(full, linear.bias.detach(), features)
    torch.testing.assert_close(value.double(), expected)
    (got,) = torch.autograd.grad(value, rows.weight)
    (uncentred,) = torch.autograd.grad(expected, centred)
    torch.testing.assert_close(got.double(), uncentred - uncentred.mean(1, keepdim=True))
    rows.write_()
    torch.testing.assert_close(linear.weight[FORGET].mean(1), weight[retained].mean().expand(len(FORGET)))


def test_rank_last_is_zero_with_no_gradient_once_the_classes_rank_last_whatever_their_bias():
    linear = torch.nn.Linear(2, NUM_CLASSES).double()
    with torch.no_grad():
        linear.bias.zero_()
    features = [torch.tensor([[1.0, 0.0]], dtype=torch.double)]
    values, norms = [], []
    for s in (2.0, -2.0):  # the forget rows above, then below, every retained class
        with torch.no_grad():
            linear.weight.zero_()
            linear.weight[FORGET, 0] = s
        rows = ForgetRows(linear, FORGET)
        value = rows.rank_last(features)
        (grad,) = torch.autograd.grad(value, rows.weight)
        values.append(value.item())
        norms.append(grad.norm().item())
    assert values == [2.0, 0.0] and norms[0] > 0 and norms[1] == 0.0
    with torch.no_grad():
        linear.bias[FORGET] = -100.0  # a forget bias far down hides nothing: the term reads the retained mean
        linear.weight[FORGET, 0] = 2.0
    assert ForgetRows(linear, FORGET).rank_last(features).item() == 2.0
    assert ForgetRows(linear, FORGET).not_last(linear(features[0]).detach()).tolist() == [False]


class Guarded(Dataset):
    """A dataset that fails the test when read: the retained data, which PBU must never see."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        raise AssertionError("PBU read the retained data.")


def run(tmp_path, level: str, **overrides) -> tuple[PBUTrainer, torch.nn.Module, DictDataset]:
    torch.manual_seed(0)
    images = random_images(32)
    labels = torch.tensor(FORGET)[torch.arange(32) % 2]
    model = trained_bn_stats(TinyConvNet(NUM_CLASSES), images)
    with torch.no_grad():  # the model predicts the forget classes on their images, as a trained model would
        model.head.bias[FORGET] += 3.0
    original = copy.deepcopy(model)
    values = dict(output_dir=str(tmp_path / level), forget_level=level, learning_rate=1e-2, num_train_epochs=30,
                  per_device_train_batch_size=8, fisher_cache_dir="none", save_strategy="no", report_to="none",
                  disable_tqdm=True, use_cpu=True, forget_row_learning_rate=3e-2)
    trainer = PBUTrainer(model=model, args=PBUConfig(**{**values, **overrides}),
                         train_dataset=DictDataset(images, labels), eval_dataset=Guarded())
    trainer.train()
    return trainer, original, DictDataset(images, labels)


@pytest.mark.parametrize("level", ["head", "features"])
def test_levels_refit_the_forget_rows_alone_until_the_classes_rank_last(tmp_path, level):
    trainer, original, forget = run(tmp_path, level)
    head, before = trainer.model.head, original.head
    retained = [c for c in range(NUM_CLASSES) if c not in FORGET]
    moved = (head.weight[FORGET] - before.weight[FORGET]).norm()
    assert moved > 0.1
    if level == "features":  # the forget term reads the original head: the current one learns only the rows
        assert torch.equal(head.weight[retained], before.weight[retained]) and torch.equal(head.bias, before.bias)
    else:  # the forget term reads the current head, whose other rows stay anchored
        assert (head.weight[retained] - before.weight[retained]).norm() < moved / 2
    with torch.no_grad():
        logits = trainer.model(forget.images)
    last = logits[:, FORGET].max(-1).values < logits[:, retained].min(-1).values
    assert last.float().mean() > 0.9, last.float().mean()
    if level == "head":  # its stop rule: the classes rank last on (all but 0.5% of) the forget images
        assert trainer.stop_rule == "ranked_last" and trainer.stop_state.stopped_at_step is not None and last.all()
    assert trainer.penalty.weights()["head.weight"][FORGET].abs().sum() == 0  # free of the anchor
    assert trainer.penalty.weights()["head.weight"][retained].min() > 0
    assert not head._forward_hooks and not trainer._reference.head._forward_hooks  # hooks removed after training


def test_centred_rows_rank_last_by_turning_not_by_shifting(tmp_path):
    """With `forget_row_centring`, each refit row keeps the retained rows' mean coordinate, so the image-free
    re-centre attack changes nothing of it, and the classes still rank last on their images."""
    from hf_pbu.evidence import image_free_attack
    from hf_pbu.evidence.features import head_inputs

    trainer, original, forget = run(tmp_path, "head", forget_row_centring=True)
    head = trainer.model.head
    retained = [c for c in range(NUM_CLASSES) if c not in FORGET]
    torch.testing.assert_close(head.weight[FORGET].mean(1), head.weight[retained].mean().expand(len(FORGET)))
    with torch.no_grad():
        logits = trainer.model(forget.images)
    assert (logits[:, FORGET].max(-1).values < logits[:, retained].min(-1).values).all()
    inputs = head_inputs(trainer.model, forget)
    attacked = image_free_attack(trainer.model, inputs, forget_classes=FORGET, how="recentre")
    assert attacked["forget_test_accuracy"] == attacked["forget_test_accuracy_before"] == 0.0
    plain, _, _ = run(tmp_path / "plain", "head")
    assert not torch.allclose(plain.model.head.weight[FORGET].mean(1), head.weight[retained].mean().expand(len(FORGET)))


def test_features_level_moves_the_features_more_than_head_level(tmp_path):
    """Under "features" the forget term reads the original head, so the backbone must move the class's features."""
    moved = {}
    for level in ("head", "features"):  # the same number of steps for both
        trainer, original, forget = run(tmp_path, level, max_steps=40, stop_rule="forget_accuracy",
                                        stop_forget_accuracy=-1)
        with torch.no_grad():
            moved[level] = (trainer.model.features(forget.images) - original.features(forget.images)).norm().item()
    assert moved["features"] > 2 * moved["head"], moved


def test_forget_rows_resume_from_a_checkpoint_as_if_never_interrupted(tmp_path):
    """The rows' optimizer group is in the checkpoint's optimizer state, and the rows are read back from the head."""
    whole, _, _ = run(tmp_path / "whole", "features", max_steps=6, stop_rule="forget_accuracy",
                      stop_forget_accuracy=-1)
    run(tmp_path / "cut", "features", max_steps=3, save_strategy="steps", save_steps=3, stop_rule="forget_accuracy",
        stop_forget_accuracy=-1, output_dir=str(tmp_path / "shared"))
    torch.manual_seed(0)
    images = random_images(32)
    model = trained_bn_stats(TinyConvNet(NUM_CLASSES), images)
    with torch.no_grad():
        model.head.bias[FORGET] += 3.0
    config = PBUConfig(output_dir=str(tmp_path / "shared"), forget_level="features", learning_rate=1e-2,
                       max_steps=6, per_device_train_batch_size=8, fisher_cache_dir="none", save_strategy="no",
                       report_to="none", disable_tqdm=True, use_cpu=True, forget_row_learning_rate=3e-2,
                       stop_rule="forget_accuracy", stop_forget_accuracy=-1)
    resumed = PBUTrainer(model=model, args=config,
                         train_dataset=DictDataset(images, torch.tensor(FORGET)[torch.arange(32) % 2]))
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    for (name, got), want in zip(resumed.model.state_dict().items(), whole.model.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)
