"""Attacks that start from the weights, as someone holding the model could, and measure how much of a forgotten
class comes back. None has an absolute scale: read each against the retrain oracle, whose features may set the class
apart too (the goal is the oracle's figure, not 0).

An unlearning method can remove a class at the output (the head's row and bias for the class no longer fire) while
the features still tell the class apart: an attacker who holds the weights and a few images of the class then gets it
back without touching the backbone (*An Illusion of Unlearning?*, arXiv 2604.08271; Spotter, arXiv 2506.01318).

* `relearn_attack`: fine-tune a copy of the whole model for a small, fixed budget on k images of every class
  (`relearn_set`) and measure how much of the class comes back.
* `head_relearn_attack`: the head alone is fine-tuned on the same images, with the same budget (`RELEARN_STEPS` Adam
  steps at `RELEARN_LEARNING_RATE`, batches of `RELEARN_BATCH_SIZE`) and head-bias reset, so that the two relearn
  attacks differ only in what they may change.
* `prototype_attack`: no training. The forget class's head row is replaced by the mean penultimate feature of a few
  of its images (`PROTOTYPE_IMAGES`), taken from the mean feature of a few images of every class (the class's
  direction, as a linear head sees it) and scaled to the mean norm of the retained classes' rows; its bias gives it,
  at that mean feature, the average logit of the retained classes.

The head attacks run on features computed once per image (eval mode: BatchNorm's running statistics, no dropout), so
they cost one forward pass over the images they read and are cheap enough for every run.
"""

import copy
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, Subset, TensorDataset
from transformers.utils import logging

from ..data.splits import dataset_labels
from ..models import classifier_head, classifier_logits, eval_mode, head_linear, last_linear
from .features import HeadInputs, head_inputs, in_order, model_device, penultimate_features, unwrap_model
from .measurement import accuracy, accuracy_of, predictions

logger = logging.get_logger(__name__)

# The relearning budget of both relearn attacks (fine-tune and head-only), the same for every method.
RELEARN_STEPS = 100
RELEARN_LEARNING_RATE = 1e-4
RELEARN_BATCH_SIZE = 32
# Images of each forget class whose mean feature makes the prototype.
PROTOTYPE_IMAGES = 5

HeadReset = Literal["bias", "row", "none"]


