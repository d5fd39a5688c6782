"""Evidence beyond output accuracy: the attack suite (relearn attacks, linear probe, prototype, image-free edits of
the head row), penultimate features, per-class view.

The relearn and probe tests use a small CNN trained for about a second on scikit-learn's digits 0..4 (8x8 images):
the original model learns digit 3, the oracle never sees it.
"""

import copy

import numpy as np
import pytest
import torch
from tiny_models import DictDataset
from torch import nn

from hf_pbu.evidence import (
    collect_evidence,
    forget_confusion,
    head_relearn_attack,
    k_shot_probe,
    penultimate_features,
    per_class_accuracy,
    plot_per_class_accuracy,
    prototype_attack,
    relearn_attack,
    relearn_set,
)
from hf_pbu.evidence.attacks import check_head_reads_features, reset_forget_head
from hf_pbu.evidence.features import head_inputs
from hf_pbu.models import classifier_logits, head_linear

CLASSES, FORGET = 5, 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SmallCNN(nn.Module):
    """Conv -> BN -> ReLU -> Conv -> pool -> `head`: a plain module, whose head input the hook captures."""

    def __init__(self, num_classes: int = CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class NoiseFeatures(nn.Module):
    """A "model" whose penultimate features are noise, whatever the image: a probe on them must read chance."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.head = nn.Linear(dim, CLASSES)
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.randn(len(x), self.head.in_features, generator=self.generator))


def fit(dataset: DictDataset, seed: int, epochs: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            loss = nn.functional.cross_entropy(model(dataset.images[batch]), dataset.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread while these tests run: the models are tiny, and on a busy CPU two threads spin-wait on each
    other (the digits fixture took 90 s instead of 4 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(one_thread) -> dict:
    """Splits of digits 0..4 (forget class 3), the original model, the oracle and the masked original."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (torch.tensor(data.images, dtype=torch.float32) / 8.0 - 1.0)[:, None].expand(-1, 3, -1, -1)
    labels = torch.tensor(data.target)
    order = np.random.default_rng(0).permutation(len(labels))
    order = order[(labels[order] < CLASSES).numpy()]
    cut = int(0.7 * len(order))

    def split(indices: np.ndarray, forget: bool) -> DictDataset:
        keep = [i for i in indices if (int(labels[i]) == FORGET) == forget]
        return DictDataset(images[keep].contiguous(), labels[keep])

    splits = {
        "forget_train": split(order[:cut], True), "retain_train": split(order[:cut], False),
        "forget_test": split(order[cut:], True), "retain_test": split(order[cut:], False),
    }
    train_all = DictDataset(torch.cat([splits["forget_train"].images, splits["retain_train"].images]),
                      torch.cat([splits["forget_train"].labels, splits["retain_train"].labels]))
    original = fit(train_all, seed=0)
    masked = copy.deepcopy(original)
    with torch.no_grad():
        masked.head.bias[FORGET] = -1e4
    return {**splits, "original": original, "masked": masked, "oracle": fit(splits["retain_train"], seed=1)}


def test_relearn_set_takes_k_of_every_class_seeded(digits):
    chosen = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)
    labels = [int(chosen[i]["labels"]) for i in range(len(chosen))]
    assert np.bincount(labels, minlength=CLASSES).tolist() == [10] * CLASSES
    again = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)
    other = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=1)
    first = torch.stack([chosen[i]["pixel_values"] for i in range(len(chosen))])
    assert torch.equal(first, torch.stack([again[i]["pixel_values"] for i in range(len(again))]))
    assert not torch.equal(first, torch.stack([other[i]["pixel_values"] for i in range(len(other))]))
    # A class with fewer than k images gives all of them.
    few = DictDataset(digits["forget_train"].images[:3], digits["forget_train"].labels[:3])
    assert len(relearn_set(few, digits["retain_train"], k=10, seed=0)) == 3 + 10 * (CLASSES - 1)


