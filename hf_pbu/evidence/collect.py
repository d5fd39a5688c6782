"""Evidence that a class is really forgotten, beyond the output accuracy A_Df.

A model can score 0% on a class at its output while the weights still hold it: masking the class's logit does that
with no unlearning at all. Three views look past the argmax:

* `relearn_attack`: fine-tune a copy for a small, fixed budget on a few images of every class (`relearn_set`) and
  measure how much of the class comes back. A model that still holds the class relearns it at once; the retrain
  oracle, which never saw it, relearns it only as far as its features of the other classes allow.
* `prototype_attack` and `head_relearn_attack` (`hf_pbu.head_attacks`): the class rebuilt from the classifier head
  over fixed features, by a prototype row (no training) or by fine-tuning the head alone. Cheap: every run makes them.
* `linear_probe`: a logistic regression on the penultimate features (what the head reads) that tells forget-class
  images from retained ones. Output-level forgetting that leaves the features intact still separates here.
* `per_class_accuracy`, `forget_confusion`, `plot_per_class_accuracy`: where the forgotten class's images go now
  (the oracle sends them to their nearest classes) and a before/after chart of every class.

None of these has an absolute scale: read each against the retrain oracle (the goal: as close to it as possible)
and against the logit-masked original (the class fully present).
"""

import copy
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from transformers.utils import logging

from ..data.splits import seeded_indices
from ..io.atomic import atomic_file
from ..io.escaping import chart_label
from ..models import classifier_logits, head_linear
from .features import _device, _unwrap, dataset_features, dataset_labels, penultimate_features
from .head_attacks import (
    RELEARN_BATCH_SIZE,
    RELEARN_LEARNING_RATE,
    RELEARN_STEPS,
    HeadReset,
    check_head_reads_features,
    head_inputs,
    head_relearn_attack,
    head_relearn_from_features,
    prototype_attack,
    prototype_from_features,
    reset_forget_head,
)
from .measure import accuracy, accuracy_of, predictions

logger = logging.get_logger(__name__)

__all__ = [
    "attack_evidence", "collect_evidence", "dataset_features", "dataset_labels", "forget_confusion",
    "head_relearn_attack", "linear_probe", "penultimate_features", "per_class_accuracy", "plot_per_class_accuracy",
    "prototype_attack", "relearn_attack", "relearn_set",
]


# --------------------------------------------------------------------------------------------------- helpers


def _sample(dataset: Dataset, cap: int | None, seed: int) -> Dataset:
    """At most `cap` items of `dataset`, chosen at random with `seed` (all of it, in order, when it is smaller)."""
    if cap is None or len(dataset) <= cap:
        return dataset
    return Subset(dataset, seeded_indices(len(dataset), cap, seed).tolist())



# --------------------------------------------------------------------------------------------- relearn attack


def relearn_set(forget_train: Dataset, retain_train: Dataset, k: int, seed: int = 0) -> Dataset:
    """k random images of each forget class and k of each retained class (fewer where a class has fewer).

    Retained images are needed: fine-tuned on forget-class images alone, any model (the oracle included) learns to
    predict that class everywhere, a bias shift suffices, and the attack would read 100% for every method. With
    every class equally represented, only a model whose features hold the class can recognise it after the attack.
    """
    from torch.utils.data import ConcatDataset

    rng = np.random.default_rng(seed)
    parts = []
    for dataset in (forget_train, retain_train):
        labels = dataset_labels(dataset)
        chosen = []
        for label in np.unique(labels):
            indices = np.flatnonzero(labels == label)
            chosen.extend(rng.choice(indices, min(k, len(indices)), replace=False).tolist())
        parts.append(Subset(dataset, sorted(chosen)))
    return ConcatDataset(parts)


