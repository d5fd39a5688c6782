"""A run's evidence that a class is really forgotten, beyond the output accuracy A_Df, for the results and the card.

A model can score 0% on a class at its output while the weights still hold it: masking the class's logit does that
with no unlearning at all. `collect_evidence` looks past the argmax, on the original and the unlearned model: the
per-class view and chart (`per_class`), the attacks (`attacks`) and the linear probe (`probe`), and where the class
was forgotten, read off the attacks (`forgetting_level`). None of these has an absolute scale: read each against the
retrain oracle (the goal: as close to it as possible) and against the logit-masked original (the class fully present).
"""

import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .attacks import (
    check_head_reads_features,
    head_relearn_from_features,
    prototype_from_features,
    relearn_attack,
    relearn_set,
)
from .features import head_inputs
from .per_class import (
    chart_class_ids,
    chart_font_draws,
    forget_confusion,
    per_class_accuracy,
    plot_per_class_accuracy,
)
from .probe import linear_probe

logger = logging.get_logger(__name__)

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
            shown = chart_class_ids(per_class["before"], per_class["after"], names, forget_classes)
            by_id = not chart_font_draws([names[c] for c in shown])  # then ids on the axis, names in the card
            plot_per_class_accuracy(per_class["before"], per_class["after"], names, forget_classes,
                                    os.path.join(output_dir, CHART_FILE), by_id=by_id)
            evidence["chart"] = CHART_FILE
            if by_id:
                evidence["chart_class_ids"] = shown
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