def head_copy(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """A float32 CPU copy of `model`'s classifier head, in eval mode, and the last `nn.Linear` in it (the one whose
    rows are the classes)."""
    head = copy.deepcopy(classifier_head(unwrap_model(model))).float().cpu().eval()
    linear = last_linear(head)
    if linear is None:
        raise ValueError(f"The classifier head of {type(unwrap_model(model)).__name__} has no nn.Linear: the head "
                         "attacks need one whose rows are the classes.")
    return head, linear


@torch.no_grad()
def check_head_reads_features(model: nn.Module, dataset: Dataset, images: int = 8) -> None:
    """Raise unless the head applied to the penultimate features gives the model's logits (on a few images of
    `dataset`): the head attacks rely on it, and a model that post-processes its head's output breaks it."""
    batch = next(iter(in_order(dataset, images)))
    inner = unwrap_model(model)
    parameter = next(inner.parameters())
    with eval_mode(inner):
        logits = classifier_logits(inner, batch["pixel_values"].to(parameter.device)).float().cpu()
    head, _ = head_copy(model)
    again = head(penultimate_features(model, batch["pixel_values"]).float().cpu())
    tolerance = 2e-2 * (1.0 + float(logits.abs().max()))
    if again.shape != logits.shape or not torch.allclose(again, logits, rtol=0, atol=tolerance):
        raise ValueError(f"The classifier head of {type(inner).__name__} applied to its penultimate features does not "
                         "give the model's logits: the head attacks cannot run on this model.")


@torch.no_grad()
def reset_forget_head(linear: nn.Linear, forget_classes: Sequence[int], reset: HeadReset) -> float | None:
    """Give the forget classes the bias ("bias"), or the bias and weight row ("row"), of an average class of
    `linear`: the mean over the other classes. Returns the bias set (None when nothing was reset).

    "bias" is the cheapest repair an attacker holding the weights makes: it undoes an output-level mask (a bias of
    -1e4 that no fine-tuning budget climbs back from) and puts every method on the same footing, so that an attack
    measures how well the weights (features and the class's head row) still recognise the class. "row" also
    discards the class's weight row: the attack then measures the features alone, whatever a method did to the head.
    """
    if reset == "none":
        return None
    if linear.bias is None:
        logger.warning("The classifier head's last nn.Linear has no bias: the attack keeps the head as it is.")
        return None
    forget = _forget_mask(linear, forget_classes)
    if forget.all():
        return None
    value = linear.bias[~forget].mean()
    linear.bias[forget] = value
    if reset == "row":
        linear.weight[forget] = linear.weight[~forget].mean(0)
    return float(value)


def _forget_mask(linear: nn.Linear, forget_classes: Sequence[int]) -> torch.Tensor:
    forget = torch.zeros(linear.out_features, dtype=torch.bool, device=linear.weight.device)
    forget[torch.as_tensor(list(forget_classes), dtype=torch.long, device=forget.device)] = True
    return forget


@torch.no_grad()
def _head_accuracy(head: nn.Module, inputs: HeadInputs | None, batch_size: int = 4096) -> float | None:
    if inputs is None or len(inputs) == 0:
        return None
    logits = torch.cat([head(inputs.features[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
    return accuracy_of(logits, inputs.labels)


def _forget_classes_of(forget_classes: Sequence[int] | None, forget_test: HeadInputs) -> list[int]:
    return sorted({int(c) for c in (forget_test.labels.tolist() if forget_classes is None else forget_classes)})


@torch.no_grad()
def prototype_from_features(
    model: nn.Module,
    images: HeadInputs,
    forget_test: HeadInputs,
    retain_test: HeadInputs | None = None,
    *,
    forget_classes: Sequence[int] | None = None,
    count: int = PROTOTYPE_IMAGES,
) -> dict:
    """`prototype_attack` on features already computed (`head_inputs`)."""
    forget_classes = _forget_classes_of(forget_classes, forget_test)
    head, linear = head_copy(model)
    result = {"forget_classes": forget_classes, "forget_test_accuracy_before": _head_accuracy(head, forget_test)}
    forget = _forget_mask(linear, forget_classes)
    if forget.all():
        raise ValueError("The prototype attack needs at least one retained class in the head.")
    class_means = {int(c): images.features[images.labels == c][:count].mean(0) for c in images.labels.unique()}
    missing = [c for c in forget_classes if c not in class_means]
    if missing or len(class_means) == len(forget_classes):
        raise ValueError(f"The prototype attack needs images of every forget class and of some retained class; "
                         f"got classes {sorted(class_means)} for forget classes {forget_classes}.")
    center = torch.stack(list(class_means.values())).mean(0)  # each class weighs the same
    retained_rows = linear.weight[~forget]
    bias = linear.bias[~forget] if linear.bias is not None else torch.zeros(len(retained_rows))
    logit_at_center = (retained_rows @ center + bias).mean()
    row_norm = retained_rows.norm(dim=1).mean()
    for c in forget_classes:
        direction = class_means[c] - center
        linear.weight[c] = direction / direction.norm().clamp_min(1e-12) * row_norm
        if linear.bias is not None:
            linear.bias[c] = logit_at_center - linear.weight[c] @ center
    result["images"] = min(min(int((images.labels == c).sum()), count) for c in class_means)
    result["forget_test_accuracy"] = _head_accuracy(head, forget_test)
    if retain_test is not None:
        result["retain_test_accuracy_before"] = _head_accuracy(head_copy(model)[0], retain_test)
        result["retain_test_accuracy"] = _head_accuracy(head, retain_test)
    logger.info(f"Prototype attack ({result['images']} images a class): A_Df "
                f"{result['forget_test_accuracy_before']:.1f}% -> {result['forget_test_accuracy']:.1f}%")
    return result


ImageFree = Literal["recentre", "mean"]


@torch.no_grad()
def image_free_attack(
    model: nn.Module,
    forget_test: HeadInputs,
    retain_test: HeadInputs | None = None,
    *,
    forget_classes: Sequence[int] | None = None,
    how: ImageFree = "recentre",
) -> dict:
    """Edit the forget classes' head rows with no image at all, and measure A_Df on `forget_test` (and A_Dr on
    `retain_test`). Each forget class gets the retained classes' mean bias and, with `how`:

    * "recentre": its own row shifted by a constant so that its mean coordinate is the retained rows' mean
      coordinate. On the non-negative features of a ReLU network, a method that lowers the class's logit on every
      input by a uniform shift of its row (what a hinge on the logit does first) is undone by this, and the row's
      shape, where the class still lives, speaks again.
    * "mean": the retained rows' mean row. Nothing of the class's row is left: the class comes back only where the
      features themselves push its images away from every retained row.

    Returns {"how", "forget_classes", "forget_test_accuracy_before", "forget_test_accuracy", and
    "retain_test_accuracy_before" / "retain_test_accuracy" when `retain_test` is given}; accuracies in %. `model`
    itself is not changed."""
    if how not in ("recentre", "mean"):
        raise ValueError(f"how must be 'recentre' or 'mean', not {how!r}.")
    forget_classes = _forget_classes_of(forget_classes, forget_test)
    head, linear = head_copy(model)
    result: dict = {"how": how, "forget_classes": forget_classes,
                    "forget_test_accuracy_before": _head_accuracy(head, forget_test)}
    if retain_test is not None:
        result["retain_test_accuracy_before"] = _head_accuracy(head, retain_test)
    forget = _forget_mask(linear, forget_classes)
    if forget.all():
        raise ValueError("The image-free attacks need at least one retained class in the head.")
    retained = linear.weight[~forget]
    for c in forget_classes:
        if how == "recentre":
            linear.weight[c] += retained.mean() - linear.weight[c].mean()
        else:
            linear.weight[c] = retained.mean(0)
    if linear.bias is not None:
        linear.bias[forget] = linear.bias[~forget].mean()
    result["forget_test_accuracy"] = _head_accuracy(head, forget_test)
    if retain_test is not None:
        result["retain_test_accuracy"] = _head_accuracy(head, retain_test)
    logger.info(f"Image-free attack ({how}): A_Df {result['forget_test_accuracy_before']:.1f}% -> "
                f"{result['forget_test_accuracy']:.1f}%")
    return result


def prototype_attack(
    model: nn.Module,
    images: Dataset,
    forget_test: Dataset,
    retain_test: Dataset | None = None,
    *,
    forget_classes: Sequence[int] | None = None,
    count: int = PROTOTYPE_IMAGES,
    batch_size: int = 64,
) -> dict:
    """Replace each forget class's head row by its prototype, train nothing, and measure A_Df on `forget_test` (and
    A_Dr on `retain_test`). The prototype is the mean penultimate feature of the first `count` images of the class in
    `images` (e.g. `hf_pbu.evidence.relearn_set`), minus the mean of every class's such mean: the direction in which
    the class stands out, scaled to the mean norm of the retained classes' rows. Its bias gives the class, at that
    mean feature, the average logit of the retained classes, so that the new row competes on an equal footing. A model
    whose features still gather the class away from the others gets it back; one whose features scatter it, or send
    it among the retained classes, does not.

    Returns {"images" (used per class, the fewest), "forget_classes", "forget_test_accuracy_before" (the model as
    given), "forget_test_accuracy" (with the prototype rows), and "retain_test_accuracy_before" /
    "retain_test_accuracy" when `retain_test` is given}; accuracies in %. `model` itself is not changed.
    """
    retain = head_inputs(model, retain_test, batch_size) if retain_test is not None else None
    return prototype_from_features(model, head_inputs(model, images, batch_size),
                                   head_inputs(model, forget_test, batch_size), retain,
                                   forget_classes=forget_classes, count=count)


def head_relearn_from_features(
    model: nn.Module,
    relearn: HeadInputs,
    forget_test: HeadInputs,
    retain_test: HeadInputs | None = None,
    *,
    forget_classes: Sequence[int] | None = None,
    steps: int = RELEARN_STEPS,
    learning_rate: float = RELEARN_LEARNING_RATE,
    batch_size: int = RELEARN_BATCH_SIZE,
    seed: int = 0,
    reset_head: HeadReset = "bias",
) -> dict:
    """`head_relearn_attack` on features already computed (`head_inputs`)."""
    forget_classes = _forget_classes_of(forget_classes, forget_test)
    head, linear = head_copy(model)
    result: dict = {"steps": steps, "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed,
                    "forget_classes": forget_classes, "reset_head": reset_head,
                    "k": min((int((relearn.labels == c).sum()) for c in forget_classes), default=0),
                    "forget_test_accuracy_before": _head_accuracy(head, forget_test)}
    if retain_test is not None:
        result["retain_test_accuracy_before"] = _head_accuracy(head, retain_test)
    result["reset_bias"] = reset_forget_head(linear, forget_classes, reset_head)
    result["forget_test_accuracy_at_start"] = _head_accuracy(head, forget_test)
    head.requires_grad_(True)
    fine_tune(list(head.parameters()), TensorDataset(relearn.features, relearn.labels),
              lambda batch: F.cross_entropy(head(batch[0]), batch[1]), steps=steps, learning_rate=learning_rate,
              batch_size=batch_size, seed=seed)
    head.requires_grad_(False)
    result["forget_test_accuracy"] = _head_accuracy(head, forget_test)
    if retain_test is not None:
        result["retain_test_accuracy"] = _head_accuracy(head, retain_test)
    logger.info(f"Head-only relearn attack (k={result['k']}, {steps} steps at lr {learning_rate}): A_Df "
                f"{result['forget_test_accuracy_before']:.1f}% -> {result['forget_test_accuracy_at_start']:.1f}% at "
                f"start -> {result['forget_test_accuracy']:.1f}% after")
    return result


def head_relearn_attack(
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
    """Fine-tune a copy of the classifier head alone on `relearn_set` (`hf_pbu.evidence.relearn_set`: k images of
    every class) with the fine-tune relearn attack's budget and head-bias reset, the backbone frozen, then measure
    A_Df on `forget_test` (and A_Dr on `retain_test`). The same seeded batches as `relearn_attack`: the two differ
    only in what they train.

    Returns {"k", "steps", "learning_rate", "batch_size", "seed", "forget_classes", "reset_head", "reset_bias",
    "forget_test_accuracy_before", "forget_test_accuracy_at_start" (after the head reset), "forget_test_accuracy"
    (after the attack), and "retain_test_accuracy_before" / "retain_test_accuracy" when `retain_test` is given};
    accuracies in %. `model` itself is not changed.
    """
    retain = head_inputs(model, retain_test, eval_batch_size) if retain_test is not None else None
    return head_relearn_from_features(
        model, head_inputs(model, relearn_set, eval_batch_size), head_inputs(model, forget_test, eval_batch_size),
        retain, forget_classes=forget_classes, steps=steps, learning_rate=learning_rate, batch_size=batch_size,
        seed=seed, reset_head=reset_head,
    )


def relearn_set(forget_train: Dataset, retain_train: Dataset, k: int, seed: int = 0) -> Dataset:
    """k random images of each forget class and k of each retained class (fewer where a class has fewer).

    Retained images are needed: fine-tuned on forget-class images alone, any model (the oracle included) learns to
    predict that class everywhere, a bias shift suffices, and the attack would read 100% for every method. With
    every class equally represented, only a model whose features hold the class can recognise it after the attack.
    """
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
    device = model_device(model)
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

    attacked = copy.deepcopy(unwrap_model(model))
    attacked.eval()
    for parameter in attacked.parameters():
        parameter.requires_grad_(True)
    result["reset_head"] = reset_head
    linear = head_linear(attacked)
    if linear is None and reset_head != "none":
        logger.warning("The classifier head has no nn.Linear: the relearn attack keeps the head as it is.")
    result["reset_bias"] = reset_forget_head(linear, forget_classes, reset_head) if linear is not None else None
    result["forget_test_accuracy_at_start"] = accuracy(attacked, forget_test, eval_batch_size)

    def loss_of(batch: dict) -> torch.Tensor:
        logits = classifier_logits(attacked, batch["pixel_values"].to(device))
        return F.cross_entropy(logits.float(), torch.as_tensor(batch["labels"]).reshape(-1).to(device).long())

    fine_tune(list(attacked.parameters()), relearn_set, loss_of, steps=steps, learning_rate=learning_rate,
              batch_size=batch_size, seed=seed)
    result["forget_test_accuracy"] = accuracy(attacked, forget_test, eval_batch_size)
    if retain_test is not None:
        result["retain_test_accuracy"] = accuracy(attacked, retain_test, eval_batch_size)
    logger.info(
        f"Relearn attack (k={result['k']}, {steps} steps at lr {learning_rate}): A_Df "
        f"{result['forget_test_accuracy_before']:.1f}% -> {result['forget_test_accuracy_at_start']:.1f}% at start "
        f"-> {result['forget_test_accuracy']:.1f}% after"
    )
    return result


def fine_tune(parameters: list[torch.Tensor], dataset: Dataset, loss_of: Callable[..., torch.Tensor], *, steps: int,
              learning_rate: float, batch_size: int, seed: int) -> None:
    """Adam on `parameters` for `steps` steps over seeded random batches of `dataset` (cycled as often as needed),
    minimising `loss_of(batch)`: the one training loop of every relearn attack, so that they differ only in what they
    train and on which inputs."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    batches = DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, generator=generator))
    step = 0
    while step < steps and len(dataset) > 0:
        for batch in batches:
            if step >= steps:
                break
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