def relearn_attack(
    model: nn.Module,
    relearn_set: Dataset,
    forget_test: Dataset,
    retain_test: Dataset | None = None,
    *,
    forget_classes: Sequence[int] | None = None,
    steps: int = RELEARN_STEPS,
    learning_rate: float = RELEARN_LEARNING_RATE,
    batch_size: int = RELEARN_BATCH_SIZE,
    seed: int = 0,
    reset_head: HeadReset = "bias",
    eval_batch_size: int = 64,
) -> dict:
    """Fine-tune a copy of `model` on `relearn_set` (see `relearn_set()`) for a fixed budget, then measure A_Df
    on `forget_test` (and A_Dr on `retain_test`). A model that relearns the class as well as the original still
    holds it; the retrain oracle shows how far a model that never saw it gets. `model` itself is not changed.

    The copy is trained with Adam on every parameter, in eval mode (BatchNorm keeps its running statistics and
    dropout is off, so that the attack changes weights only and is deterministic on CPU), on seeded random batches.
    Before the first step the forget classes' head bias is set to the mean of the other classes' (`reset_head=
    "bias"`): an output-level mask (mask_logits' bias of -1e4, which no small budget climbs back from, so that the
    masked model would read 0% and look like the oracle) no longer hides the class, and "forget_test_accuracy_at_
    start" shows what the weights hold before any step. `reset_head="row"` also replaces the class's weight row by
    the mean row (the attack then tests the features alone); "none" fine-tunes the model exactly as given.

    The defaults (100 steps of 32 images, Adam at 1e-4: the fine-tuning rate of pretrained classifiers and of the
    PBU reference) are the same for every method, so that the numbers compare. The budget is small on purpose: on
    the tests' digits CNN it brings the masked original back (A_Df 0% as given, 90% at start, 95% after) while the
    oracle and a random-weight model stay at 0%; at 1e-3, or with a much larger budget, a random-weight model
    learns the class from the k images too, and the attack no longer tells a model that holds the class from one
    that does not.

    Returns {"k" (relearn images of the least represented forget class), "steps", "learning_rate", "batch_size",
    "seed", "forget_classes", "reset_head", "reset_bias", "forget_test_accuracy_before" (the model as given),
    "forget_test_accuracy_at_start" (after the head reset), "forget_test_accuracy" (after the attack), and
    "retain_test_accuracy_before" / "retain_test_accuracy" when `retain_test` is given}; accuracies in %.
    """
    if reset_head not in ("bias", "row", "none"):
        raise ValueError(f"reset_head must be 'bias', 'row' or 'none', not {reset_head!r}.")
    device = _device(model)
    forget_logits, forget_labels = predictions(model, forget_test, eval_batch_size)
    if forget_classes is None:
        forget_classes = sorted(set(forget_labels.tolist()))
    forget_classes = [int(c) for c in forget_classes]
    result: dict = {
        "steps": steps, "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed,
        "forget_classes": forget_classes,
        "forget_test_accuracy_before": accuracy_of(forget_logits, forget_labels),
    }
    relearn_labels = dataset_labels(relearn_set)
    counts = [int((relearn_labels == c).sum()) for c in forget_classes]
    result["k"] = min(counts) if counts else 0
    if retain_test is not None:
        result["retain_test_accuracy_before"] = accuracy(model, retain_test, eval_batch_size)

    attacked = copy.deepcopy(_unwrap(model))
    attacked.eval()
    for parameter in attacked.parameters():
        parameter.requires_grad_(True)
    result["reset_head"] = reset_head
    linear = head_linear(attacked)
    if linear is None and reset_head != "none":
        logger.warning("The classifier head has no nn.Linear: the relearn attack keeps the head as it is.")
    result["reset_bias"] = reset_forget_head(linear, forget_classes, reset_head) if linear is not None else None
    result["forget_test_accuracy_at_start"] = accuracy(attacked, forget_test, eval_batch_size)

    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(attacked.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    batches = DataLoader(relearn_set, batch_size=batch_size, sampler=RandomSampler(relearn_set, generator=generator))
    step = 0
    while step < steps and len(relearn_set) > 0:
        for batch in batches:
            if step >= steps:
                break
            logits = classifier_logits(attacked, batch["pixel_values"].to(device))
            loss = F.cross_entropy(logits.float(), torch.as_tensor(batch["labels"]).reshape(-1).to(device).long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    result["forget_test_accuracy"] = accuracy(attacked, forget_test, eval_batch_size)
    if retain_test is not None:
        result["retain_test_accuracy"] = accuracy(attacked, retain_test, eval_batch_size)
    logger.info(
        f"Relearn attack (k={result['k']}, {steps} steps at lr {learning_rate}): A_Df "
        f"{result['forget_test_accuracy_before']:.1f}% -> {result['forget_test_accuracy_at_start']:.1f}% at start "
        f"-> {result['forget_test_accuracy']:.1f}% after"
    )
    return result


# ------------------------------------------------------------------------------------------------ linear probe


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
        parts = [dataset_features(model, _sample(d, max_per_side, seed + offset + i), batch_size)
                 for i, d in enumerate((forget_set, retain_set))]
        x = np.concatenate([p[0] for p in parts])
        y = np.isin(np.concatenate([p[1] for p in parts]), list(forget)).astype(np.int64)
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


# ---------------------------------------------------------------------------------------------- per-class view


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy in % of each class (None for a class with no test image): the chart's bars, and the one number
    per class that shows whether forgetting one class cost another."""
    predicted = torch.as_tensor(logits).argmax(-1).cpu()
    labels = torch.as_tensor(labels).reshape(-1).cpu().long()
    result: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        count = int(mask.sum())
        result.append(None if count == 0 else 100.0 * int((predicted[mask] == c).sum()) / count)
    return result


def forget_confusion(
    logits: torch.Tensor, labels: torch.Tensor, forget_classes: Sequence[int], names: Sequence[str], top: int = 5
) -> dict[str, dict[str, float]]:
    """Where each forgotten class's test images are predicted now: {forget class name: {predicted class name:
    share of its images in %}}, the `top` largest shares first. The oracle sends them to their nearest classes;
    a spread over many classes, or one dumping class, is a method's signature."""
    predicted = torch.as_tensor(logits).argmax(-1).cpu()
    labels = torch.as_tensor(labels).reshape(-1).cpu().long()
    result: dict[str, dict[str, float]] = {}
    for c in forget_classes:
        mask = labels == int(c)
        count = int(mask.sum())
        if count == 0:
            result[names[int(c)]] = {}
            continue
        counts = torch.bincount(predicted[mask], minlength=len(names))
        order = sorted(range(len(counts)), key=lambda p: (-int(counts[p]), p))
        result[names[int(c)]] = {names[p]: 100.0 * int(counts[p]) / count for p in order[:top] if counts[p] > 0}
    return result


