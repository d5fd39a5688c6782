"""Every unlearning method on a tiny timm ResNet and a few hundred real digits: it runs, lowers the forget accuracy,
and reads only the data its `data_needed` declares."""

import copy
import dataclasses

import pytest
import timm
import torch
from baselines import METHODS
from baselines.bad_teaching import BadTeachingConfig
from baselines.finetune import FinetuneConfig
from baselines.mask_logits import MaskLogitsConfig
from baselines.retrain import RetrainConfig
from baselines.scrub import SCRUBConfig
from baselines.spotter import (
    SpotterConfig,
    dispersion,
    logits_and_features,
    masked_teacher_probs,
    pgd_neighbours,
    runner_up,
)
from baselines.ssd import SSDConfig, dampen
from baselines.unsir import UNSIRConfig
from classifier_training import ClassifierTrainer
from offline_data import digits_dataset
from torch.utils.data import Dataset
from transformers import TrainingArguments

from hf_pbu import PBUConfig
from hf_pbu.data import split_by_classes, with_image_transform
from hf_pbu.evidence.features import penultimate_features
from hf_pbu.evidence.measurement import accuracy
from hf_pbu.models import classifier_logits, eval_transform

FORGET_CLASS = 3


class GuardedDataset(Dataset):
    """Counts reads, or fails the test at the first read when the method declared it does not need this data."""

    def __init__(self, dataset: Dataset, name: str, allowed: bool):
        self.dataset, self.name, self.allowed, self.reads = dataset, name, allowed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if not self.allowed:
            raise AssertionError(f"The method read {self.name}, which its `data_needed` says it does not use.")
        self.reads += 1
        return self.dataset[index]


def quiet_args(tmp_path, **kwargs) -> dict:
    return dict(output_dir=str(tmp_path), report_to="none", save_strategy="no", logging_strategy="no",
                disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=False, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny timm ResNet trained on 400 digits at 16x16, and the forget/retain training data of class 3."""
    tmp = tmp_path_factory.mktemp("baselines")
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet10t", num_classes=10, channels=(8, 16, 32, 64), stem_width=8,
        pretrained_cfg_overlay={"input_size": (3, 16, 16), "crop_pct": 1.0, "interpolation": "bilinear",
                                "mean": (0.5,) * 3, "std": (0.5,) * 3},
    )
    train = digits_dataset()["train"].select(range(400))
    transform = eval_transform(model)
    recipe = TrainingArguments(**quiet_args(tmp / "base", num_train_epochs=10, learning_rate=3e-3,
                                            per_device_train_batch_size=32, seed=0))
    ClassifierTrainer(model=model, args=recipe, train_dataset=with_image_transform(train, transform)).train()
    forget, retain = (with_image_transform(split, transform) for split in split_by_classes(train, [FORGET_CLASS]))
    model.eval()
    assert accuracy(model, forget) > 70, "the tiny base model must know the forget class for the test to mean anything"
    return model, forget, retain, recipe, tmp


def method_configs(tmp_path, recipe: TrainingArguments) -> dict:
    """Each method's published defaults, shrunk only where a few hundred images leave too few steps to act."""
    return {
        "pbu": PBUConfig(**quiet_args(tmp_path / "pbu", per_device_train_batch_size=32, num_train_epochs=10,
                                      min_step_budget=0,  # the 10-epoch budget this check was sized for
                                      fisher_cache_dir="none", fisher_estimator="empirical")),
        "retrain": RetrainConfig(training_args=dataclasses.replace(recipe, num_train_epochs=3)),
        "finetune": FinetuneConfig(epochs=3, batch_size=32),
        "unsir": UNSIRConfig(batch_size=32, noise_steps=10, retain_per_class=20, repair_epochs=5),
        "bad_teaching": BadTeachingConfig(epochs=3, batch_size=32, learning_rate=1e-3),
        "ssd": SSDConfig(),
        "scrub": SCRUBConfig(learning_rate=1e-2),
        "mask_logits": MaskLogitsConfig(),
        "spotter": SpotterConfig(),
    }


@pytest.mark.parametrize("name", list(METHODS))
def test_method_forgets_and_reads_only_declared_data(setup, tmp_path, name):
    base, forget, retain, recipe, _ = setup
    method = METHODS[name]
    config = method_configs(tmp_path, recipe)[name]
    guarded_forget = GuardedDataset(forget, "the forget data", method.needs_forget)
    guarded_retain = GuardedDataset(retain, "the retained data", method.needs_retain)
    before = accuracy(base, forget)

    unlearned = method.unlearn(copy.deepcopy(base), guarded_forget, guarded_retain, config)

    after = accuracy(unlearned.eval(), forget)
    assert after < before - 20, f"{name}: forget accuracy {before:.1f}% -> {after:.1f}%"
    assert (guarded_forget.reads > 0) == method.needs_forget
    assert (guarded_retain.reads > 0) == method.needs_retain


@pytest.mark.parametrize("level", ["head", "features"])
def test_pbu_forget_levels_forget_from_the_forget_data_alone(setup, tmp_path, level):
    """The levels that refit the forget rows (and move the features) still read nothing but the forget data."""
    base, forget, retain, _, _ = setup
    config = PBUConfig(**quiet_args(tmp_path / level, per_device_train_batch_size=32, num_train_epochs=10,
                                    fisher_cache_dir="none", forget_level=level))
    guarded_forget = GuardedDataset(forget, "the forget data", True)
    unlearned = METHODS["pbu"].unlearn(copy.deepcopy(base), guarded_forget,
                                       GuardedDataset(retain, "the retained data", False), config)
    assert accuracy(unlearned.eval(), forget) < accuracy(base, forget) - 20
    assert guarded_forget.reads > 0


def test_ssd_dampens_only_parameters_specialised_on_the_forget_data():
    layer = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.ones_(layer.weight)
    full = {"weight": torch.tensor([[1.0, 1.0], [1.0, 1.0]])}
    forget = {"weight": torch.tensor([[20.0, 5.0], [40.0, 1.0]])}

    changed = dampen(layer, full, forget, alpha=10.0, dampening=1.0)

    assert changed == 2
    assert torch.allclose(layer.weight, torch.tensor([[1 / 20, 1.0], [1 / 40, 1.0]]))


def test_mask_logits_changes_only_the_forget_classes_bias(setup):
    base, forget, retain, _, _ = setup
    masked = METHODS["mask_logits"].unlearn(copy.deepcopy(base), forget, None, MaskLogitsConfig())

    changed = [name for name, p in masked.state_dict().items() if not torch.equal(p, base.state_dict()[name])]
    assert changed == ["fc.bias"]
    assert masked.fc.bias[FORGET_CLASS] == MaskLogitsConfig().mask_value
    assert accuracy(masked.eval(), forget) == 0.0
    assert accuracy(masked, retain) >= accuracy(base, retain)  # the argmax only loses the forget class


def test_spotter_forgets_from_the_forget_data_alone_and_keeps_the_retained_classes(setup):
    """The published recipe (10 epochs of SGD at 1e-4) with retain_train=None: the forget class is gone, most of the
    retained accuracy stays, and the retained data is never needed."""
    base, forget, retain, _, _ = setup
    guarded_forget = GuardedDataset(forget, "the forget data", True)

    unlearned = METHODS["spotter"].unlearn(copy.deepcopy(base), guarded_forget, None, SpotterConfig()).eval()

    assert METHODS["spotter"].data_needed == "forget only"
    assert guarded_forget.reads > 0
    assert accuracy(unlearned, forget) < 10, accuracy(unlearned, forget)
    assert accuracy(unlearned, retain) > 75, accuracy(unlearned, retain)


def test_spotter_dispersion_is_the_mean_cosine_similarity_of_same_class_pairs():
    features = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 1.0], [3.0, 4.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 0, 2])  # class 0: rows 0, 1, 3; class 1 and 2 have no pair
    cosine = torch.nn.functional.cosine_similarity
    pairs = [(i, j) for i in (0, 1, 3) for j in (0, 1, 3) if i != j]
    expected = sum(cosine(features[i], features[j], dim=0) for i, j in pairs) / len(pairs)

    assert torch.allclose(dispersion(features, labels), expected)
    assert dispersion(features[[0, 2]], torch.tensor([0, 1])) == 0.0  # no same-class pair, no term
    assert torch.allclose(dispersion(features[[0, 0]], torch.tensor([5, 5])), torch.tensor(1.0))