def test_relearn_attack_restores_a_class_the_weights_hold_and_not_one_they_never_learnt(digits):
    relearn = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)
    tests = (digits["forget_test"], digits["retain_test"])
    masked = relearn_attack(digits["masked"], relearn, *tests, seed=0)
    assert masked["forget_test_accuracy_before"] == 0.0  # the mask hides the class at the output
    assert masked["forget_test_accuracy"] > 70.0, masked  # ... and the attack brings it back
    assert masked["retain_test_accuracy"] > 80.0, masked
    assert masked["k"] == 10 and masked["forget_classes"] == [FORGET]
    assert digits["masked"].head.bias[FORGET].item() == -1e4  # the model given is not changed

    oracle = relearn_attack(digits["oracle"], relearn, *tests, seed=0)
    assert oracle["forget_test_accuracy"] < masked["forget_test_accuracy"] - 40.0, (oracle, masked)
    assert relearn_attack(digits["masked"], relearn, *tests, seed=0) == masked  # deterministic on CPU


def test_relearn_attack_without_head_reset_is_blind_to_a_mask(digits):
    """Why the bias reset is the default: no small budget climbs back from a bias of -1e4."""
    relearn = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)
    result = relearn_attack(digits["masked"], relearn, digits["forget_test"], reset_head="none", seed=0)
    assert result["forget_test_accuracy"] < 5.0
    assert "retain_test_accuracy" not in result
    with pytest.raises(ValueError, match="reset_head"):
        relearn_attack(digits["masked"], relearn, digits["forget_test"], reset_head="weights")


def test_relearn_attack_trains_the_copy(digits):
    """The fine-tuning itself works: a random-weight model learns the retained classes at a higher rate."""
    torch.manual_seed(3)
    random_model = SmallCNN().eval()
    relearn = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)
    result = relearn_attack(random_model, relearn, digits["forget_test"], digits["retain_test"],
                            learning_rate=3e-3, steps=60, seed=0)
    assert result["retain_test_accuracy"] > result["retain_test_accuracy_before"] + 20.0, result


def test_k_shot_probe_finds_the_class_in_learnt_features_and_not_in_noise(digits):
    """Fitted on 10 images per class, the probe finds the masked class as on the original (masking a logit leaves
    the features), less of it in the oracle's features, and chance in noise."""
    relearn = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)

    def probe(model: nn.Module) -> dict:
        return k_shot_probe(head_inputs(model, relearn), head_inputs(model, digits["forget_test"]),
                            head_inputs(model, digits["retain_test"]), forget_classes=[FORGET])

    masked, original, oracle = probe(digits["masked"]), probe(digits["original"]), probe(digits["oracle"])
    assert masked == original and masked["k"] == 10
    assert masked["forget_test_accuracy"] > 80.0 and masked["retain_test_accuracy"] > 80.0, masked
    assert oracle["forget_test_accuracy"] < masked["forget_test_accuracy"], (oracle, masked)
    noise = probe(NoiseFeatures())
    assert noise["forget_test_accuracy"] < 100.0 / CLASSES + 25.0, noise


def _tiny_timm():
    import timm

    return timm.create_model("test_resnet", num_classes=3, channels=(8, 16, 16, 16), stem_width=8).eval()


def _tiny_transformers_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    return ResNetForImageClassification(config).eval()


def _tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=8, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, num_labels=3)
    return ViTForImageClassification(config).eval()


@pytest.mark.parametrize("build", [_tiny_timm, _tiny_transformers_resnet, _tiny_vit])
def test_penultimate_features_are_what_the_head_reads(build):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(4, 3, 16, 16)
    features = penultimate_features(model, x)
    linear = head_linear(model)
    assert features.shape == (4, linear.in_features)
    torch.testing.assert_close(linear(features), classifier_logits(model, x), rtol=1e-4, atol=1e-5)


def test_penultimate_features_of_vit_are_the_normalised_cls_token():
    torch.manual_seed(0)
    model = _tiny_vit()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        cls = model.vit(x).last_hidden_state[:, 0]  # ViTModel applies the final layernorm
    torch.testing.assert_close(penultimate_features(model, x), cls)


def test_penultimate_features_keep_the_training_mode():
    model = _tiny_timm().train()
    penultimate_features(model, torch.randn(2, 3, 16, 16))
    assert model.training