def plot_per_class_accuracy(
    before: Sequence[float | None],
    after: Sequence[float | None],
    names: Sequence[str],
    forget_classes: Sequence[int],
    path: str,
    title: str = "Per-class test accuracy before and after unlearning",
    max_classes: int = 40,
) -> str:
    """Write a PNG bar chart of each class's accuracy before and after, the forget classes highlighted; returns
    `path`. With more than `max_classes` classes it shows the forget classes and the classes whose accuracy
    changed most, so that the chart stays readable for ImageNet-size heads. Class names are drawn as plain text
    (no mathtext or TeX: a `$` or `^` in a name is a character), and the file is written whole or not at all."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("The per-class accuracy chart needs matplotlib: `pip install matplotlib`.") from None

    def value(v: float | None) -> float:
        return math.nan if v is None else float(v)

    forget = [int(c) for c in forget_classes]
    shown = list(range(len(names)))
    if len(shown) > max_classes:
        change = {c: abs(value(after[c]) - value(before[c])) for c in shown if c not in forget}
        ranked = sorted(change, key=lambda c: -(change[c] if not math.isnan(change[c]) else -1.0))
        shown = sorted(forget + ranked[: max(0, max_classes - len(forget))])
        title += f" ({len(shown)} of {len(names)} classes: the forgotten ones and the largest changes)"

    x = np.arange(len(shown))
    width = 0.4
    figure = Figure(figsize=(min(24.0, max(6.0, 0.45 * len(shown) + 2)), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(x - width / 2, [value(before[c]) for c in shown], width, label="before", color="#9db4d6")
    after_colors = ["#d62728" if c in forget else "#1f4e96" for c in shown]
    axes.bar(x + width / 2, [value(after[c]) for c in shown], width, label="after", color=after_colors)
    for i, c in enumerate(shown):
        if c in forget:
            axes.axvspan(i - 0.5, i + 0.5, color="#d62728", alpha=0.08, linewidth=0)
    axes.set_xticks(x, [chart_label(names[c]) for c in shown], rotation=45 if len(shown) > 8 else 0, ha="right"
                    if len(shown) > 8 else "center", parse_math=False, usetex=False)
    for label, c in zip(axes.get_xticklabels(), shown):
        if c in forget:
            label.set_color("#d62728")
            label.set_fontweight("bold")
    axes.set_ylim(0, 119)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    from matplotlib.patches import Patch

    handles = [Patch(color="#9db4d6", label="before"), Patch(color="#1f4e96", label="after (retained class)"),
               Patch(color="#d62728", label="after (forgotten class)")]
    axes.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout()
    with atomic_file(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    return path


# ----------------------------------------------------------------------------------------------- one run's evidence

CHART_FILE = "per_class_accuracy.png"
RELEARN_K = (10, 50)
# Relearn images per class of the head-only relearn attack, whose forget-class images also make the prototype.
HEAD_ATTACK_K = 10
# The head attacks, as the results file and the card name them.
HEAD_ATTACKS = ("prototype_attack", "head_relearn_attack")


def collect_evidence(
    original: nn.Module,
    unlearned: nn.Module,
    splits: dict[str, Dataset],
    outputs: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]],
    forget_classes: Sequence[int],
    names: Sequence[str],
    output_dir: str | None,
    attacks: bool,
    seed: int = 0,
) -> dict:
    """A run's evidence, for the results file and the card: per-class test accuracy before and after (and its chart,
    written to `output_dir`), the forgotten classes' confusion before and after, the head attacks (prototype and
    head-only relearn) on the original and the unlearned model and, with `attacks`, also the linear probe and the
    fine-tune relearn attack (k = 10 and 50); and where the class was forgotten, read off the attacks
    (`forgetting_level`).

    `outputs` holds the prediction passes already made ({"before"/"after": {split: (logits, labels)}}); the attacks
    need retained training images (`splits["retain_train"]`) and are skipped without them.
    """
    tests = [name for name in ("forget_test", "retain_test") if name in outputs["after"]]
    evidence: dict = {}
    if tests:
        per_class, confusion = {}, {}
        for when in ("before", "after"):
            logits, labels = (torch.cat(parts) for parts in zip(*(outputs[when][name] for name in tests)))
            per_class[when] = per_class_accuracy(logits, labels, len(names))
            confusion[when] = forget_confusion(logits, labels, forget_classes, names)
        evidence.update(per_class_accuracy=per_class, forget_confusion=confusion)
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
            plot_per_class_accuracy(per_class["before"], per_class["after"], names, forget_classes,
                                    os.path.join(output_dir, CHART_FILE))
            evidence["chart"] = CHART_FILE
    needed = ("forget_train", "retain_train", "forget_test", "retain_test")
    if not all(name in splits and len(splits[name]) for name in needed):
        logger.warning("The attacks need retained training and test images: skipped.")
        return evidence
    found = {when: attack_evidence(model, splits, forget_classes, seed, RELEARN_K if attacks else (), attacks)
             for when, model in (("before", original), ("after", unlearned))}
    for name in ("linear_probe", *HEAD_ATTACKS):
        if name in found["after"]:
            evidence[name] = {when: found[when][name] for when in found}
    if "relearn_attack" in found["after"]:
        evidence["relearn_attack"] = {k: {when: found[when]["relearn_attack"][k] for when in found}
                                      for k in found["after"]["relearn_attack"]}
    level = forgetting_level(evidence)
    if level is not None:
        evidence["forgetting_level"] = level
    return evidence


# An attack brings the class back when it recovers at least this share of what it recovers on the original model.
RECOVERED_SHARE = 0.5
# The attacks that rebuild the class through the head (its row and bias), and the one that reads the features alone.
HEAD_LEVEL_ATTACKS = ("head_relearn_attack", "relearn_attack")
LEVEL_TEXT = {
    "output": "forgotten at the output only: resetting its bias, or fine-tuning a few steps, brings it back",
    "head": "forgotten in the head: no relearn attack brings it back, but the features still set it apart",
    "features": "forgotten in the features: no attack brings back as much as half of what it brings back on the "
                "original model",
}


def forgetting_level(evidence: dict) -> dict | None:
    """Where the class was forgotten, read off the attacks (None without them): "output" when an attack through the
    head (head-only or, when run, fine-tune relearn at the smallest k) brings back at least `RECOVERED_SHARE` of
    what it brings back on the original model; else "head" when the prototype attack (the features alone) does;
    else "features". Returns {"level", "text", "recovered": {attack: share of the original's figure}}.

    A model retrained without the class is the real reference, and no run has it: its features may still set a
    distinctive class apart (the prototype attack then reads high on it too), so "head" is not a failure by itself."""
    def share(attack: dict) -> float | None:
        original, unlearned = attack["before"]["forget_test_accuracy"], attack["after"]["forget_test_accuracy"]
        return None if not original else unlearned / original

    attacks = {name: evidence[name] for name in ("head_relearn_attack", "prototype_attack") if name in evidence}
    if evidence.get("relearn_attack"):
        attacks["relearn_attack"] = evidence["relearn_attack"][min(evidence["relearn_attack"], key=int)]
    recovered = {name: share(attack) for name, attack in attacks.items() if share(attack) is not None}
    if not recovered:
        return None
    if any(recovered.get(name, 0.0) >= RECOVERED_SHARE for name in HEAD_LEVEL_ATTACKS):
        level = "output"
    elif recovered.get("prototype_attack", 0.0) >= RECOVERED_SHARE:
        level = "head"
    else:
        level = "features"
    return {"level": level, "text": LEVEL_TEXT[level], "recovered": recovered}


def head_attack_evidence(model: nn.Module, splits: dict[str, Dataset], forget_classes: Sequence[int],
                         seed: int = 0) -> dict:
    """The prototype attack and the head-only relearn attack (k = `HEAD_ATTACK_K`) on one model, on features computed
    once: the relearn set's forget images make the prototype (its first `PROTOTYPE_IMAGES` of each class). Empty,
    with a warning, for a model whose head does not read its penultimate features alone."""
    try:
        check_head_reads_features(model, splits["forget_test"])
    except ValueError as err:
        logger.warning(f"{err} Skipped.")
        return {}
    relearn = relearn_set(splits["forget_train"], splits["retain_train"], HEAD_ATTACK_K, seed)
    relearn_inputs = head_inputs(model, relearn)
    forget_test, retain_test = head_inputs(model, splits["forget_test"]), head_inputs(model, splits["retain_test"])
    return {
        "prototype_attack": prototype_from_features(model, relearn_inputs, forget_test, retain_test,
                                                    forget_classes=forget_classes),
        "head_relearn_attack": head_relearn_from_features(model, relearn_inputs, forget_test, retain_test,
                                                          forget_classes=forget_classes, seed=seed),
    }


def attack_evidence(model: nn.Module, splits: dict[str, Dataset], forget_classes: Sequence[int], seed: int = 0,
                    relearn_k: Sequence[int] = RELEARN_K, probe: bool = True) -> dict:
    """The head attacks (`head_attack_evidence`), the linear probe (with `probe`) and the fine-tune relearn attack
    for each k of `relearn_k` on one model, from the splits forget_train, retain_train (a sample of the retained
    training images), forget_test and retain_test."""
    found = head_attack_evidence(model, splits, forget_classes, seed)
    if probe:
        train = {name: splits[name] for name in ("forget_train", "retain_train")}
        test = {name: splits[name] for name in ("forget_test", "retain_test")}
        found["linear_probe"] = linear_probe(model, train, test, forget_classes, seed=seed)
    if relearn_k:
        found["relearn_attack"] = {
            str(k): relearn_attack(model, relearn_set(splits["forget_train"], splits["retain_train"], k, seed),
                                   splits["forget_test"], splits["retain_test"], forget_classes=forget_classes,
                                   seed=seed)
            for k in relearn_k
        }
    return found