def test_spotter_masked_teacher_drops_every_forget_class_and_renormalises():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    masked = masked_teacher_probs(logits, torch.tensor([0, 2]))
    kept = torch.softmax(logits, -1)[:, [1, 3]]
    assert torch.allclose(masked, torch.stack([torch.zeros(1), kept[:, 0], torch.zeros(1), kept[:, 1]], 1) / kept.sum())


def test_spotter_disperses_the_features_the_head_reads(setup):
    """The dispersion term's features, taken with gradients in the training forward pass, are the head's input."""
    base, forget, _, _, _ = setup
    images = torch.stack([forget[i]["pixel_values"] for i in range(4)])
    logits, features = logits_and_features(base.eval(), images)
    assert features.requires_grad
    assert torch.allclose(features, penultimate_features(base, images), atol=1e-6)
    assert torch.allclose(logits, classifier_logits(base, images), atol=1e-6)


@pytest.mark.parametrize("toward", [True, False])
def test_spotter_pgd_neighbour_stays_within_eps_and_moves_toward_the_runner_up(setup, toward):
    """Targeted PGD raises the runner-up's log-probability within the eps ball; the reference code's sign
    (`pgd_toward_runner_up=False`) lowers it."""
    base, forget, _, _, _ = setup
    batch = next(iter(torch.utils.data.DataLoader(forget, batch_size=len(forget))))
    images, labels = batch["pixel_values"], batch["labels"]
    config = SpotterConfig(pgd_toward_runner_up=toward)

    neighbours = pgd_neighbours(base.eval(), images, labels, config, torch.Generator().manual_seed(0))

    assert neighbours.shape == images.shape
    assert (neighbours - images).abs().max() <= config.epsilon + 1e-6
    with torch.no_grad():
        clean = classifier_logits(base, images).log_softmax(-1)
        moved = classifier_logits(base, neighbours).log_softmax(-1)
    target = runner_up(clean, labels)[:, None]
    gain = (moved.gather(1, target) - clean.gather(1, target)).squeeze(1)
    if toward:
        assert (gain > 0).float().mean() > 0.9, gain
    else:
        assert (gain < 0).float().mean() > 0.9, gain