def test_per_class_accuracy_and_forget_confusion_by_hand():
    # Predictions (argmax) per image: labels 0 0 1 1 1 2 2 2 2, class 3 has no image.
    predicted = [0, 1, 1, 1, 0, 0, 1, 1, 3]
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    logits = nn.functional.one_hot(torch.tensor(predicted), 4).float()
    accuracies = per_class_accuracy(logits, labels, 4)
    assert accuracies[:3] == pytest.approx([50.0, 100 * 2 / 3, 0.0]) and accuracies[3] is None
    names = ["zero", "one", "two", "three"]
    confusion = forget_confusion(logits, labels, [2], names)
    assert confusion == {"two": pytest.approx({"one": 50.0, "zero": 25.0, "three": 25.0})}
    assert list(confusion["two"]) == ["one", "zero", "three"]  # largest share first, ties by class index
    assert forget_confusion(logits, labels, [2], names, top=1) == {"two": {"one": 50.0}}
    assert forget_confusion(logits, labels, [3], names) == {"three": {}}


def test_plot_per_class_accuracy_writes_a_png(tmp_path):
    names = [f"digit_{i}" for i in range(5)]
    path = plot_per_class_accuracy([90.0, 80.0, 95.0, 85.0, None], [91.0, 79.0, 94.0, 0.0, None], names, [3],
                                   str(tmp_path / "per_class.png"))
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    many = [f"class_{i}" for i in range(100)]
    rng = np.random.default_rng(0)
    before, after = rng.uniform(50, 100, 100).tolist(), rng.uniform(50, 100, 100).tolist()
    path = plot_per_class_accuracy(before, after, many, [7, 42], str(tmp_path / "many.png"))
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_plot_per_class_accuracy_names_the_missing_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_per_class_accuracy([1.0], [1.0], ["a"], [0], str(tmp_path / "x.png"))


def test_head_reset_gives_the_forget_class_an_average_bias_or_row(digits):
    model = copy.deepcopy(digits["masked"])
    others = [c for c in range(CLASSES) if c != FORGET]
    value = reset_forget_head(model.head, [FORGET], "bias")
    assert value == pytest.approx(digits["masked"].head.bias[others].mean().item())
    assert model.head.bias[FORGET].item() == pytest.approx(value)
    torch.testing.assert_close(model.head.weight, digits["masked"].head.weight)  # the row is kept
    reset_forget_head(model.head, [FORGET], "row")
    torch.testing.assert_close(model.head.weight[FORGET], model.head.weight[others].mean(0))


def test_collect_evidence_writes_the_chart_and_compares_original_with_unlearned(digits, tmp_path):
    """A run's evidence: the per-class chart in the output folder, where the forgotten class's images go, and the
    attack suite on both models (here the masked original plays the unlearned model: every attack brings its class
    back as on the original); the costly attacks only when asked."""
    from hf_pbu.evidence import SUITE
    from hf_pbu.evidence.measurement import predictions

    tests = ("forget_test", "retain_test")
    outputs = {when: {name: predictions(model, digits[name]) for name in tests}
               for when, model in (("before", digits["original"]), ("after", digits["masked"]))}
    names = [f"digit {c}" for c in range(CLASSES)]
    evidence = collect_evidence(digits["original"], digits["masked"], digits, outputs, [FORGET], names, str(tmp_path),
                                costly=True, seed=0)
    assert (tmp_path / evidence["chart"]).read_bytes().startswith(b"\x89PNG")
    assert evidence["per_class_accuracy"]["after"][FORGET] == 0.0
    assert evidence["per_class_accuracy"]["before"][FORGET] > 80.0
    assert f"digit {FORGET}" not in evidence["forget_confusion"]["after"][f"digit {FORGET}"]
    assert list(evidence["attacks"]) == [attack.name for attack in SUITE]
    for name, attack in evidence["attacks"].items():
        if name != "mean_row":  # the mean row reads the features alone, and the original's are the masked ones
            assert attack["after"]["forget_test_accuracy"] >= 0.5 * attack["before"]["forget_test_accuracy"], name
    level = evidence["forgetting_level"]
    assert level["level"] == "output" and level["strongest"] is not None
    assert level["attacks_run"] == list(evidence["attacks"])
    cheap = collect_evidence(digits["original"], digits["masked"], digits, outputs, [FORGET], names, None,
                             costly=False)
    assert list(cheap["attacks"]) == [attack.name for attack in SUITE if not attack.costly] and "chart" not in cheap
    assert {"relearn", "relearn_strong", "probe_k100"}.isdisjoint(cheap["attacks"])
    for when in ("before", "after"):  # the same attack, the same figures, whether the costly ones ran or not
        assert cheap["attacks"]["prototype"][when] == {**evidence["attacks"]["prototype"][when],
                                                       "seconds": cheap["attacks"]["prototype"][when]["seconds"]}


def test_prototype_attack_restores_a_masked_class_and_not_one_a_model_never_learnt(digits):
    """The prototype row (mean feature of 5 images) brings back what the features hold: nearly all of the class on the
    masked original, chance on features that carry nothing, and in between on the oracle, whose features, learnt on
    the other digits, still set part of the class apart (which is why attacks are read against the oracle)."""
    images = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)
    tests = (digits["forget_test"], digits["retain_test"])
    masked = prototype_attack(digits["masked"], images, *tests)
    assert masked["forget_test_accuracy_before"] == 0.0 and masked["images"] == 5
    assert masked["forget_test_accuracy"] > 70.0, masked
    assert masked["retain_test_accuracy"] > 70.0, masked
    assert digits["masked"].head.bias[FORGET].item() == -1e4  # the model given is not changed
    oracle = prototype_attack(digits["oracle"], images, *tests)
    assert oracle["forget_test_accuracy"] < masked["forget_test_accuracy"] - 20.0, (oracle, masked)
    noise = prototype_attack(NoiseFeatures(), images, *tests)
    assert noise["forget_test_accuracy"] < 100.0 / CLASSES + 20.0, noise
    three = prototype_attack(digits["masked"], images, *tests, count=3)
    assert three["images"] == 3 and three != masked


def test_head_relearn_attack_restores_a_masked_class_and_not_one_a_model_never_learnt(digits):
    relearn = relearn_set(digits["forget_train"], digits["retain_train"], k=10, seed=0)
    tests = (digits["forget_test"], digits["retain_test"])
    masked = head_relearn_attack(digits["masked"], relearn, *tests, seed=0)
    assert masked["forget_test_accuracy_before"] == 0.0 and masked["k"] == 10
    assert masked["forget_test_accuracy"] > 70.0, masked
    oracle = head_relearn_attack(digits["oracle"], relearn, *tests, seed=0)
    assert oracle["forget_test_accuracy"] < masked["forget_test_accuracy"] - 40.0, (oracle, masked)
    assert head_relearn_attack(digits["masked"], relearn, *tests, seed=0) == masked  # deterministic
    # The head is what trains: a bigger budget moves the oracle's head towards the class.
    stronger = head_relearn_attack(digits["oracle"], relearn, *tests, seed=0, learning_rate=3e-2, steps=300)
    assert stronger["forget_test_accuracy"] > oracle["forget_test_accuracy"] + 20.0, (stronger, oracle)


class DoubledLogits(nn.Module):
    """A model that post-processes its head's output: the head alone no longer gives its logits."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.head = inner.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


def test_head_attacks_check_that_the_head_gives_the_logits(digits):
    check_head_reads_features(digits["original"], digits["forget_test"])
    with pytest.raises(ValueError, match="does not give the model's logits"):
        check_head_reads_features(DoubledLogits(digits["original"]), digits["forget_test"])


def _attack(before: float, after: float) -> dict:
    return {"before": {"forget_test_accuracy": before}, "after": {"forget_test_accuracy": after}}


@pytest.mark.parametrize(("recentre", "head_strong", "prototype", "level", "strongest"), [
    (80.0, 1.0, 90.0, "output", "recentre_row"),  # a row attack brings it back (the prototype, more of it, but the
    # level, and the attack named, are the row's)
    (45.0, 85.0, 20.0, "output", "recentre_row"),  # half of its figure on the original (90); the strong relearn
    # brings back more, but a model that never saw the class reads high under it too: it decides nothing
    (1.0, 2.0, 90.0, "head", "prototype"),  # no attack through the row does, but the features alone do
    (1.0, 2.0, 20.0, "features", None),
])
def test_forgetting_level_names_the_strongest_attack_that_brings_the_class_back(recentre, head_strong, prototype,
                                                                                 level, strongest):
    from hf_pbu.evidence import forgetting_level

    attacks = {"recentre_row": _attack(90.0, recentre), "head_relearn_strong": _attack(90.0, head_strong),
               "prototype": _attack(95.0, prototype), "probe_k10": _attack(0.0, 0.0)}  # no share where 0 before
    found = forgetting_level(attacks)
    assert found["level"] == level and found["strongest"] == strongest
    assert found["recovered"]["recentre_row"] == pytest.approx(recentre / 90.0)
    assert "probe_k10" not in found["recovered"]
    assert forgetting_level({}) is None
